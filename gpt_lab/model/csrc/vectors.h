/* What gpt_lab's kernels share: 16-float vectors (GCC / Clang vector extensions: one AVX-512
 * register, two AVX2 ones, portable C elsewhere), zero-filled partial loads (float32, bfloat16 widened),
 * the sum of a vector's lanes in one fixed order, a lane-wise choice and the exponential. */
#ifndef GPT_LAB_VECTORS_H
#define GPT_LAB_VECTORS_H
#include <stdint.h>
#include <string.h>

#define L 16 /* floats per vector */

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int8_t v16b __attribute__((vector_size(16)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint16_t v16u16 __attribute__((vector_size(32)));
typedef uint32_t v16u32 __attribute__((vector_size(64)));

static inline v16f load_part(const float* p, int64_t left) { /* 16 floats; left < L: left, the rest zero */
  v16f v = {0};
  if (left >= L)
    memcpy(&v, p, sizeof v); /* a plain vector load, not a call for a variable length */
  else
    memcpy(&v, p, (size_t)left * sizeof(float));
  return v;
}

/* bfloat16 bits (each lane's low half) widened to the float32 values they are */
static inline v16f from_bf16_lanes(v16u32 h) {
  const v16u32 u = h << 16;
  v16f f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static inline v16f load_bf16(const uint16_t* p, int64_t left) { /* 16 bfloat16 values widened, as load_part */
  v16u16 h = {0};
  if (left >= L)
    memcpy(&h, p, sizeof h);
  else
    memcpy(&h, p, (size_t)left * sizeof(uint16_t));
  return from_bf16_lanes(__builtin_convertvector(h, v16u32));
}

static inline float lanes_sum(v16f a) {
  v8f b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  v4f c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
  return (c[0] + c[2]) + (c[1] + c[3]);
}

/* where mask (all ones or zeros per lane): a, else b */
static inline v16f pick(v16i mask, v16f a, v16f b) { return (v16f)((mask & (v16i)a) | (~mask & (v16i)b)); }

/* e^x, 16 at a time: 2^n e^r (n = rint(x / ln 2), |r| <= ln 2 / 2, ln 2 in two parts so n ln 2 is exact),
 * e^r by its Taylor series to r^7 (relative error ~2e-8 before rounding), 2^n built in the exponent bits;
 * x clamped to [-87, 88], where 2^n stays a normal float (below: the smallest normal float or so). */
static inline v16f exp_lanes(v16f x) {
  const v16f zero = {0}, magic = zero + 12582912.0f; /* 1.5 * 2^23: adding and taking it rounds to an integer */
  x = pick(x < zero - 87.0f, zero - 87.0f, x);
  x = pick(x > zero + 88.0f, zero + 88.0f, x);
  const v16f n = (x * 1.44269504088896341f + magic) - magic;
  const v16f r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  v16f p = zero + 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * (v16f)((__builtin_convertvector(n, v16i) + 127) << 23);
}

#endif

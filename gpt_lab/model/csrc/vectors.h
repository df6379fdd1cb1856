/* What gpt_lab's two kernels share: 16-float vectors (GCC / Clang vector extensions: one AVX-512
 * register, two AVX2 ones, portable C elsewhere), a zero-filled partial load, and the sum of a
 * vector's lanes in one fixed order. */
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

static inline v16f load_part(const float* p, int64_t left) { /* left < L: the rest zero */
  v16f v = {0};
  memcpy(&v, p, (size_t)(left < L ? left : L) * sizeof(float));
  return v;
}

static inline float lanes_sum(v16f a) {
  v8f b = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
  v4f c = __builtin_shufflevector(b, b, 0, 1, 2, 3) + __builtin_shufflevector(b, b, 4, 5, 6, 7);
  return (c[0] + c[2]) + (c[1] + c[3]);
}

#endif

/* One generation step of chapter 4's GPT-2 on the CPU, every layer in one call: a token per sequence in,
 * the next position's logits out, the key/value cache advanced (gpt_lab/generation/fused.py builds the
 * model's description and decides when this runs).
 *
 * A step of gpt2_small is 73 weight products (~0.5 GB read, ~17 ms) and some 400 small operations
 * around them (norms, attention over the cache, GELU, the shortcuts): run one by one from Python those
 * cost ~1.7 ms a token, ~10 % of the step. Here they run between the products on one OpenMP team
 * (threads wait at barriers, a few microseconds, instead of a team per product), and the products
 * are the float32, bfloat16 and int8 kernels' own block functions (products.h): each output sums
 * exactly as it does in a product alone, whatever the number of threads. Every stage reads what the
 * one before wrote: the serial ones run in `omp single` (its barrier), the products end at a barrier.
 *
 * The block: x += out(attention(norm1(x))), then x += fc2(gelu(fc1(norm2(x)))) — LayerNorm with biased
 * variance, GELU's tanh approximation, causal attention of the new position over positions 0 .. pos
 * (softmax(q k^T / sqrt(head_dim)) v); the model: x = tok_emb[token] + pos_emb[pos], the blocks, the
 * final norm, the head. The small operations sum in another order than PyTorch's (the same values to
 * float32 rounding; the tests bound the logits against the model's own forward).
 */
#include <math.h>
#include <omp.h>

#include "products.h"
#include "vectors.h"

/* a weight's kind: float32 (N, K), the int8 kernel's blocks + scales, or bfloat16 (N, K) */
enum { GL_F32 = 0, GL_INT8 = 1, GL_BF16 = 2 };

typedef struct {
  const void* w;
  const float* scale; /* int8: one per output */
  const float* bias;  /* or NULL */
  int64_t n_out, n_in, kind;
} gl_linear;

typedef struct {
  const float *norm1_w, *norm1_b, *norm2_w, *norm2_b;
  float eps1, eps2;
  gl_linear q, k, v, out, fc1, fc2;
  void *k_cache, *v_cache; /* (batch, heads, max_len, head_dim) each, float32 or bfloat16 (bf16 below) */
} gl_block;

typedef struct {
  int64_t n_layers, emb, heads, head_dim, hidden, max_len, vocab, batch;
  /* bf16: a bfloat16 model (generation.weights=bf16): tok_emb and the cache in bfloat16, and every
   * activation rounded to bfloat16 where PyTorch's bfloat16 operations round their results (the
   * other parameters come as float32 copies, the same values) */
  int64_t bf16;
  float eps; /* the final norm's */
  const void* tok_emb; /* float32, or bfloat16 (bf16) */
  const float *pos_emb, *final_w, *final_b;
  gl_linear head;
  const gl_block* blocks;
  float* work; /* gpt_lab_gpt2_step_work() floats */
} gl_model;

/* Floats of scratch a step of M <= batch rows needs. */
int64_t gpt_lab_gpt2_step_work(const gl_model* m) {
  const int64_t inner = m->heads * m->head_dim, b = m->batch;
  int64_t widest = m->emb > inner ? m->emb : inner; /* the widest product input, for its bfloat16 copy */
  widest = widest > m->hidden ? widest : m->hidden;
  return b * (3 * m->emb + 4 * inner + m->hidden) + b * m->heads * m->max_len + (b * widest + 1) / 2;
}

/* y (M, n_out) = x (M, n_in) @ w^T + bias, the outputs shared by the team (call from every thread; no
 * barrier at the end). xb: x in bfloat16 (a bfloat16 model's products read it; x's values are bfloat16
 * values there). float32 and bfloat16: each thread its contiguous share of outputs as long streams
 * (f32_linear.c); int8: a contiguous share of its blocks, two runs side by side (int8_linear.c). */
static void product(const gl_linear* f, const float* x, const uint16_t* xb, float* y, int64_t M) {
  if (f->kind == GL_INT8) {
    int64_t b0, b1;
    gpt_lab_int8_share(f->n_out, omp_get_thread_num(), omp_get_num_threads(), &b0, &b1);
    gpt_lab_int8_blocks(x, (const int8_t*)f->w, f->scale, f->bias, y, M, f->n_out, f->n_in, b0, b1);
    return;
  }
  int64_t r0, r1;
  gpt_lab_f32_share(f->n_out, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
  if (f->kind == GL_BF16)
    gpt_lab_bf16_rows(xb, (const uint16_t*)f->w, f->bias, y, M, f->n_out, f->n_in, r0, r1);
  else
    gpt_lab_f32_rows(x, (const float*)f->w, f->bias, y, M, f->n_out, f->n_in, r0, r1);
}

static void layer_norm(const float* x, const float* w, const float* b, float eps, float* y, int64_t n) {
  double sum = 0.0, squares = 0.0;
  for (int64_t i = 0; i < n; i++) sum += x[i];
  const double mean = sum / (double)n;
  for (int64_t i = 0; i < n; i++) squares += (x[i] - mean) * (x[i] - mean);
  const float centre = (float)mean, rstd = (float)(1.0 / sqrt(squares / (double)n + (double)eps));
  for (int64_t i = 0; i < n; i++) y[i] = (x[i] - centre) * rstd * w[i] + b[i];
}

static inline float dot(const float* a, const float* b, int64_t n) {
  v16f acc = {0};
  for (int64_t i = 0; i < n; i += L) acc += load_part(a + i, n - i) * load_part(b + i, n - i);
  return lanes_sum(acc);
}

/* n (<= L) values out of a vector: a whole vector's plain move where n = L (loads: vectors.h's load_part) */
static inline void store_n(float* p, v16f v, int64_t n) {
  if (n < L)
    memcpy(p, &v, (size_t)n * sizeof(float));
  else
    memcpy(p, &v, sizeof v);
}
static inline void store_bf16_n(uint16_t* p, v16u32 h, int64_t n) { /* the low halves */
  const v16u16 bits = __builtin_convertvector(h, v16u16);
  if (n < L)
    memcpy(p, &bits, (size_t)n * sizeof(uint16_t));
  else
    memcpy(p, &bits, sizeof bits);
}

/* bfloat16 <-> float32: round to nearest even (NaN kept a quiet NaN), as c10::BFloat16 converts */
static inline uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
static inline float from_bf16(uint16_t h) {
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* The same 16 at a time: the bits of f rounded (in each lane's low half; vectors.h widens them back) */
static inline v16u32 to_bf16_lanes(v16f f) {
  v16u32 u;
  memcpy(&u, &f, sizeof u);
  const v16u32 nan = (v16u32)((u & 0x7fffffffu) > 0x7f800000u); /* all ones where f is NaN */
  return (((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) & ~nan) | (nan & 0x7fc0u);
}

/* a bfloat16 model's activations: n floats rounded to bfloat16 values, and their bits in xb for the
 * next product (nothing for a float32 model) */
static void round_all(const gl_model* m, float* x, uint16_t* xb, int64_t n) {
  if (!m->bf16) return;
  for (int64_t i = 0; i < n; i += L) {
    const v16u32 h = to_bf16_lanes(load_part(x + i, n - i));
    store_n(x + i, from_bf16_lanes(h), n - i);
    if (xb) store_bf16_n(xb + i, h, n - i);
  }
}

/* a . b over n, b in bfloat16 (the cache's keys of a bfloat16 model) */
static inline float dot_bf16(const float* a, const uint16_t* b, int64_t n) {
  v16f acc = {0};
  for (int64_t i = 0; i < n; i += L) acc += load_part(a + i, n - i) * load_bf16(b + i, n - i);
  return lanes_sum(acc);
}

/* The new position's attention for sequence r, head h: its key and value stored at pos, then
 * softmax over positions 0 .. pos of q . k / sqrt(d), the values summed with those weights. */
static void attend(const gl_model* m, const gl_block* blk, const float* q, const float* k, const float* v,
                   float* scores, float* out, uint16_t* xb, int64_t r, int64_t h, int64_t pos) {
  const int64_t d = m->head_dim, inner = m->heads * d;
  const int64_t base = (r * m->heads + h) * m->max_len * d;
  const float *qh = q + r * inner + h * d, *kh = k + r * inner + h * d, *vh = v + r * inner + h * d;
  const float scale = 1.0f / sqrtf((float)d);
  float* o = out + r * inner + h * d;
  float top = -INFINITY, total = 0.0f;
  for (int64_t j = 0; j < d; j++) o[j] = 0.0f;
  if (m->bf16) {
    uint16_t *keys = (uint16_t*)blk->k_cache + base, *values = (uint16_t*)blk->v_cache + base;
    for (int64_t j = 0; j < d; j++) {
      keys[pos * d + j] = to_bf16(kh[j]);
      values[pos * d + j] = to_bf16(vh[j]);
    }
    for (int64_t t = 0; t <= pos; t++) {
      scores[t] = dot_bf16(qh, keys + t * d, d) * scale;
      top = scores[t] > top ? scores[t] : top;
    }
    for (int64_t t = 0; t <= pos; t++) total += scores[t] = expf(scores[t] - top);
    for (int64_t t = 0; t <= pos; t++)
      for (int64_t j = 0; j < d; j++) o[j] += scores[t] * from_bf16(values[t * d + j]);
  } else {
    float *keys = (float*)blk->k_cache + base, *values = (float*)blk->v_cache + base;
    memcpy(keys + pos * d, kh, (size_t)d * sizeof(float));
    memcpy(values + pos * d, vh, (size_t)d * sizeof(float));
    for (int64_t t = 0; t <= pos; t++) {
      scores[t] = dot(qh, keys + t * d, d) * scale;
      top = scores[t] > top ? scores[t] : top;
    }
    for (int64_t t = 0; t <= pos; t++) total += scores[t] = expf(scores[t] - top);
    for (int64_t t = 0; t <= pos; t++)
      for (int64_t j = 0; j < d; j++) o[j] += scores[t] * values[t * d + j];
  }
  const float inv = 1.0f / total;
  for (int64_t j = 0; j < d; j++) o[j] *= inv;
  round_all(m, o, xb + r * inner + h * d, d);
}

/* x += y, a sub-layer's output added to the residual stream (for a bfloat16 model y rounded, then the sum) */
static void shortcut(const gl_model* m, float* x, float* y, int64_t n) {
  round_all(m, y, NULL, n);
  for (int64_t i = 0; i < n; i++) x[i] += y[i];
  round_all(m, x, NULL, n);
}

/* GELU's tanh approximation, F.gelu(x, approximate="tanh") = x (1 + tanh(u)) / 2 with u = sqrt(2 / pi)
 * (x + 0.044715 x^3), written x / (1 + e^(-2u)) (the same function): one exponential, 16 at a time. libm's
 * tanhf one value at a time took ~10 ns a value, 0.4 ms of a gpt2_small step's 37k GELUs. */
static inline v16f gelu_lanes(v16f x) {
  const float beta = 0.7978845608028654f; /* sqrt(2 / pi) */
  const v16f minus_2u = -2.0f * beta * (x + 0.044715f * x * x * x), zero = {0};
  /* past exp_lanes' clamp (x < -9.3) GELU is below float32's normal numbers: x 0 (-0, as PyTorch's gives) */
  return pick(minus_2u > zero + 88.0f, x * 0.0f, x / (1.0f + exp_lanes(minus_2u)));
}

/* y = GELU(x) over n floats, the step's own function (for the tests) */
void gpt_lab_gelu(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i += L) store_n(y + i, gelu_lanes(load_part(x + i, n - i)), n - i);
}

/* the feed-forward's hidden values ff[c * L ..] (n in all): GELU, for a bfloat16 model the product's
 * output rounded first and GELU's after (its bits in xb for fc2) */
static void gelu_chunk(const gl_model* m, float* ff, uint16_t* xb, int64_t c, int64_t n) {
  const int64_t i = c * L;
  v16f f = load_part(ff + i, n - i);
  if (m->bf16) {
    const v16u32 h = to_bf16_lanes(gelu_lanes(from_bf16_lanes(to_bf16_lanes(f))));
    store_bf16_n(xb + i, h, n - i);
    f = from_bf16_lanes(h);
  } else {
    f = gelu_lanes(f);
  }
  store_n(ff + i, f, n - i);
}

/* tokens (M) at position pos (M <= batch, pos < max_len) -> logits (M, vocab); 0, or -1 for a token
 * outside the vocabulary (nothing computed, the cache untouched). */
int gpt_lab_gpt2_step(const gl_model* m, const int64_t* tokens, int64_t M, int64_t pos, float* logits, int threads) {
  for (int64_t r = 0; r < M; r++)
    if (tokens[r] < 0 || tokens[r] >= m->vocab) return -1;
  const int64_t E = m->emb, inner = m->heads * m->head_dim;
  float* x = m->work;         /* the residual stream (M, E) */
  float* h = x + M * E;       /* a norm's output (M, E) */
  float* y = h + M * E;       /* a sub-layer's output (M, E) */
  float* q = y + M * E;       /* (M, inner) each */
  float* k = q + M * inner;
  float* v = k + M * inner;
  float* att = v + M * inner;
  float* ff = att + M * inner; /* (M, hidden) */
  float* scores = ff + M * m->hidden; /* (M * heads, max_len) */
  uint16_t* xb = (uint16_t*)(scores + M * m->heads * m->max_len); /* the next product's input in bfloat16 */
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
  {
#pragma omp single
    {
      for (int64_t r = 0; r < M; r++)
        for (int64_t i = 0; i < E; i++) {
          const int64_t at = tokens[r] * E + i;
          const float token = m->bf16 ? from_bf16(((const uint16_t*)m->tok_emb)[at]) : ((const float*)m->tok_emb)[at];
          x[r * E + i] = token + m->pos_emb[pos * E + i];
        }
      round_all(m, x, NULL, M * E);
    }
    for (int64_t l = 0; l < m->n_layers; l++) {
      const gl_block* blk = m->blocks + l;
#pragma omp single
      {
        for (int64_t r = 0; r < M; r++) layer_norm(x + r * E, blk->norm1_w, blk->norm1_b, blk->eps1, h + r * E, E);
        round_all(m, h, xb, M * E);
      }
      product(&blk->q, h, xb, q, M);
      product(&blk->k, h, xb, k, M);
      product(&blk->v, h, xb, v, M);
#pragma omp barrier
#pragma omp single
      round_all(m, q, NULL, 3 * M * inner); /* q, k and v lie one after another */
#pragma omp for schedule(static)
      for (int64_t task = 0; task < M * m->heads; task++)
        attend(m, blk, q, k, v, scores + task * m->max_len, att, xb, task / m->heads, task % m->heads, pos);
      product(&blk->out, att, xb, y, M);
#pragma omp barrier
#pragma omp single
      {
        shortcut(m, x, y, M * E);
        for (int64_t r = 0; r < M; r++) layer_norm(x + r * E, blk->norm2_w, blk->norm2_b, blk->eps2, h + r * E, E);
        round_all(m, h, xb, M * E);
      }
      product(&blk->fc1, h, xb, ff, M);
#pragma omp barrier
      const int64_t n_ff = M * blk->fc1.n_out;
#pragma omp for schedule(static)
      for (int64_t c = 0; c < (n_ff + L - 1) / L; c++) gelu_chunk(m, ff, xb, c, n_ff);
      product(&blk->fc2, ff, xb, y, M);
#pragma omp barrier
#pragma omp single
      shortcut(m, x, y, M * E);
    }
#pragma omp single
    {
      for (int64_t r = 0; r < M; r++) layer_norm(x + r * E, m->final_w, m->final_b, m->eps, h + r * E, E);
      round_all(m, h, xb, M * E);
    }
    product(&m->head, h, xb, logits, M);
  }
  return 0;
}

/* gpt_lab's float32 one-row product for the CPU: y = x @ w^T + bias, w in nn.Linear's own (N, K) layout
 * (float32; the decoding step, gpt2_step.c, also reads bfloat16 weights through the same structure).
 *
 * Built with the int8 kernel (gpt_lab/model/native.py) and used by the CPU decoding path
 * (gpt_lab/generation/decoding.py) for a generation step's few rows: MKL's single-row product reads
 * the weights at 14-23 GB/s with two threads on the CPU the project is measured on, this loop as fast
 * as any reader of the memory there, from the weights as the model holds them: no copy, no other layout.
 *
 * Each thread takes a contiguous share of the outputs and reads it as R long streams (see
 * gpt_lab_f32_rows), R rows at a time, 16 inputs a step, one vector of partial sums per row, then a
 * fixed tree over its lanes (vectors.h). Each output element sums in one fixed order whatever M, the
 * rows it is read with and the number of threads.
 */
#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include <omp.h>

#include "products.h"
#include "vectors.h" /* L = 16 inputs per vector */

#define R GPT_LAB_ROWS /* output rows streamed together */

/* acc[j] = 16 lanes of x . row[j] for n (<= R) float32 rows of K weights each; always inlined, so the
 * caller's n = R compiles to a fixed, unrolled inner loop */
static inline __attribute__((always_inline)) void rows_dot_f32(const float* x, const float* const row[R], int64_t K,
                                                               int n, v16f acc[R]) {
  for (int j = 0; j < R; j++) acc[j] = (v16f){0};
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    v16f xv, wv;
    memcpy(&xv, x + k, sizeof xv);
    for (int j = 0; j < n; j++) {
      memcpy(&wv, row[j] + k, sizeof wv);
      acc[j] += xv * wv;
    }
  }
  if (k < K) { /* the last K % 16 inputs, zero-filled */
    v16f xv = load_part(x + k, K - k);
    for (int j = 0; j < n; j++) acc[j] += xv * load_part(row[j] + k, K - k);
  }
}

/* The same for bfloat16 inputs and weights (their bits: a float32's top half; the decoding step converts
 * a bfloat16 model's activations once per product). With AVX-512 BF16, 32 inputs an instruction
 * (vdpbf16ps: lane i adds x[2i] w[2i] + x[2i+1] w[2i+1]): one core read 16-19 GB/s of weights from
 * memory that way (one row at a time), 10-11 widening them to float32 first. Elsewhere both are
 * widened, 16 a step. */
#if defined(__AVX512BF16__)
static inline __m512bh load_bf16x32(const uint16_t* p, int64_t left) { /* 32 values (zeros past left) */
  __m512i v = left >= 2 * L ? _mm512_loadu_si512((const void*)p)
                             : _mm512_maskz_loadu_epi16((__mmask32)((1ull << left) - 1), p);
  __m512bh b;
  memcpy(&b, &v, sizeof b);
  return b;
}

static inline __attribute__((always_inline)) void rows_dot_bf16(const uint16_t* x, const uint16_t* const row[R],
                                                                int64_t K, int n, v16f acc[R]) {
  __m512 a[R];
  for (int j = 0; j < R; j++) a[j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 2 * L) {
    const __m512bh xv = load_bf16x32(x + k, K - k);
    for (int j = 0; j < n; j++) a[j] = _mm512_dpbf16_ps(a[j], xv, load_bf16x32(row[j] + k, K - k));
  }
  for (int j = 0; j < R; j++) memcpy(&acc[j], &a[j], sizeof acc[j]);
}
#else
static inline __attribute__((always_inline)) void rows_dot_bf16(const uint16_t* x, const uint16_t* const row[R],
                                                                int64_t K, int n, v16f acc[R]) {
  for (int j = 0; j < R; j++) acc[j] = (v16f){0};
  for (int64_t k = 0; k < K; k += L) {
    const v16f xv = load_bf16(x + k, K - k);
    for (int j = 0; j < n; j++) acc[j] += xv * load_bf16(row[j] + k, K - k);
  }
}
#endif

/* y's outputs r0 .. r1 - 1 for every row of x: w (N, K) and x (M, K) float32 (gpt_lab_f32_rows) or
 * bfloat16 (gpt_lab_bf16_rows), bias (N) float32 or NULL, y (M, N) float32.
 * The R rows summed together are not neighbours but R streams: the range is cut into R runs of rows and
 * stream j walks run j row after row, so each stream reads one long stretch of memory. Taking R
 * neighbouring rows at a time instead restarts R - 1 streams every R rows, and a core's prefetcher
 * loses the time each restart costs: one core, from memory, 768-input rows read 16-17 GB/s that way
 * and 22-23 this way (3,072 inputs: 22 against 24.5). Each output sums as it would alone (one fixed
 * order), so which rows go together changes nothing, bit for bit. The n % R rows left over at the
 * end run together as a last, partial group. */
#define ROWS(NAME, T)                                                                                           \
  void gpt_lab_##NAME##_rows(const T* x, const T* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K, \
                             int64_t r0, int64_t r1) {                                                          \
    const int64_t span = (r1 - r0) / R; /* rows per stream */                                                   \
    const T* row[R];                                                                                            \
    v16f acc[R];                                                                                                \
    for (int64_t i = 0; i <= span; i++) {                                                                       \
      const int n = i < span ? R : (int)((r1 - r0) % R); /* i == span: the rows left over */                   \
      if (n == 0) break;                                                                                        \
      int64_t out[R];                                                                                           \
      for (int j = 0; j < n; j++) {                                                                             \
        out[j] = i < span ? r0 + j * span + i : r0 + R * span + j;                                              \
        row[j] = w + out[j] * K;                                                                                \
      }                                                                                                         \
      for (int64_t m = 0; m < M; m++) { /* the R rows are in the caches for the next x row */                  \
        if (n == R)                                                                                             \
          rows_dot_##NAME(x + m * K, row, K, R, acc);                                                           \
        else                                                                                                    \
          rows_dot_##NAME(x + m * K, row, K, n, acc);                                                           \
        for (int j = 0; j < n; j++) {                                                                           \
          const float s = lanes_sum(acc[j]);                                                                    \
          y[m * N + out[j]] = bias ? s + bias[out[j]] : s;                                                      \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }
ROWS(f32, float)
ROWS(bf16, uint16_t)

/* The outputs thread t of T computes: a contiguous share of whole groups of R (gpt2_step.c's too). */
void gpt_lab_f32_share(int64_t N, int t, int T, int64_t* r0, int64_t* r1) {
  const int64_t groups = (N + R - 1) / R;
  *r0 = groups * t / T * R;
  *r1 = groups * (t + 1) / T * R;
  *r0 = *r0 < N ? *r0 : N;
  *r1 = *r1 < N ? *r1 : N;
}

void gpt_lab_f32_linear(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                        int threads) {
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
  {
    int64_t r0, r1;
    gpt_lab_f32_share(N, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
    gpt_lab_f32_rows(x, w, bias, y, M, N, K, r0, r1);
  }
}

/* The same for bfloat16 x (M, K) and w (N, K) (their bits), bias float32 or NULL, y float32 */
void gpt_lab_bf16_linear(const uint16_t* x, const uint16_t* w, const float* bias, float* y, int64_t M, int64_t N,
                         int64_t K, int threads) {
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
  {
    int64_t r0, r1;
    gpt_lab_f32_share(N, omp_get_thread_num(), omp_get_num_threads(), &r0, &r1);
    gpt_lab_bf16_rows(x, w, bias, y, M, N, K, r0, r1);
  }
}

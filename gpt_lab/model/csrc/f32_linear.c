/* gpt_lab's float32 one-row product for the CPU: y = x @ w^T + bias, w in nn.Linear's own (N, K) layout.
 *
 * Built with the int8 kernel (gpt_lab/model/native.py) and used by the CPU decoding path
 * (gpt_lab/generation/decoding.py) for a generation step's few rows: MKL's single-row product reads
 * the weights at 14-23 GB/s on the CPU the project is measured on, this loop at 27-32 (about the
 * machine's read bandwidth), from the weights as the model holds them: no copy, no other layout.
 *
 * Output rows go R at a time: R weight rows streamed together, 16 inputs a step, one vector of
 * partial sums per row, then a fixed tree over its lanes (vectors.h). Each output element sums in
 * one fixed order whatever M and the number of threads (these split blocks of R outputs only).
 */
#include "products.h"
#include "vectors.h" /* L = 16 inputs per vector */

#define R GPT_LAB_ROWS /* output rows streamed together */

/* acc[j] = 16 lanes of x . w[j] for the n (<= R) rows of w (row stride K); always inlined, so the
 * caller's n = R (every block but a partial last one) compiles to a fixed, unrolled inner loop */
static inline __attribute__((always_inline)) void rows_dot(const float* x, const float* w, int64_t K, int n,
                                                           v16f acc[R]) {
  for (int j = 0; j < R; j++) acc[j] = (v16f){0};
  int64_t k = 0;
  for (; k + L <= K; k += L) {
    v16f xv;
    memcpy(&xv, x + k, sizeof xv);
    for (int j = 0; j < n; j++) {
      v16f wv;
      memcpy(&wv, w + j * K + k, sizeof wv);
      acc[j] += xv * wv;
    }
  }
  if (k < K) { /* the last K % 16 inputs, zero-filled */
    v16f xv = load_part(x + k, K - k);
    for (int j = 0; j < n; j++) acc[j] += xv * load_part(w + j * K + k, K - k);
  }
}

/* Output block b (rows b*R ..) of y for every row of x: what one thread does (the decoding step's
 * products, gpt2_step.c, call it too). x (M, K), w (N, K), bias (N) or NULL, y (M, N): contiguous float32. */
void gpt_lab_f32_block(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                       int64_t b) {
  const int64_t n0 = b * R;
  const int n = (int)(N - n0 < R ? N - n0 : R);
  for (int64_t m = 0; m < M; m++) {
    v16f acc[R];
    if (n == R)
      rows_dot(x + m * K, w + n0 * K, K, R, acc);
    else
      rows_dot(x + m * K, w + n0 * K, K, n, acc);
    for (int j = 0; j < n; j++) {
      const float s = lanes_sum(acc[j]);
      y[m * N + n0 + j] = bias ? s + bias[n0 + j] : s;
    }
  }
}

void gpt_lab_f32_linear(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                        int threads) {
  const int64_t blocks = (N + R - 1) / R;
#pragma omp parallel for num_threads(threads > 0 ? threads : 1) schedule(static)
  for (int64_t b = 0; b < blocks; b++) gpt_lab_f32_block(x, w, bias, y, M, N, K, b);
}

/* gpt_lab's int8 weight-only product for the CPU: y = x @ (w * scale)^T + bias, float32 x and y.
 *
 * Built by gpt_lab/model/native.py the first time int8 generation runs (the system C compiler,
 * -O3 -march=native, OpenMP from PyTorch's own runtime) and cached; docs/performance.md says why:
 * PyTorch's int8 kernels read the weights at 8-19 GB/s here, this one at 21-37.
 *
 * Layout of w (gpt_lab.model.native.block_int8): output rows in blocks of R = 8 (zero rows pad the
 * last), inputs in chunks of L = 16 (zeros pad the last), stored block by block, chunk by chunk, row
 * by row: [block][chunk][row in block][16 int8]. One-row products then read w strictly in order.
 *
 * Each output element sums its row's products in one fixed order (16 lanes along the input, chunk
 * after chunk, then a fixed tree over the lanes), whatever M, the tile it falls in and the number of
 * threads (these split output blocks only): a row's result depends on that row alone, bit for bit.
 */
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <omp.h>

#include "products.h"
#include "vectors.h" /* L = 16 inputs per chunk */

#define R GPT_LAB_ROWS /* output rows per block */
#define MB 3 /* input rows per tile when x has several rows */

static inline v16f load_w(const int8_t* p) { /* 16 int8 -> 16 float, exactly */
#if defined(__AVX512F__)
  __m512 r = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
  v16f v;
  memcpy(&v, &r, sizeof v);
  return v;
#elif defined(__AVX2__)
  __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
  __m256 b = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p + 8))));
  v16f v;
  memcpy(&v, &a, 32);
  memcpy((char*)&v + 32, &b, 32);
  return v;
#else
  v16b b;
  memcpy(&b, p, sizeof b);
  return __builtin_convertvector(__builtin_convertvector(b, v16i), v16f);
#endif
}

/* rows x[0..ROWS) (row stride K) against one block of w: acc[i][j] = 16 lanes of x_i . w_j */
#define TILE(ROWS)                                                                           \
  static inline void tile_##ROWS(const float* x, int64_t K, const int8_t* w, int64_t chunks, \
                                 v16f acc[ROWS][R]) {                                        \
    for (int i = 0; i < ROWS; i++)                                                           \
      for (int j = 0; j < R; j++) acc[i][j] = (v16f){0};                                     \
    for (int64_t c = 0; c < chunks; c++, w += R * L) {                                       \
      v16f xv[ROWS];                                                                         \
      if ((c + 1) * L <= K)                                                                  \
        for (int i = 0; i < ROWS; i++) memcpy(&xv[i], x + i * K + c * L, sizeof(v16f));     \
      else                                                                                   \
        for (int i = 0; i < ROWS; i++) xv[i] = load_part(x + i * K + c * L, K - c * L);         \
      for (int j = 0; j < R; j++) {                                                          \
        v16f wv = load_w(w + j * L);                                                         \
        for (int i = 0; i < ROWS; i++) acc[i][j] = acc[i][j] + xv[i] * wv;                   \
      }                                                                                      \
    }                                                                                        \
  }
TILE(1)
TILE(MB)

/* one x row against two blocks at once (wa, wb: two runs of the weights, read side by side): per block
 * the same sums as tile_1, so each output is the same bit for bit */
static inline void tile_pair(const float* x, int64_t K, const int8_t* wa, const int8_t* wb, int64_t chunks,
                             v16f acc_a[R], v16f acc_b[R]) {
  for (int j = 0; j < R; j++) acc_a[j] = acc_b[j] = (v16f){0};
  for (int64_t c = 0; c < chunks; c++, wa += R * L, wb += R * L) {
    const v16f xv = load_part(x + c * L, K - c * L);
    for (int j = 0; j < R; j++) {
      acc_a[j] = acc_a[j] + xv * load_w(wa + j * L);
      acc_b[j] = acc_b[j] + xv * load_w(wb + j * L);
    }
  }
}

static inline void finish(v16f acc[R], int64_t n0, int64_t N, const float* scale, const float* bias, float* y) {
  for (int j = 0; j < R && n0 + j < N; j++) {
    float s = lanes_sum(acc[j]) * scale[n0 + j];
    y[n0 + j] = bias ? s + bias[n0 + j] : s;
  }
}

/* Output block b (rows b*R ..) of y for every row of x: what one thread does (the decoding step's
 * products, gpt2_step.c, call it too). x (M, K), w blocked as above for N outputs, scale (N), bias (N)
 * or NULL, y (M, N): all contiguous. */
void gpt_lab_int8_block(const float* x, const int8_t* w, const float* scale, const float* bias, float* y, int64_t M,
                        int64_t N, int64_t K, int64_t b) {
  const int64_t chunks = (K + L - 1) / L;
  const int8_t* wb = w + b * chunks * R * L;
  int64_t m = 0;
  for (; m + MB <= M; m += MB) {
    v16f acc[MB][R];
    tile_MB(x + m * K, K, wb, chunks, acc);
    for (int i = 0; i < MB; i++) finish(acc[i], b * R, N, scale, bias, y + (m + i) * N);
  }
  for (; m < M; m++) {
    v16f acc[1][R];
    tile_1(x + m * K, K, wb, chunks, acc);
    finish(acc[0], b * R, N, scale, bias, y + m * N);
  }
}

/* Blocks b0 .. b1 - 1 for every row of x. One x row: the range cut into two runs read side by side,
 * two streams (one core read one stream of int8 blocks slower than two); several: block by block. */
void gpt_lab_int8_blocks(const float* x, const int8_t* w, const float* scale, const float* bias, float* y, int64_t M,
                         int64_t N, int64_t K, int64_t b0, int64_t b1) {
  if (M != 1) {
    for (int64_t b = b0; b < b1; b++) gpt_lab_int8_block(x, w, scale, bias, y, M, N, K, b);
    return;
  }
  const int64_t chunks = (K + L - 1) / L, half = (b1 - b0) / 2, size = chunks * R * L;
  for (int64_t i = 0; i < half; i++) {
    const int64_t a = b0 + i, b = b0 + half + i;
    v16f acc_a[R], acc_b[R];
    tile_pair(x, K, w + a * size, w + b * size, chunks, acc_a, acc_b);
    finish(acc_a, a * R, N, scale, bias, y);
    finish(acc_b, b * R, N, scale, bias, y);
  }
  if ((b1 - b0) % 2) gpt_lab_int8_block(x, w, scale, bias, y, M, N, K, b1 - 1);
}

/* Thread t of T's blocks: a contiguous share of them. */
void gpt_lab_int8_share(int64_t N, int t, int T, int64_t* b0, int64_t* b1) {
  const int64_t blocks = (N + R - 1) / R;
  *b0 = blocks * t / T;
  *b1 = blocks * (t + 1) / T;
}

void gpt_lab_int8_linear(const float* x, const int8_t* w, const float* scale, const float* bias, float* y,
                         int64_t M, int64_t N, int64_t K, int threads) {
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
  {
    int64_t b0, b1;
    gpt_lab_int8_share(N, omp_get_thread_num(), omp_get_num_threads(), &b0, &b1);
    gpt_lab_int8_blocks(x, w, scale, bias, y, M, N, K, b0, b1);
  }
}

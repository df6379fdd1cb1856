/* MLA's decoding attention on the CPU: H queries over one latent that is both keys and values,
 * out_i = sum_t softmax_t(scale * q_i . c_t) c_t, float32 (gpt_lab/model/attention_decode.py).
 *
 * All heads read the same latent rows, so each row is read once for all H queries and the step is
 * bound by arithmetic (2 H N multiply-adds a cached position), not by reads. The positions are cut
 * into one part per thread (flash-decoding's split); each part walks its positions in blocks of 16
 * and keeps, per query, a running maximum m, the sum l of exp(score - m) and the weighted sum acc of
 * the rows (rescaled when m grows); the parts are combined at the end by exp(m_part - m_all).
 * Scores of 4 queries x 4 positions are summed across lanes together, exponentials 16 at a time.
 * Built with int8_linear.c into one library (gpt_lab/model/native.py).
 */
#include <math.h>

#include "vectors.h" /* L = 16 floats per vector */

#define B 16 /* positions per block: one vector of scores per query */

static inline float lanes_max(v16f a) {
  float top = a[0];
  for (int j = 1; j < L; j++) top = a[j] > top ? a[j] : top;
  return top;
}

/* lane j of the result: the sum of a[j]'s lanes (a tree of interleaving adds) */
static inline v16f sums16(const v16f a[16]) {
  v16f b[8], c[4], d[2];
  for (int k = 0; k < 8; k++)
    b[k] = __builtin_shufflevector(a[2 * k], a[2 * k + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * k], a[2 * k + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30,
                                   31);
  for (int k = 0; k < 4; k++)
    c[k] = __builtin_shufflevector(b[2 * k], b[2 * k + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(b[2 * k], b[2 * k + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int k = 0; k < 2; k++)
    d[k] = __builtin_shufflevector(c[2 * k], c[2 * k + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(c[2 * k], c[2 * k + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(d[0], d[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(d[0], d[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* s[i * B + t] = q_i . c_t for QN queries and TN positions, rows of N floats */
#define SCORES(QN, TN)                                                                             \
  static inline void scores_##QN##x##TN(const float* q, const float* c, int64_t N, float* s) {     \
    v16f acc[QN * TN];                                                                             \
    for (int j = 0; j < QN * TN; j++) acc[j] = (v16f){0};                                          \
    int64_t k = 0;                                                                                 \
    for (; k + L <= N; k += L) {                                                                   \
      v16f cv[TN];                                                                                 \
      for (int t = 0; t < TN; t++) memcpy(&cv[t], c + t * N + k, sizeof(v16f));                   \
      for (int i = 0; i < QN; i++) {                                                               \
        v16f qv;                                                                                   \
        memcpy(&qv, q + i * N + k, sizeof qv);                                                     \
        for (int t = 0; t < TN; t++) acc[i * TN + t] += qv * cv[t];                                \
      }                                                                                            \
    }                                                                                              \
    if (k < N)                                                                                     \
      for (int i = 0; i < QN; i++)                                                                 \
        for (int t = 0; t < TN; t++)                                                               \
          acc[i * TN + t] += load_part(q + i * N + k, N - k) * load_part(c + t * N + k, N - k);   \
    if (QN * TN == 16) {                                                                           \
      const v16f all = sums16(acc);                                                                \
      for (int i = 0; i < QN; i++)                                                                 \
        for (int t = 0; t < TN; t++) s[i * B + t] = all[i * TN + t];                               \
    } else {                                                                                       \
      for (int i = 0; i < QN; i++)                                                                 \
        for (int t = 0; t < TN; t++) s[i * B + t] = lanes_sum(acc[i * TN + t]);                    \
    }                                                                                              \
  }
SCORES(4, 4)
SCORES(4, 1)
SCORES(1, 4)
SCORES(1, 1)

/* One part of the positions: c (T, N) -> m (H), l (H), acc (H, N) for the queries q (H, N). */
static void attend_part(const float* q, const float* c, int64_t H, int64_t T, int64_t N, float scale, float* m,
                        float* l, float* acc, float* s /* H * B */) {
  for (int64_t i = 0; i < H; i++) m[i] = -INFINITY, l[i] = 0.0f;
  memset(acc, 0, (size_t)(H * N) * sizeof(float));
  for (int64_t t0 = 0; t0 < T; t0 += B) {
    const int64_t n = T - t0 < B ? T - t0 : B;
    const float* cb = c + t0 * N;
    int64_t i = 0;
    for (; i + 4 <= H; i += 4) {
      int64_t t = 0;
      for (; t + 4 <= n; t += 4) scores_4x4(q + i * N, cb + t * N, N, s + i * B + t);
      for (; t < n; t++) scores_4x1(q + i * N, cb + t * N, N, s + i * B + t);
    }
    for (; i < H; i++) {
      int64_t t = 0;
      for (; t + 4 <= n; t += 4) scores_1x4(q + i * N, cb + t * N, N, s + i * B + t);
      for (; t < n; t++) scores_1x1(q + i * N, cb + t * N, N, s + i * B + t);
    }
    for (i = 0; i < H; i++) { /* the running softmax: this block's weights, the old sums rescaled */
      v16f sv;
      memcpy(&sv, s + i * B, sizeof sv);
      sv *= scale;
      for (int64_t t = n; t < B; t++) sv[t] = -INFINITY;
      const float block_top = lanes_max(sv), top = block_top > m[i] ? block_top : m[i];
      v16f p = exp_lanes(sv - top);
      for (int64_t t = n; t < B; t++) p[t] = 0.0f;
      memcpy(s + i * B, &p, sizeof p);
      if (top > m[i]) {
        const float shrink = m[i] == -INFINITY ? 0.0f : expf(m[i] - top);
        l[i] *= shrink;
        if (shrink != 1.0f)
          for (int64_t k = 0; k < N; k++) acc[i * N + k] *= shrink;
        m[i] = top;
      }
      l[i] += lanes_sum(p);
    }
    for (i = 0; i < H; i += 4) { /* acc_i += sum_t p_ti c_t, four queries at a time */
      const int64_t qn = H - i < 4 ? H - i : 4;
      int64_t k = 0;
      for (; k + L <= N; k += L) {
        v16f a[4];
        for (int j = 0; j < qn; j++) memcpy(&a[j], acc + (i + j) * N + k, sizeof(v16f));
        for (int64_t t = 0; t < n; t++) {
          v16f cv;
          memcpy(&cv, cb + t * N + k, sizeof cv);
          for (int j = 0; j < qn; j++) a[j] += s[(i + j) * B + t] * cv;
        }
        for (int j = 0; j < qn; j++) memcpy(acc + (i + j) * N + k, &a[j], sizeof(v16f));
      }
      for (; k < N; k++)
        for (int j = 0; j < qn; j++)
          for (int64_t t = 0; t < n; t++) acc[(i + j) * N + k] += s[(i + j) * B + t] * cb[t * N + k];
    }
  }
}

/* q (H, N), c (S, N), out (H, N); work: parts * (H * (N + 2 + B)) floats; 1 <= parts <= S. */
void gpt_lab_latent_attention(const float* q, const float* c, float* out, int64_t H, int64_t S, int64_t N,
                              float scale, int parts, float* work) {
  const int64_t per = H * (N + 2 + B);
#pragma omp parallel for num_threads(parts) schedule(static)
  for (int p = 0; p < parts; p++) {
    const int64_t lo = S * p / parts, hi = S * (p + 1) / parts;
    float* w = work + p * per;
    attend_part(q, c + lo * N, H, hi - lo, N, scale, w, w + H, w + 2 * H, w + H * (N + 2));
  }
  for (int64_t i = 0; i < H; i++) {
    float top = -INFINITY, total = 0.0f;
    for (int p = 0; p < parts; p++) top = work[p * per + i] > top ? work[p * per + i] : top;
    for (int64_t k = 0; k < N; k++) out[i * N + k] = 0.0f;
    for (int p = 0; p < parts; p++) {
      const float* w = work + p * per;
      const float f = expf(w[i] - top);
      total += f * w[H + i];
      for (int64_t k = 0; k < N; k++) out[i * N + k] += f * w[2 * H + i * N + k];
    }
    for (int64_t k = 0; k < N; k++) out[i * N + k] /= total;
  }
}

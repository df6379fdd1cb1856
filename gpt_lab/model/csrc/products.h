/* What one thread does of the float32, bfloat16 and int8 one-row products (f32_linear.c, int8_linear.c),
 * y = x @ w^T + bias for every row of x: float32 and bfloat16 a range of outputs, int8 a block of
 * GPT_LAB_ROWS outputs (rows b * GPT_LAB_ROWS ..). The products' own entry points share them over an
 * OpenMP team; the decoding step (gpt2_step.c) calls them from its own team, so a product sums exactly
 * as it does alone. */
#ifndef GPT_LAB_PRODUCTS_H
#define GPT_LAB_PRODUCTS_H
#include <stdint.h>

#define GPT_LAB_ROWS 8 /* output rows summed together, every kernel */

void gpt_lab_f32_rows(const float* x, const float* w, const float* bias, float* y, int64_t M, int64_t N, int64_t K,
                      int64_t r0, int64_t r1); /* outputs r0 .. r1 - 1 (float32: see f32_linear.c) */
void gpt_lab_f32_share(int64_t N, int t, int T, int64_t* r0, int64_t* r1); /* thread t's outputs (both) */
void gpt_lab_bf16_rows(const uint16_t* x, const uint16_t* w, const float* bias, float* y, int64_t M, int64_t N,
                       int64_t K, int64_t r0, int64_t r1); /* the same, x and w bfloat16 bits */
void gpt_lab_int8_block(const float* x, const int8_t* w, const float* scale, const float* bias, float* y, int64_t M,
                        int64_t N, int64_t K, int64_t b);
void gpt_lab_int8_blocks(const float* x, const int8_t* w, const float* scale, const float* bias, float* y, int64_t M,
                         int64_t N, int64_t K, int64_t b0, int64_t b1); /* blocks b0 .. b1 - 1 */
void gpt_lab_int8_share(int64_t N, int t, int T, int64_t* b0, int64_t* b1); /* thread t's blocks */

#endif

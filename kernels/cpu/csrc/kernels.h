/* The kernels' cores, shared by their own entry points and the fused decoder layer. They work
 * on fp32 activations that hold values already rounded to the model's dtype (what torch would
 * have stored), read weights and caches in that dtype, and round every result the same way. */
#ifndef INFERNETES_CPU_KERNELS_H
#define INFERNETES_CPU_KERNELS_H

#include <stdint.h>

/* y[i, row] = dot(w[row], xf[i]) + bias[row], rounded to dtype, for rows [first, last) and
 * i < m; y is fp32 (y_dtype IFN_F32) or the model's dtype, with row stride y_stride. */
void ifn_linear_rows(const float *xf, int64_t m, int64_t k, const void *w, const void *bias,
                     void *y, int64_t y_stride, int y_dtype, int64_t first, int64_t last,
                     int dtype);

/* The same product by the register-blocked GEMM (gemm.c), for many rows of x. */
void ifn_gemm_rows(const float *xf, int64_t m, int64_t k, const void *w, const void *bias,
                   void *y, int64_t y_stride, int y_dtype, int64_t first, int64_t last,
                   int dtype);

/* out = weight * round(s / rms(s)), rounded, where s = round(x + residual) (then written to
 * residual) or s = x when residual is NULL. One row of h. */
void ifn_rms_norm_row(const float *x, float *residual, const void *weight, float *out,
                      int64_t h, float eps, int dtype);

/* out[j] = silu(gate[j]) * up[j] for j < d. */
void ifn_silu_and_mul_span(const float *gate, const float *up, float *out, int64_t d,
                           int dtype);

/* Rotates num_heads heads of one token in place; cs: the position's cos | sin row. */
void ifn_rotary_token(float *heads, int64_t num_heads, int64_t head_dim, const float *cs,
                      int dtype);

/* Attention of the `group` query heads sharing one KV head over one sequence's keys
 * [first, len): q and out are [group, head_dim]; scratch: scores of group * (len - first)
 * floats, rows of len - first int64. */
void ifn_decode_attention_group(const float *q, float *out, float *scores, int64_t *rows,
                                int64_t group, const void *key_cache, const void *value_cache,
                                const int64_t *block_table, int64_t first, int64_t len,
                                int64_t kv_head, int64_t num_kv_heads, int64_t head_dim,
                                int64_t block_size, float scale, int dtype);

#endif

/* The kernels' cores, shared by their own entry points and the fused decoder layer. They work
 * on fp32 activations that hold values already rounded to the model's dtype (what torch would
 * have stored), read weights and caches in that dtype, and round every result the same way. */
#ifndef INFERNETES_CPU_KERNELS_H
#define INFERNETES_CPU_KERNELS_H

#include <stdint.h>

/* y[i, row] = dot(w[row], xf[i]) + bias[row], rounded to dtype, for rows [first, last) and
 * i < m; y is fp32 (y_dtype IFN_F32; IFN_F32_UNROUNDED: not rounded) or the model's dtype,
 * with row stride y_stride. */
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

/* One projection's adapter slots (kernels/lora.py's layout, scaling folded into B):
 * a [num_slots, rank, in], b [num_slots, out, rank], in the model's dtype; its columns
 * [column_offset, column_offset + out) of a merged output (q, k, v of qkv; gate, up). */
struct ifn_lora_target {
    const void *a, *b;
    int64_t in, out, column_offset;
};

/* One batch's tokens with an adapter, grouped by slot (ifn_lora_prepare): order[first[c]
 * .. first[c + 1]) are the tokens of chunk c, at most IFN_LORA_CHUNK of one slot, slot[c]. */
#define IFN_LORA_CHUNK 48
struct ifn_lora_batch {
    int64_t rank, num_tokens, num_chunks;
    int64_t *order, *first;
    int32_t *slot;
    float *scratch; /* per thread, scratch_floats: a chunk's rows of the widest feature */
    int64_t scratch_floats;
};

/* Plans `batch` from token_slots ([m], -1: the base model; tokens keep their order within a
 * slot) in one allocation that also holds extra_floats floats (*extra) and num_threads
 * scratch areas of a chunk's rows of `widest` features. Returns the allocation, to free(), or
 * NULL when out of memory. */
void *ifn_lora_prepare(struct ifn_lora_batch *batch, const int32_t *token_slots, int64_t m,
                       int64_t rank, int64_t widest, int num_threads, size_t extra_floats,
                       float **extra);

/* y[p, i] = x[order[i]] @ a_p[slot].T (fp32, not rounded; y: [num_parts, num_tokens, rank])
 * for every planned token i; shared by the threads of the enclosing parallel region (ends
 * with its barrier). x: rows of `in` elements of x_dtype (fp32 or the model's), row stride
 * x_stride. */
void ifn_lora_shrink(const struct ifn_lora_target *parts, int num_parts, const void *x,
                     int64_t x_stride, int x_dtype, const struct ifn_lora_batch *batch, float *y,
                     int dtype);

/* out[t, c] = round(out[t, c] + round((y[p, i] @ b_p[slot].T)[c - offset_p])), t = order[i],
 * for this thread's columns c in [first, last) of every part p; out has row stride out_stride
 * and holds fp32 (values rounded to dtype) or the model's dtype (out_dtype). */
void ifn_lora_expand(const struct ifn_lora_target *parts, int num_parts, const float *y,
                     const struct ifn_lora_batch *batch, void *out, int64_t out_stride,
                     int out_dtype, int64_t first, int64_t last, int dtype);

#endif

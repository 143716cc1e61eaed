/* Batched multi-adapter LoRA inside the fused decode layers (decoder_layer.c), with the
 * semantics of kernels/lora.py: per token t with slot s >= 0 and per projection part p,
 *   y = x[t] @ a_p[s].T                                (fp32, not rounded)
 *   out[t, offset_p + j] += round((y @ b_p[s].T)[j])   (the sum rounded to the model's dtype)
 * Tokens of slot -1 are left as they were.
 *
 * The tokens are grouped by slot once per step (ifn_lora_plan), so that each product covers
 * a chunk of tokens sharing one adapter, through the packed GEMM (gemm.c) whatever the chunk's
 * size: an adapter's matrices are small and stay in cache, so packing them costs little. One
 * matrix-vector product per token made a 64-sequence SmolLM2 decode step with one adapter 60%
 * slower than without (305 vs 190 ms: a rank-16 expand is a dot of 16 per output column, where
 * the horizontal sums cost more than the multiplies); by chunks, 5-10%. The row kernel
 * (linear.c) for chunks under 12 tokens left 8 adapters over 64 sequences at 233 ms against
 * 217 with the GEMM (one run each). */
#include <string.h>
#include <omp.h>

#include "common.h"
#include "kernels.h"

static const void *slot_matrix(const void *stacked, int64_t slot, int64_t rows, int64_t cols,
                               int dtype) {
    return (const char *)stacked + (size_t)(slot * rows * cols) * ifn_elem_size(dtype);
}

int64_t ifn_lora_plan(const int32_t *token_slots, int64_t m, int64_t *order, int64_t *first,
                      int32_t *slot, int64_t *num_tokens) {
    int32_t highest = -1;
    for (int64_t t = 0; t < m; t++) highest = token_slots[t] > highest ? token_slots[t] : highest;
    int64_t n = 0, chunks = 0;
    for (int32_t s = 0; s <= highest; s++) {
        int64_t in_chunk = 0;
        for (int64_t t = 0; t < m; t++) {
            if (token_slots[t] != s) continue;
            if (in_chunk == 0 || in_chunk == IFN_LORA_CHUNK) {
                first[chunks] = n;
                slot[chunks++] = s;
                in_chunk = 0;
            }
            order[n++] = t;
            in_chunk++;
        }
    }
    first[chunks] = n;
    *num_tokens = n;
    return chunks;
}

void ifn_lora_shrink(const struct ifn_lora_target *parts, int num_parts, const float *x,
                     const struct ifn_lora_batch *batch, float *y, int dtype) {
    const int64_t rank = batch->rank;
    float *rows = batch->scratch + (size_t)omp_get_thread_num() * (size_t)batch->scratch_floats;
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < batch->num_chunks * num_parts; task++) {
        const int64_t chunk = task / num_parts, start = batch->first[chunk];
        const int64_t count = batch->first[chunk + 1] - start;
        const struct ifn_lora_target *part = &parts[task % num_parts];
        for (int64_t i = 0; i < count; i++)
            memcpy(rows + i * part->in, x + batch->order[start + i] * part->in,
                   (size_t)part->in * sizeof(float));
        float *y_part = y + ((task % num_parts) * batch->num_tokens + start) * rank;
        ifn_gemm_rows(rows, count, part->in,
                        slot_matrix(part->a, batch->slot[chunk], rank, part->in, dtype), NULL,
                        y_part, rank, IFN_F32_UNROUNDED, 0, rank, dtype);
    }
}

/* out[0:n] = round(out[0:n] + delta[0:n]), out fp32 or of the model's dtype. */
static void add_rounded(void *out, const float *delta, int64_t n, int out_dtype, int dtype) {
    if (out_dtype == IFN_F32) {
        float *o = out;
        int64_t c = 0;
#ifdef IFN_AVX2
        for (; c + 8 <= n; c += 8)
            _mm256_storeu_ps(o + c, ifn_round8(_mm256_add_ps(_mm256_loadu_ps(o + c),
                                                             _mm256_loadu_ps(delta + c)), dtype));
#endif
        for (; c < n; c++) o[c] = ifn_round(o[c] + delta[c], dtype);
        return;
    }
    for (int64_t c = 0; c < n; c++) ifn_store(out, c, ifn_load(out, c, out_dtype) + delta[c],
                                              out_dtype);
}

void ifn_lora_expand(const struct ifn_lora_target *parts, int num_parts, const float *y,
                     const struct ifn_lora_batch *batch, void *out, int64_t out_stride,
                     int out_dtype, int64_t first, int64_t last, int dtype) {
    const int64_t rank = batch->rank;
    const size_t out_elem = ifn_elem_size(out_dtype);
    float *delta = batch->scratch + (size_t)omp_get_thread_num() * (size_t)batch->scratch_floats;
    for (int p = 0; p < num_parts; p++) {
        const struct ifn_lora_target *part = &parts[p];
        /* this thread's columns of the part, in the part's own column numbers */
        const int64_t lo = (first > part->column_offset ? first : part->column_offset) -
                           part->column_offset;
        const int64_t end = part->column_offset + part->out;
        const int64_t hi = (last < end ? last : end) - part->column_offset;
        if (lo >= hi) continue;
        for (int64_t chunk = 0; chunk < batch->num_chunks; chunk++) {
            const int64_t start = batch->first[chunk];
            const int64_t count = batch->first[chunk + 1] - start;
            /* delta[i, lo:hi] = round(y[p, start + i] @ b[slot, lo:hi].T), row stride out */
            ifn_gemm_rows(y + (p * batch->num_tokens + start) * rank, count, rank,
                            slot_matrix(part->b, batch->slot[chunk], part->out, rank, dtype),
                            NULL, delta, part->out, IFN_F32, lo, hi, dtype);
            for (int64_t i = 0; i < count; i++) {
                const int64_t at = batch->order[start + i] * out_stride +
                                   part->column_offset + lo;
                add_rounded((char *)out + (size_t)at * out_elem, delta + i * part->out + lo,
                            hi - lo, out_dtype, dtype);
            }
        }
    }
}

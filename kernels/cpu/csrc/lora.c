/* Batched multi-adapter LoRA inside the fused decode layers (decoder_layer.c), with the
 * semantics of kernels/lora.py: per token t with slot s >= 0 and per projection part p,
 *   y = x[t] @ a_p[s].T                                (fp32, not rounded)
 *   out[t, offset_p + j] += round((y @ b_p[s].T)[j])   (the sum rounded to the model's dtype)
 * Tokens of slot -1 are left as they were.
 *
 * The tokens are grouped by slot once per step (ifn_lora_prepare), so that each product covers
 * a chunk of tokens sharing one adapter. The expand always goes through the packed GEMM
 * (gemm.c): an adapter's matrices are small and stay in cache, so packing them costs little,
 * while the row kernel pays a horizontal sum per output column for a dot of only `rank`
 * elements. One matrix-vector product per token made a 64-sequence SmolLM2 decode step with
 * one adapter 60% slower than without (305 vs 190 ms); by chunks, 5-10%; the row kernel for
 * chunks under 12 tokens left 8 adapters over 64 sequences at 233 ms against 217 with the GEMM
 * (one run each). The shrink, a dot over the input features per rank row, takes the row
 * kernel below 12 tokens (linear.c: 4 FMA chains for one token where a 1-row GEMM block has
 * 2): a lone sequence's fused decode call with its adapter took 1.13x the call without it,
 * against 1.19x with the GEMM (medians of 3 alternating process pairs, noisy). */
#include <stdint.h>
#include <stdlib.h>
#include <omp.h>

#include "common.h"
#include "kernels.h"

static const void *slot_matrix(const void *stacked, int64_t slot, int64_t rows, int64_t cols,
                               int dtype) {
    return (const char *)stacked + (size_t)(slot * rows * cols) * ifn_elem_size(dtype);
}

/* Fills order, first and slot ([m], [m + 1], [m]) from token_slots ([m], -1: the base model);
 * tokens keep their order within a slot. Returns the number of chunks. */
static int64_t plan(const int32_t *token_slots, int64_t m, int64_t *order, int64_t *first,
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

void *ifn_lora_prepare(struct ifn_lora_batch *batch, const int32_t *token_slots, int64_t m,
                       int64_t rank, int64_t widest, int num_threads, size_t extra_floats,
                       float **extra) {
    const int64_t chunk_rows = m < IFN_LORA_CHUNK ? m : IFN_LORA_CHUNK;
    *batch = (struct ifn_lora_batch){.rank = rank, .scratch_floats = chunk_rows * widest};
    void *memory = malloc((size_t)(3 * m + 1) * sizeof(int64_t) +
                          (extra_floats + (size_t)num_threads * (size_t)batch->scratch_floats) *
                              sizeof(float));
    if (memory == NULL) return NULL;
    batch->order = memory;
    batch->first = batch->order + m;
    batch->slot = (int32_t *)(batch->first + m + 1); /* m int32 in the room of m int64 */
    *extra = (float *)(batch->first + 2 * m + 1);
    batch->scratch = *extra + extra_floats;
    batch->num_chunks = plan(token_slots, m, batch->order, batch->first, batch->slot,
                             &batch->num_tokens);
    return memory;
}

void ifn_lora_shrink(const struct ifn_lora_target *parts, int num_parts, const void *x,
                     int64_t x_stride, int x_dtype, const struct ifn_lora_batch *batch, float *y,
                     int dtype) {
    const int64_t rank = batch->rank;
    const size_t x_elem = ifn_elem_size(x_dtype);
    float *rows = batch->scratch + (size_t)omp_get_thread_num() * (size_t)batch->scratch_floats;
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < batch->num_chunks * num_parts; task++) {
        const int64_t chunk = task / num_parts, start = batch->first[chunk];
        const int64_t count = batch->first[chunk + 1] - start;
        const struct ifn_lora_target *part = &parts[task % num_parts];
        for (int64_t i = 0; i < count; i++) /* the chunk's rows of x, gathered and widened */
            ifn_widen((const char *)x + (size_t)(batch->order[start + i] * x_stride) * x_elem,
                      rows + i * part->in, part->in, x_dtype);
        float *y_part = y + ((task % num_parts) * batch->num_tokens + start) * rank;
        ifn_linear_rows(rows, count, part->in,
                      slot_matrix(part->a, batch->slot[chunk], rank, part->in, dtype), NULL,
                      y_part, rank, IFN_F32_UNROUNDED, 0, rank, dtype);
    }
}

/* out[0:n] = round(out[0:n] + delta[0:n]), out fp32 (holding values of the model's dtype) or
 * of the model's dtype. */
static void add_rounded(void *out, const float *delta, int64_t n, int out_dtype, int dtype) {
    int64_t c = 0;
#ifdef IFN_AVX2
    for (; c + 8 <= n; c += 8) {
        __m256 sum = _mm256_add_ps(ifn_load8(out, c, out_dtype), _mm256_loadu_ps(delta + c));
        ifn_store8(out, c, ifn_round8(sum, dtype), out_dtype);
    }
#endif
    for (; c < n; c++)
        ifn_store(out, c, ifn_round(ifn_load(out, c, out_dtype) + delta[c], dtype), out_dtype);
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

int ifn_lora_apply(const void *x, int64_t x_stride, void *out, int64_t out_stride,
                   const struct ifn_lora_target *parts, int num_parts,
                   const int32_t *token_slots, int64_t m, int64_t rank, int dtype,
                   int num_threads) {
    if (num_threads < 1) num_threads = 1;
    int64_t widest = 1, lo = INT64_MAX, hi = 0;
    for (int p = 0; p < num_parts; p++) {
        widest = parts[p].in > widest ? parts[p].in : widest;
        widest = parts[p].out > widest ? parts[p].out : widest;
        lo = parts[p].column_offset < lo ? parts[p].column_offset : lo;
        hi = parts[p].column_offset + parts[p].out > hi ? parts[p].column_offset + parts[p].out
                                                        : hi;
    }
    struct ifn_lora_batch batch;
    float *y; /* [num_parts, planned tokens, rank] */
    void *memory = ifn_lora_prepare(&batch, token_slots, m, rank, widest, num_threads,
                                    (size_t)(num_parts * m * rank), &y);
    if (memory == NULL) return -1;
    if (batch.num_chunks > 0) {
#pragma omp parallel num_threads(num_threads)
        {
            int64_t first, last;
            ifn_lora_shrink(parts, num_parts, x, x_stride, dtype, &batch, y, dtype);
            ifn_thread_range(hi - lo, omp_get_thread_num(), omp_get_num_threads(), &first,
                             &last);
            ifn_lora_expand(parts, num_parts, y, &batch, out, out_stride, dtype, lo + first,
                            lo + last, dtype);
        }
    }
    free(memory);
    return 0;
}

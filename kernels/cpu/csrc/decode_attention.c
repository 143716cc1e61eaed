/* Decode attention over the paged KV cache: one query token per sequence, as
 * kernels/paged_attention.py's `paged_decode_attention` (scores and softmax in fp32, the output
 * rounded once to the query's dtype).
 *
 * One task per (sequence, KV head): the group of query heads that share a KV head reads each
 * key and value row once. Keys j of a sequence of length L count iff j < L and, with a sliding
 * window W > 0, j >= L - W.
 */
#include <stdlib.h>
#include <omp.h>

#include "common.h"
#include "kernels.h"

/* dot(q[0:d], row[0:d]) with q in fp32 and row in `dtype`. */
static inline float dot_row(const float *q, const void *row, int64_t d, int dtype) {
    int64_t j = 0;
    float s = 0.0f;
#ifdef IFN_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= d; j += 8) {
        __m256 v = dtype == IFN_BF16 ? ifn_load8_bf16((const uint16_t *)row + j)
                 : dtype == IFN_F16 ? ifn_load8_f16((const uint16_t *)row + j)
                 : _mm256_loadu_ps((const float *)row + j);
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + j), v, acc);
    }
    s = ifn_hsum8(acc);
#endif
    for (; j < d; j++) s += q[j] * ifn_load(row, j, dtype);
    return s;
}

/* acc[0:d] += p * row[0:d], row in `dtype`. */
static inline void axpy_row(float *acc, float p, const void *row, int64_t d, int dtype) {
    int64_t j = 0;
#ifdef IFN_AVX2
    __m256 pv = _mm256_set1_ps(p);
    for (; j + 8 <= d; j += 8) {
        __m256 v = dtype == IFN_BF16 ? ifn_load8_bf16((const uint16_t *)row + j)
                 : dtype == IFN_F16 ? ifn_load8_f16((const uint16_t *)row + j)
                 : _mm256_loadu_ps((const float *)row + j);
        _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(pv, v, _mm256_loadu_ps(acc + j)));
    }
#endif
    for (; j < d; j++) acc[j] += p * ifn_load(row, j, dtype);
}

/* The row of position `pos` of a sequence (by its block table) for one KV head. */
static inline const char *cache_row(const void *cache, const int64_t *block_table, int64_t pos,
                                    int64_t kv_head, int64_t num_kv_heads, int64_t block_size,
                                    int64_t head_dim, size_t elem) {
    int64_t slot = block_table[pos / block_size] * block_size + pos % block_size;
    return (const char *)cache +
           (size_t)ifn_cache_offset(slot, kv_head, num_kv_heads, block_size, head_dim) * elem;
}

void ifn_decode_attention_group(const float *q, float *out, float *scores, int64_t group,
                                const void *key_cache, const void *value_cache,
                                const int64_t *block_table, int64_t first, int64_t len,
                                int64_t kv_head, int64_t num_kv_heads, int64_t head_dim,
                                int64_t block_size, float scale, int dtype) {
    int64_t n = len - first;
    size_t elem = ifn_elem_size(dtype);
    for (int64_t j = 0; j < group * head_dim; j++) out[j] = 0.0f;
    if (n <= 0) return; /* no keys (the runner never asks): zeros, not NaN */
    for (int64_t i = 0; i < n; i++) {
        const char *key = cache_row(key_cache, block_table, first + i, kv_head, num_kv_heads,
                                    block_size, head_dim, elem);
        for (int64_t g = 0; g < group; g++)
            scores[g * n + i] = dot_row(q + g * head_dim, key, head_dim, dtype) * scale;
    }
    for (int64_t g = 0; g < group; g++) {
        float *s = scores + g * n, top = s[0], total = 0.0f;
        for (int64_t i = 1; i < n; i++) top = s[i] > top ? s[i] : top;
        for (int64_t i = 0; i < n; i++) {
            s[i] = expf(s[i] - top);
            total += s[i];
        }
        for (int64_t i = 0; i < n; i++) s[i] /= total;
    }
    for (int64_t i = 0; i < n; i++) {
        const char *value = cache_row(value_cache, block_table, first + i, kv_head,
                                      num_kv_heads, block_size, head_dim, elem);
        for (int64_t g = 0; g < group; g++)
            axpy_row(out + g * head_dim, scores[g * n + i], value, head_dim, dtype);
    }
    for (int64_t j = 0; j < group * head_dim; j++) out[j] = ifn_round(out[j], dtype);
}

/* query: [batch, num_heads, head_dim] (token stride query_stride, heads contiguous);
 * key_cache, value_cache: [num_blocks, num_kv_heads, block_size, head_dim];
 * block_tables: [batch, max_blocks] int64; seq_lens: [batch] int64 (keys incl. the new one);
 * out: [batch, num_heads, head_dim] contiguous. Returns 0, or -1 when out of memory. */
int ifn_decode_attention(const void *query, int64_t query_stride, const void *key_cache,
                         const void *value_cache, const int64_t *block_tables,
                         int64_t max_blocks, const int64_t *seq_lens, void *out, int64_t batch,
                         int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                         int64_t block_size, int64_t sliding_window, float scale, int dtype,
                         int num_threads) {
    int64_t group = num_heads / num_kv_heads, num_tasks = batch * num_kv_heads, longest = 0;
    for (int64_t b = 0; b < batch; b++) longest = seq_lens[b] > longest ? seq_lens[b] : longest;
    size_t elem = ifn_elem_size(dtype), span = (size_t)(group * head_dim);
    int failed = 0;
    if (num_tasks < num_threads) num_threads = (int)num_tasks;
    if (num_threads < 1) num_threads = 1;
#pragma omp parallel num_threads(num_threads) reduction(| : failed)
    {
        /* per thread: the group's queries and outputs in fp32, and its scores */
        float *q = malloc(sizeof(float) * (2 * span + (size_t)(group * longest) + 1));
        failed = q == NULL;
        /* every thread meets the loop (its barrier waits for all), even one without memory */
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < num_tasks; task++) {
            if (q == NULL) continue;
            int64_t b = task / num_kv_heads, kv_head = task % num_kv_heads, len = seq_lens[b];
            int64_t first = sliding_window > 0 && len > sliding_window ? len - sliding_window
                                                                        : 0;
            int64_t at = b * query_stride + kv_head * (int64_t)span;
            ifn_widen((const char *)query + (size_t)at * elem, q, (int64_t)span, dtype);
            ifn_decode_attention_group(q, q + span, q + 2 * span, group, key_cache, value_cache,
                                       block_tables + b * max_blocks, first, len, kv_head,
                                       num_kv_heads, head_dim, block_size, scale, dtype);
            ifn_narrow(q + span, (char *)out + (size_t)((b * num_heads + kv_head * group) *
                                                        head_dim) * elem, (int64_t)span, dtype);
        }
        free(q);
    }
    return failed ? -1 : 0;
}

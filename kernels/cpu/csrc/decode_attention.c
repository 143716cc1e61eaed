/* Decode attention over the paged KV cache: one query token per sequence, as
 * kernels/paged_attention.py's `paged_decode_attention` (scores and softmax in fp32, the output
 * rounded once to the query's dtype).
 *
 * One task per (sequence, KV head): the group of query heads that share a KV head reads each
 * key and value row from memory once (then from L1 for the group's other heads). Keys j of a sequence of length L count iff j < L and, with a sliding
 * window W > 0, j >= L - W.
 */
#include <stdlib.h>
#include <omp.h>

#include "common.h"
#include "kernels.h"

/* Softmax in place over each of `group` rows of n scores. */
static void softmax_rows(float *scores, int64_t group, int64_t n) {
    for (int64_t g = 0; g < group; g++) {
        float *s = scores + g * n, top = s[0], total = 0.0f;
        for (int64_t i = 1; i < n; i++) top = s[i] > top ? s[i] : top;
        int64_t i = 0;
#ifdef IFN_AVX2
        __m256 top8 = _mm256_set1_ps(top), total8 = _mm256_setzero_ps();
        for (; i + 8 <= n; i += 8) {
            __m256 e = ifn_exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), top8));
            _mm256_storeu_ps(s + i, e);
            total8 = _mm256_add_ps(total8, e);
        }
        total = ifn_hsum8(total8);
#endif
        for (; i < n; i++) {
            s[i] = expf(s[i] - top);
            total += s[i];
        }
        float inverse = 1.0f / total;
        for (i = 0; i < n; i++) s[i] *= inverse;
    }
}

#ifdef IFN_AVX2
/* The group's attention with AVX2, for head_dim a multiple of 8; `rows`: each key's element
 * offset in the caches. Scores: each key row widened once per query head (from L1 after the
 * first); values: 32 dims of the output at a time in 4 registers, over every key. */
#define IFN_DEFINE_GROUP_ATTENTION(SUFFIX, WT, LOAD8)                                         \
    static void group_attention_##SUFFIX(const float *q, float *out, float *scores,           \
                                         const int64_t *rows, int64_t n, int64_t group,       \
                                         const WT *key_cache, const WT *value_cache,          \
                                         int64_t d, float scale, int dtype) {                 \
        for (int64_t i = 0; i < n; i++) {                                                     \
            const WT *key = key_cache + rows[i];                                              \
            for (int64_t g = 0; g < group; g++) {                                             \
                const float *qg = q + g * d;                                                  \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                     \
                int64_t j = 0;                                                                \
                for (; j + 16 <= d; j += 16) {                                                \
                    a0 = _mm256_fmadd_ps(LOAD8(key + j), _mm256_loadu_ps(qg + j), a0);        \
                    a1 = _mm256_fmadd_ps(LOAD8(key + j + 8), _mm256_loadu_ps(qg + j + 8), a1);\
                }                                                                             \
                for (; j < d; j += 8)                                                         \
                    a0 = _mm256_fmadd_ps(LOAD8(key + j), _mm256_loadu_ps(qg + j), a0);        \
                scores[g * n + i] = ifn_hsum8(_mm256_add_ps(a0, a1)) * scale;                 \
            }                                                                                 \
        }                                                                                     \
        softmax_rows(scores, group, n);                                                       \
        for (int64_t g = 0; g < group; g++) {                                                 \
            const float *p = scores + g * n;                                                  \
            float *og = out + g * d;                                                          \
            int64_t j = 0;                                                                    \
            for (; j + 32 <= d; j += 32) {                                                    \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                   \
                for (int64_t i = 0; i < n; i++) {                                             \
                    const WT *value = value_cache + rows[i] + j;                              \
                    __m256 pi = _mm256_set1_ps(p[i]);                                         \
                    a0 = _mm256_fmadd_ps(pi, LOAD8(value), a0);                               \
                    a1 = _mm256_fmadd_ps(pi, LOAD8(value + 8), a1);                           \
                    a2 = _mm256_fmadd_ps(pi, LOAD8(value + 16), a2);                          \
                    a3 = _mm256_fmadd_ps(pi, LOAD8(value + 24), a3);                          \
                }                                                                             \
                _mm256_storeu_ps(og + j, ifn_round8(a0, dtype));                              \
                _mm256_storeu_ps(og + j + 8, ifn_round8(a1, dtype));                          \
                _mm256_storeu_ps(og + j + 16, ifn_round8(a2, dtype));                         \
                _mm256_storeu_ps(og + j + 24, ifn_round8(a3, dtype));                         \
            }                                                                                 \
            for (; j < d; j += 8) {                                                           \
                __m256 a0 = _mm256_setzero_ps();                                              \
                for (int64_t i = 0; i < n; i++)                                               \
                    a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[i]),                                \
                                         LOAD8(value_cache + rows[i] + j), a0);               \
                _mm256_storeu_ps(og + j, ifn_round8(a0, dtype));                              \
            }                                                                                 \
        }                                                                                     \
    }

#define LOAD8_F32(p) _mm256_loadu_ps(p)
IFN_DEFINE_GROUP_ATTENTION(f32, float, LOAD8_F32)
IFN_DEFINE_GROUP_ATTENTION(bf16, uint16_t, ifn_load8_bf16)
IFN_DEFINE_GROUP_ATTENTION(f16, uint16_t, ifn_load8_f16)
#endif

void ifn_decode_attention_group(const float *q, float *out, float *scores, int64_t *rows,
                                int64_t group, const void *key_cache, const void *value_cache,
                                const int64_t *block_table, int64_t first, int64_t len,
                                int64_t kv_head, int64_t num_kv_heads, int64_t head_dim,
                                int64_t block_size, float scale, int dtype) {
    int64_t n = len - first;
    if (n <= 0) { /* no keys (the runner never asks): zeros, not NaN */
        for (int64_t j = 0; j < group * head_dim; j++) out[j] = 0.0f;
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t pos = first + i;
        rows[i] = ifn_cache_offset(block_table[pos / block_size] * block_size + pos % block_size,
                                   kv_head, num_kv_heads, block_size, head_dim);
    }
#ifdef IFN_AVX2
    if (head_dim % 8 == 0) {
        switch (dtype) {
        case IFN_BF16:
            group_attention_bf16(q, out, scores, rows, n, group, key_cache, value_cache,
                                 head_dim, scale, dtype);
            return;
        case IFN_F16:
            group_attention_f16(q, out, scores, rows, n, group, key_cache, value_cache,
                                head_dim, scale, dtype);
            return;
        default:
            group_attention_f32(q, out, scores, rows, n, group, key_cache, value_cache,
                                head_dim, scale, dtype);
            return;
        }
    }
#endif
    /* any head_dim, any CPU: one element at a time */
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < group; g++) {
            float dot = 0.0f;
            for (int64_t j = 0; j < head_dim; j++)
                dot += q[g * head_dim + j] * ifn_load(key_cache, rows[i] + j, dtype);
            scores[g * n + i] = dot * scale;
        }
    softmax_rows(scores, group, n);
    for (int64_t g = 0; g < group; g++)
        for (int64_t j = 0; j < head_dim; j++) {
            float acc = 0.0f;
            for (int64_t i = 0; i < n; i++)
                acc += scores[g * n + i] * ifn_load(value_cache, rows[i] + j, dtype);
            out[g * head_dim + j] = ifn_round(acc, dtype);
        }
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
        int64_t *rows = malloc(sizeof(int64_t) * (size_t)(longest + 1));
        float *q = malloc(sizeof(float) * (2 * span + (size_t)(group * longest) + 1));
        failed = q == NULL || rows == NULL;
        /* every thread meets the loop (its barrier waits for all), even one without memory */
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < num_tasks; task++) {
            if (failed) continue;
            int64_t b = task / num_kv_heads, kv_head = task % num_kv_heads, len = seq_lens[b];
            int64_t first = sliding_window > 0 && len > sliding_window ? len - sliding_window
                                                                        : 0;
            int64_t at = b * query_stride + kv_head * (int64_t)span;
            ifn_widen((const char *)query + (size_t)at * elem, q, (int64_t)span, dtype);
            ifn_decode_attention_group(q, q + span, q + 2 * span, rows, group, key_cache,
                                       value_cache, block_tables + b * max_blocks, first, len,
                                       kv_head, num_kv_heads, head_dim, block_size, scale,
                                       dtype);
            ifn_narrow(q + span, (char *)out + (size_t)((b * num_heads + kv_head * group) *
                                                        head_dim) * elem, (int64_t)span, dtype);
        }
        free(q);
        free(rows);
    }
    return failed ? -1 : 0;
}

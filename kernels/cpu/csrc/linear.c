/* y = x @ w.T (+ bias) for a few rows of x: the matrix-vector products of decoding.
 *
 * Decoding reads every weight once per step and does two flops per weight per row of x, so for
 * a few rows the product is bound by memory bandwidth. The kernel streams the weights once, in
 * their own precision (bf16/fp16: half the bytes of fp32), widens 8 elements at a time to fp32
 * in registers and accumulates with FMA against up to 4 rows of x at once (more rows re-read
 * the weight row from L1). Rows of x are widened to fp32 once per call and stay in cache.
 *
 * Weights are read row after row, one sequential stream per thread: the hardware prefetcher
 * follows that, while four interleaved row streams got half the bandwidth. On top of it a
 * software prefetch PREFETCH_AHEAD bytes ahead of the loads (stopping at the end of the
 * thread's rows) made SmolLM2's 30 layers of one-row products 7-11% faster (0.82-0.88 -> 0.89-
 * 0.95 of a plain read of the same bytes, 2-core AMD EPYC, AVX2, medians of 31 interleaved
 * passes in each of 5 runs; 2 and 4 KiB ahead were worse). Threads split the output rows.
 * From GEMM_MIN_ROWS rows of x on, arithmetic rather than bandwidth bounds the product and
 * ifn_linear_rows hands it to the packed GEMM (gemm.c).
 */
#include <stdlib.h>
#include <omp.h>

#include "common.h"
#include "kernels.h"

#define MAX_ROWS_X 4 /* rows of x accumulated against one pass over a weight row */
#define GEMM_MIN_ROWS 12 /* from here on the GEMM (gemm.c) is faster; see cpu_matmul.py */
#define PREFETCH_AHEAD 1024

#ifdef IFN_AVX2
/* out[i] = dot(wr[0:k], xf[i*k : i*k + k]) for i < MB, with CH FMA chains per row of x: at
 * least 4 chains in all, or the FMA latency (not memory) bounds a single row. Prefetches the
 * weights PREFETCH_AHEAD bytes ahead, up to pf_end. */
#define IFN_DEFINE_ROW_DOT(NAME, WT, LOAD8, LOAD1, MB, CH)                                  \
    static void NAME(const WT *wr, int64_t k, const float *xf, float *out,                  \
                     const char *pf_end) {                                                  \
        __m256 a[MB][CH];                                                                   \
        for (int i = 0; i < MB; i++)                                                        \
            for (int c = 0; c < CH; c++) a[i][c] = _mm256_setzero_ps();                     \
        int64_t j = 0;                                                                      \
        for (; j + 8 * CH <= k; j += 8 * CH) {                                              \
            const char *ahead = (const char *)(wr + j) + PREFETCH_AHEAD;                    \
            for (size_t b = 0; b < 8 * CH * sizeof(WT); b += 64)                            \
                if (ahead + b < pf_end) __builtin_prefetch(ahead + b, 0, 3);                \
            __m256 wv[CH];                                                                  \
            for (int c = 0; c < CH; c++) wv[c] = LOAD8(wr + j + 8 * c);                     \
            for (int i = 0; i < MB; i++)                                                    \
                for (int c = 0; c < CH; c++)                                                \
                    a[i][c] = _mm256_fmadd_ps(wv[c], _mm256_loadu_ps(xf + i * k + j + 8 * c), \
                                              a[i][c]);                                     \
        }                                                                                   \
        for (; j + 8 <= k; j += 8) {                                                        \
            __m256 w0 = LOAD8(wr + j);                                                      \
            for (int i = 0; i < MB; i++)                                                    \
                a[i][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xf + i * k + j), a[i][0]);    \
        }                                                                                   \
        for (int i = 0; i < MB; i++) {                                                      \
            for (int c = 1; c < CH; c++) a[i][0] = _mm256_add_ps(a[i][0], a[i][c]);         \
            out[i] = ifn_hsum8(a[i][0]);                                                    \
        }                                                                                   \
        for (; j < k; j++)                                                                  \
            for (int i = 0; i < MB; i++) out[i] += LOAD1(wr[j]) * xf[i * k + j];            \
    }
#define LOAD8_F32(p) _mm256_loadu_ps(p)
#else
#define IFN_DEFINE_ROW_DOT(NAME, WT, LOAD8, LOAD1, MB, CH)                                  \
    static void NAME(const WT *wr, int64_t k, const float *xf, float *out,                  \
                     const char *pf_end) {                                                  \
        (void)pf_end;                                                                       \
        for (int i = 0; i < MB; i++) {                                                      \
            float s = 0.0f;                                                                 \
            for (int64_t j = 0; j < k; j++) s += LOAD1(wr[j]) * xf[i * k + j];              \
            out[i] = s;                                                                     \
        }                                                                                   \
    }
#endif
#define LOAD1_F32(v) (v)

#define IFN_DEFINE_ROW_DOTS(SUFFIX, WT, LOAD8, LOAD1)                                       \
    IFN_DEFINE_ROW_DOT(row_dot1_##SUFFIX, WT, LOAD8, LOAD1, 1, 4)                            \
    IFN_DEFINE_ROW_DOT(row_dot2_##SUFFIX, WT, LOAD8, LOAD1, 2, 2)                            \
    IFN_DEFINE_ROW_DOT(row_dot3_##SUFFIX, WT, LOAD8, LOAD1, 3, 2)                            \
    IFN_DEFINE_ROW_DOT(row_dot4_##SUFFIX, WT, LOAD8, LOAD1, 4, 1)                            \
    static void row_dot_##SUFFIX(const WT *wr, int64_t k, const float *xf, int mb,          \
                                 float *out, const char *pf_end) {                          \
        switch (mb) {                                                                       \
        case 1: row_dot1_##SUFFIX(wr, k, xf, out, pf_end); break;                           \
        case 2: row_dot2_##SUFFIX(wr, k, xf, out, pf_end); break;                           \
        case 3: row_dot3_##SUFFIX(wr, k, xf, out, pf_end); break;                           \
        default: row_dot4_##SUFFIX(wr, k, xf, out, pf_end);                                 \
        }                                                                                   \
    }

IFN_DEFINE_ROW_DOTS(f32, float, LOAD8_F32, LOAD1_F32)
IFN_DEFINE_ROW_DOTS(bf16, uint16_t, ifn_load8_bf16, ifn_bf16_to_f32)
IFN_DEFINE_ROW_DOTS(f16, uint16_t, ifn_load8_f16, ifn_f16_to_f32)

/* out[i] = dot(weight row `row`, row i of xf) for the mb rows of xf; prefetches up to pf_end
 * (the end of the rows this thread reads). */
static void row_dot(const void *w, int64_t row, int64_t k, const float *xf, int mb, float *out,
                    const char *pf_end, int dtype) {
    switch (dtype) {
    case IFN_BF16: row_dot_bf16((const uint16_t *)w + row * k, k, xf, mb, out, pf_end); break;
    case IFN_F16: row_dot_f16((const uint16_t *)w + row * k, k, xf, mb, out, pf_end); break;
    default: row_dot_f32((const float *)w + row * k, k, xf, mb, out, pf_end);
    }
}

void ifn_linear_rows(const float *xf, int64_t m, int64_t k, const void *w, const void *bias,
                     void *y, int64_t y_stride, int y_dtype, int64_t first, int64_t last,
                     int dtype) {
    if (m >= GEMM_MIN_ROWS) {
        ifn_gemm_rows(xf, m, k, w, bias, y, y_stride, y_dtype, first, last, dtype);
        return;
    }
    const char *pf_end = (const char *)w + (size_t)(last * k) * ifn_elem_size(dtype);
    const int round_dtype = y_dtype == IFN_F32_UNROUNDED ? IFN_F32 : dtype;
    if (y_dtype == IFN_F32_UNROUNDED) y_dtype = IFN_F32;
    for (int64_t row = first; row < last; row++) {
        float bias_row = bias ? ifn_load(bias, row, dtype) : 0.0f;
        for (int64_t i0 = 0; i0 < m; i0 += MAX_ROWS_X) {
            int mb = m - i0 < MAX_ROWS_X ? (int)(m - i0) : MAX_ROWS_X;
            float out[MAX_ROWS_X];
            row_dot(w, row, k, xf + i0 * k, mb, out, pf_end, dtype);
            for (int i = 0; i < mb; i++)
                ifn_store(y, (i0 + i) * y_stride + row,
                          ifn_round(out[i] + bias_row, round_dtype), y_dtype);
        }
    }
}

/* x: [m, k] with row stride x_stride (elements); w: [n, k] contiguous; bias: [n] or NULL;
 * all of one element type `dtype`. y: [m, n] with row stride y_stride, of type `dtype` or fp32
 * (y_dtype: the values rounded to `dtype` all the same, without a conversion pass after). The
 * bias is added in fp32 before the one rounding. Returns 0, or -1 when out of memory. */
int ifn_linear(const void *x, int64_t x_stride, const void *w, const void *bias, void *y,
               int64_t y_stride, int y_dtype, int64_t m, int64_t n, int64_t k, int dtype,
               int num_threads) {
    float *xf = malloc((size_t)(m * k > 0 ? m * k : 1) * sizeof(float));
    if (xf == NULL) return -1;
    for (int64_t i = 0; i < m; i++) ifn_widen((const char *)x + (size_t)(i * x_stride) *
                                              ifn_elem_size(dtype), xf + i * k, k, dtype);
    if (m * n * k < 65536) num_threads = 1; /* waking a thread costs more than the product */
#pragma omp parallel num_threads(num_threads)
    {
        int64_t first, last;
        ifn_thread_range(n, omp_get_thread_num(), omp_get_num_threads(), &first, &last);
        ifn_linear_rows(xf, m, k, w, bias, y, y_stride, y_dtype, first, last, dtype);
    }
    free(xf);
    return 0;
}

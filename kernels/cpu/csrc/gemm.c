/* y = x @ w.T (+ bias) for many rows of x: prefill chunks and large decode batches.
 *
 * Past a few rows a product is bound by arithmetic, not by the weights' bytes, so this is a
 * register-blocked GEMM in the usual shape: 16 weight rows at a time are widened to fp32 and
 * packed transposed into a panel [KC][16] (16 KB, stays in L1); a 6 x 16 block of y lives in 12
 * ymm accumulators while, for each k, two panel vectors meet six broadcast elements of x in 12
 * FMAs. Loads are 8 per 12 FMAs, so the FMA units set the pace. Rows of x go in chunks of MC,
 * whose KC columns (MC * KC * 4 bytes) stay in L2 while the weights stream past once per chunk.
 *
 * Measured on the 2-core AVX2 machine (SmolLM2's 120 matrices, bf16, medians of 5): see
 * runtime/layers/cpu_matmul.py for where it takes over from the row kernel (linear.c) and from
 * torch's fp32 GEMM over converted weights.
 */
#include <string.h>

#include "common.h"
#include "kernels.h"

#define NR 16  /* weight rows per panel: two ymm of outputs */
#define MR 6   /* rows of x per register block */
#define KC 256 /* columns per panel: NR * KC fp32 = 16 KB */
#define MC 96  /* rows of x per chunk: MC * KC * 4 = 96 KB in L2 */

/* panel[kk * NR + r] = w[n0 + r, k0 + kk] as fp32, for r < nr (zeros for r >= nr), kk < kb. */
static void pack_panel(const void *w, int64_t k, int64_t n0, int nr, int64_t k0, int64_t kb,
                       float *panel, int dtype) {
    int64_t kk = 0;
#ifdef IFN_AVX2
    if (nr == NR) {
        /* 8 x 8 blocks: 8 rows' next 8 columns, transposed in registers */
        for (; kk + 8 <= kb; kk += 8) {
            for (int r0 = 0; r0 < NR; r0 += 8) {
                __m256 v[8];
                for (int r = 0; r < 8; r++) v[r] = ifn_load8(w, (n0 + r0 + r) * k + k0 + kk, dtype);
                __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
                __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
                __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
                __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
                __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                float *at = panel + kk * NR + r0;
                _mm256_storeu_ps(at + 0 * NR, _mm256_permute2f128_ps(s0, s4, 0x20));
                _mm256_storeu_ps(at + 1 * NR, _mm256_permute2f128_ps(s1, s5, 0x20));
                _mm256_storeu_ps(at + 2 * NR, _mm256_permute2f128_ps(s2, s6, 0x20));
                _mm256_storeu_ps(at + 3 * NR, _mm256_permute2f128_ps(s3, s7, 0x20));
                _mm256_storeu_ps(at + 4 * NR, _mm256_permute2f128_ps(s0, s4, 0x31));
                _mm256_storeu_ps(at + 5 * NR, _mm256_permute2f128_ps(s1, s5, 0x31));
                _mm256_storeu_ps(at + 6 * NR, _mm256_permute2f128_ps(s2, s6, 0x31));
                _mm256_storeu_ps(at + 7 * NR, _mm256_permute2f128_ps(s3, s7, 0x31));
            }
        }
    }
#endif
    for (; kk < kb; kk++)
        for (int r = 0; r < NR; r++)
            panel[kk * NR + r] = r < nr ? ifn_load(w, (n0 + r) * k + k0 + kk, dtype) : 0.0f;
}

/* Asks for the lines of the panel after this one while the FMAs work on this one: packing
 * otherwise waits on 16 short strided reads from memory per panel, ~10-25% of the time when the
 * weights come from DRAM. */
static void prefetch_panel(const void *w, int64_t k, int64_t n0, int nr, int64_t k0, int64_t kb,
                           int dtype) {
    size_t elem = ifn_elem_size(dtype);
    for (int r = 0; r < nr; r++) {
        const char *row = (const char *)w + (size_t)((n0 + r) * k + k0) * elem;
        for (size_t at = 0; at < (size_t)kb * elem; at += 64) __builtin_prefetch(row + at, 0, 3);
    }
}

/* c[i * NR + j] (+)= sum over kk < kb of x[i * ldx + kk] * panel[kk * NR + j], for i < mr;
 * `first`: c starts from zero rather than from what it holds. */
static inline __attribute__((always_inline)) void block(const float *x, int64_t ldx,
                                                        const float *panel, int64_t kb, float *c,
                                                        int mr, int first) {
#ifdef IFN_AVX2
    __m256 acc[MR][2];
    for (int i = 0; i < mr; i++) {
        acc[i][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + i * NR);
        acc[i][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(c + i * NR + 8);
    }
    for (int64_t kk = 0; kk < kb; kk++) {
        __m256 b0 = _mm256_loadu_ps(panel + kk * NR), b1 = _mm256_loadu_ps(panel + kk * NR + 8);
        for (int i = 0; i < mr; i++) {
            __m256 a = _mm256_broadcast_ss(x + i * ldx + kk);
            acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
        }
    }
    for (int i = 0; i < mr; i++) {
        _mm256_storeu_ps(c + i * NR, acc[i][0]);
        _mm256_storeu_ps(c + i * NR + 8, acc[i][1]);
    }
#else
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < NR; j++) {
            float s = first ? 0.0f : c[i * NR + j];
            for (int64_t kk = 0; kk < kb; kk++) s += x[i * ldx + kk] * panel[kk * NR + j];
            c[i * NR + j] = s;
        }
#endif
}

#define IFN_BLOCK_CASE(R) \
    case R: block(x, ldx, panel, kb, c, R, first); break;

static void block_rows(const float *x, int64_t ldx, const float *panel, int64_t kb, float *c,
                       int mr, int first) {
    switch (mr) {
    IFN_BLOCK_CASE(1) IFN_BLOCK_CASE(2) IFN_BLOCK_CASE(3)
    IFN_BLOCK_CASE(4) IFN_BLOCK_CASE(5) IFN_BLOCK_CASE(6)
    }
}

/* y[at + r] = round(c[r] + bias[r]) for r < nr: 16 outputs of one row of y, stored as
 * vectors (scattered scalar stores cost as much as the products at these sizes). */
static void store_row(const float *c, const float *bias, int nr, void *y, int64_t at,
                      int y_dtype, int dtype) {
    if (y_dtype == IFN_F32_UNROUNDED) y_dtype = dtype = IFN_F32; /* dtype: only rounds here */
#ifdef IFN_AVX2
    if (nr == NR) {
        __m256 v0 = ifn_round8(_mm256_add_ps(_mm256_loadu_ps(c), _mm256_loadu_ps(bias)), dtype);
        __m256 v1 = ifn_round8(_mm256_add_ps(_mm256_loadu_ps(c + 8), _mm256_loadu_ps(bias + 8)),
                               dtype);
        switch (y_dtype) {
        case IFN_F32:
            _mm256_storeu_ps((float *)y + at, v0);
            _mm256_storeu_ps((float *)y + at + 8, v1);
            return;
        case IFN_F16: /* exact: the values are fp16 already */
            _mm_storeu_si128((__m128i *)((uint16_t *)y + at), _mm256_cvtps_ph(v0, 0));
            _mm_storeu_si128((__m128i *)((uint16_t *)y + at + 8), _mm256_cvtps_ph(v1, 0));
            return;
        default: { /* bf16: the top halves of values already rounded to bf16 */
            __m256i hi = _mm256_packus_epi32(_mm256_srli_epi32(_mm256_castps_si256(v0), 16),
                                             _mm256_srli_epi32(_mm256_castps_si256(v1), 16));
            _mm256_storeu_si256((__m256i *)((uint16_t *)y + at),
                                _mm256_permute4x64_epi64(hi, 0xD8));
            return;
        }
        }
    }
#endif
    for (int r = 0; r < nr; r++) ifn_store(y, at + r, ifn_round(c[r] + bias[r], dtype), y_dtype);
}

void ifn_gemm_rows(const float *xf, int64_t m, int64_t k, const void *w, const void *bias,
                   void *y, int64_t y_stride, int y_dtype, int64_t first, int64_t last,
                   int dtype) {
    float panel[KC * NR], c[MC * NR];
    for (int64_t m0 = 0; m0 < m; m0 += MC) {
        int64_t mc = m - m0 < MC ? m - m0 : MC;
        for (int64_t n0 = first; n0 < last; n0 += NR) {
            int nr = last - n0 < NR ? (int)(last - n0) : NR;
            if (k == 0) memset(c, 0, sizeof(float) * (size_t)(mc * NR)); /* y = bias */
            for (int64_t k0 = 0; k0 < k; k0 += KC) {
                int64_t kb = k - k0 < KC ? k - k0 : KC;
                pack_panel(w, k, n0, nr, k0, kb, panel, dtype);
                if (k0 + KC < k) {
                    int64_t next = k - k0 - KC < KC ? k - k0 - KC : KC;
                    prefetch_panel(w, k, n0, nr, k0 + KC, next, dtype);
                } else if (n0 + NR < last) {
                    prefetch_panel(w, k, n0 + NR, last - n0 - NR < NR ? (int)(last - n0 - NR) : NR,
                                   0, k < KC ? k : KC, dtype);
                }
                for (int64_t i0 = 0; i0 < mc; i0 += MR) {
                    int mr = mc - i0 < MR ? (int)(mc - i0) : MR;
                    block_rows(xf + (m0 + i0) * k + k0, k, panel, kb, c + i0 * NR, mr, k0 == 0);
                }
            }
            float bias_row[NR] = {0};
            for (int r = 0; bias && r < nr; r++) bias_row[r] = ifn_load(bias, n0 + r, dtype);
            for (int64_t i = 0; i < mc; i++)
                store_row(c + i * NR, bias_row, nr, y, (m0 + i) * y_stride + n0, y_dtype,
                          dtype);
        }
    }
}

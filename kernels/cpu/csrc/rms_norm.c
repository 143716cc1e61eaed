/* RMSNorm, optionally fused with the residual add before it, with the roundings of
 * runtime/layers/layernorm.py: the sum rounded to the dtype before it is normalised, the
 * normalised row rounded before it is scaled. */
#include "common.h"
#include "kernels.h"

void ifn_rms_norm_row(const float *x, float *residual, const void *weight, float *out,
                      int64_t h, float eps, int dtype) {
    const float *s = x;
    int64_t j = 0;
    if (residual) {
#ifdef IFN_AVX2
        for (; j + 8 <= h; j += 8)
            _mm256_storeu_ps(residual + j, ifn_round8(_mm256_add_ps(_mm256_loadu_ps(x + j),
                                                                    _mm256_loadu_ps(residual + j)),
                                                      dtype));
#endif
        for (; j < h; j++) residual[j] = ifn_round(x[j] + residual[j], dtype);
        s = residual;
    }
    float sum_sq = 0.0f;
    j = 0;
#ifdef IFN_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= h; j += 8) {
        __m256 v = _mm256_loadu_ps(s + j);
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    sum_sq = ifn_hsum8(acc);
#endif
    for (; j < h; j++) sum_sq += s[j] * s[j];
    float rstd = 1.0f / sqrtf(sum_sq / (float)h + eps);
    j = 0;
#ifdef IFN_AVX2
    const __m256 rstd8 = _mm256_set1_ps(rstd);
    for (; j + 8 <= h; j += 8) {
        __m256 normed = ifn_round8(_mm256_mul_ps(_mm256_loadu_ps(s + j), rstd8), dtype);
        _mm256_storeu_ps(out + j, ifn_round8(_mm256_mul_ps(ifn_load8(weight, j, dtype), normed),
                                             dtype));
    }
#endif
    for (; j < h; j++)
        out[j] = ifn_round(ifn_load(weight, j, dtype) * ifn_round(s[j] * rstd, dtype), dtype);
}

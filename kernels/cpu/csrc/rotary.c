/* Rotary position embedding in place (the Hugging Face half-rotation layout), with the
 * roundings of runtime/layers/rotary.py's `apply_rotary`: cos and sin rounded to the tensor's
 * dtype, then x * cos and rotate_half(x) * sin each rounded, then their sum. */
#include "common.h"
#include "kernels.h"

void ifn_rotary_token(float *heads, int64_t num_heads, int64_t head_dim, const float *cs,
                      int dtype) {
    int64_t half = head_dim / 2;
    for (int64_t h = 0; h < num_heads; h++) {
        float *x = heads + h * head_dim;
        int64_t j = 0;
#ifdef IFN_AVX2
        for (; j + 8 <= half; j += 8) {
            __m256 c = ifn_round8(_mm256_loadu_ps(cs + j), dtype);
            __m256 s = ifn_round8(_mm256_loadu_ps(cs + half + j), dtype);
            __m256 x1 = _mm256_loadu_ps(x + j), x2 = _mm256_loadu_ps(x + half + j);
            __m256 minus_x2 = _mm256_sub_ps(_mm256_setzero_ps(), x2);
            __m256 r1 = _mm256_add_ps(ifn_round8(_mm256_mul_ps(x1, c), dtype),
                                      ifn_round8(_mm256_mul_ps(minus_x2, s), dtype));
            __m256 r2 = _mm256_add_ps(ifn_round8(_mm256_mul_ps(x2, c), dtype),
                                      ifn_round8(_mm256_mul_ps(x1, s), dtype));
            _mm256_storeu_ps(x + j, ifn_round8(r1, dtype));
            _mm256_storeu_ps(x + half + j, ifn_round8(r2, dtype));
        }
#endif
        for (; j < half; j++) {
            float c = ifn_round(cs[j], dtype), s = ifn_round(cs[half + j], dtype);
            float x1 = x[j], x2 = x[half + j];
            x[j] = ifn_round(ifn_round(x1 * c, dtype) + ifn_round(-x2 * s, dtype), dtype);
            x[half + j] = ifn_round(ifn_round(x2 * c, dtype) + ifn_round(x1 * s, dtype), dtype);
        }
    }
}

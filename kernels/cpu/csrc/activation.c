/* silu(gate) * up over the [gate | up] halves of each row, with the roundings of torch's
 * `F.silu(gate) * up` in the tensor's dtype: silu rounded, then the product rounded. */
#include "common.h"
#include "kernels.h"

void ifn_silu_and_mul_span(const float *gate, const float *up, float *out, int64_t d,
                           int dtype) {
    int64_t j = 0;
#ifdef IFN_AVX2
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; j + 8 <= d; j += 8) {
        __m256 g = _mm256_loadu_ps(gate + j);
        __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, ifn_exp8(_mm256_sub_ps(
                                                                   _mm256_setzero_ps(), g))));
        silu = ifn_round8(silu, dtype);
        _mm256_storeu_ps(out + j, ifn_round8(_mm256_mul_ps(silu, _mm256_loadu_ps(up + j)),
                                             dtype));
    }
#endif
    for (; j < d; j++)
        out[j] = ifn_round(ifn_round(gate[j] / (1.0f + expf(-gate[j])), dtype) * up[j], dtype);
}

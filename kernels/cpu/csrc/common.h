/* Shared by the CPU kernels: element types, conversions to and from fp32, and 8-wide loads.
 *
 * Every kernel reads bf16, fp16 or fp32 tensors and computes in fp32. Stores round to nearest
 * even, as torch does. With AVX2 + FMA (+ F16C for fp16) the 8-wide loads are single
 * instructions; elsewhere the same code runs on scalar fallbacks (correct, not fast: the Python
 * side uses these kernels only where `ifn_simd_width()` is 8).
 */
#ifndef INFERNETES_CPU_COMMON_H
#define INFERNETES_CPU_COMMON_H

#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define IFN_AVX2 1
#endif

/* Element types, as the Python launchers pass them. IFN_F32_UNROUNDED, only as the output
 * type of a product (ifn_linear_rows): fp32 values not rounded to the weights' dtype. */
enum { IFN_F32 = 0, IFN_BF16 = 1, IFN_F16 = 2, IFN_F32_UNROUNDED = 3 };

static inline float ifn_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t ifn_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float ifn_f16_to_f32(uint16_t h) {
#ifdef IFN_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400u));
        u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
#endif
}

static inline uint16_t ifn_f32_to_f16(float f) {
#ifdef IFN_AVX2
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    /* round to nearest even through the fp32 bit pattern */
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (absu >= 0x47800000u) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (absu < 0x38800000u) { /* subnormal or zero in fp16 */
        float a;
        memcpy(&a, &absu, 4);
        float scaled = a * 16777216.0f; /* 2^24: units of the smallest subnormal */
        uint32_t q = (uint32_t)nearbyintf(scaled);
        return (uint16_t)(sign | q);
    }
    uint32_t rounded = absu + 0xfffu + ((absu >> 13) & 1u);
    return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
#endif
}

/* Element i of a tensor of type `dtype`, as fp32. */
static inline float ifn_load(const void *p, int64_t i, int dtype) {
    switch (dtype) {
    case IFN_BF16: return ifn_bf16_to_f32(((const uint16_t *)p)[i]);
    case IFN_F16: return ifn_f16_to_f32(((const uint16_t *)p)[i]);
    default: return ((const float *)p)[i];
    }
}

/* Store fp32 v as element i of a tensor of type `dtype`, rounded to nearest even. */
static inline void ifn_store(void *p, int64_t i, float v, int dtype) {
    switch (dtype) {
    case IFN_BF16: ((uint16_t *)p)[i] = ifn_f32_to_bf16(v); break;
    case IFN_F16: ((uint16_t *)p)[i] = ifn_f32_to_f16(v); break;
    default: ((float *)p)[i] = v;
    }
}

/* v rounded to `dtype` and back: the value torch holds after an op in that dtype. */
static inline float ifn_round(float v, int dtype) {
    switch (dtype) {
    case IFN_BF16: return ifn_bf16_to_f32(ifn_f32_to_bf16(v));
    case IFN_F16: return ifn_f16_to_f32(ifn_f32_to_f16(v));
    default: return v;
    }
}

#ifdef IFN_AVX2
static inline __m256 ifn_load8_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

static inline __m256 ifn_load8_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* 8 elements of a tensor of type `dtype` from element i, as fp32. */
static inline __m256 ifn_load8(const void *p, int64_t i, int dtype) {
    switch (dtype) {
    case IFN_BF16: return ifn_load8_bf16((const uint16_t *)p + i);
    case IFN_F16: return ifn_load8_f16((const uint16_t *)p + i);
    default: return _mm256_loadu_ps((const float *)p + i);
    }
}

/* v rounded to `dtype` and back, 8 lanes at once (as ifn_round). */
static inline __m256 ifn_round8(__m256 v, int dtype) {
    if (dtype == IFN_F16)
        return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    if (dtype != IFN_BF16) return v;
    __m256i u = _mm256_castps_si256(v);
    __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd));
    rounded = _mm256_and_si256(rounded, _mm256_set1_epi32((int)0xffff0000u));
    /* NaN stays NaN (the carry above could turn it into anything) */
    return _mm256_blendv_ps(_mm256_castsi256_ps(rounded), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

/* e^x for 8 lanes: x = n ln2 + r, e^r by a degree-6 polynomial on [-ln2/2, ln2/2] (the
 * classic Cephes expf coefficients), times 2^n built in the exponent bits. Within 2 ulp of
 * expf; inputs clamped to [-87.3, 88.3], the range where 2^n stays a normal float. */
static inline __m256 ifn_exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i scale = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}

/* 8 lanes stored as elements i..i+7 of a tensor of type `dtype`, rounded to nearest even. */
static inline void ifn_store8(void *p, int64_t i, __m256 v, int dtype) {
    switch (dtype) {
    case IFN_BF16: { /* the top halves of the values rounded to bf16 */
        __m256i top = _mm256_srli_epi32(_mm256_castps_si256(ifn_round8(v, IFN_BF16)), 16);
        _mm_storeu_si128((__m128i *)((uint16_t *)p + i),
                         _mm_packus_epi32(_mm256_castsi256_si128(top),
                                          _mm256_extracti128_si256(top, 1)));
        break;
    }
    case IFN_F16:
        _mm_storeu_si128((__m128i *)((uint16_t *)p + i),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        break;
    default: _mm256_storeu_ps((float *)p + i, v);
    }
}

static inline float ifn_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* n elements of type `dtype` at p, widened into f. */
static inline void ifn_widen(const void *p, float *f, int64_t n, int dtype) {
    int64_t i = 0;
#ifdef IFN_AVX2
    switch (dtype) {
    case IFN_BF16:
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, ifn_load8_bf16((const uint16_t *)p + i));
        break;
    case IFN_F16:
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(f + i, ifn_load8_f16((const uint16_t *)p + i));
        break;
    default:
        memcpy(f, p, (size_t)n * sizeof(float));
        return;
    }
#endif
    for (; i < n; i++) f[i] = ifn_load(p, i, dtype);
}

/* n fp32 values, stored into p as `dtype`. */
static inline void ifn_narrow(const float *f, void *p, int64_t n, int dtype) {
    int64_t i = 0;
#ifdef IFN_AVX2
    for (; i + 8 <= n; i += 8) ifn_store8(p, i, _mm256_loadu_ps(f + i), dtype);
#endif
    for (; i < n; i++) ifn_store(p, i, f[i], dtype);
}

static inline size_t ifn_elem_size(int dtype) { return dtype == IFN_F32 ? 4 : 2; }

/* Element offset of (slot, kv head) in a paged cache [num_blocks, num_kv_heads, block_size,
 * head_dim] (layout: kernels/paged_attention.py). */
static inline int64_t ifn_cache_offset(int64_t slot, int64_t kv_head, int64_t num_kv_heads,
                                       int64_t block_size, int64_t head_dim) {
    return ((slot / block_size * num_kv_heads + kv_head) * block_size + slot % block_size) *
           head_dim;
}

/* Rows [first, last) of `total`, split evenly over the threads of a parallel region. */
static inline void ifn_thread_range(int64_t total, int thread, int num_threads,
                                    int64_t *first, int64_t *last) {
    int64_t per = total / num_threads, extra = total % num_threads;
    *first = thread * per + (thread < extra ? thread : extra);
    *last = *first + per + (thread < extra ? 1 : 0);
}

#endif

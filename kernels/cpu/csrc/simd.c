/* What the library was compiled for. */
#include "common.h"

/* 8 when the kernels use AVX2 + FMA + F16C, 1 when they fall back to scalar code. */
int ifn_simd_width(void) {
#ifdef IFN_AVX2
    return 8;
#else
    return 1;
#endif
}

/* npukit kernel library: one part of a split (npukit/ops/slice.py). */
#include "npukit_kernels.h"

void nk_slice(int32_t outer, int32_t in_inner, int32_t offset, int32_t part_inner, const int8_t *in, int8_t *out)
{
    int32_t i, j;

    for (i = 0; i < outer; i++) {
        const int8_t *src = in + (int64_t)i * in_inner + offset;
        for (j = 0; j < part_inner; j++) {
            *out++ = src[j];
        }
    }
}

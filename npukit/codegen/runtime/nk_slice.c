/* npukit kernel library: one part of a split (npukit/ops/slice.py). */
#include "npukit_kernels.h"

void nk_slice(const nk_slice_params *p, const int8_t *in, int8_t *out)
{
    const int32_t outer = p->outer, in_inner = p->in_inner, offset = p->offset, part_inner = p->part_inner;
    int32_t i, j;

    for (i = 0; i < outer; i++) {
        const int8_t *src = in + (int64_t)i * in_inner + offset;
        for (j = 0; j < part_inner; j++) {
            *out++ = src[j];
        }
    }
}

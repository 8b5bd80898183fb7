/* npukit kernel library: global average pooling (npukit/ops/pool.py, GlobalAvgPool): the mean of each
 * channel's hw positions, round_div(sum, hw, rounding). No saturation: a rounded mean stays in range. */
#include <stddef.h>

#include "npukit_kernels.h"

void nk_global_avgpool(const nk_global_avgpool_params *p, const int8_t *in, int8_t *out)
{
    const int32_t c = p->c, hw = p->hw;
    const nk_rounding rounding = p->rounding;
    int32_t ch, i;

    for (ch = 0; ch < c; ch++) {
        const int8_t *x = in + (ptrdiff_t)ch * hw;
        int64_t sum = 0;
        for (i = 0; i < hw; i++) {
            sum += x[i];
        }
        out[ch] = (int8_t)nk_round_div(sum, hw, rounding);
    }
}

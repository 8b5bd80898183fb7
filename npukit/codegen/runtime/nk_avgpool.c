/* npukit kernel library: average pooling, no padding, dilation 1 (npukit/ops/pool.py, AvgPool).
 * The window sum is exact (int64); the mean is round_div(sum, k_h * k_w, rounding), which stays in
 * the input's range, so no saturation is needed. */
#include <stddef.h>

#include "npukit_kernels.h"

void nk_avgpool(const nk_pool_params *p, const int8_t *in, int8_t *out)
{
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w;
    const int64_t n = (int64_t)p->k_h * p->k_w;
    int32_t c, oh, ow, kh, kw;

    for (c = 0; c < p->c; c++) {
        const int8_t *x = in + c * in_hw;
        for (oh = 0; oh < p->out_h; oh++) {
            for (ow = 0; ow < p->out_w; ow++) {
                const int8_t *win = x + ((ptrdiff_t)oh * p->stride_h * p->in_w + (ptrdiff_t)ow * p->stride_w);
                int64_t sum = 0;
                for (kh = 0; kh < p->k_h; kh++) {
                    const int8_t *r = win + (ptrdiff_t)kh * p->in_w;
                    for (kw = 0; kw < p->k_w; kw++) {
                        sum += r[kw];
                    }
                }
                *out++ = (int8_t)nk_round_div(sum, n, p->rounding);
            }
        }
    }
}

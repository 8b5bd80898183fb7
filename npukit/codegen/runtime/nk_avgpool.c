/* npukit kernel library: average pooling, dilation 1 (npukit/ops/pool.py, AvgPool). Padding counts as
 * zeros in the window (torch's count_include_pad). The window sum is exact (int64); the mean is
 * round_div(sum, k_h * k_w, rounding), which stays in the input's range, so no saturation is needed. */
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
            const int32_t h0 = oh * p->stride_h - p->pad_h;
            for (ow = 0; ow < p->out_w; ow++) {
                const int32_t w0 = ow * p->stride_w - p->pad_w;
                int64_t sum = 0;
                for (kh = 0; kh < p->k_h; kh++) {
                    const int32_t h = h0 + kh;
                    if (h < 0 || h >= p->in_h) {
                        continue;
                    }
                    for (kw = 0; kw < p->k_w; kw++) {
                        const int32_t w = w0 + kw;
                        if (w >= 0 && w < p->in_w) {
                            sum += x[(ptrdiff_t)h * p->in_w + w];
                        }
                    }
                }
                *out++ = (int8_t)nk_round_div(sum, n, p->rounding);
            }
        }
    }
}

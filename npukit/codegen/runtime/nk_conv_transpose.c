/* npukit kernel library: transposed conv 1-d/2-d, groups 1 (npukit/ops/conv_transpose.py is the reference).
 *
 * Output-centric: each output sums the inputs its taps reach, t = y + pad - k * dil, where t is a multiple
 * of the stride inside the input; then the bias and nk_requant, as nk_conv's outputs. The int64
 * accumulator is exact: at most in_c * k_h * k_w products of an int8 input and a weight of <= 16 bits. */
#include <stddef.h>

#include "npukit_kernels.h"

/* The input index a tap reads along one axis, or -1 when it falls between or outside the inputs. */
static int32_t nk_tap(int32_t y, int32_t k, int32_t pad, int32_t dil, int32_t stride, int32_t n)
{
    const int32_t t = y + pad - k * dil;
    if (t < 0 || t % stride != 0 || t / stride >= n) {
        return -1;
    }
    return t / stride;
}

void nk_conv_transpose(const nk_conv_params *p, const int8_t *in, const void *weights, const int32_t *bias,
                       void *out)
{
    int32_t o, y, x, c, ky, kx;

    for (o = 0; o < p->out_c; o++) {
        const int64_t bias_term = bias != NULL ? nk_requant_bias(&p->rq, o, bias[o]) : 0;
        for (y = 0; y < p->out_h; y++) {
            for (x = 0; x < p->out_w; x++) {
                int64_t sum = 0, q;
                for (c = 0; c < p->in_c; c++) {
                    for (ky = 0; ky < p->k_h; ky++) {
                        const int32_t iy = nk_tap(y, ky, p->pad_h, p->dil_h, p->stride_h, p->in_h);
                        if (iy < 0) {
                            continue;
                        }
                        for (kx = 0; kx < p->k_w; kx++) {
                            const int32_t ix = nk_tap(x, kx, p->pad_w, p->dil_w, p->stride_w, p->in_w);
                            if (ix >= 0) {
                                const int32_t wi = ((c * p->out_c + o) * p->k_h + ky) * p->k_w + kx;
                                sum += (int64_t)in[(c * p->in_h + iy) * p->in_w + ix] * nk_weight(weights, wi, p->w_bits);
                            }
                        }
                    }
                }
                q = nk_requant(&p->rq, o, nk_sat_add64(sum, bias_term));
                if (p->out_bytes == 4) {
                    ((int32_t *)out)[(o * p->out_h + y) * p->out_w + x] =
                        (int32_t)(q < INT32_MIN ? INT32_MIN : (q > INT32_MAX ? INT32_MAX : q));
                } else {
                    ((int8_t *)out)[(o * p->out_h + y) * p->out_w + x] = (int8_t)(q < INT8_MIN ? INT8_MIN : (q > INT8_MAX ? INT8_MAX : q));
                }
            }
        }
    }
}

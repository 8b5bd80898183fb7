/* npukit kernel library: fully connected layer (docs/arithmetic.md, "Conv and linear: the MAC
 * pipeline"; npukit/ops/mac.py, class Linear, is the reference).
 *
 * out[o] = nk_requant(rq, o, sum_i x[i] * w[o][i] + nk_requant_bias(rq, o, bias[o]))
 *        = saturate(round_shift(saturate(sum + bias[o] * 2^bias_shift, acc_min, acc_max), out_shift),
 *                   act_min, act_max)
 * with the requantisation defined once, in npukit_kernels.h (no specialisation here: one call per
 * output costs nothing next to its in_features products).
 *
 * 8-bit weights: blocks of NK_LINEAR_LANES products go into int32 lanes (a constant trip count the
 * compiler can vectorise). Exact by this bound: |x * w| <= 128 * 128 = 2^14, and a lane takes at most
 * 2^16 products (NK_LINEAR_CHUNK / NK_LINEAR_LANES) before it is added into the int64 sum, so
 * |lane| <= 2^30 < 2^31 - 1. Other widths go through nk_weight into int64. The sum is exact in int64
 * for in_features < 2^40; the bias term and its addition saturate at the int64 bounds (see nk_conv.c).
 * The result is stored as int8 or int32 (out_bytes), clamped to that type (act range lies inside it).
 */
#include <stddef.h>

#include "npukit_kernels.h"

#define NK_LINEAR_LANES 16
#define NK_LINEAR_CHUNK (NK_LINEAR_LANES * 65536) /* products per lane-flush: 2^16 per lane */

void nk_linear(const nk_linear_params *p, const int8_t *in, const void *weights, const int32_t *bias, void *out)
{
    const int32_t n = p->in_features;
    int32_t o;

    for (o = 0; o < p->out_features; o++) {
        int64_t sum = 0, y;
        int32_t i = 0;
        if (p->w_bits == 8) {
            const int8_t *w = (const int8_t *)weights + (ptrdiff_t)o * n;
            while (n - i >= NK_LINEAR_LANES) {
                int32_t part[NK_LINEAR_LANES] = {0};
                int32_t j, end = i + (n - i) / NK_LINEAR_LANES * NK_LINEAR_LANES;
                if (end - i > NK_LINEAR_CHUNK) {
                    end = i + NK_LINEAR_CHUNK;
                }
                for (; i < end; i += NK_LINEAR_LANES) {
                    for (j = 0; j < NK_LINEAR_LANES; j++) {
                        part[j] += (int16_t)(in[i + j] * w[i + j]); /* |x * w| <= 2^14: exact in int16 */
                    }
                }
                for (j = 0; j < NK_LINEAR_LANES; j++) {
                    sum += part[j];
                }
            }
            for (; i < n; i++) {
                sum += (int32_t)in[i] * w[i];
            }
        } else {
            const int32_t w0 = o * n;
            for (; i < n; i++) {
                sum += (int64_t)in[i] * nk_weight(weights, w0 + i, p->w_bits);
            }
        }
        if (bias) {
            sum = nk_sat_add64(sum, nk_requant_bias(&p->rq, o, bias[o]));
        }
        y = nk_requant(&p->rq, o, sum);
        if (p->out_bytes == 4) {
            ((int32_t *)out)[o] = (int32_t)(y < INT32_MIN ? INT32_MIN : (y > INT32_MAX ? INT32_MAX : y));
        } else {
            ((int8_t *)out)[o] = (int8_t)(y < INT8_MIN ? INT8_MIN : (y > INT8_MAX ? INT8_MAX : y));
        }
    }
}

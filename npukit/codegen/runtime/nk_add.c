/* npukit kernel library: element-wise add (npukit/ops/add.py). Each operand is rounded separately to
 * the output exponent (a_shift = e_a - e_out >= 0, b_shift likewise), then the sum is saturated to
 * [act_min, act_max] (a fused ReLU sets act_min = 0). Each element is read before it is written, so
 * `out` may be the same buffer as `a` or `b`.
 *
 * The contract only shifts operands right. A negative shift would be an exact left shift; it is
 * clamped at -55 so that the sum of two shifted int8 values (|term| <= 2^62) cannot overflow. */
#include "npukit_kernels.h"

void nk_add(const nk_add_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    const int32_t n = p->n;
    const nk_rounding rounding = p->rounding;
    const int32_t sa = p->a_shift < -55 ? -55 : p->a_shift, sb = p->b_shift < -55 ? -55 : p->b_shift;
    const int64_t lo = p->act_min < INT8_MIN ? INT8_MIN : p->act_min;
    const int64_t hi = p->act_max > INT8_MAX ? INT8_MAX : p->act_max;
    int32_t i;

    for (i = 0; i < n; i++) {
        const int64_t y = nk_round_shift(a[i], sa, rounding) + nk_round_shift(b[i], sb, rounding);
        out[i] = (int8_t)(y < lo ? lo : (y > hi ? hi : y));
    }
}

/* npukit kernel library: one operand of a concatenation (npukit/ops/concat.py). For a concat along
 * per-sample axis `axis` of shape (d0, d1, ...): outer = prod(d[:axis]); part_inner = the operand's
 * d[axis] * prod(d[axis+1:]); out_inner = the output's d[axis] * prod(d[axis+1:]); offset = the sum of
 * the earlier operands' d[axis], times prod(d[axis+1:]). Each value is round_shift(x, e_in - e_out)
 * with shift >= 0, which cannot leave the int8 range (the clamp below only guards a negative shift). */
#include <stddef.h>

#include "npukit_kernels.h"

void nk_concat_part(const nk_concat_params *p, const int8_t *in, int8_t *out)
{
    const int32_t outer = p->outer, part_inner = p->part_inner, out_inner = p->out_inner, offset = p->offset;
    const int32_t shift = p->shift;
    const nk_rounding rounding = p->rounding;
    int32_t o, i;

    for (o = 0; o < outer; o++) {
        const int8_t *x = in + (ptrdiff_t)o * part_inner;
        int8_t *y = out + ((ptrdiff_t)o * out_inner + offset);
        for (i = 0; i < part_inner; i++) {
            const int64_t v = nk_round_shift(x[i], shift, rounding);
            y[i] = (int8_t)(v < INT8_MIN ? INT8_MIN : (v > INT8_MAX ? INT8_MAX : v));
        }
    }
}

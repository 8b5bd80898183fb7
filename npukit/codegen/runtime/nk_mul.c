/* npukit kernel library: element-wise multiply with requantisation (npukit/ops/mul.py). */
#include "npukit_kernels.h"

void nk_mul(const nk_mul_params *p, const int8_t *a, const int8_t *b, int8_t *out)
{
    const int32_t outer = p->outer, inner = p->inner, shift = p->shift, act_min = p->act_min, act_max = p->act_max;
    const nk_rounding rounding = p->rounding;
    int32_t i, j;

    for (i = 0; i < outer; i++) {
        const int32_t bi = b[i];
        for (j = 0; j < inner; j++) {
            int64_t y = nk_round_shift((int64_t)a[i * inner + j] * bi, shift, rounding);
            out[i * inner + j] = (int8_t)(y < act_min ? act_min : (y > act_max ? act_max : y));
        }
    }
}

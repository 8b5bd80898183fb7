/* npukit kernel library: element-wise multiply with requantisation (npukit/ops/mul.py). */
#include "npukit_kernels.h"

void nk_mul(int32_t outer, int32_t inner, const int8_t *a, const int8_t *b, int32_t shift, int32_t act_min,
            int32_t act_max, nk_rounding rounding, int8_t *out)
{
    int32_t i, j;

    for (i = 0; i < outer; i++) {
        const int32_t bi = b[i];
        for (j = 0; j < inner; j++) {
            int64_t y = nk_round_shift((int64_t)a[i * inner + j] * bi, shift, rounding);
            out[i * inner + j] = (int8_t)(y < act_min ? act_min : (y > act_max ? act_max : y));
        }
    }
}

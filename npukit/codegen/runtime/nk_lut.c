/* npukit kernel library: element-wise function by lookup table (npukit/ops/lut.py); `out` may alias `in`. */
#include "npukit_kernels.h"

void nk_lut(const nk_lut_params *p, const int8_t *in, const int8_t *table, int8_t *out)
{
    const int32_t n = p->n, offset = p->offset;
    int32_t i;

    for (i = 0; i < n; i++) {
        out[i] = table[in[i] + offset];
    }
}

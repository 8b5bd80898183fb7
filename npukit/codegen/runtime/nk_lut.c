/* npukit kernel library: element-wise function by lookup table (npukit/ops/lut.py); `out` may alias `in`. */
#include "npukit_kernels.h"

void nk_lut(int32_t n, const int8_t *in, const int8_t *table, int32_t offset, int8_t *out)
{
    int32_t i;

    for (i = 0; i < n; i++) {
        out[i] = table[in[i] + offset];
    }
}

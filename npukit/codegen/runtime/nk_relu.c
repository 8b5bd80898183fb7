/* npukit kernel library: standalone ReLU, max(x, 0) (npukit/ops/relu.py); `out` may alias `in`. */
#include "npukit_kernels.h"

void nk_relu(int32_t n, const int8_t *in, int8_t *out)
{
    int32_t i;

    for (i = 0; i < n; i++) {
        out[i] = in[i] < 0 ? 0 : in[i];
    }
}

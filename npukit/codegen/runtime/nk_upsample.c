/* npukit kernel library: nearest upsampling by integer factors (npukit/ops/upsample.py). */
#include "npukit_kernels.h"

void nk_upsample(int32_t c, int32_t h, int32_t w, int32_t sh, int32_t sw, const int8_t *in, int8_t *out)
{
    int32_t ch, y, x, k;

    for (ch = 0; ch < c; ch++) {
        for (y = 0; y < h * sh; y++) {
            const int8_t *row = in + ((int64_t)ch * h + y / sh) * w;
            for (x = 0; x < w; x++) {
                for (k = 0; k < sw; k++) {
                    *out++ = row[x];
                }
            }
        }
    }
}

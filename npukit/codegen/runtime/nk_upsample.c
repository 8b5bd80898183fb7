/* npukit kernel library: nearest upsampling by integer factors (npukit/ops/upsample.py). */
#include "npukit_kernels.h"

void nk_upsample(const nk_upsample_params *p, const int8_t *in, int8_t *out)
{
    const int32_t c = p->c, h = p->h, w = p->w, sh = p->sh, sw = p->sw;
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

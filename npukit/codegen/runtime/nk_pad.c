/* npukit kernel library: constant padding of the spatial axes, each side on its own (npukit/ops/pad.py). */
#include "npukit_kernels.h"

void nk_pad(int32_t c, int32_t h, int32_t w, int32_t top, int32_t bottom, int32_t left, int32_t right, int32_t value,
            const int8_t *in, int8_t *out)
{
    int32_t ch, y, x;
    const int32_t ow = w + left + right;
    const int8_t v = (int8_t)value;

    for (ch = 0; ch < c; ch++) {
        for (y = 0; y < top + h + bottom; y++) {
            if (y < top || y >= top + h) {
                for (x = 0; x < ow; x++) {
                    *out++ = v;
                }
                continue;
            }
            for (x = 0; x < left; x++) {
                *out++ = v;
            }
            for (x = 0; x < w; x++) {
                *out++ = *in++;
            }
            for (x = 0; x < right; x++) {
                *out++ = v;
            }
        }
    }
}

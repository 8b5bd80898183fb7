/* npukit kernel library: constant padding of the spatial axes, each side on its own (npukit/ops/pad.py). */
#include "npukit_kernels.h"

void nk_pad(const nk_pad_params *p, const int8_t *in, int8_t *out)
{
    const int32_t c = p->c, h = p->h, w = p->w, top = p->top, bottom = p->bottom, left = p->left, right = p->right;
    int32_t ch, y, x;
    const int32_t ow = w + left + right;
    const int8_t v = (int8_t)p->value;

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

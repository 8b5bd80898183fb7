/* npukit kernel library: max pooling, dilation 1 (npukit/ops/pool.py, MaxPool). Exact. Padding is never
 * read: each window holds at least one input (padding <= half the window), and only inputs compete. */
#include <stddef.h>

#include "npukit_kernels.h"

#if defined(__SSE2__) && !defined(NK_NO_SIMD)
#define NK_MAXPOOL_SSE2 1
#include <emmintrin.h>
#endif

void nk_maxpool(const nk_pool_params *p, const int8_t *in, int8_t *out)
{
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w;
    int32_t c, oh, ow, kh, kw;

    if (p->k_h == 1 && p->stride_h == 1 && p->k_w == 2 && p->stride_w == 2 && p->pad_h == 0 && p->pad_w == 0) {
        /* The common MaxPool(2) over rows: a short fixed loop the compiler vectorises. */
        const ptrdiff_t rows = (ptrdiff_t)p->c * p->out_h;
        ptrdiff_t r;
        if (p->in_w == 2 * p->out_w) { /* rows back to back: one run of pairs */
            const ptrdiff_t n = rows * p->out_w;
            ptrdiff_t i = 0;
#if defined(NK_MAXPOOL_SSE2)
            for (; i + 8 <= n; i += 8) { /* 8 pairs as int16 lanes: the low bytes, sign-extended, and the high */
                const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(in + 2 * i));
                const __m128i m = _mm_max_epi16(_mm_srai_epi16(_mm_slli_epi16(v, 8), 8), _mm_srai_epi16(v, 8));
                _mm_storel_epi64((__m128i *)(void *)(out + i), _mm_packs_epi16(m, m));
            }
#endif
            for (; i < n; i++) {
                const int8_t a = in[2 * i], b = in[2 * i + 1];
                out[i] = a > b ? a : b;
            }
            return;
        }
        for (r = 0; r < rows; r++) {
            const int8_t *x = in + r * p->in_w;
            for (ow = 0; ow < p->out_w; ow++) {
                const int8_t a = x[2 * ow], b = x[2 * ow + 1];
                *out++ = a > b ? a : b;
            }
        }
        return;
    }
    for (c = 0; c < p->c; c++) {
        const int8_t *x = in + c * in_hw;
        for (oh = 0; oh < p->out_h; oh++) {
            const int32_t h0 = oh * p->stride_h - p->pad_h;
            for (ow = 0; ow < p->out_w; ow++) {
                const int32_t w0 = ow * p->stride_w - p->pad_w;
                int8_t m = INT8_MIN;
                for (kh = 0; kh < p->k_h; kh++) {
                    const int32_t h = h0 + kh;
                    if (h < 0 || h >= p->in_h) {
                        continue;
                    }
                    for (kw = 0; kw < p->k_w; kw++) {
                        const int32_t w = w0 + kw;
                        if (w >= 0 && w < p->in_w) {
                            const int8_t v = x[(ptrdiff_t)h * p->in_w + w];
                            m = v > m ? v : m;
                        }
                    }
                }
                *out++ = m;
            }
        }
    }
}

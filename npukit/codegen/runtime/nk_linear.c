/* npukit kernel library: fully connected layer (docs/arithmetic.md, "Conv and linear: the MAC
 * pipeline"; npukit/ops/mac.py, class Linear, is the reference).
 *
 * out[o] = nk_requant(rq, o, sum_i x[i] * w[o][i] + nk_requant_bias(rq, o, bias[o]))
 *        = saturate(round_shift(saturate(sum + bias[o] * 2^bias_shift, acc_min, acc_max), out_shift),
 *                   act_min, act_max)
 * with the requantisation defined once, in npukit_kernels.h (no specialisation here: one call per
 * output costs nothing next to its in_features products).
 *
 * 8-bit weights: blocks of NK_LINEAR_LANES products go into int32 lanes (a constant trip count the
 * compiler can vectorise). Exact by this bound: |x * w| <= 128 * 128 = 2^14, and a lane takes at most
 * 2^16 products (NK_LINEAR_CHUNK / NK_LINEAR_LANES) before it is added into the int64 sum, so
 * |lane| <= 2^30 < 2^31 - 1. Other widths go through nk_weight into int64. The sum is exact in int64
 * for in_features < 2^40; the bias term and its addition saturate at the int64 bounds (see nk_conv.c).
 * The result is stored as int8 or int32 (out_bytes), clamped to that type (act range lies inside it).
 * With the DSP extension (Cortex-M4/M7/M33), 8-bit weights take nk_linear_dsp (SMLAD, see there).
 * With SSE2 (x86-64), the 8-bit blocks are 16 inputs sign-extended to int16 and multiplied by pmaddwd into
 * 4 int32 lanes, 4 products per lane per block (|.| <= 2^16), at most 2^14 blocks before the int64 sum:
 * |lane| <= 2^30.
 */
#include <stddef.h>
#include <string.h>

#include "npukit_kernels.h"

#if defined(NK_DSP)
#include <arm_acle.h>
#endif
#if defined(__SSE2__) && !defined(NK_NO_SIMD)
#define NK_LINEAR_SSE2 1
#include <emmintrin.h>
#endif

#if defined(NK_DSP)
#define NK_LINEAR_DSP 1
#else
#define NK_LINEAR_DSP 0
#endif
#define NK_LINEAR_LANES 16
#define NK_LINEAR_CHUNK (NK_LINEAR_LANES * 65536) /* products per lane-flush: 2^16 per lane */

/* The MAC tail of output o: bias, nk_requant, the store clamped to the output type. */
static void nk_linear_store(const nk_linear_params *p, const int32_t *bias, int32_t o, int64_t sum, void *out)
{
    int64_t y;
    if (bias) {
        sum = nk_sat_add64(sum, nk_requant_bias(&p->rq, o, bias[o]));
    }
    y = nk_requant(&p->rq, o, sum);
    if (p->out_bytes == 4) {
        ((int32_t *)out)[o] = (int32_t)(y < INT32_MIN ? INT32_MIN : (y > INT32_MAX ? INT32_MAX : y));
    } else {
        ((int8_t *)out)[o] = (int8_t)(y < INT8_MIN ? INT8_MIN : (y > INT8_MAX ? INT8_MAX : y));
    }
}

#if defined(NK_DSP)
/* Cortex-M DSP path, 8-bit weights: two outputs per pass, so each input word serves both. SXTB16 splits
 * a word of 4 inputs (or weights) into the int16 pairs of bytes (0, 2) and (1, 3), and SMLAD adds both
 * products of a pair into an int32 sum. Exact: |x * w| <= 2^14 and a sum takes at most
 * NK_LINEAR_DSP_CHUNK = 2^16 products before it is added into int64, so |sum| <= 2^30. */
#define NK_LINEAR_DSP_CHUNK 65536 /* a multiple of 4 */

static uint32_t nk_linear_load4(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v); /* one load (any alignment) */
    return v;
}

static int32_t nk_linear_sxtb16_ror8(uint32_t v)
{
#if defined(__GNUC__)
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
#else
    return __sxtb16((int8x4_t)((v >> 8) | (v << 24)));
#endif
}

static void nk_linear_dsp(const nk_linear_params *p, const int8_t *in, const int8_t *w, const int32_t *bias, void *out)
{
    const int32_t n = p->in_features;
    int32_t o;
    for (o = 0; o < p->out_features; o += 2) {
        const int32_t ob = o + 1 < p->out_features ? o + 1 : o; /* an odd last output pairs with itself */
        const int8_t *wa = w + (ptrdiff_t)o * n, *wb = w + (ptrdiff_t)ob * n;
        int64_t sa = 0, sb = 0;
        int32_t i = 0;
        while (i < n) {
            const int32_t end = n - i > NK_LINEAR_DSP_CHUNK ? i + NK_LINEAR_DSP_CHUNK : n;
            int32_t a = 0, b = 0;
            for (; end - i >= 4; i += 4) {
                const uint32_t xv = nk_linear_load4(in + i), va = nk_linear_load4(wa + i);
                const uint32_t vb = nk_linear_load4(wb + i);
                const int32_t xl = __sxtb16((int8x4_t)xv), xh = nk_linear_sxtb16_ror8(xv);
                a = __smlad(__sxtb16((int8x4_t)va), xl, __smlad(nk_linear_sxtb16_ror8(va), xh, a));
                b = __smlad(__sxtb16((int8x4_t)vb), xl, __smlad(nk_linear_sxtb16_ror8(vb), xh, b));
            }
            for (; i < end; i++) {
                a += (int32_t)in[i] * wa[i];
                b += (int32_t)in[i] * wb[i];
            }
            sa += a;
            sb += b;
        }
        nk_linear_store(p, bias, o, sa, out);
        if (ob > o) {
            nk_linear_store(p, bias, ob, sb, out);
        }
    }
}
#endif

void nk_linear(const nk_linear_params *p, const int8_t *in, const void *weights, const int32_t *bias, void *out)
{
    const int32_t n = p->in_features;
    int32_t o;

#if defined(NK_DSP)
    if (p->w_bits == 8) {
        nk_linear_dsp(p, in, (const int8_t *)weights, bias, out);
        return;
    }
#endif
    for (o = 0; o < p->out_features; o++) {
        int64_t sum = 0;
        int32_t i = 0;
        if (p->w_bits == 8 && !NK_LINEAR_DSP) { /* (DSP builds returned above) */
            const int8_t *w = (const int8_t *)weights + (ptrdiff_t)o * n;
#if defined(NK_LINEAR_SSE2)
            while (n - i >= 16) {
                const int32_t end = i + ((n - i) / 16 < 16384 ? (n - i) / 16 : 16384) * 16;
                __m128i acc = _mm_setzero_si128();
                int32_t l[4];
                for (; i < end; i += 16) {
                    const __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(in + i));
                    const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(w + i));
                    acc = _mm_add_epi32(acc, _mm_madd_epi16(_mm_srai_epi16(_mm_unpacklo_epi8(x, x), 8),
                                                            _mm_srai_epi16(_mm_unpacklo_epi8(v, v), 8)));
                    acc = _mm_add_epi32(acc, _mm_madd_epi16(_mm_srai_epi16(_mm_unpackhi_epi8(x, x), 8),
                                                            _mm_srai_epi16(_mm_unpackhi_epi8(v, v), 8)));
                }
                _mm_storeu_si128((__m128i *)(void *)l, acc);
                sum += (int64_t)l[0] + l[1] + l[2] + l[3];
            }
#endif
            while (n - i >= NK_LINEAR_LANES) { /* (after the SSE2 blocks, fewer than 16 inputs are left) */
                int32_t part[NK_LINEAR_LANES] = {0};
                int32_t j, end = i + (n - i) / NK_LINEAR_LANES * NK_LINEAR_LANES;
                if (end - i > NK_LINEAR_CHUNK) {
                    end = i + NK_LINEAR_CHUNK;
                }
                for (; i < end; i += NK_LINEAR_LANES) {
                    for (j = 0; j < NK_LINEAR_LANES; j++) {
                        part[j] += (int16_t)(in[i + j] * w[i + j]); /* |x * w| <= 2^14: exact in int16 */
                    }
                }
                for (j = 0; j < NK_LINEAR_LANES; j++) {
                    sum += part[j];
                }
            }
            for (; i < n; i++) {
                sum += (int32_t)in[i] * w[i];
            }
        } else {
            const int32_t w0 = o * n;
            for (; i < n; i++) {
                sum += (int64_t)in[i] * nk_weight(weights, w0 + i, p->w_bits);
            }
        }
        nk_linear_store(p, bias, o, sum, out);
    }
}

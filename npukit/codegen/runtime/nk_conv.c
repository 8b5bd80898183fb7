/* npukit kernel library: conv 1-d/2-d, grouped and depthwise, zero padding (docs/arithmetic.md,
 * "Conv and linear: the MAC pipeline"; npukit/ops/mac.py is the reference).
 *
 * Per output:  acc = sum(x * w) + bias * 2^bias_shift            (exact, int64)
 *              acc = saturate(acc, acc_min, acc_max)               (once, after the bias)
 *              y   = saturate(round_shift(acc, out_shift), act_min, act_max)
 *
 * Padding is never tested per MAC: for each output row the valid kernel rows are computed once, and
 * the valid kernel columns once per output (or per tile). Paths:
 *  - 8-bit weights (any groups), stride_w == 1, rows of at least NK_CONV_TILE outputs: tiles of
 *    NK_CONV_TILE adjacent outputs (the last tile of a row overlaps the one before it and stores only
 *    its new outputs). The inner loop multiplies one weight into the whole tile with a constant trip
 *    count, so the compiler keeps the tile in registers and vectorises it (gcc -O2 does, with SSE2).
 *    A tile whose input window crosses a border first copies each row's window into a zero-padded
 *    local buffer; if that window is wider than NK_CONV_WIN (huge dilation), the tile's outputs are
 *    computed one by one instead.
 *  - other 8-bit cases: one output at a time over its valid taps, int64 accumulator.
 *  - 2-, 4- and 16-bit weights: the same, one weight at a time through nk_weight.
 *
 * Tile partial sums are int32, which is exact by this bound: an input is int8 and an 8-bit weight is
 * int8, so |x * w| <= 128 * 128 = 2^14. A partial sum takes at most NK_CONV_PART_TERMS = 2^16 products
 * before it is added into the int64 accumulator, so |partial| <= 2^30 < 2^31 - 1. (Each tile lane gets
 * one product per (channel, kernel row, kernel column); whole channels are grouped into chunks of at
 * most 2^16 / (k_h * k_w) channels, and kernels with k_h * k_w > 2^16 take the generic int64 path.)
 * The product itself is exact in int16, which the inner loop states with a cast so that a vectorising
 * compiler may multiply 16-bit lanes.
 *
 * The sum of products is exact in int64 while fan_in = in_c / groups * k_h * k_w < 2^40 (8-bit weights)
 * or 2^33 (16-bit weights). The bias term and the bias addition saturate at the int64 bounds instead of
 * overflowing; with |acc_min|, |acc_max| < 2^62 (accumulators are at most 48 bits wide) this gives the
 * contract's result.
 */
#include <stddef.h>
#include <string.h>

#include "npukit_kernels.h"

#define NK_CONV_TILE 16
#define NK_CONV_PART_TERMS 65536 /* 2^16 products of |x * w| <= 2^14 stay below 2^31 */
#define NK_CONV_WIN 64           /* zero-padded input window of a border tile: NK_CONV_TILE + (k_w - 1) * dil_w */

/* Taps k in [0, k_n) with 0 <= base + k * d < n: *lo = first, *hi = one past the last (lo == hi: none). */
static void nk_conv_taps(int32_t base, int32_t d, int32_t k_n, int32_t n, int32_t *lo, int32_t *hi)
{
    int64_t a = 0, b;
    if (base < 0) {
        a = ((int64_t)-(int64_t)base + d - 1) / d;
    }
    if (base > n - 1) {
        b = 0;
    } else {
        b = ((int64_t)n - 1 - base) / d + 1;
    }
    if (b > k_n) {
        b = k_n;
    }
    if (a > b) {
        a = b;
    }
    *lo = (int32_t)a;
    *hi = (int32_t)b;
}

static int64_t nk_conv_sat_add(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b) {
        return INT64_MAX;
    }
    if (b < 0 && a < INT64_MIN - b) {
        return INT64_MIN;
    }
    return a + b;
}

/* x / 2^s rounded towards -infinity, 1 <= s <= 62, without >> of a negative value. */
static int64_t nk_conv_floor_shift(int64_t x, int32_t s)
{
    return x >= 0 ? x >> s : -((-(x + 1)) >> s) - 1;
}

/* The MAC tail: bias, accumulator saturation, requantisation, output saturation and store. The clamps
 * are written out here (rather than calling nk_saturate) because this runs once per output. The usual
 * requantising shift (1 <= out_shift <= 62, |acc| < 2^62 after saturation) is computed inline with the
 * integer forms of docs/arithmetic.md: no intermediate leaves int64 (|acc| + 2^61 < 2^63); anything
 * else goes through nk_round_shift. */
static void nk_conv_store(const nk_conv_params *p, void *out, size_t idx, int64_t sum, int64_t bias_term)
{
    const int32_t s = p->out_shift;
    int64_t acc = nk_conv_sat_add(sum, bias_term), y;
    acc = acc < p->acc_min ? p->acc_min : acc;
    acc = acc > p->acc_max ? p->acc_max : acc;
    if (s >= 1 && s <= 62 && acc > -((int64_t)1 << 62) && acc < ((int64_t)1 << 62)) {
        const int64_t half = (int64_t)1 << (s - 1);
        switch (p->rounding) {
        case NK_FLOOR:
            y = nk_conv_floor_shift(acc, s);
            break;
        case NK_TRUNC:
            y = acc < 0 ? -((-acc) >> s) : acc >> s;
            break;
        case NK_HALF_EVEN: {
            const int64_t q = nk_conv_floor_shift(acc, s), r = acc - q * ((int64_t)1 << s);
            y = q + (r > half || (r == half && (q & 1) != 0));
            break;
        }
        case NK_HALF_UP:
        default: /* as nk_round_shift: any other value behaves as NK_HALF_UP */
            y = nk_conv_floor_shift(acc + half, s);
            break;
        }
    } else {
        y = nk_round_shift(acc, s, p->rounding);
    }
    y = y < p->act_min ? p->act_min : y;
    y = y > p->act_max ? p->act_max : y;
    if (p->out_bytes == 4) {
        ((int32_t *)out)[idx] = (int32_t)(y < INT32_MIN ? INT32_MIN : (y > INT32_MAX ? INT32_MAX : y));
    } else {
        ((int8_t *)out)[idx] = (int8_t)(y < INT8_MIN ? INT8_MIN : (y > INT8_MAX ? INT8_MAX : y));
    }
}

/* One output, 8-bit weights: kernel rows [kh_lo, kh_hi), columns [kw_lo, kw_hi). `x` points at the
 * group's first input channel, `w` at the output channel's weights; (ih0, iw0) is the input position
 * of tap (0, 0), which may lie in the padding. Offsets are formed before they touch a pointer, so no
 * pointer ever leaves its array. */
static int64_t nk_conv_dot8(const nk_conv_params *p, const int8_t *x, const int8_t *w, int32_t cg,
                            int32_t ih0, int32_t kh_lo, int32_t kh_hi, int32_t iw0, int32_t kw_lo, int32_t kw_hi)
{
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w, k_hw = (ptrdiff_t)p->k_h * p->k_w;
    const ptrdiff_t row_step = (ptrdiff_t)p->dil_h * p->in_w, dil_w = p->dil_w;
    const ptrdiff_t x0 = ((ptrdiff_t)ih0 + (ptrdiff_t)kh_lo * p->dil_h) * p->in_w + iw0 + (ptrdiff_t)kw_lo * dil_w;
    const ptrdiff_t w0 = (ptrdiff_t)kh_lo * p->k_w + kw_lo;
    const int32_t n_kw = kw_hi - kw_lo, n_kh = kh_hi - kh_lo;
    int64_t acc = 0;
    int32_t c, kh, k;

    if (n_kw <= 0 || n_kh <= 0) {
        return 0; /* every tap in the padding (and x0 need not point into the input) */
    }
    for (c = 0; c < cg; c++) {
        for (kh = 0; kh < n_kh; kh++) {
            const int8_t *xp = x + (x0 + c * in_hw + kh * row_step);
            const int8_t *wp = w + (w0 + c * k_hw + (ptrdiff_t)kh * p->k_w);
            for (k = 0; k < n_kw; k++) {
                acc += (int32_t)xp[k * dil_w] * wp[k];
            }
        }
    }
    return acc;
}

/* NK_CONV_TILE adjacent outputs, 8-bit weights, stride_w == 1. iw0 is the input column of the first
 * output's tap 0. When the tile's input window [iw0, iw0 + NK_CONV_TILE + (k_w - 1) * dil_w) crosses a
 * border, each input row's window is first copied into a zero-padded local buffer (the caller checks
 * that it fits NK_CONV_WIN), so every tap runs the same constant-trip-count loop and padding is never
 * tested per MAC. Other arguments as for nk_conv_dot8. */
static void nk_conv_tile8(const nk_conv_params *p, const int8_t *x, const int8_t *w, int32_t cg,
                          int32_t ih0, int32_t kh_lo, int32_t kh_hi, int32_t iw0, int64_t acc[NK_CONV_TILE])
{
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w, k_hw = (ptrdiff_t)p->k_h * p->k_w;
    const ptrdiff_t row_step = (ptrdiff_t)p->dil_h * p->in_w, dil_w = p->dil_w;
    const ptrdiff_t x0 = ((ptrdiff_t)ih0 + (ptrdiff_t)kh_lo * p->dil_h) * p->in_w + iw0;
    const ptrdiff_t w0 = (ptrdiff_t)kh_lo * p->k_w;
    const ptrdiff_t span = NK_CONV_TILE + (ptrdiff_t)(p->k_w - 1) * dil_w; /* window width */
    const int32_t k_w = p->k_w, n_kh = kh_hi - kh_lo;
    const int32_t chunk = (int32_t)(NK_CONV_PART_TERMS / k_hw); /* >= 1: the caller checked k_hw */
    /* window columns [a, b) lie inside the input; the others are padding */
    const ptrdiff_t a = iw0 < 0 ? -(ptrdiff_t)iw0 : 0;
    const ptrdiff_t b = (ptrdiff_t)p->in_w - iw0 < span ? (ptrdiff_t)p->in_w - iw0 : span;
    const int padded = a > 0 || b < span;
    int8_t win[NK_CONV_WIN];
    int32_t c0, c, kh, kw, j;

    for (j = 0; j < NK_CONV_TILE; j++) {
        acc[j] = 0;
    }
    if (n_kh <= 0) {
        return;
    }
    if (padded) {
        memset(win, 0, sizeof win); /* the padding columns stay zero; each row overwrites [a, b) */
    }
    for (c0 = 0; c0 < cg; c0 += chunk) {
        int32_t part[NK_CONV_TILE] = {0};
        const int32_t c1 = cg - c0 < chunk ? cg : c0 + chunk;
        for (c = c0; c < c1; c++) {
            for (kh = 0; kh < n_kh; kh++) {
                const ptrdiff_t xr = x0 + c * in_hw + kh * row_step; /* offset of window column 0 */
                const int8_t *wr = w + (w0 + c * k_hw + (ptrdiff_t)kh * k_w);
                const int8_t *row = win;
                if (!padded) {
                    row = x + xr;
                } else if (b > a) {
                    memcpy(win + a, x + (xr + a), (size_t)(b - a));
                }
                for (kw = 0; kw < k_w; kw++) {
                    const int8_t *xp = row + kw * dil_w;
                    const int16_t wv = wr[kw];
                    for (j = 0; j < NK_CONV_TILE; j++) {
                        part[j] += (int16_t)(wv * xp[j]); /* |x * w| <= 2^14: exact in int16 */
                    }
                }
            }
        }
        for (j = 0; j < NK_CONV_TILE; j++) {
            acc[j] += part[j];
        }
    }
}

/* One output, any weight width, through nk_weight. `w0` is the index of the output channel's first weight. */
static int64_t nk_conv_dot(const nk_conv_params *p, const int8_t *x, const void *weights, int32_t w0, int32_t cg,
                           int32_t ih0, int32_t kh_lo, int32_t kh_hi, int32_t iw0, int32_t kw_lo, int32_t kw_hi)
{
    int64_t acc = 0;
    int32_t c, kh, kw;

    if (kw_hi <= kw_lo || kh_hi <= kh_lo) {
        return 0;
    }
    for (c = 0; c < cg; c++) {
        for (kh = kh_lo; kh < kh_hi; kh++) {
            const int8_t *xp = x + (((ptrdiff_t)c * p->in_h + ih0 + (ptrdiff_t)kh * p->dil_h) * p->in_w + iw0
                                    + (ptrdiff_t)kw_lo * p->dil_w);
            const int32_t wi = w0 + (c * p->k_h + kh) * p->k_w + kw_lo;
            for (kw = 0; kw < kw_hi - kw_lo; kw++) {
                acc += (int64_t)xp[(ptrdiff_t)kw * p->dil_w] * nk_weight(weights, wi + kw, p->w_bits);
            }
        }
    }
    return acc;
}

void nk_conv(const nk_conv_params *p, const int8_t *in, const void *weights, const int32_t *bias, void *out)
{
    const int32_t cg = p->in_c / p->groups;  /* input channels per group */
    const int32_t og = p->out_c / p->groups; /* output channels per group */
    const int32_t k_w = p->k_w, s_w = p->stride_w, out_w = p->out_w;
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w;
    const int32_t w_per_out = cg * p->k_h * k_w;
    const int fast = p->w_bits == 8 && (int64_t)p->k_h * k_w <= NK_CONV_PART_TERMS;
    /* bias * 2^bias_shift, exact (saturating at the int64 bounds): the shift is clamped only so that
     * negating it cannot overflow */
    const int32_t bias_shift = p->bias_shift < -64 ? -64 : (p->bias_shift > 64 ? 64 : p->bias_shift);
    /* interior columns [ow_in, ow_end): every kernel column inside the input */
    int32_t ow_in = (p->pad_w + s_w - 1) / s_w, ow_end;
    /* tiles need stride 1 and a row of at least NK_CONV_TILE outputs */
    const int tiles = fast && s_w == 1 && out_w >= NK_CONV_TILE;
    const int span_fits = NK_CONV_TILE + (int64_t)(k_w - 1) * p->dil_w <= NK_CONV_WIN;
    int32_t o, oh, ow;
    {
        const int64_t last = (int64_t)p->in_w - 1 - (int64_t)(k_w - 1) * p->dil_w + p->pad_w;
        ow_end = last < 0 ? 0 : (int32_t)(last / s_w + 1 < out_w ? last / s_w + 1 : out_w);
        if (ow_in > ow_end) {
            ow_in = ow_end;
        }
    }

    for (o = 0; o < p->out_c; o++) {
        const int8_t *xg = in + (ptrdiff_t)(o / og) * cg * in_hw;
        const int64_t bias_term = bias ? nk_round_shift(bias[o], -bias_shift, p->rounding) : 0;
        const int8_t *wo = fast ? (const int8_t *)weights + (ptrdiff_t)o * w_per_out : (const int8_t *)weights;
        size_t idx = (size_t)o * (size_t)p->out_h * (size_t)out_w;

        for (oh = 0; oh < p->out_h; oh++) {
            const int32_t ih0 = oh * p->stride_h - p->pad_h;
            int32_t kh_lo, kh_hi;
            nk_conv_taps(ih0, p->dil_h, p->k_h, p->in_h, &kh_lo, &kh_hi);
            ow = 0;
            if (tiles) {
                /* tiles at 0, NK_CONV_TILE, ...; the last one ends at out_w and stores only its new outputs.
                 * A border tile whose window does not fit NK_CONV_WIN falls back to single outputs. */
                while (ow < out_w) {
                    const int32_t t = out_w - ow < NK_CONV_TILE ? out_w - NK_CONV_TILE : ow;
                    const int32_t iw0 = t - p->pad_w;
                    if (span_fits || (t >= ow_in && t + NK_CONV_TILE <= ow_end)) {
                        int64_t acc[NK_CONV_TILE];
                        int32_t j;
                        nk_conv_tile8(p, xg, wo, cg, ih0, kh_lo, kh_hi, iw0, acc);
                        for (j = ow - t; j < NK_CONV_TILE; j++) {
                            nk_conv_store(p, out, idx++, acc[j], bias_term);
                        }
                    } else {
                        int32_t j;
                        for (j = ow - t; j < NK_CONV_TILE; j++) {
                            int32_t kw_lo, kw_hi;
                            nk_conv_taps(iw0 + j, p->dil_w, k_w, p->in_w, &kw_lo, &kw_hi);
                            nk_conv_store(p, out, idx++,
                                          nk_conv_dot8(p, xg, wo, cg, ih0, kh_lo, kh_hi, iw0 + j, kw_lo, kw_hi),
                                          bias_term);
                        }
                    }
                    ow = t + NK_CONV_TILE;
                }
                continue;
            }
            for (; ow < out_w; ow++) {
                const int32_t iw0 = ow * s_w - p->pad_w;
                int32_t kw_lo = 0, kw_hi = k_w;
                if (ow < ow_in || ow >= ow_end) {
                    nk_conv_taps(iw0, p->dil_w, k_w, p->in_w, &kw_lo, &kw_hi);
                }
                if (fast) {
                    nk_conv_store(p, out, idx++,
                                  nk_conv_dot8(p, xg, wo, cg, ih0, kh_lo, kh_hi, iw0, kw_lo, kw_hi), bias_term);
                } else {
                    nk_conv_store(p, out, idx++,
                                  nk_conv_dot(p, xg, weights, o * w_per_out, cg, ih0, kh_lo, kh_hi, iw0, kw_lo, kw_hi),
                                  bias_term);
                }
            }
        }
    }
}

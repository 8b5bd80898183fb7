/* npukit kernel library: conv 1-d/2-d, grouped and depthwise, zero padding (docs/arithmetic.md,
 * "Conv and linear: the MAC pipeline"; npukit/ops/mac.py is the reference).
 *
 * Per output:  acc = sum(x * w) + bias * 2^bias_shift            (exact, int64)
 *              acc = saturate(acc, acc_min, acc_max)               (once, after the bias)
 *              y   = saturate(round_shift(acc, out_shift), act_min, act_max)
 *
 * Requantisation: everything after the sum of products is nk_requant_bias and nk_requant
 * (npukit_kernels.h), the one C definition of the scheme's requantisation, reading p->rq. Every path
 * ends in nk_conv_store, which calls them, or in one of two specialisations derived from the same
 * p->rq that are equal to it for every sum (each proves it where it is defined, and
 * tests/test_c_kernels.py holds them bit-exact, with and without SIMD): nk_conv_rq, the per-channel
 * precomputed form (shift 1..60, ranges below 2^60; anything else goes to nk_conv_store), and
 * nk_conv_sse2_requant and nk_conv_rq32_apply, that form in int32 where every step is exact in int32
 * (and nk_dsp1d_rq, the DSP 1-d block's cut of it for half_up / floor without an accumulator clamp).
 *
 * Padding is never tested per MAC: for each output row the valid kernel rows are computed once, and
 * the valid kernel columns once per output (or per tile). Paths (-DNK_NO_SIMD keeps only the plain C99
 * ones):
 *  - with the DSP extension, 8-bit 1-d convs with stride 1, dilation 1, groups 1 whose weights the
 *    generator pre-arranged (w_bits NK_W8_DSP1D; generated code calls nk_conv_1d): nk_conv_dsp1d (below)
 *    reads each strip of input once as an int16 stream and computes 4 output channels x 2 positions per
 *    pass with SMLAD on int16 weight pairs, requantising in the block where it can.
 *  - with the DSP extension (__ARM_FEATURE_DSP: Cortex-M4, M7, M33, M55), 8-bit weights, any geometry:
 *    nk_conv_dsp (below) builds each pair of output positions' input column once as int16 pairs and
 *    computes 2 output channels x 2 positions per pass with SMLAD (two products per instruction), the
 *    int8 weights read in place four at a time; int32 sums, requantised in int32 where that is exact.
 *    These builds leave out the tile path below, which it replaces.
 *  - with SSE2 (x86-64 baseline), 8-bit weights, stride_w == 1:
 *    nk_conv_sse2 (below) pairs input channels per pmaddwd and computes 4 output channels x 8 outputs
 *    per inner step (16 with __AVX2__, 4 at a row's end) from zero-padded int16 buffers, with its own
 *    int32 bound; the requantisation in int32 lanes where that is exact (nk_conv_sse2_requant). Shapes
 *    whose buffers would not fit take the paths below.
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

#if defined(__SSE2__) && !defined(NK_NO_SIMD)
#define NK_CONV_SSE2 1
#include <emmintrin.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#endif
#if defined(NK_DSP)
#include <arm_acle.h>
#endif

#define NK_CONV_TILE 16
#if defined(NK_DSP)
#define NK_CONV_TILES 0
#else
#define NK_CONV_TILES 1
#endif
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

/* The generic MAC tail: the bias term joins the sum (saturating at the int64 bounds), nk_requant
 * (npukit_kernels.h) requantises, and the result is stored as int8 or int32, clamped to that type. */
static void nk_conv_store(const nk_conv_params *p, int32_t ch, void *out, size_t idx, int64_t sum,
                          int64_t bias_term)
{
    const int64_t y = nk_requant(&p->rq, ch, nk_sat_add64(sum, bias_term));
    if (p->out_bytes == 4) {
        ((int32_t *)out)[idx] = (int32_t)(y < INT32_MIN ? INT32_MIN : (y > INT32_MAX ? INT32_MAX : y));
    } else {
        ((int8_t *)out)[idx] = (int8_t)(y < INT8_MIN ? INT8_MIN : (y > INT8_MAX ? INT8_MAX : y));
    }
}

/* A specialisation of nk_conv_store, i.e. of nk_requant, for one output channel: the per-channel work
 * (bias term, rounding mode, offsets) is done once, from the same nk_requant_params, and each output
 * costs a few adds, compares and one shift. It is identical to nk_conv_store for every sum, as follows;
 * tests/test_c_kernels.py holds it bit-exact against the reference on every path (SIMD and not).
 *
 * Fast path (1 <= out_shift <= 60, |acc_min|, |acc_max|, |bias_term| < 2^60, and |sum| < 2^62, which
 * fan_in < 2^40 guarantees): sum + bias_term cannot overflow, so it equals nk_sat_add64's result, and
 * |acc| < 2^60 after saturation. With off = 2^62, floor(v / 2^s) = ((v + off) >> s) - 2^(62-s) for any
 * |v| < 2^61 (v + off lies in (0, 2^63), and 2^s divides off), and each mode of nk_round_shift is
 * floor((acc + add) / 2^s) with
 *   floor: add = 0;  half_up: add = 2^(s-1);  trunc: add = 2^s - 1 for acc < 0, else 0;
 *   half_even: add = 2^(s-1) - 1 + (floor(acc / 2^s) & 1)
 * (half_even: with acc = q 2^s + r, r + 2^(s-1) - 1 + b reaches 2^s iff r > 2^(s-1), or r == 2^(s-1)
 * and b = q & 1 = 1). 0 <= add < 2^s <= 2^60, so |acc + add| < 2^61. Otherwise: nk_conv_store. */
typedef struct {
    const nk_conv_params *p;
    int64_t bias_term, off, offs, add_pos, add_neg;
    int32_t ch, shift, even, fast;
} nk_conv_rq;

static void nk_conv_rq_init(nk_conv_rq *r, const nk_conv_params *p, int32_t ch, const int32_t *bias)
{
    const nk_requant_params *rq = &p->rq;
    const int64_t lim = (int64_t)1 << 60;
    const int32_t s = rq->out_shift;
    const int64_t bias_term = bias ? nk_requant_bias(rq, ch, bias[ch]) : 0;
    r->p = p;
    r->ch = ch;
    r->bias_term = bias_term;
    r->shift = s;
    /* (an Abs activation takes the generic nk_requant: the specialisations below have no Abs) */
    r->fast = !rq->abs && s >= 1 && s <= 60 && rq->acc_min > -lim && rq->acc_max < lim && bias_term > -lim
              && bias_term < lim;
    r->even = 0;
    r->off = 0;
    r->offs = 0;
    r->add_pos = 0;
    r->add_neg = 0;
    if (r->fast) {
        const int64_t half = (int64_t)1 << (s - 1);
        r->off = (int64_t)1 << 62;
        r->offs = (int64_t)1 << (62 - s);
        switch (rq->rounding) {
        case NK_FLOOR:
            break;
        case NK_TRUNC:
            r->add_neg = ((int64_t)1 << s) - 1;
            break;
        case NK_HALF_EVEN:
            r->add_pos = half - 1;
            r->add_neg = half - 1;
            r->even = 1;
            break;
        case NK_HALF_UP:
        default: /* as nk_round_shift: any other value behaves as NK_HALF_UP */
            r->add_pos = half;
            r->add_neg = half;
            break;
        }
    }
}

static void nk_conv_rq_store(const nk_conv_rq *r, void *out, size_t idx, int64_t sum)
{
    const nk_conv_params *p = r->p;
    const nk_requant_params *rq = &p->rq;
    int64_t acc, y;
    if (!r->fast) {
        nk_conv_store(p, r->ch, out, idx, sum, r->bias_term);
        return;
    }
    acc = sum + r->bias_term;
    acc = acc < rq->acc_min ? rq->acc_min : acc;
    acc = acc > rq->acc_max ? rq->acc_max : acc;
    y = acc + (acc < 0 ? r->add_neg : r->add_pos) + r->off;
    if (r->even) {
        y += ((acc + r->off) >> r->shift) & 1;
    }
    y = (y >> r->shift) - r->offs;
    y = y < rq->act_min ? rq->act_min : y;
    y = y > rq->act_max ? rq->act_max : y;
    if (p->out_bytes == 4) {
        ((int32_t *)out)[idx] = (int32_t)y; /* act_min <= y <= act_max, both int32 */
    } else {
        ((int8_t *)out)[idx] = (int8_t)(y < INT8_MIN ? INT8_MIN : (y > INT8_MAX ? INT8_MAX : y));
    }
}

/* nk_conv_rq_store of n adjacent outputs from idx on, their sums in s32 (or s64 where s32 is NULL); the
 * common case (fast, int8 output, act range inside int8, not half_even) is the same steps in a tight loop. */
static void nk_conv_rq_row(const nk_conv_rq *r, void *out, size_t idx, const int32_t *s32, const int64_t *s64,
                           int32_t n)
{
    const nk_requant_params *rq = &r->p->rq;
    const int64_t bias_term = r->bias_term, acc_min = rq->acc_min, acc_max = rq->acc_max;
    const int64_t off = r->off, offs = r->offs, add_pos = r->add_pos, add_neg = r->add_neg;
    const int64_t act_min = rq->act_min, act_max = rq->act_max;
    const int32_t s = r->shift;
    int32_t j;
    if (!r->fast || r->even || r->p->out_bytes != 1 || act_min < INT8_MIN || act_max > INT8_MAX) {
        for (j = 0; j < n; j++) {
            nk_conv_rq_store(r, out, idx + (size_t)j, s32 ? s32[j] : s64[j]);
        }
        return;
    }
    for (j = 0; j < n; j++) {
        int64_t acc = (s32 ? s32[j] : s64[j]) + bias_term, y;
        acc = acc < acc_min ? acc_min : acc;
        acc = acc > acc_max ? acc_max : acc;
        y = ((acc + (acc < 0 ? add_neg : add_pos) + off) >> s) - offs;
        y = y < act_min ? act_min : y;
        y = y > act_max ? act_max : y;
        ((int8_t *)out)[idx + (size_t)j] = (int8_t)y;
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

#if defined(NK_CONV_SSE2) || defined(NK_DSP)
/* Whether the int32 requantisations (nk_conv_rq32, nk_conv_sse2_requant) apply to a conv, from its
 * parameters: -1 (they do not), or the accumulator clamp they need, 0 (none) or 1 (in int32); see
 * nk_conv_sse2_requant. A channel also needs r->fast, |sum| <= 2^23 and |bias_term| < 2^29. */
static int nk_conv_rq32_mode(const nk_conv_params *p)
{
    const nk_requant_params *rq = &p->rq;
    const int64_t l30 = (int64_t)1 << 30;
    if (p->out_bytes != 1 || rq->abs || rq->out_shift < 1 || rq->out_shift > 30 || rq->act_min < INT8_MIN
        || rq->act_max > INT8_MAX) {
        return -1;
    }
    if (rq->acc_min <= -l30 && rq->acc_max >= l30) {
        return 0;
    }
    return rq->acc_min >= -l30 && rq->acc_min <= rq->acc_max && rq->acc_max <= l30 ? 1 : -1;
}

/* Whether a channel's requantisation may run in int32 (nk_conv_rq32): the conv's mode (above) and the
 * channel's r->fast and |bias_term| < 2^29. */
static int nk_conv_rq32_ok(const nk_conv_rq *r, int mode)
{
    return mode >= 0 && r->fast && r->bias_term > -((int64_t)1 << 29) && r->bias_term < ((int64_t)1 << 29);
}
#endif

#if defined(NK_DSP)
/* nk_conv_rq_store in int32 for int8 outputs from |sum| <= 2^23, where nk_conv_rq32_ok holds for every
 * channel: the values of any channel's nk_conv_rq as int32 (nk_conv_rq_init takes shift, rounding adds
 * and ranges from p->rq alone, the same for every channel of a layer; only the bias term is per channel,
 * and the caller passes it). The steps are those of nk_conv_sse2_requant, whose comment proves each
 * exact in int32, with the floor shift of a possibly negative v = acc + add in [-2^30, 2^31) taken on
 * u = v + 2^31 in uint32 (no >> of a negative value): floor(v / 2^s) = (u >> s) - 2^(31-s), 2^s dividing
 * 2^31; the half_even parity of floor(acc / 2^s) is that of ((acc + 2^31) >> s), 2^(31-s) being even
 * (s <= 30). */
typedef struct {
    int32_t shift, add_pos, add_neg, even, clamp, acc_min, acc_max, act_min, act_max;
} nk_conv_rq32;

static void nk_conv_rq32_init(nk_conv_rq32 *q, const nk_conv_rq *r, int clamp)
{
    const nk_requant_params *rq = &r->p->rq;
    q->shift = r->shift;
    q->add_pos = (int32_t)r->add_pos;
    q->add_neg = (int32_t)r->add_neg;
    q->even = r->even;
    q->clamp = clamp;
    q->acc_min = clamp ? (int32_t)rq->acc_min : 0; /* clamp: both within [-2^30, 2^30] */
    q->acc_max = clamp ? (int32_t)rq->acc_max : 0;
    q->act_min = rq->act_min;
    q->act_max = rq->act_max;
}

/* Whether nk_conv_rq32 applies to every channel (nk_conv_rq32_ok for each: the channels' nk_conv_rq differ
 * only by the bias term, which the check bounds by 2^29), then with its values in *q. */
static int nk_conv_rq32_all(const nk_conv_params *p, const int32_t *bias, int mode, nk_conv_rq32 *q)
{
    nk_conv_rq r;
    int32_t o;
    if (mode < 0 || p->out_c < 1) {
        return 0;
    }
    nk_conv_rq_init(&r, p, 0, bias);
    if (!nk_conv_rq32_ok(&r, mode)) {
        return 0;
    }
    for (o = 1; o < p->out_c && bias; o++) {
        const int64_t bt = nk_requant_bias(&p->rq, o, bias[o]);
        if (bt <= -((int64_t)1 << 29) || bt >= ((int64_t)1 << 29)) {
            return 0;
        }
    }
    nk_conv_rq32_init(q, &r, mode);
    return 1;
}

#if defined(__GNUC__)
#define NK_NOINLINE __attribute__((noinline)) /* its own function: a fresh register set */
#else
#define NK_NOINLINE
#endif

#if defined(__GNUC__)
#define NK_INLINE __inline__ __attribute__((always_inline)) /* a few instructions per output: no call */
#else
#define NK_INLINE
#endif

static NK_INLINE int8_t nk_conv_rq32_apply(const nk_conv_rq32 *q, int32_t bias_term, int32_t sum)
{
    const int32_t s = q->shift;
    int32_t acc = sum + bias_term, add, y;
    if (q->clamp) {
        acc = acc < q->acc_min ? q->acc_min : acc;
        acc = acc > q->acc_max ? q->acc_max : acc;
    }
    add = acc < 0 ? q->add_neg : q->add_pos;
    if (q->even) {
        add += (int32_t)((((uint32_t)acc + 0x80000000u) >> s) & 1u);
    }
    y = (int32_t)((((uint32_t)(acc + add)) + 0x80000000u) >> s) - (int32_t)(0x80000000u >> s);
    y = y < q->act_min ? q->act_min : y;
    y = y > q->act_max ? q->act_max : y;
    return (int8_t)y;
}

/* Cortex-M DSP path (SMLAD: two 16x16 products added into an int32 accumulator per instruction), 8-bit
 * weights, any geometry. For each pair of output positions the input column (im2col, zero padding
 * applied once) is built as int16 pairs; then each pair of output channels runs nk_conv_dsp_block,
 * 2 channels x 2 positions per pass, reading the int8 weights in place (model.bin's layout, so the C
 * runtime shares the path) four at a time: SXTB16 splits a word (w0, w1, w2, w3) into the pairs
 * (w0, w2) and (w1, w3), so the column holds each quad of taps in that order, (x0, x2), (x1, x3).
 * A conv with more than NK_CONV_DSP_K taps per output (K = cg * k_h * k_w) takes columns of whole
 * kernel rows, at most NK_CONV_DSP_K taps each, rebuilt for every channel pair, their sums added in
 * int64.
 *
 * int32 sums are exact: |x * w| <= 2^14 and a column has at most NK_CONV_DSP_K taps (2^8 unless set),
 * so |sum| <= 2^22 (< 2^31 for any allowed value, <= 2^16); the int64 sum of columns is exact for
 * K < 2^31 (checked). */
#ifndef NK_CONV_DSP_K
#define NK_CONV_DSP_K 256 /* taps per column; 1.25 KiB of stack */
#endif
#if NK_CONV_DSP_K % 4 != 0 || NK_CONV_DSP_K < 4 || NK_CONV_DSP_K > 65536
#error "NK_CONV_DSP_K: a multiple of 4 in [4, 65536]"
#endif

/* The inner loop of nk_conv_dsp_block in Thumb-2 assembly where gcc optimises: 18 instructions per 16
 * MACs. gcc -Os spills the C loop (26 instructions); the C loop below is the same arithmetic, for other
 * compilers and -O0 (the asm needs 14 registers, one more than a frame pointer leaves). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__) && defined(__thumb2__) \
    && NK_CONV_DSP_K * 2 <= 1020
#define NK_CONV_DSP_ASM 1
#else
#define NK_CONV_DSP_ASM 0
#endif

/* sxtb16 of v rotated right by 8: the sign-extended bytes 1 and 3 of v */
static int32_t nk_sxtb16_ror8(uint32_t v)
{
#if defined(__GNUC__)
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v)); /* gcc 12's ACLE has no __ror to fold */
    return r;
#else
    return __sxtb16((int8x4_t)((v >> 8) | (v << 24)));
#endif
}

#if !NK_CONV_DSP_ASM
/* Four int8 taps as one word (any alignment; compilers emit one load). */
static uint32_t nk_load4(const int8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}
#endif

#if defined(__GNUC__) && !defined(__clang__)
/* gcc turns the short copy and zero loops of nk_conv_dsp_col into memcpy / memset calls, which cost more
 * than the few bytes they move */
#define NK_NO_MEMCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define NK_NO_MEMCALLS
#endif

/* The column of output position (oh, ow), kernel rows r = c * k_h + kh in [r0, r1): taps
 * (r - r0) * k_w + kw as int16 pairs, quad by quad in SXTB16 order, zero up to the next multiple of 4.
 * `edge`: some kernel column of this position lies in the padding (each tap is then checked); kernel
 * rows are always checked, except in the 1-d case, whose only row is inside. */
static NK_NOINLINE NK_NO_MEMCALLS void nk_conv_dsp_col(const nk_conv_params *p, const int8_t *x, int32_t r0,
                                                       int32_t r1, int32_t oh, int32_t ow, int edge, uint32_t *col)
{
    uint32_t c32[NK_CONV_DSP_K / 4]; /* the taps as bytes, read back as words (no memcpy call at -Os) */
    int8_t *const c8 = (int8_t *)c32;
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w;
    const int32_t ih0 = oh * p->stride_h - p->pad_h, iw0 = ow * p->stride_w - p->pad_w;
    const int32_t k_w = p->k_w, dil_w = p->dil_w, k = (r1 - r0) * k_w;
    int8_t *d = c8;
    int32_t r, kw, q, c = r0 / p->k_h, kh = r0 % p->k_h;
    if (!edge && dil_w == 1 && p->k_h == 1 && p->in_h == 1 && ih0 == 0) { /* 1-d, inside: rows = channels */
        for (r = r0; r < r1; r++) {
            const int8_t *s = x + ((ptrdiff_t)r * in_hw + iw0);
            const int8_t *const e = d + k_w; /* k_w >= 1 (validated shapes) */
            do {
                *d++ = *s++;
            } while (d != e);
        }
        r1 = r0; /* done: skip the general loop */
    }
    for (r = r0; r < r1; r++, kh = kh + 1 < p->k_h ? kh + 1 : (c++, 0)) {
        {
            const int32_t ih = ih0 + kh * p->dil_h;
            if (ih < 0 || ih >= p->in_h) {
                for (kw = 0; kw < k_w; kw++) {
                    *d++ = 0;
                }
            } else if (!edge) {
                const int8_t *s = x + ((ptrdiff_t)c * in_hw + (ptrdiff_t)ih * p->in_w + iw0);
                int32_t t = 0;
                if (dil_w == 1) { /* the common case, its own loop: no multiply per tap */
                    for (; t < k_w; t++) {
                        d[t] = s[t];
                    }
                } else {
                    for (; t < k_w; t++) {
                        d[t] = s[(ptrdiff_t)t * dil_w];
                    }
                }
                d += k_w;
            } else {
                const int8_t *row = x + ((ptrdiff_t)c * in_hw + (ptrdiff_t)ih * p->in_w);
                for (kw = 0; kw < k_w; kw++) {
                    const int32_t iw = iw0 + kw * dil_w;
                    *d++ = iw >= 0 && iw < p->in_w ? row[iw] : 0;
                }
            }
        }
    }
    for (q = k; q % 4; q++) {
        *d++ = 0;
    }
    if (k > 0) {
        const uint32_t *src = c32, *const end = c32 + (k + 3) / 4;
        do {
            const uint32_t v = *src++;
            col[0] = (uint32_t)__sxtb16((int8x4_t)v);
            col[1] = (uint32_t)nk_sxtb16_ror8(v);
            col += 2;
        } while (src != end);
    }
}

/* The first n < 4 weights at w zero-extended to a word (bytes in memory order). */
static uint32_t nk_conv_dsp_tail(const int8_t *w, int32_t n)
{
    uint32_t v = 0;
    int32_t i;
    for (i = 0; i < n; i++) {
        v |= (uint32_t)(uint8_t)w[i] << (8 * i);
    }
    return v;
}

/* One quad of taps: words va, vb of the two channels' weights; column words x[0..1] (position 0) and
 * x[NK_CONV_DSP_K / 2 + 0..1] (position 1). The order keeps 14 values live at most (4 sums, 4 weight
 * pairs, 2 column words, 4 pointers), so nothing spills on a Cortex-M. */
#define NK_CONV_DSP_QUAD(va, vb)                                                                              \
    do {                                                                                                      \
        const int32_t la = __sxtb16((int8x4_t)va), ha = nk_sxtb16_ror8(va);                                   \
        const int32_t lb = __sxtb16((int8x4_t)vb), hb = nk_sxtb16_ror8(vb);                                   \
        int32_t u = (int32_t)x[0], v = (int32_t)x[1];                                                         \
        a00 = __smlad(la, u, __smlad(ha, v, a00));                                                            \
        a10 = __smlad(lb, u, __smlad(hb, v, a10));                                                            \
        u = (int32_t)x[NK_CONV_DSP_K / 2];                                                                    \
        v = (int32_t)x[NK_CONV_DSP_K / 2 + 1];                                                                \
        a01 = __smlad(la, u, __smlad(ha, v, a01));                                                            \
        a11 = __smlad(lb, u, __smlad(hb, v, a11));                                                            \
        x += 2;                                                                                               \
    } while (0)

/* Sums of 2 output channels (weights wa, wb, in place) x 2 positions (columns x and x + NK_CONV_DSP_K / 2):
 * s[2 * ch + pos]. k taps: k / 4 whole quads from the weights, then, if k % 4, a last quad: read whole
 * where `whole` (the caller checked that its 4 bytes lie inside the weight array: those past the
 * channel's k weights meet zeros of the column), else the last k % 4 weights zero-extended. */
static NK_NOINLINE void nk_conv_dsp_block(const int8_t *wa, const int8_t *wb, const uint32_t *x, int32_t k,
                                          int whole, int32_t s[4])
{
    const uint32_t *end = x + (whole ? (k + 3) / 4 : k / 4) * 2;
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
#if NK_CONV_DSP_ASM
    if (x != end) {
        uint32_t va, vb, la, lb, u, v;
        __asm__ volatile("1:\n\t"
                         "ldr %[va], [%[wa]], #4\n\t"
                         "ldr %[vb], [%[wb]], #4\n\t"
                         "sxtb16 %[la], %[va]\n\t"
                         "sxtb16 %[va], %[va], ror #8\n\t"
                         "sxtb16 %[lb], %[vb]\n\t"
                         "sxtb16 %[vb], %[vb], ror #8\n\t"
                         "ldrd %[u], %[v], [%[x], #%c[off]]\n\t" /* position 1 */
                         "smlad %[a01], %[la], %[u], %[a01]\n\t"
                         "smlad %[a01], %[va], %[v], %[a01]\n\t"
                         "smlad %[a11], %[lb], %[u], %[a11]\n\t"
                         "smlad %[a11], %[vb], %[v], %[a11]\n\t"
                         "ldrd %[u], %[v], [%[x]], #8\n\t" /* position 0 */
                         "smlad %[a00], %[la], %[u], %[a00]\n\t"
                         "smlad %[a00], %[va], %[v], %[a00]\n\t"
                         "smlad %[a10], %[lb], %[u], %[a10]\n\t"
                         "smlad %[a10], %[vb], %[v], %[a10]\n\t"
                         "cmp %[x], %[end]\n\t"
                         "bne 1b"
                         : [wa] "+r"(wa), [wb] "+r"(wb), [x] "+r"(x), [a00] "+r"(a00), [a01] "+r"(a01),
                           [a10] "+r"(a10), [a11] "+r"(a11), [va] "=&r"(va), [vb] "=&r"(vb), [la] "=&r"(la),
                           [lb] "=&r"(lb), [u] "=&r"(u), [v] "=&r"(v)
                         : [end] "r"(end), [off] "i"(NK_CONV_DSP_K * 2)
                         : "cc", "memory");
    }
#else
    while (x != end) {
        const uint32_t va = nk_load4(wa), vb = nk_load4(wb);
        NK_CONV_DSP_QUAD(va, vb);
        wa += 4;
        wb += 4;
    }
#endif
    if (k % 4 && !whole) {
        const uint32_t va = nk_conv_dsp_tail(wa, k % 4), vb = nk_conv_dsp_tail(wb, k % 4);
        NK_CONV_DSP_QUAD(va, vb);
    }
    s[0] = a00;
    s[1] = a01;
    s[2] = a10;
    s[3] = a11;
}

/* The whole conv on the DSP path; returns 0 (having written nothing) where it does not apply. */
static int nk_conv_dsp(const nk_conv_params *p, const int8_t *in, const int8_t *weights, const int32_t *bias,
                       void *out)
{
    const int32_t cg = p->in_c / p->groups, og = p->out_c / p->groups, out_w = p->out_w;
    const int32_t rows = cg * p->k_h, k = rows * p->k_w, n_pos = p->out_h * out_w, s_w = p->stride_w;
    const int32_t chunk = NK_CONV_DSP_K / (p->k_w > 0 ? p->k_w : 1); /* kernel rows per column */
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w;
    const int64_t w_size = (int64_t)p->out_c * k; /* bytes of the weight array */
    /* channels from ob on that a whole last quad read at channel ob's end needs, inside the array */
    const int32_t need = k > 0 ? ((k + 3) / 4 * 4 + k - 1) / k : 1;
    const int mode = nk_conv_rq32_mode(p);
    uint32_t col[2][NK_CONV_DSP_K / 2];
    nk_conv_rq32 q32 = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    int32_t g, pos, o, ow_in, ow_end, bscale;
    int all32;

    /* int32 sums of a column (<= 2^8 taps) are exact; a whole output's sum is int64 (taps < 2^40) */
    if (p->w_bits != 8 || p->k_w > NK_CONV_DSP_K || n_pos <= 0 || (int64_t)rows * p->k_w >= ((int64_t)1 << 31)) {
        return 0;
    }
    /* interior columns [ow_in, ow_end): every kernel column inside the input (int32: no 64-bit division) */
    {
        const int32_t last = p->in_w - 1 - (p->k_w - 1) * p->dil_w + p->pad_w;
        ow_in = (p->pad_w + s_w - 1) / s_w;
        ow_end = last < 0 ? 0 : (last / s_w + 1 < out_w ? last / s_w + 1 : out_w);
    }
    /* the int32 requantisation for every channel, or for none (checked once per call); it needs
     * |sum| <= 2^23: K <= 2^9 taps */
    all32 = k <= 512 && nk_conv_rq32_all(p, bias, mode, &q32);
    /* the bias term b * 2^bias_shift as an int32 product where nk_requant_bias is that product: exact, as
     * all32 bounds every channel's term below 2^29 (bscale 0: nk_requant_bias itself) */
    bscale = p->rq.bias_shift >= 0 && p->rq.bias_shift <= 29 ? (int32_t)1 << p->rq.bias_shift : 0;
    for (g = 0; g < p->groups; g++) {
        const int8_t *xg = in + (ptrdiff_t)g * cg * in_hw;
        for (pos = 0; pos < n_pos; pos += 2) {
            const int two = pos + 1 < n_pos; /* a second position */
            int32_t j, e[2], oh[2], ow[2];
            for (j = 0; j < 2; j++) { /* without a second position, column 1 repeats column 0 */
                const int32_t q = pos + (j & two);
                oh[j] = q / out_w;
                ow[j] = q % out_w;
                e[j] = ow[j] < ow_in || ow[j] >= ow_end;
                if (rows <= chunk) { /* one column for every channel pair */
                    nk_conv_dsp_col(p, xg, 0, rows, oh[j], ow[j], e[j], col[j]);
                }
            }
            for (o = g * og; o < (g + 1) * og; o += 2) {
                const int32_t ob = o + 1 < (g + 1) * og ? o + 1 : o; /* an odd last channel pairs with itself */
                const int8_t *wa = weights + (ptrdiff_t)o * k, *wb = weights + (ptrdiff_t)ob * k;
                int32_t sums[4], i; /* sums[i]: channel o + (i >> 1), position pos + (i & 1) */
                int64_t s64[4];
                if (rows <= chunk) {
                    nk_conv_dsp_block(wa, wb, col[0], k, p->out_c - ob >= need, sums);
                } else { /* more taps than a column holds: columns of `chunk` kernel rows, rebuilt per pair */
                    int32_t c0, c1;
                    for (i = 0; i < 4; i++) {
                        s64[i] = 0;
                    }
                    for (c0 = 0; c0 < rows; c0 = c1) {
                        const ptrdiff_t w0 = (ptrdiff_t)c0 * p->k_w;
                        c1 = rows - c0 > chunk ? c0 + chunk : rows;
                        for (j = 0; j < 2; j++) {
                            nk_conv_dsp_col(p, xg, c0, c1, oh[j], ow[j], e[j], col[j]);
                        }
                        nk_conv_dsp_block(wa + w0, wb + w0, col[0], (c1 - c0) * p->k_w,
                                          (int64_t)ob * k + w0 + ((c1 - c0) * p->k_w + 3) / 4 * 4 <= w_size, sums);
                        for (i = 0; i < 4; i++) {
                            s64[i] += sums[i];
                        }
                    }
                    for (i = 0; i < 4; i++) {
                        sums[i] = all32 ? (int32_t)s64[i] : 0; /* all32: K <= 2^9 taps, |sum| <= 2^23 */
                    }
                }
                if (all32) { /* |bias term| < 2^29 (nk_conv_rq32_ok): exact in int32 */
                    int8_t *y = (int8_t *)out + ((size_t)o * (size_t)n_pos + (size_t)pos);
                    int32_t bt = !bias ? 0 : bscale ? bias[o] * bscale : (int32_t)nk_requant_bias(&p->rq, o, bias[o]);
                    y[0] = nk_conv_rq32_apply(&q32, bt, sums[0]);
                    if (two) {
                        y[1] = nk_conv_rq32_apply(&q32, bt, sums[1]);
                    }
                    if (ob > o) {
                        bt = !bias ? 0 : bscale ? bias[ob] * bscale : (int32_t)nk_requant_bias(&p->rq, ob, bias[ob]);
                        y[n_pos] = nk_conv_rq32_apply(&q32, bt, sums[2]);
                        if (two) {
                            y[n_pos + 1] = nk_conv_rq32_apply(&q32, bt, sums[3]);
                        }
                    }
                    continue;
                }
                for (i = 0; i < 4; i++) {
                    const int32_t ch = o + (i >> 1);
                    nk_conv_rq r;
                    if (((i & 1) && !two) || ch > ob) {
                        continue;
                    }
                    nk_conv_rq_init(&r, p, ch, bias);
                    nk_conv_rq_store(&r, out, (size_t)ch * (size_t)n_pos + (size_t)(pos + (i & 1)),
                                     rows <= chunk ? (int64_t)sums[i] : s64[i]);
                }
            }
        }
    }
    return 1;
}

/* DSP path for 1-d convs with stride 1, dilation 1, groups 1, whose weights the generator pre-arranged
 * (w_bits NK_W8_DSP1D; dsp1d_weights in npukit/codegen/__init__.py writes the layout described here).
 * The window of output position p + 1 is the window of p shifted by one input column, so no column is
 * built per position. Read the input, from a strip's first window on, as one int16 stream X,
 * position-major (X[s] = input column iw0 + s / cin, channel s % cin, zero outside the input): position
 * p's taps are the K = cin * k_w values X[p * cin + t], t = kw * cin + c. The strip's buffer D holds the
 * stream's int16 pairs twice, interleaved: D[2i] = (X[2i], X[2i + 1]) and D[2i + 1] = (X[2i + cin],
 * X[2i + cin + 1]), so that one LDRD at D + p * cin (p even) + 2j reads tap pair j of positions p and
 * p + 1. The weights are, per block of 4 output channels (the last block padded with zero channels), for
 * each pair j of taps (2j, 2j + 1) (K padded with zeros to kp, a multiple of 4), one int32 word per
 * channel holding the int16 pair (w[2j], w[2j + 1]), then the words NK_DSP1D_END (0x4000 in both halves:
 * no pair of int8 values), which ends the block's loop, and 0. The block (nk_conv_dsp1d_block,
 * nk_conv_dsp1d_run) computes 4 channels x 2 positions with 8 SMLADs per tap pair, 3 LDRDs feeding them:
 * 24 instructions per 32 MACs.
 *
 * int32 sums are exact: |x * w| <= 2^14 and kp < NK_CONV_DSP1D_X taps (zeros included), so |sum| <= 2^23;
 * the requantisation is nk_dsp1d_rq's (in nk_conv_dsp1d_run's asm, below) or nk_conv_rq32_apply where
 * they apply, otherwise nk_conv_rq_store. */
#define NK_DSP1D_END 0x40004000u

/* One tap pair of the 4 x 2 block: 8 SMLADs, 3 LDRDs (the next pair's first weights last). */
#define NK_DSP1D_PAIR                                                                                         \
    "ldrd %[x0], %[x1], [%[x]], #8\n\t"                                                                       \
    "smlad %[a00], %[w0], %[x0], %[a00]\n\t"                                                                  \
    "smlad %[a01], %[w0], %[x1], %[a01]\n\t"                                                                  \
    "smlad %[a10], %[w1], %[x0], %[a10]\n\t"                                                                  \
    "smlad %[a11], %[w1], %[x1], %[a11]\n\t"                                                                  \
    "ldrd %[w0], %[w1], [%[w]], #8\n\t"                                                                       \
    "smlad %[a20], %[w0], %[x0], %[a20]\n\t"                                                                  \
    "smlad %[a21], %[w0], %[x1], %[a21]\n\t"                                                                  \
    "smlad %[a30], %[w1], %[x0], %[a30]\n\t"                                                                  \
    "smlad %[a31], %[w1], %[x1], %[a31]\n\t"                                                                  \
    "ldrd %[w0], %[w1], [%[w]], #8\n\t"

/* The sums s[2 * q + j] of 4 channels x 2 positions: channel q of the block at w, position j (D words
 * x[2i + j]), kp taps (a multiple of 4); the asm loop ends at the block's end word. */
static NK_NOINLINE void nk_conv_dsp1d_block(const uint32_t *w, const uint32_t *x, int32_t kp, int32_t s[8])
{
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0, a20 = 0, a21 = 0, a30 = 0, a31 = 0;
#if NK_CONV_DSP_ASM
    uint32_t x0, x1, w0, w1;
    (void)kp;
    __asm__ volatile("ldrd %[w0], %[w1], [%[w]], #8\n"
                     "1:\n\t" NK_DSP1D_PAIR NK_DSP1D_PAIR
                     "cmp %[w0], %[end]\n\t"
                     "bne 1b"
                     : [w] "+r"(w), [x] "+r"(x), [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11),
                       [a20] "+r"(a20), [a21] "+r"(a21), [a30] "+r"(a30), [a31] "+r"(a31), [x0] "=&r"(x0),
                       [x1] "=&r"(x1), [w0] "=&r"(w0), [w1] "=&r"(w1)
                     : [end] "i"(NK_DSP1D_END)
                     : "cc", "memory");
#else
    const uint32_t *const end = x + kp;
    for (; x != end; x += 2, w += 4) {
        const int32_t u = (int32_t)x[0], v = (int32_t)x[1];
        a00 = __smlad((int32_t)w[0], u, a00);
        a01 = __smlad((int32_t)w[0], v, a01);
        a10 = __smlad((int32_t)w[1], u, a10);
        a11 = __smlad((int32_t)w[1], v, a11);
        a20 = __smlad((int32_t)w[2], u, a20);
        a21 = __smlad((int32_t)w[2], v, a21);
        a30 = __smlad((int32_t)w[3], u, a30);
        a31 = __smlad((int32_t)w[3], v, a31);
    }
#endif
    s[0] = a00;
    s[1] = a01;
    s[2] = a10;
    s[3] = a11;
    s[4] = a20;
    s[5] = a21;
    s[6] = a30;
    s[7] = a31;
}

#if NK_CONV_DSP_ASM
/* The requantisation of whole blocks in asm builds (nk_conv_dsp1d_run), for a conv whose outputs it may
 * compute as y = sat(floor((sum + c[q]) / 2^shift)): int8 output, no accumulator clamp, c[q] = bias_term +
 * add with a rounding add independent of the sign (half_up, floor), and an act range of [-128, 127]
 * (sat 1: SSAT #8) or [0, 127] (sat 2: USAT #7); other builds and cases requantise the block's sums with
 * nk_conv_rq32_apply or nk_conv_rq_store. Exact in int32: |sum| <= 2^23, |bias_term| < 2^29 and
 * 0 <= add <= 2^29 (nk_conv_rq32_ok, shift <= 30), so every partial sum c[q] + (part of sum) is below 2^31
 * in magnitude; the sums start at c[q], and the floor division is an arithmetic shift (ASR). */
typedef struct {                /* (nk_conv_dsp1d_run reads the fields at these offsets) */
    const uint32_t *w, *x;      /*  0,  4: the block's weights; the pair's D words (advanced per pair) */
    int8_t *y;                  /*  8: the pair's first output (advanced per pair) */
    int32_t out_w, shift, np;   /* 12, 16, 20: np position pairs (counted down, >= 1) */
    int32_t xstep, sat;         /* 24, 28: bytes from a pair's D words to the next pair's */
    int32_t c[4];               /* 32 */
} nk_dsp1d_rq;
typedef char nk_dsp1d_rq_layout[offsetof(nk_dsp1d_rq, c) == 32 && sizeof(void *) == 4 ? 1 : -1];

/* np position pairs of one block of 4 channels, requantised (nk_dsp1d_rq, sat 1 or 2), in asm: per pair
 * the sums start at c[q] in r0-r7, the loop is nk_conv_dsp1d_block's (r8 weights, r9 D words, r10-r11 D
 * words, r12/lr weights), then each output is ASR, SSAT or USAT, STRB; r->x, r->y and r->np advance in
 * the struct. */
__attribute__((naked, noinline)) static void nk_conv_dsp1d_run(nk_dsp1d_rq *r)
{
    (void)r; /* in r0 (AAPCS) */
    __asm__ volatile(
        "push {r4-r11, lr}\n\t"
        "push {r0}\n"
        "1:\n\t"
        "ldr r12, [sp]\n\t"
        "ldrd r0, r1, [r12, #32]\n\t"
        "ldrd r2, r3, [r12, #40]\n\t"
        "mov r4, r0\n\t"
        "mov r5, r1\n\t"
        "mov r6, r2\n\t"
        "mov r7, r3\n\t"
        "ldrd r8, r9, [r12, #0]\n\t"
        "ldrd r12, lr, [r8], #8\n"
        "2:\n\t"
#define NK_DSP1D_RPAIR                                                                                        \
    "ldrd r10, r11, [r9], #8\n\t"                                                                             \
    "smlad r0, r12, r10, r0\n\t"                                                                              \
    "smlad r4, r12, r11, r4\n\t"                                                                              \
    "smlad r1, lr, r10, r1\n\t"                                                                               \
    "smlad r5, lr, r11, r5\n\t"                                                                               \
    "ldrd r12, lr, [r8], #8\n\t"                                                                              \
    "smlad r2, r12, r10, r2\n\t"                                                                              \
    "smlad r6, r12, r11, r6\n\t"                                                                              \
    "smlad r3, lr, r10, r3\n\t"                                                                               \
    "smlad r7, lr, r11, r7\n\t"                                                                               \
    "ldrd r12, lr, [r8], #8\n\t"
        NK_DSP1D_RPAIR NK_DSP1D_RPAIR
#undef NK_DSP1D_RPAIR
        "cmp r12, #0x40004000\n\t"
        "bne 2b\n\t"
        "ldr r12, [sp]\n\t"
        "ldrd r8, r9, [r12, #8]\n\t"  /* y, out_w */
        "ldr r10, [r12, #16]\n\t"     /* shift */
        "ldr r11, [r12, #28]\n\t"     /* sat */
        "add lr, r8, r9\n\t"
        "cmp r11, #1\n\t"
        "bne 3f\n\t"
#define NK_DSP1D_ROUT(OP, BITS, REG, ADDR)                                                                    \
    "asr " REG ", " REG ", r10\n\t" OP " " REG ", #" BITS ", " REG "\n\tstrb " REG ", " ADDR "\n\t"
#define NK_DSP1D_ROUTS(OP, BITS)                                                                              \
    NK_DSP1D_ROUT(OP, BITS, "r0", "[r8]") NK_DSP1D_ROUT(OP, BITS, "r4", "[r8, #1]")                           \
    NK_DSP1D_ROUT(OP, BITS, "r1", "[lr]") NK_DSP1D_ROUT(OP, BITS, "r5", "[lr, #1]") "add lr, lr, r9\n\t"      \
    NK_DSP1D_ROUT(OP, BITS, "r2", "[lr]") NK_DSP1D_ROUT(OP, BITS, "r6", "[lr, #1]") "add lr, lr, r9\n\t"      \
    NK_DSP1D_ROUT(OP, BITS, "r3", "[lr]") NK_DSP1D_ROUT(OP, BITS, "r7", "[lr, #1]")
        NK_DSP1D_ROUTS("ssat", "8")
        "b 4f\n"
        "3:\n\t"
        NK_DSP1D_ROUTS("usat", "7")
#undef NK_DSP1D_ROUTS
#undef NK_DSP1D_ROUT
        "4:\n\t"
        "add r8, r8, #2\n\t"
        "str r8, [r12, #8]\n\t"
        "ldr r0, [r12, #4]\n\t"
        "ldr r1, [r12, #24]\n\t"
        "add r0, r0, r1\n\t"
        "str r0, [r12, #4]\n\t"
        "ldr r0, [r12, #20]\n\t"
        "subs r0, r0, #1\n\t"
        "str r0, [r12, #20]\n\t"
        "bne 1b\n\t"
        "add sp, sp, #4\n\t"
        "pop {r4-r11, pc}\n\t");
}
#endif

/* The buffer D of a strip (see above) for n pairs i in [0, n), the stream X starting at input column iw0:
 * X's values s < 2n + cin (zero outside the input) go to their D slots: (s >> 1, half s & 1) of D[2i] and,
 * for s >= cin, those of D[2i + 1] for s - cin. Even cin: X's int16 pairs are the word pairs of two channels,
 * each stored at once in both slots, a position's cin values at a time: D[2i + 1] of s < cin goes to
 * d[1 - cin, 0), and the last position's pairs reach d[2n + 2cin - 2] at most; the caller provides both. */
static NK_NOINLINE NK_NO_MEMCALLS void nk_conv_dsp1d_stream(const int8_t *x, int32_t cin, int32_t in_w, int32_t iw0,
                                                            int32_t n, uint32_t *d)
{
    int32_t iw = iw0;
    if (cin % 2 == 0) {
        uint32_t *dp = d;
        uint32_t *const end = d + 2 * n + cin; /* pairs m < n + cin / 2: D[2m] and D[2m - cin + 1] */
        const ptrdiff_t back = 1 - (ptrdiff_t)cin, step = 2 * (ptrdiff_t)in_w;
        for (; dp < end; iw++) {
            uint32_t *const stop = dp + cin;
            if (iw >= 0 && iw < in_w) {
                const int8_t *src = x + iw;
                do {
                    const uint32_t v = (uint32_t)(uint16_t)src[0] | (uint32_t)src[in_w] << 16;
                    dp[0] = v;
                    dp[back] = v;
                    dp += 2;
                    src += step;
                } while (dp != stop);
            } else {
                do {
                    dp[0] = 0;
                    dp[back] = 0;
                    dp += 2;
                } while (dp != stop);
            }
        }
        return;
    }
    {
        int16_t *const h = (int16_t *)(void *)d; /* (writes through memcpy: the buffer is uint32_t) */
        const int32_t ns = 2 * n + cin;
        int32_t s = 0, c;
        for (; s < ns; iw++) {
            const int inside = iw >= 0 && iw < in_w;
            for (c = 0; c < cin && s < ns; c++, s++) {
                const int16_t v = inside ? x[(ptrdiff_t)c * in_w + iw] : 0;
                memcpy(h + 4 * (s >> 1) + (s & 1), &v, sizeof v);
                if (s >= cin) {
                    const int32_t t = s - cin;
                    memcpy(h + 4 * (t >> 1) + 2 + (t & 1), &v, sizeof v);
                }
            }
        }
    }
}

/* The outputs of a pair of positions from the block's sums s (channels o + q, q < nq; positions pos + j,
 * j < nj): nk_conv_rq32_apply with bias terms bt where q32 is given, else nk_conv_rq_store. Its own
 * function: its locals stay off the frame that holds the strip's buffer. */
static NK_NOINLINE void nk_conv_dsp1d_store(const nk_conv_params *p, const int32_t *bias, const nk_conv_rq32 *q32,
                                            const int32_t bt[4], const int32_t s[8], int32_t o, int32_t nq, int32_t nj,
                                            size_t pos, void *out)
{
    const size_t ow = (size_t)p->out_w;
    int32_t q, j;
    for (q = 0; q < nq; q++) {
        const size_t idx = (size_t)(o + q) * ow + pos;
        nk_conv_rq r;
        nk_conv_rq_init(&r, p, o + q, bias);
        for (j = 0; j < nj; j++) {
            if (q32) {
                ((int8_t *)out)[idx + (size_t)j] = nk_conv_rq32_apply(q32, bt[q], s[2 * q + j]);
            } else {
                nk_conv_rq_store(&r, out, idx + (size_t)j, s[2 * q + j]);
            }
        }
    }
}

/* The whole conv on the DSP 1-d path; returns 0 (having written nothing) where it does not apply, which
 * for weights in its layout is a generator bug (the generator checks the same conditions). */
static int nk_conv_dsp1d(const nk_conv_params *p, const int8_t *in, const uint32_t *w, const int32_t *bias,
                         void *out)
{
    const int32_t cin = p->in_c, out_c = p->out_c, out_w = p->out_w;
    const int32_t k = cin * p->k_w, kp = (k + 3) / 4 * 4, bw = kp / 2 * 4 + 2; /* words per block */
    const nk_requant_params *rq = &p->rq;
    const int mode = nk_conv_rq32_mode(p);
    uint32_t xb[NK_CONV_DSP1D_X]; /* d[-cin, 2n + 2cin) of nk_conv_dsp1d_stream: n2 positions, (n2 + 1) * cin + kp */
    nk_conv_rq32 q32 = {0, 0, 0, 0, 0, 0, 0, 0, 0};
#if NK_CONV_DSP_ASM
    nk_dsp1d_rq d;
    int32_t sat;
#endif
    int32_t strip, p0, o, bscale;
    int all32;

    if (p->in_h != 1 || p->k_h != 1 || p->out_h != 1 || p->stride_w != 1 || p->dil_w != 1 || p->groups != 1
        || cin < 1 || p->k_w < 1 || 3 * cin + kp > NK_CONV_DSP1D_X || out_w <= 0) {
        return 0;
    }
    /* positions per strip: even, (strip + 1) * cin + kp buffer words */
    strip = ((NK_CONV_DSP1D_X - kp) / cin - 1) & ~1;
    if (strip > out_w + 1) {
        strip = (out_w + 1) & ~1;
    }
    all32 = nk_conv_rq32_all(p, bias, mode, &q32);
#if NK_CONV_DSP_ASM
    /* nk_dsp1d_rq's conditions (all32 gives the bounds) */
    sat = !all32 || q32.clamp || q32.even || q32.add_pos != q32.add_neg || rq->act_max != INT8_MAX ? 0
          : rq->act_min == INT8_MIN ? 1 : rq->act_min == 0 ? 2 : 0;
    d.shift = q32.shift;
    d.out_w = out_w;
    d.xstep = 8 * cin;
    d.sat = sat;
#endif
    bscale = rq->bias_shift >= 0 && rq->bias_shift <= 29 ? (int32_t)1 << rq->bias_shift : 0;
    for (p0 = 0; p0 < out_w; p0 += strip) {
        const int32_t n = out_w - p0 < strip ? out_w - p0 : strip; /* positions of this strip */
        nk_conv_dsp1d_stream(in, cin, p->in_w, p0 - p->pad_w, ((((n + 1) & ~1) - 2) * cin + kp) / 2, xb + cin);
        for (o = 0; o < out_c; o += 4) {
            const uint32_t *wo = w + (ptrdiff_t)(o / 4) * bw;
            const int32_t nq = out_c - o < 4 ? out_c - o : 4;
            int32_t bt[4], q, pp = 0;
            for (q = 0; q < nq; q++) {
                bt[q] = !bias || !all32 ? 0 : bscale ? bias[o + q] * bscale : (int32_t)nk_requant_bias(rq, o + q, bias[o + q]);
            }
#if NK_CONV_DSP_ASM
            if (sat && nq == 4 && n >= 2) { /* the whole pairs at once, requantised in asm */
                for (q = 0; q < 4; q++) {
                    d.c[q] = bt[q] + q32.add_pos;
                }
                d.w = wo;
                d.x = xb + cin;
                d.y = (int8_t *)out + ((size_t)o * (size_t)out_w + (size_t)p0);
                d.np = n / 2;
                nk_conv_dsp1d_run(&d);
                pp = n & ~1;
            }
#endif
            for (; pp < n; pp += 2) { /* pair by pair, requantised here (an odd row's last position: not stored) */
                int32_t s[8];
                nk_conv_dsp1d_block(wo, xb + cin + (ptrdiff_t)pp * cin, kp, s);
                nk_conv_dsp1d_store(p, bias, all32 ? &q32 : NULL, bt, s, o, nq, n - pp < 2 ? 1 : 2, (size_t)(p0 + pp),
                                    out);
            }
        }
    }
    return 1;
}
#endif

#if defined(NK_CONV_SSE2)
/* SSE2 path: 8-bit weights, stride_w == 1. Two input channels are paired per pmaddwd: an input buffer
 * row holds, for one channel pair (c, c + 1) and one kernel row, the window's int16 pairs
 * (x_c[i], x_c+1[i]) (zero-padded at the borders and past the last channel), and a weight entry holds
 * (w_c, w_c+1) for NK_CONV_OB output channels. One pmaddwd then gives 4 outputs x 2 products; each
 * weight vector serves 8 adjacent outputs (4 in a row's last step) and each input vector NK_CONV_OB
 * output channels. With a single chunk (all channel pairs at once), the weight entries of every block
 * of a group are built once per call where they fit NK_CONV_WALL, and each tile's input buffer then
 * serves every block; otherwise the blocks run one by one, their entries built once per call (or per
 * chunk and tile, with several chunks).
 *
 * int32 lanes are exact: a pmaddwd lane is x_c w_c + x_c+1 w_c+1 with |.| <= 2 * 2^14 = 2^15, and a lane
 * sums at most (pairs in a chunk) * k_h * k_w <= NK_CONV_WPAIRS = 256 of them before the chunk's result
 * is added into int64: |partial| <= 2^23. */
#define NK_CONV_OB 4        /* output channels per block */
#define NK_CONV_TW 64       /* outputs per tile (a multiple of 8; a tile is rounded up to 4) */
#define NK_CONV_XBUF 4096   /* int16 pairs in the input buffer: rows * row length */
#define NK_CONV_WPAIRS 256  /* (channel pair, kernel tap) entries per chunk */
#define NK_CONV_STAGE 512   /* longest buffer row (tile + (k_w - 1) * dil_w, rounded up to 8) */
#define NK_CONV_WALL 2048   /* entries of a group's blocks built at once (32 KiB; >= NK_CONV_WPAIRS) */

/* n8 (a multiple of 8) int16 pairs (r0[i], r1[i]) into dst. */
static void nk_conv_pack_pairs(int16_t *dst, const int8_t *r0, const int8_t *r1, ptrdiff_t n8)
{
    ptrdiff_t i;
    for (i = 0; i < n8; i += 8) {
        const __m128i v0 = _mm_loadl_epi64((const __m128i *)(const void *)(r0 + i));
        const __m128i v1 = _mm_loadl_epi64((const __m128i *)(const void *)(r1 + i));
        const __m128i v = _mm_unpacklo_epi8(v0, v1);
        _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i), _mm_srai_epi16(_mm_unpacklo_epi8(v, v), 8));
        _mm_storeu_si128((__m128i *)(void *)(dst + 2 * i + 8), _mm_srai_epi16(_mm_unpackhi_epi8(v, v), 8));
    }
}

/* One step of nk_conv_sse2_tile: NK_CONV_OB channels x 2 vectors of V outputs from column j, in lanes of
 * type T; W(we) readies entry we's weights and BCAST(q) is channel q's pair of them in every lane. The
 * SSE2 step (V = 4) and the AVX2 one (V = 8) are this one definition. */
#define NK_CONV_STEP(T, V, ZERO, LOAD, STORE, MADD, ADD, W, BCAST)                                            \
    do {                                                                                                      \
        T a00 = ZERO, a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00;            \
        for (r = 0; r < rows; r++) {                                                                          \
            const int16_t *xr = xb + 2 * (r * xs + j);                                                        \
            const int16_t *wr = wb + (ptrdiff_t)r * k_w * 8;                                                  \
            for (kw = 0; kw < k_w; kw++) {                                                                    \
                const int16_t *xp = xr + 2 * kw * dil_w, *we = wr + 8 * kw;                                   \
                const T x0 = LOAD(xp), x1 = LOAD(xp + 2 * (V));                                               \
                T wq;                                                                                         \
                W(we);                                                                                        \
                wq = BCAST(0);                                                                                \
                a00 = ADD(a00, MADD(x0, wq));                                                                 \
                a01 = ADD(a01, MADD(x1, wq));                                                                 \
                wq = BCAST(1);                                                                                \
                a10 = ADD(a10, MADD(x0, wq));                                                                 \
                a11 = ADD(a11, MADD(x1, wq));                                                                 \
                wq = BCAST(2);                                                                                \
                a20 = ADD(a20, MADD(x0, wq));                                                                 \
                a21 = ADD(a21, MADD(x1, wq));                                                                 \
                wq = BCAST(3);                                                                                \
                a30 = ADD(a30, MADD(x0, wq));                                                                 \
                a31 = ADD(a31, MADD(x1, wq));                                                                 \
            }                                                                                                 \
        }                                                                                                     \
        STORE(&part[0][j], a00);                                                                              \
        STORE(&part[0][j + (V)], a01);                                                                        \
        STORE(&part[1][j], a10);                                                                              \
        STORE(&part[1][j + (V)], a11);                                                                        \
        STORE(&part[2][j], a20);                                                                              \
        STORE(&part[2][j + (V)], a21);                                                                        \
        STORE(&part[3][j], a30);                                                                              \
        STORE(&part[3][j + (V)], a31);                                                                        \
    } while (0)

#define NK_SSE2_LOAD(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define NK_SSE2_STORE(p, v) _mm_storeu_si128((__m128i *)(void *)(p), v)
#define NK_SSE2_W(we) const __m128i w_ = NK_SSE2_LOAD(we) /* the entry: one load, 4 shuffles */
#define NK_SSE2_BCAST(q) _mm_shuffle_epi32(w_, 0x55 * (q))
#if defined(__AVX2__)
#define NK_AVX2_LOAD(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define NK_AVX2_STORE(p, v) _mm256_storeu_si256((__m256i *)(void *)(p), v)
#define NK_AVX2_W(we) const int16_t *w_ = (we) /* each pair broadcast from memory */
#define NK_AVX2_BCAST(q) nk_conv_bcast32(w_ + 2 * (q))

/* The int16 pair at p in every 32-bit lane (one vpbroadcastd). */
static __m256i nk_conv_bcast32(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}
#endif

/* n4 (a multiple of 4) outputs of NK_CONV_OB channels over `rows` buffer rows of length xs: 16 at a time
 * with AVX2, 8 at a time, then 4 (whose step writes zeros to part[.][n4, n4 + 4), so that
 * part[.][0, n4 rounded up to 8) is set). */
static void nk_conv_sse2_tile(const int16_t *xb, ptrdiff_t xs, int32_t rows, int32_t k_w, ptrdiff_t dil_w,
                              const int16_t *wb, int32_t n4, int32_t part[NK_CONV_OB][NK_CONV_TW])
{
    int32_t j = 0, r, kw;
#if defined(__AVX2__)
    for (; j + 16 <= n4; j += 16) {
        NK_CONV_STEP(__m256i, 8, _mm256_setzero_si256(), NK_AVX2_LOAD, NK_AVX2_STORE, _mm256_madd_epi16,
                     _mm256_add_epi32, NK_AVX2_W, NK_AVX2_BCAST);
    }
#endif
    for (; j + 8 <= n4; j += 8) {
        NK_CONV_STEP(__m128i, 4, _mm_setzero_si128(), NK_SSE2_LOAD, NK_SSE2_STORE, _mm_madd_epi16, _mm_add_epi32,
                     NK_SSE2_W, NK_SSE2_BCAST);
    }
    if (j < n4) { /* 4 outputs: one vector */
        __m128i a0 = _mm_setzero_si128(), a1 = a0, a2 = a0, a3 = a0;
        for (r = 0; r < rows; r++) {
            const int16_t *xr = xb + 2 * (r * xs + j);
            const int16_t *wr = wb + (ptrdiff_t)r * k_w * 8;
            for (kw = 0; kw < k_w; kw++) {
                const __m128i x0 = NK_SSE2_LOAD(xr + 2 * kw * dil_w);
                NK_SSE2_W(wr + 8 * kw);
                a0 = _mm_add_epi32(a0, _mm_madd_epi16(x0, NK_SSE2_BCAST(0)));
                a1 = _mm_add_epi32(a1, _mm_madd_epi16(x0, NK_SSE2_BCAST(1)));
                a2 = _mm_add_epi32(a2, _mm_madd_epi16(x0, NK_SSE2_BCAST(2)));
                a3 = _mm_add_epi32(a3, _mm_madd_epi16(x0, NK_SSE2_BCAST(3)));
            }
        }
        NK_SSE2_STORE(&part[0][j], a0);
        NK_SSE2_STORE(&part[1][j], a1);
        NK_SSE2_STORE(&part[2][j], a2);
        NK_SSE2_STORE(&part[3][j], a3);
        for (r = 0; r < NK_CONV_OB; r++) {
            NK_SSE2_STORE(&part[r][j + 4], _mm_setzero_si128());
        }
    }
}

/* Weight entries of channel pairs [p0, p1) for output channels [o, o + nq) (nq <= NK_CONV_OB; the rest
 * zero): entry ((p - p0) * k_hw + k) * NK_CONV_OB + q holds (w[o+q][2p][k], w[o+q][2p+1][k]), zero past
 * the last input channel. Two steps: z interleaves the nq channels' weights of input channels
 * [2 p0, 2 p1) byte by byte (z[4 t + q], t the tap index from channel 2 p0 on), then each entry's 8 bytes
 * are z[t] and z[t + k_hw] interleaved, 4 entries at a time, the last 1-2 two at a time. May write up to 3
 * entries past the last one
 * (the caller's buffer has room; entries past a pair's own are those of the next pair, written after). */
static void nk_conv_sse2_weights(const int8_t *w, int32_t cg, int32_t k_hw, int32_t o, int32_t nq, int32_t p0,
                                 int32_t p1, int16_t *wb)
{
    int8_t z[4 * (2 * NK_CONV_WPAIRS + 16)];
    const ptrdiff_t ostep = (ptrdiff_t)cg * k_hw, base = (ptrdiff_t)2 * p0 * k_hw;
    const ptrdiff_t n = (ptrdiff_t)2 * (p1 - p0) * k_hw; /* taps of the chunk, <= 2 * NK_CONV_WPAIRS */
    const ptrdiff_t nv = ostep - base < n ? ostep - base : n; /* those of existing input channels */
    const int8_t *r = w + ((ptrdiff_t)o * ostep + base);
    ptrdiff_t i, t;
    int32_t pp, k, q;
    for (i = 0; nq == NK_CONV_OB && i + 16 <= nv; i += 16) { /* 16 taps at a time */
        const __m128i v0 = _mm_loadu_si128((const __m128i *)(const void *)(r + i));
        const __m128i v1 = _mm_loadu_si128((const __m128i *)(const void *)(r + ostep + i));
        const __m128i v2 = _mm_loadu_si128((const __m128i *)(const void *)(r + 2 * ostep + i));
        const __m128i v3 = _mm_loadu_si128((const __m128i *)(const void *)(r + 3 * ostep + i));
        const __m128i l01 = _mm_unpacklo_epi8(v0, v1), h01 = _mm_unpackhi_epi8(v0, v1);
        const __m128i l23 = _mm_unpacklo_epi8(v2, v3), h23 = _mm_unpackhi_epi8(v2, v3);
        _mm_storeu_si128((__m128i *)(void *)(z + 4 * i), _mm_unpacklo_epi16(l01, l23));
        _mm_storeu_si128((__m128i *)(void *)(z + 4 * i + 16), _mm_unpackhi_epi16(l01, l23));
        _mm_storeu_si128((__m128i *)(void *)(z + 4 * i + 32), _mm_unpacklo_epi16(h01, h23));
        _mm_storeu_si128((__m128i *)(void *)(z + 4 * i + 48), _mm_unpackhi_epi16(h01, h23));
    }
    for (t = i; t < nv; t++) { /* the rest one tap at a time, */
        for (q = 0; q < NK_CONV_OB; q++) {
            z[4 * t + q] = q < nq ? r[q * ostep + t] : 0;
        }
    }
    memset(z + 4 * nv, 0, (size_t)(4 * (n + 4 - nv))); /* then zeros: missing channels, and 4 taps past n */
    for (pp = 0; pp < p1 - p0; pp++) {
        const int8_t *z0 = z + (ptrdiff_t)4 * 2 * pp * k_hw, *z1 = z0 + (ptrdiff_t)4 * k_hw;
        int16_t *e = wb + (ptrdiff_t)pp * k_hw * NK_CONV_OB * 2;
        for (k = 0; k + 2 < k_hw; k += 4) { /* entries k .. k + 3 (past k_hw: the next pair's, rewritten) */
            const __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(z0 + 4 * k));
            const __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(z1 + 4 * k));
            const __m128i lo = _mm_unpacklo_epi8(a, b), hi = _mm_unpackhi_epi8(a, b);
            _mm_storeu_si128((__m128i *)(void *)(e + 8 * k), _mm_srai_epi16(_mm_unpacklo_epi8(lo, lo), 8));
            _mm_storeu_si128((__m128i *)(void *)(e + 8 * k + 8), _mm_srai_epi16(_mm_unpackhi_epi8(lo, lo), 8));
            _mm_storeu_si128((__m128i *)(void *)(e + 8 * k + 16), _mm_srai_epi16(_mm_unpacklo_epi8(hi, hi), 8));
            _mm_storeu_si128((__m128i *)(void *)(e + 8 * k + 24), _mm_srai_epi16(_mm_unpackhi_epi8(hi, hi), 8));
        }
        if (k < k_hw) { /* the last 1 or 2: entries k, k + 1 */
            const __m128i a = _mm_loadl_epi64((const __m128i *)(const void *)(z0 + 4 * k));
            const __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(z1 + 4 * k));
            const __m128i lo = _mm_unpacklo_epi8(a, b);
            _mm_storeu_si128((__m128i *)(void *)(e + 8 * k), _mm_srai_epi16(_mm_unpacklo_epi8(lo, lo), 8));
            _mm_storeu_si128((__m128i *)(void *)(e + 8 * k + 8), _mm_srai_epi16(_mm_unpackhi_epi8(lo, lo), 8));
        }
    }
}

/* Input buffer rows of channel pairs [p0, p1), kernel rows [0, k_h): row (p - p0) * k_h + kh holds xs
 * pairs of input row ih0 + kh * dil_h, columns [iw0, iw0 + xs), zero outside the input. */
static void nk_conv_sse2_input(const nk_conv_params *p, const int8_t *x, int32_t cg, int32_t p0, int32_t p1,
                               int32_t ih0, int32_t iw0, ptrdiff_t xs, int16_t *xb)
{
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w;
    /* window columns [a, b) lie inside the input */
    const ptrdiff_t a = iw0 < 0 ? -(ptrdiff_t)iw0 : 0;
    const ptrdiff_t b = (ptrdiff_t)p->in_w - iw0 < xs ? (ptrdiff_t)p->in_w - iw0 : xs;
    int8_t s0[NK_CONV_STAGE], s1[NK_CONV_STAGE];
    int32_t pp, kh;
    int staged = 0; /* s0/s1 hold zeros outside [a, b) */

    for (pp = p0; pp < p1; pp++) {
        for (kh = 0; kh < p->k_h; kh++) {
            int16_t *dst = xb + 2 * ((ptrdiff_t)(pp - p0) * p->k_h + kh) * xs;
            const int64_t ih = (int64_t)ih0 + (int64_t)kh * p->dil_h;
            const int has1 = 2 * pp + 1 < cg;
            ptrdiff_t off0, off1;
            if (ih < 0 || ih >= p->in_h || b <= a) {
                memset(dst, 0, (size_t)xs * 2 * sizeof *dst);
                continue;
            }
            off0 = (ptrdiff_t)2 * pp * in_hw + (ptrdiff_t)ih * p->in_w;
            off1 = off0 + in_hw;
            if (a == 0 && b == xs && has1) {
                nk_conv_pack_pairs(dst, x + (off0 + iw0), x + (off1 + iw0), xs);
                continue;
            }
            if (!staged) {
                memset(s0, 0, (size_t)xs);
                memset(s1, 0, (size_t)xs);
                staged = 1;
            }
            memcpy(s0 + a, x + (off0 + iw0 + a), (size_t)(b - a));
            if (has1) {
                memcpy(s1 + a, x + (off1 + iw0 + a), (size_t)(b - a));
            } else {
                memset(s1 + a, 0, (size_t)(b - a));
            }
            nk_conv_pack_pairs(dst, s0, s1, xs);
        }
    }
}

/* A specialisation of nk_conv_rq_store (hence of nk_requant) in int32 lanes: requantises n int8 outputs
 * of one channel from int32 sums, with the same nk_conv_rq values; tests/test_c_kernels.py holds it
 * bit-exact. The caller checks that it applies: nk_conv_rq32_mode(p) = clamp >= 0 (int8 output,
 * act range inside int8, 1 <= out_shift <= 30, the accumulator range below), r->fast, |sum| <= 2^23 (one
 * chunk) and |bias_term| < 2^29, so |sum + bias_term| < 2^30. The accumulator clamp is either a no-op
 * (clamp 0: acc_min <= -2^30 and acc_max >= 2^30) or runs in int32 (clamp 1: -2^30 <= acc_min <= acc_max
 * <= 2^30); either way |acc| <= 2^30 and |acc + add| < 2^31 (0 <= add < 2^s <= 2^30): every step is exact
 * in int32 lanes. _mm_sra_epi32 is an arithmetic (floor) shift by definition, so floor((acc + add) / 2^s)
 * = (acc + add) >> s, and the half_even parity bit (acc >> s) & 1 is that of ((acc + off) >> s), as
 * 2^(62-s) is even; packs_epi32 saturates to int16, which keeps the act clamp exact; the act range fits
 * int8, so packs_epi16 only narrows. Reads part[0, n rounded up to 8). */
#if defined(__GNUC__)
#define NK_SSE2_INLINE __inline__ __attribute__((always_inline)) /* flags passed as constants fold away */
#else
#define NK_SSE2_INLINE
#endif

/* The loop of nk_conv_sse2_requant; `sel`: add_pos != add_neg (else add_pos is every lane's add). */
static NK_SSE2_INLINE void nk_conv_sse2_rq_loop(const nk_conv_rq *r, int clamp, int even, int sel,
                                                const int32_t *part, int32_t n, int8_t *out)
{
    const nk_requant_params *rq = &r->p->rq;
    const __m128i vb = _mm_set1_epi32((int32_t)r->bias_term);
    const __m128i vpos = _mm_set1_epi32((int32_t)r->add_pos), vneg = _mm_set1_epi32((int32_t)r->add_neg);
    const __m128i vmin = _mm_set1_epi32((int32_t)(clamp ? rq->acc_min : 0));
    const __m128i vmax = _mm_set1_epi32((int32_t)(clamp ? rq->acc_max : 0));
    const __m128i lo = _mm_set1_epi16((int16_t)rq->act_min), hi = _mm_set1_epi16((int16_t)rq->act_max);
    const __m128i sh = _mm_cvtsi32_si128(r->shift), one = _mm_set1_epi32(1), zero = _mm_setzero_si128();
    int32_t j, h;
    for (j = 0; j < n; j += 8) {
        __m128i y[2], b;
        for (h = 0; h < 2; h++) {
            __m128i a = _mm_add_epi32(_mm_loadu_si128((const __m128i *)(const void *)(part + j + 4 * h)), vb);
            __m128i m, add = vpos;
            if (clamp) {
                m = _mm_cmpgt_epi32(vmin, a);
                a = _mm_or_si128(_mm_and_si128(m, vmin), _mm_andnot_si128(m, a));
                m = _mm_cmpgt_epi32(a, vmax);
                a = _mm_or_si128(_mm_and_si128(m, vmax), _mm_andnot_si128(m, a));
            }
            if (sel) {
                m = _mm_cmplt_epi32(a, zero);
                add = _mm_or_si128(_mm_and_si128(m, vneg), _mm_andnot_si128(m, vpos));
            }
            if (even) {
                add = _mm_add_epi32(add, _mm_and_si128(_mm_sra_epi32(a, sh), one));
            }
            y[h] = _mm_sra_epi32(_mm_add_epi32(a, add), sh);
        }
        b = _mm_min_epi16(_mm_max_epi16(_mm_packs_epi32(y[0], y[1]), lo), hi);
        b = _mm_packs_epi16(b, b);
        if (n - j >= 8) {
            _mm_storel_epi64((__m128i *)(void *)(out + j), b);
        } else if (n - j == 4) {
            const int32_t v = _mm_cvtsi128_si32(b);
            memcpy(out + j, &v, sizeof v);
        } else {
            int8_t tmp[16];
            _mm_storeu_si128((__m128i *)(void *)tmp, b);
            memcpy(out + j, tmp, (size_t)(n - j));
        }
    }
}

static void nk_conv_sse2_requant(const nk_conv_rq *r, int clamp, const int32_t *part, int32_t n, int8_t *out)
{
    if (!clamp && !r->even && r->add_pos == r->add_neg) { /* the common case, its own loop: half_up, floor */
        nk_conv_sse2_rq_loop(r, 0, 0, 0, part, n, out);
    } else {
        nk_conv_sse2_rq_loop(r, clamp, r->even, 1, part, n, out);
    }
}

/* Requantises and stores n outputs of row oh from column t on, channels [o, o + nq): from the int32 sums
 * part (a single chunk; `mode`: nk_conv_rq32_mode) or else the int64 sums acc. After a channel whose
 * nk_conv_rq is fast, the next one's is that one with its own ch and bias term wherever that bias term
 * is below 2^60: nk_conv_rq_init sets every other field from p->rq alone (shift, ranges, rounding), and
 * with them fast. Otherwise nk_conv_rq_init itself. */
static void nk_conv_sse2_store(const nk_conv_params *p, const int32_t *bias, int mode, int32_t o, int32_t nq,
                               int32_t oh, int32_t t, int32_t n, int32_t part[NK_CONV_OB][NK_CONV_TW],
                               int64_t acc[NK_CONV_OB][NK_CONV_TW], void *out)
{
    const int64_t lim = (int64_t)1 << 60;
    nk_conv_rq r;
    int32_t q;
    for (q = 0; q < nq; q++) {
        const size_t idx = ((size_t)(o + q) * (size_t)p->out_h + (size_t)oh) * (size_t)p->out_w + (size_t)t;
        const int64_t bt = q > 0 && r.fast && bias ? nk_requant_bias(&p->rq, o + q, bias[o + q]) : 0;
        if (q > 0 && r.fast && bt > -lim && bt < lim) {
            r.ch = o + q;
            r.bias_term = bt;
        } else {
            nk_conv_rq_init(&r, p, o + q, bias);
        }
        if (part && nk_conv_rq32_ok(&r, mode)) {
            nk_conv_sse2_requant(&r, mode, part[q], n, (int8_t *)out + idx);
        } else {
            nk_conv_rq_row(&r, out, idx, part ? part[q] : NULL, part ? NULL : acc[q], n);
        }
    }
}

/* The whole conv on the SSE2 path; returns 0 (having written nothing) where it does not apply. */
static int nk_conv_sse2(const nk_conv_params *p, const int8_t *in, const int8_t *weights, const int32_t *bias,
                        void *out)
{
    const int32_t cg = p->in_c / p->groups, og = p->out_c / p->groups, out_w = p->out_w;
    const int32_t npairs = (cg + 1) / 2;
    const int64_t k_hw = (int64_t)p->k_h * p->k_w, span = (int64_t)(p->k_w - 1) * p->dil_w;
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w;
    int16_t xb[2 * NK_CONV_XBUF], wb[2 * NK_CONV_OB * (NK_CONV_WALL + 3)];
    int32_t part[NK_CONV_OB][NK_CONV_TW];
    int64_t acc[NK_CONV_OB][NK_CONV_TW];
    int32_t tw = out_w < NK_CONV_TW ? (out_w + 3) / 4 * 4 : NK_CONV_TW, pc, g, ob0, ob1, ob, oh, t, q, j, p0;
    ptrdiff_t xs = 0, bstep;
    const int rq_mode = nk_conv_rq32_mode(p);
    int one, all;

    if (p->w_bits != 8 || p->stride_w != 1 || k_hw > NK_CONV_WPAIRS || out_w <= 0) {
        return 0;
    }
    /* the widest tile whose buffer row fits NK_CONV_STAGE and whose k_h rows fit NK_CONV_XBUF */
    for (; tw >= 4; tw -= 4) {
        xs = (ptrdiff_t)((tw + span + 7) / 8 * 8);
        if (xs <= NK_CONV_STAGE && xs * p->k_h <= NK_CONV_XBUF) {
            break;
        }
    }
    if (tw < 4) {
        return 0;
    }
    pc = (int32_t)(NK_CONV_WPAIRS / k_hw);
    if ((ptrdiff_t)pc * p->k_h * xs > NK_CONV_XBUF) {
        pc = (int32_t)(NK_CONV_XBUF / (p->k_h * xs));
    }
    if (pc > npairs) {
        pc = npairs;
    }
    one = pc >= npairs; /* a single chunk: weight entries built once per call */
    /* and the entries of all of a group's blocks fit wb: one input buffer per tile for every block */
    all = one && ((int64_t)og + NK_CONV_OB - 1) / NK_CONV_OB * npairs * k_hw <= NK_CONV_WALL;
    bstep = (ptrdiff_t)npairs * (ptrdiff_t)k_hw * NK_CONV_OB * 2; /* int16 of one block's entries */

    for (g = 0; g < p->groups; g++) {
        const int8_t *xg = in + (ptrdiff_t)g * cg * in_hw;
        for (ob0 = 0; ob0 < og; ob0 = ob1) { /* blocks [ob0, ob1) share the input buffers */
            const int32_t nq0 = og - ob0 < NK_CONV_OB ? og - ob0 : NK_CONV_OB;
            ob1 = all ? og : ob0 + nq0;
            for (ob = ob0; one && ob < ob1; ob += NK_CONV_OB) {
                nk_conv_sse2_weights(weights, cg, (int32_t)k_hw, g * og + ob,
                                     og - ob < NK_CONV_OB ? og - ob : NK_CONV_OB, 0, npairs,
                                     wb + (ob - ob0) / NK_CONV_OB * bstep);
            }
            for (oh = 0; oh < p->out_h; oh++) {
                const int32_t ih0 = oh * p->stride_h - p->pad_h;
                for (t = 0; t < out_w; t += tw) {
                    const int32_t n = out_w - t < tw ? out_w - t : tw, n4 = (n + 3) / 4 * 4;
                    for (p0 = 0; p0 < npairs; p0 += pc) {
                        const int32_t p1 = npairs - p0 < pc ? npairs : p0 + pc;
                        if (!one) { /* a single block (ob1 = ob0 + nq0), its entries per chunk */
                            nk_conv_sse2_weights(weights, cg, (int32_t)k_hw, g * og + ob0, nq0, p0, p1, wb);
                        }
                        nk_conv_sse2_input(p, xg, cg, p0, p1, ih0, t - p->pad_w, xs, xb);
                        for (ob = ob0; ob < ob1; ob += NK_CONV_OB) {
                            nk_conv_sse2_tile(xb, xs, (p1 - p0) * p->k_h, p->k_w, p->dil_w,
                                              wb + (ob - ob0) / NK_CONV_OB * bstep, n4, part);
                            if (one) {
                                nk_conv_sse2_store(p, bias, rq_mode, g * og + ob,
                                                   og - ob < NK_CONV_OB ? og - ob : NK_CONV_OB, oh, t, n, part,
                                                   NULL, out);
                            }
                        }
                        for (q = 0; !one && q < nq0; q++) {
                            for (j = 0; j < n; j++) {
                                acc[q][j] = (p0 == 0 ? 0 : acc[q][j]) + part[q][j];
                            }
                        }
                    }
                    if (!one) {
                        nk_conv_sse2_store(p, bias, rq_mode, g * og + ob0, nq0, oh, t, n, NULL, acc, out);
                    }
                }
            }
        }
    }
    return 1;
}
#endif

void nk_conv_1d(const nk_conv_params *p, const int8_t *in, const void *weights, const int32_t *bias, void *out)
{
#if defined(NK_DSP)
    (void)nk_conv_dsp1d(p, in, (const uint32_t *)weights, bias, out); /* (0: a generator bug, see there) */
#else
    nk_conv(p, in, weights, bias, out);
#endif
}

void nk_conv(const nk_conv_params *p, const int8_t *in, const void *weights, const int32_t *bias, void *out)
{
    const int32_t cg = p->in_c / p->groups;  /* input channels per group */
    const int32_t og = p->out_c / p->groups; /* output channels per group */
    const int32_t k_w = p->k_w, s_w = p->stride_w, out_w = p->out_w;
    const ptrdiff_t in_hw = (ptrdiff_t)p->in_h * p->in_w;
    const int32_t w_per_out = cg * p->k_h * k_w;
    /* 8-bit weights without nk_weight (the DSP path leaves here only convs wider than a column: those
     * take the generic loop, which keeps DSP builds small) */
    const int fast = NK_CONV_TILES && p->w_bits == 8 && (int64_t)p->k_h * k_w <= NK_CONV_PART_TERMS;
    /* interior columns [ow_in, ow_end): every kernel column inside the input */
    int32_t ow_in = (p->pad_w + s_w - 1) / s_w, ow_end;
    /* tiles need stride 1 and a row of at least NK_CONV_TILE outputs (not built with the DSP path, which
     * takes every 8-bit conv they would) */
    const int tiles = NK_CONV_TILES && fast && s_w == 1 && out_w >= NK_CONV_TILE;
    const int span_fits = NK_CONV_TILE + (int64_t)(k_w - 1) * p->dil_w <= NK_CONV_WIN;
    int32_t o, oh, ow;
#if defined(NK_CONV_SSE2)
    if (nk_conv_sse2(p, in, (const int8_t *)weights, bias, out)) {
        return;
    }
#endif
#if defined(NK_DSP)
    if (p->w_bits == NK_W8_DSP1D) {
        (void)nk_conv_dsp1d(p, in, (const uint32_t *)weights, bias, out);
        return;
    }
    if (nk_conv_dsp(p, in, (const int8_t *)weights, bias, out)) {
        return;
    }
#endif
    {
        const int64_t last = (int64_t)p->in_w - 1 - (int64_t)(k_w - 1) * p->dil_w + p->pad_w;
        ow_end = last < 0 ? 0 : (int32_t)(last / s_w + 1 < out_w ? last / s_w + 1 : out_w);
        if (ow_in > ow_end) {
            ow_in = ow_end;
        }
    }

    for (o = 0; o < p->out_c; o++) {
        const int8_t *xg = in + (ptrdiff_t)(o / og) * cg * in_hw;
        nk_conv_rq rq;
        const int8_t *wo = fast ? (const int8_t *)weights + (ptrdiff_t)o * w_per_out : (const int8_t *)weights;
        size_t idx = (size_t)o * (size_t)p->out_h * (size_t)out_w;
        nk_conv_rq_init(&rq, p, o, bias);

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
                        nk_conv_tile8(p, xg, wo, cg, ih0, kh_lo, kh_hi, iw0, acc);
                        nk_conv_rq_row(&rq, out, idx, NULL, acc + (ow - t), NK_CONV_TILE - (ow - t));
                        idx += (size_t)(NK_CONV_TILE - (ow - t));
                    } else {
                        int32_t j;
                        for (j = ow - t; j < NK_CONV_TILE; j++) {
                            int32_t kw_lo, kw_hi;
                            nk_conv_taps(iw0 + j, p->dil_w, k_w, p->in_w, &kw_lo, &kw_hi);
                            nk_conv_rq_store(&rq, out, idx++,
                                             nk_conv_dot8(p, xg, wo, cg, ih0, kh_lo, kh_hi, iw0 + j, kw_lo, kw_hi));
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
                    nk_conv_rq_store(&rq, out, idx++, nk_conv_dot8(p, xg, wo, cg, ih0, kh_lo, kh_hi, iw0, kw_lo, kw_hi));
                } else {
                    nk_conv_rq_store(&rq, out, idx++,
                                     nk_conv_dot(p, xg, weights, o * w_per_out, cg, ih0, kh_lo, kh_hi, iw0, kw_lo, kw_hi));
                }
            }
        }
    }
}

/* npukit kernel library: stateless integer kernels that implement docs/arithmetic.md.
 *
 * Every parameter (shifts, saturation bounds, geometry) is computed offline by the code generator;
 * kernels never allocate, keep no state, and run one sample at a time. Tensors are C-contiguous,
 * channels first (C x H x W; a 1-d tensor is C x 1 x W). Accumulators are int64, saturated once after
 * the bias, as the contract requires. Portable C99; no floating point anywhere.
 *
 * The requantisation of conv and linear is defined once, below: nk_requant_params holds the fields the
 * target's scheme stores in the node (npukit/schemes.py, Scheme.c_fields), and the static inline
 * functions nk_requant_bias and nk_requant are the scheme's arithmetic (Scheme.requantize in Python;
 * docs/arithmetic.md, "Requantisation schemes"). Every kernel calls them; nk_conv.c keeps per-channel
 * specialisations of nk_requant for speed, proved equal there and held bit-exact by the tests.
 */
#ifndef NPUKIT_KERNELS_H
#define NPUKIT_KERNELS_H

#include <stdint.h>

/* SIMD paths: SSE2 on x86 (nk_conv.c), the DSP extension's SMLAD on Cortex-M4/M7/M33 (nk_conv.c,
 * nk_linear.c). -DNK_NO_SIMD (or the older -DNK_CONV_NO_SIMD) keeps every kernel plain C99. */
#if defined(NK_CONV_NO_SIMD) && !defined(NK_NO_SIMD)
#define NK_NO_SIMD 1
#endif
#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32) && !defined(NK_NO_SIMD)
#define NK_DSP 1
#endif

/* Generated code (model.c) pre-arranges the 8-bit weights of 1-d convs with stride 1, dilation 1, groups 1
 * and 3 * in_c + (in_c * k_w rounded up to 4) <= NK_CONV_DSP1D_X for the DSP path (nk_conv.c, nk_conv_dsp1d):
 * their array then holds int32 words (int16 pairs in the order the path reads them) and their w_bits is
 * NK_CONV_W8_1D = NK_W8_DSP1D; elsewhere NK_CONV_W8_1D is 8 and the weights are model.bin's. model.c and
 * nk_conv.c must be built with the same flags (-DNK_NO_SIMD in both or neither). NK_CONV_DSP1D_X is the
 * path's input buffer (int32 words on the stack) and is not a build option: the generator reads it. */
#define NK_W8_DSP1D 0x108
#define NK_CONV_DSP1D_X 384
#if defined(NK_DSP)
#define NK_CONV_W8_1D NK_W8_DSP1D
#else
#define NK_CONV_W8_1D 8
#endif

typedef enum { NK_HALF_UP = 0, NK_HALF_EVEN = 1, NK_FLOOR = 2, NK_TRUNC = 3 } nk_rounding;

/* x / 2^shift rounded by `mode`; shift <= 0 is an exact left shift. Never relies on >> of negatives.
 * Any shift is defined: shifts of 64 and more give 0 (or -1 for floor of a negative x); a left shift whose
 * result leaves int64 saturates to INT64_MIN / INT64_MAX instead of overflowing (the contract never gets
 * there; a later saturation to a narrower range then gives the contract's result). */
int64_t nk_round_shift(int64_t x, int32_t shift, nk_rounding mode);
/* x / n rounded by `mode`, n > 0 (average pooling); exact for every int64 x. n <= 0 returns 0. */
int64_t nk_round_div(int64_t x, int64_t n, nk_rounding mode);
/* min(max(x, lo), hi) */
int64_t nk_saturate(int64_t x, int64_t lo, int64_t hi);
/* a + b saturated at the int64 bounds (the bias term joining an accumulator). */
int64_t nk_sat_add64(int64_t a, int64_t b);
/* Weight i of a tensor packed at `bits` (2, 4: two's complement, low bits first; 8: int8; 16: int16 LE,
 * read byte by byte, so any alignment and host byte order). Other widths return 0. */
int32_t nk_weight(const void *weights, int32_t i, int32_t bits);

/* The requantisation of a MAC layer (conv, linear): the node's scheme attributes, as C values. The
 * pipeline, for a sum of products `sum` and an int32 bias b:
 *   acc = nk_sat_add64(sum, nk_requant_bias(rq, ch, b))    sum + b * 2^bias_shift
 *   y   = nk_requant(rq, ch, acc)                          saturate(round_shift(saturate(acc,
 *                                                            acc_min, acc_max), out_shift), act_min, act_max)
 * pow2 and max78000 (bias_shift 7, out_shift = 7 - s) are both this pipeline with other values; a wide
 * output is out_shift 0 with the accumulator's range as act range (y = acc). `ch` is the output channel:
 * unused by these per-layer schemes, it is where a per-channel scheme (multiplier + shift arrays in this
 * struct) would index. */
typedef struct {
    int32_t bias_shift;        /* e_acc - e_bias >= 0: bias * 2^bias_shift joins the accumulator */
    int32_t out_shift;         /* e_acc - e_out: the requantising shift (<= 0: exact left shift) */
    int64_t acc_min, acc_max;  /* accumulator saturation, once, after the bias */
    int32_t act_min, act_max;  /* output saturation; a fused ReLU sets act_min = 0; must lie in the output type */
    nk_rounding rounding;      /* of the requantising shift */
    int32_t abs;               /* 1: an Abs activation, y = min(|y|, act_max) after the saturation */
} nk_requant_params;

/* The bias term b * 2^bias_shift in accumulator units, exact: directly for 0 <= bias_shift <= 31
 * (|b * 2^s| <= 2^62), otherwise nk_round_shift(b, -bias_shift), whose left shift saturates at the int64
 * bounds instead of overflowing and which, outside the contract (bias_shift < 0), rounds by `rounding`
 * (the shift is clamped to [-64, 64] only so that negating it cannot overflow). */
static inline int64_t nk_requant_bias(const nk_requant_params *rq, int32_t ch, int32_t b)
{
    const int32_t s = rq->bias_shift;
    (void)ch;
    if (s >= 0 && s <= 31) {
        return (int64_t)b * ((int64_t)1 << s);
    }
    return nk_round_shift(b, s > 64 ? -64 : (s < -64 ? 64 : -s), rq->rounding);
}

/* The requantisation of an accumulator that already holds the bias: the one C definition of
 * Scheme.requantize (npukit/schemes.py). Saturations are min(max(x, lo), hi), as numpy.clip. */
static inline int64_t nk_requant(const nk_requant_params *rq, int32_t ch, int64_t acc)
{
    int64_t y;
    (void)ch;
    acc = acc < rq->acc_min ? rq->acc_min : acc;
    acc = acc > rq->acc_max ? rq->acc_max : acc;
    y = nk_round_shift(acc, rq->out_shift, rq->rounding);
    y = y < rq->act_min ? rq->act_min : y;
    y = y > rq->act_max ? rq->act_max : y;
    if (rq->abs) {
        y = y < 0 ? -y : y;
        y = y > rq->act_max ? rq->act_max : y;
    }
    return y;
}

/* w_bits, rq, out_bytes and the channels lead nk_conv_params and nk_linear_params alike (the interpreter
 * sets them once for both). */
typedef struct {
    int32_t w_bits;            /* 2, 4, 8 or 16; NK_W8_DSP1D: pre-arranged 8-bit weights (generated DSP builds) */
    nk_requant_params rq;      /* the requantisation (Scheme.c_fields) */
    int32_t out_bytes;         /* 1: int8 output; 4: int32 (wide) output */
    int32_t in_c, out_c;
    /* the geometry, in nk_pool_params' order (the interpreter sets both with one copy) */
    int32_t in_h, in_w, out_h, out_w, k_h, k_w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w;
    int32_t groups;
} nk_conv_params;

/* Conv 1-d/2-d, grouped/depthwise, zero padding. Weights (out_c, in_c/groups, k_h, k_w), packed at w_bits
 * as in model.bin. `bias` holds out_c int32 values (a model.bin bias stored at 64 bits does not fit this
 * API) or is NULL for none. A 1-d conv is in_h = k_h = out_h = stride_h = dil_h = 1, pad_h = 0. */
void nk_conv(const nk_conv_params *p, const int8_t *in, const void *weights, const int32_t *bias, void *out);

/* A conv that generated code pre-arranged (w_bits NK_CONV_W8_1D; see NK_W8_DSP1D above): in DSP builds
 * nk_conv's 1-d path alone, elsewhere nk_conv. Generated code calls it for those convs, so that a DSP build
 * whose convs all take the 1-d path links none of nk_conv's other paths. */
void nk_conv_1d(const nk_conv_params *p, const int8_t *in, const void *weights, const int32_t *bias, void *out);

/* Transposed conv 1-d/2-d, groups 1 (npukit/ops/conv_transpose.py): the same parameters, read as stride,
 * padding and dilation of the transposed conv; weights (in_c, out_c, k_h, k_w), packed at w_bits. */
void nk_conv_transpose(const nk_conv_params *p, const int8_t *in, const void *weights, const int32_t *bias,
                       void *out);

typedef struct {
    int32_t w_bits;            /* 2, 4, 8 or 16 */
    nk_requant_params rq;      /* the requantisation (Scheme.c_fields) */
    int32_t out_bytes;         /* 1: int8 output; 4: int32 (wide) output */
    int32_t in_features, out_features;
} nk_linear_params;

/* Fully connected. Weights (out_features, in_features), packed at w_bits; bias as for nk_conv. */
void nk_linear(const nk_linear_params *p, const int8_t *in, const void *weights, const int32_t *bias, void *out);

typedef struct {
    int32_t c;
    int32_t in_h, in_w, out_h, out_w, k_h, k_w, stride_h, stride_w; /* in nk_conv_params' order */
    int32_t pad_h, pad_w;      /* padding on each side, at most half the window: max pooling skips it,
                                  average pooling counts it as zeros (torch's count_include_pad) */
    nk_rounding rounding;      /* average pooling only */
} nk_pool_params;

void nk_maxpool(const nk_pool_params *p, const int8_t *in, int8_t *out);
void nk_avgpool(const nk_pool_params *p, const int8_t *in, int8_t *out);

/* The kernels below take their parameters as one struct, as conv, linear and the pools do: a caller that
 * runs many ops (runtime/'s invoke loop) then passes one pointer instead of up to eight scalars. */

/* Mean over `hw` positions of each of `c` channels. */
typedef struct {
    int32_t c, hw;
    nk_rounding rounding;
} nk_global_avgpool_params;

void nk_global_avgpool(const nk_global_avgpool_params *p, const int8_t *in, int8_t *out);

/* out = saturate(round_shift(a, a_shift) + round_shift(b, b_shift)) over `n` values; `out` may alias an
 * input. Shifts are e_in - e_out >= 0 (operands only shift right); a negative one is clamped at -55. */
typedef struct {
    int32_t n, a_shift, b_shift, act_min, act_max;
    nk_rounding rounding;
} nk_add_params;

void nk_add(const nk_add_params *p, const int8_t *a, const int8_t *b, int8_t *out);

/* Element-wise multiply (npukit/ops/mul.py): `outer` blocks of `inner` values,
 * out[i * inner + j] = saturate(round_shift(a[i * inner + j] * b[i], shift)); b of a's shape is inner = 1.
 * act_min, act_max and rounding sit where nk_add_params has them. */
typedef struct {
    int32_t outer, inner, shift, act_min, act_max;
    nk_rounding rounding;
} nk_mul_params;

void nk_mul(const nk_mul_params *p, const int8_t *a, const int8_t *b, int8_t *out);

/* One operand of a concatenation: `outer` blocks of `part_inner` values, written at `offset` within
 * output blocks of `out_inner` values, each value round_shift(x, shift). Along axis `ax` of the
 * per-sample shape: outer = prod(out_shape[:ax]), part_inner = prod(part_shape[ax:]),
 * out_inner = prod(out_shape[ax:]), offset = the sum of the earlier parts' part_inner,
 * shift = e_part - e_out >= 0. */
typedef struct {
    int32_t outer, part_inner, out_inner, offset, shift;
    nk_rounding rounding;
} nk_concat_params;

void nk_concat_part(const nk_concat_params *p, const int8_t *in, int8_t *out);

/* max(x, 0) over `n` values; `out` may alias `in`. */
void nk_relu(int32_t n, const int8_t *in, int8_t *out);

/* One part of a split: from each of `outer` blocks of `in_inner` values, the `part_inner` values at
 * `offset` (npukit/ops/slice.py). */
typedef struct {
    int32_t outer, in_inner, offset, part_inner;
} nk_slice_params;

void nk_slice(const nk_slice_params *p, const int8_t *in, int8_t *out);

/* Nearest upsampling of `c` channels of h x w by integer factors sh x sw (1-d data: h = sh = 1). */
typedef struct {
    int32_t c, h, w, sh, sw;
} nk_upsample_params;

void nk_upsample(const nk_upsample_params *p, const int8_t *in, int8_t *out);

/* Constant padding of (c, h, w) to (c, top + h + bottom, left + w + right) with `value` (ops/pad.py).
 * c, h and w lead it as they lead nk_upsample_params. */
typedef struct {
    int32_t c, h, w, top, bottom, left, right, value;
} nk_pad_params;

void nk_pad(const nk_pad_params *p, const int8_t *in, int8_t *out);

/* out = table[x + offset] over `n` values (an element-wise function by lookup table, npukit/ops/lut.py;
 * offset = 2^(B-1) for B-bit inputs); `out` may alias `in`. */
typedef struct {
    int32_t n, offset;
} nk_lut_params;

void nk_lut(const nk_lut_params *p, const int8_t *in, const int8_t *table, int8_t *out);

#endif

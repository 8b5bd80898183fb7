/* npukit kernel library: the scalar arithmetic of docs/arithmetic.md (npukit/arith.py).
 *
 * Portable C99: no floating point, and no right shift of a negative value (implementation-defined
 * before C23). Floor division by 2^s is written out, and remainders are taken on the unsigned
 * (modulo 2^64) image of the value, which C defines exactly.
 */
#include <stddef.h>

#include "npukit_kernels.h"

int64_t nk_round_shift(int64_t x, int32_t shift, nk_rounding mode)
{
    uint64_t r, half;
    int64_t q;

    if (shift <= 0) {
        /* Exact left shift x * 2^-shift. The contract never overflows here (accumulators are at most
         * 48 bits); should the product leave int64 anyway, it saturates to the int64 bounds rather than
         * wrap, which any later saturation to a narrower range turns into the contract's result. */
        const int32_t n = shift < -63 ? 63 : -shift;
        int64_t lim;
        if (x == 0) {
            return 0;
        }
        if (n == 63) {
            return x > 0 ? INT64_MAX : INT64_MIN;
        }
        lim = INT64_MAX >> n; /* 2^(63-n) - 1 */
        if (x > lim) {
            return INT64_MAX;
        }
        if (x < -lim - 1) {
            return INT64_MIN;
        }
        return x * ((int64_t)1 << n);
    }
    if (shift >= 64) {
        /* |x| <= 2^63 <= 2^(shift-1): x / 2^shift lies in [-1/2, 1/2). Only floor of a negative value
         * leaves 0 (half_up and half_even send the single tie -1/2, x = -2^63 at shift 64, to 0). */
        return (mode == NK_FLOOR && x < 0) ? -1 : 0;
    }
    /* 1 <= shift <= 63: q = floor(x / 2^shift), r = x - q * 2^shift in [0, 2^shift). */
    if (x >= 0) {
        q = x >> shift;
    } else {
        q = -((-(x + 1)) >> shift) - 1; /* floor((-y-1)/m) = -(floor(y/m) + 1) for y = -x-1 >= 0 */
    }
    r = (uint64_t)x & ((((uint64_t)1) << shift) - 1u);
    half = ((uint64_t)1) << (shift - 1);
    switch (mode) {
    case NK_FLOOR:
        return q;
    case NK_TRUNC:
        return q + (x < 0 && r != 0u);
    case NK_HALF_EVEN:
        return q + (r > half || (r == half && ((uint64_t)q & 1u) != 0u));
    case NK_HALF_UP:
    default: /* any other value behaves as NK_HALF_UP */
        return q + (r >= half);
    }
}

int64_t nk_round_div(int64_t x, int64_t n, nk_rounding mode)
{
    int64_t q, r;

    if (n <= 0) {
        return 0; /* outside the contract (n > 0); defined so that a bad call cannot trap */
    }
    if ((n & (n - 1)) == 0) { /* a power of two: the same bits as the shifter */
        int32_t s = 0;
        while (((int64_t)1 << s) < n) {
            s++;
        }
        return nk_round_shift(x, s, mode);
    }
    /* C99 division truncates; turn it into floor division with r in [0, n). n >= 3 here. */
    q = x / n;
    r = x % n;
    if (r < 0) {
        q -= 1;
        r += n;
    }
    /* 2r >= n is written r >= n - r so that it cannot overflow. */
    switch (mode) {
    case NK_FLOOR:
        return q;
    case NK_TRUNC:
        return q + (x < 0 && r != 0);
    case NK_HALF_EVEN:
        return q + (r > n - r || (r == n - r && ((uint64_t)q & 1u) != 0u));
    case NK_HALF_UP:
    default:
        return q + (r >= n - r);
    }
}

int64_t nk_sat_add64(int64_t a, int64_t b)
{
    if (b > 0 && a > INT64_MAX - b) {
        return INT64_MAX;
    }
    if (b < 0 && a < INT64_MIN - b) {
        return INT64_MIN;
    }
    return a + b;
}

int64_t nk_saturate(int64_t x, int64_t lo, int64_t hi)
{
    /* min(max(x, lo), hi), as numpy.clip: lo > hi gives hi */
    if (x < lo) {
        x = lo;
    }
    if (x > hi) {
        x = hi;
    }
    return x;
}

int32_t nk_weight(const void *weights, int32_t i, int32_t bits)
{
    const uint8_t *p = (const uint8_t *)weights;
    const uint32_t u = (uint32_t)i;

    switch (bits) {
    case 8:
        return ((const int8_t *)weights)[u];
    case 16: {
        /* little-endian whatever the host's byte order, and no alignment needed */
        const uint32_t v = (uint32_t)p[2u * (size_t)u] | ((uint32_t)p[2u * (size_t)u + 1u] << 8);
        return (int32_t)(v ^ 0x8000u) - 0x8000;
    }
    case 4:
    case 2: {
        const uint32_t b = (uint32_t)bits;
        const uint32_t k = 8u / b, mask = (1u << b) - 1u, half = 1u << (b - 1u);
        const uint32_t field = ((uint32_t)p[u / k] >> ((u % k) * b)) & mask;
        return (int32_t)(field ^ half) - (int32_t)half; /* sign-extend the two's complement field */
    }
    default:
        return 0; /* not a weight width */
    }
}

"""Property tests of the arithmetic contract (npukit.arith) against independent exact references.

The references use Python integers and fractions.Fraction only, so they share no floating-point
reasoning with the implementation under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from models_for_tests import ref_round

from npukit import arith

MODES = arith.ROUNDING_MODES
SETTINGS = settings(max_examples=200, deadline=None)

# The one float64 value where floor(v + 0.5) is wrong (see test_round_real_half_up_just_below_half).
JUST_BELOW_HALF = 0.5 - 2.0**-54


# ---------------------------------------------------------------------------------------------------
# Exact references
# ---------------------------------------------------------------------------------------------------


def ref_shift(x: int, shift: int, mode: str) -> int:
    if shift <= 0:
        return x * (1 << -shift)
    return ref_round(Fraction(x, 1 << shift), mode)


def ref_int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def as_ints(a) -> list[int]:
    """Integer-valued array (numpy or torch, any dtype) -> Python ints, refusing non-integers."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind == "f":
        assert np.all(a == np.floor(a)), f"not integer-valued: {a}"
    return [int(v) for v in a.ravel().tolist()]


# ---------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------

BIG = 2**40

# Reals below 2**52 in magnitude (the documented domain), biased towards rounding ties and their neighbours.
_ties = st.builds(lambda k, s: (k + 0.5) * 2.0**-s, st.integers(-(2**30), 2**30), st.integers(0, 20))
_near_ties = _ties.flatmap(lambda t: st.sampled_from([np.nextafter(t, -np.inf), t, np.nextafter(t, np.inf)]))
reals = st.one_of(
    st.floats(min_value=-(2.0**52) + 1, max_value=2.0**52 - 1, allow_nan=False, allow_infinity=False),
    st.floats(min_value=-4, max_value=4, allow_nan=False),
    _ties,
    _near_ties.map(float),
    st.integers(-(2**52) + 1, 2**52 - 1).map(float),
)

shifts = st.integers(-8, 20)


@st.composite
def shift_cases(draw):
    """(xs, shift): integers below 2**40 with many exact and near ties for the chosen shift."""
    shift = draw(shifts)
    plain = st.integers(-BIG + 1, BIG - 1)
    if shift > 0:
        half = 1 << (shift - 1)
        k = st.integers(-(BIG >> shift) + 1, (BIG >> shift) - 1)
        tie = st.builds(lambda k, d: (k << shift) + half + d, k, st.integers(-1, 1))
        elem = st.one_of(plain, tie, st.integers(-(1 << shift), 1 << shift))
    else:
        elem = plain
    xs = draw(st.lists(elem, min_size=1, max_size=8))
    return xs, shift


divisors = st.one_of(st.integers(1, 300), st.sampled_from([1 << i for i in range(9)]))


@st.composite
def div_cases(draw):
    n = draw(divisors)
    k = st.integers(-(BIG // n) + 1, (BIG // n) - 1)
    near_half = st.builds(lambda k, d: k * n + n // 2 + d, k, st.integers(-1, 1))
    elem = st.one_of(st.integers(-BIG + 1, BIG - 1), near_half, st.integers(-3 * n, 3 * n))
    xs = draw(st.lists(elem, min_size=1, max_size=8))
    assume(all(abs(x) < BIG for x in xs))
    return xs, n


# ---------------------------------------------------------------------------------------------------
# round_real
# ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(v=reals, mode=st.sampled_from(MODES))
@example(v=2.5, mode="half_even")
@example(v=-2.5, mode="half_even")
@example(v=-2.5, mode="half_up")
@example(v=-0.5, mode="half_up")
@example(v=-0.5, mode="trunc")
@example(v=2.0**52 - 0.5, mode="half_up")
@example(v=-(2.0**52) + 0.5, mode="half_even")
def test_round_real_matches_exact_reference(v, mode):
    want = ref_round(Fraction(v), mode)
    got_np = arith.round_real(np.array([v], dtype=np.float64), mode)
    got_torch = arith.round_real(torch.tensor([v], dtype=torch.float64), mode)
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float64
    assert isinstance(got_torch, torch.Tensor) and got_torch.dtype == torch.float64
    assert as_ints(got_np) == [want]
    assert as_ints(got_torch) == [want]


@SETTINGS
@given(vs=st.lists(reals, min_size=1, max_size=8), mode=st.sampled_from(MODES))
def test_round_real_arrays_elementwise(vs, mode):
    want = [ref_round(Fraction(v), mode) for v in vs]
    assert as_ints(arith.round_real(np.array(vs, dtype=np.float64), mode)) == want
    assert as_ints(arith.round_real(torch.tensor(vs, dtype=torch.float64), mode)) == want


@pytest.mark.parametrize("xp", ["numpy", "torch"])
def test_round_real_half_up_just_below_half(xp):
    v = np.array([JUST_BELOW_HALF]) if xp == "numpy" else torch.tensor([JUST_BELOW_HALF], dtype=torch.float64)
    assert as_ints(arith.round_real(v, "half_up")) == [0]


def test_round_real_known_values():
    v = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.7, 0.7])
    assert as_ints(arith.round_real(v, "half_up")) == [-2, -1, 0, 1, 2, 3, -1, 1]
    assert as_ints(arith.round_real(v, "half_even")) == [-2, -2, 0, 0, 2, 2, -1, 1]
    assert as_ints(arith.round_real(v, "floor")) == [-3, -2, -1, 0, 1, 2, -1, 0]
    assert as_ints(arith.round_real(v, "trunc")) == [-2, -1, 0, 0, 1, 2, 0, 0]


@pytest.mark.parametrize("fn", [lambda m: arith.round_real(np.array([1.5]), m),
                                lambda m: arith.round_div(np.array([7]), 3, m),
                                lambda m: arith.round_shift(np.array([7]), 2, m)])
def test_unknown_rounding_mode_rejected(fn):
    with pytest.raises(ValueError, match="banana"):
        fn("banana")


# ---------------------------------------------------------------------------------------------------
# round_shift
# ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(case=shift_cases(), mode=st.sampled_from(MODES))
@example(case=([1, 2, 3, -1, -2, -3, 5, -5, 7, -7], 1), mode="half_up")
@example(case=([1, 2, 3, -1, -2, -3, 5, -5, 7, -7], 1), mode="half_even")
@example(case=([BIG - 1, -BIG + 1], 20), mode="half_even")
@example(case=([BIG - 1, -BIG + 1], -8), mode="floor")
def test_round_shift_matches_integer_reference(case, mode):
    xs, shift = case
    want = [ref_shift(x, shift, mode) for x in xs]
    got_i64 = arith.round_shift(np.array(xs, dtype=np.int64), shift, mode)
    got_f64 = arith.round_shift(np.array(xs, dtype=np.float64), shift, mode)
    got_t64 = arith.round_shift(torch.tensor(xs, dtype=torch.float64), shift, mode)
    assert as_ints(got_i64) == want
    assert as_ints(got_f64) == want
    assert as_ints(got_t64) == want
    # identical bits across carriers, not just equal after conversion
    assert np.array_equal(np.asarray(got_i64, dtype=np.float64), got_f64)
    assert np.array_equal(got_t64.numpy(), got_f64)
    assert got_t64.dtype == torch.float64


@SETTINGS
@given(x=st.integers(-BIG + 1, BIG - 1), shift=shifts, mode=st.sampled_from(MODES))
def test_round_shift_scalar_carriers(x, shift, mode):
    want = ref_shift(x, shift, mode)
    assert int(arith.round_shift(x, shift, mode)) == want
    assert int(arith.round_shift(float(x), shift, mode)) == want
    assert int(arith.round_shift(np.int64(x), shift, mode)) == want


@SETTINGS
@given(x=st.integers(-BIG + 1, BIG - 1), shift=st.integers(1, 20))
def test_round_shift_mode_relations(x, shift):
    """floor <= half modes <= floor + 1, trunc between floor and ceil, all within 1 of each other."""
    r = {m: int(arith.round_shift(np.array([x]), shift, m)[0]) for m in MODES}
    exact = Fraction(x, 1 << shift)
    assert r["floor"] <= exact < r["floor"] + 1
    assert abs(r["trunc"]) <= abs(exact) < abs(r["trunc"]) + 1
    for m in ("half_up", "half_even"):
        assert abs(r[m] - exact) <= Fraction(1, 2)


# ---------------------------------------------------------------------------------------------------
# round_div
# ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(case=div_cases(), mode=st.sampled_from(MODES))
@example(case=([3, -3, 9, -9, 15, -15, 1, -1], 6), mode="half_even")
@example(case=([3, -3, 9, -9, 15, -15, 1, -1], 6), mode="half_up")
@example(case=([BIG - 1, -BIG + 1, BIG - 150, -BIG + 150], 300), mode="half_even")
@example(case=([BIG - 1, -BIG + 1], 299), mode="half_up")
@example(case=([5, -5, 7, -7], 1), mode="trunc")
def test_round_div_matches_fraction_reference(case, mode):
    xs, n = case
    want = [ref_round(Fraction(x, n), mode) for x in xs]
    got_i64 = arith.round_div(np.array(xs, dtype=np.int64), n, mode)
    got_f64 = arith.round_div(np.array(xs, dtype=np.float64), n, mode)
    got_t64 = arith.round_div(torch.tensor(xs, dtype=torch.float64), n, mode)
    assert as_ints(got_i64) == want
    assert as_ints(got_f64) == want
    assert as_ints(got_t64) == want
    assert got_t64.dtype == torch.float64


@SETTINGS
@given(x=st.integers(-BIG + 1, BIG - 1), k=st.integers(0, 8), mode=st.sampled_from(MODES))
def test_round_div_power_of_two_is_the_shifter(x, k, mode):
    n = 1 << k
    assert int(arith.round_div(np.array([x]), n, mode)[0]) == int(arith.round_shift(np.array([x]), k, mode)[0])
    assert int(arith.round_div(np.array([x]), n, mode)[0]) == ref_round(Fraction(x, n), mode)


# ---------------------------------------------------------------------------------------------------
# saturate, requantize, quantize
# ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(xs=st.lists(st.integers(-BIG, BIG), min_size=1, max_size=8),
       bounds=st.tuples(st.integers(-(2**20), 2**20), st.integers(-(2**20), 2**20)).map(sorted))
def test_saturate(xs, bounds):
    lo, hi = bounds
    want = [min(max(x, lo), hi) for x in xs]
    assert as_ints(arith.saturate(np.array(xs, dtype=np.int64), lo, hi)) == want
    assert as_ints(arith.saturate(np.array(xs, dtype=np.float64), lo, hi)) == want
    assert as_ints(arith.saturate(torch.tensor(xs, dtype=torch.float64), lo, hi)) == want


@SETTINGS
@given(case=shift_cases(), bits=st.integers(2, 16), relu=st.booleans(), mode=st.sampled_from(MODES))
def test_requantize(case, bits, relu, mode):
    acc, shift = case
    lo, hi = ref_int_range(bits)
    lo = 0 if relu else lo
    want = [min(max(ref_shift(a, shift, mode), lo), hi) for a in acc]
    assert as_ints(arith.requantize(np.array(acc, dtype=np.int64), shift, bits, mode, relu)) == want
    assert as_ints(arith.requantize(np.array(acc, dtype=np.float64), shift, bits, mode, relu)) == want
    assert as_ints(arith.requantize(torch.tensor(acc, dtype=torch.float64), shift, bits, mode, relu)) == want


@SETTINGS
@given(real=st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
                     .filter(lambda r: r == 0 or abs(r) >= 2.0**-1000), min_size=1, max_size=8),
       exp=st.integers(-20, 20), bits=st.integers(2, 16), relu=st.booleans(), mode=st.sampled_from(MODES))
@example(real=[0.5, -0.5, 1.5, -1.5, 127.5, -128.5, 127.49, 1000.0, -1000.0], exp=0, bits=8, relu=False,
         mode="half_up")
@example(real=[0.5, -0.5, 1.5, -1.5, 127.5, -128.5, 127.49, 1000.0, -1000.0], exp=0, bits=8, relu=True,
         mode="half_even")
def test_quantize(real, exp, bits, relu, mode):
    # (subnormal reals are outside the domain: scaling them by 2**exp is not exact in float64)
    lo, hi = ref_int_range(bits)
    lo = 0 if relu else lo
    want = [min(max(ref_round(Fraction(r) * Fraction(2) ** exp, mode), lo), hi) for r in real]
    assert as_ints(arith.quantize(np.array(real, dtype=np.float64), exp, bits, mode, relu)) == want
    assert as_ints(arith.quantize(torch.tensor(real, dtype=torch.float64), exp, bits, mode, relu)) == want


def _near_halves32(draw_k: int, side: int) -> np.float32:
    """A float32 at, or one float32 step either side of, k + 1/2: where floor(v + 0.5) could go wrong."""
    v = np.float32(draw_k + 0.5)
    return v if side == 0 else np.nextafter(v, np.float32(np.inf * side))


@SETTINGS
@given(real=st.lists(st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),
                               st.builds(_near_halves32, st.integers(-(2**24), 2**24), st.sampled_from([-1, 0, 1]))),
                     min_size=1, max_size=8),
       exp=st.integers(-32, 32), bits=st.integers(2, 32), relu=st.booleans(), half=st.booleans())
@example(real=[0.49999997, -0.50000006, 0.5, -0.5, 1.5, -1.5, 2.5, 3.4028235e38, -3.4028235e38, 1e-45], exp=0,
         bits=8, relu=False, half=False)
def test_quantize_float32_in_place_is_half_up(real, exp, bits, relu, half):
    """`quantize(out=True)` of float32 (and float16) data rounds half up as floor(v + 0.5) in float64:
    exact for these inputs (its comment says why), on every value including the float32 steps either
    side of a tie, subnormals and the largest magnitudes."""
    x = np.array(real, dtype=np.float32)
    if half:
        with np.errstate(over="ignore"):
            x = x.astype(np.float16)
        x = x[np.isfinite(x)]
        if not x.size:
            return
    lo, hi = ref_int_range(bits)
    lo = 0 if relu else lo
    want = [min(max(ref_round(Fraction(float(r)) * Fraction(2) ** exp, "half_up"), lo), hi) for r in x]
    assert as_ints(arith.quantize(x, exp, bits, "half_up", relu, out=True)) == want
    assert as_ints(arith.quantize(x.astype(np.float64), exp, bits, "half_up", relu, out=True)) == want


# ---------------------------------------------------------------------------------------------------
# int_range / act_range
# ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(bits=st.integers(1, 64))
def test_int_range(bits):
    lo, hi = arith.int_range(bits)
    assert (lo, hi) == ref_int_range(bits)
    assert hi - lo + 1 == 2**bits
    ulo, uhi = arith.int_range(bits, signed=False)
    assert (ulo, uhi) == (0, 2**bits - 1)
    assert arith.act_range(bits, relu=False) == (lo, hi)
    assert arith.act_range(bits, relu=True) == (0, hi)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_int_range_matches_numpy_dtypes(dtype):
    info = np.iinfo(dtype)
    assert arith.int_range(info.bits) == (info.min, info.max)
    uinfo = np.iinfo(np.dtype(dtype).str.replace("i", "u"))
    assert arith.int_range(uinfo.bits, signed=False) == (uinfo.min, uinfo.max)


# ---------------------------------------------------------------------------------------------------
# fit_exponent
# ---------------------------------------------------------------------------------------------------


def _fits(max_abs: float, e: int, bits: int) -> bool:
    """max_abs * 2**e rounded half up is at most the signed maximum."""
    return ref_round(Fraction(max_abs) * Fraction(2) ** e, "half_up") <= 2 ** (bits - 1) - 1


def ref_fit_exponent(max_abs: float, bits: int) -> int:
    f = Fraction(max_abs)
    e = (bits - 1) - (f.numerator.bit_length() - f.denominator.bit_length())  # within 2 of the answer
    while not _fits(max_abs, e, bits):
        e -= 1
    while _fits(max_abs, e + 1, bits):
        e += 1
    return max(arith.MIN_EXP, min(arith.MAX_EXP, e))


_powers = st.builds(lambda k, s: 2.0**k * s, st.integers(-40, 40), st.sampled_from([1.0, 0.75, 1.5]))
_limits = st.builds(lambda b, k, d: ((1 << (b - 1)) - 0.5) * 2.0**k + d * 2.0 ** (k - 40),
                    st.integers(2, 16), st.integers(-30, 30), st.integers(-2, 2))
max_abs_values = st.one_of(st.floats(min_value=1e-280, max_value=1e300), _powers, _limits,
                           st.floats(min_value=1e-12, max_value=1e12))


@SETTINGS
@given(max_abs=max_abs_values, bits=st.integers(2, 32))
@example(max_abs=127.5, bits=8)
@example(max_abs=127.49999999999999, bits=8)
@example(max_abs=1.0, bits=8)
@example(max_abs=2.0**-40, bits=8)
@example(max_abs=2.0**40, bits=8)
def test_fit_exponent(max_abs, bits):
    e = arith.fit_exponent(max_abs, bits)
    assert isinstance(e, int)
    assert arith.MIN_EXP <= e <= arith.MAX_EXP
    assert e == ref_fit_exponent(max_abs, bits)
    # the stated contract, checked directly as well
    if e > arith.MIN_EXP or _fits(max_abs, arith.MIN_EXP, bits):
        assert _fits(max_abs, e, bits)
    if e < arith.MAX_EXP:
        assert not _fits(max_abs, e + 1, bits)
    # and through the implementation's own quantizer
    if _fits(max_abs, e, bits):
        q = arith.quantize(np.array([max_abs, -max_abs]), e, bits, "half_up")
        lo, hi = arith.int_range(bits)
        assert lo <= q[1] <= q[0] <= hi


@pytest.mark.parametrize("max_abs", [0.0, -0.0, -1.0, math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("bits", [2, 8, 16, 32])
def test_fit_exponent_degenerate(max_abs, bits):
    assert arith.fit_exponent(max_abs, bits) == bits - 1


def test_fit_exponent_clamps():
    assert arith.fit_exponent(1e-30, 8) == arith.MAX_EXP
    assert arith.fit_exponent(1e-280, 32) == arith.MAX_EXP
    assert arith.fit_exponent(1e30, 8) == arith.MIN_EXP
    assert arith.fit_exponent(1e300, 8) == arith.MIN_EXP


@pytest.mark.parametrize(("max_abs", "bits"), [(1e-306, 8), (1e-310, 8), (5e-324, 8), (1e-300, 32)])
def test_fit_exponent_tiny_values_clamp(max_abs, bits):
    assert arith.fit_exponent(max_abs, bits) == arith.MAX_EXP


# ---------------------------------------------------------------------------------------------------
# accumulator_bound and the exact-carrier constants
# ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(fan_in=st.integers(1, 64), x_bits=st.integers(2, 16), w_max=st.integers(0, 2**15),
       b_max=st.integers(0, 2**31), seed=st.integers(0, 2**32 - 1))
@example(fan_in=1, x_bits=8, w_max=0, b_max=0, seed=0)
@example(fan_in=64, x_bits=16, w_max=2**15, b_max=2**31, seed=1)
def test_accumulator_bound(fan_in, x_bits, w_max, b_max, seed):
    bound = arith.accumulator_bound(fan_in, x_bits, w_max, b_max)
    assert bound == fan_in * 2 ** (x_bits - 1) * w_max + b_max
    lo, hi = ref_int_range(x_bits)
    # attained: every input at the most negative value, every weight at the largest magnitude
    worst = sum(lo * w_max for _ in range(fan_in)) - b_max
    assert abs(worst) == bound
    # never exceeded by admissible sums (random ones, and ones at the range ends)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        xs = [int(v) for v in rng.integers(lo, hi, size=fan_in, endpoint=True)]
        ws = [int(v) for v in rng.integers(-w_max, w_max, size=fan_in, endpoint=True)]
        if rng.random() < 0.5:
            xs = [lo if w >= 0 else hi for w in ws]
        b = int(rng.integers(-b_max, b_max, endpoint=True))
        acc = sum(x * w for x, w in zip(xs, ws, strict=True)) + b
        assert abs(acc) <= bound
        # the carrier rule: below EXACT_FLOAT32 float32 sums every partial sum exactly, in any order
        if bound < arith.EXACT_FLOAT32:
            prods = (np.array(xs, dtype=np.float32) * np.array(ws, dtype=np.float32))[rng.permutation(fan_in)]
            total = np.float32(b)
            for p in prods:
                total = np.float32(total + p)
            assert int(total) == acc


def test_accumulator_bound_default_bias():
    assert arith.accumulator_bound(10, 8, 127) == 10 * 128 * 127


def test_exact_float_limits():
    assert arith.EXACT_FLOAT32 == 2**24 and arith.EXACT_FLOAT64 == 2**53
    assert int(np.float32(arith.EXACT_FLOAT32)) == 2**24
    assert int(np.float32(arith.EXACT_FLOAT32 + 1)) != 2**24 + 1
    assert int(np.float64(arith.EXACT_FLOAT64 + 1)) != 2**53 + 1

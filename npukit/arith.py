"""The arithmetic contract: the one definition of npukit's integer arithmetic.

Every backend computes with these functions (the torch fake-quant path and the numpy engine call them
directly; ONNX export and the C kernels mirror them, and differential tests hold them equal).
`docs/arithmetic.md` is the prose version of this module.

Values are integers carried either in integer numpy arrays or in *integer-valued* float arrays
(numpy float64 or torch tensors). Float64 represents every integer below 2**53 exactly, and every
operation here (power-of-two scaling, adding 0.5, floor, clip) is exact on such values, so the float
and integer carriers give the same bits. Callers keep magnitudes below 2**52 (accumulators are at most
48 bits wide, see `targets.TargetProfile.accumulator_bits`).
"""

from __future__ import annotations

import math

import numpy as np

from .rounding import ROUNDING_MODES, RoundingMode  # noqa: F401  (re-exported: arith is their home for users)

MIN_EXP, MAX_EXP = -32, 32  # exponents outside this range mean a dead or exploding tensor

try:  # np.clip's ufunc itself: np.clip's Python layers cost more than the work on a batch-1 array
    from numpy._core.umath import clip as clip_ufunc
except ImportError:  # numpy < 2
    from numpy.core.umath import clip as clip_ufunc


def _xp(x):
    """numpy or torch, whichever owns `x`, so one definition serves both."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    return np


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Inclusive range of a `bits`-wide integer."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def act_range(bits: int, relu: bool) -> tuple[int, int]:
    """Range an activation is saturated to: ReLU fused into the saturation raises the floor to 0."""
    lo, hi = int_range(bits)
    return (0 if relu else lo), hi


def _check_mode(mode: str) -> None:
    if mode not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding mode {mode!r}; expected one of {ROUNDING_MODES}")


def round_real(v, mode: RoundingMode):
    """Round real values to integers (same array type back, integer-valued)."""
    xp = _xp(v)
    if mode == "half_up":
        # floor(v + 0.5) would round the sum itself for v just below 0.5 (0.5 - 2**-54 -> 1); the
        # fractional part v - floor(v) is always exact.
        f = xp.floor(v)
        return f + ((v - f) >= 0.5)
    if mode == "half_even":
        return xp.round(v)  # both libraries round half to even
    if mode == "floor":
        return xp.floor(v)
    if mode == "trunc":
        return xp.trunc(v)
    raise ValueError(f"unknown rounding mode {mode!r}; expected one of {ROUNDING_MODES}")


def _as_float(x):
    """Integer carriers -> float64 (exact below 2**53), so every mode below has one float definition."""
    if isinstance(x, np.ndarray | np.integer | int) and np.asarray(x).dtype.kind in "iu":
        return np.asarray(x, dtype=np.float64)
    if _xp(x) is not np and not x.is_floating_point():
        import torch

        return x.to(torch.float64)
    return x


def round_shift(x, shift: int, mode: RoundingMode, out=None):
    """x / 2**shift rounded by `mode`: the requantising arithmetic shift.

    `shift` <= 0 is an exact left shift. x must be integer-valued. `out` (a float array of x's shape,
    may be x itself) receives the result without new large temporaries on the half_up path.
    """
    _check_mode(mode)
    x = _as_float(x)
    xp = _xp(x)
    if shift <= 0:
        return xp.multiply(x, float(2 ** (-shift)), out=out)
    v = xp.multiply(x, 2.0**-shift, out=out)
    if mode == "half_up":
        # Hot path (every requantisation). v has at most `shift` fraction bits and |x| < 2**52, so
        # v + 0.5 is exact here, unlike for arbitrary reals in round_real.
        return xp.floor(xp.add(v, 0.5, out=out), out=out)
    return round_real(v, mode)


def round_div(x, n: int, mode: RoundingMode):
    """x / n rounded by `mode`, for an integer divisor n > 0 (average pooling).

    Exact: for |x| * n < 2**52 the float quotient never crosses an integer boundary wrongly
    (the gap to the next integer is at least 1/n, far above the rounding error).
    """
    _check_mode(mode)
    x = _as_float(x)
    xp = _xp(x)
    if n & (n - 1) == 0:  # power of two: the same bits as the shifter
        return round_shift(x, n.bit_length() - 1, mode)
    if mode == "half_up":
        return xp.floor((2 * x + n) / (2 * n))
    if mode == "floor":
        return xp.floor(x / n)
    if mode == "trunc":
        return xp.trunc(x / n)
    if mode == "half_even":
        q = xp.floor(x / n)
        r2 = 2 * (x - q * n)  # twice the remainder, in [0, 2n)
        up = (r2 > n) | ((r2 == n) & (q % 2 == 1))
        return q + up
    raise ValueError(f"unknown rounding mode {mode!r}; expected one of {ROUNDING_MODES}")


def saturate(x, lo: int, hi: int, out=None):
    """Clamp to [lo, hi] (the hardware saturates; it never wraps)."""
    if type(x) is np.ndarray and x.dtype.kind == "f":
        return clip_ufunc(x, lo, hi, out=out)  # minimum(maximum(x, lo), hi) in one call
    return _xp(x).clip(x, lo, hi, out=out)


def requantize(acc, shift: int, bits: int, mode: RoundingMode, relu: bool = False, out=None):
    """Accumulator -> activation: rounding shift, then saturation (ReLU folds into the lower bound).

    `out` (may be `acc`) takes the result in place: large engine batches avoid fresh temporaries.
    """
    lo, hi = act_range(bits, relu)
    q = round_shift(acc, shift, mode, out=out)
    return saturate(q, lo, hi, out=q if out is not None else None)


def quantize(real, exp: int, bits: int, mode: RoundingMode, relu: bool = False, out: bool = False):
    """Real values -> integers at exponent `exp` (real = q * 2**-exp), saturated to `bits`.

    `out=True` (numpy float arrays): the same values computed in place in the scaled copy, with fewer
    temporaries (the engine's input quantisation at batch 1 is a handful of numpy calls)."""
    lo, hi = act_range(bits, relu)
    if out and type(real) is np.ndarray and mode == "half_up" and real.dtype in NARROW_FLOATS:
        # v = real * 2**exp is exact in float64 and has at most 24 significant bits, so floor(v + 0.5) is
        # half up although v + 0.5 may round: |v| < 1/2 gives v + 0.5 in [2**-26, 1 - 2**-25] (floor 0);
        # 1/2 <= |v| < 2**52 keeps v + 0.5 within 53 significant bits (exact); from 2**52 on v is an
        # integer, v + 0.5 rounds to v or v + 1, and the clip (|bounds| < 2**32) gives the same for both.
        # Six numpy calls where float64 data takes nine.
        v = np.multiply(real, 2.0**exp, dtype=np.float64)
        return clip_ufunc(np.floor(np.add(v, 0.5, out=v), out=v), float(lo), float(hi), out=v)
    scaled = real * (2.0**exp)
    if out and type(scaled) is np.ndarray and mode == "half_up":
        f = np.floor(scaled)  # round_real's half up, in place: f + (v - f >= 0.5)
        np.add(f, np.subtract(scaled, f, out=scaled) >= 0.5, out=f)
        return saturate(f, float(lo), float(hi), out=f)  # float bounds: ufuncs convert Python ints slowly
    return saturate(round_real(scaled, mode), lo, hi, out=scaled if out and type(scaled) is np.ndarray else None)


NARROW_FLOATS = (np.dtype(np.float32), np.dtype(np.float16))  # `quantize`'s floor(v + 0.5) is exact for these


def fit_exponent(max_abs: float, bits: int) -> int:
    """Largest exponent at which `max_abs` still fits in a signed `bits`-wide integer after rounding.

    A tensor whose observed range is zero gets `bits - 1`: any exponent represents it, and this one
    keeps shifts small.
    """
    if not math.isfinite(max_abs) or max_abs <= 0:
        return bits - 1
    limit = (1 << (bits - 1)) - 0.5  # values up to hi + 0.5 round (half up) to at most hi
    # Settle the clamped ends first: no overflow for tiny or huge max_abs below.
    if max_abs * 2.0**MAX_EXP < limit:
        return MAX_EXP
    if max_abs * 2.0**MIN_EXP >= limit:
        return MIN_EXP
    e = math.floor(math.log2(limit / max_abs))
    # log2 can be off by one ulp at exact powers of two; settle it with exact arithmetic.
    while max_abs * 2.0**e >= limit:
        e -= 1
    while max_abs * 2.0 ** (e + 1) < limit:
        e += 1
    return max(MIN_EXP, min(MAX_EXP, e))


def accumulator_bound(fan_in: int, x_bits: int, w_max_abs: int, bias_max_abs: int = 0) -> int:
    """Largest |partial sum| a MAC layer can reach: decides which exact carrier is safe."""
    return fan_in * (1 << (x_bits - 1)) * w_max_abs + bias_max_abs


# Largest integer magnitude each float carrier holds exactly, with every partial sum.
EXACT_FLOAT32 = 1 << 24
EXACT_FLOAT64 = 1 << 53

"""Requantisation schemes: how a target turns exponents into each node's integer parameters.

A profile names its scheme (`scheme: pow2`). The scheme is consulted once, when a QAT module becomes an
IR node (and by the QAT forward itself, so training computes the same numbers): it chooses the bias
exponent and the allowed output exponents, and computes the node's requantisation attributes
(`bias_shift`, `out_shift`, `act_min`, `act_max`, `acc_bits`, `rounding`), which are stored in the node.
From then on every backend reads only those attributes: `requantize` here is the one numpy/torch
definition, `onnx_requantize` its ONNX spelling, and `nk_requant` in `npukit_kernels.h` its C inline.

- `pow2`: today's venus contract. acc = sum(x*w) + bias * 2**bias_shift, saturated to the accumulator,
  y = saturate(round_shift(acc, out_shift), act_min, act_max). Exponents are free; bias at its own
  exponent, at most the accumulator's.
- `max78000`: the same integer pipeline with the chip's constraints: an 8-bit bias added as b * 128
  (bias_shift 7: the bias exponent is e_acc - 7), output shift s = 7 - out_shift in [-15, 15], round half
  up, average pooling truncated toward zero, element-wise operands sharing one exponent.

A per-channel multiplier scheme (TFLite's int32 multiplier + shift) adds its arrays as node params and
its own `requantize`/`onnx_requantize`/C branch; op files call only the methods below.
`docs/arithmetic.md` states every scheme.
"""

from __future__ import annotations

from typing import ClassVar

from .errors import NpukitError

# The attributes a scheme stores in a MAC node (conv, linear); kernels read only these and the params.
MAC_RQ_ATTRS = {"bias_shift": "int", "out_shift": "int", "act_min": "int", "act_max": "int", "abs": "bool",
                "clamp": "bool", "acc_bits": "int", "rounding": "str"}


class Scheme:
    name: ClassVar[str]
    ties_eltwise_exponents: ClassVar[bool] = False  # element-wise operands must share one exponent

    # --- exponent choices (QAT side and conversion) --------------------------------------------------
    def bias_exp(self, bias_bits: int, e_acc: int, b_max_abs: float) -> int:
        """The bias exponent: as fine as the bias bits allow, never finer than the accumulator."""
        from . import arith  # lazy: profiles load without numpy

        return min(e_acc, arith.fit_exponent(b_max_abs, bias_bits))

    def out_exp(self, e_acc: int, wanted: int) -> int:
        """The output exponent of a MAC layer given the one its observer wants."""
        return wanted

    def shared_exp(self, in_exps: list[int], wanted: int) -> int:
        """Output exponent of an element-wise add: operands are only ever shifted right."""
        return min(wanted, *in_exps)

    # --- node attributes -------------------------------------------------------------------------
    def mac_attrs(self, *, e_acc: int, b_exp: int, e_out: int, out_bits: int, relu: bool, wide: bool,
                  acc_bits: int, rounding: str, absolute: bool = False,
                  clamp: tuple[float, float] | None = None) -> dict:
        """The requantisation attributes of a conv/linear node (see the module doc). `absolute`: an Abs
        activation, y = min(|y|, act_max) after the output saturation (MAX7800x's Abs). `clamp`: real
        bounds (ReLU6, Hardtanh, clamp) fused into the output saturation, on the output grid: the largest
        integer <= hi * 2**e_out and the smallest >= lo * 2**e_out (exact when the bounds are on it)."""
        import math

        from . import arith  # lazy: profiles load without numpy

        act_lo, act_hi = arith.int_range(out_bits) if wide else arith.act_range(out_bits, relu)
        natural = (act_lo, act_hi)
        if clamp is not None and not wide:
            lo, hi = clamp
            act_lo = max(act_lo, math.ceil(lo * 2.0**e_out)) if math.isfinite(lo) else act_lo
            act_hi = min(act_hi, math.floor(hi * 2.0**e_out)) if math.isfinite(hi) else act_hi
            act_hi = max(act_hi, act_lo)
        return {"bias_shift": e_acc - b_exp, "out_shift": 0 if wide else e_acc - e_out, "act_min": act_lo,
                "act_max": act_hi, "abs": bool(absolute and not wide), "clamp": (act_lo, act_hi) != natural,
                "acc_bits": acc_bits, "rounding": rounding}

    def mac_problems(self, attrs: dict) -> list[str]:
        """Why these attributes are outside what the chip can compute (empty when fine)."""
        return []

    # --- the arithmetic ----------------------------------------------------------------------------
    # Every method gets the node's attributes and its params (None on the QAT side, which has no per-channel
    # arrays yet): a per-channel scheme reads its multipliers and shifts from the params, indexed along
    # `channel_axis` of the accumulator (0 in the engine, whose GEMM leaves channels first; 1 in torch and
    # ONNX, batch first). pow2 and max78000 have per-layer values only.
    def requantize(self, acc, attrs: dict, bound: int | None = None, out=None, *, params: dict | None = None,
                   channel_axis: int = 0):
        """Accumulator with the bias added (integer-valued, numpy or torch) -> output integers.

        `bound` (max |acc|) skips the accumulator saturation when it cannot trigger; `out` (may be `acc`)
        takes the result in place.
        """
        from . import arith  # lazy: profiles load without numpy

        lo, hi = arith.int_range(attrs["acc_bits"])
        if bound is None or bound > hi:
            acc = arith.saturate(acc, lo, hi, out=out)
        q = arith.round_shift(acc, attrs["out_shift"], attrs["rounding"], out=out)
        q = arith.saturate(q, attrs["act_min"], attrs["act_max"], out=q if out is not None else None)
        if attrs.get("abs"):  # |y|, then the top of the range again: |-128| is 128
            q = arith.saturate(abs(q), 0, attrs["act_max"])
        return q

    def bias_term(self, bias, attrs: dict, params: dict | None = None):
        """The bias in accumulator units (float64 numpy, exact: bias_shift >= 0 by construction)."""
        import numpy as np

        return np.asarray(bias, np.float64) * 2.0 ** attrs["bias_shift"]

    def onnx_requantize(self, b, acc: str, bias: str, attrs: dict, params: dict | None = None) -> str:
        """ONNX nodes computing the bias add and `requantize` on integer-valued double tensors: `acc`
        (batch, channels, ...) and `bias` (the integer bias, already shaped to broadcast over it)."""
        from . import arith  # lazy: profiles load without numpy

        acc = b.op("Add", [acc, b.op("Mul", [bias, b.const(2.0 ** attrs["bias_shift"])])])
        acc = b.saturate(acc, *arith.int_range(attrs["acc_bits"]))
        q = b.saturate(b.round_shift(acc, attrs["out_shift"], attrs["rounding"]), attrs["act_min"], attrs["act_max"])
        return b.saturate(b.op("Abs", [q]), 0, attrs["act_max"]) if attrs.get("abs") else q

    def c_fields(self, attrs: dict, params: dict | None = None, b=None) -> dict:
        """The fields (C literals) of the `nk_requant_params` that `nk_requant` in npukit_kernels.h reads.
        `b` (the codegen's CBuilder) can emit const arrays for per-channel values."""
        from . import arith  # lazy: profiles load without numpy
        from .codegen import ROUNDING_C

        lo, hi = arith.int_range(attrs["acc_bits"])
        return {"bias_shift": attrs["bias_shift"], "out_shift": attrs["out_shift"], "acc_min": f"{lo}LL",
                "acc_max": f"{hi}LL", "act_min": attrs["act_min"], "act_max": attrs["act_max"],
                "rounding": ROUNDING_C[attrs["rounding"]], "abs": int(bool(attrs.get("abs")))}


class Pow2(Scheme):
    name = "pow2"


class Max78000(Scheme):
    """ADI MAX78000/MAX78002: docs/arithmetic.md, "The max78000 scheme"."""

    name = "max78000"
    ties_eltwise_exponents = True  # the chip adds operands unshifted
    BIAS_SHIFT = 7  # the bias joins the accumulator as b * 128
    SHIFT_RANGE = (-15, 15)  # the per-layer output shift s (including the implicit 8 - q)

    def bias_exp(self, bias_bits, e_acc, b_max_abs):
        return e_acc - self.BIAS_SHIFT  # the chip has no other bias scale: the 8-bit bias saturates

    def out_exp(self, e_acc, wanted):
        # out_shift = 7 - s with s in [-15, 15]: e_out in [e_acc - 22, e_acc + 8]
        lo, hi = self.SHIFT_RANGE
        return max(e_acc - (self.BIAS_SHIFT - lo), min(e_acc - (self.BIAS_SHIFT - hi), wanted))

    def shared_exp(self, in_exps, wanted):
        return min(in_exps)  # no shift on the chip: the QAT side ties operand exponents

    def mac_problems(self, attrs):
        out = []
        if attrs["bias_shift"] != self.BIAS_SHIFT:
            out.append(f"bias shift {attrs['bias_shift']}, but the chip adds the bias as b * 128 (shift 7)")
        s = self.BIAS_SHIFT - attrs["out_shift"]
        if attrs["act_max"] <= 127 and not self.SHIFT_RANGE[0] <= s <= self.SHIFT_RANGE[1]:
            out.append(f"output shift {s} is outside [-15, 15]")
        return out


SCHEMES: dict[str, Scheme] = {s.name: s for s in (Pow2(), Max78000())}


def get_scheme(name: str) -> Scheme:
    try:
        return SCHEMES[name]
    except KeyError:
        raise NpukitError(f"unknown requantisation scheme {name!r}; known: {', '.join(SCHEMES)}") from None

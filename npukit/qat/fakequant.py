"""Torch side of the arithmetic contract: straight-through estimators, range observers, the QAT module base.

QAT modules pass real-valued tensors that are exactly q * 2**-exp and compute internally in integer
units, calling `npukit.arith` for every rounding and saturation, so eval mode reproduces the integer
engine bit for bit. Gradients flow through a smooth surrogate of each rounding (the straight-through
estimator); the forward value is always the exact integer result.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn

from .. import arith
from ..schemes import Scheme, get_scheme
from ..targets import TargetProfile

if TYPE_CHECKING:
    from ..ir import Node, TensorSpec

# EMA momentum of the activation range observers: ranges settle within a few dozen batches.
OBSERVER_MOMENTUM = 0.9


def _distributed() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def ste(surrogate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Forward: `exact`. Backward: the gradient of `surrogate`."""
    return surrogate + (exact - surrogate).detach()


class _Quant(torch.autograd.Function):
    """Real x -> integer-valued `arith.quantize(x, exp, ...)`; gradient 2**exp where x was inside the range."""

    @staticmethod
    def forward(ctx, x, exp: int, bits: int, mode: str, relu: bool, clips: bool):
        lo, hi = arith.act_range(bits, relu)
        r = arith.round_real(x * 2.0**exp, mode)
        q = arith.saturate(r, lo, hi)
        ctx.clips = clips
        if clips:
            ctx.save_for_backward(q == r)  # inside the range
        ctx.scale = 2.0**exp
        return q

    @staticmethod
    def backward(ctx, grad):
        if not ctx.clips:
            return grad * ctx.scale, None, None, None, None, None
        (inside,) = ctx.saved_tensors
        # times the mask's bytes: several times faster than torch.where on a bool mask on CPU
        return grad * ctx.scale * inside.view(torch.uint8), None, None, None, None, None


def quant_ste(x: torch.Tensor, exp: int, bits: int, mode: str, relu: bool = False, clips: bool = True) -> torch.Tensor:
    """Integer-valued tensor of x quantized at `exp` (same dtype), with a clipped straight-through gradient.

    `clips=False` promises that nothing saturates (the exponent fits x's largest |value|): the gradient is
    then 2**exp everywhere, with no mask to compute, keep and apply.
    """
    # no backward will come (the model input, eval mode): no mask either
    clips = clips and torch.is_grad_enabled() and x.requires_grad
    return _Quant.apply(x, exp, bits, mode, relu, clips)


class _Requant(torch.autograd.Function):
    """y = acc * 2**-e_x (a MAC output, bias included) -> requantised real output, with a clipped
    straight-through gradient.

    One fused function instead of a surrogate graph: the forward is the target scheme's `requantize`
    (the contract), the backward passes the gradient where the rounded value was inside the output range.
    """

    @staticmethod
    def forward(ctx, y, e_x: int, e_out: int, scheme, attrs: dict, bound: int, exact_f32: bool, track: bool):
        acc = (y if exact_f32 else y.to(torch.float64)) * 2.0**e_x  # integer-valued
        # The scheme's pipeline without the final clip (and Abs), then them: their masks are the gradient's.
        unclipped = {**attrs, "act_min": -(1 << 62), "act_max": 1 << 62, "abs": False}
        r = scheme.requantize(acc, unclipped, bound, channel_axis=1)
        q = arith.saturate(r, attrs["act_min"], attrs["act_max"])
        ctx.scale = 2.0 ** (e_x - attrs["out_shift"] - e_out)
        ctx.signed = bool(attrs.get("abs"))
        if ctx.signed:  # d|q|/dq = sign(q), and |q| saturates at act_max as well
            if track:
                ctx.save_for_backward(((q == r) & (q.abs() <= attrs["act_max"])) * torch.where(q < 0, -1.0, 1.0))
            q = arith.saturate(q.abs(), 0, attrs["act_max"])
        elif track:
            ctx.save_for_backward(q == r)  # inside the range
        return (q * 2.0**-e_out).float()

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        if ctx.signed:
            return grad * ctx.scale * mask, *([None] * 7)
        return grad * ctx.scale * mask.view(torch.uint8), *([None] * 7)


def requant_ste(y: torch.Tensor, e_x: int, e_out: int, scheme, attrs: dict, bound: int) -> torch.Tensor:
    """Requantise a MAC output `y` = acc * 2**-e_x with the scheme's node attributes (float32 real values
    at `e_out`).

    float32 suffices when every rounded value stays below 2**22 (then `v + 0.5` is exact); else float64.
    """
    exact_f32 = y.dtype == torch.float32 and bound < 2 ** (22 + attrs["out_shift"])
    track = torch.is_grad_enabled() and y.requires_grad  # a backward may come: keep the mask
    return _Requant.apply(y, e_x, e_out, scheme, attrs, bound, exact_f32, track)


def mse_exponent(values: torch.Tensor, first: int, tries: int, bits: int, mode: str, relu: bool = False) -> int:
    """Of the exponents first .. first + tries, the one whose quantized values are closest to `values` (mean
    squared error: the clipping error of a finer grid against the rounding error of a coarser one)."""
    lo, hi = arith.act_range(bits, relu)
    v = values.detach().to(torch.float64)
    best, best_err = first, math.inf
    for e in range(first, min(first + tries, arith.MAX_EXP) + 1):
        err = float(((arith.saturate(arith.round_real(v * 2.0**e, mode), lo, hi) * 2.0**-e - v) ** 2).mean())
        if err < best_err:
            best, best_err = e, err
    return best


def exact_carrier(bound: int, device: torch.device) -> torch.dtype:
    """The float dtype whose matmuls/convs are exact for integer sums up to `bound`.

    float32 sums integers exactly below 2**24 in any order; CUDA may run float32 convolutions in TF32
    or through Winograd/FFT, so it always gets float64.
    """
    if device.type == "cpu" and bound < arith.EXACT_FLOAT32:
        return torch.float32
    return torch.float64


class QModule(nn.Module):
    """Base of every QAT module. forward(xs, exps): input tensors and their exponent buffers."""

    op: ClassVar[str]
    keeps_exp: ClassVar[bool] = False  # output exponent is the first input's (pooling, reshape, ...)
    source: str = ""  # file:line of the user's code it was captured from (for rule problems)

    def __init__(self, profile: TargetProfile):
        super().__init__()
        # Plain values, not the profile object, so modules pickle and deepcopy without it.
        self.rounding: str = profile.rounding
        self.pool_rounding: str = profile.pool_rounding
        self.act_bits: int = profile.activation_bits
        self.acc_bits: int = profile.accumulator_bits
        self.bias_bits: int = profile.bias_bits
        self.scheme_name: str = profile.scheme
        if not self.keeps_exp:
            self.register_buffer("out_exp", torch.zeros((), dtype=torch.int64))

    @property
    def scheme(self) -> Scheme:
        return get_scheme(self.scheme_name)

    def to_ir(self, name: str, inputs: list[TensorSpec], out_shape: tuple[int, ...]) -> tuple[Node, TensorSpec]:
        """This module as an IR node (integer parameters) and the spec of its output tensor."""
        raise NotImplementedError

    def float_forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """What the layer computes without quantization (folded float weights, real division, no rounding or
        saturation): the reference `npukit analyze` measures the quantized layer against."""
        raise NotImplementedError

    def _out_spec(self, name: str, inputs: list[TensorSpec], out_shape) -> TensorSpec:
        from ..ir import TensorSpec

        if self.keeps_exp:
            return TensorSpec(name, tuple(out_shape), inputs[0].bits, inputs[0].exp)
        return TensorSpec(name, tuple(out_shape), self.act_bits, int(self.out_exp))


class ExpGroup:
    """Observed modules whose outputs must share one exponent (the operands of a MAX7800x element-wise
    add: the chip adds them unshifted). A plain object, not a Module, so its members are not registered
    twice; each member computes the group's exponent from every member's range, in training and in eval.
    """

    def __init__(self, members: list[ObservedQModule]):
        self.members = members
        for m in members:
            m.__dict__["_exp_group"] = self

    def exponent(self, bits: int) -> int:
        seen = [float(m.range_ema) for m in self.members if bool(m.range_seen)]
        return arith.fit_exponent(max(seen, default=0.0), bits)


class ObservedQModule(QModule):
    """A QAT module whose output exponent follows an EMA of the observed max-abs output."""

    def __init__(self, profile: TargetProfile):
        super().__init__(profile)
        self.register_buffer("range_ema", torch.zeros((), dtype=torch.float64))
        self.register_buffer("range_seen", torch.zeros((), dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    @property
    def observing(self) -> bool:
        return self.training and not bool(self.frozen)

    def observe(self, values, bits: int, *, scale: float = 1.0, positive: bool = False) -> int:
        """Update the range (training, not frozen) and return the output exponent to use now.

        `values()` gives the tensor whose real values (times `scale`) the output holds; a callable, so eval
        mode skips the reduction. `positive`: only the non-negative end counts (a fused ReLU). A calibration
        collector (npukit/qat/calibrate.py), when set, also sees the values.
        """
        if self.observing:
            v = values().detach()
            lo, hi = torch.aminmax(v)
            m = (hi.clamp(min=0) if positive else torch.maximum(hi, -lo)).to(torch.float64) * scale
            if _distributed():  # every rank sees its own batch: the range is the largest over all of them
                torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
            collector = self.__dict__.get("_collector")
            if collector is not None:
                collector(self, v, scale, positive)
            if bool(self.range_seen):
                self.range_ema.mul_(OBSERVER_MOMENTUM).add_((1 - OBSERVER_MOMENTUM) * m)
            else:
                self.range_ema.copy_(m)
                self.range_seen.fill_(True)
            self.out_exp.fill_(arith.fit_exponent(float(self.range_ema), bits))
        group = self.__dict__.get("_exp_group")
        if group is not None:  # one exponent for the group: the one that fits every member's range
            self.out_exp.fill_(group.exponent(bits))
        return int(self.out_exp)

"""QAT conv/linear (torch side of npukit/ops/mac.py): float parameters, the target's exact integer forward."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import arith
from ..errors import UnsupportedError
from ..ir import Node, TensorSpec
from .base import Captured, ModuleCapture, OpCapture, node_name
from .fakequant import ObservedQModule, exact_carrier, mse_exponent, quant_ste, requant_ste
from .pad import QPad

MSE_FINER_WEIGHTS = 3  # weight exponents above the max-fitting one that weight_exp="mse" tries

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class QMac(ObservedQModule):
    """QAT conv/linear: float parameters, exact integer forward."""

    def __init__(self, profile, weight, bias, *, w_bits, relu, wide, conv: dict | None, has_bias: bool = True,
                 absolute: bool = False, clamp: tuple[float, float] | None = None, weight_exp: str | float = "auto"):
        super().__init__(profile)
        self.weight = nn.Parameter(weight.detach().clone().float())
        if has_bias:
            self.bias = nn.Parameter(bias.detach().clone().float())
        else:  # a layer without bias stays without: zeros that training leaves alone (chips may lack bias memory)
            self.register_buffer("bias", torch.zeros_like(bias, dtype=torch.float32))
        self.w_bits, self.relu, self.wide, self.conv, self.absolute = w_bits, relu, wide, conv, absolute
        self.clamp = clamp  # real (lo, hi) of a fused ReLU6 / Hardtanh / clamp
        if weight_exp == "auto":  # measured (benchmarks/accuracy.py): mse saves 4- and 2-bit weights, 8-bit needs none
            weight_exp = "max" if w_bits >= 8 else "mse"
        self.weight_exp = weight_exp  # 'max', 'mse' or the quantile of |w| the exponent fits (npukit/policy.py)
        self.w_exp_offset = 0  # exponents finer than that, chosen by calibrate(weights="mse")
        self.op = ("conv_transpose" if conv.get("transpose") else "conv") if conv else "linear"

    @property
    def fan_in(self) -> int:
        """Products per output at most (a transposed conv's weight is (in, out, *kernel))."""
        if self.op == "conv_transpose":
            return self.weight.shape[0] * math.prod(self.weight.shape[2:])
        return math.prod(self.weight.shape[1:])

    def mac_weight(self) -> torch.Tensor:
        """The weight the layer computes with: its parameter, or rows derived from it (a recurrent gate)."""
        return self.weight

    def mac_bias(self) -> torch.Tensor:
        return self.bias

    def int_params(self, e_x: int):
        """Integer weight and bias (integer-valued tensors, straight-through), their exponents, and the
        largest |integer| of each (computed from the float maxima, sparing two reductions)."""
        weight = self.mac_weight()
        w_abs = weight.detach().abs()
        w_max = float(w_abs.max())
        w_fit = arith.fit_exponent(w_max, self.w_bits)
        if self.weight_exp == "max":
            w_exp = w_fit
        elif self.weight_exp == "mse":  # low-bit weights: clip the largest where that costs less than rounding
            w_exp = mse_exponent(weight, w_fit, MSE_FINER_WEIGHTS, self.w_bits, self.rounding)
        else:  # the larger weights saturate at the grid's end, the rest are finer
            k = max(1, math.ceil(self.weight_exp * w_abs.numel()))
            w_exp = arith.fit_exponent(float(w_abs.flatten().kthvalue(k).values), self.w_bits)
        w_exp = min(w_exp + self.w_exp_offset, arith.MAX_EXP)
        # an exponent at or below the fitting one saturates nothing: the gradient needs no mask
        qw = quant_ste(weight, w_exp, self.w_bits, self.rounding, clips=w_exp > w_fit)
        b = self.mac_bias().to(torch.float64)
        b_max = float(b.detach().abs().max())
        b_exp = self.scheme.bias_exp(self.bias_bits, e_x + w_exp, b_max)
        qb = quant_ste(b, b_exp, self.bias_bits, self.rounding, clips=b_exp > arith.fit_exponent(b_max, self.bias_bits))
        # max |round(v)| <= round(max |v|) + 1 under every mode: a safe bound for the carrier choice
        qw_max = min(int(w_max * 2.0**w_exp) + 1, 1 << (self.w_bits - 1))  # saturated weights end at the grid
        return qw, w_exp, qb, b_exp, qw_max, int(b_max * 2.0**b_exp) + 1

    def _mac(self, x, w, b):
        if self.conv is None:
            return F.linear(x, w, b)
        c = self.conv
        if c.get("transpose"):
            fn = F.conv_transpose1d if c["ndim"] == 1 else F.conv_transpose2d
            return fn(x, w, b, c["stride"], c["padding"], c["output_padding"], c["groups"], c["dilation"])
        fn = F.conv1d if c["ndim"] == 1 else F.conv2d
        return fn(x, w, b, c["stride"], c["padding"], c["dilation"], c["groups"])

    def _attrs(self, e_acc: int, b_exp: int, e_out: int) -> dict:
        return self.scheme.mac_attrs(e_acc=e_acc, b_exp=b_exp, e_out=e_out, out_bits=self.act_bits, relu=self.relu,
                                     wide=self.wide, acc_bits=self.acc_bits, rounding=self.rounding,
                                     absolute=self.absolute, clamp=self.clamp)

    def forward(self, xs, exps):
        x, e_x = xs[0], int(exps[0])
        qw, w_exp, qb, b_exp, qw_max, qb_max = self.int_params(e_x)
        e_acc = e_x + w_exp
        bound = arith.accumulator_bound(self.fan_in, self.act_bits, qw_max, qb_max << (e_acc - b_exp))
        carrier = exact_carrier(bound, x.device)
        # Real x times integer weights gives y = acc * 2**-e_x exactly (power-of-two scaling), so the bias
        # goes in at that scale and the conv's own bias add does the accumulation.
        y = self._mac(x.to(carrier), qw.to(carrier), (qb * 2.0 ** (e_acc - b_exp - e_x)).to(carrier))
        if self.wide:
            self.out_exp.fill_(e_acc)
            acc_lo, acc_hi = arith.int_range(self.acc_bits)
            if bound > acc_hi:  # the accumulator can overflow: saturate it exactly, in integer units
                y = arith.saturate(y.to(torch.float64) * 2.0**e_x, acc_lo, acc_hi) * 2.0**-e_x
            return y.to(torch.float64) * 2.0**-w_exp  # float64: an int32 accumulator does not fit float32
        def observed():
            if self.clamp is None:
                return y
            # The range the clamp leaves, each end on its own: the negative end holds one step more
            # (-2**(b-1)), so a clamp to [-1, 127/128] fits at exponent b - 1.
            lo, hi = (v * 2.0**w_exp for v in self.clamp)
            v = y.detach().clamp(max=hi)
            if self.relu or lo >= 0:
                return v.clamp(min=0)
            return torch.where(v < 0, v.clamp(min=lo) * (1 - 2.0 ** (1 - self.act_bits)), v)

        e_out = self.scheme.out_exp(e_acc, self.observe(observed, self.act_bits, scale=2.0**-w_exp,
                                                         positive=self.relu))
        self.out_exp.fill_(e_out)
        return requant_ste(y, e_x, e_out, self.scheme, self._attrs(e_acc, b_exp, e_out), bound)

    def float_forward(self, xs):
        y = self._mac(xs[0], self.mac_weight().to(xs[0].dtype), self.mac_bias().to(xs[0].dtype))
        if self.relu:
            y = y.clamp(min=0)
        if self.absolute:
            y = y.abs()
        if self.clamp is not None:
            y = y.clamp(*self.clamp)
        return y

    def to_ir(self, name, inputs, out_shape):
        e_x = inputs[0].exp
        with torch.no_grad():
            qw, w_exp, qb, b_exp, _, _ = self.int_params(e_x)
        e_acc = e_x + w_exp
        w_dtype = np.int8 if self.w_bits <= 8 else np.int16
        if self.wide:
            out = TensorSpec(name, tuple(out_shape), self.acc_bits, e_acc)
        else:
            out = self._out_spec(name, inputs, out_shape)
        attrs = {"w_bits": self.w_bits, "w_exp": w_exp, "b_exp": b_exp, "relu": self.relu, "wide": self.wide,
                 **self.scheme.mac_attrs(e_acc=e_acc, b_exp=b_exp, e_out=out.exp, out_bits=out.bits, relu=self.relu,
                                         wide=self.wide, acc_bits=self.acc_bits, rounding=self.rounding,
                                         absolute=self.absolute, clamp=self.clamp)}
        if self.conv:
            attrs.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.conv.items() if k != "transpose"})
        params = {"weight": qw.numpy().astype(w_dtype), "bias": qb.numpy().astype(np.int64)}
        return Node(name, self.op, [inputs[0].name], [name], attrs, params), out


def _bn_affine(bn) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm in eval as y = k * x + c per channel (its running statistics)."""
    if not bn.track_running_stats or bn.running_var is None:
        raise UnsupportedError("the BatchNorm keeps no running statistics, so it cannot be folded",
                               "use BatchNorm with track_running_stats=True and train the float model first")
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    k = scale / torch.sqrt(bn.running_var + bn.eps)
    return k, shift - bn.running_mean * k


def _capture_mac(node, ctx, layer, conv: dict | None):
    w = layer.weight.detach().float()
    out_channels = w.shape[1] if conv and conv.get("transpose") else w.shape[0]
    b = layer.bias.detach().float() if layer.bias is not None else torch.zeros(out_channels)
    bn, last, absorbed = ctx.fuse_bn(node)
    if bn is not None:
        k, c = _bn_affine(bn)
        out_axis = 1 if conv and conv.get("transpose") else 0  # a transposed conv's weight is (in, out, ...)
        w = w * k.view(*([1] * out_axis), -1, *([1] * (w.dim() - 1 - out_axis)))
        b = b * k + c
    relu, last, more = ctx.fuse_relu(last)
    absorbed += more
    absolute, clamp = False, None
    if not relu:
        absolute, last, more = ctx.fuse_abs(last)
        absorbed += more
    if not absolute:  # (after a ReLU too: relu(x).clamp(max=6))
        clamp, last, more = ctx.fuse_clamp(last)
        absorbed += more
    # Wide (accumulator) output only for a pure model output: a layer reading it would get 32-bit inputs.
    wide = (ctx.wide_output and not relu and not absolute and clamp is None and ctx.is_graph_output(last)
            and len(last.users) == 1)
    module = QMac(ctx.profile, w, b, w_bits=ctx.weight_bits_for(node_name(node)), relu=relu, wide=wide, conv=conv,
                  has_bias=layer.bias is not None or bn is not None, absolute=absolute, clamp=clamp,
                  weight_exp=ctx.weight_exp)
    return Captured(module, node_name(node), [node.args[0]], last, absorbed)


def _geometry(conv, padding) -> dict:
    """A torch conv module's geometry as the IR's attributes (ndim from its kernel)."""
    return {"ndim": len(conv.kernel_size), "stride": tuple(conv.stride), "padding": tuple(padding),
            "dilation": tuple(conv.dilation), "groups": conv.groups}


class ConvCapture(ModuleCapture, OpCapture):
    op = "conv"
    modules = (nn.Conv1d, nn.Conv2d)

    def capture(self, node, ctx):
        conv = ctx.module(node)
        if conv.padding_mode != "zeros":
            raise UnsupportedError(f"padding_mode={conv.padding_mode!r} is not supported", "use padding_mode='zeros'")
        padding = conv.padding
        if padding == "valid":
            padding = (0,) * len(conv.kernel_size)
        elif padding == "same":  # stride 1 (torch's rule): symmetric when every (k - 1) * dilation is even
            spans = [(k - 1) * d for k, d in zip(conv.kernel_size, conv.dilation, strict=True)]
            if any(s % 2 for s in spans):  # torch pads the odd one at the end: a pad node before the conv
                cap = _capture_mac(node, ctx, conv, _geometry(conv, (0,) * len(spans)))
                pads = [s // 2 for s in spans] + [s - s // 2 for s in spans]
                cap.before.append((f"{cap.name}_pad", QPad(ctx.profile, pads)))
                return cap
            padding = tuple(s // 2 for s in spans)
        return _capture_mac(node, ctx, conv, _geometry(conv, padding))


class LinearCapture(OpCapture):
    op = "linear"

    def matches(self, node, ctx):
        return isinstance(ctx.module(node), nn.Linear)

    def capture(self, node, ctx):
        if len(ctx.shape(node.args[0])) != 2:
            raise UnsupportedError(f"Linear receives a {len(ctx.shape(node.args[0]))}-d tensor",
                                   "flatten it to (batch, features) first, e.g. torch.flatten(x, 1)")
        return _capture_mac(node, ctx, ctx.module(node), None)


class BatchNormCapture(ModuleCapture, OpCapture):
    """A BatchNorm with no conv or linear before it to fold into: a per-channel integer affine, computed as
    a depthwise 1x1 conv (the conv op, so every backend and rule already knows it)."""

    op = "conv"
    modules = _BN

    def capture(self, node, ctx):
        shape = ctx.shape(node.args[0])
        if len(shape) < 3:
            raise UnsupportedError("a BatchNorm over (batch, features) with no layer before it",
                                   "put it right after the Linear that feeds it (it is folded there)")
        k, c = _bn_affine(ctx.module(node))
        ndim = len(shape) - 2
        layer = SimpleNamespace(weight=k.view(-1, 1, *([1] * ndim)), bias=c)
        args = {"ndim": ndim, "stride": (1,) * ndim, "padding": (0,) * ndim, "dilation": (1,) * ndim,
                "groups": shape[1]}
        return _capture_mac(node, ctx, layer, args)


class ConvTransposeCapture(ModuleCapture, OpCapture):
    op = "conv_transpose"
    modules = (nn.ConvTranspose1d, nn.ConvTranspose2d)

    def capture(self, node, ctx):
        conv = ctx.module(node)
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise UnsupportedError(f"a transposed conv with groups={conv.groups}, padding_mode={conv.padding_mode!r}",
                                   "use groups=1 and padding_mode='zeros'")
        args = {**_geometry(conv, conv.padding), "output_padding": tuple(conv.output_padding), "transpose": True}
        return _capture_mac(node, ctx, conv, args)

"""Multiply-accumulate layers: conv (1d, 2d, grouped/depthwise) and linear, with BatchNorm folded and
ReLU fused into the output saturation.

Arithmetic (docs/arithmetic.md): acc = sum(x * w) + (bias << (e_acc - e_bias)) at e_acc = e_x + e_w,
saturated to the accumulator width, then requantised to the output exponent. A wide output keeps the
accumulator itself (e_out = e_acc, accumulator bits).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import arith
from ..errors import NpukitError, UnsupportedError
from ..ir import Graph, Node, TensorSpec
from ..qat.fakequant import ObservedQModule, exact_carrier, quant_ste, requant_ste
from .base import Captured, OpDef, node_name, register

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class QMac(ObservedQModule):
    """QAT conv/linear: float parameters, exact integer forward."""

    def __init__(self, profile, weight, bias, *, w_bits, relu, wide, conv: dict | None):
        super().__init__(profile)
        self.weight = nn.Parameter(weight.detach().clone().float())
        self.bias = nn.Parameter(bias.detach().clone().float())
        self.w_bits, self.relu, self.wide, self.conv = w_bits, relu, wide, conv
        self.op = "conv" if conv else "linear"

    @property
    def fan_in(self) -> int:
        return math.prod(self.weight.shape[1:])

    def int_params(self, e_x: int):
        """Integer weight and bias (integer-valued tensors, straight-through), their exponents, and the
        largest |integer| of each (computed from the float maxima, sparing two reductions)."""
        w_max = float(self.weight.detach().abs().max())
        w_exp = arith.fit_exponent(w_max, self.w_bits)
        qw = quant_ste(self.weight, w_exp, self.w_bits, self.rounding)
        b = self.bias.to(torch.float64)
        b_max = float(b.detach().abs().max())
        b_exp = min(e_x + w_exp, arith.fit_exponent(b_max, self.bias_bits))
        qb = quant_ste(b, b_exp, self.bias_bits, self.rounding)
        # max |round(v)| <= round(max |v|) + 1 under every mode: a safe bound for the carrier choice
        return qw, w_exp, qb, b_exp, int(w_max * 2.0**w_exp) + 1, int(b_max * 2.0**b_exp) + 1

    def _mac(self, x, w, b):
        if self.conv is None:
            return F.linear(x, w, b)
        c = self.conv
        fn = F.conv1d if c["ndim"] == 1 else F.conv2d
        return fn(x, w, b, c["stride"], c["padding"], c["dilation"], c["groups"])

    def forward(self, xs, exps):
        x, e_x = xs[0], int(exps[0])
        qw, w_exp, qb, b_exp, qw_max, qb_max = self.int_params(e_x)
        e_acc = e_x + w_exp
        bound = arith.accumulator_bound(self.fan_in, self.act_bits, qw_max, qb_max << (e_acc - b_exp))
        carrier = exact_carrier(bound, x.device)
        # Real x times integer weights gives y = acc * 2**-e_x exactly (power-of-two scaling), so the bias
        # goes in at that scale and the conv's own bias add does the accumulation.
        y = self._mac(x.to(carrier), qw.to(carrier), (qb * 2.0 ** (e_acc - b_exp - e_x)).to(carrier))
        acc_lo, acc_hi = arith.int_range(self.acc_bits)
        if bound > acc_hi:  # the accumulator can overflow: saturate it exactly, in integer units
            y = arith.saturate(y.to(torch.float64) * 2.0**e_x, acc_lo, acc_hi) * 2.0**-e_x
        if self.wide:
            self.out_exp.fill_(e_acc)
            return y.to(torch.float64) * 2.0**-w_exp  # float64: an int32 accumulator does not fit float32
        def observed():
            m = y.detach().max().clamp(min=0) if self.relu else y.detach().abs().max()
            return m * 2.0**-w_exp

        e_out = self.observe(observed, self.act_bits)
        return requant_ste(y, e_x, e_acc - e_out, e_out, self.act_bits, self.rounding, self.relu, bound)

    def to_ir(self, name, inputs, out_shape):
        e_x = inputs[0].exp
        with torch.no_grad():
            qw, w_exp, qb, b_exp, _, _ = self.int_params(e_x)
        w_dtype = np.int8 if self.w_bits <= 8 else np.int16
        attrs = {"w_bits": self.w_bits, "w_exp": w_exp, "b_exp": b_exp, "relu": self.relu, "wide": self.wide}
        if self.conv:
            attrs.update({k: list(v) if isinstance(v, tuple) else v for k, v in self.conv.items()})
        params = {"weight": qw.numpy().astype(w_dtype), "bias": qb.numpy().astype(np.int64)}
        if self.wide:
            out = TensorSpec(name, tuple(out_shape), self.acc_bits, e_x + w_exp)
        else:
            out = self._out_spec(name, inputs, out_shape)
        return Node(name, self.op, [inputs[0].name], [name], attrs, params), out


def _capture_mac(node, ctx, layer, conv: dict | None):
    w = layer.weight.detach().float()
    b = layer.bias.detach().float() if layer.bias is not None else torch.zeros(w.shape[0])
    last, absorbed = node, []
    bn = ctx.module(ctx.sole_user(node)) if ctx.sole_user(node) is not None else None
    if isinstance(bn, _BN):
        if not bn.track_running_stats or bn.running_var is None:
            raise UnsupportedError("the BatchNorm after it keeps no running statistics, so it cannot be folded",
                                   "use BatchNorm with track_running_stats=True and train the float model first")
        scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
        shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
        k = scale / torch.sqrt(bn.running_var + bn.eps)
        w = w * k.view(-1, *([1] * (w.dim() - 1)))
        b = (b - bn.running_mean) * k + shift
        last = ctx.sole_user(node)
        absorbed.append(last)
    relu, last, more = ctx.fuse_relu(last)
    absorbed += more
    # Wide (accumulator) output only for a pure model output: a layer reading it would get 32-bit inputs.
    wide = ctx.wide_output and not relu and ctx.is_graph_output(last) and len(last.users) == 1
    module = QMac(ctx.profile, w, b, w_bits=ctx.weight_bits, relu=relu, wide=wide, conv=conv)
    return Captured(module, node_name(node), [node.args[0]], last, absorbed)


def _mac_requant(node: Node, acc: np.ndarray, graph: Graph) -> np.ndarray:
    """Shared tail of conv and linear: bias, accumulator saturation, requantisation.

    `acc` has the output channels first, (out, ...), as the GEMM leaves it: the elementwise tail runs on
    contiguous data and only the narrow integer result is transposed afterwards.
    It comes in its matmul carrier. The tail stays in float32 only where that is exact: sums below
    2**24 and rounded values below 2**22 (so v + 0.5 is exact); float64 otherwise.
    """
    a = node.attrs
    e_acc = graph.tensors[node.inputs[0]].exp + a["w_exp"]
    out = graph.tensors[node.outputs[0]]
    shift = e_acc - out.exp
    bias = node.params["bias"].astype(np.float64) * 2.0 ** (e_acc - a["b_exp"])
    w = node.params["weight"]
    bound = arith.accumulator_bound(int(np.prod(w.shape[1:])), graph.tensors[node.inputs[0]].bits,
                                    int(np.abs(w.astype(np.int64)).max(initial=0)), int(np.abs(bias).max(initial=0)))
    dtype = np.float32 if acc.dtype == np.float32 and bound < min(arith.EXACT_FLOAT32, 2 ** (22 + shift)) else np.float64
    # `acc` is this call's own temporary: update it in place (fresh large arrays cost page faults).
    acc = acc.astype(dtype, copy=False)
    acc += bias.astype(dtype).reshape(-1, *([1] * (acc.ndim - 1)))
    lo, hi = arith.int_range(graph.target["accumulator_bits"])
    if bound > hi:
        arith.saturate(acc, lo, hi, out=acc)
    q = arith.requantize(acc, shift, out.bits, graph.rounding, a["relu"], out=acc)
    return q.astype(out.dtype)


def _mac_tail_onnx(node: Node, acc: str, b) -> str:
    """ONNX form of `_mac_requant`: bias at the accumulator scale, saturation, requantisation."""
    g, a = b.graph, node.attrs
    e_acc = g.tensors[node.inputs[0]].exp + a["w_exp"]
    nd = len(g.tensors[node.outputs[0]].shape)
    bias = b.op("Mul", [b.param(node, "bias"), b.const(2.0 ** (e_acc - a["b_exp"]))])
    if nd > 1:  # (out,) -> (out, 1, ...) to broadcast over the spatial positions
        bias = b.op("Reshape", [bias, b.const(np.array([-1] + [1] * (nd - 1), np.int64), np.int64, "shape")])
    acc = b.op("Add", [acc, bias])
    acc = b.saturate(acc, *arith.int_range(g.target["accumulator_bits"]))
    out = g.tensors[node.outputs[0]]
    q = b.round_shift(acc, e_acc - out.exp, g.rounding)
    return b.saturate(q, *arith.act_range(out.bits, a["relu"]))


def _carrier(w: np.ndarray, x_bits: int) -> np.dtype:
    """The cheapest dtype whose BLAS matmul is exact for these integers: every partial sum of integer
    products is exact in float32 below 2**24 and in float64 below 2**53, in any summation order."""
    fan_in = int(np.prod(w.shape[1:]))  # (out, in/groups, *kernel) or (out, in)
    bound = arith.accumulator_bound(fan_in, x_bits, int(np.abs(w.astype(np.int64)).max(initial=0)))
    if bound < arith.EXACT_FLOAT32:
        return np.dtype(np.float32)
    return np.dtype(np.float64 if bound < arith.EXACT_FLOAT64 else np.int64)


def _exact_matmul(w: np.ndarray, cols: np.ndarray, carrier: np.dtype) -> np.ndarray:
    """w @ cols on integers in `carrier` (float32 results stay float32; int64 ones become float64)."""
    out = np.matmul(w.astype(carrier), cols.astype(carrier, copy=False))
    return out if out.dtype.kind == "f" else out.astype(np.float64)


@register
class Conv(OpDef):
    name = "conv"

    def matches(self, node, ctx):
        return isinstance(ctx.module(node), nn.Conv1d | nn.Conv2d)

    def capture(self, node, ctx):
        conv = ctx.module(node)
        if conv.padding_mode != "zeros":
            raise UnsupportedError(f"padding_mode={conv.padding_mode!r} is not supported", "use padding_mode='zeros'")
        if isinstance(conv.padding, str):
            raise UnsupportedError(f"padding={conv.padding!r} is not supported",
                                   "give the padding as numbers, e.g. padding=k // 2 for an odd kernel k")
        ndim = 1 if isinstance(conv, nn.Conv1d) else 2
        args = {"ndim": ndim, "stride": tuple(conv.stride), "padding": tuple(conv.padding),
                "dilation": tuple(conv.dilation), "groups": conv.groups}
        return _capture_mac(node, ctx, conv, args)

    def infer_shapes(self, node, in_shapes):
        a, (c, *spatial) = node.attrs, in_shapes[0]
        w = node.params["weight"].shape
        if min(*a["stride"], *a["dilation"], a["groups"], *w) < 1 or min(a["padding"]) < 0:
            raise NpukitError(f"{node.name}: stride, dilation, groups and kernel must be >= 1, padding >= 0")
        if c != w[1] * a["groups"]:
            raise NpukitError(f"{node.name}: input has {c} channels, weights expect {w[1] * a['groups']}")
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1
               for n, k, s, p, d in zip(spatial, w[2:], a["stride"], a["padding"], a["dilation"], strict=True)]
        return [(w[0], *out)]

    def run(self, node, inputs, graph):
        a, x = node.attrs, inputs[0]
        w = node.params["weight"]
        if a["ndim"] == 1:  # one code path: a 1-d conv is a 2-d conv of height 1
            x, w = x[:, :, None, :], w[:, :, None, :]
            stride, pad, dil = (1, *a["stride"]), (0, *a["padding"]), (1, *a["dilation"])
        else:
            stride, pad, dil = a["stride"], a["padding"], a["dilation"]
        n, c, _, _ = x.shape
        o, cg, kh, kw = w.shape
        g = a["groups"]
        carrier = _carrier(w, graph.tensors[node.inputs[0]].bits)
        xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
        win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1), axis=(2, 3))
        win = win[:, :, :: stride[0], :: stride[1], :: dil[0], :: dil[1]]  # (n, c, ho, wo, kh, kw)
        ho, wo = win.shape[2:4]
        # im2col with the batch folded into the columns: one large GEMM per group, not n small ones.
        cols = win.reshape(n, g, cg, ho, wo, kh, kw).transpose(1, 2, 5, 6, 0, 3, 4).astype(carrier, order="C")
        acc = _exact_matmul(w.reshape(g, o // g, cg * kh * kw), cols.reshape(g, cg * kh * kw, n * ho * wo), carrier)
        q = _mac_requant(node, acc.reshape(o, n * ho * wo), graph).reshape(o, n, ho, wo).transpose(1, 0, 2, 3)
        return [np.ascontiguousarray(q[:, :, 0, :] if a["ndim"] == 1 else q)]

    def macs(self, node, graph):
        out = graph.tensors[node.outputs[0]].shape
        return math.prod(out) * math.prod(node.params["weight"].shape[1:])

    def to_c(self, node, b):
        from ..codegen import mac_limits

        a, g, w = node.attrs, b.graph, node.params["weight"]
        (c, *sp_in), (o, *sp_out) = g.tensors[node.inputs[0]].shape, g.tensors[node.outputs[0]].shape
        two = (lambda v: (1, *v)) if a["ndim"] == 1 else (lambda v: tuple(v))  # 1-d runs as height 1
        (ih, iw), (oh, ow), (kh, kw) = two(sp_in), two(sp_out), two(w.shape[2:])
        (sh, sw), (ph, pw), (dh, dw) = two(a["stride"]), (0, *a["padding"]) if a["ndim"] == 1 else a["padding"], two(a["dilation"])
        fields = {"in_c": c, "in_h": ih, "in_w": iw, "out_c": o, "out_h": oh, "out_w": ow, "k_h": kh, "k_w": kw,
                  "stride_h": sh, "stride_w": sw, "pad_h": ph, "pad_w": pw, "dil_h": dh, "dil_w": dw,
                  "groups": a["groups"], **mac_limits(g, node)}
        p = b.struct("nk_conv_params", f"{b.ident(node.name)}_p", fields)
        out_t = "int8_t" if fields["out_bytes"] == 1 else "int32_t"
        return [f"nk_conv({p}, {b.ptr(node.inputs[0])}, {b.weights(node)}, {b.weights(node, 'bias')}, "
                f"{b.ptr(node.outputs[0], out_t)});"]

    def to_onnx(self, node, inputs, b):
        from onnx import TensorProto

        a, w = node.attrs, node.params["weight"]
        x_bits = b.graph.tensors[node.inputs[0]].bits
        if arith.accumulator_bound(math.prod(w.shape[1:]), x_bits, int(np.abs(w.astype(np.int64)).max(initial=0))) >= arith.EXACT_FLOAT32:
            raise NpukitError(f"{node.name}: partial sums may exceed 2**24, beyond an exact float32 ONNX Conv")
        x = b.op("Cast", [inputs[0]], to=TensorProto.FLOAT)
        y = b.op("Conv", [x, b.param(node, "weight", TensorProto.FLOAT)], kernel_shape=list(w.shape[2:]),
                 strides=a["stride"], pads=a["padding"] * 2, dilations=a["dilation"], group=a["groups"])
        return _mac_tail_onnx(node, b.op("Cast", [y], to=TensorProto.DOUBLE), b)


@register
class Linear(OpDef):
    name = "linear"

    def matches(self, node, ctx):
        return isinstance(ctx.module(node), nn.Linear)

    def capture(self, node, ctx):
        if len(ctx.shape(node.args[0])) != 2:
            raise UnsupportedError(f"Linear receives a {len(ctx.shape(node.args[0]))}-d tensor",
                                   "flatten it to (batch, features) first, e.g. torch.flatten(x, 1)")
        return _capture_mac(node, ctx, ctx.module(node), None)

    def infer_shapes(self, node, in_shapes):
        w = node.params["weight"].shape
        if tuple(in_shapes[0]) != (w[1],):
            raise NpukitError(f"{node.name}: input shape {in_shapes[0]}, weights expect ({w[1]},)")
        return [(w[0],)]

    def run(self, node, inputs, graph):
        w = node.params["weight"]
        acc = _exact_matmul(w, inputs[0].T, _carrier(w, graph.tensors[node.inputs[0]].bits))  # (out, n)
        return [np.ascontiguousarray(_mac_requant(node, acc, graph).T)]

    def macs(self, node, graph):
        return int(node.params["weight"].size)

    def to_c(self, node, b):
        from ..codegen import mac_limits

        o, i = node.params["weight"].shape
        fields = {"in_features": i, "out_features": o, **mac_limits(b.graph, node)}
        p = b.struct("nk_linear_params", f"{b.ident(node.name)}_p", fields)
        out_t = "int8_t" if fields["out_bytes"] == 1 else "int32_t"
        return [f"nk_linear({p}, {b.ptr(node.inputs[0])}, {b.weights(node)}, {b.weights(node, 'bias')}, "
                f"{b.ptr(node.outputs[0], out_t)});"]

    def to_onnx(self, node, inputs, b):
        w = b.op("Transpose", [b.param(node, "weight")], perm=[1, 0])  # double MatMul: exact below 2**53
        return _mac_tail_onnx(node, b.op("MatMul", [inputs[0], w]), b)

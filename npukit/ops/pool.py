"""Pooling: max, average and global average (1d and 2d). The exponent passes through unchanged.

Max pooling is exact on integers. Average pooling sums the window and divides by its size with the
target's pool rounding (`arith.round_div`), so a non-power-of-two window is as exact as any other.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import arith
from ..errors import UnsupportedError
from ..ir import Node
from ..qat.fakequant import QModule, ste
from .base import Captured, OpDef, node_name, register

_MAX_FUNCS = {"max_pool1d", "max_pool2d", "_max_pool1d", "_max_pool2d"}
_AVG_FUNCS = {"avg_pool1d", "avg_pool2d"}
_GLOBAL_FUNCS = {"adaptive_avg_pool1d", "adaptive_avg_pool2d"}


def _fn_name(node) -> str:
    return getattr(node.target, "__name__", "") if node.op == "call_function" else ""


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, tuple | list) else (v,) * n


def _window_args(node, ctx, kind: str) -> dict:
    """Kernel/stride of a pooling module or functional call, refusing what the integer kernels lack."""
    ndim = len(ctx.shape(node.args[0])) - 2
    mod = ctx.module(node)
    if mod is not None:
        k, s, p = mod.kernel_size, mod.stride, mod.padding
        ceil, dil = mod.ceil_mode, getattr(mod, "dilation", 1)
    else:
        kw = ctx.kwargs(node)
        k, s, p = kw["kernel_size"], kw.get("stride"), kw.get("padding", 0)
        ceil, dil = kw.get("ceil_mode", False), kw.get("dilation", 1)
        if kw.get("divisor_override"):
            raise UnsupportedError("avg pooling with divisor_override is not supported", "drop divisor_override")
    k = _tuple(k, ndim)
    s = _tuple(s, ndim) if s not in (None, [], ()) else k
    if any(_tuple(p, ndim)) or ceil or any(d != 1 for d in _tuple(dil, ndim)):
        raise UnsupportedError(f"{kind} pooling supports padding=0, dilation=1, ceil_mode=False only",
                               "pad with the conv before it instead, and size the input so the windows fit")
    return {"ndim": ndim, "kernel": list(k), "stride": list(s)}


def _window_reduce(x: np.ndarray, kernel, stride, combine) -> np.ndarray:
    """Combine (np.maximum, np.add) each window's values: one strided slice per kernel position, which
    numpy runs far faster than a reduction over a sliding-window view."""
    out_shape = [(n - k) // s + 1 for n, k, s in zip(x.shape[2:], kernel, stride, strict=True)]
    result = None
    for pos in np.ndindex(*kernel):
        part = x[(slice(None), slice(None),
                  *(slice(p, p + s * (m - 1) + 1, s) for p, s, m in zip(pos, stride, out_shape, strict=True)))]
        result = part.copy() if result is None else combine(result, part, out=result)
    return result


def _pool_shape(in_shape, kernel, stride):
    c, *spatial = in_shape
    return [(c, *((n - k) // s + 1 for n, k, s in zip(spatial, kernel, stride, strict=True)))]


def _pool_c(node, b, kernel: str) -> list[str]:
    a, g = node.attrs, b.graph
    (c, *sp_in), (_, *sp_out) = g.tensors[node.inputs[0]].shape, g.tensors[node.outputs[0]].shape
    two = (lambda v: (1, *v)) if a["ndim"] == 1 else (lambda v: tuple(v))  # 1-d runs as height 1
    (ih, iw), (oh, ow), (kh, kw), (sh, sw) = two(sp_in), two(sp_out), two(a["kernel"]), two(a["stride"])
    fields = {"c": c, "in_h": ih, "in_w": iw, "out_h": oh, "out_w": ow, "k_h": kh, "k_w": kw, "stride_h": sh,
              "stride_w": sw, "rounding": b.rounding(g.target["pool_rounding"])}
    p = b.struct("nk_pool_params", f"{b.ident(node.name)}_p", fields)
    return [f"{kernel}({p}, {b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]


class _QPool(QModule):
    keeps_exp = True

    def __init__(self, profile, attrs: dict):
        super().__init__(profile)
        self.attrs = attrs

    def to_ir(self, name, inputs, out_shape):
        return Node(name, self.op, [inputs[0].name], [name], dict(self.attrs)), self._out_spec(name, inputs, out_shape)


class QMaxPool(_QPool):
    op = "maxpool"

    def forward(self, xs, exps):
        fn = F.max_pool1d if self.attrs["ndim"] == 1 else F.max_pool2d
        return fn(xs[0], self.attrs["kernel"], self.attrs["stride"])  # max of exact values is exact


class QAvgPool(_QPool):
    op = "avgpool"

    def forward(self, xs, exps):
        x, e = xs[0], int(exps[0])
        k, s = self.attrs["kernel"], self.attrs["stride"]
        xi = x.to(torch.float64) * 2.0**e
        if self.attrs["ndim"] == 1:
            total = F.avg_pool2d(xi.unsqueeze(2), (1, k[0]), (1, s[0]), divisor_override=1).squeeze(2)
        else:
            total = F.avg_pool2d(xi, k, s, divisor_override=1)
        n = math.prod(k)
        q = ste(total / n, arith.round_div(total.detach(), n, self.pool_rounding))
        return (q * 2.0**-e).to(x.dtype)


class QGlobalAvgPool(_QPool):
    op = "global_avgpool"

    def forward(self, xs, exps):
        x, e = xs[0], int(exps[0])
        dims = tuple(range(2, x.dim()))
        total = (x.to(torch.float64) * 2.0**e).sum(dim=dims, keepdim=self.attrs["keepdim"])
        n = math.prod(x.shape[2:])
        q = ste(total / n, arith.round_div(total.detach(), n, self.pool_rounding))
        return (q * 2.0**-e).to(x.dtype)


@register
class MaxPool(OpDef):
    name = "maxpool"

    def matches(self, node, ctx):
        return isinstance(ctx.module(node), nn.MaxPool1d | nn.MaxPool2d) or _fn_name(node) in _MAX_FUNCS

    def capture(self, node, ctx):
        if ctx.module(node) is not None and ctx.module(node).return_indices:
            raise UnsupportedError("max pooling with return_indices=True is not supported", "set return_indices=False")
        mod = QMaxPool(ctx.profile, _window_args(node, ctx, "max"))
        return Captured(mod, node_name(node), [node.args[0]], node)

    def infer_shapes(self, node, in_shapes):
        return _pool_shape(in_shapes[0], node.attrs["kernel"], node.attrs["stride"])

    def run(self, node, inputs, graph):
        return [_window_reduce(inputs[0], node.attrs["kernel"], node.attrs["stride"], np.maximum)]

    def to_c(self, node, b):
        return _pool_c(node, b, "nk_maxpool")

    def to_onnx(self, node, inputs, b):
        return b.op("MaxPool", inputs, kernel_shape=node.attrs["kernel"], strides=node.attrs["stride"])


@register
class AvgPool(OpDef):
    name = "avgpool"

    def matches(self, node, ctx):
        return isinstance(ctx.module(node), nn.AvgPool1d | nn.AvgPool2d) or _fn_name(node) in _AVG_FUNCS

    def capture(self, node, ctx):
        mod = ctx.module(node)
        if mod is not None and getattr(mod, "divisor_override", None):
            raise UnsupportedError("avg pooling with divisor_override is not supported", "drop divisor_override")
        return Captured(QAvgPool(ctx.profile, _window_args(node, ctx, "average")), node_name(node), [node.args[0]], node)

    def infer_shapes(self, node, in_shapes):
        return _pool_shape(in_shapes[0], node.attrs["kernel"], node.attrs["stride"])

    def run(self, node, inputs, graph):
        k = node.attrs["kernel"]
        total = _window_reduce(inputs[0].astype(np.int64), k, node.attrs["stride"], np.add)
        q = arith.round_div(total, math.prod(k), graph.target["pool_rounding"])
        return [q.astype(inputs[0].dtype)]

    def to_c(self, node, b):
        return _pool_c(node, b, "nk_avgpool")

    def to_onnx(self, node, inputs, b):
        from onnx import TensorProto

        k, c = node.attrs["kernel"], b.graph.tensors[node.inputs[0]].shape[0]
        ones = np.ones((c, 1, *k), np.float32)  # a depthwise all-ones conv sums each window exactly
        x = b.op("Cast", inputs, to=TensorProto.FLOAT)
        total = b.op("Conv", [x, b.const(ones, np.float32, "ones")], kernel_shape=k, strides=node.attrs["stride"],
                     group=c)
        total = b.op("Cast", [total], to=TensorProto.DOUBLE)
        return b.round_div(total, math.prod(k), b.graph.target["pool_rounding"])


@register
class GlobalAvgPool(OpDef):
    """AdaptiveAvgPool to 1, or mean over every spatial dimension (keepdim or not)."""

    name = "global_avgpool"

    def matches(self, node, ctx):
        mod = ctx.module(node)
        if isinstance(mod, nn.AdaptiveAvgPool1d | nn.AdaptiveAvgPool2d):
            return all(v == 1 for v in _tuple(mod.output_size, 2))
        if _fn_name(node) in _GLOBAL_FUNCS:
            return all(v == 1 for v in _tuple(ctx.kwargs(node)["output_size"], 2))
        if (node.op == "call_method" and node.target == "mean") or (_fn_name(node) == "mean"):
            rank = len(ctx.shape(node.args[0]))
            dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            dims = _tuple(dims, 1) if dims is not None else ()
            return rank > 2 and sorted(d % rank for d in dims) == list(range(2, rank))
        return False

    def capture(self, node, ctx):
        keepdim = len(ctx.shape(node)) == len(ctx.shape(node.args[0]))
        mod = QGlobalAvgPool(ctx.profile, {"keepdim": keepdim})
        return Captured(mod, node_name(node), [node.args[0]], node)

    def infer_shapes(self, node, in_shapes):
        c, *spatial = in_shapes[0]
        return [(c, *([1] * len(spatial)))] if node.attrs["keepdim"] else [(c,)]

    def run(self, node, inputs, graph):
        x = inputs[0]
        axes = tuple(range(2, x.ndim))
        total = x.sum(axis=axes, dtype=np.int64, keepdims=node.attrs["keepdim"])
        q = arith.round_div(total, math.prod(x.shape[2:]), graph.target["pool_rounding"])
        return [q.astype(x.dtype)]

    def to_c(self, node, b):
        c, *spatial = b.graph.tensors[node.inputs[0]].shape
        return [f"nk_global_avgpool({c}, {math.prod(spatial)}, {b.rounding(b.graph.target['pool_rounding'])}, "
                f"{b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]

    def to_onnx(self, node, inputs, b):
        spatial = b.graph.tensors[node.inputs[0]].shape[1:]
        axes = b.const(np.arange(2, 2 + len(spatial)), np.int64, "axes")
        total = b.op("ReduceSum", [inputs[0], axes], keepdims=int(node.attrs["keepdim"]))
        return b.round_div(total, math.prod(spatial), b.graph.target["pool_rounding"])


"""QAT pooling modules and their capture (torch side of npukit/ops/pool.py). The exponent passes through."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import arith
from ..errors import UnsupportedError
from ..ir import Node
from .base import Captured, OpCapture, node_name
from .fakequant import QModule, ste
from .pad import QPad

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
        include_pad = getattr(mod, "count_include_pad", True)
    else:
        kw = ctx.kwargs(node)
        k, s, p = kw["kernel_size"], kw.get("stride"), kw.get("padding", 0)
        ceil, dil = kw.get("ceil_mode", False), kw.get("dilation", 1)
        include_pad = kw.get("count_include_pad", True)
        if kw.get("divisor_override"):
            raise UnsupportedError("avg pooling with divisor_override is not supported", "drop divisor_override")
    k = _tuple(k, ndim)
    s = _tuple(s, ndim) if s not in (None, [], ()) else k
    p = _tuple(p, ndim)
    if any(d != 1 for d in _tuple(dil, ndim)):
        raise UnsupportedError(f"{kind} pooling supports dilation=1 only", "use dilation=1")
    extra = [0] * ndim  # ceil_mode's partial last windows, as padding at the end (max pooling)
    if ceil:  # the same windows as floor mode unless a partial last one is added
        size, out = ctx.shape(node.args[0])[2:], tuple(ctx.shape(node)[2:])
        floor = tuple((n + 2 * pi - ki) // si + 1 for n, pi, ki, si in zip(size, p, k, s, strict=True))
        extra = [(o - 1) * si + ki - (n + 2 * pi) if o != f else 0
                 for o, f, n, pi, ki, si in zip(out, floor, size, p, k, s, strict=True)]
        if any(extra) and kind == "average":
            raise UnsupportedError(f"{kind} pooling with ceil_mode=True adds a partial window here (output "
                                   f"{out} instead of {floor}), which divides by fewer values",
                                   "use ceil_mode=False, or size the input so the windows fit")
    if kind == "average" and any(p) and not include_pad:
        raise UnsupportedError("average pooling with padding and count_include_pad=False divides each window by "
                               "a different count", "use count_include_pad=True (the default)")
    return {"ndim": ndim, "kernel": list(k), "stride": list(s), "padding": list(p)}, extra


class _QPool(QModule):
    keeps_exp = True

    def __init__(self, profile, attrs: dict):
        super().__init__(profile)
        self.attrs = attrs

    def to_ir(self, name, inputs, out_shape):
        return Node(name, self.op, [inputs[0].name], [name], dict(self.attrs)), self._out_spec(name, inputs, out_shape)


class QMaxPool(_QPool):
    op = "maxpool"

    def float_forward(self, xs):
        return type(self).forward(self, xs, None)  # the max of real values: the same computation

    def forward(self, xs, exps):
        fn = F.max_pool1d if self.attrs["ndim"] == 1 else F.max_pool2d
        # max of exact values is exact; torch pads with -inf, which never wins (each window keeps an input)
        return fn(xs[0], self.attrs["kernel"], self.attrs["stride"], self.attrs["padding"])


class QAvgPool(_QPool):
    op = "avgpool"

    def float_forward(self, xs):
        k, s, p = self.attrs["kernel"], self.attrs["stride"], self.attrs["padding"]
        fn = F.avg_pool1d if self.attrs["ndim"] == 1 else F.avg_pool2d
        return fn(xs[0], k, s, p, count_include_pad=True)

    def forward(self, xs, exps):
        x, e = xs[0], int(exps[0])
        k, s, p = self.attrs["kernel"], self.attrs["stride"], self.attrs["padding"]
        xi = x.to(torch.float64) * 2.0**e
        # the window sum (divisor 1) with zero padding, divided below by the whole window: count_include_pad
        if self.attrs["ndim"] == 1:
            total = F.avg_pool2d(xi.unsqueeze(2), (1, k[0]), (1, s[0]), (0, p[0]), divisor_override=1).squeeze(2)
        else:
            total = F.avg_pool2d(xi, k, s, p, divisor_override=1)
        n = math.prod(k)
        q = ste(total / n, arith.round_div(total.detach(), n, self.pool_rounding))
        return (q * 2.0**-e).to(x.dtype)


class QGlobalAvgPool(_QPool):
    op = "global_avgpool"

    def float_forward(self, xs):
        return xs[0].mean(dim=tuple(range(2, xs[0].dim())), keepdim=self.attrs["keepdim"])

    def forward(self, xs, exps):
        x, e = xs[0], int(exps[0])
        dims = tuple(range(2, x.dim()))
        total = (x.to(torch.float64) * 2.0**e).sum(dim=dims, keepdim=self.attrs["keepdim"])
        n = math.prod(x.shape[2:])
        q = ste(total / n, arith.round_div(total.detach(), n, self.pool_rounding))
        return (q * 2.0**-e).to(x.dtype)


class MaxPoolCapture(OpCapture):
    op = "maxpool"

    def matches(self, node, ctx):
        return isinstance(ctx.module(node), nn.MaxPool1d | nn.MaxPool2d) or _fn_name(node) in _MAX_FUNCS

    def capture(self, node, ctx):
        if ctx.module(node) is not None and ctx.module(node).return_indices:
            raise UnsupportedError("max pooling with return_indices=True is not supported", "set return_indices=False")
        attrs, extra = _window_args(node, ctx, "max")
        cap = Captured(QMaxPool(ctx.profile, attrs), node_name(node), [node.args[0]], node)
        if any(extra):  # ceil_mode's partial windows: the input padded at the end with values that never win
            cap.before.append((f"{cap.name}_pad", QPad(ctx.profile, [0] * len(extra) + extra, fill="min")))
        return cap


class AvgPoolCapture(OpCapture):
    op = "avgpool"

    def matches(self, node, ctx):
        return isinstance(ctx.module(node), nn.AvgPool1d | nn.AvgPool2d) or _fn_name(node) in _AVG_FUNCS

    def capture(self, node, ctx):
        mod = ctx.module(node)
        if mod is not None and getattr(mod, "divisor_override", None):
            raise UnsupportedError("avg pooling with divisor_override is not supported", "drop divisor_override")
        return Captured(QAvgPool(ctx.profile, _window_args(node, ctx, "average")[0]), node_name(node), [node.args[0]], node)


class GlobalAvgPoolCapture(OpCapture):
    op = "global_avgpool"

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

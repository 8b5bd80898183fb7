"""QAT module and capture of `upsample` (torch side of npukit/ops/upsample.py): nn.Upsample,
nn.UpsamplingNearest2d and F.interpolate in mode 'nearest' by integer factors."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedError
from ..ir import Node
from ..ops.upsample import scale_of
from .base import Captured, OpCapture, node_name
from .fakequant import QModule


class QUpsample(QModule):
    op = "upsample"
    keeps_exp = True

    def __init__(self, profile, scale: list[int]):
        super().__init__(profile)
        self.scale = list(scale)

    def forward(self, xs, exps):
        return F.interpolate(xs[0], scale_factor=tuple(float(s) for s in self.scale), mode="nearest")  # copies

    def float_forward(self, xs):
        return type(self).forward(self, xs, None)

    def to_ir(self, name, inputs, out_shape):
        node = Node(name, self.op, [inputs[0].name], [name], {"scale": self.scale})
        return node, self._out_spec(name, inputs, out_shape)


class UpsampleCapture(OpCapture):
    op = "upsample"

    def matches(self, node, ctx):
        mod = ctx.module(node)
        if mod is not None:
            return isinstance(mod, nn.Upsample)  # UpsamplingNearest2d is one
        return node.op == "call_function" and node.target is F.interpolate

    def capture(self, node, ctx):
        mod = ctx.module(node)
        mode = mod.mode if mod is not None else ctx.kwargs(node).get("mode", "nearest")
        if mode != "nearest":
            raise UnsupportedError(f"upsampling in mode {mode!r} is not supported (only 'nearest')",
                                   "use mode='nearest', or a ConvTranspose layer")
        scale = scale_of(ctx.shape(node.args[0])[1:], ctx.shape(node)[1:])
        if scale is None:
            raise UnsupportedError(f"upsampling {ctx.shape(node.args[0])[1:]} to {ctx.shape(node)[1:]} is not by "
                                   "integer factors", "use an integer scale_factor")
        return Captured(QUpsample(ctx.profile, scale), node_name(node), [node.args[0]], node)

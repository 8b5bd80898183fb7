"""QAT module and capture of `reshape` (torch side of npukit/ops/reshape.py)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UnsupportedError
from ..ir import Node
from .base import Captured, OpCapture, node_name
from .fakequant import QModule

_METHODS = ("view", "reshape", "flatten")
_FUNCTIONS = (torch.flatten, torch.reshape)


class QReshape(QModule):
    op = "reshape"
    keeps_exp = True

    def __init__(self, profile, shape: tuple[int, ...]):
        super().__init__(profile)
        self.shape = tuple(shape)

    def forward(self, xs, exps):
        return xs[0].reshape(xs[0].shape[0], *self.shape)

    def float_forward(self, xs):
        return type(self).forward(self, xs, None)

    def to_ir(self, name, inputs, out_shape):
        node = Node(name, self.op, [inputs[0].name], [name], {"shape": list(self.shape)})
        return node, self._out_spec(name, inputs, out_shape)


class ReshapeCapture(OpCapture):
    op = "reshape"

    def matches(self, node, ctx):
        if node.op == "call_module":
            return isinstance(ctx.module(node), nn.Flatten)
        if node.op == "call_method":
            return node.target in _METHODS
        return node.op == "call_function" and node.target in _FUNCTIONS

    def capture(self, node, ctx):
        src = node.args[0]
        before, after = ctx.shape(src), ctx.shape(node)
        if not after or after[0] != before[0]:
            raise UnsupportedError(f"reshape from {before} to {after} mixes the batch dimension into the data",
                                   "keep dimension 0 as the batch, e.g. x.view(x.size(0), -1)")
        return Captured(QReshape(ctx.profile, after[1:]), node_name(node), [src], node)

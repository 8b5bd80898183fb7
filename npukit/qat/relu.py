"""QAT module and capture of `relu` (torch side of npukit/ops/relu.py)."""

from __future__ import annotations

from ..ir import Node
from .base import Captured, OpCapture, node_name
from .fakequant import QModule


class QReLU(QModule):
    op = "relu"
    keeps_exp = True

    def forward(self, xs, exps):
        return xs[0].clamp(min=0)  # exact on exact values

    def float_forward(self, xs):
        return xs[0].clamp(min=0)

    def to_ir(self, name, inputs, out_shape):
        return Node(name, self.op, [inputs[0].name], [name]), self._out_spec(name, inputs, out_shape)


class ReLUCapture(OpCapture):
    op = "relu"

    def matches(self, node, ctx):
        return ctx.is_relu(node)

    def capture(self, node, ctx):
        return Captured(QReLU(ctx.profile), node_name(node), [node.args[0]], node)

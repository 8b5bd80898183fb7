"""QAT module and capture of `add` (torch side of npukit/ops/add.py)."""

from __future__ import annotations

import operator

import torch

from .. import arith
from ..errors import UnsupportedError
from ..ir import Node
from .base import Captured, OpCapture, is_call, node_name, tensor_operands
from .fakequant import ObservedQModule, ste


class QEltwise(ObservedQModule):
    """An element-wise op of several activations with an optional fused ReLU (add, mul)."""

    def __init__(self, profile, relu: bool):
        super().__init__(profile)
        self.relu = relu

    def to_ir(self, name, inputs, out_shape):
        node = Node(name, self.op, [t.name for t in inputs], [name], {"relu": self.relu})
        return node, self._out_spec(name, inputs, out_shape)


class QAdd(QEltwise):
    op = "add"

    def forward(self, xs, exps):
        es = [int(e) for e in exps]
        def observed():
            return sum(x.detach().to(torch.float64) for x in xs)

        e_out = self.scheme.shared_exp(es, self.observe(observed, self.act_bits, positive=self.relu))
        self.out_exp.fill_(e_out)
        parts = []
        for x, e in zip(xs, es, strict=True):
            xi = x.to(torch.float64) * 2.0**e
            parts.append(ste(xi * 2.0 ** (e_out - e), arith.round_shift(xi.detach(), e - e_out, self.rounding)))
        lo, hi = arith.act_range(self.act_bits, self.relu)
        q = sum(parts).clamp(lo, hi)
        return (q * 2.0**-e_out).float()

    def float_forward(self, xs):
        y = sum(xs)
        return y.clamp(min=0) if self.relu else y


class AddCapture(OpCapture):
    op = "add"

    def matches(self, node, ctx):
        return is_call(node, (operator.add, operator.iadd, torch.add), ("add", "add_")) and len(node.args) == 2

    def capture(self, node, ctx):
        a, b = tensor_operands(node, "adding a constant is not supported",
                               "fold the constant into the previous layer's bias")
        if node.kwargs.get("alpha", 1) != 1:
            raise UnsupportedError("torch.add with alpha != 1 is not supported", "scale an operand's layer instead")
        if ctx.shape(a) != ctx.shape(b):
            raise UnsupportedError(f"operands have shapes {ctx.shape(a)} and {ctx.shape(b)}; broadcasting is not supported",
                                   "make both operands the same shape")
        relu, last, absorbed = ctx.fuse_relu(node)
        return Captured(QAdd(ctx.profile, relu), node_name(node), [a, b], last, absorbed)

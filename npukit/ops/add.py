"""Element-wise add of same-shape tensors (residual connections), ReLU fusable.

Each operand is right-shifted (with the target's rounding) to the output exponent, which is never
above the smallest input exponent, then the sum is saturated: operands are only ever shifted right,
as the venus NPU requires, and no operand can overflow before the add.
"""

from __future__ import annotations

import math
import operator

import torch

from .. import arith
from ..errors import NpukitError, UnsupportedError
from ..ir import Node
from ..qat.fakequant import ObservedQModule, ste
from .base import Captured, OpDef, node_name, register


class QAdd(ObservedQModule):
    op = "add"

    def __init__(self, profile, relu: bool):
        super().__init__(profile)
        self.relu = relu

    def forward(self, xs, exps):
        es = [int(e) for e in exps]
        def observed():
            real = sum(x.detach().to(torch.float64) for x in xs)
            return (real.clamp(min=0) if self.relu else real.abs()).max()

        e_out = min(self.observe(observed, self.act_bits), *es)
        self.out_exp.fill_(e_out)
        parts = []
        for x, e in zip(xs, es, strict=True):
            xi = x.to(torch.float64) * 2.0**e
            parts.append(ste(xi * 2.0 ** (e_out - e), arith.round_shift(xi.detach(), e - e_out, self.rounding)))
        lo, hi = arith.act_range(self.act_bits, self.relu)
        q = sum(parts).clamp(lo, hi)
        return (q * 2.0**-e_out).float()

    def to_ir(self, name, inputs, out_shape):
        node = Node(name, self.op, [t.name for t in inputs], [name], {"relu": self.relu})
        return node, self._out_spec(name, inputs, out_shape)


def _is_add(node) -> bool:
    if node.op == "call_function":
        return node.target in (operator.add, operator.iadd, torch.add)
    return node.op == "call_method" and node.target in ("add", "add_")


@register
class Add(OpDef):
    name = "add"

    def matches(self, node, ctx):
        return _is_add(node) and len(node.args) == 2

    def capture(self, node, ctx):
        a, b = node.args
        if not all(hasattr(v, "meta") and "tensor_meta" in v.meta for v in (a, b)):
            raise UnsupportedError("adding a constant is not supported", "fold the constant into the previous layer's bias")
        if node.kwargs.get("alpha", 1) != 1:
            raise UnsupportedError("torch.add with alpha != 1 is not supported", "scale an operand's layer instead")
        if ctx.shape(a) != ctx.shape(b):
            raise UnsupportedError(f"operands have shapes {ctx.shape(a)} and {ctx.shape(b)}; broadcasting is not supported",
                                   "make both operands the same shape")
        relu, last, absorbed = ctx.fuse_relu(node)
        return Captured(QAdd(ctx.profile, relu), node_name(node), [a, b], last, absorbed)

    def infer_shapes(self, node, in_shapes):
        if any(tuple(s) != tuple(in_shapes[0]) for s in in_shapes):
            raise NpukitError(f"{node.name}: operands have different shapes {in_shapes}")
        return [tuple(in_shapes[0])]

    def run(self, node, inputs, graph):
        out = graph.tensors[node.outputs[0]]
        total = sum(arith.round_shift(x, graph.tensors[t].exp - out.exp, graph.rounding)
                    for x, t in zip(inputs, node.inputs, strict=True))
        lo, hi = arith.act_range(out.bits, node.attrs["relu"])
        return [arith.saturate(total, lo, hi).astype(out.dtype)]

    def to_c(self, node, b):
        g = b.graph
        out = g.tensors[node.outputs[0]]
        (x, y), (ex, ey) = node.inputs, (g.tensors[t].exp - out.exp for t in node.inputs)
        lo, hi = arith.act_range(out.bits, node.attrs["relu"])
        return [f"nk_add({math.prod(out.shape)}, {b.ptr(x)}, {ex}, {b.ptr(y)}, {ey}, {lo}, {hi}, "
                f"{b.rounding(g.rounding)}, {b.ptr(node.outputs[0])});"]

    def to_onnx(self, node, inputs, b):
        g = b.graph
        out = g.tensors[node.outputs[0]]
        parts = [b.round_shift(x, g.tensors[t].exp - out.exp, g.rounding) for x, t in zip(inputs, node.inputs, strict=True)]
        total = parts[0]
        for p in parts[1:]:
            total = b.op("Add", [total, p])
        return b.saturate(total, *arith.act_range(out.bits, node.attrs["relu"]))

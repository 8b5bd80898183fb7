"""Element-wise add of same-shape tensors (residual connections), ReLU fusable.

Each operand is right-shifted (with the target's rounding) to the output exponent, which is never
above the smallest input exponent, then the sum is saturated: operands are only ever shifted right,
as the venus NPU requires, and no operand can overflow before the add.
"""

from __future__ import annotations

import math

from .. import arith
from ..errors import NpukitError
from .base import MAX_ELTWISE_BITS, OpDef


class Add(OpDef):
    name = "add"
    arity = (2, None)
    attrs = {"relu": "bool"}
    inplace = True

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

    def tensor_problems(self, node, graph, scheme):
        out = graph.tensors[node.outputs[0]]
        if out.bits > MAX_ELTWISE_BITS:
            return [f"output {out.name!r} is {out.bits}-bit; add writes at most {MAX_ELTWISE_BITS}-bit values"]
        return []

    def rules(self, node, graph, profile):
        from ..rules import add_rules

        return add_rules(node, graph, profile)

    def to_c(self, node, b):
        g = b.graph
        out = g.tensors[node.outputs[0]]
        (x, y), (ex, ey) = node.inputs, (g.tensors[t].exp - out.exp for t in node.inputs)
        lo, hi = arith.act_range(out.bits, node.attrs["relu"])
        fields = {"n": math.prod(out.shape), "a_shift": ex, "b_shift": ey, "act_min": lo, "act_max": hi,
                  "rounding": b.rounding(g.rounding)}
        p = b.struct("nk_add_params", f"{b.ident(node.name)}_p", fields)
        return [f"nk_add({p}, {b.ptr(x)}, {b.ptr(y)}, {b.ptr(node.outputs[0])});"]

    def to_onnx(self, node, inputs, b):
        g = b.graph
        out = g.tensors[node.outputs[0]]
        parts = [b.round_shift(x, g.tensors[t].exp - out.exp, g.rounding) for x, t in zip(inputs, node.inputs, strict=True)]
        total = parts[0]
        for p in parts[1:]:
            total = b.op("Add", [total, p])
        return b.saturate(total, *arith.act_range(out.bits, node.attrs["relu"]))

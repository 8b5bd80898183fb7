"""Element-wise multiply with requantisation: gates (x * sigmoid(...)), squeeze-excite channel scaling.

    out = saturate(round_shift(a * b, e_a + e_b - e_out))

The integer product is exact (two 8-bit operands: |a * b| <= 2^14). The second operand may broadcast
over trailing dimensions: its per-sample shape is the first's with every dimension after the first
`b_dims` set to 1 (squeeze-excite: (C, H, W) * (C, 1, 1)); `b_dims` = rank means the same shape.
"""

from __future__ import annotations

import math

from .. import arith
from ..errors import NpukitError
from .base import MAX_ELTWISE_BITS, OpDef

MAX_MUL_INPUT_BITS = 8  # the C kernel reads int8 operands


class Mul(OpDef):
    name = "mul"
    arity = (2, 2)
    attrs = {"relu": "bool"}

    def infer_shapes(self, node, in_shapes):
        a, b = (tuple(s) for s in in_shapes)
        if broadcast_split(a, b) is None:
            raise NpukitError(f"{node.name}: cannot multiply shapes {a} and {b}; the second operand may only "
                              "have size 1 in trailing dimensions (e.g. (C, H, W) * (C, 1, 1))")
        return [a]

    def tensor_problems(self, node, graph, scheme):
        out = graph.tensors[node.outputs[0]]
        problems = [f"input {t!r} is {graph.tensors[t].bits}-bit; mul reads at most {MAX_MUL_INPUT_BITS}-bit operands"
                    for t in node.inputs if graph.tensors[t].bits > MAX_MUL_INPUT_BITS]
        if out.bits > MAX_ELTWISE_BITS:
            problems.append(f"output {out.name!r} is {out.bits}-bit; mul writes at most {MAX_ELTWISE_BITS}-bit values")
        return problems

    def _shift(self, node, graph) -> int:
        a, b = (graph.tensors[t] for t in node.inputs)
        return a.exp + b.exp - graph.tensors[node.outputs[0]].exp

    def run(self, node, inputs, graph):
        out = graph.tensors[node.outputs[0]]
        prod = inputs[0].astype("int64") * inputs[1].astype("int64")  # numpy broadcasts the size-1 dimensions
        lo, hi = arith.act_range(out.bits, node.attrs["relu"])
        return [arith.saturate(arith.round_shift(prod, self._shift(node, graph), graph.rounding), lo, hi)
                .astype(out.dtype)]

    def macs(self, node, graph):
        return math.prod(graph.tensors[node.outputs[0]].shape)

    def to_onnx(self, node, inputs, b):
        g = b.graph
        out = g.tensors[node.outputs[0]]
        prod = b.op("Mul", inputs)  # integer-valued doubles: exact below 2^53
        lo, hi = arith.act_range(out.bits, node.attrs["relu"])
        return b.saturate(b.round_shift(prod, self._shift(node, g), g.rounding), lo, hi)

    def to_c(self, node, b):
        g = b.graph
        a_shape, b_shape = (g.tensors[t].shape for t in node.inputs)
        outer, inner = broadcast_split(tuple(a_shape), tuple(b_shape))
        out = g.tensors[node.outputs[0]]
        if out.bits > 8:
            raise NpukitError(f"{node.name}: the C multiply kernel writes 8-bit outputs")
        lo, hi = arith.act_range(out.bits, node.attrs["relu"])
        fields = {"outer": outer, "inner": inner, "shift": self._shift(node, g), "act_min": lo, "act_max": hi,
                  "rounding": b.rounding(g.rounding)}
        p = b.struct("nk_mul_params", f"{b.ident(node.name)}_p", fields)
        return [f"nk_mul({p}, {b.ptr(node.inputs[0])}, {b.ptr(node.inputs[1])}, {b.ptr(node.outputs[0])});"]


def broadcast_split(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int] | None:
    """(outer, inner) of a * b: `outer` blocks of `inner` values of a, block i times b's value i (b of a's
    shape: inner 1). None when b does not broadcast to a that way (size 1 only in trailing dimensions)."""
    if len(a) != len(b):
        return None
    k = next((i for i, d in enumerate(b) if d != a[i]), len(a))
    if any(d != 1 for d in b[k:]):
        return None
    return math.prod(a[:k]), math.prod(a[k:])

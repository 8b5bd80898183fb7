"""Concatenation along a non-batch axis. Operands are right-shifted to the smallest input exponent."""

from __future__ import annotations

import math

import numpy as np

from .. import arith
from ..errors import NpukitError
from .base import MAX_ELTWISE_BITS, OpDef


class Concat(OpDef):
    name = "concat"
    arity = (1, None)
    attrs = {"axis": "int"}
    attr_min = {"axis": 0}

    def infer_shapes(self, node, in_shapes):
        ax = node.attrs["axis"]
        first = list(in_shapes[0])
        for s in in_shapes[1:]:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first, strict=True)) if i != ax):
                raise NpukitError(f"{node.name}: shapes {in_shapes} differ off the concatenation axis {ax}")
        first[ax] = sum(s[ax] for s in in_shapes)
        return [tuple(first)]

    def run(self, node, inputs, graph):
        out = graph.tensors[node.outputs[0]]
        parts = [arith.round_shift(x, graph.tensors[t].exp - out.exp, graph.rounding)
                 for x, t in zip(inputs, node.inputs, strict=True)]
        return [np.concatenate(parts, axis=node.attrs["axis"] + 1).astype(out.dtype)]

    def tensor_problems(self, node, graph, scheme):
        ins, out = [graph.tensors[t] for t in node.inputs], graph.tensors[node.outputs[0]]
        problems = [f"output {out.name!r} is {out.bits}-bit but input {x.name!r} is {x.bits}-bit; concat writes "
                    "its inputs' values at their width" for x in ins if x.bits != out.bits]
        low = min(ins, key=lambda x: x.exp)
        if low.exp < out.exp:
            problems.append(f"output {out.name!r} has exponent {out.exp}, above input {low.name!r}'s {low.exp}; "
                            "concat only shifts operands right (to the smallest input exponent)")
        if out.bits > MAX_ELTWISE_BITS:
            problems.append(f"output {out.name!r} is {out.bits}-bit; concat writes at most {MAX_ELTWISE_BITS}-bit values")
        return problems

    def rules(self, node, graph, profile):
        from ..rules import concat_rules

        return concat_rules(node, graph, profile)

    def to_c(self, node, b):
        g, ax = b.graph, node.attrs["axis"]
        out = g.tensors[node.outputs[0]]
        outer, out_inner = math.prod(out.shape[:ax]), math.prod(out.shape[ax:])
        lines, offset = [], 0
        for i, t in enumerate(node.inputs):
            spec = g.tensors[t]
            inner = math.prod(spec.shape[ax:])
            fields = {"outer": outer, "part_inner": inner, "out_inner": out_inner, "offset": offset,
                      "shift": spec.exp - out.exp, "rounding": b.rounding(g.rounding)}
            p = b.struct("nk_concat_params", f"{b.ident(node.name)}_p{i}", fields)
            lines.append(f"nk_concat_part({p}, {b.ptr(t)}, {b.ptr(node.outputs[0])});")
            offset += inner
        return lines

    def to_onnx(self, node, inputs, b):
        g = b.graph
        out = g.tensors[node.outputs[0]]
        parts = [b.round_shift(x, g.tensors[t].exp - out.exp, g.rounding) for x, t in zip(inputs, node.inputs, strict=True)]
        return b.op("Concat", parts, axis=node.attrs["axis"] + 1)

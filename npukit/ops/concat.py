"""Concatenation along a non-batch axis. Operands are right-shifted to the smallest input exponent."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import arith
from ..errors import NpukitError, UnsupportedError
from ..ir import Node
from ..qat.fakequant import QModule, ste
from .base import Captured, OpDef, node_name, register


class QConcat(QModule):
    op = "concat"

    def __init__(self, profile, axis: int):
        super().__init__(profile)
        self.axis = axis  # per-sample axis (0 = channels)

    def forward(self, xs, exps):
        es = [int(e) for e in exps]
        e_out = min(es)
        self.out_exp.fill_(e_out)
        parts = []
        for x, e in zip(xs, es, strict=True):
            xi = x.to(torch.float64) * 2.0**e
            parts.append(ste(xi * 2.0 ** (e_out - e), arith.round_shift(xi.detach(), e - e_out, self.rounding)))
        return (torch.cat(parts, dim=self.axis + 1) * 2.0**-e_out).float()

    def to_ir(self, name, inputs, out_shape):
        node = Node(name, self.op, [t.name for t in inputs], [name], {"axis": self.axis})
        return node, self._out_spec(name, inputs, out_shape)


@register
class Concat(OpDef):
    name = "concat"

    def matches(self, node, ctx):
        return node.op == "call_function" and node.target in (torch.cat, torch.concat, torch.concatenate)

    def capture(self, node, ctx):
        # Read the call directly: torch.concat(..., axis=1) defeats fx's argument normalisation.
        tensors = list(node.args[0] if node.args else node.kwargs.get("tensors", ()))
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", node.kwargs.get("axis", 0))
        rank = len(ctx.shape(node))
        dim %= rank
        if dim == 0:
            raise UnsupportedError("concatenating along the batch dimension is not supported",
                                   "concatenate along channels (dim=1) or a spatial dimension")
        return Captured(QConcat(ctx.profile, dim - 1), node_name(node), tensors, node)

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

    def to_c(self, node, b):
        g, ax = b.graph, node.attrs["axis"]
        out = g.tensors[node.outputs[0]]
        outer, out_inner = math.prod(out.shape[:ax]), math.prod(out.shape[ax:])
        lines, offset = [], 0
        for t in node.inputs:
            spec = g.tensors[t]
            inner = math.prod(spec.shape[ax:])
            lines.append(f"nk_concat_part({outer}, {inner}, {out_inner}, {offset}, {spec.exp - out.exp}, "
                         f"{b.rounding(g.rounding)}, {b.ptr(t)}, {b.ptr(node.outputs[0])});")
            offset += inner
        return lines

    def to_onnx(self, node, inputs, b):
        g = b.graph
        out = g.tensors[node.outputs[0]]
        parts = [b.round_shift(x, g.tensors[t].exp - out.exp, g.rounding) for x, t in zip(inputs, node.inputs, strict=True)]
        return b.op("Concat", parts, axis=node.attrs["axis"] + 1)

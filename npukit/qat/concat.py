"""QAT module and capture of `concat` (torch side of npukit/ops/concat.py)."""

from __future__ import annotations

import torch

from .. import arith
from ..errors import UnsupportedError
from ..ir import Node
from .base import Captured, OpCapture, node_name
from .fakequant import QModule, ste


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

    def float_forward(self, xs):
        return torch.cat(xs, dim=self.axis + 1)

    def to_ir(self, name, inputs, out_shape):
        node = Node(name, self.op, [t.name for t in inputs], [name], {"axis": self.axis})
        return node, self._out_spec(name, inputs, out_shape)


class ConcatCapture(OpCapture):
    op = "concat"

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

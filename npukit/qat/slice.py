"""QAT module and capture of `slice` (torch side of npukit/ops/slice.py): the parts of torch.split /
torch.chunk along a per-sample axis, each `parts[i]` one slice node."""

from __future__ import annotations

import torch

from ..errors import UnsupportedError
from ..ir import Node
from .base import Captured, OpCapture, is_call, is_getitem, node_name
from .fakequant import QModule

_SPLITS = ((torch.split, torch.chunk, torch.tensor_split), ("split", "chunk", "tensor_split"))


def is_split(node) -> bool:
    return is_call(node, *_SPLITS)


class QSlice(QModule):
    op = "slice"
    keeps_exp = True

    def __init__(self, profile, axis: int, start: int, stop: int):
        super().__init__(profile)
        self.axis, self.start, self.stop = axis, start, stop

    def forward(self, xs, exps):
        return xs[0].narrow(self.axis + 1, self.start, self.stop - self.start)

    def float_forward(self, xs):
        return type(self).forward(self, xs, None)

    def to_ir(self, name, inputs, out_shape):
        node = Node(name, self.op, [inputs[0].name], [name], {"axis": self.axis, "start": self.start, "stop": self.stop})
        return node, self._out_spec(name, inputs, out_shape)


class SliceCapture(OpCapture):
    op = "slice"

    def matches(self, node, ctx):
        return (is_getitem(node) and len(node.args) == 2
                and isinstance(node.args[0], torch.fx.Node) and is_split(node.args[0]))

    def capture(self, node, ctx):
        split, index = node.args
        source = split.args[0]
        parts = split.meta["tensor_meta"]  # one TensorMetadata per part
        in_shape = ctx.shape(source)
        dim = next((p for p in (split.kwargs.get("dim"), *split.args[2:3]) if p is not None), 0)
        dim = dim + len(in_shape) if dim < 0 else dim
        if dim == 0:
            raise UnsupportedError("a split along the batch dimension", "split along channels or another "
                                   "per-sample axis (dim=1 or later)")
        sizes = [tuple(p.shape)[dim] for p in parts]
        start = sum(sizes[:index])
        return Captured(QSlice(ctx.profile, dim - 1, start, start + sizes[index]), node_name(node), [source], node)

"""Flatten / view / reshape: data movement only. Engines alias it; the exponent passes through."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ..errors import NpukitError, UnsupportedError
from ..ir import Node
from ..qat.fakequant import QModule
from .base import Captured, OpDef, node_name, register

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

    def to_ir(self, name, inputs, out_shape):
        node = Node(name, self.op, [inputs[0].name], [name], {"shape": list(self.shape)})
        return node, self._out_spec(name, inputs, out_shape)


@register
class Reshape(OpDef):
    name = "reshape"

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

    def infer_shapes(self, node, in_shapes):
        shape = tuple(node.attrs["shape"])
        if math.prod(shape) != math.prod(in_shapes[0]):
            raise NpukitError(f"{node.name}: cannot reshape {in_shapes[0]} to {shape}")
        return [shape]

    def run(self, node, inputs, graph):
        return [inputs[0].reshape(inputs[0].shape[0], *node.attrs["shape"])]

    def to_c(self, node, b):
        src, dst = node.inputs[0], node.outputs[0]
        if b.offsets[src] == b.offsets[dst]:
            return ["/* a view: same bytes, nothing to move */"]
        return [f"memmove({b.ptr(dst)}, {b.ptr(src)}, {math.prod(b.graph.tensors[src].shape)});"]

    def to_onnx(self, node, inputs, b):
        shape = np.array([-1, *node.attrs["shape"]], np.int64)  # -1: the batch
        return b.op("Reshape", [inputs[0], b.const(shape, np.int64, "shape")])

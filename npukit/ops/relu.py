"""A ReLU that could not be fused into the layer before it (e.g. after a pooling or a concat)."""

from __future__ import annotations

import numpy as np

from ..ir import Node
from ..qat.fakequant import QModule
from .base import Captured, OpDef, node_name, register


class QReLU(QModule):
    op = "relu"
    keeps_exp = True

    def forward(self, xs, exps):
        return xs[0].clamp(min=0)  # exact on exact values

    def to_ir(self, name, inputs, out_shape):
        return Node(name, self.op, [inputs[0].name], [name]), self._out_spec(name, inputs, out_shape)


@register
class ReLU(OpDef):
    name = "relu"

    def matches(self, node, ctx):
        return ctx.is_relu(node)

    def capture(self, node, ctx):
        return Captured(QReLU(ctx.profile), node_name(node), [node.args[0]], node)

    def infer_shapes(self, node, in_shapes):
        return [tuple(in_shapes[0])]

    def run(self, node, inputs, graph):
        return [np.maximum(inputs[0], 0)]

    def to_c(self, node, b):
        n = int(np.prod(b.graph.tensors[node.inputs[0]].shape))
        return [f"nk_relu({n}, {b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]

    def to_onnx(self, node, inputs, b):
        return b.op("Relu", inputs)

"""A ReLU that could not be fused into the layer before it (e.g. after a pooling or a concat)."""

from __future__ import annotations

import numpy as np

from .base import OpDef, with_tail


class ReLU(OpDef):
    name = "relu"
    passes_through = True
    inplace = True

    def infer_shapes(self, node, in_shapes):
        return [tuple(in_shapes[0])]

    def run(self, node, inputs, graph):
        return [np.maximum(inputs[0], 0)]

    def compile(self, node, graph):
        return lambda inputs, scratch: [np.maximum(inputs[0], 0)]  # elementwise: any axis order, any exact carrier

    def compile_after(self, prev, node, graph):
        """A ReLU after a conv or linear: folded into the requantisation's clip bounds (`_compiled_tail`)."""
        from . import get_op

        return with_tail(get_op(prev.op).compile_untailed(prev, graph, relu=True))

    def to_c(self, node, b):
        n = int(np.prod(b.graph.tensors[node.inputs[0]].shape))
        return [f"nk_relu({n}, {b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]

    def to_onnx(self, node, inputs, b):
        return b.op("Relu", inputs)

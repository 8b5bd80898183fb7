"""Flatten / view / reshape: data movement only. Engines alias it; the exponent passes through."""

from __future__ import annotations

import math

import numpy as np

from ..errors import NpukitError
from .base import OpDef, carried_order


class Reshape(OpDef):
    name = "reshape"
    passes_through = True
    attrs = {"shape": "int list"}
    attr_min = {"shape": 1}
    view = True

    def infer_shapes(self, node, in_shapes):
        shape = tuple(node.attrs["shape"])
        if math.prod(shape) != math.prod(in_shapes[0]):
            raise NpukitError(f"{node.name}: cannot reshape {in_shapes[0]} to {shape}")
        return [shape]

    def run(self, node, inputs, graph):
        return [inputs[0].reshape(inputs[0].shape[0], *node.attrs["shape"])]

    def compile(self, node, graph):
        shape = node.attrs["shape"]
        src = np.argsort(carried_order(1 + len(graph.tensors[node.inputs[0]].shape)))  # carried -> batch first
        dst = carried_order(1 + len(shape))

        def run(inputs, scratch):  # batch first (a copy unless the order is already right), reshaped, carried
            x = np.ascontiguousarray(inputs[0].transpose(src))
            return [x.reshape(len(x), *shape).transpose(dst)]

        return run

    def rules(self, node, graph, profile):
        from ..rules import flatten_rules

        return flatten_rules(node, graph, profile)

    def to_c(self, node, b):
        src, dst = node.inputs[0], node.outputs[0]
        if b.offsets[src] == b.offsets[dst]:
            return ["/* a view: same bytes, nothing to move */"]
        return [f"memmove({b.ptr(dst)}, {b.ptr(src)}, {math.prod(b.graph.tensors[src].shape)});"]

    def to_onnx(self, node, inputs, b):
        shape = np.array([-1, *node.attrs["shape"]], np.int64)  # -1: the batch
        return b.op("Reshape", [inputs[0], b.const(shape, np.int64, "shape")])

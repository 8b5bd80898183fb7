"""Nearest-neighbour upsampling by integer factors (nn.Upsample, F.interpolate mode 'nearest'): every
value repeated `scale[i]` times along spatial axis i. Data movement: exponent and bits pass through."""

from __future__ import annotations

import math

import numpy as np

from ..errors import NpukitError
from .base import OpDef


class Upsample(OpDef):
    name = "upsample"
    attrs = {"scale": "int list"}
    attr_min = {"scale": 1}
    passes_through = True

    def infer_shapes(self, node, in_shapes):
        shape, scale = tuple(in_shapes[0]), node.attrs["scale"]
        if len(scale) != len(shape) - 1 or len(scale) not in (1, 2):
            raise NpukitError(f"{node.name}: scale {scale} for a per-sample shape {shape}: give one factor per "
                              "spatial axis (1 or 2 of them)")
        return [(shape[0], *(d * s for d, s in zip(shape[1:], scale, strict=True)))]

    def run(self, node, inputs, graph):
        y = inputs[0]
        for axis, s in enumerate(node.attrs["scale"], start=2):
            y = np.repeat(y, s, axis=axis)
        return [y]

    def to_onnx(self, node, inputs, b):
        shape = b.graph.tensors[node.inputs[0]].shape
        scale = node.attrs["scale"]
        spread = [0, shape[0]]  # (batch, C, d1, 1, d2, 1, ...): each spatial axis gets a size-1 axis after it
        for d in shape[1:]:
            spread += [d, 1]
        x = b.op("Reshape", [inputs[0], b.const(np.array(spread), np.int64)])
        target = [1, shape[0]]
        for d, s in zip(shape[1:], scale, strict=True):
            target += [d, s]
        x = b.op("Expand", [x, b.const(np.array(target), np.int64)])  # copies: exact on every value
        out = [0, shape[0], *(d * s for d, s in zip(shape[1:], scale, strict=True))]
        return b.op("Reshape", [x, b.const(np.array(out), np.int64)])

    def to_c(self, node, b):
        shape = b.graph.tensors[node.inputs[0]].shape
        scale = node.attrs["scale"]
        h, sh = (shape[1], scale[0]) if len(scale) == 2 else (1, 1)
        w, sw = shape[-1], scale[-1]
        p = b.struct("nk_upsample_params", f"{b.ident(node.name)}_p", {"c": shape[0], "h": h, "w": w, "sh": sh, "sw": sw})
        return [f"nk_upsample({p}, {b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]

    def macs(self, node, graph):
        return 0


def scale_of(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int] | None:
    """The integer factors from a per-sample input shape to an output shape, or None."""
    if len(in_shape) != len(out_shape) or in_shape[0] != out_shape[0]:
        return None
    factors = [o // i for i, o in zip(in_shape[1:], out_shape[1:], strict=True)]
    if any(f < 1 or i * f != o for i, o, f in zip(in_shape[1:], out_shape[1:], factors, strict=True)):
        return None
    return factors if math.prod(factors) >= 1 else None

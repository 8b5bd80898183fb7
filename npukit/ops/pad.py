"""Constant padding of the spatial axes, each side on its own: `F.pad`, and what the symmetric paddings of conv
and pooling cannot say (padding='same' with an even kernel, a max pool's partial last window in ceil_mode).
`pads` is ONNX's order: the start of every spatial axis, then the end of every one. `value` is the integer
padded in (0, or the type's minimum before a max pool). Data movement: exponent and bits pass through."""

from __future__ import annotations

import numpy as np

from .. import arith
from ..errors import NpukitError
from .base import OpDef, pad_spatial


class Pad(OpDef):
    name = "pad"
    attrs = {"pads": "int list", "value": "int"}
    attr_min = {"pads": 0}
    passes_through = True

    def infer_shapes(self, node, in_shapes):
        shape, pads = tuple(in_shapes[0]), node.attrs["pads"]
        spatial = len(shape) - 1
        if spatial not in (1, 2) or len(pads) != 2 * spatial:
            raise NpukitError(f"{node.name}: pads {pads} for a per-sample shape {shape}: give a start and an end "
                              "for each spatial axis (1 or 2 of them)")
        return [(shape[0], *(d + a + b for d, a, b in zip(shape[1:], pads[:spatial], pads[spatial:], strict=True)))]

    def tensor_problems(self, node, graph, scheme):
        problems = super().tensor_problems(node, graph, scheme)
        lo, hi = arith.int_range(graph.tensors[node.inputs[0]].bits)
        if not lo <= node.attrs["value"] <= hi:
            problems.append(f"pad value {node.attrs['value']} is outside the input's range [{lo}, {hi}]")
        return problems

    def run(self, node, inputs, graph):
        pads, spatial = node.attrs["pads"], inputs[0].ndim - 2
        return [pad_spatial(inputs[0], pads[:spatial], node.attrs["value"], end=pads[spatial:])]

    def to_onnx(self, node, inputs, b):
        pads = node.attrs["pads"]
        spatial = len(pads) // 2
        full = [0, 0, *pads[:spatial], 0, 0, *pads[spatial:]]  # batch and channels unpadded
        return b.op("Pad", [inputs[0], b.const(np.array(full), np.int64), b.const(float(node.attrs["value"]))],
                    mode="constant")

    def to_c(self, node, b):
        shape, pads = b.graph.tensors[node.inputs[0]].shape, node.attrs["pads"]
        h, top, bottom = (shape[1], pads[0], pads[2]) if len(shape) == 3 else (1, 0, 0)
        left, right = pads[len(pads) // 2 - 1], pads[-1]
        fields = {"c": shape[0], "h": h, "w": shape[-1], "top": top, "bottom": bottom, "left": left, "right": right,
                  "value": node.attrs["value"]}
        p = b.struct("nk_pad_params", f"{b.ident(node.name)}_p", fields)
        return [f"nk_pad({p}, {b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]

    def macs(self, node, graph):
        return 0

"""One part of a split: `torch.split` / `torch.chunk` (or their tensor methods) along a per-sample axis,
each part a `slice` node reading [start, stop) of that axis. Data movement: exponent and bits pass through."""

from __future__ import annotations

import math

import numpy as np

from ..errors import NpukitError
from .base import OpDef


class Slice(OpDef):
    name = "slice"
    attrs = {"axis": "int", "start": "int", "stop": "int"}
    attr_min = {"axis": 0, "start": 0, "stop": 1}
    passes_through = True

    def infer_shapes(self, node, in_shapes):
        shape, a = list(in_shapes[0]), node.attrs
        if a["axis"] >= len(shape) or not 0 <= a["start"] < a["stop"] <= shape[a["axis"]]:
            raise NpukitError(f"{node.name}: slice [{a['start']}, {a['stop']}) of axis {a['axis']} does not fit the "
                              f"per-sample shape {tuple(shape)}")
        shape[a["axis"]] = a["stop"] - a["start"]
        return [tuple(shape)]

    def run(self, node, inputs, graph):
        a = node.attrs
        index = (slice(None),) * (a["axis"] + 1) + (slice(a["start"], a["stop"]),)
        return [np.ascontiguousarray(inputs[0][index])]

    def to_onnx(self, node, inputs, b):
        a = node.attrs
        args = [b.const(np.array([v]), np.int64) for v in (a["start"], a["stop"], a["axis"] + 1)]
        return b.op("Slice", [inputs[0], *args])

    def to_c(self, node, b):
        a = node.attrs
        shape = b.graph.tensors[node.inputs[0]].shape
        inner = math.prod(shape[a["axis"] + 1 :])
        outer = math.prod(shape[: a["axis"]])
        fields = {"outer": outer, "in_inner": shape[a["axis"]] * inner, "offset": a["start"] * inner,
                  "part_inner": (a["stop"] - a["start"]) * inner}
        p = b.struct("nk_slice_params", f"{b.ident(node.name)}_p", fields)
        return [f"nk_slice({p}, {b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]

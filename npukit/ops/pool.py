"""Pooling: max, average and global average (1d and 2d). The exponent passes through unchanged.

Max pooling is exact on integers. Average pooling sums the window and divides by its size with the
target's pool rounding (`arith.round_div`), so a non-power-of-two window is as exact as any other.
The QAT modules and capture are in npukit/qat/pool.py.
"""

from __future__ import annotations

import math

import numpy as np

from .. import arith
from ..errors import NpukitError
from .base import OpDef, pad_spatial, with_tail


def _window_reduce(x: np.ndarray, kernel, stride, combine) -> np.ndarray:
    """Combine (np.maximum, np.add) each window's values: one strided slice per kernel position, which
    numpy runs far faster than a reduction over a sliding-window view."""
    out_shape = [(n - k) // s + 1 for n, k, s in zip(x.shape[2:], kernel, stride, strict=True)]
    result = None
    for pos in np.ndindex(*kernel):
        part = x[(slice(None), slice(None),
                  *(slice(p, p + s * (m - 1) + 1, s) for p, s, m in zip(pos, stride, out_shape, strict=True)))]
        result = part.copy() if result is None else combine(result, part, out=result)
    return result


def _pool_shape(node, in_shape):
    a = node.attrs
    c, *spatial = in_shape
    if any(2 * p > k for p, k in zip(a["padding"], a["kernel"], strict=True)):
        raise NpukitError(f"{node.name}: padding {a['padding']} exceeds half the window {a['kernel']}")
    return [(c, *((n + 2 * p - k) // s + 1
                  for n, k, s, p in zip(spatial, a["kernel"], a["stride"], a["padding"], strict=True)))]


def _pool_c(node, b, kernel: str) -> list[str]:
    a, g = node.attrs, b.graph
    (c, *sp_in), (_, *sp_out) = g.tensors[node.inputs[0]].shape, g.tensors[node.outputs[0]].shape
    two = (lambda v: (1, *v)) if a["ndim"] == 1 else (lambda v: tuple(v))  # 1-d runs as height 1
    (ih, iw), (oh, ow), (kh, kw), (sh, sw) = two(sp_in), two(sp_out), two(a["kernel"]), two(a["stride"])
    ph, pw = (0, *a["padding"]) if a["ndim"] == 1 else a["padding"]
    fields = {"c": c, "in_h": ih, "in_w": iw, "out_h": oh, "out_w": ow, "k_h": kh, "k_w": kw, "stride_h": sh,
              "stride_w": sw, "rounding": b.rounding(g.target["pool_rounding"]), "pad_h": ph, "pad_w": pw}
    p = b.struct("nk_pool_params", f"{b.ident(node.name)}_p", fields)
    return [f"{kernel}({p}, {b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]


_WINDOW = {"ndim": "int", "kernel": "int list", "stride": "int list", "padding": "int list"}
_WINDOW_MIN = {"ndim": 1, "kernel": 1, "stride": 1, "padding": 0}


class MaxPool(OpDef):
    name = "maxpool"
    passes_through = True
    attrs = _WINDOW
    attr_min = _WINDOW_MIN

    def infer_shapes(self, node, in_shapes):
        return _pool_shape(node, in_shapes[0])

    def run(self, node, inputs, graph):
        # pad with the smallest integer: it never wins, as each window keeps an input
        x = pad_spatial(inputs[0], node.attrs["padding"], np.iinfo(inputs[0].dtype).min)
        return [_window_reduce(x, node.attrs["kernel"], node.attrs["stride"], np.maximum)]

    def compile(self, node, graph):
        kernel, stride, padding = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
        c, *spatial = graph.tensors[node.inputs[0]].shape
        out_spatial = graph.tensors[node.outputs[0]].shape[1:]
        # carried (n, *spatial, c): one strided slice of the spatial axes per kernel position, built once
        taps = [(slice(None), *(slice(p, p + s * (m - 1) + 1, s) for p, s, m in zip(pos, stride, out_spatial, strict=True)),
                 slice(None)) for pos in np.ndindex(*kernel)]
        inner = (slice(None), *(slice(p, p + m) for p, m in zip(padding, spatial, strict=True)), slice(None))

        def run(inputs, scratch):
            x = inputs[0]
            out = scratch.get("out")
            if out is None or out.dtype != x.dtype:
                # padded with the smallest value: it never wins, as each window keeps an input
                low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
                xp = np.full((len(x), *(m + 2 * p for m, p in zip(spatial, padding, strict=True)), c), low, x.dtype)
                out = scratch["out"] = np.empty((len(x), *out_spatial, c), x.dtype)
                scratch["padded"] = xp if any(padding) else None
            xp = scratch["padded"]
            if xp is not None:
                xp[inner] = x
                x = xp
            if len(taps) == 1:
                np.copyto(out, x[taps[0]])
                return [out]
            np.maximum(x[taps[0]], x[taps[1]], out=out)
            for tap in taps[2:]:
                np.maximum(out, x[tap], out=out)
            return [out]

        return run

    def compile_after(self, prev, node, graph):
        """Max pooling before the requantisation of the conv (or linear) before it: a monotonic tail
        (rounding, clip; not |y|) commutes with the max, max(t(a), t(b)) = t(max(a, b)), so the tail runs
        on the pooled values only (a quarter of them for a 2x2 window)."""
        from . import get_op

        k, s, pad = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
        if prev.op == "conv" and len(k) == 1 and k == s and k[0] > 1 and not any(pad):
            # the conv pools its own GEMM's output (`Conv.compile_untailed`'s `pool`)
            parts = get_op(prev.op).compile_untailed(prev, graph, pool=k[0])
            if parts is not None and parts[2]:
                return with_tail(parts)
        parts = get_op(prev.op).compile_untailed(prev, graph)
        if parts is None or not parts[2]:
            return None
        raw, tail, _ = parts
        pool = self.compile(node, graph)

        def subs(scratch: dict) -> tuple[dict, dict]:
            s = scratch.get("fused")
            if s is None:
                s = scratch["fused"] = ({}, {})
            return s

        def pooled(inputs, scratch):
            raw_s, pool_s = subs(scratch)
            return pool(raw(inputs, raw_s), pool_s)

        if hasattr(raw, "inlet"):
            pooled.inlet = lambda scratch, n: raw.inlet(subs(scratch)[0], n)
        return with_tail((pooled, tail, True))

    def rules(self, node, graph, profile):
        from ..rules import pool_rules

        return pool_rules(node, graph, profile)

    def to_c(self, node, b):
        return _pool_c(node, b, "nk_maxpool")

    def to_onnx(self, node, inputs, b):
        return b.op("MaxPool", inputs, kernel_shape=node.attrs["kernel"], strides=node.attrs["stride"],
                    pads=node.attrs["padding"] * 2)


class AvgPool(OpDef):
    name = "avgpool"
    passes_through = True
    attrs = _WINDOW
    attr_min = _WINDOW_MIN

    def infer_shapes(self, node, in_shapes):
        return _pool_shape(node, in_shapes[0])

    def run(self, node, inputs, graph):
        k = node.attrs["kernel"]
        x = pad_spatial(inputs[0].astype(np.int64), node.attrs["padding"])  # zeros: torch's count_include_pad
        total = _window_reduce(x, k, node.attrs["stride"], np.add)
        q = arith.round_div(total, math.prod(k), graph.target["pool_rounding"])
        return [q.astype(inputs[0].dtype)]

    def rules(self, node, graph, profile):
        from ..rules import pool_rules

        return pool_rules(node, graph, profile)

    def to_c(self, node, b):
        return _pool_c(node, b, "nk_avgpool")

    def to_onnx(self, node, inputs, b):
        from onnx import TensorProto

        k, c = node.attrs["kernel"], b.graph.tensors[node.inputs[0]].shape[0]
        ones = np.ones((c, 1, *k), np.float32)  # a depthwise all-ones conv sums each window exactly
        x = b.op("Cast", inputs, to=TensorProto.FLOAT)
        total = b.op("Conv", [x, b.const(ones, np.float32, "ones")], kernel_shape=k, strides=node.attrs["stride"],
                     pads=node.attrs["padding"] * 2, group=c)  # zero padding: torch's count_include_pad
        total = b.op("Cast", [total], to=TensorProto.DOUBLE)
        return b.round_div(total, math.prod(k), b.graph.target["pool_rounding"])


class GlobalAvgPool(OpDef):
    """AdaptiveAvgPool to 1, or mean over every spatial dimension (keepdim or not)."""

    name = "global_avgpool"
    passes_through = True
    attrs = {"keepdim": "bool"}

    def infer_shapes(self, node, in_shapes):
        c, *spatial = in_shapes[0]
        return [(c, *([1] * len(spatial)))] if node.attrs["keepdim"] else [(c,)]

    def run(self, node, inputs, graph):
        x = inputs[0]
        axes = tuple(range(2, x.ndim))
        total = x.sum(axis=axes, dtype=np.int64, keepdims=node.attrs["keepdim"])
        q = arith.round_div(total, math.prod(x.shape[2:]), graph.target["pool_rounding"])
        return [q.astype(x.dtype)]

    def rules(self, node, graph, profile):
        from ..rules import global_pool_rules

        return global_pool_rules(node, graph, profile)

    def to_c(self, node, b):
        c, *spatial = b.graph.tensors[node.inputs[0]].shape
        fields = {"c": c, "hw": math.prod(spatial), "rounding": b.rounding(b.graph.target["pool_rounding"])}
        p = b.struct("nk_global_avgpool_params", f"{b.ident(node.name)}_p", fields)
        return [f"nk_global_avgpool({p}, {b.ptr(node.inputs[0])}, {b.ptr(node.outputs[0])});"]

    def to_onnx(self, node, inputs, b):
        spatial = b.graph.tensors[node.inputs[0]].shape[1:]
        axes = b.const(np.arange(2, 2 + len(spatial)), np.int64, "axes")
        total = b.op("ReduceSum", [inputs[0], axes], keepdims=int(node.attrs["keepdim"]))
        return b.round_div(total, math.prod(spatial), b.graph.target["pool_rounding"])


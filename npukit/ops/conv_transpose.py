"""Transposed convolution (ConvTranspose1d/2d, groups 1): the MAC pipeline of conv with the sum of
products of a fractionally strided conv.

    out[o, y] = sum over i, k with y + pad - k * dil = stride * t, 0 <= t < n_in:  x[i, t] * w[i, o, k]

then the same bias and requantisation as conv (`_mac_requant`). The engine computes it as the equivalent
stride-1 conv: the input with stride - 1 zeros between values, padded by dil * (k - 1) - pad on both sides
(plus output_padding after), read with the kernel flipped and its channel axes swapped; every integer is
the same, so the conv path's exact carriers apply.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import arith
from ..errors import NpukitError
from .base import OpDef
from .mac import Conv, _abs_max, _check_mac, _mac_tail_onnx


class ConvTranspose(Conv):
    name = "conv_transpose"
    c_kernel = "nk_conv_transpose"  # the same nk_conv_params (groups 1), read as the transposed geometry
    attrs = {**Conv.attrs, "output_padding": "int list"}
    attr_min = {**Conv.attr_min, "output_padding": 0}

    def check_node(self, node):
        problem = OpDef.check_node(self, node)
        if problem is not None:
            return problem
        a, w, bias = node.attrs, node.params["weight"], node.params["bias"]
        swapped = dataclasses.replace(node, params={**node.params, "weight": np.swapaxes(w, 0, 1)})
        problem = _check_mac(swapped, a["ndim"] + 2)  # the bias is per output channel: the weight's axis 1
        if problem is None and a["ndim"] not in (1, 2):
            problem = f"has ndim {a['ndim']}"
        if problem is None and a["groups"] != 1:
            problem = f"has groups {a['groups']}; transposed convs are groups 1"
        if problem is None and bias.shape != (w.shape[1],):
            problem = f"has weight shape {w.shape} and bias shape {bias.shape}"
        return problem

    def compile_untailed(self, node, graph, relu: bool = False):
        # Conv's compiled kernel (and so `compile` and every fusion built on it) is not this op's: the plan
        # runs `run`, which builds the equivalent conv per call
        return None

    def infer_shapes(self, node, in_shapes):
        a, (c, *spatial) = node.attrs, in_shapes[0]
        w = node.params["weight"].shape  # (in, out, *kernel)
        if c != w[0]:
            raise NpukitError(f"{node.name}: input has {c} channels, weights expect {w[0]}")
        out = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, k, s, p, d, op in
               zip(spatial, w[2:], a["stride"], a["padding"], a["dilation"], a["output_padding"], strict=True)]
        if min(out) < 1 or any(op >= max(s, d) for op, s, d in zip(a["output_padding"], a["stride"], a["dilation"],
                                                                     strict=True)):
            raise NpukitError(f"{node.name}: output size {out}; output_padding must be below stride or dilation")
        return [(w[1], *out)]

    def equivalent_conv(self, node, x: np.ndarray):
        """The stride-1 conv node and the input it reads that give this node's sums."""
        a, w = node.attrs, node.params["weight"]
        nd = a["ndim"]
        zeros = np.zeros((*x.shape[:2], *((n - 1) * s + 1 for n, s in zip(x.shape[2:], a["stride"], strict=True))),
                         x.dtype)
        zeros[(slice(None), slice(None), *(slice(None, None, s) for s in a["stride"]))] = x
        lead = [d * (k - 1) - p for k, p, d in zip(w.shape[2:], a["padding"], a["dilation"], strict=True)]
        widths = [(0, 0), (0, 0)] + [(max(0, e), max(0, e) + op) for e, op in zip(lead, a["output_padding"], strict=True)]
        xp = np.pad(zeros, widths)
        crop = tuple(slice(max(0, -e), xp.shape[2 + i] - max(0, -e)) for i, e in enumerate(lead))  # pad > dil * (k - 1)
        xp = xp[(slice(None), slice(None), *crop)]
        flipped = np.ascontiguousarray(np.flip(w, axis=tuple(range(2, 2 + nd))).swapaxes(0, 1))
        attrs = {**a, "stride": [1] * nd, "padding": [0] * nd}
        return dataclasses.replace(node, op="conv", params={**node.params, "weight": flipped}, attrs=attrs), xp

    def run(self, node, inputs, graph):
        conv, xp = self.equivalent_conv(node, inputs[0])
        return Conv.run(self, conv, [xp], graph)

    def macs(self, node, graph):
        x = graph.tensors[node.inputs[0]].shape
        return math.prod(x) * math.prod(node.params["weight"].shape[1:])  # every input times its kernel

    def rules(self, node, graph, profile):
        from ..rules import conv_transpose_rules

        return conv_transpose_rules(node, graph, profile)

    def to_onnx(self, node, inputs, b):
        from onnx import TensorProto

        a, w = node.attrs, node.params["weight"]
        bound = arith.accumulator_bound(w.shape[0] * math.prod(w.shape[2:]), b.graph.tensors[node.inputs[0]].bits,
                                        _abs_max(w))
        if bound >= arith.EXACT_FLOAT32:
            raise NpukitError(f"{node.name}: its partial sums may pass 2**24, beyond an exact float32 ConvTranspose; "
                              "export it with 8-bit weights")
        x = b.op("Cast", [inputs[0]], to=TensorProto.FLOAT)
        y = b.op("ConvTranspose", [x, b.param(node, "weight", TensorProto.FLOAT)], kernel_shape=list(w.shape[2:]),
                 strides=a["stride"], pads=a["padding"] * 2, dilations=a["dilation"],
                 output_padding=a["output_padding"], group=1)
        return _mac_tail_onnx(node, b.op("Cast", [y], to=TensorProto.DOUBLE), b)

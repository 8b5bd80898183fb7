"""Standard ONNX export of the IR that onnxruntime runs bit for bit, and import back to the same IR.

Integers travel as integer-valued double tensors (exact below 2**53); convolutions run in float32, exact
while every partial sum stays below 2**24 (the layer is split along input channels otherwise). Each op
writes its own nodes (`OpDef.to_onnx`) with the helpers of `OnnxBuilder`, which spell the arithmetic
contract (`npukit.arith`) in standard operators. The IR itself (attributes, exponents, bit widths, the
target) rides along in the model's metadata, so `load_onnx` restores it exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import NpukitError
from .ir import Graph, Node

OPSET = 17
META_KEY = "npukit.ir"
_INT_TYPES = {8: TensorProto.INT8, 16: TensorProto.INT16, 32: TensorProto.INT32, 64: TensorProto.INT64}


def _int_type(bits: int) -> int:
    return next(t for b, t in _INT_TYPES.items() if bits <= b)


class OnnxBuilder:
    """Collects nodes and initializers; names every node after the IR node it implements."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self.prefix = ""

    def _name(self, what: str) -> str:
        self._n += 1
        return f"{self.prefix}/{what}_{self._n}"

    def param(self, node: Node, key: str, to: int = TensorProto.DOUBLE) -> str:
        """An IR parameter, stored once at its integer type (import reads it back by name), cast for use."""
        name = f"npukit.params/{self.graph.nodes.index(node)}/{key}"
        self.inits.append(numpy_helper.from_array(node.params[key], name))
        return self.op("Cast", [name], to=to)

    def const(self, value, dtype=np.float64, what: str = "const") -> str:
        name = self._name(what)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self._name(op_type), **attrs))
        return out

    # The arithmetic contract in standard operators (all on integer-valued doubles).
    def round_real(self, v: str, mode: str) -> str:
        if mode == "half_up":
            # floor(v) + (frac >= 0.5): exact for every double, as arith.round_real
            f = self.op("Floor", [v])
            frac = self.op("Sub", [v, f])
            up = self.op("Cast", [self.op("GreaterOrEqual", [frac, self.const(0.5)])], to=TensorProto.DOUBLE)
            return self.op("Add", [f, up])
        if mode == "half_even":
            return self.op("Round", [v])  # ONNX Round is half to even
        if mode == "floor":
            return self.op("Floor", [v])
        if mode == "trunc":
            return self.op("Mul", [self.op("Sign", [v]), self.op("Floor", [self.op("Abs", [v])])])
        raise NpukitError(f"unknown rounding mode {mode!r}")

    def round_shift(self, x: str, shift: int, mode: str) -> str:
        if shift <= 0:
            return x if shift == 0 else self.op("Mul", [x, self.const(2.0**-shift)])
        v = self.op("Mul", [x, self.const(2.0**-shift)])
        if mode == "half_up":  # x is an integer: v + 0.5 is exact (see arith.round_shift)
            return self.op("Floor", [self.op("Add", [v, self.const(0.5)])])
        return self.round_real(v, mode)

    def round_div(self, x: str, n: int, mode: str) -> str:
        if n & (n - 1) == 0:
            return self.round_shift(x, n.bit_length() - 1, mode)
        if mode == "half_up":
            num = self.op("Add", [self.op("Mul", [x, self.const(2.0)]), self.const(float(n))])
            return self.op("Floor", [self.op("Div", [num, self.const(2.0 * n)])])
        if mode == "floor":
            return self.op("Floor", [self.op("Div", [x, self.const(float(n))])])
        if mode == "trunc":
            return self.round_real(self.op("Div", [x, self.const(float(n))]), "trunc")
        if mode == "half_even":
            q = self.op("Floor", [self.op("Div", [x, self.const(float(n))])])
            r2 = self.op("Mul", [self.op("Sub", [x, self.op("Mul", [q, self.const(float(n))])]), self.const(2.0)])
            tie = self.op("Equal", [r2, self.const(float(n))])
            odd = self.op("Equal", [self.op("Mod", [q, self.const(2.0)], fmod=1), self.const(1.0)])
            odd_neg = self.op("Equal", [self.op("Mod", [q, self.const(2.0)], fmod=1), self.const(-1.0)])
            up = self.op("Or", [self.op("Greater", [r2, self.const(float(n))]),
                                self.op("And", [tie, self.op("Or", [odd, odd_neg])])])
            return self.op("Add", [q, self.op("Cast", [up], to=TensorProto.DOUBLE)])
        raise NpukitError(f"unknown rounding mode {mode!r}")

    def saturate(self, x: str, lo: int, hi: int) -> str:
        return self.op("Clip", [x, self.const(float(lo)), self.const(float(hi))])


def export_onnx(graph: Graph, path: str | Path) -> Path:
    """Write `graph` as standard ONNX (opset 17); checked with onnx.checker (full check) before saving."""
    from .ops import get_op

    b = OnnxBuilder(graph)
    g_in = []
    for name in graph.inputs:
        spec = graph.tensors[name]
        g_in.append(helper.make_tensor_value_info(name, _int_type(spec.bits), ["batch", *spec.shape]))
        b.prefix = name
        b.op("Cast", [name], out=f"{name}:q", to=TensorProto.DOUBLE)
    for node in graph.nodes:
        b.prefix = node.name
        outs = get_op(node.op).to_onnx(node, [f"{t}:q" for t in node.inputs], b)
        b.op("Identity", [outs], out=f"{node.outputs[0]}:q")
    g_out = []
    for name in graph.outputs:
        spec = graph.tensors[name]
        b.prefix = name
        b.op("Cast", [f"{name}:q"], out=f"{name}:out", to=_int_type(spec.bits))
        g_out.append(helper.make_tensor_value_info(f"{name}:out", _int_type(spec.bits), ["batch", *spec.shape]))
    model = helper.make_model(helper.make_graph(b.nodes, "npukit", g_in, g_out, b.inits),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="npukit")
    model.ir_version = 8  # readable by onnxruntime releases of the last few years
    helper.set_model_props(model, {META_KEY: json.dumps(graph.to_meta()), "npukit.target": graph.target["name"]})
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        onnx.save(model, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_onnx(path: str | Path) -> Graph:
    """Read an ONNX file written by `export_onnx` back to the identical IR.

    A foreign ONNX model is refused with one error listing every node npukit cannot take.
    """
    path = Path(path)
    try:
        model = onnx.load(path)
    except FileNotFoundError:
        raise NpukitError(f"{path}: no such file") from None
    except Exception as e:
        raise NpukitError(f"{path} is not a readable ONNX file ({type(e).__name__}: {e})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        lines = [f"  - {n.name or '<unnamed>'} ({n.op_type})" for n in model.graph.node]
        raise NpukitError(f"{path} was not exported by npukit: its {len(lines)} node(s) carry no npukit "
                          "integer arithmetic (exponents, bit widths). Unsupported nodes:\n" + "\n".join(lines)
                          + "\n    fix: build the model in PyTorch and export it with npukit.export_onnx")
    try:
        params = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
                  if init.name.startswith("npukit.params/")}
        graph = Graph.from_meta(json.loads(props[META_KEY]), lambda i, k: params[f"npukit.params/{i}/{k}"],
                                str(path))
    except NpukitError:
        raise
    except Exception as e:
        raise NpukitError(f"{path}: npukit metadata is damaged ({type(e).__name__}: {e})") from None
    return graph

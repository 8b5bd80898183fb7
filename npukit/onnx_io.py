"""Standard ONNX export of the IR that onnxruntime runs bit for bit, and import back to the same IR.

Integers travel as integer-valued double tensors (exact below 2**53); convolutions run in float32, exact
while every partial sum stays below 2**24; past that (16-bit weights, wide fan-in) a one-hot depthwise
Conv gathers each output's input window exactly and a double MatMul applies the weights. Each op
writes its own nodes (`OpDef.to_onnx`) with the helpers of `OnnxBuilder`, which spell the arithmetic
contract (`npukit.arith`) in standard operators. The IR itself (attributes, exponents, bit widths, the
target) rides along in the model's metadata, so `load_onnx` restores it exactly; it also exports that IR
again in memory and refuses a file whose graph differs from it (or whose parameters differ from the
digests written at export): an ONNX file edited after export.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from .errors import NpukitError
from .ir import Graph, Node

OPSET = 17
META_KEY = "npukit.ir"
PARAMS_KEY = "npukit.params"  # a digest of every parameter array (see _param_digests)
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
        name = _param_name(self.graph.nodes.index(node), key)
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


def _build_model(graph: Graph) -> onnx.ModelProto:
    """The ONNX model of `graph`, in memory and unchecked: what `export_onnx` writes and `load_onnx` compares
    a file's graph with."""
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
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="npukit",
                              producer_version=__version__)
    model.ir_version = 8  # readable by onnxruntime releases of the last few years
    helper.set_model_props(model, {META_KEY: json.dumps(graph.to_meta()), "npukit.target": graph.target["name"],
                                   PARAMS_KEY: json.dumps(_param_digests(graph))})
    return model


def _param_name(i: int, key: str) -> str:
    return f"npukit.params/{i}/{key}"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()


def _param_digests(graph: Graph) -> dict[str, str]:
    """A digest of every parameter array: the arrays are the IR's own, read back from the initializers, so
    re-exporting cannot reveal an edited weight; their digests, written at export, do."""
    return {_param_name(i, k): _digest(v) for i, n in enumerate(graph.nodes) for k, v in n.params.items()}


def export_onnx(graph: Graph, path: str | Path) -> Path:
    """Write `graph` as standard ONNX (opset 17); checked with onnx.checker (full check) before saving."""
    model = _build_model(graph)
    onnx.checker.check_model(model, full_check=True)
    from .fileio import write_atomic

    return write_atomic(path, lambda tmp: onnx.save(model, tmp))


_FIX_EDITED = ("\n    fix: export the model again with npukit.export_onnx; npukit deploys the IR in the metadata, "
               "so an edit to the ONNX graph would not reach the chip (edit the PyTorch model instead)")


def load_onnx(path: str | Path) -> Graph:
    """Read an ONNX file written by `export_onnx` back to the identical IR.

    The IR comes from the file's metadata; the file's graph must be exactly what exporting that IR gives
    (node by node, initializer by initializer), so an ONNX file edited after export is refused, naming the
    first difference. A foreign ONNX model (no npukit metadata) is refused with what it holds.
    """
    from .fileio import read_bytes

    path = Path(path)
    data = read_bytes(path, "an ONNX file")
    try:
        model = onnx.load_from_string(data)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise NpukitError(f"{path} is not an ONNX file ({len(data)} bytes that do not parse as an ONNX model)") from None
    if not model.HasField("graph") or not model.opset_import:
        raise NpukitError(f"{path} is not an ONNX file (its {len(data)} bytes parse as protobuf but hold no ONNX "
                          "graph)")
    props = {p.key: p.value for p in model.metadata_props}
    if META_KEY not in props:
        raise NpukitError(_foreign_message(path, model))
    try:
        params = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer
                  if init.name.startswith("npukit.params/")}
        graph = Graph.from_meta(json.loads(props[META_KEY]), lambda i, k: params[_param_name(i, k)], str(path))
    except NpukitError as e:
        if str(path) in str(e):
            raise
        raise NpukitError(f"{path}: the npukit IR in its metadata is inconsistent (the file was edited or damaged "
                          f"after export); {e}") from None
    except Exception as e:  # noqa: BLE001
        raise NpukitError(f"{path}: npukit metadata is damaged ({type(e).__name__}: {e})") from None
    try:
        difference = _first_difference(model, props, graph)
    except NpukitError as e:
        difference = str(e)
    except Exception as e:  # noqa: BLE001 - re-exporting an IR that validates but no export could have written
        difference = f"its IR cannot be exported again ({type(e).__name__}: {e})"
    if difference:
        other = (f" (or it was exported by npukit {model.producer_version}, whose export differs from this npukit "
                 f"{__version__})" if model.producer_version != __version__ else "")
        raise NpukitError(f"{path} was edited after export{other}: its ONNX graph is not what npukit exports for "
                          f"the IR in its metadata. First difference: {difference}" + _FIX_EDITED)
    return graph


def _foreign_message(path: Path, model: onnx.ModelProto) -> str:
    counts = Counter(n.op_type for n in model.graph.node)  # first appearance order
    kinds = [f"{op} x{c}" if c > 1 else op for op, c in counts.items()]
    shown = ", ".join(kinds[:12]) + (f", and {len(kinds) - 12} more op types" if len(kinds) > 12 else "")
    producer = f"{model.producer_name} {model.producer_version}".strip()
    by = f" (its producer: {producer})" if producer else ""
    n = len(model.graph.node)
    return (f"{path} was not exported by npukit{by}: it has {n} node{'s' * (n != 1)}"
            f"{': ' + shown if n else ''}, and no integer arithmetic (exponents, bit widths) that npukit could "
            "deploy bit-exactly. npukit reads only the ONNX files it wrote itself."
            "\n    fix: start from the PyTorch model: npukit.prepare it, train, and export it with "
            "npukit.export_onnx(npukit.to_ir(qmodel), path)")


def _first_difference(model: onnx.ModelProto, props: dict[str, str], graph: Graph) -> str | None:
    """How `model` differs from what exporting `graph` gives (its first difference), or None."""
    if PARAMS_KEY in props:  # files from before the digests have none: their parameters go unchecked
        stored = json.loads(props[PARAMS_KEY])
        if not isinstance(stored, dict):
            return f"the {PARAMS_KEY!r} metadata is not a mapping of parameter digests"
        for i, n in enumerate(graph.nodes):
            for k, v in n.params.items():
                name = _param_name(i, k)
                if stored.get(name) != _digest(v):
                    return (f"node {n.name!r} ({n.op}): its {k!r} parameter (initializer {name!r}) holds other "
                            "values than when it was exported")
        dropped = sorted(set(stored) - {_param_name(i, k) for i, n in enumerate(graph.nodes) for k in n.params})
        if dropped:
            return f"parameter {dropped[0]!r} was exported but the IR in the metadata no longer has it"
    want = _build_model(graph)
    wg, fg = want.graph, model.graph
    if list(model.opset_import) != list(want.opset_import):
        return (f"the file imports opsets {[(o.domain, o.version) for o in model.opset_import]}, the export "
                f"{[(o.domain, o.version) for o in want.opset_import]}")
    w_names, f_names = {n.name for n in wg.node}, {n.name for n in fg.node}
    for i in range(max(len(wg.node), len(fg.node))):
        w = wg.node[i] if i < len(wg.node) else None
        f = fg.node[i] if i < len(fg.node) else None
        if f is None:
            return f"node {w.name!r} ({w.op_type}) is missing: the file ends {len(wg.node) - i} node(s) early"
        if w is None:
            return f"node {f.name!r} ({f.op_type}) is not in the export: the file has {len(fg.node) - i} extra node(s)"
        if w.name != f.name:
            if w.name not in f_names:
                return f"node {w.name!r} ({w.op_type}) is missing (the file has {f.name!r} ({f.op_type}) in its place)"
            if f.name not in w_names:
                return f"node {f.name!r} ({f.op_type}) is not in the export (it stands where {w.name!r} should)"
            return f"node {f.name!r} ({f.op_type}) is out of place (the export has {w.name!r} there)"
        diff = _node_difference(w, f)
        if diff:
            return f"node {w.name!r} ({w.op_type}): {diff}"
    readers = {}
    for n in wg.node:
        for t in n.input:
            readers.setdefault(t, n)
    w_init, f_init = {t.name: t for t in wg.initializer}, {t.name: t for t in fg.initializer}
    for name, t in w_init.items():
        r = readers.get(name)
        node = f"node {r.name!r} ({r.op_type})" if r is not None else "no node"
        if name not in f_init:
            return f"{node}: initializer {name!r} is missing"
        diff = _values_difference(numpy_helper.to_array(t), numpy_helper.to_array(f_init[name]))
        if diff:
            return f"{node}: initializer {name!r} {diff}"
    extra = [name for name in f_init if name not in w_init]
    if extra:
        return f"initializer {extra[0]!r} is not in the export"
    for what, w_vi, f_vi in (("input", wg.input, fg.input), ("output", wg.output, fg.output)):
        if [v.SerializeToString(deterministic=True) for v in w_vi] != [v.SerializeToString(deterministic=True) for v in f_vi]:
            return (f"the graph {what}s are {[_value_info(v) for v in f_vi]}; the export has "
                    f"{[_value_info(v) for v in w_vi]}")
    return None


def _node_difference(w: onnx.NodeProto, f: onnx.NodeProto) -> str | None:
    if (w.domain, w.op_type) != (f.domain, f.op_type):
        return f"it is {f.op_type} in the file but {w.op_type} as exported"
    for what, a, b in (("inputs", w.input, f.input), ("outputs", w.output, f.output)):
        if list(a) != list(b):
            return f"{what} {list(b)} in the file but {list(a)} as exported"
    wa = {a.name: helper.get_attribute_value(a) for a in w.attribute}
    fa = {a.name: helper.get_attribute_value(a) for a in f.attribute}
    for k in sorted(wa.keys() | fa.keys()):
        if k not in fa:
            return f"attribute {k!r} ({_attr_text(wa[k])} as exported) is missing"
        if k not in wa:
            return f"attribute {k!r} = {_attr_text(fa[k])} is not in the export"
        if wa[k] != fa[k]:
            return f"attribute {k!r} is {_attr_text(fa[k])} in the file but {_attr_text(wa[k])} as exported"
    return None


def _attr_text(v) -> str:
    if isinstance(v, bytes):
        return repr(v.decode(errors="replace"))
    return repr(list(v)) if isinstance(v, list | tuple) else repr(v) if isinstance(v, int | float) else type(v).__name__


def _values_difference(w: np.ndarray, f: np.ndarray) -> str | None:
    if w.dtype != f.dtype or w.shape != f.shape:
        return f"is {f.dtype}{list(f.shape)} in the file but {w.dtype}{list(w.shape)} as exported"
    if w.tobytes() == f.tobytes():
        return None
    where = np.argwhere(np.asarray(w != f))
    if not len(where):  # equal as numbers, not as bytes: -0.0 for 0.0, another NaN
        return "holds other bytes than exported"
    at = tuple(int(k) for k in where[0])
    index = f" at index {list(at)}" if at else ""
    return f"holds {f[at].item()!r}{index} in the file but {w[at].item()!r} as exported"


def _value_info(v: onnx.ValueInfoProto) -> str:
    t = v.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in t.shape.dim]
    return f"{v.name}: {TensorProto.DataType.Name(t.elem_type).lower()}{dims}"

"""The IR: one small typed graph that every stage after capture speaks.

Tensors are integers with an exponent (real = q * 2**-exp) and a bit width; shapes exclude the batch
dimension. Nodes carry JSON-able attributes and integer parameters (weights, biases). An op's meaning
lives in `npukit.ops` (one file per op); this module only holds and stores the graph.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import NpukitError
from .schemes import Scheme, get_scheme

IR_FORMAT = "npukit-ir"
IR_VERSION = 2  # 2: MAC nodes carry their scheme's requantisation attributes


@dataclass
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # per sample (no batch dimension)
    bits: int
    exp: int  # real = q * 2**-exp

    @property
    def dtype(self) -> np.dtype:
        for bits, dt in ((8, np.int8), (16, np.int16), (32, np.int32)):
            if self.bits <= bits:
                return np.dtype(dt)
        return np.dtype(np.int64)


@dataclass
class Node:
    name: str  # PyTorch module path, or the traced function's node name
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        # One canonical order, so that every writer (model.bin, ONNX, IR file) is deterministic.
        self.params = dict(sorted(self.params.items()))


@dataclass
class Graph:
    target: dict  # the full target profile, so an IR file is self-contained
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, TensorSpec]
    nodes: list[Node]

    @property
    def rounding(self) -> str:
        return self.target["rounding"]

    @property
    def scheme(self) -> Scheme:
        """The requantisation scheme of the target the graph was quantized for (npukit/schemes.py)."""
        return get_scheme(self.target.get("scheme", "pow2"))

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def input_spec(self, i: int = 0) -> TensorSpec:
        return self.tensors[self.inputs[i]]

    def output_spec(self, i: int = 0) -> TensorSpec:
        return self.tensors[self.outputs[i]]

    # Input/output conversion: the only place real numbers meet the integer graph.
    def quantize_input(self, x, i: int = 0) -> np.ndarray:
        """Float input (batch first) -> the integers the chip receives."""
        from . import arith

        spec = self.input_spec(i)
        mode = self.target["rounding"]
        try:  # float32 and float16 stay as they are for half up: `arith.quantize` rounds them in fewer passes
            x = np.asarray(x)
            if x.dtype not in arith.NARROW_FLOATS or mode != "half_up":
                x = x.astype(np.float64, copy=False)
        except (TypeError, ValueError) as e:
            raise NpukitError(f"input {spec.name!r}: cannot read the data as real numbers ({e})") from None
        # one pass when all finite (summed in float64: a float32 sum of finite values could overflow)
        if not math.isfinite(np.add.reduce(x, axis=None, dtype=np.float64)) and not np.isfinite(x).all():
            bad = ~np.isfinite(x)
            first = tuple(int(k) for k in np.argwhere(bad)[0])
            raise NpukitError(f"input {spec.name!r}: {int(bad.sum())} of {x.size} values are NaN or infinite "
                              f"(the first at index {list(first)}: {x[first]}); integers cannot represent them, "
                              "so clean or clip the data before quantizing it")
        return arith.quantize(x, spec.exp, spec.bits, mode, out=True).astype(spec.dtype)

    def dequantize_output(self, q, i: int = 0) -> np.ndarray:
        return np.asarray(q, dtype=np.float64) * 2.0 ** -self.output_spec(i).exp

    def validate(self) -> None:
        """Every problem at once: each tensor defined once before use, every op known, each node's
        attributes and params as its op's schema requires (`OpDef.check_node`), shapes consistent, and
        the bit widths and exponents its kernel assumes of its tensors (`OpDef.tensor_problems`)."""
        from . import arith
        from .ops import get_op

        problems = []
        try:
            scheme = self.scheme
        except (NpukitError, AttributeError, TypeError) as e:
            scheme = None
            problems.append(f"target: {e}" if isinstance(e, NpukitError) else "target is not a mapping")
        defined = set(self.inputs)
        for t in self.inputs:
            if t not in self.tensors:
                problems.append(f"input {t!r} has no tensor spec")
        # Exponents far outside what fit_exponent produces mean a damaged file. A MAC's accumulator exponent is
        # the sum of two, and a scheme may set its bias or output exponent a bounded shift from that sum
        # (its bias_exp / out_exp): allow one more MAX_EXP for that shift.
        limit = 3 * max(-arith.MIN_EXP, arith.MAX_EXP)
        bad_specs = set()
        for spec in self.tensors.values():
            if not (2 <= spec.bits <= 64 and -limit <= spec.exp <= limit):
                problems.append(f"tensor {spec.name!r} has bits {spec.bits}, exponent {spec.exp}: out of range")
                bad_specs.add(spec.name)
        for n in self.nodes:
            for k in ("w_exp", "b_exp"):
                if k in n.attrs and not (isinstance(n.attrs[k], int) and -limit <= n.attrs[k] <= limit):
                    problems.append(f"node {n.name!r}: {k} {n.attrs[k]!r} is out of range")
        for n in self.nodes:
            try:
                op = get_op(n.op)
            except NpukitError as e:
                problems.append(f"node {n.name!r}: {e}")
                continue
            missing = [t for t in n.inputs if t not in defined]
            if missing:
                problems.append(f"node {n.name!r} reads {missing} before they are produced")
                continue
            for t in n.outputs:
                if t in defined:
                    problems.append(f"tensor {t!r} is produced twice (again by {n.name!r})")
                if t not in self.tensors:
                    problems.append(f"node {n.name!r} output {t!r} has no tensor spec")
                defined.add(t)
            lo, hi = op.arity
            if len(n.outputs) != 1 or len(n.inputs) < lo or (hi is not None and len(n.inputs) > hi):
                reads = f"{lo}" if lo == hi else f"at least {lo}"
                problems.append(f"node {n.name!r} ({n.op}): reads {len(n.inputs)} tensor(s) and writes "
                                f"{len(n.outputs)}; {n.op} reads {reads} and writes one")
                continue
            try:
                problem = op.check_node(n)
            except Exception as e:  # a param that is not an array, ...: the node is damaged all the same
                problem = f"has unreadable attributes or params ({type(e).__name__}: {e})"
            if problem:
                problems.append(f"node {n.name!r} ({n.op}): {problem}")
                continue  # the shape and tensor checks below read what the schema guarantees
            if not all(t in self.tensors for t in n.inputs + n.outputs):
                continue
            try:
                want = op.infer_shapes(n, [self.tensors[t].shape for t in n.inputs])
            except Exception as e:  # noqa: BLE001 - NpukitError or what nonsense shapes raise
                msg = (str(e).removeprefix(f"{n.name}: ") if isinstance(e, NpukitError)
                       else f"cannot infer its output shape ({type(e).__name__}: {e})")
                problems.append(f"node {n.name!r} ({n.op}): {msg}")
                continue
            got = [self.tensors[t].shape for t in n.outputs]
            if [tuple(s) for s in want] != [tuple(s) for s in got]:
                problems.append(f"node {n.name!r}: output shape {got} but the op gives {want}")
            if not bad_specs & set(n.inputs + n.outputs):
                problems += [f"node {n.name!r} ({n.op}): {p}" for p in op.tensor_problems(n, self, scheme)]
        for t in self.outputs:
            if t not in defined:
                problems.append(f"output {t!r} is never produced")
        if problems:
            raise NpukitError("invalid IR graph:\n" + "\n".join(f"  - {p}" for p in problems))

    def to_meta(self) -> dict:
        """Everything but the parameter arrays, as JSON-able data (they are stored by node index and name)."""
        return {
            "format": IR_FORMAT,
            "version": IR_VERSION,
            "target": self.target,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "tensors": [asdict(t) for t in self.tensors.values()],
            "nodes": [
                {"name": n.name, "op": n.op, "inputs": n.inputs, "outputs": n.outputs, "attrs": n.attrs,
                 "params": sorted(n.params)}
                for n in self.nodes
            ],
        }

    @classmethod
    def from_meta(cls, meta: dict, param: Callable[[int, str], np.ndarray], where: str) -> Graph:
        """Inverse of `to_meta`; `param(node_index, name)` fetches each array. Validates the result."""
        if meta.get("format") != IR_FORMAT:
            raise NpukitError(f"{where} is not an npukit IR file")
        if meta.get("version") != IR_VERSION:
            raise NpukitError(f"{where} has IR version {meta.get('version')}; this npukit reads {IR_VERSION}")
        nodes = [Node(nd["name"], nd["op"], list(nd["inputs"]), list(nd["outputs"]), dict(nd["attrs"]),
                      {k: param(i, k) for k in nd["params"]})
                 for i, nd in enumerate(meta["nodes"])]
        tensors = {t["name"]: TensorSpec(t["name"], tuple(t["shape"]), int(t["bits"]), int(t["exp"]))
                   for t in meta["tensors"]}
        g = cls(meta["target"], list(meta["inputs"]), list(meta["outputs"]), tensors, nodes)
        g.validate()
        return g

    # Storage: a zip (.npz-compatible) holding graph.json and one .npy per parameter.
    def save(self, path: str | Path) -> Path:
        from .fileio import write_atomic

        meta = self.to_meta()

        def write(tmp: Path) -> None:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr("graph.json", json.dumps(meta, indent=1))
                for i, n in enumerate(self.nodes):
                    for k, v in n.params.items():
                        buf = io.BytesIO()
                        np.save(buf, v, allow_pickle=False)
                        z.writestr(f"params/{i}/{k}.npy", buf.getvalue())

        return write_atomic(path, write)  # never a half-written file under the real name

    @classmethod
    def load(cls, path: str | Path) -> Graph:
        path = Path(path)
        try:
            with zipfile.ZipFile(path) as z:
                meta = json.loads(z.read("graph.json"))
                g = cls.from_meta(meta, lambda i, k: np.load(io.BytesIO(z.read(f"params/{i}/{k}.npy")),
                                                             allow_pickle=False), str(path))
        except NpukitError:
            raise
        except FileNotFoundError:
            raise NpukitError(f"{path}: no such file") from None
        except Exception as e:  # a damaged file can fail in zip, zlib, json or numpy: all mean the same to the user
            raise NpukitError(f"{path} is not a readable npukit IR file ({type(e).__name__}: {e})") from None
        return g


"""Per-layer dumps from every backend, one format, and the comparison that finds where two runs part.

A dump is one run of a model on one batch: for every tensor of the graph, in execution order, either the
integer tensor (batch first, at its IR dtype) or only its CRC32, one per sample (what small firmware can
print over a serial line). It is written as .npz (`Dump.save`); firmware CRC lines
(`npukit-dump <sample> <tensor> <crc32 hex> <bytes>`) load as a CRC-only dump (`load_dump`).

Producers: `dump_engine` (the reference engine), `dump_modelbin` (the engine on the graph read back from a
model.bin), `dump_onnx` (onnxruntime, every intermediate value), `dump_c` (the generated C, built with
NPUKIT_DUMP), `dump_runtime` (the C runtime that loads model.bin, `npukit-run --dump`) and
`npukit.qat.dump_qat` (QAT eval, with the user's source lines). `compare` names the first
tensor that differs.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NpukitError
from .ir import Graph

FORMAT = "npukit-dump"
VERSION = 1


def sample_crcs(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """CRC32 of each sample's bytes: little-endian at `dtype`, C order (as the C side writes them)."""
    a = np.ascontiguousarray(np.asarray(values).astype(np.dtype(dtype).newbyteorder("<")))
    return np.array([zlib.crc32(s.tobytes()) for s in a.reshape(len(a), -1)], np.uint32)


@dataclass
class Dump:
    backend: str
    order: list[str]  # tensor names in execution order, the graph's inputs first
    crcs: dict[str, np.ndarray]  # tensor -> uint32 CRC32 per sample
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # tensor -> integers; empty in a CRC-only dump
    layer_inputs: dict[str, list[str]] = field(default_factory=dict)  # tensor -> the tensors its layer read
    sources: dict[str, str] = field(default_factory=dict)  # tensor -> file:line of the user's code, when known

    @property
    def samples(self) -> int:
        return len(next(iter(self.crcs.values()))) if self.crcs else 0

    def save(self, path: str | Path) -> Path:
        from .fileio import write_atomic

        meta = {"format": FORMAT, "version": VERSION, "backend": self.backend, "order": self.order,
                "layer_inputs": self.layer_inputs, "sources": self.sources}
        arrays = {"meta": np.array(json.dumps(meta))}
        arrays.update({f"crc/{i}": self.crcs[t] for i, t in enumerate(self.order) if t in self.crcs})
        arrays.update({f"tensor/{i}": self.tensors[t] for i, t in enumerate(self.order) if t in self.tensors})
        return write_atomic(path, lambda tmp: np.savez_compressed(tmp, **arrays))

    def crc_only(self) -> Dump:
        return Dump(self.backend, self.order, self.crcs, {}, self.layer_inputs, self.sources)


def from_graph_values(graph: Graph, values: dict[str, np.ndarray], backend: str,
                      sources: dict[str, str] | None = None) -> Dump:
    """A dump of `values` (every tensor of `graph`, batch first)."""
    order = [*graph.inputs, *(t for n in graph.nodes for t in n.outputs)]
    missing = [t for t in order if t not in values]
    if missing:
        raise NpukitError(f"the {backend} run gave no values for {', '.join(missing)}")
    tensors = {t: np.asarray(values[t]).astype(graph.tensors[t].dtype) for t in order}
    crcs = {t: sample_crcs(v, graph.tensors[t].dtype) for t, v in tensors.items()}
    layer_inputs = {t: list(n.inputs) for n in graph.nodes for t in n.outputs}
    return Dump(backend, order, crcs, tensors, layer_inputs, dict(sources or {}))


def load_dump(path: str | Path, graph: Graph | None = None) -> Dump:
    """A dump saved by `Dump.save`, or a text file of CRC lines as firmware prints them (tensor order from
    the lines, or from `graph` when given)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise NpukitError(f"cannot read dump {path}: {e.strerror or e}") from None
    if data[:2] == b"PK":
        return _load_npz(path)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise NpukitError(f"{path} is neither an npukit dump (.npz) nor a text file of CRC lines") from None
    return parse_crc_lines(text, str(path), graph)


def _load_npz(path: Path) -> Dump:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError("not an npukit dump")
            order = list(meta["order"])
            crcs = {t: z[f"crc/{i}"] for i, t in enumerate(order) if f"crc/{i}" in z}
            tensors = {t: z[f"tensor/{i}"] for i, t in enumerate(order) if f"tensor/{i}" in z}
    except Exception as e:  # zip, JSON and key errors alike: one message
        raise NpukitError(f"{path} is not a readable npukit dump ({type(e).__name__}: {e})") from None
    return Dump(meta["backend"], order, crcs, tensors, meta.get("layer_inputs", {}), meta.get("sources", {}))


def parse_crc_lines(text: str, where: str = "<text>", graph: Graph | None = None) -> Dump:
    """CRC lines `npukit-dump SAMPLE TENSOR CRC32HEX NBYTES [HEXBYTES]` (other lines are ignored); the hex
    bytes, when present, give the whole tensor (a host run), which needs `graph` for dtypes and shapes."""
    per: dict[str, dict[int, int]] = {}
    raw: dict[str, dict[int, bytes]] = {}
    order: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] != "npukit-dump":
            continue
        try:
            sample, name, crc = int(parts[1]), parts[2], int(parts[3], 16)
        except ValueError:
            raise NpukitError(f"{where}: cannot read the dump line {line.strip()!r}") from None
        if name not in per:
            order.append(name)
        per.setdefault(name, {})[sample] = crc
        if len(parts) > 5 and graph is not None:
            raw.setdefault(name, {})[sample] = bytes.fromhex(parts[5])
    if not per:
        raise NpukitError(f"{where} holds no 'npukit-dump' lines")
    n = 1 + max(s for v in per.values() for s in v)
    crcs = {t: np.array([v.get(s, 0) for s in range(n)], np.uint32) for t, v in per.items()}
    tensors, layer_inputs = {}, {}
    if graph is not None:
        order = [t for t in [*graph.inputs, *(o for nd in graph.nodes for o in nd.outputs)] if t in per]
        layer_inputs = {t: list(nd.inputs) for nd in graph.nodes for t in nd.outputs}
        for t, samples in raw.items():
            spec = graph.tensors[t]
            if len(samples) == n:
                dt = spec.dtype.newbyteorder("<")
                tensors[t] = np.stack([np.frombuffer(samples[s], dt).reshape(spec.shape) for s in range(n)])
    return Dump("crc-lines", order, crcs, tensors, layer_inputs)


# --- producers ----------------------------------------------------------------------------------------------------
# Each takes `x`, the integer batch of a one-input model, or a list of batches, one per graph input.

def graph_inputs(graph: Graph, x) -> list[np.ndarray]:
    """`x` as one batch per graph input (a model with several inputs takes a list or tuple of them)."""
    xs = [np.asarray(v) for v in x] if isinstance(x, list | tuple) else [np.asarray(x)]
    if len(xs) != len(graph.inputs):
        raise NpukitError(f"the model takes {len(graph.inputs)} input(s) ({', '.join(graph.inputs)}), got {len(xs)}")
    return xs


def dump_engine(graph: Graph, x, backend: str = "engine") -> Dump:
    """The reference engine's every tensor on the integer batch `x`."""
    from .engine import run

    values: dict[str, np.ndarray] = {}
    run(graph, *graph_inputs(graph, x), trace=values)
    return from_graph_values(graph, values, backend)


def dump_modelbin(path: str | Path, x) -> Dump:
    """The engine on the graph read back from a model.bin (its weights as the file holds them)."""
    from . import modelbin

    return dump_engine(modelbin.read(path).graph, x, backend="model.bin")


def dump_onnx(model: Graph | str | Path, x) -> Dump:
    """onnxruntime on the exported model (a Graph is exported in memory), every intermediate value fetched."""
    import onnxruntime as ort
    from onnx import helper

    from .onnx_io import _build_model, load_onnx

    graph = model if isinstance(model, Graph) else load_onnx(model)
    proto = _build_model(graph)
    names = [*graph.inputs, *(t for n in graph.nodes for t in n.outputs)]
    for t in names:  # every tensor's integer-valued double (":q") becomes an output of the session
        if t not in graph.inputs:
            proto.graph.output.append(helper.make_empty_tensor_value_info(f"{t}:q"))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    fetch = [f"{t}:q" for t in names if t not in graph.inputs]
    feed = dict(zip(graph.inputs, graph_inputs(graph, x), strict=True))
    got = sess.run(fetch, feed)
    values = {**feed, **{t[:-2]: v for t, v in zip(fetch, got, strict=True)}}
    return from_graph_values(graph, {t: np.rint(v) for t, v in values.items()}, "onnxruntime")


def dump_c(model_bin: str | Path, x, workdir: str | Path, *, crc_only: bool = False,
           patch=None) -> Dump:
    """The generated C project, built with NPUKIT_DUMP, run on every sample of `x`; each layer's output is
    printed as a CRC line (and its bytes, unless `crc_only`). `patch(model_c_text) -> text` edits the
    generated model.c before the build (the tests plant faults with it)."""
    import subprocess

    from . import codegen, modelbin
    from .codegen.host import build

    packed = modelbin.read(model_bin)
    project = codegen.generate(packed, Path(workdir) / "c")
    if patch is not None:
        (project / "model.c").write_text(patch((project / "model.c").read_text()))
    flags = ["-DNPUKIT_DUMP"] + ([] if crc_only else ["-DNPUKIT_DUMP_FULL"])
    exe = build(project, "dump_run", defines=flags, extra_sources=["npukit_dump.c"])
    src = Path(workdir) / "dump_inputs.raw"
    xs = graph_inputs(packed.graph, x)  # a record: every input's sample in turn, as dump_run reads them
    np.concatenate([np.ascontiguousarray(v, dtype=np.int8).reshape(len(v), -1) for v in xs], axis=1).tofile(src)
    res = subprocess.run([str(exe), str(src)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise NpukitError(f"the generated C failed: {res.stdout[-500:]}{res.stderr[-500:]}")
    d = parse_crc_lines(res.stdout, "the generated C", packed.graph)
    d.backend = "c"
    return d


# --- comparison ---------------------------------------------------------------------------------------------------

@dataclass
class Difference:
    """Where two dumps part: the first tensor (in execution order) that differs, and what is known of it."""

    tensor: str
    a: str  # backend names
    b: str
    samples: list[int]  # samples whose CRCs differ
    count: int | None = None  # differing values (None: CRC-only)
    positions: list[tuple[int, ...]] = field(default_factory=list)  # the first few, (sample, ...index)
    max_abs_diff: int | None = None
    values: list[tuple[int, int]] = field(default_factory=list)  # (a, b) at those positions
    inputs: dict[str, str] = field(default_factory=dict)  # the layer's inputs: "equal" or what differs
    source: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["positions"] = [list(p) for p in self.positions]
        d["values"] = [list(v) for v in self.values]
        return d

    def describe(self) -> str:
        lines = [f"first difference: {self.tensor}" + (f" ({self.source})" if self.source else "")
                 + f", {self.a} vs {self.b}"]
        if self.note:
            lines.append(f"  {self.note}")
            if not self.samples:
                return "\n".join(lines)
        lines.append(f"  samples that differ: {len(self.samples)} ({_short(self.samples)})")
        if self.count is not None:
            lines.append(f"  values that differ: {self.count}; largest difference {self.max_abs_diff}")
            for p, (va, vb) in zip(self.positions, self.values, strict=True):
                lines.append(f"    at {list(p)}: {self.a} {va}, {self.b} {vb}")
        else:
            lines.append("  (CRC-only dump: values not known, only which samples differ)")
        for t, state in self.inputs.items():
            lines.append(f"  input {t}: {state}")
        return "\n".join(lines)


def _short(xs: list[int], k: int = 8) -> str:
    return ", ".join(map(str, xs[:k])) + (", ..." if len(xs) > k else "")


def compare(a: Dump, b: Dump, max_positions: int = 10) -> Difference | None:
    """The first tensor, in `a`'s execution order, whose values (or CRCs) differ between the two runs; None
    when every tensor both dumps hold is equal. Differing sample counts or shapes are differences too."""
    common = [t for t in a.order if t in b.crcs and t in a.crcs]
    if not common:
        raise NpukitError(f"the dumps share no tensor names ({a.backend}: {_short(a.order, 4)}; "
                          f"{b.backend}: {_short(b.order, 4)})")
    if a.samples != b.samples:
        return Difference(common[0], a.backend, b.backend, [],
                          note=f"the runs hold {a.samples} and {b.samples} samples: give both the same input")
    for t in common:
        bad = np.flatnonzero(a.crcs[t] != b.crcs[t]).tolist()
        if not bad:
            continue
        d = Difference(t, a.backend, b.backend, bad, source=a.sources.get(t) or b.sources.get(t, ""))
        if t in a.tensors and t in b.tensors:
            va, vb = a.tensors[t].astype(np.int64), b.tensors[t].astype(np.int64)
            if va.shape != vb.shape:
                d.note = f"shapes differ: {va.shape} vs {vb.shape}"
            else:
                diff = np.argwhere(va != vb)
                d.count = len(diff)
                d.max_abs_diff = int(np.abs(va - vb).max())
                d.positions = [tuple(int(i) for i in p) for p in diff[:max_positions]]
                d.values = [(int(va[p]), int(vb[p])) for p in d.positions]
        for src in a.layer_inputs.get(t, b.layer_inputs.get(t, [])):
            d.inputs[src] = _input_state(a, b, src, bad)
        return d
    return None


def _input_state(a: Dump, b: Dump, t: str, samples: list[int]) -> str:
    if t not in a.crcs or t not in b.crcs:
        return "not in both dumps"
    if np.array_equal(a.crcs[t], b.crcs[t]):
        if t in a.tensors:
            v = a.tensors[t][samples[0]].ravel()
            return f"equal in both runs (sample {samples[0]}: {_short(v.tolist(), 6)}; min {v.min()}, max {v.max()})"
        return "equal in both runs (by CRC)"
    return "differs too (an earlier tensor should have been reported)"


BACKENDS = ("engine", "onnx", "model.bin", "c", "runtime")


def dump_runtime(model_bin: str | Path, x, workdir: str | Path) -> Dump:
    """The C runtime (runtime/, the `npukit-run` runner) on a model.bin, every tensor of every sample traced."""
    from . import modelbin
    from .codegen import host

    graph = modelbin.read(model_bin).graph
    exe = host.cached_runtime()
    xs = [np.asarray(v, graph.input_spec(i).dtype) for i, v in enumerate(graph_inputs(graph, x))]
    _, lines = host.run_runtime(exe, model_bin, xs, workdir,
                                [graph.output_spec(i).dtype for i in range(len(graph.outputs))], dump=True)
    d = parse_crc_lines(lines, "the C runtime", graph)
    d.backend = "runtime"
    return d


def dump_backend(backend: str, model: str | Path, x, workdir: str | Path) -> Dump:
    """A named backend's dump of `model` (a model.bin, .npir or npukit .onnx file) on `x` (integers, or floats
    that are quantized at the model's input exponent; a list of them, one per input, for a model with several)."""
    from .packer import as_model_bin, load_model

    if backend not in BACKENDS:
        raise NpukitError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}, or give a dump file")
    graph = load_model(model)
    x = [graph.quantize_input(v, i) if v.dtype.kind == "f" else v for i, v in enumerate(graph_inputs(graph, x))]
    if backend == "engine":
        return dump_engine(graph, x)
    if backend == "onnx":
        return dump_onnx(graph, x)
    model_bin = as_model_bin(model, graph, workdir)
    if backend == "runtime":
        return dump_runtime(model_bin, x, workdir)
    return dump_modelbin(model_bin, x) if backend == "model.bin" else dump_c(model_bin, x, workdir)


compare_dumps = compare  # the public name (npukit.compare_dumps)

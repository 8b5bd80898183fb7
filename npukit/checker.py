"""`npukit check`: every rule of a target a model breaks, before any training, with a fix for each.

`check(model, example, target)` takes a PyTorch module (with an example batch), an npukit ONNX / IR /
model.bin file, or "file.py:ClassName". Torch models are captured leniently (an unsupported op that
keeps its shape is reported and stepped over), converted to the IR and checked with `rules.check_graph`,
the same function `prepare` and `pack` call. A clean model gets its per-layer resource table.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NpukitError, Problem
from .ir import Graph
from .targets import TargetProfile, load_target


@dataclass
class LayerRow:
    name: str
    op: str
    out_shape: tuple[int, ...]
    weight_bytes: int
    activation_bytes: int
    macs: int


@dataclass
class CheckResult:
    target: TargetProfile
    problems: list[Problem]
    graph: Graph | None = None  # None when the model could not be captured far enough
    layers: list[LayerRow] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)  # per memory: name, holds, used, capacity

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"target": self.target.name, "ok": self.ok, "problems": [p.to_dict() for p in self.problems],
                "layers": [vars(r) | {"out_shape": list(r.out_shape)} for r in self.layers], "memory": self.memory}

    def __repr__(self) -> str:
        return f"CheckResult(target={self.target.name!r}, ok={self.ok}, problems={len(self.problems)})"


def check(model, example=None, target=None, *, weight_bits: int | None = None) -> CheckResult:
    """Check `model` against `target`'s rules and memories; never raises for rule problems.

    `example`: a batch or a shape with the batch (e.g. (1, 3, 32, 32)); for a model with several inputs, a
    list of them, one per argument of forward(). `target` None: the profile an npukit file or graph was quantized for, or venus for a torch model.
    """
    graph = _as_graph(model)
    profile = load_target(target if target is not None else (graph.target if graph is not None else "venus"))
    if graph is not None:
        if example is not None:  # an npukit file knows its inputs: a different shape is a mistake to say
            given = [tuple(e.shape if hasattr(e, "shape") else e)[1:] for e in _examples(example)]
            want = [tuple(graph.tensors[t].shape) for t in graph.inputs]
            if given != want:
                raise NpukitError(f"--input gives samples of shape {', '.join(map(str, given))}, but the model takes "
                                  f"{', '.join(map(str, want))} (npukit files carry their input shapes: "
                                  "leave --input out)")
        return _check_graph(graph, profile)
    graph, problems, sources = _to_graph(model, example, profile, weight_bits)
    if graph is None:
        return CheckResult(profile, problems)
    from .rules import check_graph

    problems = problems + check_graph(graph, profile, sources=sources)
    return CheckResult(profile, problems, graph, _layers(graph), _memory(graph, profile))


def _check_graph(graph: Graph, profile: TargetProfile) -> CheckResult:
    """A converted model keeps its arithmetic: on a target that computes another, nothing else matters."""
    from .rules import check_graph
    from .targets import arithmetic_differences

    differ = arithmetic_differences(load_target(graph.target), profile)
    if differ:
        return CheckResult(profile, [Problem(f"model for {graph.target['name']}", "arithmetic",
                                             f"the model was quantized for {graph.target['name']}, whose arithmetic "
                                             f"differs from {profile.name} in {', '.join(differ)}",
                                             f"prepare and train the model for {profile.name}")], graph,
                           _layers(graph), _memory(graph, profile))
    return CheckResult(profile, check_graph(graph, profile), graph, _layers(graph), _memory(graph, profile))


def check_all(model, example=None, targets=None, **kw) -> dict[str, CheckResult]:
    """`check` against several targets (default: every built-in one)."""
    from .targets import builtin_targets

    return {t: check(model, example, t, **kw) for t in (targets or builtin_targets())}


def check_ai8x(description: str | Path, target="max78000", *, checkpoint=None, input_shape=None) -> CheckResult:
    """Check a vendor network description (npukit's or hand-edited) with its checkpoint: the model's rules
    and memories, and the description's processors and data-memory layout (`max7800x.validate`).

    The checkpoint defaults to checkpoint.pth.tar beside it, the input shape to its sample_*.npy."""
    from .max7800x import read_ai8x, validate
    from .rules import check_graph

    description = Path(description)
    checkpoint = Path(checkpoint) if checkpoint else description.with_name("checkpoint.pth.tar")
    if input_shape is None:
        samples = sorted(p for p in description.parent.glob("sample_*.npy") if p.name != "sample_output.npy")
        if not samples:
            raise NpukitError(f"no sample_*.npy beside {description}: give the input shape (e.g. --input 3,32,32)")
        import numpy as np

        input_shape = np.load(samples[0], allow_pickle=False).shape
    profile = load_target(target)
    graph, desc, shapes = read_ai8x(description, checkpoint, tuple(input_shape), target=profile)
    problems = check_graph(graph, profile) + validate(desc, shapes, profile)
    return CheckResult(profile, problems, graph, _layers(graph), _memory(graph, profile))


def _as_graph(model) -> Graph | None:
    """An IR graph, or an npukit file (.onnx, .npir, model.bin) read as one; None for anything else."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, str | Path) and not _is_class_spec(model) and Path(model).suffix not in (".pt", ".pth"):
        from .packer import load_model

        return load_model(model)
    return None


def _to_graph(model, example, profile: TargetProfile, weight_bits):
    if isinstance(model, str | Path) and not _is_class_spec(model):
        model = _load_torch(Path(model))
    elif isinstance(model, str):
        model = load_class(model)
    return _capture(model, example, profile, weight_bits)


def _capture(model, example, profile: TargetProfile, weight_bits):
    import torch

    from .qat.capture import capture
    from .qat.convert import to_ir

    if example is None:
        raise NpukitError("checking a PyTorch model needs an example input (a batch) or its shape, e.g. --input 1,1,28,28")
    examples = [torch.zeros(*e) if isinstance(e, tuple | list) else e for e in _examples(example)]
    example = examples[0] if len(examples) == 1 else tuple(examples)
    bits = weight_bits or profile.default_weight_bits
    if bits not in profile.weight_bits:
        raise NpukitError(f"{profile.name} computes {'/'.join(map(str, profile.weight_bits))}-bit weights, not "
                          f"{bits}-bit")
    qmodel, problems, _ = capture(model, example, profile, weight_bits=bits, lenient=True)
    if qmodel is None:
        return None, problems, {}
    sources = {name: m.source for name, m in qmodel.named_modules() if getattr(m, "source", "")}
    return to_ir(qmodel), problems, sources


def _examples(example) -> list:
    """An example (a batch, or a shape with the batch) or a list of them, one per input, as a list."""
    if isinstance(example, tuple | list) and example and not all(isinstance(v, int) for v in example):
        return list(example)
    return [example]


def _is_class_spec(spec) -> bool:
    return isinstance(spec, str) and ":" in spec and spec.split(":", 1)[0].endswith(".py")


def load_class(spec: str, kwargs: dict | None = None):
    """'file.py:ClassName' -> an instance built with `kwargs` (none by default)."""
    file, _, cls_name = spec.partition(":")
    path = Path(file)
    if not path.is_file():
        raise NpukitError(f"{file}: no such file")
    mod_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        raise NpukitError(f"{file} fails to import: {type(e).__name__}: {e}") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise NpukitError(f"{file} defines no {cls_name!r}")
    try:
        return cls(**(kwargs or {}))
    except Exception as e:
        raise NpukitError(f"{cls_name}(**{json.dumps(kwargs or {})}) fails: {type(e).__name__}: {e}\n"
                          "    fix: give the constructor's arguments with --kwargs '{\"name\": value}'") from None


def _load_torch(path: Path):
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        hint = (" (the model's class must be importable: run from its folder or set PYTHONPATH, or give "
                "file.py:ClassName)" if isinstance(e, ModuleNotFoundError | AttributeError) else "")
        raise NpukitError(f"{path} is not a readable torch file ({type(e).__name__}: {e}){hint}") from None
    if not isinstance(obj, torch.nn.Module):
        raise NpukitError(f"{path} holds a {type(obj).__name__}, not a saved nn.Module (torch.save(model, path)); "
                          "for a state_dict, give the model's class as file.py:ClassName")
    return obj


def _layers(graph: Graph) -> list[LayerRow]:
    from .ops import get_op
    from .report import weight_bytes

    stored = weight_bytes(graph)  # as model.bin stores them
    rows = []
    for n in graph.nodes:
        out = graph.tensors[n.outputs[0]]
        rows.append(LayerRow(n.name, n.op, tuple(out.shape), stored[n.name], math.prod(out.shape) * out.dtype.itemsize,
                             get_op(n.op).macs(n, graph)))
    return rows


def _memory(graph: Graph, profile: TargetProfile) -> list[dict]:
    from . import memplan, report

    usage = report.memory_usage(graph, memplan.plan_graph(graph), profile)
    return [{"memory": r.memory, "holds": list(r.holds), "used": r.used, "capacity": r.capacity}
            for r in usage.memories]

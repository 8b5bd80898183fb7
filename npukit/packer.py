"""`npukit pack`: IR or ONNX -> memory plan -> validated model.bin, with a flash/RAM report."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from . import memplan, modelbin, report
from .errors import NpukitError, Problem, ProblemsError
from .ir import Graph
from .rules import check_graph
from .targets import TargetProfile, arithmetic_differences, load_target


@dataclass
class PackResult:
    path: Path
    graph: Graph
    plan: memplan.Plan
    model_bin_bytes: int
    report_files: dict[str, Path] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)  # e.g. memory-unknown: nothing was verified to fit

    def __repr__(self) -> str:  # not the graph's arrays
        return (f"PackResult(path={str(self.path)!r}, model_bin_bytes={self.model_bin_bytes}, "
                f"arena_bytes={self.plan.arena_bytes}, warnings={len(self.warnings)})")


def load_model(path: str | Path) -> Graph:
    """An IR file, an npukit ONNX file or a model.bin, as the IR; the kind is read from the file itself."""
    from .fileio import file_kind

    kind = file_kind(path)
    if kind == "onnx":
        from .onnx_io import load_onnx

        return load_onnx(path)
    if kind == "modelbin":
        return modelbin.read(path).graph
    return Graph.load(path)


def resolve_target(graph: Graph, target: str | Path | TargetProfile | None) -> TargetProfile:
    """The graph's own profile, or `target` when it has the same arithmetic (its limits may differ)."""
    own = load_target(graph.target)
    if target is None:
        return own
    other = load_target(target)
    differ = arithmetic_differences(own, other)
    if differ:
        raise NpukitError(f"the model was quantized for {own.name}, whose arithmetic differs from {other.name} in "
                          f"{', '.join(differ)}\n    fix: prepare and train the model for {other.name}")
    return other


def pack(model: Graph | str | Path, out: str | Path, *, target=None, report_dir: str | Path | None = None,
         sample=None) -> PackResult:
    """Plan memory, check the target's rules and limits, write model.bin (and the report when `report_dir`
    is set). model.bin records the profile it was packed for.

    For a MAX7800x target `out` may be a directory (any path not ending in .bin): it receives model.bin
    and the vendor's files (network.yaml, checkpoint.pth.tar, sample input and output; npukit/max7800x.py),
    `sample` being the integer input sample they carry (zeros without).

    A broken rule or a memory over its limit: the report is still written (it shows where), then
    `ProblemsError` lists every problem (the same list as `npukit check`); no model.bin is written.
    """
    graph = model if isinstance(model, Graph) else load_model(model)
    profile = resolve_target(graph, target)
    if profile.model_dump() != graph.target:
        graph = replace(graph, target=profile.model_dump())
    plan = memplan.plan_graph(graph)
    found = check_graph(graph, profile, plan=plan)
    out = Path(out)
    vendor_dir = profile.scheme == "max78000" and out.suffix != ".bin"
    if vendor_dir:
        from .max7800x import plan_ai8x

        found += plan_ai8x(graph, profile)[2]
        out = out / "model.bin"
    problems = [p for p in found if p.severity == "error"]
    files: dict[str, Path] = {}
    size = None
    if not problems:  # the bytes first: the report states their size, and a failure leaves no file behind
        data = modelbin.pack_bytes(graph, plan.offsets, plan.arena_bytes, plan.lower_bound_bytes)
        size = len(data)
        if vendor_dir:  # the vendor's files too (a sample of the wrong shape fails here)
            from .max7800x import ai8x_files

            writers = ai8x_files(graph, profile, arch=_arch(out.parent), sample=sample)[2]
    if report_dir is not None:  # before model.bin: an unwritable report folder leaves no new model.bin
        try:
            files.update(report.write_report(graph, plan, profile, report_dir, model_bin_bytes=size))
        except OSError as e:
            raise NpukitError(f"cannot write the report into {report_dir}: {e.strerror or e}") from None
    if problems:
        where = f"; the report in {report_dir} shows where" if report_dir is not None else ""
        raise ProblemsError(f"the model does not fit {profile.name}: it breaks its rules or memories{where}", problems)
    if not vendor_dir:
        modelbin.write_bytes(data, out)
    else:  # model.bin and the vendor's files, all or nothing
        from .fileio import staged_directory

        with staged_directory(out.parent) as stage:
            modelbin.write_bytes(data, stage / "model.bin")
            for name, (_, write) in writers.items():
                write(stage / name)
        files.update({key: out.parent / name for name, (key, _) in writers.items()})
    return PackResult(out, graph, plan, size, files, [p for p in found if p.severity != "error"])


def _arch(directory: Path) -> str:
    """The description's and checkpoint's `arch`: the output folder's name, as an identifier."""
    name = "".join(c if c.isalnum() else "_" for c in directory.resolve().name).strip("_")
    return name or "npukit"


def as_model_bin(model: str | Path, graph: Graph, workdir: str | Path) -> Path:
    """`model` itself when it is a model.bin, else its `graph` packed into `workdir`/model.bin."""
    from .fileio import file_kind

    if file_kind(model) == "modelbin":
        return Path(model)
    return pack(graph, Path(workdir) / "model.bin").path

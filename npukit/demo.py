"""`npukit demo`: the whole pipeline on MNIST-1D, as a list of stages that later stages extend.

Each stage is a function of the shared `DemoRun`; it records what it measured in `run.metrics`, one or
more table rows, and leaves its artefacts in `run.out`. Adding a pipeline step (export, pack, codegen)
means appending one stage function to `STAGES`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import engine
from .checkpoint import save_checkpoint
from .data import Dataset, mnist1d
from .errors import NpukitError
from .ir import Graph
from .models import mnist1d_cnn
from .qat import freeze_observers, prepare, to_ir
from .targets import load_target
from .train import accuracy, fit, predict

DEFAULT_OUT = Path("npukit-out")


@dataclass
class DemoConfig:
    out: Path = DEFAULT_OUT
    target: str = "venus"
    float_epochs: int = 30
    qat_epochs: int = 4
    batch_size: int = 64
    seed: int = 0
    threads: int = 1  # torch threads while the demo runs


@dataclass
class DemoRun:
    cfg: DemoConfig
    console: Console
    out: Path
    metrics: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (stage, result, seconds)
    data: Dataset | None = None
    float_model: torch.nn.Module | None = None
    qmodel: torch.nn.Module | None = None
    graph: Graph | None = None
    qat_test_int: np.ndarray | None = None  # QAT eval outputs on the test set, as integers

    def train(self, model, epochs: int, lr: float, label: str, on_epoch=None):
        """fit() with a progress bar."""
        d = self.data
        steps = epochs * ((len(d.x_train) + self.cfg.batch_size - 1) // self.cfg.batch_size)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as bar:
            task = bar.add_task(label, total=steps)

            def epoch_done(epoch, loss):
                bar.update(task, description=f"{label} (epoch {epoch + 1}/{epochs}, loss {loss:.3f})")
                if on_epoch:
                    on_epoch(epoch, loss)

            fit(model, d.x_train, d.y_train, epochs=epochs, lr=lr, batch_size=self.cfg.batch_size,
                seed=self.cfg.seed, on_epoch=epoch_done, on_step=lambda: bar.advance(task))


def stage_data(run: DemoRun) -> str:
    run.data = mnist1d()
    d = run.data
    return f"MNIST-1D generated offline: {len(d.x_train)} train / {len(d.x_test)} test, length {d.x_train.shape[-1]}"


def stage_float(run: DemoRun) -> str:
    torch.manual_seed(run.cfg.seed)
    run.float_model = mnist1d_cnn()
    run.train(run.float_model, run.cfg.float_epochs, 1e-2, "float training")
    acc = accuracy(predict(run.float_model, run.data.x_test), run.data.y_test)
    run.metrics["float_acc"] = acc
    save_checkpoint(run.float_model, run.out / "float.pt")
    return f"accuracy {acc:.1%}  -> float.pt"


def stage_qat(run: DemoRun) -> str:
    cfg, d = run.cfg, run.data
    run.qmodel = prepare(run.float_model, torch.from_numpy(d.x_train[:512]), target=cfg.target)
    ptq = accuracy(predict(run.qmodel, d.x_test), d.y_test)
    last = cfg.qat_epochs - 1

    def freeze_for_last_epoch(epoch, _loss):
        if epoch == last - 1:  # settle the exponents, then let the weights adapt to them
            freeze_observers(run.qmodel)

    run.train(run.qmodel, cfg.qat_epochs, 1e-3, f"QAT ({cfg.target})", freeze_for_last_epoch)
    freeze_observers(run.qmodel)
    logits = predict(run.qmodel, d.x_test)
    run.metrics["ptq_acc"] = ptq
    run.metrics["qat_acc"] = accuracy(logits, d.y_test)
    save_checkpoint(run.qmodel, run.out / "qat.pt", target=cfg.target)
    return f"accuracy {run.metrics['qat_acc']:.1%} (before fine-tuning {ptq:.1%})  -> qat.pt"


def stage_convert(run: DemoRun) -> str:
    run.graph = to_ir(run.qmodel)
    run.graph.save(run.out / "model.npir")
    # The QAT model's eval outputs, in the integers the chip would produce.
    real = predict(run.qmodel, run.data.x_test).to(torch.float64).numpy()
    run.qat_test_int = real * 2.0 ** run.graph.output_spec().exp
    ops = ", ".join(sorted({n.op for n in run.graph.nodes}))
    return f"{len(run.graph.nodes)} integer ops ({ops})  -> model.npir"


def stage_engine(run: DemoRun) -> str:
    g, d = run.graph, run.data
    q_in = g.quantize_input(d.x_test)
    out = np.concatenate(list(engine.run_batches(g, q_in)))
    run.metrics["engine_acc"] = accuracy(out, d.y_test)
    same = np.all(out.reshape(len(out), -1) == run.qat_test_int.reshape(len(out), -1), axis=1)
    run.metrics["bitexact_fraction"] = float(same.mean())
    np.save(run.out / "input.npy", q_in[:1])
    return (f"accuracy {run.metrics['engine_acc']:.1%}; bit-exact with QAT eval on "
            f"{int(same.sum())}/{len(same)} samples ({same.mean():.1%})")


def stage_export(run: DemoRun) -> str:
    import onnxruntime as ort

    from .onnx_io import export_onnx, load_onnx

    g = run.graph
    path = export_onnx(g, run.out / "model.onnx")
    q_in = g.quantize_input(run.data.x_test)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {g.inputs[0]: q_in})[0]
    want = np.concatenate(list(engine.run_batches(g, q_in)))
    same = np.all(got.reshape(len(got), -1) == want.reshape(len(want), -1), axis=1)
    run.metrics["onnx_bitexact_fraction"] = float(same.mean())
    reloaded = np.concatenate(list(engine.run_batches(load_onnx(path), q_in)))
    run.metrics["onnx_import_bitexact_fraction"] = float(np.all(reloaded == want, axis=1).mean())
    return (f"onnxruntime = engine on {int(same.sum())}/{len(same)} samples ({same.mean():.1%}); "
            f"re-imported IR = engine ({run.metrics['onnx_import_bitexact_fraction']:.1%})  -> model.onnx")


def stage_pack(run: DemoRun) -> str:
    from .modelbin import read
    from .packer import pack

    result = pack(run.graph, run.out / "model.bin", report_dir=run.out / "report")
    packed = read(result.path)
    q_in = run.graph.quantize_input(run.data.x_test)
    want = np.concatenate(list(engine.run_batches(run.graph, q_in)))
    got = engine.run_in_arena(packed.graph, packed.offsets, packed.arena_bytes, q_in)[0]  # model.bin, planned arena
    same = np.all(got.reshape(len(got), -1) == want.reshape(len(want), -1), axis=1)
    p = result.plan
    run.metrics.update(bin_bitexact_fraction=float(same.mean()), arena_bytes=p.arena_bytes,
                       arena_lower_bound_bytes=p.lower_bound_bytes, model_bin_bytes=result.model_bin_bytes)
    text = (f"arena {p.arena_bytes:,} B (lower bound {p.lower_bound_bytes:,} B), model.bin {result.model_bin_bytes:,} B; "
            f"model.bin in its planned arena = engine on {same.mean():.1%}  -> model.bin, report/")
    if run.graph.scheme.name == "max78000":  # the vendor's description and checkpoint too
        vendor = pack(run.graph, run.out / "ai8x", sample=q_in[:1])
        run.metrics["ai8x_files"] = sorted(f.name for f in vendor.report_files.values())
        text += "; the vendor's network.yaml, checkpoint and sample files  -> ai8x/"
    return text


def stage_codegen(run: DemoRun) -> str:
    from .codegen import generate, host

    g = run.graph
    q_in = g.quantize_input(run.data.x_test)
    project = generate(run.out / "model.bin", run.out / "c", kat_input=q_in[:1])
    if host.find_cc() is None:
        run.metrics.update(kat_host="skipped", c_host_bitexact_fraction=None)
        return "no C compiler found: C project written, not built  -> c/"
    ok, _ = host.run_kat(host.build(project))
    out = g.output_spec()
    got = host.run_file(host.build(project, "run_file"), q_in, out.dtype, int(np.prod(out.shape)), project)
    want = np.concatenate(list(engine.run_batches(g, q_in))).reshape(len(q_in), -1)
    same = np.all(got == want, axis=1)
    run.metrics.update(kat_host="pass" if ok else "fail", c_host_bitexact_fraction=float(same.mean()))
    text = f"host KAT {'PASS' if ok else 'FAIL'}; host C = engine on {same.mean():.1%}"
    return text + _cortex_m(run, project) + "  -> c/"


def _cortex_m(run: DemoRun, project: Path) -> str:
    try:
        from .codegen import cortex_m
    except ImportError:  # the Cortex-M support is optional
        run.metrics["kat_cortex_m"] = "skipped"
        return ""
    missing = cortex_m.arm_tools_available()
    if missing:
        run.metrics["kat_cortex_m"] = "skipped"
        return "; Cortex-M skipped (toolchain or QEMU missing)"
    elf = cortex_m.build(project)
    ok, _ = cortex_m.run_qemu(elf)
    sizes = cortex_m.size_report(elf)
    run.metrics.update(kat_cortex_m="pass" if ok else "fail", code_bytes=sizes["code_bytes"],
                       weight_bytes=sizes["weight_bytes"], runtime_code_bytes=sizes["runtime_code_bytes"],
                       ram_bytes=sizes["ram_bytes"])
    from .memplan import plan_graph
    from .report import write_report

    write_report(run.graph, plan_graph(run.graph), None, run.out / "report",
                 model_bin_bytes=run.metrics.get("model_bin_bytes"), device_sizes=sizes)
    return (f"; Cortex-M4 (QEMU) KAT {'PASS' if ok else 'FAIL'}: runtime code {sizes['runtime_code_bytes']:,} B "
            f"(with the KAT harness and libc {sizes['code_bytes']:,} B), weights {sizes['weight_bytes']:,} B, "
            f"RAM {sizes['ram_bytes']:,} B (arena {sizes['arena_bytes']:,} B)")


def stage_runtime(run: DemoRun) -> str:
    """The C runtime (runtime/) on model.bin: the whole test set on the host, its KAT on the Cortex-M4."""
    from .codegen import host

    g = run.graph
    if host.find_cc() is None or not (host.RUNTIME / "npukit_runtime.c").is_file():
        run.metrics.update(c_runtime_bitexact_fraction=None, kat_runtime_cortex_m="skipped")
        return "skipped (no C compiler, or not an npukit checkout with runtime/)"
    q_in = g.quantize_input(run.data.x_test)
    work = run.out / "runtime"
    work.mkdir(exist_ok=True)
    got, _ = host.run_runtime(host.build_runtime(work), run.out / "model.bin", q_in, work, g.output_spec().dtype)
    want = np.concatenate(list(engine.run_batches(g, q_in))).reshape(len(q_in), -1)
    same = np.all(got == want, axis=1)
    run.metrics["c_runtime_bitexact_fraction"] = float(same.mean())
    text = f"npukit-run on model.bin = engine on {int(same.sum())}/{len(same)} samples ({same.mean():.1%})"
    from .codegen import cortex_m

    if cortex_m.arm_tools_available():
        run.metrics["kat_runtime_cortex_m"] = "skipped"
        return text + "; Cortex-M skipped (toolchain or QEMU missing)  -> runtime/"
    ok, _ = cortex_m.run_qemu(cortex_m.build_runtime_kat(run.out / "model.bin", work, q_in[:1]))
    run.metrics["kat_runtime_cortex_m"] = "pass" if ok else "fail"
    return text + f"; runtime KAT on the Cortex-M4 (QEMU) {'PASS' if ok else 'FAIL'}  -> runtime/"


STAGES: list[tuple[str, Callable[[DemoRun], str]]] = [
    ("data", stage_data),
    ("float", stage_float),
    ("qat", stage_qat),
    ("convert", stage_convert),
    ("engine", stage_engine),
    ("export", stage_export),
    ("pack", stage_pack),
    ("codegen", stage_codegen),
    ("runtime", stage_runtime),
]
STAGE_TITLES = {"data": "data", "float": "float training", "qat": "quantization-aware training",
                "convert": "IR conversion", "engine": "integer engine", "export": "ONNX export",
                "pack": "pack (model.bin)", "codegen": "C code generation", "runtime": "C runtime (model.bin)"}


def run_demo(cfg: DemoConfig | None = None, console: Console | None = None, json_path: Path | None = None) -> dict:
    """Run every stage, print the table, optionally write the figures as JSON; returns the figures."""
    cfg = cfg or DemoConfig()
    console = console or Console()
    load_target(cfg.target)  # a misspelt target fails now, not after the float training
    run = DemoRun(cfg, console, Path(cfg.out))
    try:
        run.out.mkdir(parents=True, exist_ok=True)
        probe = run.out / ".npukit-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise NpukitError(f"cannot write to {run.out}: {e.strerror or e}\n    fix: give --out a folder you can "
                          "write to") from None
    if json_path is not None and (Path(json_path).is_dir() or not _writable_parent(Path(json_path))):
        raise NpukitError(f"cannot write --json {json_path}: not a file in a folder that can be written")
    # A small model trains fastest on one thread; torch's default (every core) crawls on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_stages(run, cfg, console, json_path)
    finally:
        torch.set_num_threads(threads)


def _writable_parent(path: Path) -> bool:
    """Whether `path`'s folder exists or can be made (nothing is left behind)."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    return parent.is_dir()


def _run_stages(run: DemoRun, cfg: DemoConfig, console: Console, json_path) -> dict:
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    for key, stage in STAGES:
        t0 = time.perf_counter()
        with console.status(f"{STAGE_TITLES[key]}..."):
            result = stage(run)
        run.seconds[key] = round(time.perf_counter() - t0, 3)
        run.rows.append((STAGE_TITLES[key], result, f"{run.seconds[key]:.1f}"))
        if not console.is_terminal:  # a log or a pipe: a line per stage as it ends, not all at the end
            console.print(f"{STAGE_TITLES[key]}: {result} ({run.seconds[key]:.1f} s)", highlight=False,
                          soft_wrap=True)
    run.seconds["total"] = round(time.perf_counter() - start, 3)

    figures = {**run.metrics, "seconds": run.seconds, "target": cfg.target, "out": str(run.out)}
    _print_table(run, console)
    if json_path:
        from .fileio import write_atomic

        write_atomic(json_path, lambda p: p.write_text(json.dumps(figures, indent=2) + "\n"))
    return figures


def _print_table(run: DemoRun, console: Console) -> None:
    m = run.metrics
    table = Table(title=f"npukit demo: MNIST-1D CNN on {run.cfg.target}")
    table.add_column("stage")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    for row in run.rows:
        table.add_row(*row)
    table.add_section()
    table.add_row("total", f"artefacts in {run.out}/", f"{run.seconds['total']:.1f}")
    console.print(table)
    def pct(key):
        return "-" if m.get(key) is None else f"{m[key]:.1%}"

    for title, cols in (
        ("test-set accuracy", {"float": pct("float_acc"), "QAT": pct("qat_acc"), "int8 engine": pct("engine_acc")}),
        ("bit-exact with the engine", {"QAT eval": pct("bitexact_fraction"), "onnxruntime": pct("onnx_bitexact_fraction"),
                                       "model.bin": pct("bin_bitexact_fraction"), "host C": pct("c_host_bitexact_fraction"),
                                       "C runtime": pct("c_runtime_bitexact_fraction"),
                                       "Cortex-M4 KAT": str(m.get("kat_cortex_m", "-")),
                                       "runtime KAT": str(m.get("kat_runtime_cortex_m", "-"))}),
    ):
        summary = Table(show_header=True, box=None, title=title)
        for col in cols:
            summary.add_column(col, justify="right")
        summary.add_row(*cols.values())
        console.print(summary)

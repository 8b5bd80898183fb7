"""The `npukit` command: a thin layer over the public API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import NpukitError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="npukit: PyTorch to embedded NPUs and MCUs, bit-exact from training to the chip.")
console = Console()
err = Console(stderr=True)


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)  # rule names look like markup
    raise typer.Exit(2)


@app.command()
def demo(
    out: Path = typer.Option(Path("npukit-out"), help="folder for checkpoints, the IR file and later artefacts"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the figures to this JSON file"),
    target: str = typer.Option("venus", help="built-in target name or profile YAML"),
    float_epochs: int = typer.Option(30, min=1, help="float training epochs"),
    qat_epochs: int = typer.Option(4, min=2, help="QAT fine-tuning epochs (observers frozen for the last)"),
    seed: int = typer.Option(0),
) -> None:
    """Train a small CNN on MNIST-1D, fine-tune it with QAT, convert it and check the engine bit for bit."""
    from .demo import DemoConfig, run_demo

    try:
        run_demo(DemoConfig(out=out, target=target, float_epochs=float_epochs, qat_epochs=qat_epochs, seed=seed),
                 console, json_path)
    except NpukitError as e:
        _fail(e)


@app.command()
def export(
    model: Path = typer.Argument(..., help="an IR file (.npir)"),
    output: Path = typer.Option(..., "-o", "--output", help="the ONNX file to write"),
) -> None:
    """Write standard ONNX (opset 17) that onnxruntime runs bit-exactly like the engine."""
    from .ir import Graph
    from .onnx_io import export_onnx

    try:
        export_onnx(Graph.load(model), output)
    except NpukitError as e:
        _fail(e)
    console.print(f"wrote {output}")


@app.command()
def pack(
    model: Path = typer.Argument(..., help="an npukit ONNX file (.onnx) or IR file (.npir)"),
    output: Path = typer.Option(Path("model.bin"), "-o", "--output", help="the model.bin to write"),
    target: str | None = typer.Option(None, help="check against this target's limits (default: the model's own)"),
    report: Path | None = typer.Option(None, "--report", help="folder for report.md, report.html and arena.png"),
) -> None:
    """Plan memory at the lower bound and write a validated model.bin (and a flash/RAM report)."""
    from .packer import pack as do_pack

    try:
        r = do_pack(model, output, target=target, report_dir=report)
    except NpukitError as e:
        _fail(e)
    p = r.plan
    console.print(f"wrote {r.path}: {r.model_bin_bytes:,} bytes; arena {p.arena_bytes:,} B "
                  f"(lower bound {p.lower_bound_bytes:,} B, {p.strategy})")
    for f in r.report_files.values():
        console.print(f"wrote {f}")


@app.command()
def codegen(
    model: Path = typer.Argument(..., help="a model.bin"),
    out: Path = typer.Option(Path("npukit-c"), "-o", "--out", help="folder for the C project"),
    input_path: Path | None = typer.Option(None, "--input", help=".npy integer sample for the known-answer test"),
) -> None:
    """Write a portable C99 project (model, kernels, known-answer test, Makefile, CMakeLists.txt)."""
    from .codegen import generate

    try:
        x = None
        if input_path is not None:
            try:
                x = np.load(input_path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise NpukitError(f"{input_path} is not a readable .npy file ({e})") from None
        generate(model, out, kat_input=x)
    except NpukitError as e:
        _fail(e)
    console.print(f"wrote {out}/: `make` there builds and runs the known-answer test")


@app.command()
def targets() -> None:
    """List the built-in target profiles."""
    from .targets import builtin_targets, load_target

    table = Table("target", "activation bits", "weight bits", "rounding", "accumulator bits", "description")
    for name in builtin_targets():
        t = load_target(name)
        table.add_row(name, str(t.activation_bits), "/".join(map(str, t.weight_bits)), t.rounding,
                      str(t.accumulator_bits), t.description)
    console.print(table)


@app.command()
def inspect(model: Path = typer.Argument(..., help="a model.bin, an IR file (.npir) or an npukit ONNX file")) -> None:
    """Show a model's header, tensors, ops and memory plan."""
    from .ops import get_op

    packed = None
    try:
        if model.suffix == ".bin":
            from .modelbin import read

            packed = read(model)
            g = packed.graph
        else:
            g = _load_model(model)
    except NpukitError as e:
        _fail(e)
    if packed is not None:
        console.print(f"model.bin format v{packed.version}, {model.stat().st_size:,} bytes; arena "
                      f"{packed.arena_bytes:,} B (lower bound {packed.lower_bound_bytes:,} B)")
        console.print("sections: " + ", ".join(f"{k} {v:,} B" for k, v in packed.sizes.items()))
    console.print(f"target [bold]{g.target['name']}[/], rounding {g.rounding}, inputs {g.inputs}, outputs {g.outputs}")
    table = Table("node", "op", "inputs", "output shape", "bits", "exp", "MACs", "arena offset")
    for n in g.nodes:
        out = g.tensors[n.outputs[0]]
        offset = str(packed.offsets.get(out.name, "")) if packed else ""
        table.add_row(n.name, n.op, ", ".join(n.inputs), str(out.shape), str(out.bits), str(out.exp),
                      f"{get_op(n.op).macs(n, g):,}", offset)
    console.print(table)


@app.command()
def run(
    model: Path = typer.Argument(..., help="a model.bin, an IR file (.npir) or an npukit ONNX file (.onnx)"),
    input_path: Path = typer.Argument(..., help=".npy with integer inputs (batch first), or float with --quantize"),
    output: Path = typer.Option(..., "-o", "--output", help="where to write the integer outputs (.npy)"),
    quantize: bool = typer.Option(False, help="the input holds floats: quantize them at the model's input exponent"),
) -> None:
    """Run the integer reference engine."""
    from . import engine

    try:
        g = _load_model(model)
        try:
            x = np.load(input_path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise NpukitError(f"{input_path} is not a readable .npy file ({e})") from None
        if quantize:
            x = g.quantize_input(x)
        y = engine.run(g, x)[0]
    except NpukitError as e:
        _fail(e)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.save(output, y)
    console.print(f"wrote {output}: shape {y.shape}, {y.dtype}, exponent {g.output_spec().exp}")


def _load_model(path: Path):
    from .packer import load_model

    return load_model(path)


def main() -> None:
    app()

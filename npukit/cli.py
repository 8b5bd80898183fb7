"""The `npukit` command: a thin layer over the public API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from .errors import NpukitError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="npukit: PyTorch to embedded NPUs and MCUs, bit-exact from training to the chip.")
console = Console()
err = Console(stderr=True)


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {e}", highlight=False)
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
def inspect(model: Path = typer.Argument(..., help="an IR file (.npir) or an npukit ONNX file (.onnx)")) -> None:
    """Show a model's tensors and ops."""
    from .ops import get_op

    try:
        g = _load_model(model)
    except NpukitError as e:
        _fail(e)
    console.print(f"target [bold]{g.target['name']}[/], rounding {g.rounding}, inputs {g.inputs}, outputs {g.outputs}")
    table = Table("node", "op", "inputs", "output shape", "bits", "exp", "MACs")
    for n in g.nodes:
        out = g.tensors[n.outputs[0]]
        table.add_row(n.name, n.op, ", ".join(n.inputs), str(out.shape), str(out.bits), str(out.exp),
                      f"{get_op(n.op).macs(n, g):,}")
    console.print(table)


@app.command()
def run(
    model: Path = typer.Argument(..., help="an IR file (.npir) or an npukit ONNX file (.onnx)"),
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
    from .ir import Graph
    from .onnx_io import load_onnx

    return load_onnx(path) if path.suffix == ".onnx" else Graph.load(path)


def main() -> None:
    app()

"""The `npukit` command: a thin layer over the public API."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import NpukitError

app = typer.Typer(add_completion=False, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  help="npukit: PyTorch to embedded NPUs and MCUs, bit-exact from training to the chip.")
console = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"npukit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print npukit's version and exit")) -> None:
    """npukit: PyTorch to embedded NPUs and MCUs, bit-exact from training to the chip."""


def _fail(e: Exception) -> None:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)  # rule names look like markup
    raise typer.Exit(1)  # 2 is click's, for usage errors


@app.command()
def demo(
    out: Path = typer.Option(Path("npukit-out"), help="folder for checkpoints, the IR file and later artefacts"),
    json_path: Path | None = typer.Option(None, "--json", help="also write the figures to this JSON file"),
    target: str = typer.Option("venus", help="built-in target name or profile YAML"),
    float_epochs: int = typer.Option(30, min=1, help="float training epochs"),
    qat_epochs: int = typer.Option(4, min=2, help="QAT fine-tuning epochs (observers frozen for the last)"),
    seed: int = typer.Option(0),
    threads: int = typer.Option(1, min=1, help="torch threads (small models train fastest on one)"),
) -> None:
    """Train a small CNN on MNIST-1D, fine-tune it with QAT, convert it and check the engine bit for bit."""
    from .demo import DemoConfig, run_demo

    try:
        run_demo(DemoConfig(out=out, target=target, float_epochs=float_epochs, qat_epochs=qat_epochs, seed=seed,
                            threads=threads), console, json_path)
    except NpukitError as e:
        _fail(e)


@app.command()
def export(
    model: Path = typer.Argument(..., help="an IR file (.npir), or an npukit ONNX file or model.bin"),
    output: Path = typer.Option(..., "-o", "--output", help="the ONNX file to write"),
) -> None:
    """Write standard ONNX (opset 17) that onnxruntime runs bit-exactly like the engine."""
    from .onnx_io import export_onnx

    try:
        export_onnx(_load_model(model), output)
    except NpukitError as e:
        _fail(e)
    console.print(f"wrote {output}")


@app.command()
def pack(
    model: Path = typer.Argument(..., help="an npukit ONNX file (.onnx) or IR file (.npir)"),
    output: Path = typer.Option(Path("model.bin"), "-o", "--output",
                                help="the model.bin to write; for max78000/max78002 a folder gets model.bin and "
                                     "the vendor's network.yaml, checkpoint and sample files"),
    target: str | None = typer.Option(None, help="check against this target's limits (default: the model's own)"),
    report: Path | None = typer.Option(None, "--report", help="folder for report.md, report.html and arena.png"),
    sample: Path | None = typer.Option(None, "--sample", help=".npy integer input for the vendor's sample files"),
) -> None:
    """Plan memory at the lower bound and write a validated model.bin (and a flash/RAM report)."""
    from .packer import pack as do_pack

    try:
        x = _load_npy(sample) if sample is not None else None
        r = do_pack(model, output, target=target, report_dir=report, sample=x)
    except NpukitError as e:
        _fail(e)
    p = r.plan
    console.print(f"wrote {r.path}: {r.model_bin_bytes:,} bytes; arena {p.arena_bytes:,} B "
                  f"(lower bound {p.lower_bound_bytes:,} B, {p.strategy})")
    for f in r.report_files.values():
        console.print(f"wrote {f}")
    for w in r.warnings:
        err.print(f"[yellow]{escape(str(w))}[/]", highlight=False)


@app.command()
def codegen(
    model: Path = typer.Argument(..., help="a model.bin"),
    out: Path = typer.Option(Path("npukit-c"), "-o", "--output", "--out", help="folder for the C project"),
    input_path: list[Path] | None = typer.Option(None, "--input", help=".npy integer sample for the known-answer "
                                                 "test; once per input for a model with several"),
    prefix: str = typer.Option("npukit", help="the model's C names: <prefix>_run, <PREFIX>_INPUT_SIZE (two models "
                               "link into one image when their prefixes differ)"),
    force: bool = typer.Option(False, "--force", help="overwrite files of the same names that npukit did not write"),
) -> None:
    """Write a portable C99 project (model, kernels, known-answer test, Makefile, CMakeLists.txt)."""

    from .codegen import generate

    try:
        xs = [_load_npy(p) for p in input_path or []]
        x = (xs[0] if len(xs) == 1 else xs) if xs else None
        from .fileio import file_kind

        if file_kind(model) != "modelbin":
            raise NpukitError(f"codegen reads a model.bin, and {model} is an IR or ONNX file\n"
                              f"    fix: npukit pack {model} -o model.bin, then npukit codegen model.bin")
        try:
            generate(model, out, kat_input=x, prefix=prefix, force=force)
        except OSError as e:
            raise NpukitError(f"cannot write the C project into {out}: {e.strerror or e}") from None
    except NpukitError as e:
        _fail(e)
    console.print(f"wrote {out}/: `make` there builds and runs the known-answer test")


@app.command()
def targets(name: str | None = typer.Argument(None, help="print this profile in full (a built-in name or a YAML path)")) -> None:
    """List the built-in target profiles, or print one."""
    from .targets import builtin_targets, load_target

    if name is not None:
        try:
            t = load_target(name)
        except NpukitError as e:
            _fail(e)
        import yaml

        data = t.model_dump(exclude_none=True)
        print(yaml.safe_dump(data, sort_keys=False, width=100).rstrip())  # plain: valid YAML at any width
        return
    for n in builtin_targets():  # two short lines each: readable at 80 columns
        t = load_target(n)
        console.print(f"[bold]{n}[/]  {escape(t.description)}", highlight=False)
        console.print(f"    {escape(t.summary())}", highlight=False)
    console.print("`npukit targets NAME` prints one in full; docs/targets.md explains every field.")


@app.command()
def check(
    model: str = typer.Argument(..., help="file.py:ClassName, a saved torch model (.pt), or an npukit .onnx/.npir/.bin"),
    input_shape: list[str] | None = typer.Option(None, "--input", help="example input shape with the batch, e.g. "
                                                 "1,3,32,32; once per input for a model with several (in order)"),
    target: str | None = typer.Option(None, help="a built-in target, a profile YAML, or 'all' for a verdict matrix "
                                      "(default: an npukit file's own target; venus for a PyTorch model)"),
    kwargs: str | None = typer.Option(None, "--kwargs", help="JSON arguments for the model's constructor"),
    fmt: str = typer.Option("text", "--format", help="text or json"),
    weight_bits: int | None = typer.Option(None, help="weight bits to check with (default: the target's)"),
) -> None:
    """Check a model against a target's rules and memories before training: every violation, with a fix."""
    import json

    from .checker import check as do_check
    from .checker import load_class
    from .targets import builtin_targets, load_target

    if fmt not in ("text", "json"):
        _fail(NpukitError(f"--format {fmt!r}: use text or json"))
    try:
        shapes = [_batch_shape(text) for text in input_shape or []]
        shape = shapes[0] if len(shapes) == 1 else (shapes or None)  # several: one shape per input
        obj = model
        if kwargs is not None or (":" in model and model.split(":", 1)[0].endswith(".py")):
            try:
                kw = json.loads(kwargs) if kwargs else {}
            except json.JSONDecodeError as e:
                raise NpukitError(f"--kwargs is not valid JSON ({e})") from None
            obj = load_class(model, kw)
        names = builtin_targets() if target == "all" else [target]  # [None]: the model's own
        if model.endswith((".yaml", ".yml")):  # a MAX7800x network description with its checkpoint
            from .checker import check_ai8x

            wrong = [n for n in names if n is not None and load_target(n).scheme != "max78000"]
            if wrong and target != "all":
                raise NpukitError(f"{model} is a MAX7800x network description; {wrong[0]} is not a MAX7800x "
                                  "target (use --target max78000 or max78002)")
            names = [n for n in names if n is None or n not in wrong] or ["max78000"]
            if len(shapes) > 1:
                raise NpukitError("a MAX7800x network description has one input: give --input once")
            results = {n or "max78000": check_ai8x(model, n or "max78000", input_shape=shape[1:] if shape else None)
                       for n in names}
        else:
            results = {n: do_check(obj, shape, n, weight_bits=weight_bits) for n in names}
    except NpukitError as e:
        _fail(e)
    if fmt == "json":
        print(json.dumps({n: r.to_dict() for n, r in results.items()} if target == "all"
                         else next(iter(results.values())).to_dict(), indent=1))
    elif target == "all":
        _print_matrix(results)
    else:
        _print_check(next(iter(results.values())))
    if not all(r.ok for r in results.values()):
        raise typer.Exit(1)


def _batch_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
        if not shape or min(shape) < 1:
            raise ValueError
    except ValueError:
        raise NpukitError(f"--input {text!r}: give the shape as numbers, e.g. 1,3,32,32") from None
    return shape


def _print_check(r) -> None:
    name = r.target.name
    if r.problems:
        n = len(r.errors)
        console.print(f"[bold]{'FAIL' if n else 'PASS'}[/] on {name}: {n} violation{'s' * (n != 1)}"
                      + (f", {len(r.problems) - n} warning(s)" if len(r.problems) > n else ""))
        for p in r.problems:
            console.print(f"  - {escape(str(p))}", highlight=False)
    else:
        console.print(f"[bold green]PASS[/] on {name}: every rule holds")
    if r.graph is None or r.errors:
        return
    table = Table("layer", "op", "output", "weights B", "activations B", "MACs", box=None)
    for row in r.layers:
        table.add_row(row.name, row.op, "x".join(map(str, row.out_shape)), f"{row.weight_bytes:,}",
                      f"{row.activation_bytes:,}", f"{row.macs:,}")
    table.add_row("total", "", "", f"{sum(x.weight_bytes for x in r.layers):,}", "",
                  f"{sum(x.macs for x in r.layers):,}")
    console.print(table)
    mem = Table("memory", "holds", "used", "capacity", "use", box=None)
    for m in r.memory:
        cap = m["capacity"]
        mem.add_row(m["memory"] or "(none declared)", ", ".join(m["holds"]) or "-", f"{m['used']:,} B",
                    f"{cap:,} B" if cap else "unknown", f"{m['used'] / cap:.1%}" if cap else "not verified")
    console.print(mem)


def _print_matrix(results: dict) -> None:
    table = Table("target", "verdict", "violations (rule: layers)", box=None)
    for name, r in results.items():
        by_rule: dict[str, list[str]] = {}
        for p in r.errors:
            by_rule.setdefault(p.rule, []).append(p.where)
        detail = "; ".join(f"{rule}: {', '.join(w)}" for rule, w in by_rule.items()) or "-"
        table.add_row(name, "[green]PASS[/]" if r.ok else "[red]FAIL[/]", escape(detail))
    console.print(table)
    console.print("`npukit check MODEL --target NAME` lists each violation with its fix.")


@app.command("import-ai8x")
def import_ai8x(
    description: Path = typer.Argument(..., help="the vendor's network description (network.yaml)"),
    checkpoint: Path = typer.Argument(..., help="its quantized checkpoint (.pth.tar)"),
    input_shape: str = typer.Option(..., "--input", help="one sample's shape, channel first (e.g. 3,32,32), or a "
                                    "sample .npy"),
    target: str = typer.Option("max78000", help="max78000 or max78002"),
    output: Path = typer.Option(Path("model.npir"), "-o", "--output", help="the IR file to write"),
) -> None:
    """Read a MAX7800x model of the vendor's flow into npukit's IR (then run, pack, codegen, report it)."""
    from .max7800x import load_ai8x

    try:
        g = load_ai8x(description, checkpoint, _sample_shape(input_shape), target=target)
        g.save(output)
    except NpukitError as e:
        _fail(e)
    console.print(f"wrote {output}: {len(g.nodes)} nodes, input {g.input_spec().shape}, output {g.output_spec().shape}")


def _sample_shape(text: str) -> tuple[int, ...]:
    """A shape written as numbers (3,32,32) or the shape of one sample in a .npy file."""
    if text.endswith(".npy"):
        x = _load_npy(Path(text))
        return tuple(x.shape)
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise NpukitError(f"--input {text!r}: give the shape as numbers (e.g. 3,32,32) or a .npy sample") from None
    if not shape or min(shape) < 1:
        raise NpukitError(f"--input {text!r}: dimensions must be positive")
    return shape


@app.command()
def inspect(model: Path = typer.Argument(..., help="a model.bin, an IR file (.npir) or an npukit ONNX file")) -> None:
    """Show a model's header, tensors, ops and memory plan."""
    from .ops import get_op

    packed = None
    try:
        from .fileio import file_kind

        if file_kind(model) == "modelbin":
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
    input_paths: list[Path] = typer.Argument(..., help=".npy with integer inputs (batch first), or float with "
                                             "--quantize; one file per input, in the model's order"),
    output: Path = typer.Option(..., "-o", "--output", help="where to write the integer outputs: .npy for one "
                                "output; .npz (one array per output, by name) for any number"),
    quantize: bool = typer.Option(False, help="the inputs hold floats: quantize them at the model's input exponents"),
) -> None:
    """Run the integer reference engine."""
    import numpy as np

    from . import engine

    try:
        g = _load_model(model)
        if len(input_paths) != len(g.inputs):
            raise NpukitError(f"{model} has {len(g.inputs)} input(s) ({', '.join(g.inputs)}) and {len(input_paths)} "
                              f"input file(s) were given: give one .npy per input, in that order")
        xs = [_load_npy(p) for p in input_paths]
        if quantize:
            xs = [g.quantize_input(x, i) for i, x in enumerate(xs)]
        ys = engine.run(g, *xs)
        from .fileio import write_atomic

        if output.is_dir():
            raise NpukitError(f"{output} is a folder; give -o the name of the .npy or .npz file to write")
        if output.suffix == ".npz":  # every output, named as in the model
            write_atomic(output, lambda tmp: np.savez(tmp, **dict(zip(g.outputs, ys, strict=True))))
        elif len(ys) > 1:
            raise NpukitError(f"{model} has {len(ys)} outputs ({', '.join(g.outputs)}); one .npy holds one array\n"
                              f"    fix: -o {output.with_suffix('.npz')} writes them all, one array per output")
        else:
            if output.suffix != ".npy":  # np.save would append it: say the name it really writes
                output = output.with_name(output.name + ".npy")
            write_atomic(output, lambda tmp: np.save(tmp, ys[0]))
    except NpukitError as e:
        _fail(e)
    for name, y in zip(g.outputs, ys, strict=True):
        console.print(f"wrote {output}{f' [{name}]' if output.suffix == '.npz' else ''}: shape {y.shape}, "
                      f"{y.dtype}, exponent {g.tensors[name].exp}", highlight=False)


def _dump_or_backend(which: str, model: Path | None, input_paths: list[Path] | None, workdir: Path):
    from . import dump as dumps

    if which not in dumps.BACKENDS:  # a backend's name wins over a file of that name ("model.bin")
        if not Path(which).is_file():
            raise NpukitError(f"{which} is neither a dump file nor a backend ({', '.join(dumps.BACKENDS)})")
        return dumps.load_dump(which, _load_model(model) if model else None)
    if model is None or not input_paths:
        raise NpukitError(f"backend {which!r} needs --model and --input")
    xs = [_load_npy(p) for p in input_paths]  # one --input per model input, in order
    return dumps.dump_backend(which, model, xs if len(xs) > 1 else xs[0], workdir / which.replace(".", "_"))


@app.command()
def dump(
    backend: str = typer.Argument(..., help="engine, onnx, model.bin, c (the generated C) or runtime (npukit-run)"),
    model: Path = typer.Argument(..., help="a model.bin, an IR file (.npir) or an npukit ONNX file"),
    input_path: list[Path] = typer.Option(..., "--input", help=".npy batch: integers, or floats (quantized at the input "
                                          "exponent); once per input for a model with several"),
    output: Path = typer.Option(..., "-o", "--output", help="the dump file to write (.npz)"),
    crc_only: bool = typer.Option(False, "--crc-only", help="keep only each tensor's CRC32 per sample"),
) -> None:
    """Write every layer's output of one backend's run (a per-layer dump for `npukit compare`)."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory(prefix="npukit-dump-") as tmp:
            d = _dump_or_backend(backend, model, input_path, Path(tmp))
        if crc_only:
            d = d.crc_only()
        d.save(output)
    except NpukitError as e:
        _fail(e)
    console.print(f"wrote {output}: {d.backend}, {len(d.order)} tensors, {d.samples} samples"
                  + (" (CRC32 only)" if not d.tensors else ""))


@app.command()
def compare(
    a: str = typer.Argument(..., help="a dump file (.npz, or CRC lines from firmware) or a backend name"),
    b: str = typer.Argument(..., help="the same, for the other run"),
    model: Path | None = typer.Option(None, help="the model backends run (and the graph that reads CRC lines)"),
    input_path: list[Path] | None = typer.Option(None, "--input", help=".npy batch for backends named directly; "
                                                 "once per input for a model with several"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Find the first layer where two runs part. Exit code 1 when they differ, 0 when every layer is equal."""
    import json
    import tempfile

    from .dump import compare as compare_dumps

    try:
        with tempfile.TemporaryDirectory(prefix="npukit-compare-") as tmp:
            da = _dump_or_backend(a, model, input_path, Path(tmp) / "a")
            db = _dump_or_backend(b, model, input_path, Path(tmp) / "b")
        diff = compare_dumps(da, db)
    except NpukitError as e:
        _fail(e)
    if json_out:
        print(json.dumps({"equal": diff is None, "difference": diff.to_dict() if diff else None}, indent=1))
    elif diff is None:
        console.print(f"equal: {da.backend} and {db.backend} agree on every layer "
                      f"({len([t for t in da.order if t in db.crcs])} tensors, {da.samples} samples)")
    else:
        console.print(escape(diff.describe()), highlight=False)
    if diff is not None:
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    model: Path = typer.Argument(..., help="a model.bin, an IR file (.npir) or an npukit ONNX file"),
    data: str = typer.Option(..., help=".npz with inputs x and labels y, or file.py:function returning (x, y)"),
    backend: str = typer.Option("all", help="comma-separated: engine, onnx, model.bin, c, runtime; or all"),
    json_out: bool = typer.Option(False, "--json", help="print the results as JSON"),
) -> None:
    """Accuracy of each backend over a whole data set, and its agreement with the engine, sample by sample."""
    import json

    from .evaluate import BACKENDS, evaluate, load_data

    names = list(BACKENDS) if backend == "all" else [b.strip() for b in backend.split(",") if b.strip()]
    try:
        x, y = load_data(data)
        results = evaluate(model, x, y, names, progress=not json_out and err.is_terminal)
    except NpukitError as e:
        _fail(e)
    if json_out:
        print(json.dumps([r.__dict__ for r in results], indent=1))
        return
    table = Table("backend", "accuracy", "same output as the engine", title=f"{model.name} on {len(x):,} samples")
    for r in results:
        acc = "no labels" if r.accuracy is None else f"{r.accuracy:.2%}"
        table.add_row(r.backend, acc, f"{r.agreement:.2%}")
    console.print(table)


@app.command()
def analyze(
    model: str = typer.Argument(..., help="the float model: file.py:ClassName or a saved torch model (.pt)"),
    data: str = typer.Option(..., help=".npz with float inputs x (and labels y), or file.py:function"),
    target: str = typer.Option("venus", help="built-in target name or profile YAML"),
    weights: Path | None = typer.Option(None, help="float weights to load first (a checkpoint or state dict)"),
    qat: Path | None = typer.Option(None, help="a QAT checkpoint of the prepared model; without it, PTQ"),
    calibrate: str = typer.Option("minmax", help="PTQ method when no --qat: minmax, percentile or mse"),
    weight_bits: int | None = typer.Option(None, help="weight bits (default: the target's)"),
    kwargs: str | None = typer.Option(None, help="JSON arguments of the model's constructor"),
    samples: int = typer.Option(2000, min=1, help="samples to analyze (the first ones)"),
    sensitivity: bool = typer.Option(True, help="rank layers by the accuracy each gives back in float"),
    out: Path | None = typer.Option(None, "-o", "--output", help="folder for report.html, its plots and analysis.json"),
    json_out: bool = typer.Option(False, "--json", help="print the analysis as JSON"),
) -> None:
    """Per layer: error against float, saturation, rounding to zero, weight ranges, sensitivity; with advice."""
    import json

    try:
        from . import analysis_report
        from .evaluate import load_data
        from .qat.analyze import analyze as analyze_model
        from .qat.analyze import prepare_for_analysis

        x, y = load_data(data)
        x, y = x[:samples], (None if y is None else y[:samples])
        qmodel = prepare_for_analysis(model, x, target, weights=weights, qat=qat, method=calibrate,
                                      weight_bits=weight_bits, kwargs=json.loads(kwargs) if kwargs else None)
        a = analyze_model(qmodel, x, y, sensitivity=sensitivity, progress=not json_out and err.is_terminal)
        paths = analysis_report.write(a, out) if out else {}
    except json.JSONDecodeError as e:
        _fail(NpukitError(f"--kwargs is not JSON: {e}"))
    except NpukitError as e:
        _fail(e)
    if json_out:
        print(json.dumps(a.to_dict(), indent=1))
        return
    console.print(analysis_report.table(a))
    for tip in a.suggestions:
        console.print(f"- {escape(tip)}", highlight=False)
    if paths:
        console.print(f"wrote {paths['html']} (plots beside it) and {paths['json']}")


def _load_npy(path: Path):
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise NpukitError(f"{path}: no such file") from None
    except Exception as e:  # an empty file ends in EOFError, a foreign one in ValueError or OSError
        raise NpukitError(f"{path} is not a readable .npy file ({type(e).__name__}: {e or 'empty'})") from None


def _load_model(path: Path):
    from .packer import load_model

    return load_model(path)


def main() -> None:
    """The console script: Ctrl-C ends it with one line and exit code 130, not a traceback."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        raise SystemExit(130) from None
    except SystemExit as e:  # typer turns Ctrl-C into exit 130 without a word
        if e.code == 130:
            err.print("interrupted")
        raise

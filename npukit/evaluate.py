"""`npukit eval`: accuracy of every backend over a whole data set, and how often each agrees with the engine.

Backends: `engine` (the integer reference), `onnx` (onnxruntime on the exported model), `model.bin` (the
engine on the graph read back from the packed file), `c` (the generated C project, built on the host) and
`runtime` (the C runtime loading the model.bin, `npukit-run`).
Data: an .npz with inputs `x` and labels `y` (or `inputs` / `labels`), or `file.py:function` returning
(x, y). Float inputs are quantized at the model's input exponent; integer inputs are used as they are.
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NpukitError
from .ir import Graph

BACKENDS = ("engine", "onnx", "model.bin", "c", "runtime")


def load_data(spec: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(inputs, labels or None) from an .npz file or a `file.py:function` entry point."""
    text = str(spec)
    if ":" in text and text.split(":", 1)[0].endswith(".py"):
        file, _, fn_name = text.partition(":")
        if not Path(file).is_file():
            raise NpukitError(f"{file}: no such file")
        mod_spec = importlib.util.spec_from_file_location(Path(file).stem, file)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
            got = getattr(module, fn_name)()
        except Exception as e:  # the user's code: say whose error it is
            raise NpukitError(f"{text} failed: {type(e).__name__}: {e}") from None
        if not (isinstance(got, tuple | list) and len(got) == 2):
            raise NpukitError(f"{text} must return (inputs, labels)")
        return np.asarray(got[0]), None if got[1] is None else np.asarray(got[1])
    try:
        with np.load(spec, allow_pickle=False) as z:
            keys = set(z.files)
            xk = next((k for k in ("x", "inputs", "x_test") if k in keys), None)
            yk = next((k for k in ("y", "labels", "y_test") if k in keys), None)
            if xk is None:
                raise NpukitError(f"{spec} holds {sorted(keys)}; name the inputs x (and the labels y)")
            return z[xk], (z[yk] if yk else None)
    except NpukitError:
        raise
    except FileNotFoundError:
        raise NpukitError(f"{spec}: no such file") from None
    except Exception as e:  # zip and format errors alike
        raise NpukitError(f"{spec} is not a readable .npz data file ({type(e).__name__}: {e})") from None


@dataclass
class BackendResult:
    backend: str
    accuracy: float | None  # None without labels
    agreement: float  # share of samples whose every output integer equals the engine's


def evaluate(model: str | Path, x, y=None, backends=("engine",), *, batch_size: int = 1024,
             progress: bool = False) -> list[BackendResult]:
    """Run each backend over the data; the engine always runs, as the reference for agreement."""
    from . import engine
    from .packer import load_model

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise NpukitError(f"unknown backend(s) {', '.join(unknown)}; use {', '.join(BACKENDS)} or all")
    graph = load_model(model)
    if len(graph.inputs) != 1:
        raise NpukitError(f"eval runs models with one input; {model} has {len(graph.inputs)} "
                          f"({', '.join(graph.inputs)})\n    fix: compare the backends with npukit compare, "
                          "--input once per input")
    x = np.asarray(x)
    if len(x) == 0:
        raise NpukitError("the data set holds no samples")
    if y is not None and len(y) != len(x):
        raise NpukitError(f"{len(x)} inputs but {len(y)} labels")
    xq = graph.quantize_input(x) if x.dtype.kind == "f" else x
    batches = [xq[i : i + batch_size] for i in range(0, len(xq), batch_size)]
    with tempfile.TemporaryDirectory(prefix="npukit-eval-") as tmp:
        runners = {"engine": lambda b: engine.run(graph, b)[0]}
        for name in backends:
            if name != "engine":
                runners[name] = _runner(name, model, graph, Path(tmp))
        outputs = {name: [] for name in runners}
        for name, run in runners.items():
            for b in _track(batches, f"{name:9s}", progress):
                outputs[name].append(run(b))
    ref = np.concatenate(outputs["engine"]).reshape(len(xq), -1)
    results = []
    for name in ["engine", *(b for b in backends if b != "engine")]:
        out = np.concatenate(outputs[name]).reshape(len(xq), -1)
        acc = None if y is None else float((out.argmax(1) == np.asarray(y).reshape(-1)).mean())
        results.append(BackendResult(name, acc, float(np.all(out == ref, axis=1).mean())))
    return results


def _track(items, what: str, progress: bool):
    if not progress:
        return items
    from rich.progress import track

    return track(items, description=what, transient=True)


def _runner(name: str, model, graph: Graph, tmp: Path):
    from . import engine
    from .packer import as_model_bin

    if name == "onnx":
        import onnxruntime as ort

        from .onnx_io import _build_model

        sess = ort.InferenceSession(_build_model(graph).SerializeToString(), providers=["CPUExecutionProvider"])
        return lambda b: sess.run(None, {graph.inputs[0]: b})[0]
    model_bin = as_model_bin(model, graph, tmp)
    if name == "model.bin":
        from . import modelbin

        packed_graph = modelbin.read(model_bin).graph
        return lambda b: engine.run(packed_graph, b)[0]
    from . import codegen
    from .codegen import host

    if name == "runtime":
        runner = host.build_runtime(tmp)
        dtypes = [graph.output_spec(i).dtype for i in range(len(graph.outputs))]  # npukit-run writes them all
        return lambda b: host.run_runtime(runner, model_bin, [b], tmp, dtypes)[0][0]
    project = codegen.generate(model_bin, tmp / "c")
    exe = host.build(project, "run_file")
    outs = [(graph.output_spec(i).dtype, int(np.prod(graph.output_spec(i).shape))) for i in range(len(graph.outputs))]
    return lambda b: host.run_file_io(exe, [b], outs, tmp)[0]  # scored on the first output, as the engine is

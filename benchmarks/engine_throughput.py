"""Integer engine throughput vs onnxruntime, one thread, batch 1 and batch 256, measured in one run.

Compares the numpy reference engine with onnxruntime running (a) npukit's exported ONNX and (b) the same
float network quantized by onnxruntime's own `quantize_static` (QDQ int8), which is what a user would pick
instead. Goals: engine >= 0.25x of (b) at batch 1 and >= 0.5x at batch 256. Printed, never asserted.

    .venv/bin/python benchmarks/engine_throughput.py [--seconds 2] [--rounds 3] [--wall-clock] [--baseline REV]

--baseline REV adds the engine of git revision REV as one more runner in the same interleaved rounds (its
npukit package extracted with `git archive` and imported under another name, reading the same graph
from an IR file), so a change is measured side by side with what it changes.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread everywhere, set before numpy loads its BLAS

import argparse  # noqa: E402
import importlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402

import npukit  # noqa: E402
from npukit.data import mnist1d  # noqa: E402
from npukit.models import mnist1d_cnn  # noqa: E402
from npukit.train import fit  # noqa: E402


class _Calib(CalibrationDataReader):
    def __init__(self, x):
        self.it = iter([{"x": x[i : i + 64]} for i in range(0, len(x), 64)])

    def get_next(self):
        return next(self.it, None)


def rate(fn, batch: np.ndarray, seconds: float, clock=time.process_time) -> float:
    """Samples per second of `clock` time. The default, this process's CPU time, is what one thread costs
    whatever else runs on the machine (every runner here computes on one thread), so a busy shared
    machine slows neither side of a ratio; --wall-clock measures elapsed time instead."""
    fn(batch)  # warm-up
    n, t0 = 0, clock()
    while clock() - t0 < seconds:
        fn(batch)
        n += len(batch)
    return n / (clock() - t0)


def baseline(rev: str, graph, tmp: Path):
    """The engine of git revision `rev` (its npukit package as `npukit_at_rev`) and the graph in its classes."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(root), "archive", rev, "npukit"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    (tmp / "npukit").rename(tmp / "npukit_at_rev")  # its imports are relative: it runs under any name
    sys.path.insert(0, str(tmp))
    old = importlib.import_module("npukit_at_rev")
    graph.save(tmp / "graph.npkir")
    return old, old.load_ir(tmp / "graph.npkir")


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per cell, interleaved; the best is printed")
    ap.add_argument("--wall-clock", action="store_true", help="elapsed time instead of this process's CPU time")
    ap.add_argument("--baseline", metavar="REV", help="also run the engine of this git revision, side by side")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = mnist1d()
    model = mnist1d_cnn()
    fit(model, d.x_train, d.y_train, epochs=3, lr=1e-2)
    graph = npukit.to_ir(npukit.prepare(model, torch.from_numpy(d.x_train[:512])))

    tmp = Path(tempfile.mkdtemp())
    ours = session(npukit.export_onnx(graph, tmp / "npukit.onnx"))
    torch.onnx.export(model.eval(), torch.randn(1, 1, 40), tmp / "float.onnx", dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17)
    quantize_static(str(tmp / "float.onnx"), str(tmp / "qdq.onnx"), _Calib(d.x_train[:512]),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    qdq = session(tmp / "qdq.onnx")

    q_test = graph.quantize_input(d.x_test)
    runners = {
        "npukit engine (numpy)": lambda x: npukit.run(graph, graph.quantize_input(x)),
        "onnxruntime, npukit ONNX": lambda x: ours.run(None, {"input": graph.quantize_input(x)}),
        "onnxruntime, QDQ int8 (quantize_static)": lambda x: qdq.run(None, {"x": x}),
    }
    if args.baseline:
        old, old_graph = baseline(args.baseline, graph, tmp)
        runners[f"npukit engine at {args.baseline}"] = lambda x: old.engine.run(old_graph, old_graph.quantize_input(x))
        assert np.array_equal(runners[f"npukit engine at {args.baseline}"](d.x_test)[0], npukit.run(graph, q_test)[0])
    clock = time.perf_counter if args.wall_clock else time.process_time
    print(f"one thread; samples per {'elapsed' if args.wall_clock else 'CPU'} second, best of {args.rounds} "
          f"interleaved rounds of {args.seconds:g} s per cell (inputs quantized inside each call)")
    print(f"{'runner':42s} {'batch 1':>12s} {'batch 256':>12s}")
    rates = {name: [0.0, 0.0] for name in runners}
    for _ in range(args.rounds):  # rounds interleave the runners, so a change in machine load hits them all
        for name, fn in runners.items():
            for i, b in enumerate((1, 256)):
                rates[name][i] = max(rates[name][i], rate(fn, d.x_test[:b], args.seconds, clock))
    for name in runners:
        print(f"{name:42s} {rates[name][0]:12,.0f} {rates[name][1]:12,.0f}")
    if args.baseline:
        was = rates[f"npukit engine at {args.baseline}"]
        print(f"engine / engine at {args.baseline}: batch 1 {rates['npukit engine (numpy)'][0] / was[0]:.2f}x, "
              f"batch 256 {rates['npukit engine (numpy)'][1] / was[1]:.2f}x; at {args.baseline} / QDQ: batch 1 "
              f"{was[0] / rates['onnxruntime, QDQ int8 (quantize_static)'][0]:.2f}x, batch 256 "
              f"{was[1] / rates['onnxruntime, QDQ int8 (quantize_static)'][1]:.2f}x")
    eng, qdq_r = rates["npukit engine (numpy)"], rates["onnxruntime, QDQ int8 (quantize_static)"]
    print(f"engine / QDQ onnxruntime: batch 1 {eng[0] / qdq_r[0]:.2f}x, batch 256 {eng[1] / qdq_r[1]:.2f}x "
          "(goals >= 0.25x at batch 1, >= 0.5x at batch 256)")
    agree = np.array_equal(ours.run(None, {"input": q_test})[0], npukit.run(graph, q_test)[0])
    print(f"npukit ONNX == engine on the test set: {agree}")


if __name__ == "__main__":
    main()

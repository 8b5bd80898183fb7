"""TensorFlow Lite Micro's time per inference on the demo network; run by benchmarks/c_kernels.py.

Runs in a Python that has the `tflite-micro` package (and numpy), not npukit's environment:

    python3.11 -m venv /work/tflm-venv && /work/tflm-venv/bin/pip install tflite-micro
    /work/tflm-venv/bin/python benchmarks/tflm_invoke.py [--runs 1000]      # one round, one JSON line
    /work/tflm-venv/bin/python benchmarks/tflm_invoke.py --check            # its version, or fails

One round: --runs calls of the interpreter's set_input() and invoke() on benchmarks/data/trivial_int8.tflite (one
MAX_POOL_2D over two int8 values), then --runs on benchmarks/data/demo_int8.tflite, each loop's CPU time
(time.process_time, this process only) divided by --runs. The wrapper has no way to loop in C++, so a call
of the demo model also pays the Python loop, the method call and pybind11; the trivial model's call pays
the same plus TFLM's own per-invoke work and one tiny op, and its time is subtracted ("net"): if anything
this charges TFLM a little less than its real cost. The input is set before every call (TFLM's memory plan
lets later tensors reuse the input's bytes once the first conv has read them, so a second invoke() alone
would run on whatever was left there), always the same int8 values as the generated C's benchmark
(x[i] = (i * 37) % 200 - 100); the trivial model's loop sets its input too, so that copy is subtracted.
The reference kernels do no work that depends on the values.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tflite_micro
from tflite_micro import runtime

DATA = Path(__file__).resolve().parent / "data"


def interpreter(name: str) -> tuple[runtime.Interpreter, np.ndarray]:
    interp = runtime.Interpreter.from_file(str(DATA / name))
    shape = interp.get_input_details(0)["shape"]
    x = ((np.arange(int(np.prod(shape))) * 37) % 200 - 100).astype(np.int8).reshape(shape)
    interp.set_input(x, 0)
    interp.invoke()  # the first call out of the timing
    return interp, x


def loop_us(interp: runtime.Interpreter, x: np.ndarray, runs: int) -> float:
    set_input, invoke = interp.set_input, interp.invoke
    t0 = time.process_time()
    for _ in range(runs):
        set_input(x, 0)
        invoke()
    return (time.process_time() - t0) / runs * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--check", action="store_true", help="print the package version and exit")
    ap.add_argument("--demo-only", action="store_true",
                    help="only the demo model, --runs + 1 invokes in all (for counting instructions)")
    args = ap.parse_args()
    if args.check:
        print(tflite_micro.__version__)
        return
    if args.demo_only:
        print(json.dumps({"demo_us": loop_us(*interpreter("demo_int8.tflite"), args.runs)}))
        return
    trivial, demo = interpreter("trivial_int8.tflite"), interpreter("demo_int8.tflite")
    call_us = loop_us(*trivial, args.runs)
    demo_us = loop_us(*demo, args.runs)
    print(json.dumps({"call_us": call_us, "demo_us": demo_us, "net_us": demo_us - call_us,
                      "output": demo[0].get_output(0).ravel().tolist()}))


if __name__ == "__main__":
    main()

"""Generated C on the host: instructions per MAC (valgrind callgrind, repeatable on a noisy machine) and
time per inference for the demo model, x86-64 -O2.

Goals: <= 2 instructions per MAC in the conv layers; time per inference at least 10x below TensorFlow
Lite Micro's reference kernels (about 250 us for a comparable network on one core here). Printed, never
asserted.

    .venv/bin/python benchmarks/c_kernels.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import npukit
from npukit import codegen, modelbin
from npukit.codegen import host
from npukit.ops import get_op

TFLM_REFERENCE_US = 250.0  # TFLM reference kernels, comparable 3-conv MNIST-1D network, one core here

BENCH_C = """#include <stdio.h>
#include <stdlib.h>
#include "model.h"
int main(int argc, char **argv)
{
    static int8_t x[NPUKIT_INPUT_SIZE];
    npukit_output_t y[NPUKIT_OUTPUT_SIZE];
    long i, runs = argc > 1 ? atol(argv[1]) : 1;
    long sum = 0;
    for (i = 0; i < NPUKIT_INPUT_SIZE; i++) x[i] = (int8_t)((i * 37) % 200 - 100);
    for (i = 0; i < runs; i++) { x[0] = (int8_t)i; npukit_run(x, y); sum += y[0]; }
    printf("%ld\\n", sum);
    return 0;
}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000)
    args = ap.parse_args()
    torch.manual_seed(0)
    from npukit.models import mnist1d_cnn

    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(256, 1, 40)))
    plan = npukit.memplan.plan_graph(graph)
    packed = modelbin.read(modelbin.pack_bytes(graph, plan.offsets, plan.arena_bytes, plan.lower_bound_bytes))
    project = codegen.generate(packed, Path(tempfile.mkdtemp()) / "c")
    (project / "bench.c").write_text(BENCH_C)
    exe = host.build(project, "bench", opt="-O2")

    t = time.perf_counter()
    subprocess.run([str(exe), str(args.runs)], check=True, capture_output=True)
    us = (time.perf_counter() - t) / args.runs * 1e6
    conv_macs = sum(get_op(n.op).macs(n, graph) for n in graph.nodes if n.op == "conv")
    all_macs = sum(get_op(n.op).macs(n, graph) for n in graph.nodes)
    print(f"demo model: {all_macs:,} MACs per inference ({conv_macs:,} in conv layers)")
    print(f"host time per inference: {us:.1f} us  (TFLM reference kernels ~{TFLM_REFERENCE_US:.0f} us: "
          f"{TFLM_REFERENCE_US / us:.1f}x faster; goal >= 10x)")

    if shutil.which("valgrind") is None:
        print("valgrind not installed: no instruction counts")
        return
    out = project / "callgrind.out"
    runs = 20
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(exe), str(runs)],
                   check=True, capture_output=True)
    ann = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)], check=True, capture_output=True, text=True).stdout
    per_fn = {}
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S*:(\w+)", line) or re.match(r"\s*([\d,]+)\s+\S*:(\w+)", line)
        if m:
            per_fn[m.group(2)] = per_fn.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    conv_ir = sum(v for k, v in per_fn.items() if k.startswith("nk_conv"))  # with its static helpers
    total_ir = sum(per_fn.values())
    print(f"callgrind over {runs} inferences: {total_ir / runs:,.0f} instructions per inference "
          f"({total_ir / runs / all_macs:.2f} per MAC overall)")
    print(f"conv layers: {conv_ir / runs / conv_macs:.2f} instructions per MAC (goal <= 2)")
    top = sorted(per_fn.items(), key=lambda kv: -kv[1])[:6]
    print("top functions: " + ", ".join(f"{k} {v / runs:,.0f}" for k, v in top))


if __name__ == "__main__":
    main()

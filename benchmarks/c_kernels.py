"""Generated C on the host: instructions per MAC (valgrind callgrind, repeatable on a noisy machine) and
time per inference for the demo model, x86-64 -O2: the x86-64 baseline build (SSE2) and, where the host
runs it, an -mavx2 build, timed in turns in one run, with TensorFlow Lite Micro's reference kernels on the
same network taking their turn in the same rounds where a Python with the `tflite-micro` package is given.

Goals: <= 0.8 instructions per MAC in the conv layers (issue 12); time per inference at least 10x below
TensorFlow Lite Micro's reference kernels (issue 12). Printed, never asserted. Time is CPU time (user +
system): for the generated C, that of one process running --runs inferences (its start-up included); for
TFLM, benchmarks/tflm_invoke.py in the given Python (the `tflite-micro` pip wheel: reference kernels, x86-64
baseline, -O2) running --tflm-runs invokes of benchmarks/data/demo_int8.tflite (benchmarks/make_tflm_model.py
wrote it: the demo's layers, int8) with the cost of a call measured on a one-op model subtracted. Each round
runs every build once and TFLM once; printed are the best of --rounds rounds, the median, and the ratio
TFLM / generated C (best to best, and the spread of the per-round ratios), so that other jobs on the machine
inflate it as little as possible. Without a TFLM Python it says so and prints no ratio.

    .venv/bin/python benchmarks/c_kernels.py [--runs 20000] [--rounds 5] [--no-avx2] [--against REV]
        [--tflm-python /work/tflm-venv/bin/python] [--tflm-runs 1000]

--tflm-python defaults to $NPUKIT_TFLM_PYTHON, else this Python (used only if it has `tflite-micro`).
--against REV adds a baseline build of the same generated project with the kernel library
(npukit/codegen/runtime/*) as of git revision REV, timed in the same turns: a before/after in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import npukit
from npukit import codegen, modelbin
from npukit.codegen import host
from npukit.ops import get_op

TFLM_INVOKE = Path(__file__).resolve().parent / "tflm_invoke.py"

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

BUILDS = {"x86-64 (SSE2)": [], "-mavx2": ["-mavx2"]}


def cpu_us(exe: Path, runs: int) -> float:
    """CPU time (user + system) per inference of one process running `runs` inferences, in us."""
    def spent() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    before = spent()
    subprocess.run([str(exe), str(runs)], check=True, capture_output=True)
    return (spent() - before) / runs * 1e6


def tflm_python(python: str | None) -> tuple[str | None, str]:
    """The Python that runs TFLM_INVOKE and its tflite-micro version, or (None, why not)."""
    python = python or os.environ.get("NPUKIT_TFLM_PYTHON") or sys.executable
    try:
        res = subprocess.run([python, str(TFLM_INVOKE), "--check"], capture_output=True, text=True)
    except OSError as e:
        return None, f"{python}: {e}"
    if res.returncode != 0:
        return None, f"{python}: " + (res.stderr.strip().splitlines() or ["failed"])[-1]
    return python, res.stdout.strip()


def tflm_us(python: str, runs: int) -> dict:
    """One round of TFLM_INVOKE: call_us, demo_us and net_us (demo_us - call_us), CPU time per invoke."""
    res = subprocess.run([python, str(TFLM_INVOKE), "--runs", str(runs)], check=True, capture_output=True, text=True)
    return json.loads(res.stdout)


def callgrind_annotate(cmd: list[str], out: Path, options: tuple[str, ...] = ()) -> str:
    """callgrind_annotate's per-function listing of `cmd` run under callgrind with `options`."""
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *options, *cmd],
                   check=True, capture_output=True)
    return subprocess.run(["callgrind_annotate", "--inclusive=no", str(out)], check=True, capture_output=True,
                          text=True).stdout


def callgrind(exe: Path, out: Path, runs: int) -> dict[str, int]:
    """Instructions per function (all files of a function added) over `runs` inferences."""
    ann = callgrind_annotate([str(exe), str(runs)], out)
    per_fn: dict[str, int] = {}
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\S*:(\w+)", line) or re.match(r"\s*([\d,]+)\s+\S*:(\w+)", line)
        if m:
            per_fn[m.group(2)] = per_fn.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return per_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-avx2", action="store_true", help="only the x86-64 baseline build")
    ap.add_argument("--against", metavar="REV", help="also the kernels as of this git revision (baseline flags)")
    ap.add_argument("--tflm-python", metavar="PYTHON", help="a Python with tflite-micro (default: "
                    "$NPUKIT_TFLM_PYTHON, else this one if it has it)")
    ap.add_argument("--tflm-runs", type=int, default=1000, help="TFLM invokes per round")
    args = ap.parse_args()
    torch.manual_seed(0)
    from npukit.models import mnist1d_cnn

    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(256, 1, 40)))
    plan = npukit.memplan.plan_graph(graph)
    packed = modelbin.read(modelbin.pack_bytes(graph, plan.offsets, plan.arena_bytes, plan.lower_bound_bytes))
    project = codegen.generate(packed, Path(tempfile.mkdtemp()) / "c")
    (project / "bench.c").write_text(BENCH_C)
    exes = {}
    for name, flags in BUILDS.items():
        if flags and args.no_avx2:
            continue
        exe = host.build(project, "bench", opt="-O2", defines=flags, out_name=f"bench{len(exes)}")
        if subprocess.run([str(exe), "1"], capture_output=True).returncode != 0:
            print(f"{name}: this host does not run the build; left out")
            continue
        exes[name] = exe
    if args.against:
        old = project.parent / "against"
        shutil.copytree(project, old)
        root = Path(__file__).resolve().parents[1]
        for src in sorted(old.glob("nk_*.c")) + [old / "npukit_kernels.h"]:
            rel = f"npukit/codegen/runtime/{src.name}"
            src.write_bytes(subprocess.run(["git", "show", f"{args.against}:{rel}"], cwd=root, check=True,
                                           capture_output=True).stdout)
        exes[f"kernels as of {args.against} (SSE2)"] = host.build(old, "bench", opt="-O2", out_name="bench_against")
    conv_macs = sum(get_op(n.op).macs(n, graph) for n in graph.nodes if n.op == "conv")
    all_macs = sum(get_op(n.op).macs(n, graph) for n in graph.nodes)
    print(f"demo model: {all_macs:,} MACs per inference ({conv_macs:,} in conv layers)")

    tflm, tflm_version = tflm_python(args.tflm_python)
    times: dict[str, list[float]] = {name: [] for name in exes}
    tflm_rounds: list[dict] = []
    for _ in range(args.rounds):
        for name, exe in exes.items():
            times[name].append(cpu_us(exe, args.runs))
        if tflm:
            tflm_rounds.append(tflm_us(tflm, args.tflm_runs))
    net = [r["net_us"] for r in tflm_rounds]
    if tflm:
        print(f"TFLM reference kernels (tflite-micro {tflm_version}): host time per inference {min(net):.1f} us "
              f"(best of {args.rounds} x {args.tflm_runs} invokes, CPU time, median {statistics.median(net):.1f}; "
              f"a call's cost, {statistics.median(r['call_us'] for r in tflm_rounds):.2f} us, subtracted)")
    else:
        print(f"TFLM not timed ({tflm_version}): no ratio; give --tflm-python, a Python with the tflite-micro "
              f"package (benchmarks/tflm_invoke.py)")
    for name, us in times.items():
        line = (f"{name}: host time per inference {min(us):.1f} us (best of {args.rounds} x {args.runs} runs, "
                f"CPU time, median {statistics.median(us):.1f})")
        if tflm:
            per_round = sorted(t / c for t, c in zip(net, us, strict=True))
            line += (f"; TFLM / this {min(net) / min(us):.1f}x best to best (per round {per_round[0]:.1f}-"
                     f"{per_round[-1]:.1f}x, median {statistics.median(per_round):.1f}x; goal >= 10x)")
        print(line)

    if shutil.which("valgrind") is None:
        print("valgrind not installed: no instruction counts")
        return
    runs = 20
    per_inference = {}
    for name, exe in exes.items():
        per_fn = callgrind(exe, project / f"callgrind.{exe.name}", runs)
        conv_ir = sum(v for k, v in per_fn.items() if k.startswith("nk_conv"))  # with its static helpers
        total_ir = sum(per_fn.values())
        per_inference[name] = total_ir / runs
        print(f"{name}: callgrind over {runs} inferences: {total_ir / runs:,.0f} instructions per inference "
              f"({total_ir / runs / all_macs:.2f} per MAC overall); conv layers {conv_ir / runs / conv_macs:.2f} "
              f"per MAC (goal <= 0.8)")
        top = sorted(per_fn.items(), key=lambda kv: -kv[1])[:6]
        print("  top functions: " + ", ".join(f"{k} {v / runs:,.0f}" for k, v in top))
    if tflm:  # only what runs inside MicroInterpreter::Invoke(), the first (untimed) invoke too
        ann = callgrind_annotate([tflm, str(TFLM_INVOKE), "--demo-only", "--runs", str(runs)], project / "callgrind.tflm",
                                 ("--toggle-collect=tflite::micro::MicroInterpreter::Invoke()",))
        ir = {"total": r"PROGRAM TOTALS", "conv": r"reference_integer_ops::ConvPerChannel\("}
        ir = {k: sum(int(m.group(1).replace(",", "")) for m in re.finditer(r"^\s*([\d,]+) .*" + pat, ann, re.M))
              for k, pat in ir.items()}
        print(f"TFLM reference kernels: callgrind over {runs + 1} inferences: {ir['total'] / (runs + 1):,.0f} "
              f"instructions per inference ({ir['total'] / (runs + 1) / all_macs:.2f} per MAC overall, "
              f"ConvPerChannel {ir['conv'] / (runs + 1) / conv_macs:.2f} per conv MAC); TFLM / "
              + ", ".join(f"{name} {ir['total'] / (runs + 1) / n:.1f}x" for name, n in per_inference.items()))


if __name__ == "__main__":
    main()

"""Command-line start-up time: `npukit --help`, `npukit targets` and `npukit inspect model.bin`, measured in
one run beside `python -c "import torch"` and a bare `python -c "pass"` for reference.

Each command runs `--repeats` times, the commands interleaved round by round (after one untimed warm-up
round), so a noisy machine slows them all alike; the median wall time is printed, with its ratio to the bare
interpreter. Goal: each npukit command under 0.5 s. Printed, never asserted. Afterwards each npukit command
is run once more under `python -X importtime` to list the heavy modules (torch, onnx, ...) it loads.

    .venv/bin/python benchmarks/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_S = 0.5
HEAVY = ("torch", "onnx", "onnxruntime", "matplotlib", "scipy", "pandas")


def build_model_bin(out: Path) -> Path:
    import torch  # only here: the parent needs torch to make the model, the timed commands must not

    import npukit
    from npukit.models import mnist1d_cnn

    torch.manual_seed(0)
    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(8, 1, 40)))
    return npukit.pack(graph, out / "model.bin").path


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr}")
    return elapsed


def heavy_imports(args: list[str]) -> tuple[list[str], float]:
    """Heavy top-level packages `python -X importtime -m npukit ARGS` loads, and its total import time (s)."""
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "npukit", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    loaded, total_us = set(), 0
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if not name[1:].startswith(" "):  # nested imports are indented under their importer
            total_us += int(cumulative)  # top-level imports only: their cumulative times add up
        top = name.strip().split(".")[0]
        if top in HEAVY:
            loaded.add(top)
    return sorted(loaded), total_us / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each command")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        measure(args.repeats, build_model_bin(Path(tmp)))


def measure(repeats: int, model_bin: Path) -> None:
    npukit_exe = str(Path(sys.executable).with_name("npukit"))
    commands = {
        "npukit --help": [npukit_exe, "--help"],
        "npukit targets": [npukit_exe, "targets"],
        "npukit inspect model.bin": [npukit_exe, "inspect", str(model_bin)],
        'python -c "import torch"': [sys.executable, "-c", "import torch"],
        'python -c "pass"': [sys.executable, "-c", "pass"],
    }
    for cmd in commands.values():  # warm-up: .pyc files and the page cache
        wall(cmd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, cmd in commands.items():
            times[name].append(wall(cmd))

    bare = statistics.median(times['python -c "pass"'])
    print(f"wall time of each command, median of {repeats} interleaved runs (after one warm-up round)")
    print(f"{'command':28s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'x bare':>7s}  goal < {GOAL_S} s")
    for name, ts in times.items():
        med = statistics.median(ts)
        verdict = ("PASS" if med < GOAL_S else "FAIL") if name.startswith("npukit") else ""
        print(f"{name:28s} {med:9.3f} {min(ts):7.3f} {max(ts):7.3f} {med / bare:7.1f}  {verdict}")

    print("\nheavy packages loaded (python -X importtime -m npukit ...), and total import time")
    for name, cmd in commands.items():
        if name.startswith("npukit"):
            loaded, secs = heavy_imports(cmd[1:])
            print(f"{name:28s} {', '.join(loaded) or 'none':>24s} {secs:8.3f} s")


if __name__ == "__main__":
    main()

"""model.bin size against its packed weights, and pack time, for the demo model.

Goals: overhead (file bytes - packed weight bytes) under 1 KiB + 2% of the weights; pack under 1 second.
Printed, never asserted.

    .venv/bin/python benchmarks/pack_size.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

import npukit
from npukit.models import mnist1d_cnn
from npukit.report import weight_bytes


def main() -> None:
    torch.manual_seed(0)
    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(256, 1, 40)))
    out = Path(tempfile.mkdtemp())
    times = []
    for _ in range(5):
        t = time.perf_counter()
        result = npukit.pack(graph, out / "model.bin")
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    npukit.pack(graph, out / "model.bin", report_dir=out / "report")
    with_report = time.perf_counter() - t
    weights = sum(weight_bytes(graph).values())
    size = result.model_bin_bytes
    budget = 1024 + 0.02 * weights
    print(f"demo model: model.bin {size:,} B, packed weights and biases {weights:,} B, "
          f"overhead {size - weights:,} B (goal < {budget:,.0f} B = 1 KiB + 2%): "
          f"{'met' if size - weights < budget else 'missed'}")
    print(f"arena {result.plan.arena_bytes:,} B, lower bound {result.plan.lower_bound_bytes:,} B "
          f"(ratio {result.plan.arena_bytes / result.plan.lower_bound_bytes:.2f})")
    print(f"pack time: median {statistics.median(times) * 1e3:.1f} ms without the report, "
          f"{with_report * 1e3:.0f} ms with report.md/html/png (goal < 1 s)")


if __name__ == "__main__":
    main()

"""The pack report: weight bytes, memory usage against the target, limit problems, and the written files."""

from __future__ import annotations

import ast
import copy
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import npukit
import npukit.report
from npukit import memplan
from npukit.ir import Graph, Node, TensorSpec
from npukit.models import mnist1d_cnn
from npukit.report import OUTPUT_STEP, check_limits, memory_usage, weight_bytes, write_report

TINY = {"name": "tiny", "memory": [{"name": "sram", "bytes": 1000, "holds": ["activations"]},
                                   {"name": "flash", "bytes": 10**6, "holds": ["weights"]}]}


@pytest.fixture(scope="module")
def graph() -> Graph:
    torch.manual_seed(0)
    return npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(64, 1, 40)))


@pytest.fixture(scope="module")
def plan(graph):
    return memplan.plan_graph(graph)


@pytest.fixture(scope="module")
def report_dir(graph, plan, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "nested" / "dir"  # created by write_report
    return out, write_report(graph, plan, "venus", out, model_bin_bytes=16384)


# ---------------------------------------------------------------------------------------------------
# weight_bytes


def test_weight_bytes_demo_by_hand(graph):
    wb = weight_bytes(graph)
    assert set(wb) == {n.name for n in graph.nodes}
    assert wb["conv1"] == 32 * 1 * 5 * 8 // 8 + 32 * 4  # int8 weights, int32 biases
    assert wb["conv2"] == wb["conv3"] == 32 * 32 * 5 + 32 * 4
    assert wb["fc"] == 10 * 320 + 10 * 4
    assert wb["pool2"] == wb["pool3"] == wb["flatten"] == 0
    assert sum(wb.values()) == 14024


def test_weight_bytes_packs_narrow_weights_and_wide_biases(graph):
    g = copy.deepcopy(graph)
    conv1 = g.node("conv1")
    conv1.attrs["w_bits"] = 4  # 160 weights -> 80 bytes
    g.node("fc").attrs["w_bits"] = 2  # 3200 weights -> 800 bytes
    conv1.params["weight"] = conv1.params["weight"][:, :, :3]  # 96 4-bit weights -> 48 bytes
    wb = weight_bytes(g)
    assert wb["conv1"] == 48 + 32 * 4
    assert wb["fc"] == 800 + 40
    g.node("fc").params["bias"] = np.array([2**31] + [0] * 9, dtype=np.int64)  # no longer fits int32
    assert weight_bytes(g)["fc"] == 800 + 10 * 8
    g.node("conv1").params["weight"] = np.zeros((3, 1, 3), np.int8)  # 9 4-bit weights round up to 5 bytes
    assert weight_bytes(g)["conv1"] == 5 + 32 * 4


# ---------------------------------------------------------------------------------------------------
# memory_usage


def test_memory_usage_demo(graph, plan):
    u = memory_usage(graph, plan, "venus")
    n = len(graph.nodes)
    assert u.steps == [nd.name for nd in graph.nodes] + [OUTPUT_STEP]
    assert len(u.live_bytes) == len(u.occupied_bytes) == n + 1
    assert max(u.live_bytes) == plan.lower_bound_bytes  # the demo's sizes are multiples of the alignment
    assert max(u.occupied_bytes) == plan.arena_bytes
    assert all(live <= occ <= plan.arena_bytes for live, occ in zip(u.live_bytes, u.occupied_bytes, strict=True))
    # By hand: conv1 and conv2 (32x40 int8 each) are live together while conv2 runs.
    assert u.peak_step == 1 and u.live_bytes[1] == 2 * 32 * 40
    assert u.live_layers(1) == ["conv1", "conv2"]
    # flatten views pool3: counted once at step 5, where both are live.
    assert u.live_bytes[5] == 32 * 10 and {"pool3", "flatten"} <= set(u.live[5])
    assert u.live_bytes[n] == 10 * 4  # the int32 logits, read after the run
    act, w = u.kinds["activations"], u.kinds["weights"]
    assert (act.memory, act.capacity, act.used) == ("sram", 655360, plan.arena_bytes)
    assert (w.memory, w.capacity, w.used) == ("psram", 8388608, 14024)
    assert [(r.memory, r.holds) for r in u.memories] == [("sram", ("activations",)), ("psram", ("weights",)),
                                                          ("flash", ())]


def test_memory_usage_defaults_to_the_graphs_target(graph, plan):
    assert memory_usage(graph, plan).kinds == memory_usage(graph, plan, "venus").kinds


def test_live_bytes_count_in_place_outputs_once():
    """A hand-made chain whose ReLU may overwrite its input: the curve's peak is the planner's lower bound."""
    t = {"x": TensorSpec("x", (100,), 8, 0), "p": TensorSpec("p", (100,), 8, 0), "r": TensorSpec("r", (100,), 8, 0),
         "q": TensorSpec("q", (50,), 8, 0)}
    nodes = [Node("p", "maxpool", ["x"], ["p"]), Node("r", "relu", ["p"], ["r"]), Node("q", "maxpool", ["r"], ["q"])]
    g = Graph({"name": "venus"}, ["x"], ["q"], t, nodes)
    plan = memplan.plan_graph(g)
    u = memory_usage(g, plan, {"name": "nomem"})
    assert plan.offsets["r"] == plan.offsets["p"]  # the planner took the in-place option
    assert u.live_bytes == [200, 100, 152, 52]  # step 1: p and r share their 100 bytes
    assert max(u.live_bytes) == plan.lower_bound_bytes
    assert max(u.occupied_bytes) == plan.arena_bytes


def test_memory_usage_refuses_another_graphs_plan(graph):
    other = copy.deepcopy(graph)
    other.node("fc").outputs = ["logits"]
    other.tensors["logits"] = other.tensors.pop("fc")
    other.outputs = ["logits"]
    with pytest.raises(npukit.NpukitError, match="not this graph"):
        memory_usage(graph, memplan.plan_graph(other), "venus")


# ---------------------------------------------------------------------------------------------------
# check_limits


def test_check_limits_venus_fits(graph, plan):
    assert check_limits(graph, plan, "venus") == []


def test_check_limits_tiny_activation_memory(graph, plan):
    problems = check_limits(graph, plan, TINY)
    assert len(problems) == 1
    p = problems[0]
    assert p.rule == "memory-limit"
    assert p.where == "conv1, conv2"  # the layers live at the peak step
    over = plan.arena_bytes - 1000
    assert over == 1560
    assert f"{plan.arena_bytes} bytes" in p.message and "1000 bytes" in p.message
    assert f"{over} bytes over" in p.message
    assert p.fix.startswith("shrink the feature maps before the peak layer conv2")
    assert "flash" not in p.fix  # activations are never sent to read-only memory


def test_check_limits_weights_shared_and_undeclared(graph, plan):
    small_w = {"name": "w", "memory": [{"name": "sram", "bytes": 10**6, "holds": ["activations"]},
                                       {"name": "psram", "bytes": 10000, "holds": ["weights"]}]}
    (p,) = check_limits(graph, plan, small_w)
    assert p.where.split(", ")[:2] == ["conv2", "conv3"]  # the largest weight holders first
    assert "14024 bytes" in p.message and "4024 bytes over" in p.message
    assert "sram (" in p.fix  # sram has room for the weights beside the arena
    # One memory for both: the arena and the weights add up.
    shared = {"name": "s", "memory": [{"name": "ram", "bytes": 16000, "holds": ["activations", "weights"]}]}
    u = memory_usage(graph, plan, shared)
    assert [(r.memory, r.holds, r.used) for r in u.memories] == [("ram", ("activations", "weights"),
                                                                   plan.arena_bytes + 14024)]
    (p,) = check_limits(graph, plan, shared)
    assert f"{plan.arena_bytes + 14024 - 16000} bytes over" in p.message
    # No memory declared: no limits.
    assert check_limits(graph, plan, {"name": "bare"}) == []
    assert all(r.capacity is None for r in memory_usage(graph, plan, {"name": "bare"}).memories)


# ---------------------------------------------------------------------------------------------------
# write_report


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_files(report_dir, graph, plan):
    out, paths = report_dir
    assert set(paths) == {"md", "html", "png"}
    assert {p.name for p in out.iterdir()} == {"report.md", "report.html", "arena.png"}  # no temporary files
    png = paths["png"].read_bytes()
    w, h = _png_size(png)
    assert 800 <= w <= 4000 and 600 <= h <= 2000
    assert 20_000 < len(png) < 2_000_000
    md = paths["md"].read_text()
    for n in graph.nodes:
        assert f"| {n.name} |" in md
    assert f"{plan.arena_bytes} B" in md and f"{plan.lower_bound_bytes} B" in md
    for strategy, arena in plan.by_strategy.items():
        assert strategy in md and f"{arena} B" in md
    assert "16384 B" in md and "14024 B" in md and "316,800" in md  # model.bin, weights, MACs
    assert "(arena.png)" in md and "WARNING" not in md
    html = paths["html"].read_text()
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html and 'src="arena.png"' in html
    assert "<link" not in html and "<script" not in html  # self-contained
    for n in graph.nodes:
        assert f">{n.name}<" in html


def test_report_warns_when_over(graph, plan, tmp_path):
    (tmp_path / "report.md").write_text("stale")
    paths = write_report(graph, plan, TINY, tmp_path, title="tiny <chip>")
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert md.startswith("# tiny <chip>")  # the stale file was replaced
    assert "> [!WARNING]" in md and "1560 bytes over" in md and "OVER by 1560 B" in md
    assert 'class="warn"' in html and "1560 bytes over" in html
    assert "tiny &lt;chip&gt;" in html  # escaped


def test_report_imports_matplotlib_only_when_writing():
    """No module-level matplotlib import (and no pyplot at all): importing npukit needs no display."""
    tree = ast.parse(Path(npukit.report.__file__).read_text())
    top = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    top += [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert not [m for m in top if m.startswith("matplotlib")]
    assert "matplotlib.pyplot" not in Path(npukit.report.__file__).read_text()

"""Capture: every unsupported construct reported at once, functional spellings captured, and the QAT model
(eval mode) bit-exact against the integer engine on the IR it converts to."""

from __future__ import annotations

import math
import os
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models_for_tests import train_a_little

import npukit

HERE = os.path.abspath(__file__)


def _line_of(marker: str) -> int:
    """Line number in this file of the (unique) line ending with `# <marker>`."""
    with open(HERE) as f:
        hits = [i for i, line in enumerate(f, 1) if line.rstrip().endswith(f"# <{marker}>")]
    assert len(hits) == 1, marker
    return hits[0]


# ---------------------------------------------------------------------------------------------------
# Every problem at once
# ---------------------------------------------------------------------------------------------------


class ThreeProblems(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3)
        self.w = nn.Parameter(torch.randn(4, 4, 1))
        self.fc = nn.Linear(4 * 14, 3)

    def forward(self, x):
        x = self.conv(x)
        x = torch.sin(x)  # <sin>
        x = F.conv1d(x, self.w)  # <conv1d>
        x = torch.erf(x)  # <erf>
        return self.fc(x.flatten(1))


def _problems(model, x, **kw) -> list[npukit.Problem]:
    with pytest.raises(npukit.ProblemsError) as ei:
        npukit.prepare(model, x, **kw)
    err = ei.value
    assert isinstance(err, npukit.NpukitError)
    assert len(err.problems) >= 1
    assert f"({len(err.problems)} problem" in str(err)
    for p in err.problems:
        assert isinstance(p, npukit.Problem)
        assert str(p) in str(err)  # every problem is in the message, not only in .problems
    return err.problems


def test_all_problems_reported_together():
    problems = _problems(ThreeProblems(), torch.randn(4, 2, 16))
    by_message = {p.message: p for p in problems}
    sig = next(p for p in problems if "sin" in p.message)
    conv = next(p for p in problems if "conv1d" in p.message)
    tanh = next(p for p in problems if "erf" in p.message)
    assert len({id(sig), id(conv), id(tanh)}) == 3, by_message
    for p, marker in ((sig, "sin"), (conv, "conv1d"), (tanh, "erf")):
        assert p.where, p
        assert p.rule == "unsupported-op", p
        assert p.fix, p
        assert p.source == f"{HERE}:{_line_of(marker)}", p
    assert "nn.Conv1d" in conv.fix  # the functional conv gets a specific fix
    # the weight read by F.conv1d is reported as well, on the same line
    w = [p for p in problems if "parameter" in p.message and p.where == "w"]
    assert len(w) == 1 and w[0].source == conv.source and w[0].fix
    # the supported layers around them are not reported
    assert not any(p.where in ("conv", "fc") for p in problems)


class CaptureFailures(nn.Module):
    """Ops that are recognised but whose configuration is refused, mixed with an unknown op."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding_mode="reflect", padding=1)
        self.pool = nn.AvgPool1d(3, 2, ceil_mode=True)  # 16 -> 8, a partial last window (7 in floor mode)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv(x)  # <pmode>
        x = self.pool(x)  # <pool>
        x = torch.log(x)  # <log>
        return self.fc(x)  # <fc3d>


def test_capture_failures_reported_together():
    problems = _problems(CaptureFailures(), torch.randn(4, 2, 16))
    rules = {p.where: p for p in problems}
    assert set(rules) == {"conv", "pool", "log", "fc"}, problems
    assert rules["conv"].rule == "conv-unsupported" and "padding_mode" in rules["conv"].message
    assert rules["pool"].rule == "avgpool-unsupported" and "ceil_mode" in rules["pool"].message
    assert "(8,) instead of (7,)" in rules["pool"].message
    assert rules["log"].rule == "unsupported-op"
    assert rules["fc"].rule == "linear-unsupported" and "flatten" in rules["fc"].fix
    for where, marker in (("conv", "pmode"), ("pool", "pool"), ("log", "log"), ("fc", "fc3d")):
        assert rules[where].source == f"{HERE}:{_line_of(marker)}"


def test_capture_failures_have_a_fix():
    problems = _problems(CaptureFailures(), torch.randn(4, 2, 16))
    assert all(p.fix for p in problems), [p for p in problems if not p.fix]


def test_weight_bits_not_allowed_by_target():
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(npukit.NpukitError) as ei:
        npukit.prepare(model, torch.randn(2, 8), target="venus", weight_bits=4)
    assert not isinstance(ei.value, npukit.ProblemsError)
    assert "4" in str(ei.value) and "venus" in str(ei.value)
    with pytest.raises(npukit.NpukitError):
        npukit.prepare(model, torch.randn(2, 8), target={"name": "t", "weight_bits": [8]}, weight_bits=16)
    with pytest.raises(npukit.NpukitError, match="wide"):
        npukit.prepare(model, torch.randn(2, 8), target={"name": "t"}, wide_output=True)
    with pytest.raises(npukit.NpukitError, match="batch"):
        npukit.prepare(model, torch.randn(8), target="venus")


# ---------------------------------------------------------------------------------------------------
# Functional spellings: captured, and bit-exact against the engine
# ---------------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """A conv front end (BN folded), then the spelling under test in `body`."""

    def __init__(self, body, c_in=2, c=4, ndim=1, head=None):
        super().__init__()
        conv, bn = (nn.Conv1d, nn.BatchNorm1d) if ndim == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.conv = conv(c_in, c, 3, padding=1)
        self.bn = bn(c)
        self.conv2 = conv(c, c, 3, padding=1)
        self.body = body
        self.head = head
        self.flat = nn.Flatten()
        self.gap = nn.AdaptiveAvgPool1d(1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = self.body(self, y)
        return self.head(y) if self.head is not None else y


SPELLINGS = {
    # name: (body, ndim, head in_features or None, ops expected in the IR)
    "F.relu": (lambda m, y: F.relu(F.max_pool1d(y, 2)).flatten(1), 1, 4 * 8, {"relu", "maxpool"}),
    "torch.relu_fused": (lambda m, y: torch.relu(m.conv2(y)).flatten(1), 1, 4 * 16, {"conv"}),
    "x.relu()": (lambda m, y: F.max_pool1d(y, 2).relu().flatten(1), 1, 4 * 8, {"relu"}),
    "torch.flatten": (lambda m, y: torch.flatten(y, 1), 1, 4 * 16, {"reshape"}),
    "view(size(0), -1)": (lambda m, y: y.view(y.size(0), -1), 1, 4 * 16, {"reshape"}),
    "reshape(shape[0], -1)": (lambda m, y: y.reshape(y.shape[0], -1), 1, 4 * 16, {"reshape"}),
    "nn.Flatten": (lambda m, y: m.flat(y), 1, 4 * 16, {"reshape"}),
    "torch.add": (lambda m, y: torch.add(y, m.conv2(y)).flatten(1), 1, 4 * 16, {"add"}),
    "x + y": (lambda m, y: (y + m.conv2(y)).flatten(1), 1, 4 * 16, {"add"}),
    "x + y relu": (lambda m, y: F.relu(y + m.conv2(y)).flatten(1), 1, 4 * 16, {"add"}),
    "torch.cat(dim=1)": (lambda m, y: torch.cat([y, m.conv2(y)], dim=1).flatten(1), 1, 8 * 16, {"concat"}),
    "F.max_pool1d": (lambda m, y: F.max_pool1d(y, 2).flatten(1), 1, 4 * 8, {"maxpool"}),
    "F.avg_pool1d": (lambda m, y: F.avg_pool1d(y, 3).flatten(1), 1, 4 * 5, {"avgpool"}),
    "F.avg_pool1d_pow2": (lambda m, y: F.avg_pool1d(y, 4, 2).flatten(1), 1, 4 * 7, {"avgpool"}),
    "nn.AdaptiveAvgPool1d(1)": (lambda m, y: m.gap(y).flatten(1), 1, 4, {"global_avgpool"}),
    "x.mean(dim=-1)": (lambda m, y: y.mean(dim=-1), 1, 4, {"global_avgpool"}),
    "2d x.mean(dim=(2,3))": (lambda m, y: y.mean(dim=(2, 3)), 2, 4, {"global_avgpool"}),
    "2d F.max_pool2d": (lambda m, y: F.max_pool2d(y, 2).flatten(1), 2, 4 * 3 * 4, {"maxpool"}),
    "2d F.avg_pool2d": (lambda m, y: F.avg_pool2d(y, (3, 2)).flatten(1), 2, 4 * 2 * 4, {"avgpool"}),
    # no Linear head: the last op's own output (not wide) is the graph output
    "tail x.mean(dim=-1)": (lambda m, y: y.mean(dim=-1), 1, None, {"global_avgpool"}),
    "tail relu conv": (lambda m, y: F.relu(m.conv2(y)), 1, None, {"conv"}),
}

INPUT_SHAPE = {1: (2, 16), 2: (2, 6, 8)}

TARGETS = {
    "venus": "venus",
    "half_even": {"name": "even", "rounding": "half_even", "pool_rounding": "half_even", "wide_output": False},
    "floor/trunc": {"name": "ft", "rounding": "floor", "pool_rounding": "trunc", "wide_output": True},
}


def _build(name):
    body, ndim, head_in, _ = SPELLINGS[name]
    torch.manual_seed(zlib.crc32(name.encode()))
    head = nn.Linear(head_in, 5) if head_in is not None else None
    return _Net(body, ndim=ndim, head=head), ndim


def _check_exact(qmodel, graph, x):
    qmodel.eval()
    with torch.no_grad():
        y = qmodel(x)
    spec = graph.output_spec(0)
    got = npukit.run(graph, graph.quantize_input(x))[0]
    assert got.dtype == spec.dtype
    want = y.numpy().astype(np.float64) * 2.0**spec.exp
    assert np.array_equal(want, got), f"max |diff| {np.abs(want - got).max()}"
    assert np.count_nonzero(got) > got.size // 4  # not a degenerate all-zero comparison
    return y


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("name", list(SPELLINGS))
def test_spelling_captured_and_exact(name, target, tmp_path):
    model, ndim = _build(name)
    torch.manual_seed(7)
    x = torch.randn(8, *INPUT_SHAPE[ndim])
    qmodel = npukit.prepare(model, x, target=TARGETS[target], rules="off")
    graph = npukit.to_ir(qmodel)
    ops = [n.op for n in graph.nodes]
    assert SPELLINGS[name][3] <= set(ops), ops
    has_head = SPELLINGS[name][2] is not None
    profile = npukit.load_target(TARGETS[target])
    wide = has_head and profile.wide_output
    assert (graph.output_spec(0).bits == profile.accumulator_bits) == wide

    # new data (not the calibration batch), larger, so saturation and rounding ties are exercised
    x2 = torch.randn(32, *INPUT_SHAPE[ndim]) * 2
    y = _check_exact(qmodel, graph, x2)
    assert y.dtype == (torch.float64 if wide else torch.float32)
    _check_exact(qmodel, graph, x)  # and on the calibration batch
    # a saved and reloaded graph is just as exact
    _check_exact(qmodel, npukit.load_ir(graph.save(tmp_path / "g.npuir")), x2)


def test_relu_fused_into_conv_has_no_relu_node():
    model, _ = _build("torch.relu_fused")
    graph = npukit.to_ir(npukit.prepare(model, torch.randn(4, 2, 16)))
    assert "relu" not in [n.op for n in graph.nodes]
    assert any(n.op == "conv" and n.attrs["relu"] for n in graph.nodes)


def test_weight_bits_16_exact():
    model, _ = _build("F.max_pool1d")
    x = torch.randn(8, 2, 16)
    qmodel = npukit.prepare(model, x, target="venus", weight_bits=16)
    graph = npukit.to_ir(qmodel)
    convs = [n for n in graph.nodes if n.op in ("conv", "linear")]
    assert convs and all(n.attrs["w_bits"] == 16 and n.params["weight"].dtype == np.int16 for n in convs)
    assert max(int(np.abs(n.params["weight"]).max()) for n in convs) > 127  # really uses 16 bits
    _check_exact(qmodel, graph, torch.randn(16, 2, 16) * 2)


def test_exact_after_training_steps():
    """A few QAT steps move weights and exponents; eval mode still matches the engine bit for bit."""
    model, _ = _build("x + y relu")
    torch.manual_seed(3)
    x = torch.randn(16, 2, 16)
    target = torch.randn(16, 5)
    qmodel = npukit.prepare(model, x)
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    opt = torch.optim.SGD(qmodel.parameters(), lr=0.05)
    qmodel.train()
    for _ in range(5):
        opt.zero_grad()
        loss = F.mse_loss(qmodel(x).float(), target)
        loss.backward()
        opt.step()
    assert any(not torch.equal(before[k], v) for k, v in qmodel.state_dict().items() if v.is_floating_point())
    graph = npukit.to_ir(qmodel)
    _check_exact(qmodel, graph, torch.randn(16, 2, 16))


def test_same_padding_and_pass_through_between_fused_layers():
    """padding='same'/'valid' become numbers; an nn.Identity or Dropout between a conv and its BatchNorm or
    ReLU does not stop the fusion; the QAT model and the engine stay bit-exact."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding="same"), nn.Identity(), nn.BatchNorm2d(8), nn.Dropout(0.1),
                          nn.ReLU(), nn.Conv2d(8, 4, (3, 5), padding="same", dilation=(2, 1)),
                          nn.Conv2d(4, 4, 3, padding="valid"))
    x = torch.randn(8, 3, 10, 10)
    qmodel = npukit.prepare(model, x, rules="off")
    graph = npukit.to_ir(qmodel)
    assert [(n.op, n.attrs["padding"], n.attrs["relu"]) for n in graph.nodes] == [
        ("conv", [1, 1], True), ("conv", [2, 2], False), ("conv", [0, 0], False)]
    y = (qmodel.eval()(x).detach().double() * 2.0 ** graph.output_spec().exp).numpy()
    assert np.array_equal(y, npukit.run(graph, graph.quantize_input(x.numpy()))[0])


class _Clamps(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6()
        self.b, self.c, self.d = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = self.act(self.bn(self.a(x)))
        x = torch.nn.functional.hardtanh(self.b(x), -0.5, 0.75)
        x = torch.clamp(self.c(x), min=0.0, max=2.0)
        return self.fc(torch.relu(self.d(x).clamp(max=1.5)).flatten(1))


def test_relu6_hardtanh_clamp_fuse_as_saturation():
    """ReLU6, Hardtanh and clamp after a conv become its output bounds on the output grid (exact when the
    bounds are on it); trained a little, the QAT model and the engine stay bit-exact."""
    torch.manual_seed(0)
    x = torch.randn(16, 3, 6, 6) * 2
    qmodel = train_a_little(npukit.prepare(_Clamps(), x, target="cortex-m4"), x, 3)
    graph = npukit.to_ir(qmodel)
    convs = {n.name: n for n in graph.nodes if n.op == "conv"}
    for name, (lo, hi) in {"a": (0.0, 6.0), "b": (-0.5, 0.75), "c": (0.0, 2.0)}.items():
        e = graph.tensors[name].exp
        assert convs[name].attrs["act_min"] == max(-128, math.ceil(lo * 2**e))
        assert convs[name].attrs["act_max"] == min(127, math.floor(hi * 2**e))
    y = (qmodel(x).detach().double() * 2.0 ** graph.output_spec().exp).numpy()
    assert np.array_equal(y, npukit.run(graph, graph.quantize_input(x.numpy()))[0])
    assert "activation.clamp" in {p.rule for p in npukit.check(_Clamps(), x, "venus").problems}  # ReLU only
    assert "activation.clamp" not in {p.rule for p in npukit.check(_Clamps(), x, "cortex-m4").problems}

"""nn.GRU and nn.LSTM unrolled into integer ops (npukit/qat/recurrent.py): exact in QAT, engine, ONNX, model.bin, C and
the C runtime, trainable, and refused with a named fix where it cannot be captured."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from models_for_tests import assert_backends_agree, train_a_little

import npukit
from npukit.errors import ProblemsError

torch.set_num_threads(1)

X = torch.randn(16, 6, 5, generator=torch.Generator().manual_seed(0))  # (batch, time, features)


class GRUNet(nn.Module):
    """A keyword-spotting shape: GRU (or LSTM) over time, a linear head on the last state (or on every state)."""

    def __init__(self, read="h_n[-1]", bias=True, hidden=8, steps=6, cell=nn.GRU):
        super().__init__()
        self.read, self.lstm = read, cell is nn.LSTM
        self.gru = cell(5, hidden, batch_first=True, bias=bias)
        self.fc = nn.Linear(hidden * (steps if read == "out" else 1), 3)

    def forward(self, x):
        if self.lstm:
            out, (h, _) = self.gru(x)
        else:
            out, h = self.gru(x)
        if self.read == "h_n[-1]":
            return self.fc(h[-1])
        if self.read == "h_n.squeeze(0)":
            return self.fc(h.squeeze(0))
        if self.read == "out[:, -1]":
            return self.fc(out[:, -1])
        return self.fc(out.flatten(1))


@pytest.mark.parametrize("read, cell", [("h_n[-1]", nn.GRU), ("h_n.squeeze(0)", nn.GRU), ("out[:, -1]", nn.GRU),
                                        ("out", nn.GRU), ("h_n[-1]", nn.LSTM), ("out", nn.LSTM)])
def test_every_backend_computes_the_same_recurrent_layer(read, cell, tmp_path):
    torch.manual_seed(0)
    q = train_a_little(npukit.prepare(GRUNet(read, cell=cell), X, "venus"), X, 2)
    assert_backends_agree(q, X[:6], tmp_path)
    graph = npukit.to_ir(q)
    ops = [n.op for n in graph.nodes]
    tables = 2 if cell is nn.GRU else 3  # per step: sigmoid gates and tanh (and the LSTM's tanh of c)
    assert ops.count("lut") == tables * 6 and ops.count("linear") == 2 * 6 + 1 + 1  # 2 per step, h0, head
    assert graph.tensors["gru"].shape == ((6, 8) if read == "out" else (8,))


@pytest.mark.parametrize("target, bits, bias, cell", [
    ("venus", 16, True, nn.GRU), ("cortex-m4", 8, False, nn.LSTM),
    ({"name": "floor", "activation_bits": 8, "weight_bits": [4], "rounding": "floor", "accumulator_bits": 24,
      "bias_bits": 16}, 4, True, nn.GRU),
    ({"name": "even", "activation_bits": 8, "weight_bits": [8], "rounding": "half_even"}, 8, True, nn.LSTM),
    ({"name": "trunc", "activation_bits": 8, "weight_bits": [8], "rounding": "trunc"}, 8, True, nn.GRU)])
def test_weight_widths_rounding_modes_and_no_bias(target, bits, bias, cell, tmp_path):
    torch.manual_seed(1)
    rules = "off" if isinstance(target, dict) else "error"  # the test profiles declare no memories
    q = npukit.prepare(GRUNet(bias=bias, cell=cell), X * 2, target, weight_bits=bits, rules=rules)
    q = train_a_little(q, X * 2, 2)
    assert_backends_agree(q, X[:5] * 2, tmp_path)
    lin = [n for n in npukit.to_ir(q).nodes if n.op == "linear"]
    assert {n.attrs["w_bits"] for n in lin} == {bits}


def test_the_gates_share_one_set_of_weights_and_track_the_float_gru():
    """The complement gate (1 - z) is computed from the z rows negated: one parameter, which training moves
    together; the QAT model's output stays near the float GRU's on the same weights."""
    torch.manual_seed(2)
    model = GRUNet().eval()
    q = npukit.prepare(model, X, "venus")
    names = [n for n, _ in q.named_parameters()]
    assert "gru.ih.weight" in names and dict(q.named_parameters())["gru.ih.weight"].shape == (3 * 8, 5)
    assert "gru.h0.weight" not in names or not dict(q.named_parameters())["gru.h0.weight"].requires_grad
    w = q.gru.ih.mac_weight()
    torch.testing.assert_close(w[16:24], -w[8:16])
    with torch.no_grad():
        real, qat = model(X), q.eval()(X)
        floatpath = q.gru.float_forward([X])
        torch.testing.assert_close(q.fc.float_forward([floatpath]), real)  # float_forward is the GRU itself
    assert float((qat - real).abs().max()) < 0.15 * float(real.abs().max()) + 0.05


def test_lstm_rows_and_float_path():
    torch.manual_seed(6)
    model = GRUNet(cell=nn.LSTM).eval()
    q = npukit.prepare(model, X, "venus")
    w, (i, f, g, o) = q.gru.ih.mac_weight(), model.gru.weight_ih_l0.split(8)
    torch.testing.assert_close(w, torch.cat([i, f, o, g]))  # the sigmoid gates first: one table covers them
    with torch.no_grad():
        torch.testing.assert_close(q.fc.float_forward([q.gru.float_forward([X])]), model(X))
        assert float((q.eval()(X) - model(X)).abs().max()) < 0.15 * float(model(X).abs().max()) + 0.05


def test_lstm_cell_state_read_is_refused():
    class ReadsC(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(5, 8, batch_first=True), nn.Linear(8, 2)

        def forward(self, x):
            _, (_, c) = self.lstm(x)
            return self.fc(c[-1])

    with pytest.raises(ProblemsError) as e:
        npukit.prepare(ReadsC(), X, "venus")
    assert [p.where for p in e.value.problems] == ["lstm"] and "c_n" in e.value.problems[0].message


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_training_moves_the_recurrent_weights(cell):
    torch.manual_seed(3)
    q = npukit.prepare(GRUNet(cell=cell), X, "venus")
    before = q.gru.hh.weight.detach().clone()
    y = torch.randint(0, 3, (16,))
    opt = torch.optim.Adam(q.parameters(), 1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(q(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert not torch.equal(before, q.gru.hh.weight.detach())
    assert losses[-1] < losses[0]
    assert q.gru.h0.weight.abs().max() == 0  # the zero state stays zero


class TimeFirst(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.gru = nn.GRU(5, 8, **kw)

    def forward(self, x):
        return self.gru(x)[1][-1]


class SwapFirst(nn.Module):
    """The time-first spelling: swap batch and time, GRU(batch_first=False), read the last step."""

    def __init__(self, swap, read):
        super().__init__()
        self.swap, self.read = swap, read
        self.gru, self.fc = nn.GRU(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        out, h = self.gru(self.swap(x))
        return self.fc(out[-1] if self.read == "out" else h[-1])


@pytest.mark.parametrize("swap, read", [(lambda x: x.transpose(0, 1), "out"), (lambda x: x.permute(1, 0, 2), "h"),
                                        (lambda x: torch.transpose(x, 1, 0), "h")])
def test_time_first_gru_equals_the_batch_first_one(swap, read, tmp_path):
    torch.manual_seed(5)
    model = SwapFirst(swap, read)
    q = npukit.prepare(model, X, "venus")
    first = GRUNet().eval()
    first.load_state_dict(model.state_dict())  # the same weights, batch first
    qf = npukit.prepare(first, X, "venus")
    with torch.no_grad():
        np.testing.assert_array_equal(q.eval()(X).numpy(), qf.eval()(X).numpy())
        torch.testing.assert_close(model(X), first(X))
    assert_backends_agree(q, X[:4], tmp_path)


class ConvFront(nn.Module):
    """A conv front end over (batch, features, time), swapped to (batch, time, features) for the GRU."""

    def __init__(self, swap):
        super().__init__()
        self.swap, self.conv, self.gru, self.fc = swap, nn.Conv1d(5, 4, 3, padding=1), nn.GRU(4, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.gru(self.swap(torch.relu(self.conv(x))))[1][-1])


@pytest.mark.parametrize("swap", [lambda y: y.transpose(1, 2).contiguous(), lambda y: y.permute(0, 2, 1)])
def test_a_conv_front_end_feeds_the_gru_without_a_transpose(swap, tmp_path):
    torch.manual_seed(7)
    xf = X.transpose(1, 2).contiguous()  # (batch, 5 features, 6 frames)
    q = npukit.prepare(ConvFront(swap), xf, "venus")
    graph = npukit.to_ir(q)
    assert graph.nodes[1].op == "slice" and graph.nodes[1].attrs["axis"] == 1  # step t: column t of (C, T)
    assert sum(n.op == "sigmoid" or n.attrs.get("fn") == "sigmoid" for n in graph.nodes) == 6
    assert_backends_agree(q, xf[:4], tmp_path)


@pytest.mark.parametrize("kw, message", [
    ({"batch_first": False}, "x.transpose(0, 1)"),
    ({"batch_first": True, "num_layers": 2}, "single-layer"),
    ({"batch_first": True, "bidirectional": True}, "single-layer"),
])
def test_refused_forms_name_the_fix(kw, message):
    with pytest.raises(ProblemsError) as e:
        npukit.prepare(TimeFirst(**kw), X, "venus")
    assert message in str(e.value) and "gru" in str(e.value)


class Both(nn.Module):
    def __init__(self, sequence=False):
        super().__init__()
        self.sequence = sequence
        self.gru, self.fc = nn.GRU(5, 8, batch_first=True), nn.Linear(16, 2)

    def forward(self, x):
        out, h = self.gru(x)
        return self.fc(torch.cat([out[:, 0] if self.sequence else out[:, -1], h[-1]], 1))


def test_the_last_state_read_twice_is_one_value(tmp_path):
    q = npukit.prepare(Both(), X, "venus")
    graph = npukit.to_ir(q)
    assert [n for n in graph.nodes if n.op == "concat"][0].inputs == ["gru", "gru"]
    assert_backends_agree(q, X[:4], tmp_path)


def test_other_reads_are_refused_once():
    with pytest.raises(ProblemsError) as e:
        npukit.prepare(Both(sequence=True), X, "venus")
    assert len(e.value.problems) == 1 and e.value.problems[0].where == "gru"  # no follow-on noise
    assert "h_n[-1]" in e.value.problems[0].fix


def test_rules_refuse_the_gates_where_the_chip_has_no_tables():
    found = [p for p in npukit.check(GRUNet(), X, target="max78000").problems if p.severity == "error"]
    assert found and any("sigmoid" in p.message or "lut" in p.message for p in found)
    assert npukit.check(GRUNet(), X, target="venus").ok


def test_the_engine_carries_the_state_in_integers():
    """h_t of the engine's trace equals the QAT layer's own step values: every step's state is on its grid."""
    torch.manual_seed(4)
    q = npukit.prepare(GRUNet(), X, "venus").eval()
    graph = npukit.to_ir(q)
    trace: dict = {}
    npukit.run(graph, graph.quantize_input(X.numpy()), trace=trace)
    states = [trace[f"gru.t{t}.h"] for t in range(5)] + [trace["gru"]]
    assert all(s.dtype == np.int8 for s in states)
    assert len({graph.tensors[f"gru.t{t}.h"].exp for t in range(5)} | {graph.tensors["gru"].exp}) == 1

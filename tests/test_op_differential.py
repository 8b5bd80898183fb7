"""Random graphs of the newer ops (padding='same', saturations, tables, gates, upsampling, split, transposed
conv, standalone BatchNorm, padded and ceil_mode pooling, one-sided padding, GRU/LSTM) under every rounding mode: QAT eval, the engine,
onnxruntime, model.bin run in its planned arena and the C runtime agree on every tensor, and the generated C
on a few of them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models_for_tests import train_a_little

import npukit
from npukit import dump as D
from npukit import engine, modelbin
from npukit.qat.dump import dump_qat
from npukit.rounding import ROUNDING_MODES

torch.set_num_threads(1)

FUNCTIONS = [nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, lambda: nn.LeakyReLU(0.1),
             lambda: nn.ELU(0.5)]
SATURATIONS = [nn.ReLU6, lambda: nn.Hardtanh(-1.0, 1.0), lambda: nn.Hardtanh(-0.5, 2.0)]
KINDS = ["same", "saturate", "table", "gate", "upsample", "split", "transpose", "batchnorm", "maxpool", "avgpool",
         "pad", "even", "ceil"]


class Block(nn.Module):
    """One of KINDS on a (C, *spatial) tensor; keeps C (except where noted) so blocks chain freely."""

    def __init__(self, kind: str, c: int, ndim: int, draw: dict):
        super().__init__()
        self.kind, self.ndim = kind, ndim
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if ndim == 1 else nn.BatchNorm2d
        if kind == "same":
            self.conv = conv(c, c, draw["k"] | 1, padding="same", dilation=draw["dil"])
        elif kind == "even":  # one-sided 'same' padding: a pad node before the conv
            self.conv = conv(c, c, 2 * draw["k"], padding="same")
        elif kind == "pad":
            self.pads = [draw["i"] % 3, draw["k"] - 1] * ndim
        elif kind == "ceil":  # a partial last window: a pad node of the type's minimum before the pool
            self.pool = (nn.MaxPool1d if ndim == 1 else nn.MaxPool2d)(2, 2, ceil_mode=True)
        elif kind == "saturate":
            self.conv, self.bn, self.act = conv(c, c, 3, padding=1), bn(c), SATURATIONS[draw["i"] % len(SATURATIONS)]()
        elif kind == "table":
            self.act = FUNCTIONS[draw["i"] % len(FUNCTIONS)]()
        elif kind == "gate":
            self.squeeze = conv(c, c, 1)
        elif kind == "upsample":
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
        elif kind == "split":
            self.conv = conv(c, 2 * c, 1)
        elif kind == "transpose":
            tconv = nn.ConvTranspose1d if ndim == 1 else nn.ConvTranspose2d
            self.conv = tconv(c, c, draw["k"] + 1, stride=2, padding=draw["k"] // 2)
        elif kind == "batchnorm":
            self.bn = bn(c)
        elif kind != "ceil":
            pool = {("maxpool", 1): nn.MaxPool1d, ("maxpool", 2): nn.MaxPool2d,
                    ("avgpool", 1): nn.AvgPool1d, ("avgpool", 2): nn.AvgPool2d}[(kind, ndim)]
            self.pool = pool(3, 1, 1)
        for m in self.modules():  # BN statistics as a trained model would have them
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.3, 3.0)
                    m.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        k = self.kind
        if k in ("same", "transpose", "even"):
            return self.conv(x)
        if k == "pad":
            return F.pad(x, self.pads)
        if k == "saturate":
            return self.act(self.bn(self.conv(x)))
        if k == "table":
            return self.act(x)
        if k == "gate":  # squeeze-excite: x * sigmoid(conv(mean over space))
            dims = tuple(range(2, 2 + self.ndim))
            return x * torch.sigmoid(self.squeeze(x.mean(dims, keepdim=True)))
        if k == "upsample":
            return self.up(x)
        if k == "split":
            a, b = self.conv(x).chunk(2, dim=1)
            return F.relu(a) + b
        if k == "batchnorm":
            return self.bn(x)
        return self.pool(x)


class Net(nn.Module):
    def __init__(self, cin, c, ndim, size, blocks):
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.stem = conv(cin, c, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(k, c, ndim, d) for k, d in blocks))
        with torch.no_grad():
            n = self.blocks(self.stem(torch.zeros(1, cin, *size))).numel()
        self.fc = nn.Linear(n, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.blocks(self.stem(x)), 1))


class Recurrent(nn.Module):
    def __init__(self, cell, features, hidden, read):
        super().__init__()
        self.rnn, self.read, self.lstm = cell(features, hidden, batch_first=True), read, cell is nn.LSTM
        self.fc = nn.Linear(hidden, 3)

    def forward(self, x):
        out, state = self.rnn(x)
        h = state[0] if self.lstm else state
        return self.fc(out[:, -1] if self.read else h[-1])


@st.composite
def conv_nets(draw):
    ndim = draw(st.sampled_from([1, 2]))
    size = [draw(st.integers(4, 9 if ndim == 1 else 5)) for _ in range(ndim)]
    blocks = [(draw(st.sampled_from(KINDS)), {"k": draw(st.integers(1, 3)), "dil": draw(st.integers(1, 2)),
                                              "i": draw(st.integers(0, 7))})
              for _ in range(draw(st.integers(1, 3)))]
    return ndim, draw(st.integers(1, 2)), draw(st.integers(2, 4)), size, blocks


def profile(rounding: str, pool_rounding: str) -> dict:
    return {"name": f"r-{rounding}", "activation_bits": 8, "weight_bits": [8], "rounding": rounding,
            "pool_rounding": pool_rounding, "accumulator_bits": 32, "bias_bits": 32}


def assert_all_agree(qmodel, x, workdir, *, generated_c: bool = False) -> None:
    graph = npukit.to_ir(qmodel)
    path = npukit.pack(graph, workdir / "model.bin").path
    xi = graph.quantize_input(x.numpy())
    ref = D.dump_engine(graph, xi)
    runs = [dump_qat(qmodel, x), D.dump_onnx(graph, xi), D.dump_runtime(path, xi, workdir)]
    if generated_c:
        runs.append(D.dump_c(path, xi, workdir))
    for d in runs:
        diff = D.compare(ref, d)
        assert diff is None, diff.describe()
    packed = modelbin.read(path)  # the model.bin's own plan: every tensor at its offset in one arena
    in_arena = engine.run_in_arena(packed.graph, packed.offsets, packed.arena_bytes, xi)[0]
    np.testing.assert_array_equal(in_arena, ref.tensors[graph.outputs[0]])


def _prepared(model, x, target, steps):
    return train_a_little(npukit.prepare(model, x, target, rules="off"), x, steps)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(spec=conv_nets(), rounding=st.sampled_from(ROUNDING_MODES), pool_rounding=st.sampled_from(ROUNDING_MODES),
       seed=st.integers(0, 2**16), steps=st.integers(0, 2), scale=st.integers(-2, 3))
def test_random_graphs_of_the_new_ops_agree_everywhere(spec, rounding, pool_rounding, seed, steps, scale, tmp_path):
    ndim, cin, c, size, blocks = spec
    torch.manual_seed(seed)
    x = torch.randn(12, cin, *size) * 2.0**scale
    q = _prepared(Net(cin, c, ndim, size, blocks), x, profile(rounding, pool_rounding), steps)
    assert_all_agree(q, x[:6], tmp_path)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(cell=st.sampled_from([nn.GRU, nn.LSTM]), features=st.integers(1, 6), hidden=st.integers(1, 6),
       steps_in_time=st.integers(1, 5), read=st.booleans(), rounding=st.sampled_from(ROUNDING_MODES),
       seed=st.integers(0, 2**16), steps=st.integers(0, 2), scale=st.integers(-2, 3))
def test_random_recurrent_layers_agree_everywhere(cell, features, hidden, steps_in_time, read, rounding, seed, steps,
                                                  scale, tmp_path):
    torch.manual_seed(seed)
    x = torch.randn(12, steps_in_time, features) * 2.0**scale
    q = _prepared(Recurrent(cell, features, hidden, read), x, profile(rounding, "half_up"), steps)
    assert_all_agree(q, x[:6], tmp_path)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(spec=conv_nets(), rounding=st.sampled_from(ROUNDING_MODES), seed=st.integers(0, 2**16))
def test_generated_c_on_random_graphs_of_the_new_ops(spec, rounding, seed, tmp_path):
    ndim, cin, c, size, blocks = spec
    torch.manual_seed(seed)
    x = torch.randn(12, cin, *size)
    q = _prepared(Net(cin, c, ndim, size, blocks), x, profile(rounding, rounding), 1)
    assert_all_agree(q, x[:4], tmp_path, generated_c=True)

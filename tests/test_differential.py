"""Differential test: random small graphs, QAT eval vs the integer engine, every output bit equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import npukit


class RandomNet(nn.Module):
    """A chain of conv blocks (BN, ReLU, pooling, residual add, concat) and a classifier head."""

    def __init__(self, ndim, cin, size, blocks, head, classes, rng):
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.ndim, self.blocks, self.head = ndim, blocks, head
        self.convs, self.bns, self.side = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        c = cin
        for b in blocks:
            groups = c if b["depthwise"] else 1
            cout = c * b["mult"] if b["depthwise"] else b["cout"]
            self.convs.append(conv(c, cout, b["k"], stride=b["stride"], padding=b["pad"], dilation=b["dil"],
                                   groups=groups, bias=b["bias"]))
            bn = nn.BatchNorm1d(cout) if ndim == 1 else nn.BatchNorm2d(cout)
            with torch.no_grad():  # BN statistics as a trained model would have them
                bn.running_mean.uniform_(-0.5, 0.5, generator=rng)
                bn.running_var.uniform_(0.3, 3.0, generator=rng)
                bn.weight.uniform_(0.5, 1.5, generator=rng)
                bn.bias.uniform_(-0.3, 0.3, generator=rng)
            self.bns.append(bn)
            # a shape-preserving side conv, for residual adds and concatenation
            self.side.append(conv(cout, cout, 3, padding=1) if b["side"] else nn.Identity())
            with torch.no_grad():
                self.convs[-1].weight.mul_(2.0 ** b["wscale"])
            size = [(n + 2 * b["pad"] - b["dil"] * (b["k"] - 1) - 1) // b["stride"] + 1 for n in size]
            c = cout * (2 if b["side"] == "cat" else 1)
            if b["pool"]:
                size = [(n + 2 * b["pool_pad"] - b["pool_k"]) // b["pool_k"] + 1 for n in size]
        feat = c if head == "gap" else c * int(np.prod(size))
        self.fc = nn.Linear(feat, classes)

    def forward(self, x):
        pool = {("max", 1): F.max_pool1d, ("max", 2): F.max_pool2d, ("avg", 1): F.avg_pool1d, ("avg", 2): F.avg_pool2d}
        for b, conv, bn, side in zip(self.blocks, self.convs, self.bns, self.side, strict=True):
            x = conv(x)
            if b["bn"]:
                x = bn(x)
            if b["relu"]:
                x = F.relu(x)
            if b["side"] == "add":
                x = torch.relu(x + side(x)) if b["relu"] else x + side(x)
            elif b["side"] == "cat":
                x = torch.cat([x, side(x)], dim=1)
            if b["pool"]:
                x = pool[(b["pool"], self.ndim)](x, b["pool_k"], b["pool_k"], b["pool_pad"])
        x = x.mean(dim=tuple(range(2, 2 + self.ndim))) if self.head == "gap" else torch.flatten(x, 1)
        return self.fc(x)


@st.composite
def nets(draw):
    ndim = draw(st.sampled_from([1, 2]))
    cin = draw(st.integers(1, 3))
    size = [draw(st.integers(7, 14 if ndim == 1 else 9)) for _ in range(ndim)]
    blocks, cur, c = [], list(size), cin
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, 3))
        b = {
            "k": k, "stride": draw(st.integers(1, 2)), "pad": draw(st.integers(0, k // 2 + 1)),
            "dil": draw(st.integers(1, 2)) if k > 1 else 1, "bias": draw(st.booleans()),
            "depthwise": draw(st.booleans()) and c > 1, "mult": draw(st.integers(1, 2)),
            "cout": draw(st.integers(1, 6)), "bn": draw(st.booleans()), "relu": draw(st.booleans()),
            "side": draw(st.sampled_from([None, None, "add", "cat"])), "pool": draw(st.sampled_from([None, "max", "avg"])),
            "pool_k": draw(st.integers(2, 3)), "wscale": draw(st.integers(-3, 3)),
        }
        b["pool_pad"] = draw(st.integers(0, b["pool_k"] // 2))  # torch allows up to half the window
        out = [(n + 2 * b["pad"] - b["dil"] * (k - 1) - 1) // b["stride"] + 1 for n in cur]
        if min(out) < 1:
            break
        if b["pool"] and min(out) + 2 * b["pool_pad"] < b["pool_k"]:
            b["pool"] = None
        cur = [(n + 2 * b["pool_pad"] - b["pool_k"]) // b["pool_k"] + 1 for n in out] if b["pool"] else out
        c = (c * b["mult"] if b["depthwise"] else b["cout"]) * (2 if b["side"] == "cat" else 1)
        blocks.append(b)
    if not blocks:
        blocks.append({"k": 1, "stride": 1, "pad": 0, "dil": 1, "bias": True, "depthwise": False, "mult": 1,
                       "cout": 2, "bn": False, "relu": True, "side": None, "pool": None, "pool_k": 2, "pool_pad": 0,
                       "wscale": 0})
    head = draw(st.sampled_from(["gap", "flatten"]))
    return ndim, cin, size, blocks, head


def random_graph_and_inputs(spec, target: str, seed: int, n: int = 32):
    """A random network (from `nets()`) prepared for TARGETS[target], its IR, and `n` quantized inputs."""
    ndim, cin, size, blocks, head = spec
    rng = torch.Generator().manual_seed(seed)
    model = RandomNet(ndim, cin, size, blocks, head, 5, rng)
    x = torch.randn(16, cin, *size, generator=rng) * 3
    graph = npukit.to_ir(npukit.prepare(model, x, target=TARGETS[target], rules="off"))
    return graph, graph.quantize_input(torch.randn(n, cin, *size, generator=rng).numpy() * 3)


TARGETS = {
    "venus": "venus",
    # The second scheme: 8-bit bias as b * 128, the output shift range, average pooling truncated.
    "max78000": "max78000",
    # The same chip arithmetic with the other rounding modes, low-bit weights and a narrow accumulator.
    "variant": {"name": "variant", "activation_bits": 8, "weight_bits": [4, 2, 8], "bias_bits": 16,
                "accumulator_bits": 24, "rounding": "half_even", "pool_rounding": "trunc", "wide_output": False},
    "floor": {"name": "floor", "activation_bits": 8, "weight_bits": [8], "bias_bits": 8, "accumulator_bits": 20,
              "rounding": "floor", "pool_rounding": "half_up", "wide_output": True},
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=nets(), target=st.sampled_from(sorted(TARGETS)), seed=st.integers(0, 2**16), train_steps=st.integers(0, 2),
       in_scale=st.integers(-3, 4))
# Found by this test: two QAT steps drive the exponents to the ends of their range, and on MAX78000 the
# bias exponent (e_acc - 7) then fell outside what Graph.validate accepted.
@example(spec=(1, 3, [7], [{"k": 1, "stride": 1, "pad": 0, "dil": 1, "bias": False, "depthwise": False, "mult": 1,
                            "cout": 2, "bn": False, "relu": False, "side": "add", "pool": None, "pool_k": 2,
                            "wscale": 3, "pool_pad": 0}], "flatten"),
         target="max78000", seed=0, train_steps=2, in_scale=4)
def test_qat_eval_matches_engine_bit_for_bit(spec, target, seed, train_steps, in_scale):
    ndim, cin, size, blocks, head = spec
    rng = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = RandomNet(ndim, cin, size, blocks, head, 5, rng)
    x = torch.randn(16, cin, *size, generator=rng) * 2.0**in_scale
    qmodel = npukit.prepare(model, x, target=TARGETS[target], rules="off")
    if train_steps:  # a couple of QAT steps move weights and exponents off their initial values
        opt = torch.optim.SGD(qmodel.parameters(), lr=0.05)
        for _ in range(train_steps):
            loss = qmodel(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    graph = npukit.to_ir(qmodel)
    xt = torch.randn(24, cin, *size, generator=rng) * 2.0**in_scale
    with torch.no_grad():
        real = qmodel.eval()(xt).to(torch.float64).numpy()
    qat_int = real * 2.0 ** graph.output_spec().exp
    assert np.array_equal(qat_int, np.round(qat_int)), "QAT output is not on the integer grid"
    engine_int = npukit.run(graph, graph.quantize_input(xt.numpy()))[0]
    np.testing.assert_array_equal(qat_int, engine_int.astype(np.float64))


def test_exactness_survives_float32_limit():
    """A layer whose accumulator exceeds 2**24 must switch to float64 and stay exact."""
    model = nn.Sequential(nn.Linear(2048, 4))
    with torch.no_grad():
        model[0].weight.fill_(0.01)
    x = torch.full((2, 2048), 1.0)
    qmodel = npukit.prepare(model, x)
    graph = npukit.to_ir(qmodel)
    assert 2048 * 127 * int(np.abs(graph.nodes[0].params["weight"]).max()) > 2**24
    with torch.no_grad():
        qat_int = qmodel.eval()(x).to(torch.float64).numpy() * 2.0 ** graph.output_spec().exp
    np.testing.assert_array_equal(qat_int, npukit.run(graph, graph.quantize_input(x.numpy()))[0])


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_low_bit_weights_stay_in_range(bits):
    target = dict(TARGETS["variant"], weight_bits=[bits])
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6, 3))
    qmodel = npukit.prepare(model, torch.randn(8, 2, 8), target=target, rules="off")
    graph = npukit.to_ir(qmodel)
    lo, hi = npukit.arith.int_range(bits)
    for node in graph.nodes:
        if "weight" in node.params:
            w = node.params["weight"]
            assert w.min() >= lo and w.max() <= hi
            assert node.attrs["w_bits"] == bits


def test_quantize_input_helper_agrees_for_model_and_graph():
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14, 3))
    x = torch.randn(32, 1, 16) * 3
    qmodel = npukit.prepare(model, x)
    graph = npukit.to_ir(qmodel)
    q_model, q_graph = npukit.quantize_input(qmodel, x), npukit.quantize_input(graph, x.numpy())
    assert q_model.dtype == np.int8 and np.array_equal(q_model, q_graph)
    assert len(np.unique(q_model)) > 20  # a real quantization, not a constant
    y = npukit.run(graph, q_graph)[0]
    with torch.no_grad():
        np.testing.assert_array_equal(npukit.dequantize_output(graph, y), qmodel.eval()(x).double().numpy())


def test_checkpoint_round_trip_strips_wrapper_prefixes(tmp_path):
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14, 3))
    x = torch.randn(32, 1, 16)
    qmodel = npukit.prepare(model, x)
    path = npukit.save_checkpoint(nn.DataParallel(qmodel), tmp_path / "q.pt")
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in state)
    # a checkpoint saved with the DDP prefix loads too, observers and exponents included
    torch.save({"state_dict": {"module." + k: v for k, v in qmodel.state_dict().items()}}, tmp_path / "ddp.pt")
    fresh = npukit.prepare(model, torch.randn(32, 1, 16) * 5)
    npukit.load_checkpoint(fresh, tmp_path / "ddp.pt")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), qmodel.eval()(x))
    with pytest.raises(npukit.NpukitError, match="does not match"):
        npukit.load_checkpoint(npukit.prepare(nn.Sequential(nn.Linear(3, 2)), torch.randn(2, 3)), path)


@pytest.mark.parametrize("cin, k, bits", [(2048, 5, 8), (64, 9, 16)])
def test_conv_past_the_float32_limit_stays_exact(cin, k, bits):
    """Fan-in cin*k: partial sums pass 2**24, so the engine must leave float32. The conv is the model's
    output, so its raw (wide) accumulator is compared: no rounding can hide an error."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(cin, 4, k))
    with torch.no_grad():
        model[0].weight.uniform_(0.5, 1.0)  # same-sign weights: the sums really grow
    x = 3.5 + 0.5 * torch.rand(8, cin, 16)  # large, odd and even values: sums well past 2**24
    qmodel = npukit.prepare(model, x, weight_bits=bits, rules="off")  # over venus' weight buffer on purpose
    graph = npukit.to_ir(qmodel)
    w = graph.nodes[0].params["weight"].astype(np.int64)
    assert cin * k * 127 * np.abs(w).max() > 2**24
    with torch.no_grad():
        qat_int = qmodel.eval()(x).to(torch.float64).numpy() * 2.0 ** graph.output_spec().exp
    np.testing.assert_array_equal(qat_int, npukit.run(graph, graph.quantize_input(x.numpy()))[0])


def test_mismatched_checkpoint_loads_nothing_and_names_every_difference(tmp_path):
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 14, 3))
    big = nn.Sequential(nn.Conv1d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 14, 3), nn.Linear(3, 2))
    x = torch.randn(4, 1, 16)
    q_small = npukit.prepare(small, x, rules="off")
    q_big = npukit.prepare(big, x, rules="off")
    npukit.save_checkpoint(q_small, tmp_path / "small.pt")
    before = {k: v.clone() for k, v in q_big.state_dict().items()}
    with pytest.raises(npukit.NpukitError) as ei:
        npukit.load_checkpoint(q_big, tmp_path / "small.pt")
    msg = str(ei.value)
    assert "nothing was loaded" in msg and msg.count("shape differs") >= 3 and "missing from the checkpoint" in msg
    assert all(torch.equal(before[k], v) for k, v in q_big.state_dict().items())  # untouched

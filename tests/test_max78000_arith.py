"""npukit's max78000 target against an independent model of the chip's arithmetic.

tests/max78000_reference.py implements one hardware layer from shared/reference/max78000-arithmetic.md.
Here small PyTorch models are prepared for max78000, their IR is translated into hardware layers (the
mapping of npukit's IR onto the vendor's terms is what is under test), the reference runs those layers
on the quantized input, and every layer's integers must equal the engine's.

The mapping: a conv/linear node and the maxpool/avgpool/global_avgpool, add, concat and reshape nodes in
front of it form one layer (pooling before the convolution; pool(a) + pool(b) is the default pool_first
order; add = `eltwise: add`; concat = `in_sequences`; reshape = `flatten`). weight = q-bit ints
(q = w_bits), bias = the 8-bit b (added as b * 128, bias_shift 7), s = 7 - out_shift and the vendor's
output_shift = s - (8 - q), relu = `activate: ReLU`, wide = `output_width: 32`.

An add whose operands have different exponents has no chip equivalent (npukit shifts one operand; the
chip applies no shift): such models are counted in ADD_EXPONENTS and not compared.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from max78000_reference import hw_layer, pool_map, round_shift
from models_for_tests import train_a_little

import npukit
from npukit.ir import Graph

torch.set_num_threads(1)

MAC = ("conv", "linear")
POOLS = ("maxpool", "avgpool", "global_avgpool")

# Statistics over the whole file (printed by test_zz_summary with -s).
SHIFTS: Counter = Counter()  # s of every 8-bit layer compared
ADD_EXPONENTS: Counter = Counter()  # "same" / "differ" per add node seen
FLOOR_WOULD_DIFFER: Counter = Counter()  # avg-pool layers where floor instead of truncation changes the output


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # the models' initial weights, drawn before run_case seeds again


class NotComparable(Exception):
    """The IR has no MAX78000 layer equivalent (an npukit-only construct)."""


@dataclass
class Layer:
    node: object
    sources: list  # tensors concatenated along channels (in_sequences)
    kw: dict = field(default_factory=dict)
    s: int | None = None


def _pool_kw(graph, p):
    src = graph.tensors[p.inputs[0]].shape
    if p.op == "global_avgpool":
        return {"pool": tuple(src[1:]), "pool_kind": "avg", "pool_stride": tuple(src[1:])}
    return {"pool": tuple(p.attrs["kernel"]), "pool_kind": p.op[:3], "pool_stride": tuple(p.attrs["stride"])}


def _same_exp(graph, tensors, what):
    exps = {graph.tensors[t].exp for t in tensors}
    if len(exps) != 1:
        raise NotComparable(f"{what}: exponents {sorted(exps)} differ")


def _layer(graph, producer, layer_outs, n) -> Layer:
    spec, a = graph.tensors, n.attrs
    kw: dict = {}
    t = n.inputs[0]
    p = producer.get(t)
    if p is not None and p.op == "reshape":
        assert spec[p.outputs[0]].shape == (math.prod(spec[p.inputs[0]].shape),)
        kw["flatten"] = True
        t, p = p.inputs[0], producer.get(p.inputs[0])
    if p is not None and p.op in POOLS:
        _same_exp(graph, [p.inputs[0], p.outputs[0]], f"pool {p.name}")
        kw.update(_pool_kw(graph, p))
        t, p = p.inputs[0], producer.get(p.inputs[0])
    sources = [t]
    if p is not None and p.op == "add":
        diff = len({spec[o].exp for o in p.inputs}) > 1
        ADD_EXPONENTS["differ" if diff else "same"] += 1
        if p.attrs.get("relu"):
            raise NotComparable(f"add {p.name} has a ReLU (the chip has no activation on an element-wise op)")
        if "pool" in kw:
            raise NotComparable("add then pool (pool_first: false) is not modelled")
        _same_exp(graph, [*p.inputs, p.outputs[0]], f"add {p.name}")
        sources = list(p.inputs)
        pp = [producer.get(o) for o in sources]
        if all(q is not None and q.op in POOLS for q in pp):  # pool each operand, then add: pool_first
            pkws = [_pool_kw(graph, q) for q in pp]
            if all(k == pkws[0] for k in pkws) and not kw.get("flatten"):
                for q in pp:
                    _same_exp(graph, [q.inputs[0], q.outputs[0]], f"pool {q.name}")
                kw.update(pkws[0])
                sources = [q.inputs[0] for q in pp]
        kw.update(eltwise="add", eltwise_operands=len(sources))
    elif p is not None and p.op == "concat":
        assert p.attrs.get("axis", 0) in (0, 1), p.attrs  # channels
        _same_exp(graph, [*p.inputs, p.outputs[0]], f"concat {p.name}")
        sources = list(p.inputs)
    for src in sources:
        if src not in layer_outs:
            raise NotComparable(f"{n.name} reads {src!r}, which is not a layer's output")

    q = a["w_bits"]
    assert a["bias_shift"] == 7, a  # the 8-bit b, added as b * 128
    assert a.get("groups", 1) == 1
    e_x, e_w, e_y = spec[n.inputs[0]].exp, a["w_exp"], spec[n.outputs[0]].exp
    assert a["b_exp"] == e_x + e_w - 7, ("bias exponent", a["b_exp"], e_x, e_w)
    if n.op == "linear":
        kw.update(op="mlp")
    else:
        assert set(a["stride"]) == {1}, a
        assert len(set(a["padding"])) == 1 and len(set(a["dilation"])) == 1, a
        kw.update(op=f"conv{a['ndim']}d", pad=a["padding"][0], dilation=a["dilation"][0])
    kw.update(weight=n.params["weight"], bias_b=n.params.get("bias"), weight_bits=q,
              activation="ReLU" if a["relu"] else "Abs" if a.get("abs") else None)
    if a["wide"]:
        assert e_y == e_x + e_w, ("wide output exponent", e_y, e_x, e_w)
        kw.update(output_width=32)
        return Layer(n, sources, kw)
    s = 7 - a["out_shift"]
    assert e_y == e_x + e_w + s - 7, ("output exponent", e_y, e_x, e_w, s)
    kw.update(output_width=8, output_shift=s - (8 - q))
    return Layer(n, sources, kw, s)


def translate(graph: Graph) -> list[Layer]:
    """The IR as MAX78000 hardware layers, in order; NotComparable when it has no equivalent."""
    producer = {t: n for n in graph.nodes for t in n.outputs}
    layer_outs, layers = set(graph.inputs), []
    for n in graph.nodes:
        if n.op in MAC:
            layers.append(_layer(graph, producer, layer_outs, n))
            layer_outs.add(n.outputs[0])
        elif n.op not in (*POOLS, "add", "concat", "reshape"):
            raise NotComparable(f"{n.op} node {n.name} is not part of a hardware layer")
    for t in graph.outputs:
        if t not in layer_outs:
            raise NotComparable(f"output {t!r} is not a layer's output")
    return layers


def compare(graph: Graph, xi: np.ndarray) -> list[Layer]:
    """Every layer's reference output (chained on the reference's own outputs) equals the engine's."""
    layers = translate(graph)
    sub = Graph(graph.target, list(graph.inputs), [L.node.outputs[0] for L in layers], graph.tensors, graph.nodes)
    engine = npukit.run(sub, xi)
    final = []
    for b in range(len(xi)):
        env = {graph.inputs[0]: np.asarray(xi[b])}
        for L, e in zip(layers, engine, strict=True):
            x = np.concatenate([env[t] for t in L.sources], axis=0)
            y = hw_layer(x, **L.kw)
            want = e[b]
            assert y.shape == want.shape, (L.node.name, y.shape, want.shape)
            if not np.array_equal(y, want):
                idx = tuple(int(i) for i in np.argwhere(y != want)[0])
                raise AssertionError(f"layer {L.node.name} ({L.kw['op']}, s={L.s}) sample {b}: "
                                     f"{int((y != want).sum())} values differ, first at {idx}: "
                                     f"reference {y[idx]} engine {want[idx]}")
            if L.kw.get("pool_kind") == "avg" and not np.array_equal(hw_layer(x, **L.kw, avg_round="floor"), want):
                FLOOR_WOULD_DIFFER[L.node.name] += 1
            env[L.node.outputs[0]] = y
        final.append(env[graph.outputs[0]])
    # and the full graph's own output, as the user runs it
    assert np.array_equal(npukit.run(graph, xi)[0], np.stack(final))
    for L in layers:
        if L.s is not None:
            SHIFTS[L.s] += 1
    return layers


def prepared(model, x, *, seed=0, train_steps=0, **kw) -> Graph:
    """prepare for max78000 (rules off), optionally a few SGD steps, then the IR."""
    torch.manual_seed(seed)
    qmodel = npukit.prepare(model, x, target="max78000", rules="off", **kw)
    return npukit.to_ir(train_a_little(qmodel, x, train_steps))


def run_case(model, shape, *, seed, in_scale=1.0, in_offset=0.0, n=3, train_steps=0, **kw):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, *shape, generator=g) * in_scale + in_offset
    graph = prepared(model, x, seed=seed, train_steps=train_steps, **kw)
    xi = graph.quantize_input(torch.randn(n, *shape, generator=g).numpy() * in_scale + in_offset)
    return graph, compare(graph, xi)


def _scale_(module, k):
    with torch.no_grad():
        module.weight.mul_(2.0**k)
    return module


# ---- the reference itself -------------------------------------------------------------------------------

def test_reference_rounding_is_the_documented_formula():
    rng = np.random.default_rng(0)
    accs = [*range(-600, 600), *rng.integers(-(2**29), 2**29, 2000).tolist()]
    for s in range(-15, 16):
        got = round_shift(np.array(accs), s)
        want = [math.floor(Fraction(1, 2) + Fraction(a) * Fraction(2) ** s / 128) for a in accs]
        assert got.tolist() == want, s


def test_reference_small_hand_examples():
    # avg pool truncates toward zero: (-3 + -2) / 2 = -2.5 -> -2 (floor would give -3)
    assert pool_map(np.array([[-3, -2]]), "avg", (2,), (2,)).tolist() == [[-2]]
    assert pool_map(np.array([[-3, -2]]), "avg", (2,), (2,), avg_round="floor").tolist() == [[-3]]
    # acc = 1*64 + b*128 = 64 + 128: s = 0 -> floor(0.5 + 1.5) = 2; 32-bit -> 192
    x, w = np.array([64]), np.array([[1]])
    assert hw_layer(x, op="mlp", weight=w, bias_b=np.array([1]), output_shift=0).tolist() == [2]
    assert hw_layer(x, op="mlp", weight=w, bias_b=np.array([1]), output_width=32).tolist() == [192]
    # half rounds up: acc = -64 -> floor(0.5 - 0.5) = 0; acc = -65 -> -1
    assert hw_layer(np.array([-64, -1]), op="mlp", weight=np.array([[1, 0], [1, 1]])).tolist() == [0, -1]
    # 4-bit weights: s = output_shift + 4 (acc = 70: s = 0 -> 1.05 -> 1; s = 4 -> 9.25 -> 9; s = 7 -> 70)
    for shift, y in ((-4, 1), (0, 9), (3, 70)):
        assert hw_layer(np.array([10]), op="mlp", weight=np.array([[7]]), weight_bits=4, output_shift=shift) == [y]
    # Abs and ReLU
    y = hw_layer(np.array([100]), op="mlp", weight=np.array([[-128]]), output_shift=1, activation="Abs")
    assert y.tolist() == [127]
    assert hw_layer(np.array([3]), op="mlp", weight=np.array([[-128]]), activation="ReLU").tolist() == [0]


# ---- npukit against the reference ------------------------------------------------------------------------

CONV2D = [(k, pad, bits) for k in (1, 3) for pad in (0, 1, 2) for bits in (8, 4, 2)]


@pytest.mark.parametrize(("k", "pad", "bits"), CONV2D)
def test_conv2d(k, pad, bits):
    i = CONV2D.index((k, pad, bits))
    bias, relu, wide = i % 2 == 0, (i // 2) % 2 == 0, i % 3 == 0
    layers = [_scale_(nn.Conv2d(3, 5, k, padding=pad, bias=bias), (i % 5) - 2)]
    if relu:
        layers.append(nn.ReLU())
    layers.append(nn.Conv2d(5, 4, 3 - k + 1 if k == 1 else 1, padding=1 if k == 1 else 0, bias=not bias))
    graph, hw = run_case(nn.Sequential(*layers), (3, 6, 5), seed=i, in_scale=2.0 ** ((i % 7) - 3),
                         train_steps=i % 3, weight_bits=bits, wide_output=wide)
    assert hw[0].kw["pad"] == pad and hw[0].kw["activation"] == ("ReLU" if relu else None)
    assert hw[-1].kw["output_width"] == (32 if wide else 8)
    assert hw[0].kw["weight_bits"] == bits and np.abs(hw[0].kw["weight"]).max() <= 2 ** (bits - 1)


@pytest.mark.parametrize("k", range(1, 10))
def test_conv1d(k):
    pad = (k - 1) % 3
    dil = 2 if k in (3, 4) else 1  # (k - 1) * dilation < 9
    bits = (8, 4, 2)[k % 3]
    model = nn.Sequential(_scale_(nn.Conv1d(2, 4, k, padding=pad, dilation=dil, bias=k % 2 == 1), k % 4 - 1),
                          *([nn.ReLU()] if k % 2 else []), nn.Conv1d(4, 3, 1))
    graph, hw = run_case(model, (2, 12), seed=100 + k, in_scale=2.0 ** (k % 5 - 2), train_steps=k % 2,
                         weight_bits=bits, wide_output=k % 3 == 0)
    assert hw[0].kw["op"] == "conv1d" and hw[0].kw["dilation"] == dil


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_and_flatten(bits, bias):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=bias), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 8, bias=bias), nn.ReLU(), nn.Linear(8, 5, bias=not bias))
    graph, hw = run_case(model, (2, 4, 4), seed=bits + bias, train_steps=2 if bias else 0, weight_bits=bits)
    assert [L.kw["op"] for L in hw] == ["conv2d", "mlp", "mlp"]
    assert hw[1].kw.get("flatten") and hw[-1].kw["output_width"] == 32


POOL_CASES = [  # (ndim, kind, kernel, stride)
    (2, "max", 2, 2), (2, "avg", 2, 2), (2, "max", 3, 1), (2, "avg", 3, 1), (2, "avg", 3, 2),
    (1, "max", 2, 2), (1, "avg", 2, 2), (1, "max", 3, 1), (1, "avg", 3, 1), (1, "avg", 4, 4),
]


@pytest.mark.parametrize(("ndim", "kind", "kernel", "stride"), POOL_CASES)
def test_pool_before_conv(ndim, kind, kernel, stride):
    """Pooling of the network input (signed) and of a non-ReLU layer's output, before a conv."""
    pool = {(1, "max"): nn.MaxPool1d, (1, "avg"): nn.AvgPool1d, (2, "max"): nn.MaxPool2d,
            (2, "avg"): nn.AvgPool2d}[(ndim, kind)](kernel, stride)
    pool2 = {(1, "max"): nn.MaxPool1d, (1, "avg"): nn.AvgPool1d, (2, "max"): nn.MaxPool2d,
             (2, "avg"): nn.AvgPool2d}[(ndim, kind)](kernel, stride)
    conv = nn.Conv1d if ndim == 1 else nn.Conv2d
    model = nn.Sequential(pool, conv(2, 4, 3, padding=1), pool2, conv(4, 3, 1))
    shape = (2, 16) if ndim == 1 else (2, 8, 7)
    i = POOL_CASES.index((ndim, kind, kernel, stride))
    graph, hw = run_case(model, shape, seed=200 + i, n=4, train_steps=i % 2, wide_output=i % 2 == 0)
    assert [L.kw["pool_kind"] for L in hw] == [kind, kind]
    assert hw[0].kw["activation"] is None  # the second pool reads signed values


def test_avg_pool_truncation_is_observable():
    """Truncation toward zero, not floor: at least one layer's output would differ with floor."""
    FLOOR_WOULD_DIFFER.clear()
    for seed in range(3):
        for ndim in (1, 2):
            pool = nn.AvgPool1d(2, 2) if ndim == 1 else nn.AvgPool2d(2, 2)
            conv = nn.Conv1d(2, 2, 1) if ndim == 1 else nn.Conv2d(2, 2, 1)
            run_case(nn.Sequential(pool, conv), (2, 16) if ndim == 1 else (2, 6, 6), seed=300 + seed, n=4)
    assert sum(FLOOR_WOULD_DIFFER.values()) > 0


def test_global_avgpool_then_linear():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(6, 4)

        def forward(self, x):
            return self.fc(self.c(x).mean((2, 3)))  # no ReLU: negative values averaged

    for seed in range(2):
        graph, hw = run_case(Net(), (3, 4, 4), seed=400 + seed, n=4, train_steps=seed)
        assert hw[1].kw["pool_kind"] == "avg" and hw[1].kw["pool"] == (4, 4)


class Twin(nn.Module):
    """a(x) and b(x) with b's weights a permutation of a's output channels, so both outputs share one
    range (and one exponent); their sum (pooled first or not) feeds a conv."""

    def __init__(self, ndim, pool):
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.a, self.b, self.c = conv(3, 4, 3, padding=1), conv(3, 4, 3, padding=1), conv(4, 3, 3, padding=1)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight[[2, 3, 0, 1]])
            self.b.bias.copy_(self.a.bias[[2, 3, 0, 1]])
        self.pool = {(1, "avg"): F.avg_pool1d, (2, "max"): F.max_pool2d, (2, "avg"): F.avg_pool2d}.get((ndim, pool))

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.pool:
            a, b = self.pool(a, 2), self.pool(b, 2)
        return self.c(a + b)


@pytest.mark.parametrize(("ndim", "pool"), [(2, None), (2, "max"), (2, "avg"), (1, None), (1, "avg")])
def test_eltwise_add_before_conv(ndim, pool):
    graph, hw = run_case(Twin(ndim, pool), (3, 12) if ndim == 1 else (3, 6, 6), seed=500, n=4)
    assert hw[-1].kw["eltwise"] == "add" and hw[-1].kw.get("pool_kind") == pool


class TwinCat(Twin):
    def forward(self, x):
        return self.c2(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concat_before_conv_is_in_sequences():
    model = TwinCat(2, None)
    model.c2 = nn.Conv2d(8, 3, 1)
    graph, hw = run_case(model, (3, 5, 5), seed=510, n=4)
    assert len(hw[-1].sources) == 2 and "eltwise" not in hw[-1].kw


def test_eltwise_add_saturates_like_the_chip():
    """x + x of the network input itself: equal exponents by construction, sums beyond int8 clip."""

    class Double(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.c(x + x)

    graph, hw = run_case(Double(), (2, 4, 4), seed=600, n=4)
    assert hw[0].kw["eltwise"] == "add"


class Residual(nn.Module):
    def __init__(self, ndim, relu_mid):
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.c1, self.c2, self.c3 = conv(2, 4, 3, padding=1), conv(4, 4, 3, padding=1), conv(4, 3, 1)
        self.relu_mid = relu_mid

    def forward(self, x):
        y = F.relu(self.c1(x))
        z = self.c2(y)
        return self.c3((F.relu(z) if self.relu_mid else z) + y)


def test_residual_adds_share_one_exponent():
    """Typical residual blocks: QAT ties the operands' exponents (the chip adds them unshifted), so every
    block has a chip equivalent and matches it."""
    same = differ = 0
    for seed in range(12):
        g = torch.Generator().manual_seed(700 + seed)
        ndim = 1 + seed % 2
        shape = (2, 10) if ndim == 1 else (2, 5, 5)
        x = torch.randn(8, *shape, generator=g)
        graph = prepared(Residual(ndim, seed % 3 == 0), x, seed=seed, train_steps=seed % 3)
        add = next(n for n in graph.nodes if n.op == "add")
        try:
            compare(graph, graph.quantize_input(torch.randn(3, *shape, generator=g).numpy()))
            same += 1
        except NotComparable as e:
            assert "exponents" in str(e), e
            differ += 1
            assert len({graph.tensors[t].exp for t in add.inputs}) > 1
    # Before the exponents were tied, 11 of these 12 differed (the add shifted one operand; the chip does not).
    assert differ == 0 and same == 12


class DeadChannel(nn.Module):
    """x -> [x, x * small, 0] (ReLU, the last channel dead) -> weights [0, small, 1]: the largest weight
    multiplies an input that is always 0 and the output is tiny next to |x| * |w|, so s comes out high."""

    def __init__(self, small):
        super().__init__()
        self.l1, self.l2 = nn.Linear(1, 3), nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.l1.weight.copy_(torch.tensor([[1.0], [small], [0.0]]))
            self.l1.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
            self.l2.weight.copy_(torch.tensor([[0.0, small, 1.0]]))

    def forward(self, x):
        return self.l2(F.relu(self.l1(x)))


def _fan_in(n):
    lin = nn.Linear(n, 1)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    return nn.Sequential(lin)


def test_shift_range():
    """s across its range: every layer still matches the chip. s ~ (8 - q) - log2(|acc| / (|x| |w|)):
    wide coherent sums push it down (131072 inputs would need -17: npukit clamps to -15 and saturates),
    an output tiny next to |x| * |w| pushes it up."""
    seen = set()
    for j, bits in enumerate((8, 4, 2)):  # plain layers, random scales
        model = nn.Sequential(_scale_(nn.Linear(16, 6), 3 * j - 3), nn.ReLU(), nn.Linear(6, 3))
        graph, hw = run_case(model, (16,), seed=800 + j, in_scale=2.0 ** (2 * j - 2), wide_output=False,
                             weight_bits=bits, train_steps=j % 2)
        seen |= {L.s for L in hw}
    for small, bits, seed in [(1 / 16, 8, 810), (1 / 64, 8, 812), (1 / 16, 2, 811)]:  # s 9, 13; 10 (2-bit)
        graph, hw = run_case(DeadChannel(small), (1,), seed=seed, n=16, wide_output=False, weight_bits=bits)
        seen |= {L.s for L in hw}
    for j, n in enumerate((1024, 32768, 131072)):
        graph, hw = run_case(_fan_in(n), (n,), seed=820 + j, in_scale=0.1, in_offset=1.0, n=2, wide_output=False)
        seen |= {L.s for L in hw}
    print(f"\nshift s reached: {sorted(seen)}")
    assert min(seen) == -15 and max(seen) >= 13, sorted(seen)


class _AbsNet(nn.Module):
    def __init__(self, ndim: int):
        super().__init__()
        conv = nn.Conv1d if ndim == 1 else nn.Conv2d
        self.a, self.b = conv(2, 4, 3, padding=1), conv(4, 3, 1)

    def forward(self, x):
        return torch.abs(self.b(self.a(x).abs()))


@pytest.mark.parametrize("ndim", [1, 2])
def test_abs_activation(ndim):
    """conv -> |.| fuses into the layer (activate: Abs): clip(|y|, 0, 127) after the int8 clip."""
    graph, hw = run_case(_AbsNet(ndim), (2, 9) if ndim == 1 else (2, 5, 5), seed=40 + ndim, train_steps=2,
                         in_scale=4.0)
    assert [L.kw["activation"] for L in hw] == ["Abs", "Abs"]


def test_zz_summary():
    print(f"\ns of 8-bit layers compared: {dict(sorted(SHIFTS.items()))}")
    print(f"add operand exponents: {dict(ADD_EXPONENTS)}")
    print(f"avg-pool layers where floor would differ: {sum(FLOOR_WOULD_DIFFER.values())}")

"""The compiled engine plan (`npukit.engine.Plan`, what `npukit.run` uses) against the reference walk
(`engine.run_reference`, each op's `run`): every integer equal, on random graphs of every target, across
batch sizes, with the plan cached on the graph and recompiled when the graph changes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_differential import TARGETS, nets, random_graph_and_inputs

import npukit
from npukit import engine
from npukit.ops import get_op


def _same_as_reference(graph, *inputs):
    want = engine.run_reference(graph, *inputs)
    got = engine.run(graph, *inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(g, w)
    return got


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=nets(), target=st.sampled_from(sorted(TARGETS)), seed=st.integers(0, 2**16))
def test_plan_matches_reference_walk(spec, target, seed):
    graph, q = random_graph_and_inputs(spec, target, seed, n=7)
    for n in (7, 1, 3, 7):  # one cached plan, buffers per batch size, reused
        _same_as_reference(graph, q[:n])
    plan = graph.__dict__[engine._PLAN_ATTR]
    assert plan.matches(graph)


def _net(groups2=1, **conv):
    size = (8 + 2 * conv.get("padding", 0) - conv.get("dilation", 1) * 2 - 1) // conv.get("stride", 1) + 1
    size = size // 2 + 1  # the pooling
    return nn.Sequential(nn.Conv2d(3, 8, 3, **conv), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2, padding=1),
                         nn.Conv2d(8, 8, 3, padding=1, groups=groups2), nn.Flatten(),
                         nn.Linear(8 * size * size, 4))


@pytest.mark.parametrize("target", ["venus", "max78000", "variant", "floor"])
@pytest.mark.parametrize("conv", [{"padding": 1}, {"padding": 2, "dilation": 2}, {"stride": 2, "padding": 3},
                                  {"padding": 1, "groups2": 2}, {"stride": 3, "groups2": 8}])
def test_plan_compiles_the_mac_layers(target, conv):
    torch.manual_seed(0)
    model = _net(**conv)
    x = torch.randn(16, 3, 8, 8) * 2
    graph = npukit.to_ir(npukit.prepare(model, x, target=TARGETS[target], rules="off"))
    q = graph.quantize_input(torch.randn(9, 3, 8, 8).numpy() * 2)
    for n in (9, 1, 2):
        _same_as_reference(graph, q[:n])
    compiled = {n.op for n in graph.nodes if get_op(n.op).compile(n, graph) is not None}
    assert {"conv", "maxpool", "reshape"} <= compiled  # the linear too, unless its accumulator may saturate
    assert "linear" in compiled or target == "floor"  # 20-bit accumulator, a wide output


def test_float64_carrier_and_the_general_path():
    """Sums beyond 2**24 run the compiled kernel in float64; a narrow accumulator that may saturate
    falls back to the reference kernel inside the plan."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(8, 2048)
    graph = npukit.to_ir(npukit.prepare(model, x))
    first = graph.nodes[0]
    assert get_op("linear").compile(first, graph) is not None
    q = graph.quantize_input(x.numpy())
    _same_as_reference(graph, q)
    first.attrs["acc_bits"] = 16  # the accumulator now saturates: the plan must run the reference kernel
    assert get_op("linear").compile(first, graph) is None
    _same_as_reference(graph, q)


def test_abs_and_every_rounding_mode():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.Flatten(), nn.Linear(6 * 10, 3))
    x = torch.randn(16, 2, 10) * 3
    q = None
    for mode in ("half_up", "half_even", "floor", "trunc"):
        target = dict(TARGETS["variant"], rounding=mode, weight_bits=[8])
        graph = npukit.to_ir(npukit.prepare(model, x, target=target, rules="off"))
        q = graph.quantize_input(x.numpy()) if q is None else q
        _same_as_reference(graph, q)
        graph.nodes[0].attrs["abs"] = True  # the Abs activation fused into the saturation
        _same_as_reference(graph, q)


def _small_graph():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12, 3))
    x = torch.randn(32, 1, 12) * 2
    graph = npukit.to_ir(npukit.prepare(model, x))
    return graph, graph.quantize_input(x.numpy())


def test_cached_plan_follows_graph_edits():
    graph, q = _small_graph()
    before = _same_as_reference(graph, q)[0]
    plan = graph.__dict__[engine._PLAN_ATTR]
    engine.run(graph, q)
    assert graph.__dict__[engine._PLAN_ATTR] is plan  # reused while the graph is unchanged

    conv, fc = graph.nodes[0], graph.nodes[-1]
    conv.params["weight"][...] = -conv.params["weight"]  # edited in place: same array object
    assert not plan.matches(graph)
    after = _same_as_reference(graph, q)[0]
    assert not np.array_equal(before, after)
    assert graph.__dict__[engine._PLAN_ATTR] is not plan

    fc.params["bias"] = fc.params["bias"] + 5  # a new array
    _same_as_reference(graph, q)
    fc.attrs["out_shift"] += 1  # an attribute
    _same_as_reference(graph, q)
    graph.target["rounding"] = "floor"  # the target (input quantisation is not the engine's concern)
    _same_as_reference(graph, q)
    graph.nodes[:] = [n if n is not fc else type(fc)(**{**fc.__dict__, "attrs": dict(fc.attrs)}) for n in graph.nodes]
    _same_as_reference(graph, q)  # a node replaced by an equal copy
    graph.tensors[graph.outputs[0]].bits = 64  # a tensor spec: the output's integer type
    assert _same_as_reference(graph, q)[0].dtype == np.int64
    conv.params["bias"].shape = (1, -1)  # an array reshaped in place (bytes unchanged)
    assert not graph.__dict__[engine._PLAN_ATTR].matches(graph)
    conv.params["bias"].shape = (-1,)


def test_explicit_plan_is_a_snapshot_and_reentrant():
    graph, q = _small_graph()
    plan = engine.Plan(graph)
    want = engine.run_reference(graph, q)[0]
    outs = []

    def work():
        for n in (32, 1, 5, 32):
            outs.append((n, plan.run(q[:n])[0]))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outs) == 12
    for n, y in outs:
        np.testing.assert_array_equal(y, want[:n])
    y = plan.run(q)[0]
    y[...] = 0  # outputs are the caller's own arrays, never the plan's buffers
    np.testing.assert_array_equal(plan.run(q)[0], want)


def test_plan_input_checks_match_reference():
    graph, q = _small_graph()
    for bad in (q.astype(np.float32), q[:, :, :5], np.full_like(q, 2**7, dtype=np.int16)):
        with pytest.raises(npukit.NpukitError) as ref:
            engine.run_reference(graph, bad)
        with pytest.raises(npukit.NpukitError) as got:
            engine.run(graph, bad)
        assert str(got.value) == str(ref.value)
    with pytest.raises(npukit.NpukitError):
        engine.run(graph, q, q)


def test_plan_follows_target_edits():
    """A reference-kernel node (average pooling) reads the live target; the scheme is folded into the
    compiled MAC kernels, so changing it recompiles."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.AvgPool1d(3), nn.Flatten(), nn.Linear(4 * 4, 3))
    x = torch.randn(32, 1, 12) * 2
    graph = npukit.to_ir(npukit.prepare(model, x, rules="off"))
    q = graph.quantize_input(x.numpy())
    assert "avgpool" in [n.op for n in graph.nodes]
    outs = set()
    for mode in ("half_up", "floor", "trunc", "half_even"):
        graph.target["pool_rounding"] = mode
        outs.add(_same_as_reference(graph, q)[0].tobytes())
    assert len(outs) > 1  # the pool rounding took effect
    plan = graph.__dict__[engine._PLAN_ATTR]
    graph.target["scheme"] = "max78000"
    assert not plan.matches(graph)
    _same_as_reference(graph, q)


def test_plan_keeps_buffers_for_a_few_batch_sizes_within_a_byte_budget():
    graph, q = _small_graph()
    plan = engine.Plan(graph)
    for n in (1, 2, 3, 4, 5, 6):
        plan.run(q[:n])
    assert sorted(plan._scratch) == [(3,), (4,), (5,), (6,)]  # the last KEEP_BATCH_SIZES
    assert engine._nbytes(plan._scratch[(6,)]) > 6 * 12 * 4 * 4  # the conv's padded input and accumulator at least
    plan.KEEP_BYTES = 0
    plan.run(q[:7])
    assert (7,) not in plan._scratch  # over the budget: dropped after the run
    np.testing.assert_array_equal(plan.run(q[:7])[0], engine.run_reference(graph, q[:7])[0])


def test_a_graph_with_a_plan_copies_and_pickles():
    import copy
    import pickle

    graph, q = _small_graph()
    want = engine.run(graph, q)[0]
    for other in (copy.deepcopy(graph), pickle.loads(pickle.dumps(graph)), copy.copy(graph)):
        np.testing.assert_array_equal(engine.run(other, q)[0], want)
        assert other.__dict__[engine._PLAN_ATTR].matches(other)
    assert graph.__dict__[engine._PLAN_ATTR].matches(graph)


def _relu_after(graph, node):
    """A ReLU node inserted after `node` (capture fuses ReLUs into the MAC; the plan may fold it back)."""
    t = node.outputs[0]
    new = f"{t}_relu"
    graph.tensors[new] = npukit.ir.TensorSpec(new, graph.tensors[t].shape, graph.tensors[t].bits, graph.tensors[t].exp)
    for n in graph.nodes:
        n.inputs = [new if i == t else i for i in n.inputs]
    graph.outputs = [new if o == t else o for o in graph.outputs]
    graph.nodes.insert(graph.nodes.index(node) + 1, npukit.ir.Node(f"{node.name}_relu", "relu", [t], [new]))


@pytest.mark.parametrize("after", ["pool", "relu"])
def test_no_fusion_after_a_transposed_conv(after):
    """A transposed conv is no Conv to the plan (it runs its reference `run`), so no pool or ReLU fuses into
    Conv's compiled kernel on its weights (hypothesis found that a max pool after one did, on the wrong shapes)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 1), nn.ConvTranspose1d(2, 2, 2, stride=2),
                          nn.MaxPool1d(2) if after == "pool" else nn.Identity(), nn.Flatten(), nn.Linear(12 if after == "pool" else 24, 4))
    graph = npukit.to_ir(npukit.prepare(model, torch.randn(12, 1, 6), rules="off"))
    transposed = graph.nodes[1]
    assert transposed.op == "conv_transpose"
    if after == "relu":
        _relu_after(graph, transposed)
        graph.validate()
    follower = graph.nodes[2]
    assert get_op(follower.op).compile_after(transposed, follower, graph) is None
    q = graph.quantize_input(torch.randn(5, 1, 6).numpy())
    for n in (5, 1):
        _same_as_reference(graph, q[:n])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ndim=st.sampled_from([1, 2]), cin=st.integers(1, 4), cout=st.integers(1, 6), size=st.integers(4, 11),
       k=st.integers(1, 3), pad=st.integers(0, 1), stride=st.integers(1, 2), pool_k=st.integers(1, 3),
       pool_pad=st.integers(0, 1), target=st.sampled_from(sorted(TARGETS)), absolute=st.booleans(),
       relus=st.sets(st.sampled_from(["conv", "fc"])), seed=st.integers(0, 2**16))
def test_fused_pairs_match_reference(ndim, cin, cout, size, k, pad, stride, pool_k, pool_pad, target, absolute,
                                     relus, seed):
    """Every fusion of the plan (`OpDef.compile_after`) gives the reference walk's integers: a max pooling
    before the conv's requantisation (not with |y|: not monotonic), a ReLU folded into the clip bounds, a
    flatten folded into the linear's weights; on random shapes, weights, inputs over the whole input
    range, every target's rounding."""
    pool_pad = min(pool_pad, pool_k // 2)
    out = (size + 2 * pad - k) // stride + 1
    if out + 2 * pool_pad < pool_k:
        pool_k, pool_pad = 1, 0
    pooled = (out + 2 * pool_pad - pool_k) // pool_k + 1
    conv, pool = (nn.Conv1d, nn.MaxPool1d) if ndim == 1 else (nn.Conv2d, nn.MaxPool2d)
    torch.manual_seed(seed)
    model = nn.Sequential(conv(cin, cout, k, stride=stride, padding=pad), pool(pool_k, padding=pool_pad),
                          nn.Flatten(), nn.Linear(cout * pooled**ndim, 3))
    x = torch.randn(16, cin, *[size] * ndim) * 3
    graph = npukit.to_ir(npukit.prepare(model, x, target=TARGETS[target], rules="off"))
    conv_node, pool_node, flatten, fc = graph.nodes
    conv_node.attrs["abs"] = absolute
    for name in sorted(relus):
        _relu_after(graph, conv_node if name == "conv" else fc)
    graph.validate()
    spec = graph.input_spec()
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (spec.bits - 1)), (1 << (spec.bits - 1)) - 1
    q = rng.integers(lo, hi + 1, (5, *spec.shape)).astype(spec.dtype)
    for n in (5, 1):
        _same_as_reference(graph, q[:n])
    if conv_node.attrs["acc_bits"] >= 32 and target != "floor":  # the MAC kernels compile (no saturation)
        assert get_op("linear").compile_after(flatten, fc, graph) is not None
        if "conv" in relus:
            assert (get_op("relu").compile_after(conv_node, graph.nodes[1], graph) is None) == absolute
        else:
            assert (get_op("maxpool").compile_after(conv_node, pool_node, graph) is None) == absolute


_W16 = {"name": "w16", "activation_bits": 8, "weight_bits": [16], "bias_bits": 32, "accumulator_bits": 48,
        "rounding": "half_up", "pool_rounding": "half_up", "wide_output": True}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=st.integers(1, 5), cout=st.integers(1, 6), size=st.integers(3, 12), k=st.integers(1, 5),
       pad=st.integers(0, 3), stride=st.integers(1, 2), dilation=st.integers(1, 2), pool=st.sampled_from([0, 2, 3]),
       target=st.sampled_from([*sorted(TARGETS), "w16"]), n=st.integers(16, 40), chunk=st.sampled_from([1, 300, 64 << 10]),
       seed=st.integers(0, 2**16))
def test_large_batch_1d_conv_matches_reference(cin, cout, size, k, pad, stride, dilation, pool, target, n, chunk, seed):
    """From batch 16 a 1-d conv of stride 1 (and 16 input channels; here any) runs as strided GEMMs over
    the padded batch, in chunks of samples (`_RESIDUE_BYTES`: here as small as one sample per chunk),
    a max pool after it (kernel = stride 2 or 3) as the maximum of the GEMMs' per-phase outputs; other
    geometries keep im2col."""
    from unittest import mock

    from npukit.ops import mac

    pad = min(pad, k // 2 + 1)
    if size + 2 * pad < dilation * (k - 1) + 1:
        k = dilation = 1
    out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    layers = [nn.Conv1d(cin, cout, k, stride=stride, padding=pad, dilation=dilation), nn.ReLU()]
    if pool and out >= pool:
        layers.append(nn.MaxPool1d(pool))
        out //= pool
    layers += [nn.Conv1d(cout, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * out, 2)]
    torch.manual_seed(seed)
    graph = npukit.to_ir(npukit.prepare(nn.Sequential(*layers), torch.randn(16, cin, size) * 3,
                                        target=_W16 if target == "w16" else TARGETS[target], rules="off"))
    spec = graph.input_spec()
    lo, hi = -(1 << (spec.bits - 1)), (1 << (spec.bits - 1)) - 1
    q = np.random.default_rng(seed).integers(lo, hi + 1, (n, *spec.shape)).astype(spec.dtype)
    with mock.patch.object(mac, "_RESIDUE_BYTES", chunk), mock.patch.object(mac, "_RESIDUE_MIN_CHANNELS", 1):
        for m in (n, 1, n):
            _same_as_reference(graph, q[:m])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ndim=st.sampled_from([1, 2]), cout=st.integers(1, 6), size=st.integers(3, 9), k=st.integers(1, 4),
       pad=st.integers(0, 2), stride=st.integers(1, 2), dilation=st.integers(1, 2), absolute=st.booleans(),
       target=st.sampled_from(sorted(TARGETS)), n=st.integers(16, 24), chunk=st.sampled_from([1, 512 << 10]),
       seed=st.integers(0, 2**16))
def test_chained_convs_and_one_channel_columns_match_reference(ndim, cout, size, k, pad, stride, dilation, absolute,
                                                               target, n, chunk, seed):
    """Two convs in a row: the first (one input channel: from batch 16 its columns are copied tap-major)
    computes its values straight into the second's padded input (`inlet`/`into`: a 1-d conv's GEMM writes
    there, the rounding in place), |y| included; batch 1 and n, 1-d and 2-d, im2col in chunks of one
    sample or all, every target's rounding."""
    from unittest import mock

    from npukit.ops import mac

    pad = min(pad, k // 2 + 1)
    if size + 2 * pad < dilation * (k - 1) + 1:
        k = dilation = 1
    conv = nn.Conv1d if ndim == 1 else nn.Conv2d
    out = (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    torch.manual_seed(seed)
    model = nn.Sequential(conv(1, cout, k, stride=stride, padding=pad, dilation=dilation),
                          conv(cout, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * out**ndim, 2))
    graph = npukit.to_ir(npukit.prepare(model, torch.randn(16, 1, *[size] * ndim) * 3, target=TARGETS[target],
                                        rules="off"))
    graph.nodes[0].attrs["abs"] = absolute
    graph.validate()
    spec = graph.input_spec()
    lo, hi = -(1 << (spec.bits - 1)), (1 << (spec.bits - 1)) - 1
    q = np.random.default_rng(seed).integers(lo, hi + 1, (n, *spec.shape)).astype(spec.dtype)
    with mock.patch.object(mac, "_CHUNK_BYTES", chunk):
        for m in (n, 1):
            _same_as_reference(graph, q[:m])

"""The IR file format (save/load round trip, damaged files) and the structural validator."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from models_for_tests import npukit_error_of

import npukit
from npukit.ir import IR_FORMAT, IR_VERSION, Graph, Node, TensorSpec


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                      nn.Linear(4 * 7, 5))
    bn = m[1]  # non-trivial running statistics, so folding is exercised
    bn.running_mean.copy_(torch.randn(4) * 0.1)
    bn.running_var.copy_(torch.rand(4) + 0.5)
    bn.weight.data.copy_(torch.rand(4) + 0.5)
    bn.bias.data.copy_(torch.randn(4) * 0.1)
    return m


@pytest.fixture(scope="module")
def example():
    torch.manual_seed(1)
    return torch.randn(8, 2, 16)


@pytest.fixture(scope="module")
def graph(example) -> Graph:
    qmodel = npukit.prepare(_tiny_model(), example, target="venus")
    return npukit.to_ir(qmodel)


@pytest.fixture
def saved(graph, tmp_path):
    return graph.save(tmp_path / "model.npuir")


def _assert_graphs_identical(a: Graph, b: Graph) -> None:
    assert a.target == b.target
    assert a.inputs == b.inputs and a.outputs == b.outputs
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        ta, tb = a.tensors[name], b.tensors[name]
        assert (ta.name, tuple(ta.shape), ta.bits, ta.exp) == (tb.name, tuple(tb.shape), tb.bits, tb.exp)
        assert isinstance(tb.shape, tuple)
    assert len(a.nodes) == len(b.nodes)
    for na, nb in zip(a.nodes, b.nodes, strict=True):
        assert (na.name, na.op, na.inputs, na.outputs) == (nb.name, nb.op, nb.inputs, nb.outputs)
        assert na.attrs == nb.attrs
        assert sorted(na.params) == sorted(nb.params)
        for k in na.params:
            pa, pb = na.params[k], nb.params[k]
            assert pa.dtype == pb.dtype and pa.shape == pb.shape
            assert np.array_equal(pa, pb)


def test_graph_has_expected_structure(graph):
    assert [n.op for n in graph.nodes] == ["conv", "maxpool", "reshape", "linear"]
    conv = graph.nodes[0]
    assert conv.attrs["relu"] is True  # BN folded, ReLU fused
    assert conv.params["weight"].dtype == np.int8 and conv.params["weight"].shape == (4, 2, 3)
    assert graph.output_spec().bits == 32  # venus: wide output for the final Linear


def test_save_load_round_trip(graph, saved, example):
    loaded = Graph.load(saved)
    _assert_graphs_identical(graph, loaded)
    loaded2 = npukit.load_ir(str(saved))  # str path and the top-level helper
    _assert_graphs_identical(graph, loaded2)

    x = torch.randn(16, 2, 16) * 1.5
    q = graph.quantize_input(x)
    assert np.array_equal(q, loaded.quantize_input(x)) and q.dtype == loaded.quantize_input(x).dtype
    want = npukit.run(graph, q)
    got = npukit.run(loaded, q)
    assert len(want) == len(got) == 1
    assert want[0].dtype == got[0].dtype
    assert np.array_equal(want[0], got[0])
    assert np.any(want[0] != 0)


def test_round_trip_is_stable(graph, saved, tmp_path):
    """Saving a loaded graph gives the same graph.json and parameters again."""
    again = Graph.load(saved).save(tmp_path / "again.npuir")
    with zipfile.ZipFile(saved) as a, zipfile.ZipFile(again) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())
        for name in a.namelist():
            assert a.read(name) == b.read(name), name


def test_saved_file_layout(saved):
    with zipfile.ZipFile(saved) as z:
        meta = json.loads(z.read("graph.json"))
        assert meta["format"] == IR_FORMAT and meta["version"] == IR_VERSION
        assert "params/0/weight.npy" in z.namelist() and "params/0/bias.npy" in z.namelist()


def test_save_is_atomic_no_tmp_left(graph, tmp_path):
    out = tmp_path / "sub" / "m.npuir"
    ret = graph.save(out)
    assert ret == out and out.is_file()
    assert sorted(os.listdir(out.parent)) == ["m.npuir"]
    first = out.read_bytes()
    graph.save(out)  # overwrite in place
    assert sorted(os.listdir(out.parent)) == ["m.npuir"]
    assert out.read_bytes() == first
    Graph.load(out)


def test_failed_save_leaves_no_tmp_and_keeps_old_file(graph, tmp_path):
    out = graph.save(tmp_path / "m.npuir")
    before = out.read_bytes()
    bad = Graph(graph.target, graph.inputs, graph.outputs, graph.tensors,
                [Node(n.name, n.op, n.inputs, n.outputs, {**n.attrs, "bad": {1, 2}}, n.params) for n in graph.nodes])
    with pytest.raises(TypeError):
        bad.save(out)
    assert out.read_bytes() == before  # the old file is untouched
    assert sorted(os.listdir(tmp_path)) == ["m.npuir"]


# ---------------------------------------------------------------------------------------------------
# Damaged and foreign files: always NpukitError, never another exception type.
# ---------------------------------------------------------------------------------------------------


def _load_expecting_npukit_error(path):
    return npukit_error_of(lambda: Graph.load(path), "Graph.load of a damaged file")


@pytest.mark.parametrize("keep", [0, 1, 4, 22, 100, 0.5, -22, -1])
def test_truncated_file(saved, tmp_path, keep):
    data = saved.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data) if keep < 0 else keep
    bad = tmp_path / "truncated.npuir"
    bad.write_bytes(data[:n])
    _load_expecting_npukit_error(bad)


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_file(tmp_path, seed):
    rng = np.random.default_rng(seed)
    bad = tmp_path / "random.npuir"
    bad.write_bytes(rng.integers(0, 256, size=int(rng.integers(1, 5000)), dtype=np.uint8).tobytes())
    _load_expecting_npukit_error(bad)


def test_missing_file(tmp_path):
    msg = _load_expecting_npukit_error(tmp_path / "nope.npuir")
    assert "nope.npuir" in msg


def test_directory_instead_of_file(tmp_path):
    _load_expecting_npukit_error(tmp_path)


def test_zip_without_graph_json(tmp_path):
    bad = tmp_path / "other.zip"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("something.txt", "hello")
    _load_expecting_npukit_error(bad)


def _rewrite(saved, tmp_path, edit_meta=None, drop=(), raw_json=None):
    out = tmp_path / "edited.npuir"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name in drop:
                continue
            data = src.read(name)
            if name == "graph.json":
                if raw_json is not None:
                    data = raw_json
                elif edit_meta is not None:
                    meta = json.loads(data)
                    edit_meta(meta)
                    data = json.dumps(meta).encode()
            dst.writestr(name, data)
    return out


def test_wrong_format_and_version(saved, tmp_path):
    msg = _load_expecting_npukit_error(_rewrite(saved, tmp_path, lambda m: m.update(format="onnx")))
    assert "not an npukit IR file" in msg
    msg = _load_expecting_npukit_error(_rewrite(saved, tmp_path, lambda m: m.update(version=IR_VERSION + 1)))
    assert "version" in msg


@pytest.mark.parametrize("case", ["no_nodes", "bad_json", "missing_param", "bad_shape"])
def test_damaged_content(saved, tmp_path, case):
    if case == "no_nodes":
        path = _rewrite(saved, tmp_path, lambda m: m.pop("nodes"))
    elif case == "bad_json":
        path = _rewrite(saved, tmp_path, raw_json=b"{not json")
    elif case == "missing_param":
        path = _rewrite(saved, tmp_path, drop=("params/0/weight.npy",))
    else:
        path = _rewrite(saved, tmp_path, lambda m: m["tensors"][0].update(shape=None))
    _load_expecting_npukit_error(path)


def test_structurally_invalid_graph_in_file(saved, tmp_path):
    """A readable file whose graph is inconsistent is rejected by validation on load."""
    def break_it(meta):
        meta["nodes"][1]["inputs"] = ["undefined_tensor"]
    msg = _load_expecting_npukit_error(_rewrite(saved, tmp_path, break_it))
    assert "undefined_tensor" in msg


def _corrupt_deflate(saved, tmp_path):
    """Overwrite graph.json's compressed bytes with 0xFF (an invalid deflate block type)."""
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("graph.json")
    name_len = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start: start + 8] = b"\xff" * 8
    bad = tmp_path / "corrupt.npuir"
    bad.write_bytes(bytes(data))
    return bad


def _unknown_compression(saved, tmp_path):
    """Set graph.json's compression method in the central directory to an unknown one (99)."""
    data = bytearray(saved.read_bytes())
    i = data.find(b"PK\x01\x02")
    while i >= 0:
        name_len = int.from_bytes(data[i + 28: i + 30], "little")
        if bytes(data[i + 46: i + 46 + name_len]) == b"graph.json":
            data[i + 10: i + 12] = (99).to_bytes(2, "little")
        i = data.find(b"PK\x01\x02", i + 1)
    bad = tmp_path / "method99.npuir"
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("case", ["corrupt_deflate", "unknown_compression", "json_list"])
def test_damaged_zip_and_json(saved, tmp_path, case):
    if case == "corrupt_deflate":
        path = _corrupt_deflate(saved, tmp_path)  # zlib.error inside zipfile
    elif case == "unknown_compression":
        path = _unknown_compression(saved, tmp_path)  # NotImplementedError inside zipfile
    else:
        path = _rewrite(saved, tmp_path, raw_json=b"[]")  # graph.json is not an object
    _load_expecting_npukit_error(path)


def test_byte_flips_never_escape(saved, tmp_path):
    """Damage anywhere in the file: the load either succeeds with a valid graph or raises NpukitError."""
    data = saved.read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "flipped.npuir"
    for _ in range(300):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
            b[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(b))
        try:
            g = Graph.load(bad)
        except npukit.NpukitError:
            continue
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"Graph.load raised {type(e).__name__}: {e}")
        g.validate()


@pytest.mark.parametrize("case", ["node_without_attrs", "flat_weight"])
def test_inconsistent_node_content(saved, tmp_path, case):
    if case == "node_without_attrs":
        def edit(meta):
            meta["nodes"][0]["attrs"] = {}  # conv without groups/stride/...: KeyError in Conv.infer_shapes
        path = _rewrite(saved, tmp_path, edit)
    else:
        import io
        with zipfile.ZipFile(saved) as z:
            names = z.namelist()
            lin = next(i for i, n in enumerate(json.loads(z.read("graph.json"))["nodes"]) if n["op"] == "linear")
        buf = io.BytesIO()
        np.save(buf, np.zeros(7, dtype=np.int8))  # a 1-d linear weight: IndexError in Linear.infer_shapes
        path = tmp_path / "flat.npuir"
        with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w") as dst:
            for name in names:
                dst.writestr(name, buf.getvalue() if name == f"params/{lin}/weight.npy" else src.read(name))
    _load_expecting_npukit_error(path)


# ---------------------------------------------------------------------------------------------------
# validate()
# ---------------------------------------------------------------------------------------------------


def _relu_graph(**changes) -> Graph:
    tensors = {"input": TensorSpec("input", (3, 5), 8, 4), "r": TensorSpec("r", (3, 5), 8, 4)}
    nodes = [Node("r", "relu", ["input"], ["r"])]
    g = Graph({"rounding": "half_up"}, ["input"], ["r"], tensors, nodes)
    for k, v in changes.items():
        setattr(g, k, v)
    return g


def test_validate_accepts_valid_graph(graph):
    graph.validate()
    _relu_graph().validate()


def test_validate_reports_undefined_input():
    g = _relu_graph(nodes=[Node("r", "relu", ["ghost"], ["r"])])
    with pytest.raises(npukit.NpukitError) as ei:
        g.validate()
    assert "'r'" in str(ei.value) and "ghost" in str(ei.value) and "before they are produced" in str(ei.value)


def test_validate_reports_shape_mismatch():
    g = _relu_graph()
    g.tensors["r"] = TensorSpec("r", (3, 6), 8, 4)
    with pytest.raises(npukit.NpukitError) as ei:
        g.validate()
    msg = str(ei.value)
    assert "output shape" in msg and "(3, 6)" in msg and "(3, 5)" in msg


def test_validate_reports_every_problem_at_once():
    tensors = {"input": TensorSpec("input", (3, 5), 8, 4), "a": TensorSpec("a", (3, 7), 8, 4),
               "b": TensorSpec("b", (3, 5), 8, 4)}
    nodes = [Node("a", "relu", ["input"], ["a"]),          # shape mismatch
             Node("b", "relu", ["nowhere"], ["b"]),        # undefined input
             Node("c", "frobnicate", ["input"], ["c"])]    # unknown op
    g = Graph({"rounding": "half_up"}, ["input"], ["a", "zzz"], tensors, nodes)
    with pytest.raises(npukit.NpukitError) as ei:
        g.validate()
    msg = str(ei.value)
    assert "output shape" in msg
    assert "nowhere" in msg
    assert "frobnicate" in msg
    assert "'zzz' is never produced" in msg


def test_validate_reports_double_definition_and_missing_spec():
    g = _relu_graph(nodes=[Node("r", "relu", ["input"], ["r"]), Node("r2", "relu", ["input"], ["r"]),
                           Node("r3", "relu", ["input"], ["nospec"])])
    with pytest.raises(npukit.NpukitError) as ei:
        g.validate()
    assert "produced twice" in str(ei.value)
    assert "'nospec' has no tensor spec" in str(ei.value)


# validate() checks every node against its op's schema (OpDef.check_node) and the bit widths and
# exponents its kernel assumes of its tensors, listing every problem at once as "node 'X' (op): reason".


def _edited(graph: Graph, edit) -> str:
    import copy

    g = copy.deepcopy(graph)
    edit(g)
    return npukit_error_of(g.validate, "validate of the edited graph")


def _by_op(g: Graph, op: str) -> Node:
    return next(n for n in g.nodes if n.op == op)


def test_validate_node_lacking_attributes_lists_each(graph):
    def edit(g):
        del _by_op(g, "conv").attrs["stride"]
        del _by_op(g, "maxpool").attrs["kernel"]
        del _by_op(g, "linear").attrs["acc_bits"]
    msg = _edited(graph, edit)
    assert "node '0' (conv): lacks attribute 'stride'" in msg
    assert "node '3' (maxpool): lacks attribute 'kernel'" in msg
    assert "node '5' (linear): lacks attribute 'acc_bits'" in msg
    assert "KeyError" not in msg


@pytest.mark.parametrize("node, key, value, says", [
    ("conv", "groups", "1", "attribute 'groups' is str, not int"),
    ("conv", "relu", 1, "attribute 'relu' is int, not bool"),
    ("maxpool", "kernel", 2, "attribute 'kernel' is int, not int list"),
    ("maxpool", "stride", [0], "attribute 'stride' is [0]; it must be at least 1"),
    ("conv", "w_bits", 3, "has w_bits 3"),
    ("linear", "rounding", "nearest", "has rounding 'nearest'"),
    ("conv", "ndim", 3, "has weight shape (4, 2, 3)"),
])
def test_validate_attribute_kind_and_range(graph, node, key, value, says):
    msg = _edited(graph, lambda g: _by_op(g, node).attrs.update({key: value}))
    name = _by_op(graph, node).name
    assert f"node {name!r} ({node}): {says}" in msg


def test_validate_params(graph):
    def edit(g):
        lin = _by_op(g, "linear")
        lin.params["bias"] = lin.params["bias"][:-1]
        del _by_op(g, "conv").params["weight"]
    msg = _edited(graph, edit)
    assert "node '0' (conv): lacks params ['weight']" in msg
    assert "node '5' (linear): has weight shape (5, 28) and bias shape (4,)" in msg


def test_validate_shape_errors_are_listed_not_raised(graph):
    """infer_shapes' own errors (a channel mismatch) join the list with the other problems."""
    def edit(g):
        conv = _by_op(g, "conv")
        conv.params["weight"] = np.zeros((4, 3, 3), np.int8)  # expects 3 input channels; the input has 2
        g.outputs.append("nowhere")
    msg = _edited(graph, edit)
    assert "node '0' (conv): input has 2 channels, weights expect 3" in msg
    assert "'nowhere' is never produced" in msg


@pytest.mark.parametrize("case", ["bits", "exp"])
def test_validate_pass_through_output_keeps_input_bits_and_exponent(case):
    g = _relu_graph()
    g.tensors["r"] = TensorSpec("r", (3, 5), 16 if case == "bits" else 8, 4 if case == "bits" else 5)
    with pytest.raises(npukit.NpukitError) as ei:
        g.validate()
    want = ("output 'r' is 16-bit but input 'input' is 8-bit" if case == "bits"
            else "output 'r' has exponent 5 but input 'input' has 4")
    assert f"node 'r' (relu): {want}" in str(ei.value)


def test_validate_mac_input_bits_and_requantisation(graph):
    msg = _edited(graph, lambda g: setattr(g.tensors["input"], "bits", 32))
    assert "node '0' (conv): input 'input' is 32-bit; conv reads at most 16-bit activations" in msg
    msg = _edited(graph, lambda g: setattr(g.tensors["0"], "bits", 16))  # the conv's act_max is int8's
    assert "node '0' (conv): stores act_max 127, but its tensors give act_max 32767" in msg
    msg = _edited(graph, lambda g: setattr(g.tensors[g.outputs[0]], "exp", g.tensors[g.outputs[0]].exp + 1))
    assert "node '5' (linear): wide output '5' has exponent" in msg


def _eltwise_graph(op: str, out_bits: int, out_exp: int) -> Graph:
    tensors = {"a": TensorSpec("a", (3, 5), 8, 4), "b": TensorSpec("b", (3, 5), 8, 6),
               "y": TensorSpec("y", (3, 5) if op == "add" else (6, 5), out_bits, out_exp)}
    node = Node("y", op, ["a", "b"], ["y"], {"relu": False} if op == "add" else {"axis": 0})
    return Graph({"rounding": "half_up"}, ["a", "b"], ["y"], tensors, [node])


def test_validate_add_and_concat_outputs():
    _eltwise_graph("add", 8, 4).validate()
    _eltwise_graph("concat", 8, 4).validate()
    for op in ("add", "concat"):
        with pytest.raises(npukit.NpukitError, match=rf"node 'y' \({op}\): output 'y' is 32-bit; {op} writes at most 16-bit"):
            _eltwise_graph(op, 32, 4).validate()
    with pytest.raises(npukit.NpukitError, match="node 'y' .concat.: output 'y' has exponent 5, above input 'a'"):
        _eltwise_graph("concat", 8, 5).validate()
    with pytest.raises(npukit.NpukitError, match=r"node 'y' \(concat\): output 'y' is 16-bit but input 'a' is 8-bit"):
        _eltwise_graph("concat", 16, 4).validate()


def test_validate_arity():
    g = _relu_graph(nodes=[Node("r", "relu", ["input", "input"], ["r"])])
    with pytest.raises(npukit.NpukitError, match=r"node 'r' \(relu\): reads 2 tensor\(s\) and writes 1; relu reads 1"):
        g.validate()
    g = _eltwise_graph("add", 8, 4)
    g.nodes[0].inputs = ["a"]
    with pytest.raises(npukit.NpukitError, match="add reads at least 2"):
        g.validate()


def test_validate_unknown_scheme_is_listed():
    g = _relu_graph(target={"rounding": "half_up", "scheme": "frob"})
    with pytest.raises(npukit.NpukitError, match="target: unknown requantisation scheme 'frob'"):
        g.validate()


# quantize_input refuses what integers cannot represent.


def test_quantize_input_refuses_nan_and_inf(graph, example):
    x = example.numpy().copy()
    x[1, 0, 3] = np.nan
    x[2, 1, 0] = np.inf
    x[5, 1, 7] = -np.inf
    with pytest.raises(npukit.NpukitError) as ei:
        graph.quantize_input(x)
    msg = str(ei.value)
    assert type(ei.value) is npukit.NpukitError
    assert f"3 of {x.size} values are NaN or infinite" in msg and "index [1, 0, 3]" in msg and "'input'" in msg
    with pytest.raises(npukit.NpukitError, match=r"1 of \d+ values are NaN or infinite \(the first at index \[0, 1, 2\]: inf\)"):
        x = example.clone()
        x[0, 1, 2] = float("inf")
        graph.quantize_input(x)  # a torch tensor as well
    with pytest.raises(npukit.NpukitError, match="cannot read the data as real numbers"):
        graph.quantize_input([["a", "b"]])
    assert graph.quantize_input(example).dtype == np.int8  # finite data still quantizes

"""ONNX export: onnxruntime reproduces the engine bit for bit; import restores the identical IR."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models_for_tests import npukit_error_of
from onnx import TensorProto, helper
from test_differential import TARGETS, nets, random_graph_and_inputs

import npukit


def _ort_run(path, graph, q):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {graph.inputs[0]: q})


def _assert_same_graph(a: npukit.Graph, b: npukit.Graph):
    assert a.target == b.target and a.inputs == b.inputs and a.outputs == b.outputs and a.tensors == b.tensors
    assert len(a.nodes) == len(b.nodes)
    for x, y in zip(a.nodes, b.nodes, strict=True):
        assert (x.name, x.op, x.inputs, x.outputs, x.attrs) == (y.name, y.op, y.inputs, y.outputs, y.attrs)
        assert x.params.keys() == y.params.keys()
        for k in x.params:
            assert x.params[k].dtype == y.params[k].dtype and np.array_equal(x.params[k], y.params[k])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=nets(), target=st.sampled_from(sorted(TARGETS)), seed=st.integers(0, 2**16))
def test_onnxruntime_matches_engine_and_import_round_trips(spec, target, seed, tmp_path):
    graph, q = random_graph_and_inputs(spec, target, seed)
    path = npukit.export_onnx(graph, tmp_path / "m.onnx")
    (got,) = _ort_run(path, graph, q)
    want = npukit.run(graph, q)[0]
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    _assert_same_graph(graph, npukit.load_onnx(path))


def test_export_is_standard_onnx_with_module_paths(tmp_path):
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2),
                          nn.Flatten(), nn.Linear(4 * 8, 3))
    graph = npukit.to_ir(npukit.prepare(model, torch.randn(8, 1, 16)))
    path = npukit.export_onnx(graph, tmp_path / "m.onnx")
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version >= 17
    assert {n.domain for n in m.graph.node} == {""}  # standard operators only
    prefixes = {n.name.split("/")[0] for n in m.graph.node}
    assert {"0", "3", "4", "5"} <= prefixes  # PyTorch module paths name the nodes
    assert not (tmp_path / "m.onnx.tmp").exists()


def _refused(path) -> str:
    """load_onnx's one error: an NpukitError (never another type), its message."""
    return npukit_error_of(lambda: npukit.load_onnx(path), f"load_onnx of {path}")


def _foreign(tmp_path, nodes, inits=()) -> str:
    g = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(inits))
    onnx.save(helper.make_model(g, producer_name="pytorch", producer_version="2.1"), tmp_path / "f.onnx")
    return _refused(tmp_path / "f.onnx")


def test_foreign_onnx_says_not_exported_by_npukit(tmp_path):
    msg = _foreign(tmp_path, [helper.make_node("Sigmoid", ["x"], ["a"], name="sig"),
                              helper.make_node("Tanh", ["a"], ["y"], name="tanh")])
    assert "was not exported by npukit" in msg and "pytorch 2.1" in msg
    assert "2 nodes: Sigmoid, Tanh" in msg and "exponents, bit widths" in msg
    assert "fix:" in msg and "npukit.export_onnx" in msg


def test_foreign_conv_model_is_not_called_unsupported(tmp_path):
    """Conv is an op npukit deploys: a float Conv model lacks the integer arithmetic, not op support."""
    w = onnx.numpy_helper.from_array(np.ones((1, 1, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w"], ["y"], name="c2")]
    msg = _foreign(tmp_path, nodes, [w])
    assert "unsupported" not in msg.lower()
    assert "3 nodes: Conv x2, Relu" in msg and "not exported by npukit" in msg


@pytest.mark.parametrize("content, says", [(b"", "is empty (0 bytes): not an ONNX file"),
                                           (b"not an onnx file at all", "is not an ONNX file"),
                                           (b"\x08\x07" * 50, "is not an ONNX file")])
def test_damaged_onnx_is_a_clear_error(tmp_path, content, says):
    (tmp_path / "bad.onnx").write_bytes(content)
    msg = _refused(tmp_path / "bad.onnx")
    assert says in msg and "bad.onnx" in msg and "\n" not in msg  # one line


def test_missing_file_and_folder(tmp_path):
    assert "no such file" in _refused(tmp_path / "nope.onnx")
    assert "is a folder" in _refused(tmp_path)


# ---------------------------------------------------------------------------------------------------
# A file edited after export: load_onnx compares the graph with the export of the IR in its metadata.
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2),
                          nn.Flatten(), nn.Linear(4 * 8, 3))
    graph = npukit.to_ir(npukit.prepare(model, torch.randn(8, 1, 16)))
    return graph, npukit.export_onnx(graph, tmp_path_factory.mktemp("onnx") / "m.onnx")


def _edit(path, tmp_path, edit):
    m = onnx.load(path)
    edit(m)
    out = tmp_path / "edited.onnx"
    onnx.save(m, out)
    return out


def _node(m, op_type, k=0):
    return [n for n in m.graph.node if n.op_type == op_type][k]


def _init(m, name):
    return next(t for t in m.graph.initializer if t.name == name)


def _set_init(m, name, value):
    _init(m, name).CopyFrom(onnx.numpy_helper.from_array(np.asarray(value), name))


def _edit_meta(edit):
    def apply(m):
        prop = next(p for p in m.metadata_props if p.key == "npukit.ir")
        meta = json.loads(prop.value)
        edit(meta)
        prop.value = json.dumps(meta)
    return apply


def _strides(m):
    n = _node(m, "Conv")
    next(a for a in n.attribute if a.name == "strides").ints[:] = [2]
    return n.name


def _clip_bound(m):
    n = _node(m, "Clip", 1)  # the conv's activation clip [0, 127]
    _set_init(m, n.input[2], 100.0)
    return n.name


def _floor_to_ceil(m):
    n = _node(m, "Floor")
    n.op_type = "Ceil"
    return n.name


def _delete_node(m):
    n = _node(m, "MaxPool")
    m.graph.node.remove(n)
    return n.name


def _rewire(m):
    n = _node(m, "Clip", 1)
    n.input[1], n.input[2] = n.input[2], n.input[1]
    return n.name


def _extra_node(m):
    m.graph.node.append(helper.make_node("Identity", [m.graph.node[-1].output[0]], ["spare"], name="added"))
    return "added"


def _weight(m):
    w = onnx.numpy_helper.to_array(_init(m, "npukit.params/0/weight")).copy()
    w.flat[0] += 1
    _set_init(m, "npukit.params/0/weight", w)
    return "0"


def _graph_output_type(m):
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    return "graph outputs"


@pytest.mark.parametrize("edit, says", [(_strides, "attribute 'strides' is [2] in the file but [1]"),
                                        (_clip_bound, "holds 100.0 in the file but 127.0 as exported"),
                                        (_floor_to_ceil, "it is Ceil in the file but Floor as exported"),
                                        (_delete_node, "is missing"),
                                        (_rewire, "inputs ["),
                                        (_extra_node, "(Identity) is not in the export"),
                                        (_weight, "'weight' parameter (initializer 'npukit.params/0/weight') "
                                                  "holds other values"),
                                        (_graph_output_type, "int64")])
def test_edited_graph_is_refused_naming_the_node(exported, tmp_path, edit, says):
    _, path = exported
    names = []
    msg = _refused(_edit(path, tmp_path, lambda m: names.append(edit(m))))
    assert "was edited after export" in msg and "fix:" in msg
    assert says in msg and f"{names[0]}" in msg, msg
    assert msg.count("First difference") == 1


def _meta_node(meta, op):
    return next(n for n in meta["nodes"] if n["op"] == op)


def _meta_tensor(meta, name):
    return next(t for t in meta["tensors"] if t["name"] == name)


def _short_bias(m):
    _set_init(m, "npukit.params/0/bias", onnx.numpy_helper.to_array(_init(m, "npukit.params/0/bias"))[:-1])


@pytest.mark.parametrize("edit, says", [
    # validate: the conv's requantisation no longer matches its tensors' bits and exponents
    (_edit_meta(lambda m: _meta_tensor(m, "0").update(bits=16)), "node '0' (conv): stores act_max 127"),
    (_edit_meta(lambda m: _meta_tensor(m, "0").update(exp=8)), "node '0' (conv): stores out_shift 7"),
    (_edit_meta(lambda m: _meta_tensor(m, "input").update(exp=5)), "node '0' (conv): stores bias_shift 0, out_shift 7"),
    # validate: a pass-through op's output must keep its input's width and exponent
    (_edit_meta(lambda m: _meta_tensor(m, "3").update(bits=16)), "node '3' (maxpool): output '3' is 16-bit"),
    (_edit_meta(lambda m: _meta_tensor(m, "3").update(exp=6)), "node '3' (maxpool): output '3' has exponent 6"),
    # validate: the op's own schema (OpDef.check_node)
    (_edit_meta(lambda m: _meta_node(m, "conv")["attrs"].pop("ndim")), "node '0' (conv): lacks attribute 'ndim'"),
    (_edit_meta(lambda m: _meta_node(m, "linear")["attrs"].pop("relu")), "node '5' (linear): lacks attribute 'relu'"),
    (_edit_meta(lambda m: _meta_node(m, "conv")["attrs"].update(groups=True)),
     "node '0' (conv): attribute 'groups' is bool, not int"),
    (_short_bias, "node '0' (conv): has weight shape (4, 1, 3) and bias shape (3,)"),
    # the comparison: metadata that validates but is not what the graph computes
    (_edit_meta(lambda m: _meta_node(m, "conv")["attrs"].update(rounding="floor")), "was edited after export"),
    (_edit_meta(lambda m: _meta_node(m, "maxpool")["attrs"].update(kernel=[3], stride=[3])), None),
])
def test_edited_metadata_is_refused_by_load_onnx(exported, tmp_path, edit, says):
    _, path = exported
    msg = _refused(_edit(path, tmp_path, edit))
    assert "m.onnx" in msg or "edited.onnx" in msg
    if says:
        assert says in msg, msg


def test_unedited_file_and_file_without_param_digests_load(exported, tmp_path):
    """Files written before the parameter digests (no npukit.params property) still load."""
    graph, path = exported
    _assert_same_graph(graph, npukit.load_onnx(path))

    def drop_digests(m):
        keep = [p for p in m.metadata_props if p.key != "npukit.params"]
        del m.metadata_props[:]
        m.metadata_props.extend(keep)
    _assert_same_graph(graph, npukit.load_onnx(_edit(path, tmp_path, drop_digests)))


def test_difference_in_a_file_from_another_npukit_version_says_so(exported, tmp_path):
    _, path = exported

    def edit(m):
        m.producer_version = "0.0.1"
        _strides(m)
    msg = _refused(_edit(path, tmp_path, edit))
    assert "edited after export (or it was exported by npukit 0.0.1, whose export differs" in msg
    assert f"npukit {npukit.__version__}" in msg and onnx.load(path).producer_version == npukit.__version__


@pytest.mark.parametrize(("bits", "target", "build", "shape"), [
    (16, "venus", lambda: nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 4, 3, groups=4),
                                        nn.Flatten(), nn.Linear(4 * 38, 3)), (1, 40)),
    (16, "venus", lambda: nn.Sequential(nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU(),
                                        nn.Conv2d(6, 6, 3, groups=2, dilation=2, padding=2)), (4, 9, 9)),
    (8, "venus", lambda: nn.Sequential(nn.Conv2d(128, 16, 3)), (128, 6, 6)),  # 128*9*128*127 > 2**24
    (8, "max78000", lambda: nn.Sequential(nn.Conv2d(128, 16, 3, padding=1)), (128, 6, 6)),
    (4, "max78000", lambda: nn.Sequential(nn.Conv1d(2, 4, 9, padding=4)), (2, 30)),
    (2, "max78000", lambda: nn.Sequential(nn.Conv1d(2, 4, 3)), (2, 30)),
])
def test_onnx_past_float32_partial_sums(tmp_path, bits, target, build, shape):
    """Every weight width the profiles allow exports and runs bit-exactly, with weights at the extremes of
    their range (partial sums past 2**24 take the gather + double MatMul form)."""
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv1d | nn.Conv2d):
                m.weight.copy_(torch.sign(torch.randn_like(m.weight)))  # every weight at +-max after quantization
    x = torch.randn(8, *shape) * 3
    g = npukit.to_ir(npukit.prepare(model, x, target=target, weight_bits=bits, rules="off"))
    npukit.export_onnx(g, tmp_path / "m.onnx")
    xi = g.quantize_input(x.numpy())
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {g.inputs[0]: xi})[0]
    assert np.array_equal(got, npukit.run(g, xi)[0])
    assert np.array_equal(npukit.run(npukit.load_onnx(tmp_path / "m.onnx"), xi)[0], got)

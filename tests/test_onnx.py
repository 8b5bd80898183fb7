"""ONNX export: onnxruntime reproduces the engine bit for bit; import restores the identical IR."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


def test_foreign_onnx_lists_every_node(tmp_path):
    nodes = [helper.make_node("Sigmoid", ["x"], ["a"], name="sig"), helper.make_node("Tanh", ["a"], ["y"], name="tanh")]
    g = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g), tmp_path / "f.onnx")
    with pytest.raises(npukit.NpukitError) as e:
        npukit.load_onnx(tmp_path / "f.onnx")
    assert "sig (Sigmoid)" in str(e.value) and "tanh (Tanh)" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all", b"\x08\x07" * 50])
def test_damaged_onnx_is_a_clear_error(tmp_path, content):
    (tmp_path / "bad.onnx").write_bytes(content)
    with pytest.raises(npukit.NpukitError):
        npukit.load_onnx(tmp_path / "bad.onnx")

"""The examples run end to end, as a user copies them: float (optionally constrained) -> QAT -> export -> pack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import npukit

EXAMPLES = Path(__file__).parents[1] / "examples"


def _run(script: str, *args) -> str:
    r = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def _check_outputs(out: Path, stdout: str, bits: dict[str, int] | None = None) -> None:
    assert "engine == QAT on every output: True" in stdout
    graph = npukit.load_model(out / "pack" / "model.bin")
    onnx_graph = npukit.load_model(out / "model.onnx")
    assert [n.name for n in graph.nodes] == [n.name for n in onnx_graph.nodes]
    assert all(np.array_equal(a.params[k], b.params[k]) for a, b in zip(graph.nodes, onnx_graph.nodes, strict=True)
               for k in a.params)
    assert (out / "pack" / "network.yaml").is_file() and (out / "pack" / "checkpoint.pth.tar").is_file()
    if bits:
        assert {n.name: n.attrs["w_bits"] for n in graph.nodes if "w_bits" in n.attrs} == bits


def test_policy_driven_kws_example(tmp_path):
    stdout = _run("kws_mnist1d.py", "--epochs", 3, "--qat-start", 2, "--out", tmp_path)
    assert " float " in stdout and " qat " in stdout  # both stages ran, switched by the policy
    _check_outputs(tmp_path, stdout, {"conv1": 8, "conv2": 4, "conv3": 4, "conv4": 2, "fc": 8})


def test_stepwise_digits_example(tmp_path):
    stdout = _run("digits_cnn.py", "--constrain", "--float-epochs", 2, "--qat-epochs", 1, "--out", tmp_path)
    _check_outputs(tmp_path, stdout)
    assert (tmp_path / "float.pt").is_file() and (tmp_path / "qat.pt").is_file()

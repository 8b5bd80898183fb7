"""Per-layer dumps from every backend and `npukit compare`: equal runs agree on every layer, a planted fault
is found in exactly its layer, with full dumps and with CRC-only ones."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import npukit
from npukit import dump as D
from npukit.cli import app
from npukit.models import mnist1d_cnn
from npukit.qat.dump import dump_qat

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    x = torch.randn(6, 1, 40)
    q = npukit.prepare(mnist1d_cnn(channels=8), x, "max78000")
    g = npukit.to_ir(q)
    path = tmp_path_factory.mktemp("dump") / "model.bin"
    npukit.pack(g, path)
    return q, g, path, x, g.quantize_input(x.numpy())


def _plant(tensor: str):
    """A patch of the generated model.c: one LSB more in one value of `tensor`, right after its kernel wrote it."""
    def patch(text: str) -> str:
        start = text.index(f'NPUKIT_DUMP_TENSOR("{tensor}"')
        line = text[start : text.index("\n", start)]
        pointer = line.split(", ")[1]
        return text.replace(line, f"{pointer}[3] += 1;\n    {line}")
    return patch


def test_every_backend_agrees_on_every_layer(model, tmp_path):
    q, g, path, x, xi = model
    ref = D.dump_engine(g, xi)
    dumps = [dump_qat(q, x), D.dump_onnx(g, xi), D.dump_modelbin(path, xi), D.dump_runtime(path, xi, tmp_path),
             D.dump_c(path, xi, tmp_path / "full"), D.dump_c(path, xi, tmp_path / "crc", crc_only=True)]
    assert ref.order == ["input", "conv1", "conv2", "pool2", "conv3", "pool3", "flatten", "fc"]
    for d in dumps:
        assert d.order == ref.order and D.compare(ref, d) is None, d.backend
    assert not dumps[-1].tensors and dumps[-2].tensors  # CRC-only vs full C dumps
    assert all(np.array_equal(ref.tensors[t], dumps[-2].tensors[t]) for t in ref.order)


@pytest.mark.parametrize("layer", ["conv2", "fc"])
def test_a_planted_lsb_in_one_c_kernel_is_found_in_that_layer(model, tmp_path, layer):
    _, g, path, _, xi = model
    ref = D.dump_engine(g, xi)
    full = D.compare(ref, D.dump_c(path, xi, tmp_path / "full", patch=_plant(layer)))
    assert full.tensor == layer and full.count == len(xi) and full.max_abs_diff == 1
    assert all(p[1:] == tuple(np.unravel_index(3, g.tensors[layer].shape)) for p in full.positions)
    assert all(vb - va == 1 or (va, vb) == (127, -128) for va, vb in full.values)
    producer = g.node(layer)
    assert set(full.inputs) == set(producer.inputs) and all(s.startswith("equal") for s in full.inputs.values())
    crc = D.compare(ref.crc_only(), D.dump_c(path, xi, tmp_path / "crc", crc_only=True, patch=_plant(layer)))
    assert crc.tensor == layer and crc.count is None and crc.samples == list(range(len(xi)))


def test_one_changed_weight_in_a_model_bin_is_found_in_its_layer(model, tmp_path):
    _, g, _, _, xi = model
    edited = copy.deepcopy(g)
    w = edited.node("conv3").params["weight"]
    w.flat[0] = w.flat[0] + 1 if w.flat[0] < 127 else w.flat[0] - 1
    npukit.pack(edited, tmp_path / "edited.bin")
    for run in (D.dump_modelbin(tmp_path / "edited.bin", xi), D.dump_runtime(tmp_path / "edited.bin", xi, tmp_path)):
        d = D.compare(D.dump_engine(g, xi), run)
        assert d is not None and d.tensor == "conv3" and list(d.inputs) == ["pool2"], run.backend
        assert d.inputs["pool2"].startswith("equal") and d.count and d.max_abs_diff >= 1


def test_firmware_crc_lines_load_as_a_dump(model, tmp_path):
    _, g, path, _, xi = model
    c = D.dump_c(path, xi, tmp_path / "c", crc_only=True, patch=_plant("conv1"))
    lines = ["boot ok", *(f"npukit-dump {s} {t} {int(c.crcs[t][s]):08x} 0" for s in range(len(xi)) for t in c.order)]
    (tmp_path / "serial.log").write_text("\n".join(lines) + "\n")
    serial = D.load_dump(tmp_path / "serial.log")
    assert serial.order == c.order and D.compare(D.dump_engine(g, xi), serial).tensor == "conv1"


def test_dump_files_round_trip(model, tmp_path):
    q, g, _, x, xi = model
    d = dump_qat(q, x)
    d.save(tmp_path / "qat.npz")
    back = D.load_dump(tmp_path / "qat.npz")
    assert back.order == d.order and back.backend == "qat" and D.compare(d, back) is None
    assert all(np.array_equal(back.tensors[t], d.tensors[t]) for t in d.order)
    assert back.layer_inputs == d.layer_inputs


def test_cli_compare_exit_codes_and_json(model, tmp_path, monkeypatch):
    _, g, path, x, xi = model
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", x.numpy())
    runner = CliRunner()
    r = runner.invoke(app, ["compare", "engine", "onnx", "--model", str(path), "--input", "x.npy"])
    assert r.exit_code == 0 and "agree on every layer" in r.output
    edited = copy.deepcopy(g)
    edited.node("conv1").params["bias"][0] += 5
    npukit.pack(edited, "edited.bin")
    r = runner.invoke(app, ["dump", "model.bin", "edited.bin", "--input", "x.npy", "-o", "edited.npz"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compare", "engine", "edited.npz", "--model", str(path), "--input", "x.npy", "--json"])
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert out["equal"] is False and out["difference"]["tensor"] == "conv1"
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    r = runner.invoke(app, ["compare", "junk.npz", "engine", "--model", str(path), "--input", "x.npy"])
    assert r.exit_code == 1 and "not a readable npukit dump" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["compare", "engine", "c"])
    assert r.exit_code == 1 and "needs --model and --input" in r.output

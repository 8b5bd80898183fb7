"""`npukit analyze` (where accuracy is lost) and `npukit eval` (every backend over a data set)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import npukit
from npukit.analysis_report import write as write_report
from npukit.cli import app
from npukit.data import mnist1d
from npukit.models import mnist1d_cnn
from npukit.qat.analyze import analyze, float_mode
from npukit.train import fit

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    d = mnist1d()
    model = fit(mnist1d_cnn(channels=16), d.x_train[:2000], d.y_train[:2000], epochs=4, lr=0.01)
    return model, d.x_train[:1024], d.x_test[:400], d.y_test[:400]


def _ptq(model, x_cal, target="venus"):
    q = npukit.prepare(model, torch.from_numpy(x_cal[:256]), target)
    return npukit.calibrate(q, [torch.from_numpy(x_cal)])


def test_float_mode_is_the_float_model(trained):
    model, x_cal, x, _ = trained
    q = _ptq(model, x_cal)
    with torch.no_grad(), float_mode(q):
        got = q.eval()(torch.from_numpy(x))
    want = model.eval()(torch.from_numpy(x)).detach()
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)  # BatchNorm folded, nothing else
    with torch.no_grad():  # and the quantized forward is back afterwards
        assert not torch.allclose(q(torch.from_numpy(x)).float(), want, atol=1e-4)


def test_a_forced_exponent_is_ranked_first_and_reported(trained, tmp_path):
    model, x_cal, x, y = trained
    healthy = analyze(_ptq(model, x_cal), x, y)
    assert not [s for s in healthy.suggestions if "saturate" in s]
    assert all(s.saturated < 0.01 for s in healthy.layers)
    bad = _ptq(model, x_cal)
    npukit.freeze_observers(bad)
    bad.conv2.out_exp.fill_(int(bad.conv2.out_exp) + 4)  # a grid 16x finer: most of conv2's range saturates
    a = analyze(bad, x, y)
    assert a.ranking[0] == "conv2" and a.quantized < healthy.quantized
    conv2 = next(s for s in a.layers if s.name == "conv2")
    assert conv2.saturated > 0.05 and conv2.sqnr_db < next(s for s in healthy.layers if s.name == "conv2").sqnr_db
    assert any(s.startswith("conv2:") and "saturate at exponent" in s for s in a.suggestions)
    paths = write_report(a, tmp_path / "report")
    assert set(paths) == {"json", "html", "bars", "hist", "weights"}
    for key in ("bars", "hist", "weights"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert paths[key].name in paths["html"].read_text()
    assert json.loads(paths["json"].read_text())["ranking"][0] == "conv2"


def test_without_labels_the_ranking_uses_output_sqnr(trained):
    model, x_cal, x, _ = trained
    bad = _ptq(model, x_cal, "max78000")
    npukit.freeze_observers(bad)
    bad.conv3.out_exp.fill_(int(bad.conv3.out_exp) + 4)
    a = analyze(bad, x)
    assert a.metric == "output SQNR dB" and a.ranking[0] == "conv3"


def test_cli_eval_and_analyze(trained, tmp_path, monkeypatch):
    model, x_cal, x, y = trained
    monkeypatch.chdir(tmp_path)
    q = _ptq(model, x_cal)
    npukit.pack(npukit.to_ir(q), "model.bin")
    np.savez("test.npz", x=x, y=y)
    runner = CliRunner()
    r = runner.invoke(app, ["eval", "model.bin", "--data", "test.npz", "--json"])
    assert r.exit_code == 0, r.output
    results = json.loads(r.output)
    assert [b["backend"] for b in results] == ["engine", "onnx", "model.bin", "c", "runtime"]
    assert all(b["agreement"] == 1.0 and b["accuracy"] == results[0]["accuracy"] for b in results)
    with torch.no_grad():
        assert results[0]["accuracy"] == pytest.approx(float((q.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean()))
    torch.save(model.state_dict(), "float.pt")
    (tmp_path / "net.py").write_text("from npukit.models import mnist1d_cnn\n\ndef Net():\n    return mnist1d_cnn(16)\n")
    r = runner.invoke(app, ["analyze", "net.py:Net", "--data", "test.npz", "--weights", "float.pt", "--json",
                            "--no-sensitivity"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [layer["name"] for layer in out["layers"]][:2] == ["npukit_input", "conv1"] and out["metric"] == "accuracy"
    r = runner.invoke(app, ["eval", "model.bin", "--data", "missing.npz"])
    assert r.exit_code == 1 and "no such file" in r.output
    r = runner.invoke(app, ["eval", "model.bin", "--data", "test.npz", "--backend", "tpu"])
    assert r.exit_code == 1 and "unknown backend" in r.output

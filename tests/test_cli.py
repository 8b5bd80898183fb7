"""The command line end to end: a short demo, then every command on what it left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from npukit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    res = runner.invoke(app, ["demo", "--out", str(out), "--json", str(out / "figures.json"),
                              "--float-epochs", "2", "--qat-epochs", "2"])
    assert res.exit_code == 0, res.output
    return out


def test_demo_figures_and_artefacts(demo_out):
    figures = json.loads((demo_out / "figures.json").read_text())
    for key in ("float_acc", "qat_acc", "engine_acc", "bitexact_fraction", "seconds", "onnx_bitexact_fraction",
                "bin_bitexact_fraction", "arena_bytes", "arena_lower_bound_bytes", "model_bin_bytes"):
        assert key in figures, key
    assert figures["bitexact_fraction"] == figures["onnx_bitexact_fraction"] == figures["bin_bitexact_fraction"] == 1.0
    assert figures["engine_acc"] > 0.5  # two epochs already learn something
    assert figures["arena_bytes"] == figures["arena_lower_bound_bytes"]
    for name in ("float.pt", "qat.pt", "model.npir", "model.onnx", "model.bin", "input.npy",
                 "report/report.md", "report/report.html", "report/arena.png"):
        assert (demo_out / name).is_file(), name


@pytest.mark.parametrize("model", ["model.bin", "model.onnx", "model.npir"])
def test_run_gives_the_same_integers_from_every_format(demo_out, model, tmp_path):
    res = runner.invoke(app, ["run", str(demo_out / model), str(demo_out / "input.npy"), "-o", str(tmp_path / "y.npy")])
    assert res.exit_code == 0, res.output
    ref = tmp_path / "ref.npy"
    runner.invoke(app, ["run", str(demo_out / "model.npir"), str(demo_out / "input.npy"), "-o", str(ref)])
    assert np.array_equal(np.load(tmp_path / "y.npy"), np.load(ref))


def test_inspect_export_pack(demo_out, tmp_path):
    res = runner.invoke(app, ["inspect", str(demo_out / "model.bin")])
    assert res.exit_code == 0 and "arena" in res.output and "conv2" in res.output, res.output
    res = runner.invoke(app, ["export", str(demo_out / "model.npir"), "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0 and (tmp_path / "m.onnx").is_file(), res.output
    res = runner.invoke(app, ["pack", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.bin"), "--report", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.bin").read_bytes() == (demo_out / "model.bin").read_bytes()  # packing is deterministic


def test_over_the_limit_names_layers_and_writes_no_bin(demo_out, tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text("name: tiny\nweight_bits: [8]\nwide_output: true\nmemory:\n"
                    "  - {name: sram, bytes: 1000, holds: [activations]}\n"
                    "  - {name: flash, bytes: 1000000, holds: [weights]}\n")
    res = runner.invoke(app, ["pack", str(demo_out / "model.onnx"), "-o", str(tmp_path / "m.bin"), "--target", str(tiny)])
    assert res.exit_code == 1
    assert "[memory-limit]" in res.output and "1560 bytes over" in res.output and "conv2" in res.output
    assert not (tmp_path / "m.bin").exists()


@pytest.mark.parametrize("args", [["run", "missing.npir", "x.npy", "-o", "y.npy"], ["inspect", "missing.bin"],
                                  ["pack", "missing.onnx"], ["export", "missing.npir", "-o", "m.onnx"]])
def test_bad_input_is_a_clear_error(args, tmp_path):
    res = runner.invoke(app, [a if a.startswith("-") or a in ("run", "inspect", "pack", "export") else str(tmp_path / a)
                              for a in args])
    assert res.exit_code == 1 and "error:" in res.output and "Traceback" not in res.output


def test_version_and_short_help():
    from npukit import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(app, ["-h"])
    assert res.exit_code == 0 and "Usage" in res.output and "check" in res.output


def test_demo_refuses_a_bad_target_or_folder_before_training(tmp_path):
    import time

    t = time.perf_counter()
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "o"), "--target", "venuss"])
    assert res.exit_code == 1 and "unknown target 'venuss'" in res.output
    assert not (tmp_path / "o" / "float.pt").exists() and time.perf_counter() - t < 20
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, ["demo", "--out", str(blocker / "sub")])
    assert res.exit_code == 1 and "cannot write to" in res.output and "Traceback" not in res.output


def test_run_writes_the_name_it_reports(demo_out, tmp_path):
    res = runner.invoke(app, ["run", str(demo_out / "model.bin"), str(demo_out / "input.npy"), "-o",
                              str(tmp_path / "outnoext")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "outnoext.npy").is_file() and "outnoext.npy" in res.output


def test_file_kind_comes_from_the_content(demo_out, tmp_path):
    import shutil

    shutil.copy(demo_out / "model.bin", tmp_path / "renamed.dat")
    res = runner.invoke(app, ["inspect", str(tmp_path / "renamed.dat")])
    assert res.exit_code == 0 and "model.bin format" in res.output, res.output
    shutil.copy(demo_out / "model.npir", tmp_path / "ir.bin")
    res = runner.invoke(app, ["export", str(tmp_path / "ir.bin"), "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    (tmp_path / "empty.onnx").write_bytes(b"")
    res = runner.invoke(app, ["run", str(tmp_path / "empty.onnx"), str(demo_out / "input.npy"), "-o",
                              str(tmp_path / "o.npy")])
    assert res.exit_code == 1 and "is empty (0 bytes)" in res.output
    res = runner.invoke(app, ["codegen", str(demo_out / "model.npir"), "-o", str(tmp_path / "c")])
    assert res.exit_code == 1 and "codegen reads a model.bin" in res.output and "npukit pack" in res.output
    assert not (tmp_path / "c").exists()


def test_pack_writes_no_model_bin_when_the_report_cannot_be_written(demo_out, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(app, ["pack", str(demo_out / "model.npir"), "-o", str(tmp_path / "m.bin"), "--report",
                              str(blocker / "report")])
    assert res.exit_code == 1 and "cannot write the report" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m.bin").exists()

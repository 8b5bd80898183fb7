"""Rules end to end: prepare's modes, pack recording its target, profiles without memories, the
`npukit check` command (forms of MODEL, exit codes, JSON, the verdict matrix) and profile errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn
import yaml
from typer.testing import CliRunner

import npukit
from npukit.cli import app
from npukit.modelbin import read
from npukit.models import mnist1d_cnn
from npukit.targets import Allowed

torch.set_num_threads(1)
runner = CliRunner()

NET_PY = '''
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, k=3, classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, k, padding=k // 2)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 8 * 8, classes)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x).relu()).flatten(1))
'''


@pytest.fixture(scope="module")
def venus_graph():
    torch.manual_seed(0)
    return npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(16, 1, 40)))


@pytest.fixture
def net_py(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


def _k5():
    return nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))


# --------------------------------------------------------------------------------------------------
# prepare


def test_prepare_refuses_rule_breaks_with_the_check_list():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(npukit.ProblemsError) as ei:
        npukit.prepare(_k5(), x, target="max78000")
    assert [p.rule for p in ei.value.problems] == [p.rule for p in npukit.check(_k5(), x, "max78000").errors]
    assert "conv.kernel" in str(ei.value) and "kernel 5 -> kernel 3 with padding 1" in str(ei.value)


def test_prepare_warn_and_off():
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match=r"conv\.kernel"):
        q = npukit.prepare(_k5(), x, target="max78000", rules="warn")
    assert q is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        npukit.prepare(_k5(), x, target="max78000", rules="off")
    with pytest.raises(npukit.NpukitError, match="rules="):
        npukit.prepare(_k5(), x, target="max78000", rules="maybe")


# --------------------------------------------------------------------------------------------------
# pack


def test_pack_records_the_profile_it_was_packed_for(venus_graph, tmp_path):
    r = npukit.pack(venus_graph, tmp_path / "m.bin", target="cortex-m4")
    packed = read(r.path)
    assert packed.graph.target["name"] == "cortex-m4"
    assert packed.target_id == npukit.load_target("cortex-m4").target_id != npukit.load_target("venus").target_id


def test_pack_refuses_another_arithmetic(venus_graph, tmp_path):
    with pytest.raises(npukit.NpukitError, match="arithmetic differs from max78000 in scheme"):
        npukit.pack(venus_graph, tmp_path / "m.bin", target="max78000")
    assert not (tmp_path / "m.bin").exists()


def test_a_bare_profile_claims_nothing(venus_graph, tmp_path):
    """`name: mcu` (everything else default) used to pack a venus model with int32 logits and say it fits."""
    mcu = tmp_path / "mcu.yaml"
    mcu.write_text("name: mcu\n")
    with pytest.raises(npukit.ProblemsError) as ei:
        npukit.pack(venus_graph, tmp_path / "m.bin", target=mcu, report_dir=tmp_path / "report")
    assert {p.rule for p in ei.value.problems} == {"bits.activations"}  # no wide output on mcu
    assert not (tmp_path / "m.bin").exists()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "bits.activations" in report and "Every rule" not in report

    mcu.write_text("name: mcu\nwide_output: true\n")
    r = npukit.pack(venus_graph, tmp_path / "m.bin", target=mcu, report_dir=tmp_path / "report")
    assert [w.rule for w in r.warnings] == ["memory-unknown"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Not verified" in report and "everything fits" not in report


def test_pack_cli_prints_warnings(venus_graph, tmp_path):
    venus_graph.save(tmp_path / "m.npir")
    mcu = tmp_path / "mcu.yaml"
    mcu.write_text("name: mcu\nwide_output: true\n")
    res = runner.invoke(app, ["pack", str(tmp_path / "m.npir"), "-o", str(tmp_path / "m.bin"), "--target", str(mcu)])
    assert res.exit_code == 0, res.output
    assert "memory-unknown" in res.output


# --------------------------------------------------------------------------------------------------
# npukit check


def test_check_cli_clean_model_prints_its_table(net_py):
    res = runner.invoke(app, ["check", f"{net_py}:Net", "--input", "1,3,16,16", "--target", "venus"])
    assert res.exit_code == 0, res.output
    assert "PASS on venus" in res.output and "conv" in res.output and "sram" in res.output


def test_check_cli_violation_exits_1_with_fixes(net_py):
    res = runner.invoke(app, ["check", f"{net_py}:Net", "--input", "1,3,16,16", "--target", "max78000",
                              "--kwargs", '{"k": 5}'])
    assert res.exit_code == 1, res.output
    assert "conv.kernel" in res.output and "fix:" in res.output and "net.py" in res.output  # the source line


def test_check_cli_matrix_and_json(net_py):
    res = runner.invoke(app, ["check", f"{net_py}:Net", "--input", "1,3,16,16", "--target", "all",
                              "--kwargs", '{"k": 5}'])
    assert res.exit_code == 1, res.output
    for name in npukit.builtin_targets():
        assert name in res.output
    assert "PASS" in res.output and "FAIL" in res.output  # 5x5 is fine on venus and the MCU, not on MAX7800x
    res = runner.invoke(app, ["check", f"{net_py}:Net", "--input", "1,3,16,16", "--target", "all",
                              "--format", "json", "--kwargs", '{"k": 5}'])
    data = json.loads(res.output)
    assert data["venus"]["ok"] and not data["max78000"]["ok"]
    assert {p["rule"] for p in data["max78000"]["problems"]} == {"conv.kernel"}


def test_check_cli_saved_model_and_npukit_files(tmp_path, venus_graph):
    torch.save(_k5(), tmp_path / "m.pt")
    res = runner.invoke(app, ["check", str(tmp_path / "m.pt"), "--input", "1,3,8,8", "--target", "max78002"])
    assert res.exit_code == 1 and "conv.kernel" in res.output, res.output
    venus_graph.save(tmp_path / "m.npir")
    res = runner.invoke(app, ["check", str(tmp_path / "m.npir")])  # its own target: venus
    assert res.exit_code == 0 and "PASS on venus" in res.output, res.output
    res = runner.invoke(app, ["check", str(tmp_path / "m.npir"), "--target", "max78000"])
    assert res.exit_code == 1 and "arithmetic" in res.output, res.output


@pytest.mark.parametrize(("args", "message"), [
    (["nosuch.py:Net", "--input", "1,3,8,8"], "no such file"),
    (["{net}:Nope", "--input", "1,3,8,8"], "defines no 'Nope'"),
    (["{net}:Net", "--input", "1,3,8,8", "--kwargs", "{bad"], "not valid JSON"),
    (["{net}:Net", "--input", "1,x,8"], "give the shape as numbers"),
    (["{net}:Net"], "needs an example input"),
    (["{net}:Net", "--input", "1,3,16,16", "--weight-bits", "4"], "not 4-bit"),
])
def test_check_cli_bad_input_is_one_line(net_py, args, message):
    res = runner.invoke(app, ["check", *[a.replace("{net}", str(net_py)) for a in args]])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output, res.output


# --------------------------------------------------------------------------------------------------
# profiles


def test_bad_profile_names_file_and_key(tmp_path):
    path = tmp_path / "chip.yaml"
    data = npukit.load_target("venus").model_dump()
    data["rules"]["conv"]["kernal"] = [3]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(npukit.NpukitError) as ei:
        npukit.load_target(path)
    assert str(path) in str(ei.value) and "rules.conv.kernal" in str(ei.value)
    data = npukit.load_target("venus").model_dump() | {"weight_bits": [3]}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(npukit.NpukitError, match=r"weight_bits: .*\[3\] unsupported"):
        npukit.load_target(path)


def test_targets_cli_lists_and_prints_valid_yaml():
    res = runner.invoke(app, ["targets"])
    assert res.exit_code == 0 and all(n in res.output for n in npukit.builtin_targets())
    for name in npukit.builtin_targets():
        res = runner.invoke(app, ["targets", name])
        assert res.exit_code == 0
        assert npukit.load_target(yaml.safe_load(res.output)) == npukit.load_target(name)


@pytest.mark.parametrize(("spec", "text", "yes", "no"), [
    ([1, 3], "1, 3", 3, 2), (5, "5", 5, 4), ({"min": 1, "max": 5}, "1..5", 5, 6),
    ({"max": 5}, "<= 5", -1, 6), ({"min": 2}, ">= 2", 99, 1),
])
def test_allowed_forms(spec, text, yes, no):
    a = Allowed.model_validate(spec)
    assert str(a) == text and a.allows(yes) and not a.allows(no)


@pytest.mark.parametrize("spec", [[], {"min": 3, "max": 1}, {"values": [1], "max": 3}, {}])
def test_allowed_refuses_nonsense(spec):
    with pytest.raises(Exception, match="allows nothing|exceeds|either|give values"):
        Allowed.model_validate(spec)

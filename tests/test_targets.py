"""Target profiles: built-ins, YAML files, dicts, and the errors a bad profile gives."""

from __future__ import annotations

import pytest
import yaml

import npukit
from npukit.targets import TargetProfile, builtin_targets, load_target


def test_builtin_targets_lists_venus():
    names = builtin_targets()
    assert "venus" in names
    assert names == sorted(names)
    for name in names:  # every built-in profile loads
        assert load_target(name).name == name


def test_load_venus():
    p = load_target("venus")
    assert isinstance(p, TargetProfile)
    assert p.name == "venus"
    assert p.activation_bits == 8
    assert p.weight_bits == [8, 16] and p.default_weight_bits == 8
    assert p.bias_bits == 32 and p.accumulator_bits == 32
    assert p.rounding == "half_up" and p.pool_rounding == "half_up"
    assert p.wide_output is True


def test_profile_passes_through_and_is_frozen():
    p = load_target("venus")
    assert load_target(p) is p
    with pytest.raises(Exception):  # noqa: B017  (pydantic's frozen-instance error)
        p.activation_bits = 4
    assert load_target("venus").activation_bits == 8


def test_unknown_target_lists_builtins():
    with pytest.raises(npukit.NpukitError) as ei:
        load_target("no_such_chip")
    msg = str(ei.value)
    assert "no_such_chip" in msg
    for name in builtin_targets():
        assert name in msg


def test_missing_yaml_path(tmp_path):
    with pytest.raises(npukit.NpukitError) as ei:
        load_target(tmp_path / "absent.yaml")
    assert "absent.yaml" in str(ei.value)


def _write(tmp_path, data, name="chip.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _venus_dict(**changes) -> dict:
    d = load_target("venus").model_dump()
    d.update(changes)
    return d


def test_yaml_profile_loads(tmp_path):
    path = _write(tmp_path, _venus_dict(name="mychip", rounding="half_even", activation_bits=6, weight_bits=[4, 8]))
    for spelled in (path, str(path)):
        p = load_target(spelled)
        assert (p.name, p.rounding, p.activation_bits, p.weight_bits) == ("mychip", "half_even", 6, [4, 8])
    yml = _write(tmp_path, _venus_dict(name="other"), name="other.yml")
    assert load_target(yml).name == "other"


@pytest.mark.parametrize(("field", "value"), [
    ("rounding", "banana"),
    ("pool_rounding", "up"),
    ("activation_bits", 99),
    ("accumulator_bits", 4),
    ("bias_bits", "wide"),
    ("weight_bits", [3]),
    ("weight_bits", []),
])
def test_yaml_bad_field_named(tmp_path, field, value):
    path = _write(tmp_path, _venus_dict(**{field: value}))
    with pytest.raises(npukit.NpukitError) as ei:
        load_target(path)
    msg = str(ei.value)
    assert field in msg
    assert str(path.resolve()) in msg or path.name in msg
    assert type(ei.value) is npukit.NpukitError


def test_yaml_unknown_key_named(tmp_path):
    path = _write(tmp_path, _venus_dict(frobnication_level=3))
    with pytest.raises(npukit.NpukitError) as ei:
        load_target(path)
    assert "frobnication_level" in str(ei.value)


def test_yaml_missing_name(tmp_path):
    d = _venus_dict()
    del d["name"]
    with pytest.raises(npukit.NpukitError, match="name"):
        load_target(_write(tmp_path, d))


def test_yaml_every_bad_field_reported(tmp_path):
    path = _write(tmp_path, _venus_dict(rounding="banana", activation_bits=99, surprise=True))
    with pytest.raises(npukit.NpukitError) as ei:
        load_target(path)
    msg = str(ei.value)
    assert "rounding" in msg and "activation_bits" in msg and "surprise" in msg


@pytest.mark.parametrize("text", ["name: [unclosed", "", "- just\n- a list\n", "42"])
def test_yaml_not_a_profile(tmp_path, text):
    with pytest.raises(npukit.NpukitError):
        load_target(_write(tmp_path, text))


def test_dict_profile():
    p = load_target({"name": "tiny", "rounding": "floor", "wide_output": False})
    assert p.name == "tiny" and p.rounding == "floor" and p.wide_output is False
    # defaults fill in the rest
    assert (p.activation_bits, p.weight_bits, p.bias_bits, p.accumulator_bits) == (8, [8], 32, 32)
    assert load_target(_venus_dict()) == load_target("venus")


def test_dict_profile_bad_field():
    with pytest.raises(npukit.NpukitError) as ei:
        load_target({"name": "tiny", "rounding": "banana", "extra_thing": 1})
    msg = str(ei.value)
    assert "rounding" in msg and "extra_thing" in msg and "<dict>" in msg


def test_dict_profile_drives_prepare():
    """A dict profile reaches the graph: its rounding and widths are what the IR records."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6, 3))
    target = {"name": "tiny", "rounding": "trunc", "pool_rounding": "floor", "activation_bits": 6}
    with pytest.warns(UserWarning, match="memory-unknown"):  # the profile declares no memories
        graph = npukit.to_ir(npukit.prepare(model, torch.randn(4, 1, 8), target=target))
    assert graph.rounding == "trunc" and graph.target["pool_rounding"] == "floor"
    assert graph.input_spec().bits == 6 and graph.output_spec().bits == 6  # no wide output on this target


def test_edited_yaml_is_reread(tmp_path):
    path = _write(tmp_path, _venus_dict(name="editable", activation_bits=8))
    assert load_target(path).activation_bits == 8
    _write(tmp_path, _venus_dict(name="editable", activation_bits=6))
    assert load_target(path).activation_bits == 6


def test_profile_op_names_are_the_op_set():
    from npukit.ops import OPS
    from npukit.targets import OP_NAMES

    assert list(OP_NAMES) == [op.name for op in OPS]


def test_load_target_of_a_wrong_type_is_one_clear_error():
    with pytest.raises(npukit.NpukitError, match="not NoneType"):
        load_target(None)

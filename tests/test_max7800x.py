"""MAX7800x deployment: hardware layers, the network description and checkpoint in the vendor's format,
their validator, and `pack -o DIR` end to end."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml
from models_for_tests import train_a_little
from zoo import BY_NAME

import npukit
from npukit import max7800x
from npukit.models import mnist1d_cnn

torch.set_num_threads(1)


class Net2d(nn.Module):
    """CHW first layer, 80 channels (two passes), max and average pooling fused, a 1x1 conv, flatten."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.p2 = nn.Conv2d(16, 32, 3, padding=1), nn.MaxPool2d(2)
        self.c3, self.p3 = nn.Conv2d(32, 80, 3, padding=1), nn.AvgPool2d(2)
        self.c4 = nn.Conv2d(80, 16, 1, bias=False)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(self.p2(x)))
        x = torch.relu(self.c4(self.p3(x)))
        return self.fc(x.flatten(1))


class Residual(nn.Module):
    """y + block(y) fused into the next conv (the skip is read by the block too: a passthrough copies it),
    then a chained add that is a layer of its own (a pool reads it)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c, self.d = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        y = torch.relu(self.a(x))
        u = torch.relu(self.c(y + torch.relu(self.b(y))))
        v = u + torch.relu(self.d(u))
        return self.fc(nn.functional.max_pool2d(v, 2).flatten(1))


class Upsampler(nn.Module):
    """A decoder's step: a conv, a ConvTranspose2d (3x3, stride 2, output padding 1: the chip's only form)
    doubling the feature map, with and without padding and bias, and a conv after it."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=0, output_padding=1, bias=False)
        self.c2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.relu(self.up1(torch.relu(self.c1(x))))
        return self.c2(torch.relu(self.up2(y)))


MODELS = {"demo": (mnist1d_cnn, (1, 40), 8), "net2d": (Net2d, (1, 28, 28), 8), "net2d-w4": (Net2d, (1, 28, 28), 4),
          "residual-w2": (Residual, (4, 8, 8), 2),
          "zoo-kws": (BY_NAME["kws_conv1d"].build, BY_NAME["kws_conv1d"].input_shape, 8),
          "zoo-cifar": (BY_NAME["cifar"].build, BY_NAME["cifar"].input_shape, 8),
          "conv-transpose": (Upsampler, (3, 6, 6), 8)}


def _graph(name: str):
    build, shape, bits = MODELS[name]
    torch.manual_seed(0)
    x = torch.randn(32, *shape)
    q = npukit.prepare(build(), x, target="max78000", weight_bits=bits)
    g = npukit.to_ir(train_a_little(q, x, 2, lr=0.01))  # weights and exponents off their initial values
    return g, g.quantize_input(x[:1].numpy())


@pytest.fixture(scope="module", params=list(MODELS))
def packed(request, tmp_path_factory):
    g, x = _graph(request.param)
    out = tmp_path_factory.mktemp(request.param)
    r = npukit.pack(g, out / "max", target="max78000", sample=x)
    return request.param, g, x, r


def test_pack_writes_the_vendor_files(packed):
    name, g, x, r = packed
    d = r.path.parent
    assert {p.name for p in d.iterdir()} >= {"model.bin", "network.yaml", "checkpoint.pth.tar", "sample_output.npy",
                                            "layers.md"}
    layer_rows = [ln for ln in (d / "layers.md").read_text().splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert len(layer_rows) == len(yaml.safe_load((d / "network.yaml").read_text())["layers"])
    assert np.array_equal(np.load(d / "sample_npukit.npy"), x[0].astype(np.int64))
    y = np.load(d / "sample_output.npy")
    assert y.ndim == 3  # (C, H, W) as the vendor's simulation lays it out
    assert np.array_equal(y.reshape(-1), npukit.run(g, x)[0][0].astype(np.int64).reshape(-1))
    desc = yaml.safe_load((d / "network.yaml").read_text())
    assert set(desc) == {"arch", "dataset", "layers"} and desc["arch"] == "max"
    for e in desc["layers"]:
        assert "pad" in e  # always written: a missing pad silently changes other layers' defaults
        assert ("max_pool" in e or "avg_pool" in e) == ("pool_stride" in e)  # the stride too: its default is 1


def test_checkpoint_is_the_vendor_format(packed):
    name, g, x, r = packed
    ck = torch.load(r.path.parent / "checkpoint.pth.tar", weights_only=True)
    assert set(ck) == {"state_dict", "arch", "epoch"}
    sd = ck["state_dict"]
    layers, _, _ = max7800x.plan_ai8x(g, npukit.load_target("max78000"))
    macs = [hl for hl in layers if hl.node is not None]
    assert [k for k in sd if k.endswith(".op.weight")] == [f"{hl.name}.op.weight" for hl in macs]  # layer order
    for hl in macs:
        n, q = hl.node, hl.node.attrs["w_bits"]
        assert np.array_equal(sd[f"{hl.name}.op.weight"].numpy(), n.params["weight"])
        assert int(sd[f"{hl.name}.weight_bits"][0]) == q
        s = int(sd[f"{hl.name}.output_shift"][0]) + 8 - q  # the total shift the tool computes
        assert s == 7 - n.attrs["out_shift"] and -15 <= s <= 15
        if n.params["bias"].any():
            stored = sd[f"{hl.name}.op.bias"].numpy()
            assert np.array_equal(np.floor(stored / 2 ** (q - 1)).astype(np.int64), n.params["bias"])
            assert n.params["bias"].min() >= -128 and n.params["bias"].max() <= 127
        else:
            assert f"{hl.name}.op.bias" not in sd


def test_processors_and_offsets(packed):
    name, g, x, r = packed
    profile = npukit.load_target("max78000")
    layers, placements, problems = max7800x.plan_ai8x(g, profile)
    assert not problems
    desc = yaml.safe_load((r.path.parent / "network.yaml").read_text())
    assert max7800x.validate(desc, max7800x._layer_shapes(g, layers), profile) == []
    first = desc["layers"][0]
    c_in = g.input_spec().shape[0]
    assert first["data_format"] == "CHW" and first["processors"] == sum(1 << 4 * i for i in range(c_in))
    for a, b in zip(desc["layers"], desc["layers"][1:], strict=False):
        if "in_sequences" not in b:
            assert b["processors"] == a["output_processors"]  # a layer reads where the one before wrote
            assert a["out_offset"] != b["out_offset"]


def test_multi_pass_layer():
    g, _ = _graph("net2d")
    layers, placements, _ = max7800x.plan_ai8x(g, npukit.load_target("max78000"))
    c4 = next(i for i, hl in enumerate(layers) if hl.node is not None and hl.node.name == "c4")
    assert placements[c4].passes == 2 and placements[c4].processors == (1 << 40) - 1  # 80 channels: 2 x 40


@pytest.mark.parametrize("mutation", ["offset onto input", "offset past instance", "processor dropped",
                                      "chw shared instance", "wrong in_offset", "layer missing", "gap dropped",
                                      "operand onto skip"])
def test_validator_catches_edits(mutation):
    g, _ = _graph("residual-w2" if mutation in ("gap dropped", "operand onto skip") else "net2d")
    profile = npukit.load_target("max78000")
    layers, placements, _ = max7800x.plan_ai8x(g, profile)
    desc = max7800x.network_description(g, layers, placements, arch="a", dataset="d")
    shapes = max7800x._layer_shapes(g, layers)
    bad = copy.deepcopy(desc)
    layers_d = bad["layers"]
    if mutation == "offset onto input":
        layers_d[1]["out_offset"] = layers_d[0]["out_offset"]  # layer 1's output onto the input it reads
    elif mutation == "offset past instance":
        layers_d[2]["out_offset"] = 0x7F00
    elif mutation == "processor dropped":
        layers_d[2]["processors"] = int(layers_d[2]["processors"]) & ~1
    elif mutation == "chw shared instance":
        layers_d[0]["processors"] = 0b11
    elif mutation == "wrong in_offset":
        layers_d[1]["in_offset"] = 0x0100
    elif mutation in ("gap dropped", "operand onto skip"):
        fused = next(e for e in layers_d if e.get("eltwise") and e["op"] != "none")
        writer = next(layers_d[j] for j in fused["in_sequences"] if layers_d[j]["op"] != "passthrough")
        if mutation == "gap dropped":  # its output now runs over the other operand's words
            del writer["write_gap"]
        else:  # onto the skip tensor that conv b still has to read
            skip = next(layers_d[j] for j in range(len(layers_d)) if layers_d[j]["name"] == "a")
            writer["out_offset"] = skip["out_offset"]
    else:
        del layers_d[3]
    found = max7800x.validate(bad, shapes, profile)
    assert found and all(p.rule.startswith("max7800x.") and p.fix for p in found), found
    assert max7800x.validate(desc, shapes, profile) == []


def test_residual_layout():
    """The adds' operands lie interleaved (write_gap 1, +4 bytes), written by their producers or by a
    passthrough copy; the first add is fused into conv c, the second is a layer of its own."""
    g, _ = _graph("residual-w2")
    layers, placements, problems = max7800x.plan_ai8x(g, npukit.load_target("max78000"))
    assert not problems
    desc = max7800x.network_description(g, layers, placements, arch="a", dataset="d")["layers"]
    by_name = {e["name"]: (i, e) for i, e in enumerate(desc)}
    i_c, c = by_name["c"]
    assert c["op"] == "conv2d" and c["eltwise"] == "add" and c["operands"] == 2
    writers = [desc[j] for j in c["in_sequences"]]
    assert sorted(int(w["out_offset"]) - int(c["in_offset"]) for w in writers) == [0, 4]
    assert all(w["write_gap"] == 1 for w in writers)
    assert any(w["op"] == "passthrough" for w in writers)  # y is read by conv b too: copied
    adds = [e for e in desc if e.get("eltwise") and e["op"] == "none"]
    assert len(adds) == 1 and len(adds[0]["in_sequences"]) == 2
    add = next(n for n in g.nodes if n.op == "add")
    assert len({g.tensors[t].exp for t in add.inputs}) == 1  # QAT tied them: the chip adds unshifted


def test_concat_is_refused_by_name(tmp_path):
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(4, 8, 1), nn.Conv2d(4, 8, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x).relu(), self.b(x).relu()], 1))

    torch.manual_seed(0)
    g = npukit.to_ir(npukit.prepare(Cat(), torch.randn(4, 4, 8, 8), target="max78000", rules="off"))
    with pytest.raises(npukit.ProblemsError, match=r"max7800x\.layers.*concatenation"):
        npukit.pack(g, tmp_path / "out", target="max78000")
    assert not (tmp_path / "out" / "network.yaml").exists()
    assert "max7800x.layers" in {p.rule for p in npukit.check(g).problems}  # check says so too


def test_vendor_shift_is_the_description_shift():
    g, _ = _graph("demo")
    for n in g.nodes:
        if n.op in ("conv", "linear"):
            q = n.attrs["w_bits"]
            assert max7800x.vendor_shift(n) + (8 - q) == 7 - n.attrs["out_shift"]


def test_max78002_keeps_adds_out_of_biased_convs():
    """The synthesis tool refuses an element-wise op in the layer of a conv with a bias on MAX78002."""
    torch.manual_seed(0)
    x = torch.randn(8, 4, 8, 8)
    for target, fused in (("max78000", True), ("max78002", False)):
        g = npukit.to_ir(npukit.prepare(Residual(), x, target=target))
        layers, _, problems = max7800x.plan_ai8x(g, npukit.load_target(target))
        assert not problems
        c = next(hl for hl in layers if hl.node is not None and hl.node.name == "c")
        assert c.eltwise is fused
        assert sum(hl.eltwise and hl.op == "none" for hl in layers) == (1 if fused else 2)


def _interpret(directory) -> np.ndarray:
    """Run the written network.yaml + checkpoint on the written sample, one hardware layer at a time, with
    the independent reference of shared/reference/max78000-arithmetic.md (tests/max78000_reference.py):
    weights matched to layers in checkpoint order, as the synthesis tool matches them."""
    from max78000_reference import hw_layer

    desc = yaml.safe_load((directory / "network.yaml").read_text())
    sd = torch.load(directory / "checkpoint.pth.tar", weights_only=True)["state_dict"]
    weights = iter([k[: -len(".op.weight")] for k in sd if k.endswith(".op.weight")])
    x = np.load(next(directory.glob("sample_*.npy")) if not (directory / "sample_npukit.npy").exists()
                else directory / "sample_npukit.npy")
    outs: dict[int, np.ndarray] = {-1: x}
    for i, e in enumerate(desc["layers"]):
        seq = e.get("in_sequences", [i - 1])
        seq = [seq] if isinstance(seq, int) else seq
        inp = np.concatenate([outs[j] for j in seq], axis=0)
        pool = {}
        for kind in ("max", "avg"):
            if f"{kind}_pool" in e:
                nd = inp.ndim - 1
                k, s = e[f"{kind}_pool"], e["pool_stride"]
                pool = {"pool": k if isinstance(k, list) else [k] * nd, "pool_kind": kind,
                        "pool_stride": s if isinstance(s, list) else [s] * nd}
        if e["op"] in ("none", "passthrough"):
            if e.get("eltwise"):  # a passthrough that adds: the operands' sum, clipped to int8
                parts = [hw_layer(p, op="none", **pool) for p in np.split(inp, e["operands"], axis=0)]
                outs[i] = np.clip(sum(parts), -128, 127)
            else:
                outs[i] = hw_layer(inp, op="none", **pool)
            continue
        name = next(weights)
        q = int(sd[f"{name}.weight_bits"][0])
        w = sd[f"{name}.op.weight"].numpy().astype(np.int64)
        b = sd.get(f"{name}.op.bias")
        bias = None if b is None else np.floor(b.numpy() / 2 ** (q - 1)).astype(np.int64)
        outs[i] = hw_layer(inp, op=e["op"], weight=w, bias_b=bias, weight_bits=q, output_shift=e["output_shift"],
                           activation=None if e["activate"] == "None" else e["activate"],
                           output_width=e.get("output_width", 8), pad=e["pad"], flatten=e.get("flatten", False),
                           eltwise=e.get("eltwise"), eltwise_operands=e.get("operands"), **pool)
    return outs[len(desc["layers"]) - 1]


def test_written_files_compute_the_engines_integers(packed):
    """What npukit writes, read as the documented chip arithmetic, gives npukit's engine output."""
    name, g, x, r = packed
    got = _interpret(r.path.parent)
    assert np.array_equal(got.reshape(-1), np.load(r.path.parent / "sample_output.npy").reshape(-1))


def test_vendor_files_read_back(packed):
    """import(export(graph)): the same integers from the engine, on the sample and on fresh inputs."""
    name, g, x, r = packed
    d = r.path.parent
    back = max7800x.load_ai8x(d / "network.yaml", d / "checkpoint.pth.tar", g.input_spec().shape)
    rng = np.random.default_rng(0)
    xs = np.concatenate([x, rng.integers(-128, 128, (4, *g.input_spec().shape)).astype(np.int8)])
    assert np.array_equal(npukit.run(back, xs)[0], npukit.run(g, xs)[0])
    macs = ("conv", "conv_transpose", "linear")
    assert sum(n.op in macs for n in back.nodes) == sum(n.op in macs for n in g.nodes)


@pytest.mark.parametrize(("edit", "message"), [
    ({"activate": "Sigmoid"}, "activation 'Sigmoid'"),
    ({"eltwise": "xor", "operands": 2, "in_sequences": [-1, -1]}, "element-wise add only"),
    ({"in_sequences": [5]}, "not run before"),
])
def test_import_refuses_by_name(tmp_path, edit, message):
    g, x = _graph("demo")
    r = npukit.pack(g, tmp_path / "d", target="max78000", sample=x)
    path = tmp_path / "d" / "network.yaml"
    desc = yaml.safe_load(path.read_text())
    desc["layers"][0].update(edit)
    path.write_text(yaml.safe_dump(desc))
    with pytest.raises(npukit.ProblemsError, match=message):
        max7800x.load_ai8x(path, r.path.parent / "checkpoint.pth.tar", g.input_spec().shape)


def test_cli_import_and_check_a_description(tmp_path):
    from typer.testing import CliRunner

    from npukit.cli import app

    runner = CliRunner()
    g, x = _graph("residual-w2")
    d = tmp_path / "out"
    npukit.pack(g, d, target="max78000", sample=x)
    res = runner.invoke(app, ["import-ai8x", str(d / "network.yaml"), str(d / "checkpoint.pth.tar"),
                              "--input", str(d / "sample_npukit.npy"), "-o", str(tmp_path / "m.npir")])
    assert res.exit_code == 0, res.output
    assert np.array_equal(npukit.run(npukit.load_ir(tmp_path / "m.npir"), x)[0], npukit.run(g, x)[0])
    res = runner.invoke(app, ["check", str(d / "network.yaml")])
    assert res.exit_code == 0 and "PASS on max78000" in res.output, res.output
    desc = yaml.safe_load((d / "network.yaml").read_text())
    desc["layers"][1]["processors"] = int(desc["layers"][1]["processors"]) >> 1  # a processor bit dropped
    (d / "network.yaml").write_text(yaml.safe_dump(desc))
    res = runner.invoke(app, ["check", str(d / "network.yaml")])
    assert res.exit_code == 1 and "max7800x.processors" in res.output, res.output

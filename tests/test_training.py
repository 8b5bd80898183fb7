"""Training workflows: policy, two-stage training, checkpoints across stages, exact resume, DDP under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import npukit
from npukit.errors import NpukitError
from npukit.models import mnist1d_cnn

torch.set_num_threads(1)
WORKER = Path(__file__).with_name("train_worker.py")
X = torch.randn(64, 1, 40, generator=torch.Generator().manual_seed(3))


def _trained_float(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = mnist1d_cnn(channels=8)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(X)  # BatchNorm statistics that are not the defaults
    return m.eval()


def _bits(qmodel) -> dict[str, int]:
    return {n.name: n.attrs["w_bits"] for n in npukit.to_ir(qmodel).nodes if "w_bits" in n.attrs}


# --- policy -----------------------------------------------------------------------------------------------------

def test_policy_yaml_loads(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("qat_start_epoch: 3\nlayers:\n  - {match: 'conv*', weight_bits: 4}\nfreeze_observers_epoch: 5\n"
                 "weight_exponent: quantile\nweight_quantile: 0.99\n")
    pol = npukit.load_policy(p)
    assert (pol.qat_start_epoch, pol.layer_bits(), pol.weight_exp_method()) == (3, {"conv*": 4}, 0.99)


@pytest.mark.parametrize("text, key", [
    ("qat_start_epoch: -1\n", "qat_start_epoch"),
    ("qat_start: 3\n", "qat_start"),
    ("layers:\n  - {match: 'fc', bits: 4}\n", "layers.0.bits"),
    ("weight_exponent: median\n", "weight_exponent"),
    ("qat_start_epoch: 5\nfreeze_observers_epoch: 2\n", "freeze_observers_epoch 2 comes before"),
])
def test_policy_errors_name_file_and_key(tmp_path, text, key):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(NpukitError) as e:
        npukit.load_policy(p)
    assert str(p) in str(e.value) and key in str(e.value)


def test_policy_bits_the_target_lacks_fail_before_training():
    with pytest.raises(NpukitError, match=r"'fc': 4-bit weights; venus computes 8/16"):
        npukit.TwoStage(mnist1d_cnn(channels=8), X, "venus", {"layers": [{"match": "fc", "weight_bits": 4}]})
    with pytest.raises(NpukitError, match=r"'conv9' matches no conv/linear layer; layers: conv1, conv2, conv3, fc"):
        npukit.TwoStage(mnist1d_cnn(channels=8), X, "max78000", {"layers": [{"match": "conv9", "weight_bits": 4}]})


def test_per_layer_bits_are_exact_through_the_engine():
    q = npukit.prepare(_trained_float(), X, "max78000", layer_bits={"conv[23]": 4, "fc": 2})
    assert _bits(q) == {"conv1": 8, "conv2": 4, "conv3": 4, "fc": 2}
    graph = npukit.to_ir(q)
    w = {n.name: n.params["weight"] for n in graph.nodes if n.op in ("conv", "linear")}
    assert np.abs(w["conv2"]).max() <= 8 and w["fc"].min() >= -2 and w["fc"].max() <= 1
    _assert_exact(q, graph)


def _assert_exact(qmodel, graph):
    with torch.no_grad():
        qmodel.eval()
        y_qat = qmodel(X).double().numpy()
    y_eng = graph.dequantize_output(npukit.run(graph, graph.quantize_input(X.numpy()))[0])
    np.testing.assert_array_equal(y_qat, y_eng)


def test_quantile_weight_exponent_clips_outliers_and_stays_exact():
    m = _trained_float()
    with torch.no_grad():
        m.conv2.weight[0, 0, 0] = 40 * m.conv2.weight.abs().max()  # one outlier
    w_exp = {}
    for method in ("max", 0.99):
        q = npukit.prepare(m, X, "venus", weight_exp=method)
        graph = npukit.to_ir(q)
        w_exp[method] = {n.name: n.attrs["w_exp"] for n in graph.nodes if "w_exp" in n.attrs}
        _assert_exact(q, graph)
        conv2 = next(n for n in graph.nodes if n.name == "conv2").params["weight"]
        if method != "max":  # the outlier saturates at the grid's end; the others got finer
            assert conv2[0, 0, 0] == 127
    assert w_exp[0.99]["conv2"] >= w_exp["max"]["conv2"] + 4
    with pytest.raises(NpukitError, match="weight_exp"):
        npukit.prepare(m, X, "venus", weight_exp=1.5)


# --- stage 1 ----------------------------------------------------------------------------------------------------

def test_constrain_clamps_layers_clips_weights_and_shares_parameters():
    m = _trained_float()
    with torch.no_grad():
        m.conv1.weight.mul_(50)  # weights beyond the range and large activations
    c = npukit.constrain(m, "max78000")
    assert list(c.state_dict()) == list(m.state_dict())  # checkpoints load into either
    seen = {}
    for name in ("relu1", "pool2", "pool3"):
        getattr(c, name).register_forward_hook(lambda mod, i, o, n=name: seen.__setitem__(n, o))
    c.train()
    out = c(X * 10)
    assert float(m.conv1.weight.detach().max()) <= 127 / 128 and float(m.conv1.weight.detach().min()) >= -1  # clipped in place
    assert all(float(v.detach().max()) <= 127 / 128 for k, v in seen.items() if k != "relu1")  # pooled, clamped
    assert float(out.detach().abs().max()) > 1  # the model's output is left alone
    assert npukit.constrain(m, "venus") is m  # free exponents: nothing to constrain


def test_two_stage_switches_rebinds_the_optimizer_and_freezes_observers():
    m = _trained_float()
    flow = npukit.TwoStage(m, X, "max78000", {"qat_start_epoch": 2, "freeze_observers_epoch": 3, "constrain": True,
                                              "layers": [{"match": "fc", "weight_bits": 4}]})
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
    stages, frozen = [], []
    for epoch in range(4):
        net = flow.model(epoch, opt)
        net.train()
        loss = F.cross_entropy(net(X), torch.arange(64) % 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        stages.append(flow.stage)
        frozen.append(bool(flow.qmodel.npukit_input.frozen) if flow.qmodel is not None else None)
    assert stages == ["constrained", "constrained", "qat", "qat"] and frozen == [None, None, False, True]
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in flow.qmodel.parameters()}
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 / 16)  # the scheduler went on
    graph = npukit.to_ir(flow.qmodel)
    assert _bits(flow.qmodel) == {"conv1": 8, "conv2": 8, "conv3": 8, "fc": 4}
    # stage 1's [-1, 127/128] clamp is exactly int8 at exponent 7 on the chip: QAT starts there
    assert min(graph.tensors[n].exp for n in ("conv1", "conv2", "conv3")) >= 7
    assert not [p for p in npukit.check(graph, target="max78000").problems if p.severity == "error"]


def test_two_flows_with_different_policies_share_a_process():
    a = npukit.TwoStage(_trained_float(0), X, "max78000", {"weight_bits": 2})
    b = npukit.TwoStage(_trained_float(1), X, "max78000", {"layers": [{"match": "conv*", "weight_bits": 4}]})
    qa, qb = a.model(0), b.model(0)
    assert set(_bits(qa).values()) == {2} and _bits(qb) == {"conv1": 4, "conv2": 4, "conv3": 4, "fc": 8}


# --- checkpoints ------------------------------------------------------------------------------------------------

def test_failed_load_leaves_the_model_untouched_and_names_every_difference(tmp_path):
    src = mnist1d_cnn(channels=16)
    path = npukit.save_checkpoint(src, tmp_path / "wide.pt")
    dst = mnist1d_cnn(channels=8)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(NpukitError) as e:
        npukit.load_checkpoint(dst, path)
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())
    msg = str(e.value)
    assert "nothing was loaded" in msg
    wide = src.state_dict()
    shaped = [k for k in before if before[k].shape != wide[k].shape]
    assert len(shaped) == 19 and all(f"{k}: checkpoint" in msg for k in shaped)  # all but fc.bias, counters


def test_stage_mismatch_says_the_likely_cause(tmp_path):
    m = _trained_float()
    q = npukit.prepare(m, X, "venus")
    qpath = npukit.save_checkpoint(q, tmp_path / "q.pt")
    fpath = npukit.save_checkpoint(m, tmp_path / "f.pt")
    with pytest.raises(NpukitError, match="this is a QAT checkpoint .* call npukit.prepare"):
        npukit.load_checkpoint(_trained_float(1), qpath)
    with pytest.raises(NpukitError, match="this is a float checkpoint"):
        npukit.load_checkpoint(q, fpath)


def test_rename_adapter_loads_old_key_names(tmp_path):
    m = _trained_float()
    old = {k.replace("conv", "c"): v for k, v in m.state_dict().items()}  # an older version's names
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(NpukitError, match="conv1.weight"):
        npukit.load_checkpoint(mnist1d_cnn(channels=8), tmp_path / "old.pt")
    fresh = mnist1d_cnn(channels=8)
    npukit.load_checkpoint(fresh, tmp_path / "old.pt", rename=lambda k: k.replace("c", "conv", 1) if k[0] == "c" else k)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in fresh.state_dict().items())
    torch.save({f"net.{k}": v for k, v in m.state_dict().items()}, tmp_path / "prefixed.pt")
    with pytest.raises(NpukitError, match="differ by a prefix"):
        npukit.load_checkpoint(mnist1d_cnn(channels=8), tmp_path / "prefixed.pt")
    npukit.load_checkpoint(fresh, tmp_path / "prefixed.pt", rename={"net.": ""})


def test_checkpoints_never_unpickle_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": Path("x")}, path)  # any non-tensor class needs full pickle
    with pytest.raises(NpukitError, match="not a readable checkpoint"):
        npukit.load_checkpoint(mnist1d_cnn(channels=8), path)


def test_bad_optimizer_state_rolls_the_model_back(tmp_path):
    m = _trained_float()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    path = npukit.save_checkpoint(m, tmp_path / "c.pt")  # no optimizer saved
    other = _trained_float(5)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(NpukitError, match="no optimizer state"):
        npukit.load_checkpoint(other, path, optimizer=opt)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


# --- resume after a kill, DDP under torchrun ----------------------------------------------------------------------

def _worker(*args, torchrun: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, *launcher, str(WORKER), *map(str, args)], capture_output=True, text=True,
                       timeout=300, env=env)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("kill_after", [0, 2])  # in stage 1 (float), in stage 2 (QAT)
def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path, kill_after):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    _worker("resume", whole, "--epochs", 4, "--qat-start", 2)
    killed = _worker("resume", cut, "--epochs", 4, "--qat-start", 2, "--kill-after", kill_after, check=False)
    assert killed.returncode == -9 and not (cut / "final.pt").exists()
    _worker("resume", cut, "--epochs", 4, "--qat-start", 2)
    a, b = torch.load(whole / "final.pt"), torch.load(cut / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_ranks_agree_and_match_one_process(tmp_path):
    runs = {name: tmp_path / name for name in ("ddp", "single", "ddp_float_first")}
    for p in runs.values():
        p.mkdir()
    _worker("ddp", runs["ddp"], "--epochs", 2, "--qat-start", 0, torchrun=2)
    _worker("ddp", runs["single"], "--epochs", 2, "--qat-start", 0)
    _worker("ddp", runs["ddp_float_first"], "--epochs", 2, "--qat-start", 1, torchrun=2)
    for run in ("ddp", "ddp_float_first"):  # identical exponents, integer weights and accuracy on both ranks
        r0, r1 = np.load(runs[run] / "rank0.npz"), np.load(runs[run] / "rank1.npz")
        assert sorted(r0.files) == sorted(r1.files) and all(np.array_equal(r0[k], r1[k]) for k in r0.files)
    assert not (runs["ddp"] / "rank1.npz").samefile(runs["ddp"] / "rank0.npz")
    # QAT from the start: 2 ranks x 16 samples = one process with the global batch of 32
    ddp, single = np.load(runs["ddp"] / "rank0.npz"), np.load(runs["single"] / "rank0.npz")
    assert all(np.array_equal(ddp[k], single[k]) for k in single.files)
    assert (runs["ddp"] / "ckpt.pt").exists()  # written once, by rank 0


# --- post-training quantization -----------------------------------------------------------------------------------

def _exps(qmodel) -> dict[str, int]:
    return {t.name: t.exp for t in npukit.to_ir(qmodel).tensors.values()}


def test_calibrate_minmax_takes_the_largest_value_of_all_batches():
    m = _trained_float()
    batches = [X[:32], X[32:] * 3]  # the second batch holds the largest input
    q = npukit.calibrate(npukit.prepare(m, X[:32], "venus"), batches, "minmax")
    assert _exps(q)["input"] == npukit.arith.fit_exponent(float((X[32:] * 3).abs().max()), 8)
    q.eval()
    npukit.calibrate(q, batches)
    assert not q.training


def test_percentile_and_mse_clip_an_outlier_that_minmax_keeps():
    m = _trained_float()
    tails = torch.rand(64, 1, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tails[5, 0, 7] = 2.2  # one value in 2,560: clipping it at 127/64 costs less than the coarser grid would
    exps = {meth: _exps(npukit.calibrate(npukit.prepare(m, X, "venus"), [tails], meth, percentile=99.0))["input"]
            for meth in ("minmax", "percentile", "mse")}
    assert exps["minmax"] == npukit.arith.fit_exponent(float(tails.abs().max()), 8)
    assert exps["percentile"] > exps["minmax"] and exps["mse"] > exps["minmax"]

    def input_error(e):  # what mse minimises, on all the values
        q = npukit.arith.saturate(npukit.arith.round_real(tails.double() * 2.0**e, "half_up"), -128, 127) * 2.0**-e
        return float(((q - tails.double()) ** 2).mean())

    assert input_error(exps["mse"]) <= min(input_error(e) for e in range(exps["minmax"], exps["minmax"] + 5))


def test_weight_mse_search_lowers_the_layer_error_and_stays_exact():
    m = _trained_float()
    with torch.no_grad():
        m.conv2.weight[0, 0, 0] = 3 * m.conv2.weight.abs().max()  # one outlier weight
    plain = npukit.calibrate(npukit.prepare(m, X, "max78000", weight_bits=4, weight_exp="max"), [X], "minmax")
    q = npukit.calibrate(npukit.prepare(m, X, "max78000", weight_bits=4, weight_exp="max"), [X], "minmax",
                         weights="mse")
    assert plain.conv2.w_exp_offset == 0 and q.conv2.w_exp_offset > 0
    seen = []
    hook = q.conv2.register_forward_pre_hook(lambda mod, args: seen.append(args[0][0].double()))
    _assert_exact(q, npukit.to_ir(q))
    hook.remove()

    def layer_error(offset):  # conv2's output error on its own inputs, with its weights at that offset
        q.conv2.w_exp_offset = offset
        qw, w_exp, *_ = q.conv2.int_params(0)
        with torch.no_grad():
            return float((q.conv2._mac(seen[0], qw.double() * 2.0**-w_exp - q.conv2.weight.double(), None) ** 2).mean())

    chosen = q.conv2.w_exp_offset
    assert layer_error(chosen) < layer_error(0)


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "kl"}, "method='kl'"), ({"weights": "l1"}, "weights='l1'"), ({"percentile": 20}, "percentile=20"),
])
def test_calibrate_rejects_unknown_options(kwargs, message):
    q = npukit.prepare(_trained_float(), X, "venus")
    with pytest.raises(NpukitError, match=message.replace("(", r"\(")):
        npukit.calibrate(q, [X], **kwargs)
    with pytest.raises(NpukitError, match="no batches"):
        npukit.calibrate(q, [])


def test_straight_through_gradient_is_zero_only_where_values_saturate():
    from npukit.qat.fakequant import quant_ste

    x = torch.tensor([-3.0, -0.2, 0.1, 0.9, 2.5], dtype=torch.float64, requires_grad=True)
    quant_ste(x, 6, 8, "half_up").sum().backward()  # grid [-2, 127/64]: -3 and 2.5 saturate
    assert x.grad.tolist() == [0.0, 64.0, 64.0, 64.0, 0.0]
    fits = torch.tensor([-1.5, 0.2, 1.9], dtype=torch.float64, requires_grad=True)
    with_mask = quant_ste(fits, 6, 8, "half_up")
    with_mask.sum().backward()
    g = fits.grad.clone()
    fits.grad = None
    without = quant_ste(fits, 6, 8, "half_up", clips=False)  # the promise holds: nothing saturates
    without.sum().backward()
    assert torch.equal(with_mask, without) and torch.equal(g, fits.grad) and g.tolist() == [64.0] * 3


def test_auto_weight_exponent_is_mse_below_8_bits_and_fits_the_weights_better():
    m = _trained_float()
    with torch.no_grad():  # bell-shaped, as trained weights are (the uniform init is the one case max is best)
        for conv in (m.conv2, m.conv3):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    q = npukit.prepare(m, X, "max78000", layer_bits={"conv2": 2, "conv3": 4})
    assert (q.conv1.weight_exp, q.conv2.weight_exp, q.conv3.weight_exp) == ("max", "mse", "mse")
    plain = npukit.prepare(m, X, "max78000", layer_bits={"conv2": 2, "conv3": 4}, weight_exp="max")
    for name in ("conv2", "conv3"):
        w = getattr(q, name).weight.detach().double()
        errs = {}
        for label, model in (("mse", q), ("max", plain)):
            qw, e, *_ = getattr(model, name).int_params(0)
            errs[label] = float(((qw.detach().double() * 2.0**-e - w) ** 2).mean())
        assert errs["mse"] < errs["max"], name  # 2- and 4-bit grids: clipping a few weights beats rounding the rest
    _assert_exact(q, npukit.to_ir(q))

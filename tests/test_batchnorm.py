"""A BatchNorm with no layer before it to fold into becomes a per-channel integer affine (a depthwise 1x1
conv): exact in every backend, and checked by each target's depthwise rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from models_for_tests import assert_backends_agree

import npukit

torch.set_num_threads(1)


def _input_bn() -> nn.Module:  # normalising the raw input, the first layer of many audio models
    return nn.Sequential(nn.BatchNorm1d(2), nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(40, 3))


def _bn_after_pool() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def _trained(model, x):
    torch.manual_seed(0)
    model.train()
    for _ in range(3):
        model(x * 3 + 1)  # statistics far from the defaults
    return model.eval()


@pytest.mark.parametrize("build, shape, bn_name", [(_input_bn, (16, 2, 10), "0"), (_bn_after_pool, (16, 2, 8, 8), "3")],
                         ids=["input-bn", "bn-after-pool"])
def test_standalone_batchnorm_is_exact_everywhere(build, shape, bn_name, tmp_path):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    model = _trained(build(), x)
    q = npukit.prepare(model, x, "cortex-m4")
    bn = npukit.to_ir(q).node(bn_name)
    channels = 2 if bn_name == "0" else 4
    assert bn.op == "conv" and bn.attrs["groups"] == channels and bn.params["weight"].shape[1:] == (1,) * (len(shape) - 1)
    assert_backends_agree(q, x, tmp_path)
    with torch.no_grad():  # and it computes what the float BatchNorm does, up to quantization
        assert torch.allclose(q.eval()(x).float(), model(x), atol=0.25)


def test_depthwise_rules_of_each_target():
    x = torch.randn(8, 2, 10)
    rules = {t: {p.rule for p in npukit.check(_trained(_input_bn(), x), x, target=t).problems if p.severity == "error"}
             for t in ("venus", "max78000", "max78002")}
    # the MAX78002 computes depthwise convs, but npukit's network.yaml writer does not write them yet
    assert rules == {"venus": set(), "max78000": {"conv.groups"}, "max78002": {"max7800x.layers"}}


def test_batchnorm_over_features_alone_is_refused_with_a_fix():
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(20), nn.Linear(20, 3))
    with pytest.raises(npukit.ProblemsError) as e:
        npukit.prepare(_trained(model, torch.randn(8, 2, 10)), torch.randn(8, 2, 10), "cortex-m4")
    assert "(batch, features)" in str(e.value) and "right after the Linear" in str(e.value)

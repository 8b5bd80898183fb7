"""Nearest upsampling by integer factors (npukit/ops/upsample.py): exact in every backend; other modes and
fractional factors are refused with a fix."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models_for_tests import assert_backends_agree

import npukit

torch.set_num_threads(1)


class Decoder2d(nn.Module):
    def __init__(self, scale=(2, 3), mode="nearest"):
        super().__init__()
        self.c, self.d = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
        self.scale, self.mode = scale, mode

    def forward(self, x):
        return self.d(F.interpolate(torch.relu(self.c(x)), scale_factor=self.scale, mode=self.mode))


def _encoder_decoder_1d() -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Upsample(scale_factor=2),
                         nn.Conv1d(4, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 3))


@pytest.mark.parametrize("build, shape, scale", [(_encoder_decoder_1d, (8, 1, 16), [2]),
                                                 (Decoder2d, (8, 2, 4, 5), [2, 3])], ids=["1d", "2d"])
def test_upsampling_is_exact_everywhere(build, shape, scale, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    q = npukit.prepare(build(), x, "cortex-m4")
    assert [n.attrs["scale"] for n in npukit.to_ir(q).nodes if n.op == "upsample"] == [scale]
    assert_backends_agree(q, x, tmp_path)


def test_other_modes_and_targets_are_refused():
    x = torch.randn(2, 2, 4, 4)
    with pytest.raises(npukit.ProblemsError, match="mode 'bilinear'"):
        npukit.prepare(Decoder2d(mode="bilinear"), x, "cortex-m4")
    with pytest.raises(npukit.ProblemsError, match="integer factors"):
        npukit.prepare(Decoder2d(scale=(1.5, 1.5)), x, "cortex-m4")
    assert "unsupported-op" in {p.rule for p in npukit.check(Decoder2d(), x, target="max78000").problems}
    assert not [p for p in npukit.check(Decoder2d(), x, target="venus").problems if p.severity == "error"]

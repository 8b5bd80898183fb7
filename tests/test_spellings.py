"""Spellings: ceil_mode pooling (no partial window: floor mode; a partial window: a pad node before a max
pool, a named problem for an average pool), one-sided padding as a pad node, and a clamp off the output grid
as a named warning."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from models_for_tests import assert_backends_agree

import npukit

torch.set_num_threads(1)



@pytest.mark.parametrize("pool, size, accepted", [(nn.MaxPool1d(2, ceil_mode=True), 20, True),
                                                  (nn.AvgPool1d(3, 3, ceil_mode=True), 18, True),
                                                  (nn.MaxPool1d(3, 2, ceil_mode=True), 20, True),  # a pad node
                                                  (nn.AvgPool1d(3, 2, ceil_mode=True), 20, False)])
def test_ceil_mode_pooling_where_it_adds_no_window(pool, size, accepted, tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.pool = nn.Conv1d(1, 4, 3, padding=1), pool
            self.fc = nn.Linear(4 * pool(torch.zeros(1, 4, size)).shape[-1], 2)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.c(x)), 1))

    x = torch.randn(8, 1, size)
    if accepted:
        assert_backends_agree(npukit.prepare(Net(), x, "cortex-m4"), x, tmp_path)
    else:
        with pytest.raises(npukit.ProblemsError, match="partial window"):
            npukit.prepare(Net(), x, "cortex-m4")


class Clamped(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.c, self.act, self.fc = nn.Conv1d(1, 4, 3), act, nn.Linear(24, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.act(self.c(x)), 1))


def test_clamp_bounds_off_the_grid_are_a_named_warning(tmp_path):
    x = torch.randn(8, 1, 8)
    with pytest.warns(UserWarning, match=r"clamp\.inexact") as seen:
        q = npukit.prepare(Clamped(nn.Hardtanh(-1.0, 0.3)), x, "cortex-m4")
    assert "0.3 -> " in str(seen[0].message)  # the nearest bounds on the grid, both ways
    assert_backends_agree(q, x, tmp_path)  # exact either way: the saturation is on the grid
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        npukit.prepare(Clamped(nn.ReLU6()), x, "cortex-m4")  # 6 = 3 * 2: on any grid that holds it


class Padded(nn.Module):
    """The one-sided paddings: F.pad, nn.ZeroPad2d, an even kernel with padding='same', ceil_mode's partial window."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, (2, 4), padding="same") if kind == "same" else nn.Conv2d(4, 4, 3)
        self.zero = nn.ZeroPad2d((0, 1, 2, 0))
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        with torch.no_grad():
            n = self._body(torch.zeros(1, 2, 8, 8)).numel()
        self.fc = nn.Linear(n, 3)

    def _body(self, x):
        y = torch.relu(self.c1(x))
        if self.kind == "F.pad":
            y = nn.functional.pad(y, (1, 0, 0, 2))
        elif self.kind == "ZeroPad2d":
            y = self.zero(y)
        elif self.kind == "ceil":
            y = self.pool(y)
        return self.c2(y)

    def forward(self, x):
        return self.fc(torch.flatten(self._body(x), 1))


@pytest.mark.parametrize("kind", ["F.pad", "ZeroPad2d", "same", "ceil"])
def test_one_sided_padding_is_a_pad_node(kind, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 2, 8, 8)
    model = Padded(kind)
    q = npukit.prepare(model, x, "cortex-m4")
    pads = [n for n in npukit.to_ir(q).nodes if n.op == "pad"]
    assert len(pads) == 1 and pads[0].attrs["value"] == (-128 if kind == "ceil" else 0)
    assert_backends_agree(q, x, tmp_path)


def test_a_chip_without_a_pad_names_it():
    x = torch.randn(8, 2, 8, 8)
    found = [p for p in npukit.check(Padded("same"), x, target="venus").problems if p.severity == "error"]
    assert any("pad" in p.message for p in found), found

"""Spellings: ceil_mode pooling where it adds no partial window is the floor-mode pooling (where it adds one,
a named problem); a clamp off the output grid is a named warning."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from models_for_tests import assert_backends_agree

import npukit

torch.set_num_threads(1)



@pytest.mark.parametrize("pool, size, accepted", [(nn.MaxPool1d(2, ceil_mode=True), 20, True),
                                                  (nn.AvgPool1d(3, 3, ceil_mode=True), 18, True),
                                                  (nn.MaxPool1d(3, 2, ceil_mode=True), 20, False)])
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

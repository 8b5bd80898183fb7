"""Pooling spellings: ceil_mode where it adds no partial window is the floor-mode pooling; where it adds one,
a named problem."""

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

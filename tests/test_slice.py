"""The parts of torch.split / torch.chunk (npukit/ops/slice.py): exact in every backend, with a gated
linear unit (a * sigmoid(b) of the two halves) and a three-way split joined again by torch.cat."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from models_for_tests import assert_backends_agree

import npukit

torch.set_num_threads(1)


class GLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv1d(1, 8, 3, padding=1), nn.Conv1d(4, 2, 1)

    def forward(self, x):
        a, b = torch.chunk(self.c(x), 2, dim=1)
        return self.d(a * torch.sigmoid(b))


class ThreeWay(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(2, 7, 3, padding=1), nn.Conv2d(7, 3, 1)

    def forward(self, x):
        a, b, c = self.c(x).split([2, 4, 1], dim=-3)
        return self.d(torch.cat([torch.relu(c), b, a], dim=1))


@pytest.mark.parametrize("build, shape, parts", [(GLU, (8, 1, 12), [(0, 4), (4, 8)]),
                                                 (ThreeWay, (8, 2, 5, 5), [(0, 2), (2, 6), (6, 7)])],
                         ids=["glu-chunk", "three-way-split"])
def test_split_parts_are_exact_everywhere(build, shape, parts, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    q = npukit.prepare(build(), x, "cortex-m4")
    got = [(n.attrs["start"], n.attrs["stop"]) for n in npukit.to_ir(q).nodes if n.op == "slice"]
    assert sorted(got) == parts
    assert_backends_agree(q, x, tmp_path)


def test_a_split_along_the_batch_is_refused():
    class BatchSplit(nn.Module):
        def forward(self, x):
            a, b = torch.chunk(x, 2, dim=0)
            return a + b

    with pytest.raises(npukit.ProblemsError, match="batch dimension"):
        npukit.prepare(BatchSplit(), torch.randn(4, 3, 8), "cortex-m4")
    assert "unsupported-op" in {p.rule for p in npukit.check(GLU(), torch.randn(2, 1, 12), target="max78000").problems}

"""Models and exact references shared by several test files."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn as nn

# Low-bit weights, a narrow accumulator and a 16-bit bias: exercises sub-byte packing everywhere.
LOWBIT = {"name": "lowbit", "weight_bits": [4, 2, 8], "bias_bits": 16, "accumulator_bits": 24}


class Branchy(nn.Module):
    """Conv2d+BN+ReLU, grouped conv, add+ReLU, AvgPool2d, concat, global mean, linear: every 2-d op."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = nn.AvgPool2d(2)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        a = torch.relu(self.bn1(self.c1(x)))
        p = self.pool(torch.relu(a + self.c2(a)))
        return self.fc(torch.cat([p, self.c3(p)], dim=1).mean(dim=(2, 3)))


def ref_round(v: Fraction, mode: str) -> int:
    """Round an exact rational by `mode` (the contract's rounding modes, computed without floats)."""
    if mode == "floor":
        return math.floor(v)
    if mode == "trunc":
        return math.trunc(v)
    if mode == "half_up":
        return math.floor(v + Fraction(1, 2))
    if mode == "half_even":
        return round(v)  # Fraction rounds half to even
    raise ValueError(mode)


def npukit_error_of(call, what: str) -> str:
    """The message of the one NpukitError `call()` raises (exactly that type, never another exception)."""
    import pytest

    import npukit

    try:
        call()
    except npukit.NpukitError as e:
        assert type(e) is npukit.NpukitError
        return str(e)
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{what} raised {type(e).__name__}: {e} (expected NpukitError)")
    pytest.fail(f"{what} accepted it")


def train_a_little(qmodel, x, steps: int, lr: float = 0.05):
    """A few SGD steps on a QAT model (weights and exponents move off their initial values); eval mode after."""
    import torch

    qmodel.train()
    opt = torch.optim.SGD(qmodel.parameters(), lr=lr)
    for _ in range(steps):
        loss = qmodel(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return qmodel.eval()


def assert_backends_agree(qmodel, x, workdir) -> None:
    """QAT eval, onnxruntime, model.bin, the generated C and the C runtime give the engine's integers for
    every tensor of `qmodel` (prepared) on the float batch `x`."""
    import npukit
    from npukit import dump as D
    from npukit.qat.dump import dump_qat

    graph = npukit.to_ir(qmodel)
    path = npukit.pack(graph, workdir / "model.bin").path
    xi = graph.quantize_input(x.numpy())
    ref = D.dump_engine(graph, xi)
    for d in (dump_qat(qmodel, x), D.dump_onnx(graph, xi), D.dump_modelbin(path, xi), D.dump_c(path, xi, workdir),
              D.dump_runtime(path, xi, workdir)):
        diff = D.compare(ref, d)
        assert diff is None, diff.describe()

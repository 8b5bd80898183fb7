"""Element-wise multiply (npukit/ops/mul.py): squeeze-excite gates exact in QAT, engine, ONNX, model.bin,
generated C and the C runtime; the target rules and the spellings it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from models_for_tests import assert_backends_agree

import npukit

torch.set_num_threads(1)


class SqueezeExcite(nn.Module):
    """conv -> BN -> ReLU, then y * sigmoid(fc2(relu(fc1(mean(y))))) per channel, then a classifier."""

    def __init__(self, c: int = 8, gate=torch.sigmoid):
        super().__init__()
        self.conv, self.bn = nn.Conv1d(1, c, 3, padding=1), nn.BatchNorm1d(c)
        self.pool, self.fc1, self.fc2 = nn.AdaptiveAvgPool1d(1), nn.Linear(c, 4), nn.Linear(4, c)
        self.head = nn.Linear(c * 16, 3)
        self.gate = gate

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        s = self.gate(self.fc2(torch.relu(self.fc1(self.pool(y).flatten(1)))))
        return self.head((y * s.view(-1, y.shape[1], 1)).flatten(1))


class SameShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(2, 4, 3, padding=1), nn.Conv1d(2, 4, 3, padding=1)

    def forward(self, x):
        return torch.relu(torch.mul(self.a(x), torch.tanh(self.b(x))))


X = torch.randn(16, 1, 16, generator=torch.Generator().manual_seed(0))


def _trained(model, x):
    torch.manual_seed(0)
    model.train()
    model(x)  # BatchNorm statistics
    return model.eval()


@pytest.mark.parametrize("model, x, target", [(SqueezeExcite, X, "venus"), (SqueezeExcite, X, "cortex-m4"),
                                              (SameShape, torch.randn(16, 2, 10), "cortex-m4")],
                         ids=["se-venus", "se-cortex-m4", "same-shape-relu"])
def test_every_backend_agrees(model, x, target, tmp_path):
    torch.manual_seed(0)
    q = npukit.prepare(_trained(model(), x), x, target)
    assert "mul" in [n.op for n in npukit.to_ir(q).nodes]
    assert_backends_agree(q, x, tmp_path)


def test_the_gated_model_trains(tmp_path):
    torch.manual_seed(0)
    y = torch.randint(0, 3, (16,))
    q = npukit.prepare(_trained(SqueezeExcite(), X), X, "venus")
    opt = torch.optim.Adam(q.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        q.train()
        loss = nn.functional.cross_entropy(q(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert float(q.fc1.weight.grad.abs().sum()) > 0  # the gate's branch learns through the multiply


def test_rules_and_refusals():
    assert not [p for p in npukit.check(_trained(SqueezeExcite(), X), X, target="venus").problems
                if p.severity == "error"]
    rules = {p.rule for p in npukit.check(_trained(SqueezeExcite(), X), X, target="max78000").problems}
    assert "unsupported-op" in rules  # the MAX7800x has no multiply (nor sigmoid)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(1, 2, 3)

        def forward(self, x):
            return self.c(x) * 0.5

    class Crossed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv1d(1, 4, 1), nn.Conv1d(1, 1, 1)

        def forward(self, x):  # (4, L) * (1, L): size 1 in a leading dimension, not a trailing one
            return self.a(x) * self.b(x)

    with pytest.raises(npukit.ProblemsError) as e:
        npukit.prepare(Scaled(), torch.randn(2, 1, 8), "cortex-m4")
    assert "constant" in str(e.value) and "fold" in str(e.value)
    with pytest.raises(npukit.ProblemsError) as e:
        npukit.prepare(Crossed(), torch.randn(2, 1, 8), "cortex-m4")
    assert "trailing" in str(e.value)

"""The op-coverage model zoo: blocks written the way users write them, each prepared for a real target,
trained briefly and bit-exact through every stage (QAT eval, engine, onnxruntime, model.bin, generated C,
C runtime)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models_for_tests import assert_backends_agree

import npukit

torch.set_num_threads(1)


class Inception(nn.Module):
    """Four branches (1x1, 'same' 3x3, 'same' 5x5, padded 3x3 max pool then 1x1), concatenated."""

    def __init__(self, c=4):
        super().__init__()
        self.b1 = nn.Conv2d(c, 4, 1)
        self.b3 = nn.Sequential(nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding="same"))
        self.b5 = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 5, padding="same"))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, 4, 1))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = torch.cat([F.relu(self.b1(x)), F.relu(self.b3(x)), F.relu(self.b5(x)), F.relu(self.pool(x))], 1)
        return self.head(y.mean((2, 3)))


class InvertedResidual(nn.Module):
    """MobileNetV2: expand 1x1, depthwise 3x3, project 1x1, each BN; ReLU6; a residual."""

    def __init__(self, c=4, t=3):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, c * t, 1, bias=False), nn.BatchNorm2d(c * t), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(c * t, c * t, 3, padding=1, groups=c * t, bias=False),
                                nn.BatchNorm2d(c * t), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(c * t, c, 1, bias=False), nn.BatchNorm2d(c))
        self.head = nn.Linear(c * 36, 5)

    def forward(self, x):
        return self.head(torch.flatten(x + self.project(self.dw(self.expand(x))), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.conv = nn.Conv2d(4, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(c, 2, 1), nn.Conv2d(2, c, 1)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        y = F.relu(self.conv(x))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.head((y * gate).mean((2, 3)))


class GRUKeywords(nn.Module):
    """Keyword spotting the venus way: a conv front end over MFCC frames, a GRU over time, a classifier."""

    def __init__(self):
        super().__init__()
        self.front = nn.Conv1d(10, 12, 3, padding=1)
        self.gru = nn.GRU(12, 16, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):  # (batch, 10 coefficients, 8 frames)
        y = F.relu(self.front(x)).transpose(1, 2)  # (batch, frames, channels)
        _, h = self.gru(y.contiguous())
        return self.head(h[-1])


class TwoHeads(nn.Module):
    """A shared trunk with a class head and a regression head."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2))
        self.cls, self.reg = nn.Linear(8 * 8, 4), nn.Linear(8 * 8, 1)

    def forward(self, x):
        h = torch.flatten(self.trunk(x), 1)
        return self.cls(h), self.reg(h)


class Wide16(nn.Module):
    """A plain conv net for venus's 16-bit weights."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(1, 8, 5, padding=2), nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 16, 4)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.c2(F.relu(self.c1(x)))), 1))


ZOO = {
    "inception": (Inception, (4, 6, 6), "venus", {}),
    "mobilenetv2": (InvertedResidual, (4, 6, 6), "cortex-m4", {}),  # venus has no ReLU6 (its rules say so)
    "squeeze-excite": (SqueezeExcite, (4, 6, 6), "venus", {}),
    "gru-kws": (GRUKeywords, (10, 8), "venus", {}),
    "two-outputs": (TwoHeads, (1, 16), "venus", {}),
    "venus-16-bit": (Wide16, (1, 16), "venus", {"weight_bits": 16}),
}


def _loss(out, y):
    outs = out if isinstance(out, tuple) else (out,)
    return sum(F.cross_entropy(o, y) if o.shape[1] > 1 else o.square().mean() for o in outs)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_trains_and_is_exact_everywhere(name, tmp_path):
    cls, shape, target, kw = ZOO[name]
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = cls()
    x, y = torch.randn(48, *shape, generator=gen), torch.randint(0, 4, (48,), generator=gen)
    for m in model.modules():  # BN statistics as a trained float model would have them
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.running_mean.uniform_(-0.3, 0.3, generator=gen)
    q = npukit.prepare(model, x, target, **kw)
    opt = torch.optim.Adam(q.parameters(), 3e-3)
    losses = []
    for _ in range(12):
        loss = _loss(q(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert min(losses[-3:]) < losses[0], f"{name}: QAT did not learn ({losses[0]:.3f} -> {losses[-1]:.3f})"
    q.eval()
    assert_backends_agree(q, x[:8], tmp_path)
    graph = npukit.to_ir(q)
    assert len(graph.outputs) == (2 if name == "two-outputs" else 1)
    if "weight_bits" in kw:
        assert {n.attrs["w_bits"] for n in graph.nodes if n.op in ("conv", "linear")} == {kw["weight_bits"]}

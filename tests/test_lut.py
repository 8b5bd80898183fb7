"""Element-wise functions by lookup table (npukit/ops/lut.py): exact in QAT, engine, ONNX, model.bin and C,
and checked against each target's rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models_for_tests import assert_backends_agree

import npukit
from npukit import arith
from npukit.errors import NpukitError
from npukit.ops.lut import lut_table

torch.set_num_threads(1)


class Gate(nn.Module):
    """conv -> function -> conv, and a squeeze-excite style gate: x * sigmoid(...) is not here (no mul yet)."""

    def __init__(self, act, functional=None):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(1, 8, 3, padding=1), nn.Conv1d(8, 4, 3, padding=1)
        self.act, self.functional = act, functional

    def forward(self, x):
        y = self.c1(x)
        y = self.functional(y) if self.functional is not None else self.act(y)
        return self.c2(y)


MODULES = [nn.Sigmoid(), nn.Tanh(), nn.Hardswish(), nn.Hardsigmoid(), nn.SiLU(), nn.GELU(), nn.GELU("tanh"),
           nn.LeakyReLU(0.2), nn.ELU(0.5)]
X = torch.randn(24, 1, 20, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("act", MODULES, ids=lambda m: repr(m))
def test_every_backend_computes_the_same_table(act, tmp_path):
    torch.manual_seed(0)
    q = npukit.prepare(Gate(act), X, "cortex-m4")
    assert_backends_agree(q, X, tmp_path)
    lut = next(n for n in npukit.to_ir(q).nodes if n.op == "lut")
    assert lut.params["table"].shape == (256,) and len(np.unique(lut.params["table"])) > 16  # not degenerate


@pytest.mark.parametrize("fn, spelled", [
    ("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("silu", F.silu), ("hardswish", F.hardswish),
    ("leaky_relu:0.3", lambda y: F.leaky_relu(y, 0.3)), ("gelu_tanh", lambda y: F.gelu(y, approximate="tanh")),
    ("sigmoid", lambda y: y.sigmoid()), ("exp", torch.exp), ("exp", lambda y: y.exp()),
])
def test_functional_spellings(fn, spelled):
    q = npukit.prepare(Gate(None, spelled), X, "cortex-m4")
    assert [n.attrs["fn"] for n in npukit.to_ir(q).nodes if n.op == "lut"] == [fn]


def test_the_table_is_the_function_on_the_grid():
    t = lut_table("sigmoid", 8, 4, 8, 7, "half_up")  # inputs step 1/16, outputs step 1/128
    assert t.dtype == np.int8 and t.shape == (256,)
    x = (np.arange(256) - 128) / 16.0
    want = arith.quantize(1 / (1 + np.exp(-x)), 7, 8, "half_up")
    np.testing.assert_array_equal(t, want)
    assert t[128] == 64 and np.all(np.diff(t.astype(int)) >= 0)  # sigmoid(0) = 0.5; monotone
    assert lut_table("tanh", 8, 5, 8, 7, "half_up").min() == -128  # saturated at the grid's end
    with pytest.raises(NpukitError, match="unknown table function"):
        lut_table("softplus", 8, 4, 8, 7, "half_up")


def test_rules_of_each_target():
    def problems(act, target):
        return [(p.rule, p.where) for p in npukit.check(Gate(act), X, target=target).problems if p.severity == "error"]

    assert problems(nn.Sigmoid(), "venus") == [] and problems(nn.Tanh(), "venus") == []
    assert problems(nn.Hardswish(), "venus") == [("lut.function", "act")]
    assert problems(nn.Sigmoid(), "max78000") == [("unsupported-op", "act")]
    found = npukit.check(Gate(nn.Sigmoid()), X, target="max78000").problems[0]
    assert "lut (sigmoid)" in found.message and "ReLU" in found.fix
    assert problems(nn.GELU(), "cortex-m4") == []


def test_gradients_flow_through_the_table():
    torch.manual_seed(0)
    q = npukit.prepare(Gate(nn.Tanh()), X, "venus")
    q.train()
    loss = q(X).pow(2).mean()
    loss.backward()
    assert float(q.c1.weight.grad.abs().sum()) > 0  # the surrogate's gradient reaches the layer before


def test_validate_refuses_a_wrong_table(tmp_path):
    g = npukit.to_ir(npukit.prepare(Gate(nn.Sigmoid()), X, "venus"))
    lut = next(n for n in g.nodes if n.op == "lut")
    lut.params["table"] = lut.params["table"][:100]
    with pytest.raises(NpukitError, match="table has shape"):
        g.validate()


def test_exp_table_through_every_backend(tmp_path):
    """exp (a softmax numerator) grows fast: its table saturates at the grid's top, the same in every backend."""
    torch.manual_seed(0)
    q = npukit.prepare(Gate(None, torch.exp), X, "cortex-m4")
    assert_backends_agree(q, X, tmp_path)
    t = next(n for n in npukit.to_ir(q).nodes if n.op == "lut").params["table"]
    assert np.all(np.diff(t.astype(int)) >= 0) and t.min() >= 0  # monotone, never negative
    assert npukit.check(Gate(None, torch.exp), X, target="venus").problems[0].rule == "lut.function"


"""Transposed convolutions (npukit/ops/conv_transpose.py): exact in QAT, engine, ONNX, model.bin, generated C
and the C runtime, with BatchNorm folded along the output channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from models_for_tests import assert_backends_agree

import npukit

torch.set_num_threads(1)

CASES = {
    "1d-stride2-bn": (lambda: nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(),
                                            nn.ConvTranspose1d(4, 3, 4, stride=2, padding=1), nn.BatchNorm1d(3),
                                            nn.ReLU(), nn.Flatten(), nn.Linear(3 * 20, 2)), (8, 1, 10)),
    "2d-output-padding": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                                                nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
                                                nn.ReLU(), nn.Conv2d(3, 2, 1)), (8, 2, 5, 5)),
    "1d-dilated-no-bias": (lambda: nn.Sequential(nn.ConvTranspose1d(1, 2, 3, stride=3, padding=2, dilation=2,
                                                                    bias=False), nn.ReLU(), nn.Flatten(),
                                                 nn.Linear(2 * 28, 2)), (8, 1, 10)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_transposed_conv_is_exact_everywhere(case, tmp_path):
    build, shape = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(*shape)
    model = build()
    model.train()
    model(x)  # BatchNorm statistics
    model.eval()
    q = npukit.prepare(model, x, "cortex-m4")
    assert "conv_transpose" in [n.op for n in npukit.to_ir(q).nodes]
    assert_backends_agree(q, x, tmp_path)
    with torch.no_grad():  # BatchNorm folded along the right axis: the quantized model follows the float one
        assert torch.allclose(q.eval()(x).float(), model(x), atol=0.05)


def test_targets_and_refusals():
    build, shape = CASES["2d-output-padding"]
    x = torch.randn(*shape)
    assert not [p for p in npukit.check(build(), x, target="venus").problems if p.severity == "error"]
    assert not [p for p in npukit.check(build(), x, target="max78000").problems if p.severity == "error"]
    rules = {p.rule for p in npukit.check(nn.Sequential(nn.ConvTranspose2d(2, 3, 4, stride=2, padding=3)),
                                          x, target="max78000").problems}
    assert {"conv_transpose.kernel", "conv_transpose.padding", "conv_transpose.output_padding"} <= rules
    build1, shape1 = CASES["1d-stride2-bn"]
    assert "conv_transpose.ndim" in {p.rule for p in npukit.check(build1(), torch.randn(*shape1),
                                                                   target="max78000").problems}
    with pytest.raises(npukit.ProblemsError, match="groups=2"):
        npukit.prepare(nn.Sequential(nn.ConvTranspose1d(2, 4, 3, groups=2)), torch.randn(2, 2, 6), "cortex-m4")

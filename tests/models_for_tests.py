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


def _float_inputs(x) -> tuple:
    return tuple(x) if isinstance(x, list | tuple) else (x,)


def _int_inputs(graph, x):
    """The integer batches of the float batch `x` (a tuple of them for several inputs), as dumps take them."""
    xi = [graph.quantize_input(v.numpy(), i) for i, v in enumerate(_float_inputs(x))]
    return xi if len(xi) > 1 else xi[0]


def assert_backends_agree(qmodel, x, workdir) -> None:
    """QAT eval, onnxruntime, model.bin, the generated C and the C runtime give the engine's integers for
    every tensor of `qmodel` (prepared) on the float batch `x` (a tuple of batches, one per input, for a
    model with several), every input and output included."""
    import npukit
    from npukit import dump as D
    from npukit.qat.dump import dump_qat

    graph = npukit.to_ir(qmodel)
    path = npukit.pack(graph, workdir / "model.bin").path
    xi = _int_inputs(graph, x)
    ref = D.dump_engine(graph, xi)
    for d in (dump_qat(qmodel, x), D.dump_onnx(graph, xi), D.dump_modelbin(path, xi), D.dump_c(path, xi, workdir),
              D.dump_runtime(path, xi, workdir)):
        diff = D.compare(ref, d)
        assert diff is None, diff.describe()


def assert_outputs_agree(qmodel, x, workdir) -> None:
    """Through each backend's own entry point (not the dump builds), every output of every sample equals
    the engine's: QAT eval, the ONNX file in onnxruntime, model.bin in its planned arena (`run_in_arena`),
    the generated C (`run_file`, and its known-answer test) and `npukit-run`."""
    import numpy as np
    import onnxruntime as ort
    import torch

    import npukit
    from npukit import codegen, engine, modelbin
    from npukit.codegen import host

    graph = npukit.to_ir(qmodel)
    xi = _int_inputs(graph, x)
    xs = xi if isinstance(xi, list) else [xi]
    want = npukit.run(graph, *xs)
    assert len(want) == len(graph.outputs)

    with torch.no_grad():
        qat = qmodel.eval()(*_float_inputs(x))
    qat = qat if isinstance(qat, tuple | list) else (qat,)
    got = {"qat": [(y.double() * 2.0 ** graph.output_spec(i).exp).numpy() for i, y in enumerate(qat)]}
    onnx_path = npukit.export_onnx(graph, workdir / "model.onnx")
    got["onnxruntime"] = ort.InferenceSession(str(onnx_path)).run(None, dict(zip(graph.inputs, xs, strict=True)))
    bin_path = npukit.pack(graph, workdir / "model.bin").path
    packed = modelbin.read(bin_path)
    got["run_in_arena"] = engine.run_in_arena(packed.graph, packed.offsets, packed.arena_bytes, *xs)
    project = codegen.generate(packed, workdir / "c", kat_input=[v[:1] for v in xs], force=True)
    ok, out = host.run_kat(host.build(project))
    assert ok, out
    outs = [(graph.output_spec(i).dtype, int(np.prod(graph.output_spec(i).shape))) for i in range(len(graph.outputs))]
    got["generated C"] = host.run_file_io(host.build(project, "run_file"), xs, outs, workdir)
    got["npukit-run"], _ = host.run_runtime(host.build_runtime(workdir), bin_path, xs, workdir,
                                            [d for d, _ in outs])
    for backend, ys in got.items():
        assert len(ys) == len(want), backend
        for name, y, w in zip(graph.outputs, ys, want, strict=True):
            np.testing.assert_array_equal(np.asarray(y).reshape(w.shape), w, err_msg=f"{backend}, output {name}")

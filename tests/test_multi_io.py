"""Models with several inputs and outputs through every stage: prepare (one input quantizer, and exponent, per
argument of forward()), calibration, the engine, ONNX, model.bin in its arena, the generated C (its entry point
takes one pointer per input and output) and the C runtime (npukit_invoke_io, npukit-run with one file per
tensor), every output byte equal; and the one-input, one-output names that existing code relies on."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import torch.nn as nn
from models_for_tests import assert_backends_agree, assert_outputs_agree, npukit_error_of
from typer.testing import CliRunner

import npukit
from npukit import codegen, modelbin
from npukit.cli import app
from npukit.codegen import host

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(host.find_cc() is None, reason="no C compiler found")


class TwoIn(nn.Module):
    """Two Conv1d branches, one per input, added, then concatenated with the second branch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(1, 4, 3, padding=1), nn.Conv1d(2, 4, 3, padding=1)
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(8 * 20, 5)

    def forward(self, x, y):
        b = torch.relu(self.b(y))
        h = torch.cat([torch.relu(self.a(x) + b), b], dim=1)
        return self.fc(torch.flatten(self.pool(h), 1))


class TwoOut(nn.Module):
    """A shared trunk with two heads: a classifier (wide linear output) and a per-position conv map."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Conv1d(1, 6, 5, padding=2)
        self.cls = nn.Linear(6 * 40, 3)
        self.seg = nn.Conv1d(6, 2, 1)

    def forward(self, x):
        h = torch.relu(self.trunk(x))
        return self.cls(torch.flatten(h, 1)), self.seg(h)


class TwoInTwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(1, 4, 3, padding=1), nn.Conv1d(2, 4, 3, padding=1)
        self.head = nn.Conv1d(4, 3, 1)

    def forward(self, x, y):
        h = torch.relu(self.a(x) + self.b(y))
        return self.head(h), torch.flatten(h, 1)


def _data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 40, generator=g), 4 * torch.randn(n, 2, 40, generator=g)  # the second 4x wider


MODELS = {"two_in": (TwoIn, 2), "two_out": (TwoOut, 1), "two_in_two_out": (TwoInTwoOut, 2)}


def _prepared(name: str, seed: int = 0):
    """The model prepared, a few QAT steps on every output, then calibrated on (inputs, labels) batches."""
    cls, n_in = MODELS[name]
    torch.manual_seed(seed)
    x, y = _data(64, seed)
    xs = (x, y)[:n_in]
    q = npukit.prepare(cls(), xs if n_in > 1 else x)
    q.train()
    opt = torch.optim.SGD(q.parameters(), lr=0.02)
    for _ in range(3):
        outs = q(*xs)
        loss = sum(o.square().mean() for o in (outs if isinstance(outs, tuple) else (outs,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = torch.zeros(len(x))
    batches = [(xs if n_in > 1 else x, labels)] if n_in > 1 else [(x, labels)]
    npukit.calibrate(q, batches, "minmax")
    return q.eval(), (xs if n_in > 1 else x)


@pytest.mark.parametrize("name", MODELS)
def test_every_backend_gives_every_output_byte(name, tmp_path):
    qmodel, _ = _prepared(name)
    x, y = _data(12, seed=1)
    test_x = (x, y) if MODELS[name][1] > 1 else x
    assert_backends_agree(qmodel, test_x, tmp_path)  # every tensor, per layer
    assert_outputs_agree(qmodel, test_x, tmp_path)  # every output, through the public entry points


def test_each_input_gets_its_own_quantizer_and_exponent():
    qmodel, _ = _prepared("two_in")
    names = [n for n, _ in qmodel.named_children()]
    assert names[:2] == ["npukit_input0", "npukit_input1"]
    graph = npukit.to_ir(qmodel)
    assert graph.inputs == ["input0", "input1"]
    e0, e1 = (graph.tensors[t].exp for t in graph.inputs)
    assert e0 == e1 + 2  # the second input is 4x wider: two exponents coarser
    x, y = _data(4, seed=2)
    np.testing.assert_array_equal(npukit.quantize_input(qmodel, y, 1), graph.quantize_input(y.numpy(), 1))


def test_one_input_keeps_its_names():
    """Checkpoints of one-input models name the quantizer npukit_input; the IR calls the tensor input."""
    qmodel, _ = _prepared("two_out")
    assert "npukit_input" in dict(qmodel.named_children())
    assert npukit.to_ir(qmodel).inputs == ["input"]
    fresh = npukit.prepare(TwoOut(), _data(8)[0])
    fresh.load_state_dict(qmodel.state_dict())  # a checkpoint loads into a new prepare of the model
    assert npukit.to_ir(fresh).to_meta() == npukit.to_ir(qmodel).to_meta()


def test_calibration_batch_forms_agree():
    """((x0, x1), labels) and (x0, x1, labels) batches set the same exponents."""
    x, y = _data(32)
    labels = torch.zeros(32)
    exps = []
    for batch in (((x, y), labels), (x, y, labels), (x, y)):
        torch.manual_seed(0)
        q = npukit.calibrate(npukit.prepare(TwoIn(), (x, y)), [batch])
        exps.append({t: s.exp for t, s in npukit.to_ir(q).tensors.items()})
    assert exps[0] == exps[1] == exps[2]
    msg = npukit_error_of(lambda: npukit.calibrate(npukit.prepare(TwoIn(), (x, y)), [x]), "one tensor")
    assert "takes 2 inputs" in msg


def test_prepare_names_a_wrong_number_of_examples():
    x, _ = _data(4)
    msg = npukit_error_of(lambda: npukit.prepare(TwoIn(), x), "one example for two inputs")
    assert "takes 2 tensor(s) but the example gives 1" in msg and "tuple" in msg
    msg = npukit_error_of(lambda: npukit.prepare(TwoIn(), (x, torch.randn(3, 2, 40))), "different batches")
    assert "same batch size" in msg


def test_check_takes_one_shape_per_input():
    r = npukit.check(TwoIn(), [(1, 1, 40), (1, 2, 40)], "venus")
    assert r.ok and r.graph.inputs == ["input0", "input1"]
    res = CliRunner().invoke(app, ["check", "tests/test_multi_io.py:TwoIn", "--input", "1,1,40", "--input", "1,2,40",
                                   "--target", "venus"])
    assert res.exit_code == 0, res.output


def _packed(name: str, tmp_path):
    qmodel, _ = _prepared(name)
    graph = npukit.to_ir(qmodel)
    return graph, npukit.pack(graph, tmp_path / "model.bin").path


def test_codegen_entry_point_takes_one_pointer_per_tensor(tmp_path):
    graph, path = _packed("two_in_two_out", tmp_path)
    header = (codegen.generate(path, tmp_path / "c") / "model.h").read_text()
    assert ("int npukit_run(const int8_t *input0, const int8_t *input1, npukit_output0_t *output0, "
            "npukit_output1_t *output1);") in header
    for macro in ("NPUKIT_NUM_INPUTS 2", "NPUKIT_NUM_OUTPUTS 2", "NPUKIT_INPUT1_SIZE 80",
                  f"NPUKIT_INPUT1_EXP {graph.tensors['input1'].exp}", "NPUKIT_OUTPUT1_SIZE 160"):
        assert f"#define {macro}\n" in header, macro
    assert "static inline int8_t npukit_quantize1(double x)" in header
    assert "NPUKIT_INPUT_SIZE" not in header  # numbered names only: no guessing which tensor the plain ones mean
    prefixed = (codegen.generate(path, tmp_path / "kws", prefix="kws") / "model.h").read_text()
    assert "int kws_run_in(void *arena_bytes, const int8_t *input0" in prefixed and "kws_output1_t" in prefixed
    assert "npukit_" not in prefixed.replace("npukit_kernels", "")


def test_codegen_caller_arena_with_several_tensors(tmp_path):
    """-DNPUKIT_ARENA_EXTERNAL: npukit_run_in on the caller's arena gives the engine's outputs."""
    graph, path = _packed("two_in_two_out", tmp_path)
    x, y = _data(1, seed=5)
    xs = [graph.quantize_input(x.numpy(), 0), graph.quantize_input(y.numpy(), 1)]
    project = codegen.generate(path, tmp_path / "c", kat_input=xs)
    values = {"@X0@": ", ".join(map(str, xs[0].ravel())), "@X1@": ", ".join(map(str, xs[1].ravel()))}
    text = """#include <stdio.h>
#include "model.h"
static const int8_t x0[NPUKIT_INPUT0_SIZE] = {@X0@};
static const int8_t x1[NPUKIT_INPUT1_SIZE] = {@X1@};
int main(void)
{
    static union { int64_t align; char bytes[NPUKIT_ARENA_BYTES]; } arena;
    static npukit_output0_t y0[NPUKIT_OUTPUT0_SIZE];
    static npukit_output1_t y1[NPUKIT_OUTPUT1_SIZE];
    int i, rc = npukit_run_in(arena.bytes, x0, x1, y0, y1);
    printf("%d %d\\n", rc, npukit_run_in(arena.bytes, x0, NULL, y0, y1));
    for (i = 0; i < NPUKIT_OUTPUT0_SIZE; i++) printf("%ld ", (long)y0[i]);
    printf("\\n");
    for (i = 0; i < NPUKIT_OUTPUT1_SIZE; i++) printf("%ld ", (long)y1[i]);
    printf("\\n");
    return 0;
}
"""
    for key, v in values.items():
        text = text.replace(key, v)
    (project / "ext.c").write_text(text)
    exe = host.build(project, "ext", defines=["-DNPUKIT_ARENA_EXTERNAL"])
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == "0 -1"
    for line, want in zip(lines[1:], npukit.run(graph, *xs), strict=True):
        assert [int(v) for v in line.split()] == want.ravel().tolist()


_API_C = """#include <stdio.h>
#include <stdlib.h>
#include "npukit_runtime.h"
int main(int argc, char **argv)
{
    static npukit_model_t m;
    static union { uint32_t align; uint8_t bytes[1 << 20]; } bin;
    static union { int64_t align; uint8_t bytes[1 << 16]; } arena;
    static int8_t in[4096];
    static int32_t out[4096];
    npukit_io_info info;
    FILE *f = fopen(argv[argc - 1], "rb");
    size_t len = fread(bin.bytes, 1, sizeof bin.bytes, f);
    unsigned i;
    printf("%d\\n", npukit_load(bin.bytes, len, &m));
    printf("%u %u\\n", npukit_num_inputs(&m), npukit_num_outputs(&m));
    for (i = 0; i < npukit_num_inputs(&m); i++) {
        npukit_input_info(&m, i, &info);
        printf("in %.*s %lu %d %d\\n", (int)info.name_len, info.name, (unsigned long)info.bytes, (int)info.dtype, info.exp);
    }
    for (i = 0; i < npukit_num_outputs(&m); i++) {
        npukit_output_info(&m, i, &info);
        printf("out %.*s %lu %d %d\\n", (int)info.name_len, info.name, (unsigned long)info.bytes, (int)info.dtype, info.exp);
    }
    printf("%d %d\\n", npukit_input_info(&m, npukit_num_inputs(&m), &info), npukit_output_info(&m, 0, NULL));
    printf("%d\\n", npukit_invoke(&m, arena.bytes, sizeof arena.bytes, in, out));
    return 0;
}
"""


@pytest.mark.parametrize("name", ["two_in", "two_out"])
def test_runtime_describes_every_tensor_and_npukit_invoke_refuses_several(name, tmp_path):
    graph, path = _packed(name, tmp_path)
    (tmp_path / "api.c").write_text(_API_C)
    exe = _build_api(tmp_path)
    lines = subprocess.run([str(exe), str(path)], capture_output=True, text=True, check=True).stdout.splitlines()
    specs = [("in", graph.tensors[t]) for t in graph.inputs] + [("out", graph.tensors[t]) for t in graph.outputs]
    assert lines[0] == "0" and lines[1] == f"{len(graph.inputs)} {len(graph.outputs)}"
    assert lines[2:2 + len(specs)] == [f"{k} {s.name} {int(np.prod(s.shape)) * s.dtype.itemsize} {s.dtype.itemsize} "
                                       f"{s.exp}" for k, s in specs]
    assert lines[-2] == "-1 -1"  # an index past the last, a NULL info: NPUKIT_E_ARG
    assert lines[-1] == "-17"  # NPUKIT_E_IO: one buffer cannot take several tensors


def _build_api(tmp_path):
    sources = [tmp_path / "api.c", host.RUNTIME / "npukit_runtime.c",
               *sorted(host.KERNELS.glob("nk_*.c"))]
    exe = tmp_path / "api"
    subprocess.run([host.find_cc(), *host.STRICT, "-O1", f"-I{host.KERNELS}", f"-I{host.RUNTIME}", "-o", str(exe),
                    *map(str, sources)], check=True, capture_output=True)
    return exe


def test_npukit_run_takes_one_file_per_tensor(tmp_path):
    graph, path = _packed("two_in_two_out", tmp_path)
    exe = host.build_runtime(tmp_path)
    x, y = _data(3, seed=4)
    xs = [graph.quantize_input(x.numpy(), 0), graph.quantize_input(y.numpy(), 1)]
    for k, v in enumerate(xs):
        v.tofile(tmp_path / f"in{k}.bin")
    res = subprocess.run([str(exe), str(path), str(tmp_path / "in0.bin"), str(tmp_path / "out0.bin")],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "2 input(s) and 2 output(s): give 2 input file(s), then 2 output" in res.stderr
    xs[1][:2].tofile(tmp_path / "short.bin")
    res = subprocess.run([str(exe), str(path), str(tmp_path / "in0.bin"), str(tmp_path / "short.bin"),
                          str(tmp_path / "o0"), str(tmp_path / "o1")], capture_output=True, text=True)
    assert res.returncode == 4 and "the same number" in res.stderr
    ys, _ = host.run_runtime(exe, path, xs, tmp_path, [graph.output_spec(i).dtype for i in range(2)])
    for got, want in zip(ys, npukit.run(graph, *xs), strict=True):
        np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_cli_run_writes_every_output(tmp_path, monkeypatch):
    graph, path = _packed("two_in_two_out", tmp_path)
    monkeypatch.chdir(tmp_path)
    x, y = _data(5, seed=3)
    np.save("x.npy", x.numpy())
    np.save("y.npy", y.numpy())
    runner = CliRunner()
    res = runner.invoke(app, ["run", str(path), "x.npy", "y.npy", "--quantize", "-o", "out.npz"])
    assert res.exit_code == 0, res.output
    xs = [graph.quantize_input(x.numpy(), 0), graph.quantize_input(y.numpy(), 1)]
    with np.load("out.npz") as z:
        assert sorted(z.files) == sorted(graph.outputs)
        for name, want in zip(graph.outputs, npukit.run(graph, *xs), strict=True):
            np.testing.assert_array_equal(z[name], want)
    res = runner.invoke(app, ["run", str(path), "x.npy", "y.npy", "--quantize", "-o", "out.npy"])
    text = " ".join(res.output.split())  # rich wraps long lines
    assert res.exit_code == 1 and "has 2 outputs" in text and "-o out.npz writes them all" in text
    res = runner.invoke(app, ["run", str(path), "x.npy", "--quantize", "-o", "out.npz"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "has 2 input(s)" in text and "one .npy per input" in text
    np.save("xi.npy", xs[0])
    np.save("yi.npy", xs[1])
    res = runner.invoke(app, ["compare", "engine", "runtime", "--model", str(path), "--input", "xi.npy",
                              "--input", "yi.npy"])
    assert res.exit_code == 0 and "equal" in res.output, res.output


def test_modelbin_and_onnx_round_trips_keep_the_io_order(tmp_path):
    graph, path = _packed("two_in_two_out", tmp_path)
    back = modelbin.read(path).graph
    assert back.inputs == graph.inputs and back.outputs == graph.outputs
    onnx_back = npukit.load_onnx(npukit.export_onnx(graph, tmp_path / "m.onnx"))
    assert onnx_back.to_meta() == graph.to_meta()


def test_cortex_m4_kats_check_every_output(tmp_path):
    """Under QEMU: the generated C's KAT and the C runtime's (model.bin in flash, npukit_invoke_io)."""
    from npukit.codegen import cortex_m

    if msg := cortex_m.arm_tools_available():
        pytest.skip(msg)
    graph, path = _packed("two_in_two_out", tmp_path)
    x, y = _data(1, seed=6)
    xs = [graph.quantize_input(x.numpy(), 0), graph.quantize_input(y.numpy(), 1)]
    project = codegen.generate(path, tmp_path / "c", kat_input=xs)
    ok, text = cortex_m.run_qemu(cortex_m.build(project), timeout=60)
    assert ok, text
    ok, text = cortex_m.run_qemu(cortex_m.build_runtime_kat(path, tmp_path / "rt", xs), timeout=60)
    assert ok and "KAT PASS" in text, text
    wrong = [w + (k == 1) for k, w in enumerate(npukit.run(graph, *xs))]  # only the second output is off
    ok, text = cortex_m.run_qemu(cortex_m.build_runtime_kat(path, tmp_path / "rt", xs, expected=wrong), timeout=60)
    assert not ok and "output 1: mismatch" in text


def test_cli_codegen_and_check_take_input_once_per_input(tmp_path, monkeypatch):
    graph, path = _packed("two_in", tmp_path)
    monkeypatch.chdir(tmp_path)
    x, y = _data(1, seed=7)
    np.save("x0.npy", graph.quantize_input(x.numpy(), 0))
    np.save("x1.npy", graph.quantize_input(y.numpy(), 1))
    runner = CliRunner()
    res = runner.invoke(app, ["codegen", str(path), "-o", "c", "--input", "x0.npy", "--input", "x1.npy"])
    assert res.exit_code == 0, res.output
    ok, out = host.run_kat(host.build(tmp_path / "c"))
    assert ok, out
    assert _list_in("kat_input1", (tmp_path / "c" / "main.c").read_text()) == np.load("x1.npy").ravel().tolist()
    res = runner.invoke(app, ["codegen", str(path), "-o", "c2", "--input", "x0.npy"])
    assert res.exit_code == 1 and "one array per input" in " ".join(res.output.split())
    res = runner.invoke(app, ["check", str(path), "--input", "1,1,40"])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "(1, 40), (2, 40)" in text and "leave --input out" in text
    res = runner.invoke(app, ["check", str(path), "--input", "1,1,40", "--input", "1,2,40"])
    assert res.exit_code == 0, res.output


def _list_in(name: str, text: str) -> list[int]:
    body = text.split(f"{name}[")[1].split("{", 1)[1].split("}", 1)[0]
    return [int(v) for v in body.split(",")]


class Ignores(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(1, 2, 3)

    def forward(self, x, unused):
        return self.a(x)


def test_prepare_refuses_an_unused_input():
    x, y = _data(4)
    msg = npukit_error_of(lambda: npukit.prepare(Ignores(), (x, y)), "an unused argument")
    assert "does not use its argument(s) unused" in msg


def test_one_input_one_output_keeps_its_c_names(tmp_path):
    """Code written against earlier generated projects goes on compiling: the same prototypes and macros."""
    torch.manual_seed(0)
    graph = npukit.to_ir(npukit.prepare(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(76, 4)), _data(8)[0]))
    header = (codegen.generate(npukit.pack(graph, tmp_path / "m.bin").path, tmp_path / "c") / "model.h").read_text()
    for text in ("int npukit_run(const int8_t *input, npukit_output_t *output);",
                 "int npukit_run_in(void *arena_bytes, const int8_t *input, npukit_output_t *output);",
                 "#define NPUKIT_INPUT_SIZE 40\n", "#define NPUKIT_OUTPUT_SIZE 4\n", "typedef int32_t npukit_output_t;",
                 f"#define NPUKIT_INPUT_EXP {graph.tensors['input'].exp}\n", "static inline int8_t npukit_quantize(double x)",
                 "static inline double npukit_dequantize(npukit_output_t q)"):
        assert text in header, text
    assert "INPUT0" not in header and "output0" not in header

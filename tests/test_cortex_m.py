"""The generated C project on an emulated Cortex-M4 (QEMU mps2-an386): the KAT passes bit-exactly, the
exit status reaches the host, and the flash/RAM numbers agree with model.bin and the memory plan."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn as nn
from models_for_tests import LOWBIT, Branchy

import npukit
from npukit import codegen, modelbin
from npukit.codegen import cortex_m
from npukit.models import mnist1d_cnn

MISSING = cortex_m.arm_tools_available()  # None, or what to install
pytestmark = [pytest.mark.cortex_m, pytest.mark.skipif(MISSING is not None, reason=str(MISSING))]




def _lowbit() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 5, 3), nn.ReLU(), nn.MaxPool1d(1), nn.Flatten(), nn.Linear(35, 3))


# name -> (model, example batch shape, prepare options). Untrained: the arithmetic is what is tested.
CASES = {
    "demo-w8": (mnist1d_cnn, (64, 1, 40), {}),
    "demo-w16": (mnist1d_cnn, (64, 1, 40), {"weight_bits": 16}),
    "branchy-2d": (Branchy, (4, 3, 8, 8), {"target": "cortex-m4"}),  # grouped convs: not for venus
    "lowbit-w4": (_lowbit, (4, 2, 9), {"target": LOWBIT, "weight_bits": 4}),
    "lowbit-w2": (_lowbit, (4, 2, 9), {"target": LOWBIT, "weight_bits": 2}),
}


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """case name -> (the model's C project with cortex-m/, its pack result)."""
    made = {}

    def make(case: str = "demo-w8"):
        if case not in made:
            model, shape, kw = CASES[case]
            torch.manual_seed(0)
            tmp = tmp_path_factory.mktemp(case)
            g = npukit.to_ir(npukit.prepare(model(), torch.randn(*shape), rules="off", **kw))
            packed = npukit.pack(g, tmp / "model.bin")
            x = g.quantize_input(torch.randn(1, *shape[1:]).numpy())
            out = codegen.generate(tmp / "model.bin", tmp / "c", kat_input=x)
            cortex_m.write_cortex_m(out)
            made[case] = out, packed
        return made[case]

    return make


@pytest.mark.parametrize("case", list(CASES))
def test_kat_passes_on_cortex_m4(projects, case):
    out, packed = projects(case)
    for name in ("startup.c", "mps2-an386.ld", "Makefile"):
        assert (out / "cortex-m" / name).is_file()
    elf = cortex_m.build(out)
    ok, text = cortex_m.run_qemu(elf, timeout=60)
    print(text)
    assert ok, text
    assert "KAT PASS" in text and "[qemu exit status 0]" in text

    sizes = cortex_m.size_report(elf)
    print(f"Cortex-M4, {case}, sizes in bytes: {sizes}")
    packed_model = modelbin.read(out.parent / "model.bin")
    params = packed_model.params
    # model.bin's parameter bytes, except the 1-d convs whose weights model.c pre-arranges for the DSP path
    dsp1d = {n.name: codegen.dsp1d_weights(n.params["weight"]).size * 4 - n.params["weight"].size
             for n in packed_model.graph.nodes if n.op == "conv" and codegen.dsp1d_applies(
                 n.attrs["w_bits"], n.attrs["ndim"], n.attrs["stride"], n.attrs["dilation"], n.attrs["groups"],
                 n.params["weight"].shape[1], n.params["weight"].shape[-1])}
    assert (case == "demo-w8") == bool(dsp1d)
    assert sizes["weight_bytes"] == sum(p.nbytes for p in params if p.name in ("weight", "bias")) + sum(dsp1d.values())
    assert sizes["arena_bytes"] == packed.plan.arena_bytes
    assert sizes["code_bytes"] + sizes["weight_bytes"] == sizes["flash_bytes"]
    assert sizes["data_bytes"] + sizes["bss_bytes"] == sizes["ram_bytes"] == sizes["arena_bytes"] + sizes["ram_overhead_bytes"]
    assert 0 < sizes["code_bytes"] < 64 << 10  # kernels + startup + newlib-nano printf
    assert 0 <= sizes["ram_overhead_bytes"] < 4 << 10
    # the runtime keeps no state between calls: its only RAM is the arena (and the stack during a call)
    assert sizes["runtime_static_bytes"] == 0
    assert sizes["harness_static_bytes"] == sizes["ram_overhead_bytes"]
    print(f"flash {sizes['flash_bytes']} B = code {sizes['code_bytes']} + weights {sizes['weight_bytes']}; "
          f"RAM {sizes['ram_bytes']} B = arena {sizes['arena_bytes']} + overhead {sizes['ram_overhead_bytes']}")


def test_failure_reaches_the_exit_status(projects, tmp_path):
    """A KAT that fails (here: a main that says so) gives False and QEMU's exit status 1."""
    out, _ = projects()
    bad = tmp_path / "c"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("*.elf"))
    (bad / "main.c").write_text('#include <stdio.h>\n\nint main(void)\n{\n'
                                '    printf("KAT FAIL: forced\\n");\n    return 1;\n}\n')
    ok, text = cortex_m.run_qemu(cortex_m.build(bad), timeout=60)
    assert not ok
    assert "KAT FAIL: forced" in text and "[qemu exit status 1]" in text


def test_kat_passes_on_cortex_m4_without_simd(projects):
    """The same generated project built with -DNK_NO_SIMD (model.c and the kernels alike): model.c then holds
    model.bin's int8 weights, nk_conv runs its plain C99 paths, and the KAT still passes."""
    import subprocess

    out, _ = projects("demo-w8")
    folder = cortex_m.write_cortex_m(out)
    cmd = [cortex_m.CC, *cortex_m.CFLAGS, "-DNK_NO_SIMD", "-o", "plain.elf", *cortex_m._sources(out), *cortex_m.LDFLAGS]
    built = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ok, text = cortex_m.run_qemu(folder / "plain.elf", timeout=60)
    assert ok and "KAT PASS" in text, text
    params = modelbin.read(out.parent / "model.bin").params
    assert cortex_m.size_report(folder / "plain.elf")["weight_bytes"] == sum(p.nbytes for p in params
                                                                             if p.name in ("weight", "bias"))


def test_build_reports_compiler_errors(projects, tmp_path):
    out, _ = projects()
    bad = tmp_path / "c"
    shutil.copytree(out, bad, ignore=shutil.ignore_patterns("*.elf"))
    (bad / "main.c").write_text("int main(void)\n{\n    return undeclared;\n}\n")
    with pytest.raises(npukit.NpukitError, match="undeclared"):
        cortex_m.build(bad)



@pytest.mark.parametrize("case", ["demo-w8", "lowbit-w4"])
def test_runtime_kat_passes_on_cortex_m4(projects, case, tmp_path):
    """The C runtime (runtime/) loads the model.bin from flash and runs it: the engine's integers."""
    out, packed = projects(case)
    graph = modelbin.read(packed.path).graph
    x = graph.quantize_input(torch.randn(1, *graph.input_spec().shape, generator=torch.Generator().manual_seed(3)))
    ok, text = cortex_m.run_qemu(cortex_m.build_runtime_kat(packed.path, tmp_path, x), timeout=60)
    assert ok, text
    wrong = npukit.run(graph, x)[0] + 1  # the same KAT against a wrong answer must fail
    ok, text = cortex_m.run_qemu(cortex_m.build_runtime_kat(packed.path, tmp_path, x, expected=wrong), timeout=60)
    assert not ok and "KAT FAIL" in text and "[qemu exit status 1]" in text


TWO_MODELS_KAT = r"""
#include <stdio.h>
#include "kws/model.h"
#include "tiny/model.h"

static const int8_t xa[KWS_INPUT_SIZE] = {XA};
static const int8_t xb[TINY_INPUT_SIZE] = {XB};
static const kws_output_t wa[KWS_OUTPUT_SIZE] = {WA};
static const tiny_output_t wb[TINY_OUTPUT_SIZE] = {WB};

int main(void)
{
    kws_output_t ya[KWS_OUTPUT_SIZE];
    tiny_output_t yb[TINY_OUTPUT_SIZE];
    int i, bad = 0;
    if (kws_run(xa, ya) != 0 || tiny_run(xb, yb) != 0) {
        return 1;
    }
    for (i = 0; i < KWS_OUTPUT_SIZE; i++) bad += ya[i] != wa[i];
    for (i = 0; i < TINY_OUTPUT_SIZE; i++) bad += yb[i] != wb[i];
    printf(bad ? "KAT FAIL: %d outputs differ\n" : "KAT PASS: both models (%d differ)\n", bad);
    return bad != 0;
}
"""


def test_two_prefixed_models_in_one_cortex_m_image(tmp_path):
    """--prefix: two generated models link into one Cortex-M4 image (one set of kernels) and both KATs pass."""
    import subprocess

    torch.manual_seed(0)
    graphs, xs = {}, {}
    for name, model, shape in (("kws", mnist1d_cnn(), (8, 1, 40)),
                               ("tiny", nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(),
                                                      nn.Linear(3 * 16, 4)), (8, 2, 6, 6))):
        x = torch.randn(*shape)
        graphs[name] = npukit.to_ir(npukit.prepare(model, x))
        xs[name] = graphs[name].quantize_input(x[:1].numpy())
        npukit.pack(graphs[name], tmp_path / f"{name}.bin")
        codegen.generate(tmp_path / f"{name}.bin", tmp_path / name, prefix=name)
    lists = [", ".join(map(str, a.ravel())) for a in
             (xs["kws"], xs["tiny"], npukit.run(graphs["kws"], xs["kws"])[0], npukit.run(graphs["tiny"], xs["tiny"])[0])]
    main = TWO_MODELS_KAT
    for key, values in zip(("XA", "XB", "WA", "WB"), lists, strict=True):
        main = main.replace("{" + key + "}", "{" + values + "}")
    (tmp_path / "main.c").write_text(main)
    folder = cortex_m.write_cortex_m(tmp_path)
    kernels = sorted(f"../kws/{p.name}" for p in (tmp_path / "kws").glob("nk_*.c"))
    cmd = [cortex_m.CC, *cortex_m.CFLAGS, "-I../kws", "-o", "both.elf", cortex_m.STARTUP, "../main.c",
           "../kws/model.c", "../tiny/model.c", *kernels, *cortex_m.LDFLAGS]
    built = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ok, text = cortex_m.run_qemu(folder / "both.elf", timeout=60)
    assert ok and "KAT PASS: both models" in text, text

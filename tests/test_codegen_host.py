"""Generated C on the host: warning-free builds, the known-answer test, sanitizers, and every output byte
equal to the engine's on real and random models."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_differential import TARGETS, nets, random_graph_and_inputs

import npukit
from npukit import codegen, modelbin
from npukit.codegen import host
from npukit.models import mnist1d_cnn

pytestmark = pytest.mark.skipif(host.find_cc() is None, reason="no C compiler found")


def _packed(graph):
    plan = npukit.memplan.plan_graph(graph)
    return modelbin.read(modelbin.pack_bytes(graph, plan.offsets, plan.arena_bytes, plan.lower_bound_bytes))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.manual_seed(0)
    x = torch.randn(256, 1, 40)
    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), x))
    q = graph.quantize_input(x.numpy())
    project = codegen.generate(_packed(graph), tmp_path_factory.mktemp("c"), kat_input=q[:1])
    return graph, q, project


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_kat_passes_warning_free(demo, cc):
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    _, _, project = demo
    ok, out = host.run_kat(host.build(project, cc=cc, out_name=f"kat-{cc}"))
    assert ok, out


def test_kat_passes_under_sanitizers(demo):
    _, _, project = demo
    ok, out = host.run_kat(host.build(project, sanitize=True))
    assert ok, out


def test_every_output_byte_equals_the_engine(demo, tmp_path):
    graph, q, project = demo
    exe = host.build(project, "run_file")
    got = host.run_file(exe, q, np.dtype(np.int32), 10, tmp_path)
    np.testing.assert_array_equal(got, npukit.run(graph, q)[0])


def test_kat_detects_a_wrong_answer(demo, tmp_path):
    _, _, project = demo
    broken = tmp_path / "broken"
    shutil.copytree(project, broken)
    main = (broken / "main.c").read_text()
    (broken / "main.c").write_text(main.replace("kat_expected[NPUKIT_OUTPUT_SIZE] = {", "kat_expected[NPUKIT_OUTPUT_SIZE] = {1 + "))
    ok, out = host.run_kat(host.build(broken))
    assert not ok and "KAT FAIL" in out and "mismatch at 0" in out


def test_makefile_builds_with_only_the_compiler(demo, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    _, _, project = demo
    copy = tmp_path / "p"
    shutil.copytree(project, copy)
    res = subprocess.run(["make"], cwd=copy, capture_output=True, text=True)
    assert res.returncode == 0 and "KAT PASS" in res.stdout, res.stdout + res.stderr
    recipes = [line.strip() for line in (copy / "Makefile").read_text().splitlines() if line.startswith("\t")]
    assert all(r.split()[0] in ("$(CC)", "./kat", "$(RM)") for r in recipes), recipes  # no shell tools but make's $(RM)


def test_no_malloc_and_the_arena_is_the_planned_size(demo):
    graph, _, project = demo
    model_c = (project / "model.c").read_text()
    plan = npukit.memplan.plan_graph(graph)
    assert f"int8_t bytes[{plan.arena_bytes}]" in model_c
    for src in project.glob("*.c"):
        assert "malloc" not in src.read_text(), src.name


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=nets(), target=st.sampled_from(sorted(TARGETS)), seed=st.integers(0, 2**16))
def test_random_models_match_the_engine(spec, target, seed, tmp_path_factory):
    graph, q = random_graph_and_inputs(spec, target, seed)
    project = codegen.generate(_packed(graph), tmp_path_factory.mktemp("r"))
    out = graph.output_spec()
    got = host.run_file(host.build(project, "run_file", opt="-O1"), q, out.dtype, int(np.prod(out.shape)), project)
    np.testing.assert_array_equal(got, npukit.run(graph, q)[0].reshape(len(q), -1))


def test_cmake_builds_and_ctest_passes(demo, tmp_path):
    if shutil.which("cmake") is None or shutil.which("ctest") is None:
        pytest.skip("cmake not installed")
    _, _, project = demo
    build = tmp_path / "build"
    cfg = subprocess.run(["cmake", "-S", str(project), "-B", str(build)], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    bld = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert bld.returncode == 0, bld.stdout + bld.stderr
    test = subprocess.run(["ctest", "--output-on-failure"], cwd=build, capture_output=True, text=True)
    assert test.returncode == 0 and "100% tests passed" in test.stdout, test.stdout + test.stderr


TWO_MODELS_MAIN = r"""
#include <stdio.h>
#include "kws/model.h"
#include "tiny/model.h"

int main(void)
{
    int8_t a[KWS_INPUT_SIZE], b[TINY_INPUT_SIZE];
    kws_output_t ya[KWS_OUTPUT_SIZE];
    tiny_output_t yb[TINY_OUTPUT_SIZE];
    int i;
    if (fread(a, 1, sizeof a, stdin) != sizeof a || fread(b, 1, sizeof b, stdin) != sizeof b) {
        return 2;
    }
    kws_run(a, ya);
    tiny_run(b, yb);
    for (i = 0; i < KWS_OUTPUT_SIZE; i++) printf("%ld\n", (long)ya[i]);
    for (i = 0; i < TINY_OUTPUT_SIZE; i++) printf("%ld\n", (long)yb[i]);
    return 0;
}
"""


def test_two_prefixed_models_link_into_one_program(demo, tmp_path):
    """--prefix gives each model its own names: both link into one image (one set of kernels) and each
    computes its engine's integers."""
    graph, q, _ = demo
    torch.manual_seed(1)
    x2 = torch.randn(16, 2, 6, 6)
    g2 = npukit.to_ir(npukit.prepare(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(),
                                                         torch.nn.Flatten(), torch.nn.Linear(3 * 16, 4)), x2))
    q2 = g2.quantize_input(x2.numpy())
    codegen.generate(_packed(graph), tmp_path / "kws", kat_input=q[:1], prefix="kws")
    codegen.generate(_packed(g2), tmp_path / "tiny", kat_input=q2[:1], prefix="tiny")
    (tmp_path / "main.c").write_text(TWO_MODELS_MAIN)
    kernels = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "kws").glob("nk_*.c"))
    cmd = [host.find_cc(), *host.STRICT, "-O2", "-Ikws", "-o", "both", "main.c", "kws/model.c", "tiny/model.c",
           *kernels]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = subprocess.run([str(tmp_path / "both")], input=q[:1].tobytes() + q2[:1].tobytes(), capture_output=True)
    got = [int(v) for v in out.stdout.split()]
    want = [*npukit.run(graph, q[:1])[0].ravel(), *npukit.run(g2, q2[:1])[0].ravel()]
    assert got == [int(v) for v in want]
    with pytest.raises(npukit.NpukitError, match="prefix"):
        codegen.generate(_packed(g2), tmp_path / "bad", prefix="Not-C")


QUANTIZE_MAIN = r"""
#include <stdio.h>
#include "model.h"

int main(void)
{
    double x;
    while (scanf("%lf", &x) == 1) {
        printf("%d\n", (int)npukit_quantize(x));
    }
    printf("%d\n", npukit_run(NULL, NULL));
    return 0;
}
"""


@pytest.mark.parametrize("mode", ["half_up", "half_even", "floor", "trunc"])
def test_quantize_helper_is_the_contracts(demo, tmp_path, mode):
    """model.h's npukit_quantize gives graph.quantize_input's integers (ties, saturation, negatives), in the
    target's rounding mode."""
    graph, q, _ = demo
    graph = dataclasses.replace(graph, target={**graph.target, "rounding": mode})
    project = codegen.generate(_packed(graph), tmp_path / "c", kat_input=q[:1])
    e = graph.input_spec().exp
    xs = np.concatenate([np.arange(-300, 300) / 2.0 ** (e + 1),  # every half step: the ties
                         np.random.default_rng(0).normal(0, 200 * 2.0**-e, 500), [1e9, -1e9]])
    (project / "q.c").write_text(QUANTIZE_MAIN)
    cmd = [host.find_cc(), *host.STRICT, "-O2", "-o", "q", "q.c", "model.c", *sorted(p.name for p in project.glob("nk_*.c"))]
    assert subprocess.run(cmd, cwd=project, capture_output=True).returncode == 0
    out = subprocess.run([str(project / "q")], input="\n".join(repr(float(v)) for v in xs), capture_output=True,
                         text=True).stdout.split()
    assert [int(v) for v in out[:-1]] == graph.quantize_input(xs.reshape(-1, 1)).ravel().tolist()
    assert out[-1] == "-1"  # NULL pointers: an error code, not 0


def test_regenerating_replaces_its_own_files_and_no_others(demo, tmp_path):
    """A second generation replaces what the first wrote and removes what it no longer writes; a file of the
    same name that npukit did not write stops it (nothing written) unless force; other files stay."""
    graph, _, _ = demo
    out = tmp_path / "c"
    codegen.generate(_packed(graph), out)
    manifest = (out / codegen.MANIFEST).read_text().split()
    assert "model.c" in manifest and "cortex-m/Makefile" in manifest and "nk_conv.c" in manifest
    (out / "notes.txt").write_text("mine")
    (out / "nk_old_kernel.c").write_text("/* an earlier model's */")
    (out / codegen.MANIFEST).write_text("\n".join([*manifest, "nk_old_kernel.c"]) + "\n")
    codegen.generate(_packed(graph), out, prefix="kws")
    assert not (out / "nk_old_kernel.c").exists() and (out / "notes.txt").read_text() == "mine"
    assert "kws_run" in (out / "model.h").read_text()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "main.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(npukit.NpukitError, match="did not write: main.c"):
        codegen.generate(_packed(graph), mine)
    assert sorted(p.name for p in mine.iterdir()) == ["main.c"]  # nothing written
    codegen.generate(_packed(graph), mine, force=True)
    assert "KAT" in (mine / "main.c").read_text()


def test_make_clean_removes_the_builds(demo, tmp_path):
    if shutil.which("make") is None or host.find_cc() is None:
        pytest.skip("make or a C compiler missing")
    graph, _, _ = demo
    out = codegen.generate(_packed(graph), tmp_path / "c")
    assert subprocess.run(["make", "-s", "kat"], cwd=out, capture_output=True).returncode == 0
    assert (out / "kat").exists()
    assert subprocess.run(["make", "-s", "clean"], cwd=out, capture_output=True).returncode == 0
    assert not (out / "kat").exists() and (out / "model.c").exists()


EXTERNAL_ARENA_MAIN = r"""
#include <stdio.h>
#include "model.h"

static int64_t arena[(NPUKIT_ARENA_BYTES + 7) / 8 + 1];

int main(void)
{
    int8_t x[NPUKIT_INPUT_SIZE];
    npukit_output_t y[NPUKIT_OUTPUT_SIZE];
    int i, rc;
    if (fread(x, 1, sizeof x, stdin) != sizeof x) {
        return 2;
    }
    rc = npukit_run_in(arena, x, y);
    for (i = 0; i < NPUKIT_OUTPUT_SIZE; i++) printf("%ld\n", (long)y[i]);
    printf("%d %d %d\n", rc, npukit_run_in((char *)arena + 1, x, y), npukit_run_in(NULL, x, y));
    return 0;
}
"""


def test_caller_provided_arena(demo, tmp_path):
    """-DNPUKIT_ARENA_EXTERNAL: no static arena; npukit_run_in runs in the caller's memory (8-byte aligned)."""
    graph, q, built = demo
    project = tmp_path / "p"
    shutil.copytree(built, project)
    (project / "ext_main.c").write_text(EXTERNAL_ARENA_MAIN)
    kernels = sorted(p.name for p in project.glob("nk_*.c"))
    cmd = [host.find_cc(), *host.STRICT, "-O2", "-DNPUKIT_ARENA_EXTERNAL", "-o", "ext", "ext_main.c", "model.c", *kernels]
    res = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    nm = subprocess.run(["nm", str(project / "ext")], capture_output=True, text=True).stdout
    assert "npukit_arena" not in nm and "npukit_run_in" in nm
    out = subprocess.run([str(project / "ext")], input=q[:1].tobytes(), capture_output=True).stdout.split()
    assert [int(v) for v in out[:-3]] == [int(v) for v in npukit.run(graph, q[:1])[0].ravel()]
    assert [int(v) for v in out[-3:]] == [0, -2, -1]

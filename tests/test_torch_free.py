"""The deploy side (IR, engine, model.bin, planner, packer, codegen, check, CLI) works without torch or onnx.

The model.bin is made here, with torch; a fresh interpreter in which `import torch`, `import onnx` and
`import onnxruntime` fail then reads it, runs it, re-packs it, generates C from it, checks it against every
built-in target and drives the CLI on it, and finally confirms torch was never imported.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import npukit
from npukit.models import mnist1d_cnn

BLOCKED = ("torch", "onnx", "onnxruntime")

# Runs in a fresh interpreter: argv[1] is the folder holding model.bin, x.npy and y.npy.
DEPLOY_SCRIPT = textwrap.dedent("""
    import sys
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` now raises ImportError

    from pathlib import Path

    import numpy as np

    import npukit
    import npukit.checker
    import npukit.cli
    import npukit.codegen
    import npukit.engine
    import npukit.ir
    import npukit.memplan
    import npukit.modelbin
    import npukit.ops
    import npukit.packer
    import npukit.rules
    import npukit.schemes
    import npukit.targets

    d = Path(sys.argv[1])
    names = npukit.builtin_targets()
    assert names, "no built-in targets"
    for name in names:
        t = npukit.load_target(name)
        assert t.name == name, (t.name, name)

    packed = npukit.modelbin.read(d / "model.bin")
    g = npukit.load_model(d / "model.bin")
    assert isinstance(g, npukit.Graph)
    x, y = np.load(d / "x.npy"), np.load(d / "y.npy")
    out = npukit.run(g, x)[0]
    assert np.array_equal(out, y), "engine output differs from the parent's"

    plan = npukit.memplan.plan_graph(g)
    assert plan.arena_bytes >= plan.lower_bound_bytes > 0
    assert npukit.engine.run_in_arena(g, packed.offsets, packed.arena_bytes, x[:1])[0].shape[0] == 1

    r = npukit.pack(g, d / "repacked.bin")
    assert npukit.modelbin.read(r.path).graph.nodes, "re-packed model.bin has no nodes"
    assert np.array_equal(npukit.run(npukit.load_model(r.path), x)[0], y)

    project = npukit.codegen.generate(d / "model.bin", d / "c", kat_input=x[:1])
    assert any(Path(project).rglob("*.c")), "codegen wrote no C"

    for name in names:
        res = npukit.check(g, target=name)
        assert isinstance(res, npukit.CheckResult) and res.target.name == name, res
        assert res.graph is not None and res.layers, res
    assert npukit.check(g).ok, npukit.check(g).problems  # its own target (venus): clean

    from typer.testing import CliRunner

    runner = CliRunner()
    for args in (["--help"], ["targets"], ["inspect", str(d / "model.bin")]):
        res = runner.invoke(npukit.cli.app, args)
        assert res.exit_code == 0, (args, res.output, res.exception)
    assert all(n in runner.invoke(npukit.cli.app, ["targets"]).output for n in names)

    for name in {blocked!r}:
        assert sys.modules[name] is None, name + " was imported for real"
    print("torch-free OK", len(names), "targets")
""").format(blocked=BLOCKED)

# Runs in a fresh interpreter with nothing blocked: the CLI's start-up imports pull in none of these.
IMPORT_SCRIPT = textwrap.dedent("""
    import sys
    import npukit.cli, npukit.checker, npukit.packer, npukit.codegen
    heavy = [m for m in ("torch", "onnx", "onnxruntime", "matplotlib") if m in sys.modules]
    assert not heavy, heavy
    print("imports OK")
""")


def _python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def deploy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy")
    torch.manual_seed(0)
    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(8, 1, 40)))
    npukit.pack(graph, d / "model.bin")
    x = graph.quantize_input(np.random.default_rng(0).standard_normal((4, 1, 40)).astype(np.float32))
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", npukit.run(graph, x)[0])
    return d


def test_deploy_side_runs_with_torch_and_onnx_blocked(deploy_dir):
    res = _python(DEPLOY_SCRIPT, str(deploy_dir))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "torch-free OK" in res.stdout


def test_cli_start_up_imports_no_torch_onnx_or_matplotlib():
    res = _python(IMPORT_SCRIPT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_submodule_is_reachable_as_an_attribute():
    import pkgutil

    import npukit

    names = {m.name for m in pkgutil.iter_modules(npukit.__path__)} - {"__main__"}
    assert names == npukit._SUBMODULES
    assert not hasattr(npukit, "no_such_module")

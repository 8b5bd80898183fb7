"""Bad inputs and failed writes, every command: exit code 1 for a refused input or a failed write (2 only for a
usage error), one `error:` line naming the file, field or layer, no traceback, and the output location left
untouched (no new file, an old output keeps its bytes) or complete.

Each case runs in its own folder W (also the working directory) holding outputs that already exist: `blocker`
(a regular file: a path under it cannot be written, even by root), `existing` (a file), `dir/` and `out.npy/`
(folders), `old.bin`, `old.npy`, `old.onnx`, `old.npir`. The inputs live in one module folder F, built once.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import npukit
from npukit.cli import app

torch.set_num_threads(1)
runner = CliRunner()

_TINY = ("name: tiny\nweight_bits: [8]\nwide_output: true\nmemory:\n"
         "  - {name: sram, bytes: 1000, holds: [activations]}\n"
         "  - {name: flash, bytes: 1000000, holds: [weights]}\n")
_OK_PY = ("import torch\n\n\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
          "        self.c = torch.nn.Conv1d(1, 4, 3)\n\n    def forward(self, x):\n        return self.c(x)\n")
_OLD = {"old.bin": b"old model.bin bytes", "old.npy": b"old npy bytes", "old.onnx": b"old onnx bytes",
        "old.npir": b"old npir bytes", "existing": b"old", "blocker": b"x"}


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """The inputs: a prepared MNIST-1D CNN as .npir, .onnx and model.bin (venus), the same network packed for
    max78000 with the vendor's files, and every damaged, empty or wrong file the cases read."""
    d = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    x = torch.randn(16, 1, 40)
    q = npukit.prepare(npukit.models.mnist1d_cnn(), x)
    q.eval()
    g = npukit.to_ir(q)
    g.save(d / "model.npir")
    npukit.export_onnx(g, d / "model.onnx")
    npukit.pack(g, d / "model.bin")
    np.save(d / "input.npy", g.quantize_input(x.numpy()))
    np.save(d / "float.npy", x.numpy())
    q = npukit.prepare(npukit.models.mnist1d_cnn(), x, target="max78000")
    q.eval()
    g = npukit.to_ir(q)
    npukit.pack(g, d / "ai8x", target="max78000", sample=g.quantize_input(x[:1].numpy()))  # network.yaml, ...

    for name in ("empty.npir", "empty.onnx", "empty.bin", "empty.npy"):
        (d / name).write_bytes(b"")
    mb, onnx_bytes, npir = ((d / n).read_bytes() for n in ("model.bin", "model.onnx", "model.npir"))
    (d / "trunc.bin").write_bytes(mb[: len(mb) // 2])
    (d / "trunc6.bin").write_bytes(mb[:6])
    (d / "flip.bin").write_bytes(mb[: len(mb) // 2] + bytes([mb[len(mb) // 2] ^ 0xFF]) + mb[len(mb) // 2 + 1 :])
    (d / "trunc.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    h = len(onnx_bytes) // 2
    (d / "flip.onnx").write_bytes(onnx_bytes[:h] + bytes([onnx_bytes[h] ^ 0xFF]) + onnx_bytes[h + 1 :])
    (d / "trunc.npir").write_bytes(npir[: len(npir) // 2])
    (d / "text.onnx").write_text("hello, this is not an ONNX file\n")
    (d / "notnpy.npy").write_text("not a .npy file\n")
    np.save(d / "wrongshape.npy", np.zeros((2, 1, 39), np.int8))
    nan = np.random.default_rng(0).standard_normal((2, 1, 40))
    nan[0, 0, 3] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "big.npy", np.full((2, 1, 40), 1000, np.int32))
    (d / "badkey.yaml").write_text("name: x\nbogus_key: 1\n")
    (d / "badsyn.yaml").write_text("name: [x\n  : : :\n")
    venus = (Path(npukit.__file__).parent / "targets" / "venus.yaml").read_text()
    assert "bytes: 655360" in venus
    (d / "badval.yaml").write_text(venus.replace("bytes: 655360", "bytes: lots"))
    (d / "tiny.yaml").write_text(_TINY)
    (d / "fails.py").write_text("raise RuntimeError('boom at import')\n")
    (d / "ok.py").write_text(_OK_PY)
    return d


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# --- setups: monkeypatches applied before the command runs ---------------------------------------------------

def _interrupt_in_write_bytes(mp):
    """Ctrl-C half-way through writing a file's bytes: half of them are on disk."""
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        real(self, bytes(data)[: len(data) // 2])
        raise KeyboardInterrupt

    mp.setattr(pathlib.Path, "write_bytes", write_bytes)


def _interrupt_in_replace(mp):
    """Ctrl-C after the temporary file is complete, before it takes the real name."""
    def replace(self, target):
        raise KeyboardInterrupt

    mp.setattr(pathlib.Path, "replace", replace)


def _interrupt_in_write_text(mp):
    """Ctrl-C during the third text file written (codegen's main.c, after the runtime files, model.h, model.c)."""
    real = pathlib.Path.write_text
    count = [0]

    def write_text(self, data, *a, **k):
        count[0] += 1
        if count[0] == 3:
            real(self, data[:10], *a, **k)
            raise KeyboardInterrupt
        return real(self, data, *a, **k)

    mp.setattr(pathlib.Path, "write_text", write_text)


def _interrupt_in_vendor_checkpoint(mp):
    """Ctrl-C while `pack -o DIR` for max78000 writes the vendor's checkpoint (model.bin is already there)."""
    import npukit.max7800x

    def write_checkpoint(*a, **k):
        raise KeyboardInterrupt

    mp.setattr(npukit.max7800x, "write_checkpoint", write_checkpoint)


def _no_training(mp):
    """The demo must refuse a bad --json before training: a stage that runs fails the case."""
    import npukit.demo

    def stage(run):
        raise AssertionError("the demo started training before checking --json")

    mp.setattr(npukit.demo, "STAGES", [("data", stage)])


# --- the table ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    args: str  # split on spaces; {F} the inputs, {W} the case's folder (and working directory)
    msg: tuple[str, ...] = ()  # each in the output (whitespace-insensitive: rich may wrap)
    code: int = 1
    new: tuple[str, ...] = ()  # files the failed command may leave, complete (e.g. the report of a plan over a limit)
    setup: object = None
    interrupt: bool = False  # Ctrl-C: exit 1 or 130, no error line required


def case(id_, args, *msg, code=1, new=(), setup=None, interrupt=False, xfail=None):
    c = Case(args, msg, code, new, setup, interrupt)
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(c, id=id_, marks=marks)


CASES = [
    # missing files, every command that reads one
    case("run-missing-model", "run {W}/missing.npir {F}/input.npy -o {W}/y.npy", "{W}/missing.npir: no such file"),
    case("run-missing-input", "run {F}/model.npir {W}/missing.npy -o {W}/y.npy",
         "{W}/missing.npy: no such file"),
    case("export-missing", "export {W}/missing.npir -o {W}/m.onnx", "{W}/missing.npir: no such file"),
    case("pack-missing", "pack {W}/missing.onnx -o {W}/m.bin", "{W}/missing.onnx: no such file"),
    case("pack-missing-sample", "pack {F}/model.npir --sample {W}/missing.npy -o {W}/m.bin",
         "{W}/missing.npy: no such file"),
    case("codegen-missing", "codegen {W}/missing.bin -o {W}/c", "{W}/missing.bin: no such file"),
    case("codegen-missing-input", "codegen {F}/model.bin --input {W}/missing.npy -o {W}/c",
         "{W}/missing.npy: no such file"),
    case("inspect-missing", "inspect {W}/missing.bin", "{W}/missing.bin: no such file"),
    case("check-missing-model", "check {W}/missing.onnx", "{W}/missing.onnx: no such file"),
    case("check-missing-py", "check {W}/missing.py:M --input 1,1,40", "{W}/missing.py: no such file"),
    case("targets-missing-yaml", "targets {W}/missing.yaml", "{W}/missing.yaml does not exist"),
    case("demo-missing-profile", "demo --out {W}/dir --target {W}/missing.yaml", "{W}/missing.yaml does not exist"),
    case("import-missing-description", "import-ai8x {W}/missing.yaml {F}/ai8x/checkpoint.pth.tar --input 1,40",
         "{W}/missing.yaml: no such file"),
    case("import-missing-checkpoint", "import-ai8x {F}/ai8x/network.yaml {W}/missing.pth.tar --input 1,40",
         "{W}/missing.pth.tar is not a readable checkpoint"),

    # empty, truncated, damaged and foreign model files
    case("run-empty-npir", "run {F}/empty.npir {F}/input.npy -o {W}/y.npy", "{F}/empty.npir is empty (0 bytes)"),
    case("export-empty-onnx", "export {F}/empty.onnx -o {W}/m.onnx", "{F}/empty.onnx is empty (0 bytes)"),
    case("inspect-empty-bin", "inspect {F}/empty.bin", "{F}/empty.bin is empty (0 bytes)"),
    case("codegen-empty-bin", "codegen {F}/empty.bin -o {W}/c", "{F}/empty.bin is empty (0 bytes)"),
    case("check-empty-onnx", "check {F}/empty.onnx", "{F}/empty.onnx is empty (0 bytes)"),
    case("run-truncated-bin", "run {F}/trunc.bin {F}/input.npy -o {W}/y.npy", "{F}/trunc.bin", "truncated"),
    case("inspect-truncated-header", "inspect {F}/trunc6.bin", "{F}/trunc6.bin", "shorter than the 20-byte header"),
    case("export-truncated-bin", "export {F}/trunc.bin -o {W}/m.onnx", "{F}/trunc.bin", "truncated"),
    case("inspect-flipped-byte", "inspect {F}/flip.bin", "{F}/flip.bin", "CRC mismatch", "damaged"),
    case("run-flipped-byte", "run {F}/flip.bin {F}/input.npy -o {W}/y.npy", "{F}/flip.bin", "CRC mismatch"),
    case("codegen-flipped-byte", "codegen {F}/flip.bin -o {W}/c", "{F}/flip.bin", "CRC mismatch"),
    case("run-text-onnx", "run {F}/text.onnx {F}/input.npy -o {W}/y.npy",
         "{F}/text.onnx is not a model file npukit reads"),
    case("pack-text-onnx", "pack {F}/text.onnx -o {W}/m.bin", "{F}/text.onnx is not a model file npukit reads"),
    case("inspect-npy-as-model", "inspect {F}/input.npy", "{F}/input.npy is not a model file npukit reads"),
    case("run-truncated-onnx", "run {F}/trunc.onnx {F}/input.npy -o {W}/y.npy", "{F}/trunc.onnx is not an ONNX file"),
    case("pack-flipped-onnx", "pack {F}/flip.onnx -o {W}/m.bin", "{F}/flip.onnx was edited after export", "fix:"),
    case("inspect-truncated-npir", "inspect {F}/trunc.npir", "{F}/trunc.npir is not a readable npukit IR file"),
    case("inspect-directory", "inspect {W}/dir", "{W}/dir is a folder"),

    # .npy inputs: not a .npy, empty, wrong shape, NaN, float, out of range
    case("run-not-npy", "run {F}/model.npir {F}/notnpy.npy -o {W}/y.npy", "{F}/notnpy.npy is not a readable .npy file"),
    case("run-empty-npy", "run {F}/model.npir {F}/empty.npy -o {W}/y.npy", "{F}/empty.npy is not a readable .npy file"),
    case("codegen-empty-npy", "codegen {F}/model.bin --input {F}/empty.npy -o {W}/c",
         "{F}/empty.npy is not a readable .npy file"),
    case("import-empty-npy", "import-ai8x {F}/ai8x/network.yaml {F}/ai8x/checkpoint.pth.tar --input {F}/empty.npy",
         "{F}/empty.npy is not a readable .npy file"),
    case("run-wrong-shape", "run {F}/model.npir {F}/wrongshape.npy -o {W}/y.npy",
         "has shape (1, 39) per sample; the model expects (1, 40)"),
    case("codegen-wrong-shape", "codegen {F}/model.bin --input {F}/wrongshape.npy -o {W}/c",
         "(1, 40)"),
    case("run-nan-quantize", "run {F}/model.npir {F}/nan.npy --quantize -o {W}/y.npy", "NaN or infinite",
         "index [0, 0, 3]"),
    case("run-float-without-quantize", "run {F}/model.npir {F}/float.npy -o {W}/y.npy", "must be integers"),
    case("run-out-of-range", "run {F}/model.npir {F}/big.npy -o {W}/y.npy", "outside the 8-bit range [-128, 127]"),
    case("codegen-out-of-range", "codegen {F}/model.bin --input {F}/big.npy -o {W}/c",
         "outside the 8-bit range [-128, 127]"),
    case("codegen-float-input", "codegen {F}/model.bin --input {F}/float.npy -o {W}/c", "must be integers"),
    case("pack-vendor-wrong-sample", "pack {F}/ai8x/model.bin --target max78000 --sample {F}/wrongshape.npy -o {W}/v",
         "(1, 40)"),

    # targets and profiles
    case("pack-unknown-target", "pack {F}/model.npir --target nosuch -o {W}/m.bin", "unknown target 'nosuch'",
         "built-in targets"),
    case("check-unknown-target", "check {F}/model.npir --target nosuch", "unknown target 'nosuch'"),
    case("demo-unknown-target", "demo --out {W}/dir --target nosuch", "unknown target 'nosuch'"),
    case("targets-unknown", "targets nosuch", "unknown target 'nosuch'", "built-in targets"),
    case("targets-bad-key", "targets {F}/badkey.yaml", "{F}/badkey.yaml", "bogus_key"),
    case("pack-profile-bad-key", "pack {F}/model.npir --target {F}/badkey.yaml -o {W}/m.bin", "{F}/badkey.yaml",
         "bogus_key"),
    case("targets-bad-yaml", "targets {F}/badsyn.yaml", "{F}/badsyn.yaml", "not valid YAML", "line 2"),
    case("check-profile-bad-yaml", "check {F}/model.npir --target {F}/badsyn.yaml", "{F}/badsyn.yaml",
         "not valid YAML"),
    case("targets-bad-value", "targets {F}/badval.yaml", "{F}/badval.yaml", "memory.0.bytes"),
    case("pack-other-arithmetic", "pack {F}/model.npir --target max78000 -o {W}/m.bin", "quantized for venus",
         "max78000"),
    case("check-description-other-target", "check {F}/ai8x/network.yaml --target venus", "venus"),
    case("import-other-target", "import-ai8x {F}/ai8x/network.yaml {F}/ai8x/checkpoint.pth.tar --input 1,40 "
         "--target venus", "venus"),

    # writes that fail: a path under a regular file, a folder where a file goes, a file where a folder goes
    case("run-out-under-file", "run {F}/model.npir {F}/input.npy -o {W}/blocker/y.npy", "cannot write {W}/blocker/y.npy"),
    case("export-out-under-file", "export {F}/model.npir -o {W}/blocker/m.onnx", "{W}/blocker/m.onnx"),
    case("pack-out-under-file", "pack {F}/model.npir -o {W}/blocker/m.bin", "cannot write {W}/blocker/m.bin"),
    case("pack-report-under-file", "pack {F}/model.npir -o {W}/m.bin --report {W}/blocker/rep",
         "cannot write the report into {W}/blocker/rep"),
    case("pack-vendor-under-file", "pack {F}/ai8x/model.bin --target max78000 -o {W}/blocker/v",
         "cannot write into {W}/blocker"),
    case("codegen-out-under-file", "codegen {F}/model.bin -o {W}/blocker/c", "cannot write into {W}/blocker"),
    case("import-out-under-file", "import-ai8x {F}/ai8x/network.yaml {F}/ai8x/checkpoint.pth.tar --input 1,40 "
         "-o {W}/blocker/m.npir", "{W}/blocker/m.npir"),
    case("demo-out-under-file", "demo --out {W}/blocker/sub", "cannot write to {W}/blocker/sub"),
    case("demo-json-under-file", "demo --out {W}/dir --json {W}/blocker/f.json", "{W}/blocker/f.json",
         setup=_no_training),
    case("run-out-is-dir", "run {F}/model.npir {F}/input.npy -o {W}/dir", "{W}/dir"),
    case("run-out-is-dir-npy", "run {F}/model.npir {F}/input.npy -o {W}/out.npy", "{W}/out.npy is a folder"),
    case("export-out-is-dir", "export {F}/model.npir -o {W}/dir", "{W}/dir"),
    case("pack-out-is-dir", "pack {F}/model.npir -o {W}/dir", "cannot write {W}/dir"),
    case("import-out-is-dir", "import-ai8x {F}/ai8x/network.yaml {F}/ai8x/checkpoint.pth.tar --input 1,40 -o {W}/dir",
         "{W}/dir"),
    case("pack-report-is-file", "pack {F}/model.npir -o {W}/m.bin --report {W}/existing",
         "cannot write the report into {W}/existing"),
    case("pack-vendor-out-is-file", "pack {F}/ai8x/model.bin --target max78000 -o {W}/existing",
         "{W}/existing is a file"),
    case("codegen-out-is-file", "codegen {F}/model.bin -o {W}/existing", "{W}/existing is a file"),
    case("demo-out-is-file", "demo --out {W}/existing", "cannot write to {W}/existing"),

    # a plan over a memory limit: the old model.bin keeps its bytes; with --report the report is complete
    case("pack-over-memory", "pack {F}/model.onnx -o {W}/old.bin --target {F}/tiny.yaml", "[memory-limit]",
         "1560 bytes over", "conv2"),
    case("pack-over-memory-report", "pack {F}/model.onnx -o {W}/old.bin --target {F}/tiny.yaml --report {W}/rep",
         "the report in {W}/rep shows where", "[memory-limit]", "conv2",
         new=("rep/report.md", "rep/report.html", "rep/arena.png")),

    # check: its options and the model it is given
    case("check-shape-not-numbers", "check {F}/model.npir --input 1,x", "--input '1,x'", "e.g."),
    case("check-shape-zero", "check {F}/ok.py:M --input 0,1,40", "--input '0,1,40'"),
    case("check-shape-wrong-for-model", "check {F}/ok.py:M --input 1,2,40", "shape (1, 2, 40)", "fix:"),
    case("check-shape-wrong-for-npir", "check {F}/model.npir --input 1,1,39", "(1, 40)"),
    case("check-no-shape", "check {F}/ok.py:M", "needs an example input", "--input"),
    case("check-bad-kwargs-json", "check {F}/ok.py:M --input 1,1,40 --kwargs {bad", "--kwargs is not valid JSON"),
    case("check-kwargs-not-accepted", 'check {F}/ok.py:M --input 1,1,40 --kwargs {"a":1}', "unexpected keyword",
         "--kwargs"),
    case("check-py-fails-to-import", "check {F}/fails.py:M --input 1,1,40", "{F}/fails.py fails to import",
         "boom at import"),
    case("check-no-such-class", "check {F}/ok.py:Nope --input 1,1,40", "{F}/ok.py defines no 'Nope'"),
    case("check-bad-format", "check {F}/model.npir --format xml", "--format 'xml'", "text or json"),
    case("check-bad-weight-bits", "check {F}/ok.py:M --input 1,1,40 --weight-bits 3", "not 3-bit"),

    # import-ai8x: its options and files
    case("import-shape-not-numbers", "import-ai8x {F}/ai8x/network.yaml {F}/ai8x/checkpoint.pth.tar --input 1,x",
         "--input '1,x'"),
    case("import-checkpoint-not-torch", "import-ai8x {F}/ai8x/network.yaml {F}/model.bin --input 1,40",
         "{F}/model.bin is not a readable checkpoint"),
    case("import-description-binary", "import-ai8x {F}/model.npir {F}/ai8x/checkpoint.pth.tar --input 1,40",
         "{F}/model.npir"),

    # usage errors: exit 2, click's message
    case("run-missing-output-option", "run {F}/model.npir {F}/input.npy", "Missing option", "--output", code=2),
    case("run-unknown-option", "run {F}/model.npir {F}/input.npy -o {W}/y.npy --bogus", "No such option: --bogus",
         code=2),
    case("pack-missing-argument", "pack", "Missing argument", code=2),
    case("import-missing-input-option", "import-ai8x {F}/ai8x/network.yaml {F}/ai8x/checkpoint.pth.tar",
         "Missing option", "--input", code=2),
    case("demo-epochs-below-min", "demo --out {W}/dir --float-epochs 0", "Invalid value", "--float-epochs", code=2),

    # Ctrl-C mid-write: no half-written or temporary file, old outputs intact
    case("pack-ctrl-c-mid-bytes", "pack {F}/model.npir -o {W}/old.bin", setup=_interrupt_in_write_bytes,
         interrupt=True),
    case("pack-ctrl-c-before-rename", "pack {F}/model.npir -o {W}/old.bin", setup=_interrupt_in_replace,
         interrupt=True),
    case("export-ctrl-c-before-rename", "export {F}/model.npir -o {W}/old.onnx", setup=_interrupt_in_replace,
         interrupt=True),
    case("import-ctrl-c-before-rename", "import-ai8x {F}/ai8x/network.yaml {F}/ai8x/checkpoint.pth.tar --input 1,40 "
         "-o {W}/old.npir", setup=_interrupt_in_replace, interrupt=True),
    case("run-ctrl-c-before-rename", "run {F}/model.npir {F}/input.npy -o {W}/old.npy", setup=_interrupt_in_replace,
         interrupt=True),
    case("codegen-ctrl-c-mid-write", "codegen {F}/model.bin -o {W}/c", setup=_interrupt_in_write_text, interrupt=True),
    case("pack-vendor-ctrl-c", "pack {F}/ai8x/model.bin --target max78000 -o {W}/v",
         setup=_interrupt_in_vendor_checkpoint, interrupt=True),
]


@pytest.mark.parametrize("c", CASES)
def test_bad_input(c: Case, fx: Path, tmp_path: Path, monkeypatch):
    w = tmp_path
    for name, data in _OLD.items():
        (w / name).write_bytes(data)
    (w / "dir").mkdir()
    (w / "out.npy").mkdir()
    monkeypatch.chdir(w)

    def fill(text: str) -> str:
        return text.replace("{F}", str(fx)).replace("{W}", str(w))

    args = [fill(a) for a in c.args.split(" ")]
    before_w, before_f = _snapshot(w), _snapshot(fx)
    if c.setup is not None:
        c.setup(monkeypatch)
    res = runner.invoke(app, args, env={"COLUMNS": "1000"})
    monkeypatch.undo()  # the writers back before the files are read

    out = res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), \
        f"uncaught {type(res.exception).__name__}: {res.exception}\n{out}"  # a traceback for the user
    assert "Traceback" not in out, out
    if c.interrupt:
        assert res.exit_code in (1, 130), out
    else:
        assert res.exit_code == c.code, out
        if c.code == 1:
            errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
            assert len(errors) == 1, out
        else:
            assert "Usage:" in out, out
    flat = "".join(out.split())
    for m in c.msg:
        assert "".join(fill(m).split()) in flat, f"{m!r} not in:\n{out}"

    after_w = _snapshot(w)
    assert _snapshot(fx) == before_f, "an input file changed"
    changed = sorted(k for k in set(before_w) | set(after_w) if before_w.get(k, 0) != after_w.get(k, 0))
    allowed = set(c.new) | {str(Path(n).parent) for n in c.new}
    assert [k for k in changed if k not in allowed] == [], f"left behind or changed: {changed}\n{out}"
    for n in c.new:
        assert (w / n).is_file() and (w / n).stat().st_size > 0, n


def test_case_count():
    assert len(CASES) >= 30


def test_console_script_says_interrupted(fx, tmp_path, monkeypatch, capsys):
    from npukit import cli

    (tmp_path / "old.bin").write_bytes(b"old")
    _interrupt_in_replace(monkeypatch)
    monkeypatch.setattr("sys.argv", ["npukit", "pack", str(fx / "model.npir"), "-o", str(tmp_path / "old.bin")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    monkeypatch.undo()
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert e.value.code == 130 and "Traceback" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.bin"] and (tmp_path / "old.bin").read_bytes() == b"old"
    assert "interrupted" in text or "Aborted" in text, repr(text)

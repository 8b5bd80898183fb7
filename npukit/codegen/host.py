"""Build and run a generated C project on the host (gcc or clang), as the tests and the demo do."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..errors import NpukitError

STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
KERNELS = Path(__file__).parent / "runtime"
RUNTIME = Path(__file__).resolve().parents[2] / "runtime"  # the model.bin runtime, in an npukit checkout
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]


def find_cc(preferred: str | None = None) -> str | None:
    for cc in ([preferred] if preferred else ["cc", "gcc", "clang"]):
        if cc and shutil.which(cc):
            return cc
    return None


def build(project: str | Path, program: str = "kat", *, cc: str | None = None, opt: str = "-O2",
          sanitize: bool = False, out_name: str | None = None, defines: list[str] = (),
          extra_sources: list[str] = ()) -> Path:
    """Compile `program`.c (kat: main.c, run_file, dump_run) with the model and kernels; returns the executable."""
    project = Path(project)
    compiler = find_cc(cc)
    if compiler is None:
        raise NpukitError("no C compiler found (looked for cc, gcc, clang)")
    main = "main.c" if program == "kat" else f"{program}.c"
    sources = [main, "model.c", *extra_sources, *sorted(p.name for p in project.glob("nk_*.c"))]
    exe = project / (out_name or program + ("-asan" if sanitize else ""))
    cmd = [compiler, *STRICT, opt, *(SANITIZE if sanitize else []), *defines, "-o", str(exe.name), *sources]
    res = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    if res.returncode != 0:
        raise NpukitError(f"C build failed ({' '.join(cmd)}):\n{res.stdout}{res.stderr}")
    return exe


def run_kat(exe: str | Path, timeout: float = 60) -> tuple[bool, str]:
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout)
    out = res.stdout + res.stderr
    return res.returncode == 0 and "KAT PASS" in out, out


def run_file(exe: str | Path, x: np.ndarray, out_dtype: np.dtype, out_size: int, workdir: str | Path) -> np.ndarray:
    """Run the generated `run_file` program on a batch of int8 inputs; returns (n, out_size) outputs."""
    return run_file_io(exe, [x], [(out_dtype, out_size)], workdir)[0]


def run_file_io(exe: str | Path, xs: list[np.ndarray], outs: list[tuple[np.dtype, int]],
                workdir: str | Path) -> list[np.ndarray]:
    """`run_file` for any number of inputs and outputs: `xs` one int8 batch per input, `outs` (dtype, size)
    per output; returns one (n, size) array per output. A record of run_file's files is every input's
    (output's) sample in turn."""
    workdir = Path(workdir)
    src, dst = workdir / "inputs.raw", workdir / "outputs.raw"
    n = len(xs[0])
    np.concatenate([np.ascontiguousarray(x, dtype=np.int8).reshape(n, -1) for x in xs], axis=1).tofile(src)
    res = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise NpukitError(f"run_file failed: {res.stdout}{res.stderr}")
    widths = [np.dtype(d).itemsize * size for d, size in outs]
    raw = np.fromfile(dst, dtype=np.uint8).reshape(n, sum(widths))
    ends = np.cumsum(widths)
    return [np.ascontiguousarray(raw[:, e - w : e]).view(np.dtype(d)).reshape(n, size)
            for (d, size), w, e in zip(outs, widths, ends, strict=True)]


# Hosts have memory to spare: the runner's tables hold an unrolled recurrent model (thousands of ops); the
# header's small defaults are for devices. The host runner also has the per-layer trace hook (`npukit-run
# --dump`, `npukit compare`), which firmware builds leave out (NPUKIT_TRACE, off by default).
HOST_TABLES = ("-DNPUKIT_MAX_TENSORS=4096", "-DNPUKIT_MAX_OPS=4096", "-DNPUKIT_TRACE=1")


def build_runtime(out_dir: str | Path, program: str = "npukit_run", *, cc: str | None = None,
                  flags: list[str] = ("-O2",), suffix: str = "") -> Path:
    """Compile runtime/<program>.c (npukit_run: the `npukit-run` runner; fuzz_harness) with the model.bin
    runtime and the kernel library, with `flags` after the strict ones; returns the executable."""
    compiler = find_cc(cc)
    if compiler is None:
        raise NpukitError("no C compiler found (looked for cc, gcc, clang)")
    if not (RUNTIME / "npukit_runtime.c").is_file():
        raise NpukitError(f"the C runtime's sources are not at {RUNTIME}: run from an npukit checkout")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    exe = Path(out_dir) / (program + suffix)
    sources = [RUNTIME / f"{program}.c", RUNTIME / "npukit_runtime.c",
               *sorted(KERNELS.glob("nk_*.c"))]
    cmd = [compiler, *STRICT, *HOST_TABLES, *flags, f"-I{KERNELS}", f"-I{RUNTIME}", "-o", str(exe),
           *map(str, sources)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise NpukitError(f"C build failed ({' '.join(cmd)}):\n{res.stdout}{res.stderr}")
    return exe


def runtime_ops_define(op_names) -> str:
    """The -DNPUKIT_OPS=... of a model.bin runtime that runs only these ops (a graph's `n.op for n in
    graph.nodes`): the code of the others is left out (npukit_runtime.h). Names the runtime does not run
    are dropped; npukit_load refuses them in any build."""
    known = set(re.findall(r"\bNPUKIT_OP_(\w+)\b", (RUNTIME / "npukit_runtime.h").read_text()))
    kinds = sorted({n.upper() for n in op_names} & known)
    return "-DNPUKIT_OPS=" + ("|".join(f"(1u<<NPUKIT_OP_{k})" for k in kinds) or "0u")


_BUILT: dict[tuple, Path] = {}


def cached_runtime() -> Path:
    """`npukit-run` built once per process (and again when a source changes): the per-layer comparisons run
    it on many models, and a build takes seconds."""
    import atexit
    import shutil
    import tempfile

    sources = sorted([*RUNTIME.glob("*.[ch]"), *KERNELS.glob("*.[ch]")])
    key = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sources)
    if key not in _BUILT or not _BUILT[key].is_file():
        out = Path(tempfile.mkdtemp(prefix="npukit-run-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        _BUILT[key] = build_runtime(out)
    return _BUILT[key]


def run_runtime(exe: str | Path, model_bin: str | Path, x, workdir: str | Path, out_dtype, *,
                dump: bool = False) -> tuple:
    """`npukit-run [--dump] model.bin` on a batch of integer inputs (at the input's dtype): the outputs,
    (samples, output size) at `out_dtype`, and stdout (the dump lines). For a model with several inputs or
    outputs, `x` and `out_dtype` are lists (one per input, one per output) and so are the outputs: one file
    per tensor, as npukit-run takes them."""
    many = isinstance(x, list | tuple)
    xs, dtypes = (list(x), list(out_dtype)) if many else ([x], [out_dtype])
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    srcs = [workdir / f"runtime_in{k}.bin" for k in range(len(xs))]
    dsts = [workdir / f"runtime_out{k}.bin" for k in range(len(dtypes))]
    for src, v in zip(srcs, xs, strict=True):
        v = np.ascontiguousarray(v)
        v.astype(v.dtype.newbyteorder("<")).tofile(src)
    cmd = [str(exe), *(["--dump"] if dump else []), str(model_bin), *map(str, srcs), *map(str, dsts)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise NpukitError(f"npukit-run failed (exit {res.returncode}): {res.stderr.strip()}")
    ys = [np.frombuffer(dst.read_bytes(), np.dtype(d).newbyteorder("<")).reshape(len(xs[0]), -1)
          for dst, d in zip(dsts, dtypes, strict=True)]
    return (ys if many else ys[0]), res.stdout

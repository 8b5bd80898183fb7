"""The C runtime (runtime/: npukit_load, npukit_invoke, the npukit-run tool) against the Python reader and the
reference engine: every output byte on real, MAX78000 and random models; the documented errors on damaged
files; and, under AddressSanitizer and UBSan, mutated files (sizes and CRCs recomputed, so the mutations
reach the checks behind them), each cross-checked with the Python side.
"""

from __future__ import annotations

import itertools
import re
import shutil
import struct
import subprocess
import zlib

import c_runtime_tools as T
import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models_for_tests import LOWBIT, Branchy
from test_differential import TARGETS, nets, random_graph_and_inputs

import npukit
from npukit.codegen import host
from npukit.models import mnist1d_cnn

torch.set_num_threads(1)
CC = T.find_cc()
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler found")


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("c_runtime")


@pytest.fixture(scope="module")
def runner(build_dir):
    return T.build("npukit_run", build_dir)


@pytest.fixture(scope="module")
def harness(build_dir):
    if not T.sanitizers_work(CC, build_dir):
        pytest.skip(f"{CC} cannot build and run programs with AddressSanitizer and UBSan here")
    return T.build("fuzz_harness", build_dir, sanitize=True)


@pytest.fixture(scope="module")
def demo():
    """The demo network prepared on MNIST-1D, and 300 test samples."""
    data = npukit.data.mnist1d()
    torch.manual_seed(0)
    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.from_numpy(data.x_train[:256])))
    return graph, graph.quantize_input(data.x_test[:300])


def _run(runner, model: bytes, x: np.ndarray, tmp_path):
    res = T.run_file(runner, model, x, tmp_path)
    return res, tmp_path / "output.bin"


def _assert_matches_engine(runner, graph, x, tmp_path, model: bytes | None = None):
    res, out = _run(runner, model or T.pack(graph), x, tmp_path)
    assert res.returncode == 0, res.stderr
    want = npukit.run(graph, x)[0]
    assert out.read_bytes() == np.ascontiguousarray(want).astype(want.dtype.newbyteorder("<")).tobytes()


def test_demo_model_matches_the_engine(runner, demo, tmp_path):
    graph, q = demo
    _assert_matches_engine(runner, graph, q, tmp_path)


def test_max78000_model_matches_the_engine(runner, tmp_path):
    """Every 2-d op on MAX78000: 8-bit bias b * 128, shifted outputs, average pooling truncated toward zero
    (the profile's pool_rounding, which only the deflated target section holds)."""
    torch.manual_seed(1)
    x = torch.randn(32, 3, 8, 8) * 2
    graph = npukit.to_ir(npukit.prepare(Branchy(), x, target="max78000", rules="off"))
    assert graph.target["pool_rounding"] == "trunc" and {"avgpool", "concat", "add"} <= {n.op for n in graph.nodes}
    _assert_matches_engine(runner, graph, graph.quantize_input(x.numpy()), tmp_path)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(spec=nets(), target=st.sampled_from(sorted(TARGETS)), seed=st.integers(0, 2**16))
def test_random_models_match_the_engine(runner, spec, target, seed, tmp_path):
    graph, q = random_graph_and_inputs(spec, target, seed)
    _assert_matches_engine(runner, graph, q, tmp_path)


def test_the_rounding_modes_come_from_the_device_section(runner, tmp_path):
    """The runtime never inflates the profile: the device section gives it the rounding modes. A profile
    written other ways (escaped keys, repeated keys, white space, other compressions, another section order)
    runs as Python reads it; a device section that disagrees with the profile is refused by Python, and the
    runtime, which cannot see the profile, computes with the device section's modes."""
    torch.manual_seed(2)
    x = torch.randn(16, 3, 8, 8)
    graph = npukit.to_ir(npukit.prepare(Branchy(), x, target=LOWBIT, rules="off"))
    q = graph.quantize_input(x.numpy())
    data = T.pack(graph)
    body = T.sections_of(data)
    text = zlib.decompress(body["target"]).decode()
    variants = [
        (text.replace('"rounding":"half_up"', '"round\\u0069ng" : "floor"'), 2, 0),
        (text[:-1] + ',"pool_rounding":"half_up","pool_rounding":"trunc"}', 0, 3),
        (text.replace(",", ",\n  ").replace('"rounding":"half_up"', '"rounding":"half_even"'), 1, 0),
    ]
    read = []
    for i, (v, rounding, pool_rounding) in enumerate(variants):
        for level in (0, 9):
            body["target"] = zlib.compress(v.encode(), level)
            body["device"] = bytes([rounding, pool_rounding, body["device"][2], 0])
            order = list(reversed(body)) if i == 1 else None
            model = T.assemble(body, graph.target["target_id"], order)
            read.append(npukit.modelbin.read(model).graph)
            _assert_matches_engine(runner, read[-1], q, tmp_path, model)
    assert [(g.rounding, g.target["pool_rounding"]) for g in read[::2]] == [
        ("floor", "half_up"), ("half_up", "trunc"), ("half_even", "half_up")]
    # the profile says floor, the device section half_up: Python refuses, C runs the file with half_up
    body["target"] = zlib.compress(variants[0][0].encode())
    body["device"] = bytes([0, 0, body["device"][2], 0])
    model = T.assemble(body, graph.target["target_id"])
    with pytest.raises(npukit.modelbin.ModelBinError, match="section 'device': rounding is half_up, but the target "
                                                            "profile says floor"):
        npukit.modelbin.read(model)
    _assert_matches_engine(runner, graph, q, tmp_path, model)
    floor = npukit.modelbin.read(T.assemble(dict(body, device=bytes([2, 0, body["device"][2], 0])),
                                            graph.target["target_id"])).graph
    assert not np.array_equal(npukit.run(floor, q)[0], npukit.run(graph, q)[0])  # the modes do differ here


# ---------------------------------------------------------------------------------------------------
# Errors


def _device(data: bytes, head: bytes) -> bytes:
    body = T.sections_of(data)
    body["device"] = head + body["device"][len(head):]
    return T.assemble(body, struct.unpack_from("<H", data, 6)[0])


def _flip(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:]


DAMAGE = {
    "empty": (lambda d: b"", "MAGIC"),
    "wrong magic": (lambda d: b"PK\x03\x04" + d[4:], "MAGIC"),
    "header only": (lambda d: d[:12], "SIZE"),
    "truncated": (lambda d: d[:len(d) // 2], "SIZE"),
    "trailing bytes": (lambda d: d + b"\0", "SIZE"),
    "bit flip": (lambda d: _flip(d, len(d) // 3), "CRC"),
    "bit flip in the CRC": (lambda d: _flip(d, 17), "CRC"),
    "newer version": (lambda d: T.fix(d[:4] + struct.pack("<H", 4) + d[6:]), "VERSION"),
    "older version (2: no device section)": (lambda d: T.fix(d[:4] + struct.pack("<H", 2) + d[6:]), "VERSION"),
    "unknown rounding mode in the device section": (lambda d: _device(d, b"\x04\x00"), "TARGET"),
    "header flag": (lambda d: T.fix(d[:8] + b"\x01\x00" + d[10:]), "HEADER"),
    "truncated, size fixed": (lambda d: T.fix(d[:len(d) - 7]), "SECTION"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_files_give_the_documented_error(runner, demo, tmp_path, damage):
    graph, q = demo
    make, status = DAMAGE[damage]
    res, out = _run(runner, make(T.pack(graph)), q[:2], tmp_path)
    assert res.returncode == T.EXIT_MODEL and not out.exists()
    assert len(res.stderr.splitlines()) == 1 and f"(NPUKIT_E_{status})" in res.stderr, res.stderr
    with pytest.raises(npukit.modelbin.ModelBinError):
        npukit.modelbin.read(make(T.pack(graph)))


def test_overlapping_sections_are_refused(runner, demo, tmp_path):
    """The section table: a section that shares bytes with another, or an empty one strictly inside another, is
    refused (NPUKIT_E_SECTION; the Python reader says they overlap); sections that only touch are not."""
    graph, q = demo
    data = T.pack(graph)
    table = [struct.unpack_from("<HHII", data, 20 + 12 * i) for i in range(struct.unpack_from("<H", data, 10)[0])]

    def moved(i: int, off: int, size: int) -> bytes:
        out = bytearray(data)
        struct.pack_into("<II", out, 20 + 12 * i + 4, off, size)
        return T.fix(out)

    cases = [moved(i, off + 4, size) for i in range(len(table)) for j, (_, _, off, big) in enumerate(table)
             if i != j and big >= 8 for size in (4, 0)]
    assert len(cases) >= 40
    for case in cases:
        res, _ = _run(runner, case, q[:1], tmp_path)
        assert res.returncode == T.EXIT_MODEL and "(NPUKIT_E_SECTION)" in res.stderr, res.stderr
        with pytest.raises(npukit.modelbin.ModelBinError, match="overlap"):
            npukit.modelbin.read(case)
    # the packed file's own sections touch: one ends where the next starts
    assert any(off in {o + n for _, _, o, n in table} for _, _, off, _ in table)
    _assert_matches_engine(runner, graph, q[:2], tmp_path, model=data)


def test_input_files_of_the_wrong_size_or_range(runner, tmp_path):
    torch.manual_seed(3)
    x = torch.randn(16, 2, 10)
    four_bit = {"name": "a4", "activation_bits": 4, "weight_bits": [8], "rounding": "half_up"}
    graph = npukit.to_ir(npukit.prepare(nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24, 2)),
                                        x, target=four_bit, rules="off"))
    assert graph.input_spec().bits == 4
    model, q = T.pack(graph), graph.quantize_input(x.numpy())
    _assert_matches_engine(runner, graph, q, tmp_path)
    res, _ = _run(runner, model, q.reshape(-1)[:-1], tmp_path)  # not a whole number of samples
    assert res.returncode == T.EXIT_INPUT_SIZE and "not a whole number" in res.stderr
    res, out = _run(runner, model, q[:0], tmp_path)  # no samples: no outputs
    assert res.returncode == 0 and out.read_bytes() == b""
    bad = q.copy()
    bad[1, 0, 0] = 9  # outside the 4-bit range, as the engine also refuses
    res, out = _run(runner, model, bad, tmp_path)
    assert res.returncode == 5 and "sample 1" in res.stderr and "(NPUKIT_E_INPUT)" in res.stderr
    with pytest.raises(npukit.NpukitError, match="outside the 4-bit range"):
        npukit.run(graph, bad)


def test_valid_models_the_kernels_cannot_run_are_refused(runner, tmp_path):
    """16-bit activations: the Python reader and engine take them, the C kernels read int8."""
    torch.manual_seed(4)
    x = torch.randn(8, 4)
    graph = npukit.to_ir(npukit.prepare(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), x,
                                        target={"name": "a16", "activation_bits": 16, "weight_bits": [8]}, rules="off"))
    model = T.pack(graph)
    npukit.modelbin.read(model)
    res, _ = _run(runner, model, graph.quantize_input(x.numpy()), tmp_path)
    assert res.returncode == T.EXIT_MODEL and "(NPUKIT_E_UNSUPPORTED)" in res.stderr


def test_attributes_beyond_int32_are_unsupported(runner, tmp_path):
    """The loader computes with attributes in int32: a value of an op's own schema beyond it (no kernel
    parameter holds one) is refused as NPUKIT_E_UNSUPPORTED when the op's schema is checked, so before the
    requantisation check the Python reader refuses this file with."""
    from npukit import memplan

    torch.manual_seed(4)
    x = torch.randn(8, 4)
    graph = npukit.to_ir(npukit.prepare(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), x, rules="off"))
    plan = memplan.plan_graph(graph)
    q = graph.quantize_input(x.numpy())
    for value, status in [(2**31, "UNSUPPORTED"), (-2**31 - 1, "UNSUPPORTED"), (2**31 - 1, "GRAPH")]:
        next(n for n in graph.nodes if n.op == "linear").attrs["act_max"] = value
        model = T.pack_unchecked(graph, plan.offsets, plan.arena_bytes, plan.lower_bound_bytes)
        with pytest.raises(npukit.modelbin.ModelBinError, match="act_max"):
            npukit.modelbin.read(model)
        res, _ = _run(runner, model, q, tmp_path)
        assert res.returncode == T.EXIT_MODEL and f"(NPUKIT_E_{status})" in res.stderr, (value, res.stderr)


@pytest.mark.parametrize("define, status", [("NPUKIT_MAX_OPS=4", "LIMIT"), ("NPUKIT_MAX_OPS=7", None)])
def test_build_time_sizes(demo, tmp_path, define, status):
    """Tables smaller than the model refuse it (NPUKIT_E_LIMIT); tables just large enough run it."""
    exe = tmp_path / "small"
    cmd = [CC, *T.STRICT, "-O0", f"-D{define}", f"-I{T.KERNELS}", "-o", str(exe),
           str(T.RUNTIME / "npukit_run.c"), str(T.RUNTIME / "npukit_runtime.c"),
           *map(str, sorted(T.KERNELS.glob("nk_*.c")))]
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    graph, q = demo
    if status is None:
        _assert_matches_engine(exe, graph, q[:10], tmp_path)
        return
    res, _ = _run(exe, T.pack(graph), q[:1], tmp_path)
    assert res.returncode == T.EXIT_MODEL and f"(NPUKIT_E_{status})" in res.stderr


def test_a_build_with_only_the_models_ops(runner, demo, tmp_path):
    """NPUKIT_OPS: a runtime built for the demo's ops runs it byte for byte and refuses a model with another
    op (average pooling) as NPUKIT_E_UNSUPPORTED, which the full build runs."""
    graph, q = demo
    define = host.runtime_ops_define(n.op for n in graph.nodes)
    assert "NPUKIT_OP_CONV)" in define and "AVGPOOL" not in define
    exe = host.build_runtime(tmp_path / "build", flags=["-O1", define])
    _assert_matches_engine(exe, graph, q[:20], tmp_path)
    torch.manual_seed(5)
    x = torch.randn(16, 1, 40)
    other = npukit.to_ir(npukit.prepare(nn.Sequential(nn.Conv1d(1, 4, 3), nn.AvgPool1d(2), nn.Flatten(),
                                                      nn.Linear(76, 3)), x, rules="off"))
    res, _ = _run(exe, T.pack(other), other.quantize_input(x.numpy()), tmp_path)
    assert res.returncode == T.EXIT_MODEL and "(NPUKIT_E_UNSUPPORTED)" in res.stderr, res.stderr
    _assert_matches_engine(runner, other, other.quantize_input(x.numpy()), tmp_path)


def test_fields_read_byte_by_byte_where_the_byte_order_is_unknown(runner, demo, tmp_path, bases):
    """A compiler that does not say its byte order gets the loader's portable field reads (bytes shifted into
    place, not a native load): the demo byte for byte, and on mutated files the same status and output as
    the default build."""
    graph, q = demo
    exe = host.build_runtime(tmp_path / "build", flags=["-O1", "-U__BYTE_ORDER__"])
    _assert_matches_engine(exe, graph, q[:20], tmp_path)
    statuses = set()
    for case in T.corpus(bases, 100, seed=3):
        want, got = (T.run_file(e, case, q[:1], tmp_path) for e in (runner, exe))
        assert (got.returncode, got.stderr) == (want.returncode, want.stderr)
        statuses.add(want.stderr)
    assert len(statuses) >= 5, statuses


def test_the_trace_hook_is_a_build_option(demo, tmp_path):
    """NPUKIT_TRACE: off by default (firmware links no trace hook: the traced entry points are not declared or
    defined, and npukit-run refuses --dump but runs the model); on, --dump prints one line per tensor."""
    graph, q = demo
    model = tmp_path / "model.bin"
    model.write_bytes(T.pack(graph))
    (tmp_path / "input.bin").write_bytes(np.ascontiguousarray(q[:2]).tobytes())
    sources = [str(T.RUNTIME / "npukit_run.c"), str(T.RUNTIME / "npukit_runtime.c"),
               *map(str, sorted(T.KERNELS.glob("nk_*.c")))]
    outs = {}
    for trace in (None, "-DNPUKIT_TRACE=1"):
        exe = tmp_path / f"run{bool(trace)}"
        subprocess.run([CC, *T.STRICT, "-O1", *([trace] if trace else []), f"-I{T.KERNELS}", f"-I{T.RUNTIME}",
                        "-o", str(exe), *sources], check=True)
        symbols = subprocess.run(["nm", str(exe)], capture_output=True, text=True, check=True).stdout
        assert ("npukit_invoke_io_traced" in symbols) == bool(trace)
        args = [str(model), str(tmp_path / "input.bin"), str(tmp_path / f"out{bool(trace)}.bin")]
        dump = subprocess.run([str(exe), "--dump", *args], capture_output=True, text=True)
        plain = subprocess.run([str(exe), *args], capture_output=True, text=True)
        assert plain.returncode == 0, plain.stderr
        outs[bool(trace)] = (tmp_path / f"out{bool(trace)}.bin").read_bytes()
        if trace:
            lines = dump.stdout.splitlines()
            assert dump.returncode == 0 and len(lines) == 2 * (1 + len(graph.nodes)), dump.stderr
            assert all(line.startswith("npukit-dump ") for line in lines)
        else:
            assert dump.returncode == 1 and "NPUKIT_TRACE" in dump.stderr and not dump.stdout
    assert outs[False] == outs[True] == np.ascontiguousarray(npukit.run(graph, q[:2])[0]).tobytes()
    firmware = tmp_path / "fw.c"
    firmware.write_text('#include "npukit_runtime.h"\nint f(const npukit_model_t *m, void *a)\n'
                        "{ return npukit_invoke_traced(m, a, 0, a, a, 0, 0); }\n")
    res = subprocess.run([CC, *T.STRICT, f"-I{T.KERNELS}", f"-I{T.RUNTIME}", "-c", "-o", str(tmp_path / "fw.o"),
                          str(firmware)], capture_output=True, text=True)
    assert res.returncode != 0 and "npukit_invoke_traced" in res.stderr


def test_strerror_has_one_line_per_status(tmp_path):
    """npukit_strerror walks one NUL-separated array (kept out of firmware that never calls it): each status
    0 to -17 its own message, the rest one default."""
    (tmp_path / "se.c").write_text('#include <stdio.h>\n#include "npukit_runtime.h"\n'
                                   'int main(void) { int k; for (k = 2; k >= -19; k--) puts(npukit_strerror(k)); '
                                   'return 0; }\n')
    exe = tmp_path / "se"
    subprocess.run([CC, *T.STRICT, "-O1", f"-I{T.KERNELS}", f"-I{T.RUNTIME}", "-o", str(exe), str(tmp_path / "se.c"),
                    str(T.RUNTIME / "npukit_runtime.c"), *map(str, sorted(T.KERNELS.glob("nk_*.c")))], check=True)
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    known = lines[2:20]
    assert known[0] == "ok" and known[5] == "CRC mismatch: the file is damaged" and "npukit_invoke_io" in known[17]
    assert len(set(known)) == 18 and "unknown npukit status" not in known
    assert lines[:2] == lines[20:] == ["unknown npukit status"] * 2


# ---------------------------------------------------------------------------------------------------
# Fuzzing under AddressSanitizer and UBSan


class PoolReLU(nn.Module):
    """A ReLU that cannot be fused (after a pooling): the standalone relu op."""

    def __init__(self):
        super().__init__()
        self.c, self.fc = nn.Conv1d(2, 4, 3), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(torch.relu(nn.functional.max_pool1d(self.c(x), 2)).flatten(1))


class TwoInTwoOut(nn.Module):
    """Two inputs, two outputs, one of them also read by a later layer: the io lists, npukit_invoke_io."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv1d(1, 2, 3), nn.Conv1d(2, 2, 3), nn.Conv1d(2, 3, 1)

    def forward(self, x, y):
        h = torch.relu(self.a(x) + self.b(y))
        return self.c(h), h


def fuzz_bases() -> list[bytes]:
    """Small valid files that together hold every op, attribute type, weight width, rounding mode and scheme,
    and a model with several inputs and outputs."""
    torch.manual_seed(0)
    block = {"k": 3, "stride": 2, "pad": 1, "dil": 2, "bias": False, "depthwise": True, "mult": 2, "cout": 4, "bn": False,
             "relu": True, "side": "cat", "pool": "max", "pool_k": 3, "pool_pad": 1, "wscale": 1}
    residual = dict(block, stride=1, dil=1, depthwise=False, bias=True, bn=True, side="add", pool="avg", pool_k=2)
    graphs = [
        npukit.to_ir(npukit.prepare(mnist1d_cnn(channels=8), torch.randn(32, 1, 40))),
        npukit.to_ir(npukit.prepare(Branchy(), torch.randn(16, 3, 8, 8), target=LOWBIT, rules="off")),
        random_graph_and_inputs((2, 2, [8, 8], [residual], "flatten"), "max78000", 1)[0],
        random_graph_and_inputs((1, 2, [12], [block], "gap"), "variant", 2)[0],
        npukit.to_ir(npukit.prepare(PoolReLU(), torch.randn(16, 2, 8), rules="off")),
        npukit.to_ir(npukit.prepare(TwoInTwoOut(), (torch.randn(8, 1, 10), torch.randn(8, 2, 10)), rules="off")),
        # 38 ops and 64 strings: string lookups past the loader's first checkpoint
        npukit.to_ir(npukit.prepare(nn.Sequential(*[m for _ in range(36) for m in (nn.Conv1d(2, 2, 1), nn.ReLU())],
                                                  nn.Flatten(), nn.Linear(8, 2)), torch.randn(8, 2, 4), rules="off")),
    ]
    return [T.pack(g) for g in graphs]


@pytest.fixture(scope="module")
def bases():
    return fuzz_bases()


def _assert_clean(proc, n_cases: int, results) -> None:
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0 and "runtime error" not in err and "Sanitizer" not in err, err[-4000:]
    assert len(results) == n_cases, err[-4000:]


def test_fuzz_mutated_files_under_sanitizers(harness, bases):
    """A few hundred mutated files: no sanitizer report, every API contract held, and each verdict the
    Python reader's; where both load a file and the C runtime runs it, the engine's output bytes."""
    cases = T.corpus(bases, 400, seed=12)
    results, proc = T.feed(harness, cases)
    _assert_clean(proc, len(cases), results)
    stats, bad = T.cross_check(cases, results)
    assert not bad, bad[:5]
    assert stats["c_ok"] >= 40 and stats["engine_compared"] >= 30 and len({r.load for r in results}) >= 10, stats


def test_strings_are_strict_utf8_as_python_decodes(harness, bases):
    """A string of the table rewritten with byte sequences at every boundary of UTF-8 (overlongs, surrogates,
    U+10FFFF and past it, missing or stray continuation bytes): each file loads in C exactly where the Python
    reader, which decodes strictly, loads it."""
    data = bases[4]
    # a tensor's name, the longest (a key or an op name changed would be a graph error instead)
    name = max(T.python_read(data)[0].graph.tensors, key=len).encode()
    entry, body = struct.pack("<H", len(name)) + name, T.sections_of(data)
    assert len(name) >= 4 and body["strings"].count(entry) == 1
    leads = [0x41, 0x7F, 0x80, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3,
             0xF4, 0xF5, 0xF7, 0xF8, 0xFF]
    seconds = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0]
    cases = [T.assemble(dict(body, strings=body["strings"].replace(entry, entry[:2] + bytes(seq) + entry[6:])),
                        struct.unpack_from("<H", data, 6)[0])
             for seq in itertools.product(leads, seconds, [0x80, 0xBF, 0x41], [0x80, 0x41])]
    results, proc = T.feed(harness, cases)
    _assert_clean(proc, len(cases), results)
    verdicts = [(r.load, T.python_read(c)[0] is not None) for c, r in zip(cases, results, strict=True)]
    assert all(c in (0, -10) and (c == 0) == py for c, py in verdicts), verdicts
    assert 0.05 < sum(py for _, py in verdicts) / len(verdicts) < 0.95  # both verdicts are well represented


@pytest.mark.slow
def test_fuzz_100k_cases(harness, bases):
    """The long run: 100,000 mutated files (prints the counts; about 4 minutes)."""
    cases = T.corpus(bases + [T.pack(random_graph_and_inputs(
        (2, 1, [7, 9], [{"k": 2, "stride": 1, "pad": 0, "dil": 1, "bias": True, "depthwise": False, "mult": 1,
                         "cout": 3, "bn": True, "relu": False, "side": None, "pool": None, "pool_k": 2, "pool_pad": 0,
                         "wscale": -1}], "flatten"), "floor", 3)[0])], 100_000, seed=2024)
    results, proc = T.feed(harness, cases, timeout=1800)
    _assert_clean(proc, len(cases), results)
    stats, bad = T.cross_check(cases, results)
    print(f"\nfuzz: {stats}\nstatuses: {sorted((T.STATUS[r], n) for r, n in _counts(r.load for r in results))}")
    assert not bad, bad[:5]


def _counts(values) -> list[tuple]:
    from collections import Counter

    return list(Counter(values).items())


def test_libfuzzer_target_when_clang_is_present(tmp_path, bases):
    if shutil.which("clang") is None:
        pytest.skip("clang not installed: the libFuzzer target (runtime/fuzz_load.c) is optional")
    exe = tmp_path / "fuzz_load"
    cmd = ["clang", *T.STRICT, *T.SANITIZE, "-fsanitize=fuzzer", f"-I{T.KERNELS}", f"-I{T.RUNTIME}", "-o", str(exe),
           str(T.RUNTIME / "fuzz_load.c"), str(T.RUNTIME / "npukit_runtime.c"),
           *map(str, sorted(T.KERNELS.glob("nk_*.c")))]
    built = subprocess.run(cmd, capture_output=True, text=True)
    if built.returncode != 0 and "fuzzer" in built.stderr:
        pytest.skip("this clang has no libFuzzer")
    assert built.returncode == 0, built.stderr
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for i, b in enumerate(bases):
        (seeds / f"{i}.bin").write_bytes(b)
    res = subprocess.run([str(exe), "-runs=3000", "-seed=1", str(seeds)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]


# ---------------------------------------------------------------------------------------------------
# Builds


def _copy_tree(tmp_path):
    """runtime/ and the kernels, at the same relative places, so the Makefile's ../npukit path holds."""
    shutil.copytree(T.RUNTIME, tmp_path / "runtime", ignore=shutil.ignore_patterns("npukit-run", "fuzz-harness",
                                                                                   "fuzz_load", "build"))
    shutil.copytree(T.KERNELS, tmp_path / "npukit" / "codegen" / "runtime")
    return tmp_path / "runtime"


def test_make_builds_warning_free(demo, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    src = _copy_tree(tmp_path)
    res = subprocess.run(["make", "-C", str(src), f"CC={CC}"], capture_output=True, text=True)
    assert res.returncode == 0 and "warning" not in res.stderr, res.stdout + res.stderr
    graph, q = demo
    _assert_matches_engine(src / "npukit-run", graph, q[:20], tmp_path)


def test_cmake_builds(demo, tmp_path):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    build = tmp_path / "build"
    cfg = subprocess.run(["cmake", "-S", str(T.RUNTIME), "-B", str(build)], capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stdout + cfg.stderr
    res = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert res.returncode == 0 and "warning" not in res.stdout + res.stderr, res.stdout + res.stderr
    graph, q = demo
    _assert_matches_engine(build / "npukit-run", graph, q[:20], tmp_path)


@pytest.mark.parametrize("cc, flags", [
    ("gcc", ["-O2", "-Wshadow", "-Wconversion", "-Wsign-conversion", "-Wcast-qual", "-Wstrict-prototypes"]),
    ("clang", ["-O2", "-Wshadow", "-Wconversion", "-Wsign-conversion"]),
    ("arm-none-eabi-gcc", ["-O2", "-mcpu=cortex-m4", "-mthumb", "-Wconversion", "-Wsign-conversion"]),
    ("arm-none-eabi-gcc", ["-Os", "-mcpu=cortex-m0", "-mthumb"]),
    ("arm-none-eabi-gcc", ["-Os", "-mcpu=cortex-m4", "-mthumb", "-mno-unaligned-access"]),  # byte reads
    ("gcc", ["-O2", "-Wshadow", "-Wconversion", "-Wsign-conversion", "-DNPUKIT_OPS=0u"]),  # NPUKIT_OPS: code left out
    ("arm-none-eabi-gcc", ["-Os", "-mcpu=cortex-m4", "-mthumb", "-Wconversion", "-Wsign-conversion",
                           "-DNPUKIT_OPS=(1u<<NPUKIT_OP_CONV)|(1u<<NPUKIT_OP_LINEAR)|(1u<<NPUKIT_OP_RESHAPE)"]),
])
def test_compiles_warning_free(cc, flags, tmp_path):
    """Compile-only with stricter warnings and for 32-bit Cortex-M (where ptrdiff_t and long are 32 bits)."""
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    for name in ("npukit_runtime.c",):
        res = subprocess.run([cc, *T.STRICT, *flags, f"-I{T.KERNELS}", "-c", str(T.RUNTIME / name), "-o",
                              str(tmp_path / (name + ".o"))], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_no_heap_no_float_no_global_state(tmp_path):
    """The runtime (not the host tools) allocates nothing, computes no floating point and has no writable
    globals: only memcpy/memmove/memset/memcmp/strlen and the kernels are linked against."""
    for name in ("npukit_runtime.c",):
        src = T.RUNTIME / name
        code = re.sub(r"/\*.*?\*/", "", src.read_text(), flags=re.S)
        assert not re.search(r"\b(float|double|malloc|calloc|realloc|free|alloca|math\.h|stdio\.h)\b", code), name
        if shutil.which("nm") is None:
            continue
        obj = tmp_path / (src.stem + ".o")
        subprocess.run([CC, *T.STRICT, "-O2", "-fno-pic", f"-I{T.KERNELS}", "-c", str(src), "-o", str(obj)], check=True)
        syms = [ln.split()[-2:] for ln in subprocess.run(["nm", str(obj)], capture_output=True, text=True,
                                                          check=True).stdout.splitlines()]
        assert not [n for kind, n in syms if kind in "BbDdCGgSsVv"], name
        extern = {n for kind, n in syms if kind == "U"}
        assert all(n.startswith(("nk_", "npukit_", "_")) or n in ("memcpy", "memmove", "memset", "memcmp", "strlen")
                   for n in extern), extern

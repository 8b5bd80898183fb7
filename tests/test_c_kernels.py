"""The C kernel library (npukit/codegen/runtime) against npukit's integer reference, bit for bit.

The kernels are built once per session into a shared library (strict warnings, -Werror) and called
through ctypes. Every case is an IR node built by hand, mapped to its C call the way the code generator
maps it, and compared with the op's own numpy kernel (`OpDef.run`); the scalar functions are compared
with exact integer references that are themselves checked against `arith`. A second build with
AddressSanitizer and UBSan runs a batch of random cases in a small C harness, so a read past a border,
a signed overflow or a shift of a negative value fails the run. A build without SIMD (-DNK_NO_SIMD)
runs nk_conv's portable paths, and an -mavx2 build (where the host runs it) the x86 tile's AVX2 step; Cortex-M4 builds (the DSP extension's SMLAD paths, and plain C99 with
-DNK_NO_SIMD) run the same harness under QEMU when the arm tools are installed; and a sweep over
rounding ties and saturation holds nk_conv's specialisations of nk_requant (npukit_kernels.h) to the
scheme's requantize. Two real models run end to end.
"""

from __future__ import annotations

import ctypes
import math
import os
import re
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from models_for_tests import ref_round

import npukit
from npukit import arith, codegen, modelbin
from npukit.codegen import ROUNDING_C, cortex_m
from npukit.ir import Graph, Node, TensorSpec
from npukit.models import mnist1d_cnn
from npukit.ops import get_op
from npukit.schemes import get_scheme

RUNTIME = Path(npukit.__file__).parent / "codegen" / "runtime"
KERNEL_FILES = ["nk_pad.c", "nk_conv_transpose.c", "nk_slice.c", "nk_upsample.c", "nk_mul.c", "nk_lut.c", "nk_arith.c", "nk_conv.c", "nk_linear.c", "nk_maxpool.c", "nk_avgpool.c", "nk_global_avgpool.c",
                "nk_add.c", "nk_concat_part.c", "nk_relu.c"]
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def _find_cc() -> str | None:
    for cc in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


CC = _find_cc()
if CC is None:
    pytest.skip("no C compiler (gcc, cc or clang, or $CC) found: the C kernels cannot be built",
                allow_module_level=True)

MODES = {"half_up": 0, "half_even": 1, "floor": 2, "trunc": 3}  # nk_rounding
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------------------------------
# The C ABI (npukit_kernels.h)

def _struct(name, fields):
    types = {"i32": ctypes.c_int32, "i64": ctypes.c_int64, "enum": ctypes.c_int}
    return type(name, (ctypes.Structure,), {"_fields_": [(f, types.get(t, t)) for f, t in fields]})


RequantParams = _struct("RequantParams", [  # nk_requant_params, the fields of Scheme.c_fields
    ("bias_shift", "i32"), ("out_shift", "i32"), ("acc_min", "i64"), ("acc_max", "i64"), ("act_min", "i32"),
    ("act_max", "i32"), ("rounding", "enum"), ("abs", "i32")])
ConvParams = _struct("ConvParams", [("w_bits", "i32"), ("rq", RequantParams), ("out_bytes", "i32")] + [
    (f, "i32") for f in ("in_c", "out_c", "in_h", "in_w", "out_h", "out_w", "k_h", "k_w", "stride_h", "stride_w",
                         "pad_h", "pad_w", "dil_h", "dil_w", "groups")])
LinearParams = _struct("LinearParams", [
    ("w_bits", "i32"), ("rq", RequantParams), ("out_bytes", "i32"), ("in_features", "i32"), ("out_features", "i32")])
PoolParams = _struct("PoolParams", [(f, "i32") for f in (
    "c", "in_h", "in_w", "out_h", "out_w", "k_h", "k_w", "stride_h", "stride_w", "pad_h", "pad_w")] + [("rounding", "enum")])

# Harness record kinds (one blob list per call; the last blob is the output buffer, sent with its
# initial contents and read back after the call).
ROUND_SHIFT, ROUND_DIV, WEIGHT, CONV, LINEAR, MAXPOOL, AVGPOOL, GLOBAL_AVGPOOL, ADD, CONCAT, RELU = range(1, 12)
LAYOUT = 99

HARNESS_C = r"""
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npukit_kernels.h"

static void get(void *p, size_t n)
{
    if (n && fread(p, 1, n, stdin) != n) {
        fprintf(stderr, "harness: truncated input\n");
        exit(2);
    }
}

static int32_t meta(const unsigned char *m, int i)
{
    int32_t v;
    memcpy(&v, m + 4 * i, 4);
    return v;
}

int main(void)
{
    int32_t kind, nb, i, n;
    while (fread(&kind, 4, 1, stdin) == 1 && kind != 0) {
        unsigned char *b[16];
        int32_t len[16];
        unsigned char *res;
        get(&nb, 4);
        if (nb < 1 || nb > 16) {
            return 3;
        }
        for (i = 0; i < nb; i++) {
            get(&len[i], 4);
            b[i] = malloc(len[i] ? (size_t)len[i] : 1u); /* exact sizes: ASan sees any overrun */
            get(b[i], (size_t)len[i]);
        }
        res = b[nb - 1];
        switch (kind) {
        case 1: case 2:
            n = len[0] / 8;
            for (i = 0; i < n; i++) {
                int64_t x, v, r;
                int32_t s, m;
                memcpy(&x, b[0] + 8 * i, 8);
                memcpy(&m, b[2] + 4 * i, 4);
                if (kind == 1) {
                    memcpy(&s, b[1] + 4 * i, 4);
                    r = nk_round_shift(x, s, (nk_rounding)m);
                } else {
                    memcpy(&v, b[1] + 8 * i, 8);
                    r = nk_round_div(x, v, (nk_rounding)m);
                }
                memcpy(res + 8 * i, &r, 8);
            }
            break;
        case 3:
            for (i = 0; i < meta(b[1], 0); i++) {
                int32_t v = nk_weight(b[0], i, meta(b[1], 1));
                memcpy(res + 4 * i, &v, 4);
            }
            break;
        case 4:
            nk_conv((const nk_conv_params *)(void *)b[0], (const int8_t *)b[1], b[2],
                    len[3] ? (const int32_t *)(void *)b[3] : NULL, res);
            break;
        case 5:
            nk_linear((const nk_linear_params *)(void *)b[0], (const int8_t *)b[1], b[2],
                      len[3] ? (const int32_t *)(void *)b[3] : NULL, res);
            break;
        case 6:
            nk_maxpool((const nk_pool_params *)(void *)b[0], (const int8_t *)b[1], (int8_t *)res);
            break;
        case 7:
            nk_avgpool((const nk_pool_params *)(void *)b[0], (const int8_t *)b[1], (int8_t *)res);
            break;
        case 8:
            nk_global_avgpool((const nk_global_avgpool_params *)(void *)b[0], (const int8_t *)b[1], (int8_t *)res);
            break;
        case 9: { /* meta: n, a_shift, b_shift, act_min, act_max, rounding, alias (1: out = a, 2: out = b, 3: a = b = out) */
            int32_t alias = meta(b[0], 6);
            const int8_t *x = (const int8_t *)b[1], *y = alias == 3 ? x : (const int8_t *)b[2];
            int8_t *o = alias == 1 || alias == 3 ? (int8_t *)b[1] : alias == 2 ? (int8_t *)b[2] : (int8_t *)res;
            nk_add((const nk_add_params *)(void *)b[0], x, y, o); /* the struct: meta's first six values */
            if ((unsigned char *)o != res) {
                memcpy(res, o, (size_t)len[nb - 1]);
            }
            break;
        }
        case 10: /* meta: 6 int32 per part (outer, part_inner, out_inner, offset, shift, rounding); blobs 1..k: parts */
            for (i = 0; i < nb - 2; i++) {
                nk_concat_part((const nk_concat_params *)(void *)(b[0] + 24 * i), (const int8_t *)b[i + 1],
                               (int8_t *)res);
            }
            break;
        case 11: /* meta: n, alias */
            if (meta(b[0], 1)) {
                nk_relu(meta(b[0], 0), (const int8_t *)b[1], (int8_t *)b[1]);
                memcpy(res, b[1], (size_t)len[nb - 1]);
            } else {
                nk_relu(meta(b[0], 0), (const int8_t *)b[1], (int8_t *)res);
            }
            break;
        case 99: {
            int32_t v[13];
            v[0] = (int32_t)sizeof(nk_conv_params);
            v[1] = (int32_t)offsetof(nk_conv_params, rq);
            v[2] = (int32_t)offsetof(nk_conv_params, rq.acc_min);
            v[3] = (int32_t)offsetof(nk_conv_params, out_bytes);
            v[4] = (int32_t)sizeof(nk_linear_params);
            v[5] = (int32_t)offsetof(nk_linear_params, rq);
            v[6] = (int32_t)offsetof(nk_linear_params, out_bytes);
            v[7] = (int32_t)sizeof(nk_pool_params);
            v[8] = (int32_t)offsetof(nk_pool_params, rounding);
            v[9] = (int32_t)sizeof(nk_requant_params);
            v[10] = (int32_t)offsetof(nk_requant_params, acc_min);
            v[11] = (int32_t)offsetof(nk_requant_params, act_min);
            v[12] = (int32_t)offsetof(nk_requant_params, rounding);
            memcpy(res, v, sizeof v);
            break;
        }
        default:
            return 4;
        }
        fwrite(&len[nb - 1], 4, 1, stdout);
        fwrite(res, 1, (size_t)len[nb - 1], stdout);
        for (i = 0; i < nb; i++) {
            free(b[i]);
        }
    }
    return 0;
}
"""


def _compile(args, where: str) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, f"{where} failed:\n{' '.join(map(str, args))}\n{r.stdout}{r.stderr}"


def _sources() -> list[str]:
    return [str(RUNTIME / f) for f in KERNEL_FILES]


@pytest.fixture(scope="session")
def lib(tmp_path_factory):
    return _build_lib(tmp_path_factory.mktemp("nk") / "libnpukit_kernels.so")


@pytest.fixture(scope="session")
def lib_scalar(tmp_path_factory):
    """The kernels built with -DNK_NO_SIMD: nk_conv's portable paths (tiles, single outputs), which
    SSE2 would otherwise take over for most 8-bit shapes on x86-64."""
    return _build_lib(tmp_path_factory.mktemp("nk_scalar") / "libnpukit_kernels.so", ["-DNK_NO_SIMD"])


@pytest.fixture(scope="session")
def lib_avx2(tmp_path_factory):
    """The kernels built with -mavx2 (nk_conv's 16-output AVX2 step), where this host runs AVX2 code."""
    d = tmp_path_factory.mktemp("nk_avx2")
    (d / "probe.c").write_text("int main(void) { return __builtin_cpu_supports(\"avx2\") ? 0 : 1; }\n")
    probe = subprocess.run([CC, "-mavx2", str(d / "probe.c"), "-o", str(d / "probe")], capture_output=True)
    if probe.returncode != 0 or subprocess.run([str(d / "probe")], capture_output=True).returncode != 0:
        pytest.skip(f"{CC} cannot build AVX2 code or this CPU cannot run it")
    return _build_lib(d / "libnpukit_kernels.so", ["-mavx2"])


def _build_lib(out: Path, flags: list[str] | None = None) -> ctypes.CDLL:
    _compile([CC, "-shared", "-fPIC", "-O2", *WARN, *(flags or []), f"-I{RUNTIME}", *_sources(), "-o", str(out)],
             "building the kernels")
    so = ctypes.CDLL(str(out))
    vp, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    sigs = {
        "nk_round_shift": (i64, [i64, i32, ctypes.c_int]), "nk_round_div": (i64, [i64, i64, ctypes.c_int]),
        "nk_saturate": (i64, [i64, i64, i64]), "nk_weight": (i32, [vp, i32, i32]),
        "nk_conv": (None, [vp, vp, vp, vp, vp]), "nk_linear": (None, [vp, vp, vp, vp, vp]),
        "nk_maxpool": (None, [vp, vp, vp]), "nk_avgpool": (None, [vp, vp, vp]),
        "nk_global_avgpool": (None, [vp, vp, vp]), "nk_add": (None, [vp, vp, vp, vp]),
        "nk_concat_part": (None, [vp, vp, vp]), "nk_relu": (None, [i32, vp, vp]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(so, name)
        fn.restype, fn.argtypes = res, args
    return so


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    """The kernels and HARNESS_C built with AddressSanitizer and UBSan (any report aborts the run)."""
    d = tmp_path_factory.mktemp("nk_san")
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    (d / "probe.c").write_text("int main(void) { return 0; }\n")
    probe = subprocess.run([CC, *san, str(d / "probe.c"), "-o", str(d / "probe")], capture_output=True)
    if probe.returncode != 0 or subprocess.run([str(d / "probe")], capture_output=True).returncode != 0:
        pytest.skip(f"{CC} cannot build and run programs with {' '.join(san)} here")
    (d / "harness.c").write_text(HARNESS_C)
    exe = d / "harness"
    _compile([CC, "-O1", "-g", "-fno-omit-frame-pointer", *san, *WARN, f"-I{RUNTIME}", str(d / "harness.c"),
              *_sources(), "-o", str(exe)], "building the sanitizer harness")
    return exe


def _harness_proc(exe, calls: list[tuple[int, list[bytes]]]) -> subprocess.CompletedProcess:
    data = _harness_input(calls)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    return subprocess.run([str(exe)], input=bytes(data), capture_output=True, env=env)


def _run_harness(exe, calls: list[tuple[int, list[bytes]]]) -> list[bytes]:
    r = _harness_proc(exe, calls)
    assert r.returncode == 0, f"sanitizer harness failed (rc {r.returncode}):\n{r.stderr.decode(errors='replace')}"
    assert not r.stderr, r.stderr.decode(errors="replace")
    return _split_outputs(r.stdout, len(calls))


def _harness_input(calls: list[tuple[int, list[bytes]]]) -> bytes:
    data = bytearray()
    for kind, blobs in calls:
        data += struct.pack("<ii", kind, len(blobs))
        for b in blobs:
            data += struct.pack("<i", len(b)) + bytes(b)
    return bytes(data + struct.pack("<i", 0))


def _split_outputs(stdout: bytes, n_calls: int) -> list[bytes]:
    """HARNESS_C's output (each call's result buffer after its int32 length) -> the buffers."""
    outs, pos = [], 0
    for _ in range(n_calls):
        (n,) = struct.unpack_from("<i", stdout, pos)
        outs.append(stdout[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert pos == len(stdout)
    return outs


def _run_ctypes(lib, kind: int, blobs: list[bytes]) -> bytes:
    """The same calls as HARNESS_C, through ctypes."""
    bufs = [ctypes.create_string_buffer(bytes(b), max(len(b), 1)) for b in blobs]
    ptr = [ctypes.cast(b, ctypes.c_void_p) for b in bufs]
    res, size = bufs[-1], len(blobs[-1])
    meta = np.frombuffer(blobs[0], np.int32) if kind in (GLOBAL_AVGPOOL, ADD, CONCAT, RELU) else None
    if kind in (ROUND_SHIFT, ROUND_DIV):
        x = np.frombuffer(blobs[0], np.int64)
        arg = np.frombuffer(blobs[1], np.int32 if kind == ROUND_SHIFT else np.int64)
        modes = np.frombuffer(blobs[2], np.int32)
        fn = lib.nk_round_shift if kind == ROUND_SHIFT else lib.nk_round_div
        return np.array([fn(int(a), int(b), int(m)) for a, b, m in zip(x, arg, modes, strict=True)], np.int64).tobytes()
    if kind == WEIGHT:
        count, bits = np.frombuffer(blobs[1], np.int32)
        return np.array([lib.nk_weight(ptr[0], i, int(bits)) for i in range(count)], np.int32).tobytes()
    if kind in (CONV, LINEAR):
        fn = lib.nk_conv if kind == CONV else lib.nk_linear
        fn(ptr[0], ptr[1], ptr[2], ptr[3] if blobs[3] else None, ptr[4])
    elif kind in (MAXPOOL, AVGPOOL):
        (lib.nk_maxpool if kind == MAXPOOL else lib.nk_avgpool)(ptr[0], ptr[1], ptr[2])
    elif kind == GLOBAL_AVGPOOL:
        lib.nk_global_avgpool(ptr[0], ptr[1], ptr[2])  # meta is the params struct
    elif kind == ADD:
        alias = int(meta[6])  # meta[:6] is the params struct
        a, b = ptr[1], ptr[1] if alias == 3 else ptr[2]
        out = {0: ptr[3], 1: ptr[1], 2: ptr[2], 3: ptr[1]}[alias]
        lib.nk_add(ptr[0], a, b, out)
        res = {0: bufs[3], 1: bufs[1], 2: bufs[2], 3: bufs[1]}[alias]
    elif kind == CONCAT:
        for i in range(len(blobs) - 2):
            lib.nk_concat_part(ctypes.c_void_p(ptr[0].value + 24 * i), ptr[i + 1], ptr[-1])  # 6 int32 a part: its struct
    elif kind == RELU:
        n, alias = (int(v) for v in meta)
        lib.nk_relu(n, ptr[1], ptr[1] if alias else ptr[2])
        res = bufs[1] if alias else bufs[2]
    else:
        raise ValueError(kind)
    return res.raw[:size]


# --------------------------------------------------------------------------------------------------
# Exact references for the scalar functions

def _exact_round_shift(x: int, s: int, mode: str) -> int:
    """arith.round_shift on exact integers; a left shift that leaves int64 saturates (the C extension)."""
    if s <= 0:
        if x == 0 or s < -64:
            return 0 if x == 0 else (I64_MAX if x > 0 else I64_MIN)
        return max(I64_MIN, min(I64_MAX, x << -s))
    return ref_round(Fraction(x, 1 << s), mode)


def _exact_round_div(x: int, n: int, mode: str) -> int:
    return ref_round(Fraction(x, n), mode)


def _pack(values, bits: int) -> bytes:
    """docs/model-format.md: int8 / int16 little-endian; 2 and 4 bits are two's complement fields, low bits first."""
    v = [int(a) for a in np.asarray(values).reshape(-1)]
    if bits == 8:
        return struct.pack(f"<{len(v)}b", *v)
    if bits == 16:
        return struct.pack(f"<{len(v)}h", *v)
    per, mask = 8 // bits, (1 << bits) - 1
    out = bytearray(-(-len(v) // per))
    for i, a in enumerate(v):
        out[i // per] |= (a & mask) << ((i % per) * bits)
    return bytes(out)


def _i32(*values) -> bytes:
    return np.array(values, np.int32).tobytes()


# --------------------------------------------------------------------------------------------------
# Random sources: hypothesis (shrinkable) for the property tests, numpy for the sanitizer batch

class _Src:
    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def bool(self) -> bool:
        return self.int(0, 1) == 1

    def pick(self, seq):
        return seq[self.int(0, len(seq) - 1)]

    def array(self, shape, lo: int, hi: int) -> np.ndarray:
        """Uniform, extremes only, all lo, all hi, or small values (ties in pooling and shifts)."""
        style, rng = self.int(0, 4), np.random.default_rng(self.int(0, 2**32 - 1))
        if style == 0:
            v = rng.integers(lo, hi, size=shape, endpoint=True)
        elif style == 1:
            v = rng.choice(np.array([lo, hi]), size=shape)
        elif style in (2, 3):
            v = np.full(shape, lo if style == 2 else hi)
        else:
            v = rng.integers(max(lo, -4), min(hi, 4), size=shape, endpoint=True)
        return np.asarray(v, np.int64)


class _Hyp(_Src):
    def __init__(self, draw):
        self.draw = draw

    def int(self, lo, hi):
        return self.draw(st.integers(lo, hi))


class _Rng(_Src):
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def int(self, lo, hi):
        return int(self.rng.integers(lo, hi, endpoint=True))


# --------------------------------------------------------------------------------------------------
# IR node -> C call (what the code generator does), and random IR nodes

def _requant_params(graph: Graph, attrs: dict) -> RequantParams:
    """The node's nk_requant_params from the scheme's `c_fields` (the C literals the code generator writes)."""
    fields = graph.scheme.c_fields(attrs)
    assert list(fields) == [f for f, _ in RequantParams._fields_]
    enum = {ROUNDING_C[m]: v for m, v in MODES.items()}
    return RequantParams(**{k: enum[v] if k == "rounding" else int(str(v).removesuffix("LL")) for k, v in fields.items()})


def _call(node: Node, graph: Graph, inputs: list[np.ndarray]) -> tuple[int, list[bytes], np.dtype, tuple]:
    """The kernel call for one sample: (kind, blobs, output dtype, output shape)."""
    g, a = graph, node.attrs
    out = g.tensors[node.outputs[0]]
    if node.op in ("conv", "linear"):
        x = g.tensors[node.inputs[0]]
        w, bias = node.params["weight"], node.params["bias"]
        assert out.dtype.itemsize in (1, 4) and np.all((bias >= -(2**31)) & (bias < 2**31))
        tail = {"w_bits": a["w_bits"], "rq": _requant_params(g, a), "out_bytes": out.dtype.itemsize}
        if node.op == "linear":
            p = LinearParams(in_features=w.shape[1], out_features=w.shape[0], **tail)
            kind = LINEAR
        else:
            two = (lambda v: (1, *v)) if a["ndim"] == 1 else tuple
            (ih, iw), (oh, ow), (kh, kw) = two(x.shape[1:]), two(out.shape[1:]), two(w.shape[2:])
            pad = (0, *a["padding"]) if a["ndim"] == 1 else a["padding"]
            p = ConvParams(in_c=x.shape[0], in_h=ih, in_w=iw, out_c=out.shape[0], out_h=oh, out_w=ow, k_h=kh, k_w=kw,
                           stride_h=two(a["stride"])[0], stride_w=two(a["stride"])[1], pad_h=pad[0], pad_w=pad[1],
                           dil_h=two(a["dilation"])[0], dil_w=two(a["dilation"])[1], groups=a["groups"], **tail)
            kind = CONV
        blobs = [bytes(p), inputs[0].astype(np.int8).tobytes(), _pack(w, a["w_bits"]), bias.astype(np.int32).tobytes()]
        return kind, [*blobs, bytes(math.prod(out.shape) * out.dtype.itemsize)], out.dtype, out.shape
    x = inputs[0]
    empty = bytes(math.prod(out.shape))
    if node.op in ("maxpool", "avgpool"):
        (ih, iw), (oh, ow), (kh, kw), (sh, sw), (ph, pw) = (
            ((0 if v is a["padding"] else 1), *v) if a["ndim"] == 1 else tuple(v)
            for v in (x.shape[1:], out.shape[1:], a["kernel"], a["stride"], a["padding"]))
        p = PoolParams(c=x.shape[0], in_h=ih, in_w=iw, out_h=oh, out_w=ow, k_h=kh, k_w=kw, stride_h=sh, stride_w=sw,
                       rounding=MODES[g.target["pool_rounding"]], pad_h=ph, pad_w=pw)
        return MAXPOOL if node.op == "maxpool" else AVGPOOL, [bytes(p), x.tobytes(), empty], out.dtype, out.shape
    if node.op == "global_avgpool":
        meta = _i32(x.shape[0], math.prod(x.shape[1:]), MODES[g.target["pool_rounding"]])
        return GLOBAL_AVGPOOL, [meta, x.tobytes(), empty], out.dtype, out.shape
    if node.op == "add":
        lo, hi = arith.act_range(out.bits, a["relu"])
        sa, sb = (g.tensors[t].exp - out.exp for t in node.inputs)
        meta = _i32(x.size, sa, sb, lo, hi, MODES[g.rounding], a.get("_alias", 0))
        return ADD, [meta, x.tobytes(), inputs[1].tobytes(), empty], out.dtype, out.shape
    if node.op == "concat":
        ax = a["axis"]
        outer, out_inner, offset, meta = math.prod(out.shape[:ax]), math.prod(out.shape[ax:]), 0, []
        for t in node.inputs:
            spec = g.tensors[t]
            inner = math.prod(spec.shape[ax:])
            meta += [outer, inner, out_inner, offset, spec.exp - out.exp, MODES[g.rounding]]
            offset += inner
        blobs = [_i32(*meta), *(v.tobytes() for v in inputs), b"\x5a" * len(empty)]
        return CONCAT, blobs, out.dtype, out.shape
    if node.op == "relu":
        return RELU, [_i32(x.size, a.get("_alias", 0)), x.tobytes(), empty], out.dtype, out.shape
    raise AssertionError(f"no C kernel for op {node.op!r}")


def _graph(node: Node, specs: list[TensorSpec], target: dict) -> Graph:
    if node.op in ("conv", "linear"):  # the pow2 scheme's requantisation attributes, as conversion stores them
        x, out, a = specs[0], specs[-1], node.attrs
        e_acc = x.exp + a["w_exp"]
        a.update(get_scheme("pow2").mac_attrs(e_acc=e_acc, b_exp=a["b_exp"], e_out=out.exp, out_bits=out.bits,
                                              relu=a["relu"], wide=a["wide"], acc_bits=target["accumulator_bits"],
                                              rounding=target["rounding"], absolute=a.get("abs", False)))
    g = Graph(target, [s.name for s in specs if s.name in node.inputs], list(node.outputs),
              {s.name: s for s in specs}, [node])
    g.validate()
    return g


def _target(src: _Src, acc_bits: int = 32) -> dict:
    return {"rounding": src.pick(list(MODES)), "pool_rounding": src.pick(list(MODES)), "accumulator_bits": acc_bits}


def _w_range(bits: int) -> tuple[int, int]:
    """Weights as quantisation makes them: fit_exponent keeps |w| <= 2**(bits-1) - 1. (The C kernels also
    take -2**(bits-1), see test_int32_partial_sums_are_flushed; npukit's numpy bound, np.abs(int8), would wrap there.)"""
    return -(1 << (bits - 1)) + 1, (1 << (bits - 1)) - 1


def _mac_common(src: _Src, out_c: int):
    w_bits = src.pick([8, 8, 8, 8, 2, 4, 16])
    acc_bits = src.pick([16, 20, 32, 32, 48])
    wide = acc_bits > 16 and acc_bits <= 32 and src.int(0, 3) == 0  # int32 output (the header's out_bytes 4)
    e_x, w_exp = src.int(-3, 8), src.int(-3, 12)
    e_acc, bias_shift = e_x + w_exp, src.pick([0, 0, 0, 1, 7])
    bias = src.array((out_c,), *arith.int_range(src.pick([4, 12, 24, 32])))
    relu = not wide and src.bool()
    attrs = {"w_bits": w_bits, "w_exp": w_exp, "b_exp": e_acc - bias_shift, "relu": relu, "wide": wide,
             "abs": not wide and not relu and src.int(0, 3) == 0}
    out_bits, e_out = (acc_bits, e_acc) if wide else (8, e_acc - src.int(-3, 24))
    return w_bits, acc_bits, e_x, attrs, bias, out_bits, e_out


def _conv_case(src: _Src):
    ndim = src.pick([1, 2])
    if src.int(0, 3) == 0:  # depthwise
        groups, cg, og = src.int(1, 4), 1, src.int(1, 2)
    else:
        groups, cg, og = src.pick([1, 1, 2, 3]), src.int(1, 4), src.int(1, 3)
    sizes, ks, strides, pads, dils = [], [], [], [], []
    for axis in range(ndim):
        last = axis == ndim - 1
        k = src.int(1, 6 if last else 3)
        d = src.pick([1, 1, 1, 2, 3]) if k > 1 else 1
        if last and src.int(0, 7) == 0:  # a border window too wide for the conv tile's buffer
            k, d = src.int(4, 6), src.int(13, 17)
        p, s = src.int(0, 3), src.pick([1, 1, 1, 1, 2, 3])
        span = d * (k - 1) + 1
        sizes.append(src.int(max(1, span - 2 * p), span + (40 if last else 5)))
        ks, strides, pads, dils = [*ks, k], [*strides, s], [*pads, p], [*dils, d]
    return _conv_case_of(src, groups, og, cg, ks, strides, pads, dils, sizes)


def _conv_case_of(src: _Src, groups, og, cg, ks, strides, pads, dils, sizes, w_bits: int | None = None):
    """The conv node, its one-node graph and input for a drawn geometry (`w_bits`: fixed, else drawn)."""
    drawn, acc_bits, e_x, attrs, bias, out_bits, e_out = _mac_common(src, groups * og)
    w_bits = w_bits or drawn
    attrs["w_bits"] = w_bits
    w = src.array((groups * og, cg, *ks), *_w_range(w_bits)).astype(np.int8 if w_bits <= 8 else np.int16)
    x = src.array((groups * cg, *sizes), -128, 127).astype(np.int8)
    attrs.update({"ndim": len(ks), "stride": strides, "padding": pads, "dilation": dils, "groups": groups})
    node = Node("conv", "conv", ["x"], ["y"], attrs, {"weight": w, "bias": bias})
    shape = get_op("conv").infer_shapes(node, [x.shape])[0]
    g = _graph(node, [TensorSpec("x", x.shape, 8, e_x), TensorSpec("y", shape, out_bits, e_out)], _target(src, acc_bits))
    return node, g, [x]


def _linear_case(src: _Src):
    n_in, n_out = src.pick([src.int(1, 40), src.int(1, 300)]), src.int(1, 8)
    w_bits, acc_bits, e_x, attrs, bias, out_bits, e_out = _mac_common(src, n_out)
    w = src.array((n_out, n_in), *_w_range(w_bits)).astype(np.int8 if w_bits <= 8 else np.int16)
    x = src.array((n_in,), -128, 127).astype(np.int8)
    node = Node("fc", "linear", ["x"], ["y"], attrs, {"weight": w, "bias": bias})
    g = _graph(node, [TensorSpec("x", (n_in,), 8, e_x), TensorSpec("y", (n_out,), out_bits, e_out)],
               _target(src, acc_bits))
    return node, g, [x]


def _pool_case(src: _Src, op: str):
    ndim = src.pick([1, 2])
    ks = [src.int(1, 4) for _ in range(ndim)]
    strides = [src.int(1, 4) for _ in range(ndim)]
    pads = [src.pick([0, 0, k // 2]) for k in ks]  # at most half the window, as torch allows
    x = src.array((src.int(1, 4), *(src.int(k, k + 12) for k in ks)), -128, 127).astype(np.int8)
    node = Node("p", op, ["x"], ["y"], {"ndim": ndim, "kernel": ks, "stride": strides, "padding": pads})
    shape = get_op(op).infer_shapes(node, [x.shape])[0]
    e = src.int(-2, 6)
    return node, _graph(node, [TensorSpec("x", x.shape, 8, e), TensorSpec("y", shape, 8, e)], _target(src)), [x]


def _global_case(src: _Src):
    x = src.array((src.int(1, 5), *(src.int(1, 12) for _ in range(src.pick([1, 2])))), -128, 127).astype(np.int8)
    node = Node("gap", "global_avgpool", ["x"], ["y"], {"keepdim": src.bool()})
    shape = get_op("global_avgpool").infer_shapes(node, [x.shape])[0]
    return node, _graph(node, [TensorSpec("x", x.shape, 8, 3), TensorSpec("y", shape, 8, 3)], _target(src)), [x]


def _add_case(src: _Src):
    shape = tuple(src.int(1, 6) for _ in range(src.int(1, 3)))
    ea, eb = src.int(-4, 10), src.int(-4, 10)
    alias = src.int(0, 3)  # 1: out is a; 2: out is b; 3: a, b and out are one buffer
    a = src.array(shape, -128, 127).astype(np.int8)
    b = a.copy() if alias == 3 else src.array(shape, -128, 127).astype(np.int8)
    eb = ea if alias == 3 else eb
    e_out = min(ea, eb) - src.pick([0, 0, 1, 2, 3, 7, 12])
    node = Node("s", "add", ["a", "b"], ["y"], {"relu": src.bool(), "_alias": alias})
    specs = [TensorSpec("a", shape, 8, ea), TensorSpec("b", shape, 8, eb), TensorSpec("y", shape, 8, e_out)]
    return node, _graph(node, specs, _target(src)), [a, b]


def _concat_case(src: _Src):
    rank = src.int(1, 3)
    base = [src.int(1, 4) for _ in range(rank)]
    axis = src.int(0, rank - 1)
    specs, xs = [], []
    for i in range(src.int(1, 3)):
        shape = tuple(src.int(1, 4) if d == axis else n for d, n in enumerate(base))
        xs.append(src.array(shape, -128, 127).astype(np.int8))
        specs.append(TensorSpec(f"x{i}", shape, 8, src.int(-3, 9)))
    node = Node("cat", "concat", [s.name for s in specs], ["y"], {"axis": axis})
    shape = get_op("concat").infer_shapes(node, [s.shape for s in specs])[0]
    e_out = min(s.exp for s in specs)
    return node, _graph(node, [*specs, TensorSpec("y", shape, 8, e_out)], _target(src)), xs


def _relu_case(src: _Src):
    x = src.array((src.int(1, 4), src.int(1, 30)), -128, 127).astype(np.int8)
    node = Node("r", "relu", ["x"], ["y"], {"_alias": src.int(0, 1)})
    return node, _graph(node, [TensorSpec("x", x.shape, 8, 0), TensorSpec("y", x.shape, 8, 0)], _target(src)), [x]


CASES = {"conv": _conv_case, "linear": _linear_case, "maxpool": lambda s: _pool_case(s, "maxpool"),
         "avgpool": lambda s: _pool_case(s, "avgpool"), "global_avgpool": _global_case, "add": _add_case,
         "concat": _concat_case, "relu": _relu_case}


def _reference(node, graph, inputs) -> np.ndarray:
    return get_op(node.op).run(node, [v[None] for v in inputs], graph)[0][0]


def _check(run, node, graph, inputs) -> None:
    kind, blobs, dtype, shape = _call(node, graph, inputs)
    got = np.frombuffer(run(kind, blobs), dtype).reshape(shape)
    want = _reference(node, graph, inputs)
    assert want.dtype == dtype
    np.testing.assert_array_equal(got, want, err_msg=f"{node.op} {node.attrs} target {graph.target}")


# --------------------------------------------------------------------------------------------------
# Build checks

def test_runtime_has_one_file_per_kernel():
    assert sorted(p.name for p in RUNTIME.glob("*.c")) == sorted(KERNEL_FILES)
    assert (RUNTIME / "npukit_kernels.h").exists()


@pytest.mark.parametrize("cc, flags", [
    ("clang", ["-O2"]),
    ("gcc", ["-O2", "-Wshadow", "-Wconversion", "-Wsign-conversion", "-Wcast-qual", "-Wstrict-prototypes"]),
    ("gcc", ["-O2", "-mavx2", "-Wshadow", "-Wconversion", "-Wsign-conversion", "-Wcast-qual"]),
    ("arm-none-eabi-gcc", ["-O2", "-mcpu=cortex-m4", "-mthumb"]),
    ("arm-none-eabi-gcc", ["-Os", "-mcpu=cortex-m4", "-mthumb", "-Wconversion", "-Wshadow"]),
    ("arm-none-eabi-gcc", ["-Os", "-mcpu=cortex-m0", "-mthumb"]),
])
def test_compiles_warning_free(cc, flags, tmp_path):
    """Compile-only with other compilers and stricter warnings (clang, narrowing, 32-bit Cortex-M)."""
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not installed")
    for src in _sources():
        _compile([cc, *WARN, *flags, f"-I{RUNTIME}", "-c", src, "-o", str(tmp_path / (Path(src).stem + ".o"))],
                 f"{cc} {' '.join(flags)}")


def test_no_floating_point_allocation_or_global_state(tmp_path):
    """No float types or heap calls in the code, and no writable data in the objects: only the kernels'
    own functions plus memcpy/memset (and compiler support symbols) may be linked against."""
    for src in _sources():
        code = re.sub(r"/\*.*?\*/", "", Path(src).read_text(), flags=re.S)
        assert not re.search(r"\b(float|double|malloc|calloc|realloc|free|math\.h)\b", code), Path(src).name
        if shutil.which("nm") is None:
            continue
        obj = tmp_path / (Path(src).stem + ".o")
        _compile([CC, *WARN, "-O2", f"-I{RUNTIME}", "-c", src, "-o", str(obj)], "compiling")
        syms = [line.split()[-2:] for line in subprocess.run(["nm", str(obj)], capture_output=True, text=True,
                                                             check=True).stdout.splitlines()]
        writable = [name for kind, name in syms if kind in "BbDdCGgSsVv"]
        assert not writable, f"{Path(src).name} has global state: {writable}"
        extern = {name for kind, name in syms if kind == "U"}
        assert all(n.startswith(("nk_", "_")) or n in ("memcpy", "memset") for n in extern), (Path(src).name, extern)


def test_struct_layout_matches_ctypes(harness):
    (got,) = _run_harness(harness, [(LAYOUT, [bytes(52)])])
    want = [ctypes.sizeof(ConvParams), ConvParams.rq.offset, ConvParams.rq.offset + RequantParams.acc_min.offset,
            ConvParams.out_bytes.offset, ctypes.sizeof(LinearParams), LinearParams.rq.offset,
            LinearParams.out_bytes.offset, ctypes.sizeof(PoolParams), PoolParams.rounding.offset,
            ctypes.sizeof(RequantParams), RequantParams.acc_min.offset, RequantParams.act_min.offset,
            RequantParams.rounding.offset]
    assert list(np.frombuffer(got, np.int32)) == want


# --------------------------------------------------------------------------------------------------
# Scalar arithmetic

def test_exact_references_agree_with_arith():
    """The exact references used below are the contract: equal to arith wherever its floats are exact."""
    for mode in MODES:
        xs = np.arange(-600, 600)
        for s in range(-3, 11):
            want = arith.round_shift(xs, s, mode)
            assert [_exact_round_shift(int(x), s, mode) for x in xs] == list(want.astype(np.int64))
        for n in (1, 2, 3, 4, 5, 6, 7, 9, 12, 16, 25):
            want = arith.round_div(xs, n, mode)
            assert [_exact_round_div(int(x), n, mode) for x in xs] == list(want.astype(np.int64))


def test_round_shift_small_values_exhaustive(lib):
    for name, mode in MODES.items():
        for s in range(-4, 12):
            for x in range(-300, 301):
                assert lib.nk_round_shift(x, s, mode) == _exact_round_shift(x, s, name), (x, s, name)


def test_documented_examples(lib):
    """The worked examples of docs/arithmetic.md and docs/model-format.md."""
    table = {5: (3, 2, 2, 2, 1, 1, 1, 1), -5: (-2, -2, -3, -2, -1, -1, -2, -1), 6: (3, 3, 3, 3, 2, 2, 1, 1),
             -6: (-3, -3, -3, -3, -1, -2, -2, -1), 7: (4, 4, 3, 3, 2, 2, 1, 1), -7: (-3, -4, -4, -3, -2, -2, -2, -1)}
    for x, row in table.items():
        assert tuple(lib.nk_round_shift(x, s, m) for s in (1, 2) for m in range(4)) == row
        assert all(lib.nk_round_shift(x, -2, m) == 4 * x for m in range(4))
    divs = {(4, 3): (1, 1, 1, 1), (5, 3): (2, 2, 1, 1), (-4, 3): (-1, -1, -2, -1), (-5, 3): (-2, -2, -2, -1),
            (3, 6): (1, 0, 0, 0), (-3, 6): (0, 0, -1, 0), (9, 6): (2, 2, 1, 1), (-9, 6): (-1, -2, -2, -1),
            (15, 6): (3, 2, 2, 2)}
    for (x, n), row in divs.items():
        assert tuple(lib.nk_round_div(x, n, m) for m in range(4)) == row
    assert lib.nk_saturate(200, -128, 127) == 127 and lib.nk_saturate(-200, 0, 127) == 0 and lib.nk_saturate(5, 0, 9) == 5
    for bits, values, packed in ((4, [1, -1, -8, 7, 3], "F1 78 03"), (2, [1, -1, -2, 0, 1], "2D 01"),
                                 (16, [-2, 300], "FE FF 2C 01")):
        data = bytes.fromhex(packed)
        assert _pack(values, bits) == data
        buf = ctypes.create_string_buffer(data, len(data))
        assert [lib.nk_weight(buf, i, bits) for i in range(len(values))] == values


def _ties(draw):
    s = draw(st.integers(1, 70))
    k = (2**61) >> max(0, s - 2)  # |x| <= 2**62
    return draw(st.integers(-k, k)) * (1 << (s - 1)), s


shift_args = st.one_of(
    st.tuples(st.integers(I64_MIN, I64_MAX), st.integers(-80, 100)),
    st.tuples(st.integers(-(2**20), 2**20), st.integers(-70, 70)),
    st.composite(_ties)(),
    st.tuples(st.sampled_from([I64_MIN, I64_MIN + 1, -1, 0, 1, I64_MAX, I64_MAX - 1, -(2**62), 2**62]),
              st.integers(-70, 70)),
)


@SETTINGS
@given(args=st.lists(shift_args, min_size=1, max_size=20), mode=st.sampled_from(list(MODES)))
@example(args=[(I64_MIN, 63), (I64_MIN, 64), (I64_MIN, -1), (I64_MAX, 63), (-(2**62), 63), (3, -2**31 + 1)], mode="floor")
@example(args=[(I64_MIN, 64), (-(2**63), 63), (-3, 1), (-(2**62), 63), (2**62, 63)], mode="half_even")
def test_round_shift(lib, args, mode):
    """All modes, negative values, ties, shifts past 63 and left shifts (saturating at the int64 bounds)."""
    for x, s in args:
        if -(2**52) < x < 2**52 and s >= -10 and abs(x) << max(0, -s) < 2**52:
            assert _exact_round_shift(x, s, mode) == int(arith.round_shift(x, s, mode))
        assert lib.nk_round_shift(x, s, MODES[mode]) == _exact_round_shift(x, s, mode), (x, s, mode)


@SETTINGS
@given(args=st.lists(st.one_of(st.tuples(st.integers(I64_MIN, I64_MAX), st.integers(1, I64_MAX)),
                               st.tuples(st.integers(-(2**40), 2**40), st.integers(1, 1000)),
                               st.tuples(st.integers(-200, 200), st.integers(1, 13))), min_size=1, max_size=20),
       mode=st.sampled_from(list(MODES)))
@example(args=[(I64_MIN, 3), (I64_MAX, 3), (I64_MIN, I64_MAX), (I64_MAX, I64_MAX), (I64_MIN, 2**62), (-3, 6)],
         mode="half_even")
def test_round_div(lib, args, mode):
    for x, n in args:
        if abs(x) * n < 2**52:
            assert _exact_round_div(x, n, mode) == int(arith.round_div(x, n, mode))
        assert lib.nk_round_div(x, n, MODES[mode]) == _exact_round_div(x, n, mode), (x, n, mode)


@SETTINGS
@given(bits=st.sampled_from([2, 4, 8, 16]), data=st.data())
def test_weight_unpacking(lib, bits, data):
    src = _Hyp(data.draw)
    values = src.array((src.int(1, 70),), *arith.int_range(bits))
    packed = _pack(values, bits)
    assert packed == modelbin.encode_values(values, bits)  # the writer's packing is the documented one
    got = _run_ctypes(lib, WEIGHT, [packed, _i32(len(values), bits), bytes(4 * len(values))])
    np.testing.assert_array_equal(np.frombuffer(got, np.int32), values)


# --------------------------------------------------------------------------------------------------
# Kernels against the op kernels

# Every op on the default build; conv and linear also on the build without SIMD (whose tile paths the
# SSE2 path otherwise hides on x86).
@pytest.mark.parametrize(("op", "build"), [(op, "lib") for op in sorted(CASES)] + [("conv", "lib_scalar"),
                                                                                    ("linear", "lib_scalar"),
                                                                                    ("conv", "lib_avx2")])
def test_kernel_matches_op(request, op, build):
    lib = request.getfixturevalue(build)

    @SETTINGS
    @given(data=st.data())
    def check(data):
        node, graph, inputs = CASES[op](_Hyp(data.draw))
        _check(lambda k, b: _run_ctypes(lib, k, b), node, graph, inputs)

    check()


def _requant_sweep(scheme: str, mode: str, out_shift: int, acc_bits: int, variant: str, rng,
                   bias_shift: int | None = None) -> tuple:
    """A 1-d, 1x1 conv whose accumulators sweep 256 consecutive values (x = -128..127 times a weight of
    +-1) or a 127/2/3 multiple of them, around bias terms placed on ties of the requantising shift and at
    random over the output and accumulator ranges. `variant`: "w8" (SSE2 or tiles), "w8s2" (stride 2: one
    output at a time), "w16" (through nk_weight). `bias_shift` overrides the one chosen here."""
    weights = [1, -1, 1, -1, 1, 127, -127, 2, 3, -1]
    if bias_shift is None:
        bias_shift = 7 if scheme == "max78000" else max(0, min(acc_bits, max(out_shift, 0) + 9) - 30)
    top = min(acc_bits, max(out_shift, 0) + 9) - bias_shift  # log2 of the interesting bias magnitudes
    lim = min(1 << max(top, 1), (1 << 31) - 1)
    bias = [int(b) for b in rng.integers(-lim, lim, len(weights), endpoint=True)]
    if out_shift - 1 >= bias_shift:  # channels 0-4: bias terms exactly on ties m * 2^(out_shift-1), m odd
        for c, m in enumerate((1, -1, 3, -5, 2 * int(rng.integers(0, 60)) + 1)):
            b = m << (out_shift - 1 - bias_shift)
            bias[c] = b if -(2**31) <= b < 2**31 else bias[c]
    if bias_shift > 31:  # bias terms past int64: nk_requant_bias saturates, then the accumulator does
        bias[-2:] = [-(2**31), 2**31 - 1]
    w = np.array(weights, np.int16 if variant == "w16" else np.int8).reshape(-1, 1, 1)
    if variant == "w16":
        w[-1, 0, 0] = -30000
    x = np.arange(-128, 128).astype(np.int8).reshape(1, 256)
    attrs = {"w_bits": 16 if variant == "w16" else 8, "w_exp": 0, "b_exp": -bias_shift, "relu": bool(rng.integers(0, 2)),
             "wide": False, "ndim": 1, "stride": [2 if variant == "w8s2" else 1], "padding": [0], "dilation": [1],
             "groups": 1}
    attrs.update(get_scheme(scheme).mac_attrs(e_acc=0, b_exp=-bias_shift, e_out=-out_shift, out_bits=8,
                                              relu=attrs["relu"], wide=False, acc_bits=acc_bits, rounding=mode))
    node = Node("conv", "conv", ["x"], ["y"], attrs, {"weight": w, "bias": np.array(bias, np.int64)})
    shape = get_op("conv").infer_shapes(node, [x.shape])[0]
    target = {"scheme": scheme, "rounding": mode, "pool_rounding": mode, "accumulator_bits": acc_bits}
    g = Graph(target, ["x"], ["y"], {"x": TensorSpec("x", x.shape, 8, 0), "y": TensorSpec("y", shape, 8, -out_shift)},
              [node])
    g.validate()
    return node, g, [x]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_requant_specialisations_match_the_scheme(lib, lib_scalar, mode):
    """nk_conv's specialisations of nk_requant (the per-channel fast path, its row loop and the SSE2 int32
    epilogue) and nk_requant itself (shifts <= 0, or beyond the fast path's) against the scheme's requantize,
    on every rounding tie, with the accumulator and output saturating, for pow2 and max78000 values."""
    rng = np.random.default_rng(MODES[mode])
    runs = [lambda k, b: _run_ctypes(lib, k, b), lambda k, b: _run_ctypes(lib_scalar, k, b)]
    for scheme, shifts in (("pow2", (-3, -1, 0, 1, 2, 3, 5, 8, 13, 21, 29, 30, 31, 40, 47, 60, 61)),
                           ("max78000", (-8, 0, 1, 4, 7, 12, 22))):
        for out_shift in shifts:
            # 6: an accumulator range narrower than the output's (after a left shift); 48: the profile limit,
            # up to which the reference (float64) is exact
            for acc_bits in (6, 16, 31, 32, 48):
                for variant in ("w8", "w8s2", "w16"):
                    case = _requant_sweep(scheme, mode, out_shift, acc_bits, variant, rng)
                    for run in runs:
                        _check(run, *case)
    for bias_shift in (32, 40, 46):  # past nk_requant_bias's direct multiply (0..31)
        for out_shift in (0, 30, 40, 46):
            case = _requant_sweep("pow2", mode, out_shift, 48, "w8", rng, bias_shift)
            for run in runs:
                _check(run, *case)


def _big_conv_case():
    """More products per output than an int32 partial sum holds (600 * 16 * 16 * 2^14 > 2^31)."""
    w = np.full((1, 600, 16, 16), -128, np.int8)
    x = np.full((600, 16, 31), -128, np.int8)
    attrs = {"w_bits": 8, "w_exp": 0, "b_exp": 0, "relu": False, "wide": False, "ndim": 2, "stride": [1, 1],
             "padding": [0, 0], "dilation": [1, 1], "groups": 1}
    node = Node("conv", "conv", ["x"], ["y"], attrs, {"weight": w, "bias": np.array([-5], np.int64)})
    specs = [TensorSpec("x", x.shape, 8, 0), TensorSpec("y", (1, 1, 16), 8, -25)]
    return node, _graph(node, specs, {"rounding": "half_up", "accumulator_bits": 48}), [x]


def _big_linear_case():
    n = 16 * 65536 + 37
    node = Node("fc", "linear", ["x"], ["y"], {"w_bits": 8, "w_exp": 0, "b_exp": 0, "relu": False, "wide": False},
                {"weight": np.full((2, n), -128, np.int8), "bias": np.array([0, 3], np.int64)})
    specs = [TensorSpec("x", (n,), 8, 0), TensorSpec("y", (2,), 8, -28)]
    return node, _graph(node, specs, {"rounding": "half_even", "accumulator_bits": 48}), [np.full(n, -128, np.int8)]


def _dilated_conv_case():
    """1-d, stride 1, a dilation so wide that border tiles fall back to single outputs."""
    w = np.arange(-40, 40).reshape(4, 4, 5).astype(np.int8)
    x = (np.arange(4 * 100).reshape(4, 100) % 251 - 125).astype(np.int8)
    attrs = {"w_bits": 8, "w_exp": 0, "b_exp": 0, "relu": True, "wide": False, "ndim": 1, "stride": [1],
             "padding": [3], "dilation": [16], "groups": 1}
    node = Node("conv", "conv", ["x"], ["y"], attrs, {"weight": w, "bias": np.array([7, -9, 0, 100], np.int64)})
    specs = [TensorSpec("x", x.shape, 8, 0), TensorSpec("y", (4, 42), 8, -6)]
    return node, _graph(node, specs, {"rounding": "trunc", "accumulator_bits": 32}), [x]


def _block_conv_case(src: _Src):
    """8-bit, stride_w 1 convs shaped for nk_conv's x86 paths: several blocks of 4 output channels and a
    last partial one, odd and even channel counts, one chunk of channel pairs or several (int64 sums),
    a group's weight entries built at once or block by block, rows of several tiles, 4-output tails,
    padding, dilation, groups, stride_h 1-2."""
    ndim, groups = src.pick([1, 1, 2]), src.pick([1, 1, 1, 2])
    cg = src.pick([1, 2, 3, src.int(4, 20), src.int(20, 40), src.int(60, 70)])
    og = src.pick([src.int(4, 9), src.int(10, 40), src.int(60, 70)])
    ks = [src.int(1, 3), src.int(1, 9)][-ndim:]
    strides, dils = [src.pick([1, 2]), 1][-ndim:], [src.pick([1, 1, 2]) for _ in ks]
    pads = [src.int(0, k) for k in ks]
    sizes = [src.int(max(1, d * (k - 1) + 1 - 2 * p), d * (k - 1) + 1 + (90 if last else 6))
             for k, d, p, last in zip(ks, dils, pads, [False, True][-ndim:], strict=True)]
    return _conv_case_of(src, groups, og, cg, ks, strides, pads, dils, sizes, w_bits=8)


@pytest.mark.parametrize("build", ["lib", "lib_scalar", "lib_avx2"])
def test_block_convs_match_op(request, build):
    """Many-channel 8-bit convs against the op: on x86 hosts through the SSE2 path (lib), the AVX2 build
    and the plain C99 one; elsewhere the portable paths."""
    lib = request.getfixturevalue(build)
    for i in range(60):
        _check(lambda k, b: _run_ctypes(lib, k, b), *_block_conv_case(_Rng(70_000 + i)))


def test_maxpool2_rows_match_op(lib, lib_scalar):
    """MaxPool(2) over rows of even width (nk_maxpool's run of pairs: SSE2 lanes, then one by one),
    rows of odd width, and 2-d inputs pooled along the rows only, with -128 and 127 in the inputs."""
    rng = np.random.default_rng(3)
    for i in range(40):
        ndim, c = 1 + i % 2, int(rng.integers(1, 40))
        sizes = [int(rng.integers(1, 4))] * (ndim - 1) + [int(rng.integers(2, 80))]
        x = rng.choice(np.array([-128, -127, -1, 0, 1, 126, 127], np.int8), (c, *sizes))
        x = np.where(rng.random(x.shape) < 0.5, x, rng.integers(-128, 128, x.shape)).astype(np.int8)
        node = Node("p", "maxpool", ["x"], ["y"], {"ndim": ndim, "kernel": [1, 2][-ndim:], "stride": [1, 2][-ndim:],
                                                   "padding": [0] * ndim})
        shape = get_op("maxpool").infer_shapes(node, [x.shape])[0]
        graph = _graph(node, [TensorSpec("x", x.shape, 8, 0), TensorSpec("y", shape, 8, 0)], _target(_Rng(i)))
        for build in (lib, lib_scalar):
            _check(lambda k, b, build=build: _run_ctypes(build, k, b), node, graph, [x])


def test_dilated_conv(lib):
    _check(lambda k, b: _run_ctypes(lib, k, b), *_dilated_conv_case())


@pytest.mark.parametrize("make", [_big_conv_case, _big_linear_case])
def test_int32_partial_sums_are_flushed(lib, make):
    """Every product is (-128) * (-128): the int32 lane sums must be flushed to int64 in time. The expected
    value is computed here in exact integers (the reference's bound wraps at weight -128)."""
    node, graph, inputs = make()
    kind, blobs, dtype, shape = _call(node, graph, inputs)
    np.testing.assert_array_equal(np.frombuffer(_run_ctypes(lib, kind, blobs), dtype), _flushed(node, graph))


def _flushed(node: Node, graph: Graph) -> np.ndarray:
    """The exact output of a _big_*_case, flattened."""
    w, bias = node.params["weight"], node.params["bias"]
    acc = math.prod(w.shape[1:]) * (1 << 14) + bias  # every window lies inside the input
    assert acc.min() > 2**31
    want = arith.requantize(acc, graph.tensors["x"].exp + node.attrs["w_exp"] - graph.tensors["y"].exp, 8,
                            graph.rounding)
    assert 0 < want.min() and want.max() < 127  # neither wrapped nor saturated
    return np.repeat(want, math.prod(graph.tensors["y"].shape) // len(want)).astype(np.int8)


def test_sanitizer_catches_an_overrun(harness):
    """The harness allocates each buffer at its exact size, so a kernel reading one byte too far is caught."""
    node, graph, inputs = _dilated_conv_case()
    kind, blobs, _, _ = _call(node, graph, inputs)
    blobs[1] = blobs[1][:-1]  # the input, one byte short
    r = _harness_proc(harness, [(kind, blobs)])
    assert r.returncode != 0 and b"heap-buffer-overflow" in r.stderr


def test_kernels_under_sanitizers(harness):
    """A batch of random cases (every kernel, every path) in one ASan + UBSan run, compared with the ops."""
    cases = [CASES[op](_Rng(1000 * i + j)) for i, op in enumerate(sorted(CASES)) for j in range(60 if op == "conv" else 25)]
    cases.append(_dilated_conv_case())
    cases += [_block_conv_case(_Rng(80_000 + i)) for i in range(20)]
    sweep_rng = np.random.default_rng(11)  # requantisation edges: big shifts, saturating bias terms
    cases += [_requant_sweep(scheme, mode, shift, acc_bits, variant, sweep_rng, bias_shift)
              for mode in MODES for scheme, shift, acc_bits, variant, bias_shift in (
                  ("pow2", 1, 16, "w8", None), ("pow2", 30, 31, "w8", None), ("pow2", 60, 48, "w8s2", None),
                  ("pow2", -3, 48, "w16", None), ("pow2", 40, 48, "w8", 40), ("max78000", 22, 32, "w8", None))]
    big = _big_conv_case()
    rng, scalars = np.random.default_rng(7), []
    for kind in (ROUND_SHIFT, ROUND_DIV):
        x = np.concatenate([rng.integers(I64_MIN, I64_MAX, 300, endpoint=True), [I64_MIN, I64_MAX, -1, 0, 1],
                            rng.integers(-1000, 1000, 300)]).astype(np.int64)
        arg = (rng.integers(-80, 100, len(x)) if kind == ROUND_SHIFT else
               np.where(rng.random(len(x)) < 0.5, rng.integers(1, 20, len(x)), rng.integers(1, I64_MAX, len(x))))
        modes = rng.integers(0, 4, len(x)).astype(np.int32)
        arg = arg.astype(np.int32 if kind == ROUND_SHIFT else np.int64)
        scalars.append((kind, [x.tobytes(), arg.tobytes(), modes.tobytes(), bytes(8 * len(x))], x, arg, modes))
    weights = []
    for bits in (2, 4, 8, 16):
        values = rng.integers(*arith.int_range(bits), 37, endpoint=True)
        weights.append((WEIGHT, [_pack(values, bits), _i32(len(values), bits), bytes(4 * len(values))], values))
    calls = [_call(*c)[:2] for c in cases] + [s[:2] for s in scalars] + [w[:2] for w in weights] + [_call(*big)[:2]]
    outs = _run_harness(harness, calls)
    np.testing.assert_array_equal(np.frombuffer(outs.pop(), np.int8), _flushed(*big[:2]))
    for (node, graph, inputs), got in zip(cases, outs, strict=False):
        _check(lambda k, b, got=got: got, node, graph, inputs)
    names = list(MODES)
    for (kind, _, x, arg, modes), got in zip(scalars, outs[len(cases):], strict=False):
        ref = _exact_round_shift if kind == ROUND_SHIFT else _exact_round_div
        want = [ref(int(a), int(b), names[m]) for a, b, m in zip(x, arg, modes, strict=True)]
        assert list(np.frombuffer(got, np.int64)) == want
    for (_, _, values), got in zip(weights, outs[len(cases) + len(scalars):], strict=True):
        np.testing.assert_array_equal(np.frombuffer(got, np.int32), values)


# --------------------------------------------------------------------------------------------------
# The Cortex-M4 (QEMU mps2-an386): the DSP extension's SMLAD paths, and plain C99 with -DNK_NO_SIMD

EMBEDDED_C = r"""/* HARNESS_C on a bare-metal board: its stdin is calls.bin linked into flash, its stdout hex text. */
#include <stdio.h>
#include <string.h>

extern const unsigned char nk_stream[], nk_stream_end[];
__asm__(".section .rodata\n.balign 4\n.global nk_stream\nnk_stream:\n.incbin \"calls.bin\"\n"
        ".global nk_stream_end\nnk_stream_end:\n.previous");
static size_t nk_at;

static size_t nk_fread(void *p, size_t size, size_t n)
{
    const size_t want = size * n, left = (size_t)(nk_stream_end - nk_stream) - nk_at;
    if (want > left) {
        return 0;
    }
    memcpy(p, nk_stream + nk_at, want);
    nk_at += want;
    return n;
}

static size_t nk_fwrite(const void *p, size_t size, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    size_t i;
    for (i = 0; i < size * n; i++) {
        printf("%02x", b[i]);
    }
    printf("\n");
    return n;
}

#define fread(p, s, n, f) nk_fread(p, s, n)
#define fwrite(p, s, n, f) nk_fwrite(p, s, n)
"""

ARM_MISSING = cortex_m.arm_tools_available()


def _c_define(name: str, file: str = "npukit_kernels.h") -> int:
    return int(re.search(rf"^#define {name} (\w+)", (RUNTIME / file).read_text(), re.M).group(1).rstrip("u"), 0)


NK_W8_DSP1D = _c_define("NK_W8_DSP1D")


def test_dsp1d_layout_matches_the_kernel():
    """The generator's constants are the kernel's, and dsp1d_weights lays out a small conv as nk_conv_dsp1d
    reads it: per block of 4 channels, per tap pair (t = kw * cin + c), a word per channel, then the end word."""
    assert codegen.DSP1D_X == _c_define("NK_CONV_DSP1D_X")
    assert codegen.DSP1D_END == _c_define("NK_DSP1D_END", "nk_conv.c")
    w = np.arange(1, 31).reshape(5, 2, 3).astype(np.int8)  # 5 channels, cin 2, k 3: 6 taps, padded to 8
    w[4, 1, 2] = -2
    words = codegen.dsp1d_weights(w).astype(np.int64) % 2**32
    assert words.size == 2 * (4 * 4 + 2)
    lo, hi = (words & 0xFFFF).astype(np.int16), (words >> 16).astype(np.int16)
    taps = lambda o: w[o].T.ravel()  # noqa: E731  (t = kw * cin + c)
    assert [lo[0], hi[0], lo[1], hi[1]] == [taps(0)[0], taps(0)[1], taps(1)[0], taps(1)[1]]
    assert [lo[4], hi[4]] == [taps(0)[2], taps(0)[3]]  # pair 1 of channel 0
    assert [lo[12], hi[12]] == [0, 0] and list(words[16:18]) == [codegen.DSP1D_END, 0]  # padded pair, end words
    assert [lo[18 + 8], hi[18 + 8]] == [taps(4)[4], -2] and not words[18:34].reshape(4, 4)[:, 1:].any()


def _dsp_conv_case(src: _Src):
    """8-bit convs shaped for nk_conv's DSP path: up to 2^8 taps per output (one column) and past (columns of
    fewer kernel rows, int64 sums), odd channel and position counts, every tap count mod 4, 1-d and 2-d,
    padding, stride, dilation, groups."""
    ndim, groups = src.pick([1, 1, 2]), src.pick([1, 1, 1, 2])
    cg, og = src.pick([1, 2, 3, src.int(4, 20), src.int(20, 52), src.int(53, 130)]), src.int(1, 5)
    ks = [src.int(1, 3), src.int(1, 6)][-ndim:]
    strides, dils = [src.pick([1, 1, 2]) for _ in ks], [src.pick([1, 1, 2]) for _ in ks]
    pads = [src.int(0, k) for k in ks]
    sizes = [src.int(max(1, d * (k - 1) + 1 - 2 * p), d * (k - 1) + 1 + 12) for k, d, p in zip(ks, dils, pads, strict=True)]
    return _conv_case_of(src, groups, og, cg, ks, strides, pads, dils, sizes, w_bits=8)


def _dsp1d_conv_case(src: _Src):
    """8-bit 1-d convs with stride 1, dilation 1, groups 1 (the generator pre-arranges their weights for
    DSP builds): odd and even channel counts (the stream's word loads unaligned for odd ones), out channels
    not a multiple of 4, odd and even rows of one to many strips, 3 in_c + taps up to NK_CONV_DSP1D_X."""
    cg, og = src.pick([1, 2, 3, src.int(4, 33), src.int(34, 64)]), src.int(1, 9)
    k = src.int(1, min(7, max(1, (codegen.DSP1D_X - 3 * cg) // cg - 3)))
    if src.int(0, 5) == 0:  # the largest kernel the path takes for this cg: strips of 2 positions
        k = max(1, ((codegen.DSP1D_X - 3 * cg) // 4 * 4) // cg)
    pad = src.int(0, k)
    size = src.int(max(1, k - 2 * pad), k + src.pick([3, 12, 60]))
    return _conv_case_of(src, 1, og, cg, [k], [1], [pad], [1], [size], w_bits=8)


def _dsp1d_call(node: Node, graph: Graph, inputs: list[np.ndarray]) -> tuple[int, list[bytes]]:
    """The nk_conv call of a conv with its weights as model.c holds them in DSP builds (w_bits NK_W8_DSP1D)."""
    a, w = node.attrs, node.params["weight"]
    assert codegen.dsp1d_applies(a["w_bits"], a["ndim"], a["stride"], a["dilation"], a["groups"], w.shape[1], w.shape[2])
    kind, blobs = _call(node, graph, inputs)[:2]
    p = ConvParams.from_buffer_copy(blobs[0])
    p.w_bits = NK_W8_DSP1D
    return kind, [bytes(p), blobs[1], codegen.dsp1d_weights(w).astype("<i4").tobytes(), *blobs[3:]]


def _wide_kernel_case():
    """A kernel row wider than the DSP path's column (k_w 300 > NK_CONV_DSP_K): the generic loop."""
    rng = np.random.default_rng(5)
    w = rng.integers(-127, 128, (3, 2, 300)).astype(np.int8)
    x = rng.integers(-128, 128, (2, 310)).astype(np.int8)
    attrs = {"w_bits": 8, "w_exp": 0, "b_exp": 0, "relu": False, "wide": False, "ndim": 1, "stride": [1],
             "padding": [4], "dilation": [1], "groups": 1}
    node = Node("conv", "conv", ["x"], ["y"], attrs, {"weight": w, "bias": np.array([5, -6, 7], np.int64)})
    specs = [TensorSpec("x", x.shape, 8, 0), TensorSpec("y", (3, 19), 8, -14)]
    return node, _graph(node, specs, {"rounding": "half_even", "accumulator_bits": 32}), [x]


def _dsp_flush_case():
    """A linear layer whose int32 sums must be flushed: (2^17 + 37) products of (-128) * (-128)."""
    n = (1 << 17) + 37
    node = Node("fc", "linear", ["x"], ["y"], {"w_bits": 8, "w_exp": 0, "b_exp": 0, "relu": False, "wide": False},
                {"weight": np.full((3, n), -128, np.int8), "bias": np.array([0, 3, -7], np.int64)})
    specs = [TensorSpec("x", (n,), 8, 0), TensorSpec("y", (3,), 8, -26)]
    return node, _graph(node, specs, {"rounding": "half_even", "accumulator_bits": 48}), [np.full(n, -128, np.int8)]


@pytest.mark.cortex_m
@pytest.mark.skipif(ARM_MISSING is not None, reason=str(ARM_MISSING))
@pytest.mark.parametrize("opt, flags", [("-Os", []), ("-O0", []), ("-O2", ["-DNK_NO_SIMD"])],
                         ids=["dsp-Os-asm", "dsp-O0-c", "plain-O2"])
def test_kernels_on_cortex_m4(tmp_path, opt, flags):
    """A batch of random cases on the Cortex-M4 under QEMU, compared with the ops: the SMLAD paths of
    nk_conv and nk_linear (its inner loop in asm where gcc optimises, in C at -O0) and, with -DNK_NO_SIMD,
    the plain C99 paths built for the same core."""
    rng_cases = [_dsp_conv_case(_Rng(50_000 + i)) for i in range(120)]
    rng_cases += [CASES[op](_Rng(60_000 + 1000 * i + j)) for i, op in enumerate(("conv", "linear"))
                  for j in range(60)]
    sweep_rng = np.random.default_rng(13)
    rng_cases += [_requant_sweep(scheme, mode, shift, acc_bits, "w8", sweep_rng)
                  for mode in MODES for scheme, shift, acc_bits in (
                      ("pow2", 1, 16), ("pow2", 7, 20), ("pow2", 30, 31), ("pow2", 31, 48), ("max78000", 22, 32))]
    rng_cases.append(_wide_kernel_case())
    flush = _dsp_flush_case()
    calls = [(LAYOUT, [bytes(52)])] + [_call(*c)[:2] for c in rng_cases]
    if not flags:  # DSP builds: nk_conv's 1-d path on pre-arranged weights (the requantisation sweep included)
        dsp1d = [_dsp1d_conv_case(_Rng(70_000 + i)) for i in range(100)]
        # without an accumulator clamp (32-bit), small shifts: every residue of the shift, ties included, through
        # the block's own requantisation (SSAT / USAT) for half_up and floor, nk_conv_rq32_apply for the others
        dsp1d += [_requant_sweep("pow2", mode, shift, 32, "w8", sweep_rng) for mode in MODES for shift in (1, 4, 8)
                  for _ in range(2)]
        dsp1d += [c for c in rng_cases if c[0].op == "conv" and c[0].attrs["ndim"] == 1 and c[0].attrs["w_bits"] == 8
                  and c[0].attrs["stride"] == [1] and c[0].attrs["dilation"] == [1] and c[0].attrs["groups"] == 1
                  and 3 * c[0].params["weight"].shape[1] + -(-c[0].params["weight"][0].size // 4) * 4 <= codegen.DSP1D_X]
        calls += [_dsp1d_call(*c) for c in dsp1d]
        rng_cases += dsp1d
    calls += [_call(*flush)[:2]]
    folder = cortex_m.write_cortex_m(tmp_path)
    (folder / "calls.bin").write_bytes(_harness_input(calls))
    (folder / "harness.c").write_text(EMBEDDED_C + HARNESS_C)
    cflags = [f for f in cortex_m.CFLAGS if f != "-Os"] + [opt, *flags, f"-I{RUNTIME}"]
    r = subprocess.run([cortex_m.CC, *cflags, "-o", "harness.elf", cortex_m.STARTUP, "harness.c", *_sources(),
                        *cortex_m.LDFLAGS], cwd=folder, capture_output=True, text=True)
    assert r.returncode == 0, f"building the Cortex-M4 harness failed:\n{r.stdout}{r.stderr}"
    ok, text = cortex_m.run_qemu(folder / "harness.elf", timeout=300)
    assert "[qemu exit status 0]" in text, text[-2000:]
    hexed = "".join(line for line in text.splitlines() if re.fullmatch(r"(?:[0-9a-f]{2})*", line))
    outs = _split_outputs(bytes.fromhex(hexed), len(calls))
    want_layout = [ctypes.sizeof(ConvParams), ConvParams.rq.offset, ConvParams.rq.offset + RequantParams.acc_min.offset,
                   ConvParams.out_bytes.offset, ctypes.sizeof(LinearParams), LinearParams.rq.offset,
                   LinearParams.out_bytes.offset, ctypes.sizeof(PoolParams), PoolParams.rounding.offset,
                   ctypes.sizeof(RequantParams), RequantParams.acc_min.offset, RequantParams.act_min.offset,
                   RequantParams.rounding.offset]
    assert list(np.frombuffer(outs.pop(0), np.int32)) == want_layout  # the blobs mean the same on the M4
    np.testing.assert_array_equal(np.frombuffer(outs.pop(), np.int8), _flushed(*flush[:2]))
    for (node, graph, inputs), got in zip(rng_cases, outs, strict=True):
        _check(lambda k, b, got=got: got, node, graph, inputs)


# --------------------------------------------------------------------------------------------------
# Whole models, node by node, against the engine

def _run_graph_c(run, graph: Graph, x: np.ndarray) -> np.ndarray:
    env = {graph.inputs[0]: x}
    for node in graph.nodes:
        ins = [env[t] for t in node.inputs]
        if node.op == "reshape":  # a reshape moves no data: the same bytes, read with the new shape
            env[node.outputs[0]] = ins[0].reshape(graph.tensors[node.outputs[0]].shape)
            continue
        kind, blobs, dtype, shape = _call(node, graph, ins)
        env[node.outputs[0]] = np.frombuffer(run(kind, blobs), dtype).reshape(shape)
    return env[graph.outputs[0]]


class _Branchy(nn.Module):
    """Every kernel: conv2d (padding, dilation, stride, depthwise), add+ReLU, concat, standalone ReLU,
    max/avg pooling, global average pooling, linear."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.dw = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6)
        self.c2 = nn.Conv2d(6, 4, 1)
        self.c3 = nn.Conv2d(10, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        a = F.relu(self.bn1(self.c1(x)))
        a = F.relu(a + self.dw(a))
        c = torch.relu(torch.cat([a, self.c2(a)], dim=1))
        p = F.max_pool2d(c, 2)
        q = F.avg_pool2d(self.c3(p), (1, 3))
        return self.fc(q.mean(dim=(2, 3)))


LOWBIT = {"name": "lowbit", "activation_bits": 8, "weight_bits": [4, 2, 8, 16], "bias_bits": 16,
          "accumulator_bits": 24, "rounding": "half_even", "pool_rounding": "trunc", "wide_output": False}


@pytest.mark.parametrize("model, shape, target, weight_bits", [
    (mnist1d_cnn, (1, 40), "venus", None),
    (_Branchy, (2, 12, 34), "venus", None),
    (_Branchy, (2, 12, 34), "venus", 16),
    (_Branchy, (2, 12, 34), LOWBIT, 4),
    (_Branchy, (2, 12, 34), LOWBIT, 2),
])
def test_models_match_engine(lib, model, shape, target, weight_bits):
    torch.manual_seed(0)
    x = torch.randn(32, *shape)
    graph = npukit.to_ir(npukit.prepare(model(), x, target=target, weight_bits=weight_bits, rules="off"))
    if model is _Branchy:
        assert {n.op for n in graph.nodes} >= {"conv", "add", "concat", "relu", "maxpool", "avgpool",
                                                "global_avgpool", "linear"}
    q = graph.quantize_input(torch.randn(6, *shape).numpy() * 2)
    want = npukit.run(graph, q)[0]
    got = np.stack([_run_graph_c(lambda k, b: _run_ctypes(lib, k, b), graph, s) for s in q])
    np.testing.assert_array_equal(got, want)

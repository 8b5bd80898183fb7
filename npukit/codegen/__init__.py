"""`npukit codegen`: model.bin -> a self-contained C99 project with a known-answer test.

The project holds the model (`model.c`/`model.h`: const weights at their packed bit widths, one static
arena of exactly the planned size, one entry point), the stateless kernel library (`nk_*.c`, copied from
`runtime/`), `main.c` (the known-answer test), `run_file.c` (runs a file of inputs, for differential
tests), a `Makefile` whose recipes call only the compiler, and a `CMakeLists.txt`. Each op writes its own
call (`OpDef.to_c`), with every parameter computed here, offline. The weights of 8-bit 1-d convs that
nk_conv's DSP path takes are written twice under `#if` (`CBuilder.conv_weights`): model.bin's bytes, and
for builds with the DSP extension the int16 pairs that path reads (`dsp1d_weights`).
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import NpukitError
from ..ir import Graph

RUNTIME = Path(__file__).parent / "runtime"
ROUNDING_C = {"half_up": "NK_HALF_UP", "half_even": "NK_HALF_EVEN", "floor": "NK_FLOOR", "trunc": "NK_TRUNC"}


@dataclass
class CBuilder:
    """What an op's `to_c` may ask for: tensor pointers, parameter arrays, C literals."""

    graph: Graph
    offsets: dict[str, int]
    consts: list[str] = field(default_factory=list)  # file-scope definitions of model.c
    _ids: dict[str, str] = field(default_factory=dict)

    def ident(self, name: str) -> str:
        """A C identifier for a node or tensor name (module paths have dots)."""
        if name not in self._ids:
            base = "".join(c if c.isalnum() else "_" for c in name)
            self._ids[name] = f"n{len(self._ids)}_{base}"
        return self._ids[name]

    def ptr(self, tensor: str, ctype: str = "int8_t") -> str:
        return f"(({ctype} *)(arena + {self.offsets[tensor]}))"  # `arena`: npukit_run_in's int8_t pointer

    def rounding(self, mode: str) -> str:
        return ROUNDING_C[mode]

    def weights(self, node, key: str = "weight") -> str:
        """A const array of the parameter packed as model.bin packs it (2/4-bit two's complement, low bits first)."""
        w = node.params[key]
        name = f"{self.ident(node.name)}_{key}"
        if key == "bias":
            if np.abs(w).max(initial=0) >= 2**31:
                raise NpukitError(f"{node.name}: bias does not fit int32")
            self.consts.append(f"static const int32_t {name}[{w.size}] NPUKIT_WEIGHTS_SECTION = {{{_list(w.ravel())}}};")
            return name
        bits = node.attrs["w_bits"]
        if bits in (8, 16):
            ctype = "int8_t" if bits == 8 else "int16_t"
            self.consts.append(f"static const {ctype} {name}[{w.size}] NPUKIT_WEIGHTS_SECTION = {{{_list(w.ravel())}}};")
        else:
            from ..modelbin import encode_values  # the same bytes model.bin stores

            packed = np.frombuffer(encode_values(w, bits), np.uint8)
            self.consts.append(f"static const uint8_t {name}[{packed.size}] NPUKIT_WEIGHTS_SECTION = {{{_list(packed)}}};"
                               f"  /* {bits}-bit */")
        return name

    def conv_weights(self, node, cin: int) -> tuple[str, object]:
        """A conv's weight array and the w_bits its nk_conv_params gets: `weights` and w_bits, or, for a
        conv the DSP 1-d path takes (`dsp1d_applies`), model.bin's bytes in builds without the DSP path and
        the pre-arranged words (`dsp1d_weights`) in builds with it, w_bits NK_CONV_W8_1D (npukit_kernels.h)."""
        a, w = node.attrs, node.params["weight"]
        if not dsp1d_applies(a["w_bits"], a["ndim"], a["stride"], a["dilation"], a["groups"], cin, w.shape[-1]):
            return self.weights(node), a["w_bits"]
        name = self.weights(node)
        words = dsp1d_weights(w)
        self.consts[-1:] = ["#if NK_CONV_W8_1D != 8  /* the DSP path: pre-arranged for nk_conv_dsp1d */",
                            f"static const int32_t {name}[{words.size}] NPUKIT_WEIGHTS_SECTION = {{{_list(words)}}};",
                            "#else", self.consts[-1], "#endif"]
        return name, "NK_CONV_W8_1D"

    def array(self, node, key: str, ctype: str) -> str:
        """A const array of a parameter stored at its own dtype (a lookup table)."""
        values = node.params[key]
        name = f"{self.ident(node.name)}_{key}"
        self.consts.append(f"static const {ctype} {name}[{values.size}] NPUKIT_WEIGHTS_SECTION = {{{_list(values.ravel())}}};")
        return name

    def struct(self, ctype: str, name: str, fields: dict) -> str:
        body = ", ".join(f".{k} = {v}" for k, v in fields.items())
        self.consts.append(f"static const {ctype} {name} = {{{body}}};")
        return f"&{name}"


DSP1D_X = 384  # NK_CONV_DSP1D_X of runtime/npukit_kernels.h (tests/test_c_kernels.py holds them equal)
DSP1D_END = 0x40004000  # NK_DSP1D_END of nk_conv.c: ends each block of pre-arranged weights


def dsp1d_applies(w_bits: int, ndim: int, stride, dilation, groups: int, cin: int, k: int) -> bool:
    """Whether nk_conv's DSP 1-d path takes a conv (nk_conv_dsp1d checks the same)."""
    kp = -(-cin * k // 4) * 4
    return (w_bits == 8 and ndim == 1 and list(stride) == [1] and list(dilation) == [1] and groups == 1
            and 3 * cin + kp <= DSP1D_X)


def dsp1d_weights(w: np.ndarray) -> np.ndarray:
    """A 1-d conv's weights (out, cin, k) in nk_conv_dsp1d's layout, as int32 words: per block of 4 output
    channels (the last padded with zero channels), for each pair j of taps t = kw * cin + c (padded with
    zeros to a multiple of 4), one word per channel with the int16 pair (w[2j], w[2j + 1]) (low half first),
    then the words DSP1D_END and 0."""
    o, cin, k = w.shape
    n, kp, nb = cin * k, -(-cin * k // 4) * 4, -(-o // 4)
    taps = np.zeros((nb * 4, kp), np.int64)
    taps[:o, :n] = w.astype(np.int64).transpose(0, 2, 1).reshape(o, n)
    pairs = taps.reshape(nb, 4, kp // 2, 2) & 0xFFFF
    words = (pairs[..., 0] | (pairs[..., 1] << 16)).transpose(0, 2, 1).reshape(nb, kp // 2 * 4)
    words = np.concatenate([words, np.tile([DSP1D_END, 0], (nb, 1))], axis=1).ravel()
    return np.where(words >= 2**31, words - 2**32, words)


def _list(values) -> str:
    return ", ".join(str(int(v)) for v in values)


def _ctype(bits: int) -> str:
    """The C type of an output, matching `TensorSpec.dtype` (kernels write int8 or int32)."""
    if bits <= 8:
        return "int8_t"
    if 16 < bits <= 32:
        return "int32_t"
    raise NpukitError(f"codegen supports 8-bit or 17..32-bit (wide) outputs, not {bits}-bit")


MANIFEST = ".npukit-generated"  # the files the last generation wrote, one relative path per line


def generate(model, out_dir: str | Path, *, kat_input: np.ndarray | None = None, prefix: str = "npukit",
             force: bool = False) -> Path:
    """Write the C project for `model` (a model.bin path or a `modelbin.PackedModel`) into `out_dir`.

    `prefix` names the model's symbols and macros (`<prefix>_run`, `<PREFIX>_INPUT_SIZE`, ...), so that
    several generated models link into one image (their kernel files are the same: compile one set).

    `kat_input` is one integer input sample (or a batch: its first sample is used), or for a model with
    several inputs a list of them, one per input; the expected outputs come from the reference engine.
    Without it, the inputs are all zeros.

    A model with one input and one output gets `<prefix>_run(input, output)` and the macros
    `<PREFIX>_INPUT_SIZE`, `<PREFIX>_OUTPUT_SIZE`, ...; a model with several gets one pointer per input,
    then one per output, in graph order (`<prefix>_run(input0, input1, output0)`), and numbered names
    (`<PREFIX>_INPUT0_SIZE`, `<prefix>_output1_t`, `<prefix>_quantize0`, ...).

    Regenerating into a folder replaces the files an earlier generation wrote (listed in its `.npukit-generated`)
    and removes those this one no longer writes; a file of the same name that npukit did not write is an
    error unless `force`, and other files are left alone. Nothing is written when anything fails.
    """
    from .. import engine, modelbin
    from ..ops import get_op

    packed = model if isinstance(model, modelbin.PackedModel) else modelbin.read(model)
    g = packed.graph
    if any(g.tensors[t].bits > 8 for t in [*g.inputs, *(t for n in g.nodes for t in n.inputs)]):
        raise NpukitError("codegen supports 8-bit activations")
    io = _io(g)
    b = CBuilder(g, packed.offsets)
    body = [_dump_call(g, b, t) for t in g.inputs]
    for node in g.nodes:
        body.append(f"    /* {node.name}: {node.op} */")
        body += [f"    {line}" for line in get_op(node.op).to_c(node, b)]
        body += [_dump_call(g, b, t) for t in node.outputs]

    kat = _kat_inputs(g, kat_input)
    expected = engine.run(g, *kat)  # checks the integers' type and range too, before anything is written
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", prefix) or prefix.startswith("nk_"):
        raise NpukitError(f"prefix {prefix!r}: use a lowercase C identifier (letters, digits, _), not starting with nk_")
    files = {
        "model.h": _model_h(g, io, packed.arena_bytes),
        "model.c": _model_c(g, b, io, body, packed.arena_bytes),
        "main.c": _main_c(io, [x.ravel() for x in kat], [y.ravel() for y in expected]),
        "run_file.c": _run_file_c(io),
        "dump_run.c": _dump_run_c(io),
        "npukit_dump.c": _DUMP_C,
        "Makefile": _MAKEFILE,
        "CMakeLists.txt": _CMAKE,
    }
    if prefix != "npukit":  # the model's own names; the kernels' (nk_*, npukit_kernels.h) stay shared
        for name in ("model.h", "model.c", "main.c", "run_file.c", "dump_run.c"):
            files[name] = _with_prefix(files[name], prefix)
    from ..fileio import staged_directory
    from .cortex_m import write_cortex_m

    out_dir = Path(out_dir)
    with staged_directory(out_dir) as stage:  # all or nothing: a failure or Ctrl-C leaves out_dir as it was
        for src in sorted(RUNTIME.glob("*.[ch]")):
            shutil.copyfile(src, stage / src.name)
        for name, text in files.items():
            (stage / name).write_text(text)
        write_cortex_m(stage)  # cortex-m/: startup, linker script and Makefile for QEMU's mps2-an386
        written = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        stale = _stale_files(out_dir, set(written), force)
        (stage / MANIFEST).write_text("\n".join(written) + "\n")
    for name in stale:  # an earlier model's files this one does not have
        (out_dir / name).unlink(missing_ok=True)
    return out_dir


@dataclass
class _Tensor:
    """An input or output of the generated entry point: its C names and spec."""

    spec: object  # TensorSpec
    arg: str  # the parameter name: input, output / input0, output1, ...
    macro: str  # NPUKIT_<macro>_SIZE, _EXP: INPUT, OUTPUT / INPUT0, OUTPUT1, ...
    ctype: str  # int8_t for inputs; npukit_output_t / npukit_output1_t for outputs
    base: str  # the C type underneath
    suffix: str  # of the helpers: npukit_quantize<suffix>, npukit_dequantize<suffix>

    @property
    def size(self) -> int:
        return math.prod(self.spec.shape)


def _io(g: Graph) -> tuple[list[_Tensor], list[_Tensor]]:
    """The entry point's inputs and outputs: today's names for one input and one output, numbered ones
    (input0, OUTPUT1, npukit_output1_t) as soon as the model has several of either."""
    single = len(g.inputs) == 1 and len(g.outputs) == 1
    ins, outs = [], []
    for i, t in enumerate(g.inputs):
        k = "" if single else str(i)
        ins.append(_Tensor(g.tensors[t], f"input{k}", f"INPUT{k}", "int8_t", "int8_t", k))
    for i, t in enumerate(g.outputs):
        k = "" if single else str(i)
        spec = g.tensors[t]
        outs.append(_Tensor(spec, f"output{k}", f"OUTPUT{k}", f"npukit_output{k}_t", _ctype(spec.bits), k))
    return ins, outs


def _kat_inputs(g: Graph, kat_input) -> list[np.ndarray]:
    """One sample per input for the known-answer test (zeros when not given)."""
    specs = [g.input_spec(i) for i in range(len(g.inputs))]
    if kat_input is None:
        return [np.zeros((1, *s.shape), s.dtype) for s in specs]
    # a list is one array per input; for a one-input model, also the sample itself (as it has always been)
    given = list(kat_input) if isinstance(kat_input, list | tuple) and len(specs) > 1 else [kat_input]
    if len(given) != len(specs):
        raise NpukitError(f"the known-answer input gives {len(given)} array(s); the model takes {len(specs)} "
                          "input(s): give a list with one array per input")
    out = []
    for spec, x in zip(specs, given, strict=True):
        x, n = np.asarray(x), math.prod(spec.shape)
        if x.size == 0 or x.size % n:
            raise NpukitError(f"the known-answer input {spec.name!r} has shape {x.shape}; the model takes samples of "
                              f"shape {tuple(spec.shape)} (one sample, or a batch of them)")
        out.append(x.reshape(-1, *spec.shape)[:1])
    return out


def _stale_files(out_dir: Path, written: set[str], force: bool) -> set[str]:
    """Files of an earlier generation that this one does not write; raises when this one would replace a
    file npukit did not write (unless `force`)."""
    if not out_dir.is_dir():
        return set()
    manifest = out_dir / MANIFEST
    earlier = set(manifest.read_text().split()) if manifest.is_file() else set()
    foreign = sorted(f for f in written if (out_dir / f).exists() and f not in earlier)
    if foreign and not force:
        raise NpukitError(f"{out_dir} holds files npukit codegen did not write: {', '.join(foreign[:4])}"
                          f"{', ...' if len(foreign) > 4 else ''}\n    fix: give a new or empty folder, or --force "
                          "to overwrite them")
    return earlier - written


# The contract's rounding modes (arith.round_real) on f = floor(v), exact in double: the helper's last step.
_ROUND_C = {
    "half_up": "    f += (v - f >= 0.5);",
    "half_even": "    f += (v - f > 0.5 || (v - f == 0.5 && (long)f % 2 != 0));",
    "floor": "    /* floor: f as it is */",
    "trunc": "    f += (v < 0.0 && v != f);",
}


def _with_prefix(text: str, prefix: str) -> str:
    text = re.sub(r"\bnpukit_(run_in|run|output\d*_t|arena|quantize\d*|dequantize\d*)\b", rf"{prefix}_\1", text)
    return re.sub(r"\bNPUKIT_(?!KERNELS_H)", f"{prefix.upper()}_", text)


def _model_h(g: Graph, io, arena: int) -> str:
    ins, outs = io
    docs = "\n".join(
        [f" * Input{t.suffix and ' ' + t.suffix} ({t.spec.name!r}): int8, shape {tuple(t.spec.shape)}, "
         f"real = q * 2^-{t.spec.exp}." for t in ins]
        + [f" * Output{t.suffix and ' ' + t.suffix} ({t.spec.name!r}): {t.base}, shape {tuple(t.spec.shape)}, "
           f"real = q * 2^-{t.spec.exp}." for t in outs])
    macros = "\n".join([f"#define NPUKIT_{t.macro}_SIZE {t.size}" for t in ins + outs]
                       + [f"#define NPUKIT_{t.macro}_EXP {t.spec.exp}" for t in ins + outs])
    typedefs = "\n".join(f"typedef {t.base} {t.ctype};" for t in outs)
    helpers = "\n".join(_quantize_h(g, t) for t in ins) + "\n".join(_dequantize_h(t) for t in outs)
    return f"""/* Generated by npukit from a {g.target['name']} model. Do not edit. */
#ifndef NPUKIT_MODEL_H
#define NPUKIT_MODEL_H

#include <stdint.h>

/* Every tensor is channel first and C-contiguous (C x H x W; 1-d data C x L), one sample.
{docs} */
#define NPUKIT_NUM_INPUTS {len(ins)}
#define NPUKIT_NUM_OUTPUTS {len(outs)}
{macros}
#define NPUKIT_ARENA_BYTES {arena}
{typedefs}

/* Placement: define these (e.g. to __attribute__((section(".sram2")))) before compiling model.c to put the
 * arena or the weights in a memory section of your linker script. */
#ifndef NPUKIT_ARENA_SECTION
#define NPUKIT_ARENA_SECTION
#endif
#ifndef NPUKIT_WEIGHTS_SECTION
#define NPUKIT_WEIGHTS_SECTION
#endif

/* Runs one sample in the one static arena of NPUKIT_ARENA_BYTES (not reentrant): one pointer per input, then
 * one per output, in the order above. Compiled out with -DNPUKIT_ARENA_EXTERNAL, when the caller provides
 * the arena to npukit_run_in (shared with other code, placed where the firmware wants it). Return 0, -1
 * when a pointer is NULL, -2 when the arena is not 8-byte aligned. */
#ifndef NPUKIT_ARENA_EXTERNAL
int npukit_run({_params(io)});
#endif
int npukit_run_in(void *arena_bytes, {_params(io)});
{helpers}
#endif
"""


def _params(io) -> str:
    ins, outs = io
    return ", ".join([f"const int8_t *{t.arg}" for t in ins] + [f"{t.ctype} *{t.arg}" for t in outs])


def _quantize_h(g: Graph, t: _Tensor) -> str:
    return f"""
/* For float callers (the model itself computes no floating point): the input quantization of the arithmetic
 * contract (x * 2^NPUKIT_{t.macro}_EXP rounded {g.rounding.replace("_", " ")}, saturated to int8), exact in double. */
static inline int8_t npukit_quantize{t.suffix}(double x)
{{
    const double v = x * {2.0 ** t.spec.exp!r};
    double f;
    if (!(v > -129.0)) {{
        return -128; /* also NaN: the caller's data should not hold any */
    }}
    if (v > 128.0) {{
        return 127;
    }}
    f = (double)(long)v; /* truncation, then floor: */
    f -= (f > v);
{_ROUND_C[g.rounding]}
    return (int8_t)(f < -128.0 ? -128 : (f > 127.0 ? 127 : f));
}}
"""


def _dequantize_h(t: _Tensor) -> str:
    return f"""
/* Output integers to real values: q * 2^-NPUKIT_{t.macro}_EXP. */
static inline double npukit_dequantize{t.suffix}({t.ctype} q)
{{
    return (double)q * {2.0 ** -t.spec.exp!r};
}}
"""


def _dump_call(g: Graph, b: CBuilder, tensor: str) -> str:
    spec = g.tensors[tensor]
    size = math.prod(spec.shape) * spec.dtype.itemsize
    ctype = {1: "int8_t", 2: "int16_t", 4: "int32_t", 8: "int64_t"}[spec.dtype.itemsize]
    return f'    NPUKIT_DUMP_TENSOR("{tensor}", {b.ptr(tensor, ctype)}, {size});'


def _model_c(g: Graph, b: CBuilder, io, body: list[str], arena: int) -> str:
    ins, outs = io
    consts = "\n".join(b.consts)
    names = [t.arg for t in ins + outs]
    null = " || ".join(f"{n} == NULL" for n in ["arena", *names])
    copy_in = "\n".join(f"    memcpy({b.ptr(t.spec.name)}, {t.arg}, {t.size});" for t in ins)
    copy_out = "\n".join(f"    memcpy({t.arg}, {b.ptr(t.spec.name, t.base)}, {t.size} * sizeof({t.ctype}));"
                          for t in outs)
    return f"""/* Generated by npukit from a {g.target['name']} model. Do not edit. */
#include <string.h>

#include "model.h"
#include "npukit_kernels.h"

/* Per-layer dumps (npukit compare): built with -DNPUKIT_DUMP, every tensor is handed to npukit_dump()
 * (npukit_dump.c prints its CRC32) right after the layer that writes it; otherwise the calls vanish. */
#ifdef NPUKIT_DUMP
void npukit_dump(const char *name, const void *data, unsigned long nbytes);
#define NPUKIT_DUMP_TENSOR(name, data, nbytes) npukit_dump(name, data, nbytes)
#else
#define NPUKIT_DUMP_TENSOR(name, data, nbytes) ((void)0)
#endif

{consts}

int npukit_run_in(void *arena_bytes, {_params(io)})
{{
    int8_t *const arena = (int8_t *)arena_bytes;
    if ({null}) {{
        return -1;
    }}
    if (((uintptr_t)arena_bytes & 7u) != 0) {{
        return -2;
    }}
{copy_in}
{chr(10).join(body)}
{copy_out}
    return 0;
}}

#ifndef NPUKIT_ARENA_EXTERNAL
/* The one arena, exactly the planned size; the union aligns it for every tensor type. */
static union {{
    int64_t align;
    int8_t bytes[{max(arena, 1)}];
}} npukit_arena NPUKIT_ARENA_SECTION;

int npukit_run({_params(io)})
{{
    return npukit_run_in(npukit_arena.bytes, {", ".join(names)});
}}
#endif
"""


def _main_c(io, xs: list[np.ndarray], ys: list[np.ndarray]) -> str:
    ins, outs = io
    arrays = "\n".join([f"static const int8_t kat_{t.arg}[NPUKIT_{t.macro}_SIZE] = {{{_list(x)}}};"
                        for t, x in zip(ins, xs, strict=True)]
                       + [f"static const {t.ctype} kat_expected{t.suffix}[NPUKIT_{t.macro}_SIZE] = {{{_list(y)}}};"
                          for t, y in zip(outs, ys, strict=True)])
    got = "\n".join(f"    static {t.ctype} got{t.suffix}[NPUKIT_{t.macro}_SIZE];" for t in outs)
    args = ", ".join([f"kat_{t.arg}" for t in ins] + [f"got{t.suffix}" for t in outs])
    checks = "".join(f"""    for (i = 0; i < NPUKIT_{t.macro}_SIZE; i++) {{
        if (got{t.suffix}[i] != kat_expected{t.suffix}[i]) {{
            if (bad < 8) {{
                printf("{t.arg + ': ' if t.suffix else ''}mismatch at %d: expected %ld, got %ld\\n", i, (long)kat_expected{t.suffix}[i],
                       (long)got{t.suffix}[i]);
            }}
            bad++;
        }}
    }}
""" for t in outs)
    total = " + ".join(f"NPUKIT_{t.macro}_SIZE" for t in outs)
    return f"""/* Known-answer test: the model's outputs on a sample input must equal the reference engine's. */
#include <stdio.h>

#include "model.h"

{arrays}

int main(void)
{{
{got}
    int i, bad = 0;
    if (npukit_run({args}) != 0) {{
        printf("KAT FAIL: npukit_run returned an error\\n");
        return 1;
    }}
{checks}    if (bad) {{
        printf("KAT FAIL: %d of %d outputs differ\\n", bad, {total});
        return 1;
    }}
    printf("KAT PASS: %d outputs equal the reference engine\\n", {total});
    return 0;
}}
"""


def _io_buffers(io) -> str:
    ins, outs = io
    return "\n".join([f"    static int8_t {t.arg}[NPUKIT_{t.macro}_SIZE];" for t in ins]
                     + [f"    static {t.ctype} {t.arg}[NPUKIT_{t.macro}_SIZE];" for t in outs])


def _read_sample(io, stream: str) -> str:
    """`fread`s of one sample: every input in turn (a record of the input file)."""
    return " && ".join(f"fread({t.arg}, 1, sizeof {t.arg}, {stream}) == sizeof {t.arg}" for t in io[0])


def _run_file_c(io) -> str:
    ins, outs = io
    args = ", ".join(t.arg for t in ins + outs)
    writes = " || ".join(f"fwrite({t.arg}, sizeof {t.arg}[0], NPUKIT_{t.macro}_SIZE, out) != NPUKIT_{t.macro}_SIZE"
                         for t in outs)
    return f"""/* run_file IN OUT: runs every sample of a raw input file, writes the raw outputs. A sample of IN is every
 * input's int8 bytes in turn (input0, input1, ...); a sample of OUT every output's, in order. */
#include <stdio.h>

#include "model.h"

int main(int argc, char **argv)
{{
{_io_buffers(io)}
    FILE *in, *out;
    long n = 0;
    if (argc != 3) {{
        fprintf(stderr, "usage: run_file INPUT.raw OUTPUT.raw\\n");
        return 2;
    }}
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (!in || !out) {{
        fprintf(stderr, "run_file: cannot open the files\\n");
        return 2;
    }}
    while ({_read_sample(io, "in")}) {{
        if (npukit_run({args}) != 0) {{
            return 1;
        }}
        if ({writes}) {{
            return 2;
        }}
        n++;
    }}
    fclose(in);
    fclose(out);
    fprintf(stderr, "run_file: %ld samples\\n", n);
    return 0;
}}
"""


def _dump_run_c(io) -> str:
    ins, outs = io
    args = ", ".join(t.arg for t in ins + outs)
    return f"""/* dump_run IN: runs every sample of a raw input file (as run_file reads it) with per-layer dumps (build
 * with -DNPUKIT_DUMP). */
#include <stdio.h>

#include "model.h"

extern long npukit_dump_sample;

int main(int argc, char **argv)
{{
{_io_buffers(io)}
    FILE *in;
    if (argc != 2) {{
        fprintf(stderr, "usage: dump_run INPUT.raw\\n");
        return 2;
    }}
    in = fopen(argv[1], "rb");
    if (!in) {{
        fprintf(stderr, "dump_run: cannot open %s\\n", argv[1]);
        return 2;
    }}
    while ({_read_sample(io, "in")}) {{
        if (npukit_run({args}) != 0) {{
            return 1;
        }}
        npukit_dump_sample++;
    }}
    fclose(in);
    return 0;
}}
"""


_DUMP_C = """/* npukit_dump(): one line per tensor, `npukit-dump SAMPLE TENSOR CRC32 NBYTES [HEX]`, for npukit compare.
 * The CRC32 (IEEE, bitwise: no table, a few dozen bytes of code) is what small firmware can print over a
 * serial line; -DNPUKIT_DUMP_FULL adds the bytes in hex (host runs). Set npukit_dump_sample per input. */
#include <stdio.h>

long npukit_dump_sample = 0;

void npukit_dump(const char *name, const void *data, unsigned long nbytes)
{
    const unsigned char *p = (const unsigned char *)data;
    unsigned long crc = 0xFFFFFFFFUL, i;
    int k;
    for (i = 0; i < nbytes; i++) {
        crc ^= p[i];
        for (k = 0; k < 8; k++) {
            crc = (crc >> 1) ^ (0xEDB88320UL & (0UL - (crc & 1UL)));
        }
    }
    printf("npukit-dump %ld %s %08lx %lu", npukit_dump_sample, name, (crc ^ 0xFFFFFFFFUL) & 0xFFFFFFFFUL, nbytes);
#ifdef NPUKIT_DUMP_FULL
    printf(" ");
    for (i = 0; i < nbytes; i++) {
        printf("%02x", p[i]);
    }
#endif
    printf("\\n");
}
"""

# Recipes call only the compiler and the built program (and make's own $(RM) in `clean`): no other shell
# tools, so the same file works with make on Windows, macOS and Linux.
_MAKEFILE = """# Generated by npukit. `make` builds and runs the known-answer test.
CC ?= cc
CFLAGS ?= -std=c99 -O2 -Wall -Wextra -Werror -pedantic
KERNELS = $(wildcard nk_*.c)
HEADERS = model.h npukit_kernels.h

all: kat
\t./kat

kat: main.c model.c $(KERNELS) $(HEADERS)
\t$(CC) $(CFLAGS) -o kat main.c model.c $(KERNELS) $(LDFLAGS)

run_file: run_file.c model.c $(KERNELS) $(HEADERS)
\t$(CC) $(CFLAGS) -o run_file run_file.c model.c $(KERNELS) $(LDFLAGS)

# per-layer dumps for `npukit compare` (drop -DNPUKIT_DUMP_FULL for CRCs only, as firmware would print)
dump_run: dump_run.c model.c npukit_dump.c $(KERNELS) $(HEADERS)
\t$(CC) $(CFLAGS) -DNPUKIT_DUMP -DNPUKIT_DUMP_FULL -o dump_run dump_run.c model.c npukit_dump.c $(KERNELS) $(LDFLAGS)

clean:
\t$(RM) kat run_file dump_run kat.exe run_file.exe dump_run.exe

.PHONY: all clean
"""

_CMAKE = """# Generated by npukit.
cmake_minimum_required(VERSION 3.10)
project(npukit_model C)
set(CMAKE_C_STANDARD 99)
set(CMAKE_C_STANDARD_REQUIRED ON)
file(GLOB NPUKIT_KERNELS ${CMAKE_CURRENT_SOURCE_DIR}/nk_*.c)
add_library(npukit_model STATIC model.c ${NPUKIT_KERNELS})
if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(npukit_model PRIVATE -Wall -Wextra -Werror -pedantic)
endif()
add_executable(kat main.c)
target_link_libraries(kat npukit_model)
add_executable(run_file run_file.c)
target_link_libraries(run_file npukit_model)
enable_testing()
add_test(NAME kat COMMAND kat)
"""

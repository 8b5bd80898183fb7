"""`npukit codegen`: model.bin -> a self-contained C99 project with a known-answer test.

The project holds the model (`model.c`/`model.h`: const weights at their packed bit widths, one static
arena of exactly the planned size, one entry point), the stateless kernel library (`nk_*.c`, copied from
`runtime/`), `main.c` (the known-answer test), `run_file.c` (runs a file of inputs, for differential
tests), a `Makefile` whose recipes call only the compiler, and a `CMakeLists.txt`. Each op writes its own
call (`OpDef.to_c`), with every parameter computed here, offline.
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

    `kat_input` is one integer input sample (or a batch: its first sample is used); the expected output
    comes from the reference engine. Without it, the input is all zeros.

    Regenerating into a folder replaces the files an earlier generation wrote (listed in its `.npukit-generated`)
    and removes those this one no longer writes; a file of the same name that npukit did not write is an
    error unless `force`, and other files are left alone. Nothing is written when anything fails.
    """
    from .. import engine, modelbin
    from ..ops import get_op

    packed = model if isinstance(model, modelbin.PackedModel) else modelbin.read(model)
    g = packed.graph
    if len(g.inputs) != 1 or len(g.outputs) != 1:
        raise NpukitError("codegen supports models with one input and one output")
    inp, out = g.input_spec(), g.output_spec()
    if any(g.tensors[t].bits > 8 for n in g.nodes for t in n.inputs):
        raise NpukitError("codegen supports 8-bit activations")
    b = CBuilder(g, packed.offsets)
    body = []
    body.append(_dump_call(g, b, g.inputs[0]))
    for node in g.nodes:
        body.append(f"    /* {node.name}: {node.op} */")
        body += [f"    {line}" for line in get_op(node.op).to_c(node, b)]
        body += [_dump_call(g, b, t) for t in node.outputs]

    n_in, n_out = math.prod(inp.shape), math.prod(out.shape)
    out_t = _ctype(out.bits)
    if kat_input is None:
        kat_input = np.zeros((1, *inp.shape), inp.dtype)
    kat_input = np.asarray(kat_input)
    if kat_input.size == 0 or kat_input.size % n_in:
        raise NpukitError(f"the known-answer input has shape {kat_input.shape}; the model takes samples of shape "
                          f"{tuple(inp.shape)} (one sample, or a batch of them)")
    kat_input = kat_input.reshape(-1, *inp.shape)[:1]
    expected = engine.run(g, kat_input)[0]  # checks the integers' type and range too, before anything is written
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", prefix) or prefix.startswith("nk_"):
        raise NpukitError(f"prefix {prefix!r}: use a lowercase C identifier (letters, digits, _), not starting with nk_")
    files = {
        "model.h": _model_h(g, n_in, n_out, out_t, packed.arena_bytes),
        "model.c": _model_c(g, b, body, n_in, n_out, out_t, packed.arena_bytes),
        "main.c": _main_c(kat_input.ravel(), expected.ravel(), out_t),
        "run_file.c": _run_file_c(out_t),
        "dump_run.c": _DUMP_RUN_C,
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
    text = re.sub(r"\bnpukit_(run_in|run|output_t|arena|quantize|dequantize)\b", rf"{prefix}_\1", text)
    return re.sub(r"\bNPUKIT_(?!KERNELS_H)", f"{prefix.upper()}_", text)


def _model_h(g: Graph, n_in: int, n_out: int, out_t: str, arena: int) -> str:
    inp, out = g.input_spec(), g.output_spec()
    return f"""/* Generated by npukit from a {g.target['name']} model. Do not edit. */
#ifndef NPUKIT_MODEL_H
#define NPUKIT_MODEL_H

#include <stdint.h>

/* Input: int8, shape {tuple(inp.shape)}, channel first and C-contiguous (C x H x W; 1-d data C x L),
 * real = q * 2^-{inp.exp}. Output: {out_t}, shape {tuple(out.shape)}, the same layout, real = q * 2^-{out.exp}. */
#define NPUKIT_INPUT_SIZE {n_in}
#define NPUKIT_OUTPUT_SIZE {n_out}
#define NPUKIT_INPUT_EXP {inp.exp}
#define NPUKIT_OUTPUT_EXP {out.exp}
#define NPUKIT_ARENA_BYTES {arena}
typedef {out_t} npukit_output_t;

/* Placement: define these (e.g. to __attribute__((section(".sram2")))) before compiling model.c to put the
 * arena or the weights in a memory section of your linker script. */
#ifndef NPUKIT_ARENA_SECTION
#define NPUKIT_ARENA_SECTION
#endif
#ifndef NPUKIT_WEIGHTS_SECTION
#define NPUKIT_WEIGHTS_SECTION
#endif

/* Runs one sample in the one static arena of NPUKIT_ARENA_BYTES (not reentrant). Compiled out with
 * -DNPUKIT_ARENA_EXTERNAL, when the caller provides the arena to npukit_run_in (shared with other code,
 * placed where the firmware wants it). Return 0, -1 when a pointer is NULL, -2 when the arena is not
 * 8-byte aligned. */
#ifndef NPUKIT_ARENA_EXTERNAL
int npukit_run(const int8_t *input, npukit_output_t *output);
#endif
int npukit_run_in(void *arena_bytes, const int8_t *input, npukit_output_t *output);

/* For float callers (the model itself computes no floating point): the input quantization of the arithmetic
 * contract (x * 2^NPUKIT_INPUT_EXP rounded {g.rounding.replace("_", " ")}, saturated to int8), exact in double. */
static inline int8_t npukit_quantize(double x)
{{
    const double v = x * {2.0 ** inp.exp!r};
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

/* Output integers to real values: q * 2^-NPUKIT_OUTPUT_EXP. */
static inline double npukit_dequantize(npukit_output_t q)
{{
    return (double)q * {2.0 ** -out.exp!r};
}}

#endif
"""


def _dump_call(g: Graph, b: CBuilder, tensor: str) -> str:
    spec = g.tensors[tensor]
    size = math.prod(spec.shape) * spec.dtype.itemsize
    ctype = {1: "int8_t", 2: "int16_t", 4: "int32_t", 8: "int64_t"}[spec.dtype.itemsize]
    return f'    NPUKIT_DUMP_TENSOR("{tensor}", {b.ptr(tensor, ctype)}, {size});'


def _model_c(g: Graph, b: CBuilder, body: list[str], n_in: int, n_out: int, out_t: str, arena: int) -> str:
    consts = "\n".join(b.consts)
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

int npukit_run_in(void *arena_bytes, const int8_t *input, npukit_output_t *output)
{{
    int8_t *const arena = (int8_t *)arena_bytes;
    if (arena == NULL || input == NULL || output == NULL) {{
        return -1;
    }}
    if (((uintptr_t)arena_bytes & 7u) != 0) {{
        return -2;
    }}
    memcpy({b.ptr(g.inputs[0])}, input, {n_in});
{chr(10).join(body)}
    memcpy(output, {b.ptr(g.outputs[0], out_t)}, {n_out} * sizeof(npukit_output_t));
    return 0;
}}

#ifndef NPUKIT_ARENA_EXTERNAL
/* The one arena, exactly the planned size; the union aligns it for every tensor type. */
static union {{
    int64_t align;
    int8_t bytes[{max(arena, 1)}];
}} npukit_arena NPUKIT_ARENA_SECTION;

int npukit_run(const int8_t *input, npukit_output_t *output)
{{
    return npukit_run_in(npukit_arena.bytes, input, output);
}}
#endif
"""


def _main_c(x: np.ndarray, y: np.ndarray, out_t: str) -> str:
    return f"""/* Known-answer test: the model's output on a sample input must equal the reference engine's. */
#include <stdio.h>

#include "model.h"

static const int8_t kat_input[NPUKIT_INPUT_SIZE] = {{{_list(x)}}};
static const npukit_output_t kat_expected[NPUKIT_OUTPUT_SIZE] = {{{_list(y)}}};

int main(void)
{{
    npukit_output_t got[NPUKIT_OUTPUT_SIZE];
    int i, bad = 0;
    npukit_run(kat_input, got);
    for (i = 0; i < NPUKIT_OUTPUT_SIZE; i++) {{
        if (got[i] != kat_expected[i]) {{
            if (bad < 8) {{
                printf("mismatch at %d: expected %ld, got %ld\\n", i, (long)kat_expected[i], (long)got[i]);
            }}
            bad++;
        }}
    }}
    if (bad) {{
        printf("KAT FAIL: %d of %d outputs differ\\n", bad, NPUKIT_OUTPUT_SIZE);
        return 1;
    }}
    printf("KAT PASS: %d outputs equal the reference engine\\n", NPUKIT_OUTPUT_SIZE);
    return 0;
}}
"""


def _run_file_c(out_t: str) -> str:
    return """/* run_file IN OUT: runs every sample of a raw int8 input file, writes the raw outputs. */
#include <stdio.h>

#include "model.h"

int main(int argc, char **argv)
{
    int8_t x[NPUKIT_INPUT_SIZE];
    npukit_output_t y[NPUKIT_OUTPUT_SIZE];
    FILE *in, *out;
    long n = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: run_file INPUT.raw OUTPUT.raw\\n");
        return 2;
    }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (!in || !out) {
        fprintf(stderr, "run_file: cannot open the files\\n");
        return 2;
    }
    while (fread(x, 1, sizeof x, in) == sizeof x) {
        npukit_run(x, y);
        if (fwrite(y, sizeof y[0], NPUKIT_OUTPUT_SIZE, out) != NPUKIT_OUTPUT_SIZE) {
            return 2;
        }
        n++;
    }
    fclose(in);
    fclose(out);
    fprintf(stderr, "run_file: %ld samples\\n", n);
    return 0;
}
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

_DUMP_RUN_C = """/* dump_run IN: runs every sample of a raw int8 input file with per-layer dumps (build with -DNPUKIT_DUMP). */
#include <stdio.h>

#include "model.h"

extern long npukit_dump_sample;

int main(int argc, char **argv)
{
    int8_t x[NPUKIT_INPUT_SIZE];
    npukit_output_t y[NPUKIT_OUTPUT_SIZE];
    FILE *in;
    if (argc != 2) {
        fprintf(stderr, "usage: dump_run INPUT.raw\\n");
        return 2;
    }
    in = fopen(argv[1], "rb");
    if (!in) {
        fprintf(stderr, "dump_run: cannot open %s\\n", argv[1]);
        return 2;
    }
    while (fread(x, 1, sizeof x, in) == sizeof x) {
        if (npukit_run(x, y) != 0) {
            return 1;
        }
        npukit_dump_sample++;
    }
    fclose(in);
    return 0;
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

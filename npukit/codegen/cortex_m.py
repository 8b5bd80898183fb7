"""Cortex-M: build a generated C project for QEMU's `mps2-an386` board (Cortex-M4) and run its KAT.

`write_cortex_m(project)` adds `cortex-m/` to a project written by `codegen.generate`: a bare-metal
startup (vector table, a Reset_Handler that copies .data, zeroes .bss, calls main and exits QEMU through
semihosting with main's status), a linker script for the board's memory map and a Makefile. printf goes
to the host through semihosting (newlib-nano with librdimon), so the same `main.c` runs on the desktop
and on the emulated board.

The AN386 memory map as QEMU models it (`info mtree`): ZBT SSRAM1, 4 MiB at 0x00000000 (code, holds the
vector table), ZBT SSRAM2/3, 4 MiB at 0x20000000 (data, bss, heap, stack), PSRAM 16 MiB at 0x21000000
(unused). QEMU loads the ELF by physical (load) address, so .data starts in the code region and the
startup copies it, as on a real part with flash.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ..errors import NpukitError

CC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"
SIZE = "arm-none-eabi-size"
NM = "arm-none-eabi-nm"
INSTALL_HINT = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"

DIR = "cortex-m"
ELF = "kat.elf"
LINKER_SCRIPT = "mps2-an386.ld"
STARTUP = "startup.c"

# One source of truth for the Makefile and for `build`.
CFLAGS = ["-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic",
          "-ffunction-sections", "-fdata-sections", "-I.."]
LDFLAGS = ["-nostartfiles", f"-T{LINKER_SCRIPT}", "-Wl,--gc-sections", "--specs=nano.specs",
           "--specs=rdimon.specs"]
QEMU_ARGS = ["-M", "mps2-an386", "-nographic", "-semihosting-config", "enable=on,target=native"]

FLASH_ORIGIN, FLASH_LENGTH = 0x00000000, 4 << 20  # ZBT SSRAM1
RAM_ORIGIN, RAM_LENGTH = 0x20000000, 4 << 20  # ZBT SSRAM2/3
STACK_RESERVE = 16 << 10  # the link fails when less than this is left between the bss and the top

# Static const parameter arrays of model.c: CBuilder.weights names them `n<k>_<node>_<weight|bias>`.
WEIGHT_SYMBOL = re.compile(r"^n\d+_\w*_(weight|bias)$")
ARENA_SYMBOL = "npukit_arena"


def arm_tools_available() -> str | None:
    """None when the cross compiler (with newlib) and QEMU are installed, else what is missing and how to fix it."""
    missing = [tool for tool in (CC, QEMU, SIZE, NM) if shutil.which(tool) is None]
    if CC not in missing and not _has_newlib():
        missing.append("newlib for arm-none-eabi (rdimon.specs)")
    if not missing:
        return None
    return f"missing {', '.join(missing)}; install with: {INSTALL_HINT} (or run scripts/install-arm-tools.sh)"


def _has_newlib() -> bool:
    try:
        found = subprocess.run([CC, "-print-file-name=rdimon.specs"], capture_output=True, text=True,
                               timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return Path(found).is_file()


def write_cortex_m(project_dir: str | Path) -> Path:
    """Write `cortex-m/` (startup, linker script, Makefile) into a generated project; returns the folder."""
    out = Path(project_dir) / DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / STARTUP).write_text(_STARTUP_C)
    (out / LINKER_SCRIPT).write_text(_LINKER_SCRIPT)
    (out / "Makefile").write_text(_makefile())
    return out


def _sources(project: Path) -> list[str]:
    """The sources as the compiler sees them from `cortex-m/`, in the Makefile's order."""
    for name in ("main.c", "model.c", "model.h", "npukit_kernels.h"):
        if not (project / name).is_file():
            raise NpukitError(f"{project} is not a generated project: {name} is missing (run npukit codegen)")
    kernels = sorted(p.name for p in project.glob("nk_*.c"))
    return [STARTUP, "../main.c", "../model.c", *(f"../{k}" for k in kernels)]


def build(project_dir: str | Path) -> Path:
    """Compile the project's KAT for the Cortex-M4 (the cortex-m/Makefile's flags, without make).

    Writes `cortex-m/` first when the project has none. Returns the ELF (not stripped: `size_report`
    reads its symbol table).
    """
    project = Path(project_dir)
    if msg := arm_tools_available():
        raise NpukitError(f"cannot build for Cortex-M: {msg}")
    sources = _sources(project)
    folder = project / DIR
    if not (folder / STARTUP).is_file() or not (folder / LINKER_SCRIPT).is_file():
        write_cortex_m(project)
    cmd = [CC, *CFLAGS, "-o", ELF, *sources, *LDFLAGS]
    try:
        r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise NpukitError(f"{CC} did not finish in 300 s building {folder / ELF}") from None
    if r.returncode != 0:
        raise NpukitError(f"{CC} failed building {folder / ELF} (status {r.returncode}):\n"
                          f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}".rstrip())
    return (folder / ELF).resolve()


def run_qemu(elf: str | Path, timeout: float = 60) -> tuple[bool, str]:
    """Run the KAT on an emulated mps2-an386. True when it printed "KAT PASS" and exited with status 0.

    The text is QEMU's output (the program's printf, through semihosting) and a last line with the exit
    status, or saying that the run was stopped after `timeout` seconds.
    """
    if shutil.which(QEMU) is None:
        raise NpukitError(f"cannot run the Cortex-M KAT: {QEMU} is missing; install with: {INSTALL_HINT}")
    cmd = [QEMU, *QEMU_ARGS, "-kernel", str(elf)]
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        text = _text(e.stdout) + _text(e.stderr)
        return False, f"{text}[stopped: no exit within {timeout:g} s]\n"
    text = _text(r.stdout) + _text(r.stderr)
    return r.returncode == 0 and "KAT PASS" in text, f"{text}[qemu exit status {r.returncode}]\n"


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode("utf-8", "replace")


RUNTIME_PARAMS = re.compile(r"n\d+_\w+_p$")  # the offline kernel parameter structs of model.c


def size_report(elf: str | Path) -> dict[str, int]:
    """Memory use of a built KAT in bytes, from the section headers and the symbol table.

    flash_bytes: everything loaded into the code region (vectors, code, read-only data, the initial values
    of .data); weight_bytes: the model's const parameter arrays (weights at their packed widths, int32
    biases), as model.bin stores them, except the 8-bit 1-d convs whose weights model.c pre-arranges as int16
    pairs for the DSP path (`codegen.dsp1d_weights`: about twice the bytes); code_bytes = flash_bytes - weight_bytes (kernels, model.c, kernel
    parameter structs, the KAT vectors, startup, newlib-nano's printf and semihosting). ram_bytes =
    data_bytes + bss_bytes (static RAM; the stack and heap are not counted); arena_bytes: the activation
    arena, part of bss; ram_overhead_bytes = ram_bytes - arena_bytes, of which runtime_static_bytes is the
    runtime's own (kernels, model.c: none today, every parameter is const) and harness_static_bytes the
    rest (newlib-nano's printf and semihosting state for the KAT's output, not part of an inference).
    """
    elf = Path(elf)
    sections = _sections(elf)
    in_flash = [(n, s) for n, (s, a) in sections.items() if FLASH_ORIGIN <= a < FLASH_ORIGIN + FLASH_LENGTH]
    in_ram = {n: s for n, (s, a) in sections.items() if RAM_ORIGIN <= a < RAM_ORIGIN + RAM_LENGTH}
    data = sum(s for n, s in in_ram.items() if not n.startswith(".bss"))
    bss = sum(s for n, s in in_ram.items() if n.startswith(".bss"))
    flash = sum(s for _, s in in_flash) + data  # .data's initial values are loaded into flash
    symbols = _symbols(elf)
    weights = sum(size for name, size in symbols.items() if WEIGHT_SYMBOL.match(name))
    if ARENA_SYMBOL not in symbols:
        raise NpukitError(f"{elf}: no symbol {ARENA_SYMBOL} (not a npukit KAT, or stripped)")
    arena = symbols[ARENA_SYMBOL]
    ram = data + bss
    runtime_static = sum(size for name, size in _symbols(elf, "dbgs").items()
                         if name != ARENA_SYMBOL and (name.startswith(("nk_", "npukit_")) or RUNTIME_PARAMS.match(name)))
    # The runtime proper: the kernels and the model's entry point with its parameter structs (what a
    # firmware links), as opposed to the KAT harness (printf, semihosting, startup).
    runtime = sum(size for name, size in _symbols(elf, "rdbgst").items()
                  if name.startswith("nk_") or name == "npukit_run" or RUNTIME_PARAMS.match(name))
    return {"flash_bytes": flash, "code_bytes": flash - weights, "weight_bytes": weights, "ram_bytes": ram,
            "data_bytes": data, "bss_bytes": bss, "arena_bytes": arena, "ram_overhead_bytes": ram - arena,
            "runtime_static_bytes": runtime_static, "harness_static_bytes": ram - arena - runtime_static,
            "runtime_code_bytes": runtime}


def _tool(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise NpukitError(f"cannot run {cmd[0]}: {e.strerror or e}; install with: {INSTALL_HINT}") from None
    if r.returncode != 0:
        raise NpukitError(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}".rstrip())
    return r.stdout


def _sections(elf: Path) -> dict[str, tuple[int, int]]:
    """Allocated sections of `arm-none-eabi-size -A`: name -> (size, address)."""
    out: dict[str, tuple[int, int]] = {}
    for line in _tool([SIZE, "-A", "-d", str(elf)]).splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith(".") and parts[1].isdigit() and parts[2].isdigit():
            name, size, addr = parts[0], int(parts[1]), int(parts[2])
            if addr or name in (".text", ".isr_vector"):  # non-allocated sections (debug, comments) have address 0
                out[name] = (size, addr)
    return out


def _symbols(elf: Path, kinds: str = "rdbgs") -> dict[str, int]:
    """Symbols with a size (data by default, "t" for code): name -> bytes, static ones too."""
    out: dict[str, int] = {}
    for line in _tool([NM, "--size-sort", "-S", str(elf)]).splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2].lower() in kinds:
            out[parts[3]] = int(parts[1], 16)
    return out


def _makefile() -> str:
    return f"""# Generated by npukit. The known-answer test on QEMU's mps2-an386 (Cortex-M4).
# `make` builds kat.elf; `make qemu` runs it (printf through semihosting; the exit status is main's);
# `make size` shows the sections. Recipes call only the toolchain and QEMU.
CC = {CC}
SIZE = {SIZE}
QEMU = {QEMU}
CFLAGS = {' '.join(CFLAGS)}
LDFLAGS = {' '.join(LDFLAGS)}
SRCS = {STARTUP} ../main.c ../model.c $(sort $(wildcard ../nk_*.c))
HEADERS = ../model.h ../npukit_kernels.h

all: {ELF}

{ELF}: $(SRCS) $(HEADERS) {LINKER_SCRIPT}
\t$(CC) $(CFLAGS) -o {ELF} $(SRCS) $(LDFLAGS)

qemu: {ELF}
\t$(QEMU) {' '.join(QEMU_ARGS)} -kernel {ELF}

size: {ELF}
\t$(SIZE) -A {ELF}

clean:
\t$(RM) {ELF}

.PHONY: all qemu size clean
"""


_LINKER_SCRIPT = f"""/* Generated by npukit. QEMU mps2-an386 (Cortex-M4): code in ZBT SSRAM1, data in ZBT SSRAM2/3. */
MEMORY
{{
    FLASH (rx)  : ORIGIN = 0x{FLASH_ORIGIN:08X}, LENGTH = {FLASH_LENGTH >> 20}M
    RAM   (rwx) : ORIGIN = 0x{RAM_ORIGIN:08X}, LENGTH = {RAM_LENGTH >> 20}M
}}

ENTRY(Reset_Handler)

SECTIONS
{{
    .isr_vector :
    {{
        KEEP(*(.isr_vector))
    }} > FLASH

    .text :
    {{
        *(.text .text.*)
        *(.glue_7 .glue_7t .vfp11_veneer .v4_bx)
    }} > FLASH

    .rodata :
    {{
        *(.rodata .rodata.*)
        . = ALIGN(4);
    }} > FLASH

    .ARM.extab : {{ *(.ARM.extab* .gnu.linkonce.armextab.*) }} > FLASH
    .ARM.exidx :
    {{
        __exidx_start = .;
        *(.ARM.exidx* .gnu.linkonce.armexidx.*)
        __exidx_end = .;
    }} > FLASH

    .data : ALIGN(4)
    {{
        __data_start__ = .;
        *(.data .data.*)
        . = ALIGN(4);
        __data_end__ = .;
    }} > RAM AT > FLASH
    __data_load__ = LOADADDR(.data);

    .bss (NOLOAD) : ALIGN(4)
    {{
        __bss_start__ = .;
        *(.bss .bss.* COMMON)
        . = ALIGN(4);
        __bss_end__ = .;
    }} > RAM

    /* The heap (newlib's sbrk) grows up from `end`, the stack down from the top of RAM. */
    . = ALIGN(8);
    end = .;
    _end = .;
    __end__ = .;
    __stack_top = ORIGIN(RAM) + LENGTH(RAM);
    ASSERT(__stack_top - end >= {STACK_RESERVE}, "npukit: less than {STACK_RESERVE >> 10} KiB left for the stack and heap")
}}
"""


_STARTUP_C = """/* Generated by npukit. Bare-metal startup for QEMU's mps2-an386 (Cortex-M4).
 *
 * Reset_Handler copies .data from its load address, zeroes .bss, opens the semihosting console (newlib's
 * rdimon), runs main and leaves QEMU through semihosting with main's return value as the exit status.
 * A fault prints a line and exits with status 3, so a broken build fails fast instead of hanging.
 */
#include <stdint.h>
#include <stdio.h>

#define SYS_WRITE0 0x04
#define SYS_EXIT 0x18
#define SYS_EXIT_EXTENDED 0x20
#define ADP_Stopped_ApplicationExit 0x20026
#define ADP_Stopped_RunTimeErrorUnknown 0x20023

extern uint32_t __data_load__[], __data_start__[], __data_end__[], __bss_start__[], __bss_end__[];
extern uint32_t __stack_top[];

int main(void);
void initialise_monitor_handles(void);
void Reset_Handler(void);
void Fault_Handler(void);

typedef union {
    uint32_t *stack;
    void (*handler)(void);
} nk_vector;

__attribute__((section(".isr_vector"), used))
const nk_vector npukit_vectors[16] = {
    {.stack = __stack_top},
    {.handler = Reset_Handler},
    {.handler = Fault_Handler},  /* NMI */
    {.handler = Fault_Handler},  /* HardFault */
    {.handler = Fault_Handler},  /* MemManage */
    {.handler = Fault_Handler},  /* BusFault */
    {.handler = Fault_Handler},  /* UsageFault */
    {0}, {0}, {0}, {0},
    {.handler = Fault_Handler},  /* SVCall */
    {.handler = Fault_Handler},  /* DebugMonitor */
    {0},
    {.handler = Fault_Handler},  /* PendSV */
    {.handler = Fault_Handler},  /* SysTick */
};

static int semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static void semihost_exit(int status)
{
    /* SYS_EXIT_EXTENDED carries the status (QEMU exits with it); a host without it returns here. */
    const uint32_t block[2] = {ADP_Stopped_ApplicationExit, (uint32_t)status};
    semihost(SYS_EXIT_EXTENDED, block);
    /* SYS_EXIT on A32/T32 carries only the reason: application exit (status 0) or an error (1). */
    semihost(SYS_EXIT, (const void *)(uintptr_t)(status == 0 ? ADP_Stopped_ApplicationExit
                                                             : ADP_Stopped_RunTimeErrorUnknown));
    for (;;) {
    }
}

void Fault_Handler(void)
{
    semihost(SYS_WRITE0, "npukit: unexpected exception (fault) on the Cortex-M\\n");
    semihost_exit(3);
}

void Reset_Handler(void)
{
    const uint32_t *src = __data_load__;
    uint32_t *dst;
    int status;
    for (dst = __data_start__; dst < __data_end__;) {
        *dst++ = *src++;
    }
    for (dst = __bss_start__; dst < __bss_end__;) {
        *dst++ = 0;
    }
    initialise_monitor_handles();
    status = main();
    fflush(NULL);
    semihost_exit(status);
}
"""


def build_runtime_kat(model_bin: str | Path, out_dir: str | Path, kat_input=None, *, expected=None) -> Path:
    """The C runtime's known-answer test for the Cortex-M4: the model.bin bytes as a const array in flash,
    loaded by `npukit_load` and run by `npukit_invoke_io` in a static arena on one input sample (a list of
    them, one per input, for a model with several), every output compared with the reference engine's (or
    `expected`, a list for several outputs). Returns the ELF, for `run_qemu`."""
    import numpy as np

    from .. import engine, modelbin
    from . import _kat_inputs
    from .host import KERNELS, RUNTIME

    if msg := arm_tools_available():
        raise NpukitError(f"cannot build for Cortex-M: {msg}")
    data = Path(model_bin).read_bytes()
    packed = modelbin.read(data)
    graph = packed.graph
    xs = _kat_inputs(graph, kat_input)
    wants = engine.run(graph, *xs) if expected is None else \
        [np.asarray(e) for e in (expected if isinstance(expected, list | tuple) else [expected])]
    c_type = {1: "int8_t", 2: "int16_t", 4: "int32_t", 8: "int64_t"}
    arrays = "\n".join(
        [f"static const int8_t kat_input{i}[{x.size}] = {{{', '.join(map(str, x.ravel()))}}};" for i, x in enumerate(xs)]
        + [f"static const {c_type[graph.output_spec(i).dtype.itemsize]} kat_expected{i}[{y.size}] = "
           f"{{{', '.join(map(str, np.asarray(y).ravel()))}}};" for i, y in enumerate(wants)]
        + [f"static {c_type[graph.output_spec(i).dtype.itemsize]} got{i}[{np.asarray(y).size}];"
           for i, y in enumerate(wants)])
    checks = "".join(f"""    for (i = 0; i < {np.asarray(y).size}; i++) {{
        if (got{k}[i] != kat_expected{k}[i]) {{
            if (bad < 8) {{
                printf("output {k}: mismatch at %d: expected %ld, got %ld\\n", i, (long)kat_expected{k}[i],
                       (long)got{k}[i]);
            }}
            bad++;
        }}
    }}
""" for k, y in enumerate(wants))
    folder = write_cortex_m(out_dir)  # startup and linker script, in out_dir/cortex-m
    (folder / "runtime_kat.c").write_text(_RUNTIME_KAT.format(
        n_bin=len(data), bin=", ".join(map(str, data)), n_arena=max(packed.arena_bytes, 1), arrays=arrays,
        ins=", ".join(f"kat_input{i}" for i in range(len(xs))), outs=", ".join(f"got{i}" for i in range(len(wants))),
        n_ins=len(xs), n_outs=len(wants), checks=checks, n_out=sum(np.asarray(y).size for y in wants)))
    sources = [STARTUP, "runtime_kat.c", str(RUNTIME / "npukit_runtime.c"),
               *map(str, sorted(KERNELS.glob("nk_*.c")))]
    cmd = [CC, *CFLAGS, f"-I{RUNTIME}", f"-I{KERNELS}", "-o", "runtime_kat.elf",
           *sources, *LDFLAGS]
    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise NpukitError(f"{CC} failed building the runtime KAT (status {r.returncode}):\n"
                          f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}".rstrip())
    return (folder / "runtime_kat.elf").resolve()


_RUNTIME_KAT = """/* Generated by npukit: the C runtime's known-answer test (model.bin in flash, npukit_load, npukit_invoke_io). */
#include <stdio.h>

#include "npukit_runtime.h"

static const union {{
    uint32_t align; /* npukit_load wants the file 4-byte aligned: biases are read in place */
    uint8_t bytes[{n_bin}];
}} model_bin = {{.bytes = {{{bin}}}}};
{arrays}
static npukit_model_t model;
static union {{
    int64_t align;
    uint8_t bytes[{n_arena}];
}} arena;

int main(void)
{{
    const void *ins[{n_ins}] = {{{ins}}};
    void *outs[{n_outs}] = {{{outs}}};
    int rc, i, bad = 0;
    rc = npukit_load(model_bin.bytes, sizeof model_bin.bytes, &model);
    if (rc == NPUKIT_OK && npukit_arena_bytes(&model) > sizeof arena.bytes) {{
        rc = NPUKIT_E_ARENA;
    }}
    if (rc == NPUKIT_OK) {{
        rc = npukit_invoke_io(&model, arena.bytes, sizeof arena.bytes, ins, outs);
    }}
    if (rc != NPUKIT_OK) {{
        printf("KAT FAIL: %s\\n", npukit_strerror(rc));
        return 1;
    }}
{checks}    if (bad) {{
        printf("KAT FAIL: %d of %d outputs differ\\n", bad, {n_out});
        return 1;
    }}
    printf("KAT PASS: the runtime's %d outputs equal the reference engine\\n", {n_out});
    return 0;
}}
"""

"""Code size of the model.bin interpreter (runtime/) on the Cortex-M4, beside its goal (<= 8 KiB at -Os).

What is measured: a firmware that calls `npukit_load` and `npukit_invoke_io` (the interpreter's whole
device-side API; the trace hooks and info getters are dropped by the link when unused), built with
arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os -ffunction-sections -fdata-sections and linked with
--gc-sections. Each source is compiled to its own object and the linker map gives, per object, the bytes
of the .text and .rodata input sections it kept: `runtime/` (npukit_runtime.c) is the figure
the goal is about; the kernels (npukit/codegen/runtime/nk_*.c, shared with generated C) are
printed beside it. The largest functions of runtime/ follow (`arm-none-eabi-nm --size-sort`). Then the
same for a build that runs only the demo model's ops (`-DNPUKIT_OPS=...`, `codegen.host.runtime_ops_define`),
which leaves the code of the other ops out. Nothing is asserted. Needs the arm tools (`scripts/install-arm-tools.sh`).

    .venv/bin/python benchmarks/runtime_size.py [--opt -Os] [-D NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from npukit.codegen import cortex_m
from npukit.codegen.host import KERNELS, RUNTIME, runtime_ops_define

GOAL = 8 << 10  # issue 12: runtime/ code at -Os on the Cortex-M4
CFLAGS = ["-mcpu=cortex-m4", "-mthumb", "-std=c99", "-ffunction-sections", "-fdata-sections"]

FIRMWARE = """/* The interpreter as a firmware links it: load a model.bin, run one sample. */
#include "npukit_runtime.h"

const unsigned char *volatile model_bin;
volatile unsigned model_len;
static npukit_model_t model;
static int arena[1024];
static signed char in[64], out[64];

int main(void)
{
    const void *ins[1] = {in};
    void *outs[1] = {out};
    int rc = npukit_load(model_bin, model_len, &model);
    if (rc == NPUKIT_OK) {
        rc = npukit_invoke_io(&model, arena, sizeof arena, ins, outs);
    }
    return rc;
}
"""

# An input section line of GNU ld's map: " .text.name  0xADDR  0xSIZE  object" (long names wrap a line).
MAP_LINE = re.compile(r"^ (\.(?:text|rodata)\S*)\s+0x([0-9a-f]+)[ \t]+0x([0-9a-f]+)[ \t]+(\S+)$", re.M)


def build(folder: Path, opt: str, defines: list[str]) -> tuple[Path, dict[str, int]]:
    """Links the firmware; returns the ELF and the kept .text + .rodata bytes per source file."""
    (folder / "firmware.c").write_text(FIRMWARE)
    sources = [folder / "firmware.c", RUNTIME / "npukit_runtime.c",
               *sorted(KERNELS.glob("nk_*.c"))]
    flags = [*CFLAGS, opt, *(f"-D{d}" for d in defines), f"-I{RUNTIME}", f"-I{KERNELS}"]
    objects = []
    for src in sources:
        obj = folder / f"{src.stem}.o"
        subprocess.run([cortex_m.CC, *flags, "-c", str(src), "-o", str(obj)], check=True)
        objects.append(obj)
    elf = folder / "firmware.elf"
    subprocess.run([cortex_m.CC, *flags, "-o", str(elf), *map(str, objects), "-Wl,--gc-sections",
                    f"-Wl,-Map={folder / 'firmware.map'}", "--specs=nano.specs", "--specs=nosys.specs"], check=True)
    text = (folder / "firmware.map").read_text()
    text = text[text.index("Linker script and memory map"):]
    entries = sorted((int(addr, 16), int(size, 16), Path(obj).name) for _, addr, size, obj in MAP_LINE.findall(text))
    kept: dict[str, int] = {}
    for i, (addr, size, name) in enumerate(entries):
        # merged string sections list the merged size at each input: count only up to the next input's start
        after = next((a for a, _, _ in entries[i + 1:] if a > addr), addr + size)
        if name.endswith(".o") and not name.startswith("crt"):
            kept[name[:-2] + ".c"] = kept.get(name[:-2] + ".c", 0) + min(size, after - addr)
    return elf, kept


def largest(elf: Path, names: set[str], n: int = 12) -> list[tuple[str, int]]:
    """The n largest symbols of the ELF among `names`."""
    out = subprocess.run([cortex_m.NM, "-S", "--size-sort", "--defined-only", str(elf)], check=True,
                         capture_output=True, text=True).stdout
    rows = [(p[3], int(p[1], 16)) for p in (line.split() for line in out.splitlines()) if len(p) == 4 and p[3] in names]
    return rows[::-1][:n]


def symbols_of(obj: Path) -> set[str]:
    out = subprocess.run([cortex_m.NM, "--defined-only", str(obj)], check=True, capture_output=True, text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def report(title: str, opt: str, defines: list[str]) -> None:
    folder = Path(tempfile.mkdtemp())
    elf, kept = build(folder, opt, defines)
    runtime = {k: v for k, v in kept.items() if k.startswith("npukit_")}
    kernels = sum(v for k, v in kept.items() if k.startswith("nk_"))
    total = sum(runtime.values())
    verdict = "met" if total <= GOAL else f"not met, {total - GOAL:,} B over"
    print(f"\n{title}")
    print(f"  runtime/ (npukit_runtime.c)  {total:7,}   (goal <= {GOAL:,} B: {verdict})")
    print(f"  kernels (nk_*.c, shared with generated C) {kernels:,}; with them {total + kernels:,}")
    names = set().union(*(symbols_of(folder / f"{Path(n).stem}.o") for n in runtime))
    print("  largest functions and tables of runtime/: "
          + ", ".join(f"{name} {size:,}" for name, size in largest(elf, names)))


def demo_ops() -> list[str]:
    import torch

    import npukit
    from npukit.models import mnist1d_cnn

    torch.manual_seed(0)
    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(256, 1, 40)))
    return sorted({n.op for n in graph.nodes})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opt", default="-Os")
    ap.add_argument("-D", dest="defines", action="append", default=[], help="a define for every file (NAME=VALUE)")
    args = ap.parse_args()
    if msg := cortex_m.arm_tools_available():
        raise SystemExit(msg)
    print(f"model.bin interpreter on the Cortex-M4 ({cortex_m.CC} {args.opt}, --gc-sections; a firmware calling "
          f"npukit_load and npukit_invoke_io): .text + .rodata kept by the link, bytes")
    report("every op (the default build):", args.opt, args.defines)
    ops = demo_ops()
    define = runtime_ops_define(ops)
    report(f"the demo model's ops only ({', '.join(ops)}; {define}):", args.opt, [*args.defines, define[2:]])


if __name__ == "__main__":
    main()

"""Generated C on the Cortex-M4: executed instructions per MAC, per layer and for the whole inference.

Builds the demo model's generated C (its KAT, `npukit.codegen.cortex_m`) for QEMU's mps2-an386 at -Os and
-O2, runs it under `qemu-system-arm -singlestep -d exec,nochain` (one trace line per executed
instruction) and counts the lines from the entry of each layer's kernel call to its return (symbol
addresses from `arm-none-eabi-nm`), and from the entry of `npukit_run` to its return (whole inference).
The counting is first validated on a loop of known length (an asm loop of 2n + 1 instructions).
Printed beside the figures the issue measured (CMSIS-NN at -O2, npukit before this work at -Os); code
size of the kernels and RAM from the same ELF. Nothing is asserted. Needs the arm tools
(`scripts/install-arm-tools.sh`).

    .venv/bin/python benchmarks/cortex_m_instructions.py [--opt -Os -O2] [--no-simd]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

import npukit
from npukit import codegen
from npukit.codegen import cortex_m
from npukit.ops import get_op

CMSIS_NN = {"conv": 2.06, "whole": 2.35}  # CMSIS-NN, the same layers, -O2 (issue 12)
BEFORE = {"conv": "12.7-17.1", "whole": 14.58}  # npukit generated C, -Os, before the DSP path (issue 12)
KERNEL_CALL = re.compile(r"^\s*(nk_\w+)\(&(\w+)_p\b", re.M)  # a layer's call in model.c's npukit_run_in

LOOP_C = """/* The counting check: loop(n) executes exactly 2n + 1 instructions (subs + bne per turn, bx lr). */
__attribute__((naked, noinline)) void nk_bench_loop(unsigned n)
{
    __asm__ volatile("1: subs r0, r0, #1\\n\\tbne 1b\\n\\tbx lr\\n");
}
int main(void)
{
    nk_bench_loop(10);
    nk_bench_loop(1000);
    return 0;
}
"""


# The peak stack of one inference, measured: a build whose call of npukit_run goes through this wrapper
# (`-Wl,--wrap=npukit_run`) paints the stack below the caller with a pattern, runs the inference and finds
# the deepest word it overwrote. No interrupt runs on the KAT, so only the inference writes there.
STACK_PROBE_C = """#include <stdio.h>
#include "model.h"
#define NK_PROBE_WORDS 4096u
#define NK_PROBE_PATTERN 0xA5C3E11Fu
int __real_npukit_run(const int8_t *input, npukit_output_t *output);
__attribute__((noinline)) int __wrap_npukit_run(const int8_t *input, npukit_output_t *output)
{
    volatile uint32_t *top;
    unsigned i;
    int status;
    __asm__ volatile("mov %0, sp" : "=r"(top)); /* the callee's stack starts below this word */
    top -= 1;
    for (i = 0; i < NK_PROBE_WORDS; i++)
        top[-(int)i] = NK_PROBE_PATTERN;
    status = __real_npukit_run(input, output);
    for (i = NK_PROBE_WORDS; i > 0 && top[-(int)(i - 1)] == NK_PROBE_PATTERN; i--)
        ;
    printf("STACK %u\\n", i * 4u);
    return status;
}
"""


def _symbols(elf: Path) -> dict[str, tuple[int, int]]:
    """Code symbols: name -> (start, end), Thumb bit cleared."""
    out = {}
    text = subprocess.run([cortex_m.NM, "-S", "--defined-only", str(elf)], check=True, capture_output=True,
                          text=True).stdout
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            start = int(parts[0], 16) & ~1
            out[parts[3]] = (start, start + int(parts[1], 16))
    return out


def _trace(elf: Path, folder: Path):
    """Yields the PC of every executed instruction (QEMU's exec log through a FIFO: no huge file)."""
    fifo = folder / "trace.fifo"
    if fifo.exists():
        fifo.unlink()
    os.mkfifo(fifo)
    cmd = [cortex_m.QEMU, *cortex_m.QEMU_ARGS, "-kernel", str(elf), "-singlestep", "-d", "exec,nochain",
           "-D", str(fifo)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))
    reader.start()
    with open(fifo, "rb") as f:
        for line in f:
            if line.startswith(b"Trace"):
                yield int(line.split(b"/", 2)[1], 16)  # [cs_base/pc/flags/cflags]
    proc.wait()
    reader.join()
    _trace.output = b"".join(out).decode("utf-8", "replace")


def _calls(pcs, caller: tuple[int, int], entries: dict[int, str]):
    """(callee, instructions) for each call made from `caller`'s range to one of `entries`, in order:
    the lines from the callee's entry to its return into the caller, the return included."""
    lo, hi = caller
    calls, cur, n, prev_in = [], None, 0, False
    for pc in pcs:
        inside = lo <= pc < hi
        if cur is not None:
            if inside:
                calls.append((cur, n))
                cur = None
            else:
                n += 1
        elif prev_in and not inside and pc in entries:
            cur, n = entries[pc], 1
        prev_in = inside
    return calls


def _build(sources: list[str], folder: Path, opt: str, elf: str, extra: list[str] = ()) -> Path:
    flags = [f for f in cortex_m.CFLAGS if f not in ("-Os", "-Werror")] + [opt, "-fstack-usage", *extra]
    cmd = [cortex_m.CC, *flags, "-o", elf, *sources, *cortex_m.LDFLAGS]
    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"build failed:\n$ {' '.join(cmd)}\n{r.stdout}{r.stderr}")
    return folder / elf


def validate(folder: Path) -> None:
    (folder / "loop.c").write_text(LOOP_C)
    elf = _build([cortex_m.STARTUP, "loop.c"], folder, "-Os", "loop.elf")
    syms = _symbols(elf)
    got = [n for _, n in _calls(_trace(elf, folder), syms["main"], {syms["nk_bench_loop"][0]: "loop"})]
    want = [2 * 10 + 1, 2 * 1000 + 1]
    print(f"counting check (asm loop, 2n + 1 instructions): counted {got}, expected {want}: "
          f"{'OK' if got == want else 'MISMATCH'}")
    if got != want:
        raise SystemExit("the trace does not count one line per executed instruction here")


def measure(project: Path, graph, opt: str, extra: list[str]) -> dict:
    folder = project / cortex_m.DIR
    kernels = sorted(p.name for p in project.glob("nk_*.c"))
    sources = [cortex_m.STARTUP, "../main.c", "../model.c", *(f"../{k}" for k in kernels)]
    elf = _build(sources, folder, opt, f"bench{opt}.elf", extra)
    syms = _symbols(elf)
    model_c = (project / "model.c").read_text()
    body = model_c[model_c.index("npukit_run_in("):]
    layers = KERNEL_CALL.findall(body)  # [(kernel, node ident)] in call order
    entries = {syms[k][0]: k for k, _ in layers}
    pcs = list(_trace(elf, folder))
    if "KAT PASS" not in _trace.output:
        raise SystemExit(f"the KAT did not pass at {opt}:\n{_trace.output}")
    calls = _calls(pcs, syms["npukit_run_in"], entries)
    whole = _calls(pcs, syms["main"], {syms["npukit_run"][0]: "npukit_run"})
    # instructions inside library functions (memcpy, memset, __aeabi_*) during the inference
    spans = sorted((a, b, n) for n, (a, b) in syms.items() if b > a)
    lib: dict[str, int] = {}
    inside, run_lo, (main_lo, main_hi) = False, syms["npukit_run"][0], syms["main"]
    for pc in pcs:
        if pc == run_lo:
            inside = True
        elif inside and main_lo <= pc < main_hi:
            inside = False
        if inside:
            name = next((n for a, b, n in spans if a <= pc < b), "?")
            if not name.startswith(("nk_", "npukit_")):
                lib[name] = lib.get(name, 0) + 1
    nodes = {codegen_ident(n.name): n for n in graph.nodes}
    rows = []
    for (kernel, ident), (callee, n) in zip(layers, calls, strict=True):
        assert kernel == callee, (kernel, callee)
        node = nodes[ident.split("_", 1)[1]]
        rows.append((node.name, kernel, n, get_op(node.op).macs(node, graph)))
    code = sum(e - s for name, (s, e) in syms.items() if name.startswith("nk_"))
    (folder / "stack_probe.c").write_text(STACK_PROBE_C)
    probe = _build([*sources, "stack_probe.c"], folder, opt, f"stack{opt}.elf", [*extra, "-Wl,--wrap=npukit_run"])
    ok, text = cortex_m.run_qemu(probe)
    if not ok or not (stack := re.search(r"^STACK (\d+)$", text, re.M)):
        raise SystemExit(f"the stack probe did not run at {opt}:\n{text}")
    sizes = cortex_m.size_report(elf)
    frames = {}
    for su in folder.glob("*.su"):
        for line in su.read_text().splitlines():
            m = re.match(r"\S+:\d+:\d+:(nk_\w+)(?:\.\w+)*\s+(\d+)", line)
            if m:
                frames[m.group(1)] = int(m.group(2))
    return {"rows": rows, "whole": whole[0][1], "kernel_code": code, "sizes": sizes, "frames": frames, "lib": lib,
            "stack": int(stack.group(1))}


def codegen_ident(name: str) -> str:
    return re.sub(r"\W", "_", name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--opt", nargs="+", default=["-Os", "-O2"])
    ap.add_argument("--no-simd", action="store_true", help="build with -DNK_NO_SIMD (the plain C99 path)")
    args = ap.parse_args()
    if msg := cortex_m.arm_tools_available():
        raise SystemExit(msg)
    torch.manual_seed(0)
    from npukit.models import mnist1d_cnn

    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(256, 1, 40)))
    tmp = Path(tempfile.mkdtemp())
    npukit.pack(graph, tmp / "model.bin")
    x = graph.quantize_input(torch.randn(1, 1, 40).numpy())
    project = codegen.generate(tmp / "model.bin", tmp / "c", kat_input=x)
    cortex_m.write_cortex_m(project)
    validate(project / cortex_m.DIR)
    extra = ["-DNK_NO_SIMD"] if args.no_simd else []
    all_macs = sum(get_op(n.op).macs(n, graph) for n in graph.nodes)
    print(f"demo model (MNIST-1D CNN): {all_macs:,} MACs per inference; Cortex-M4 on QEMU mps2-an386"
          f"{', -DNK_NO_SIMD' if args.no_simd else ''}")
    for opt in args.opt:
        r = measure(project, graph, opt, extra)
        print(f"\n{opt}: instructions from entry to return of each layer's kernel call")
        print(f"  {'layer':8} {'kernel':11} {'instructions':>12} {'MACs':>8} {'instr/MAC':>9}")
        conv_i = conv_m = 0
        for name, kernel, n, macs in r["rows"]:
            per = f"{n / macs:9.2f}" if macs else f"{'':9}"
            print(f"  {name:8} {kernel:11} {n:12,} {macs:8,} {per}")
            if kernel in ("nk_conv", "nk_conv_1d"):
                conv_i, conv_m = conv_i + n, conv_m + macs
        print(f"  conv layers together: {conv_i / conv_m:.2f} instr/MAC (CMSIS-NN -O2: {CMSIS_NN['conv']}; "
              f"npukit before, -Os: {BEFORE['conv']}; goal <= 1.0)")
        print(f"  whole inference (npukit_run): {r['whole']:,} instructions, {r['whole'] / all_macs:.2f} per MAC "
              f"(CMSIS-NN -O2: {CMSIS_NN['whole']}; npukit before, -Os: {BEFORE['whole']}; goal < 2.35)")
        print("  library code run inside the inference: "
              + (", ".join(f"{k} {v:,} instructions" for k, v in sorted(r["lib"].items())) or "none"))
        s = r["sizes"]
        print(f"  code: kernels (nk_* functions) {r['kernel_code']:,} B; runtime (kernels, npukit_run, parameter "
              f"structs) {s['runtime_code_bytes']:,} B; weights {s['weight_bytes']:,} B")
        ram = s["arena_bytes"] + s["runtime_static_bytes"]
        print(f"  RAM of one inference: arena {s['arena_bytes']:,} B + the runtime's static data "
              f"{s['runtime_static_bytes']:,} B = {ram:,} B (goal <= 2,760 B: {'met' if ram <= 2760 else 'not met'}; "
              f"TFLM 5,520 B), and the stack at its deepest {r['stack']:,} B (measured: painted, then scanned); "
              f"the KAT harness's static data (newlib-nano printf, semihosting) {s['harness_static_bytes']:,} B")
        print("  stack frames: " + ", ".join(f"{k} {v} B" for k, v in sorted(r["frames"].items()) if v))


if __name__ == "__main__":
    main()

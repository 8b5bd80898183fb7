"""The pack report: where the bytes go on the chip, and whether they fit.

    plan = npukit.memplan.plan_graph(graph)
    paths = write_report(graph, plan, "venus", "out/report")    # report.md, report.html, arena.png
    problems = check_limits(graph, plan, "venus")               # [] when everything fits

`weight_bytes` counts each layer's parameters as packed for the chip; `memory_usage` puts the arena and
the weights into the target's memories and follows the activation bytes step by step (step i = node i,
as in `npukit.memplan`; the last step, one past the last node, is the caller reading the outputs);
`check_limits` turns an overflow into a `Problem` naming the layers at the peak. Sizes in the step curves
are rounded up to the planner's alignment, so they compare directly with the arena and its lower bound.
matplotlib is imported only by `write_report`, and drawn through its Agg canvas without pyplot, so no
display is needed and the caller's own matplotlib backend is left alone.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NpukitError, Problem
from .memplan import STRATEGIES, Buffer, Plan, buffers_from_graph
from .ops import get_op
from .targets import TargetProfile, load_target

KINDS = ("activations", "weights")
ALIGNMENT = 4  # npukit.memplan.plan's default alignment: the arena holds every buffer rounded up to it
OUTPUT_STEP = "(outputs)"  # label of the step after the last node, when the caller reads the outputs


# ---------------------------------------------------------------------------------------------------
# Weights


def weight_bytes(graph) -> dict[str, int]:
    """Bytes of each node's parameters as packed for the chip, every node listed (0 without parameters).

    Weights are packed at the node's `w_bits` (4-bit: two per byte, the tensor rounded up to a byte);
    biases take 4 bytes each when every value fits int32, else 8; any other parameter its array's bytes.
    """
    from .modelbin import stored_bits  # model.bin's one rule for each parameter's stored width

    return {n.name: sum(-(-v.size * stored_bits(n, k, np.asarray(v)) // 8) for k, v in n.params.items())
            for n in graph.nodes}


# ---------------------------------------------------------------------------------------------------
# Memory usage


@dataclass(frozen=True)
class KindUsage:
    """One kind of data (activations or weights) and the memory that holds it."""

    kind: str
    used: int  # activations: the arena; weights: the sum of `weight_bytes`
    memory: str | None  # the target's memory for it; None where the profile declares none
    capacity: int | None  # that memory's bytes; None: no limit known


@dataclass(frozen=True)
class MemoryRow:
    """One memory of the target (or one kind with no memory declared) and what the pack puts there."""

    memory: str | None
    holds: tuple[str, ...]  # the kinds placed there (several when one memory holds both)
    used: int
    capacity: int | None

    @property
    def over(self) -> int:
        return max(0, self.used - self.capacity) if self.capacity is not None else 0

    @property
    def fraction(self) -> float | None:
        return self.used / self.capacity if self.capacity else None


@dataclass
class BufferInfo:
    """One activation tensor in the arena."""

    name: str
    producer: str | None  # the node writing it; None for a graph input
    op: str  # the producer's op, or "input"
    shape: tuple[int, ...]
    bytes: int  # its own bytes (batch included, not aligned)
    first: int
    last: int
    offset: int
    alias_of: str | None  # the buffer whose memory it views
    block: str  # the buffer owning its memory (itself unless an alias)


@dataclass
class MemoryUsage:
    kinds: dict[str, KindUsage]  # 'activations', 'weights'
    memories: list[MemoryRow]  # every memory of the target, then kinds with no memory declared
    steps: list[str]  # label of each step: node names, then OUTPUT_STEP
    live_bytes: list[int]  # bytes live at each step (aligned; aliases and in-place sharing counted once)
    occupied_bytes: list[int]  # the arena's occupied extent at each step: max offset + size over live buffers
    live: list[list[str]]  # buffers live at each step, aliases included
    contributions: list[dict[str, int]]  # per step: owning buffer -> bytes it adds to live_bytes
    peak_step: int  # first step with the most live bytes
    arena_bytes: int
    lower_bound_bytes: int
    buffers: list[BufferInfo] = field(default_factory=list)
    weights: dict[str, int] = field(default_factory=dict)  # weight_bytes(graph)
    block_bytes: dict[str, int] = field(default_factory=dict)  # owning buffer -> aligned bytes
    block_span: dict[str, tuple[int, int]] = field(default_factory=dict)  # owning buffer -> steps, aliases included

    def live_layers(self, step: int) -> list[str]:
        """Names of the layers whose outputs are live at `step` (graph inputs by tensor name)."""
        by_name = {b.name: b for b in self.buffers}
        names: list[str] = []
        for t in self.live[step]:
            n = by_name[t].producer or t
            if n not in names:
                names.append(n)
        return names


def memory_usage(graph, plan: Plan, target=None, *, batch: int = 1, alignment: int = ALIGNMENT) -> MemoryUsage:
    """Bytes per memory kind against the target's capacities, and the arena step by step.

    `target`: a profile, a built-in name, a YAML path or a dict; None takes the profile the graph carries.
    `batch` and `alignment` must be those the plan was made with (`plan_graph`'s defaults: 1 and 4).
    """
    profile = _profile(graph, target)
    bufs = buffers_from_graph(graph, batch)
    _check_plan(bufs, plan, alignment)
    by_name = {b.name: b for b in bufs}
    root = {b.name: _root(b.name, by_name) for b in bufs}
    span: dict[str, list[int]] = {}
    for b in bufs:
        s = span.setdefault(root[b.name], [b.first, b.last])
        s[0], s[1] = min(s[0], b.first), max(s[1], b.last)
    size = {r: _align(by_name[r].size, alignment) for r in span}
    n_steps = max([len(graph.nodes)] + [b.last for b in bufs]) + 1

    live_bytes, occupied, live, contributions = [], [], [], []
    for step in range(n_steps):
        blocks = sorted((plan.offsets[r], -f, size[r], r) for r, (f, la) in span.items() if f <= step <= la)
        contrib, hi = {}, 0
        for off, _, sz, r in blocks:  # the union of the byte ranges: in-place pairs share theirs
            contrib[r] = max(0, off + sz - max(off, hi))
            hi = max(hi, off + sz)
        contributions.append(contrib)
        live_bytes.append(sum(contrib.values()))
        occupied.append(max((off + sz for off, _, sz, _ in blocks), default=0))
        live.append([b.name for b in bufs if b.first <= step <= b.last])
    peak = max(range(n_steps), key=lambda s: (live_bytes[s], -s)) if n_steps else 0

    producer = {t: n for n in graph.nodes for t in n.outputs}
    infos = [BufferInfo(b.name, producer[b.name].name if b.name in producer else None,
                        producer[b.name].op if b.name in producer else "input", tuple(graph.tensors[b.name].shape),
                        b.size, b.first, b.last, plan.offsets[b.name], b.alias_of, root[b.name]) for b in bufs]

    weights = weight_bytes(graph)
    used = {"activations": plan.arena_bytes, "weights": sum(weights.values())}
    all_kinds = KINDS
    if profile.memory_for("bias") is not None:  # a chip with a bias memory of its own (MAX7800x)
        # only layers that use a bias take bias memory (an all-zero bias is no bias)
        bias = {n.name: n.params["bias"].size * profile.bias_bits // 8 for n in graph.nodes
                if "bias" in n.params and n.params["bias"].any()}
        weights = {n.name: weights[n.name] - (_stored_bias(n) if "bias" in n.params else 0) for n in graph.nodes}
        used.update(weights=sum(weights.values()), bias=sum(bias.values()))
        all_kinds = (*KINDS, "bias")
    kinds = {}
    for k in all_kinds:
        m = profile.memory_for(k)
        kinds[k] = KindUsage(k, used[k], m.name if m else None, m.bytes if m else None)
    memories = []
    for m in profile.memory:
        holds = tuple(k for k in all_kinds if kinds[k].memory == m.name)
        memories.append(MemoryRow(m.name, holds, sum(used[k] for k in holds), m.bytes))
    memories += [MemoryRow(None, (k,), used[k], None) for k in all_kinds if kinds[k].memory is None]

    labels = [n.name for n in graph.nodes] + [OUTPUT_STEP] * (n_steps - len(graph.nodes))
    return MemoryUsage(kinds, memories, labels, live_bytes, occupied, live, contributions, peak, plan.arena_bytes,
                       plan.lower_bound_bytes, infos, weights, size, {r: (f, la) for r, (f, la) in span.items()})


def _stored_bias(node) -> int:
    from .modelbin import stored_bits

    b = np.asarray(node.params["bias"])
    return -(-b.size * stored_bits(node, "bias", b) // 8)


def _profile(graph, target) -> TargetProfile:
    return load_target(graph.target if target is None else target)


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _root(name: str, by_name: dict[str, Buffer]) -> str:
    seen = {name}
    while by_name[name].alias_of is not None:
        name = by_name[name].alias_of
        if name in seen:
            raise NpukitError(f"alias cycle through {name!r}")
        seen.add(name)
    return name


def _check_plan(bufs: list[Buffer], plan: Plan, alignment: int) -> None:
    names = {b.name for b in bufs}
    if set(plan.offsets) != names:
        missing, extra = sorted(names - set(plan.offsets)), sorted(set(plan.offsets) - names)
        raise NpukitError(f"the memory plan is not this graph's (tensors without an offset: {missing}; "
                          f"offsets of unknown tensors: {extra})")
    ends = [plan.offsets[b.name] + _align(b.size, alignment) for b in bufs if b.alias_of is None]
    if max(ends, default=0) > plan.arena_bytes:
        raise NpukitError(f"the memory plan's arena ({plan.arena_bytes} bytes) does not hold this graph's tensors "
                          f"(they reach {max(ends)} bytes): was it planned with another batch or alignment?")


# ---------------------------------------------------------------------------------------------------
# Limits


def check_limits(graph, plan: Plan, target=None, *, batch: int = 1, alignment: int = ALIGNMENT,
                 usage: MemoryUsage | None = None) -> list[Problem]:
    """One `memory-limit` Problem per memory the pack overfills; [] when everything fits. A target that
    declares no memory has no limits."""
    profile = _profile(graph, target)
    usage = usage or memory_usage(graph, plan, profile, batch=batch, alignment=alignment)
    problems = []
    for row in usage.memories:
        if not row.over:
            continue
        what = " and ".join("biases" if h == "bias" else h for h in row.holds)
        msg = (f"{what} need {row.used} bytes but {row.memory} holds {row.capacity} bytes: "
               f"{row.over} bytes over")
        fixes = []
        if "activations" in row.holds:
            peak = usage.peak_step
            layers = usage.live_layers(peak)
            where = ", ".join(layers)
            msg += (f"; the activations peak at step {peak} ({usage.steps[peak]}) with "
                    f"{usage.live_bytes[peak]} bytes live ({where})")
            need = usage.lower_bound_bytes + (row.used - usage.arena_bytes)
            if need <= row.capacity:
                msg += (f"; the arena is {usage.arena_bytes} bytes but any plan needs only "
                        f"{usage.lower_bound_bytes}, which would fit")
            fixes.append(f"shrink the feature maps before the peak layer {usage.steps[peak]} (pooling, a stride, "
                         "fewer channels)" + (", or run a smaller batch" if batch > 1 else ""))
        elif row.holds == ("bias",):
            where = ", ".join(n.name for n in graph.nodes if "bias" in n.params and n.params["bias"].any())
            fixes.append("use bias=False on some layers (BatchNorm after a conv also needs a bias), or fewer "
                         "output channels")
        else:
            heavy = sorted((n for n, b in usage.weights.items() if b), key=lambda n: -usage.weights[n])
            where = ", ".join(heavy[:5]) or graph.nodes[0].name
            msg += "; the largest: " + ", ".join(f"{n} {usage.weights[n]} bytes" for n in heavy[:5])
            bits = [b for b in profile.weight_bits if b < profile.default_weight_bits]
            fixes.append("use fewer or smaller weights in those layers (fewer channels"
                         + (f", {min(bits)}-bit weights" if bits else "") + ")")
        room = _room_elsewhere(profile, usage, row)
        if "bias" in row.holds:
            pass  # a bias memory is the chip's own: nothing can move there or out
        elif room:
            fixes.append(f"move {what} to " + " or ".join(f"{m} ({free} bytes free)" for m, free in room)
                         + " (the memory's `holds` in the target profile)")
        else:
            fixes.append(f"move {what} to a larger memory: no other memory of {profile.name} has "
                         f"{row.used} bytes free")
        problems.append(Problem(where, "memory-limit", msg, "; or ".join(fixes)))
    return problems


def _room_elsewhere(profile: TargetProfile, usage: MemoryUsage, row: MemoryRow) -> list[tuple[str, int]]:
    """Other memories with room for everything in `row`; activations need writable memory, so flash and
    ROM are left out for them."""
    used = {r.memory: r.used for r in usage.memories}
    out = []
    for m in profile.memory:
        free = m.bytes - used.get(m.name, 0)
        read_only = any(w in m.name.lower() for w in ("flash", "rom"))
        if m.name != row.memory and free >= row.used and not ("activations" in row.holds and read_only):
            out.append((m.name, free))
    return out


# ---------------------------------------------------------------------------------------------------
# The report


def write_report(graph, plan: Plan, target=None, out_dir: str | Path = "report", *,
                 model_bin_bytes: int | None = None, title: str = "npukit pack report", batch: int = 1,
                 alignment: int = ALIGNMENT, device_sizes: dict | None = None) -> dict[str, Path]:
    """Write report.md, report.html (self-contained but for the PNG beside it) and arena.png into
    `out_dir` (created); returns {'md', 'html', 'png'} -> path. Each file is written under a temporary
    name and renamed, so a reader never sees half a file. `device_sizes` (from
    `codegen.cortex_m.size_report`) adds the Cortex-M build's flash and RAM."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise NpukitError("the report's plot needs matplotlib: pip install matplotlib") from None
    profile = _profile(graph, target)
    usage = memory_usage(graph, plan, profile, batch=batch, alignment=alignment)
    if batch == 1 and alignment == ALIGNMENT:  # every rule, as check and pack see them
        from .rules import check_graph

        problems = check_graph(graph, profile, plan=plan)
    else:
        problems = check_limits(graph, plan, profile, batch=batch, alignment=alignment, usage=usage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _ReportData(graph, plan, profile, usage, problems, model_bin_bytes, title, batch, device_sizes)
    paths = {"png": out / "arena.png", "md": out / "report.md", "html": out / "report.html"}
    _atomic(paths["png"], lambda p: _plot(data, p))
    _atomic(paths["md"], lambda p: p.write_text(_markdown(data), encoding="utf-8"))
    _atomic(paths["html"], lambda p: p.write_text(_html(data, paths["png"].name), encoding="utf-8"))
    return paths


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class _ReportData:
    graph: object
    plan: Plan
    profile: TargetProfile
    usage: MemoryUsage
    problems: list[Problem]
    model_bin_bytes: int | None
    title: str
    batch: int
    device_sizes: dict | None = None

    @property
    def macs(self) -> dict[str, int]:
        return {n.name: get_op(n.op).macs(n, self.graph) * self.batch for n in self.graph.nodes}


def _human(n: float) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _bytes(n: int | None) -> str:
    """Exact bytes first (searchable), then a readable size."""
    if n is None:
        return "—"
    return f"{n} B" if abs(n) < 1024 else f"{n} B ({_human(n)})"


def _pct(f: float | None) -> str:
    return "—" if f is None else f"{100 * f:.1f} %"


def _summary(d: _ReportData) -> list[tuple[str, str]]:
    p, u = d.plan, d.usage
    rows = [("target", f"{d.profile.name}" + (f" — {d.profile.description}" if d.profile.description else ""))]
    if d.model_bin_bytes is not None:
        rows.append(("model.bin", _bytes(d.model_bin_bytes)))
    if d.batch != 1:
        rows.append(("batch", str(d.batch)))
    rows += [
        ("activation arena", _bytes(p.arena_bytes)),
        ("lower bound", _bytes(p.lower_bound_bytes) + " (the most bytes live at once: no plan needs less)"),
        ("gap", f"{100 * p.gap:.1f} % ({p.arena_bytes - p.lower_bound_bytes} B)"
         + (", optimal" if p.proven_optimal else ", not proven optimal")),
        ("winning strategy", p.strategy),
        ("peak", f"step {u.peak_step} ({u.steps[u.peak_step]}): " + ", ".join(u.live_layers(u.peak_step))),
    ]
    return rows


def _strategy_rows(d: _ReportData) -> list[list[str]]:
    order = sorted(d.plan.by_strategy, key=lambda s: (STRATEGIES.index(s) if s in STRATEGIES else len(STRATEGIES), s))
    lb = d.plan.lower_bound_bytes
    return [[s + (" (winner)" if s == d.plan.strategy else ""), _bytes(a), f"+{100 * (a / lb - 1):.1f} %" if lb else "—"]
            for s, a in ((s, d.plan.by_strategy[s]) for s in order)]


def _memory_rows(d: _ReportData) -> list[list[str]]:
    rows = []
    for r in d.usage.memories:
        rows.append([r.memory or "(none declared)", ", ".join(r.holds) or "—", _bytes(r.used) if r.holds else "—",
                     _bytes(r.capacity), _pct(r.fraction) if r.holds else "—",
                     f"OVER by {r.over} B" if r.over else ("ok" if r.capacity and r.holds else "")])
    return rows


_LAYER_HEAD = ["node", "op", "output", "shape", "bytes", "lifetime", "arena offset", "MACs", "weight bytes"]
_LAYER_NUM = {4, 6, 7, 8}  # right-aligned columns


def _layer_rows(d: _ReportData) -> list[list[str]]:
    macs, rows, seen = d.macs, [], set()
    for b in d.usage.buffers:
        node = b.producer
        first_out = node is not None and node not in seen
        seen.add(node)
        offset = f"{b.offset}" + (f" (view of {b.alias_of})" if b.alias_of else "")
        rows.append([node or "(graph input)", b.op, b.name, "×".join(map(str, b.shape)) or "scalar", str(b.bytes),
                     f"[{b.first}, {b.last}]", offset, f"{macs[node]:,}" if first_out else "",
                     f"{d.usage.weights[node]:,}" if first_out else ""])
    return rows


def _totals(d: _ReportData) -> list[tuple[str, str]]:
    u = d.usage
    return [("MACs" + (" per sample" if d.batch == 1 else f" (batch {d.batch})"), f"{sum(d.macs.values()):,}"),
            ("weight bytes", _bytes(sum(u.weights.values()))),
            ("activation arena", _bytes(d.plan.arena_bytes)),
            ("activation tensors", str(len(u.buffers)))]


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(head: list[str], rows: list[list[str]], num: set[int] = frozenset()) -> str:
    lines = ["| " + " | ".join(map(_md_cell, head)) + " |",
             "|" + "|".join("---:" if i in num else "---" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _verdict(d: _ReportData) -> str:
    """One line: how many problems, or that everything fits, or that nothing could be verified."""
    errors = [p for p in d.problems if p.severity == "error"]
    if errors:
        return f"{len(errors)} problem{'s' * (len(errors) != 1)}: the model breaks {d.profile.name}'s rules or memories"
    if any(p.rule == "memory-unknown" for p in d.problems):
        return f"Not verified: {d.profile.name} declares no memory for some of the model's data, so nothing can be said to fit"
    return f"Every rule of {d.profile.name} holds, and everything fits its memories."


def _markdown(d: _ReportData) -> str:
    parts = [f"# {d.title}", ""]
    if d.problems:
        parts += ["> [!WARNING]", f"> **{_verdict(d)}**", ">"]
        for p in d.problems:
            parts += [f"> - **{p.where}**: [{p.rule}] {p.message}", f">   *fix:* {p.fix}"]
        parts.append("")
    else:
        parts += [f"**{_verdict(d)}**", ""]
    parts += [_md_table(["", ""], [[f"**{k}**", v] for k, v in _summary(d)]), "",
              "## Planner strategies", "", _md_table(["strategy", "arena", "vs lower bound"], _strategy_rows(d), {1, 2}),
              "", "## Memories", "",
              _md_table(["memory", "holds", "used", "capacity", "used %", ""], _memory_rows(d), {2, 3, 4}), "",
              "## Activation arena", "", "![arena](arena.png)", "",
              "Top: bytes live at each step (one colour per tensor) and the arena's occupied extent. "
              "Bottom: the memory map, each tensor over its lifetime (x) and its offset range (y).", "",
              "## Layers", "", _md_table(_LAYER_HEAD, _layer_rows(d), _LAYER_NUM), "",
              "## Totals", "", _md_table(["", ""], [[k, v] for k, v in _totals(d)]), ""]
    if d.device_sizes:
        parts += ["## Cortex-M4 build (arm-none-eabi-size)", "", _md_table(["", "bytes"], _device_rows(d), {1}), ""]
    return "\n".join(parts)


def _device_rows(d: _ReportData) -> list[list[str]]:
    s = d.device_sizes
    return [["flash: code (kernels, model calls, KAT harness, libc)", f"{s['code_bytes']:,}"],
            ["flash: weights and biases", f"{s['weight_bytes']:,}"],
            ["of the code: the runtime (kernels, npukit_run, parameters)", f"{s['runtime_code_bytes']:,}"],
            ["RAM: activation arena", f"{s['arena_bytes']:,}"],
            ["RAM: other static data (libc, harness)", f"{s['ram_overhead_bytes']:,}"]]


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 70em;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #eaeef2; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #d0d7de; padding: .3em .7em; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { text-align: left; white-space: nowrap; }
td.over { color: #b42318; font-weight: 600; }
td.ok { color: #1a7f37; }
code, td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .95em; }
.warn { border: 2px solid #d1242f; background: #fff1f0; border-radius: 6px; padding: .6em 1em; margin: 1em 0; }
.warn h2 { color: #b42318; border: none; margin: .2em 0; }
.warn li { margin: .4em 0; }
.ok-box { border: 1px solid #1a7f37; background: #f0fff4; border-radius: 6px; padding: .4em 1em; margin: 1em 0; }
img { max-width: 100%; border: 1px solid #d0d7de; border-radius: 4px; }
.caption { color: #59636e; font-size: .9em; }
"""


def _h(s: object) -> str:
    return html.escape(str(s))


def _html_table(head: list[str], rows: list[list[str]], num: set[int] = frozenset(), mono: set[int] = frozenset(),
                cls: Callable[[int, str], str] | None = None) -> str:
    def attrs(i: int, cell: str) -> str:
        names = (["num"] if i in num else []) + (["mono"] if i in mono else [])
        if cls:
            names += [c for c in [cls(i, cell)] if c]
        return f' class="{" ".join(names)}"' if names else ""

    th = "".join(f"<th{' class=num' if i in num else ''}>{_h(c)}</th>" for i, c in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{attrs(i, c)}>{_h(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _html_kv(rows: list[tuple[str, str]]) -> str:
    return ('<table class="kv"><tbody>' + "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in rows)
            + "</tbody></table>")


def _html_device(d: _ReportData) -> str:
    if not d.device_sizes:
        return ""
    return "<h2>Cortex-M4 build (arm-none-eabi-size)</h2>\n" + _html_table(["", "bytes"], _device_rows(d), {1})


def _html(d: _ReportData, png: str) -> str:
    def status(i: int, cell: str) -> str:
        return ("over" if cell.startswith("OVER") else "ok" if cell == "ok" else "") if i == 5 else ""

    if d.problems:
        items = "".join(f"<li><b>{_h(p.where)}</b>: [{_h(p.rule)}] {_h(p.message)}<br><i>fix:</i> {_h(p.fix)}</li>"
                        for p in d.problems)
        banner = f'<div class="warn"><h2>⚠ {_h(_verdict(d))}</h2><ul>{items}</ul></div>'
    else:
        banner = f'<div class="ok-box">{_h(_verdict(d))}</div>'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_h(d.title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style></head>
<body>
<h1>{_h(d.title)}</h1>
{banner}
{_html_kv(_summary(d))}
<h2>Planner strategies</h2>
{_html_table(["strategy", "arena", "vs lower bound"], _strategy_rows(d), {1, 2})}
<h2>Memories</h2>
{_html_table(["memory", "holds", "used", "capacity", "used %", ""], _memory_rows(d), {2, 3, 4}, cls=status)}
<h2>Activation arena</h2>
<a href="{_h(png)}"><img src="{_h(png)}" alt="live bytes and arena occupancy per step; memory map of the arena"></a>
<p class="caption">Top: bytes live at each step (one colour per tensor) and the arena's occupied extent.
Bottom: the memory map, each tensor over its lifetime (x) and its offset range (y).</p>
<h2>Layers</h2>
{_html_table(_LAYER_HEAD, _layer_rows(d), _LAYER_NUM, {0, 2})}
<h2>Totals</h2>
{_html_kv(_totals(d))}
{_html_device(d)}
</body></html>
"""


# ---------------------------------------------------------------------------------------------------
# The plot


def _plot(d: _ReportData, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    u, plan = d.usage, d.plan
    n = len(u.steps)
    blocks = sorted(u.block_span, key=lambda r: (u.block_span[r][0], plan.offsets[r]))
    palette = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
               "#9c755f", "#86bcb6", "#8cd17d", "#f1ce63", "#a0cbe8", "#ffbe7d", "#d4a6c8", "#bab0ac"]
    colour = {r: palette[i % len(palette)] for i, r in enumerate(blocks)}
    views = {r: [b.name for b in u.buffers if b.block == r and b.name != r] for r in blocks}

    fig = Figure(figsize=(min(24.0, max(9.0, 0.75 * n + 4)), 9.5), layout="constrained", dpi=110)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1, 1.35])
    fig.suptitle(f"{d.title} — activation arena on {d.profile.name}", fontsize=12.5, fontweight="bold")
    top.set_title(f"arena {_bytes(plan.arena_bytes)}, lower bound {_bytes(plan.lower_bound_bytes)}, gap "
                  f"{100 * plan.gap:.1f} %, strategy {plan.strategy}", fontsize=9.5, color="#3d444d", pad=40)
    fmt = FuncFormatter(lambda v, _: _human(v) if abs(v) >= 10 * 1024 else f"{v:,.0f}")
    xs = np.arange(n)

    # Top: stacked live bytes per tensor, occupied extent, lower bound, arena, capacity when near.
    base = np.zeros(n)
    for r in blocks:
        h = np.array([u.contributions[s].get(r, 0) for s in range(n)], dtype=float)
        on = h > 0  # one patch per step the tensor is live, not one per step of the graph
        top.bar(xs[on], h[on], 0.72, bottom=base[on], color=colour[r], edgecolor="white", linewidth=0.6)
        base += h
    top.step(xs, u.occupied_bytes, where="mid", color="#1f2328", linewidth=1.8, label="arena occupied (max offset + size)")
    top.plot(xs, u.occupied_bytes, "o", color="#1f2328", markersize=4)
    top.axhline(plan.arena_bytes, color="#d1242f", linewidth=1.4, label=f"arena {_bytes(plan.arena_bytes)}")
    top.axhline(plan.lower_bound_bytes, color="#0969da", linewidth=1.4, linestyle=(0, (5, 3)),
                label=f"lower bound {_bytes(plan.lower_bound_bytes)}")
    ymax = max([plan.arena_bytes, *u.live_bytes, 1])
    cap = u.kinds["activations"].capacity
    if cap is not None and cap <= 1.6 * ymax:
        top.axhline(cap, color="#8250df", linewidth=2, linestyle=":",
                    label=f"{u.kinds['activations'].memory} capacity {_bytes(cap)}")
        ymax = max(ymax, cap)
    elif cap is not None:
        top.plot([], [], " ", label=f"{u.kinds['activations'].memory} {_human(cap)}: {_pct(plan.arena_bytes / cap)} used by the arena")
    top.plot([], [], "s", color="#9aa4ae", label="live bytes (bars, one colour per tensor)")
    top.set_ylim(0, ymax * 1.1)
    top.set_ylabel("live bytes")
    top.yaxis.set_major_formatter(fmt)
    top.yaxis.set_major_locator(MaxNLocator(6))
    top.grid(axis="y", color="#e6e8eb", linewidth=0.8)
    top.set_axisbelow(True)
    top.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncols=3, fontsize=8.5, frameon=False,
               borderaxespad=0.2, handlelength=2.4)
    peak = u.peak_step
    top.annotate(f"peak {u.live_bytes[peak]} B", (peak, u.live_bytes[peak]), xytext=(0, 4),
                 textcoords="offset points", ha="center", va="bottom", fontsize=8, color="#1f2328")

    # Bottom: the memory map.
    # A tensor written in place over another shares its memory on the hand-over step: each takes half.
    x0 = {r: u.block_span[r][0] - 0.42 for r in blocks}
    x1 = {r: u.block_span[r][1] + 0.42 for r in blocks}
    for p in blocks:
        for c in blocks:
            pf, pl = u.block_span[p]
            if c != p and u.block_span[c][0] == pl and pf < pl and _overlap(plan, u, p, c):
                x1[p], x0[c] = pl, pl
    labels = []
    for r in blocks:
        f, la = u.block_span[r]
        off, sz = plan.offsets[r], u.block_bytes[r]
        if sz == 0:
            continue
        rect = Rectangle((x0[r], off), x1[r] - x0[r], sz, facecolor=colour[r], edgecolor="#1f2328",
                         linewidth=0.8, alpha=0.9)
        bottom.add_patch(rect)
        name = r + "".join(f" → {v}" for v in views[r])
        text = bottom.text((x0[r] + x1[r]) / 2, off + sz / 2, f"{name}\n{sz} B @ {off}", ha="center", va="center",
                           fontsize=8, color="#111111", clip_on=True)
        text.set_in_layout(False)
        labels.append((text, rect))
    bottom.axhline(plan.arena_bytes, color="#d1242f", linewidth=1.4)
    if cap is not None and cap < plan.arena_bytes:
        bottom.axhline(cap, color="#8250df", linewidth=2, linestyle=":")
        bottom.text(n - 0.5, cap, f"{u.kinds['activations'].memory} capacity {cap} B ", ha="right", va="bottom",
                    fontsize=8, color="#8250df")
    bottom.text(n - 0.5, plan.arena_bytes, f"arena {plan.arena_bytes} B ", ha="right", va="bottom", fontsize=8,
                color="#d1242f")
    bottom.set_xlim(-0.6, n - 0.4)
    bottom.set_ylim(0, max(plan.arena_bytes, 1) * 1.08)
    bottom.set_ylabel("arena offset (bytes)")
    bottom.yaxis.set_major_formatter(fmt)
    bottom.yaxis.set_major_locator(MaxNLocator(8))
    bottom.grid(axis="y", color="#e6e8eb", linewidth=0.8)
    bottom.set_axisbelow(True)
    bottom.set_title("memory map: each tensor over its lifetime (x) and its offset range (y)", fontsize=10, loc="left")
    bottom.set_xlabel("op step (node)")
    every = max(1, math.ceil(n / 48))
    ticks = list(range(0, n, every))
    bottom.set_xticks(ticks, [f"{u.steps[s]}" for s in ticks], rotation=45, ha="right", rotation_mode="anchor",
                      fontsize=8.5)
    top.tick_params(axis="x", labelbottom=True)
    for label in top.get_xticklabels():
        label.set(rotation=45, ha="right", rotation_mode="anchor", fontsize=8)

    # Label a rectangle inside when the text fits (rotated or smaller if need be), else just above it
    # when that spot is free, else not at all.
    fig.draw_without_rendering()  # lays out the figure so the extents below are final
    renderer = fig.canvas.get_renderer()
    taken = [rect.get_window_extent(renderer) for _, rect in labels]
    axes_box = bottom.get_window_extent(renderer)
    for i, (text, rect) in enumerate(labels):
        box = taken[i]
        full = text.get_text()
        for rotation, size, short in ((0, 8, False), (0, 7, True), (90, 7, True), (0, 6, True)):
            text.set(text=full.split("\n")[0] if short else full, rotation=rotation, fontsize=size)
            t = text.get_window_extent(renderer)
            if t.width <= box.width - 4 and t.height <= box.height - 2:
                break
        else:
            x, y = rect.get_x() + rect.get_width() / 2, rect.get_y() + rect.get_height()
            text.set(text=full.split("\n")[0], rotation=0, fontsize=7, position=(x, y), va="bottom")
            t = text.get_window_extent(renderer).padded(1)
            clash = any(t.overlaps(o) for o in taken if o is not box)
            if clash or not (axes_box.x0 <= t.x0 and t.x1 <= axes_box.x1 and t.y1 <= axes_box.y1):
                text.set_visible(False)
                continue
        taken.append(text.get_window_extent(renderer))
    fig.savefig(path, format="png", dpi="figure", facecolor="white")


def _overlap(plan: Plan, u: MemoryUsage, a: str, b: str) -> bool:
    oa, ob = plan.offsets[a], plan.offsets[b]
    return oa < ob + u.block_bytes[b] and ob < oa + u.block_bytes[a]

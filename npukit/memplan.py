"""Activation memory planner: one arena for every activation tensor, an offset for each.

The core is graph-agnostic: `plan(buffers)` takes `Buffer`s (a size in bytes and an inclusive lifetime
in steps) and returns a `Plan`. Several strategies run; the smallest arena wins, and every plan is
verified before it is returned. `lower_bound_bytes` (the most bytes ever live at once) says how much
any plan could still gain. `buffers_from_graph` and `plan_graph` adapt an IR `Graph`.

The rules the plan obeys:

- A buffer is live on steps `first..last`, both included. Two buffers live on a common step never share
  a byte: during a step a node reads its inputs while it writes its outputs.
- An alias (`alias_of`, e.g. a reshape output) views its parent's memory: it takes the parent's offset,
  has no bytes of its own, and keeps the parent's memory alive until the alias's last step.
- An in-place candidate (`inplace_of`, e.g. a ReLU output) may be written over its input. That is
  allowed when the input, with its aliases, dies on the candidate's first step and the candidate is no
  larger than the input, and only at exactly the input's offset: an element-wise kernel reads element k
  before it writes element k, which holds at equal offsets and not at arbitrary ones. The planner
  decides whether to use it.

Vocabulary inside the module: a *block* is a buffer that owns memory (not an alias), its lifetime
extended over its aliases; a *unit* is a set of blocks placed at one offset (an in-place chain).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

from .ir import Graph, Node
from .ops import get_op

STRATEGIES = ("greedy_by_size", "greedy_by_breadth", "chain_alternate", "exact")

# Placements the exact search may try per plan (shared by all in-place variants). It bounds the time
# on hard instances; when it runs out the best plan found so far is kept and not claimed optimal.
EXACT_NODE_BUDGET = 20_000


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int  # bytes
    first: int  # first step it is live (written)
    last: int  # last step it is live (read), inclusive
    alias_of: str | None = None  # shares this buffer's memory exactly (no bytes of its own)
    inplace_of: str | None = None  # may overwrite this input if it dies at `first`


@dataclass
class Plan:
    offsets: dict[str, int]  # every buffer, aliases included
    arena_bytes: int
    lower_bound_bytes: int
    strategy: str  # the winning strategy
    gap: float  # arena / lower bound - 1
    by_strategy: dict[str, int]  # arena size of each strategy that ran
    proven_optimal: bool  # the arena reaches the lower bound, or the exact search finished


@dataclass(frozen=True)
class _Block:
    name: str
    size: int  # aligned
    first: int
    last: int  # extended to the last step of its aliases


@dataclass
class _Problem:
    buffers: list[Buffer]
    root: dict[str, str]  # buffer -> the block whose memory it uses
    blocks: list[_Block]
    pairs: list[tuple[int, int]]  # (child, parent) block indices that may share an offset
    lower_bound: int


# ---------------------------------------------------------------------------------------------------
# Public entry points


def plan(buffers: Sequence[Buffer], *, alignment: int = 4, exact_limit: int = 12,
         strategies: Sequence[str] = STRATEGIES) -> Plan:
    """Offsets for `buffers` in one arena; sizes are rounded up to `alignment`. Runs `strategies` (all by
    default; "exact" only with at most `exact_limit` non-alias buffers) and keeps the smallest arena."""
    if alignment < 1:
        raise ValueError(f"alignment must be at least 1, got {alignment}")
    unknown = set(strategies) - set(STRATEGIES)
    if unknown or not strategies:
        raise ValueError(f"strategies must be a non-empty subset of {STRATEGIES}, got {list(strategies)}")
    problem = _build(list(buffers), alignment)
    units = _max_merge(problem)
    results: dict[str, list[int]] = {}
    for name, strategy in _HEURISTICS.items():
        if name in strategies:
            results[name] = _expand(units, strategy(problem, units), len(problem.blocks))
    complete = False
    if "exact" in strategies and len(problem.blocks) <= exact_limit:
        start = results.get("greedy_by_size") or _expand(units, _greedy_by_size(problem, units), len(problem.blocks))
        results["exact"], complete = _exact(problem, start)
    if not results:  # only "exact" asked for, on too many buffers
        results["greedy_by_size"] = _expand(units, _greedy_by_size(problem, units), len(problem.blocks))
    arenas = {name: _verify(problem, offs, name, alignment) for name, offs in results.items()}
    winner = min(arenas, key=lambda name: (arenas[name], STRATEGIES.index(name)))
    arena, lb = arenas[winner], problem.lower_bound
    index = {b.name: i for i, b in enumerate(problem.blocks)}
    offsets = {b.name: results[winner][index[problem.root[b.name]]] for b in problem.buffers}
    return Plan(offsets, arena, lb, winner, arena / lb - 1 if lb else 0.0, arenas, arena == lb or complete)


def buffers_from_graph(graph: Graph, batch: int = 1) -> list[Buffer]:
    """One buffer per tensor of an IR `Graph` (graph inputs, then node outputs in node order).

    Step convention: node i (0-based, in `graph.nodes` order) runs at step i. A node output is live from
    the step of its node to the last step that reads it; graph inputs from step 0; graph outputs to
    step len(graph.nodes), one past the last node, because the caller reads them after the run. A
    tensor nobody reads is live on its own step only. `reshape` outputs alias their input; `relu` and
    `add` outputs may be written in place over an input that dies at that node.
    """
    end = len(graph.nodes)
    first: dict[str, int] = {t: 0 for t in graph.inputs}
    last: dict[str, int] = {}
    producer: dict[str, Node] = {}
    for i, node in enumerate(graph.nodes):
        for t in node.inputs:
            last[t] = i
        for t in node.outputs:
            first[t], producer[t] = i, node
    for t in graph.outputs:
        last[t] = end

    def size(t: str) -> int:
        spec = graph.tensors[t]
        return math.prod(spec.shape) * batch * spec.dtype.itemsize

    alias = {n.outputs[0]: n.inputs[0] for n in graph.nodes if get_op(n.op).view}
    root = {t: _follow(alias, t) for t in first}
    dies: dict[str, int] = {}  # memory owner -> the last step any view of it is read
    for t in first:
        dies[root[t]] = max(dies.get(root[t], -1), last.get(t, first[t]))
    out = []
    for t in first:
        node, inplace = producer.get(t), None
        if node is not None and get_op(node.op).inplace:
            inplace = _inplace_input(node.inputs, first[t], size(t), size, lambda x: dies[root[x]])
        out.append(Buffer(t, size(t), first[t], last.get(t, first[t]), alias.get(t), inplace))
    return out


def plan_graph(graph, batch: int = 1, **kw) -> Plan:
    """`plan` on the activation tensors of an IR `Graph` (see `buffers_from_graph`)."""
    return plan(buffers_from_graph(graph, batch), **kw)


def _follow(alias: dict[str, str], t: str) -> str:
    while t in alias:
        t = alias[t]
    return t


def _inplace_input(inputs: list[str], step: int, out_size: int, size: Callable[[str], int],
                   dies: Callable[[str], int]) -> str:
    """The input an element-wise output may overwrite: one that dies here and is large enough."""
    dying = [t for t in inputs if dies(t) == step]
    fits = [t for t in dying if size(t) >= out_size]
    return (fits or dying or inputs)[0]


# ---------------------------------------------------------------------------------------------------
# The problem: blocks, in-place pairs, lower bound


def _build(buffers: list[Buffer], alignment: int) -> _Problem:
    by_name: dict[str, Buffer] = {}
    for b in buffers:
        if b.name in by_name:
            raise ValueError(f"buffer {b.name!r} is listed twice")
        if b.size < 0 or b.first > b.last:
            raise ValueError(f"buffer {b.name!r}: needs size >= 0 and first <= last, got {b}")
        if b.alias_of is not None and b.inplace_of is not None:
            raise ValueError(f"buffer {b.name!r} cannot be both an alias and an in-place output")
        by_name[b.name] = b
    root = {b.name: _root(b.name, by_name) for b in buffers}
    for b in buffers:
        if b.alias_of is not None and b.size > by_name[b.alias_of].size:
            raise ValueError(f"alias {b.name!r} ({b.size} bytes) is larger than {b.alias_of!r}")
        if b.inplace_of is not None and b.inplace_of not in by_name:
            raise ValueError(f"buffer {b.name!r} is in place of unknown buffer {b.inplace_of!r}")
    span = {b.name: [b.first, b.last] for b in buffers if b.alias_of is None}
    for b in buffers:
        s = span[root[b.name]]
        s[0], s[1] = min(s[0], b.first), max(s[1], b.last)
    blocks = [_Block(n, -(-by_name[n].size // alignment) * alignment, f, la) for n, (f, la) in span.items()]
    pairs = _inplace_pairs(buffers, by_name, root, blocks)
    lb = max((live for _, live in _profile(blocks, pairs)), default=0)
    return _Problem(buffers, root, blocks, pairs, lb)


def _root(name: str, by_name: dict[str, Buffer]) -> str:
    seen = [name]
    while by_name[name].alias_of is not None:
        name = by_name[name].alias_of
        if name not in by_name:
            raise ValueError(f"buffer {seen[-1]!r} is an alias of unknown buffer {name!r}")
        if name in seen:
            raise ValueError(f"alias cycle: {' -> '.join(seen + [name])}")
        seen.append(name)
    return name


def _inplace_pairs(buffers, by_name, root, blocks) -> list[tuple[int, int]]:
    index = {b.name: i for i, b in enumerate(blocks)}
    pairs, has_child = [], set()
    for b in buffers:
        if b.inplace_of is None:
            continue
        c, p = index[b.name], index[root[b.inplace_of]]
        ok = (c != p and p not in has_child and blocks[p].last == b.first and blocks[c].first == b.first
              and b.size <= by_name[b.inplace_of].size)
        if ok:  # one child per parent: a second one would land on the first
            pairs.append((c, p))
            has_child.add(p)
    return pairs


def _profile(blocks: list[_Block], pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(step, live bytes) at every step where a block starts, which is where the peak is. A pair that
    shares memory counts once (the parent's size, the larger) at its hand-over step."""
    delta: dict[int, int] = defaultdict(int)
    for b in blocks:
        delta[b.first] += b.size
        delta[b.last + 1] -= b.size
    for c, _ in pairs:
        step, size = blocks[c].first, blocks[c].size
        delta[step] -= size
        delta[step + 1] += size
    starts = {b.first for b in blocks}
    out, live = [], 0
    for step in sorted(delta):
        live += delta[step]
        if step in starts:
            out.append((step, live))
    return out


# ---------------------------------------------------------------------------------------------------
# Units: in-place chains placed at one offset


def _merge(problem: _Problem, chosen: Sequence[tuple[int, int]]) -> list[list[int]] | None:
    """Units for these in-place pairs, or None if some unit would hold two blocks that are live together
    without being a chosen pair (a chain whose middle lives one step only)."""
    group = list(range(len(problem.blocks)))

    def find(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for c, p in chosen:
        group[find(c)] = find(p)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(problem.blocks)):
        members[find(i)].append(i)
    ok = set(chosen) | {(p, c) for c, p in chosen}
    for unit in members.values():
        for i, x in enumerate(unit):
            for y in unit[i + 1:]:
                if _live_together(problem.blocks[x], problem.blocks[y]) and (x, y) not in ok:
                    return None
    return sorted(members.values())


def _max_merge(problem: _Problem) -> list[list[int]]:
    """Units with every in-place pair that can be used, taken in order (the heuristics' configuration)."""
    chosen: list[tuple[int, int]] = []
    for pair in problem.pairs:
        if _merge(problem, chosen + [pair]) is not None:
            chosen.append(pair)
    units = _merge(problem, chosen)
    assert units is not None
    return units


def _live_together(a: _Block, b: _Block) -> bool:
    return a.first <= b.last and b.first <= a.last


def _expand(units: list[list[int]], unit_offsets: list[int], n_blocks: int) -> list[int]:
    offsets = [0] * n_blocks
    for unit, off in zip(units, unit_offsets, strict=True):
        for m in unit:
            offsets[m] = off
    return offsets


# ---------------------------------------------------------------------------------------------------
# Placement: where may a unit go, given the units already placed

# A constraint (s, lo, hi): a member of size s of the unit being placed is live together with a placed
# member occupying [lo, hi); offset o is allowed iff o + s <= lo or o >= hi.
Constraint = tuple[int, int, int]


def _fits(cons: list[Constraint], o: int) -> bool:
    return all(o + s <= lo or o >= hi for s, lo, hi in cons)


def _lowest(cons: list[Constraint], floor: int = 0) -> int:
    """The lowest allowed offset >= floor: floor itself or the end of some placed member (from any
    other offset the unit could slide down)."""
    for o in sorted({floor, *(hi for _, _, hi in cons if hi > floor)}):
        if _fits(cons, o):
            return o
    raise AssertionError("unreachable: above every placed member always fits")


def _highest(cons: list[Constraint], ext: int, arena: int) -> int | None:
    """The highest allowed offset that keeps the unit inside `arena`, or None."""
    for o in sorted({arena - ext, *(lo - s for s, lo, _ in cons)}, reverse=True):
        if 0 <= o <= arena - ext and _fits(cons, o):
            return o
    return None


def _best_fit(cons: list[Constraint]) -> int:
    """The allowed offset with the least room left above the unit (the tightest gap), lowest first."""
    def slack(o: int) -> float:
        return min((lo - o - s for s, lo, _ in cons if lo >= o + s), default=math.inf)

    return min((o for o in {0, *(hi for _, _, hi in cons)} if _fits(cons, o)), key=lambda o: (slack(o), o))


class _Layout:
    """Units placed so far."""

    def __init__(self, problem: _Problem, units: list[list[int]]):
        blocks = problem.blocks
        self.segs = [[blocks[m] for m in unit if blocks[m].size] for unit in units]
        self.ext = [max((b.size for b in seg), default=0) for seg in self.segs]
        self.span = [(min(blocks[m].first for m in u), max(blocks[m].last for m in u)) for u in units]
        self.offset: list[int] = [-1] * len(units)
        self.placed: list[int] = []

    def constraints(self, u: int) -> list[Constraint]:
        out = []
        uf, ul = self.span[u]
        for v in self.placed:
            if self.span[v][0] > ul or uf > self.span[v][1]:
                continue
            ov = self.offset[v]
            out += [(x.size, ov, ov + y.size) for y in self.segs[v] for x in self.segs[u] if _live_together(x, y)]
        return out

    def place(self, u: int, o: int) -> None:
        self.offset[u] = o if self.ext[u] else 0  # nothing to store: keep it out of the way
        self.placed.append(u)


# ---------------------------------------------------------------------------------------------------
# Strategies: each returns one offset per unit


def _greedy_by_size(problem: _Problem, units: list[list[int]]) -> list[int]:
    """Largest first, each at the lowest offset free over its lifetime (TFLite Micro's greedy)."""
    lay = _Layout(problem, units)
    for u in sorted(range(len(units)), key=lambda u: (-lay.ext[u], lay.span[u][0], u)):
        lay.place(u, _lowest(lay.constraints(u)))
    return lay.offset


def _greedy_by_breadth(problem: _Problem, units: list[list[int]]) -> list[int]:
    """Busiest steps first; at each, its unplaced units largest first, each into the tightest gap."""
    lay = _Layout(problem, units)
    merged = [(c, p) for c, p in problem.pairs if any(c in u and p in u for u in units)]
    todo = set(range(len(units)))
    for step, _ in sorted(_profile(problem.blocks, merged), key=lambda sl: (-sl[1], sl[0])):
        live = [u for u in todo if lay.span[u][0] <= step <= lay.span[u][1]]
        for u in sorted(live, key=lambda u: (-lay.ext[u], lay.span[u][0], u)):
            lay.place(u, _best_fit(lay.constraints(u)))
            todo.discard(u)
    return lay.offset


def _chain_alternate(problem: _Problem, units: list[list[int]]) -> list[int]:
    """In order of first use, alternately at the bottom and the top of a lower-bound-sized arena: in a
    chain each buffer then meets only its neighbours, which sit on the other side. Whatever does not fit
    goes to the lowest free offset (greedy), growing the arena."""
    lay = _Layout(problem, units)
    top = False
    for u in sorted(range(len(units)), key=lambda u: (lay.span[u], u)):
        cons = lay.constraints(u)
        o = _highest(cons, lay.ext[u], problem.lower_bound) if top else None
        lay.place(u, _lowest(cons) if o is None else o)
        top = not top
    return lay.offset


_HEURISTICS: dict[str, Callable[[_Problem, list[list[int]]], list[int]]] = {
    "greedy_by_size": _greedy_by_size,
    "greedy_by_breadth": _greedy_by_breadth,
    "chain_alternate": _chain_alternate,
}


def _exact(problem: _Problem, start: list[int]) -> tuple[list[int], bool]:
    """The smallest arena over every choice of in-place pairs to use, by branch and bound from the
    block offsets `start`; also whether the search finished (False: the node budget ran out and the
    result is only the best found)."""
    k = len(problem.pairs)
    best: float = max((o + b.size for o, b in zip(start, problem.blocks, strict=True)), default=0)
    best_offsets, budget, complete = start, [EXACT_NODE_BUDGET], True
    configurations = (c for r in range(k, -1, -1) for c in combinations(problem.pairs, r))  # most sharing first
    for chosen in configurations:
        if best <= problem.lower_bound:
            break
        if budget[0] <= 0:
            complete = False
            break
        budget[0] -= 1  # there are 2**k configurations: they count against the budget too
        units = _merge(problem, chosen)
        if units is None:
            continue
        bound = max((live for _, live in _profile(problem.blocks, chosen)), default=0)
        if bound >= best:
            continue
        arena, unit_offsets, done = _search(_Layout(problem, units), bound, best, budget)
        complete = complete and done
        if unit_offsets is not None:
            best, best_offsets = arena, _expand(units, unit_offsets, len(problem.blocks))
    return best_offsets, complete or best <= problem.lower_bound


def _search(lay: _Layout, bound: int, best: float, budget: list[int]) -> tuple[float, list[int] | None, bool]:
    """Branch and bound over placement orders; each unit goes to the lowest allowed offset at or above
    the previous unit's offset. Returns (best arena, unit offsets or None if none beat `best`, finished).

    Complete: place an optimal plan's units in order of offset, each at the lowest allowed offset at or
    above the previous one. Each lands at or below its optimal offset, and moving a unit down never
    collides with a unit above it that it did not already collide with, so that order reaches the
    optimum. Monotone offsets give the bound: every unplaced unit lies above the current floor, so at
    each step the arena holds at least floor + (what placed units live then have above the floor) +
    (the unplaced units live then). Also pruned by this configuration's lower bound; stops on reaching it.
    """
    n = len(lay.segs)
    steps = sorted({b.first for seg in lay.segs for b in seg})  # where a sum of live sizes peaks
    ext_at = [[max((b.size for b in seg if b.first <= t <= b.last), default=0) for t in steps] for seg in lay.segs]
    unplaced = [sum(col) for col in zip(*ext_at, strict=True)] if n else []
    order = sorted(range(n), key=lambda u: (-lay.ext[u], lay.span[u][0], u))  # large first: good plans early
    found: list[int] | None = None
    aborted = False

    def floor_bound(floor: int) -> int:
        top = 0
        for k, need in enumerate(unplaced):
            above = sum(max(0, lay.offset[v] + ext_at[v][k] - floor) for v in lay.placed if ext_at[v][k])
            top = max(top, floor + need + above)
        return top

    def dfs(floor: int, arena: int) -> None:
        nonlocal best, found, aborted
        if len(lay.placed) == n:
            best, found = arena, list(lay.offset)
            return
        if max(floor_bound(floor), bound) >= best:
            return
        for u in order:
            if lay.offset[u] >= 0:
                continue
            if budget[0] <= 0:
                aborted = True
                return
            budget[0] -= 1
            o = _lowest(lay.constraints(u), floor)
            reach = max(arena, o + lay.ext[u])
            if max(reach, bound) >= best:
                continue
            lay.place(u, o)
            for k, e in enumerate(ext_at[u]):
                unplaced[k] -= e
            dfs(o, reach)
            for k, e in enumerate(ext_at[u]):
                unplaced[k] += e
            lay.placed.pop()
            lay.offset[u] = -1
            if aborted or best <= bound:
                return

    dfs(0, 0)
    return best, found, not aborted


# ---------------------------------------------------------------------------------------------------
# Verification: a wrong plan is a bug here, never a result


def _verify(problem: _Problem, offsets: list[int], strategy: str, alignment: int) -> int:
    """Check the block offsets of one strategy; returns its arena size."""
    def fail(msg: str) -> RuntimeError:
        return RuntimeError(f"memory plan from {strategy!r} is invalid: {msg} (a bug in npukit.memplan)")

    blocks = problem.blocks
    shared = {(c, p) for c, p in problem.pairs} | {(p, c) for c, p in problem.pairs}
    for b, o in zip(blocks, offsets, strict=True):
        if o < 0 or o % alignment:
            raise fail(f"{b.name!r} at offset {o}")
    active: list[int] = []
    for i in sorted((i for i, b in enumerate(blocks) if b.size), key=lambda i: blocks[i].first):
        a = blocks[i]
        active = [j for j in active if blocks[j].last >= a.first]
        for j in active:
            b = blocks[j]
            if offsets[i] < offsets[j] + b.size and offsets[j] < offsets[i] + a.size:
                if not ((i, j) in shared and offsets[i] == offsets[j]):
                    raise fail(f"{a.name!r} [{offsets[i]}, +{a.size}) overlaps {b.name!r} [{offsets[j]}, +{b.size}) "
                               f"while both are live")
        active.append(i)
    return max((o + b.size for b, o in zip(blocks, offsets, strict=True)), default=0)

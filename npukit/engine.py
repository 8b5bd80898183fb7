"""The integer reference engine: runs an IR graph on integer inputs with numpy.

Every op's kernel lives in its op file (`npukit.ops`); this module only walks the graph, checks what
comes in, and frees tensors when their last reader is done. `run_reference` walks it op by op through
each op's `run`; `run` uses a `Plan` compiled once per graph from the ops' `compile` kernels where they
have one (the same integers, faster), kept with the graph and recompiled when the graph is edited.
"""

from __future__ import annotations

import copy
import operator
import threading
from collections.abc import Iterator

import numpy as np

from .errors import NpukitError
from .ir import Graph
from .ops import get_op
from .ops.base import carried_order


def run(graph: Graph, *inputs: np.ndarray, trace: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Run the graph on integer inputs (batch first); returns the integer outputs in graph order.

    `trace`, a dict, receives every tensor of the run (inputs included), for per-layer dumps: that walks
    the graph op by op with each op's reference `run`. Without it the graph runs as a `Plan`, compiled on
    the first call and kept with the graph; the plan checks on every call that the graph is still the one
    it compiled (structure, attributes, tensor specs, parameter bytes) and compiles again if not.
    """
    if trace is not None:
        return run_reference(graph, *inputs, trace=trace)
    plan = graph.__dict__.get(_PLAN_ATTR)
    if plan is None or not plan.matches(graph):
        plan = Plan(graph)
        graph.__dict__[_PLAN_ATTR] = plan
    return plan.run(*inputs)


def run_reference(graph: Graph, *inputs: np.ndarray, trace: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """`run` op by op through each op's reference kernel (`OpDef.run`), the definition `Plan` must match."""
    if len(inputs) != len(graph.inputs):
        raise NpukitError(f"the graph takes {len(graph.inputs)} input(s), got {len(inputs)}")
    env = {name: run_checked_input(graph, name, x) for name, x in zip(graph.inputs, inputs, strict=True)}
    if trace is not None:
        trace.update(env)
    last_use = _last_uses(graph)
    for i, node in enumerate(graph.nodes):
        outs = get_op(node.op).run(node, [env[t] for t in node.inputs], graph)
        env.update(zip(node.outputs, outs, strict=True))
        if trace is not None:
            trace.update(zip(node.outputs, outs, strict=True))
        for t in last_use.get(i, ()):
            env.pop(t, None)
    return [env[t] for t in graph.outputs]


_PLAN_ATTR = "_npukit_engine_plan"  # where `run` keeps a graph's compiled plan (not a dataclass field)


class Plan:
    """A graph prepared for repeated runs: `Plan(graph).run(*inputs)` gives exactly `run_reference`'s
    integers, with the per-node work done once (weights as scaled float matrices with the requantisation
    folded in, window geometry, each tensor's last reader) and the tensors between compiled kernels kept
    in the *carried* form (`OpDef.compile`): batch first, channels last, in the GEMM's float carrier, so
    one layer's output feeds the next with no transpose and no cast. Ops without a compiled kernel run
    their reference `run` on the usual batch-first integer arrays; the plan converts at the boundaries.

    A plan is a snapshot: it runs the graph as it was when compiled, and `matches(graph)` says whether the
    graph still is that graph (`run` asks on every call). Any batch size; the kernels' buffers are kept
    for the last few batch sizes (`KEEP_BATCH_SIZES`, at most `KEEP_BYTES` each). Runs in several threads
    at once are safe: a run takes its buffers out of the plan and puts them back when done.
    """

    KEEP_BATCH_SIZES = 4
    KEEP_BYTES = 256 << 20

    def __init__(self, graph: Graph):
        self.graph = graph
        self._inputs = []
        for name in graph.inputs:
            spec = graph.tensors[name]
            self._inputs.append((name, spec, -(1 << (spec.bits - 1)), (1 << (spec.bits - 1)) - 1, tuple(spec.shape),
                                 spec.dtype))
        last_use = _last_uses(graph)
        to_carried = {t: carried_order(1 + len(spec.shape)) for t, spec in graph.tensors.items()}
        to_std = {t: (tuple(np.argsort(order)), graph.tensors[t].dtype) for t, order in to_carried.items()}
        carried: set[str] = set()  # tensors held in the carried form (outputs of compiled kernels)
        compiled: list[bool] = []
        readers: dict[str, int] = {}
        for node in graph.nodes:
            for t in node.inputs:
                readers[t] = readers.get(t, 0) + 1
        steps: list[tuple] = []  # (kernels run in a chain, inputs, conversions, outputs, tensors dropped after)
        nodes, i = graph.nodes, 0
        while i < len(nodes):
            node, after = nodes[i], nodes[i + 1] if i + 1 < len(nodes) else None
            kernel = None
            if after is not None and _only_reader(graph, node, after, readers):
                # the pair fused (`OpDef.compile_after`): `node`'s output never exists
                kernel = get_op(after.op).compile_after(node, after, graph)
            span = [node, after] if kernel is not None else [node]
            if kernel is None:
                op = get_op(node.op)
                kernel = op.compile(node, graph)
            compiled.extend([kernel is not None] * len(span))
            ins, outs = tuple(node.inputs), tuple(span[-1].outputs)
            if kernel is None:  # the reference kernel, on batch-first integers
                def kernel(inputs, scratch, node=node, op=op):
                    return op.run(node, inputs, graph)
                convert = [(t, _to_std, to_std[t]) if t in carried else (t, None, None) for t in ins]
            else:
                convert = [(t, None, None) if t in carried else (t, _to_carried, to_carried[t]) for t in ins]
                carried.update(outs)
            if all(f is None for _, f, _ in convert):
                convert = None  # the common case, without a per-input test
            inside = set(node.outputs) if len(span) > 1 else set()
            drop = tuple(t for j in range(i, i + len(span)) for t in last_use.get(j, ()) if t not in inside)
            i += len(span)
            prev = steps[-1] if steps else None
            if (convert is None and prev is not None and len(prev[3]) == 1 and ins == prev[3]
                    and readers[prev[3][0]] == 1 and prev[3][0] not in graph.outputs):
                # a chain: the one reader of the previous step's output runs right after it, in the same step,
                # and that output never enters the environment
                prev[0].append(kernel)
                steps[-1] = (prev[0], prev[1], prev[2], outs, prev[4] + tuple(t for t in drop if t != prev[3][0]))
            else:
                steps.append(([kernel], ins, convert, outs, drop))
        self._steps = [(_chained(kernels), *rest) for kernels, *rest in steps]
        self._outputs = [(t, to_std[t] if t in carried else None) for t in graph.outputs]
        self._snapshot = _snapshot(graph, compiled)
        self._scratch: dict[tuple[int, ...], list[dict]] = {}  # batch sizes -> each step's buffers
        self._lock = threading.Lock()

    def __deepcopy__(self, memo):
        return None  # a deep copy of a graph compiles its own plan (`run` finds None: no plan yet)

    def __reduce__(self):
        return _no_plan, ()  # pickled, likewise: buffers, a lock and compiled kernels are not data

    def matches(self, graph: Graph) -> bool:
        """Whether `graph` is still exactly the graph this plan was compiled from."""
        return graph is self.graph and _same(graph, self._snapshot)

    def run(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """The integer outputs (batch first, in graph order) for integer inputs (batch first)."""
        if len(inputs) != len(self._inputs):
            raise NpukitError(f"the graph takes {len(self._inputs)} input(s), got {len(inputs)}")
        env = {name: _checked_input(name, spec, lo, hi, x, shape, dtype)
               for (name, spec, lo, hi, shape, dtype), x in zip(self._inputs, inputs, strict=True)}
        key = tuple(map(len, env.values()))
        with self._lock:
            scratch = self._scratch.pop(key, None)
        fresh = scratch is None
        if fresh:
            scratch = [{} for _ in self._steps]
        for (kernel, ins, convert, outputs, drop), mine in zip(self._steps, scratch, strict=True):
            if convert is None:
                outs = kernel([env[t] for t in ins], mine)
            else:
                outs = kernel([env[t] if f is None else f(env[t], how) for t, f, how in convert], mine)
            env.update(zip(outputs, outs, strict=True))
            for t in drop:
                del env[t]
        # carried outputs may live in the kernels' buffers: always hand out copies in the spec's type
        result = [env[t] if dt is None else _to_std(env[t], dt) for t, dt in self._outputs]
        if not fresh or _nbytes(scratch) <= self.KEEP_BYTES:
            with self._lock:
                self._scratch[key] = scratch
                while len(self._scratch) > self.KEEP_BATCH_SIZES:
                    del self._scratch[next(iter(self._scratch))]
        return result


def _only_reader(graph: Graph, node, after, readers: dict[str, int]) -> bool:
    """Whether `after` reads `node`'s one output and nothing else, and nothing else reads it: the pair may
    run as one kernel."""
    return (len(node.outputs) == 1 and list(after.inputs) == list(node.outputs) and readers[node.outputs[0]] == 1
            and node.outputs[0] not in graph.outputs)


def _no_plan() -> None:
    return None


def _chained(kernels: list):
    """One kernel running `kernels` in turn, each on the previous one's outputs, each with its own scratch;
    a kernel with `into` followed by one with an `inlet` writes its output straight into that buffer
    (`OpDef.compile`), which the next kernel then reads with no copy."""
    if len(kernels) == 1:
        return kernels[0]
    # for each kernel: (how it runs, the next kernel's inlet where it writes there)
    steps = [(a.into, b.inlet) if hasattr(a, "into") and hasattr(b, "inlet") else (a, None)
             for a, b in zip(kernels, [*kernels[1:], None], strict=True)]

    def run(inputs, scratch):
        subs = scratch.get("chain")
        if subs is None:
            subs = scratch["chain"] = [{} for _ in kernels]
        for i, (kernel, inlet) in enumerate(steps):
            if inlet is None:
                inputs = kernel(inputs, subs[i])
            else:
                inputs = kernel(inputs, subs[i], inlet(subs[i + 1], len(inputs[0])))
        return inputs

    return run


def _to_carried(x: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    return x.transpose(order)  # a view


def _to_std(x: np.ndarray, how: tuple) -> np.ndarray:
    """A carried array back to batch first, as a new C-ordered array of the tensor's integer type."""
    order, dtype = how
    return x.transpose(order).astype(dtype, order="C")


def _nbytes(scratch: list[dict]) -> int:
    """Bytes of the arrays the kernels keep (each owner once, however many views of it they hold)."""
    owners: dict[int, int] = {}
    todo: list = [v for d in scratch for v in d.values()]
    while todo:
        v = todo.pop()
        if isinstance(v, tuple | list):
            todo.extend(v)
        elif isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, np.ndarray):
            while isinstance(v.base, np.ndarray):
                v = v.base
            owners[id(v)] = v.nbytes
    return sum(owners.values())


_SPEC = operator.attrgetter("name", "shape", "bits", "exp")
_NODE = operator.attrgetter("op", "inputs", "outputs")


def _snapshot(graph: Graph, compiled: list[bool]) -> tuple:
    """What a plan depends on, for `_same`: the graph's structure and tensor specs (the steps, conversions
    and buffers), and for each compiled node its attributes, parameter bytes and the scheme (folded into
    its kernel); the objects themselves and copies of their values. Nodes that run their reference `run`
    read the live graph on every call."""
    specs, nodes = list(graph.tensors.values()), list(graph.nodes)
    mac = [n for n, c in zip(nodes, compiled, strict=True) if c]
    arrays = [v for n in mac for v in n.params.values()]
    return (list(graph.inputs), list(graph.outputs), graph.target.get("scheme") if mac else None,
            list(graph.tensors), specs, copy.deepcopy([_SPEC(t) for t in specs]),
            nodes, copy.deepcopy([_NODE(n) for n in nodes]),
            mac, copy.deepcopy([n.attrs for n in mac]), [list(n.params) for n in mac],
            arrays, [(a.dtype, a.shape, a.tobytes()) for a in arrays])


def _same(graph: Graph, snap: tuple) -> bool:
    """Whether the graph still is the snapshot's: the same objects holding the same values."""
    inputs, outputs, scheme, names, specs, spec_values, nodes, node_values, mac, attrs, keys, arrays, data = snap
    if graph.inputs != inputs or graph.outputs != outputs:
        return False
    if scheme is not None and graph.target.get("scheme") != scheme:
        return False
    tensors = graph.tensors  # equal key lists first: the identity checks below then pair up
    if list(tensors) != names or not all(map(operator.is_, tensors.values(), specs)):
        return False
    if list(map(_SPEC, specs)) != spec_values:
        return False
    if len(graph.nodes) != len(nodes) or not all(map(operator.is_, graph.nodes, nodes)):
        return False
    if list(map(_NODE, nodes)) != node_values or [n.attrs for n in mac] != attrs or [list(n.params) for n in mac] != keys:
        return False
    if not all(map(operator.is_, [v for n in mac for v in n.params.values()], arrays)):
        return False
    return [(a.dtype, a.shape, a.tobytes()) for a in arrays] == data


_IINFO: dict[np.dtype, np.iinfo] = {}


def _checked_input(name: str, spec, lo: int, hi: int, x, shape: tuple[int, ...] | None = None,
                   dtype: np.dtype | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.shape[1:] != (shape or tuple(spec.shape)):
        raise NpukitError(f"input {name!r} has shape {x.shape[1:]} per sample; the model expects {tuple(spec.shape)}")
    if x.dtype.kind not in "iu":
        raise NpukitError(f"input {name!r} must be integers (use graph.quantize_input on float data), got {x.dtype}")
    info = _IINFO.get(x.dtype)
    if info is None:
        info = _IINFO[x.dtype] = np.iinfo(x.dtype)
    if (info.min < lo or info.max > hi) and x.size and (x.min() < lo or x.max() > hi):
        raise NpukitError(f"input {name!r} holds values outside the {spec.bits}-bit range [{lo}, {hi}]")
    return x.astype(spec.dtype if dtype is None else dtype, copy=False)


def run_in_arena(graph: Graph, offsets: dict[str, int], arena_bytes: int, *inputs: np.ndarray) -> list[np.ndarray]:
    """Run with every tensor stored in one byte arena at its planned offset, as the chip would.

    Takes one integer batch per graph input (in graph order) and returns every output, like `run`.
    Offsets are per sample; a batch of n scales the arena and every offset by n. A plan that lets two
    live tensors overlap corrupts one of them, and the outputs differ from `run`: this is how the
    memory plan is checked end to end.
    """
    if len(inputs) != len(graph.inputs):
        raise NpukitError(f"the graph takes {len(graph.inputs)} input(s), got {len(inputs)}")
    checked = [run_checked_input(graph, name, x) for name, x in zip(graph.inputs, inputs, strict=True)]
    n = len(checked[0])
    if any(len(x) != n for x in checked):
        raise NpukitError(f"the inputs hold {[len(x) for x in checked]} samples; give every input the same batch")
    arena = np.zeros(arena_bytes * n, np.uint8)

    def view(t: str) -> np.ndarray:
        spec = graph.tensors[t]
        count = n * int(np.prod(spec.shape, dtype=np.int64))
        start = offsets[t] * n
        return arena[start : start + count * spec.dtype.itemsize].view(spec.dtype).reshape(n, *spec.shape)

    for name, x in zip(graph.inputs, checked, strict=True):
        view(name)[...] = x
    for node in graph.nodes:
        outs = get_op(node.op).run(node, [view(t).copy() for t in node.inputs], graph)
        for t, value in zip(node.outputs, outs, strict=True):
            view(t)[...] = value
    return [view(t).copy() for t in graph.outputs]


def run_batches(graph: Graph, x: np.ndarray, batch_size: int = 1024) -> Iterator[np.ndarray]:
    """First output of the graph, a batch at a time (bounded memory on large data sets)."""
    for i in range(0, len(x), batch_size):
        yield run(graph, x[i : i + batch_size])[0]


def run_checked_input(graph: Graph, name: str, x) -> np.ndarray:
    """An input array checked against its spec (shape, integer type, range) and cast to its dtype."""
    spec = graph.tensors[name]
    lo, hi = -(1 << (spec.bits - 1)), (1 << (spec.bits - 1)) - 1
    return _checked_input(name, spec, lo, hi, x)


def _last_uses(graph: Graph) -> dict[int, list[str]]:
    keep = set(graph.outputs)
    last: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for t in node.inputs:
            last[t] = i
    out: dict[int, list[str]] = {}
    for t, i in last.items():
        if t not in keep:
            out.setdefault(i, []).append(t)
    return out

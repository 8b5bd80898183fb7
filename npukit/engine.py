"""The integer reference engine: runs an IR graph on integer inputs with numpy.

Every op's kernel lives in its op file (`npukit.ops`); this module only walks the graph, checks what
comes in, and frees tensors when their last reader is done.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .errors import NpukitError
from .ir import Graph
from .ops import get_op


def run(graph: Graph, *inputs: np.ndarray, trace: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Run the graph on integer inputs (batch first); returns the integer outputs in graph order.

    `trace`, a dict, receives every tensor of the run (inputs included), for per-layer dumps.
    """
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
    x = np.asarray(x)
    if x.shape[1:] != tuple(spec.shape):
        raise NpukitError(f"input {name!r} has shape {x.shape[1:]} per sample; the model expects {tuple(spec.shape)}")
    if x.dtype.kind not in "iu":
        raise NpukitError(f"input {name!r} must be integers (use graph.quantize_input on float data), got {x.dtype}")
    lo, hi = -(1 << (spec.bits - 1)), (1 << (spec.bits - 1)) - 1
    if x.size and (x.min() < lo or x.max() > hi):
        raise NpukitError(f"input {name!r} holds values outside the {spec.bits}-bit range [{lo}, {hi}]")
    return x.astype(spec.dtype, copy=False)


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

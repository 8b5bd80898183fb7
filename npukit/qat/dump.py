"""QAT eval as a per-layer dump (npukit/dump.py), with the source line of each layer in the user's code."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx

from ..dump import Dump, from_graph_values
from .capture import input_modules, input_tensor_name
from .convert import to_ir
from .fakequant import QModule


def dump_qat(qmodel: fx.GraphModule, x) -> Dump:
    """Every layer's output of the QAT model in eval mode on the float batch `x` (a tuple of batches, one
    per input, for a model with several), as integers (q = value * 2**exp is exact: every QAT output lies
    on its grid)."""
    graph = to_ir(qmodel)
    inputs = {name for name, _ in input_modules(qmodel)}
    xs = tuple(x) if len(inputs) > 1 else (x,)
    modules = {name: m for name, m in qmodel.named_modules() if isinstance(m, QModule)}
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=name: seen.__setitem__(n, out.detach()))
             for name, m in modules.items()]
    unrolled = {name: m for name, m in modules.items() if hasattr(m, "trace")}  # layers of many IR nodes
    for m in unrolled.values():
        m.trace = {}
    was_training = qmodel.training
    qmodel.eval()
    try:
        with torch.no_grad():
            qmodel(*(torch.as_tensor(np.asarray(v), dtype=torch.float32) for v in xs))
    finally:
        for h in hooks:
            h.remove()
        qmodel.train(was_training)
        traces = {name: m.__dict__.pop("trace") for name, m in unrolled.items()}
        for m in unrolled.values():
            m.trace = None
    for name, trace in traces.items():
        seen.update({f"{name}.{tag}" if tag else name: v for tag, (v, _) in trace.items()})
    values, sources = {}, {}
    for name, out in seen.items():
        tensor = input_tensor_name(name) if name in inputs else name
        if tensor not in graph.tensors:
            continue  # a sub-module of an unrolled layer: its tensors came from the layer's trace
        values[tensor] = np.rint(out.cpu().double().numpy() * 2.0 ** graph.tensors[tensor].exp)
        if getattr(modules.get(name), "source", ""):
            sources[tensor] = modules[name].source
    return from_graph_values(graph, values, "qat", sources)

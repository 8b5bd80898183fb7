"""QAT model -> IR: integer weights, exponents and shapes, read from the modules' own eval arithmetic."""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from .. import arith
from ..errors import NpukitError
from ..ir import Graph, TensorSpec
from .capture import input_modules, input_tensor_name
from .fakequant import QModule


def to_ir(qmodel: fx.GraphModule) -> Graph:
    """The integer graph a prepared (and trained) QAT model computes in eval mode."""
    modules = dict(qmodel.named_modules())
    qins = dict(input_modules(qmodel))
    if not qins:
        raise NpukitError("this is not a model returned by npukit.prepare (it has no input quantizer)")
    qin = next(iter(qins.values()))
    qmodel = qmodel.cpu()
    was_training = qmodel.training
    qmodel.eval()
    try:
        with torch.no_grad():  # shapes only; eval mode leaves every exponent as it is
            ShapeProp(qmodel).propagate(*(torch.zeros(1, *q.shape) for q in qins.values()))
        tensors: dict[str, TensorSpec] = {}
        nodes = []
        values: dict[fx.Node, str] = {}  # qmodel node -> IR tensor name
        outputs: list[str] = []
        for n in qmodel.graph.nodes:
            if n.op == "call_module" and n.target in qins:  # graph inputs in forward()'s order
                q, name = qins[n.target], input_tensor_name(n.target)
                tensors[name] = TensorSpec(name, tuple(q.shape), q.act_bits, int(q.out_exp))
                values[n] = name
            elif n.op == "call_module":
                mod = modules[n.target]
                if not isinstance(mod, QModule):
                    raise NpukitError(f"{n.target}: {type(mod).__name__} is not an npukit QAT module")
                ins = [tensors[values[a]] for a in n.args[0]]
                made = mod.to_ir(n.target, ins, tuple(n.meta["tensor_meta"].shape[1:]))
                for node, spec in made if isinstance(made, list) else [made]:  # a list: a layer of several ops
                    nodes.append(node)
                    tensors[spec.name] = spec
                values[n] = spec.name
            elif n.op == "output":
                fx.node.map_arg(n.args[0], lambda a: outputs.append(values[a]))
    finally:
        qmodel.train(was_training)
    graph = Graph(dict(qin.profile_dict), [input_tensor_name(k) for k in qins], outputs, tensors, nodes)
    graph.validate()
    return graph


def quantize_input(model: fx.GraphModule | Graph, x, i: int = 0) -> np.ndarray:
    """Float inputs (batch first) of input `i` -> the integers the chip receives, from a QAT model or an IR graph.

    Both use `arith.quantize` on float64 values at the model's input exponent, so they give the same bits.
    """
    if isinstance(model, Graph):
        return model.quantize_input(x, i)
    qins = input_modules(model)
    if not qins:
        raise NpukitError("this is not a model returned by npukit.prepare (it has no input quantizer)")
    if not 0 <= i < len(qins):
        raise NpukitError(f"input {i}: the model has {len(qins)} input(s)")
    qin = qins[i][1]
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    q = arith.quantize(x, int(qin.out_exp), qin.act_bits, qin.rounding)
    return q.astype(np.int8 if qin.act_bits <= 8 else np.int16)


def dequantize_output(graph: Graph, q, i: int = 0) -> np.ndarray:
    """Integer outputs of output `i` -> real values (q * 2**-exp)."""
    return graph.dequantize_output(q, i)

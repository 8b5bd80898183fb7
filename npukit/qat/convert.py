"""QAT model -> IR: integer weights, exponents and shapes, read from the modules' own eval arithmetic."""

from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import NpukitError
from ..ir import Graph, TensorSpec
from .capture import INPUT_MODULE
from .fakequant import QModule


def to_ir(qmodel: fx.GraphModule) -> Graph:
    """The integer graph a prepared (and trained) QAT model computes in eval mode."""
    modules = dict(qmodel.named_modules())
    qin = modules.get(INPUT_MODULE)
    if qin is None:
        raise NpukitError("this is not a model returned by npukit.prepare (it has no input quantizer)")
    qmodel = qmodel.cpu()
    was_training = qmodel.training
    qmodel.eval()
    try:
        with torch.no_grad():  # shapes only; eval mode leaves every exponent as it is
            ShapeProp(qmodel).propagate(torch.zeros(1, *qin.shape))
        tensors: dict[str, TensorSpec] = {}
        nodes = []
        values: dict[fx.Node, str] = {}  # qmodel node -> IR tensor name
        outputs: list[str] = []
        for n in qmodel.graph.nodes:
            if n.op == "call_module" and n.target == INPUT_MODULE:
                tensors["input"] = TensorSpec("input", tuple(qin.shape), qin.act_bits, int(qin.out_exp))
                values[n] = "input"
            elif n.op == "call_module":
                mod = modules[n.target]
                if not isinstance(mod, QModule):
                    raise NpukitError(f"{n.target}: {type(mod).__name__} is not an npukit QAT module")
                ins = [tensors[values[a]] for a in n.args[0]]
                node, spec = mod.to_ir(n.target, ins, tuple(n.meta["tensor_meta"].shape[1:]))
                nodes.append(node)
                tensors[spec.name] = spec
                values[n] = spec.name
            elif n.op == "output":
                fx.node.map_arg(n.args[0], lambda a: outputs.append(values[a]))
    finally:
        qmodel.train(was_training)
    graph = Graph(dict(qin.profile_dict), ["input"], outputs, tensors, nodes)
    graph.validate()
    return graph

"""QAT module and capture of `lut` (torch side of npukit/ops/lut.py): sigmoid, tanh, hardswish, SiLU, GELU,
ELU, LeakyReLU and their functional spellings, computed through the same table the chip reads."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UnsupportedError
from ..ir import Node
from ..ops.lut import MAX_LUT_INPUT_BITS, lut_table, parse_fn
from .base import Captured, OpCapture, node_name
from .fakequant import ObservedQModule, ste

# The smooth function each table stands for: the forward's straight-through surrogate (its gradient).
_TORCH = {
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "tanh": lambda x, a: torch.tanh(x),
    "hardsigmoid": lambda x, a: F.hardsigmoid(x),
    "hardswish": lambda x, a: F.hardswish(x),
    "silu": lambda x, a: F.silu(x),
    "gelu": lambda x, a: F.gelu(x),
    "gelu_tanh": lambda x, a: F.gelu(x, approximate="tanh"),
    "elu": lambda x, a: F.elu(x, 1.0 if a is None else a),
    "leaky_relu": lambda x, a: F.leaky_relu(x, 0.01 if a is None else a),
    "exp": lambda x, a: torch.exp(x),
}


class QLut(ObservedQModule):
    op = "lut"

    def __init__(self, profile, fn: str):
        super().__init__(profile)
        self.fn = fn
        self._tables: dict[tuple[int, int], torch.Tensor] = {}  # (e_in, e_out) -> table, rebuilt on demand

    def table(self, e_in: int, e_out: int) -> torch.Tensor:
        key = (e_in, e_out)
        if key not in self._tables:
            self._tables = {key: torch.from_numpy(lut_table(self.fn, self.act_bits, e_in, self.act_bits, e_out,
                                                            self.rounding).astype(np.float64))}
        return self._tables[key]

    def float_forward(self, xs):
        name, arg = parse_fn(self.fn)
        return _TORCH[name](xs[0], arg)

    def forward(self, xs, exps):
        x, e_in = xs[0], int(exps[0])
        smooth = self.float_forward([x])
        e_out = self.observe(lambda: smooth, self.act_bits)
        self.out_exp.fill_(e_out)
        index = torch.round(x.detach().to(torch.float64) * 2.0**e_in).long() + (1 << (self.act_bits - 1))
        exact = self.table(e_in, e_out).to(x.device)[index] * 2.0**-e_out  # the integers the chip looks up
        return ste(smooth.to(torch.float64), exact).float()

    def to_ir(self, name, inputs, out_shape):
        table = lut_table(self.fn, inputs[0].bits, inputs[0].exp, self.act_bits, int(self.out_exp), self.rounding)
        node = Node(name, self.op, [inputs[0].name], [name], {"fn": self.fn}, {"table": table})
        return node, self._out_spec(name, inputs, out_shape)


_MODULES = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardsigmoid: "hardsigmoid", nn.Hardswish: "hardswish",
            nn.SiLU: "silu"}
_FUNCTIONS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
              F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish", F.silu: "silu", F.gelu: "gelu",
              F.elu: "elu", F.leaky_relu: "leaky_relu", torch.exp: "exp"}
_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh", "exp": "exp"}


def _fn_of(node, ctx) -> str | None:
    """The table function a traced node computes ('leaky_relu:0.2'), or None."""
    mod = ctx.module(node)
    if mod is not None:
        if type(mod) in _MODULES:
            return _MODULES[type(mod)]
        if isinstance(mod, nn.GELU):
            return "gelu_tanh" if mod.approximate == "tanh" else "gelu"
        if isinstance(mod, nn.LeakyReLU):
            return f"leaky_relu:{mod.negative_slope!r}"
        if isinstance(mod, nn.ELU):
            return f"elu:{mod.alpha!r}"
        return None
    if node.op == "call_function" and node.target in _FUNCTIONS:
        name = _FUNCTIONS[node.target]

        def arg(key: str, default):  # the second argument as written (fx cannot normalize torch.tanh & co.)
            return node.kwargs.get(key, node.args[1] if len(node.args) > 1 else default)

        if name == "gelu":
            return "gelu_tanh" if arg("approximate", "none") == "tanh" else "gelu"
        if name == "leaky_relu":
            return f"leaky_relu:{float(arg('negative_slope', 0.01))!r}"
        if name == "elu":
            return f"elu:{float(arg('alpha', 1.0))!r}"
        return name
    if node.op == "call_method" and node.target in _METHODS:
        return _METHODS[node.target]
    return None


class LutCapture(OpCapture):
    op = "lut"

    def matches(self, node, ctx):
        return _fn_of(node, ctx) is not None

    def capture(self, node, ctx):
        if ctx.profile.activation_bits > MAX_LUT_INPUT_BITS:
            raise UnsupportedError(f"a table function needs inputs of at most {MAX_LUT_INPUT_BITS} bits; "
                                   f"{ctx.profile.name} has {ctx.profile.activation_bits}-bit activations",
                                   "use a ReLU instead")
        return Captured(QLut(ctx.profile, _fn_of(node, ctx)), node_name(node), [node.args[0]], node)

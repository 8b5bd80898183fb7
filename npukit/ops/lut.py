"""Element-wise functions of one 8-bit input by lookup table: sigmoid, tanh, hardswish, SiLU, GELU, ...

The table is the function itself, evaluated offline at every input integer: entry i holds
quantize(f((i - 2**(B-1)) * 2**-e_in), e_out), with the target's rounding and saturation (`lut_table`).
QAT builds the same table from the same code for its forward pass and stores it in the node, so the
engine, ONNX (Gather), model.bin and C (`nk_lut`) read one array: equal by construction, whatever the
platform's `exp` or `tanh` would round to.
"""

from __future__ import annotations

import math

import numpy as np

from .. import arith
from ..errors import NpukitError
from .base import OpDef

MAX_LUT_INPUT_BITS = 8  # 256 entries: tables grow as 2**bits

_SQRT2 = math.sqrt(2.0)
_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|, unlike 1 / (1 + exp(-x))


# name -> f(x, arg) on float64 arrays; `arg` is the number after a colon in the node's `fn` ("leaky_relu:0.1").
FUNCTIONS = {
    "sigmoid": lambda x, a: _sigmoid(x),
    "tanh": lambda x, a: np.tanh(x),
    "hardsigmoid": lambda x, a: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "hardswish": lambda x, a: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "silu": lambda x, a: x * _sigmoid(x),
    "gelu": lambda x, a: 0.5 * x * (1.0 + _ERF(x / _SQRT2)),
    "gelu_tanh": lambda x, a: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "elu": lambda x, a: np.where(x > 0, x, (1.0 if a is None else a) * np.expm1(np.minimum(x, 0.0))),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, (0.01 if a is None else a) * x),
    "exp": lambda x, a: np.exp(np.minimum(x, 80.0)),  # the numerator of a softmax; saturates on the grid anyway
}


def parse_fn(fn: str) -> tuple[str, float | None]:
    """'leaky_relu:0.2' -> ('leaky_relu', 0.2); 'tanh' -> ('tanh', None)."""
    name, _, arg = fn.partition(":")
    if name not in FUNCTIONS:
        raise NpukitError(f"unknown table function {fn!r}; known: {', '.join(FUNCTIONS)}")
    try:
        return name, (float(arg) if arg else None)
    except ValueError:
        raise NpukitError(f"table function {fn!r}: the part after ':' must be a number") from None


def lut_table(fn: str, in_bits: int, e_in: int, out_bits: int, e_out: int, rounding: str) -> np.ndarray:
    """The table of `fn` from `in_bits`-bit inputs at exponent `e_in` to `out_bits`-bit outputs at `e_out`:
    entry i is the output for input integer i - 2**(in_bits-1)."""
    if not 1 <= in_bits <= MAX_LUT_INPUT_BITS:
        raise NpukitError(f"a table function reads inputs of at most {MAX_LUT_INPUT_BITS} bits, not {in_bits}")
    name, arg = parse_fn(fn)
    lo, hi = arith.int_range(in_bits)
    x = np.arange(lo, hi + 1, dtype=np.float64) * 2.0**-e_in
    y = FUNCTIONS[name](x, arg)
    q = arith.quantize(y, e_out, out_bits, rounding)
    return q.astype(np.int8 if out_bits <= 8 else np.int16)


class Lut(OpDef):
    name = "lut"
    attrs = {"fn": "str"}
    params = ("table",)

    def infer_shapes(self, node, in_shapes):
        return [tuple(in_shapes[0])]

    def tensor_problems(self, node, graph, scheme):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        problems = []
        if x.bits > MAX_LUT_INPUT_BITS:
            problems.append(f"input {x.name!r} is {x.bits}-bit; a table covers at most {MAX_LUT_INPUT_BITS}-bit inputs")
        elif node.params["table"].shape != (1 << x.bits,):
            problems.append(f"table has shape {node.params['table'].shape}; a {x.bits}-bit input needs "
                            f"{1 << x.bits} entries")
        lo, hi = arith.int_range(out.bits)
        t = node.params["table"]
        if t.size and (int(t.min()) < lo or int(t.max()) > hi):
            problems.append(f"table values exceed the {out.bits}-bit output {out.name!r}")
        return problems

    def run(self, node, inputs, graph):
        x = graph.tensors[node.inputs[0]]
        out = graph.tensors[node.outputs[0]]
        return [node.params["table"][inputs[0].astype(np.int64) + (1 << (x.bits - 1))].astype(out.dtype)]

    def rules(self, node, graph, profile):
        from ..rules import lut_rules

        return lut_rules(node, graph, profile)

    def to_onnx(self, node, inputs, b):
        from onnx import TensorProto

        offset = 1 << (b.graph.tensors[node.inputs[0]].bits - 1)
        index = b.op("Cast", [b.op("Add", [inputs[0], b.const(float(offset))])], to=TensorProto.INT64)
        return b.op("Gather", [b.const(node.params["table"].astype(np.float64), what="table"), index], axis=0)

    def to_c(self, node, b):
        x = b.graph.tensors[node.inputs[0]]
        if b.graph.tensors[node.outputs[0]].bits > 8:
            raise NpukitError(f"{node.name}: the C table kernel writes 8-bit outputs")
        table = b.array(node, "table", "int8_t")
        n = int(np.prod(x.shape))
        p = b.struct("nk_lut_params", f"{b.ident(node.name)}_p", {"n": n, "offset": 1 << (x.bits - 1)})
        return [f"nk_lut({p}, {b.ptr(node.inputs[0])}, {table}, {b.ptr(node.outputs[0])});"]

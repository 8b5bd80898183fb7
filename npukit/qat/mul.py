"""QAT module and capture of `mul` (torch side of npukit/ops/mul.py): x * y of two activations, the second
broadcast over trailing dimensions (a squeeze-excite gate)."""

from __future__ import annotations

import operator

import torch

from .. import arith
from ..errors import UnsupportedError
from ..ops.mul import broadcast_split
from .add import QEltwise
from .base import Captured, OpCapture, is_call, node_name, tensor_operands
from .fakequant import ste


class QMul(QEltwise):
    op = "mul"

    def float_forward(self, xs):
        y = xs[0] * xs[1]
        return y.clamp(min=0) if self.relu else y

    def forward(self, xs, exps):
        (a, b), (ea, eb) = xs, (int(e) for e in exps)
        real = a.to(torch.float64) * b.to(torch.float64)
        e_out = self.observe(lambda: real, self.act_bits, positive=self.relu)
        self.out_exp.fill_(e_out)
        prod = (a.detach().to(torch.float64) * 2.0**ea) * (b.detach().to(torch.float64) * 2.0**eb)  # exact
        lo, hi = arith.act_range(self.act_bits, self.relu)
        q = arith.saturate(arith.round_shift(prod, ea + eb - e_out, self.rounding), lo, hi)
        return ste(real, q * 2.0**-e_out).float()



class MulCapture(OpCapture):
    op = "mul"

    def matches(self, node, ctx):
        return is_call(node, (operator.mul, operator.imul, torch.mul), ("mul", "mul_")) and len(node.args) == 2

    def capture(self, node, ctx):
        a, b = tensor_operands(node, "multiplying by a constant is not supported",
                               "fold the constant into the previous layer's weights")
        sa, sb = ctx.shape(a)[1:], ctx.shape(b)[1:]
        if broadcast_split(sb, sa) is not None and broadcast_split(sa, sb) is None:
            a, b, sa, sb = b, a, sb, sa  # the full-size operand first
        if broadcast_split(sa, sb) is None:
            raise UnsupportedError(f"operands have shapes {sa} and {sb}; the smaller may only have size 1 in "
                                   "trailing dimensions", "make the gate (C, 1, 1) for a (C, H, W) input, or "
                                   "the same shape")
        relu, last, absorbed = ctx.fuse_relu(node)
        return Captured(QMul(ctx.profile, relu), node_name(node), [a, b], last, absorbed)

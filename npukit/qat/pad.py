"""QAT module and capture of `pad` (torch side of npukit/ops/pad.py): F.pad / nn.ConstantPad / nn.ZeroPad of
the spatial axes with zeros, and the padding npukit puts before a layer whose own padding is one-sided."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .. import arith
from ..errors import UnsupportedError
from ..ir import Node
from .base import Captured, OpCapture, node_name
from .fakequant import QModule

_MODULES = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ZeroPad1d, nn.ZeroPad2d)


class QPad(QModule):
    """`pads` in the IR's order (starts of the spatial axes, then ends); `fill`: 'zero', or 'min' (the integer
    type's smallest, before a max pool: it never wins, as each window keeps an input)."""

    op = "pad"
    keeps_exp = True

    def __init__(self, profile, pads: list[int], fill: str = "zero"):
        super().__init__(profile)
        self.pads, self.fill = list(pads), fill

    def _torch_pads(self) -> list[int]:
        n = len(self.pads) // 2  # F.pad wants (last axis start, end, the one before start, end)
        return [p for i in reversed(range(n)) for p in (self.pads[i], self.pads[n + i])]

    def forward(self, xs, exps):
        # 'min': the grid's smallest value, the integer the chip pads with (a max pool never picks it over an input)
        value = 0.0 if self.fill == "zero" else arith.int_range(self.act_bits)[0] * 2.0 ** -int(exps[0])
        return F.pad(xs[0], self._torch_pads(), value=value)

    def float_forward(self, xs):
        return F.pad(xs[0], self._torch_pads(), value=0.0 if self.fill == "zero" else float("-inf"))

    def to_ir(self, name, inputs, out_shape):
        value = 0 if self.fill == "zero" else arith.int_range(inputs[0].bits)[0]
        node = Node(name, self.op, [inputs[0].name], [name], {"pads": self.pads, "value": value})
        return node, self._out_spec(name, inputs, out_shape)


def ir_pads(torch_pads, spatial: int) -> list[int]:
    """F.pad's (last start, last end, previous start, previous end) -> the IR's (starts..., ends...); None when
    it pads more axes than the spatial ones."""
    pads = list(torch_pads) + [0] * (2 * spatial - len(torch_pads))
    if len(pads) != 2 * spatial:
        return None
    starts = [pads[2 * (spatial - 1 - i)] for i in range(spatial)]
    ends = [pads[2 * (spatial - 1 - i) + 1] for i in range(spatial)]
    return starts + ends


class PadCapture(OpCapture):
    op = "pad"

    def matches(self, node, ctx):
        return isinstance(ctx.module(node), _MODULES) or (node.op == "call_function" and node.target is F.pad)

    def capture(self, node, ctx):
        mod = ctx.module(node)
        if mod is not None:
            pads, mode, value = mod.padding, "constant", float(getattr(mod, "value", 0.0))
        else:
            kw = ctx.kwargs(node)
            pads, mode, value = kw["pad"], kw.get("mode", "constant"), kw.get("value") or 0.0
        spatial = len(ctx.shape(node.args[0])) - 2
        if mode != "constant" or value != 0:
            raise UnsupportedError(f"padding in mode {mode!r} with value {value}", "pad with zeros (mode "
                                   "'constant', value 0), or give the next conv its own padding")
        found = ir_pads(pads, spatial) if spatial in (1, 2) else None
        if found is None or min(found) < 0:
            raise UnsupportedError(f"padding {tuple(pads)} of a {spatial + 2}-d tensor", "pad the spatial axes only, "
                                   "by non-negative amounts")
        return Captured(QPad(ctx.profile, found), node_name(node), [node.args[0]], node)

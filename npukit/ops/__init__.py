"""The op set: an explicit, ordered list (no registration by import). `get_op(name)` finds one.

Adding an op: write its file here (every deploy-side facet), its QAT module and capture in
`npukit/qat/`, and list it below and in `npukit.qat.capture.CAPTURES`.
"""

from __future__ import annotations

from ..errors import NpukitError
from .add import Add
from .base import OpDef
from .concat import Concat
from .conv_transpose import ConvTranspose
from .lut import Lut
from .mac import Conv, Linear
from .mul import Mul
from .pad import Pad
from .pool import AvgPool, GlobalAvgPool, MaxPool
from .relu import ReLU
from .reshape import Reshape
from .slice import Slice
from .upsample import Upsample

OPS: tuple[OpDef, ...] = (Conv(), Linear(), MaxPool(), AvgPool(), GlobalAvgPool(), Add(), Concat(), ReLU(), Reshape(),
                          Lut(), Mul(), Upsample(), Slice(), ConvTranspose(), Pad())
_BY_NAME = {op.name: op for op in OPS}


def get_op(name: str) -> OpDef:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise NpukitError(f"unknown op {name!r}; known ops: {', '.join(sorted(_BY_NAME))}") from None


def all_ops() -> list[OpDef]:
    return list(OPS)


__all__ = ["OPS", "OpDef", "all_ops", "get_op"]

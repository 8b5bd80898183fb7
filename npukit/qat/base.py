"""What capture asks of each op on the torch side: does a traced node start it, and what replaces it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch.fx as fx

    from .capture import CaptureContext
    from .fakequant import QModule


@dataclass
class Captured:
    """What an op made of a traced node: the QAT module and the traced nodes it stands for."""

    module: QModule
    name: str  # IR node name and state_dict prefix: the PyTorch module path, or the function's node name
    inputs: list[fx.Node]  # traced nodes whose values feed it
    last: fx.Node  # the traced node whose value its output replaces
    absorbed: list[fx.Node] = field(default_factory=list)  # fused nodes (BN, ReLU) after the first
    aliases: list[fx.Node] = field(default_factory=list)  # absorbed nodes whose value is also the output's
    before: list[tuple[str, QModule]] = field(default_factory=list)  # (name, module) applied to the first input


class ModuleCapture:
    """Mixin of an OpCapture that starts at instances of `modules` (nn.Conv1d, ...)."""

    modules: ClassVar[tuple[type, ...]] = ()

    def matches(self, node: fx.Node, ctx: CaptureContext) -> bool:
        return isinstance(ctx.module(node), self.modules)


def node_name(node: fx.Node) -> str:
    """A traced node's stable name: the module path for modules, the fx node name for functions."""
    return str(node.target) if node.op == "call_module" else node.name


class OpCapture:
    """The torch side of one IR op (`op` names it in `npukit.ops`)."""

    op: ClassVar[str]

    def matches(self, node: fx.Node, ctx: CaptureContext) -> bool:
        return False

    def capture(self, node: fx.Node, ctx: CaptureContext) -> Captured:
        raise NotImplementedError


def is_call(node: fx.Node, functions: tuple, methods: tuple[str, ...]) -> bool:
    """Whether the traced node calls one of `functions` or one of the tensor `methods`."""
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def is_getitem(node: fx.Node) -> bool:
    """`value[index]` in the traced code (an item of a tuple result, or indexing a tensor)."""
    import operator

    return node.op == "call_function" and node.target is operator.getitem


def tensor_operands(node: fx.Node, constant: str, fix: str) -> tuple[fx.Node, fx.Node]:
    """The two operands of a binary element-wise call; `constant` (the message) and `fix` when one is not a
    tensor the model computes."""
    from ..errors import UnsupportedError

    a, b = node.args
    if not all(hasattr(v, "meta") and "tensor_meta" in v.meta for v in (a, b)):
        raise UnsupportedError(constant, fix)
    return a, b

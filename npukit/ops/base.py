"""What an op is: the facets every stage asks of it, and the registry that finds it.

Each op file defines one `OpDef` subclass (IR side: shapes, integer kernel, MACs) and, beside it, the
QAT torch module it is captured into. Later stages add their facets (rules, ONNX mapping, C call) to
the same class, so adding an op touches one file plus its tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import NpukitError

if TYPE_CHECKING:
    import torch.fx as fx

    from ..codegen import CBuilder
    from ..ir import Graph, Node
    from ..onnx_io import OnnxBuilder
    from ..qat.capture import CaptureContext
    from ..qat.fakequant import QModule

_REGISTRY: dict[str, OpDef] = {}


@dataclass
class Captured:
    """What an op made of a traced node: the QAT module and the traced nodes it stands for."""

    module: QModule
    name: str  # IR node name and state_dict prefix: the PyTorch module path, or the function's node name
    inputs: list[fx.Node]  # traced nodes whose values feed it
    last: fx.Node  # the traced node whose value its output replaces
    absorbed: list[fx.Node] = field(default_factory=list)  # fused nodes (BN, ReLU) after the first


def node_name(node: fx.Node) -> str:
    """A traced node's stable name: the module path for modules, the fx node name for functions."""
    return str(node.target) if node.op == "call_module" else node.name


def register(cls: type[OpDef]) -> type[OpDef]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"op {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise NpukitError(f"unknown op {name!r}; known ops: {', '.join(sorted(_REGISTRY))}") from None


def all_ops() -> list[OpDef]:
    return list(_REGISTRY.values())


class OpDef:
    name: ClassVar[str]

    # Capture (torch side): does this fx node start this op, and what QAT module replaces it.
    def matches(self, node: fx.Node, ctx: CaptureContext) -> bool:
        return False

    def capture(self, node: fx.Node, ctx: CaptureContext) -> Captured:
        raise NotImplementedError

    # IR side.
    def infer_shapes(self, node: Node, in_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def run(self, node: Node, inputs: list[np.ndarray], graph: Graph) -> list[np.ndarray]:
        """The integer reference kernel: integer arrays (batch first) in, integer arrays out."""
        raise NotImplementedError

    def macs(self, node: Node, graph: Graph) -> int:
        """Multiply-accumulates per sample (0 for data movement)."""
        return 0

    # ONNX export: standard operators that compute `run` exactly (see npukit/onnx_io.py).
    def to_onnx(self, node: Node, inputs: list[str], b: OnnxBuilder) -> str:
        """Emit nodes reading integer-valued double tensors `inputs`; return the output tensor's name."""
        raise NotImplementedError(f"op {self.name!r} has no ONNX mapping")

    # C code generation: the kernel call with every parameter computed offline (npukit/codegen).
    def to_c(self, node: Node, b: CBuilder) -> list[str]:
        """C statements for one sample; tensors are `b.ptr(name)` in the planned arena."""
        raise NotImplementedError(f"op {self.name!r} has no C kernel")

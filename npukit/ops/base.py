"""What an op is: every fact the deploy side asks of it, in one class per op.

Each op file defines `OpDef` subclasses with all their facets: the attribute schema (model.bin and
`Graph.validate` read it from here), planner flags (a view aliases its input, an in-place op may write
over it), shape inference, the integer kernel, MACs, the target rules, the ONNX mapping and the C call.
Nothing here needs torch or onnx: the QAT module and the capture of each op live on the torch side
(`npukit.qat`), and ONNX is imported only inside `to_onnx`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..codegen import CBuilder
    from ..errors import Problem
    from ..ir import Graph, Node
    from ..onnx_io import OnnxBuilder
    from ..targets import TargetProfile

MAX_ELTWISE_BITS = 16  # add and concat write activations, never accumulators
MAX_MAC_INPUT_BITS = 16  # the MAC kernels read 8- or 16-bit activations

# A compiled kernel (`OpDef.compile`): (input arrays in carried form, scratch) -> output arrays in carried form.
Kernel = Callable[[list[np.ndarray], dict], list[np.ndarray]]

# `OpDef.compile_untailed`: (kernel giving the carried values before the requantisation's rounding and clip,
# that tail ((array, out=None) -> the values rounded and clipped, in place or written into `out`), whether
# the tail is monotonic). The values kernel may have `into(inputs, scratch, out)`: the values computed in
# `out` where it can put them there (else in its own buffers), returned.
Untailed = tuple[Kernel, Callable[..., np.ndarray], bool]


def with_tail(parts: Untailed | None) -> Kernel | None:
    """A compiled kernel from `compile_untailed`'s parts: the values, then the tail on them; with `into`
    (the tail writing the next kernel's `inlet`) and the values kernel's own `inlet`, if it has one."""
    if parts is None:
        return None
    raw, tail, _ = parts

    def kernel(inputs, scratch):
        return [tail(raw(inputs, scratch)[0])]

    # the values kernel's own `into` (the values in `out`, or in its own buffers where it cannot), the tail
    # then in place or from its buffers into `out`
    values = getattr(raw, "into", None) or (lambda inputs, scratch, out: raw(inputs, scratch)[0])
    kernel.into = lambda inputs, scratch, out: [tail(values(inputs, scratch, out), out)]
    if hasattr(raw, "inlet"):
        kernel.inlet = raw.inlet
    return kernel


# Attribute kinds of the schema: what model.bin stores and reads back, and what validation checks.
ATTR_KINDS = ("bool", "int", "int list", "str")


class OpDef:
    name: ClassVar[str]
    # key -> kind ("bool", "int", "int list", "str"); every key is required.
    attrs: ClassVar[dict[str, str]] = {}
    # key -> smallest allowed value (for ints and every element of int lists): what shapes alone miss.
    attr_min: ClassVar[dict[str, int]] = {}
    # Parameter arrays the op needs (their names). A scheme may add its own (per-channel requantisation).
    params: ClassVar[tuple[str, ...]] = ()
    view: ClassVar[bool] = False  # the output is its input's bytes reinterpreted (the planner aliases it)
    inplace: ClassVar[bool] = False  # the kernel may write its output over an input of the same size
    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # (fewest, most) inputs; every op writes one output
    passes_through: ClassVar[bool] = False  # the output has its input's bit width and exponent

    def infer_shapes(self, node: Node, in_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def check_node(self, node: Node) -> str | None:
        """The first reason the kernel could not run this node (attributes, params), if any."""
        for key, kind in self.attrs.items():
            if key not in node.attrs:
                return f"lacks attribute {key!r}"
            if attr_kind(node.attrs[key]) != kind:
                return f"attribute {key!r} is {attr_kind(node.attrs[key])}, not {kind}"
            v = node.attrs[key]
            low = self.attr_min.get(key)
            if low is not None and min(v if isinstance(v, list) else [v], default=low) < low:
                return f"attribute {key!r} is {v}; it must be at least {low}"
        missing = sorted(set(self.params) - set(node.params))
        if missing:
            return f"lacks params {missing} (has {sorted(node.params)})"
        return None

    def tensor_problems(self, node: Node, graph: Graph, scheme) -> list[str]:
        """What the kernel assumes of its tensors' bit widths and exponents beyond the attribute schema
        (`Graph.validate` asks): the engine and the C kernels write the output at its spec's dtype, so a
        width or exponent that disagrees with the arithmetic would give other integers, not an error."""
        if not self.passes_through:
            return []
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        problems = []
        if x.bits != out.bits:
            problems.append(f"output {out.name!r} is {out.bits}-bit but input {x.name!r} is {x.bits}-bit; "
                            f"{self.name} writes its input's values at its input's width")
        if x.exp != out.exp:
            problems.append(f"output {out.name!r} has exponent {out.exp} but input {x.name!r} has {x.exp}; "
                            f"{self.name} passes the exponent through")
        return problems

    def run(self, node: Node, inputs: list[np.ndarray], graph: Graph) -> list[np.ndarray]:
        """The integer reference kernel: integer arrays (batch first) in, integer arrays out."""
        raise NotImplementedError

    def compile(self, node: Node, graph: Graph) -> Kernel | None:
        """An optional faster form of `run` for `npukit.engine.Plan`, with everything that depends only on
        the node precomputed; None (the default): the plan calls `run`.

        A kernel takes and returns arrays in the plan's *carried* form: batch first and the channel axis
        last, (batch, *spatial, channels) (`carried_order`), holding the tensor's integers exactly in any
        numeric dtype (an integer type, or float32/float64 below their exact limits), so that a GEMM's
        output feeds the next layer with no transpose and no cast. It must give the same integers as `run`.

        `scratch` is a dict the kernel owns for one batch size: buffers kept there are reused by the
        plan's next run at that batch size (fresh multi-megabyte arrays cost page faults on every call),
        so what the kernel returns may live there; the plan never lets such an array escape a run.

        Two optional attributes of a kernel save a copy between two kernels run in turn (`engine.Plan`'s
        chains): `inlet(scratch, n)`, the array (in `scratch`) into which the kernel would copy its first
        input for a batch of n (it skips the copy when handed that very array), and `into(inputs,
        scratch, out)`, the kernel writing its one output into `out` (of the output's shape, any strides
        and float type) and returning [out]. `with_tail` gives both where the parts have them.
        """
        return None

    def compile_after(self, prev: Node, node: Node, graph: Graph) -> Kernel | None:
        """An optional kernel for `prev` and then this node fused, where this node is the one reader of
        `prev`'s one output and reads nothing else (the plan asks before compiling either): e.g. a max
        pooling or a ReLU before the conv's requantisation, a flatten folded into the linear's weights.
        Same contract as `compile`; None (the default): each compiles on its own."""
        return None

    def compile_untailed(self, node: Node, graph: Graph, relu: bool = False) -> Untailed | None:
        """For ops that requantise (conv, linear): `compile` split in two for `compile_after`, or None (the
        default). `relu`: the tail of this node followed by a ReLU."""
        return None

    def macs(self, node: Node, graph: Graph) -> int:
        """Multiply-accumulates per sample (0 for data movement)."""
        return 0

    def rules(self, node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
        """Every way this node breaks the target's rules (see npukit/rules.py for the helpers)."""
        return []

    # ONNX export: standard operators that compute `run` exactly (see npukit/onnx_io.py).
    def to_onnx(self, node: Node, inputs: list[str], b: OnnxBuilder) -> str:
        """Emit nodes reading integer-valued double tensors `inputs`; return the output tensor's name."""
        raise NotImplementedError(f"op {self.name!r} has no ONNX mapping")

    # C code generation: the kernel call with every parameter computed offline (npukit/codegen).
    def to_c(self, node: Node, b: CBuilder) -> list[str]:
        """C statements for one sample; tensors are `b.ptr(name)` in the planned arena."""
        raise NotImplementedError(f"op {self.name!r} has no C kernel")


def carried_order(ndim: int) -> tuple[int, ...]:
    """The axis order of the carried form of a batch-first (batch, channels, *spatial) array of `ndim`
    axes: (batch, *spatial, channels). Its inverse: `np.argsort` of it."""
    return (0, *range(2, ndim), 1)


def pad_spatial(x: np.ndarray, padding, value=0, end=None) -> np.ndarray:
    """`x` (batch, channels, *spatial) with `padding[i]` copies of `value` before spatial axis i and as many
    after it, or `end[i]` after it when given (one-sided padding). One fill and one copy: np.pad's general
    machinery costs more than the copy on small tensors."""
    end = padding if end is None else end
    if not any(padding) and not any(end):
        return x
    shape = (n + a + b for n, a, b in zip(x.shape[2:], padding, end, strict=True))
    out = np.full((*x.shape[:2], *shape), value, x.dtype)
    out[(slice(None), slice(None), *(slice(p, p + n) for n, p in zip(x.shape[2:], padding, strict=True)))] = x
    return out


def is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def attr_kind(v) -> str:
    if isinstance(v, bool | np.bool_):
        return "bool"
    if is_int(v):
        return "int"
    if isinstance(v, list) and all(is_int(x) for x in v):
        return "int list"
    if isinstance(v, str):
        return "str"
    return type(v).__name__

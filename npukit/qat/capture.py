"""Capture: trace a float model with torch.fx and rebuild it from QAT modules, one per IR op.

Every traced node either becomes a QAT module, is fused into one (BatchNorm, ReLU), is pure plumbing
(dropout, identity, shape arithmetic), or is reported. Nothing is silently left in float: all unsupported
nodes are collected and raised together, each with its source line and a fix.
"""

from __future__ import annotations

import contextlib
import copy
import io

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ..errors import NpukitError, Problem, ProblemsError
from ..schemes import get_scheme
from ..targets import TargetProfile, load_target
from .add import AddCapture
from .base import OpCapture, is_getitem, node_name
from .calibrate import calibrate
from .concat import ConcatCapture
from .fakequant import ExpGroup, ObservedQModule
from .input import QInput
from .lut import LutCapture
from .mac import BatchNormCapture, ConvCapture, ConvTransposeCapture, LinearCapture
from .mul import MulCapture
from .pad import PadCapture
from .pool import AvgPoolCapture, GlobalAvgPoolCapture, MaxPoolCapture
from .recurrent import RecurrentCapture, absorbed_swap
from .relu import ReLUCapture
from .reshape import ReshapeCapture
from .slice import SliceCapture, is_split
from .upsample import UpsampleCapture

INPUT_MODULE = "npukit_input"  # the input quantizer of a one-input model (checkpoints name it)


def input_module_names(n: int) -> list[str]:
    """The QAT modules that quantize a model's `n` inputs: `npukit_input` for one (as checkpoints of
    one-input models have always named it), `npukit_input0`, `npukit_input1`, ... for several."""
    return [INPUT_MODULE] if n == 1 else [f"{INPUT_MODULE}{k}" for k in range(n)]


def input_tensor_name(module_name: str) -> str:
    """The IR tensor of an input quantizer: `input` for one input, `input0`, `input1`, ... for several."""
    return module_name.removeprefix("npukit_")


def input_modules(qmodel: nn.Module) -> list[tuple[str, QInput]]:
    """A prepared model's input quantizers, (name, module), in the order of forward()'s arguments."""
    modules = dict(qmodel.named_modules())
    graph = getattr(qmodel, "graph", None)
    names = [n.target for n in graph.nodes if n.op == "call_module" and isinstance(modules.get(n.target), QInput)] \
        if graph is not None else []
    return [(name, modules[name]) for name in names]


def as_inputs(example_input, what: str = "example_input") -> tuple[torch.Tensor, ...]:
    """One example tensor, or a tuple/list of them (one per forward() argument), as a tuple of tensors."""
    xs = tuple(example_input) if isinstance(example_input, list | tuple) else (example_input,)
    if not xs or not all(isinstance(x, torch.Tensor) and x.dim() >= 2 for x in xs):
        raise NpukitError(f"{what} must be a tensor with a batch dimension first, e.g. torch.randn(8, 1, 40), or a "
                          "tuple of such tensors, one per argument of forward()")
    if len({len(x) for x in xs}) > 1:
        raise NpukitError(f"{what}: the inputs have batches of {[len(x) for x in xs]} samples; give every input "
                          "the same batch size")
    return xs


SLICE_CAPTURE = SliceCapture()

# Tried in this order on every traced node; the first whose `matches` says yes captures it.
CAPTURES: tuple[OpCapture, ...] = (ConvCapture(), ConvTransposeCapture(), LinearCapture(), BatchNormCapture(), MaxPoolCapture(), AvgPoolCapture(),
                                   GlobalAvgPoolCapture(), AddCapture(), ConcatCapture(), ReLUCapture(),
                                   ReshapeCapture(), LutCapture(), MulCapture(),
                                   UpsampleCapture(), SLICE_CAPTURE, RecurrentCapture(), PadCapture())

_PASSTHROUGH_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_PASSTHROUGH_FUNCTIONS = (F.dropout, F.dropout1d, F.dropout2d, torch.Tensor.contiguous)
_PASSTHROUGH_METHODS = ("contiguous", "clone", "detach")
_RELU_FUNCTIONS = (F.relu, torch.relu, torch.relu_)
_RELU_METHODS = ("relu", "relu_")


class CaptureContext:
    """What op capture functions may ask about the traced model."""

    def __init__(self, gm: fx.GraphModule, profile: TargetProfile, weight_bits: int, wide_output: bool,
                 layer_bits: dict[str, int] | None = None, weight_exp: str | float = "auto"):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.profile = profile
        self.weight_bits = weight_bits
        self.layer_bits = layer_bits or {}  # layer name -> weight bits, where a policy sets them
        self.weight_exp = weight_exp  # 'max', or the quantile of |w| the weight exponent fits
        self.wide_output = wide_output
        self.output_nodes = self._graph_outputs()

    def _graph_outputs(self) -> set[fx.Node]:
        out = next(n for n in self.gm.graph.nodes if n.op == "output")
        found: list[fx.Node] = []
        fx.node.map_arg(out.args, found.append)
        return set(found)

    def weight_bits_for(self, name: str) -> int:
        return self.layer_bits.get(name, self.weight_bits)

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(node.meta["tensor_meta"].shape)

    def kwargs(self, node: fx.Node) -> dict:
        """A call's arguments by name, defaults filled in (for functional spellings)."""
        norm = node.normalized_arguments(self.gm, normalize_to_only_use_kwargs=True)
        if norm is None:
            raise NpukitError(f"cannot read the arguments of {node.name}")
        return dict(norm.kwargs)

    def sole_user(self, node: fx.Node) -> fx.Node | None:
        """The one node that reads `node`, looking through pass-through nodes (Identity, Dropout) between
        them, so that a BatchNorm or ReLU behind an nn.Identity still fuses."""
        while True:
            users = list(node.users)
            if len(users) != 1 or node in self.output_nodes:
                return None
            if not _is_passthrough(users[0], self):
                return users[0]
            node = users[0]

    def is_relu(self, node: fx.Node | None) -> bool:
        if node is None:
            return False
        if node.op == "call_module":
            return isinstance(self.module(node), nn.ReLU)
        if node.op == "call_function":
            return node.target in _RELU_FUNCTIONS
        return node.op == "call_method" and node.target in _RELU_METHODS

    def fuse_bn(self, node: fx.Node) -> tuple[nn.Module | None, fx.Node, list[fx.Node]]:
        """Absorb a BatchNorm that is `node`'s only user: (the BatchNorm or None, last node, absorbed nodes)."""
        user = self.sole_user(node)
        bn = self.module(user) if user is not None else None
        if isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
            return bn, user, [user]
        return None, node, []

    def fuse_relu(self, node: fx.Node) -> tuple[bool, fx.Node, list[fx.Node]]:
        """Absorb a ReLU that is `node`'s only user: (relu?, last node, absorbed nodes)."""
        user = self.sole_user(node)
        if self.is_relu(user):
            return True, user, [user]
        return False, node, []

    def fuse_abs(self, node: fx.Node) -> tuple[bool, fx.Node, list[fx.Node]]:
        """Absorb an abs (torch.abs, x.abs()) that is `node`'s only user: (abs?, last node, absorbed nodes)."""
        user = self.sole_user(node)
        if user is not None and ((user.op == "call_function" and user.target is torch.abs)
                                 or (user.op == "call_method" and user.target == "abs")):
            return True, user, [user]
        return False, node, []

    def fuse_clamp(self, node: fx.Node) -> tuple[tuple[float, float] | None, fx.Node, list[fx.Node]]:
        """Absorb a ReLU6, Hardtanh or clamp with constant bounds that is `node`'s only user:
        ((lo, hi) or None, last node, absorbed nodes)."""
        user = self.sole_user(node)
        bounds = self.clamp_bounds(user) if user is not None else None
        return (bounds, user, [user]) if bounds is not None else (None, node, [])

    def clamp_bounds(self, node: fx.Node) -> tuple[float, float] | None:
        inf = float("inf")
        mod = self.module(node)
        if isinstance(mod, nn.ReLU6):
            return 0.0, 6.0
        if isinstance(mod, nn.Hardtanh):
            return float(mod.min_val), float(mod.max_val)
        if node.op == "call_function" and node.target in (F.relu6,):
            return 0.0, 6.0
        if (node.op == "call_function" and node.target in (F.hardtanh, torch.clamp, torch.clip)) or \
                (node.op == "call_method" and node.target in ("clamp", "clip")):
            args, kw = list(node.args[1:]), node.kwargs  # read as written: clamp's schemas are ambiguous to fx
            names, default = (("min_val", "max_val"), (-1.0, 1.0)) if node.target is F.hardtanh else \
                (("min", "max"), (None, None))
            lo, hi = (kw.get(n, args[i] if len(args) > i else d)
                      for i, (n, d) in enumerate(zip(names, default, strict=True)))
            if not all(v is None or isinstance(v, int | float) for v in (lo, hi)):
                return None  # tensor bounds: not a constant clamp
            return (-inf if lo is None else float(lo)), (inf if hi is None else float(hi))
        return None

    def is_graph_output(self, node: fx.Node) -> bool:
        return node in self.output_nodes

    @staticmethod
    def source(node: fx.Node) -> str:
        """file:line of the user's code that produced the node (torch frames skipped)."""
        trace = node.meta.get("stack_trace") or ""
        for line in trace.splitlines():
            line = line.strip()
            if line.startswith("File ") and "/torch/" not in line:
                parts = line.split('"')
                lineno = line.split("line ")[-1].split(",")[0] if "line " in line else "?"
                return f"{parts[1]}:{lineno}" if len(parts) > 1 else line
        return ""


def _describe(node: fx.Node, ctx: CaptureContext) -> str:
    mod = ctx.module(node)
    if mod is not None:
        return f"module {type(mod).__name__}"
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    if node.op == "get_attr":
        return f"parameter/buffer access {node.target}"
    name = getattr(node.target, "__name__", str(node.target))
    mod_name = getattr(node.target, "__module__", "") or ""
    return f"function {mod_name + '.' if mod_name else ''}{name}"


def _fix_for(node: fx.Node, ctx: CaptureContext) -> str:
    text = _describe(node, ctx)
    if "conv" in text.lower() and node.op != "call_module":
        return "use an nn.Conv1d / nn.Conv2d module instead of the functional call, so its weights can be quantized"
    if "linear" in text.lower() and node.op != "call_module":
        return "use an nn.Linear module instead of the functional call"
    if node.op == "get_attr":
        return "keep weights inside supported modules (nn.Conv*, nn.Linear)"
    return "replace it with a supported op (see docs/architecture.md), or compute it outside the model"


def _is_shape_node(node: fx.Node) -> bool:
    """size()/shape arithmetic: not tensor data, consumed by view/reshape only."""
    return node.op not in ("placeholder", "output") and "tensor_meta" not in node.meta


def _is_item_of_failed(node: fx.Node, env: dict) -> bool:
    """A getitem (or an item of one) on a multi-output layer that could not be captured."""
    while is_getitem(node) and isinstance(node.args[0], fx.Node):
        node = node.args[0]
        if node not in env and not isinstance(node.meta.get("tensor_meta"), TensorMetadata):
            return True
    return False


def _is_passthrough(node: fx.Node, ctx: CaptureContext) -> bool:
    if node.op == "call_module":
        return isinstance(ctx.module(node), _PASSTHROUGH_MODULES)
    if node.op == "call_function":
        return node.target in _PASSTHROUGH_FUNCTIONS
    return node.op == "call_method" and node.target in _PASSTHROUGH_METHODS


def prepare(model: nn.Module, example_input: torch.Tensor, target="venus", *, weight_bits: int | None = None,
            wide_output: bool | None = None, rules: str = "error", layer_bits: dict[str, int] | None = None,
            weight_exp: str | float = "auto") -> fx.GraphModule:
    """Turn a float model into a QAT model that computes exactly the target's integer arithmetic.

    `example_input` is a batch (batch dimension first) used to trace shapes and to initialise the
    activation ranges; for a model whose forward() takes several tensors, a tuple of batches, one per
    argument in order (each input gets its own quantizer and exponent). BatchNorm is folded with its
    running statistics, so train the float model first.
    Raises `ProblemsError` listing every node that cannot be quantized and every rule of the target the
    model breaks (the same list as `npukit check`); `rules="warn"` only warns about the rules (e.g. to
    study a model before reshaping it for the chip), `rules="off"` skips them.
    """
    if rules not in ("error", "warn", "off"):
        raise NpukitError(f"rules={rules!r}; use 'error', 'warn' or 'off'")
    qmodel, problems, profile = capture(model, example_input, target, weight_bits=weight_bits,
                                        wide_output=wide_output, lenient=False, layer_bits=layer_bits,
                                        weight_exp=weight_exp)
    if rules != "off":
        problems = rule_problems(qmodel, profile)
        errors = [p for p in problems if p.severity == "error"]
        if errors and rules == "error":
            raise ProblemsError(f"{type(model).__name__} breaks the rules of {profile.name}", problems)
        if problems:
            import warnings

            warnings.warn(ProblemsError(f"{type(model).__name__} on {profile.name}", problems).args[0], stacklevel=2)
    return qmodel


def rule_problems(qmodel: fx.GraphModule, profile: TargetProfile) -> list[Problem]:
    """The target's rules on a captured model (npukit/rules.py), with the user's source lines."""
    from ..rules import check_graph
    from .convert import to_ir

    sources = {name: m.source for name, m in qmodel.named_modules() if getattr(m, "source", "")}
    return check_graph(to_ir(qmodel), profile, sources=sources) + _clamp_problems(qmodel)


def _clamp_problems(qmodel: fx.GraphModule) -> list[Problem]:
    """A fused ReLU6 / Hardtanh / clamp whose real bounds miss the layer's output grid saturates at the grid
    point inside them: a warning naming the nearest bounds on the grid (exact in every backend either way)."""
    import math

    from .mac import QMac

    out = []
    for name, m in qmodel.named_modules():
        if not isinstance(m, QMac) or m.clamp is None or m.wide:
            continue
        e = int(m.out_exp)
        off = [b for b in m.clamp if math.isfinite(b) and b * 2.0**e != round(b * 2.0**e)]
        if off:
            grid = ", ".join(f"{b:g} -> {math.floor(b * 2.0**e) * 2.0**-e:g} or {math.ceil(b * 2.0**e) * 2.0**-e:g}"
                             for b in off)
            out.append(Problem(name, "clamp.inexact", f"clamp bounds {list(m.clamp)} are not on the output grid "
                               f"(steps of 2^-{e}): the layer saturates at the grid point inside them",
                               f"use bounds on the grid ({grid}), or powers of two", m.source, "warning"))
    return out


def capture(model: nn.Module, example_input: torch.Tensor, target="venus", *, weight_bits: int | None = None,
            wide_output: bool | None = None, lenient: bool = False, layer_bits: dict[str, int] | None = None,
            weight_exp: str | float = "auto"):
    """Trace and rebuild `model` from QAT modules: (qmodel, capture problems, profile).

    Strict (`lenient=False`): any problem raises `ProblemsError`. Lenient (for `npukit check`): an
    unsupported node that keeps its input's shape is passed through, so the layers after it are still
    captured and checked; the qmodel is None when the graph could not be completed.
    """
    profile = load_target(target)
    weight_bits = weight_bits or profile.default_weight_bits
    if weight_bits not in profile.weight_bits:
        raise NpukitError(f"target {profile.name} supports weight bits {profile.weight_bits}, not {weight_bits}")
    if wide_output is None:
        wide_output = profile.wide_output
    elif wide_output and not profile.wide_output:
        raise NpukitError(f"target {profile.name} has no wide (accumulator) output mode")
    examples = as_inputs(example_input)

    model = copy.deepcopy(model).eval().cpu()
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    try:
        traced = fx.GraphModule(model, tracer.trace(model))
    except Exception as e:  # torch.fx raises many types for untraceable code
        raise NpukitError(f"torch.fx could not trace the model: {type(e).__name__}: {e}\n"
                          "    fix: remove data-dependent Python control flow from forward()") from None
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(examples):
        raise NpukitError(f"the model's forward() takes {len(placeholders)} tensor(s) but the example gives "
                          f"{len(examples)}\n    fix: give one example batch per argument of forward(), as a tuple")
    try:  # ShapeProp prints a traceback of its own before it raises: keep it off the user's terminal
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(traced).propagate(*(x.detach().float().cpu() for x in examples))
    except Exception as e:  # a shape the model cannot take: torch says why, in its own words
        cause = e.__cause__ or e
        shapes = ", ".join(str(tuple(x.shape)) for x in examples)
        raise NpukitError(f"the model cannot run on an example of shape {shapes}: "
                          f"{type(cause).__name__}: {str(cause).splitlines()[0]}\n"
                          "    fix: give the input shape the model takes, batch first (e.g. 1,3,32,32)") from None

    if not (weight_exp in ("auto", "max", "mse") or (isinstance(weight_exp, float) and 0.5 < weight_exp <= 1.0)):
        raise NpukitError(f"weight_exp={weight_exp!r}; use 'auto', 'max', 'mse' or a quantile in (0.5, 1], e.g. 0.999")
    if layer_bits:
        from ..policy import resolve_layer_bits

        mac_names = [n.target for n in traced.graph.nodes if n.op == "call_module"
                     and isinstance(traced.get_submodule(n.target), nn.Conv1d | nn.Conv2d | nn.Linear)]
        layer_bits = resolve_layer_bits(mac_names, weight_bits, dict(layer_bits), profile.weight_bits, profile.name)
    ctx = CaptureContext(traced, profile, weight_bits, wide_output, layer_bits, weight_exp)
    qgraph = fx.Graph()
    root: dict[str, nn.Module] = {}
    env: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}  # traced node -> (new value, its exponent getter)
    done: set[fx.Node] = set()
    problems: list[Problem] = []

    unused = [p.name for p in placeholders if not p.users]
    if unused:  # an input the graph does not read would have no quantizer left, and no place in the IR
        raise NpukitError(f"forward() does not use its argument(s) {', '.join(unused)}\n"
                          "    fix: remove them from forward(), and their example batches")
    input_names = dict(zip(placeholders, input_module_names(len(placeholders)), strict=True))

    for node in traced.graph.nodes:
        if node in done:
            continue
        if node.op == "placeholder":  # each input its own quantizer, so its own exponent
            name = input_names[node]
            root[name] = QInput(profile, tuple(examples[placeholders.index(node)].shape[1:]))
            x = qgraph.placeholder(node.name)
            val = qgraph.call_module(name, (x,))
            env[node] = (val, _exp_getter(qgraph, root, name))
        elif node.op == "output":
            if any(n not in env for n in ctx.output_nodes):
                continue  # the missing producers are already reported
            qgraph.output(fx.node.map_arg(node.args[0], lambda n: env[n][0]))
        elif _is_shape_node(node):
            continue
        elif is_split(node) and all(SLICE_CAPTURE.matches(u, ctx) for u in node.users):
            continue  # each part is captured where it is taken (parts[i]: a slice node)
        elif absorbed_swap(node, ctx):
            continue  # the GRU or LSTM reads the tensor before the swap
        elif _is_passthrough(node, ctx):
            if node.args and node.args[0] in env:
                env[node] = env[node.args[0]]
        else:
            op = next((o for o in CAPTURES if o.matches(node, ctx)), None)
            if op is None and _is_item_of_failed(node, env):
                continue  # `out, h = layer(x)` of a layer whose problem is reported already
            if op is None:
                problems.append(Problem(node_name(node), "unsupported-op",
                                        f"{_describe(node, ctx)} cannot be quantized", _fix_for(node, ctx),
                                        ctx.source(node)))
                src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
                if lenient and src in env and "tensor_meta" in node.meta and ctx.shape(src) == ctx.shape(node):
                    env[node] = env[src]  # checked as if it were not there
                continue
            try:
                cap = op.capture(node, ctx)
            except NpukitError as e:
                problems.append(Problem(node_name(node), f"{op.op}-unsupported", str(e),
                                        getattr(e, "fix", ""), ctx.source(node)))
                continue
            if any(i not in env for i in cap.inputs):
                continue  # an upstream problem was reported already
            if cap.name in root:
                problems.append(Problem(cap.name, "shared-module", "this module is called more than once",
                                        "give each call its own module: each call is a layer with its own "
                                        "output exponent on the chip", ctx.source(node)))
                continue
            cap.module.source = ctx.source(node)
            root[cap.name] = cap.module
            values = [env[i][0] for i in cap.inputs]
            exps = [env[i][1] for i in cap.inputs]
            for name, module in cap.before:  # e.g. the one-sided padding of an even 'same' conv (keeps exponents)
                module.source = cap.module.source
                root[name] = module
                values[0] = qgraph.call_module(name, ([values[0]], [exps[0]]))
            new = qgraph.call_module(cap.name, (values, exps))
            exp_node = exps[0] if cap.module.keeps_exp else _exp_getter(qgraph, root, cap.name)
            env[cap.last] = (new, exp_node)
            env.update(dict.fromkeys(cap.aliases, env[cap.last]))
            done.update(cap.absorbed)

    if problems and not lenient:
        raise ProblemsError(f"{type(model).__name__} cannot be prepared for {profile.name}", problems)
    if any(n not in env for n in ctx.output_nodes):
        return None, problems, profile
    qmodel = fx.GraphModule(root, qgraph, class_name=f"QAT{type(model).__name__}")
    qmodel.graph.eliminate_dead_code()  # exponent getters nobody reads
    qmodel.recompile()
    if get_scheme(profile.scheme).ties_eltwise_exponents:
        tie_eltwise_exponents(qmodel)
    calibrate(qmodel, [examples])  # minmax on one batch: the observers' first range
    return qmodel, problems, profile


def tie_eltwise_exponents(qmodel: fx.GraphModule) -> None:
    """Give the operands of every element-wise add one exponent (ExpGroup): their producing observers,
    found through exponent-keeping modules (pooling, reshape) and earlier adds, share it."""
    from .add import QAdd

    modules = dict(qmodel.named_modules())
    parent: dict[int, ObservedQModule] = {}

    def find(m):
        while parent.get(id(m), m) is not m:
            m = parent[id(m)]
        return m

    def sources(node: fx.Node) -> list[ObservedQModule]:
        mod = modules.get(node.target) if node.op == "call_module" else None
        if isinstance(mod, QAdd) or (mod is not None and mod.keeps_exp):
            return [s for arg in node.args[0] for s in sources(arg)]
        return [mod] if isinstance(mod, ObservedQModule) else []

    for node in qmodel.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], QAdd):
            found = [s for arg in node.args[0] for s in sources(arg)]
            for other in found[1:]:
                a, b = find(found[0]), find(other)
                if a is not b:
                    parent[id(b)] = a
                    parent.setdefault(id(a), a)
    groups: dict[int, list[ObservedQModule]] = {}
    for m in modules.values():
        if isinstance(m, ObservedQModule) and id(m) in parent:
            groups.setdefault(id(find(m)), []).append(m)
    for members in groups.values():
        ExpGroup(members)


def _exp_getter(graph: fx.Graph, root: dict, name: str) -> fx.Node:
    """A graph node reading module `name`'s output exponent buffer (GraphModule wants it named in root)."""
    root[f"{name}.out_exp"] = root[name].out_exp
    return graph.get_attr(f"{name}.out_exp")

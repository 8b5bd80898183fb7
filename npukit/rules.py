"""Target rules: what each op may look like on a chip, read from the profile's `rules` (docs/targets.md).

Op files call these from their `rules(node, graph, profile)` facet; `check_graph` adds the graph-wide
rules (supported ops, bit widths, layer count, memories). `npukit check`, `prepare` and `pack` all call
`check_graph`, so they can never disagree. Every finding is a `Problem` naming the layer, the rule, the
value, what is allowed and a concrete fix.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .arith import act_range
from .errors import Problem
from .schemes import get_scheme

if TYPE_CHECKING:
    from .ir import Graph, Node
    from .targets import Allowed, Buffer, TargetProfile


def _align(n: int, m: int) -> int:
    return -(-n // m) * m


def _p(node: Node, rule: str, message: str, fix: str = "", severity: str = "error") -> Problem:
    return Problem(node.name, rule, message, fix, severity=severity)


def _in_shape(node: Node, graph: Graph) -> tuple[int, ...]:
    return tuple(graph.tensors[node.inputs[0]].shape)


def _nearest(allowed: Allowed, v: int) -> int | None:
    """The allowed value closest below `v` (else above)."""
    if allowed.values is not None:
        below = [a for a in allowed.values if a <= v]
        return max(below) if below else min(allowed.values, default=None)
    lo = allowed.min if allowed.min is not None else v
    hi = allowed.max if allowed.max is not None else v
    return max(lo, min(hi, v))


# --------------------------------------------------------------------------------------------------
# conv


def conv_transpose_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    r, a = profile.rules.conv_transpose, node.attrs
    kernel = list(node.params["weight"].shape[2:])
    what = f"ConvTranspose{a['ndim']}d"
    out: list[Problem] = []
    if r.ndim is not None and a["ndim"] not in r.ndim:
        out.append(_p(node, "conv_transpose.ndim", f"a {what}; {profile.name} has "
                      f"{' and '.join(f'ConvTranspose{d}d' for d in r.ndim)} only",
                      "upsample, then a conv of the dimensions it has"))
    bad_k = [k for k in kernel if r.kernel is not None and not r.kernel.allows(k)]
    if bad_k or (r.square_kernel and len(set(kernel)) > 1):
        new = _nearest(r.kernel, max(bad_k)) if bad_k else max(kernel)
        out.append(_p(node, "conv_transpose.kernel", f"{what} kernel {_fmt(kernel)}; {profile.name} allows "
                      f"{r.kernel or 'any'}{' (square)' if r.square_kernel else ''}", f"use kernel {new}"))
    for key in ("stride", "padding", "output_padding"):
        allowed = getattr(r, key)
        bad = [v for v in a[key] if allowed is not None and not allowed.allows(v)]
        if bad:
            out.append(_p(node, f"conv_transpose.{key}", f"{what} {key.replace('_', ' ')} {_fmt(a[key])}; "
                          f"{profile.name} allows {allowed}", f"use {key.replace('_', ' ')} {_nearest(allowed, max(bad))}"))
    if r.kernel_at_least_stride and any(k < s for k, s in zip(kernel, a["stride"], strict=True)):
        out.append(_p(node, "conv_transpose.stride", f"stride {_fmt(a['stride'])} exceeds kernel {_fmt(kernel)}",
                      "use a kernel at least as large as the stride"))
    return out


def conv_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    r, a = profile.rules.conv, node.attrs
    w = node.params["weight"]
    c_in, *spatial = _in_shape(node, graph)
    c_out, kernel = w.shape[0], list(w.shape[2:])
    one_d = a["ndim"] == 1
    what = "Conv1d" if one_d else "Conv2d"
    out: list[Problem] = []

    k_rule = (r.kernel_1d or r.kernel) if one_d else r.kernel
    bad_k = [k for k in kernel if k_rule is not None and not k_rule.allows(k)]
    if bad_k:
        k = max(bad_k)
        new = _nearest(k_rule, k)
        fix = f"kernel {k} -> kernel {new}" + (f" with padding {(new - 1) // 2}" if new and new > 1 else "")
        if new and 1 < new < k:
            stack = math.ceil((k - 1) / (new - 1))
            fix += f", or {stack} stacked {what} of kernel {new} for the same receptive field"
        out.append(_p(node, "conv.kernel", f"{what} kernel {_fmt(kernel)}; {profile.name} allows {k_rule}", fix))
    if not one_d and r.square_kernel and len(set(kernel)) > 1:
        out.append(_p(node, "conv.kernel", f"kernel {_fmt(kernel)} is not square; {profile.name} needs square kernels",
                      f"use kernel {max(kernel)}x{max(kernel)} (or {min(kernel)}x{min(kernel)})"))
    for key, label in (("stride", "stride"), ("padding", "padding"), ("dilation", "dilation")):
        allowed = (getattr(r, f"{key}_1d") or getattr(r, key)) if one_d else getattr(r, key)
        vals = a[key]
        bad = [v for v in vals if allowed is not None and not allowed.allows(v)]
        if bad:
            fix = {"stride": "use stride " + str(_nearest(allowed, max(bad))) + " and downsample with a pooling layer "
                   "after the conv",
                   "padding": f"use padding {_nearest(allowed, max(bad))} (pad the input or crop elsewhere)",
                   "dilation": f"use dilation {_nearest(allowed, max(bad))}: a larger kernel or stacked convs widen "
                   "the receptive field instead"}[key]
            out.append(_p(node, f"conv.{key}", f"{label} {_fmt(vals)}; {profile.name} allows {allowed}", fix))
    if one_d and r.max_dilated_kernel_1d is not None:
        span = (kernel[0] - 1) * a["dilation"][0] + 1
        if span > r.max_dilated_kernel_1d:
            out.append(_p(node, "conv.dilation", f"kernel {kernel[0]} with dilation {a['dilation'][0]} spans {span} "
                          f"samples; {profile.name} allows {r.max_dilated_kernel_1d}",
                          "reduce the dilation or the kernel so that (k - 1) * dilation + 1 <= "
                          f"{r.max_dilated_kernel_1d}"))
    if r.pad_below_kernel and any(p >= k for p, k in zip(a["padding"], kernel, strict=True)):
        out.append(_p(node, "conv.padding", f"padding {_fmt(a['padding'])} is not below kernel {_fmt(kernel)}",
                      f"use padding {(max(kernel) - 1) // 2}"))
    if r.kernel_at_least_stride and any(k < s for k, s in zip(kernel, a["stride"], strict=True)):
        out.append(_p(node, "conv.stride", f"stride {_fmt(a['stride'])} exceeds kernel {_fmt(kernel)}",
                      "use a stride no larger than the kernel, or a pooling layer to downsample"))
    if r.input_at_least_kernel and any(n < k for n, k in zip(spatial, kernel, strict=True)):
        out.append(_p(node, "conv.size", f"input {_fmt(spatial)} is smaller than kernel {_fmt(kernel)}",
                      "use a smaller kernel, or fewer downsampling steps before this layer"))
    groups = a["groups"]
    depthwise = groups == c_in and w.shape[1] == 1
    if groups > 1 and (r.groups == "none" or (r.groups == "depthwise" and not depthwise)):
        kind = "depthwise conv" if depthwise else f"grouped conv (groups={groups})"
        fix = ("use groups=1" if r.groups == "none" else
               "use groups=1 or a depthwise conv (groups = in_channels = out_channels / multiplier)")
        out.append(_p(node, "conv.groups", f"{kind} is not supported on {profile.name}", fix))
    for limit, n, which in ((r.max_in_channels, c_in, "input"), (r.max_out_channels, c_out, "output")):
        if limit is not None and n > limit:
            out.append(_p(node, "conv.channels", f"{n} {which} channels; {profile.name} allows {limit}",
                          f"use at most {limit} {which} channels (split the layer)"))
    if r.max_size is not None and max(spatial) > r.max_size:
        out.append(_p(node, "conv.size", f"input {_fmt(spatial)}; {profile.name} allows rows/columns up to {r.max_size}",
                      "downsample the input first"))
    if r.max_bias_channels is not None and c_out > r.max_bias_channels and bool((node.params["bias"] != 0).any()):
        out.append(_p(node, "conv.bias", f"bias on {c_out} output channels; {profile.name} has bias for up to "
                      f"{r.max_bias_channels}", "use bias=False, or fewer output channels"))
    h, wd = (1, spatial[0]) if one_d else spatial
    kh, kw = (1, kernel[0]) if one_d else kernel
    sw = a["stride"][-1]
    out += _buffer(node, "conv.input-buffer", "conv input", r.input_buffer,
                   lambda b: _align(c_in, b.align_channels) * _align(wd, b.align_width * sw) * h,
                   "split the layer along its rows or channels, or shrink the feature map before it")
    if r.weight_buffer is not None:
        b = r.weight_buffer
        wb = (_align(c_out, b.align_depthwise) * kh * kw if depthwise and c_in > 1 else
              _align(c_out, b.align_out) * _align(w.shape[1], b.align_channels) * kh * kw)
        wb = wb * node.attrs["w_bits"] // 8
        if wb > b.bytes:
            out.append(_p(node, "conv.weight-buffer", f"weights take {wb:,} bytes after alignment; {profile.name} "
                          f"holds {b.bytes:,} per conv", "use fewer input or output channels (split the conv)"))
    out_shape = graph.tensors[node.outputs[0]].shape
    out += _buffer(node, "conv.output-buffer", "conv output", r.output_buffer,
                   lambda b: math.prod(out_shape) * graph.tensors[node.outputs[0]].dtype.itemsize,
                   "use fewer output channels or a stride, or split the layer", aligned=False)
    return out


def _buffer(node: Node, rule: str, what: str, buf: Buffer | None, size, fix: str, aligned: bool = True) -> list[Problem]:
    if buf is None:
        return []
    n = size(buf)
    if n <= buf.bytes:
        return []
    return [_p(node, rule, f"{what} takes {n:,} bytes{' after alignment' * aligned}; the limit is {buf.bytes:,}", fix)]


def _fmt(v) -> str:
    v = list(v)
    return str(v[0]) if len(v) == 1 else "x".join(map(str, v))


# --------------------------------------------------------------------------------------------------
# pooling, linear, flatten, concat


def pool_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    r, a = profile.rules.pool, node.attrs
    out = []
    for key in ("kernel", "stride"):
        allowed = getattr(r, key)
        if allowed is not None and any(not allowed.allows(v) for v in a[key]):
            new = _nearest(allowed, max(a[key]))
            fix = (f"pool {key} {_fmt(a[key])} -> {new}; a larger reduction needs two pooling layers"
                   if key == "kernel" else f"use stride {new}")
            out.append(_p(node, f"pool.{key}", f"pooling {key} {_fmt(a[key])}; {profile.name} allows {allowed}", fix))
    if r.kernel_at_least_stride and any(k < s for k, s in zip(a["kernel"], a["stride"], strict=True)):
        out.append(_p(node, "pool.stride", f"stride {_fmt(a['stride'])} exceeds kernel {_fmt(a['kernel'])}",
                      "use a stride no larger than the pooling window"))
    if r.padding is not None and any(not r.padding.allows(v) for v in a["padding"]):
        out.append(_p(node, "pool.padding", f"pooling padding {_fmt(a['padding'])}; {profile.name} allows "
                      f"{r.padding}", "pad with the conv before it instead (its padding), and pool unpadded"))
    return out


def global_pool_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    """A global average pool runs as a pooling window over the whole feature map."""
    spatial = list(_in_shape(node, graph)[1:])
    allowed = profile.rules.pool.global_kernel
    if allowed is None or all(allowed.allows(n) for n in spatial):
        return []
    return [_p(node, "pool.kernel", f"global pooling of a {_fmt(spatial)} feature map needs a window that large; "
               f"{profile.name} allows pooling windows {allowed}",
               "downsample before it (a stride or a pooling layer) so the map is at most "
               f"{_nearest(allowed, max(spatial))} wide")]


def linear_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    r = profile.rules.linear
    n_out, n_in = node.params["weight"].shape
    out = []
    for limit, n, which in ((r.max_in_features, n_in, "in_features"), (r.max_out_features, n_out, "out_features")):
        if limit is not None and n > limit:
            fix = ("pool or stride the feature map before the flatten so fewer features reach the linear layer"
                   if which == "in_features" else "use fewer outputs, or two linear layers")
            out.append(_p(node, "linear.features", f"{which} {n}; {profile.name} allows {limit}", fix))
    out += _buffer(node, "linear.input-buffer", "linear input (left matrix)", r.input_buffer,
                   lambda b: _align(1, b.align_rows) * _align(n_in, b.align_channels),
                   "reduce the features before the linear layer (pooling, fewer channels)")
    return out


def flatten_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    r = profile.rules.flatten
    shape = _in_shape(node, graph)
    if len(node.attrs["shape"]) != 1 or len(shape) < 2:
        return []  # not a flatten of a feature map
    pixels, elements = math.prod(shape[1:]), math.prod(shape)
    out = []
    if r.max_pixels is not None and pixels > r.max_pixels:
        side = math.ceil(math.sqrt(pixels / r.max_pixels))
        pool = f"{side}x{side}" if len(shape) == 3 else str(math.ceil(pixels / r.max_pixels))
        out.append(_p(node, "flatten.pixels", f"flatten of {_fmt(shape[1:])} ({pixels} pixels) exceeds "
                      f"{r.max_pixels} pixels", f"add a {pool} pooling layer before it"))
    if r.max_elements is not None and elements > r.max_elements:
        out.append(_p(node, "flatten.elements", f"flatten of {_fmt(shape)} ({elements} values) exceeds "
                      f"{r.max_elements}", "use fewer channels or pool further before the flatten"))
    return out


def add_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    out = []
    if node.attrs["relu"] and not profile.rules.add.relu:
        out.append(_p(node, "add.relu", f"a ReLU after an element-wise add; {profile.name} has no activation there",
                      "apply the ReLU to the operands before the add, or let the next layer's ReLU do it"))
    exps = sorted({graph.tensors[t].exp for t in node.inputs})
    if len(exps) > 1 and get_scheme(profile.scheme).ties_eltwise_exponents:
        out.append(_p(node, "add.exponents", f"operands at exponents {exps}; {profile.name} adds them unshifted, "
                      "so they must share one", f"prepare the model for {profile.name} (its QAT ties them)"))
    return out


def concat_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    m = profile.rules.concat.channel_multiple
    if m is None or node.attrs["axis"] != 0:
        return []
    bad = [(t, graph.tensors[t].shape[0]) for t in node.inputs[:-1] if graph.tensors[t].shape[0] % m]
    return [_p(node, "concat.channels", f"part {t!r} has {c} channels; every part but the last needs a multiple "
               f"of {m}", f"give it {_align(c, m)} channels") for t, c in bad]


# --------------------------------------------------------------------------------------------------
# the whole graph


def lut_rules(node: Node, graph: Graph, profile: TargetProfile) -> list[Problem]:
    allowed = profile.rules.lut
    fn = node.attrs["fn"].partition(":")[0]
    if allowed is not None and fn not in allowed:
        return [_p(node, "lut.function", f"{fn} by lookup table; {profile.name} computes "
                   f"{', '.join(allowed) or 'none'}", f"use {' or '.join(allowed)} or a ReLU instead"
                   if allowed else "use a ReLU instead, or apply it on the host")]
    return []


def check_graph(graph: Graph, profile: TargetProfile, *, plan=None, sources: dict[str, str] | None = None,
                memory: bool = True) -> list[Problem]:
    """Every rule of `profile` that `graph` breaks, in graph order, then the graph-wide ones.

    `plan`: a memory plan to check against the memories (made here when None and `memory` is set).
    `sources`: node name -> "file:line", attached to the problems.
    """
    from .ops import get_op

    rules = profile.rules
    problems: list[Problem] = []
    for node in graph.nodes:
        if rules.ops is not None and node.op not in rules.ops:
            what = f"{node.op} ({node.attrs.get('fn')})" if node.op == "lut" else node.op
            problems.append(_p(node, "unsupported-op", f"{what} is not supported on {profile.name}",
                               _unsupported_fix(node.op, rules.ops)))
            continue
        problems += get_op(node.op).rules(node, graph, profile)
        if node.attrs.get("abs") and "abs" not in rules.activations:
            problems.append(_p(node, "activation.abs", f"an Abs activation; {profile.name} has "
                               f"{', '.join(rules.activations) or 'no activations'}",
                               "use a ReLU, or compute |x| outside the model"))
        if node.attrs.get("clamp") and "clamp" not in rules.activations:
            out = graph.tensors[node.outputs[0]]
            if (node.attrs["act_min"], node.attrs["act_max"]) != act_range(out.bits, node.attrs["relu"]):
                problems.append(_p(node, "activation.clamp", f"a clamp to [{node.attrs['act_min']}, "
                                   f"{node.attrs['act_max']}] (ReLU6, Hardtanh or clamp); {profile.name} has "
                                   f"{', '.join(rules.activations) or 'no activations'}",
                                   "use a ReLU, or let a wider range through"))
        if "out_shift" in node.attrs:  # a MAC node: can the target's scheme compute its requantisation?
            problems += [_p(node, "requant", msg, f"prepare and train the model for {profile.name}")
                         for msg in get_scheme(profile.scheme).mac_problems(node.attrs)]
        w_bits = node.attrs.get("w_bits")
        if w_bits is not None and w_bits not in profile.weight_bits:
            problems.append(_p(node, "bits.weights", f"{w_bits}-bit weights; {profile.name} computes "
                               f"{'/'.join(map(str, profile.weight_bits))}-bit",
                               f"prepare with weight_bits={profile.default_weight_bits}"))
    problems += _bits_rules(graph, profile)
    if get_scheme(profile.scheme).name == "max78000":
        # the chip's layer grouping, processors and data memory (npukit/max7800x.py), so that check, prepare
        # and pack -o DIR see the same problems; it counts layers itself (with the operand copies)
        from .max7800x import plan_ai8x

        problems += plan_ai8x(graph, profile)[2]
    else:
        problems += _layer_count(graph, profile)
    if memory:
        problems += _memory_rules(graph, profile, plan)
    if sources:
        problems = [p if p.source or p.where not in sources else p.with_source(sources[p.where]) for p in problems]
    return problems


def _unsupported_fix(op: str, ops: list[str]) -> str:
    if op == "relu":
        return "put the ReLU directly after a conv or linear layer, where it is fused into the layer's output"
    if op == "lut":
        return "the chip computes no functions by table: use a ReLU (or ReLU6) instead, or apply it on the host"
    if op == "pad":  # written by the user (F.pad), or put by npukit before a layer that pads one side only
        return ("pad both sides equally: an odd kernel with padding='same', ceil_mode=False, or the padding as "
                "the next conv's own")
    return f"replace it; {', '.join(ops)} are supported"


def _bits_rules(graph: Graph, profile: TargetProfile) -> list[Problem]:
    out = []
    producer = {t: n for n in graph.nodes for t in n.outputs}
    for name, spec in graph.tensors.items():
        if spec.bits <= profile.activation_bits:
            continue
        node = producer.get(name)
        where = node.name if node else name
        wide = node is not None and node.attrs.get("wide") and name in graph.outputs
        if wide and profile.wide_output and spec.bits <= 32:
            continue
        msg = (f"{spec.bits}-bit output; {profile.name} has no wide (32-bit) output" if wide else
               f"tensor {name!r} has {spec.bits} bits; {profile.name} has {profile.activation_bits}-bit activations")
        out.append(Problem(where, "bits.activations", msg, f"prepare the model for {profile.name}"))
    return out


def _layer_count(graph: Graph, profile: TargetProfile) -> list[Problem]:
    limit = profile.rules.max_layers
    if limit is None:
        return []
    layers = layer_nodes(graph, profile)
    if len(layers) <= limit:
        return []
    return [Problem(layers[limit].name, "layers", f"{len(layers)} hardware layers; {profile.name} runs at most "
                    f"{limit} (the first over the limit is {layers[limit].name})",
                    "merge or remove layers (fewer, wider layers; pooling fused before a conv counts with it)")]


def layer_nodes(graph: Graph, profile: TargetProfile) -> list[Node]:
    """The nodes that take a hardware layer of their own: views never do, and an op listed in
    `fused_before_mac` shares the layer of the conv/linear that is its only reader."""
    from .ops import get_op

    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    fused = set(profile.rules.fused_before_mac)
    out = []
    for n in graph.nodes:
        if get_op(n.op).view:
            continue
        users = readers.get(n.outputs[0], [])
        while len(users) == 1 and get_op(users[0].op).view:  # a flatten between pool and linear
            users = readers.get(users[0].outputs[0], [])
        if n.op in fused and len(users) == 1 and users[0].op in ("conv", "linear"):
            continue
        out.append(n)
    return out


def _memory_rules(graph: Graph, profile: TargetProfile, plan) -> list[Problem]:
    from . import memplan, report

    missing = [k for k in ("activations", "weights") if profile.memory_for(k) is None]
    out = []
    if missing:
        out.append(Problem(f"target {profile.name}", "memory-unknown",
                           f"{profile.name} declares no memory for {' or '.join(missing)}: nothing can be said to fit",
                           "add a `memory:` entry holding them to the profile (docs/targets.md)", severity="warning"))
    plan = plan or memplan.plan_graph(graph)
    out += report.check_limits(graph, plan, profile)
    return out

"""MAX78000/MAX78002 deployment: the IR grouped into the chip's hardware layers, and the vendor's network
description (`network.yaml`) and checkpoint written from it, with processors and data-memory offsets
computed, never asked for.

A hardware layer is [pooling] -> [element-wise] -> conv / linear / passthrough -> [ReLU]
(shared/reference/max78000-arithmetic.md, "One layer, in this order"):
- a pool whose only reader is a conv or linear is fused before it; a flatten before a linear becomes
  `flatten: true`; a pool read by anything else (a flatten included: no pooling in a flattening layer)
  is a passthrough layer (`op: none`) that pools;
- an element-wise add whose only reader is a conv is fused into that conv's layer (`eltwise: add`,
  `operands: 2`, `in_sequences` naming the operands; on MAX78002 only when the conv has no bias, the
  profile's `rules.add.fuse_into_biased_conv`); otherwise it is a passthrough layer of its own.
  Its operands must lie interleaved in memory: a layer whose output only the add reads writes it there
  itself (`write_gap: 1`, offset +4 per operand); any other operand (read elsewhere too, or the network
  input) is copied there by a passthrough layer inserted right after its producer.
Data placement:
- channels -> processors: one processor per channel and pass, at most 64 per pass, passes =
  ceil(C / 64), ceil(C / passes) processors per pass, rounded up to a multiple of 4 when there is more
  than one pass (4 processors share one data-memory instance); the first layer reads CHW (one channel per
  memory instance, processors 4 apart) when its input has at most 16 channels, else HWC;
- every buffer (a layer's output, or an add's interleaved operands) gets the lowest offset that overlaps
  no buffer alive at the same time (from its first writer to its last reader), and must fit one memory
  instance (32 KiB on MAX78000, 80 KiB on MAX78002).
`validate` checks a description, ours or a hand-edited one, against the model's shapes.

Everything here is torch-free except `write_checkpoint` (torch.save).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NpukitError, Problem, ProblemsError
from .ir import Graph, Node
from .schemes import Max78000
from .targets import TargetProfile

MAX_PER_PASS = 64
PROCS_PER_INSTANCE = 4
CHW_MAX_CHANNELS = 16  # one channel per memory instance
INPUT = -1  # in_sequences' name for the network input
ALIGN = 16  # buffer offsets, bytes


@dataclass
class HwLayer:
    name: str  # the identifier used in the checkpoint (`<name>.op.weight`) and the description
    op: str  # conv1d, conv2d, convtranspose2d, mlp, none, passthrough
    node: Node | None  # the conv / conv_transpose / linear node (None for a passthrough)
    pool: Node | None = None
    flatten: bool = False
    inputs: list[str] = field(default_factory=list)  # tensors read: one, or the add's operands in memory order
    out_tensor: str = ""  # what it writes (a copy of its input for a passthrough that re-lays data)
    eltwise: bool = False
    nodes: list[str] = field(default_factory=list)  # IR nodes it stands for


@dataclass
class Placement:
    processors: int  # bitmap of the processors that read the input (one operand's channels)
    passes: int
    in_offset: int
    out_offset: int
    output_processors: int
    write_gap: int
    in_sequences: list[int] | None  # None: the layer before
    in_bytes: int  # per memory instance, one operand
    out_bytes: int


def _ident(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name)
    return out if out and not out[0].isdigit() else f"l_{out}"


_HW_OPS = ("conv", "conv_transpose", "linear", "maxpool", "avgpool", "global_avgpool", "add",
           "reshape")  # ops with a hardware layer


def hardware_layers(graph: Graph, profile: TargetProfile) -> tuple[list[HwLayer], list[Problem], bool]:
    """Group the IR into the chip's layers, in order; every node that cannot be grouped is a problem.
    The flag says whether every node found a layer (else nothing can be placed)."""
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    producer = {t: n for n in graph.nodes for t in n.outputs}
    problems: list[Problem] = []
    complete = True
    fused_pool: dict[str, Node] = {}  # conv/linear node -> the pool fused before it
    fused_add: dict[str, Node] = {}  # conv node -> the add fused before it
    flattened: set[str] = set()  # linear nodes fed by a flatten
    skip: set[str] = set()

    def sole_reader(t: str) -> Node | None:
        r = readers.get(t, [])
        return r[0] if len(r) == 1 and t not in graph.outputs else None

    for n in graph.nodes:
        nxt = sole_reader(n.outputs[0])
        if n.op in ("maxpool", "avgpool", "global_avgpool"):
            if nxt is not None and nxt.op in ("conv", "linear"):
                fused_pool[nxt.name] = n
                skip.add(n.name)
        elif n.op == "add":
            biased = nxt is not None and bool(nxt.params.get("bias", np.zeros(1)).any())
            if nxt is not None and nxt.op == "conv" and (profile.rules.add.fuse_into_biased_conv or not biased):
                fused_add[nxt.name] = n
                skip.add(n.name)
        elif n.op == "reshape":
            if nxt is not None and nxt.op == "linear" and len(n.attrs["shape"]) == 1:
                flattened.add(nxt.name)
                skip.add(n.name)
            else:
                complete = False
                problems.append(Problem(n.name, "max7800x.layers", "a reshape that is not a flatten into a linear "
                                        "layer has no hardware layer", "flatten only right before a Linear"))
        elif n.op not in _HW_OPS:
            complete = False
            if profile.rules.ops is not None and n.op not in profile.rules.ops:
                continue  # the profile's rules refuse it already: reported there, once
            what = {"concat": "concatenation", "relu": "standalone ReLU"}.get(n.op, n.op)
            fix = {"relu": "put the ReLU right after a conv or linear layer, where it becomes the layer's activation",
                   "concat": "npukit does not write concatenations (in_sequences of several layers) yet: add the "
                   "branches instead, or keep them in one conv"}.get(n.op, "the chip has no layer that computes it")
            problems.append(Problem(n.name, "max7800x.layers", f"the {what} is not written to the network "
                                    "description", fix))

    layers: list[HwLayer] = []
    for n in graph.nodes:
        if n.name in skip or n.op == "reshape" or n.op not in _HW_OPS:
            continue
        if n.op == "conv_transpose":  # its own layer: the tool strides it by 2, and a pooling layer strides 1
            layers.append(HwLayer(_ident(n.name), "convtranspose2d", n, None, False, [n.inputs[0]], n.outputs[0],
                                  False, [n.name]))
        elif n.op in ("conv", "linear"):
            pool, add = fused_pool.get(n.name), fused_add.get(n.name)
            src = pool.inputs[0] if pool is not None else n.inputs[0]
            if n.name in flattened:
                src = producer[n.inputs[0]].inputs[0]  # the flatten's input
            op = "mlp" if n.op == "linear" else f"conv{n.attrs['ndim']}d"
            nodes = [m.name for m in (pool, add) if m is not None]
            nodes += [producer[n.inputs[0]].name] if n.name in flattened else []
            layers.append(HwLayer(_ident(n.name), op, n, pool, n.name in flattened,
                                  list(add.inputs) if add is not None else [src], n.outputs[0], add is not None,
                                  nodes + [n.name]))
        elif n.op == "add":  # read by something other than a conv: a passthrough layer that adds
            layers.append(HwLayer(_ident(n.name), "none", None, None, False, list(n.inputs), n.outputs[0], True,
                                  [n.name]))
        else:  # a pool read by something other than a conv/linear: a passthrough layer that pools
            layers.append(HwLayer(_ident(n.name), "none", None, n, False, [n.inputs[0]], n.outputs[0], False,
                                  [n.name]))
    return _relayout_operands(graph, layers), problems, complete


def _relayout_operands(graph: Graph, layers: list[HwLayer]) -> list[HwLayer]:
    """Insert a passthrough copy for every add operand that its producer cannot write interleaved itself."""
    readers: dict[str, int] = {}
    for hl in layers:
        for t in hl.inputs:
            readers[t] = readers.get(t, 0) + 1
    producer = {hl.out_tensor: i for i, hl in enumerate(layers)}
    after: dict[int, list[HwLayer]] = {}  # insert after layer i (INPUT: before the first)
    for hl in layers:
        if not hl.eltwise:
            continue
        for k, t in enumerate(hl.inputs):
            if t in producer and readers[t] == 1 and t not in graph.outputs:
                continue  # its producer writes it interleaved
            copy = f"{t}@{hl.name}.{k}"
            after.setdefault(producer.get(t, INPUT), []).append(
                HwLayer(_ident(f"{t}_to_{hl.name}"), "passthrough", None, None, False, [t], copy, False, []))
            hl.inputs[k] = copy
    out = list(after.get(INPUT, []))
    for i, hl in enumerate(layers):
        out.append(hl)
        out += after.get(i, [])
    return out


def _spec(graph: Graph, t: str):
    """A tensor's spec; a relayout copy (`name@layer.k`) has its original's."""
    return graph.tensors[t.rsplit("@", 1)[0]]


def _chw_dims(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of a per-sample shape; 1-d data is (C, L, 1), a vector (C, 1, 1)."""
    c, *sp = shape
    h, w = (sp + [1, 1])[:2] if sp else (1, 1)
    return c, h, w


def _procs(channels: int, chw: bool) -> tuple[int, int]:
    """(processor bitmap, passes) for a tensor of `channels` channels."""
    if chw:
        return sum(1 << (PROCS_PER_INSTANCE * i) for i in range(channels)), 1
    passes = math.ceil(channels / MAX_PER_PASS)
    per = math.ceil(channels / passes)
    if channels > MAX_PER_PASS:  # multi-pass: whole memory instances per pass
        per = min(MAX_PER_PASS, -(-per // PROCS_PER_INSTANCE) * PROCS_PER_INSTANCE)
    return (1 << per) - 1, passes


def _instance_bytes(shape: tuple[int, ...], chw: bool) -> int:
    c, h, w = _chw_dims(shape)
    if chw:  # one channel per instance, four pixels per 32-bit word
        return -(-(h * w) // 4) * 4
    return h * w * math.ceil(c / MAX_PER_PASS) * 4  # one 32-bit word (4 channels) per pixel and pass


def _instance(profile: TargetProfile) -> int:
    mem = profile.memory_for("activations")
    return (mem.bytes // 16) if mem is not None else 1 << 15  # 16 data-memory instances


def place(graph: Graph, layers: list[HwLayer], profile: TargetProfile) -> tuple[list[Placement], list[Problem]]:
    """Processors, passes, offsets, write gaps and in_sequences of every layer."""
    first_in = graph.inputs[0]
    chw0 = _spec(graph, first_in).shape[0] <= CHW_MAX_CHANNELS
    producer = {hl.out_tensor: i for i, hl in enumerate(layers)}
    # Buffers: the network input, each layer's output, and each add's operands together (interleaved).
    group: dict[str, tuple[str, int, int]] = {}  # tensor -> (buffer key, slot, operand count)
    for hl in layers:
        if hl.eltwise:
            for k, t in enumerate(hl.inputs):
                group[t] = (f"eltwise:{hl.name}", k, len(hl.inputs))
    span: dict[str, list[int]] = {}
    size: dict[str, int] = {}
    for t, i in [(first_in, INPUT)] + [(hl.out_tensor, i) for i, hl in enumerate(layers)]:
        key, _, n = group.get(t, (t, 0, 1))
        chw = t == first_in and chw0
        wide = 4 if i != INPUT and _wide(layers[i]) else 1  # a 32-bit output takes a word per value
        size[key] = max(size.get(key, 0), _instance_bytes(_spec(graph, t).shape, chw) * n * wide)
        s = span.setdefault(key, [i, i])
        s[0] = min(s[0], i)
    for i, hl in enumerate(layers):
        for t in hl.inputs:
            key = group.get(t, (t,))[0]
            span[key][1] = max(span[key][1], i)
    for t in graph.outputs:
        span[group.get(t, (t,))[0]][1] = len(layers)
    instance = _instance(profile)
    offset: dict[str, int] = {}
    for n_placed, key in enumerate(sorted(span, key=lambda k: (span[k][0], -size[k]))):
        busy = sorted((offset[o], offset[o] + size[o]) for o in offset
                      if span[o][0] <= span[key][1] and span[key][0] <= span[o][1])
        low, high = _lowest_fit(busy, size[key]), _highest_fit(busy, size[key], instance)
        # ping-pong: alternate buffers go to the bottom and the top of the instance, so that a layer's
        # output can take the room its input's predecessor left (the lowest fit when only one end fits)
        offset[key] = high if (n_placed % 2 and high is not None) or low + size[key] > instance and high is not None \
            else low
    problems = [Problem(key.split(":")[-1], "max7800x.memory", f"data memory needs {offset[key] + size[key]:,} bytes "
                        f"per instance here; {profile.name} has {instance:,}",
                        "shrink the largest feature maps (pooling, fewer channels)")
                for key in offset if offset[key] + size[key] > instance]

    def where(t: str) -> int:
        key, slot, _ = group.get(t, (t, 0, 1))
        return offset[key] + 4 * slot

    out = []
    for i, hl in enumerate(layers):
        shape_in = _spec(graph, hl.inputs[0]).shape
        procs, passes = _procs(shape_in[0], chw0 and i == 0)
        out_c = _spec(graph, hl.out_tensor).shape[0]
        _, _, n_ops = group.get(hl.out_tensor, ("", 0, 1))
        sources = [producer[t] if t in producer else INPUT for t in hl.inputs]
        seq = sources if hl.eltwise or sources != [i - 1] else None
        in_at = min(where(t) for t in hl.inputs)
        out.append(Placement(procs, passes, in_at, where(hl.out_tensor), _procs(out_c, False)[0], n_ops - 1, seq,
                             _instance_bytes(shape_in, chw0 and i == 0),
                             _instance_bytes(_spec(graph, hl.out_tensor).shape, False) * (4 if _wide(hl) else 1)))
    return out, problems


def _wide(hl: HwLayer) -> bool:
    return hl.node is not None and bool(hl.node.attrs.get("wide"))


def _lowest_fit(busy: list[tuple[int, int]], size: int) -> int:
    at = 0
    for lo, hi in busy:
        if at + size <= lo:
            break
        at = max(at, -(-hi // ALIGN) * ALIGN)
    return at


def _highest_fit(busy: list[tuple[int, int]], size: int, instance: int) -> int | None:
    """The highest aligned offset where `size` bytes overlap nothing in `busy`, within the instance."""
    for top in sorted([instance] + [lo for lo, _ in busy], reverse=True):
        at = (top - size) // ALIGN * ALIGN
        if at >= 0 and all(at + size <= lo or at >= hi for lo, hi in busy):
            return at
    return None


def layer_problems(graph: Graph, layers: list[HwLayer], profile: TargetProfile) -> list[Problem]:
    """What the description cannot express beyond the target's op rules (npukit/rules.py)."""
    out = []
    for i, hl in enumerate(layers):
        n = hl.node
        if n is not None and n.attrs.get("wide") and i != len(layers) - 1:
            out.append(Problem(n.name, "max7800x.layers", "a 32-bit output is only possible on the last layer",
                               "end the model with this layer, or give it a ReLU"))
        if n is not None and n.op in ("conv", "conv_transpose") and len(set(n.attrs["padding"])) > 1:
            out.append(Problem(n.name, "max7800x.layers", f"padding {n.attrs['padding']}: the description has one "
                               "`pad` for both dimensions", "use the same padding on every side"))
        if hl.pool is not None and hl.pool.op != "global_avgpool" and len(set(hl.pool.attrs["stride"])) > 1:
            out.append(Problem(hl.pool.name, "max7800x.layers", f"pool stride {hl.pool.attrs['stride']}: the chip "
                               "strides pooling equally in both dimensions", "use one stride for both"))
        if hl.op == "none" and hl.pool is not None and _spec(graph, hl.inputs[0]).shape[0] > MAX_PER_PASS:
            out.append(Problem(hl.pool.name, "max7800x.layers", f"pooling {_spec(graph, hl.inputs[0]).shape[0]} "
                               f"channels without a conv in its layer; the chip pools at most {MAX_PER_PASS} so",
                               "pool right before a conv (it joins that conv's layer), or use fewer channels"))
        if n is not None and n.op == "conv" and n.attrs["groups"] != 1 and profile.rules.conv.groups != "none":
            out.append(Problem(n.name, "max7800x.layers", "grouped/depthwise convs are not written yet",
                               "use groups=1"))
    limit = profile.rules.max_layers
    if limit is not None and len(layers) > limit:
        out.append(Problem(layers[limit].nodes[-1] if layers[limit].nodes else layers[limit].name, "layers",
                           f"{len(layers)} hardware layers (with the copies that lay out add operands); "
                           f"{profile.name} runs {limit}", "merge or remove layers"))
    return out


def validate(desc: dict, shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], profile: TargetProfile) -> list[Problem]:
    """Check a network description (ours, or one edited by hand) against the layers' (input, output) shapes
    per sample (one operand's input for an element-wise layer): processor maps match the channel counts
    and passes, a CHW first layer keeps one channel per memory instance, every buffer fits a memory
    instance, each layer reads where its sources wrote, and no layer writes over data a later layer still
    reads. Every problem is listed, not the first."""
    instance = _instance(profile)
    entries = desc.get("layers", [])
    if len(entries) != len(shapes):
        return [Problem("network.yaml", "max7800x.description", f"{len(entries)} layers described, the model has "
                        f"{len(shapes)}", "describe every hardware layer once, in order")]
    out: list[Problem] = []
    chw0 = str(entries[0].get("data_format", "HWC")).upper() == "CHW" if entries else False
    seqs = []
    for i, e in enumerate(entries):
        seq = e.get("in_sequences", [i - 1])
        seqs.append([seq] if isinstance(seq, int) else list(seq))
    last_read = {j: max((i for i, s in enumerate(seqs) if j in s), default=len(entries))
                 for j in range(-1, len(entries))}
    last_read[len(entries) - 1] = len(entries)  # the output is read after the last layer
    regions: dict[int, tuple[int, int, int]] = {}  # writer -> (start, end, write_gap)
    s_in0 = shapes[0][0] if shapes else (1,)
    regions[INPUT] = (int(entries[0].get("in_offset", 0)) if entries else 0,
                      int(entries[0].get("in_offset", 0)) + _instance_bytes(s_in0, chw0) if entries else 0, 0)
    for i, (e, (s_in, s_out)) in enumerate(zip(entries, shapes, strict=True)):
        where = f"layer {i} ({e.get('name', '?')})"
        chw = i == 0 and chw0
        for key, shape, label in (("processors", s_in, "input"), ("output_processors", s_out, "output")):
            bits = int(e.get(key, 0))
            want_map, passes = _procs(shape[0], chw and key == "processors")
            want = bin(want_map).count("1")
            if bin(bits).count("1") != want:
                out.append(Problem(where, "max7800x.processors", f"{key} 0x{bits:016x} has {bin(bits).count('1')} "
                                   f"bits; {shape[0]} {label} channels in {passes} pass(es) need {want}",
                                   f"use 0x{want_map:016x}"))
            if chw and key == "processors" and any(bin((bits >> (4 * g)) & 0xF).count("1") > 1 for g in range(16)):
                out.append(Problem(where, "max7800x.processors", "CHW input with two channels in one memory "
                                   "instance", "put each channel on its own instance: processors 4 apart"))
        gap = int(e.get("write_gap", 0))
        out_off = int(e.get("out_offset", 0))
        out_b = _instance_bytes(s_out, False) * (gap + 1) * (4 if int(e.get("output_width", 8)) == 32 else 1)
        start, end = out_off, out_off + out_b - 4 * gap
        if start < 0 or out_off + out_b > instance:
            out.append(Problem(where, "max7800x.memory", f"output at 0x{out_off:04x} takes {out_b:,} bytes per "
                               f"instance, past the {instance:,}-byte data-memory instance",
                               "move it lower, or shrink the feature map"))
        sources = seqs[i]
        want_in = min(regions[j][0] for j in sources if j in regions) if all(j in regions for j in sources) else None
        if want_in is None:
            out.append(Problem(where, "max7800x.description", f"in_sequences {sources} names layers not run before "
                               "it", "in_sequences may only point backwards"))
        else:
            # without in_offset the synthesis tool reads where the layer before wrote
            reads = int(e["in_offset"]) if "in_offset" in e else (int(entries[i - 1].get("out_offset", 0)) if i else 0)
            if reads != want_in:
                out.append(Problem(where, "max7800x.memory", f"reads 0x{reads:04x} but its input was written at "
                                   f"0x{want_in:04x}", "read where the source layer wrote (set in_offset)"))
        for j, (lo, hi, g) in regions.items():
            if last_read[j] < i or j == i:
                continue  # no longer needed
            partners = gap and g == gap and abs(lo - start) < 4 * (gap + 1) and (lo - start) % 4 == 0 \
                and any(j in s and i in s for s in seqs)
            if not partners and lo < end and start < hi:
                out.append(Problem(where, "max7800x.memory", f"output 0x{start:04x}..0x{end:04x} overwrites "
                                   f"0x{lo:04x}..0x{hi:04x}, written by {'the input' if j < 0 else f'layer {j}'} "
                                   f"and still read by layer {last_read[j]}", "place it where nothing live is"))
        regions[i] = (start, end, gap)
    return out


def _layer_shapes(graph: Graph, layers: list[HwLayer]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return [(tuple(_spec(graph, hl.inputs[0]).shape), tuple(_spec(graph, hl.out_tensor).shape)) for hl in layers]


def _pool_entry(pool: Node, graph: Graph) -> dict:
    if pool.op == "global_avgpool":
        c, h, w = _chw_dims(_spec(graph, pool.inputs[0]).shape)
        k = h if h == w else [h, w]
        return {"avg_pool": k, "pool_stride": k}
    k, s = pool.attrs["kernel"], pool.attrs["stride"]
    key = "max_pool" if pool.op == "maxpool" else "avg_pool"
    if pool.attrs["ndim"] == 1:
        return {key: k[0], "pool_stride": s[0]}
    return {key: k[0] if k[0] == k[1] else list(k), "pool_stride": s[0] if s[0] == s[1] else list(s)}


def vendor_shift(node: Node) -> int:
    """The description's and checkpoint's `output_shift`: s - (8 - q), with s = 7 - out_shift (the scheme's
    bias shift: the chip divides by 128)."""
    return (Max78000.BIAS_SHIFT - node.attrs["out_shift"]) - (8 - node.attrs["w_bits"])


def network_description(graph: Graph, layers: list[HwLayer], placements: list[Placement], *, arch: str,
                        dataset: str) -> dict:
    """The vendor's network description (YAML data) for these layers."""
    entries = []
    for i, (hl, pl) in enumerate(zip(layers, placements, strict=True)):
        e: dict = {}
        if hl.pool is not None:
            e.update(_pool_entry(hl.pool, graph))
        n = hl.node
        e["op"] = hl.op
        if n is not None and hl.op != "mlp":
            k = n.params["weight"].shape[2:]
            e["kernel_size"] = int(k[0]) if hl.op == "conv1d" else f"{k[0]}x{k[1]}"
            e["pad"] = int(n.attrs["padding"][0])  # a transposed conv's as PyTorch gives it (the tool flips it)
            dil = n.attrs["dilation"]
            if any(d != 1 for d in dil):
                e["dilation"] = int(dil[0]) if len(set(dil)) == 1 else [int(d) for d in dil]
        else:
            e["pad"] = 0  # always written: a missing pad changes other layers' defaults
        if hl.eltwise:
            e["eltwise"] = "add"
            e["operands"] = len(hl.inputs)
        if hl.flatten:
            e["flatten"] = True
        if n is not None:
            e["activate"] = "ReLU" if n.attrs["relu"] else "Abs" if n.attrs.get("abs") else "None"
            e["quantization"] = int(n.attrs["w_bits"])
            e["output_shift"] = vendor_shift(n)
            if n.attrs["wide"]:
                e["output_width"] = 32
        if i == 0:
            e["data_format"] = "CHW" if _spec(graph, hl.inputs[0]).shape[0] <= CHW_MAX_CHANNELS else "HWC"
        if pl.in_sequences is not None:
            e["in_sequences"] = pl.in_sequences
        if i == 0 or pl.in_sequences is not None:
            e["in_offset"] = _hex(pl.in_offset)
        e["out_offset"] = _hex(pl.out_offset)
        if pl.write_gap:
            e["write_gap"] = pl.write_gap
        e["processors"] = _hex64(pl.processors)
        e["output_processors"] = _hex64(pl.output_processors)
        e["name"] = hl.name
        entries.append(e)
    return {"arch": arch, "dataset": dataset, "layers": entries}


class _Hex(int):
    """An int YAML writes as 0x... (the vendor's examples write processors and offsets in hex)."""

    width = 4


def _hex(v: int) -> _Hex:
    h = _Hex(v)
    h.width = 4
    return h


def _hex64(v: int) -> _Hex:
    h = _Hex(v)
    h.width = 16
    return h


def layer_map(graph: Graph, layers: list[HwLayer], placements: list[Placement], profile: TargetProfile) -> str:
    """The processor and data-memory map of every hardware layer, as a Markdown report."""
    instance = _instance(profile)
    rows = ["| # | layer | op | IR nodes | in -> out | processors | passes | in_offset | out_offset | bytes/instance "
            "| write_gap | in_sequences |", "|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for i, (hl, pl) in enumerate(zip(layers, placements, strict=True)):
        shape_in = "x".join(map(str, _spec(graph, hl.inputs[0]).shape))
        shape_out = "x".join(map(str, _spec(graph, hl.out_tensor).shape))
        procs = f"{bin(pl.processors).count('1')} (0x{pl.processors:x})"
        rows.append(f"| {i} | {hl.name} | {hl.op}{' + add' if hl.eltwise else ''}"
                    f"{' + ' + hl.pool.op if hl.pool is not None else ''} | {', '.join(hl.nodes) or '(copy)'} "
                    f"| {shape_in} -> {shape_out} | {procs} | {pl.passes} | 0x{pl.in_offset:04x} | 0x{pl.out_offset:04x} "
                    f"| {pl.out_bytes * (pl.write_gap + 1):,} | {pl.write_gap} | {pl.in_sequences or ''} |")
    peak = max(((pl.out_offset + pl.out_bytes * (pl.write_gap + 1)) for pl in placements), default=0)
    return (f"# {profile.name}: hardware layers and data memory\n\n{len(layers)} hardware layers "
            f"({profile.rules.max_layers or 'no'} allowed); the highest data-memory byte used per instance is "
            f"0x{peak:04x} of 0x{instance:04x} ({peak / instance:.0%}).\n\n" + "\n".join(rows) + "\n")


def dump_yaml(desc: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(_Hex, lambda d, v: d.represent_scalar("tag:yaml.org,2002:int", f"0x{int(v):0{v.width}x}"))
    head = ("# Generated by npukit: the network description for ADI's synthesis tool (ai8xize.py).\n"
            "# Processors and offsets are computed by npukit; check it with `npukit check` after any edit.\n")
    return head + yaml.dump(desc, Dumper=Dumper, sort_keys=False, width=110)


def checkpoint_state(layers: list[HwLayer]) -> dict[str, np.ndarray]:
    """The checkpoint's state_dict as numpy arrays, in layer order (the tool matches weights by order)."""
    state: dict[str, np.ndarray] = {}
    for hl in layers:
        n = hl.node
        if n is None:
            continue
        q = int(n.attrs["w_bits"])
        state[f"{hl.name}.op.weight"] = n.params["weight"].astype(np.float32)
        b = n.params["bias"].astype(np.int64)
        if b.any():
            state[f"{hl.name}.op.bias"] = (b * 2 ** (q - 1)).astype(np.float32)
        state[f"{hl.name}.weight_bits"] = np.array([q], np.float32)
        state[f"{hl.name}.output_shift"] = np.array([vendor_shift(n)], np.float32)
    return state


@dataclass
class Ai8xResult:
    directory: Path
    files: dict[str, Path]
    layers: list[HwLayer]
    placements: list[Placement]


def plan_ai8x(graph: Graph, profile: TargetProfile) -> tuple[list[HwLayer], list[Placement], list[Problem]]:
    """Hardware layers and their placement, with every problem found."""
    if profile.scheme != "max78000":
        raise NpukitError(f"{profile.name} is not a MAX7800x target (scheme {profile.scheme})")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        return [], [], [Problem("<graph>", "max7800x.layers", "one input and one output only", "")]
    layers, problems, complete = hardware_layers(graph, profile)
    if problems or not complete or not layers:
        return layers, [], problems
    placements, more = place(graph, layers, profile)
    return layers, placements, problems + more + layer_problems(graph, layers, profile)


def ai8x_files(graph: Graph, profile: TargetProfile, *, arch: str = "npukit", dataset: str = "npukit",
               sample: np.ndarray | None = None):
    """Everything `write_ai8x` writes, checked and computed before any byte is written: (layers,
    placements, {file name: (key, writer(path))}). Raises `ProblemsError` or `NpukitError` (a sample of the
    wrong shape or values) first."""
    from . import engine

    layers, placements, problems = plan_ai8x(graph, profile)
    if problems:
        raise ProblemsError(f"the model cannot be written as a {profile.name} network description", problems)
    spec = graph.input_spec()
    n_in = math.prod(spec.shape)
    if sample is None:
        x = np.zeros((1, *spec.shape), spec.dtype)
    else:
        x = np.asarray(sample)
        if x.size == 0 or x.size % n_in:
            raise NpukitError(f"the sample has shape {x.shape}; the model takes samples of shape {tuple(spec.shape)}")
        x = x.reshape(-1, *spec.shape)[:1]
    y = engine.run(graph, x)[0]  # checks the sample's integer type and range too
    desc = network_description(graph, layers, placements, arch=arch, dataset=dataset)
    bad = validate(desc, _layer_shapes(graph, layers), profile)
    if bad:  # a placement bug, never the user's model: refuse rather than write a description that fails
        raise ProblemsError("npukit's own network description does not validate (please report it)", bad)
    # sample_output in the vendor simulation's layout: (C, H, W) always, 1-d data as (C, L, 1), a vector (C, 1, 1)
    y_chw = y[0].astype(np.int64).reshape(_chw_dims(tuple(y.shape[1:])))
    state = checkpoint_state(layers)
    writers = {
        "network.yaml": ("yaml", lambda p: p.write_text(dump_yaml(desc))),
        "checkpoint.pth.tar": ("checkpoint", lambda p: write_checkpoint(state, arch, p)),
        f"sample_{dataset.lower()}.npy": ("sample_input", lambda p: np.save(p, x[0].astype(np.int64))),
        "sample_output.npy": ("sample_output", lambda p: np.save(p, y_chw)),
        "layers.md": ("layers", lambda p: p.write_text(layer_map(graph, layers, placements, profile),
                                                       encoding="utf-8")),
    }
    return layers, placements, writers


def write_ai8x(graph: Graph, out_dir: str | Path, profile: TargetProfile, *, arch: str = "npukit",
               dataset: str = "npukit", sample: np.ndarray | None = None) -> Ai8xResult:
    """Write network.yaml, checkpoint.pth.tar, sample_<dataset>.npy, sample_output.npy and layers.md into
    `out_dir`, all or nothing (a failure or Ctrl-C leaves the folder as it was).

    `sample` is one integer input (channel-first) or a batch (the first sample is used); zeros without.
    Raises `ProblemsError` listing everything the description cannot express; writes nothing then.
    """
    from .fileio import staged_directory

    layers, placements, writers = ai8x_files(graph, profile, arch=arch, dataset=dataset, sample=sample)
    out = Path(out_dir)
    with staged_directory(out) as stage:
        for name, (_, write) in writers.items():
            write(stage / name)
    return Ai8xResult(out, {key: out / name for name, (key, _) in writers.items()}, layers, placements)


def write_checkpoint(state: dict[str, np.ndarray], arch: str, path: Path) -> None:
    import torch

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    with open(path, "wb") as f:
        torch.save({"state_dict": sd, "arch": arch, "epoch": 0}, f)


# ---------------------------------------------------------------------------------------------------
# Reading a vendor model back


def load_ai8x(description: str | Path, checkpoint: str | Path, input_shape: tuple[int, ...], *,
              target: str | TargetProfile = "max78000") -> Graph:
    """A network description and quantized checkpoint of the vendor's flow as npukit's IR, so the engine,
    model.bin, the C build and the report work on existing MAX7800x models.

    `input_shape` is one sample's (C, H, W) or (C, L). Activations get the vendor's exponent 7 (real range
    [-1, 127/128]); every integer follows the description exactly. What npukit cannot represent (Abs,
    sub/or/xor, 1-bit or binary weights, streaming, a read gap, operands in one source) is an error naming
    the first such layer (the layers after it read its output).
    """
    return read_ai8x(description, checkpoint, input_shape, target=target)[0]


def read_ai8x(description: str | Path, checkpoint: str | Path, input_shape: tuple[int, ...], *,
              target: str | TargetProfile = "max78000"):
    """`load_ai8x`, also returning the description and each layer's (input, output) shapes for `validate`."""
    import yaml

    from .targets import load_target

    profile = load_target(target)
    if profile.scheme != "max78000":
        raise NpukitError(f"{profile.name} is not a MAX7800x target; a vendor description is read for max78000 or "
                          "max78002 (or a profile with the max78000 scheme)")
    try:
        desc = yaml.safe_load(Path(description).read_text())
    except FileNotFoundError:
        raise NpukitError(f"{description}: no such file") from None
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise NpukitError(f"{description} is not a readable network description "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    state = _load_state(checkpoint)
    layers = desc.get("layers") if isinstance(desc, dict) else None
    if not layers:
        raise NpukitError(f"{description} has no `layers`")
    b = _Importer(profile, tuple(int(v) for v in input_shape))
    weights = iter([k[: -len(".op.weight")] for k in state if k.endswith(".op.weight")])
    problems = []
    for i, e in enumerate(layers):
        try:
            b.layer(i, e, state, weights)
        except NpukitError as err:
            problems.append(Problem(f"layer {i} ({e.get('name', '?')})", "ai8x.import", str(err), ""))
            break  # later layers read this one
    if problems:
        raise ProblemsError(f"{description} cannot be read", problems)
    g = Graph(profile.model_dump(), ["input"], [b.out[len(layers) - 1]], b.tensors, b.nodes)
    g.validate()
    return g, desc, b.shapes


def _load_state(path) -> dict[str, np.ndarray]:
    import torch

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise NpukitError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    sd = ck.get("state_dict") if isinstance(ck, dict) else None
    if not isinstance(sd, dict):
        raise NpukitError(f"{path} has no `state_dict`")
    return {k: v.numpy() for k, v in sd.items()}


class _Importer:
    """Builds IR nodes layer by layer (every activation at the vendor's exponent 7)."""

    EXP = 7

    def __init__(self, profile: TargetProfile, input_shape: tuple[int, ...]):
        from .ir import TensorSpec
        from .schemes import get_scheme

        self.profile, self.scheme, self.spec = profile, get_scheme(profile.scheme), TensorSpec
        self.tensors = {"input": TensorSpec("input", input_shape, profile.activation_bits, self.EXP)}
        self.nodes: list[Node] = []
        self.out: dict[int, str] = {INPUT: "input"}
        self.shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []  # per layer: (one operand in, out)

    def _add(self, name: str, op: str, inputs: list[str], shape, attrs: dict, params=None, bits=None, exp=None) -> str:
        name = name if name not in self.tensors else f"{name}_{len(self.nodes)}"
        self.nodes.append(Node(name, op, inputs, [name], attrs, params or {}))
        self.tensors[name] = self.spec(name, tuple(shape), bits or self.profile.activation_bits,
                                       self.EXP if exp is None else exp)
        return name

    def layer(self, i: int, e: dict, state: dict, weights) -> None:
        from .ops import get_op

        name = _ident(str(e.get("name", f"layer{i}")))
        for key in ("read_gap", "in_skip", "streaming", "in_crop", "conv_groups", "groups"):
            if e.get(key) not in (None, 0, False, 1) or (key == "streaming" and e.get(key)):
                raise NpukitError(f"`{key}` is not supported by npukit's importer")
        seq = e.get("in_sequences", [i - 1])
        seq = [seq] if isinstance(seq, int) else list(seq)
        if any(j not in self.out for j in seq):
            raise NpukitError(f"in_sequences {seq} names layers not run before it")
        srcs = [self.out[j] for j in seq]
        eltwise = e.get("eltwise")
        if eltwise is not None and str(eltwise).lower() != "add":
            raise NpukitError(f"eltwise {eltwise!r}: npukit has element-wise add only")
        if eltwise and len(srcs) != int(e.get("operands", 2)):
            raise NpukitError("element-wise operands must come from one in_sequences entry each")
        if not eltwise and len(srcs) > 1:
            srcs = [self._add(f"{name}_cat", "concat", srcs, _cat_shape([self.tensors[t].shape for t in srcs]),
                              {"axis": 0})]
        in_shape = tuple(self.tensors[srcs[0]].shape)
        for kind in ("max", "avg"):
            if f"{kind}_pool" in e:
                srcs = [self._pool(f"{name}_{kind}pool{k}" if len(srcs) > 1 else f"{name}_{kind}pool", kind, e, t)
                        for k, t in enumerate(srcs)]
        x = srcs[0]
        if eltwise:
            x = self._add(f"{name}_add", "add", srcs, self.tensors[srcs[0]].shape, {"relu": False})
        if e.get("flatten"):
            x = self._add(f"{name}_flatten", "reshape", [x], (math.prod(self.tensors[x].shape),),
                          {"shape": [math.prod(self.tensors[x].shape)]})
        op = str(e.get("op", e.get("operation", e.get("operator", "conv2d")))).lower()
        if op in ("none", "passthrough"):
            self.out[i] = x
            self.shapes.append((in_shape, tuple(self.tensors[x].shape)))
            return
        if op not in ("conv1d", "conv2d", "convtranspose2d", "mlp", "linear", "fc"):
            raise NpukitError(f"op {op!r} is not supported by npukit's importer")
        key = next(weights, None)
        if key is None:
            raise NpukitError("the checkpoint has fewer weight layers than the description")
        w = state[f"{key}.op.weight"]
        if not np.array_equal(w, np.round(w)):
            raise NpukitError(f"{key}.op.weight holds non-integer values: not a quantized checkpoint")
        q = int(e.get("quantization", state.get(f"{key}.weight_bits", np.array([8]))[0]))
        if q not in (2, 4, 8):
            raise NpukitError(f"{q}-bit weights: npukit takes 8, 4 and 2")
        stored = state.get(f"{key}.op.bias")
        n_out = w.shape[1] if op == "convtranspose2d" else w.shape[0]  # a transposed conv's weight is (in, out, ...)
        bias = np.zeros(n_out, np.int64) if stored is None else np.floor(stored / 2 ** (q - 1)).astype(np.int64)
        if stored is not None and not np.array_equal(stored, bias * 2 ** (q - 1)):
            raise NpukitError(f"{key}.op.bias is not a multiple of 2^{q - 1}: the tool would floor it silently")
        shift = int(e["output_shift"]) if "output_shift" in e else int(state.get(f"{key}.output_shift", [0])[0])
        s = shift + 8 - q
        act = str(e.get("activate", e.get("activation", "None")))
        if act.lower() not in ("relu", "abs", "none"):
            raise NpukitError(f"activation {act!r}: npukit has ReLU, Abs and none")
        wide = int(e.get("output_width", 8)) == 32
        relu = act.lower() == "relu" and not wide
        absolute = act.lower() == "abs" and not wide
        w_exp = self.EXP - s  # e_y = e_x + e_w + s - 7 = 7
        e_acc = self.EXP + w_exp
        out_bits, e_out = (self.profile.accumulator_bits, e_acc) if wide else (self.profile.activation_bits, self.EXP)
        b_exp = self.scheme.bias_exp(8, e_acc, 0.0)  # b * 128: the scheme's bias exponent
        attrs = {"w_bits": q, "w_exp": w_exp, "b_exp": b_exp, "relu": relu, "wide": wide,
                 **self.scheme.mac_attrs(e_acc=e_acc, b_exp=b_exp, e_out=e_out, out_bits=out_bits, relu=relu,
                                         wide=wide, acc_bits=self.profile.accumulator_bits,
                                         rounding=self.profile.rounding, absolute=absolute)}
        wi = w.astype(np.int8)
        if op in ("mlp", "linear", "fc"):
            node = Node(name, "linear", [x], [name], attrs, {"weight": wi, "bias": bias})
        elif op == "convtranspose2d":  # PyTorch's (in, out, kh, kw) weight and padding; the tool's stride 2, output pad 1
            pad, out_pad = int(e.get("pad", 1)), int(e.get("output_pad", 1))
            attrs.update({"ndim": 2, "stride": [int(e.get("stride", 2))] * 2, "padding": [pad] * 2,
                          "dilation": [1, 1], "groups": 1, "output_padding": [out_pad] * 2})
            node = Node(name, "conv_transpose", [x], [name], attrs, {"weight": wi, "bias": bias})
        else:
            nd = 1 if op == "conv1d" else 2
            pad, dil = int(e.get("pad", 1)), e.get("dilation", 1)
            dil = [int(v) for v in (dil if isinstance(dil, list) else [dil] * nd)]
            attrs.update({"ndim": nd, "stride": [1] * nd, "padding": [pad] * nd, "dilation": dil, "groups": 1})
            node = Node(name, "conv", [x], [name], attrs, {"weight": wi, "bias": bias})
        shape = get_op(node.op).infer_shapes(node, [self.tensors[x].shape])[0]
        self.out[i] = self._add(name, node.op, [x], shape, attrs, node.params, out_bits, e_out)
        self.shapes.append((in_shape, tuple(shape)))

    def _pool(self, name: str, kind: str, e: dict, t: str) -> str:
        from .ops import get_op

        shape = self.tensors[t].shape
        nd = len(shape) - 1
        k, s = e[f"{kind}_pool"], e.get("pool_stride", 1)
        k = [int(v) for v in (k if isinstance(k, list) else [k] * nd)]
        s = [int(v) for v in (s if isinstance(s, list) else [s] * nd)]
        attrs = {"ndim": nd, "kernel": k, "stride": s, "padding": [0] * nd}  # the chip never pads pooling
        node = Node(name, f"{kind}pool", [t], [name], attrs)
        return self._add(name, node.op, [t], get_op(node.op).infer_shapes(node, [shape])[0], attrs)


def _cat_shape(shapes) -> tuple[int, ...]:
    return (sum(s[0] for s in shapes), *shapes[0][1:])

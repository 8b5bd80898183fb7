"""MAX78000/MAX78002 deployment: the IR grouped into the chip's hardware layers, and the vendor's network
description (`network.yaml`) and checkpoint written from it, with processors and data-memory offsets
computed, never asked for.

A hardware layer is [pooling] -> conv / linear / passthrough -> [ReLU] (shared/reference/
max78000-arithmetic.md, "One layer, in this order"): a pool whose only reader is a conv or linear is
fused before it (pool_first), a flatten before a linear becomes `flatten: true`, a pool that feeds
anything else (a flatten included: no pooling in a flattening layer) is a passthrough layer (`op: none`). Data placement, per layer:
- channels -> processors: one processor per channel and pass, at most 64 per pass, passes =
  ceil(C / 64), ceil(C / passes) processors per pass, rounded up to a multiple of 4 when there is more
  than one pass (4 processors share one data-memory instance); the first layer reads CHW (one channel per memory instance, processors 4 apart) when its
  input has at most 16 channels, else HWC;
- offsets ping-pong between 0 and the largest per-instance buffer, so a layer never writes over the
  input it reads; every buffer must fit one instance (32 KiB on MAX78000, 80 KiB on MAX78002).
Element-wise adds and concatenations (in_sequences, write_gap) are refused by name for now.

Everything here is torch-free except `write_checkpoint` (torch.save).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NpukitError, Problem, ProblemsError
from .ir import Graph, Node
from .targets import TargetProfile

MAX_PER_PASS = 64
PROCS_PER_INSTANCE = 4
CHW_MAX_CHANNELS = 16  # one channel per memory instance


@dataclass
class HwLayer:
    name: str  # the identifier used in the checkpoint (`<name>.op.weight`)
    op: str  # conv1d, conv2d, mlp, none
    node: Node | None  # the conv / linear node (None for a passthrough)
    pool: Node | None = None
    flatten: bool = False
    in_tensor: str = ""  # what the layer reads (before its pooling)
    out_tensor: str = ""  # what it writes
    nodes: list[str] = field(default_factory=list)  # IR nodes it stands for


@dataclass
class Placement:
    processors: int  # bitmap of the processors that read the input
    passes: int
    in_offset: int
    out_offset: int
    output_processors: int
    in_bytes: int  # per memory instance
    out_bytes: int


def _ident(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name)
    return out if out and not out[0].isdigit() else f"l_{out}"


def hardware_layers(graph: Graph) -> tuple[list[HwLayer], list[Problem]]:
    """Group the IR into the chip's layers, in order; every node that cannot be grouped is a problem."""
    readers: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    producer = {t: n for n in graph.nodes for t in n.outputs}
    layers: list[HwLayer] = []
    problems: list[Problem] = []
    fused: dict[str, Node] = {}  # conv/linear node name -> the pool fused before it
    flattened: set[str] = set()  # linear nodes fed by a flatten
    skip: set[str] = set()

    def sole_reader(t: str) -> Node | None:
        r = readers.get(t, [])
        return r[0] if len(r) == 1 and t not in graph.outputs else None

    for n in graph.nodes:
        if n.op in ("maxpool", "avgpool", "global_avgpool"):
            nxt = sole_reader(n.outputs[0])
            # (a pool before a flatten + linear stays a passthrough layer of its own: the chip cannot pool
            # in a flattening layer)
            if nxt is not None and nxt.op in ("conv", "linear"):
                fused[nxt.name] = n
                skip.add(n.name)
        elif n.op == "reshape":
            nxt = sole_reader(n.outputs[0])
            if nxt is not None and nxt.op == "linear" and len(n.attrs["shape"]) == 1:
                flattened.add(nxt.name)
                skip.add(n.name)
            else:
                problems.append(Problem(n.name, "max7800x.layers", "a reshape that is not a flatten into a linear "
                                        "layer has no hardware layer", "flatten only right before a Linear"))
        elif n.op in ("add", "concat", "relu"):
            what = {"add": "element-wise add (residual)", "concat": "concatenation",
                    "relu": "standalone ReLU"}[n.op]
            problems.append(Problem(n.name, "max7800x.layers", f"the {what} is not written to the network "
                                    "description yet", "see the MAX78000 issue: write_gap/in_sequences layouts "
                                    "come next; fuse a ReLU into the layer before it"))

    for n in graph.nodes:
        if n.name in skip or n.op in ("add", "concat", "relu", "reshape"):
            continue
        pool = fused.get(n.name) if n.op in ("conv", "linear") else (n if n.op.endswith("pool") else None)
        src = pool.inputs[0] if pool is not None else n.inputs[0]
        if n.name in flattened:
            src = producer[n.inputs[0]].inputs[0]  # the flatten's input
        if n.op in ("conv", "linear"):
            op = "mlp" if n.op == "linear" else f"conv{n.attrs['ndim']}d"
            nodes = ([pool.name] if pool else []) + ([producer[n.inputs[0]].name] if n.name in flattened else [])
            layers.append(HwLayer(_ident(n.name), op, n, pool, n.name in flattened, src, n.outputs[0],
                                  nodes + [n.name]))
        else:  # a pool read by something other than a conv/linear: a passthrough layer that pools
            layers.append(HwLayer(_ident(n.name), "none", None, n, False, src, n.outputs[0], [n.name]))
    return layers, problems


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


def place(graph: Graph, layers: list[HwLayer], profile: TargetProfile) -> tuple[list[Placement], list[Problem]]:
    """Processors, passes and ping-pong offsets of every layer, checked against one memory instance."""
    mem = profile.memory_for("activations")
    instance = (mem.bytes // 16) if mem is not None else 1 << 15  # 16 data-memory instances
    chw0 = graph.tensors[layers[0].in_tensor].shape[0] <= CHW_MAX_CHANNELS if layers else False
    sizes = [_instance_bytes(graph.tensors[layers[0].in_tensor].shape, chw0)] if layers else []
    sizes += [_instance_bytes(graph.tensors[hl.out_tensor].shape, False) for hl in layers]
    half = -(-max(sizes, default=0) // 16) * 16  # the second buffer starts here
    problems = []
    if 2 * half > instance:
        where = layers[int(np.argmax(sizes[1:]))].nodes[-1] if len(sizes) > 1 else graph.inputs[0]
        problems.append(Problem(where, "max7800x.memory", f"ping-pong buffers need 2 x {half:,} bytes per data-memory "
                                f"instance; {profile.name} has {instance:,}",
                                "shrink the largest feature map (pooling, fewer channels)"))
    out = []
    offsets = [0, half]
    for i, hl in enumerate(layers):
        shape_in = graph.tensors[hl.in_tensor].shape
        procs, passes = _procs(shape_in[0], chw0 and i == 0)
        out_c = graph.tensors[hl.out_tensor].shape[0]
        out_procs = (_procs(graph.tensors[layers[i + 1].in_tensor].shape[0], False)[0] if i + 1 < len(layers)
                     else _procs(out_c, False)[0])
        out.append(Placement(procs, passes, offsets[i % 2], offsets[(i + 1) % 2], out_procs, sizes[i], sizes[i + 1]))
    return out, problems


def layer_problems(graph: Graph, layers: list[HwLayer], profile: TargetProfile) -> list[Problem]:
    """What the description cannot express beyond the target's op rules (npukit/rules.py)."""
    out = []
    for i, hl in enumerate(layers):
        n = hl.node
        if n is not None and n.attrs.get("wide") and i != len(layers) - 1:
            out.append(Problem(n.name, "max7800x.layers", "a 32-bit output is only possible on the last layer",
                               "end the model with this layer, or give it a ReLU"))
        if n is not None and n.op == "conv" and n.attrs["groups"] != 1:
            out.append(Problem(n.name, "max7800x.layers", "grouped/depthwise convs are not written yet",
                               "use groups=1"))
        if hl.pool is not None and hl.pool.op == "global_avgpool":
            c, h, w = _chw_dims(graph.tensors[hl.pool.inputs[0]].shape)
            if h > 16 or w > 16:
                out.append(Problem(hl.pool.name, "max7800x.layers", f"global pooling of {h}x{w} exceeds 16x16",
                                   "downsample before it"))
    if len(layers) > (profile.rules.max_layers or len(layers)):
        out.append(Problem(layers[profile.rules.max_layers].nodes[-1], "layers",
                           f"{len(layers)} hardware layers; {profile.name} runs {profile.rules.max_layers}",
                           "merge or remove layers"))
    return out


def validate(desc: dict, shapes: list[tuple[tuple[int, ...], tuple[int, ...]]], profile: TargetProfile) -> list[Problem]:
    """Check a network description (ours, or one edited by hand) against the layers' (input, output) shapes
    per sample: processor maps match the channel counts and passes, a CHW first layer keeps one channel per
    memory instance, every buffer fits a memory instance, and no layer writes over the input it reads.
    Every problem is listed, not the first."""
    mem = profile.memory_for("activations")
    instance = (mem.bytes // 16) if mem is not None else 1 << 15
    entries = desc.get("layers", [])
    out: list[Problem] = []
    if len(entries) != len(shapes):
        return [Problem("network.yaml", "max7800x.description", f"{len(entries)} layers described, the model has "
                        f"{len(shapes)}", "describe every hardware layer once, in order")]
    prev_out = None
    for i, (e, (s_in, s_out)) in enumerate(zip(entries, shapes, strict=True)):
        where = f"layer {i} ({e.get('name', '?')})"
        chw = i == 0 and str(e.get("data_format", "HWC")).upper() == "CHW"
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
        in_off = int(e.get("in_offset", prev_out if prev_out is not None else 0))
        out_off = int(e.get("out_offset", 0))
        in_b, out_b = _instance_bytes(s_in, chw), _instance_bytes(s_out, False)
        for off, size, what in ((in_off, in_b, "input"), (out_off, out_b, "output")):
            if off < 0 or off + size > instance:
                out.append(Problem(where, "max7800x.memory", f"{what} at 0x{off:04x} takes {size:,} bytes per "
                                   f"instance, past the {instance:,}-byte data-memory instance",
                                   "move it lower, or shrink the feature map"))
        instances_in = {p // 4 for p in range(64) if int(e.get("processors", 0)) >> p & 1}
        instances_out = {p // 4 for p in range(64) if int(e.get("output_processors", 0)) >> p & 1}
        if instances_in & instances_out and in_off < out_off + out_b and out_off < in_off + in_b:
            out.append(Problem(where, "max7800x.memory", f"output 0x{out_off:04x}..0x{out_off + out_b:04x} overwrites "
                               f"its input 0x{in_off:04x}..0x{in_off + in_b:04x} in the same memory instances",
                               "ping-pong: write the output where the input is not"))
        if i > 0 and "in_offset" in e and prev_out is not None and int(e["in_offset"]) != prev_out:
            out.append(Problem(where, "max7800x.memory", f"reads 0x{int(e['in_offset']):04x} but the layer before "
                               f"wrote 0x{prev_out:04x}", "read where the previous layer wrote"))
        prev_out = out_off
    return out


def _layer_shapes(graph: Graph, layers: list[HwLayer]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    return [(tuple(graph.tensors[hl.in_tensor].shape), tuple(graph.tensors[hl.out_tensor].shape)) for hl in layers]


def _pool_entry(pool: Node, graph: Graph) -> dict:
    if pool.op == "global_avgpool":
        c, h, w = _chw_dims(graph.tensors[pool.inputs[0]].shape)
        size = [h, w] if graph.tensors[pool.inputs[0]].shape[2:] else w
        return {"avg_pool": [h, w] if h != w else h, "pool_stride": [h, w] if h != w else h} if size else {}
    k, s = pool.attrs["kernel"], pool.attrs["stride"]
    key = "max_pool" if pool.op == "maxpool" else "avg_pool"
    if pool.attrs["ndim"] == 1:
        return {key: k[0], "pool_stride": s[0]}
    return {key: k[0] if k[0] == k[1] else list(k), "pool_stride": s[0] if s[0] == s[1] else list(s)}


def vendor_shift(node: Node) -> int:
    """The description's and checkpoint's `output_shift`: s - (8 - q), with s = 7 - out_shift."""
    return (7 - node.attrs["out_shift"]) - (8 - node.attrs["w_bits"])


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
            e["pad"] = int(n.attrs["padding"][0])
        else:
            e["pad"] = 0  # always written: a missing pad changes other layers' defaults
        if hl.flatten:
            e["flatten"] = True
        if n is not None:
            e["activate"] = "ReLU" if n.attrs["relu"] else "None"
            e["quantization"] = int(n.attrs["w_bits"])
            e["output_shift"] = vendor_shift(n)
            if n.attrs["wide"]:
                e["output_width"] = 32
        if i == 0:
            e["data_format"] = "CHW" if pl.processors != (1 << bin(pl.processors).count("1")) - 1 or \
                graph.tensors[hl.in_tensor].shape[0] == 1 else "HWC"
            e["in_offset"] = _hex(pl.in_offset)
        e["out_offset"] = _hex(pl.out_offset)
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
    layers, problems = hardware_layers(graph)
    if problems or not layers:
        return layers, [], problems
    placements, more = place(graph, layers, profile)
    return layers, placements, problems + more + layer_problems(graph, layers, profile)


def write_ai8x(graph: Graph, out_dir: str | Path, profile: TargetProfile, *, arch: str = "npukit",
               dataset: str = "npukit", sample: np.ndarray | None = None) -> Ai8xResult:
    """Write network.yaml, checkpoint.pth.tar, sample_input.npy and sample_output.npy into `out_dir`.

    `sample` is one integer input (channel-first) or a batch (the first sample is used); zeros without.
    Raises `ProblemsError` listing everything the description cannot express; writes nothing then.
    """
    from . import engine

    layers, placements, problems = plan_ai8x(graph, profile)
    if problems:
        raise ProblemsError(f"the model cannot be written as a {profile.name} network description", problems)
    spec = graph.input_spec()
    x = np.zeros((1, *spec.shape), spec.dtype) if sample is None else np.asarray(sample).reshape(-1, *spec.shape)[:1]
    y = engine.run(graph, x)[0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"yaml": out / "network.yaml", "checkpoint": out / "checkpoint.pth.tar",
             "sample_input": out / f"sample_{dataset.lower()}.npy", "sample_output": out / "sample_output.npy"}
    desc = network_description(graph, layers, placements, arch=arch, dataset=dataset)
    bad = validate(desc, _layer_shapes(graph, layers), profile)
    if bad:  # a placement bug, never the user's model: refuse rather than write a description that fails
        raise ProblemsError("npukit's own network description does not validate (please report it)", bad)
    _atomic(files["yaml"], lambda p: p.write_text(dump_yaml(desc)))
    _atomic(files["checkpoint"], lambda p: write_checkpoint(checkpoint_state(layers), arch, p))
    _atomic(files["sample_input"], lambda p: np.save(p, x[0].astype(np.int64)))
    _atomic(files["sample_output"], lambda p: np.save(p, y[0].astype(np.int64)))
    return Ai8xResult(out, files, layers, placements)


def write_checkpoint(state: dict[str, np.ndarray], arch: str, path: Path) -> None:
    import torch

    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    with open(path, "wb") as f:
        torch.save({"state_dict": sd, "arch": arch, "epoch": 0}, f)


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(".tmp-" + path.name)  # same suffix: np.save appends .npy to any other
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)

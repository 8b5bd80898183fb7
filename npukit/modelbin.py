"""The deployable model.bin: one flat little-endian file holding an IR graph and its memory plan.

Every byte is specified in docs/model-format.md. `pack_bytes` / `write` store a `Graph` with the
activation offsets of a memory plan; weights are packed at their bit width (two 4-bit or four 2-bit
values per byte). `read` gives back the identical graph. The reader trusts nothing in the file: it
checks every count, index, size and bit width before it reads what they point to, and reports any
damage as one `ModelBinError` saying what is wrong and where.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import NpukitError
from .ir import Graph, Node, TensorSpec
from .ops.base import is_int as _is_int

MAGIC = b"NPUK"
FORMAT_VERSION = 3  # 2: MAC nodes carry requantisation attributes; 3: the device section (the runtime's profile fields)

HEADER = struct.Struct("<4sHHHHII")  # magic, version, target id, flags, section count, file size, crc32
SECTION = struct.Struct("<HHII")  # kind, reserved, offset, size
CRC_AT = 16  # the CRC covers the whole file with these 4 bytes read as zero
TENSOR = struct.Struct("<HBBhBBII")  # name, bits, role, exp, rank, memory, arena offset, bytes
OP = struct.Struct("<HHHBBBB")  # record bytes, op name, node name, #inputs, #outputs, #attrs, #params
PARAM = struct.Struct("<HBBBI")  # name, stored bits, dtype bits, rank, offset in the weights section
IO = struct.Struct("<HBBh")  # tensor, bits, rank, exp
PLAN = struct.Struct("<II")  # arena bytes, lower bound bytes
ATTR = struct.Struct("<HB")  # key, type

# Section kinds, in the order the writer lays them out (weights last, so a device can leave them in flash).
SECTIONS = {8: "device", 1: "strings", 2: "target", 3: "tensors", 4: "ops", 5: "plan", 6: "io", 7: "weights"}
# The device section: what a runtime needs of the profile, uncompressed, so that it never inflates the target
# section: rounding and pool_rounding (indices into ROUNDING_MODES, the kernels' nk_rounding order), the length
# of the profile's memory list, one reserved zero byte.
DEVICE = struct.Struct("<BBBB")
ROUNDING_MODES = ("half_up", "half_even", "floor", "trunc")
MAX_SECTIONS = 64
MAX_TARGET_JSON = 1 << 20  # a profile is a few hundred bytes; refuse to inflate a damaged stream beyond this

# Attribute value types: bool, or a signed integer (scalar or list) of 1 << (type & 3) bytes, or a string.
T_BOOL, T_INT, T_INTS, T_STR = 0x01, 0x10, 0x20, 0x30

ALIGN = 4
NO_MEMORY = 0xFF  # tensor memory index: not placed in a named memory
NO_OFFSET = 0xFFFFFFFF  # tensor arena offset: not placed by the plan
ROLE_INPUT, ROLE_OUTPUT = 1, 2
MAX_RANK = 8
U32 = 0xFFFFFFFF
STORED_BITS = (2, 4, 8, 16, 32, 64)
DTYPE_BITS = (8, 16, 32, 64)


class ModelBinError(NpukitError):
    """A model.bin that cannot be written (the graph or plan does not fit the format) or read (damaged)."""


@dataclass
class ParamLayout:
    """Where one parameter lives in the weights section, for reports."""

    node: str
    name: str
    bits: int  # stored bits per value
    offset: int  # bytes from the start of the weights section
    nbytes: int


@dataclass
class PackedModel:
    graph: Graph
    offsets: dict[str, int]  # arena offset of every tensor the plan placed
    arena_bytes: int
    lower_bound_bytes: int
    version: int
    target_id: int
    sizes: dict[str, int]  # bytes per part: header (with section table), each section, padding; sums to the file
    params: list[ParamLayout]


# ---------------------------------------------------------------------------------------------------
# Writing


def write(graph: Graph, offsets: dict[str, int], arena_bytes: int, lower_bound_bytes: int,
          path: str | Path) -> Path:
    """Pack and write atomically: a crash never leaves a half-written file under the real name."""
    return write_bytes(pack_bytes(graph, offsets, arena_bytes, lower_bound_bytes), path)  # fails before the disk


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write packed model.bin bytes atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as e:
        raise ModelBinError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):  # e.g. the parent is a file: the error above says so
            tmp.unlink(missing_ok=True)
    return path


def pack_bytes(graph: Graph, offsets: dict[str, int], arena_bytes: int, lower_bound_bytes: int) -> bytes:
    """The model.bin bytes of `graph` with the activation offsets of a memory plan."""
    profile = _target_profile(graph.target, "the graph's target")
    _check_graph(graph, lambda msg: ModelBinError(f"cannot pack the graph: {msg}"))
    _check_plan_args(graph, offsets, arena_bytes, lower_bound_bytes)
    strings = _StringTable()
    index = {name: i for i, name in enumerate(graph.tensors)}
    weights = bytearray()
    body = {
        "device": _pack_device(profile),
        "target": _pack_target(graph.target),
        "tensors": _pack_tensors(graph, offsets, strings, _activation_memory(profile)),
        "ops": _pack_ops(graph, index, strings, weights),
        "plan": PLAN.pack(arena_bytes, lower_bound_bytes),
        "io": _pack_io(graph, index),
        "weights": bytes(weights),
    }
    body["strings"] = strings.pack()  # last: the other sections intern their strings first
    return _assemble(body, profile.target_id)


def _pack_device(profile) -> bytes:
    if len(profile.memory) > NO_MEMORY:
        raise ModelBinError(f"cannot pack: the target profile lists {len(profile.memory)} memories, more than "
                            f"the {NO_MEMORY} a tensor record can index")
    return DEVICE.pack(ROUNDING_MODES.index(profile.rounding), ROUNDING_MODES.index(profile.pool_rounding),
                       len(profile.memory), 0)


def _pack_target(target: dict) -> bytes:
    # Deflated: the profile is host-side metadata (a device has the target id), and it grows with the profile.
    try:
        text = json.dumps(target, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ModelBinError(f"cannot pack: the target profile is not JSON data ({e})") from None
    return zlib.compress(text.encode(), 9)


def _check_plan_args(graph: Graph, offsets: dict[str, int], arena: int, lower: int) -> None:
    for what, v in (("arena_bytes", arena), ("lower_bound_bytes", lower)):
        if not isinstance(v, int | np.integer) or not 0 <= v <= U32:
            raise ModelBinError(f"cannot pack: {what} = {v!r} is not an integer in [0, 2**32)")
    if lower > arena:
        raise ModelBinError(f"cannot pack: lower_bound_bytes {lower} exceeds arena_bytes {arena}")
    for name, off in offsets.items():
        if name not in graph.tensors:
            raise ModelBinError(f"cannot pack: the plan places {name!r}, which is not a tensor of the graph")
        size = _tensor_bytes(graph.tensors[name])
        if not isinstance(off, int | np.integer) or off < 0 or off + size > arena:
            raise ModelBinError(f"cannot pack: tensor {name!r} at offset {off!r} ({size} bytes) does not fit "
                                f"the {arena}-byte arena")


class _StringTable:
    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def add(self, s: str) -> int:
        if s not in self.index:
            if len(self.index) >= 0xFFFF:
                raise ModelBinError("cannot pack: more than 65535 distinct strings")
            if len(s.encode()) > 0xFFFF:
                raise ModelBinError(f"cannot pack: string {s[:40]!r}... is longer than 65535 bytes")
            self.index[s] = len(self.index)
        return self.index[s]

    def pack(self) -> bytes:
        out = bytearray(struct.pack("<H", len(self.index)))
        for s in self.index:
            b = s.encode()
            out += struct.pack("<H", len(b)) + b
        return bytes(out)


def _activation_memory(profile) -> int:
    mem = profile.memory_for("activations")
    return NO_MEMORY if mem is None else [m.name for m in profile.memory].index(mem.name)


def _pack_dims(shape, what: str) -> bytes:
    if len(shape) > MAX_RANK:
        raise ModelBinError(f"cannot pack: {what} has rank {len(shape)}; model.bin allows up to {MAX_RANK}")
    if any(not 1 <= d <= U32 for d in shape):
        raise ModelBinError(f"cannot pack: {what} has shape {tuple(shape)}; dimensions must be in [1, 2**32)")
    return struct.pack(f"<{len(shape)}I", *shape)


def _pack_tensors(graph: Graph, offsets: dict[str, int], strings: _StringTable, memory: int) -> bytes:
    if len(graph.tensors) > 0xFFFF:
        raise ModelBinError(f"cannot pack: {len(graph.tensors)} tensors; model.bin allows 65535")
    out = bytearray(struct.pack("<H", len(graph.tensors)))
    for name, t in graph.tensors.items():
        if not 1 <= t.bits <= 64 or not -0x8000 <= t.exp <= 0x7FFF:
            raise ModelBinError(f"cannot pack: tensor {name!r} has {t.bits} bits, exponent {t.exp}")
        size = _tensor_bytes(t)
        if size > U32:
            raise ModelBinError(f"cannot pack: tensor {name!r} has {size} bytes, beyond 2**32")
        role = ROLE_INPUT * (name in graph.inputs) | ROLE_OUTPUT * (name in graph.outputs)
        off = offsets.get(name)
        out += TENSOR.pack(strings.add(name), t.bits, role, t.exp, len(t.shape),
                           NO_MEMORY if off is None else memory, NO_OFFSET if off is None else off, size)
        out += _pack_dims(t.shape, f"tensor {name!r}")
    return bytes(out)


def _pack_io(graph: Graph, index: dict[str, int]) -> bytes:
    if max(len(graph.inputs), len(graph.outputs)) > 0xFFFF:
        raise ModelBinError("cannot pack: more than 65535 graph inputs or outputs")
    out = bytearray(struct.pack("<HH", len(graph.inputs), len(graph.outputs)))
    for name in graph.inputs + graph.outputs:
        t = graph.tensors[name]
        out += IO.pack(index[name], t.bits, len(t.shape), t.exp) + _pack_dims(t.shape, f"tensor {name!r}")
    return bytes(out)


def _pack_ops(graph: Graph, index: dict[str, int], strings: _StringTable, weights: bytearray) -> bytes:
    if len(graph.nodes) > 0xFFFF:
        raise ModelBinError(f"cannot pack: {len(graph.nodes)} nodes; model.bin allows 65535")
    out = bytearray(struct.pack("<H", len(graph.nodes)))
    for node in graph.nodes:
        out += _pack_op(node, index, strings, weights)
    return bytes(out)


def _pack_op(node: Node, index: dict[str, int], strings: _StringTable, weights: bytearray) -> bytes:
    counts = (len(node.inputs), len(node.outputs), len(node.attrs), len(node.params))
    if max(counts) > 0xFF:
        raise ModelBinError(f"cannot pack: node {node.name!r} has more than 255 inputs, outputs, attrs or params")
    body = bytearray(struct.pack(f"<{counts[0] + counts[1]}H", *(index[t] for t in node.inputs + node.outputs)))
    for key, value in node.attrs.items():
        body += _pack_attr(node, key, value, strings)
    for name, arr in node.params.items():
        body += _pack_param(node, name, arr, strings, weights)
    size = OP.size + len(body)
    if size > 0xFFFF:
        raise ModelBinError(f"cannot pack: node {node.name!r} takes {size} bytes; an op record holds 65535")
    return OP.pack(size, strings.add(node.op), strings.add(node.name), *counts) + body


def _int_width(values: list[int], what: str) -> int:
    """The smallest w such that every value fits a signed integer of 1 << w bytes."""
    for w in range(4):
        lo, hi = -(1 << (8 << w) - 1), (1 << (8 << w) - 1) - 1
        if all(lo <= v <= hi for v in values):
            return w
    raise ModelBinError(f"cannot pack: {what} holds a value beyond int64")


def _pack_attr(node: Node, key: str, v, strings: _StringTable) -> bytes:
    what = f"node {node.name!r} attribute {key!r}"
    if not isinstance(key, str):
        raise ModelBinError(f"cannot pack: {what} has a {type(key).__name__} key, not a string")
    k = strings.add(key)
    if isinstance(v, bool | np.bool_):
        return ATTR.pack(k, T_BOOL) + bytes([bool(v)])
    if _is_int(v):
        w = _int_width([int(v)], what)
        return ATTR.pack(k, T_INT | w) + int(v).to_bytes(1 << w, "little", signed=True)
    if isinstance(v, str):
        return ATTR.pack(k, T_STR) + struct.pack("<H", strings.add(v))
    if isinstance(v, list | tuple) and all(_is_int(x) for x in v) and len(v) <= 0xFF:
        vals = [int(x) for x in v]
        w = _int_width(vals, what)
        return ATTR.pack(k, T_INTS | w) + bytes([len(vals)]) + b"".join(
            x.to_bytes(1 << w, "little", signed=True) for x in vals)
    raise ModelBinError(f"cannot pack: {what} = {v!r}; model.bin stores bools, integers, lists of up to "
                        "255 integers and strings")


def stored_bits(node: Node, name: str, arr: np.ndarray) -> int:
    """Stored bits: a weight at its node's w_bits, a bias as int32 when it fits, the rest at their dtype."""
    if name == "weight" and "w_bits" in node.attrs:
        return int(node.attrs["w_bits"])
    if name == "bias":
        return min(arr.dtype.itemsize * 8, 32) if _fits(arr, 32) else 64
    return arr.dtype.itemsize * 8


def _param_bits(node: Node, name: str, arr: np.ndarray) -> int:
    """`stored_bits`, checked: the packer refuses what it could not read back."""
    what = f"node {node.name!r} param {name!r}"
    if arr.dtype.kind != "i":
        raise ModelBinError(f"cannot pack: {what} has dtype {arr.dtype}; model.bin stores signed integers")
    dtype_bits = arr.dtype.itemsize * 8
    bits = stored_bits(node, name, arr)
    if name == "weight" and "w_bits" in node.attrs:
        if bits not in (2, 4, 8, 16) or bits > dtype_bits:
            raise ModelBinError(f"cannot pack: {what} is {arr.dtype} with w_bits {bits}; use 2, 4, 8 or 16, "
                                "no wider than the dtype")
    if not _fits(arr, bits):
        raise ModelBinError(f"cannot pack: {what} holds values outside the signed {bits}-bit range")
    return bits


def _fits(arr: np.ndarray, bits: int) -> bool:
    return arr.size == 0 or (int(arr.min()) >= -(1 << bits - 1) and int(arr.max()) < 1 << bits - 1)


def _pack_param(node: Node, name: str, arr: np.ndarray, strings: _StringTable, weights: bytearray) -> bytes:
    bits = _param_bits(node, name, arr)
    weights += bytes(-len(weights) % ALIGN)
    offset = len(weights)
    weights += encode_values(arr, bits)
    if len(weights) > U32:
        raise ModelBinError("cannot pack: the weights exceed 4 GiB")
    head = PARAM.pack(strings.add(name), bits, arr.dtype.itemsize * 8, arr.ndim, offset)
    return head + _pack_dims(arr.shape, f"node {node.name!r} param {name!r}")


def encode_values(arr: np.ndarray, bits: int) -> bytes:
    """Signed integers at `bits` each, C order. Below 8 bits: two's complement fields, low bits first."""
    flat = np.asarray(arr).reshape(-1).astype(np.int64)
    if bits >= 8:
        return flat.astype(f"<i{bits // 8}").tobytes()
    per = 8 // bits
    fields = (flat & ((1 << bits) - 1)).astype(np.uint8)
    fields = np.concatenate([fields, np.zeros(-len(fields) % per, np.uint8)]).reshape(-1, per)
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(fields << shifts, axis=1).astype(np.uint8).tobytes()


def decode_values(buf: bytes, bits: int, count: int) -> tuple[np.ndarray, bool]:
    """Inverse of `encode_values` (as int64), and whether the unused bits of the last byte are zero."""
    if bits >= 8:
        return np.frombuffer(buf, f"<i{bits // 8}", count).astype(np.int64), True
    shifts = (np.arange(8 // bits) * bits).astype(np.uint8)
    fields = ((np.frombuffer(buf, np.uint8)[:, None] >> shifts) & ((1 << bits) - 1)).reshape(-1).astype(np.int64)
    sign = 1 << (bits - 1)
    return (fields[:count] ^ sign) - sign, not fields[count:].any()


def _assemble(body: dict[str, bytes], target_id: int) -> bytes:
    kinds = list(SECTIONS.items())
    pos = HEADER.size + SECTION.size * len(kinds)
    table, chunks = bytearray(), []
    for kind, name in kinds:
        pad = -pos % ALIGN
        chunks += [bytes(pad), body[name]]
        pos += pad
        table += SECTION.pack(kind, 0, pos, len(body[name]))
        pos += len(body[name])
    if pos > U32:
        raise ModelBinError(f"cannot pack: the file would take {pos} bytes, beyond 4 GiB")
    data = bytearray(HEADER.pack(MAGIC, FORMAT_VERSION, target_id, 0, len(kinds), pos, 0) + table + b"".join(chunks))
    struct.pack_into("<I", data, CRC_AT, zlib.crc32(data))
    return bytes(data)


# ---------------------------------------------------------------------------------------------------
# Shared checks


def _tensor_bytes(t: TensorSpec) -> int:
    return math.prod(t.shape) * t.dtype.itemsize


def _target_profile(target, what: str):
    from .targets import load_target

    if not isinstance(target, dict):
        raise ModelBinError(f"{what} is a {type(target).__name__}, not a profile dict")
    try:
        return load_target(target)
    except NpukitError as e:
        raise ModelBinError(f"{what} is not a valid target profile: {e}") from None
    except Exception as e:  # pydantic on hostile data: still one error type
        raise ModelBinError(f"{what} is not a valid target profile ({type(e).__name__}: {e})") from None


def _check_node(node: Node) -> str | None:
    """The first reason the kernels could not run this node (the op's own attribute schema), if any."""
    from .ops import get_op

    try:
        return get_op(node.op).check_node(node)
    except NpukitError:
        return None  # an unknown op: Graph.validate names it


def _check_graph(graph: Graph, error) -> None:
    """Op attributes and params the kernels need, then `Graph.validate`; `error(msg)` makes the exception."""
    for i, node in enumerate(graph.nodes):
        problem = _check_node(node)
        if problem:
            raise error(f"op {i} ({node.name!r}, {node.op}) {problem}")
    try:
        graph.validate()
    except NpukitError as e:
        raise error(str(e)) from None
    except Exception as e:  # infer_shapes on nonsense attributes (a zero stride, ...)
        raise error(f"invalid IR graph ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------------
# Reading


def read(source: str | Path | bytes | bytearray | memoryview) -> PackedModel:
    """Load a model.bin from a path or from its bytes; any damage raises one `ModelBinError`."""
    if isinstance(source, bytes | bytearray | memoryview):
        data, where = bytes(source), "model.bin"
    else:
        where = str(source)
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ModelBinError(f"{where}: no such file") from None
        except OSError as e:
            raise ModelBinError(f"{where}: cannot read ({e.strerror or e})") from None
    try:
        return _Parser(data, where).parse()
    except ModelBinError:
        raise
    except Exception as e:  # a check the parser lacks (a bug): still one error type for the user
        raise ModelBinError(f"{where}: unreadable model.bin ({type(e).__name__}: {e})") from e


@dataclass
class _Cursor:
    """Reads one section front to back; every read is bounds-checked against the section's end."""

    data: bytes
    pos: int
    end: int
    section: str
    where: str

    def error(self, msg: str) -> ModelBinError:
        return ModelBinError(f"{self.where}: section '{self.section}': {msg}")

    def take(self, n: int, what: str) -> int:
        if n > self.end - self.pos:
            raise self.error(f"{what} needs {n} bytes at byte {self.pos}, but the section ends at byte {self.end}")
        self.pos += n
        return self.pos - n

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        return st.unpack_from(self.data, self.take(st.size, what))

    def u8(self, what: str) -> int:
        return self.data[self.take(1, what)]

    def u16(self, what: str) -> int:
        return struct.unpack_from("<H", self.data, self.take(2, what))[0]

    def count(self, what: str, min_record: int) -> int:
        """A u16 record count, refused at once if its smallest records cannot fit what is left."""
        n = self.u16(f"the {what} count")
        if n * min_record > self.end - self.pos:
            raise self.error(f"{n} {what} need at least {n * min_record} bytes, but {self.end - self.pos} remain")
        return n

    def dims(self, rank: int, what: str, max_elems: int = U32) -> tuple[int, ...]:
        if rank > MAX_RANK:
            raise self.error(f"{what} has rank {rank}; model.bin allows up to {MAX_RANK}")
        dims = struct.unpack_from(f"<{rank}I", self.data, self.take(4 * rank, f"the dimensions of {what}"))
        if 0 in dims:
            raise self.error(f"{what} has a zero dimension in {dims}")
        if math.prod(dims) > max_elems:  # rank <= 8 dims below 2**32: an exact product of at most 256 bits
            raise self.error(f"{what} has shape {dims}, more than {max_elems} elements")
        return dims

    def done(self) -> None:
        if self.pos != self.end:
            raise self.error(f"{self.end - self.pos} bytes left over after the last record")


class _Parser:
    def __init__(self, data: bytes, where: str):
        self.data, self.where = data, where
        self.sections: dict[str, tuple[int, int]] = {}
        self.strings: list[str] = []
        self.roles: list[int] = []  # per tensor, checked against the io lists
        self.n_sections = 0

    def error(self, msg: str) -> ModelBinError:
        return ModelBinError(f"{self.where}: {msg}")

    def cursor(self, name: str) -> _Cursor:
        off, size = self.sections[name]
        return _Cursor(self.data, off, off + size, name, self.where)

    def parse(self) -> PackedModel:
        version, target_id = self.header()
        self.section_table()
        self.strings = self.read_strings()
        self.target, profile = self.read_target(target_id)
        self.read_device(profile)
        arena, lower = self.read_plan()
        specs, offsets = self.read_tensors(arena, len(profile.memory))
        inputs, outputs = self.read_io(specs)
        nodes, layouts = self.read_ops(specs)
        graph = Graph(self.target, inputs, outputs, {t.name: t for t in specs}, nodes)
        _check_graph(graph, lambda msg: self.error(f"the graph it holds is invalid: {msg}"))
        used = HEADER.size + SECTION.size * self.n_sections
        sizes = {"header": used} | {name: size for name, (_, size) in self.sections.items()}
        sizes["padding"] = len(self.data) - sum(sizes.values())
        return PackedModel(graph, offsets, arena, lower, version, target_id, sizes, layouts)

    # Header and section table -------------------------------------------------------------------
    def header(self) -> tuple[int, int]:
        d = self.data
        if d[:4] != MAGIC:
            raise self.error(f"not an npukit model.bin: it starts with {bytes(d[:4])!r}, not {MAGIC!r}")
        if len(d) < HEADER.size:
            raise self.error(f"truncated: {len(d)} bytes, shorter than the {HEADER.size}-byte header")
        _, version, target_id, flags, n, size, crc = HEADER.unpack_from(d)
        if version > FORMAT_VERSION:
            raise self.error(f"format version {version} is newer than this npukit reads ({FORMAT_VERSION}); "
                             "upgrade npukit")
        if version != FORMAT_VERSION:
            raise self.error(f"format version {version} is older than this npukit reads ({FORMAT_VERSION}); "
                             "re-pack the model (`npukit pack`)")
        if size != len(d):
            hint = "truncated" if size > len(d) else "trailing bytes after the model"
            raise self.error(f"the header says {size} bytes but the file has {len(d)} ({hint})")
        view = memoryview(d)  # no copy of a large file
        actual = zlib.crc32(view[CRC_AT + 4:], zlib.crc32(bytes(4), zlib.crc32(view[:CRC_AT])))
        if actual != crc:
            raise self.error(f"CRC mismatch: the header says 0x{crc:08x}, the contents give 0x{actual:08x} "
                             "(the file is damaged)")
        if flags:
            raise self.error(f"unknown header flags 0x{flags:04x} (format version {version} defines none)")
        if not 1 <= n <= MAX_SECTIONS or HEADER.size + n * SECTION.size > len(d):
            raise self.error(f"section count {n} does not fit the file ({len(d)} bytes)")
        self.n_sections = n
        return version, target_id

    def section_table(self) -> None:
        table_end = HEADER.size + self.n_sections * SECTION.size
        spans = []
        for i in range(self.n_sections):
            kind, reserved, off, size = SECTION.unpack_from(self.data, HEADER.size + i * SECTION.size)
            name = SECTIONS.get(kind)
            if name is None:
                raise self.error(f"section {i} has unknown kind {kind}")
            if name in self.sections:
                raise self.error(f"section '{name}' appears twice")
            if reserved:
                raise self.error(f"section '{name}' has nonzero reserved bits 0x{reserved:04x}")
            if off % ALIGN or off < table_end:
                raise self.error(f"section '{name}' starts at byte {off}, not a multiple of {ALIGN} at or after "
                                 f"the section table's end ({table_end})")
            if off + size > len(self.data):
                raise self.error(f"section '{name}' ends at byte {off + size} beyond the file size {len(self.data)}")
            self.sections[name] = (off, size)
            spans.append((off, off + size, name))
        missing = [n for n in SECTIONS.values() if n not in self.sections]
        if missing:
            raise self.error(f"no {', '.join(repr(m) for m in missing)} section")
        spans.sort()
        for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
            if start < end:
                raise self.error(f"sections '{a}' and '{b}' overlap")

    # Sections ------------------------------------------------------------------------------------
    def read_strings(self) -> list[str]:
        c = self.cursor("strings")
        out = []
        for i in range(c.count("strings", 2)):
            n = c.u16(f"the length of string {i}")
            raw = self.data[c.take(n, f"string {i}"):c.pos]
            try:
                out.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise c.error(f"string {i} is not valid UTF-8") from None
        c.done()
        return out

    def string(self, c: _Cursor, what: str, i: int | None = None) -> str:
        """The string whose index is read next (or is `i`), checked against the string table."""
        i = c.u16(what) if i is None else i
        if i >= len(self.strings):
            raise c.error(f"{what} is string {i}, but there are {len(self.strings)} strings")
        return self.strings[i]

    def read_target(self, header_id: int):
        off, size = self.sections["target"]
        inflate = zlib.decompressobj()
        try:
            text = inflate.decompress(self.data[off:off + size], MAX_TARGET_JSON)
        except zlib.error as e:
            raise self.error(f"section 'target' is not a valid zlib stream ({e})") from None
        if not inflate.eof or inflate.unconsumed_tail or inflate.unused_data:
            raise self.error(f"section 'target' is not one complete zlib stream of at most {MAX_TARGET_JSON} bytes")
        try:
            target = json.loads(text.decode("utf-8"))
        except Exception as e:  # UTF-8, JSON syntax, absurd nesting: all one damage
            raise self.error(f"section 'target' is not valid JSON ({type(e).__name__}: {e})") from None
        profile = _target_profile(target, f"{self.where}: section 'target'")
        if profile.target_id != header_id:
            raise self.error(f"the header says target id {header_id} but the target profile says "
                             f"{profile.target_id}")
        # the validated profile, defaults filled in: a profile written without `rounding` still runs
        return profile.model_dump(), profile

    def read_device(self, profile) -> None:
        """The device section must say what the profile says: a runtime reads it instead of the profile."""
        c = self.cursor("device")
        rounding, pool_rounding, n_memory, reserved = c.unpack(DEVICE, "the device record")
        c.done()
        if reserved:
            raise c.error(f"reserved byte {reserved}, not 0")
        for name, got in (("rounding", rounding), ("pool_rounding", pool_rounding)):
            if got >= len(ROUNDING_MODES):
                raise c.error(f"{name} is mode {got}, not one of {len(ROUNDING_MODES)} ({', '.join(ROUNDING_MODES)})")
            if ROUNDING_MODES[got] != getattr(profile, name):
                raise c.error(f"{name} is {ROUNDING_MODES[got]}, but the target profile says {getattr(profile, name)}")
        if n_memory != len(profile.memory):
            raise c.error(f"{n_memory} memories, but the target profile lists {len(profile.memory)}")

    def read_plan(self) -> tuple[int, int]:
        c = self.cursor("plan")
        arena, lower = c.unpack(PLAN, "the plan")
        c.done()
        if lower > arena:
            raise c.error(f"lower bound {lower} bytes exceeds the arena's {arena}")
        return arena, lower

    def read_tensors(self, arena: int, n_memory: int) -> tuple[list[TensorSpec], dict[str, int]]:
        c = self.cursor("tensors")
        specs, offsets, seen = [], {}, set()
        for i in range(c.count("tensors", TENSOR.size)):
            what = f"tensor {i}"
            name_i, bits, role, exp, rank, memory, offset, nbytes = c.unpack(TENSOR, what)
            name = self.string(c, f"the name of {what}", name_i)
            if name in seen:
                raise c.error(f"tensor name {name!r} appears twice")
            seen.add(name)
            if not 1 <= bits <= 64 or role > ROLE_INPUT | ROLE_OUTPUT:
                raise c.error(f"{what} ({name!r}) has {bits} bits and role {role}")
            spec = TensorSpec(name, c.dims(rank, f"{what} ({name!r})"), bits, exp)
            if nbytes != _tensor_bytes(spec):
                raise c.error(f"{what} ({name!r}) says {nbytes} bytes but shape {spec.shape} at {bits} bits takes "
                              f"{_tensor_bytes(spec)}")
            if memory != NO_MEMORY and memory >= n_memory:
                raise c.error(f"{what} ({name!r}) is in memory {memory}, but the target has {n_memory}")
            if offset != NO_OFFSET:
                if offset + nbytes > arena:
                    raise c.error(f"{what} ({name!r}) at arena offset {offset} ends at byte {offset + nbytes}, "
                                  f"beyond the {arena}-byte arena")
                offsets[name] = offset
            specs.append(spec)
            self.roles.append(role)
        c.done()
        return specs, offsets

    def read_io(self, specs: list[TensorSpec]) -> tuple[list[str], list[str]]:
        c = self.cursor("io")
        n_in, n_out = struct.unpack_from("<HH", self.data, c.take(4, "the io counts"))
        if (n_in + n_out) * IO.size > c.end - c.pos:
            raise c.error(f"{n_in} inputs and {n_out} outputs do not fit its {c.end - c.pos} remaining bytes")
        lists: tuple[list[str], list[str]] = ([], [])
        for i in range(n_in + n_out):
            what = f"input {i}" if i < n_in else f"output {i - n_in}"
            t, bits, rank, exp = c.unpack(IO, what)
            if t >= len(specs):
                raise c.error(f"{what} is tensor {t}, but there are {len(specs)} tensors")
            spec = specs[t]
            if (bits, exp, c.dims(rank, what)) != (spec.bits, spec.exp, spec.shape):
                raise c.error(f"{what} describes {bits} bits, exponent {exp} and a shape that differ from "
                              f"tensor {t} ({spec.name!r})")
            lists[i >= n_in].append(spec.name)
        c.done()
        for spec, role in zip(specs, self.roles, strict=True):
            listed = ROLE_INPUT * (spec.name in lists[0]) | ROLE_OUTPUT * (spec.name in lists[1])
            if role != listed:
                raise c.error(f"tensor {spec.name!r} has role {role}, which disagrees with the input/output lists")
        return lists

    def read_ops(self, specs: list[TensorSpec]) -> tuple[list[Node], list[ParamLayout]]:
        c = self.cursor("ops")
        nodes, layouts = [], []
        for i in range(c.count("ops", OP.size)):
            start = c.pos
            size = c.u16(f"the size of op {i}")
            if size < OP.size or size > c.end - start:
                raise c.error(f"op {i} says it takes {size} bytes, but {c.end - start} remain")
            rec = _Cursor(self.data, c.pos, start + size, "ops", self.where)
            nodes.append(self.read_op(rec, i, specs, layouts))
            rec.done()
            c.pos = start + size
        c.done()
        return nodes, layouts

    def read_op(self, c: _Cursor, i: int, specs: list[TensorSpec], layouts: list[ParamLayout]) -> Node:
        op, name = self.string(c, f"the op name of op {i}"), self.string(c, f"the node name of op {i}")
        n_in, n_out, n_attr, n_param = (c.u8(f"the counts of op {i}") for _ in range(4))
        tensors = []
        for k in range(n_in + n_out):
            t = c.u16(f"op {i} tensor {k}")
            if t >= len(specs):
                verb = "reads" if k < n_in else "writes"
                raise c.error(f"op {i} ({name!r}) {verb} tensor {t} but there are {len(specs)} tensors")
            tensors.append(specs[t].name)
        attrs: dict = {}
        for k in range(n_attr):
            key, value = self.read_attr(c, f"op {i} ({name!r}) attribute {k}")
            if key in attrs:
                raise c.error(f"op {i} ({name!r}) has attribute {key!r} twice")
            attrs[key] = value
        params: dict[str, np.ndarray] = {}
        for k in range(n_param):
            pname, arr, layout = self.read_param(c, f"op {i} ({name!r}) param {k}", name, attrs)
            if pname in params:
                raise c.error(f"op {i} ({name!r}) has param {pname!r} twice")
            params[pname] = arr
            layouts.append(layout)
        return Node(name, op, tensors[:n_in], tensors[n_in:], attrs, params)

    def read_attr(self, c: _Cursor, what: str):
        key = self.string(c, f"the key of {what}")
        t = c.u8(f"the type of {what}")
        if t == T_BOOL:
            v = c.u8(what)
            if v > 1:
                raise c.error(f"{what} ({key!r}) is a bool stored as {v}")
            return key, bool(v)
        if t == T_STR:
            return key, self.string(c, what)
        kind, width = t & 0xF0, 1 << (t & 0x0F)
        if kind not in (T_INT, T_INTS) or t & 0x0F > 3:
            raise c.error(f"{what} ({key!r}) has unknown type 0x{t:02x}")
        n = 1 if kind == T_INT else c.u8(f"the length of {what}")
        p = c.take(n * width, f"{what} ({key!r})")
        vals = [int.from_bytes(self.data[p + j * width:p + (j + 1) * width], "little", signed=True) for j in range(n)]
        return key, vals[0] if kind == T_INT else vals

    def read_param(self, c: _Cursor, what: str, node: str, attrs: dict):
        name_i, bits, dtype_bits, rank, offset = c.unpack(PARAM, what)
        name = self.string(c, f"the name of {what}", name_i)
        what = f"{what} ({name!r})"
        if bits not in STORED_BITS or dtype_bits not in DTYPE_BITS or bits > dtype_bits:
            raise c.error(f"{what} is stored at {bits} bits for an int{dtype_bits} array")
        if name == "weight" and "w_bits" in attrs and attrs["w_bits"] != bits:
            raise c.error(f"{what} is stored at {bits} bits but the op's w_bits is {attrs['w_bits']}")
        w_off, w_size = self.sections["weights"]
        shape = c.dims(rank, what, max_elems=8 * w_size // bits)
        count = math.prod(shape)
        nbytes = (count * bits + 7) // 8
        if offset % ALIGN or offset + nbytes > w_size:
            raise c.error(f"{what} spans bytes {offset}..{offset + nbytes} of the weights section, which has "
                          f"{w_size} (offsets must be multiples of {ALIGN})")
        values, clean = decode_values(self.data[w_off + offset:w_off + offset + nbytes], bits, count)
        if not clean:
            raise c.error(f"{what}: the unused bits of its last byte are not zero")
        arr = values.astype(f"int{dtype_bits}").reshape(shape)
        return name, arr, ParamLayout(node, name, bits, offset, nbytes)

"""The C runtime (runtime/) from Python: builds, a model.bin field map, a mutator, and the harness driver.

Shared by tests/test_c_runtime.py and benchmarks/fuzz_runtime.py. The mutator knows the format (a walk
over a valid file lists every field with its offset and width) and, for most mutations, recomputes the
header's size and CRC afterwards, so that the mutation reaches the checks past the CRC; it also edits
whole sections (their table entries follow) and the target profile's JSON (re-deflated).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npukit import modelbin
from npukit.codegen import host

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / "runtime"
KERNELS = ROOT / "npukit" / "codegen" / "runtime"
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
# Fuzz builds: sanitizers, and the loader's own invariant checks (npukit_runtime.c, INVARIANT).
SANITIZE = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
            "-DNPUKIT_CHECK_INVARIANTS"]
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}

# npukit_runtime.h
STATUS = {0: "OK", -1: "ARG", -2: "MAGIC", -3: "SIZE", -4: "VERSION", -5: "CRC", -6: "HEADER", -7: "SECTION",
          -8: "RECORD", -9: "INDEX", -10: "VALUE", -11: "TARGET", -12: "GRAPH", -13: "UNSUPPORTED", -14: "LIMIT",
          -15: "ARENA", -16: "INPUT", -17: "IO"}
EXIT_MODEL, EXIT_INPUT_SIZE = 3, 4  # npukit-run's exit statuses


def find_cc() -> str | None:
    for cc in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def build(program: str, out_dir: Path, *, sanitize: bool = False, cc: str | None = None, opt: str = "-O2") -> Path:
    """Compile runtime/<program>.c (npukit_run, fuzz_harness) with the runtime and the kernel library."""
    return host.build_runtime(out_dir, program, cc=cc or find_cc(), flags=SANITIZE if sanitize else [opt],
                              suffix="-asan" if sanitize else "")


def sanitizers_work(cc: str, tmp: Path) -> bool:
    (tmp / "probe.c").write_text("int main(void) { return 0; }\n")
    exe = tmp / "probe"
    built = subprocess.run([cc, *SANITIZE, str(tmp / "probe.c"), "-o", str(exe)], capture_output=True)
    return built.returncode == 0 and subprocess.run([str(exe)], capture_output=True).returncode == 0


def pack(graph) -> bytes:
    from npukit import memplan

    plan = memplan.plan_graph(graph)
    return modelbin.pack_bytes(graph, plan.offsets, plan.arena_bytes, plan.lower_bound_bytes)


def run_file(exe: Path, model: bytes, x: np.ndarray, workdir: Path) -> subprocess.CompletedProcess:
    """npukit-run on model bytes and a batch of integer inputs (already at the input's dtype)."""
    paths = [Path(workdir) / n for n in ("model.bin", "input.bin", "output.bin")]
    paths[0].write_bytes(model)
    np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<")).tofile(paths[1])
    paths[2].unlink(missing_ok=True)
    return subprocess.run([str(exe), *map(str, paths)], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------------------
# The fields of a valid model.bin


@dataclass(frozen=True)
class Field:
    offset: int
    width: int  # bytes, little-endian
    name: str


def fields(data: bytes) -> list[Field]:
    """Every field of a valid model.bin, with its absolute offset and width (docs/model-format.md)."""
    out = [Field(o, w, n) for o, w, n in ((0, 4, "magic"), (4, 2, "version"), (6, 2, "target_id"), (8, 2, "flags"),
                                          (10, 2, "section_count"), (12, 4, "file_size"), (16, 4, "crc"))]
    sections = {}
    for i in range(struct.unpack_from("<H", data, 10)[0]):
        e = 20 + 12 * i
        kind, _, off, size = struct.unpack_from("<HHII", data, e)
        sections[modelbin.SECTIONS[kind]] = (off, size)
        out += [Field(e, 2, "section kind"), Field(e + 2, 2, "section reserved"), Field(e + 4, 4, "section offset"),
                Field(e + 8, 4, "section size")]
    u16 = lambda p: struct.unpack_from("<H", data, p)[0]  # noqa: E731

    pos = sections["strings"][0]
    out.append(Field(pos, 2, "string count"))
    n, pos = u16(pos), pos + 2
    for _ in range(n):
        out.append(Field(pos, 2, "string length"))
        if u16(pos):
            out.append(Field(pos + 2, 1, "string byte"))
        pos += 2 + u16(pos)

    off, size = sections["target"]
    out += [Field(off, 1, "zlib cmf"), Field(off + 1, 1, "zlib flg"), Field(off + size - 4, 4, "adler32")]
    off, size = sections["device"]
    out += [Field(off + k, 1, "device " + name) for k, name in enumerate(("rounding", "pool_rounding", "memories",
                                                                          "reserved"))]

    pos = sections["tensors"][0]
    out.append(Field(pos, 2, "tensor count"))
    n, pos = u16(pos), pos + 2
    for _ in range(n):
        rank = data[pos + 6]
        out += [Field(pos + o, w, "tensor " + name) for o, w, name in
                ((0, 2, "name"), (2, 1, "bits"), (3, 1, "role"), (4, 2, "exp"), (6, 1, "rank"), (7, 1, "memory"),
                 (8, 4, "arena offset"), (12, 4, "nbytes"))]
        out += [Field(pos + 16 + 4 * k, 4, "tensor dim") for k in range(rank)]
        pos += 16 + 4 * rank

    pos = sections["ops"][0]
    out.append(Field(pos, 2, "op count"))
    n, pos = u16(pos), pos + 2
    for _ in range(n):
        start, size = pos, u16(pos)
        out += [Field(pos + o, w, "op " + name) for o, w, name in
                ((0, 2, "size"), (2, 2, "name"), (4, 2, "node"), (6, 1, "n_in"), (7, 1, "n_out"), (8, 1, "n_attr"),
                 (9, 1, "n_param"))]
        n_in, n_out, n_attr, n_param = data[pos + 6:pos + 10]
        pos += 10
        for _ in range(n_in + n_out):
            out.append(Field(pos, 2, "op tensor"))
            pos += 2
        for _ in range(n_attr):
            t = data[pos + 2]
            out += [Field(pos, 2, "attr key"), Field(pos + 2, 1, "attr type")]
            pos += 3
            if t == modelbin.T_BOOL:
                out.append(Field(pos, 1, "attr bool"))
                pos += 1
            elif t == modelbin.T_STR:
                out.append(Field(pos, 2, "attr string"))
                pos += 2
            else:
                width, count = 1 << (t & 3), 1
                if t & 0xF0 == modelbin.T_INTS:
                    out.append(Field(pos, 1, "attr list length"))
                    count, pos = data[pos], pos + 1
                out += [Field(pos + width * k, width, "attr int") for k in range(count)]
                pos += width * count
        for _ in range(n_param):
            rank = data[pos + 4]
            out += [Field(pos + o, w, "param " + name) for o, w, name in
                    ((0, 2, "name"), (2, 1, "bits"), (3, 1, "dtype_bits"), (4, 1, "rank"), (5, 4, "offset"))]
            out += [Field(pos + 9 + 4 * k, 4, "param dim") for k in range(rank)]
            pos += 9 + 4 * rank
        assert pos == start + size, "fields() walked an op record wrongly"

    off, _ = sections["plan"]
    out += [Field(off, 4, "arena bytes"), Field(off + 4, 4, "lower bound")]

    pos = sections["io"][0]
    out += [Field(pos, 2, "io n_in"), Field(pos + 2, 2, "io n_out")]
    pos += 4
    for _ in range(u16(sections["io"][0]) + u16(sections["io"][0] + 2)):
        rank = data[pos + 3]
        out += [Field(pos, 2, "io tensor"), Field(pos + 2, 1, "io bits"), Field(pos + 3, 1, "io rank"),
                Field(pos + 4, 2, "io exp")]
        out += [Field(pos + 6 + 4 * k, 4, "io dim") for k in range(rank)]
        pos += 6 + 4 * rank

    off, size = sections["weights"]
    out += [Field(off + k, 1, "weight byte") for k in range(0, size, max(1, size // 64))]
    if size:
        out.append(Field(off + size - 1, 1, "weight byte"))
    return out


def sections_of(data: bytes) -> dict[str, bytes]:
    out = {}
    for i in range(struct.unpack_from("<H", data, 10)[0]):
        kind, _, off, size = struct.unpack_from("<HHII", data, 20 + 12 * i)
        out[modelbin.SECTIONS[kind]] = data[off:off + size]
    return out


def assemble(body: dict[str, bytes], target_id: int, order: list[str] | None = None) -> bytes:
    """A model.bin of these section bodies in this order (the reader finds them through the table)."""
    order = order or list(modelbin.SECTIONS.values())
    kinds = {name: kind for kind, name in modelbin.SECTIONS.items()}
    pos = 20 + 12 * len(order)
    table, chunks = bytearray(), []
    for name in order:
        pad = -pos % 4
        chunks += [bytes(pad), body[name]]
        pos += pad
        table += struct.pack("<HHII", kinds[name], 0, pos, len(body[name]))
        pos += len(body[name])
    data = bytearray(modelbin.HEADER.pack(modelbin.MAGIC, modelbin.FORMAT_VERSION, target_id, 0, len(order), pos, 0)
                     + table + b"".join(chunks))
    return fix(data)


def fix(data: bytes | bytearray, size: bool = True) -> bytes:
    """The header's file size (when `size`) and CRC recomputed, so that a mutation gets past them."""
    data = bytearray(data)
    if len(data) >= 20:
        if size:
            struct.pack_into("<I", data, 12, len(data))
        struct.pack_into("<I", data, 16, zlib.crc32(bytes(data[:16]) + bytes(4) + bytes(data[20:])))
    return bytes(data)


# ---------------------------------------------------------------------------------------------------
# Mutations


def _interesting(width: int, old: int, rng: random.Random) -> int:
    top = 1 << (8 * width)
    choices = [0, 1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 127, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF,
               top // 2 - 1, top // 2, top - 1, top - 2, old + 1, old - 1, old * 2, old // 2, old + 4, old - 4,
               rng.randrange(top)]
    return rng.choice(choices) % top


def _write(data: bytearray, f: Field, value: int) -> None:
    data[f.offset:f.offset + f.width] = (value % (1 << 8 * f.width)).to_bytes(f.width, "little")


JSON_EDITS = [
    ("rounding", ["half_up", "half_even", "floor", "trunc", "nearest", 3, None, "", "half_up\u0000"]),
    ("pool_rounding", ["half_up", "trunc", "floor", "half_even", "up", 0, []]),
    ("scheme", ["pow2", "max78000", "tflite", 2, None]),
    ("target_id", [0, 1, 2, 3, 65535, 65536, -1, None]),  # not "1" or 1.0: pydantic takes them, the runtime not
    ("memory", [[], [{"name": "m", "bytes": 1, "holds": ["activations"]}], {}, None, "sram"]),
    ("name", ["x", "", 5, None]),
]


def _json_text_mutation(text: str, rng: random.Random) -> str:
    """A syntax-level edit: truncation, a byte changed, a brace dropped, deep nesting, escapes."""
    pick = rng.randrange(7)
    if pick == 0:
        return text[:rng.randrange(len(text))]
    if pick == 1:
        i = rng.randrange(len(text))
        return text[:i] + rng.choice('{}[]:,"\\ 0-eE.tfnNI\u00e9\x01') + text[i + 1:]
    if pick == 2:
        return text + rng.choice([" ", "\n", "x", "{}", ",", "\t\r\n "])
    if pick == 3:
        depth = rng.choice([2, 20, 31, 32, 33, 100])
        return text[:-1] + ',"deep":' + "[" * depth + "]" * depth + "}"
    if pick == 4:  # an escaped key: equal to "rounding" once decoded, as Python reads it
        return text.replace('"rounding"', rng.choice(['"round\\u0069ng"', '"r\\u006fu\\u006edi\\u006eg"', '"rounding"']), 1)
    if pick == 5:
        return text.replace(":", ": ", rng.randrange(1, 5)).replace(",", " ,\n", rng.randrange(1, 5))
    numbers = ["-0", "1e5", "1.5E-3", "-Infinity", "NaN", "Infinity", "01", "1.", "-", ".5", "1e", "tru", "nul"]
    return text[:-1] + f',"n":{rng.choice(numbers)}' + "}"


def mutate_target(data: bytes, rng: random.Random) -> bytes:
    body = sections_of(data)
    target_id = struct.unpack_from("<H", data, 6)[0]
    text = zlib.decompress(body["target"]).decode()
    if rng.random() < 0.5:
        target = json.loads(text)
        for _ in range(rng.randrange(1, 3)):
            key, values = rng.choice(JSON_EDITS)
            if rng.random() < 0.2:
                target.pop(key, None)
            else:
                target[key] = rng.choice(values)
        text = json.dumps(target, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
        if rng.random() < 0.3:  # the key twice: the last one counts
            key, values = rng.choice(JSON_EDITS)
            text = text[:-1] + f",{json.dumps(key)}:{json.dumps(rng.choice(values))}" + "}"
    else:
        text = _json_text_mutation(text, rng)
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:
        raw = raw.replace(b"a", rng.choice([b"\xc3", b"\xff", b"\xed\xa0\x80", b"\xe0\x80\x80"]), 1)
    level, strategy = rng.choice([(9, zlib.Z_DEFAULT_STRATEGY), (0, zlib.Z_DEFAULT_STRATEGY), (6, zlib.Z_FIXED),
                                  (1, zlib.Z_HUFFMAN_ONLY), (9, zlib.Z_RLE)])
    z = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    body["target"] = z.compress(raw) + z.flush()
    return assemble(body, target_id)


def mutate_zlib(data: bytes, rng: random.Random) -> bytes:
    """Bits of the deflate stream itself (with the Adler-32 sometimes recomputed): the inflater's checks."""
    body = sections_of(data)
    z = bytearray(body["target"])
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(z))
        z[i] ^= 1 << rng.randrange(8)
    if rng.random() < 0.5:
        try:  # keep the trailer consistent with whatever the damaged stream still inflates to
            text = zlib.decompressobj().decompress(bytes(z))
            z[-4:] = struct.pack(">I", zlib.adler32(text))
        except zlib.error:
            pass
    body["target"] = bytes(z)
    return assemble(body, struct.unpack_from("<H", data, 6)[0])


def mutate_section(data: bytes, rng: random.Random) -> bytes:
    """Bytes inserted, deleted or changed inside one section; the table and header follow."""
    body = sections_of(data)
    name = rng.choice([n for n in body if n != "target"])
    b = bytearray(body[name])
    pos = rng.randrange(len(b) + 1)
    pick = rng.randrange(3)
    if pick == 0:
        b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 9, 16])))
    elif pick == 1:
        del b[pos:pos + rng.choice([1, 2, 4, 6, 9, 16])]
    elif b:
        b[min(pos, len(b) - 1)] = rng.randrange(256)
    body[name] = bytes(b)
    order = list(body)
    if rng.random() < 0.3:
        rng.shuffle(order)
    return assemble(body, struct.unpack_from("<H", data, 6)[0], order)


def mutate(data: bytes, rng: random.Random, other: bytes | None = None) -> bytes:
    """One mutated file; most mutations recompute the file size and CRC so that later checks see them."""
    pick = rng.random()
    if pick < 0.40:
        d = bytearray(data)
        fs = fields(data)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            f = rng.choice(fs)
            _write(d, f, _interesting(f.width, int.from_bytes(d[f.offset:f.offset + f.width], "little"), rng))
        return fix(d, size=rng.random() < 0.95) if rng.random() < 0.95 else bytes(d)
    if pick < 0.55:
        d = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 4, 8])):
            i = rng.randrange(len(d))
            d[i] ^= 1 << rng.randrange(8)
        return fix(d) if rng.random() < 0.9 else bytes(d)
    if pick < 0.70:
        return mutate_section(data, rng)
    if pick < 0.78:
        return mutate_target(data, rng)
    if pick < 0.82:
        return mutate_zlib(data, rng)
    if pick < 0.90:
        cut = rng.randrange(len(data) + 8)
        d = data[:cut] if cut <= len(data) else data + bytes(rng.randrange(256) for _ in range(cut - len(data)))
        return fix(d) if rng.random() < 0.6 else d
    if pick < 0.95 and other:  # a chunk of another valid model
        a, n = rng.randrange(len(data)), rng.randrange(1, 64)
        b = rng.randrange(max(1, len(other) - n))
        d = bytearray(data)
        d[a:a + n] = other[b:b + n]
        return fix(d[:len(data)])
    d = bytearray(data)  # two fields swapped: indices and offsets that are valid elsewhere
    fs = fields(data)
    f, g = rng.choice(fs), rng.choice(fs)
    if f.width == g.width:
        vf, vg = bytes(d[f.offset:f.offset + f.width]), bytes(d[g.offset:g.offset + g.width])
        d[f.offset:f.offset + f.width], d[g.offset:g.offset + g.width] = vg, vf
    return fix(d)


def pack_unchecked(graph, offsets: dict, arena: int, lower: int, order: list[str] | None = None) -> bytes:
    """modelbin.pack_bytes without its graph and plan checks: a file whose records are well formed but
    whose graph may be anything the writer can encode, so that the readers' graph checks get to judge.
    `order`: the sections' order in the file (any section last puts a read past it outside the file, where
    AddressSanitizer sees it)."""
    profile = modelbin._target_profile(graph.target, "the target")
    strings = modelbin._StringTable()
    index = {name: i for i, name in enumerate(graph.tensors)}
    weights = bytearray()
    body = {"device": modelbin._pack_device(profile),
            "target": modelbin._pack_target(graph.target),
            "tensors": modelbin._pack_tensors(graph, offsets, strings, modelbin._activation_memory(profile)),
            "ops": modelbin._pack_ops(graph, index, strings, weights),
            "plan": modelbin.PLAN.pack(arena, lower),
            "io": modelbin._pack_io(graph, index),
            "weights": bytes(weights)}
    body["strings"] = strings.pack()
    return assemble(body, profile.target_id, order)


def _new_int(v: int, rng: random.Random) -> int:
    return rng.choice([v + 1, v - 1, 0, -1, 1, 2, 3, v * 2, -v, 2**31, 2**40, -(2**63), 2**63 - 1, 127, 128, 16, 62, 63])


def mutate_graph(packed, rng: random.Random) -> bytes:
    """One semantic change (an attribute, a parameter's shape or type, a tensor's spec, a node's wiring or
    op, the io lists, the plan) re-packed consistently; ModelBinError when the writer cannot encode it."""
    import copy

    from npukit.ir import TensorSpec

    g = copy.deepcopy(packed.graph)
    offsets, arena, lower = dict(packed.offsets), packed.arena_bytes, packed.lower_bound_bytes
    if rng.random() < 0.4:  # the tensor table in another order (valid): each record gets to be the last one
        names = list(g.tensors)
        names.append(names.pop(rng.randrange(len(names))))
        g.tensors = {n: g.tensors[n] for n in names}
    node = rng.choice(g.nodes)
    names = list(g.tensors)
    pick = rng.randrange(12)
    if pick <= 2 and node.attrs:  # an attribute's value
        key = rng.choice(list(node.attrs))
        v = node.attrs[key]
        if isinstance(v, bool):
            node.attrs[key] = rng.choice([not v, 0, 2])
        elif isinstance(v, int):
            node.attrs[key] = _new_int(v, rng)
        elif isinstance(v, list):
            v = list(v)
            k = rng.randrange(3)
            if k == 0 and v:
                v[rng.randrange(len(v))] = _new_int(v[0], rng)
            elif k == 1 and v:
                v.pop()
            else:
                v.append(rng.choice([0, 1, 2]))
            node.attrs[key] = v
        else:
            node.attrs[key] = rng.choice(["half_up", "floor", "trunc", "half_even", "bogus", 1, [1]])
    elif pick == 3:  # an attribute dropped, or one the op does not read
        if node.attrs and rng.random() < 0.5:
            node.attrs.pop(rng.choice(list(node.attrs)))
        else:
            node.attrs[rng.choice(["w_exp", "b_exp", "extra", "ndim", "relu"])] = rng.choice([0, 99, 97, True, [1], "x"])
    elif pick == 4 and node.params:  # a parameter's shape, type or presence
        key = rng.choice(list(node.params))
        w = node.params[key]
        k = rng.randrange(4)
        if k == 0:
            node.params.pop(key)
        elif k == 1:
            node.params[key] = w.reshape(-1)
        elif k == 2 and w.ndim > 1:
            node.params[key] = np.ascontiguousarray(np.swapaxes(w, 0, 1))
        else:
            node.params[key] = w.astype(rng.choice([np.int8, np.int16, np.int32, np.int64]))
    elif pick == 5:  # a tensor's shape, width or exponent
        t = g.tensors[rng.choice(names)]
        k = rng.randrange(3)
        shape = list(t.shape)
        if k == 0 and shape:
            i = rng.randrange(len(shape))
            shape[i] = max(1, shape[i] + rng.choice([-1, 1, 2]))
        elif k == 1:
            shape = shape[:-1] if shape and rng.random() < 0.5 else shape + [1]
        bits = rng.choice([t.bits, t.bits, 1, 2, 4, 9, 16, 17, 32, 33, 64]) if k == 2 else t.bits
        exp = t.exp + rng.choice([0, 1, -1, 100, -100]) if k == 2 else t.exp
        g.tensors[t.name] = TensorSpec(t.name, tuple(shape), bits, exp)
    elif pick == 6:  # a node reads or writes another tensor
        lst = node.inputs if rng.random() < 0.6 else node.outputs
        k = rng.randrange(3)
        if k == 0:
            lst[rng.randrange(len(lst))] = rng.choice(names)
        elif k == 1:
            lst.append(rng.choice(names))
        elif len(lst) > 1:
            lst.pop()
    elif pick == 7:  # the op itself
        node.op = rng.choice(["conv", "linear", "maxpool", "avgpool", "global_avgpool", "add", "concat", "relu",
                              "reshape", "bogus"])
    elif pick == 8 and len(g.nodes) > 1:  # nodes out of order, dropped or repeated
        i, j = rng.sample(range(len(g.nodes)), 2)
        k = rng.randrange(3)
        if k == 0:
            g.nodes[i], g.nodes[j] = g.nodes[j], g.nodes[i]
        elif k == 1:
            g.nodes.pop(i)
        else:
            g.nodes.insert(j, copy.deepcopy(g.nodes[i]))
    elif pick == 9:  # the graph's inputs and outputs
        lst = g.inputs if rng.random() < 0.5 else g.outputs
        if rng.random() < 0.5:
            lst.append(rng.choice(names))
        else:
            lst[rng.randrange(len(lst))] = rng.choice(names)
    elif pick == 10:  # the plan
        t = rng.choice(names)
        k = rng.randrange(3)
        if k == 0:
            offsets.pop(t, None)
        elif k == 1:
            offsets[t] = max(0, offsets.get(t, 0) + rng.choice([-4, -1, 1, 4, 64]))
        else:
            arena = max(0, arena + rng.choice([-1, 1, -64]))
            lower = min(lower, arena)
    else:  # the target profile's arithmetic
        key = rng.choice(["rounding", "pool_rounding", "scheme", "target_id"])
        g.target = dict(g.target, **{key: rng.choice({"rounding": ["floor", "trunc", "half_even"],
                                                      "pool_rounding": ["floor", "trunc", "half_even"],
                                                      "scheme": ["pow2", "max78000"],
                                                      "target_id": [0, 7, 65535]}[key])})
    if rng.random() < 0.7:  # keep every placed tensor inside the arena, so that later checks run
        size = {n: math.prod(t.shape) * t.dtype.itemsize for n, t in g.tensors.items()}
        arena = max([arena, *(o + size[n] for n, o in offsets.items() if n in size)])
    offsets = {n: o for n, o in offsets.items() if n in g.tensors}
    order = list(modelbin.SECTIONS.values())
    if rng.random() < 0.5:
        order.append(order.pop(rng.randrange(len(order))))
    return pack_unchecked(g, offsets, arena, min(lower, arena), order)


def corpus(bases: list[bytes], n: int, seed: int, graph_share: float = 0.25) -> list[bytes]:
    """`n` files: a few special ones, the bases, then mutations of them; `graph_share` of the mutations
    are graph-level (mutate_graph), the rest byte- and section-level (mutate)."""
    rng = random.Random(seed)
    packed = [modelbin.read(b) for b in bases]
    special = [b"", b"NPUK", bases[0][:19], bases[0][:20], fix(bases[0][:20]), b"PK\x03\x04" + bases[0][4:]]
    out = list(special) + list(bases)
    while len(out) < n:
        i = rng.randrange(len(bases))
        if rng.random() < graph_share:
            try:
                out.append(mutate_graph(packed[i], rng))
            except (modelbin.ModelBinError, ValueError, OverflowError, KeyError, IndexError):
                pass  # the writer cannot encode this one
            continue
        out.append(mutate(bases[i], rng, bases[(i + 1) % len(bases)]))
    return out[:n]


# ---------------------------------------------------------------------------------------------------
# The harness and the Python reader side by side


@dataclass
class Result:
    load: int
    invoke: str  # "-": not loaded; "s": too large to run; else the status
    crc: str  # CRC-32 of the output for the pattern input, or "-"


def pattern_input(spec) -> np.ndarray:
    """The harness's second input: ((i * 73 + 11) mod 256) - 128, clipped to the input's bit range."""
    n = int(np.prod(spec.shape))
    lo, hi = -(1 << spec.bits - 1), (1 << spec.bits - 1) - 1
    v = (np.arange(n, dtype=np.int64) * 73 + 11) % 256 - 128
    return np.clip(v, lo, hi).astype(spec.dtype).reshape(1, *spec.shape)


def feed(harness: Path, cases: list[bytes], timeout: float = 600) -> tuple[list[Result], subprocess.CompletedProcess]:
    stream = b"".join(struct.pack("<I", len(c)) + c for c in cases)
    res = subprocess.run([str(harness)], input=stream, capture_output=True, timeout=timeout,
                         env=dict(os.environ, **SAN_ENV))
    lines = [line.split() for line in res.stdout.decode().split("\n")[:-1]]  # a crash leaves a partial line
    return [Result(int(a), b, c) for a, b, c in (f for f in lines if len(f) == 3)], res


def plan_is_sound(packed) -> bool:
    """Whether no two tensors live at a common step share a byte (the Python reader does not check this;
    a runtime that trusts the plan computes other numbers when it is broken). As memplan.buffers_from_graph:
    a reshape at its input's offset is a view of it, and an in-place op (relu, add) may write exactly over an
    input that dies at its step."""
    from npukit.ops import get_op

    g, off = packed.graph, packed.offsets
    end, first, last = len(g.nodes), {t: 0 for t in g.inputs}, {}
    for i, node in enumerate(g.nodes):
        last.update(dict.fromkeys(node.inputs, i))
        first.update(dict.fromkeys(node.outputs, i))
    last.update(dict.fromkeys(g.outputs, end))
    root = {t: t for t in first}
    for node in g.nodes:
        if get_op(node.op).view and off.get(node.outputs[0]) == off.get(node.inputs[0]):
            root[node.outputs[0]] = root[node.inputs[0]]
    span: dict[str, list[int]] = {}
    for t in first:
        r = span.setdefault(root[t], [first[root[t]], first[root[t]]])
        r[1] = max(r[1], last.get(t, first[t]))
    size = {t: math.prod(g.tensors[t].shape) * g.tensors[t].dtype.itemsize for t in first}
    inplace = {(n.outputs[0], root[x]) for n in g.nodes if get_op(n.op).inplace for x in n.inputs}
    roots = sorted(span)
    for a_i, a in enumerate(roots):
        for b in roots[a_i + 1:]:
            (fa, la), (fb, lb) = span[a], span[b]
            if la < fb or lb < fa or a not in off or b not in off:
                continue
            if off[a] < off[b] + size[b] and off[b] < off[a] + size[a]:
                ok = off[a] == off[b] and ((a, b) in inplace and lb == fa and size[a] <= size[b]
                                           or (b, a) in inplace and la == fb and size[b] <= size[a])
                if not ok:
                    return False
    return True


def python_read(data: bytes):
    """The Python reader's verdict: (PackedModel or None, error message or None)."""
    try:
        return modelbin.read(data), None
    except modelbin.ModelBinError as e:
        return None, str(e)


@dataclass
class Disagreement:
    index: int
    c: str
    python: str


def cross_check(cases: list[bytes], results: list[Result], engine: bool = True) -> tuple[dict, list[Disagreement]]:
    """The C loader against the Python reader on each case, and for the models both accept and the C
    runtime ran, the output on the pattern input against the engine's.

    Tolerated: the C runtime refuses as UNSUPPORTED or LIMIT what Python accepts (it runs a subset), and
    it accepts what Python refuses for the target profile alone (the runtime reads the device section and
    leaves the deflated profile to the CRC): a damaged stream, JSON or profile, a target id other than the
    header's, a device section that disagrees with the profile."""
    from npukit import engine as npk_engine

    stats = {"cases": len(cases), "c_ok": 0, "python_ok": 0, "agree": 0, "unsupported_or_limit": 0,
             "profile_not_read": 0, "engine_compared": 0}
    bad = []
    for i, (data, r) in enumerate(zip(cases, results, strict=True)):
        packed, err = python_read(data)
        stats["python_ok"] += packed is not None
        stats["c_ok"] += r.load == 0
        if r.load in (-13, -14):
            stats["unsupported_or_limit"] += 1
            continue
        if (r.load == 0) == (packed is not None):
            stats["agree"] += 1
        elif r.load == 0 and ("section 'target'" in err or "target profile" in err):
            stats["profile_not_read"] += 1
            continue
        else:
            bad.append(Disagreement(i, STATUS.get(r.load, str(r.load)), err or "accepted"))
            continue
        if engine and packed is not None and r.crc != "-":
            g = packed.graph
            if not plan_is_sound(packed):
                stats["plan_unsound_not_compared"] = stats.get("plan_unsound_not_compared", 0) + 1
                continue
            try:
                ys = npk_engine.run(g, *(pattern_input(g.input_spec(k)) for k in range(len(g.inputs))))
            except KeyError as e:  # a stored profile without the key: the engine reads it without a default
                stats[f"engine KeyError {e}"] = stats.get(f"engine KeyError {e}", 0) + 1
                continue
            # the harness chains the CRC over the outputs in order: the CRC of their bytes back to back
            data = b"".join(np.ascontiguousarray(y).astype(y.dtype.newbyteorder("<")).tobytes() for y in ys)
            want = f"{zlib.crc32(data):08x}"
            stats["engine_compared"] += 1
            if want != r.crc:
                bad.append(Disagreement(i, f"output crc {r.crc}", f"engine crc {want}"))
    return stats, bad

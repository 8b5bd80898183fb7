"""model.bin: exact round trip, sub-byte weight packing, size overhead, clear errors, and a fuzzed loader."""

from __future__ import annotations

import copy
import math
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
from c_runtime_tools import assemble
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models_for_tests import LOWBIT, Branchy

import npukit
from npukit import modelbin
from npukit.ir import Graph
from npukit.modelbin import (
    FORMAT_VERSION,
    HEADER,
    SECTION,
    SECTIONS,
    ModelBinError,
    PackedModel,
    pack_bytes,
    read,
    write,
)
from npukit.models import mnist1d_cnn


def _lowbit_model() -> nn.Module:
    # 30 and 105 weights: the last byte of each 2-bit weight, and of the linear's 4-bit one, is partly unused.
    return nn.Sequential(nn.Conv1d(2, 5, 3), nn.ReLU(), nn.MaxPool1d(1), nn.Flatten(), nn.Linear(35, 3))


def _build(model: nn.Module, shape: tuple[int, ...], **kw) -> Graph:
    torch.manual_seed(0)
    return npukit.to_ir(npukit.prepare(model, torch.randn(*shape), rules="off", **kw))


@pytest.fixture(scope="module")
def graphs() -> dict[str, Graph]:
    torch.manual_seed(0)
    return {
        "demo": _build(mnist1d_cnn(), (8, 1, 40)),
        "branchy": _build(Branchy(), (4, 3, 8, 8)),
        "lowbit4": _build(_lowbit_model(), (4, 2, 9), target=LOWBIT, weight_bits=4),
        "lowbit2": _build(_lowbit_model(), (4, 2, 9), target=LOWBIT, weight_bits=2),
    }


def trivial_plan(graph: Graph) -> tuple[dict[str, int], int, int]:
    """Every tensor after the previous one (4-byte aligned): offsets, arena, a lower bound."""
    offsets, pos, biggest = {}, 0, 0
    for name, t in graph.tensors.items():
        size = math.prod(t.shape) * t.dtype.itemsize
        offsets[name] = pos
        pos += -(-size // 4) * 4
        biggest = max(biggest, size)
    return offsets, pos, biggest


def pack(graph: Graph) -> bytes:
    return pack_bytes(graph, *trivial_plan(graph))


def reseal(data: bytes, size: bool = True) -> bytes:
    """Fix the file size (optionally) and the CRC after a mutation, so the deeper checks are reached."""
    if len(data) < HEADER.size:
        return data
    b = bytearray(data)
    if size:
        struct.pack_into("<I", b, 12, len(b))
    struct.pack_into("<I", b, modelbin.CRC_AT, 0)
    struct.pack_into("<I", b, modelbin.CRC_AT, zlib.crc32(b))
    return bytes(b)


def section(data: bytes, name: str) -> tuple[int, int]:
    n = struct.unpack_from("<H", data, 10)[0]
    for i in range(n):
        kind, _, off, size = SECTION.unpack_from(data, HEADER.size + i * SECTION.size)
        if SECTIONS.get(kind) == name:
            return off, size
    raise KeyError(name)


def assert_graphs_identical(a: Graph, b: Graph) -> None:
    assert a.target == b.target
    assert a.inputs == b.inputs and a.outputs == b.outputs
    assert list(a.tensors) == list(b.tensors)
    for name, ta in a.tensors.items():
        tb = b.tensors[name]
        assert (ta.name, tuple(ta.shape), ta.bits, ta.exp) == (tb.name, tb.shape, tb.bits, tb.exp)
        assert isinstance(tb.shape, tuple)
    assert len(a.nodes) == len(b.nodes)
    for na, nb in zip(a.nodes, b.nodes, strict=True):
        assert (na.name, na.op, na.inputs, na.outputs) == (nb.name, nb.op, nb.inputs, nb.outputs)
        assert na.attrs == nb.attrs
        assert [type(v) for v in na.attrs.values()] == [type(v) for v in nb.attrs.values()]
        assert list(na.params) == list(nb.params)
        for k, pa in na.params.items():
            pb = nb.params[k]
            assert pa.dtype == pb.dtype and pa.shape == pb.shape and np.array_equal(pa, pb)


# ---------------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("which", ["demo", "branchy", "lowbit4", "lowbit2"])
def test_round_trip_is_exact(graphs, which):
    g = graphs[which]
    offsets, arena, lower = trivial_plan(g)
    data = pack_bytes(g, offsets, arena, lower)
    m = read(data)
    assert isinstance(m, PackedModel)
    assert_graphs_identical(g, m.graph)
    assert (m.offsets, m.arena_bytes, m.lower_bound_bytes) == (offsets, arena, lower)
    assert m.version == modelbin.FORMAT_VERSION
    assert m.target_id == npukit.load_target(g.target).target_id
    assert sum(m.sizes.values()) == len(data) and set(SECTIONS.values()) < set(m.sizes)
    assert pack_bytes(m.graph, m.offsets, m.arena_bytes, m.lower_bound_bytes) == data  # deterministic


@pytest.mark.parametrize("which", ["demo", "branchy", "lowbit4", "lowbit2"])
def test_engine_gives_identical_outputs(graphs, which):
    g = graphs[which]
    loaded = read(pack(g)).graph
    rng = np.random.default_rng(0)
    x = g.quantize_input(rng.normal(size=(16, *g.input_spec().shape)) * 2)
    for ya, yb in zip(npukit.run(g, x), npukit.run(loaded, x), strict=True):
        assert ya.dtype == yb.dtype and np.array_equal(ya, yb)


def test_partial_plan_and_header_target_id(graphs):
    g = graphs["demo"]  # venus: target id 1, activations in memory 0 (sram)
    offsets = {"conv1": 0, "conv2": 1280}
    data = pack_bytes(g, offsets, 4096, 2560)
    assert struct.unpack_from("<H", data, 6)[0] == 1
    m = read(data)
    assert m.offsets == offsets and m.target_id == 1


def test_real_memory_plan(graphs):
    from npukit import memplan

    g = graphs["branchy"]
    p = memplan.plan_graph(g)
    m = read(pack_bytes(g, p.offsets, p.arena_bytes, p.lower_bound_bytes))
    assert (m.offsets, m.arena_bytes, m.lower_bound_bytes) == (p.offsets, p.arena_bytes, p.lower_bound_bytes)
    assert_graphs_identical(g, m.graph)


def test_bias_beyond_int32_is_stored_as_int64(graphs):
    g = copy.deepcopy(graphs["lowbit4"])
    g.nodes[-1].params["bias"][0] = -(1 << 40)
    m = read(pack(g))
    assert_graphs_identical(g, m.graph)
    bits = {(p.node, p.name): p.bits for p in m.params}
    assert bits[(g.nodes[-1].name, "bias")] == 64 and bits[(g.nodes[0].name, "bias")] == 32


def test_write_is_atomic_and_reads_back(graphs, tmp_path):
    g = graphs["branchy"]
    path = write(g, *trivial_plan(g), tmp_path / "out" / "model.bin")
    assert path.read_bytes() == pack(g)
    assert [p.name for p in path.parent.iterdir()] == ["model.bin"]  # no .tmp left behind
    assert_graphs_identical(g, read(path).graph)
    assert_graphs_identical(g, read(str(path)).graph)
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(ModelBinError, match="cannot write"):
        write(g, *trivial_plan(g), tmp_path / "dir.bin")
    assert not (tmp_path / "dir.bin.tmp").exists()
    with pytest.raises(ModelBinError, match="no such file"):
        read(tmp_path / "missing.bin")


# ---------------------------------------------------------------------------------------------------
# Weight packing and size


def test_subbyte_bit_order():
    # Two's complement fields, the first value in the lowest bits of each byte; unused bits zero.
    assert modelbin.encode_values(np.array([1, -1, -8, 7, 3]), 4) == bytes([0xF1, 0x78, 0x03])
    assert modelbin.encode_values(np.array([1, -1, -2, 0, 1]), 2) == bytes([0b00_10_11_01, 0x01])
    assert modelbin.encode_values(np.array([-2, 300]), 16) == bytes([0xFE, 0xFF, 0x2C, 0x01])


@pytest.mark.parametrize("bits", [2, 4, 8, 16, 32, 64])
def test_encode_decode_every_value(bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    values = np.concatenate([np.arange(max(lo, -300), min(hi, 300) + 1), [lo, hi, lo, hi, 0]])
    buf = modelbin.encode_values(values, bits)
    assert len(buf) == -(-len(values) * bits // 8)
    out, clean = modelbin.decode_values(buf, bits, len(values))
    assert clean and np.array_equal(out, values)


@pytest.mark.parametrize("which,bits", [("lowbit4", 4), ("lowbit2", 2), ("demo", 8)])
def test_weights_take_their_bit_width(graphs, which, bits):
    g = graphs[which]
    m = read(pack(g))
    end = 0
    for p in m.params:
        arr = g.node(p.node).params[p.name]
        if p.name == "weight":
            assert p.bits == g.node(p.node).attrs["w_bits"] == bits
            assert p.nbytes == -(-arr.size * bits // 8)  # w.size * bits / 8, rounded up to a byte
        assert p.offset % 4 == 0 and p.offset >= end
        end = p.offset + p.nbytes
    assert m.sizes["weights"] == end


def test_demo_size_overhead(graphs):
    m = read(data := pack(graphs["demo"]))
    weights = m.sizes["weights"]
    # header, tables and per-op attributes; the deflated target profile (with its rules) rides on top
    budget = weights + m.sizes["target"] + 1536 + 0.02 * weights
    print(f"\ndemo model.bin: {len(data)} bytes, packed weights {weights}, overhead {len(data) - weights} "
          f"(budget {budget - weights:.0f}); sections {m.sizes}")
    assert len(data) <= budget


# ---------------------------------------------------------------------------------------------------
# Errors: packing


def test_pack_refuses_what_the_format_cannot_hold(graphs):
    g = graphs["lowbit2"]
    offsets, arena, lower = trivial_plan(g)
    with pytest.raises(ModelBinError, match="does not fit the 8-byte arena"):
        pack_bytes(g, offsets, 8, 0)
    with pytest.raises(ModelBinError, match="'nope', which is not a tensor"):
        pack_bytes(g, {"nope": 0}, arena, lower)
    with pytest.raises(ModelBinError, match="lower_bound_bytes 9 exceeds arena_bytes 8"):
        pack_bytes(g, {}, 8, 9)
    bad = copy.deepcopy(g)
    bad.nodes[0].params["weight"][0, 0, 0] = 5  # beyond 2 bits
    with pytest.raises(ModelBinError, match="outside the signed 2-bit range"):
        pack(bad)
    bad = copy.deepcopy(g)
    bad.nodes[0].attrs["scale"] = 0.5
    with pytest.raises(ModelBinError, match="attribute 'scale' = 0.5"):
        pack(bad)
    bad = copy.deepcopy(g)
    del bad.nodes[0].attrs["relu"]
    with pytest.raises(ModelBinError, match="lacks attribute 'relu'"):
        pack(bad)


# ---------------------------------------------------------------------------------------------------
# Errors: reading


@pytest.fixture(scope="module")
def small(graphs) -> bytes:
    return pack(graphs["branchy"])


def test_wrong_magic(small):
    with pytest.raises(ModelBinError, match=r"not an npukit model.bin: it starts with b'PK\\x03\\x04'"):
        read(b"PK\x03\x04" + small[4:])
    with pytest.raises(ModelBinError, match="not an npukit model.bin"):
        read(b"")


def test_future_version(small):
    b = bytearray(small)
    struct.pack_into("<H", b, 4, 7)
    with pytest.raises(ModelBinError, match=rf"format version 7 is newer than this npukit reads \({FORMAT_VERSION}\); upgrade"):
        read(bytes(b))


def test_older_version_is_refused_by_name(small):
    """Version 2 had no device section (the runtime inflated the profile for its rounding modes): re-pack."""
    b = bytearray(small)
    struct.pack_into("<H", b, 4, 2)
    with pytest.raises(ModelBinError, match=rf"format version 2 is older than this npukit reads \({FORMAT_VERSION}\); "
                                            "re-pack the model"):
        read(reseal(bytes(b)))


@pytest.mark.parametrize("record, message", [
    (lambda m: bytes([2, 0, m, 0]), "rounding is floor, but the target profile says half_up"),
    (lambda m: bytes([0, 7, m, 0]), r"pool_rounding is mode 7, not one of 4 \(half_up, half_even, floor, trunc\)"),
    (lambda m: bytes([0, 0, m + 5, 0]), "memories, but the target profile lists"),
    (lambda m: bytes([0, 0, m, 1]), "reserved byte 1, not 0"),
    (lambda m: bytes([0, 0, m]), "needs 4 bytes"),
    (lambda m: bytes([0, 0, m, 0, 0]), "1 bytes left over"),
])
def test_device_section_must_say_what_the_profile_says(small, record, message):
    """The device section is what the C runtime reads instead of the profile: the Python reader holds the two equal."""
    packed = read(small)
    body = {name: bytes(small[o:o + n]) for name, (o, n) in ((name, section(small, name)) for name in SECTIONS.values())}
    n_memory = len(packed.graph.target["memory"])
    assert body["device"] == bytes([0, 0, n_memory, 0])  # half_up, half_up
    body["device"] = record(n_memory)
    with pytest.raises(ModelBinError, match=f"section 'device': .*{message}"):
        read(assemble(body, packed.target_id))


def test_bad_crc(small):
    b = bytearray(small)
    b[-1] ^= 0x10
    with pytest.raises(ModelBinError, match="CRC mismatch: the header says 0x[0-9a-f]{8}, the contents give"):
        read(bytes(b))


def test_truncated(small):
    with pytest.raises(ModelBinError, match=f"the header says {len(small)} bytes but the file has 100 .truncated"):
        read(small[:100])
    with pytest.raises(ModelBinError, match="shorter than the 20-byte header"):
        read(small[:10])


def test_section_out_of_bounds(small):
    off, size = section(small, "ops")
    b = bytearray(small)
    i = list(SECTIONS.values()).index("ops")  # the writer's table is in SECTIONS order
    struct.pack_into("<I", b, HEADER.size + i * SECTION.size + 8, len(small))
    with pytest.raises(ModelBinError, match=f"section 'ops' ends at byte {off + len(small)} beyond the file "
                                            f"size {len(small)}"):
        read(reseal(bytes(b)))


def test_op_reading_a_missing_tensor(small, graphs):
    off, _ = section(small, "ops")
    b = bytearray(small)
    struct.pack_into("<H", b, off + 12, 300)  # count, record size, op, name, 4 counts: the first input
    n = len(graphs["branchy"].tensors)
    with pytest.raises(ModelBinError, match=rf"op 0 \('c1'\) reads tensor 300 but there are {n} tensors"):
        read(reseal(bytes(b)))


def test_damaged_weights_detail(graphs):
    data = pack(graphs["lowbit4"])
    off, size = section(data, "weights")
    fc = next(p for p in read(data).params if (p.node, p.name) == ("4", "weight"))
    assert fc.nbytes == 53  # 105 weights at 4 bits: the last byte half used
    b = bytearray(data)
    b[off + fc.offset + fc.nbytes - 1] |= 0xF0
    with pytest.raises(ModelBinError, match="unused bits of its last byte are not zero"):
        read(reseal(bytes(b)))


def test_unexpected_parser_failure_is_still_a_model_bin_error(small, monkeypatch):
    def broken(self):
        raise IndexError("a check the parser lacks")

    monkeypatch.setattr(modelbin._Parser, "parse", broken)
    with pytest.raises(ModelBinError, match=r"unreadable model.bin \(IndexError: a check the parser lacks\)"):
        read(small)


# ---------------------------------------------------------------------------------------------------
# Fuzz: every damaged file loads to a valid model or raises ModelBinError, nothing else


@st.composite
def damaged(draw, base: bytes) -> bytes:
    n = len(base)
    kind = draw(st.sampled_from(["truncate", "flip", "header", "random", "table", "count", "overwrite"]))
    if kind == "truncate":
        data = base[: draw(st.integers(0, n - 1))]
    elif kind == "flip":
        b = bytearray(base)
        for pos in draw(st.lists(st.integers(0, 8 * n - 1), min_size=1, max_size=4)):
            b[pos // 8] ^= 1 << (pos % 8)
        data = bytes(b)
    elif kind == "header":
        head = draw(st.binary(min_size=HEADER.size, max_size=HEADER.size))
        data = (draw(st.sampled_from([head[:4], modelbin.MAGIC])) + head[4:] + base[HEADER.size:])
    elif kind == "random":
        data = draw(st.sampled_from([b"", modelbin.MAGIC, base[:HEADER.size]])) + draw(st.binary(max_size=400))
    elif kind == "table":  # a section's offset or size anywhere, often just past the end
        b = bytearray(base)
        i = draw(st.integers(0, len(SECTIONS) - 1))
        field = draw(st.sampled_from([0, 4, 8]))  # kind, offset, size
        value = draw(st.one_of(st.integers(0, 0xFFFFFFFF), st.integers(n - 8, n + 8).map(lambda v: max(v, 0))))
        struct.pack_into("<I", b, HEADER.size + i * SECTION.size + field, value)
        data = bytes(b)
    else:  # a count, index or value inside a section: huge counts, indices past the end, bad types
        off, size = section(base, draw(st.sampled_from(list(SECTIONS.values()))))
        if size == 0:
            return base
        b = bytearray(base)
        pos = off + (0 if kind == "count" else draw(st.integers(0, size - 1)))
        value = draw(st.sampled_from([0, 1, 2, 0xFF, 0xFFFF, 0x7FFF, 0x8000]) | st.integers(0, 0xFFFF))
        struct.pack_into("<H", b, min(pos, len(b) - 2), value)
        data = bytes(b)
    seal = draw(st.sampled_from(["none", "crc", "size+crc"]) if kind in ("truncate", "flip", "header")
                else st.sampled_from(["size+crc", "size+crc", "none"]))
    return data if seal == "none" else reseal(data, size=seal == "size+crc")


@pytest.fixture(scope="module")
def bases(graphs) -> dict[str, bytes]:
    return {k: pack(graphs[k]) for k in ("branchy", "lowbit4", "lowbit2")}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_files_load_or_raise_model_bin_error(bases, data):
    base = bases[data.draw(st.sampled_from(sorted(bases)))]
    blob = data.draw(damaged(base))
    try:
        # The parser itself, not `read`: read's safety net would hide a missing check behind ModelBinError.
        m = modelbin._Parser(blob, "fuzz").parse()
    except ModelBinError as e:
        assert str(e).startswith("fuzz: ") and len(str(e)) < 2000  # says where, and stays readable
        return
    # Whatever loads is a valid model: it validates, repacks, and reads back the same.
    assert isinstance(m, PackedModel)
    again = read(pack_bytes(m.graph, m.offsets, m.arena_bytes, m.lower_bound_bytes))
    assert_graphs_identical(m.graph, again.graph)


def test_file_kind_knows_the_magic(small, tmp_path):
    from npukit.fileio import file_kind  # reads the first bytes without importing modelbin

    (tmp_path / "model.dat").write_bytes(small)
    assert file_kind(tmp_path / "model.dat") == "modelbin"


def test_a_profile_written_without_defaulted_fields_reads_back_complete(graphs):
    """A profile stored without `rounding`/`pool_rounding` (fields with defaults) loads with the defaults
    filled in, so the engine runs it (it used to raise KeyError)."""
    g = copy.deepcopy(graphs["demo"])
    g.target = {k: v for k, v in g.target.items() if k not in ("rounding", "pool_rounding")}
    m = read(pack_bytes(g, *trivial_plan(g)))
    defaults = npukit.TargetProfile.model_fields
    assert m.graph.target["rounding"] == defaults["rounding"].default
    assert m.graph.target["pool_rounding"] == defaults["pool_rounding"].default
    x = np.zeros((2, *g.input_spec().shape), np.int8)
    assert npukit.run(m.graph, x)[0].shape == (2, *g.output_spec().shape)

"""Multiply-accumulate layers: conv (1d, 2d, grouped/depthwise) and linear, with BatchNorm folded and
ReLU fused into the output saturation (the QAT module and capture: npukit/qat/mac.py).

Arithmetic (docs/arithmetic.md): acc = sum(x * w) + bias * 2**bias_shift, then the target's scheme
requantises it with the attributes it stored in the node (`npukit.schemes`). A wide output keeps the
accumulator itself (out_shift 0, the accumulator's range).
"""

from __future__ import annotations

import math

import numpy as np

from .. import arith
from ..errors import NpukitError
from ..ir import Graph, Node
from ..schemes import MAC_RQ_ATTRS
from .base import MAX_MAC_INPUT_BITS, OpDef, pad_spatial, with_tail

_MAC_ATTRS = {"w_bits": "int", "w_exp": "int", "b_exp": "int", "relu": "bool", "wide": "bool", **MAC_RQ_ATTRS}


def _mac_requant(node: Node, acc: np.ndarray, graph: Graph, product_bound: int) -> np.ndarray:
    """Shared tail of conv and linear: the bias, then the scheme's requantisation.

    `acc` has the output channels first, (out, ...), as the GEMM leaves it: the elementwise tail runs on
    contiguous data and only the narrow integer result is transposed afterwards.
    It comes in its matmul carrier, chosen from `product_bound` (`_product_bound`, computed once by the
    caller). The tail stays in float32 only where that is exact: sums below 2**24 and rounded values
    below 2**22 (so v + 0.5 is exact); float64 otherwise.
    """
    a, scheme = node.attrs, graph.scheme
    bias = scheme.bias_term(node.params["bias"], a, node.params)
    bound = product_bound + _abs_max(bias)
    exact32 = acc.dtype == np.float32 and bound < min(arith.EXACT_FLOAT32, 2 ** (22 + a["out_shift"]))
    # `acc` is this call's own temporary: update it in place (fresh large arrays cost page faults).
    acc = acc.astype(np.float32 if exact32 else np.float64, copy=False)
    acc += bias.astype(acc.dtype).reshape(-1, *([1] * (acc.ndim - 1)))
    q = scheme.requantize(acc, a, bound, out=acc, params=node.params, channel_axis=0)
    return q.astype(graph.tensors[node.outputs[0]].dtype)


_CHUNK_BYTES = 512 << 10  # im2col columns per GEMM in the engine's compiled conv: about an L2 cache
_RESIDUE_BYTES = 64 << 10  # padded input per chunk of a 1-d conv's strided GEMMs (`residue_buffers`)
_RESIDUE_MIN_BATCH = 16  # below, im2col and one GEMM cost less than kw GEMM calls (batch 1: 6 against 10 us)
# fewer input channels: GEMMs of inner dimension kw x (c + 1) are too thin (kw 5, 32 outputs, batch 256:
# 2 channels 534 against 297 us with im2col, 8 channels 540 against 523, 16 channels 804 against 1,026)
_RESIDUE_MIN_CHANNELS = 16
_ROUND = {"half_up": np.floor, "floor": np.floor, "trunc": np.trunc, "half_even": np.rint}


def _compiled_tail(node: Node, graph: Graph, w: np.ndarray, relu: bool = False):
    """What `_mac_requant` computes, folded for `OpDef.compile`: (carrier, the weights `w` (..., in, out)
    scaled, the offset (out,), the tail), or None where the node needs the general path (another scheme's
    requantize, a possible accumulator saturation, a sum beyond float64's exact range).

    The output shift folds into the weights and the rounding half into the bias: w * 2**-s and
    (bias * 2**bias_shift + 2**(s-1)) * 2**-s are exact (power-of-two scaling), and every partial sum is an
    integer times 2**-s below the carrier's exact limit, so the GEMM plus the offset (added after it, or
    inside it as one more weight row against a column of ones: the same bound holds for every partial sum)
    yields exactly (acc + bias + half) / 2**s, which the rounding function then rounds as
    `arith.round_shift` does, and the clip saturates as `Scheme.requantize` does. A side of the clip that
    no value can reach (a wide output's accumulator range) is left out.

    `relu`: the tail of this node followed by a ReLU, max(y, 0), which lifts both clip bounds to at least 0
    (clip(v, lo, hi) then max(., 0) is clip(v, max(lo, 0), max(hi, 0))); not with `abs` (None then).
    """
    from ..schemes import Scheme

    scheme, a = graph.scheme, node.attrs
    if type(scheme).requantize is not Scheme.requantize or type(scheme).bias_term is not Scheme.bias_term:
        return None
    s, mode = a["out_shift"], a["rounding"]
    if not -64 <= s <= 64:  # keep 2**-s and its products far inside float32's normal range
        return None
    bias = scheme.bias_term(node.params["bias"], a, node.params)  # float64, integer-valued
    product = _product_bound(node, graph)
    bound = product + _abs_max(bias)
    if bound > arith.int_range(a["acc_bits"])[1]:  # the accumulator saturation could trigger
        return None
    half = 2 ** (s - 1) if mode == "half_up" and s > 0 else 0
    if bound + half < arith.EXACT_FLOAT32:
        carrier = np.dtype(np.float32)
    elif bound + half < arith.EXACT_FLOAT64:
        carrier = np.dtype(np.float64)
    else:
        return None
    scale = 2.0**-s
    wmat = np.ascontiguousarray((w.astype(np.float64) * scale).astype(carrier))
    offset = ((bias + half) * scale).astype(carrier)
    rnd = _ROUND[mode] if s > 0 else None
    lo, hi, absolute = a["act_min"], a["act_max"], bool(a.get("abs"))
    if relu:
        if absolute:
            return None
        lo, hi = max(lo, 0), max(hi, 0)
    reach = (bound + half) * scale + 1  # every value the rounding can give lies within +-reach
    # bounds as 0-d arrays of the carrier: a ufunc converts a Python int operand slowly (about 0.6 us a
    # call, the cost of the work on a batch-1 array); exact, as a bound kept is within the carrier's range
    low = np.array(lo, carrier) if lo > -reach else None
    high = np.array(hi, carrier) if hi < reach else None
    top = np.array(hi, carrier) if absolute and hi < reach else None

    def tail(acc: np.ndarray, offset: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
        """acc: the GEMM of the scaled weights, (..., out channels), updated in place; `offset` (out,),
        or None where the GEMM added it already (a column of ones times a row of offsets). `out`: where
        the result goes (the next kernel's input buffer, `OpDef.compile`'s inlet), else `acc` itself.

        The clip runs before the rounding, which writes `out` last (no copy): the rounding functions are
        monotonic and keep integers, so with integer bounds rnd(clip(v, lo, hi)) = clip(rnd(v), lo, hi)."""
        if out is None:
            out = acc
        elif out.shape != acc.shape:  # a ufunc's `out` would broadcast a smaller acc silently
            raise AssertionError(f"output buffer {out.shape} for values {acc.shape}")
        if offset is not None:
            np.add(acc, offset, out=acc)
        if absolute:  # |y| of the rounded and clipped value, then the top of the range again: |-128| is 128
            if rnd is not None:
                rnd(acc, out=acc)
            _clip(acc, low, high)
            np.abs(acc, out=out)
            if top is not None:
                np.minimum(out, top, out=out)
            return out
        _clip(acc, low, high)
        if rnd is not None:
            rnd(acc, out=out)
        elif out is not acc:
            np.copyto(out, acc)
        return out

    return carrier, wmat, offset, tail


def _clip(acc: np.ndarray, low: np.ndarray | None, high: np.ndarray | None) -> None:
    """acc clipped in place to the bounds given (None: a side no value reaches)."""
    if low is not None and high is not None:
        arith.clip_ufunc(acc, low, high, out=acc)
    elif low is not None:
        np.maximum(acc, low, out=acc)
    elif high is not None:
        np.minimum(acc, high, out=acc)


def _mac_tail_onnx(node: Node, acc: str, b) -> str:
    """ONNX form of `_mac_requant`: the scheme's bias add and requantisation."""
    g = b.graph
    nd = len(g.tensors[node.outputs[0]].shape)
    bias = b.param(node, "bias")
    if nd > 1:  # (out,) -> (out, 1, ...) to broadcast over the spatial positions
        bias = b.op("Reshape", [bias, b.const(np.array([-1] + [1] * (nd - 1), np.int64), np.int64, "shape")])
    return g.scheme.onnx_requantize(b, acc, bias, node.attrs, node.params)


def _mac_c(node: Node, b, geometry: dict) -> dict:
    """Every field of a nk_conv_params / nk_linear_params: geometry, weight bits, the scheme's requant
    (its nk_requant_params `rq`, written as C99 nested designators `.rq.out_shift = ...`)."""
    out = b.graph.tensors[node.outputs[0]]
    if not (out.bits <= 8 or 16 < out.bits <= 32):
        raise NpukitError(f"{node.name}: codegen supports 8-bit or 17..32-bit (wide) outputs, not {out.bits}-bit")
    rq = {f"rq.{k}": v for k, v in b.graph.scheme.c_fields(node.attrs, node.params, b).items()}
    return {**geometry, "w_bits": node.attrs["w_bits"], **rq, "out_bytes": 1 if out.bits <= 8 else 4}


def _mac_tensor_problems(node: Node, graph: Graph, scheme) -> list[str]:
    """A MAC reads at most 16-bit activations, and its stored requantisation attributes (out_shift,
    act_min, ...) must be those its scheme computes from its tensors: the kernels read only the attributes,
    so a tensor spec that disagrees with them describes other numbers than the kernel writes."""
    x, out, a = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]], node.attrs
    if x.bits > MAX_MAC_INPUT_BITS:
        return [f"input {x.name!r} is {x.bits}-bit; {node.op} reads at most {MAX_MAC_INPUT_BITS}-bit activations"]
    if scheme is None:
        return []
    e_acc = x.exp + a["w_exp"]
    if a["wide"] and out.exp != e_acc:
        return [f"wide output {out.name!r} has exponent {out.exp}, but the accumulator's is {e_acc} "
                f"(input {x.name!r} exponent {x.exp} + w_exp {a['w_exp']})"]
    want = scheme.mac_attrs(e_acc=e_acc, b_exp=a["b_exp"], e_out=out.exp, out_bits=out.bits, relu=a["relu"],
                            wide=a["wide"], acc_bits=a["acc_bits"], rounding=a["rounding"], absolute=a["abs"])
    # a fused clamp (ReLU6, Hardtanh, clamp; its real bounds are not stored) narrows the range, never widens it
    narrowed = a["clamp"] and want["act_min"] <= a["act_min"] <= a["act_max"] <= want["act_max"]
    bad = [k for k in want if a.get(k) != want[k] and not (k in ("act_min", "act_max", "clamp") and narrowed)]
    if not bad:
        return []
    have = ", ".join(f"{k} {a.get(k)!r}" for k in bad)
    should = ", ".join(f"{k} {want[k]!r}" for k in bad)
    return [f"stores {have}, but its tensors give {should} (input {x.name!r} exponent {x.exp}, w_exp {a['w_exp']}, "
            f"b_exp {a['b_exp']}; output {out.name!r} {out.bits}-bit at exponent {out.exp}, {scheme.name} "
            "scheme): the tensor specs or the attributes were edited"]


def _check_mac(node: Node, rank: int) -> str | None:
    w, b = node.params["weight"], node.params["bias"]
    if node.attrs["w_bits"] not in (2, 4, 8, 16):
        return f"has w_bits {node.attrs['w_bits']}"
    if node.attrs["rounding"] not in arith.ROUNDING_MODES:
        return f"has rounding {node.attrs['rounding']!r}"
    if not 2 <= node.attrs["acc_bits"] <= 62:
        return f"has acc_bits {node.attrs['acc_bits']}"
    if w.ndim != rank or b.shape != (w.shape[0],):
        return f"has weight shape {w.shape} and bias shape {b.shape}"
    return None


def _abs_max(a: np.ndarray) -> int:
    """max |a| from two reductions, without an absolute-valued (or widened) copy of `a`."""
    return max(int(a.max(initial=0)), -int(a.min(initial=0)))


def _product_bound(node: Node, graph: Graph) -> int:
    """Largest |sum of input x weight products| of a conv or linear node, bias not included."""
    w = node.params["weight"]  # (out, in/groups, *kernel) or (out, in)
    return arith.accumulator_bound(math.prod(w.shape[1:]), graph.tensors[node.inputs[0]].bits, _abs_max(w))


def _carrier(bound: int) -> np.dtype:
    """The cheapest dtype whose BLAS matmul is exact for integers whose products sum to at most `bound`:
    every partial sum is exact in float32 below 2**24 and in float64 below 2**53, in any summation order."""
    if bound < arith.EXACT_FLOAT32:
        return np.dtype(np.float32)
    return np.dtype(np.float64 if bound < arith.EXACT_FLOAT64 else np.int64)


def _exact_matmul(w: np.ndarray, cols: np.ndarray, carrier: np.dtype) -> np.ndarray:
    """w @ cols on integers in `carrier` (float32 results stay float32; int64 ones become float64)."""
    out = np.matmul(w.astype(carrier), cols.astype(carrier, copy=False))
    return out if out.dtype.kind == "f" else out.astype(np.float64)


class Conv(OpDef):
    name = "conv"
    c_kernel = "nk_conv"  # the C function reading its nk_conv_params
    attrs = {**_MAC_ATTRS, "ndim": "int", "stride": "int list", "padding": "int list", "dilation": "int list",
             "groups": "int"}
    attr_min = {"stride": 1, "dilation": 1, "groups": 1, "padding": 0, "ndim": 1}
    params = ("bias", "weight")

    def check_node(self, node):
        problem = super().check_node(node)
        if problem is None:
            problem = _check_mac(node, node.attrs["ndim"] + 2)
        if problem is None and node.attrs["ndim"] not in (1, 2):
            problem = f"has ndim {node.attrs['ndim']}"
        return problem

    def infer_shapes(self, node, in_shapes):
        a, (c, *spatial) = node.attrs, in_shapes[0]
        w = node.params["weight"].shape
        if min(*a["stride"], *a["dilation"], a["groups"], *w) < 1 or min(a["padding"]) < 0:
            raise NpukitError(f"{node.name}: stride, dilation, groups and kernel must be >= 1, padding >= 0")
        if c != w[1] * a["groups"]:
            raise NpukitError(f"{node.name}: input has {c} channels, weights expect {w[1] * a['groups']}")
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1
               for n, k, s, p, d in zip(spatial, w[2:], a["stride"], a["padding"], a["dilation"], strict=True)]
        return [(w[0], *out)]

    def run(self, node, inputs, graph):
        a, x = node.attrs, inputs[0]
        w = node.params["weight"]
        if a["ndim"] == 1:  # one code path: a 1-d conv is a 2-d conv of height 1
            x, w = x[:, :, None, :], w[:, :, None, :]
            stride, pad, dil = (1, *a["stride"]), (0, *a["padding"]), (1, *a["dilation"])
        else:
            stride, pad, dil = a["stride"], a["padding"], a["dilation"]
        n, c, _, _ = x.shape
        o, cg, kh, kw = w.shape
        g = a["groups"]
        bound = _product_bound(node, graph)
        carrier = _carrier(bound)
        xp = pad_spatial(x, pad)
        # every window as a read-only strided view (n, c, ho, wo, kh, kw): built directly, as
        # sliding_window_view then slicing costs more than the copy below on small tensors
        ho, wo = ((size - d * (k - 1) - 1) // s + 1 for size, k, s, d in zip(xp.shape[2:], (kh, kw), stride, dil, strict=True))
        sn, sc, sh, sw = xp.strides
        win = np.lib.stride_tricks.as_strided(xp, (n, c, ho, wo, kh, kw),
                                              (sn, sc, sh * stride[0], sw * stride[1], sh * dil[0], sw * dil[1]),
                                              writeable=False)
        # im2col with the batch folded into the columns: one large GEMM per group, not n small ones.
        cols = win.reshape(n, g, cg, ho, wo, kh, kw).transpose(1, 2, 5, 6, 0, 3, 4).astype(carrier, order="C")
        acc = _exact_matmul(w.reshape(g, o // g, cg * kh * kw), cols.reshape(g, cg * kh * kw, n * ho * wo), carrier)
        q = _mac_requant(node, acc.reshape(o, n * ho * wo), graph, bound).reshape(o, n, ho, wo).transpose(1, 0, 2, 3)
        return [np.ascontiguousarray(q[:, :, 0, :] if a["ndim"] == 1 else q)]

    def compile(self, node, graph):
        return with_tail(self.compile_untailed(node, graph))

    def compile_untailed(self, node, graph, relu: bool = False, pool: int = 1):
        """`compile` split for fusion: (kernel giving the carried accumulators before the requantisation's
        rounding and clip, that tail (in place), whether the tail is monotonic), or None. `relu`: the tail
        of this conv followed by a ReLU (`_compiled_tail`). `pool` > 1 (1-d only): the kernel gives the
        maximum of each run of `pool` adjacent positions instead (a max pool of that kernel and stride
        and no padding, which `MaxPool.compile_after` puts before the monotonic tail)."""
        a, w = node.attrs, node.params["weight"]
        if a["ndim"] == 1:  # as in run: a 1-d conv is a 2-d conv of height 1
            w = w[:, :, None, :]
            stride, pad, dil = (1, *a["stride"]), (0, *a["padding"]), (1, *a["dilation"])
        else:
            stride, pad, dil = a["stride"], a["padding"], a["dilation"]
        o, cg, kh, kw = w.shape
        g = a["groups"]
        # each group's weights as (taps x input channels, outputs): rows in the columns' (kh, kw, c) order
        wt = w.reshape(g, o // g, cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(g, kh * kw * cg, o // g)
        folded = _compiled_tail(node, graph, wt, relu)
        if folded is None:
            return None
        carrier, wmat, offset, tail = folded
        one_d = a["ndim"] == 1
        if pool > 1 and not one_d:
            return None
        (ph, pw), (sh, sw), (dh, dw) = pad, stride, dil
        c, *spatial = graph.tensors[node.inputs[0]].shape
        h, wd = (1, *spatial) if one_d else spatial
        hp, wp = h + 2 * ph, wd + 2 * pw
        ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1

        rows, k = ho * wo, kh * kw * cg  # GEMM rows per sample, and its inner dimension
        per = max(1, _CHUNK_BYTES // (rows * (k + 1) * carrier.itemsize))  # samples per im2col + GEMM chunk
        # the offset joins the GEMM as one more inner row of the weights, times a column of ones in the columns:
        # the partial sums stay below the same bound, so exact, and the tail saves a pass
        wres = wmat[0] if g == 1 else None  # the residue path's weights, (kw x c, out): offset added after
        wmat = np.concatenate([wmat, offset.reshape(g, 1, o // g)], axis=1)
        # A 1-d conv of stride 1 (no dilation, no groups) reads each window as one contiguous run of kw x c
        # values of the padded input: at large batches no im2col (`residue_buffers`).
        residue = one_d and kh == 1 and sw == 1 and dw == 1 and g == 1 and c >= _RESIDUE_MIN_CHANNELS
        # each sample's block of rows: its left padding and values, the right padding being the next
        # block's left padding (or zero rows), so that windows start at every row of the first wo; with a
        # pool, rounded up to a multiple of it (zero rows: only dropped windows read them), so that every
        # run of `pool` rows lies within one sample
        wq = -(-max(pw + wd, wo) // pool) * pool

        def residue_buffers(n: int) -> tuple:
            """The batch as one sequence of padded samples (n x wq rows of c channels), so that the windows
            starting every step-th row (step a multiple of kw) are the rows of a matrix (leading dimension
            step x c, a strided view: no copy) and `step` GEMMs, one per start modulo step, give every
            window's output; windows across two samples are computed and never read. Chunks of about
            `_RESIDUE_BYTES` of input keep each chunk's input in cache for its GEMMs (the demo model's plan
            at batch 256: 2.7 ms against 3.3-3.6 ms with im2col; of chunks from 32 KiB to 1 MiB, 64 KiB was
            the fastest). No channel of ones for the offset: the rows of c values stay contiguous, so the
            previous kernel writes its rounded values into them in long runs (a 33-float row stride made
            that write 1.3-1.8x slower); the offset is added after the GEMMs (after the pool: max(a + b, c + b)
            = max(a, c) + b, all exact).

            With a pool, step is also a multiple of it: each GEMM's windows then share their position
            modulo pool, and the GEMM writes them (BLAS's leading dimension) into that phase's own array,
            row = position // pool; the pool is the elementwise maximum of the phases' contiguous arrays
            (a strided maximum of the interleaved positions costs about five times as much)."""
            size = carrier.itemsize
            step = math.lcm(kw, pool)
            xq = np.zeros((n * wq + step + kw, c), carrier)
            phases = np.empty((pool, n * wq // pool, o), carrier)
            flat, chunks = xq.reshape(-1), []
            per_r = max(1, _RESIDUE_BYTES * step // kw // (wq * c * size))  # about as many rows per GEMM
            for i in range(0, n, per_r):
                base, rows_i = i * wq, min(per_r, n - i) * wq
                for j in range(step):
                    r = (rows_i - 1 - j) // step + 1
                    starts = np.lib.stride_tricks.as_strided(flat[(base + j) * c :], (r, k), (step * c * size, size),
                                                             writeable=False)
                    first = (base + j) // pool
                    out = phases[(base + j) % pool, first : first + (step // pool) * r : step // pool]
                    chunks.append(((), starts, wres, out, None))
            inner = xq[: n * wq].reshape(n, wq, c)[:, pw : pw + wd]
            valid = tuple(p.reshape(n, wq // pool, o)[:, : wo // pool] for p in phases)
            return inner, chunks, valid[0], (phases[0], tuple(phases), valid) if pool > 1 else None, offset

        def buffers(n: int) -> tuple:
            """Kept per batch size: the padded input (zero borders, written once) and the accumulator, and
            per chunk of samples the windows as a strided view (g, m, ho, wo, kh, kw, cg) of the padded
            input, the columns buffer they are copied to, and the GEMM's operands: the columns of a chunk
            stay in cache between their copy and the GEMM that reads them."""
            xp = np.zeros((n, hp, wp, c), carrier)
            s0, s1, s2, s3 = xp.strides
            win = np.lib.stride_tricks.as_strided(xp, (g, n, ho, wo, kh, kw, cg),
                                                  (s3 * cg, s0, s1 * sh, s2 * sw, s1 * dh, s2 * dw, s3), writeable=False)
            inner = xp[:, ph : ph + h, pw : pw + wd, :]
            acc = np.empty((n * rows, g, o // g), carrier)  # channels last: group gi's outputs side by side
            if cg == 1 and g == 1 and n >= _RESIDUE_MIN_BATCH:
                # one input channel: a column row's run of kw values makes a slow copy (256 x 40 windows:
                # 86 us); the columns tap-major instead, one copy of contiguous runs per tap, and the GEMM
                # reads them transposed (BLAS's own layout flag: no copy)
                cols = np.ones((k + 1, min(n, per) * rows), carrier)  # the last row stays 1
                chunks = []
                for i in range(0, n, per):
                    m = min(per, n - i)
                    part = cols[:, : m * rows]
                    taps = part[:k].reshape(kh, kw, m, ho, wo)
                    if not np.shares_memory(taps, cols):  # a reshape that copied would drop the im2col
                        raise AssertionError("the columns view is not a view")
                    copies = tuple((taps[ti, tj], win[0, i : i + m, :, :, ti, tj, 0]) for ti in range(kh) for tj in range(kw))
                    chunks.append((copies, part.T, wmat[0], acc[i * rows : (i + m) * rows, 0],
                                   (part.T.reshape(m, rows, k + 1), i, i + m)))
            else:
                cols = np.ones((g, min(n, per) * rows, k + 1), carrier)  # the last column stays 1
                chunks = []
                for i in range(0, n, per):
                    m = min(per, n - i)
                    part = cols[:, : m * rows]
                    taps = part[:, :, :k].reshape(g, m, ho, wo, kh, kw, cg)
                    if not np.shares_memory(taps, cols):  # a reshape that copied would drop the im2col
                        raise AssertionError("the columns view is not a view")
                    chunks.append((((taps, win[:, i : i + m]),), part, wmat, acc[i * rows : (i + m) * rows].transpose(1, 0, 2),
                                   (part[0].reshape(m, rows, k + 1), i, i + m) if g == 1 else None))
            q = acc.reshape(n, ho, wo, o)
            if pool == 1:
                return (inner[:, 0] if one_d else inner), chunks, (q[:, 0] if one_d else q), None, None
            # the pool of the im2col path: the maximum of strided slices of the positions (1-d only)
            m = wo // pool
            pooled = np.empty((n, m, o), carrier)
            phases = tuple(q[:, 0, p : p + pool * m : pool] for p in range(pool))
            return inner[:, 0], chunks, pooled, (pooled, phases, phases), None

        def buffers_for(scratch: dict, n: int) -> tuple:
            bufs = scratch.get("conv")
            if bufs is None:
                bufs = scratch["conv"] = residue_buffers(n) if residue and n >= _RESIDUE_MIN_BATCH else buffers(n)
            return bufs

        # a 1-d conv's GEMM may write its rows straight into the next kernel's input buffer (`into`):
        # one GEMM per sample (numpy's stacked matmul), no accumulator pass (256 x 40 x 32: 61 against 92 us)
        direct = one_d and pool == 1

        def kernel(inputs, scratch, out=None):
            """The values before the tail, in this kernel's buffers, or in `out` (of the result's shape)
            where it can write them there."""
            x = inputs[0]  # carried: (n, h, w, c), or (n, w, c) for 1-d
            inner, chunks, result, pooling, late = buffers_for(scratch, len(x))
            if x is not inner:  # (the previous kernel may have written it there: `inlet`)
                np.copyto(inner, x)  # the input (cast to the carrier) inside the zero borders
            for copies, a, b, acc, rows in chunks:
                for cols, win in copies:
                    np.copyto(cols, win)  # im2col: strided copies, the batch folded into the rows
                if out is not None and direct and rows is not None:
                    cols, i, j = rows
                    np.matmul(cols, b, out=out[i:j])
                    result = out
                else:  # one GEMM per group (im2col) or per window start modulo step
                    np.matmul(a, b, out=acc)
            if pooling is not None:  # the maximum of the phases, into phase 0's array (residue) or its own
                into, phases, valid = pooling
                if out is not None:
                    into, phases, result = out, valid, out
                np.maximum(phases[0], phases[1], out=into)
                for more in phases[2:]:
                    np.maximum(into, more, out=into)
            if late is not None:  # the offset, where the GEMM did not add it
                np.add(result, late, out=result)
            return [result]

        kernel.into = lambda inputs, scratch, out: kernel(inputs, scratch, out)[0]
        kernel.inlet = lambda scratch, n: buffers_for(scratch, n)[0]
        return kernel, lambda acc, out=None: tail(acc, None, out), not a["abs"]

    def macs(self, node, graph):
        out = graph.tensors[node.outputs[0]].shape
        return math.prod(out) * math.prod(node.params["weight"].shape[1:])

    def tensor_problems(self, node, graph, scheme):
        return _mac_tensor_problems(node, graph, scheme)

    def rules(self, node, graph, profile):
        from ..rules import conv_rules

        return conv_rules(node, graph, profile)

    def to_c(self, node, b):
        a, g, w = node.attrs, b.graph, node.params["weight"]
        (c, *sp_in), (o, *sp_out) = g.tensors[node.inputs[0]].shape, g.tensors[node.outputs[0]].shape
        two = (lambda v: (1, *v)) if a["ndim"] == 1 else (lambda v: tuple(v))  # 1-d runs as height 1
        (ih, iw), (oh, ow), (kh, kw) = two(sp_in), two(sp_out), two(w.shape[2:])
        (sh, sw), (ph, pw), (dh, dw) = two(a["stride"]), (0, *a["padding"]) if a["ndim"] == 1 else a["padding"], two(a["dilation"])
        fields = _mac_c(node, b, {"in_c": c, "in_h": ih, "in_w": iw, "out_c": o, "out_h": oh, "out_w": ow, "k_h": kh,
                                  "k_w": kw, "stride_h": sh, "stride_w": sw, "pad_h": ph, "pad_w": pw, "dil_h": dh,
                                  "dil_w": dw, "groups": a["groups"]})
        kernel = self.c_kernel
        if kernel == "nk_conv":  # (nk_conv_transpose reads model.bin's layout)
            weights, fields["w_bits"] = b.conv_weights(node, c)
            kernel = "nk_conv_1d" if fields["w_bits"] == "NK_CONV_W8_1D" else kernel
        else:
            weights = b.weights(node)
        p = b.struct("nk_conv_params", f"{b.ident(node.name)}_p", fields)
        out_t = "int8_t" if fields["out_bytes"] == 1 else "int32_t"
        return [f"{kernel}({p}, {b.ptr(node.inputs[0])}, {weights}, {b.weights(node, 'bias')}, "
                f"{b.ptr(node.outputs[0], out_t)});"]

    def to_onnx(self, node, inputs, b):
        from onnx import TensorProto

        a, w = node.attrs, node.params["weight"]
        x = b.op("Cast", [inputs[0]], to=TensorProto.FLOAT)
        geometry = {"strides": a["stride"], "pads": a["padding"] * 2, "dilations": a["dilation"]}
        if _product_bound(node, b.graph) < arith.EXACT_FLOAT32:
            y = b.op("Conv", [x, b.param(node, "weight", TensorProto.FLOAT)], kernel_shape=list(w.shape[2:]),
                     group=a["groups"], **geometry)
            return _mac_tail_onnx(node, b.op("Cast", [y], to=TensorProto.DOUBLE), b)
        # Partial sums may pass 2**24, beyond an exact float32 Conv (16-bit weights, wide fan-in): gather each
        # output's input window with a one-hot depthwise Conv (each value times 1: exact in float32), then
        # multiply by the weights in a double MatMul, exact below 2**53.
        c, k = b.graph.tensors[node.inputs[0]].shape[0], math.prod(w.shape[2:])
        o, cg = w.shape[:2]
        onehot = np.zeros((c * k, 1, *w.shape[2:]), np.float32)
        onehot.reshape(c, k, k)[:, np.arange(k), np.arange(k)] = 1.0  # channel ch, tap t -> output ch * k + t
        patches = b.op("Conv", [x, b.const(onehot, np.float32, "onehot")], kernel_shape=list(w.shape[2:]), group=c,
                       **geometry)
        patches = b.op("Reshape", [b.op("Cast", [patches], to=TensorProto.DOUBLE),
                                   b.const(np.array([0, c * k, -1], np.int64), np.int64, "shape")])
        wmat = b.op("Reshape", [b.param(node, "weight"), b.const(np.array([o, cg * k], np.int64), np.int64, "shape")])
        groups, per = a["groups"], o // a["groups"]

        def part(t, axis: int, size: int, gi: int) -> str:  # group gi's slice of t along axis
            if groups == 1:
                return t
            index = [b.const(np.array([v], np.int64), np.int64, "index") for v in (gi * size, (gi + 1) * size, axis)]
            return b.op("Slice", [t, *index])

        # each group's outputs read only its own channels' windows
        parts = [b.op("MatMul", [part(wmat, 0, per, gi), part(patches, 1, cg * k, gi)]) for gi in range(groups)]
        y = parts[0] if groups == 1 else b.op("Concat", parts, axis=1)  # (n, out, positions)
        spatial = list(b.graph.tensors[node.outputs[0]].shape[1:])
        y = b.op("Reshape", [y, b.const(np.array([0, o, *spatial], np.int64), np.int64, "shape")])
        return _mac_tail_onnx(node, y, b)


class Linear(OpDef):
    name = "linear"
    attrs = _MAC_ATTRS
    params = ("bias", "weight")

    def check_node(self, node):
        return super().check_node(node) or _check_mac(node, 2)

    def infer_shapes(self, node, in_shapes):
        w = node.params["weight"].shape
        if tuple(in_shapes[0]) != (w[1],):
            raise NpukitError(f"{node.name}: input shape {in_shapes[0]}, weights expect ({w[1]},)")
        return [(w[0],)]

    def run(self, node, inputs, graph):
        w = node.params["weight"]
        bound = _product_bound(node, graph)
        acc = _exact_matmul(w, inputs[0].T, _carrier(bound))  # (out, n)
        return [np.ascontiguousarray(_mac_requant(node, acc, graph, bound).T)]

    def compile(self, node, graph):
        return with_tail(self.compile_untailed(node, graph))

    def compile_untailed(self, node, graph, relu: bool = False, w: np.ndarray | None = None,
                         in_shape: tuple[int, ...] | None = None):
        """As `Conv.compile_untailed`; `w`: the weights with their input features permuted (the same
        products, summed in another order: exact), for a flatten folded in (`compile_after`), whose
        carried input has the shape `in_shape` (per sample)."""
        if in_shape is None:
            in_shape = tuple(graph.tensors[node.inputs[0]].shape)
        folded = _compiled_tail(node, graph, (node.params["weight"] if w is None else w).T, relu)
        if folded is None:
            return None
        carrier, wmat, offset, tail = folded
        features = math.prod(in_shape)
        # the offset as one more weight row, against the input buffer's column of ones (as in the conv)
        wmat1 = np.concatenate([wmat, offset[None]])

        def kernel(inputs, scratch):  # (n, features) -> (n, out)
            x = inputs[0]
            ones = scratch.get("x")
            if ones is not None and x is ones[1]:  # in the input buffer (`inlet`): the offset in the GEMM
                return [np.matmul(ones[0], wmat1)]
            acc = np.matmul(x.reshape(len(x), -1).astype(carrier, copy=False), wmat)
            return [np.add(acc, offset, out=acc)]

        def inlet(scratch: dict, n: int) -> np.ndarray:
            """The input buffer, (n, features + 1) with a last column of ones, as the carried input's shape."""
            ones = scratch.get("x")
            if ones is None:
                buf = np.ones((n, features + 1), carrier)
                view = buf[:, :features].reshape(n, *in_shape)
                if not np.shares_memory(view, buf):  # a reshape that copied would lose what is written there
                    raise AssertionError("the input buffer's view is not a view")
                ones = scratch["x"] = (buf, view)
            return ones[1]

        kernel.inlet = inlet
        return kernel, lambda acc, out=None: tail(acc, None, out), not node.attrs["abs"]

    def compile_after(self, prev, node, graph):
        """A flatten of a carried (n, *spatial, c) tensor folded into the weights: the linear reads the
        carried array as (n, spatial x c) with no transpose and no copy."""
        if prev.op != "reshape":
            return None
        c, *spatial = graph.tensors[prev.inputs[0]].shape
        if not spatial or tuple(prev.attrs["shape"]) != (c * math.prod(spatial),):
            return None
        w = node.params["weight"]
        w = w.reshape(len(w), c, *spatial).transpose(0, *range(2, 2 + len(spatial)), 1).reshape(len(w), -1)
        return with_tail(self.compile_untailed(node, graph, w=w, in_shape=(*spatial, c)))

    def macs(self, node, graph):
        return int(node.params["weight"].size)

    def tensor_problems(self, node, graph, scheme):
        return _mac_tensor_problems(node, graph, scheme)

    def rules(self, node, graph, profile):
        from ..rules import linear_rules

        return linear_rules(node, graph, profile)

    def to_c(self, node, b):
        o, i = node.params["weight"].shape
        fields = _mac_c(node, b, {"in_features": i, "out_features": o})
        p = b.struct("nk_linear_params", f"{b.ident(node.name)}_p", fields)
        out_t = "int8_t" if fields["out_bytes"] == 1 else "int32_t"
        return [f"nk_linear({p}, {b.ptr(node.inputs[0])}, {b.weights(node)}, {b.weights(node, 'bias')}, "
                f"{b.ptr(node.outputs[0], out_t)});"]

    def to_onnx(self, node, inputs, b):
        w = b.op("Transpose", [b.param(node, "weight")], perm=[1, 0])  # double MatMul: exact below 2**53
        return _mac_tail_onnx(node, b.op("MatMul", [inputs[0], w]), b)

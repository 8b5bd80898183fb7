"""An independent integer model of one MAX78000 hardware layer, written from
shared/reference/max78000-arithmetic.md ("One layer, in this order") and nothing else.

Python ints and int64 numpy only; no floats anywhere in the arithmetic. One sample at a time:
x is channel-first, (C, H, W), (C, L) or (N,) for an `mlp` layer. Used by tests/test_max78000_arith.py
to check npukit's `max78000` target bit for bit.
"""

from __future__ import annotations

import numpy as np

I8_MIN, I8_MAX = -128, 127


def _int8_checked(x, what):
    x = np.asarray(x)
    assert x.dtype.kind in "iu", f"{what} must be integers, got {x.dtype}"
    x = x.astype(np.int64)
    assert x.size == 0 or (x.min() >= I8_MIN and x.max() <= I8_MAX), f"{what} is not signed 8-bit"
    return x


def pool_map(x, kind, size, stride, avg_round="trunc"):
    """Step 4: no padding, out = (in - pool) // stride + 1 per spatial axis; max, or average = window
    sum / count truncated toward zero (avg_round="floor" exists only so a test can show the two differ)."""
    size, stride = tuple(size), tuple(stride)
    spatial = x.shape[1:]
    assert len(size) == len(stride) == len(spatial)
    out = [(n - k) // s + 1 for n, k, s in zip(spatial, size, stride, strict=True)]
    windows = []
    for offs in np.ndindex(*size):  # every position inside the pooling window
        sl = tuple(slice(o, o + s * (m - 1) + 1, s) for o, s, m in zip(offs, stride, out, strict=True))
        windows.append(x[(slice(None), *sl)])
    w = np.stack(windows)  # (window positions, C, *out)
    if kind == "max":
        return w.max(axis=0)
    assert kind == "avg", kind
    total, count = w.sum(axis=0), len(windows)
    if avg_round == "floor":
        return total // count
    return np.sign(total) * (np.abs(total) // count)  # toward zero


def _conv(x, weight, pad, dilation):
    """Zero-padded, stride-1 convolution (1-d or 2-d) as exact int64 sums of w * x."""
    nd = x.ndim - 1
    k = weight.shape[2:]
    assert len(k) == nd and weight.shape[1] == x.shape[0]
    xp = np.pad(x, [(0, 0)] + [(pad, pad)] * nd)
    out = [n + 2 * pad - dilation * (kk - 1) for n, kk in zip(x.shape[1:], k, strict=True)]
    assert min(out) >= 1, "kernel larger than the padded input"
    acc = np.zeros((weight.shape[0], *out), np.int64)
    for offs in np.ndindex(*k):
        sl = tuple(slice(o * dilation, o * dilation + m) for o, m in zip(offs, out, strict=True))
        acc += np.tensordot(weight[(slice(None), slice(None), *offs)], xp[(slice(None), *sl)], axes=(1, 0))
    return acc


def round_shift(acc, s):
    """Step 8 before the clip: floor(0.5 + acc * 2^s / 128), as exact integers (// is floor)."""
    acc = np.asarray(acc, np.int64)
    if s >= 0:
        return (acc * 2**s + 64) // 128  # (64 + acc * 2^s) / 128
    return (acc + 64 * 2**-s) // (128 * 2**-s)  # (64 * 2^-s + acc) / (128 * 2^-s)


def hw_layer(x, *, pool=None, pool_kind=None, pool_stride=None, pool_first=True, eltwise=None,
             eltwise_operands=None, flatten=False, op, weight=None, bias_b=None, weight_bits=8, output_shift=0,
             activation=None, output_width=8, pad=0, dilation=1, avg_round="trunc"):
    """One hardware layer. `x` is the layer's input after `in_sequences` concatenation (the caller's job,
    step 1). op: "conv1d", "conv2d", "convtranspose2d", "mlp" or "none". Returns int64."""
    x = _int8_checked(x, "input")
    # 2. element-wise operands: equal channel blocks of the input
    operands = [x]
    if eltwise is not None:
        assert eltwise in ("add", "sub", "or", "xor") and 2 <= eltwise_operands <= 16
        assert x.shape[0] % eltwise_operands == 0
        operands = np.split(x, eltwise_operands, axis=0)

    def combine(ops):
        if eltwise is None:
            return ops[0]
        r = ops[0]
        for o in ops[1:]:
            r = {"add": r + o, "sub": r - o, "or": r | o, "xor": r ^ o}[eltwise]
        return r

    # 3. pool_first: false -> the element-wise op before pooling (the document does not say whether this
    #    result is clipped before the pool; not modelled, so not used)
    if not pool_first:
        raise NotImplementedError("pool_first: false is not specified precisely enough to model")
    # 4. pooling before the convolution, on each operand
    if pool is not None:
        assert pool_stride is not None, "always write pool_stride"
        operands = [pool_map(o, pool_kind, pool, pool_stride, avg_round) for o in operands]
    # 5. element-wise op after pooling, clipped (no shift, no rounding) when a convolution follows
    x = combine(operands)
    if eltwise is not None and op != "none":
        x = np.clip(x, I8_MIN, I8_MAX)
    # 6. flatten in (C, H, W) order; no pooling in a flattening layer
    if flatten:
        assert pool is None, "no pooling in a flattening layer"
        x = x.reshape(-1)
    # 7. the operation
    if op == "none":
        assert eltwise is None, "passthrough with element-wise op: output width not specified here"
        return x
    q = weight_bits
    assert q in (8, 4, 2, 1)
    w = np.asarray(weight).astype(np.int64)
    assert w.min() >= -(2 ** (q - 1)) and w.max() <= 2 ** (q - 1) - 1, f"weights not signed {q}-bit"
    if op == "mlp":  # a 1x1 convolution over the (C*H*W) features
        assert w.ndim == 2
        x = x.reshape(-1)
        acc = w @ x
    elif op == "convtranspose2d":  # the weight as PyTorch stores it, (in, out, 3, 3); stride 2, output pad 1
        assert x.ndim == 3 and w.shape[2:] == (3, 3) and 0 <= pad <= 2
        stretched = np.zeros((x.shape[0], 2 * x.shape[1] - 1, 2 * x.shape[2] - 1), np.int64)
        stretched[:, ::2, ::2] = x  # a zero between every two inputs: the fractional stride
        lead = 2 - pad  # kernel - 1 - pad before, and one more (the output padding) after
        xp = np.pad(stretched, [(0, 0), (lead, lead + 1), (lead, lead + 1)])
        acc = _conv(xp, np.flip(w, axis=(2, 3)).swapaxes(0, 1), 0, 1)
    else:
        assert op in ("conv1d", "conv2d") and x.ndim == (2 if op == "conv1d" else 3) and w.ndim == x.ndim + 1
        assert 0 <= pad <= 2
        acc = _conv(x, w, pad, dilation)
    if bias_b is not None:
        b = _int8_checked(bias_b, "bias")
        acc = acc + (b * 128).reshape((-1,) + (1,) * (acc.ndim - 1))
    # 9. 32-bit output: the raw accumulator, nothing else
    if output_width == 32:
        assert activation is None, "no activation on a 32-bit output"
        return acc
    # 8. 8-bit output: s = output_shift + 8 - q
    assert output_width == 8
    s = output_shift + 8 - q
    assert -15 <= s <= 15, f"shift s = {s} outside [-15, 15]"
    y = np.clip(round_shift(acc, s), I8_MIN, I8_MAX)
    # 10. activation
    if activation == "ReLU":
        return np.clip(y, 0, I8_MAX)
    if activation == "Abs":
        return np.clip(np.abs(y), 0, I8_MAX)
    assert activation is None, activation
    return y

"""QAT modules and capture of nn.GRU and nn.LSTM: one recurrent layer unrolled over its fixed sequence length
into ops the IR already has (linear, slice, add, table sigmoid/tanh, mul, reshape, concat), so every backend
computes it exactly with no recurrent kernel of its own.

GRU, each step t, with x_t the t-th input vector and h the hidden state (8-bit, carried in integers):

    gi = ih(x_t)                  rows [r, z, -z, n] of W_ih x_t + b_ih      (linear)
    gh = hh(h)                    rows [r, z, -z, n] of W_hh h + b_hh        (linear)
    s  = sigmoid(gi[:3H] + gh[:3H])  = [r, z, 1 - z]                          (add, table)
    n  = tanh(gi[3H:] + r * gh[3H:])                                         (mul, add, table)
    h  = (1 - z) * n + z * h                                                  (mul, mul, add)

1 - z is sigmoid(-a), computed from rows of -W_z (shared with the z rows: one parameter) because the IR
has no subtraction.

LSTM, rows reordered to [i, f, o, g] so that one table covers the three sigmoid gates:

    a = ih(x_t) + hh(h);  [i, f, o] = sigmoid(a[:3H]);  g = tanh(a[3H:])
    c = f * c + i * g;    h = o * tanh(c)

The first step reads h = c = 0, made by a linear with zero weights on x_0: the step graph is the same at
every t, and no constant tensor is needed. Every sub-layer is one module with one output exponent for all
steps (its observer sees every step), so the unrolled graph repeats one step.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UnsupportedError
from ..ir import Node, TensorSpec
from .add import QAdd
from .base import Captured, ModuleCapture, OpCapture, is_getitem, node_name
from .concat import QConcat
from .fakequant import QModule
from .lut import QLut
from .mac import QMac
from .mul import QMul


def _gru_rows(w: torch.Tensor, hidden: int) -> torch.Tensor:
    """PyTorch's (r, z, n) rows -> npukit's (r, z, -z, n): the complement gate shares the z rows."""
    r, z, n = w.split(hidden)
    return torch.cat([r, z, -z, n])


def _lstm_rows(w: torch.Tensor, hidden: int) -> torch.Tensor:
    """PyTorch's (i, f, g, o) rows -> npukit's (i, f, o, g): the sigmoid gates first."""
    i, f, g, o = w.split(hidden)
    return torch.cat([i, f, o, g])


_ROWS = {"gru": _gru_rows, "lstm": _lstm_rows}


class QGateLinear(QMac):
    """A recurrent layer's input or hidden linear: the parameters are PyTorch's rows, it computes npukit's."""

    def __init__(self, profile, weight, bias, hidden: int, cell: str, *, w_bits, has_bias, weight_exp):
        super().__init__(profile, weight, bias, w_bits=w_bits, relu=False, wide=False, conv=None,
                         has_bias=has_bias, weight_exp=weight_exp)
        self.hidden, self.cell = hidden, cell
        self.op = "linear"

    def mac_weight(self):
        return _ROWS[self.cell](self.weight, self.hidden)

    def mac_bias(self):
        return _ROWS[self.cell](self.bias, self.hidden)


class QRecurrent(QModule):
    """A one-layer recurrent module (zero initial state), unrolled; `sequence`: the output is every step's
    hidden state (batch, T, H), else the last one (batch, H). Subclasses state one step in `_step`."""

    cell: str
    gates: int  # rows per hidden unit in PyTorch's weights

    def __init__(self, profile, rnn: nn.RNNBase, *, w_bits: int, weight_exp, sequence: bool, time_axis: int = 0):
        super().__init__(profile)
        h, f = rnn.hidden_size, rnn.input_size
        self.hidden, self.sequence = h, sequence
        self.time_axis = time_axis  # of the per-sample input: 0 (time, features), 1 (features, time)
        zeros = torch.zeros(self.gates * h)
        b_ih = rnn.bias_ih_l0.detach() if rnn.bias else zeros
        b_hh = rnn.bias_hh_l0.detach() if rnn.bias else zeros
        kw = {"w_bits": w_bits, "has_bias": rnn.bias, "weight_exp": weight_exp}
        self.ih = QGateLinear(profile, rnn.weight_ih_l0.detach(), b_ih, h, self.cell, **kw)
        self.hh = QGateLinear(profile, rnn.weight_hh_l0.detach(), b_hh, h, self.cell, **kw)
        self.h0 = QMac(profile, torch.zeros(h, f), torch.zeros(h), w_bits=w_bits, relu=False, wide=False, conv=None,
                       has_bias=False)
        self.h0.weight.requires_grad_(False)  # the zero state: no training moves it
        self.stack = QConcat(profile, 0) if sequence else None
        self.trace: dict | None = None  # set by the QAT dump to receive the inner tensors

    def _unroll(self, x, steps: int, ops):
        """The unrolled layer, stated once for both the QAT forward and the IR (`ops`: _TorchSteps or
        _IRSteps); returns the layer's output."""
        x0 = ops.row(x, 0, "t0.x", self.time_axis)
        state = self._initial(ops.layer(self.h0, "h0", [x0], self.hidden))
        states = []
        for t in range(steps):
            xt = x0 if t == 0 else ops.row(x, t, f"t{t}.x", self.time_axis)
            last = t == steps - 1 and not self.sequence
            state = self._step(ops, t, xt, state, "" if last else f"t{t}.h")  # the output takes the layer's name
            states.append(state[0])
        return ops.stack(self.stack, states) if self.sequence else states[-1]

    def forward(self, xs, exps):
        ops = _TorchSteps(self.trace)
        y, e = self._unroll((xs[0], int(exps[0])), xs[0].shape[1 + self.time_axis], ops)
        self.out_exp.fill_(e)
        return y

    def float_forward(self, xs):
        x = xs[0] if self.time_axis == 0 else xs[0].transpose(1, 2)
        w = [(m.weight.to(x.dtype), m.bias.to(x.dtype)) for m in (self.ih, self.hh)]
        state = (x.new_zeros(x.shape[0], self.hidden),) * 2
        states = []
        for t in range(x.shape[1]):
            gi, gh = (nn.functional.linear(v, *p) for v, p in zip((x[:, t], state[0]), w, strict=True))
            state = self._float_step(gi, gh, state)
            states.append(state[0])
        return torch.stack(states, 1) if self.sequence else state[0]

    def to_ir(self, name, inputs, out_shape):
        """The unrolled steps as IR nodes: [(node, output spec), ...], the layer's output last."""
        ops = _IRSteps(name)
        self._unroll(inputs[0], inputs[0].shape[self.time_axis], ops)
        return ops.pairs


class QGRU(QRecurrent):
    op = cell = "gru"
    gates = 3

    def __init__(self, profile, rnn, **kw):
        super().__init__(profile, rnn, **kw)
        self.gate_sum, self.sigmoid = QAdd(profile, False), QLut(profile, "sigmoid")
        self.reset, self.candidate, self.tanh = QMul(profile, False), QAdd(profile, False), QLut(profile, "tanh")
        self.keep_new, self.keep_old, self.update = QMul(profile, False), QMul(profile, False), QAdd(profile, False)

    def _initial(self, zero):
        return (zero,)

    def _step(self, ops, t, xt, state, out_tag):
        hid, (h,) = self.hidden, state
        gi, gh = ops.layer(self.ih, f"t{t}.ih", [xt], 4 * hid), ops.layer(self.hh, f"t{t}.hh", [h], 4 * hid)
        a = ops.layer(self.gate_sum, f"t{t}.gates", [ops.cut(gi, 0, 3 * hid, f"t{t}.gi_rz"),
                                                     ops.cut(gh, 0, 3 * hid, f"t{t}.gh_rz")], 3 * hid)
        s = ops.layer(self.sigmoid, f"t{t}.sigmoid", [a], 3 * hid)
        rn = ops.layer(self.reset, f"t{t}.reset", [ops.cut(s, 0, hid, f"t{t}.r"),
                                                   ops.cut(gh, 3 * hid, 4 * hid, f"t{t}.gh_n")], hid)
        pre = ops.layer(self.candidate, f"t{t}.candidate", [ops.cut(gi, 3 * hid, 4 * hid, f"t{t}.gi_n"), rn], hid)
        n = ops.layer(self.tanh, f"t{t}.tanh", [pre], hid)
        new = ops.layer(self.keep_new, f"t{t}.keep_new", [ops.cut(s, 2 * hid, 3 * hid, f"t{t}.zc"), n], hid)
        old = ops.layer(self.keep_old, f"t{t}.keep_old", [ops.cut(s, hid, 2 * hid, f"t{t}.z"), h], hid)
        return (ops.layer(self.update, out_tag, [new, old], hid),)

    def _float_step(self, gi, gh, state):
        hid = self.hidden
        r, z = torch.sigmoid(gi[:, :2 * hid] + gh[:, :2 * hid]).split(hid, 1)
        n = torch.tanh(gi[:, 2 * hid:] + r * gh[:, 2 * hid:])
        return ((1 - z) * n + z * state[0],)


class QLSTM(QRecurrent):
    op = cell = "lstm"
    gates = 4

    def __init__(self, profile, rnn, **kw):
        super().__init__(profile, rnn, **kw)
        self.gate_sum, self.sigmoid, self.tanh = QAdd(profile, False), QLut(profile, "sigmoid"), QLut(profile, "tanh")
        self.forget, self.admit, self.cell_sum = QMul(profile, False), QMul(profile, False), QAdd(profile, False)
        self.cell_tanh, self.emit = QLut(profile, "tanh"), QMul(profile, False)

    def _initial(self, zero):
        return (zero, zero)

    def _step(self, ops, t, xt, state, out_tag):
        hid, (h, c) = self.hidden, state
        gi, gh = ops.layer(self.ih, f"t{t}.ih", [xt], 4 * hid), ops.layer(self.hh, f"t{t}.hh", [h], 4 * hid)
        a = ops.layer(self.gate_sum, f"t{t}.gates", [gi, gh], 4 * hid)
        s = ops.layer(self.sigmoid, f"t{t}.sigmoid", [ops.cut(a, 0, 3 * hid, f"t{t}.a_ifo")], 3 * hid)
        g = ops.layer(self.tanh, f"t{t}.tanh", [ops.cut(a, 3 * hid, 4 * hid, f"t{t}.a_g")], hid)
        kept = ops.layer(self.forget, f"t{t}.forget", [ops.cut(s, hid, 2 * hid, f"t{t}.f"), c], hid)
        new = ops.layer(self.admit, f"t{t}.admit", [ops.cut(s, 0, hid, f"t{t}.i"), g], hid)
        c = ops.layer(self.cell_sum, f"t{t}.c", [kept, new], hid)
        tc = ops.layer(self.cell_tanh, f"t{t}.tanh_c", [c], hid)
        h = ops.layer(self.emit, out_tag, [ops.cut(s, 2 * hid, 3 * hid, f"t{t}.o"), tc], hid)
        return (h, c)

    def _float_step(self, gi, gh, state):
        i, f, g, o = (gi + gh).split(self.hidden, 1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return (torch.sigmoid(o) * torch.tanh(c), c)


class _TorchSteps:
    """The QAT side of `QGRU._unroll`: values are (tensor, exponent) pairs; `trace`, a dict when set, receives
    every inner tensor under its IR name (per-layer dumps)."""

    def __init__(self, trace: dict | None):
        self.trace = trace

    def _seen(self, tag, v):
        if self.trace is not None:
            self.trace[tag] = v
        return v

    def layer(self, m, tag, values, size):
        y = m([v for v, _ in values], [e for _, e in values])
        return self._seen(tag, (y, values[0][1] if m.keeps_exp else int(m.out_exp)))

    def cut(self, v, lo, hi, tag):
        return self._seen(tag, (v[0].narrow(1, lo, hi - lo), v[1]))

    def row(self, x, t, tag, axis):
        self._seen(f"{tag}_row", (x[0].narrow(1 + axis, t, 1), x[1]))
        return self._seen(tag, (x[0].select(1 + axis, t), x[1]))

    def stack(self, m, states):
        rows = [self._seen(tag, (v.unsqueeze(1), e)) for tag, (v, e) in
                ((f"t{t}.h_row", s) for t, s in enumerate(states))]
        y = m([v for v, _ in rows], [e for _, e in rows])
        return self._seen("", (y, int(m.out_exp)))


class _IRSteps:
    """The IR side of `QGRU._unroll`: values are TensorSpecs; every op becomes a node named `<layer>.<tag>`."""

    def __init__(self, name: str):
        self.name = name
        self.pairs: list[tuple[Node, TensorSpec]] = []

    def _full(self, tag: str) -> str:
        return f"{self.name}.{tag}" if tag else self.name

    def _emit(self, node: Node, spec: TensorSpec) -> TensorSpec:
        self.pairs.append((node, spec))
        return spec

    def _view(self, op, v, tag, attrs, shape):
        name = self._full(tag)
        return self._emit(Node(name, op, [v.name], [name], attrs), TensorSpec(name, tuple(shape), v.bits, v.exp))

    def layer(self, m, tag, specs, size):
        return self._emit(*m.to_ir(self._full(tag), specs, (size,)))

    def cut(self, v, lo, hi, tag):
        return self._view("slice", v, tag, {"axis": 0, "start": lo, "stop": hi}, (hi - lo,))

    def row(self, x, t, tag, axis):
        feat = x.shape[1 - axis]
        one = self._view("slice", x, f"{tag}_row", {"axis": axis, "start": t, "stop": t + 1},
                         (1, feat) if axis == 0 else (feat, 1))
        return self._view("reshape", one, tag, {"shape": [feat]}, (feat,))

    def stack(self, m, states):
        rows = [self._view("reshape", v, f"t{t}.h_row", {"shape": [1, v.shape[0]]}, (1, v.shape[0]))
                for t, v in enumerate(states)]
        return self._emit(*m.to_ir(self.name, rows, (len(rows), states[0].shape[0])))


def _last_step_of(user, item: int, steps: int, batch_first: bool) -> bool:
    """Whether `user` takes the last step from item 0 (out) or 1 (h_n) of a GRU's result: h_n[-1], h_n[0],
    h_n.squeeze(0) on the state (1, batch, H); out[:, -1] (batch first) or out[-1] (time first)."""
    if user.op == "call_method" and user.target == "squeeze":
        return item == 1 and tuple(user.args[1:]) in ((0,), ())
    if not is_getitem(user):
        return False
    index = user.args[1] if isinstance(user.args[1], tuple) else (user.args[1],)
    if item == 1:
        return index in ((0,), (-1,))
    rest = index[1:] if not batch_first else index[2:]
    if not batch_first:
        step = index[0]
    elif len(index) >= 2 and index[0] == slice(None):
        step = index[1]
    else:
        return False
    return step in (-1, steps - 1) and all(i == slice(None) for i in rest)


def _swap_of(node) -> str | None:
    """'time' for x.transpose(0, 1) / x.permute(1, 0, 2) ((batch, time, f) <-> (time, batch, f)), 'features'
    for x.transpose(1, 2) / x.permute(0, 2, 1) ((batch, f, time) -> (batch, time, f)), else None."""
    args = tuple(node.args[1:])
    if (node.op == "call_method" and node.target == "transpose") or (node.op == "call_function"
                                                                     and node.target is torch.transpose):
        return {(0, 1): "time", (1, 0): "time", (1, 2): "features", (2, 1): "features"}.get(args)
    if node.op == "call_method" and node.target == "permute":
        dims = tuple(args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args)
        return {(1, 0, 2): "time", (0, 2, 1): "features"}.get(dims)
    return None


_COPIES = ("contiguous", "clone")  # value-preserving calls between a swap and the layer


def _before_copies(node):
    while node.op == "call_method" and node.target in _COPIES:
        node = node.args[0]
    return node


def _swap_for(rnn, source) -> str | None:
    """The swap of `source` (the layer's input, copies looked through) the layer absorbs, if any."""
    swap = _swap_of(_before_copies(source))
    return swap if swap == ("features" if rnn.batch_first else "time") else None


def absorbed_swap(node, ctx) -> bool:
    """A swap whose only reader (through copies) is a GRU or LSTM that reads its input before the swap."""
    at = node
    while len(at.users) == 1:
        (user,) = at.users
        if isinstance(ctx.module(user), tuple(_MODULES)):
            return _swap_for(ctx.module(user), at) is not None and _before_copies(user.args[0]) is node
        if not (user.op == "call_method" and user.target in _COPIES):
            return False
        at = user
    return False


_MODULES = {nn.GRU: QGRU, nn.LSTM: QLSTM}


class RecurrentCapture(ModuleCapture, OpCapture):
    op = "recurrent"
    modules = tuple(_MODULES)

    def capture(self, node, ctx):
        rnn = ctx.module(node)
        kind = type(rnn).__name__
        if rnn.num_layers != 1 or rnn.bidirectional:
            raise UnsupportedError(f"a {kind} with {rnn.num_layers} layer(s)"
                                   f"{', bidirectional' if rnn.bidirectional else ''}",
                                   f"stack single-layer, one-directional nn.{kind} modules instead")
        if getattr(rnn, "proj_size", 0):
            raise UnsupportedError(f"an LSTM with proj_size={rnn.proj_size}", "use proj_size=0")
        if len(node.args) > 1 or node.kwargs:
            raise UnsupportedError(f"an initial state passed to the {kind}", "start from zeros (call it on x alone)")
        source, swap = node.args[0], _swap_for(rnn, node.args[0])
        if not rnn.batch_first and swap is None:
            raise UnsupportedError(f"a {kind} with batch_first=False fed a tensor whose first dimension is not "
                                   "the batch", "feed it x.transpose(0, 1) of a (batch, time, features) "
                                   "input, or build it with batch_first=True")
        if swap is not None:  # the model swapped axes just before: the layer reads the tensor before the swap
            source = _before_copies(source).args[0]
        time_axis = 1 if swap == "features" else 0  # per sample: (features, time) after a conv front end
        shape = ctx.shape(source)
        if len(shape) != 3:
            raise UnsupportedError(f"a {kind} input of shape {shape}", "feed (batch, time, features)")
        sequence, last, absorbed, aliases = _use(node, kind, shape[1 + time_axis], rnn.batch_first)
        if sequence and not rnn.batch_first:
            raise UnsupportedError(f"the whole output sequence of a time-first {kind} (time, batch, hidden)",
                                   "read the last state (h_n[-1] or out[-1]), or use batch_first=True")
        if ctx.profile.activation_bits > 8:
            raise UnsupportedError(f"a {kind} needs 8-bit activations (its gates are tables)", "")
        module = _MODULES[type(rnn)](ctx.profile, rnn, w_bits=ctx.weight_bits_for(node_name(node)),
                                     weight_exp=ctx.weight_exp, sequence=sequence, time_axis=time_axis)
        return Captured(module, node_name(node), [source], last, absorbed, aliases)


def _use(node, kind: str, steps: int, batch_first: bool):
    """How the model reads the layer's result, `out, h_n = gru(x)` or `out, (h_n, c_n) = lstm(x)`: (whole
    sequence?, the traced node its value stands for, the nodes it absorbs, those that are the same value)."""
    spelled = "out, h_n = gru(x)" if kind == "GRU" else "out, (h_n, c_n) = lstm(x)"
    items, absorbed = [], []  # (0: out or 1: h_n, its getitem node)
    for item in node.users:  # one getitem each, used or not
        if not is_getitem(item) or item.args[1] not in (0, 1):
            raise UnsupportedError(f"the {kind}'s result used other than as `{spelled}`", f"unpack it: {spelled}")
        absorbed.append(item)
        if kind == "LSTM" and item.args[1] == 1:  # (h_n, c_n)
            for part in item.users:
                if not is_getitem(part) or part.args[1] not in (0, 1):
                    raise UnsupportedError(f"the LSTM's state used other than as `{spelled}`", f"unpack it: {spelled}")
                if part.args[1] == 1 and part.users:
                    raise UnsupportedError("the LSTM's cell state c_n read by the model",
                                           "read the hidden state h_n[-1] or out[:, -1] instead")
                absorbed.append(part)
                items += [(1, part)] * (part.args[1] == 0)
        else:
            items.append((item.args[1], item))
    last_steps, sequences = [], []
    for index, item in items:
        for user in item.users:
            if _last_step_of(user, index, steps, batch_first):
                last_steps.append(user)
            elif index == 0:
                sequences.append(item)
            else:
                raise UnsupportedError(f"the {kind}'s h_n used other than as h_n[-1], h_n[0] or h_n.squeeze(0)",
                                       "take h_n[-1] (batch, hidden)")
    if last_steps and sequences:
        raise UnsupportedError(f"the {kind}'s output used in more than one way (its last state and its whole "
                               "sequence)", "read either the last state (h_n[-1] or out[:, -1]) or `out`")
    if not last_steps and not sequences:
        raise UnsupportedError(f"the {kind}'s output is not used", f"remove the {kind} or read h_n[-1]")
    if sequences:
        return True, sequences[0], absorbed, []
    return False, last_steps[0], absorbed + last_steps, last_steps[1:]

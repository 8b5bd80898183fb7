"""QAT module and capture of nn.GRU: one recurrent layer unrolled over its fixed sequence length into ops
the IR already has (linear, slice, add, table sigmoid/tanh, mul, reshape, concat), so every backend computes
it exactly with no recurrent kernel of its own.

Each step t, with x_t the t-th input vector and h the hidden state (8-bit, carried in integers):

    gi = ih(x_t)                  rows [r, z, -z, n] of W_ih x_t + b_ih      (linear)
    gh = hh(h)                    rows [r, z, -z, n] of W_hh h + b_hh        (linear)
    s  = sigmoid(gi[:3H] + gh[:3H])  = [r, z, 1 - z]                          (add, table)
    n  = tanh(gi[3H:] + r * gh[3H:])                                         (mul, add, table)
    h  = (1 - z) * n + z * h                                                  (mul, mul, add)

1 - z is sigmoid(-a), computed from rows of -W_z (shared with the z rows: one parameter) because the IR
has no subtraction. The first step reads h = 0, made by a linear with zero weights on x_0: the step graph is
the same at every t, and the hidden state never needs a constant tensor. Every sub-layer is one module with
one output exponent for all steps (its observer sees every step), so the unrolled graph repeats one step.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UnsupportedError
from ..ir import Node, TensorSpec
from .add import QAdd
from .base import Captured, ModuleCapture, OpCapture, node_name
from .concat import QConcat
from .fakequant import QModule
from .lut import QLut
from .mac import QMac
from .mul import QMul


def _gate_rows(w: torch.Tensor, hidden: int) -> torch.Tensor:
    """PyTorch's (r, z, n) rows -> npukit's (r, z, -z, n): the complement gate shares the z rows."""
    r, z, n = w.split(hidden)
    return torch.cat([r, z, -z, n])


class QGateLinear(QMac):
    """A GRU's input or hidden linear: the parameters are PyTorch's 3H rows; it computes the 4H rows."""

    def __init__(self, profile, weight, bias, hidden: int, *, w_bits, has_bias, weight_exp):
        super().__init__(profile, weight, bias, w_bits=w_bits, relu=False, wide=False, conv=None,
                         has_bias=has_bias, weight_exp=weight_exp)
        self.hidden = hidden
        self.op = "linear"

    def mac_weight(self):
        return _gate_rows(self.weight, self.hidden)

    def mac_bias(self):
        return _gate_rows(self.bias, self.hidden)


class QGRU(QModule):
    """nn.GRU (one layer, zero initial state; time first when the model swaps batch and time for it), unrolled; `sequence`: the output is every step's
    hidden state (batch, T, H), else the last one (batch, H)."""

    op = "gru"

    def __init__(self, profile, gru: nn.GRU, *, w_bits: int, weight_exp, sequence: bool):
        super().__init__(profile)
        h, f = gru.hidden_size, gru.input_size
        self.hidden, self.sequence = h, sequence
        zeros = torch.zeros(3 * h)
        b_ih = gru.bias_ih_l0.detach() if gru.bias else zeros
        b_hh = gru.bias_hh_l0.detach() if gru.bias else zeros
        kw = {"w_bits": w_bits, "has_bias": gru.bias, "weight_exp": weight_exp}
        self.ih = QGateLinear(profile, gru.weight_ih_l0.detach(), b_ih, h, **kw)
        self.hh = QGateLinear(profile, gru.weight_hh_l0.detach(), b_hh, h, **kw)
        self.h0 = QMac(profile, torch.zeros(h, f), torch.zeros(h), w_bits=w_bits, relu=False, wide=False, conv=None,
                       has_bias=False)
        self.h0.weight.requires_grad_(False)  # the zero state: no training moves it
        self.gates, self.sigmoid = QAdd(profile, False), QLut(profile, "sigmoid")
        self.reset, self.candidate, self.tanh = QMul(profile, False), QAdd(profile, False), QLut(profile, "tanh")
        self.keep_new, self.keep_old, self.update = QMul(profile, False), QMul(profile, False), QAdd(profile, False)
        self.stack = QConcat(profile, 0) if sequence else None
        self.trace: dict | None = None  # set by the QAT dump to receive the inner tensors

    def _unroll(self, x, steps: int, ops):
        """The unrolled layer, stated once for both the QAT forward and the IR (`ops`: _TorchSteps or
        _IRSteps); returns the layer's output."""
        hid = self.hidden
        x0 = ops.row(x, 0, "t0.x")
        h = ops.layer(self.h0, "h0", [x0], hid)
        states = []
        for t in range(steps):
            xt = x0 if t == 0 else ops.row(x, t, f"t{t}.x")
            gi, gh = ops.layer(self.ih, f"t{t}.ih", [xt], 4 * hid), ops.layer(self.hh, f"t{t}.hh", [h], 4 * hid)
            a = ops.layer(self.gates, f"t{t}.gates", [ops.cut(gi, 0, 3 * hid, f"t{t}.gi_rz"),
                                                      ops.cut(gh, 0, 3 * hid, f"t{t}.gh_rz")], 3 * hid)
            s = ops.layer(self.sigmoid, f"t{t}.sigmoid", [a], 3 * hid)
            rn = ops.layer(self.reset, f"t{t}.reset", [ops.cut(s, 0, hid, f"t{t}.r"),
                                                       ops.cut(gh, 3 * hid, 4 * hid, f"t{t}.gh_n")], hid)
            pre = ops.layer(self.candidate, f"t{t}.candidate", [ops.cut(gi, 3 * hid, 4 * hid, f"t{t}.gi_n"), rn], hid)
            n = ops.layer(self.tanh, f"t{t}.tanh", [pre], hid)
            new = ops.layer(self.keep_new, f"t{t}.keep_new", [ops.cut(s, 2 * hid, 3 * hid, f"t{t}.zc"), n], hid)
            old = ops.layer(self.keep_old, f"t{t}.keep_old", [ops.cut(s, hid, 2 * hid, f"t{t}.z"), h], hid)
            last = t == steps - 1 and not self.sequence
            h = ops.layer(self.update, "" if last else f"t{t}.h", [new, old], hid)  # the output takes the layer's name
            states.append(h)
        return ops.stack(self.stack, states) if self.sequence else h

    def forward(self, xs, exps):
        ops = _TorchSteps(self.trace)
        y, e = self._unroll((xs[0], int(exps[0])), xs[0].shape[1], ops)
        self.out_exp.fill_(e)
        return y

    def float_forward(self, xs):
        x, hid = xs[0], self.hidden
        gi_w, gh_w = self.ih.weight.to(x.dtype), self.hh.weight.to(x.dtype)
        gi_b, gh_b = self.ih.bias.to(x.dtype), self.hh.bias.to(x.dtype)
        h = x.new_zeros(x.shape[0], hid)
        states = []
        for t in range(x.shape[1]):
            gi, gh = nn.functional.linear(x[:, t], gi_w, gi_b), nn.functional.linear(h, gh_w, gh_b)
            r, z = torch.sigmoid(gi[:, :2 * hid] + gh[:, :2 * hid]).split(hid, 1)
            n = torch.tanh(gi[:, 2 * hid:] + r * gh[:, 2 * hid:])
            h = (1 - z) * n + z * h
            states.append(h)
        return torch.stack(states, 1) if self.sequence else h

    def to_ir(self, name, inputs, out_shape):
        """The unrolled steps as IR nodes: [(node, output spec), ...], the layer's output last."""
        ops = _IRSteps(name)
        self._unroll(inputs[0], inputs[0].shape[0], ops)
        return ops.pairs


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

    def row(self, x, t, tag):
        self._seen(f"{tag}_row", (x[0][:, t : t + 1], x[1]))
        return self._seen(tag, (x[0][:, t], x[1]))

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

    def row(self, x, t, tag):
        one = self._view("slice", x, f"{tag}_row", {"axis": 0, "start": t, "stop": t + 1}, (1, x.shape[1]))
        return self._view("reshape", one, tag, {"shape": [x.shape[1]]}, (x.shape[1],))

    def stack(self, m, states):
        rows = [self._view("reshape", v, f"t{t}.h_row", {"shape": [1, v.shape[0]]}, (1, v.shape[0]))
                for t, v in enumerate(states)]
        return self._emit(*m.to_ir(self.name, rows, (len(rows), states[0].shape[0])))


def _is_getitem(node, index=None) -> bool:
    import operator

    return (node.op == "call_function" and node.target is operator.getitem
            and (index is None or node.args[1] == index))


def _last_step_of(user, item: int, steps: int, batch_first: bool) -> bool:
    """Whether `user` takes the last step from item 0 (out) or 1 (h_n) of a GRU's result: h_n[-1], h_n[0],
    h_n.squeeze(0) on the state (1, batch, H); out[:, -1] (batch first) or out[-1] (time first)."""
    if user.op == "call_method" and user.target == "squeeze":
        return item == 1 and tuple(user.args[1:]) in ((0,), ())
    if not _is_getitem(user):
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


def _is_time_swap(node) -> bool:
    """x.transpose(0, 1), torch.transpose(x, 0, 1) or x.permute(1, 0, 2): (batch, time, ...) <-> (time, batch, ...)."""
    args = tuple(node.args[1:])
    if (node.op == "call_method" and node.target == "transpose") or (node.op == "call_function"
                                                                     and node.target is torch.transpose):
        return args in ((0, 1), (1, 0))
    if node.op == "call_method" and node.target == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], tuple | list) else args
        return tuple(dims) == (1, 0, 2)
    return False


def feeds_time_first_gru(node, ctx) -> bool:
    """A time swap whose only reader is a GRU with batch_first=False: the GRU's capture absorbs it."""
    users = list(node.users)
    return (_is_time_swap(node) and len(users) == 1 and isinstance(ctx.module(users[0]), nn.GRU)
            and not ctx.module(users[0]).batch_first)


class GRUCapture(ModuleCapture, OpCapture):
    op = "gru"
    modules = (nn.GRU,)

    def capture(self, node, ctx):
        gru = ctx.module(node)
        if gru.num_layers != 1 or gru.bidirectional:
            raise UnsupportedError(f"a GRU with {gru.num_layers} layer(s){', bidirectional' if gru.bidirectional else ''}",
                                   "stack single-layer, one-directional nn.GRU modules instead")
        if len(node.args) > 1 or node.kwargs:
            raise UnsupportedError("an initial hidden state passed to the GRU", "start from zeros (call gru(x))")
        source = node.args[0]
        if not gru.batch_first:  # the model swapped batch and time just before: read the batch-first tensor
            if not _is_time_swap(source):
                raise UnsupportedError("a GRU with batch_first=False fed a tensor whose first dimension is not "
                                       "the batch", "feed it x.transpose(0, 1) of a (batch, time, features) "
                                       "input, or build it with batch_first=True")
            source = source.args[0]
        shape = ctx.shape(source)
        if len(shape) != 3:
            raise UnsupportedError(f"a GRU input of shape {shape}", "feed (batch, time, features)")
        sequence, last, absorbed, aliases = self._use(node, shape[1], gru.batch_first)
        if sequence and not gru.batch_first:
            raise UnsupportedError("the whole output sequence of a time-first GRU (time, batch, hidden)",
                                   "read the last state (h_n[-1] or out[-1]), or use batch_first=True")
        if ctx.profile.activation_bits > 8:
            raise UnsupportedError("a GRU needs 8-bit activations (its gates are tables)", "")
        module = QGRU(ctx.profile, gru, w_bits=ctx.weight_bits_for(node_name(node)), weight_exp=ctx.weight_exp,
                      sequence=sequence)
        return Captured(module, node_name(node), [source], last, absorbed, aliases)

    @staticmethod
    def _use(node, steps, batch_first):
        """How the model reads the GRU: (whole sequence?, the traced node its value stands for, the nodes it
        absorbs, those of them that are the same value)."""
        last_steps, sequences, absorbed = [], [], []
        for item in node.users:  # out, h_n = gru(x): one getitem each, used or not
            if not _is_getitem(item) or item.args[1] not in (0, 1):
                raise UnsupportedError("the GRU's result used other than as `out, h_n = gru(x)`",
                                       "unpack it: out, h_n = self.gru(x)")
            absorbed.append(item)
            for user in item.users:
                if _last_step_of(user, item.args[1], steps, batch_first):
                    last_steps.append(user)
                elif item.args[1] == 0:
                    sequences.append(item)
                else:
                    raise UnsupportedError("the GRU's h_n used other than as h_n[-1], h_n[0] or h_n.squeeze(0)",
                                           "take h_n[-1] (batch, hidden)")
        if last_steps and sequences:
            raise UnsupportedError("the GRU's output used in more than one way (its last state and its whole "
                                   "sequence)", "read either the last state (h_n[-1] or out[:, -1]) or `out`")
        if not last_steps and not sequences:
            raise UnsupportedError("the GRU's output is not used", "remove the GRU or read h_n[-1]")
        if sequences:
            return True, sequences[0], absorbed, []
        return False, last_steps[0], absorbed + last_steps, last_steps[1:]

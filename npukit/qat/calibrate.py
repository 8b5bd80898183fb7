"""Post-training quantization: activation (and weight) exponents chosen from calibration data, no training.

Methods, per observed tensor (layer outputs and the model input):
- `minmax`: the exponent at which the largest |value| seen over all batches fits (nothing clips);
- `percentile`: the exponent at which the given percentile of |value| fits (the rarest values clip);
- `mse`: of the exponents from the `minmax` one to 4 finer ones, the one whose quantized values are closest
  to the float values (mean squared error over a sample of the values: clipping error against rounding error).
`weights="mse"` also searches each conv/linear layer's weight exponent (0 to 3 finer than the layer's own
choice: max, mse or quantile) for the smallest error of the layer's output on the calibration inputs.

Each exponent is set through the observer's range (`range_ema`), so a QAT run after calibration starts
from it, and the exponents stay power-of-two: the result is as exact in every backend as any other model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn

from .. import arith
from ..errors import NpukitError
from .fakequant import ObservedQModule, mse_exponent

METHODS = ("minmax", "percentile", "mse")
_SAMPLE = 1 << 15  # values kept per observer per batch (a uniform random subsample)
_MAX_SAMPLES = 1 << 20  # per observer, over all batches
_FINER = 4  # exponents above the minmax one that `mse` tries (activations)
_FINER_WEIGHTS = 3


class _Collector:
    """Per observer: the largest |value| and a sample of the values, as `observe` passes them."""

    def __init__(self, keep_samples: bool, mac_inputs: bool):
        self.max: dict[ObservedQModule, float] = {}
        self.samples: dict[ObservedQModule, list[torch.Tensor]] = {}
        self.positive: dict[ObservedQModule, bool] = {}
        self.keep_samples = keep_samples
        self.inputs: dict[nn.Module, torch.Tensor] = {}  # conv/linear layer -> its first calibration input
        self.mac_inputs = mac_inputs
        self.gen = torch.Generator().manual_seed(0)  # the sample does not move the user's generators

    def __call__(self, module, values: torch.Tensor, scale: float, positive: bool) -> None:
        v = values.detach().flatten().to(torch.float64)
        if positive:
            v = v.clamp(min=0)
        self.max[module] = max(self.max.get(module, 0.0), float(v.abs().max()) * scale)
        self.positive[module] = positive
        if self.keep_samples:
            if v.numel() > _SAMPLE:
                v = v[torch.randint(v.numel(), (_SAMPLE,), generator=self.gen).to(v.device)]
            kept = self.samples.setdefault(module, [])
            if sum(t.numel() for t in kept) < _MAX_SAMPLES:
                kept.append(v.cpu() * scale)

    def input_hook(self, module, args):
        if self.mac_inputs and module not in self.inputs:
            self.inputs[module] = args[0][0].detach()[:64]


def calibrate(qmodel: nn.Module, batches: Iterable, method: str = "minmax", *, percentile: float = 99.99,
              weights: str = "max", progress: bool = False) -> nn.Module:
    """Set the activation exponents from calibration `batches` (inputs, or (inputs, labels) pairs; for a model
    with several inputs, tuples of them, or ((inputs...), labels) pairs) with
    `method` ('minmax', 'percentile', 'mse'), and with `weights='mse'` the weight exponents too. Returns the
    model, in the training mode it had. A progress bar with `progress=True`."""
    from .mac import QMac

    if method not in METHODS:
        raise NpukitError(f"method={method!r}; use one of {', '.join(METHODS)}")
    if weights not in ("max", "mse"):
        raise NpukitError(f"weights={weights!r}; use 'max' or 'mse'")
    if not 50 < percentile <= 100:
        raise NpukitError(f"percentile={percentile}; give a percentile in (50, 100], e.g. 99.99")
    observers = [m for m in qmodel.modules() if isinstance(m, ObservedQModule)]
    macs = [m for m in qmodel.modules() if isinstance(m, QMac)]
    collector = _Collector(keep_samples=method != "minmax", mac_inputs=weights == "mse")
    hooks = [m.register_forward_pre_hook(collector.input_hook) for m in macs]
    for m in observers:
        m.__dict__["_collector"] = collector
    was_training = qmodel.training
    qmodel.train()
    n, n_inputs = 0, _n_inputs(qmodel)
    try:
        with torch.no_grad():
            for batch in _track(batches, progress):
                xs = batch_inputs(batch, n_inputs)
                if len(xs[0]) == 0:  # an empty last slice: nothing to observe
                    continue
                qmodel(*xs)
                n += 1
    finally:
        for m in observers:
            m.__dict__.pop("_collector", None)
        for h in hooks:
            h.remove()
        qmodel.train(was_training)
    if n == 0:
        raise NpukitError("calibrate() got no batches")
    with torch.no_grad():
        for m in observers:
            if m in collector.max:
                e = _choose(m, collector, method, percentile)
                # minmax keeps the range seen (as the observer would), so QAT after it moves the same way
                _set_range(m, collector.max[m] if method == "minmax" else ((1 << (m.act_bits - 1)) - 1) * 2.0**-e, e)
        for m in macs:
            if m in collector.inputs:
                m.w_exp_offset = _weight_offset(m, collector.inputs[m])
    return qmodel


def _n_inputs(qmodel: nn.Module) -> int:
    graph = getattr(qmodel, "graph", None)
    return sum(n.op == "placeholder" for n in graph.nodes) if graph is not None else 1


def batch_inputs(batch, n_inputs: int) -> tuple:
    """The model inputs of a data batch: `x`, `(x, labels)`; with several inputs `(x0, x1, ...)`,
    `(x0, x1, ..., labels)` or `((x0, x1, ...), labels)`."""
    if n_inputs == 1:
        return (batch[0] if isinstance(batch, list | tuple) else batch,)
    if isinstance(batch, list | tuple) and batch and isinstance(batch[0], list | tuple):
        batch = batch[0]
    if not isinstance(batch, list | tuple) or len(batch) < n_inputs:
        raise NpukitError(f"the model takes {n_inputs} inputs; give each batch as a tuple (x0, x1, ...) of "
                          f"{n_inputs} tensors, or ((x0, x1, ...), labels)")
    return tuple(batch[:n_inputs])


def _track(batches, progress: bool):
    if not progress:
        return batches
    from rich.progress import track

    total = len(batches) if hasattr(batches, "__len__") else None
    return track(batches, description="calibrating", total=total, transient=True)


def _choose(m: ObservedQModule, c: _Collector, method: str, percentile: float) -> int:
    bits = m.act_bits
    e_max = arith.fit_exponent(c.max[m], bits)
    if method == "minmax":
        return e_max
    values = torch.cat(c.samples[m])
    if method == "percentile":
        return arith.fit_exponent(float(torch.quantile(values.abs()[: 1 << 24], percentile / 100)), bits)
    return mse_exponent(values, e_max, _FINER, bits, m.rounding, c.positive[m])


def _set_range(m: ObservedQModule, real_range: float, e: int) -> None:
    """The observer's range, and the exponent it fits (a grid's largest value fits that grid's exponent)."""
    m.range_ema.fill_(real_range)
    m.range_seen.fill_(True)
    m.out_exp.fill_(e)


def _weight_offset(m, x: torch.Tensor) -> int:
    """How many exponents finer than the max-fitting one the layer's weights do best on its own inputs."""
    w = m.mac_weight().detach().to(torch.float64)
    m.w_exp_offset = 0
    base = m.int_params(0)[1]  # the layer's own choice (max, mse or quantile), which the offset refines
    lo, hi = arith.int_range(m.w_bits)
    x = x.to(torch.float64)
    ref = m._mac(x, w, None)
    best, best_err = 0, math.inf
    for k in range(_FINER_WEIGHTS + 1):
        e = min(base + k, arith.MAX_EXP)
        wq = arith.saturate(arith.round_real(w * 2.0**e, m.rounding), lo, hi) * 2.0**-e
        err = float(((m._mac(x, wq, None) - ref) ** 2).mean())
        if err < best_err:
            best, best_err = k, err
    return best


def freeze_observers(qmodel: nn.Module, frozen: bool = True) -> nn.Module:
    """Stop (or restart) activation-range updates: the exponents stay as they are while training goes on."""
    for m in qmodel.modules():
        if isinstance(m, ObservedQModule):
            m.frozen.fill_(frozen)
    return qmodel


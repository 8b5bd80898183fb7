"""Where a quantized model loses accuracy: per-layer error against float, saturation, rounding to zero, weight
ranges, and the accuracy each layer gives back when it alone is kept in float.

The float reference is the same QAT (or PTQ) model with quantization off (`float_mode`): BatchNorm folded,
every layer's `float_forward`, so differences are quantization and nothing else. Errors are cumulative (each
layer sees the quantized layers before it, as on the chip); the sensitivity ranking isolates layers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx

from .. import arith
from ..errors import NpukitError
from .capture import input_modules, input_tensor_name
from .convert import to_ir
from .fakequant import ObservedQModule, QModule

SATURATION_WARN = 0.01  # share of values beyond the grid worth a word
ZERO_WARN = 0.5  # share of non-zero values that round to zero
SENSITIVE_POINTS = 0.5  # accuracy points a layer must give back to be called out
_HIST_SAMPLES = 20000  # values kept per layer for the report's histograms


@contextlib.contextmanager
def float_mode(qmodel: fx.GraphModule, layers: set[str] | None = None) -> Iterator[None]:
    """Run the named QAT modules (all when None) without quantization, for the duration of the block."""
    patched = []
    inputs = {name for name, _ in input_modules(qmodel)}
    for name, m in qmodel.named_modules():
        if isinstance(m, QModule) and (layers is None or name in layers):
            if name in inputs:
                m.forward = lambda x, m=m: m.float_forward([x])
            else:
                m.forward = lambda xs, exps, m=m: m.float_forward(xs)
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward  # the instance attribute goes; the class's forward is back


@dataclass
class LayerStats:
    name: str
    op: str
    exp: int
    bits: int
    sqnr_db: float  # 10 log10(|float|^2 / |quantized - float|^2), inf when equal
    rel_error: float  # |quantized - float| / |float|
    saturated: float  # share of float values beyond the grid at this exponent
    zeroed: float  # share of non-zero float values that quantize to 0
    bits_used: int  # of `bits`: what the largest |integer| needs, sign included
    w_bits: int | None = None
    w_exp: int | None = None
    w_range: tuple[float, float] | None = None  # float (folded) weights
    w_clip: tuple[float, float] | None = None  # the weight grid's real range
    w_outliers: int | None = None  # weights beyond k standard deviations of the mean
    w_bits_used: int | None = None
    w_median_int: int | None = None  # median |integer weight|: how much of the grid the bulk uses
    float_gain: float | None = None  # accuracy points (or output SQNR dB without labels) with this layer in float
    source: str = ""
    owns_exp: bool = True  # False: the exponent is its input's (pooling, reshape)


@dataclass
class Analysis:
    target: str
    metric: str  # "accuracy" (labels given) or "output SQNR dB"
    quantized: float  # the metric of the quantized model
    float: float  # of the float reference
    layers: list[LayerStats]
    ranking: list[str]  # layers by float_gain, largest first
    suggestions: list[str]
    histograms: dict = field(default_factory=dict, repr=False)  # layer -> float sample, grid (for the report)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("histograms")
        for layer in d["layers"]:
            if layer["sqnr_db"] == math.inf:
                layer["sqnr_db"] = None  # JSON has no infinity
        return d


def analyze(qmodel: fx.GraphModule, x, y=None, *, sensitivity: bool = True, k_outliers: float = 3.0,
            batch_size: int = 512, progress: bool = False) -> Analysis:
    """Analyze a prepared (QAT-trained or calibrated) model on float inputs `x` (and labels `y`, for accuracy)."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    if len(x) == 0:
        raise NpukitError("analyze() needs at least one input sample")
    labels = None if y is None else np.asarray(y).reshape(-1)
    if labels is not None and len(labels) != len(x):
        raise NpukitError(f"{len(x)} inputs but {len(labels)} labels")
    graph = to_ir(qmodel)
    if len(graph.inputs) != 1:
        raise NpukitError("analyze() supports models with one input")
    modules = {n: m for n, m in qmodel.named_modules() if isinstance(m, QModule)}
    inputs = {name for name, _ in input_modules(qmodel)}
    tensor_of = {n: (input_tensor_name(n) if n in inputs else n) for n in modules}
    was_training = qmodel.training
    qmodel.eval()
    try:
        q_out, q_acts = _run(qmodel, x, modules, batch_size)
        with float_mode(qmodel):
            f_out, f_acts = _run(qmodel, x, modules, batch_size)
        score = (lambda out: _accuracy(out, labels)) if labels is not None else (lambda out: _sqnr(out, f_out))
        quantized, reference = score(q_out), score(f_out)
        layers, hist = [], {}
        for name, m in modules.items():
            spec = graph.tensors[tensor_of[name]]
            st = _activation_stats(name, q_acts[name], f_acts[name], spec, m, graph)
            if hasattr(m, "int_params"):
                _weight_stats(st, m, graph, k_outliers)
            st.source = getattr(m, "source", "")
            st.owns_exp = not m.keeps_exp
            layers.append(st)
            hist[name] = _hist_sample(f_acts[name], spec, st, m)
        if sensitivity:
            candidates = [s for s in layers if isinstance(modules[s.name], ObservedQModule) or s.op == "avgpool"]
            for s in _track(candidates, progress):
                with float_mode(qmodel, {s.name}):
                    out, _ = _run(qmodel, x, {}, batch_size)
                s.float_gain = round(score(out) - quantized, 4)
    finally:
        qmodel.train(was_training)
    ranked = sorted((s for s in layers if s.float_gain is not None), key=lambda s: -s.float_gain)
    metric = "accuracy" if labels is not None else "output SQNR dB"
    return Analysis(graph.target["name"], metric, quantized, reference, layers, [s.name for s in ranked],
                    _suggestions(layers, ranked, metric), hist)


def prepare_for_analysis(model, x, target, *, weights=None, qat=None, method: str = "minmax", weight_bits=None,
                         kwargs=None) -> fx.GraphModule:
    """The quantized model `npukit analyze` looks at: `model` (file.py:ClassName, a saved .pt, or a module) with
    its float `weights`, prepared for `target`; then the `qat` checkpoint, or PTQ on `x` with `method`."""
    from ..checker import _is_class_spec, _load_torch, load_class
    from ..checkpoint import load_checkpoint
    from .calibrate import calibrate
    from .capture import prepare

    if isinstance(model, torch.nn.Module):
        float_model = model
    elif _is_class_spec(model):
        float_model = load_class(model, kwargs)
    else:
        float_model = _load_torch(Path(model))
    if weights is not None:
        load_checkpoint(float_model, weights)
    xs = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    qmodel = prepare(float_model, xs[:256], target, weight_bits=weight_bits, rules="warn")
    if qat is not None:
        load_checkpoint(qmodel, qat)
    else:
        calibrate(qmodel, [xs[i : i + 256] for i in range(0, min(len(xs), 2048), 256)], method)
    return qmodel


def _track(items, progress: bool):
    if not progress:
        return items
    from rich.progress import track

    return track(items, description="sensitivity (one layer in float at a time)", transient=True)


def _run(qmodel, x, modules: dict, batch_size: int):
    """The model's first output over `x` in batches, and every named module's output (concatenated)."""
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in modules}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: acts[n].append(out.detach().double()))
             for n, m in modules.items()]
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out = qmodel(x[i : i + batch_size])
                outs.append((out[0] if isinstance(out, tuple | list) else out).detach().double())
    finally:
        for h in hooks:
            h.remove()
    return torch.cat(outs).numpy(), {n: torch.cat(v).numpy() for n, v in acts.items() if v}


def _accuracy(out: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((out.reshape(len(out), -1).argmax(1) == labels).mean())


def _sqnr(q: np.ndarray, f: np.ndarray) -> float:
    noise = float(((q - f) ** 2).sum())
    signal = float((f**2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _bits_for(max_abs: float) -> int:
    """Bits a signed integer needs for values up to `max_abs` (sign included)."""
    return int(math.ceil(math.log2(max_abs + 1))) + 1 if max_abs > 0 else 1


def _activation_stats(name, q, f, spec, m, graph) -> LayerStats:
    lo, hi = arith.int_range(spec.bits)
    scaled = f * 2.0**spec.exp
    nonzero = np.abs(f) > 0
    qi = np.rint(q * 2.0**spec.exp)
    op = getattr(m, "op", "?")
    return LayerStats(
        name=name, op=op, exp=spec.exp, bits=spec.bits, sqnr_db=_sqnr(q, f),
        rel_error=float(np.linalg.norm(q - f) / max(np.linalg.norm(f), 1e-30)),
        saturated=float(((scaled > hi + 0.5) | (scaled < lo - 0.5)).mean()),
        zeroed=float(((qi == 0) & nonzero).sum() / max(int(nonzero.sum()), 1)),
        bits_used=_bits_for(float(np.abs(qi).max(initial=0))))


def _weight_stats(st: LayerStats, m, graph, k: float) -> None:
    node = graph.node(st.name)
    w = m.weight.detach().double().numpy()
    qw = node.params["weight"]
    lo, hi = arith.int_range(node.attrs["w_bits"])
    e = node.attrs["w_exp"]
    st.w_bits, st.w_exp = node.attrs["w_bits"], e
    st.w_range = (float(w.min()), float(w.max()))
    st.w_clip = (lo * 2.0**-e, hi * 2.0**-e)
    std = float(w.std())
    st.w_outliers = int((np.abs(w - w.mean()) > k * std).sum()) if std > 0 else 0
    st.w_bits_used = _bits_for(float(np.abs(qw).max(initial=0)))
    st.w_median_int = int(np.median(np.abs(qw)))


def _hist_sample(f: np.ndarray, spec, st: LayerStats, m) -> dict:
    flat = f.ravel()
    if flat.size > _HIST_SAMPLES:
        flat = flat[np.random.default_rng(0).choice(flat.size, _HIST_SAMPLES, replace=False)]
    lo, hi = arith.int_range(spec.bits)
    out = {"values": flat, "grid": (lo * 2.0**-spec.exp, hi * 2.0**-spec.exp), "step": 2.0**-spec.exp}
    if hasattr(m, "int_params"):
        out["weights"] = m.weight.detach().double().numpy().ravel()
        out["w_clip"] = st.w_clip
    return out


def _suggestions(layers: list[LayerStats], ranked: list[LayerStats], metric: str) -> list[str]:
    out = []
    unit = "points" if metric == "accuracy" else "dB of output SQNR"
    for s in ranked[:3]:
        if s.float_gain is None or s.float_gain < (SENSITIVE_POINTS if metric == "accuracy" else 3.0):
            continue
        if s.w_bits is not None and s.w_bits < 8:
            out.append(f"{s.name}: its {s.w_bits}-bit weights lose {s.float_gain:.1f} {unit}; keep 8 bits there")
        else:
            out.append(f"{s.name}: keeping it in float gives back {s.float_gain:.1f} {unit}, the most of any layer")
    for s in layers:
        if not s.owns_exp:  # pooling, reshape: the exponent and its problems belong to the layer before
            continue
        if s.saturated >= SATURATION_WARN:
            out.append(f"{s.name}: {s.saturated:.0%} of activations saturate at exponent {s.exp}: lower the exponent "
                       "(calibrate with method='mse' or 'percentile', or let QAT observers run longer) or clamp "
                       "the layer in stage 1")
        elif s.zeroed >= ZERO_WARN and s.op != "input":
            out.append(f"{s.name}: {s.zeroed:.0%} of its non-zero activations round to 0 at exponent {s.exp}: "
                       "raise the exponent")
        if s.w_outliers and s.w_median_int is not None and s.w_bits >= 4 and s.w_median_int <= 2:
            out.append(f"{s.name}: {s.w_outliers} weights beyond 3 standard deviations set the weight exponent "
                       f"({s.w_exp}) and half the weights use only |w| <= {s.w_median_int} of the "
                       f"{s.w_bits}-bit grid: try weight_exponent: quantile in the policy, or weights='mse' in "
                       "calibrate")
    return out

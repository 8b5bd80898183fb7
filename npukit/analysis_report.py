"""`npukit analyze`'s outputs: a terminal table, analysis.json, and report.html with its plots (per-layer SQNR
and sensitivity bars, activation histograms with the quantization grid, weight distributions with the
clip range). Drawn through matplotlib's Agg canvas, without pyplot, so no display is needed."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from .errors import NpukitError


def table(a):
    """The per-layer rich table."""
    from rich.table import Table

    gain = "float gain" + (" pts" if a.metric == "accuracy" else " dB")
    t = Table("layer", "op", "exp", "SQNR dB", "sat.", "to 0", "bits", "w bits", "w outl.", gain, title=_headline(a))
    for s in a.layers:
        t.add_row(s.name, s.op, str(s.exp), _db(s.sqnr_db), f"{s.saturated:.1%}", f"{s.zeroed:.1%}",
                  f"{s.bits_used}/{s.bits}", "" if s.w_bits is None else f"{s.w_bits_used}/{s.w_bits}",
                  "" if s.w_outliers is None else str(s.w_outliers),
                  "" if s.float_gain is None else f"{s.float_gain:+.2f}")
    return t


def _headline(a) -> str:
    unit = "%" if a.metric == "accuracy" else " dB"
    return (f"{a.target}: quantized {a.metric} {a.quantized:.2f}{unit}, float {a.float:.2f}{unit}; most sensitive: "
            + (", ".join(a.ranking[:3]) or "-"))


def _db(v: float) -> str:
    return "exact" if v == math.inf else f"{v:.1f}"


def write(a, out_dir: str | Path) -> dict[str, Path]:
    """analysis.json, report.html and the PNGs it shows, written all or nothing into `out_dir`."""
    from .fileio import staged_directory

    try:
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise NpukitError("the analysis report's plots need matplotlib: pip install matplotlib") from None
    out = Path(out_dir)
    names = {"json": "analysis.json", "html": "report.html", "bars": "layers.png", "hist": "activations.png",
             "weights": "weights.png"}
    with staged_directory(out) as stage:
        (stage / names["json"]).write_text(json.dumps(a.to_dict(), indent=1))
        _bars(a, stage / names["bars"])
        _histograms(a, stage / names["hist"], weights=False)
        has_weights = any("weights" in h for h in a.histograms.values())
        if has_weights:
            _histograms(a, stage / names["weights"], weights=True)
        (stage / names["html"]).write_text(_html(a, names, has_weights), encoding="utf-8")
    return {k: out / v for k, v in names.items() if k != "weights" or has_weights}


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _bars(a, path: Path) -> None:
    names = [s.name for s in a.layers]
    fig = _figure(max(10.0, 0.6 * len(names) + 2), 6.5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    sqnr = [min(s.sqnr_db, 80.0) for s in a.layers]
    colors = ["#c0392b" if s.saturated >= 0.01 else "#2e86c1" for s in a.layers]
    ax1.bar(names, sqnr, color=colors)
    ax1.set_ylabel("SQNR vs float (dB)")
    ax1.set_title("SQNR of each layer's quantized output against float (red: >= 1% saturated)")
    gains = [s.float_gain if s.float_gain is not None else 0.0 for s in a.layers]
    ax2.bar(names, gains, color=["#27ae60" if g > 0 else "#7f8c8d" for g in gains])
    ax2.set_ylabel("points" if a.metric == "accuracy" else "output SQNR dB")
    ax2.set_title(f"{a.metric} given back when this layer alone runs in float")
    ax2.axhline(0, color="black", lw=0.8)
    for label in ax2.get_xticklabels():
        label.set_rotation(45)
        label.set_ha("right")
    fig.tight_layout()
    fig.savefig(path, format="png", facecolor="white")


def _histograms(a, path: Path, *, weights: bool) -> None:
    items = [(n, h) for n, h in a.histograms.items() if not weights or "weights" in h]
    cols = min(3, len(items))
    rows = math.ceil(len(items) / cols)
    fig = _figure(5.0 * cols, 3.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    stats = {s.name: s for s in a.layers}
    for ax, (name, h) in zip(axes, items, strict=False):
        s = stats[name]
        if weights:
            values, (lo, hi) = h["weights"], h["w_clip"]
            ax.set_title(f"{name}: weights, {s.w_bits}-bit at exp {s.w_exp}", fontsize=9)
        else:
            values, (lo, hi) = h["values"], h["grid"]
            ax.set_title(f"{name}: float activations, grid at exp {s.exp}", fontsize=9)
        span = float(np.abs(values).max(initial=0)) or 1.0
        if max(abs(lo), abs(hi)) > 8 * span:  # a wide (accumulator) grid would squash the data to a line
            ax.set_title(ax.get_title() + f"\n(grid [{lo:.3g}, {hi:.3g}] far beyond the data)", fontsize=9)
            ax.hist(values, bins=80, color="#5d6d7e", log=True)
        else:
            ax.hist(values, bins=80, color="#5d6d7e", log=True)
            for v in (lo, hi):
                ax.axvline(v, color="#c0392b", lw=1.2)
        ax.tick_params(labelsize=7)
    for ax in axes[len(items) :]:
        ax.set_visible(False)
    fig.suptitle("red lines: the ends of the integer grid; values beyond them saturate", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", facecolor="white")


def _html(a, names: dict, has_weights: bool) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(s.name)}</td><td>{e(s.op)}</td><td>{s.exp}</td><td>{_db(s.sqnr_db)}</td>"
        f"<td>{s.rel_error:.3f}</td><td>{s.saturated:.1%}</td><td>{s.zeroed:.1%}</td><td>{s.bits_used}/{s.bits}</td>"
        f"<td>{'' if s.w_bits is None else f'{s.w_bits_used}/{s.w_bits} b, {s.w_outliers} outliers'}</td>"
        f"<td>{'' if s.float_gain is None else f'{s.float_gain:+.2f}'}</td><td>{e(s.source)}</td></tr>"
        for s in a.layers)
    tips = "".join(f"<li>{e(t)}</li>" for t in a.suggestions) or "<li>nothing stands out</li>"
    weights = f'<h2>Weights</h2><img src="{names["weights"]}" alt="weight distributions">' if has_weights else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>npukit analyze: {e(a.target)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child,td:nth-child(2),td:last-child{{text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>Where the quantized model loses {e(a.metric)}</h1>
<p>{e(_headline(a))}</p>
<h2>Suggestions</h2><ul>{tips}</ul>
<h2>Layers</h2>
<table><tr><th>layer</th><th>op</th><th>exp</th><th>SQNR dB</th><th>rel. err</th><th>saturated</th><th>to zero</th>
<th>bits used</th><th>weights</th><th>gain in float</th><th>source</th></tr>{rows}</table>
<p>SQNR and relative error compare each layer's quantized output with the same model run in float (BatchNorm
folded, no rounding or saturation); errors accumulate from layer to layer as on the chip. "Gain in float" is
what the model gives back when that layer alone runs in float: the sensitivity ranking.</p>
<img src="{names['bars']}" alt="per-layer SQNR and sensitivity">
<h2>Activations</h2><img src="{names['hist']}" alt="activation histograms with the quantization grid">
{weights}
</body></html>
"""

"""Test accuracy of npukit's quantized models against the float model and PyTorch's own int8 QAT.

    .venv/bin/python benchmarks/accuracy.py                  # 2 examples x 3 seeds, about 10-15 min on one thread
    .venv/bin/python benchmarks/accuracy.py --quick          # 1 seed, 3 + 3 epochs: a smoke run
    .venv/bin/python benchmarks/accuracy.py --seeds 5 --json /tmp/accuracy.json

For the two example networks (examples/kws_mnist1d.py: Conv1d on MNIST-1D; examples/digits_cnn.py: Conv2d
on scikit-learn's 8x8 digits), each seed (torch.manual_seed before the model is built; one data split for
all seeds) and target max78000, the test accuracy of:

- float: the plain float model (no constraint) trained F epochs;
- PTQ int8, minmax / percentile 99.99 / mse (activation and weight exponents): that float model prepared for
  the target and calibrated on up to 8 training batches of 256, no training;
- QAT int8 two-stage: npukit.TwoStage over F + Q epochs, F of float then Q of QAT, observers frozen for
  the last third of the QAT epochs (what the examples do); and the same with a constrained stage 1
  (policy constrain: true, the target's fixed float ranges) at 8 and 4 bits;
- QAT int8 one-stage: the same F + Q epochs all QAT (policy qat_start_epoch 0, same freeze epoch);
- QAT 4-bit and 2-bit weights (8-bit activations): two-stage with policy weight_bits 4 or 2 (weight exponent
  `auto`, i.e. mse below 8 bits), and 4-bit with weight_exponent max for comparison;
- torch.ao int8 QAT, the anchor: the float model above through FX graph mode (prepare_qat_fx with
  get_default_qat_qconfig_mapping("x86"): per-channel symmetric int8 weights, per-tensor affine uint8
  activations with reduce_range, i.e. 0..127), trained Q epochs like npukit's QAT stage (observers and
  BatchNorm statistics frozen at the same epoch), convert_fx, the int8 model evaluated on CPU. A failure of
  torch.ao is reported as the row's error, not raised.

npukit's QAT and PTQ models are scored in eval mode, where they compute exactly the chip's integer arithmetic.
Every run trains with one loop (kws_mnist1d.train's): AdamW (lr 0.01, weight decay 1e-4), cross-entropy,
the learning rate on a per-epoch cosine over the run's epochs (the float row: F; TwoStage: F + Q; torch.ao:
the last Q of F + Q, the learning rates npukit's QAT stage gets). Batch size per example (64; digits 32).

Printed: one line per run, then per example the mean, sample standard deviation and range over seeds in
percent and the difference of the means to float in points, then the goals as PASS/FAIL (measured, never
asserted). The JSON (written atomically) holds every seed's accuracy and seconds, the command and versions.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import npukit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

TARGET = "max78000"
LR, WEIGHT_DECAY = 0.01, 1e-4
CALIB_BATCHES, CALIB_BATCH = 8, 256


@dataclass(frozen=True)
class Example:
    module: str  # in examples/: make_model() and load_data()
    float_epochs: int
    qat_epochs: int
    batch: int

    @property
    def freeze_epoch(self) -> int:
        """Observers stay fixed from here: the last third of the QAT epochs."""
        return self.float_epochs + 2 * self.qat_epochs // 3


EXAMPLES = (Example("kws_mnist1d", 20, 10, 64), Example("digits_cnn", 30, 15, 32))
QUICK_EPOCHS = (3, 3)

ROWS = {  # key: label
    "float": "float (unconstrained)",
    "ptq_minmax": "PTQ int8 minmax",
    "ptq_percentile": "PTQ int8 percentile 99.99",
    "ptq_mse": "PTQ int8 mse (acts + weights)",
    "qat8": "QAT int8 two-stage",
    "qat8_constrained": "QAT int8, constrained stage 1",
    "qat8_one_stage": "QAT int8 one-stage",
    "qat4": "QAT 4-bit weights (two-stage)",
    "qat4_max": "QAT 4-bit, weight exponent max",
    "qat4_constrained": "QAT 4-bit, constrained stage 1",
    "qat2": "QAT 2-bit weights (two-stage)",
    "torch_ao": "torch.ao int8 QAT (FX, x86)",
}


def cosine_lr(epoch: int, total: int) -> float:
    return LR * 0.5 * (1 + math.cos(math.pi * epoch / total))


def train(net_at, params, x, y, batch: int, epochs: int, *, first: int = 0, total: int | None = None,
          on_epoch=None) -> None:
    """Epochs first..first+epochs-1 of a `total`-epoch cosine schedule; `net_at(epoch, optimizer)` gives the
    module to train in each (TwoStage.model, or a fixed model)."""
    total = total or epochs
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    for epoch in range(first, first + epochs):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(epoch, total)
        net = net_at(epoch, optimizer)
        if on_epoch:
            on_epoch(epoch)
        net.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    """Not npukit.train.evaluate: a converted torch.ao model has no parameters to find the device from."""
    return float((model.eval()(x).argmax(1) == y).double().mean())


def train_float(ex: Example, mod, data, seed: int) -> nn.Module:
    x, y = data[:2]
    torch.manual_seed(seed)
    model = mod.make_model()
    train(lambda _e, _o: model, model.parameters(), x, y, ex.batch, ex.float_epochs)
    return model


def ptq(model: nn.Module, data, seed: int, method: str, weights: str = "max") -> nn.Module:
    x = data[0]
    qmodel = npukit.prepare(copy.deepcopy(model), x[:512], TARGET)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: CALIB_BATCHES * CALIB_BATCH]
    return npukit.calibrate(qmodel, x[pick].split(CALIB_BATCH), method, weights=weights)


def npukit_qat(ex: Example, mod, data, seed: int, *, qat_start: int, weight_bits: int,
               weight_exponent: str = "auto", constrain: bool = False) -> nn.Module:
    x, y = data[:2]
    torch.manual_seed(seed)
    model = mod.make_model()
    policy = {"qat_start_epoch": qat_start, "weight_bits": weight_bits, "freeze_observers_epoch": ex.freeze_epoch,
              "weight_exponent": weight_exponent, "constrain": constrain}
    flow = npukit.TwoStage(model, x[:512], target=TARGET, policy=policy)
    train(flow.model, model.parameters(), x, y, ex.batch, ex.float_epochs + ex.qat_epochs)
    return flow.qmodel


def torch_ao_qat(ex: Example, float_model: nn.Module, data, seed: int) -> nn.Module:
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer, get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    x, y = data[:2]
    torch.backends.quantized.engine = "x86"
    model = prepare_qat_fx(copy.deepcopy(float_model).train(), get_default_qat_qconfig_mapping("x86"), (x[:1],))

    def freeze(epoch: int) -> None:
        if epoch == ex.freeze_epoch:
            model.apply(disable_observer)
            model.apply(freeze_bn_stats)

    torch.manual_seed(seed)
    train(lambda _e, _o: model, model.parameters(), x, y, ex.batch, ex.qat_epochs, first=ex.float_epochs,
          total=ex.float_epochs + ex.qat_epochs, on_epoch=freeze)
    return convert_fx(model.eval())


def run_seed(ex: Example, mod, data, seed: int, rows: dict) -> None:
    """Every row for one seed: appends accuracy and seconds to rows[key] (or the error, for torch.ao)."""
    x_test, y_test = data[2:]

    def measure(key: str, build, may_fail: bool = False):
        t = time.perf_counter()
        row = rows.setdefault(key, {"label": ROWS[key], "acc": [], "seconds": [], "errors": []})
        try:
            with warnings.catch_warnings(record=True) as seen:  # e.g. torch.ao's deprecation: in the JSON
                warnings.simplefilter("always")
                model = build()
            acc = accuracy(model, x_test, y_test)
        except Exception as e:  # torch.ao raises many types for what it cannot quantize
            if not may_fail:
                raise
            row["errors"].append(f"seed {seed}: {type(e).__name__}: {str(e).strip().splitlines()[0]}")
            print(f"  {ex.module} seed {seed}  {ROWS[key]:32s}  FAILED: {row['errors'][-1]}", flush=True)
            return None
        for w in seen:
            line = f"{w.category.__name__}: {str(w.message).strip().splitlines()[0]}"
            if line not in row.setdefault("warnings", []):
                row["warnings"].append(line)
        row["acc"].append(acc)
        row["seconds"].append(round(time.perf_counter() - t, 2))
        print(f"  {ex.module} seed {seed}  {ROWS[key]:32s}  {100 * acc:6.2f} %  ({row['seconds'][-1]:.1f} s)",
              flush=True)
        return model

    float_model = measure("float", lambda: train_float(ex, mod, data, seed))
    measure("ptq_minmax", lambda: ptq(float_model, data, seed, "minmax"))
    measure("ptq_percentile", lambda: ptq(float_model, data, seed, "percentile"))
    measure("ptq_mse", lambda: ptq(float_model, data, seed, "mse", weights="mse"))
    measure("qat8", lambda: npukit_qat(ex, mod, data, seed, qat_start=ex.float_epochs, weight_bits=8))
    measure("qat8_constrained", lambda: npukit_qat(ex, mod, data, seed, qat_start=ex.float_epochs, weight_bits=8,
                                                   constrain=True))
    measure("qat8_one_stage", lambda: npukit_qat(ex, mod, data, seed, qat_start=0, weight_bits=8))
    measure("qat4", lambda: npukit_qat(ex, mod, data, seed, qat_start=ex.float_epochs, weight_bits=4))
    measure("qat4_max", lambda: npukit_qat(ex, mod, data, seed, qat_start=ex.float_epochs, weight_bits=4,
                                           weight_exponent="max"))
    measure("qat4_constrained", lambda: npukit_qat(ex, mod, data, seed, qat_start=ex.float_epochs, weight_bits=4,
                                                   constrain=True))
    measure("qat2", lambda: npukit_qat(ex, mod, data, seed, qat_start=ex.float_epochs, weight_bits=2))
    measure("torch_ao", lambda: torch_ao_qat(ex, float_model, data, seed), may_fail=True)


def summarize(rows: dict) -> None:
    """Mean, sample std, min and max in percent, and the difference to float's mean in points."""
    base = statistics.fmean(100 * a for a in rows["float"]["acc"])  # as the rows' means: equal gives +0.00
    for row in rows.values():
        acc = [100 * a for a in row["acc"]]
        if acc:
            stats = dict(mean=statistics.fmean(acc), std=statistics.stdev(acc) if len(acc) > 1 else 0.0,
                         min=min(acc), max=max(acc), delta_float=statistics.fmean(acc) - base)
            row.update({k: round(v, 3) for k, v in stats.items()})


def table(ex: Example, rows: dict, seeds: list[int]) -> str:
    lines = [f"{ex.module}: float {ex.float_epochs} epochs, QAT {ex.qat_epochs} epochs, seeds {seeds}; "
             "test accuracy in %",
             f"  {'':32s} {'mean':>7s} {'std':>6s} {'min':>7s} {'max':>7s} {'vs float':>9s}"]
    for row in rows.values():
        if "mean" in row:
            partial = f"  ({len(row['acc'])} of {len(seeds)} seeds)" if len(row["acc"]) < len(seeds) else ""
            lines.append(f"  {row['label']:32s} {row['mean']:7.2f} {row['std']:6.2f} {row['min']:7.2f} "
                         f"{row['max']:7.2f} {row['delta_float']:+9.2f}{partial}")
        else:
            lines.append(f"  {row['label']:32s} FAILED: {row['errors'][0]}")
    return "\n".join(lines)


def goals(ex: Example, rows: dict) -> list[dict]:
    def mean(key):
        return rows[key].get("mean")

    checks = [("QAT int8 within 0.3 points of float", mean("qat8"), mean("float"), -0.3),
              ("4-bit weights within 1 point of float", mean("qat4"), mean("float"), -1.0),
              ("npukit QAT int8 >= torch.ao int8 QAT", mean("qat8"), mean("torch_ao"), 0.0)]
    out = []
    for name, value, ref, margin in checks:
        if value is None or ref is None:
            out.append({"example": ex.module, "goal": name, "result": "N/A", "detail": "a row failed"})
            continue
        out.append({"example": ex.module, "goal": name, "result": "PASS" if value - ref >= margin else "FAIL",
                    "detail": f"{value:.2f} vs {ref:.2f} ({value - ref:+.2f} points)"})
    return out


def write_json(path: Path, blob: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(blob, indent=2) + "\n")
    os.replace(tmp, path)


def git_commit() -> str | None:
    """The commit, with -dirty when tracked files have uncommitted changes (the numbers come from the tree)."""
    out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--quick", action="store_true", help=f"1 seed, {QUICK_EPOCHS[0]} float + {QUICK_EPOCHS[1]} QAT "
                    "epochs: a smoke run, not a measurement")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    seeds = list(range(1 if a.quick else a.seeds))
    examples = [replace(ex, float_epochs=QUICK_EPOCHS[0], qat_epochs=QUICK_EPOCHS[1]) for ex in EXAMPLES] if a.quick else list(EXAMPLES)
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    print(f"{command}\ntorch {torch.__version__}, npukit {npukit.__version__} (git {git_commit()}), target {TARGET}, "
          f"1 thread, seeds {seeds}", flush=True)

    start = time.perf_counter()
    results = {}
    for ex in examples:
        mod = importlib.import_module(ex.module)
        data = mod.load_data()  # the example's default split, the same for every seed
        rows: dict = {}
        for seed in seeds:
            run_seed(ex, mod, data, seed, rows)
        summarize(rows)
        results[ex.module] = {"float_epochs": ex.float_epochs, "qat_epochs": ex.qat_epochs, "batch": ex.batch,
                              "freeze_observers_epoch": ex.freeze_epoch, "rows": rows}
    wall = time.perf_counter() - start

    print()
    for ex in examples:
        print(table(ex, results[ex.module]["rows"], seeds) + "\n")
    checks = [g for ex in examples for g in goals(ex, results[ex.module]["rows"])]
    for g in checks:
        print(f"{g['result']:4s}  {g['example']}: {g['goal']}: {g['detail']}")
    print(f"\nwall time {wall / 60:.1f} min")
    write_json(a.json, {"command": command, "torch": torch.__version__, "npukit": npukit.__version__,
                        "git": git_commit(), "target": TARGET, "threads": 1, "seeds": seeds, "quick": a.quick,
                        "wall_s": round(wall, 1), "examples": results, "goals": checks})
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()

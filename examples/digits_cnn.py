"""A Conv2d CNN on scikit-learn's 8x8 handwritten digits, taken to the MAX78000 step by step.

    python examples/digits_cnn.py                        # 30 float + 15 QAT epochs, well under a minute on a CPU
    python examples/digits_cnn.py --target venus --float-epochs 3 --qat-epochs 2 --out /tmp/digits

The stages are spelled out with npukit's building blocks instead of a policy file (compare
examples/kws_mnist1d.py): train the float model (with `--constrain`, clamped to the vendor training
library's fixed ranges by `npukit.constrain`; it costs accuracy, see docs/training.md), then
`npukit.prepare` folds BatchNorm and fine-tunes with QAT, observers frozen for the last epochs; then
convert, check bit-exactness against the engine, export ONNX and pack.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import npukit
from npukit.train import evaluate


def make_model(classes: int = 10) -> nn.Module:
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 16), *block(16, 32), nn.MaxPool2d(2),  # 8x8 -> 4x4
                         *block(32, 32), nn.MaxPool2d(2),                   # -> 2x2
                         nn.Flatten(), nn.Linear(32 * 2 * 2, classes))


def load_data(seed: int = 0):
    """1,797 digits, 8x8 pixels of 0..16, scaled to [-1, 1) (the MAX78000's input range); 500 held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.clip(d.images / 8.0 - 1.0, -1, 127 / 128).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:500], perm[500:]
    return x[train], y[train], x[test], y[test]


def run_epochs(net: nn.Module, x, y, epochs: int, lr: float, log=None, on_epoch=None) -> None:
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=max(1, epochs * -(-len(x) // 32)))
    for epoch in range(epochs):
        if on_epoch:
            on_epoch(epoch)
        net.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        if log:
            log(epoch, loss.item())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="max78000")
    ap.add_argument("--float-epochs", type=int, default=30)
    ap.add_argument("--qat-epochs", type=int, default=15)
    ap.add_argument("--weight-bits", type=int, default=None, help="default: the target's")
    ap.add_argument("--constrain", action="store_true", help="stage 1 in the target's fixed float ranges")
    ap.add_argument("--out", type=Path, default=Path("out/digits_cnn"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y, x_test, y_test = load_data()
    model = make_model()

    # Before any training: does the model fit the chip?
    found = npukit.check(model, x[:1], target=a.target)
    if not found.ok:
        raise SystemExit("\n".join(str(p) for p in found.errors))

    # Stage 1: float, BatchNorm kept (constrained: activations and weights in the target's fixed ranges).
    net = npukit.constrain(model, a.target) if a.constrain else model
    run_epochs(net, x, y, a.float_epochs, lr=0.01,
               log=lambda e, loss: print(f"float {e:2d}  loss {loss:.3f}  test {evaluate(net, x_test, y_test):.3f}"))
    float_acc = evaluate(net, x_test, y_test)
    npukit.save_checkpoint(model, a.out / "float.pt", stage="constrained" if a.constrain else "float")

    # Stage 2: QAT from the stage-1 weights (a constrained model's clamps become the layers' output saturation).
    qmodel = npukit.prepare(net, x[:256], target=a.target, weight_bits=a.weight_bits)
    freeze_at = max(1, a.qat_epochs * 2 // 3)
    run_epochs(qmodel, x, y, a.qat_epochs, lr=0.002,
               on_epoch=lambda e: npukit.freeze_observers(qmodel, e >= freeze_at),
               log=lambda e, loss: print(f"QAT   {e:2d}  loss {loss:.3f}  test {evaluate(qmodel, x_test, y_test):.3f}"))
    npukit.save_checkpoint(qmodel, a.out / "qat.pt", stage="qat")

    graph = npukit.to_ir(qmodel)
    engine = npukit.run(graph, graph.quantize_input(x_test.numpy()))[0]
    with torch.no_grad():
        exact = np.array_equal(graph.dequantize_output(engine), qmodel.eval()(x_test).double().numpy())
    print(f"float {float_acc:.3f}; QAT {evaluate(qmodel, x_test, y_test):.3f}; engine "
          f"{(engine.argmax(1) == y_test.numpy()).mean():.3f}; engine == QAT on every output: {exact}")
    npukit.export_onnx(graph, a.out / "model.onnx")
    result = npukit.pack(graph, a.out / "pack", target=a.target, report_dir=a.out / "pack",
                         sample=graph.quantize_input(x[:1].numpy()))
    print(f"wrote {a.out}: float.pt, qat.pt, model.onnx, pack/ (model.bin {result.model_bin_bytes:,} B, "
          f"arena {result.plan.arena_bytes:,} B)")
    if not exact:
        raise SystemExit("the engine and the QAT model disagree")


if __name__ == "__main__":
    main()

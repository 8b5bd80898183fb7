"""Keyword-spotting style Conv1d network on MNIST-1D for the MAX78000, trained in two stages from a policy file.

    python examples/kws_mnist1d.py                       # 20 float + 10 QAT epochs, about half a minute on a CPU
    python examples/kws_mnist1d.py --epochs 4 --qat-start 2 --out /tmp/kws

A plain PyTorch training loop; the lines marked `# npukit` are all it takes: the policy
(examples/kws_policy.yaml) says when QAT starts and gives the layers 8-, 4- and 2-bit weights. Then the
QAT model is converted, checked bit-exact against the integer engine, exported to ONNX and packed for the
chip (model.bin, report and ADI's network.yaml + checkpoint in OUT/pack).
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import npukit
from npukit.train import evaluate

HERE = Path(__file__).parent


def make_model(channels: int = 32, classes: int = 10) -> nn.Module:
    layers: list[tuple[str, nn.Module]] = []
    for i, (cin, k, pool) in enumerate([(1, 5, False), (channels, 5, True), (channels, 5, True), (channels, 3, False)],
                                       start=1):
        layers += [(f"conv{i}", nn.Conv1d(cin, channels, k, padding=k // 2)), (f"bn{i}", nn.BatchNorm1d(channels)),
                   (f"relu{i}", nn.ReLU())]
        if pool:
            layers.append((f"pool{i}", nn.MaxPool1d(2)))
    layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(channels * 10, classes))]
    return nn.Sequential(OrderedDict(layers))


def load_data(seed: int = 42):
    """MNIST-1D (4000 train / 1000 test, length 40), scaled into the chip's input range [-1, 127/128]."""
    from npukit.data import mnist1d

    d = mnist1d(seed)
    scale = float(np.abs(d.x_train).max())
    prep = lambda x: torch.from_numpy(np.clip(x / scale, -1, 127 / 128).astype(np.float32))  # noqa: E731
    return prep(d.x_train), torch.from_numpy(d.y_train), prep(d.x_test), torch.from_numpy(d.y_test)


def train(epochs: int, policy, target: str = "max78000", seed: int = 0, lr: float = 0.01, log=print):
    """The two-stage run; returns the TwoStage object (its qmodel is the trained QAT model) and the data."""
    torch.manual_seed(seed)
    x, y, x_test, y_test = load_data()
    model = make_model()
    flow = npukit.TwoStage(model, x[:512], target=target, policy=policy)  # npukit
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for epoch in range(epochs):
        net = flow.model(epoch, optimizer)  # npukit: float, then QAT from the policy's epoch
        net.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        log(f"epoch {epoch:2d}  {flow.stage:5s}  loss {loss.item():.3f}  test {evaluate(net, x_test, y_test):.3f}")
    return flow, (x, y, x_test, y_test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--qat-start", type=int, default=None, help="override the policy's qat_start_epoch")
    ap.add_argument("--policy", type=Path, default=HERE / "kws_policy.yaml")
    ap.add_argument("--out", type=Path, default=Path("out/kws_mnist1d"))
    a = ap.parse_args()
    torch.set_num_threads(1)  # small convolutions: threads cost more than they give

    policy = npukit.load_policy(a.policy)
    if a.qat_start is not None:
        policy = policy.model_copy(update={"qat_start_epoch": a.qat_start})
    flow, (x, _, x_test, y_test) = train(a.epochs, policy)
    graph = npukit.to_ir(flow.qmodel)
    q_test = graph.quantize_input(x_test.numpy())
    engine = npukit.run(graph, q_test)[0]
    with torch.no_grad():
        qat = flow.qmodel.eval()(x_test).double().numpy()
    exact = np.array_equal(graph.dequantize_output(engine), qat)
    bits = {n.name: n.attrs["w_bits"] for n in graph.nodes if "w_bits" in n.attrs}
    print(f"weight bits {bits}")
    print(f"QAT accuracy {evaluate(flow.qmodel, x_test, y_test):.3f}; engine accuracy "
          f"{(engine.argmax(1) == y_test.numpy()).mean():.3f}; engine == QAT on every output: {exact}")
    a.out.mkdir(parents=True, exist_ok=True)
    flow.save(a.out / "qat.pt", epoch=a.epochs - 1)
    npukit.export_onnx(graph, a.out / "model.onnx")
    result = npukit.pack(graph, a.out / "pack", target="max78000", report_dir=a.out / "pack",
                         sample=graph.quantize_input(x[:1].numpy()))
    print(f"wrote {a.out}/qat.pt, {a.out}/model.onnx and {a.out}/pack: model.bin {result.model_bin_bytes:,} B, "
          f"arena {result.plan.arena_bytes:,} B, network.yaml and checkpoint for ADI's synthesis tool")
    if not exact:
        raise SystemExit("the engine and the QAT model disagree")


if __name__ == "__main__":
    main()

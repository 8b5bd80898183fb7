"""A user's training script, run in subprocesses by tests/test_training.py (not collected by pytest).

    python tests/train_worker.py resume OUT --epochs 5 --qat-start 2 [--kill-after 3]
    torchrun --standalone --nproc_per_node=2 tests/train_worker.py ddp OUT --epochs 3 --qat-start 1

`resume`: two-stage training that saves a checkpoint after every epoch and resumes from it when one exists;
`--kill-after E` SIGKILLs the process right after epoch E's checkpoint. Draws from torch (dropout, shuffling),
numpy (noise) and Python's random (augmentation), so a resume is exact only if every generator comes back.
`ddp`: the same flow under torchrun with DistributedDataParallel (gloo, CPU); each rank writes its integer
weights, exponents and the distributed evaluation's accuracy to OUT/rank<r>.npz.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import npukit
from npukit.train import evaluate

torch.set_num_threads(1)


def data(n: int = 384):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n, 1, 24, generator=g)
    y = (x[:, 0, :12].sum(1) > x[:, 0, 12:].sum(1)).long() + 2 * (x[:, 0, ::3].mean(1) > 0).long()
    return x, y


def model(dropout: float) -> nn.Module:
    return nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(dropout), nn.Linear(8 * 12, 4))


def resume(out: Path, epochs: int, start: int, kill_after: int) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    x, y = data()
    net = model(dropout=0.2)
    flow = npukit.TwoStage(net, x[:64], target="venus",
                           policy={"qat_start_epoch": start, "layers": [{"match": "9", "weight_bits": 16}]})
    opt = torch.optim.AdamW(net.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    ckpt = out / "ckpt.pt"
    first = flow.resume(ckpt, opt, sched) if ckpt.exists() else 0
    for epoch in range(first, epochs):
        m = flow.model(epoch, opt)
        m.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            xb = x[idx] + torch.from_numpy(np.random.normal(0, 0.05, x[idx].shape).astype(np.float32))
            if random.random() < 0.5:
                xb = -xb.flip(-1)
            loss = F.cross_entropy(m(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        flow.save(ckpt, epoch=epoch, optimizer=opt, scheduler=sched)
        if epoch == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save(flow.qmodel.state_dict(), out / "final.pt")


def ddp(out: Path, epochs: int, start: int, global_batch: int = 32) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)
    x, y = data()
    net = model(dropout=0.0)
    flow = npukit.TwoStage(net, x[:64], target="venus", policy={"qat_start_epoch": start})
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    wrap = DDP if distributed else None
    for epoch in range(epochs):
        m = flow.model(epoch, opt, wrap=wrap)
        m.train()
        perm = torch.randperm(len(x))  # the same on every rank (same seed): each takes its share of a batch
        for i in range(0, len(x), global_batch):
            idx = perm[i : i + global_batch][rank::world]
            loss = F.cross_entropy(m(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        flow.save(out / "ckpt.pt", epoch=epoch, optimizer=opt)
    acc = evaluate(flow.qmodel, x, y, batch_size=50)
    graph = npukit.to_ir(flow.qmodel)
    arrays = {f"{n.name}.{k}": v for n in graph.nodes for k, v in n.params.items()}
    arrays.update({f"exp.{t.name}": np.array(t.exp) for t in graph.tensors.values()})
    np.savez(out / f"rank{rank}.npz", accuracy=np.array(acc), **arrays)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["resume", "ddp"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--qat-start", type=int, default=2)
    ap.add_argument("--kill-after", type=int, default=-1)
    a = ap.parse_args()
    if a.mode == "resume":
        resume(a.out, a.epochs, a.qat_start, a.kill_after)
    else:
        ddp(a.out, a.epochs, a.qat_start)

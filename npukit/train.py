"""Small training helpers for the two-stage flow (float, then QAT) on in-memory tensors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def fit(model: nn.Module, x, y, *, epochs: int, lr: float, batch_size: int = 64, weight_decay: float = 1e-4,
        seed: int = 0, on_epoch: Callable[[int, float], None] | None = None,
        on_step: Callable[[], None] | None = None) -> nn.Module:
    """AdamW with a one-cycle schedule, cross-entropy loss. Works on float and QAT models alike."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    gen = torch.Generator().manual_seed(seed)
    steps = (len(x) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, epochs * steps))
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            if on_step:
                on_step()
        if on_epoch:
            on_epoch(epoch, total / len(x))
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x, batch_size: int = 1000) -> torch.Tensor:
    """Eval-mode outputs, batched."""
    model.eval()
    x = torch.as_tensor(x)
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, x, y, batch_size: int = 1000) -> float:
    """Accuracy of `model` on (x, y). Under torch.distributed each rank scores samples rank, rank + world, ...
    and the counts are summed over ranks, so every rank gets exactly the single-process accuracy (no
    DistributedSampler padding counts a sample twice)."""
    dist = torch.distributed
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    x, y = torch.as_tensor(x)[rank::world], torch.as_tensor(y)[rank::world]
    device = next(model.parameters()).device
    model.eval()
    correct = sum(int((model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum())
                  for i in range(0, len(x), batch_size))
    counts = torch.tensor([correct, len(x)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def accuracy(logits, y) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(y)).mean())

"""Reference networks that every built-in target can run."""

from __future__ import annotations

import torch.nn as nn


def mnist1d_cnn(channels: int = 32, classes: int = 10, length: int = 40) -> nn.Module:
    """The demo network: three Conv1d+BN+ReLU blocks (two with max pooling) and a linear classifier."""

    def block(cin, pool):
        layers = [nn.Conv1d(cin, channels, 5, padding=2), nn.BatchNorm1d(channels), nn.ReLU()]
        return layers + ([nn.MaxPool1d(2)] if pool else [])

    return nn.Sequential(
        *block(1, False), *block(channels, True), *block(channels, True),
        nn.Flatten(), nn.Linear(channels * (length // 4), classes),
    )

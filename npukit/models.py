"""Reference networks that every built-in target can run."""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn


def mnist1d_cnn(channels: int = 32, classes: int = 10, length: int = 40) -> nn.Module:
    """The demo network: three Conv1d+BN+ReLU blocks (two with max pooling) and a linear classifier.

    Named layers, so IR nodes, ONNX nodes and reports read `conv2`, `pool2`, `fc`.
    """
    layers: list[tuple[str, nn.Module]] = []
    for i, (cin, pool) in enumerate([(1, False), (channels, True), (channels, True)], start=1):
        layers += [(f"conv{i}", nn.Conv1d(cin, channels, 5, padding=2)), (f"bn{i}", nn.BatchNorm1d(channels)),
                   (f"relu{i}", nn.ReLU())]
        if pool:
            layers.append((f"pool{i}", nn.MaxPool1d(2)))
    layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(channels * (length // 4), classes))]
    return nn.Sequential(OrderedDict(layers))

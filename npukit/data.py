"""Data sets the demo and tests use, generated offline (nothing is downloaded)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    x_train: np.ndarray  # float32, (n, channels, length)
    y_train: np.ndarray  # int64
    x_test: np.ndarray
    y_test: np.ndarray


def mnist1d(seed: int = 42) -> Dataset:
    """MNIST-1D (4000 train / 1000 test, length 40), built procedurally by the `mnist1d` package."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    d = make_dataset(args)

    def prep(x):
        return np.ascontiguousarray(np.asarray(x, dtype=np.float32)[:, None, :])

    return Dataset(prep(d["x"]), np.asarray(d["y"], np.int64), prep(d["x_test"]), np.asarray(d["y_test"], np.int64))

"""Checkpoints of every training stage (float, constrained, QAT) that load the same whether they were saved
from one GPU, DataParallel, DDP or torch.compile, and that resume a run exactly.

A checkpoint is a dict: `state_dict` (the unwrapped model's), optionally `optimizer`, `scheduler` and `rng`
(torch, CUDA, numpy and Python generators), plus what the caller adds (`epoch`, `stage`, ...). It is read
with `torch.load(weights_only=True)` only, and written atomically (temp file + rename) by rank 0 alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .errors import NpukitError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
_QAT_MARKERS = ("npukit_input.out_exp", "npukit_input.range_ema")  # every prepared model has its input quantizer


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def save_checkpoint(model: nn.Module, path: str | Path, *, optimizer=None, scheduler=None, rng: bool = True,
                    **extra) -> Path:
    """State dict of the unwrapped model (observer ranges and exponents included), and the optimizer,
    scheduler and random generators where given, written atomically. Under torch.distributed only rank 0
    writes (every rank may call it; the others return at once)."""
    from .fileio import write_atomic

    path = Path(path)
    if _rank() != 0:
        return path
    blob = {"format": "npukit-checkpoint", "state_dict": unwrap(model).state_dict(), **extra}
    if optimizer is not None:
        blob["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        blob["scheduler"] = scheduler.state_dict()
    if rng:
        blob["rng"] = rng_state()
    return write_atomic(path, lambda tmp: torch.save(blob, tmp))


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dict (weights_only: a checkpoint cannot run code), or one clear error."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NpukitError(f"{path}: no such checkpoint") from None
    except IsADirectoryError:
        raise NpukitError(f"{path} is a folder, not a checkpoint") from None
    except Exception as e:  # torch raises several types for corrupt files
        raise NpukitError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(blob, dict):
        raise NpukitError(f"{path} holds a {type(blob).__name__}, not a state dict")
    if "state_dict" not in blob:  # a bare state dict, as torch.save(model.state_dict()) writes
        blob = {"state_dict": blob}
    if not isinstance(blob["state_dict"], dict):
        raise NpukitError(f"{path} holds no state dict")
    return blob


def load_checkpoint(model: nn.Module, path: str | Path, *, optimizer=None, scheduler=None,
                    rename: dict[str, str] | Callable[[str], str] | None = None, rng: bool | None = None) -> dict:
    """Load into `model` strictly, whatever wrapper saved it, and the optimizer/scheduler where given; returns
    the checkpoint's other entries (epoch, stage, ...).

    Everything is compared before anything changes: a mismatch leaves the model untouched and names every
    missing, unexpected and mis-shaped key, with the likely cause. `rename` adapts old key names: a dict of
    old prefix -> new prefix, or a function of the key. The random generators are restored when the
    checkpoint has them and `rng` is true (default: when an optimizer is given, i.e. when resuming).
    """
    blob = read_checkpoint(path)
    state = {_strip(k): v for k, v in blob["state_dict"].items()}
    if rename is not None:
        state = {_renamed(k, rename): v for k, v in state.items()}
    target = unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = ([f"  missing from the checkpoint: {', '.join(missing)}"] if missing else []) + \
                ([f"  not in the model: {', '.join(unexpected)}"] if unexpected else []) + \
                [f"  shape differs: {s}" for s in shapes]
        cause = _likely_cause(set(state), set(own), blob.get("stage"))
        raise NpukitError(f"{path} does not match the model ({len(missing) + len(unexpected) + len(shapes)} "
                          "difference(s)); nothing was loaded:\n" + "\n".join(lines) +
                          (f"\n    likely cause: {cause}" if cause else ""))
    # Optimizer and scheduler states are checked by their own load: keep copies to undo a failure.
    saved = {k: v.detach().clone() for k, v in own.items()}
    target.load_state_dict(state, strict=True)
    try:
        if optimizer is not None:
            if "optimizer" not in blob:
                raise NpukitError(f"{path} holds no optimizer state (save it with optimizer=...)")
            optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None:
            if "scheduler" not in blob:
                raise NpukitError(f"{path} holds no scheduler state (save it with scheduler=...)")
            scheduler.load_state_dict(blob["scheduler"])
    except (ValueError, KeyError, TypeError) as e:
        target.load_state_dict(saved, strict=True)
        raise NpukitError(f"{path}: the optimizer or scheduler state does not fit ({e}); nothing was loaded") from None
    except NpukitError:
        target.load_state_dict(saved, strict=True)
        raise
    if (optimizer is not None if rng is None else rng) and "rng" in blob:
        set_rng_state(blob["rng"])
    return {k: v for k, v in blob.items() if k not in ("state_dict", "optimizer", "scheduler", "rng")}


def _likely_cause(ckpt: set[str], model: set[str], stage: str | None) -> str:
    ckpt_qat = stage == "qat" or any(k in ckpt for k in _QAT_MARKERS)
    model_qat = any(k in model for k in _QAT_MARKERS)
    if ckpt_qat and not model_qat:
        return "this is a QAT checkpoint and the model is a float model: call npukit.prepare() on it first"
    if model_qat and not ckpt_qat:
        return ("this is a float checkpoint and the model is a QAT model: load it into the float model, then "
                "call npukit.prepare()")
    for a, b in ((ckpt, model), (model, ckpt)):  # keys that differ by one leading prefix
        for k in a - b:
            for j in b - a:
                if k.endswith("." + j) or j.endswith("." + k):
                    return ("keys differ by a prefix (e.g. checkpoint "
                            f"{k if a is ckpt else j!r}, model {j if a is ckpt else k!r}): load with rename={{old: new}}")
    return ""


def _renamed(key: str, rename) -> str:
    if callable(rename):
        return rename(key)
    for old, new in rename.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def rng_state() -> dict:
    """Every generator a training loop may draw from, in types torch.load(weights_only=True) reads back."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

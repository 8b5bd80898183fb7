"""Checkpoints that load the same whether they were saved from one GPU, DataParallel or DDP."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from .errors import NpukitError

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(model: nn.Module, path: str | Path, **extra) -> Path:
    """State dict of the unwrapped model (observer ranges and exponents included), written atomically."""
    from .fileio import write_atomic

    blob = {"format": "npukit-checkpoint", "state_dict": unwrap(model).state_dict(), **extra}
    return write_atomic(path, lambda tmp: torch.save(blob, tmp))


def load_checkpoint(model: nn.Module, path: str | Path) -> dict:
    """Load into `model` strictly, whatever wrapper saved it; mismatched keys are an error listing them all."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NpukitError(f"{path}: no such checkpoint") from None
    except Exception as e:  # torch raises several types for corrupt files
        raise NpukitError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise NpukitError(f"{path} holds no state dict")
    state = {_strip(k): v for k, v in state.items()}
    # Compare everything first: a mismatch must leave the model untouched, and name every difference.
    own = unwrap(model).state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in own
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = ([f"  missing from the checkpoint: {', '.join(missing)}"] if missing else []) + \
                ([f"  not in the model: {', '.join(unexpected)}"] if unexpected else []) + \
                [f"  shape differs: {s}" for s in shapes]
        raise NpukitError(f"{path} does not match the model ({len(missing) + len(unexpected) + len(shapes)} "
                          "difference(s)); nothing was loaded:\n" + "\n".join(lines))
    unwrap(model).load_state_dict(state, strict=True)
    return {k: v for k, v in blob.items() if k != "state_dict"} if "state_dict" in blob else {}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key

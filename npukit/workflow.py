"""Two-stage training inside the user's own loop: a float model first (optionally constrained), then QAT.

    flow = npukit.TwoStage(model, example, target="max78000", policy="policy.yaml")
    for epoch in range(epochs):
        net = flow.model(epoch, optimizer)          # stage 1 before policy.qat_start_epoch, QAT from then on
        ...the user's epoch, training `net` with `optimizer`...
    graph = npukit.to_ir(flow.qmodel)

Stage 1 trains the user's own modules (BatchNorm kept); with the policy's `constrain: true`, through a traced
copy that clamps every conv/linear output to the target's `float_training.activation_range` and clips their
weights to `weight_range`. Stage 2 is `prepare()` of that model with those weights (BatchNorm folded) and
the policy's bits. Switching
stage rebinds the optimizer to the QAT parameters (fresh optimizer state; learning rate and scheduler go
on). All state lives in the TwoStage object: two of them with different policies can share a process.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.fx as fx
import torch.nn as nn

from .checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, unwrap
from .errors import NpukitError
from .policy import Policy, load_policy, resolve_layer_bits
from .qat import freeze_observers, prepare
from .targets import TargetProfile, load_target

_MAC = (nn.Conv1d, nn.Conv2d, nn.Linear)


def constrain(model: nn.Module, target="venus") -> nn.Module:
    """Stage 1: `model` as the chip can represent it in float: conv/linear outputs (after their BatchNorm and
    activation) clamped to the target's activation range, conv/linear weights clipped to its weight range
    before every forward. Returns a traced module sharing `model`'s parameters (same state_dict keys), or
    `model` itself when the target constrains nothing. The model's outputs are left as they are."""
    from .qat.capture import CaptureContext

    profile = load_target(target)
    ranges = profile.float_training
    if ranges.activation_range is None and ranges.weight_range is None:
        return model
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # torch.fx raises many types for untraceable code
        raise NpukitError(f"torch.fx could not trace the model: {type(e).__name__}: {e}\n"
                          "    fix: remove data-dependent Python control flow from forward()") from None
    if ranges.activation_range is not None:
        lo, hi = ranges.activation_range
        ctx = CaptureContext(gm, profile, profile.default_weight_bits, False)
        for node in list(gm.graph.nodes):
            if not isinstance(ctx.module(node), _MAC):
                continue
            last = node
            for fuse in (ctx.fuse_bn, ctx.fuse_relu, ctx.fuse_abs, ctx.fuse_clamp):
                last = fuse(last)[1]
            if ctx.is_graph_output(last):
                continue
            with gm.graph.inserting_after(last):
                clamped = gm.graph.call_function(torch.clamp, (last, lo, hi))
            last.replace_all_uses_with(clamped, delete_user_cb=lambda u, c=clamped: u is not c)
        gm.recompile()
    if ranges.weight_range is not None:
        lo, hi = ranges.weight_range
        layers = [m for m in gm.modules() if isinstance(m, _MAC)]

        def clip(_module, _args):
            with torch.no_grad():
                for m in layers:
                    m.weight.clamp_(lo, hi)

        gm.register_forward_pre_hook(clip)
    return gm


class TwoStage:
    """Constrained float training, then QAT, scheduled by a policy (npukit/policy.py); see the module doc."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor | tuple, target: str | Path | TargetProfile = "venus",
                 policy: str | Path | dict | Policy | None = None):
        self.profile = load_target(target)
        self.policy = load_policy(policy)
        self.float_model = unwrap(model)
        # Now, not when QAT starts: a policy the target cannot follow must not cost a stage of training.
        bits = self.policy.weight_bits or self.profile.default_weight_bits
        resolve_layer_bits([n for n, m in self.float_model.named_modules() if isinstance(m, _MAC)],
                           bits, {"(default)": bits, **self.policy.layer_bits()}, self.profile.weight_bits,
                           self.profile.name, unmatched_ok={"(default)"})
        self.example_input = tuple(v.detach().cpu() for v in example_input) \
            if isinstance(example_input, list | tuple) else example_input.detach().cpu()  # a tuple: one per input
        self.float_stage = constrain(self.float_model, self.profile) if self.policy.constrain else self.float_model
        self.qmodel: fx.GraphModule | None = None
        self._wrapped: dict[str, nn.Module] = {}

    @property
    def stage(self) -> str:
        if self.qmodel is not None:
            return "qat"
        return "constrained" if self.float_stage is not self.float_model else "float"

    def model(self, epoch: int, optimizer: torch.optim.Optimizer | None = None,
              wrap: Callable[[nn.Module], nn.Module] | None = None) -> nn.Module:
        """The module to train in `epoch`. On the first QAT epoch the QAT model is prepared from the current
        float weights and `optimizer` is pointed at its parameters. `wrap` (e.g. `lambda m: DDP(m)`) is applied
        once per stage and its result returned on every later call of that stage."""
        if epoch >= self.policy.qat_start_epoch and self.qmodel is None:
            self.start_qat(optimizer)
        if self.qmodel is not None and self.policy.freeze_observers_epoch is not None:
            freeze_observers(self.qmodel, epoch >= self.policy.freeze_observers_epoch)
        current = self.qmodel if self.qmodel is not None else self.float_stage
        if wrap is None:
            return current
        if self.stage not in self._wrapped:
            self._wrapped = {self.stage: wrap(current)}
        return self._wrapped[self.stage]

    def start_qat(self, optimizer: torch.optim.Optimizer | None = None) -> fx.GraphModule:
        """Stage 2 now: prepare the QAT model from the float weights (BatchNorm folded) with the policy's bits."""
        device = next(self.float_model.parameters()).device
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            # DDP keeps parameters equal, not BatchNorm statistics (each rank's own batches): fold rank 0's
            # everywhere, or the ranks would start QAT from different integer weights.
            with torch.no_grad():
                for t in self.float_model.state_dict().values():
                    dist.broadcast(t, src=0)
        p = self.policy
        # From the constrained model: its clamps become the QAT layers' output saturation, so the exponents
        # start where stage 1 trained (MAX78000: [-1, 127/128] is exactly int8 at exponent 7).
        self.qmodel = prepare(self.float_stage, self.example_input, self.profile, weight_bits=p.weight_bits,
                              layer_bits=p.layer_bits(), weight_exp=p.weight_exp_method()).to(device)
        if optimizer is not None:
            rebind_optimizer(optimizer, self.qmodel)
        return self.qmodel

    def save(self, path: str | Path, *, epoch: int, optimizer=None, scheduler=None, **extra) -> Path:
        """A checkpoint of the current stage, with everything `resume` needs to go on exactly."""
        current = self.qmodel if self.qmodel is not None else self.float_model
        return save_checkpoint(current, path, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                               stage=self.stage, policy=self.policy.model_dump(), **extra)

    def resume(self, path: str | Path, optimizer=None, scheduler=None) -> int:
        """Load a checkpoint written by `save` (building the QAT model first if it is from stage 2); returns
        the epoch to go on with."""
        blob = read_checkpoint(path)
        if blob.get("stage") == "qat" and self.qmodel is None:
            self.start_qat(optimizer)
        target = self.qmodel if self.qmodel is not None else self.float_model
        meta = load_checkpoint(target, path, optimizer=optimizer, scheduler=scheduler)
        if "epoch" not in meta:
            raise NpukitError(f"{path} records no epoch: it was not written by TwoStage.save")
        return int(meta["epoch"]) + 1


def rebind_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Point a one-group optimizer at `model`'s parameters, with fresh state (momenta of the old parameters
    mean nothing for the new ones). Schedulers hold the optimizer, so they go on unchanged."""
    if len(optimizer.param_groups) != 1:
        raise NpukitError(f"the optimizer has {len(optimizer.param_groups)} parameter groups; TwoStage can only "
                          "move a one-group optimizer to the QAT model's parameters")
    optimizer.param_groups[0]["params"] = [p for p in model.parameters() if p.requires_grad]
    optimizer.state.clear()

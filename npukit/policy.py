"""Training policy: when QAT starts, which weight bits each layer gets, when observers freeze (YAML, pydantic).

    qat_start_epoch: 10          # epochs 0-9: float (stage 1, BatchNorm kept); from 10: QAT (stage 2)
    constrain: false             # true: stage 1 clamps to the target's float_training ranges
    weight_bits: 8               # default for every conv/linear (default: the target's first)
    layers:                      # overrides, first match wins; globs on module paths
      - {match: "features.0", weight_bits: 8}
      - {match: "classifier.*", weight_bits: 4}
    freeze_observers_epoch: 14   # activation exponents stop moving here (optional)
    weight_exponent: auto        # max for 8/16-bit weights, mse below; or max, mse, quantile
    weight_quantile: 0.999

The policy is plain data held by the objects that use it (no global state): two models with different
policies can train in one process.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import NpukitError, invalid_file_error


class LayerBits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str = Field(description="glob on the layer's module path (fnmatch: *, ?, [ab])")
    weight_bits: int


class Policy(BaseModel):
    """How two-stage training runs (npukit/workflow.py). Epochs count from 0."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    qat_start_epoch: int = Field(0, ge=0, description="first QAT epoch; the epochs before train the float model")
    # Off by default: measured on both examples (benchmarks/accuracy.py), the clamps cost 0.2-0.4 points at
    # 8 bits and 1-3 at 4 and 2 bits, because npukit gives every layer its own exponent anyway.
    constrain: bool = Field(False, description="stage 1 clamps activations and clips weights to the target's "
                            "float_training ranges (the vendor training library's fixed ranges)")
    weight_bits: int | None = Field(None, description="default weight bits (default: the target's first)")
    layers: list[LayerBits] = Field(default_factory=list, description="per-layer weight bits, first match wins")
    freeze_observers_epoch: int | None = Field(None, ge=0, description="epoch from which exponents stay fixed")
    weight_exponent: Literal["auto", "max", "mse", "quantile"] = Field(
        "auto", description="weight exponent from the largest |w| (max: no clipping), the smallest squared error "
        "(mse: clips where that costs less than rounding) or a quantile of |w| (clips outliers); auto: max for 8- "
        "and 16-bit weights, mse below")
    weight_quantile: float = Field(0.999, gt=0.5, le=1.0, description="the quantile for weight_exponent: quantile")

    @model_validator(mode="after")
    def _order(self) -> Policy:
        if self.freeze_observers_epoch is not None and self.freeze_observers_epoch < self.qat_start_epoch:
            raise ValueError(f"freeze_observers_epoch {self.freeze_observers_epoch} comes before qat_start_epoch "
                             f"{self.qat_start_epoch}: observers only run in QAT")
        return self

    def weight_exp_method(self) -> str | float:
        """What `prepare(weight_exp=...)` takes: 'max', 'mse' or the quantile."""
        return self.weight_quantile if self.weight_exponent == "quantile" else self.weight_exponent

    def layer_bits(self) -> dict[str, int]:
        """The overrides as `prepare(layer_bits=...)` takes them (ordered: first match wins)."""
        return {o.match: o.weight_bits for o in self.layers}


def load_policy(policy: str | Path | dict | Policy | None) -> Policy:
    """A Policy from a YAML path, a dict, a Policy (returned as is) or None (the defaults)."""
    if policy is None:
        return Policy()
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, dict):
        return _validate(policy, "<dict>")
    if not isinstance(policy, str | Path):
        raise NpukitError(f"a policy is a YAML path, a dict or a Policy, not {type(policy).__name__}")
    path = Path(policy)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise NpukitError(f"policy file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NpukitError(f"policy file {path} cannot be read ({type(e).__name__}: {e})") from None
    except yaml.YAMLError as e:
        raise NpukitError(f"policy file {path} is not valid YAML: {e}") from None
    return _validate(data if data is not None else {}, str(path))


def _validate(data, where: str) -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise invalid_file_error("policy", where, e) from None


def resolve_layer_bits(names: list[str], default: int, overrides: dict[str, int], allowed: list[int],
                       target: str, unmatched_ok: set[str] = frozenset()) -> dict[str, int]:
    """Weight bits per layer name: the first matching override, else `default`. Every bit width must be one
    the target computes, and every pattern must match a layer (a typo would silently change nothing)."""
    problems = [f"  {pat!r}: {bits}-bit weights; {target} computes {'/'.join(map(str, allowed))}"
                for pat, bits in overrides.items() if bits not in allowed]
    unused = [pat for pat in overrides if pat not in unmatched_ok and not any(fnmatchcase(n, pat) for n in names)]
    problems += [f"  {pat!r} matches no conv/linear layer; layers: {', '.join(names)}" for pat in unused]
    if problems:
        raise NpukitError("per-layer weight bits cannot be applied:\n" + "\n".join(problems))
    return {n: next((b for pat, b in overrides.items() if fnmatchcase(n, pat)), default) for n in names}

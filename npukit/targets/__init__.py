"""Target profiles: one YAML file per chip, validated by pydantic. No hardware number lives in code."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..arith import RoundingMode
from ..errors import NpukitError

_BUILTIN_DIR = Path(__file__).parent


class Memory(BaseModel):
    """One memory kind of the chip, and what the packer may place in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bytes: int = Field(gt=0)
    holds: list[Literal["activations", "weights"]] = Field(default_factory=list)


class TargetProfile(BaseModel):
    """The arithmetic a chip implements. Rules and memory limits join this in the targets issue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    activation_bits: int = Field(8, ge=2, le=16)
    weight_bits: list[int] = Field(default_factory=lambda: [8], min_length=1)
    bias_bits: int = Field(32, ge=2, le=32)
    accumulator_bits: int = Field(32, ge=8, le=48)
    rounding: RoundingMode = "half_up"
    pool_rounding: RoundingMode = "half_up"
    scheme: str = Field("pow2", description="requantisation scheme (npukit/schemes.py): pow2 or max78000")
    wide_output: bool = Field(False, description="last layer may output the raw accumulator (no clipping)")
    target_id: int = Field(0, ge=0, le=0xFFFF, description="stable number written into model.bin headers")
    memory: list[Memory] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> TargetProfile:
        # 1-bit (binary +-1) weights need their own quantizer; a signed 1-bit integer holds only -1 and 0.
        bad = [b for b in self.weight_bits if b not in (2, 4, 8, 16)]
        if bad:
            raise ValueError(f"weight_bits {bad} unsupported; use 2, 4, 8 or 16")
        from ..schemes import SCHEMES

        if self.scheme not in SCHEMES:
            raise ValueError(f"scheme {self.scheme!r} is unknown; use one of {', '.join(SCHEMES)}")
        names = [m.name for m in self.memory]
        if len(set(names)) != len(names):
            raise ValueError(f"memory names repeat: {names}")
        return self

    def memory_for(self, what: str) -> Memory | None:
        """The first memory that holds `what` ('activations' or 'weights'), if the profile declares one."""
        return next((m for m in self.memory if what in m.holds), None)

    @property
    def default_weight_bits(self) -> int:
        return self.weight_bits[0]


def builtin_targets() -> list[str]:
    return sorted(p.stem for p in _BUILTIN_DIR.glob("*.yaml"))


def load_target(target: str | Path | TargetProfile | dict) -> TargetProfile:
    """A built-in name ('venus'), a path to a YAML profile, a dict, or a profile (returned as is)."""
    if isinstance(target, TargetProfile):
        return target
    if isinstance(target, dict):
        return _validate(target, "<dict>")
    path = Path(target)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise NpukitError(f"target profile {path} does not exist")
        return _from_file(str(path.resolve()))
    if (_BUILTIN_DIR / f"{target}.yaml").is_file():
        return _from_file(str(_BUILTIN_DIR / f"{target}.yaml"))
    raise NpukitError(f"unknown target {target!r}; built-in targets: {', '.join(builtin_targets())}, "
                      "or give the path of a YAML profile")


def _from_file(path: str) -> TargetProfile:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise NpukitError(f"target profile {path} is not valid YAML: {e}") from None
    return _validate(data, path)


def _validate(data, where: str) -> TargetProfile:
    try:
        return TargetProfile.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc'])) or '<profile>'}: {err['msg']}" for err in e.errors()]
        raise NpukitError(f"target profile {where} is invalid:\n" + "\n".join(lines)) from None

"""Target profiles: one YAML file per chip, validated by pydantic. No hardware number lives in code."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import NpukitError, invalid_file_error
from ..rounding import RoundingMode

_BUILTIN_DIR = Path(__file__).parent
# The IR ops a profile's `rules.ops` may name: `npukit.ops.OPS` (a test holds them equal; listed here so that
# profiles validate without loading the op set and numpy).
OP_NAMES = ("conv", "linear", "maxpool", "avgpool", "global_avgpool", "add", "concat", "relu", "reshape", "lut", "mul",
            "upsample", "slice", "conv_transpose", "pad")


class Memory(BaseModel):
    """One memory kind of the chip, and what the packer may place in it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    bytes: int = Field(gt=0)
    holds: list[Literal["activations", "weights", "bias"]] = Field(default_factory=list)


class Allowed(BaseModel):
    """Allowed integers: listed (`[1, 3]`, or `{values: [1, 3]}`) or a range (`{min: 1, max: 5}`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: list[int] | None = None
    min: int | None = None
    max: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            return {"values": [v]}
        if isinstance(v, list):
            return {"values": v}
        return v

    @model_validator(mode="after")
    def _check(self) -> Allowed:
        if self.values is not None and (self.min is not None or self.max is not None):
            raise ValueError("give either values or min/max, not both")
        if self.values is None and self.min is None and self.max is None:
            raise ValueError("give values or min/max")
        if self.values is not None and not self.values:
            raise ValueError("an empty list allows nothing: give at least one value")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} exceeds max {self.max}")
        return self

    def allows(self, v: int) -> bool:
        if self.values is not None:
            return v in self.values
        return (self.min is None or v >= self.min) and (self.max is None or v <= self.max)

    def __str__(self) -> str:
        if self.values is not None:
            return ", ".join(map(str, self.values))
        if self.max is None:
            return f">= {self.min}"
        if self.min is None:
            return f"<= {self.max}"
        return f"{self.min}..{self.max}"


class _Rules(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Buffer(_Rules):
    """A per-op buffer limit: bytes after the chip aligns the dimensions (1 = no alignment)."""

    bytes: int = Field(gt=0)
    align_channels: int = Field(1, ge=1, description="input channels rounded up to a multiple of this")
    align_width: int = Field(1, ge=1, description="width rounded up to a multiple of this times the stride")
    align_out: int = Field(1, ge=1, description="output channels (weights) rounded up to a multiple of this")
    align_depthwise: int = Field(1, ge=1, description="depthwise channels (weights) rounded up to this")
    align_rows: int = Field(1, ge=1, description="matrix rows rounded up to a multiple of this")


class ConvRules(_Rules):
    kernel: Allowed | None = None  # each kernel dimension of a 2-d conv
    square_kernel: bool = False
    kernel_1d: Allowed | None = None  # Conv1d kernel length (default: `kernel`)
    stride: Allowed | None = None
    stride_1d: Allowed | None = None
    padding: Allowed | None = None
    padding_1d: Allowed | None = None
    dilation: Allowed | None = None
    dilation_1d: Allowed | None = None
    max_dilated_kernel_1d: int | None = Field(None, description="(k - 1) * dilation + 1 of a Conv1d at most this")
    pad_below_kernel: bool = False
    kernel_at_least_stride: bool = False
    input_at_least_kernel: bool = False
    groups: Literal["any", "depthwise", "none"] = "any"  # depthwise: groups 1 or depthwise only
    max_in_channels: int | None = None
    max_out_channels: int | None = None
    max_size: int | None = Field(None, description="largest input height or width (rows, columns)")
    max_bias_channels: int | None = None
    input_buffer: Buffer | None = None
    weight_buffer: Buffer | None = None
    output_buffer: Buffer | None = None


class ConvTransposeRules(_Rules):
    """ConvTranspose1d/2d: each kernel dimension, stride, padding (PyTorch's), output padding."""

    ndim: list[Literal[1, 2]] | None = Field(None, description="1-d, 2-d or both (default: both)")
    kernel: Allowed | None = None
    square_kernel: bool = False
    stride: Allowed | None = None
    padding: Allowed | None = None
    output_padding: Allowed | None = None
    kernel_at_least_stride: bool = False


class PoolRules(_Rules):
    kernel: Allowed | None = None
    stride: Allowed | None = None
    padding: Allowed | None = None
    kernel_at_least_stride: bool = False
    global_kernel: Allowed | None = Field(None, description="feature-map sides a global average pool may take "
                                          "(chips that run it as one pooling window)")


class LinearRules(_Rules):
    max_in_features: int | None = None
    max_out_features: int | None = None
    input_buffer: Buffer | None = None  # the left matrix: align_rows rows (a sample) x align_channels columns


class FlattenRules(_Rules):
    max_pixels: int | None = Field(None, description="H x W of a flattened feature map")
    max_elements: int | None = Field(None, description="C x H x W of a flattened feature map")


class AddRules(_Rules):
    relu: bool = Field(True, description="a ReLU may follow an element-wise add (fused into it)")
    fuse_into_biased_conv: bool = Field(True, description="an add may share a hardware layer with a following "
                                        "conv that has a bias (MAX7800x layer grouping)")


class ConcatRules(_Rules):
    channel_multiple: int | None = Field(None, description="every part but the last a multiple of this")


class Rules(_Rules):
    """What the chip can compute, checked by `npukit check`, `prepare` and `pack` alike (npukit/rules.py)."""

    @field_validator("ops")
    @classmethod
    def _ops(cls, v: list[str] | None) -> list[str] | None:
        unknown = sorted(set(v or ()) - set(OP_NAMES))
        if unknown:
            raise ValueError(f"unknown ops {unknown}; known: {', '.join(OP_NAMES)}")
        return v

    ops: list[str] | None = Field(None, description="IR ops the target runs (default: all)")
    activations: list[Literal["relu", "abs", "clamp"]] = Field(
        ["relu", "abs", "clamp"], description="activations a conv or linear layer may end in, fused into its "
        "output (clamp: ReLU6, Hardtanh, torch.clamp)")
    lut: list[str] | None = Field(None, description="element-wise functions the chip computes by lookup table "
                                  "(sigmoid, tanh, ...; npukit/ops/lut.py); default: any")
    max_layers: int | None = None
    fused_before_mac: list[str] = Field(default_factory=list,
                                        description="ops that share a hardware layer with a conv/linear after them")
    conv: ConvRules = ConvRules()
    conv_transpose: ConvTransposeRules = ConvTransposeRules()
    pool: PoolRules = PoolRules()
    linear: LinearRules = LinearRules()
    flatten: FlattenRules = FlattenRules()
    add: AddRules = AddRules()
    concat: ConcatRules = ConcatRules()


class FloatTraining(BaseModel):
    """What stage 1 of two-stage training (npukit/workflow.py) constrains the float model to: the ranges the
    chip represents without a free per-layer scale. None: nothing to constrain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # lists, not tuples: the profile is stored in models as JSON and must read back equal
    activation_range: list[float] | None = Field(
        None, description="real range every conv/linear output is clamped to (not the model's outputs)")
    weight_range: list[float] | None = Field(None, description="real range conv/linear weights are clipped to")

    @field_validator("activation_range", "weight_range")
    @classmethod
    def _ordered(cls, v):
        if v is not None and (len(v) != 2 or not v[0] < 0 < v[1]):
            raise ValueError(f"{list(v)} must be [lo, hi] with lo < 0 < hi")
        return v


class TargetProfile(BaseModel):
    """A chip: its arithmetic (scheme, bit widths, rounding), its memories and its rules (docs/targets.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    follows: str = Field("", description="which source the profile follows where sources disagree")
    scheme: str = Field("pow2", description="requantisation scheme (npukit/schemes.py): pow2 or max78000")
    activation_bits: int = Field(8, ge=2, le=16)
    weight_bits: list[int] = Field(default_factory=lambda: [8], min_length=1)
    bias_bits: int = Field(32, ge=2, le=32)
    accumulator_bits: int = Field(32, ge=8, le=48)
    rounding: RoundingMode = "half_up"
    pool_rounding: RoundingMode = "half_up"
    wide_output: bool = Field(False, description="last layer may output the raw accumulator (no clipping)")
    target_id: int = Field(0, ge=0, le=0xFFFF, description="stable number written into model.bin headers")
    memory: list[Memory] = Field(default_factory=list,
                                 description="memory kinds; without them nothing can be said to fit (a warning)")
    rules: Rules = Rules()
    float_training: FloatTraining = FloatTraining()

    # Field validators, so that an error names its key.
    @field_validator("weight_bits")
    @classmethod
    def _weight_bits(cls, v: list[int]) -> list[int]:
        # 1-bit (binary +-1) weights need their own quantizer; a signed 1-bit integer holds only -1 and 0.
        bad = [b for b in v if b not in (2, 4, 8, 16)]
        if bad:
            raise ValueError(f"weight_bits {bad} unsupported; use 2, 4, 8 or 16")
        return v

    @field_validator("scheme")
    @classmethod
    def _scheme(cls, v: str) -> str:
        from ..schemes import SCHEMES

        if v not in SCHEMES:
            raise ValueError(f"scheme {v!r} is unknown; use one of {', '.join(SCHEMES)}")
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: list[Memory]) -> list[Memory]:
        names = [m.name for m in v]
        if len(set(names)) != len(names):
            raise ValueError(f"memory names repeat: {names}")
        return v

    def memory_for(self, what: str) -> Memory | None:
        """The first memory that holds `what` ('activations', 'weights', 'bias'), if the profile declares one."""
        return next((m for m in self.memory if what in m.holds), None)

    @property
    def default_weight_bits(self) -> int:
        return self.weight_bits[0]

    def summary(self) -> str:
        """One line: scheme, bits, memories."""
        mem = ", ".join(f"{m.name} {_size(m.bytes)}" for m in self.memory) or "no memories declared"
        return f"{self.scheme}; act {self.activation_bits}, weights {'/'.join(map(str, self.weight_bits))}; {mem}"


def _size(n: int) -> str:
    for unit, k in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k and n % (k // 4) == 0:
            return f"{n / k:g} {unit}"
    return f"{n:,} B"


ARITHMETIC = ("scheme", "activation_bits", "bias_bits", "accumulator_bits", "rounding", "pool_rounding")


def arithmetic_differences(a: TargetProfile, b: TargetProfile) -> list[str]:
    """The arithmetic fields in which two profiles differ: a model quantized for one runs on the other only
    when this is empty (their rules and memories may differ)."""
    return [f for f in ARITHMETIC if getattr(a, f) != getattr(b, f)]


def builtin_targets() -> list[str]:
    return sorted(p.stem for p in _BUILTIN_DIR.glob("*.yaml"))


def load_target(target: str | Path | TargetProfile | dict) -> TargetProfile:
    """A built-in name ('venus'), a path to a YAML profile, a dict, or a profile (returned as is)."""
    if isinstance(target, TargetProfile):
        return target
    if isinstance(target, dict):
        return _validate(target, "<dict>")
    if not isinstance(target, str | Path):
        raise NpukitError(f"a target is a built-in name, a YAML path, a dict or a TargetProfile, not "
                          f"{type(target).__name__}; built-in targets: {', '.join(builtin_targets())}")
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
        data = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise NpukitError(f"target profile {path} is not valid YAML: {e}") from None
    return _validate(data, path)


def _validate(data, where: str) -> TargetProfile:
    try:
        return TargetProfile.model_validate(data)
    except ValidationError as e:
        raise invalid_file_error("target profile", where, e) from None

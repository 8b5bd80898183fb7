"""The rounding modes of the arithmetic contract, by name (a module without numpy, so that target
profiles validate without loading it; `npukit.arith` implements them)."""

from typing import Literal, get_args

RoundingMode = Literal["half_up", "half_even", "floor", "trunc"]
ROUNDING_MODES: tuple[str, ...] = get_args(RoundingMode)

"""The model's input quantizer: its exponent is part of the model, like any other layer's."""

from __future__ import annotations

import torch

from .. import arith
from ..targets import TargetProfile
from .fakequant import ObservedQModule, ste


class QInput(ObservedQModule):
    op = "input"

    def __init__(self, profile: TargetProfile, shape: tuple[int, ...]):
        super().__init__(profile)
        self.shape = tuple(shape)  # per sample; recorded so conversion needs no example input
        self.profile_dict = profile.model_dump()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)  # float64 so quantization matches the engine's bit for bit
        e = self.observe(x.abs().max(), self.act_bits)
        lo, hi = arith.int_range(self.act_bits)
        q = ste((x * 2.0**e).clamp(lo, hi), arith.quantize(x.detach(), e, self.act_bits, self.rounding))
        return (q * 2.0**-e).float()

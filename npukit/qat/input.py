"""The model's input quantizer: its exponent is part of the model, like any other layer's."""

from __future__ import annotations

import torch

from ..targets import TargetProfile
from .fakequant import ObservedQModule, quant_ste


class QInput(ObservedQModule):
    op = "input"

    def __init__(self, profile: TargetProfile, shape: tuple[int, ...]):
        super().__init__(profile)
        self.shape = tuple(shape)  # per sample; recorded so conversion needs no example input
        self.profile_dict = profile.model_dump()

    def float_forward(self, xs):
        return xs[0].float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)  # float64, as Graph.quantize_input computes, so the bits agree
        e = self.observe(lambda: x, self.act_bits)
        return (quant_ste(x, e, self.act_bits, self.rounding) * 2.0**-e).float()

"""Quantization-aware training: capture a float model into QAT modules and convert it to the IR."""

from .capture import calibrate, freeze_observers, prepare
from .convert import to_ir

__all__ = ["calibrate", "freeze_observers", "prepare", "to_ir"]

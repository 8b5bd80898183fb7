"""Quantization-aware training: capture a float model into QAT modules and convert it to the IR."""

from .calibrate import calibrate, freeze_observers
from .capture import prepare
from .convert import dequantize_output, quantize_input, to_ir

__all__ = ["calibrate", "dequantize_output", "freeze_observers", "prepare", "quantize_input", "to_ir"]

"""npukit: PyTorch to embedded NPUs and MCUs, bit-exact from training to the chip.

    qmodel = npukit.prepare(model, example_input, target="venus")   # QAT model, exact integer arithmetic
    ...train qmodel...
    graph = npukit.to_ir(qmodel)                                      # the integer graph
    y = npukit.run(graph, graph.quantize_input(x))                    # the reference engine
"""

from . import arith
from .checkpoint import load_checkpoint, save_checkpoint
from .engine import run
from .errors import NpukitError, Problem, ProblemsError
from .ir import Graph, Node, TensorSpec
from .onnx_io import export_onnx, load_onnx
from .pack import PackResult, load_model, pack
from .qat import calibrate, dequantize_output, freeze_observers, prepare, quantize_input, to_ir
from .targets import TargetProfile, builtin_targets, load_target

__version__ = "0.1.0"


def load_ir(path) -> Graph:
    """Read an IR file written by `Graph.save`."""
    return Graph.load(path)


__all__ = [
    "Graph", "Node", "PackResult", "load_model", "pack", "NpukitError", "Problem", "ProblemsError", "TargetProfile", "TensorSpec", "arith",
    "builtin_targets", "calibrate", "export_onnx", "load_onnx", "dequantize_output", "freeze_observers", "load_checkpoint", "load_ir",
    "load_target", "prepare", "quantize_input", "run", "save_checkpoint", "to_ir",
]

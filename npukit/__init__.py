"""npukit: PyTorch to embedded NPUs and MCUs, bit-exact from training to the chip.

    qmodel = npukit.prepare(model, example_input, target="venus")   # QAT model, exact integer arithmetic
    ...train qmodel...
    graph = npukit.to_ir(qmodel)                                      # the integer graph
    y = npukit.run(graph, graph.quantize_input(x))                    # the reference engine

Names are imported on first use (PEP 562), so `import npukit` and the deploy side (IR, engine,
model.bin, planner, codegen, check) start without torch or onnx; `prepare` and friends load torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "arith": None,
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "run": "engine",
    "NpukitError": "errors", "Problem": "errors", "ProblemsError": "errors",
    "Graph": "ir", "Node": "ir", "TensorSpec": "ir",
    "export_onnx": "onnx_io", "load_onnx": "onnx_io",
    "PackResult": "packer", "load_model": "packer", "pack": "packer",
    "calibrate": "qat", "dequantize_output": "qat", "freeze_observers": "qat", "prepare": "qat",
    "quantize_input": "qat", "to_ir": "qat",
    "TargetProfile": "targets", "builtin_targets": "targets", "load_target": "targets",
    "check": "checker", "CheckResult": "checker", "check_ai8x": "checker",
    "load_ai8x": "max7800x",
    "Policy": "policy", "load_policy": "policy",
    "TwoStage": "workflow", "constrain": "workflow",
    "read_checkpoint": "checkpoint",
    "Dump": "dump", "compare_dumps": "dump", "load_dump": "dump", "dump_qat": "qat.dump",
}


# submodules reachable as attributes (npukit.memplan, ...), as an eager package would have them; a set, so
# that hasattr() probes of other names cost nothing
_SUBMODULES = {"analysis_report", "arith", "checker", "checkpoint", "cli", "codegen", "data", "demo", "engine", "errors", "fileio",
               "dump", "evaluate", "ir", "max7800x", "memplan", "modelbin", "models", "onnx_io", "ops", "packer", "policy", "qat",
               "report", "rounding", "rules", "schemes", "targets", "train", "workflow"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        if name in _SUBMODULES:
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'npukit' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def load_ir(path):
    """Read an IR file written by `Graph.save`."""
    from .ir import Graph

    return Graph.load(path)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = sorted([*_EXPORTS, "load_ir"])

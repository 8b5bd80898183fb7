"""The op set. Importing this package registers every op; `get_op(name)` finds one."""

from . import add, concat, mac, pool, relu, reshape  # noqa: F401  (registration side effects)
from .base import Captured, OpDef, all_ops, get_op, node_name, register

__all__ = ["Captured", "OpDef", "all_ops", "get_op", "node_name", "register"]

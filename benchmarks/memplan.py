"""Memory planner quality: arena / lower bound of each strategy, on the demo model and random cases.

The random cases are seeded: IR-like graphs (conv chains with pooling, residual adds, standalone ReLUs,
concatenated branches, a flatten and a classifier) and bare buffer sets (random sizes and lifetimes,
some aliases and in-place hints). Printed, never asserted. "best": how often the strategy's arena equals the chosen
one (ties count for each); "chosen": how often it was picked (ties go to the first in STRATEGIES).

    .venv/bin/python benchmarks/memplan.py [--graphs 100] [--sets 100] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import torch

import npukit
from npukit.ir import Graph, Node, TensorSpec
from npukit.memplan import STRATEGIES, Buffer, Plan, buffers_from_graph, plan, plan_graph
from npukit.models import mnist1d_cnn


class _GraphMaker:
    """Builds one random graph; only what the planner reads (ops, tensor names, shapes, bits) is real."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.nodes: list[Node] = []
        self.tensors = {"input": TensorSpec("input", (rng.choice([1, 2, 3]), rng.choice([32, 64, 128])), 8, 0)}

    def add(self, op: str, inputs: list[str], shape: tuple[int, ...], bits: int = 8) -> str:
        name = f"{op}{len(self.nodes)}"
        self.nodes.append(Node(name, op, inputs, [name]))
        self.tensors[name] = TensorSpec(name, shape, bits, 0)
        return name

    def channels(self) -> int:
        return self.rng.choice([4, 8, 16, 32, 64])

    def build(self) -> Graph:
        rng, cur = self.rng, "input"
        for _ in range(rng.randint(2, 10)):
            c, length = self.tensors[cur].shape
            kind = rng.choice(["conv", "conv", "pool", "residual", "branches", "relu"])
            if kind == "conv":
                cur = self.add("conv", [cur], (self.channels(), length), rng.choice([8, 8, 8, 16]))
            elif kind == "pool" and length >= 2:
                cur = self.add("maxpool", [cur], (c, length // 2))
            elif kind == "residual":
                a = self.add("conv", [cur], (c, length))
                b = self.add("conv", [a], (c, length))
                cur = self.add("add", [cur, b], (c, length))
            elif kind == "branches":
                a = self.add("conv", [cur], (ca := self.channels(), length))
                b = self.add("conv", [cur], (cb := self.channels(), length))
                cur = self.add("concat", [a, b], (ca + cb, length))
            else:
                cur = self.add("relu", [cur], (c, length))
        flat = self.add("reshape", [cur], (math.prod(self.tensors[cur].shape),))
        out = self.add("linear", [flat], (10,), 32)
        return Graph({}, ["input"], [out], self.tensors, self.nodes)


def random_buffers(rng: random.Random) -> list[Buffer]:
    out: list[Buffer] = []
    for i in range(rng.randint(5, 40)):
        first = rng.randint(0, 20)
        b = Buffer(f"b{i}", rng.randint(1, 2048), first, first + rng.randint(0, 6))
        if out and rng.random() < 0.1:
            parent = rng.choice(out)
            b = Buffer(b.name, parent.size, b.first, b.last, alias_of=parent.name)
        elif out and rng.random() < 0.1:
            parent = rng.choice(out)
            b = Buffer(b.name, parent.size, parent.last, parent.last + rng.randint(0, 4), inplace_of=parent.name)
        out.append(b)
    return out


def table(title: str, plans: list[Plan]) -> None:
    print(f"\n{title}: arena / lower bound")
    print(f"  {'strategy':<18} {'runs':>5} {'mean':>7} {'max':>7} {'at 1.00':>8} {'best':>5} {'chosen':>7}")
    for name in (*STRATEGIES, "chosen plan"):
        ran = [p for p in plans if name in p.by_strategy or name == "chosen plan"]
        arenas = [p.by_strategy.get(name, p.arena_bytes) for p in ran]
        ratios = [a / p.lower_bound_bytes for a, p in zip(arenas, ran, strict=True)]
        best = sum(a == p.arena_bytes for a, p in zip(arenas, ran, strict=True))  # ties count for each
        chosen = sum(p.strategy == name for p in ran) if name in STRATEGIES else len(ran)
        if ratios:
            at_one = sum(r == 1.0 for r in ratios) / len(ratios)
            print(f"  {name:<18} {len(ratios):>5} {statistics.mean(ratios):>7.3f} {max(ratios):>7.3f} "
                  f"{at_one:>8.0%} {best:>5} {chosen:>7}")
    proven = sum(p.proven_optimal for p in plans)
    print(f"  proven optimal: {proven}/{len(plans)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, default=100)
    ap.add_argument("--sets", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    graph = npukit.to_ir(npukit.prepare(mnist1d_cnn(), torch.randn(64, 1, 40)))
    demo = plan_graph(graph)
    times = []
    for _ in range(50):
        t = time.perf_counter()
        plan_graph(graph)
        times.append((time.perf_counter() - t) * 1e3)
    print(f"demo model (mnist1d_cnn, batch 1): {len(buffers_from_graph(graph))} tensors, arena {demo.arena_bytes} B, "
          f"lower bound {demo.lower_bound_bytes} B, chosen {demo.strategy}")
    print("  " + ", ".join(f"{k} {v} B" for k, v in demo.by_strategy.items()))
    print(f"  plan time {statistics.median(times):.2f} ms (median of 50; min {min(times):.2f}, max {max(times):.2f})")

    rng = random.Random(args.seed)
    t = time.perf_counter()
    graphs = [plan_graph(_GraphMaker(rng).build()) for _ in range(args.graphs)]
    sets = [plan(random_buffers(rng)) for _ in range(args.sets)]
    elapsed = time.perf_counter() - t
    table(f"{args.graphs} random graphs (seed {args.seed})", graphs)
    table(f"{args.sets} random buffer sets (seed {args.seed})", sets)
    table("all random cases", graphs + sets)
    print(f"\nplanned {args.graphs + args.sets} random cases in {elapsed:.2f} s ('exact' runs on at most 12 buffers)")


if __name__ == "__main__":
    main()

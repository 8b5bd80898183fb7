"""`npukit.check` on a zoo of user-style models against every built-in target, compared with verdicts
worked out by hand (tests/zoo.py); every rule fires somewhere and stays silent somewhere; check, prepare
and pack agree.

Errors are compared exactly (the set of rule ids); warnings are compared separately: none is expected on
a built-in target, and `memory-unknown` (the only warning) has its own case.
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.fx as fx
import torch.nn as nn
from zoo import BY_NAME, TARGETS, ZOO, conv_bn_relu

import npukit

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# Small dedicated models and profiles, for rules the zoo leaves unexercised on some side


class Body(nn.Module):
    """`layers` in a row, then (when `fc` is given) a flatten and a linear layer."""

    def __init__(self, *layers: nn.Module, fc: tuple[int, int] | None = None):
        super().__init__()
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(*fc) if fc else None

    def forward(self, x):
        x = self.body(x)
        return self.fc(torch.flatten(x, 1)) if self.fc is not None else x


class TwoBranchCat(nn.Module):
    """cat([8 channels, 6 channels]): only the last part is not a multiple of 4, which MAX7800x allow."""

    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn_relu(4, 8, 1), conv_bn_relu(4, 6, 1)
        self.fc = nn.Linear(14 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], 1).flatten(1))


class _Abs(nn.Module):
    def forward(self, x):
        return torch.abs(x)


class _ResidualNoRelu(nn.Module):
    """A residual add as MAX7800x run it: no activation after the add, a conv reads the sum."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.c(y + torch.relu(self.b(y)))


def _venus_with(**changes) -> dict:
    """The venus profile as a dict, with top-level fields or (rules=...) rule fields replaced."""
    d = npukit.load_target("venus").model_dump()
    rules = changes.pop("rules", {})
    d.update(changes, name="venus-variant")
    d["rules"].update(rules)
    return d


@dataclass(frozen=True)
class Case:
    """A small model (or a zoo model) checked against a target, with the hand-derived verdict."""

    build: object  # () -> nn.Module
    input_shape: tuple[int, ...]
    target: object  # built-in name or dict
    errors: frozenset[str] = frozenset()
    warnings: frozenset[str] = frozenset()


def _zoo(name):
    return BY_NAME[name].build, BY_NAME[name].input_shape


CASES: dict[str, Case] = {
    # a gate by lookup table: venus computes sigmoid and tanh (lut.function for the rest); MAX7800x no lut at all.
    "hardswish@venus": Case(lambda: Body(nn.Conv1d(1, 4, 3, padding=1), nn.Hardswish(), fc=(4 * 16, 3)), (1, 16),
                            "venus", frozenset({"lut.function"})),
    "tanh@venus": Case(lambda: Body(nn.Conv1d(1, 4, 3, padding=1), nn.Tanh(), fc=(4 * 16, 3)), (1, 16), "venus"),
    "tanh@max78000": Case(lambda: Body(nn.Conv1d(1, 4, 3, padding=1), nn.Tanh(), fc=(4 * 16, 3)), (1, 16),
                          "max78000", frozenset({"unsupported-op"})),
    # 1x1 conv with stride 2 (a ResNet shortcut): venus needs kernel >= stride -> conv.stride.
    "shortcut_1x1_s2@venus": Case(lambda: Body(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16),
                                               fc=(16 * 8 * 8, 10)), (8, 16, 16), "venus", frozenset({"conv.stride"})),
    # groups=2 with 4 channels per group: not depthwise -> conv.groups on venus (depthwise or groups=1 only).
    "grouped@venus": Case(lambda: Body(nn.Conv2d(8, 8, 3, padding=1, groups=2), fc=(8 * 8 * 8, 10)), (8, 8, 8),
                          "venus", frozenset({"conv.groups"})),
    # 1,100 output channels > 1,024; bias=False, so the 512-channel bias limit is not concerned (wide output).
    "conv_1100@max78000": Case(lambda: Body(nn.Conv2d(4, 1100, 1, bias=False)), (4, 2, 2), "max78000",
                               frozenset({"conv.channels"})),
    # 520 output channels with a bias: bias only for up to 512 -> conv.bias; without bias it passes.
    "conv_520_bias@max78000": Case(lambda: Body(nn.Conv2d(4, 520, 1)), (4, 2, 2), "max78000",
                                   frozenset({"conv.bias"})),
    "conv_520_nobias@max78000": Case(lambda: Body(nn.Conv2d(4, 520, 1, bias=False)), (4, 2, 2), "max78000"),
    # Conv1d over 1,100 samples: max78000 has at most 1,023 columns -> conv.size; max78002 2,047.
    "conv1d_1100@max78000": Case(lambda: Body(nn.Conv1d(1, 4, 3, padding=1)), (1, 1100), "max78000",
                                 frozenset({"conv.size"})),
    "conv1d_1100@max78002": Case(lambda: Body(nn.Conv1d(1, 4, 3, padding=1)), (1, 1100), "max78002"),
    # Conv2d dilation 2 (padding 2): max78000 dilation 1 only; max78002 1..16, padding 2 <= 2 passes.
    "dilated2d@max78000": Case(lambda: Body(nn.Conv2d(4, 4, 3, padding=2, dilation=2)), (4, 8, 8), "max78000",
                               frozenset({"conv.dilation"})),
    "dilated2d@max78002": Case(lambda: Body(nn.Conv2d(4, 4, 3, padding=2, dilation=2)), (4, 8, 8), "max78002"),
    # Conv1d k=5 dilation 3 spans (5-1)*3+1 = 13 samples > 9 -> conv.dilation (dilation 3 itself is <= 8).
    "conv1d_span13@max78002": Case(lambda: Body(nn.Conv1d(4, 4, 5, dilation=3)), (4, 32), "max78002",
                                   frozenset({"conv.dilation"})),
    # 1x1 conv with padding 1: venus wants padding < kernel -> conv.padding; max78000 allows pad 0..2.
    "pad1_k1@venus": Case(lambda: Body(nn.Conv2d(4, 4, 1, padding=1)), (4, 8, 8), "venus",
                          frozenset({"conv.padding"})),
    "pad1_k1@max78000": Case(lambda: Body(nn.Conv2d(4, 4, 1, padding=1)), (4, 8, 8), "max78000"),
    # MaxPool2d(3): stride 3 is not one of venus's 1/2/4 -> pool.stride; max78000 pools 1..16.
    # conv -> abs: MAX7800x layers end in ReLU or Abs; venus's in ReLU only -> activation.abs there.
    "abs@venus": Case(lambda: Body(nn.Conv2d(4, 8, 3, padding=1), _Abs(), fc=(8 * 8 * 8, 10)), (4, 8, 8), "venus",
                      frozenset({"activation.abs"})),
    "abs@max78000": Case(lambda: Body(nn.Conv2d(4, 8, 3, padding=1), _Abs(), fc=(8 * 8 * 8, 10)), (4, 8, 8),
                         "max78000"),
    # conv -> ReLU6 at an output exponent where 6 is inside int8: venus's layers end in ReLU only ->
    # activation.clamp; the MCU's C kernels clamp anywhere.
    "relu6@venus": Case(lambda: Body(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU6(), fc=(8 * 8 * 8, 10)), (4, 8, 8),
                        "venus", frozenset({"activation.clamp"})),
    "relu6@cortex-m4": Case(lambda: Body(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU6(), fc=(8 * 8 * 8, 10)), (4, 8, 8),
                            "cortex-m4"),
    # MaxPool2d(6): window 6 > venus's 1..5 -> pool.kernel (stride 6 is not 1/2/4 either -> pool.stride).
    "maxpool6@venus": Case(lambda: Body(conv_bn_relu(4, 8), nn.MaxPool2d(6), fc=(8 * 2 * 2, 10)), (4, 12, 12),
                           "venus", frozenset({"pool.kernel", "pool.stride"})),
    # A global average pool over 20x20: MAX7800x run it as one pooling window of at most 16 -> pool.kernel.
    "gap20@max78000": Case(lambda: Body(conv_bn_relu(4, 8), nn.AdaptiveAvgPool2d(1), fc=(8, 10)), (4, 20, 20),
                           "max78000", frozenset({"pool.kernel"})),
    "maxpool3@venus": Case(lambda: Body(conv_bn_relu(4, 8), nn.MaxPool2d(3), fc=(8 * 4 * 4, 10)), (4, 12, 12),
                           "venus", frozenset({"pool.stride"})),
    "maxpool3@max78000": Case(lambda: Body(conv_bn_relu(4, 8), nn.MaxPool2d(3), fc=(8 * 4 * 4, 10)), (4, 12, 12),
                              "max78000"),
    # MaxPool2d(1, stride=2): kernel 1 and stride 2 are each allowed, but venus needs kernel >= stride.
    "maxpool_k1_s2@venus": Case(lambda: Body(conv_bn_relu(4, 8), nn.MaxPool2d(1, stride=2), fc=(8 * 4 * 4, 10)),
                                (4, 8, 8), "venus", frozenset({"pool.stride"})),
    # A 1x3 kernel: 1 and 3 are each allowed on max78000, but its kernels must be square; venus's need not be.
    # (its padding (0, 1) is uneven too: the description has one `pad` -> max7800x.layers)
    "kernel_1x3@max78000": Case(lambda: Body(nn.Conv2d(4, 4, (1, 3), padding=(0, 1))), (4, 8, 8), "max78000",
                                frozenset({"conv.kernel", "max7800x.layers"})),
    "kernel_1x3@venus": Case(lambda: Body(nn.Conv2d(4, 4, (1, 3), padding=(0, 1))), (4, 8, 8), "venus"),
    # Linear on 16,400 features: venus's left matrix 4 x 16,400 = 65,600 > 65,536 -> linear.input-buffer;
    # max78000: 16,400 > 1,024 -> linear.features. cortex-m4 has no such rule (weights 65,600 B fit).
    "linear_16400@venus": Case(lambda: Body(nn.Linear(16400, 4)), (16400,), "venus",
                               frozenset({"linear.input-buffer"})),
    "linear_16400@max78000": Case(lambda: Body(nn.Linear(16400, 4)), (16400,), "max78000",
                                  frozenset({"linear.features"})),
    "linear_16400@cortex-m4": Case(lambda: Body(nn.Linear(16400, 4)), (16400,), "cortex-m4"),
    # Flatten of 272 x 8 x 8 = 17,408 values > 16,384 (64 pixels are fine) -> flatten.elements, and the
    # linear layer reading them has 17,408 > 1,024 inputs -> linear.features.
    "flatten_17408@max78000": Case(lambda: Body(conv_bn_relu(3, 272, 1), fc=(272 * 8 * 8, 2)), (3, 8, 8), "max78000",
                                   frozenset({"flatten.elements", "linear.features"})),
    # Only the last part of the concat has 6 channels: allowed.
    "concat_last_odd@max78000": Case(TwoBranchCat, (4, 4, 4), "max78000", frozenset({"max7800x.layers"})),
    # A profile as a dict: venus with at most 8 hardware layers. venus fuses nothing, so cifar has 4 convs +
    # 3 pools + 1 linear = 8 layers (the reshape is a view): exactly at the limit; deep has 33 + 1 = 34.
    "cifar@venus-8-layers": Case(*_zoo("cifar"), _venus_with(rules={"max_layers": 8})),
    "deep@venus-8-layers": Case(*_zoo("deep"), _venus_with(rules={"max_layers": 8}), frozenset({"layers"})),
    # A profile with no memory: nothing can be said to fit -> memory-unknown, a warning (ok stays True).
    "cifar@venus-no-memory": Case(*_zoo("cifar"), _venus_with(memory=[]), warnings=frozenset({"memory-unknown"})),
    # Capture problems of a supported op in an unsupported configuration: max pooling with ceil_mode; the
    # graph cannot be completed, so only that problem is reported.
    "ceil_avgpool@venus": Case(lambda: Body(conv_bn_relu(3, 8), nn.AvgPool2d(3, 2, ceil_mode=True),
                                            fc=(8 * 4 * 4, 10)), (3, 8, 8), "venus", frozenset({"avgpool-unsupported"})),
    # The ResNet stem's MaxPool2d(3, 2, padding=1): venus pools with padding 0..3; MAX7800x never pad.
    "padded_maxpool@venus": Case(lambda: Body(conv_bn_relu(3, 8), nn.MaxPool2d(3, 2, padding=1), fc=(8 * 4 * 4, 10)),
                                 (3, 8, 8), "venus"),
    "padded_maxpool@max78000": Case(lambda: Body(conv_bn_relu(3, 8), nn.MaxPool2d(3, 2, padding=1),
                                                 fc=(8 * 4 * 4, 10)), (3, 8, 8), "max78000", frozenset({"pool.padding"})),
    # padding="same" spelled as a string.
    "conv_same@venus": Case(lambda: Body(nn.Conv2d(3, 8, 4, padding="same"), fc=(8 * 8 * 8, 10)), (3, 8, 8), "venus",
                            frozenset({"unsupported-op"})),  # an even kernel: a pad node, which venus lacks
    "conv_reflect@venus": Case(lambda: Body(nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"), fc=(8 * 8 * 8, 10)),
                               (3, 8, 8), "venus", frozenset({"conv-unsupported"})),
}


def _example(shape, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))


@functools.cache
def zoo_result(name: str, target: str) -> npukit.CheckResult:
    z = BY_NAME[name]
    return npukit.check(z.build(), z.example(), target)


@functools.cache
def case_result(key: str) -> npukit.CheckResult:
    c = CASES[key]
    torch.manual_seed(0)
    return npukit.check(c.build().eval(), _example(c.input_shape), c.target)


@functools.cache
def _small_graph(weight_bits: int = 8):
    """The cifar zoo model prepared for venus (rules off), as the IR: venus arithmetic, wide int32 logits."""
    z = BY_NAME["cifar"]
    return npukit.to_ir(npukit.prepare(z.build(), z.example(), "venus", weight_bits=weight_bits, rules="off"))


# Graph-level cases: a graph made for one profile checked against another (check takes a Graph as is).
GRAPH_CASES = {
    # 16-bit weights (venus computes 8 or 16) on cortex-m4, which computes 8-bit only -> bits.weights.
    "cifar-w16@cortex-m4": (16, "cortex-m4", frozenset({"bits.weights"})),
    # venus takes 16-bit weights, but they fill its per-conv weight buffer twice as fast: the 64 -> 32 3x3
    # conv needs 64 * 32 * 9 * 2 = 36,864 B > 32,768 -> conv.weight-buffer (and no bits.weights).
    "cifar-w16@venus": (16, "venus", frozenset({"conv.weight-buffer"})),
    # int32 logits (venus has a wide output) on a venus without wide output -> bits.activations.
    "cifar@venus-no-wide": (8, _venus_with(wide_output=False), frozenset({"bits.activations"})),
    "cifar@venus": (8, "venus", frozenset()),
    # the venus graph on max78000: another arithmetic (scheme, bias bits, ...) -> arithmetic, nothing else
    "cifar@max78000": (8, "max78000", frozenset({"arithmetic"})),
}


@functools.cache
def graph_case_result(key: str) -> npukit.CheckResult:
    if key.startswith("max-add"):  # a residual add prepared for max78000 (tied exponents), or one operand moved
        g = npukit.to_ir(npukit.prepare(_ResidualNoRelu(), torch.randn(4, 4, 8, 8), "max78000"))
        if key.startswith("max-add-exp"):
            add = next(n for n in g.nodes if n.op == "add")
            g.tensors[add.inputs[0]].exp += 1
        return npukit.check(g, None, "max78000")
    if key.startswith("max"):  # the requant rule: a max78000 graph as prepared, or with a shift beyond [-15, 15]
        z = BY_NAME["cifar"]
        g = npukit.to_ir(npukit.prepare(z.build(), z.example(), "max78000", rules="off"))
        if key.startswith("max-shift"):
            node = next(n for n in g.nodes if n.op == "conv")
            node.attrs["out_shift"] = 7 + 16  # s = 7 - out_shift = -16
        return npukit.check(g, None, "max78000")
    bits, target, _ = GRAPH_CASES[key]
    return npukit.check(_small_graph(bits), None, target)


def _rules(problems, severity: str = "error") -> set[str]:
    return {p.rule for p in problems if p.severity == severity}


def _show(res: npukit.CheckResult) -> str:
    return "\n".join(str(p) for p in res.problems)


# ---------------------------------------------------------------------------------------------------
# The zoo against every target


@functools.cache
def _names(name: str) -> frozenset[str]:
    """Module paths and traced node names of a zoo model: what `Problem.where` may name."""
    model = BY_NAME[name].build()
    traced = fx.symbolic_trace(model)
    return frozenset(dict(model.named_modules())) | {n.name for n in traced.graph.nodes}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", [z.name for z in ZOO])
def test_zoo_verdict(name, target):
    res = zoo_result(name, target)
    expected = BY_NAME[name].expected(target)
    assert _rules(res.problems) == set(expected), f"{name} on {target}:\n{_show(res)}"
    assert _rules(res.problems, "warning") == set(), _show(res)  # every built-in profile declares its memories
    assert res.ok == (not expected)
    names = _names(name) | {"input"}  # "input": the graph input, when a memory peak lists the live tensors
    for p in res.problems:
        assert p.severity in ("error", "warning"), p
        parts = p.where.split(", ") if p.rule == "memory-limit" else [p.where]  # the layers at the peak
        assert p.where and all(part in names for part in parts), f"{p.where!r} names no layer of {name}: {p}"
        assert p.fix.strip(), f"no fix: {p}"
        assert p.message.strip(), p


def test_zoo_is_varied():
    """At least 12 models; some pass everywhere, each target fails some model and passes others."""
    assert len(ZOO) >= 12
    assert any(not any(z.expected(t) for t in TARGETS) for z in ZOO)
    for t in TARGETS:
        verdicts = {bool(z.expected(t)) for z in ZOO}
        assert verdicts == {True, False}, t


@pytest.mark.parametrize("key", list(CASES))
def test_dedicated_case(key):
    c, res = CASES[key], case_result(key)
    assert _rules(res.problems) == set(c.errors), f"{key}:\n{_show(res)}"
    assert _rules(res.problems, "warning") == set(c.warnings), f"{key}:\n{_show(res)}"
    assert res.ok == (not c.errors)
    for p in res.problems:
        assert p.where and p.fix.strip(), p


@pytest.mark.parametrize("key", list(GRAPH_CASES))
def test_graph_case(key):
    res = graph_case_result(key)
    assert _rules(res.problems) == set(GRAPH_CASES[key][2]), f"{key}:\n{_show(res)}"
    graph_names = {n.name for n in res.graph.nodes} | set(res.graph.tensors)
    for p in res.problems:
        whole_model = p.rule == "arithmetic" and p.where == f"model for {res.graph.target['name']}"
        assert (p.where in graph_names or whole_model) and p.fix.strip(), p


# ---------------------------------------------------------------------------------------------------
# Every rule fires somewhere and stays silent somewhere (on the same construct where it can)

# rule -> (a case that must report it, a case that must not); "zoo:<model>@<target>", "case:<key>" or
# "graph:<key>". The passing case has the construct the rule looks at, on a target that has the rule.
RULE_CASES = {
    "conv.kernel": ("zoo:resnet_stem@venus", "zoo:lenet_5x5@venus"),  # 7x7 vs 5x5 on venus
    "conv.stride": ("zoo:strided@max78000", "zoo:strided@venus"),
    "conv.padding": ("zoo:dilated_tcn@max78000", "case:dilated2d@max78002"),  # pad 4 vs pad 2
    "conv.dilation": ("zoo:dilated_tcn@venus", "zoo:dilated_tcn@max78000"),  # span 9: at max78000's limit
    "conv.groups": ("zoo:depthwise_separable@max78000", "zoo:depthwise_separable@max78002"),
    "conv.channels": ("case:conv_1100@max78000", "case:conv_520_nobias@max78000"),
    "conv.size": ("case:conv1d_1100@max78000", "case:conv1d_1100@max78002"),
    "conv.bias": ("case:conv_520_bias@max78000", "case:conv_520_nobias@max78000"),
    "conv.input-buffer": ("zoo:big_activations@venus", "zoo:cifar@venus"),
    "conv.weight-buffer": ("zoo:wide@venus", "zoo:cifar@venus"),
    "conv.output-buffer": ("zoo:big_activations@venus", "zoo:cifar@venus"),
    "pool.kernel": ("case:maxpool6@venus", "zoo:cifar@venus"),  # pooling window 6 vs 2
    "pool.kernel (global)": ("case:gap20@max78000", "zoo:gap@max78000"),  # global pool of 20x20 vs 8x8
    "requant": ("graph:max-shift@max78000", "graph:max@max78000"),
    "add.relu": ("zoo:residual@max78000", "zoo:residual@venus"),
    "activation.abs": ("case:abs@venus", "case:abs@max78000"),
    "activation.clamp": ("case:relu6@venus", "case:relu6@cortex-m4"),
    "add.exponents": ("graph:max-add-exp@max78000", "graph:max-add@max78000"),
    "pool.stride": ("case:maxpool3@venus", "case:maxpool3@max78000"),
    "linear.features": ("zoo:no_pool@max78000", "zoo:cifar@max78000"),  # 8,192 vs exactly 1,024
    "linear.input-buffer": ("case:linear_16400@venus", "zoo:no_pool@venus"),
    "flatten.pixels": ("zoo:no_pool@max78000", "zoo:cifar@max78000"),
    "flatten.elements": ("case:flatten_17408@max78000", "zoo:no_pool@max78000"),
    "concat.channels": ("zoo:concat@max78000", "case:concat_last_odd@max78000"),
    "unsupported-op (rule)": ("zoo:lenet_5x5@max78000", "zoo:lenet_5x5@venus"),  # a standalone ReLU
    "bits.weights": ("graph:cifar-w16@cortex-m4", "graph:cifar-w16@venus"),
    "bits.activations": ("graph:cifar@venus-no-wide", "graph:cifar@venus"),
    "layers": ("zoo:deep@max78000", "zoo:deep@max78002"),
    "memory-limit": ("zoo:big_activations@max78000", "zoo:big_activations@max78002"),
    "memory-unknown": ("case:cifar@venus-no-memory", "zoo:cifar@venus"),
    "unsupported-op": ("zoo:softplus@venus", "zoo:cifar@venus"),
    "lut.function": ("case:hardswish@venus", "case:tanh@venus"),
    "avgpool-unsupported": ("case:ceil_avgpool@venus", "zoo:cifar@venus"),
    "pool.padding": ("case:padded_maxpool@max78000", "case:padded_maxpool@venus"),
    "conv-unsupported": ("case:conv_reflect@venus", "zoo:cifar@venus"),
}


def _result(ref: str) -> npukit.CheckResult:
    kind, _, key = ref.partition(":")
    if kind == "zoo":
        name, _, target = key.partition("@")
        return zoo_result(name, target)
    return case_result(key) if kind == "case" else graph_case_result(key)


def _declared_rule_ids() -> set[str]:
    """Rule ids written literally in rules.py and report.py, plus those rules.py builds from a key."""
    text = (ROOT / "npukit/rules.py").read_text() + (ROOT / "npukit/report.py").read_text()
    ids = set(re.findall(r'"((?:conv|pool|linear|flatten|concat|add|activation|op|bits|memory|lut)[.-][a-z-]+|layers|unsupported-op|requant)"',
                         text))
    ids |= {f"conv.{k}" for k in ("stride", "padding", "dilation")} | {f"pool.{k}" for k in ("kernel", "stride")}
    return ids


def test_every_rule_has_cases():
    missing = _declared_rule_ids() - set(RULE_CASES)
    assert not missing, f"rules without a failing and a passing case: {sorted(missing)}"


@pytest.mark.parametrize("rule", list(RULE_CASES))
def test_rule_fires_and_passes(rule):
    failing, passing = (_result(r) for r in RULE_CASES[rule])
    rule = rule.split(" ")[0]
    assert rule in {p.rule for p in failing.problems}, _show(failing)
    assert rule not in {p.rule for p in passing.problems}, _show(passing)


# ---------------------------------------------------------------------------------------------------
# check, prepare and pack report the same violations


@pytest.mark.parametrize(("name", "target"), [("lenet_5x5", "max78000"), ("big_activations", "cortex-m4"),
                                              ("wide", "venus"), ("dilated_tcn", "max78000"), ("cifar", "venus")])
def test_check_prepare_pack_agree(name, target, tmp_path):
    z = BY_NAME[name]
    expected = set(z.expected(target))
    assert _rules(zoo_result(name, target).problems) == expected

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if expected:
            with pytest.raises(npukit.ProblemsError) as ei:
                npukit.prepare(z.build(), z.example(), target)
            assert _rules(ei.value.problems) == expected, str(ei.value)
        else:
            npukit.prepare(z.build(), z.example(), target)
        graph = npukit.to_ir(npukit.prepare(z.build(), z.example(), target, rules="off"))

    out = tmp_path / "model.bin"
    if expected:
        with pytest.raises(npukit.ProblemsError) as ei:
            npukit.pack(graph, out, target=target)
        assert _rules(ei.value.problems) == expected, str(ei.value)
        assert not out.exists()
    else:
        result = npukit.pack(graph, out, target=target)
        assert out.stat().st_size == result.model_bin_bytes > 0
    # the packed-side graph checked again gives the same verdict
    assert _rules(npukit.check(graph, None, target).problems) == expected


# ---------------------------------------------------------------------------------------------------
# A clean model's resource table


def test_clean_model_layers_and_memory():
    res = zoo_result("cifar", "venus")
    assert res.ok and not res.problems
    rows = {r.name: r for r in res.layers}
    assert len(rows) == len(res.layers) == len(res.graph.nodes) == 9  # 4 convs, 3 pools, a reshape, a linear
    # MACs by hand: out elements x (Cin/groups x kh x kw) per conv; in x out for the linear
    macs = {"features.0.0": 16 * 32 * 32 * 3 * 9, "features.1.0": 32 * 32 * 32 * 16 * 9,
            "features.3.0": 32 * 16 * 16 * 32 * 9, "features.5.0": 64 * 8 * 8 * 32 * 9, "classifier": 1024 * 10}
    assert {n: r.macs for n, r in rows.items() if r.macs} == macs
    assert sum(r.macs for r in res.layers) == 8_710_144
    assert rows["features.1.0"].out_shape == (32, 32, 32) and rows["features.1.0"].activation_bytes == 32768
    assert rows["features.1.0"].weight_bytes == 32 * 16 * 9 + 32 * 4  # int8 weights + int32 bias
    assert rows["classifier"].activation_bytes == 10 * 4  # wide int32 logits
    mem = {m["memory"]: m for m in res.memory}
    assert set(mem) == {"sram", "psram", "flash"}
    for m in res.memory:
        assert isinstance(m["capacity"], int) and m["capacity"] > 0 and 0 <= m["used"] <= m["capacity"], m
    assert mem["sram"]["holds"] == ["activations"] and mem["sram"]["capacity"] == 655360
    assert 49152 <= mem["sram"]["used"] < 65536  # peak: 16x32x32 in + 32x32x32 out
    assert mem["psram"]["holds"] == ["weights"] and mem["psram"]["used"] > 40000

"""A zoo of small PyTorch models written the way users write them, with the verdict `npukit.check` must
give on each built-in target.

The expectations below were worked out by hand from the profiles (npukit/targets/*.yaml) and the rules
(npukit/rules.py), not by running the checker: each model's comment shows the arithmetic. They are the
sets of *error* rule ids (`Problem.rule`) per target; an empty set means the model passes. No zoo model
should get a warning on a built-in target (every built-in profile declares memories for activations and
weights), so the expected warnings are empty everywhere.

Numbers used below (per sample, int8 activations = 1 byte, a wide int32 model output = 4 bytes):

- venus: conv kernel 1..5 (Conv1d any length), stride 1/2/4 with kernel >= stride, pad 0..3 with
  pad < kernel, dilation 1, depthwise or groups=1; conv input buffer align8(Cin) x align(W, 8*stride_w) x H
  <= 65,536; weights align2(Cout) x align8(Cin) x kh x kw (depthwise align16(C) x kh x kw) <= 32,768; conv
  output <= 65,536; pool kernel 1..5, stride 1/2/4, kernel >= stride (a global average pool is a window of
  the whole map); linear input 4 x align8(in) <= 65,536; SRAM 655,360 for activations; ops include relu.
- max78000: Conv2d kernel 1 or 3 (square), Conv1d kernel 1..9, stride 1, pad 0..2, dilation 1 (Conv1d
  1..8, (k-1)*d+1 <= 9), no groups, channels <= 1024, rows/cols <= 1023, bias on <= 512 output channels;
  pool kernel/stride 1..16; linear in/out <= 1024; flatten H x W <= 256 and C x H x W <= 16,384; concat
  parts but the last a multiple of 4 channels; at most 32 hardware layers (pool/add/reshape fused into the
  conv/linear that alone reads them); data 524,288 (activations), weights 442,368, bias 2,048 (1 byte per
  output channel); ops: no standalone relu.
- max78002: as max78000 but depthwise allowed, Conv2d dilation 1..16, rows/cols <= 2047, 128 layers,
  data 1,310,720, weights 2,396,160, bias 8,192.
- cortex-m4: no op rules; SRAM 196,608 for activations, flash 1,048,576 for weights.

The activation figure checked is the planned arena: at least the most bytes live at one step (a node
reads its inputs while it writes its output; the graph input is live at step 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("venus", "max78000", "max78002", "cortex-m4")


def conv_bn_relu(c_in: int, c_out: int, k: int = 3, **kw) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=kw.pop("padding", k // 2), bias=False, **kw),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


# ---------------------------------------------------------------------------------------------------
# The models


class KWSConv1d(nn.Module):
    """Keyword spotting on a 1 x 128 signal: three Conv1d k=3 blocks with max pooling, a linear head."""

    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv1d(1, 16, 3, padding=1), nn.BatchNorm1d(16)
        self.conv2, self.bn2 = nn.Conv1d(16, 32, 3, padding=1), nn.BatchNorm1d(32)
        self.conv3, self.bn3 = nn.Conv1d(32, 32, 3, padding=1), nn.BatchNorm1d(32)
        self.pool1, self.pool2, self.pool3 = nn.MaxPool1d(2), nn.MaxPool1d(2), nn.MaxPool1d(2)
        self.fc = nn.Linear(32 * 16, n_classes)

    def forward(self, x):
        x = self.pool1(F.relu(self.bn1(self.conv1(x))))  # 16 x 64
        x = self.pool2(F.relu(self.bn2(self.conv2(x))))  # 32 x 32
        x = self.pool3(F.relu(self.bn3(self.conv3(x))))  # 32 x 16
        return self.fc(torch.flatten(x, 1))


class CifarNet(nn.Module):
    """The classic CIFAR-10 net: 3x3 conv/BN/ReLU, max pooling, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 16), conv_bn_relu(16, 32), nn.MaxPool2d(2),  # 32 x 16 x 16
            conv_bn_relu(32, 32), nn.MaxPool2d(2),  # 32 x 8 x 8
            conv_bn_relu(32, 64), nn.MaxPool2d(2),  # 64 x 4 x 4
        )
        self.classifier = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


class ResidualNet(nn.Module):
    """A stem and one ResNet basic block (x + bn(conv(relu(bn(conv(x)))))), then pooling and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = F.relu(out + x)
        out = self.pool(out)  # 16 x 4 x 4
        return self.fc(out.flatten(1))


class DepthwiseSeparableNet(nn.Module):
    """MobileNet style: depthwise 3x3 + pointwise 1x1 blocks, average pooling, linear head."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        self.dw1 = conv_bn_relu(16, 16, groups=16)
        self.pw1 = conv_bn_relu(16, 32, 1)
        self.pool = nn.MaxPool2d(2)
        self.dw2 = conv_bn_relu(32, 32, groups=32)
        self.pw2 = conv_bn_relu(32, 64, 1)
        self.avg = nn.AvgPool2d(4)
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        x = self.pw1(self.dw1(self.stem(x)))  # 32 x 32 x 32
        x = self.pw2(self.dw2(self.pool(x)))  # 64 x 16 x 16
        return self.fc(torch.flatten(self.avg(x), 1))


class ConcatNet(nn.Module):
    """Inception-like: a 1x1 branch with 6 channels and a 3x3 branch with 10, concatenated on channels."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.branch1 = conv_bn_relu(8, 6, 1)
        self.branch3 = conv_bn_relu(8, 10, 3)
        self.head = conv_bn_relu(16, 16)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.branch1(x), self.branch3(x)], dim=1)
        return self.fc(torch.flatten(self.pool(self.head(x)), 1))


class GAPNet(nn.Module):
    """Global average pooling (AdaptiveAvgPool2d(1)) of an 8x8 map before the classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(3, 16), nn.MaxPool2d(2), conv_bn_relu(16, 32), nn.MaxPool2d(2),
                                      conv_bn_relu(32, 64))  # 64 x 8 x 8
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.gap(self.features(x)), 1))


class MeanPoolNet(nn.Module):
    """Global average pooling written as x.mean((2, 3)), over a 4x4 map."""

    def __init__(self):
        super().__init__()
        self.block1, self.pool1 = conv_bn_relu(3, 16), nn.MaxPool2d(2)
        self.block2, self.pool2 = conv_bn_relu(16, 32), nn.MaxPool2d(2)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool2(self.block2(self.pool1(self.block1(x))))  # 32 x 4 x 4
        return self.fc(x.mean((2, 3)))


class WideNet(nn.Module):
    """A wide 64 -> 64 3x3 conv: its weights overflow venus's 32 KiB per-conv weight buffer."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn_relu(3, 64)
        self.conv2 = conv_bn_relu(64, 64)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv2(self.conv1(x))), 1))


class BigActivationNet(nn.Module):
    """Two 32-channel convs at full 96x96 resolution: 2 x 294,912 bytes live at once."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn_relu(3, 32)
        self.conv2 = conv_bn_relu(32, 32)
        self.pool1 = nn.MaxPool2d(4)  # 32 x 24 x 24
        self.conv3 = conv_bn_relu(32, 16)
        self.pool2 = nn.MaxPool2d(4)  # 16 x 6 x 6
        self.fc = nn.Linear(16 * 6 * 6, 10)

    def forward(self, x):
        x = self.pool1(self.conv2(self.conv1(x)))
        x = self.pool2(self.conv3(x))
        return self.fc(torch.flatten(x, 1))


class MNISTMLP(nn.Module):
    """The MNIST multilayer perceptron: nn.Flatten of the 1x28x28 image, 784-512-512-10."""

    def __init__(self):
        super().__init__()
        self.flatten = nn.Flatten()
        self.layers = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                    nn.Linear(512, 10))

    def forward(self, x):
        return self.layers(self.flatten(x))


class SoftplusNet(nn.Module):
    """A Softplus activation (no npukit op computes it) in the middle of an otherwise supported conv net."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.act = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Softplus()
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = conv_bn_relu(16, 32)
        self.pool2 = nn.MaxPool2d(4)
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.pool1(self.act(self.bn1(self.conv1(x))))  # 16 x 16 x 16
        x = self.pool2(self.block2(x))  # 32 x 4 x 4
        return self.fc(torch.flatten(x, 1))


class LeNet5x5(nn.Module):
    """The PyTorch MNIST example: 5x5 convs, F.relu(F.max_pool2d(conv(x), 2)), view(-1, 320)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))  # 10 x 12 x 12
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))  # 20 x 4 x 4
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        return self.fc2(x)


class StridedNet(nn.Module):
    """All-convolutional downsampling: three stride-2 3x3 convs instead of pooling."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(3, 16, stride=2), conv_bn_relu(16, 32, stride=2),
                                      conv_bn_relu(32, 64, stride=2))  # 64 x 4 x 4
        self.fc = nn.Linear(64 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class NoPoolNet(nn.Module):
    """A conv, then straight to the classifier without pooling: flatten of an 8 x 32 x 32 map."""

    def __init__(self):
        super().__init__()
        self.conv = conv_bn_relu(3, 8)
        self.fc = nn.Linear(8 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


class DeepNet(nn.Module):
    """33 conv/BN/ReLU blocks in an nn.Sequential, then a linear head: 34 hardware layers."""

    n_convs = 33

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*[conv_bn_relu(3 if i == 0 else 8, 8) for i in range(self.n_convs)])
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class DilatedTCN(nn.Module):
    """A temporal conv net on 16 x 64 features: Conv1d k=3 with dilation 1, 2, 4 and 'same' padding."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(16 if d == 1 else 32, 32, 3, padding=d, dilation=d) for d in (1, 2, 4))
        self.bns = nn.ModuleList(nn.BatchNorm1d(32) for _ in range(3))
        self.pool = nn.AvgPool1d(4)  # 32 x 16
        self.fc = nn.Linear(32 * 16, 12)

    def forward(self, x):
        for conv, bn in zip(self.convs, self.bns, strict=True):
            x = F.relu(bn(conv(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNetStemNet(nn.Module):
    """The ImageNet ResNet stem shrunk: 7x7 stride-2 conv with padding 3, then a 3x3 block."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)  # 16 x 16 x 16
        self.layer1 = conv_bn_relu(16, 32)
        self.pool = nn.MaxPool2d(4)  # 32 x 4 x 4
        self.fc = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(self.layer1(x)), 1))


# ---------------------------------------------------------------------------------------------------
# The zoo with its hand-derived verdicts


@dataclass(frozen=True)
class ZooModel:
    name: str
    cls: type[nn.Module]
    input_shape: tuple[int, ...]  # one sample, without the batch dimension
    # target -> error rule ids that must be reported (a target left out: the model passes there)
    errors: dict[str, frozenset[str]] = field(default_factory=dict)

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        return self.cls().eval()

    def example(self, batch: int = 2) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        return torch.randn(batch, *self.input_shape, generator=g)

    def expected(self, target: str) -> frozenset[str]:
        return self.errors.get(target, frozenset())


def _e(*rules: str) -> frozenset[str]:
    return frozenset(rules)


ZOO: tuple[ZooModel, ...] = (
    # conv1 1->16, conv2 16->32, conv3 32->32 (k=3, pad 1, stride 1) on lengths 128, 64, 32; fc 512->10.
    # venus: Conv1d kernel unlimited; input buffers 8*128, 16*64, 32*32 = 1,024 each; weights 16*8*3=384,
    #   32*16*3=1,536, 32*32*3=3,072; linear input 4*512. max78000: kernel_1d 3 <= 9, pad 1 <= 2, length
    #   <= 1023; pooled maps fuse into the next conv/linear -> 4 layers; flatten 32 x 16: 16 pixels, 512
    #   values. Activations < 3 KiB everywhere.
    ZooModel("kws_conv1d", KWSConv1d, (1, 128)),
    # Biggest: conv2 reads 16x32x32 (16,384 B, venus input buffer 16*32*32 = 16,384) and writes 32x32x32 =
    # 32,768 B (output buffer <= 65,536); conv4 weights 64*32*9 = 18,432 <= 32,768. Peak activations
    # 16,384 + 32,768 = 49,152 (< 196,608). Flatten 64 x 4 x 4 = 16 pixels, 1,024 values; linear in 1,024
    # (<= 1024). 5 hardware layers. Passes everywhere.
    ZooModel("cifar", CifarNet, (3, 32, 32)),
    # 16 channels at 16x16 (4 KiB maps); add + ReLU fused into the add; pool 4/4; flatten 16x4x4 = 256 values.
    # Hardware layers on max78000: stem, conv1, conv2, add (read by a pool, not fused), fc = 5. Passes.
    # relu(x + block(x)): MAX7800x have no activation after an element-wise add -> add.relu there.
    ZooModel("residual", ResidualNet, (3, 16, 16), {"max78000": _e("add.relu"), "max78002": _e("add.relu")}),
    # Depthwise 3x3 (groups = 16 and 32): venus allows depthwise (weights align16(C)*9 <= 288); max78000
    # allows no groups at all -> conv.groups; max78002 allows depthwise. pw1 writes 32x32x32 = 32,768 B
    # (<= 65,536); peak activations 16,384 + 32,768. Avg pool 4/4, flatten 64x4x4 (16 px, 1,024 values).
    # npukit does not write depthwise layers to the MAX78002 description yet -> max7800x.layers there.
    ZooModel("depthwise_separable", DepthwiseSeparableNet, (3, 32, 32),
             {"max78000": _e("conv.groups"), "max78002": _e("max7800x.layers")}),
    # cat([6 channels, 10 channels]): the first part is not a multiple of 4 -> concat.channels on both
    # MAX7800x; venus and cortex-m4 have no concat rule. Everything else small (8..16 channels at 16x16).
    # npukit does not write concatenations (in_sequences) to the description yet -> max7800x.layers too.
    ZooModel("concat", ConcatNet, (3, 16, 16),
             {"max78000": _e("concat.channels", "max7800x.layers"),
              "max78002": _e("concat.channels", "max7800x.layers")}),
    # AdaptiveAvgPool2d(1) of a 64x8x8 map: a pooling window of 8x8; venus pools at most 5 -> pool.kernel.
    # MAX7800x pool up to 16: fine. Convs: 3->16 at 32x32, 16->32 at 16x16, 32->64 at 8x8 (weights 18,432).
    ZooModel("gap", GAPNet, (3, 32, 32), {}),
    # x.mean((2, 3)) of a 32x4x4 map: a 4x4 window, within venus's 1..5. Passes everywhere.
    ZooModel("mean_pool", MeanPoolNet, (3, 16, 16)),
    # conv2 64->64 3x3: venus weights align2(64)*align8(64)*9 = 36,864 > 32,768 -> conv.weight-buffer.
    # Inputs 64*16*16 = 16,384, outputs 16,384: within 64 KiB. Weights in total ~50 KB: fits max78000.
    ZooModel("wide", WideNet, (3, 16, 16), {"venus": _e("conv.weight-buffer")}),
    # conv1 3->32 and conv2 32->32 at 96x96: each output 32*96*96 = 294,912 B; both live at conv2's step:
    # 589,824 B > max78000 data 524,288 and > cortex-m4 SRAM 196,608 -> memory-limit; < venus SRAM 655,360
    # and max78002 data 1,310,720. venus: conv1 input 8*96*96 = 73,728 and conv2 input 32*96*96 = 294,912
    # > 65,536 -> conv.input-buffer; both outputs 294,912 > 65,536 -> conv.output-buffer. conv3 (32x24x24
    # in, 16x24x24 out) fits; flatten 16x6x6 = 36 pixels, 576 values.
    # Per data-memory instance (1/16 of the data memory): conv2 reads 32x96x96 (36,864 B: one word per pixel)
    # and writes as much: 73,728 B live together > 32 KiB on MAX78000 -> max7800x.memory; MAX78002's 80 KiB
    # instance holds them (conv1's output at the top, conv2's at the bottom).
    ZooModel("big_activations", BigActivationNet, (3, 96, 96),
             {"venus": _e("conv.input-buffer", "conv.output-buffer"), "max78000": _e("memory-limit", "max7800x.memory"),
              "cortex-m4": _e("memory-limit")}),
    # nn.Flatten of the 1x28x28 input: 784 pixels > 256 -> flatten.pixels on both MAX7800x. Weights
    # 784*512 + 512*512 + 512*10 = 668,672 B (+ biases) > max78000's 442,368 -> memory-limit; < cortex-m4
    # flash 1,048,576, max78002 2,396,160, venus PSRAM 8 MiB. Linear sizes <= 1024; bias memory 1,034 B
    # <= 2,048. venus linear input buffer 4*784 = 3,136.
    ZooModel("mnist_mlp", MNISTMLP, (1, 28, 28),
             {"max78000": _e("flatten.pixels", "memory-limit"), "max78002": _e("flatten.pixels")}),
    # nn.Softplus after conv1+BN: no npukit op computes it -> unsupported-op (a capture problem) on every
    # target; the rest of the model is within every limit (16x32x32 conv1 output 16,384 B).
    ZooModel("softplus", SoftplusNet, (3, 32, 32),
             {t: _e("unsupported-op") for t in TARGETS}),
    # Conv2d 1->10 and 10->20 with 5x5 kernels, no padding: venus allows 5x5 (inputs 8*32*28 = 7,168 and
    # 16*16*12 = 3,072; weights 10*8*25 = 2,000 and 20*16*25 = 8,000). MAX7800x allow 1x1 and 3x3 only
    # -> conv.kernel; F.relu after F.max_pool2d is a ReLU that follows no conv/linear, a standalone relu op
    # that MAX7800x do not run -> unsupported-op. Flatten 20x4x4 = 16 pixels, 320 values.
    ZooModel("lenet_5x5", LeNet5x5, (1, 28, 28),
             {"max78000": _e("conv.kernel", "unsupported-op"), "max78002": _e("conv.kernel", "unsupported-op")}),
    # Stride 2 everywhere: venus allows stride 2 with kernel 3 >= 2 (input buffers 8*32*32, 16*16*16,
    # 32*16*8 with widths rounded to 16); MAX7800x allow stride 1 only -> conv.stride.
    ZooModel("strided", StridedNet, (3, 32, 32),
             {"max78000": _e("conv.stride"), "max78002": _e("conv.stride")}),
    # Flatten of 8x32x32: 1,024 pixels > 256 -> flatten.pixels; linear in_features 8,192 > 1,024 ->
    # linear.features (both MAX7800x). 8,192 values <= 16,384. venus linear input 4*8,192 = 32,768 <= 65,536;
    # weights 81,920 B fit every weight memory.
    ZooModel("no_pool", NoPoolNet, (3, 32, 32),
             {"max78000": _e("flatten.pixels", "linear.features"),
              "max78002": _e("flatten.pixels", "linear.features")}),
    # 33 convs + 1 linear = 34 hardware layers > 32 -> layers on max78000; max78002 runs 128. 8x8x8 maps.
    ZooModel("deep", DeepNet, (3, 8, 8), {"max78000": _e("layers")}),
    # Dilation 2 and 4 with padding 2 and 4: venus allows dilation 1 only -> conv.dilation; padding 4 is
    # over venus's 0..3 and not below kernel 3 -> conv.padding. MAX7800x: Conv1d dilation 1..8 and
    # (3-1)*4+1 = 9 <= 9 are fine, but padding 4 > 2 -> conv.padding. Avg pool 4/4, flatten 32x16.
    ZooModel("dilated_tcn", DilatedTCN, (16, 64),
             {"venus": _e("conv.dilation", "conv.padding"), "max78000": _e("conv.padding"),
              "max78002": _e("conv.padding")}),
    # 7x7 stride-2 pad-3 stem: venus kernel 7 > 5 -> conv.kernel (stride 2 <= 7 and pad 3 < 7 are fine;
    # input 8*64*64 = 32,768; weights 16*8*49 = 6,272). MAX7800x: kernel 7 -> conv.kernel, stride 2 ->
    # conv.stride, padding 3 > 2 -> conv.padding.
    ZooModel("resnet_stem", ResNetStemNet, (3, 64, 64),
             {"venus": _e("conv.kernel"),
              "max78000": _e("conv.kernel", "conv.stride", "conv.padding"),
              "max78002": _e("conv.kernel", "conv.stride", "conv.padding")}),
)

BY_NAME = {z.name: z for z in ZOO}

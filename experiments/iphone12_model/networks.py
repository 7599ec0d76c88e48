"""Networks outside the four spaces with published iPhone 12 latencies, written for fitting the model.

REFERENCE.md lists MobileNetV2 ×1.0 / ×1.4 (0.9 / 1.2 ms) and ResNet50 (2.5 ms) on the same tool
chain as the ten networks of our spaces. They are written here, with the study, not in
`search_spaces`: the device model prices them through the same op trace as everything else
(`search_spaces.tracing`), and nothing searches over them.

- MobileNetV2 (Sandler et al. 2018), 224 px: stem conv3×3 s2 (32) + BN + ReLU6; inverted residuals
  (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1) (6,160,3,2) (6,320,1,1),
  each 1x1 expand (t > 1) + BN + ReLU6, DW3×3 + BN + ReLU6, 1x1 project + BN, residual when the
  shape is kept; conv1×1 to 1280 + BN + ReLU6; global pool; linear 1000. Widths × multiplier
  rounded to multiples of 8 (`make_divisible`, as torchvision); the last conv stays 1280 for
  multipliers ≤ 1 and scales above. ×1.0: 3.50 M params, ×1.4: 6.11 M.
- ResNet50 (He et al. 2016), 224 px: conv7×7 s2 (64) + BN + ReLU, max pool 3×3 s2, bottleneck
  stages [3, 4, 6, 3] with widths 64/128/256/512 (×4 out), stride on the 3×3 conv (v1.5, as
  torchvision), projection shortcuts where the shape changes; global pool; linear 1000. 25.56 M.
"""

from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's rounding of scaled widths: to the nearest multiple of `divisor`, never more
    than 10% below the scaled value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNActivation(nn.Sequential):
    """conv (k×k, stride, groups) + BN (+ ReLU6/ReLU, or nothing)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                 activation: type[nn.Module] | None = nn.ReLU6) -> None:
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups,
                                             bias=False), nn.BatchNorm2d(out_channels)]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expand, DW3×3, 1x1 project; residual when stride 1 and widths match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = [ConvBNActivation(in_channels, hidden, 1)] if expansion != 1 else []
        layers += [ConvBNActivation(hidden, hidden, 3, stride, groups=hidden),
                   ConvBNActivation(hidden, out_channels, 1, activation=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                         (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 at width multiplier `width` (see the module docstring)."""

    def __init__(self, width: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        channels = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [ConvBNActivation(3, channels, 3, 2)]
        for expansion, out, repeats, stride in MOBILENET_V2_SETTINGS:
            out = make_divisible(out * width)
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if index == 0 else 1, expansion))
                channels = out
        layers.append(ConvBNActivation(channels, last, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class Bottleneck(nn.Module):
    """ResNet50's block: 1x1 reduce, 3×3 (stride), 1x1 expand ×4, projection shortcut where needed."""

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out = 4 * width
        self.body = nn.Sequential(ConvBNActivation(in_channels, width, 1, activation=nn.ReLU),
                                  ConvBNActivation(width, width, 3, stride, activation=nn.ReLU),
                                  ConvBNActivation(width, out, 1, activation=None))
        self.shortcut = (ConvBNActivation(in_channels, out, 1, stride, activation=None)
                         if stride != 1 or in_channels != out else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    """ResNet50 v1.5 (see the module docstring)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNActivation(3, 64, 7, 2, activation=nn.ReLU), nn.MaxPool2d(3, 2, 1)]
        channels = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for index in range(blocks):
                layers.append(Bottleneck(channels, width, stride if index == 0 else 1))
                channels = 4 * width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


#: name -> (builder, published iPhone 12 ms, REFERENCE.md params in M, GMACs)
NETWORKS = {
    "MobileNetV2-1.0": (lambda: MobileNetV2(1.0), 0.9, 3.50, 0.30),
    "MobileNetV2-1.4": (lambda: MobileNetV2(1.4), 1.2, 6.11, 0.58),
    "ResNet50": (ResNet50, 2.5, 25.56, 4.1),
}

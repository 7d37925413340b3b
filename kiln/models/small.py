"""Small models that train on this machine in minutes: the JSC MLPs, convnet, LeNet-5,
ResNet-8 and a MobileNet-style network."""

from __future__ import annotations

from torch import nn


def jsc_tiny(in_features: int = 16, num_classes: int = 5) -> nn.Sequential:
    """BatchNorm1d → ReLU → Linear → ReLU (the hls4ml jet-substructure 'tiny' model)."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features), nn.ReLU(), nn.Linear(in_features, num_classes), nn.ReLU()
    )


def jsc_three_linear(in_features: int = 16, num_classes: int = 5, hidden: int = 16
                     ) -> nn.Sequential:
    """BN → ReLU → (Linear → ReLU) × 3: the jet-substructure three-layer MLP."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features), nn.ReLU(),
        nn.Linear(in_features, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes), nn.ReLU(),
    )


class ConvNet(nn.Module):
    """A small CNN for 28×28 grayscale: two conv-bn-relu-maxpool blocks, two FC layers."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, int] = (16, 32), hidden: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[1]), nn.ReLU(), nn.MaxPool2d(2),
        )
        spatial = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(widths[1] * spatial * spatial, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 for 28×28 inputs (the first convolution pads by 2, as for MNIST)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        )
        spatial = (image_size // 2 - 4) // 2
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * spatial * spatial, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class VGGSmall(nn.Module):
    """VGG-Small (residual-free) for 32×32: 2×128, 2×256, 2×512 3×3 convs, one FC."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in (128, 256, 512):
            for _ in range(2):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False),
                           nn.BatchNorm2d(width), nn.ReLU()]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        spatial = image_size // 8
        self.classifier = nn.Sequential(nn.Flatten(),
                                        nn.Linear(512 * spatial * spatial, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers and a shortcut (a 1×1 conv-BN where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x):
        y = nn.functional.relu(self.bn1(self.conv1(x)))
        return nn.functional.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 (MLPerf Tiny's, for 28×28 grayscale): a 3×3 stem, three basic blocks of
    16/32/64 channels (the last two halve the map, a 1×1 conv on their shortcut), global
    average pool, one FC layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.blocks = nn.Sequential(_BasicBlock(widths[0], widths[0], 1),
                                    _BasicBlock(widths[0], widths[1], 2),
                                    _BasicBlock(widths[1], widths[2], 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


def _separable(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    """A depthwise 3×3 conv-BN-ReLU6, then a pointwise 1×1 conv-BN-ReLU6."""
    return [nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels), nn.ReLU6(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU6()]


class MobileNetTiny(nn.Module):
    """A MobileNet-v1-style network for 28×28 grayscale: a 3×3 stem, four depthwise-separable
    blocks (16→32 halving the map, 32→32, 32→64 halving it, 64→64), ReLU6, global average
    pool, one FC layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        first, second, third = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, first, 3, padding=1, bias=False), nn.BatchNorm2d(first),
            nn.ReLU6(),
            *_separable(first, second, 2), *_separable(second, second, 1),
            *_separable(second, third, 2), *_separable(third, third, 1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(third, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))

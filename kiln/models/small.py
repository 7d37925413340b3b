"""Small models that train on this machine in minutes: the JSC MLPs, convnet, LeNet-5."""

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

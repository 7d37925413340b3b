"""ResNet-18 and MobileNetV2 with ImageNet (224×224) and CIFAR (32×32) stems.

Written from the papers (He et al. 2016; Sandler et al. 2018) for workload analysis;
the layer shapes match the reference implementations, so MAC counts agree.
"""

from __future__ import annotations

from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 shortcut: bool = True) -> None:
        super().__init__()
        self.use_shortcut = shortcut
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if shortcut and (stride != 1 or in_channels != out_channels):
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if not self.use_shortcut:
            return self.relu2(out)
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18; ``stem='imagenet'`` (7×7/2 conv + max pool) or ``'cifar'`` (3×3/1 conv).
    ``shortcuts=False`` drops the residual connections (BARVINN's MVU example network)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, stem: str = "imagenet",
                 shortcuts: bool = True) -> None:
        super().__init__()
        if stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
            )
        blocks: list[nn.Module] = []
        channels = 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(channels, width, stride, shortcuts),
                       BasicBlock(width, width, 1, shortcuts)]
            channels = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
        ]
        self.body = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        if self.use_residual:
            return x + self.body(x)
        return self.body(x)


# (expansion t, output channels c, repeats n, first stride s) from the MobileNetV2 paper.
_MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0); the CIFAR stem uses stride 1 in the first conv and stage 2."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, stem: str = "imagenet"
                 ) -> None:
        super().__init__()
        cifar = stem == "cifar"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 32, 3, 1 if cifar else 2, 1, bias=False),
            nn.BatchNorm2d(32), nn.ReLU6(),
        ]
        channels = 32
        for index, (expansion, width, repeats, stride) in enumerate(_MOBILENETV2_STAGES):
            if cifar and index == 1:
                stride = 1
            for repeat in range(repeats):
                layers.append(InvertedResidual(channels, width, stride if repeat == 0 else 1,
                                               expansion))
                channels = width
        layers += [nn.Conv2d(channels, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))

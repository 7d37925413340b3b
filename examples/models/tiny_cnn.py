"""A small CNN written as a user would: kiln takes it as ``tiny_cnn.py:TinyCNN``.

    kiln inspect examples/models/tiny_cnn.py:TinyCNN --input-shape 1x28x28
    kiln train examples/models/tiny_cnn.py:TinyCNN --input-shape 1x28x28 --data fashion-mnist
"""

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv 3x3 (8) -> ReLU -> max pool -> conv 3x3 (16) -> ReLU -> max pool -> FC 10."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))

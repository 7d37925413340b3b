"""The model zoo by name: each entry knows its architecture, input shape and dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kiln.errors import UnknownNameError
from kiln.graph.core import Graph
from kiln.graph.torch_import import from_torch
from kiln.models import imagenet, small


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry. ``build(input_shape, num_classes)`` returns a fresh ``nn.Module``."""

    name: str
    description: str
    build: Callable[[tuple[int, ...], int], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str | None = None


def _image(factory: Callable[..., nn.Module], **kwargs) -> Callable[[tuple[int, ...], int],
                                                                    nn.Module]:
    def build(shape: tuple[int, ...], classes: int) -> nn.Module:
        if len(shape) != 3:
            raise UnknownNameError(f"this model needs an image input [C, H, W], got {list(shape)}")
        if "stem" in kwargs:
            return factory(in_channels=shape[0], num_classes=classes, **kwargs)
        return factory(in_channels=shape[0], num_classes=classes, image_size=shape[-1], **kwargs)

    return build


def _tabular(factory: Callable[..., nn.Module]) -> Callable[[tuple[int, ...], int], nn.Module]:
    def build(shape: tuple[int, ...], classes: int) -> nn.Module:
        if len(shape) != 1:
            raise UnknownNameError(f"this model needs a feature vector input, got {list(shape)}")
        return factory(in_features=shape[0], num_classes=classes)

    return build


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("jsc-tiny", "BN → ReLU → Linear → ReLU (jet-substructure tiny)",
                  _tabular(small.jsc_tiny), (16,), 5, "letter"),
        ModelSpec("jsc-three-linear", "BN → ReLU → 3 × (Linear → ReLU), hidden width 16",
                  _tabular(small.jsc_three_linear), (16,), 5, "letter"),
        ModelSpec("convnet", "2 × (conv3x3-BN-ReLU-maxpool) + 2 FC, for 28×28 grayscale",
                  _image(small.ConvNet), (1, 28, 28), 10, "fashion-mnist"),
        ModelSpec("resnet8", "ResNet-8 (MLPerf Tiny): stem + 3 basic blocks 16/32/64, "
                  "global average pool, 28×28 grayscale",
                  _image(small.ResNet8), (1, 28, 28), 10, "fashion-mnist"),
        ModelSpec("mobilenet-tiny", "MobileNet-v1-style: stem + 4 depthwise-separable blocks "
                  "16/32/32/64/64, ReLU6, global average pool, 28×28 grayscale",
                  _image(small.MobileNetTiny), (1, 28, 28), 10, "fashion-mnist"),
        ModelSpec("lenet5", "LeNet-5 (avg pools, 3 FC), 28×28 grayscale",
                  _image(small.LeNet5), (1, 28, 28), 10, "fashion-mnist"),
        ModelSpec("vgg-small", "VGG-Small, 6 conv (128-256-512) + FC, 32×32 RGB",
                  _image(small.VGGSmall), (3, 32, 32), 10, None),
        ModelSpec("resnet18", "ResNet-18, ImageNet stem, 224×224",
                  _image(imagenet.ResNet18, stem="imagenet"), (3, 224, 224), 1000, None),
        ModelSpec("resnet18-cifar", "ResNet-18, CIFAR stem (3×3/1, no max pool), 32×32",
                  _image(imagenet.ResNet18, stem="cifar"), (3, 32, 32), 10, None),
        ModelSpec("resnet18-cifar-plain", "ResNet-18, CIFAR stem, no shortcuts (BARVINN's "
                  "MVU example network), 32×32",
                  _image(imagenet.ResNet18, stem="cifar", shortcuts=False), (3, 32, 32), 10,
                  None),
        ModelSpec("mobilenetv2", "MobileNetV2 1.0, ImageNet stem, 224×224",
                  _image(imagenet.MobileNetV2, stem="imagenet"), (3, 224, 224), 1000, None),
        ModelSpec("mobilenetv2-cifar", "MobileNetV2 1.0, CIFAR stem, 32×32",
                  _image(imagenet.MobileNetV2, stem="cifar"), (3, 32, 32), 10, None),
    )
}


def model_spec(name: str) -> ModelSpec:
    spec = MODELS.get(name)
    if spec is None:
        import difflib

        close = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        raise UnknownNameError(
            f"unknown model '{name}'; zoo models: {', '.join(MODELS)}, or give a .pt "
            "checkpoint or an .onnx file", hint=hint)
    return spec


def build_graph(name: str, input_shape: tuple[int, ...] | None = None,
                num_classes: int | None = None, *, seed: int = 0) -> Graph:
    """A zoo model with fresh, seeded weights as a :class:`Graph` (batch-1 example input).

    >>> build_graph("convnet").input_shape
    (1, 1, 28, 28)
    """
    spec = model_spec(name)
    shape = tuple(input_shape or spec.input_shape)
    torch.manual_seed(seed)
    module = spec.build(shape, num_classes or spec.num_classes)
    return from_torch(module, torch.zeros(1, *shape), name=name)

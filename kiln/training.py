"""Training and evaluation of graphs (or any ``nn.Module``) on kiln datasets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from kiln.data import Dataset
from kiln.errors import ConfigError
from kiln.graph.core import Graph


@dataclass
class TrainResult:
    """Per-epoch training loss and test accuracy, and the final test accuracy."""

    epochs: int
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1] if self.test_accuracy else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "train_loss": self.train_loss,
                "test_accuracy": self.test_accuracy, "seconds": self.seconds,
                "final_accuracy": self.final_accuracy}


def _module(model: Graph | nn.Module) -> nn.Module:
    return model.module if isinstance(model, Graph) else model


def predict(model: Graph | nn.Module, x: np.ndarray | torch.Tensor, *, batch_size: int = 1024
            ) -> np.ndarray:
    """Logits for ``x`` (in eval mode, no gradients), batched."""
    module = _module(model)
    was_training = module.training
    module.eval()
    tensor = torch.as_tensor(x)
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, len(tensor), batch_size):
                outputs.append(module(tensor[start:start + batch_size]).float().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(outputs) if outputs else np.zeros((0,))


def evaluate(model: Graph | nn.Module, dataset: Dataset, *, split: str = "test",
             input_scale: float = 1.0, batch_size: int = 1024) -> float:
    """Top-1 accuracy (0..1) on a split. ``input_scale`` multiplies inputs (e.g. 255).

    >>> from kiln.data import load_dataset
    >>> from kiln.models import resolve_model
    >>> graph, _ = resolve_model("convnet", pretrained=True)
    >>> round(evaluate(graph, load_dataset("fashion-mnist")), 4)
    0.92
    """
    x, y = dataset.arrays(split)
    if input_scale != 1.0:
        x = x * np.float32(input_scale)
    logits = predict(model, x, batch_size=batch_size)
    return float((logits.argmax(axis=1) == y).mean())


def fit(
    model: Graph | nn.Module,
    dataset: Dataset,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    seed: int = 0,
    on_batch: Callable[[int, int, float], None] | None = None,
    on_epoch: Callable[[int, float, float], None] | None = None,
    after_step: Callable[[nn.Module], None] | None = None,
) -> TrainResult:
    """Train in place with Adam and a cosine learning-rate schedule; seeded.

    ``on_batch(epoch, batch, loss)`` and ``on_epoch(epoch, loss, test_accuracy)`` report
    progress (the CLI draws its progress bar from them); ``after_step(module)`` runs after
    every optimizer step (pruning uses it to keep masked weights at zero).
    """
    import time

    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")
    if lr <= 0:
        raise ConfigError(f"learning rate must be positive, got {lr}")
    torch.manual_seed(seed)
    module = _module(model)
    loader = dataset.loader("train", batch_size=batch_size, seed=seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss()
    result = TrainResult(epochs=epochs)
    start = time.perf_counter()
    for epoch in range(epochs):
        module.train()
        total, count = 0.0, 0
        for batch, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            loss = loss_fn(module(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step(module)
            total += float(loss.detach()) * len(y)
            count += len(y)
            if on_batch is not None:
                on_batch(epoch, batch, float(loss.detach()))
        module.eval()
        accuracy = evaluate(module, dataset)
        result.train_loss.append(total / max(count, 1))
        result.test_accuracy.append(accuracy)
        if on_epoch is not None:
            on_epoch(epoch, result.train_loss[-1], accuracy)
    module.eval()
    result.seconds = time.perf_counter() - start
    return result

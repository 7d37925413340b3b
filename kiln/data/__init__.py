"""Datasets that work offline: ``load_dataset(name)`` returns a :class:`Dataset`."""

from kiln.data.datasets import DATASETS, Dataset, dataset_names, load_dataset

__all__ = ["DATASETS", "Dataset", "dataset_names", "load_dataset"]

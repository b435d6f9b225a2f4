"""Datasets and member / non-member / shadow splits for membership inference evaluation."""

from sparsemia.data.datasets import DATASETS, TABULAR_FILES, Dataset, load_dataset
from sparsemia.data.embedded import embedded_mnist
from sparsemia.data.splits import SPLIT_NAMES, MembershipSplits, load_splits, make_splits

__all__ = [
    "embedded_mnist",
    "Dataset",
    "load_dataset",
    "DATASETS",
    "TABULAR_FILES",
    "MembershipSplits",
    "make_splits",
    "load_splits",
    "SPLIT_NAMES",
]

"""Datasets and member / non-member / shadow splits for membership inference evaluation."""

from sparsemia.data.embedded import embedded_mnist

__all__ = ["embedded_mnist"]

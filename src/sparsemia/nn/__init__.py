"""Sparse layers (drop-in for ``nn.Linear`` / ``nn.Conv2d``) and model conversion."""

from sparsemia.nn.linear import SparseLinear

__all__ = ["SparseLinear"]

"""sparsemia: fast sparse kernels for pruned networks, pruning, and membership inference evaluation."""

from __future__ import annotations

__version__ = "0.1.0"

from sparsemia import ops  # noqa: E402
from sparsemia.formats import SparseWeight  # noqa: E402

__all__ = ["SparseWeight", "ops", "__version__"]

"""sparsemia: fast sparse kernels for pruned networks, pruning, and membership inference evaluation.

Submodules are imported on first use so that ``import sparsemia`` (and the CLI)
stays fast and a part that is not needed is never loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import torch  # noqa: F401  (loads the libtorch libraries that sparsemia._C links against)

__version__ = "0.1.0"

_SUBMODULES = {"ops", "formats", "nn", "prune", "data", "models", "train", "mia", "experiments", "kernels"}
_ATTRS = {
    "SparseWeight": ("sparsemia.formats", "SparseWeight"),
    "sparsify": ("sparsemia.nn", "sparsify"),
    "densify": ("sparsemia.nn", "densify"),
    "compile": ("sparsemia.nn.compiled", "compile"),
}

if TYPE_CHECKING:
    from sparsemia import ops as ops
    from sparsemia.formats import SparseWeight as SparseWeight
    from sparsemia.nn.compiled import compile as compile


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"sparsemia.{name}")
    if name in _ATTRS:
        module, attr = _ATTRS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sparsemia' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _SUBMODULES | set(_ATTRS))


__all__ = ["SparseWeight", "ops", "sparsify", "densify", "compile", "__version__"]

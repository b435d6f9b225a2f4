"""Shared fixtures: seeded randomness, pruned weights, and forcing each CPU ISA."""

from __future__ import annotations

import pytest
import torch

try:
    from sparsemia import _C
except ImportError:  # the reference backend still gets tested
    _C = None

_ISA_ORDER = ["scalar", "vec128", "avx2", "avx512"]


def available_isas() -> list[str]:
    if _C is None:
        return []
    best = _C.best_cpu_isa()
    return _ISA_ORDER[: _ISA_ORDER.index(best) + 1]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=available_isas() or [pytest.param("none", marks=pytest.mark.skip(reason="C++ extension not built"))])
def isa(request):
    """Runs the test once per ISA this CPU supports, forcing the CPU kernels onto it."""
    previous = _C.get_cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(previous)


def random_pruned(rows: int, cols: int, sparsity: float, dtype=torch.float32, empty_rows: int = 0) -> torch.Tensor:
    """A dense matrix with about `sparsity` zeros and `empty_rows` all-zero rows."""
    dense = torch.randn(rows, cols, dtype=dtype)
    dense[torch.rand(rows, cols) < sparsity] = 0
    if empty_rows:
        dense[torch.randperm(rows)[:empty_rows]] = 0
    return dense

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


# Folders whose tests train tiny models, for which one thread is fastest (and kind to a shared machine).
_ONE_THREAD_FOLDERS = {"mia", "train"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread_for_tiny_models(request):
    if request.path.parent.name not in _ONE_THREAD_FOLDERS:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(params=available_isas() or [pytest.param("none", marks=pytest.mark.skip(reason="C++ extension not built"))])
def isa(request):
    """Runs the test once per ISA this CPU supports, forcing the CPU kernels onto it."""
    previous = _C.get_cpu_isa()
    _C.set_cpu_isa(request.param)
    yield request.param
    _C.set_cpu_isa(previous)


@pytest.fixture
def conv_tuning(monkeypatch):
    """Sets the conv kernels' tuning knobs for one test: conv_tuning(COLUMNS="0") sets
    SPARSEMIA_CONV_COLUMNS=0 and makes the extension read it; all are restored after."""

    def set_knobs(**knobs: str) -> None:
        for name, value in knobs.items():
            monkeypatch.setenv(f"SPARSEMIA_CONV_{name}", value)
        _C.reload_conv_tuning()

    yield set_knobs
    monkeypatch.undo()
    _C.reload_conv_tuning()


def random_pruned(rows: int, cols: int, sparsity: float, dtype=torch.float32, empty_rows: int = 0) -> torch.Tensor:
    """A dense matrix with about `sparsity` zeros and `empty_rows` all-zero rows."""
    dense = torch.randn(rows, cols, dtype=dtype)
    dense[torch.rand(rows, cols) < sparsity] = 0
    if empty_rows:
        dense[torch.randperm(rows)[:empty_rows]] = 0
    return dense

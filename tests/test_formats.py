"""SparseWeight: exact round trips, metadata, moves, state dicts and input checks."""

from __future__ import annotations

import pytest
import torch

import sparsemia as sm
from sparsemia.formats import SparseWeight
from tests.conftest import random_pruned


def nm_pruned(rows: int, cols: int, n: int = 2, m: int = 4, dtype=torch.float32) -> torch.Tensor:
    dense = torch.randn(rows, cols // m, m, dtype=dtype)
    keep = torch.zeros_like(dense, dtype=torch.bool).scatter_(-1, dense.abs().topk(n, -1).indices, True)
    return (dense * keep).reshape(rows, cols)


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 48), (3, 5, 3, 3), (0, 4)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("fmt,kw", [("csr", {}), ("bsr", {"block": (4, 4)}), ("bsr", {"block": (1, 8)}),
                                    ("bsr", {"block": (3, 2)})])
def test_round_trip_is_exact(shape, sparsity, fmt, kw):
    dense = torch.randn(shape)
    dense[torch.rand(shape) < sparsity] = 0
    w = SparseWeight.from_dense(dense, format=fmt, **kw)
    assert w.shape == tuple(shape)
    assert torch.equal(w.to_dense(), dense)
    if fmt == "csr":
        assert w.nnz == int((dense != 0).sum())
        assert w.col_indices.dtype == torch.int32
    assert 0.0 <= w.sparsity <= 1.0


def test_nm_round_trip_and_csr_view():
    dense = nm_pruned(6, 16)
    w = SparseWeight.from_dense(dense, format="nm", n=2, m=4)
    assert torch.equal(w.to_dense(), dense)
    assert w.values.shape == (6, 8) and w.col_indices.dtype == torch.int8
    assert w.sparsity == pytest.approx(0.5)
    crow, col, values = w.csr()
    assert torch.equal(torch.sparse_csr_tensor(crow, col, values, (6, 16)).to_dense(), dense)


def test_nm_keeps_explicit_slots_for_sparser_groups():
    dense = nm_pruned(4, 8)
    dense[0] = 0  # fewer than n nonzeros in a group is still 2:4
    w = SparseWeight.from_dense(dense, format="nm")
    assert torch.equal(w.to_dense(), dense)


def test_nm_rejects_denser_groups_and_bad_sizes():
    with pytest.raises(ValueError, match="more than 2"):
        SparseWeight.from_dense(torch.randn(4, 8), format="nm")
    with pytest.raises(ValueError, match="multiple of m"):
        SparseWeight.from_dense(torch.zeros(4, 6), format="nm")
    with pytest.raises(ValueError, match="n, m"):
        SparseWeight.from_dense(torch.zeros(4, 8), format="nm", n=5, m=4)


def test_mask_prunes_nonzeros_and_keeps_explicit_zeros():
    dense = torch.randn(8, 8)
    dense[0, 0] = 0
    mask = torch.rand(8, 8) < 0.5
    mask[0, 0] = True
    w = SparseWeight.from_dense(dense, mask=mask)
    assert w.nnz == int(mask.sum())
    assert torch.equal(w.to_dense(), dense * mask)


def test_to_dtype_device_and_state_dict():
    dense = random_pruned(9, 11, 0.7)
    for fmt, kw in (("csr", {}), ("bsr", {"block": (2, 4)})):
        w = SparseWeight.from_dense(dense, format=fmt, **kw)
        w64 = w.to(dtype=torch.float64)
        assert w64.dtype == torch.float64 and w64.col_indices.dtype == w.col_indices.dtype
        assert torch.equal(w64.to_dense(), dense.double())
        assert w.to("cpu").device.type == "cpu"
        restored = SparseWeight.from_state_dict(w.state_dict())
        assert restored.format == fmt and torch.equal(restored.to_dense(), dense)
        assert all(isinstance(v, str | torch.Tensor) for v in w.state_dict().values())
    assert "sparsity=" in repr(SparseWeight.from_dense(dense))


def test_nbytes_counts_values_and_indices():
    w = SparseWeight.from_dense(random_pruned(10, 10, 0.9))
    assert w.nbytes() == w.nnz * 4 + w.nnz * 4 + 11 * 4


def _csr(dense):
    w = SparseWeight.from_dense(dense)
    return w.crow_indices, w.col_indices, w.values


@pytest.mark.parametrize(
    "mutate,error,match",
    [
        (lambda c, i, v: (c.float(), i, v), TypeError, "crow_indices: expected int32 or int64"),
        (lambda c, i, v: (c, i.long(), v), TypeError, "one index dtype"),
        (lambda c, i, v: (c[:-1], i, v), ValueError, "crow_indices: expected"),
        (lambda c, i, v: (c, i, v[:-1]), ValueError, "values: expected shape"),
        (lambda c, i, v: (c, i.flip(0), v), ValueError, "strictly increasing"),
        (lambda c, i, v: (c, i + 100, v), ValueError, r"col_indices: expected indices in \[0, 6\)"),
        (lambda c, i, v: (c.flip(0), i, v), ValueError, "crow_indices"),
        (lambda c, i, v: (c, i, v.int()), TypeError, "values: expected a floating-point"),
    ],
)
def test_constructor_rejects_bad_tensors(mutate, error, match):
    dense = torch.tensor([[1.0, 0, 2, 0, 3, 4], [0, 0, 0, 0, 0, 0], [5, 6, 0, 0, 0, 7]])
    crow, col, values = mutate(*_csr(dense))
    with pytest.raises(error, match=match):
        SparseWeight("csr", (3, 6), values, crow, col)


def test_from_dense_rejects_bad_arguments():
    with pytest.raises(ValueError, match="format"):
        SparseWeight.from_dense(torch.randn(3, 3), format="coo")
    with pytest.raises(ValueError, match="rank >= 2"):
        SparseWeight.from_dense(torch.randn(3))
    with pytest.raises(TypeError, match="floating-point"):
        SparseWeight.from_dense(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="mask: expected shape"):
        SparseWeight.from_dense(torch.randn(3, 3), mask=torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="only 0 and 1"):
        SparseWeight.from_dense(torch.randn(3, 3), mask=torch.full((3, 3), 2.0))
    with pytest.raises(ValueError, match="block"):
        SparseWeight.from_dense(torch.randn(4, 4), format="bsr", block=(0, 2))


def test_public_names():
    assert sm.SparseWeight is SparseWeight

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


# ---------------------------------------------------------------- format work


@pytest.mark.parametrize("shape", [(7, 13), (16, 16), (5, 2, 3, 3)])
@pytest.mark.parametrize("fmt,kw", [("csr", {}), ("bsr", {"block": (4, 4)}), ("bsr", {"block": (3, 2)}),
                                    ("nm", {})])
def test_csr_view_of_every_format_is_the_dense_matrix(shape, fmt, kw):
    rows, cols = shape[0], int(torch.tensor(shape[1:]).prod())
    dense = nm_pruned(rows, 12 if fmt == "nm" else cols) if fmt == "nm" else random_pruned(rows, cols, 0.6)
    if fmt == "nm":
        shape = (rows, 12)
    w = SparseWeight.from_dense(dense.reshape(shape), format=fmt, **kw)
    crow, col, values = w.csr()
    csr = SparseWeight("csr", w.matrix_shape, values, crow, col)  # validates the pattern
    torch.testing.assert_close(csr.to_dense(), dense.reshape(w.matrix_shape), rtol=0, atol=0)
    again = w.csr()
    assert again[0] is crow and again[1] is col  # the derived pattern is cached


def test_csr_view_of_bsr_is_differentiable_in_the_block_layout():
    w = SparseWeight.from_dense(random_pruned(6, 10, 0.5), format="bsr", block=(4, 4))
    values = w.values.clone().requires_grad_()
    _, _, flat = w.with_values(values).csr()
    flat.sum().backward()
    # one for every entry of a stored block inside the logical 6 x 10 shape, zero in the padding
    block_row = torch.repeat_interleave(torch.arange(2), w.crow_indices.diff().long())
    rows = block_row[:, None, None] * 4 + torch.arange(4)[None, :, None]
    cols = w.col_indices.long()[:, None, None] * 4 + torch.arange(4)[None, None, :]
    torch.testing.assert_close(values.grad, ((rows < 6) & (cols < 10)).float())


def test_csr_pattern_cache_follows_in_place_changes_of_the_indices():
    w = SparseWeight.from_dense(nm_pruned(4, 8), format="nm")
    w.csr()
    with torch.no_grad():
        w.col_indices[0, :2] = torch.tensor([1, 3], dtype=torch.int8)  # another valid 2:4 group, in place
    fresh = SparseWeight("nm", (4, 8), w.values, None, w.col_indices.clone(), n=2, m=4)
    assert torch.equal(w.csr()[1], fresh.csr()[1])


@pytest.mark.parametrize("fmt,kw", [("csr", {}), ("bsr", {"block": (4, 2)}), ("nm", {})])
def test_transposed(fmt, kw):
    dense = nm_pruned(6, 8) if fmt == "nm" else random_pruned(6, 9, 0.6, empty_rows=1)
    w = SparseWeight.from_dense(dense, format=fmt, **kw)
    t = w.transposed()
    assert t.shape == (dense.shape[1], dense.shape[0])
    SparseWeight(t.format, t.shape, t.values, t.crow_indices, t.col_indices, block=t.block)  # validates
    torch.testing.assert_close(t.to_dense(), dense.t(), rtol=0, atol=0)


def test_transpose_pattern_of_stacked_patterns():
    weights = [SparseWeight.from_dense(random_pruned(5, 7, s)) for s in (0.3, 1.0, 0.7)]
    crow, col, values = SparseWeight.stack_csr(weights)
    crow_t, col_t, perm = sm.formats.transpose_pattern(crow, col, 7)
    assert crow_t.shape == (3, 8)
    for g, w in enumerate(weights):
        start, end = int(crow_t[g, 0]), int(crow_t[g, -1])
        t = SparseWeight("csr", (7, 5), values[perm][start:end], crow_t[g] - start, col_t[start:end])
        torch.testing.assert_close(t.to_dense(), w.to_dense().t(), rtol=0, atol=0)


def test_stack_csr_rejects_mixed_shapes_and_takes_every_format():
    a = SparseWeight.from_dense(random_pruned(4, 8, 0.5))
    b = SparseWeight.from_dense(nm_pruned(4, 8), format="nm")
    c = SparseWeight.from_dense(random_pruned(4, 8, 0.5), format="bsr", block=(2, 4))
    crow, col, values = SparseWeight.stack_csr([a, b, c])
    assert crow.shape == (3, 5) and int(crow[0, 0]) == 0 and int(crow[-1, -1]) == values.numel() == col.numel()
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        SparseWeight.stack_csr([a, SparseWeight.from_dense(random_pruned(4, 9, 0.5))])
    with pytest.raises(ValueError, match="at least one"):
        SparseWeight.stack_csr([])


def test_index_dtype_is_chosen_in_one_place():
    assert sm.formats.index_dtype(10) is torch.int32
    assert sm.formats.index_dtype(2**31) is torch.int64
    assert SparseWeight.from_dense(random_pruned(4, 4, 0.5)).col_indices.dtype is torch.int32

"""Triton kernels against the plain-torch reference: on a GPU if present, else
under TRITON_INTERPRET=1 on the CPU (tiny shapes: the interpreter is slow)."""

from __future__ import annotations

import pytest
import torch

# first: it skips the module where Triton cannot run
from tests.kernels.triton_setup import DEVICE, OPCHECKS, TOL  # isort: split

import sparsemia as sm
from sparsemia.ops import BackendUnavailableError
from sparsemia.ops.backends import triton as T
from tests.kernels.triton_setup import rel_error as _rel


def _block_sparse(rows: int, cols: int, block: tuple[int, int], keep: float, dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    br, bc = block
    mask = torch.rand(-(-rows // br), -(-cols // bc), generator=g) < keep
    mask = mask.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:rows, :cols]
    return (torch.randn(rows, cols, generator=g) * mask).to(dtype)


def _unstructured(rows: int, cols: int, keep: float, dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < keep)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block", [(16, 16), (16, 32), (32, 16)])
def test_bsr_spmm_and_linear_match_reference(dtype, block):
    dense = _block_sparse(50, 70, block, 0.5, dtype)  # not multiples of the block: padded
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=block).to(DEVICE)
    x = torch.randn(70, 9).to(dtype).to(DEVICE)
    ref = dense.double() @ x.cpu().double()
    assert _rel(sm.ops.spmm(w, x, backend="triton").cpu(), ref) < TOL[dtype]
    xb = torch.randn(2, 3, 70).to(dtype).to(DEVICE)
    bias = torch.randn(50).to(dtype).to(DEVICE)
    y = sm.ops.sparse_linear(xb, w, bias, backend="triton")
    ref = xb.cpu().double() @ dense.double().t() + bias.cpu().double()
    assert y.shape == (2, 3, 50) and y.dtype == dtype
    assert _rel(y.cpu(), ref) < TOL[dtype]


def test_bsr_handles_strided_inputs_and_empty_rows():
    dense = _block_sparse(64, 32, (16, 16), 0.5, torch.float32, seed=3)
    dense[16:32] = 0  # an empty block row
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=(16, 16)).to(DEVICE)
    x = torch.randn(20, 32, device=DEVICE).t()  # [32, 20], column-major
    assert _rel(sm.ops.spmm(w, x, backend="triton").cpu(), dense.double() @ x.cpu().double()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bsr_sddmm_matches_dense_product_at_blocks(dtype):
    block = (16, 32)
    dense = _block_sparse(48, 64, block, 0.5, torch.float32, seed=1)
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=block).to(DEVICE)
    a = torch.randn(48, 20).to(dtype).to(DEVICE)
    b = torch.randn(64, 20).to(dtype).to(DEVICE)
    out = T.bsr_sddmm(w.crow_indices, w.col_indices, a, b, *block)
    full = a.cpu().double() @ b.cpu().double().t()
    ref = sm.SparseWeight.from_dense(full, mask=dense != 0, format="bsr", block=block).values
    assert out.shape == ref.shape
    assert _rel(out.cpu(), ref) < TOL[dtype]


def _bsr_case(cols: int, batch: int, seed: int):
    """A float64 BSR weight [32, cols] (16x16 blocks) and leaf values, input [batch, cols] and bias."""
    dense = _block_sparse(32, cols, (16, 16), 0.6, torch.float64, seed=seed)
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=(16, 16)).to(DEVICE)
    values = w.values.clone().requires_grad_()
    x = torch.randn(batch, cols, dtype=torch.float64, device=DEVICE, requires_grad=True)
    bias = torch.randn(32, dtype=torch.float64, device=DEVICE, requires_grad=True)
    return w, values, x, bias


def test_bsr_gradients_match_reference():
    w, values, x, bias = _bsr_case(48, 5, seed=2)
    grads = {}
    for backend in ("triton", "reference"):
        y = sm.ops.sparse_linear(x, w.with_values(values), bias, backend=backend)
        grads[backend] = torch.autograd.grad((y * y).sum(), (x, values, bias))
    for got, ref in zip(grads["triton"], grads["reference"], strict=True):
        torch.testing.assert_close(got, ref)


def test_bsr_ops_gradcheck():
    w, values, x, bias = _bsr_case(32, 3, seed=4)
    crow, col = w.crow_indices, w.col_indices
    assert torch.autograd.gradcheck(lambda x, v, b: T.bsr_linear(x, crow, col, v, b), (x, values, bias), fast_mode=True)
    xs = torch.randn(32, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, x: T.bsr_spmm(crow, col, v, x, None), (values, xs), fast_mode=True)


def test_bsr_opcheck():
    dense = _block_sparse(32, 32, (16, 16), 0.6, torch.float32, seed=5)
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=(16, 16)).to(DEVICE)
    x = torch.randn(4, 32, device=DEVICE)
    bias = torch.randn(32, device=DEVICE)
    tests = OPCHECKS
    torch.library.opcheck(
        torch.ops.sparsemia.triton_bsr_linear.default, (x, w.crow_indices, w.col_indices, w.values, bias), test_utils=tests
    )
    torch.library.opcheck(
        torch.ops.sparsemia.triton_bsr_sddmm.default, (w.crow_indices, w.col_indices, x.t(), x.t(), 16, 16), test_utils=tests
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("fmt", ["csr", "nm"])
def test_csr_and_nm_match_reference(dtype, fmt):
    dense = _unstructured(24, 40, 0.3, torch.float32)
    if fmt == "nm":
        dense = torch.randn(24, 40)
        groups = dense.reshape(24, 10, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, -1).indices, True)
        dense = dense * keep.reshape(24, 40)
    w = sm.SparseWeight.from_dense(dense.to(dtype), format=fmt).to(DEVICE)
    x = torch.randn(7, 40).to(dtype).to(DEVICE)
    bias = torch.randn(24).to(dtype).to(DEVICE)
    ref = x.cpu().double() @ dense.to(dtype).double().t() + bias.cpu().double()
    assert _rel(sm.ops.sparse_linear(x, w, bias, backend="triton").cpu(), ref) < TOL[dtype]
    assert _rel(sm.ops.spmm(w, x.t(), backend="triton").cpu(), (ref - bias.cpu().double()).t()) < TOL[dtype]


def test_stacked_matches_per_model_reference_with_gradients():
    weights = [sm.SparseWeight.from_dense(_unstructured(20, 24, 0.3, torch.float64, seed=g)).to(DEVICE) for g in range(3)]
    x = torch.randn(3, 5, 24, dtype=torch.float64, device=DEVICE, requires_grad=True)
    bias = torch.randn(3, 20, dtype=torch.float64, device=DEVICE, requires_grad=True)
    crow, col, values = sm.SparseWeight.stack_csr(weights)
    values = values.clone().requires_grad_()
    y = T.stacked_csr_linear(x, crow, col, values, bias)
    dense = [w.with_values(v).to_dense() for w, v in zip(weights, values.split([w.nnz for w in weights]), strict=True)]
    ref = torch.stack([torch.nn.functional.linear(x[g], dense[g], bias[g]) for g in range(3)])
    torch.testing.assert_close(y, ref)
    got = torch.autograd.grad((y * y).sum(), (x, bias, values))
    want = torch.autograd.grad((ref * ref).sum(), (x, bias, values))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_stacked_gradcheck_and_opcheck():
    weights = [sm.SparseWeight.from_dense(_unstructured(6, 8, 0.4, torch.float64, seed=g)).to(DEVICE) for g in range(2)]
    crow, col, values = sm.SparseWeight.stack_csr(weights)
    x = torch.randn(2, 3, 8, dtype=torch.float64, device=DEVICE, requires_grad=True)
    values = values.clone().requires_grad_()
    op = T.stacked_csr_linear
    assert torch.autograd.gradcheck(lambda x, v: op(x, crow, col, v, None), (x, values))
    bias = torch.randn(2, 6, dtype=torch.float64, device=DEVICE)
    torch.library.opcheck(
        torch.ops.sparsemia.triton_stacked_csr_linear.default, (x.detach(), crow, col, values.detach(), bias),
        test_utils=OPCHECKS,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_masked_linear_matches_reference_and_keeps_pruned_blocks_at_zero(dtype):
    block = (16, 32)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 70, generator=g).to(dtype).to(DEVICE).requires_grad_()
    block_mask = (torch.rand(3, 3, generator=g) < 0.5).to(DEVICE)
    x = torch.randn(2, 6, 70, generator=g).to(dtype).to(DEVICE).requires_grad_()
    bias = torch.randn(40, generator=g).to(dtype).to(DEVICE).requires_grad_()
    res = {}
    for backend in ("triton", "reference"):
        y = sm.ops.masked_linear(x, weight, block_mask, bias, block=block, backend=backend)
        res[backend] = (y, *torch.autograd.grad(y.float().square().sum(), (x, weight, bias)))
    for got, ref in zip(res["triton"], res["reference"], strict=True):
        assert _rel(got.cpu(), ref.cpu()) < 10 * TOL[dtype]
    pruned = ~sm.ops.expand_block_mask(block_mask, block, (40, 70))
    assert bool((res["triton"][2][pruned] == 0).all())


def test_masked_linear_gradcheck_and_validation():
    weight = torch.randn(32, 32, dtype=torch.float64, device=DEVICE, requires_grad=True)
    block_mask = torch.tensor([[True, False], [False, True]], device=DEVICE)
    x = torch.randn(3, 32, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: sm.ops.masked_linear(x, w, block_mask, block=(16, 16), backend="triton"), (x, weight), fast_mode=True
    )
    with pytest.raises(ValueError, match="block_mask"):
        sm.ops.masked_linear(x, weight, block_mask[:1], block=(16, 16))
    with pytest.raises(BackendUnavailableError, match="block"):
        sm.ops.masked_linear(x, weight, torch.ones(4, 4, dtype=torch.bool, device=DEVICE), block=(8, 8), backend="triton")


def test_transpose_pattern_matches_cpu_operator():
    dense = _unstructured(9, 13, 0.3, torch.float32, seed=7)
    dense[4] = 0
    w = sm.SparseWeight.from_dense(dense)
    crow_t, col_t, perm = sm.formats.transpose_pattern(w.crow_indices, w.col_indices, 13)
    assert torch.equal(crow_t, sm.SparseWeight.from_dense(dense.t().contiguous()).crow_indices)
    assert torch.equal(col_t, sm.SparseWeight.from_dense(dense.t().contiguous()).col_indices)
    assert torch.equal(w.values[perm], sm.SparseWeight.from_dense(dense.t().contiguous()).values)


def test_dispatch_rules():
    w = sm.SparseWeight.from_dense(_block_sparse(32, 32, (4, 4), 0.5, torch.float32), format="bsr", block=(4, 4))
    x = torch.randn(32, 3)
    with pytest.raises(BackendUnavailableError, match="block"):
        sm.ops.spmm(w.to(DEVICE), x.to(DEVICE), backend="triton")
    if DEVICE == "cpu":
        # Under the interpreter the triton backend runs only when asked for.
        assert sm.ops.select_backend("spmm", w, x).backend != "triton"


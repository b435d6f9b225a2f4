"""The cuda backend (CUDA extension kernels, torch's 2:4 path) against the fp64 CPU reference.

Skipped without a CUDA device or without an extension built with CUDA."""

from __future__ import annotations

import pytest
import torch

import sparsemia as sm
from sparsemia import ops

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(
        ops.extension.module() is None or not ops.extension.module().with_cuda(), reason="sparsemia._C was built without CUDA (CPU-only torch or no nvcc)"
    ),
]

TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def _sparse(rows: int, cols: int, keep: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < keep)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 96, 256), (33, 70, 5), (128, 40, 1), (7, 300, 64)])
def test_csr_spmm_and_linear(dtype, shape):
    M, K, N = shape
    dense = _sparse(M, K, 0.1).to(dtype)
    w = sm.SparseWeight.from_dense(dense).cuda()
    x = torch.randn(K, N).to(dtype).cuda()
    assert _rel(sm.ops.spmm(w, x, backend="cuda"), dense.double() @ x.double().cpu()) < TOL[dtype]
    xb = torch.randn(N, K).to(dtype).cuda()
    bias = torch.randn(M).to(dtype).cuda()
    ref = xb.double().cpu() @ dense.double().t() + bias.double().cpu()
    assert _rel(sm.ops.sparse_linear(xb, w, bias, backend="cuda"), ref) < TOL[dtype]


def test_unaligned_and_strided_operands_use_the_scalar_path():
    dense = _sparse(50, 64, 0.2)
    w = sm.SparseWeight.from_dense(dense).cuda()
    x = torch.randn(65, 33, device="cuda")[1:, 1:]  # misaligned rows, odd width
    assert _rel(sm.ops.spmm(w, x, backend="cuda"), dense.double() @ x.double().cpu()) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_stacked_models(dtype):
    weights = [sm.SparseWeight.from_dense(_sparse(48, 80, 0.1, seed=g).to(dtype)).cuda() for g in range(5)]
    x = torch.randn(5, 9, 80).to(dtype).cuda()
    bias = torch.randn(5, 48).to(dtype).cuda()
    ref = torch.stack([x[g].double().cpu() @ weights[g].to("cpu", torch.float64).to_dense().t() for g in range(5)])
    ref = ref + bias.double().cpu()[:, None, :]
    out = torch.ops.sparsemia.stacked_csr_linear(x, *sm.SparseWeight.stack_csr(weights), bias)
    assert _rel(out, ref) < TOL[dtype]


def test_sddmm_and_transpose_match_cpu():
    dense = _sparse(40, 30, 0.2, seed=1).double()
    w = sm.SparseWeight.from_dense(dense)
    a, b = torch.randn(40, 17, dtype=torch.float64), torch.randn(30, 17, dtype=torch.float64)
    cpu = torch.ops.sparsemia.csr_sddmm(w.crow_indices, w.col_indices, a, b)
    gpu = torch.ops.sparsemia.csr_sddmm(w.crow_indices.cuda(), w.col_indices.cuda(), a.cuda(), b.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu)
    for got, ref in zip(torch.ops.sparsemia.csr_transpose(w.crow_indices.cuda(), w.col_indices.cuda(), 30),
                        torch.ops.sparsemia.csr_transpose(w.crow_indices, w.col_indices, 30), strict=True):
        assert torch.equal(got.cpu(), ref)


def test_gradcheck_and_opcheck():
    dense = _sparse(12, 10, 0.4, seed=2).double()
    w = sm.SparseWeight.from_dense(dense).cuda()
    crow, col = w.crow_indices, w.col_indices
    values = w.values.clone().requires_grad_()
    x = torch.randn(4, 10, dtype=torch.float64, device="cuda", requires_grad=True)
    bias = torch.randn(12, dtype=torch.float64, device="cuda", requires_grad=True)
    lin = torch.ops.sparsemia.csr_linear
    assert torch.autograd.gradcheck(lambda x, v, b: lin(x, crow, col, v, b), (x, values, bias))
    xs = torch.randn(10, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, x: torch.ops.sparsemia.csr_spmm(crow, col, v, x), (values, xs))
    torch.library.opcheck(lin.default, (x.detach(), crow, col, values.detach(), bias.detach()))
    torch.library.opcheck(torch.ops.sparsemia.csr_spmm.default, (crow, col, values.detach(), xs.detach()))
    a = torch.randn(12, 5, dtype=torch.float64, device="cuda")
    b = torch.randn(10, 5, dtype=torch.float64, device="cuda")
    torch.library.opcheck(torch.ops.sparsemia.csr_sddmm.default, (crow, col, a, b))


def test_auto_dispatch_and_override(monkeypatch):
    w = sm.SparseWeight.from_dense(_sparse(64, 64, 0.05)).cuda()
    x = torch.randn(64, 8, device="cuda")
    assert ops.select_backend("spmm", w, x).backend == "cuda"
    dense_ish = sm.SparseWeight.from_dense(_sparse(64, 64, 0.9)).cuda()
    assert ops.select_backend("spmm", dense_ish, x).backend == "reference"
    monkeypatch.setenv("SPARSEMIA_BACKEND", "triton")
    assert ops.select_backend("spmm", w, x).backend == "triton"


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 0), reason="2:4 needs sm_80+")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_two_four_through_semi_structured(dtype):
    dense = torch.randn(128, 128)
    groups = dense.reshape(128, 32, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, -1).indices, True)
    dense = (dense * keep.reshape(128, 128)).to(dtype)
    w = sm.SparseWeight.from_dense(dense, format="nm", n=2, m=4).cuda()
    x = torch.randn(64, 128).to(dtype).cuda()
    with torch.no_grad():
        y = sm.ops.sparse_linear(x, w)
    assert _rel(y, x.double().cpu() @ dense.double().t()) < TOL[dtype]

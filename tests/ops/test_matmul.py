"""sparsemia.ops against plain torch: every format, backend and ISA, edge cases,
gradcheck, opcheck, backend selection and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsemia as sm
from sparsemia.formats import SparseWeight
from sparsemia.ops import BackendUnavailableError
from tests.conftest import random_pruned
from tests.test_formats import nm_pruned

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FORMATS = [("csr", {}), ("bsr", {"block": (4, 4)}), ("bsr", {"block": (1, 8)}), ("bsr", {"block": (8, 1)}),
           ("bsr", {"block": (16, 16)}), ("bsr", {"block": (3, 5)})]
SHAPES = [(1, 1, 1), (37, 19, 5), (64, 128, 16), (33, 70, 67), (130, 64, 1), (16, 16, 300)]  # (M, K, N)


def tol(dtype):
    return {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}


def make_weight(rows, cols, fmt, kw, sparsity=0.8, dtype=torch.float32, empty_rows=0):
    if fmt == "nm":
        return nm_pruned(rows, cols, dtype=dtype)
    return random_pruned(rows, cols, sparsity, dtype=dtype, empty_rows=empty_rows)


@pytest.mark.parametrize("fmt,kw", FORMATS)
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spmm_and_linear_match_dense(isa, fmt, kw, M, K, N, dtype):
    dense = make_weight(M, K, fmt, kw, dtype=dtype, empty_rows=M // 4)
    w = SparseWeight.from_dense(dense, format=fmt, **kw)
    x = torch.randn(K, N, dtype=dtype)
    torch.testing.assert_close(sm.ops.spmm(w, x, backend="cpu"), dense @ x, **tol(dtype))
    xb = torch.randn(N, K, dtype=dtype)
    bias = torch.randn(M, dtype=dtype)
    torch.testing.assert_close(sm.ops.sparse_linear(xb, w, bias, backend="cpu"), F.linear(xb, dense, bias), **tol(dtype))
    torch.testing.assert_close(sm.ops.sparse_linear(xb, w, backend="cpu"), F.linear(xb, dense), **tol(dtype))


@pytest.mark.parametrize("N", [1, 2, 7, 8, 16, 17, 33, 64, 65, 129])
def test_every_tile_width_and_tail(isa, N):
    dense = random_pruned(45, 83, 0.7, empty_rows=5)
    x = torch.randn(N, 83)
    for fmt, kw in (("csr", {}), ("bsr", {"block": (4, 4)}), ("bsr", {"block": (2, 1)})):
        w = SparseWeight.from_dense(dense, format=fmt, **kw)
        torch.testing.assert_close(sm.ops.sparse_linear(x, w, backend="cpu"), F.linear(x, dense), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("N", [16, 40, 64, 100, 130])
@pytest.mark.parametrize("sparsity", [0.5, 0.95, 0.995])
def test_cache_blocked_path(isa, N, sparsity):
    # K large enough that the kernels block over W's columns (rows of X).
    dense = random_pruned(70, 1000, sparsity, empty_rows=7)
    w = SparseWeight.from_dense(dense)
    x = torch.randn(N, 1000)
    bias = torch.randn(70)
    torch.testing.assert_close(sm.ops.sparse_linear(x, w, bias, backend="cpu"), F.linear(x, dense, bias),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sm.ops.spmm(w, x.t(), backend="cpu"), dense @ x.t(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sparsity", [0.0, 1.0])
@pytest.mark.parametrize("fmt,kw", FORMATS[:3])
def test_fully_dense_and_all_zero(isa, sparsity, fmt, kw):
    dense = random_pruned(24, 40, sparsity)
    w = SparseWeight.from_dense(dense, format=fmt, **kw)
    x = torch.randn(9, 40)
    bias = torch.randn(24)
    torch.testing.assert_close(sm.ops.sparse_linear(x, w, bias, backend="cpu"), F.linear(x, dense, bias), atol=1e-4, rtol=1e-4)


def test_nm_runs_on_the_cpu_kernels(isa):
    dense = nm_pruned(32, 64)
    w = SparseWeight.from_dense(dense, format="nm")
    x = torch.randn(5, 64)
    torch.testing.assert_close(sm.ops.sparse_linear(x, w, backend="cpu"), F.linear(x, dense))


def test_int64_indices(isa):
    dense = random_pruned(30, 50, 0.8)
    w32 = SparseWeight.from_dense(dense)
    w = SparseWeight("csr", w32.shape, w32.values, w32.crow_indices.long(), w32.col_indices.long())
    x = torch.randn(50, 6)
    torch.testing.assert_close(sm.ops.spmm(w, x, backend="cpu"), dense @ x)
    wb = SparseWeight.from_dense(dense, format="bsr", block=(2, 5))
    wb = SparseWeight("bsr", wb.shape, wb.values, wb.crow_indices.long(), wb.col_indices.long(), block=(2, 5))
    torch.testing.assert_close(sm.ops.spmm(wb, x, backend="cpu"), dense @ x)


def test_non_contiguous_transposed_and_batched_inputs():
    dense = random_pruned(20, 30, 0.6)
    w = SparseWeight.from_dense(dense)
    x = torch.randn(30, 12)[:, ::2]  # strided columns
    torch.testing.assert_close(sm.ops.spmm(w, x), dense @ x)
    xt = torch.randn(12, 30).t()  # transposed storage
    torch.testing.assert_close(sm.ops.spmm(w, xt), dense @ xt)
    xb = torch.randn(3, 4, 60)[..., ::2]  # leading dims, non-contiguous
    torch.testing.assert_close(sm.ops.sparse_linear(xb, w), F.linear(xb, dense))
    empty = torch.randn(0, 30)
    assert sm.ops.sparse_linear(empty, w).shape == (0, 20)
    assert sm.ops.spmm(w, torch.randn(30, 0)).shape == (20, 0)


@pytest.mark.skipif((torch.get_num_threads() < 2), reason="needs two intra-op threads")
def test_kernel_loops_run_on_torchs_threads():
    # the kernels' at::parallel_for loops must really be split (compiled with OpenMP
    # when ATen uses it), and must follow torch.set_num_threads
    from sparsemia import _C

    threads = torch.get_num_threads()
    try:
        assert _C.parallel_threads_used() == threads
        torch.set_num_threads(1)
        assert _C.parallel_threads_used() == 1
    finally:
        torch.set_num_threads(threads)


def test_large_matrix_uses_several_panels_and_threads():
    dense = random_pruned(512, 1024, 0.9)
    x = torch.randn(300, 1024)
    for fmt, kw in (("csr", {}), ("bsr", {"block": (4, 4)})):
        w = SparseWeight.from_dense(dense, format=fmt, **kw)
        torch.testing.assert_close(sm.ops.sparse_linear(x, w), F.linear(x, dense), atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(sm.ops.spmm(w, x.t()), dense @ x.t(), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("fmt,kw", FORMATS[:2] + [("bsr", {"block": (3, 5)}), ("nm", {})])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck(fmt, kw, backend):
    dense = make_weight(9, 20, fmt, kw, 0.6, torch.float64, empty_rows=2)
    w = SparseWeight.from_dense(dense, format=fmt, **kw)
    x = torch.randn(4, 20, dtype=torch.float64, requires_grad=True)
    values = w.values.clone().requires_grad_()
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, v, b: sm.ops.sparse_linear(x, w.with_values(v), b, backend=backend), (x, values, bias)
    )
    assert torch.autograd.gradcheck(lambda x, v: sm.ops.spmm(w.with_values(v), x.t(), backend=backend), (x, values))


def test_weight_gradient_only_at_stored_entries():
    dense = random_pruned(16, 24, 0.75)
    w = SparseWeight.from_dense(dense)
    values = w.values.clone().requires_grad_()
    x = torch.randn(5, 24)
    sm.ops.sparse_linear(x, w.with_values(values)).sum().backward()
    dense_w = dense.clone().requires_grad_()
    F.linear(x, dense_w).sum().backward()
    assert values.grad.shape == values.shape
    torch.testing.assert_close(values.grad, dense_w.grad[dense != 0])


@pytest.mark.parametrize("fmt,kw", [("csr", {}), ("bsr", {"block": (4, 4)})], ids=["csr", "bsr"])
def test_inference_calls_skip_autograd_and_training_calls_keep_it(fmt, kw):
    # calls that need no gradient go straight to the kernel; the result is the same either way
    w = SparseWeight.from_dense(random_pruned(24, 40, 0.8), format=fmt, **kw)
    x, bias = torch.randn(3, 40), torch.randn(24)
    ref = F.linear(x, w.to_dense(), bias)
    with torch.no_grad():
        torch.testing.assert_close(sm.ops.sparse_linear(x, w, bias), ref)
    with torch.inference_mode():
        torch.testing.assert_close(sm.ops.sparse_linear(x, w, bias), ref)
    y = sm.ops.sparse_linear(x, w, bias)  # grad mode, nothing requires grad
    assert y.grad_fn is None
    torch.testing.assert_close(y, ref)
    values = w.values.clone().requires_grad_(True)
    y = sm.ops.sparse_linear(x, w.with_values(values), bias)
    assert y.grad_fn is not None
    y.sum().backward()
    assert values.grad is not None and values.grad.shape == values.shape


def test_stacked_linear_matches_per_model_and_gradcheck():
    weights = [SparseWeight.from_dense(random_pruned(12, 10, s, torch.float64)) for s in (0.2, 0.9, 1.0)]
    x = torch.randn(3, 4, 10, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    crow, col, values = SparseWeight.stack_csr(weights)
    y = torch.ops.sparsemia.stacked_csr_linear(x, crow, col, values, bias)
    ref = torch.stack([F.linear(x[g], weights[g].to_dense(), bias[g]) for g in range(3)])
    torch.testing.assert_close(y, ref)
    values = values.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, v, b: torch.ops.sparsemia.stacked_csr_linear(x, crow, col, v, b), (x, values, bias)
    )


def _opcheck_cases():
    dense = random_pruned(12, 16, 0.6, torch.float64, empty_rows=2)
    csr = SparseWeight.from_dense(dense)
    bsr = SparseWeight.from_dense(dense, format="bsr", block=(4, 4))
    x = torch.randn(5, 16, dtype=torch.float64, requires_grad=True)
    xk = torch.randn(16, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64, requires_grad=True)
    cv = csr.values.clone().requires_grad_()
    bv = bsr.values.clone().requires_grad_()
    ops = torch.ops.sparsemia
    stacked = SparseWeight.stack_csr([csr, SparseWeight.from_dense(random_pruned(12, 16, 0.9, torch.float64))])
    return [
        (ops.csr_linear.default, (x, csr.crow_indices, csr.col_indices, cv, b)),
        (ops.csr_linear.default, (x, csr.crow_indices, csr.col_indices, cv, None)),
        (ops.csr_spmm.default, (csr.crow_indices, csr.col_indices, cv, xk)),
        (ops.csr_sddmm.default, (csr.crow_indices, csr.col_indices, torch.randn(12, 3, dtype=torch.float64),
                                 torch.randn(16, 3, dtype=torch.float64))),
        (ops.csr_transpose.default, (csr.crow_indices, csr.col_indices, 16)),
        (ops.bsr_linear.default, (x, bsr.crow_indices, bsr.col_indices, bv, b)),
        (ops.bsr_spmm.default, (bsr.crow_indices, bsr.col_indices, bv, xk)),
        (ops.bsr_sddmm.default, (bsr.crow_indices, bsr.col_indices, torch.randn(12, 3, dtype=torch.float64),
                                 torch.randn(16, 3, dtype=torch.float64), 4, 4)),
        (ops.stacked_csr_linear.default, (torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True),
                                          stacked[0], stacked[1], stacked[2].clone().requires_grad_(), None)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_transpose_matches_torch():
    dense = random_pruned(13, 29, 0.7, empty_rows=3)
    w = SparseWeight.from_dense(dense)
    crow_t, col_t, perm = torch.ops.sparsemia.csr_transpose(w.crow_indices, w.col_indices, 29)
    wt = SparseWeight("csr", (29, 13), w.values[perm], crow_t, col_t)  # validates sortedness
    torch.testing.assert_close(wt.to_dense(), dense.t())


def test_torch_compile_through_the_ops():
    lin = torch.nn.Linear(32, 16)
    with torch.no_grad():
        lin.weight[torch.rand(16, 32) < 0.8] = 0
    model = torch.nn.Sequential(sm.nn.SparseLinear.from_dense(lin), torch.nn.ReLU())
    x = torch.randn(4, 32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


# ---------------------------------------------------------------- selection


def test_auto_selection_and_overrides(monkeypatch):
    w = SparseWeight.from_dense(random_pruned(8, 8, 0.5))
    x = torch.randn(8, 2)
    assert sm.ops.select_backend("spmm", w, x).backend == "cpu"
    assert sm.ops.select_backend("spmm", w, x, backend="reference").backend == "reference"
    monkeypatch.setenv("SPARSEMIA_BACKEND", "reference")
    assert sm.ops.select_backend("spmm", w, x).backend == "reference"
    monkeypatch.setenv("SPARSEMIA_BACKEND", "fastest")
    with pytest.raises(ValueError, match="SPARSEMIA_BACKEND"):
        sm.ops.spmm(w, x)


def test_half_precision_uses_reference_and_cpu_refuses():
    dense = random_pruned(8, 8, 0.5).to(torch.bfloat16)
    w = SparseWeight.from_dense(dense)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    torch.testing.assert_close(sm.ops.sparse_linear(x, w), F.linear(x, dense))
    with pytest.raises(BackendUnavailableError, match="float32 or float64"):
        sm.ops.sparse_linear(x, w, backend="cpu")


def test_unavailable_backend_is_an_error():
    w = SparseWeight.from_dense(random_pruned(8, 8, 0.5))
    with pytest.raises(BackendUnavailableError):
        sm.ops.spmm(w, torch.randn(8, 2), backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        sm.ops.spmm(w, torch.randn(8, 2), backend="fortran")


def test_bad_inputs_name_the_argument():
    w = SparseWeight.from_dense(random_pruned(8, 6, 0.5))
    with pytest.raises(TypeError, match="w: expected a sparsemia.SparseWeight"):
        sm.ops.spmm(torch.randn(8, 6), torch.randn(6, 2))
    with pytest.raises(ValueError, match=r"x: expected shape \(6, N\)"):
        sm.ops.spmm(w, torch.randn(5, 2))
    with pytest.raises(TypeError, match="x: expected dtype torch.float32"):
        sm.ops.spmm(w, torch.randn(6, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="x: expected device"):
        sm.ops.spmm(w, torch.randn(6, 2, device="meta"))
    with pytest.raises(ValueError, match="x: expected last dimension 6"):
        sm.ops.sparse_linear(torch.randn(3, 5), w)
    with pytest.raises(ValueError, match=r"bias: expected shape \(8,\)"):
        sm.ops.sparse_linear(torch.randn(3, 6), w, torch.randn(7))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        sm.ops.sparse_linear([1.0] * 6, w)


def test_kernel_level_checks_reject_bad_tensors():
    w = SparseWeight.from_dense(random_pruned(8, 6, 0.5))
    with pytest.raises(RuntimeError, match="int32 or both int64"):
        torch.ops.sparsemia.csr_linear(torch.randn(2, 6), w.crow_indices.long(), w.col_indices, w.values, None)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.sparsemia.csr_linear(torch.randn(2, 6).half(), w.crow_indices, w.col_indices, w.values.half(), None)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        torch.ops.sparsemia.csr_linear(torch.randn(2, 6), w.crow_indices, w.col_indices, w.values, torch.randn(3))


def test_forcing_an_isa_the_cpu_lacks_is_an_error():
    from sparsemia import _C

    with pytest.raises(ValueError, match="isa"):
        _C.set_cpu_isa("sse9")


def test_calls_above_the_parallel_threshold_match_on_one_and_two_threads():
    # kMinParallelWork (csrc/cpu/spmm/spmm_cpu.cpp) is 2^18 multiply-adds; these calls (about 2e6)
    # run split over threads, the small ones elsewhere in this file on the calling thread
    weights = [SparseWeight.from_dense(random_pruned(256, 256, 0.5, torch.float64)) for _ in range(4)]
    x = torch.randn(4, 16, 256, dtype=torch.float64)
    bias = torch.randn(4, 256, dtype=torch.float64)
    stacked = SparseWeight.stack_csr(weights)
    ref = torch.stack([F.linear(x[g], weights[g].to_dense(), bias[g]) for g in range(4)])
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.testing.assert_close(torch.ops.sparsemia.stacked_csr_linear(x, *stacked, bias), ref)
            torch.testing.assert_close(sm.ops.sparse_linear(x[0], weights[0], bias[0]), ref[0])
    finally:
        torch.set_num_threads(threads)

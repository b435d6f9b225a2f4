"""Block-sparse (BSR) weight times dense activations on tensor cores, and its SDDMM.

A BSR weight is ``crow [Mb+1]``, ``col [nblocks]`` (block columns, sorted) and
``values [nblocks, R, C]``, as in :class:`sparsemia.SparseWeight`; ``R`` and ``C``
are each 16, 32, 64 or 128, the sizes ``tl.dot`` tiles well. Products are
accumulated in fp32 (fp64 for fp64 inputs) and rounded once at the end.

Launchers (the ``torch.ops.sparsemia.triton_bsr_*`` operators that call them, with their
autograd, are in :mod:`sparsemia.ops.backends.triton`):

* :func:`bsr_mm`: ``Y = W @ X`` for X, Y given by strides (so ``x @ W^T`` needs no copies).
* :func:`bsr_sddmm`: ``(a @ b^T)`` at the stored blocks only, the weight gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .common import acc_dtype, block_row_of, configs, dot_precision, interpreter_upcast

__all__ = ["BLOCK_SIZES", "bsr_mm", "bsr_sddmm"]

BLOCK_SIZES = (16, 32, 64, 128)



# Grid: axis 0 walks block rows (fastest), axis 1 column tiles of the output, so
# CTAs that run together share one column tile of x in L2.
@triton.autotune(
    configs=configs([{"BLOCK_N": 32}, {"BLOCK_N": 64}, {"BLOCK_N": 128}, {"BLOCK_N": 256}]),
    key=["N", "R", "C"],
)
@triton.jit
def _bsr_mm_kernel(
    crow_ptr, col_ptr, values_ptr, x_ptr, bias_ptr, y_ptr,
    N,
    stride_xk, stride_xn, stride_ym, stride_yn,
    R: tl.constexpr, C: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    start = tl.load(crow_ptr + pid_m).to(tl.int64)
    end = tl.load(crow_ptr + pid_m + 1).to(tl.int64)
    offs_r = tl.arange(0, R)
    offs_c = tl.arange(0, C)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n[None, :] < N
    x_cols = offs_n[None, :].to(tl.int64) * stride_xn
    w_tile = offs_r[:, None] * C + offs_c[None, :]
    acc = tl.zeros((R, BLOCK_N), dtype=ACC)
    for p in range(start, end):
        kb = tl.load(col_ptr + p).to(tl.int64)
        w = tl.load(values_ptr + p * (R * C) + w_tile)
        x_rows = (kb * C + offs_c[:, None]) * stride_xk
        xt = tl.load(x_ptr + x_rows + x_cols, mask=n_ok, other=0.0)
        if UPCAST:
            w = w.to(tl.float32)
            xt = xt.to(tl.float32)
        acc += tl.dot(w, xt, input_precision=PRECISION, out_dtype=ACC)
    rows = pid_m.to(tl.int64) * R + offs_r
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows).to(ACC)[:, None]
    out = y_ptr + rows[:, None] * stride_ym + offs_n[None, :].to(tl.int64) * stride_yn
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=n_ok)


# One program per stored block: find its block row by binary search in crow,
# then reduce a[rows, :] @ b[cols, :]^T over N in chunks.
@triton.autotune(configs=configs([{"BLOCK_K": 32}, {"BLOCK_K": 64}, {"BLOCK_K": 128}]), key=["N", "R", "C"])
@triton.jit
def _bsr_sddmm_kernel(
    crow_ptr, col_ptr, a_ptr, b_ptr, out_ptr,
    n_block_rows, N,
    stride_am, stride_an, stride_bk, stride_bn,
    R: tl.constexpr, C: tl.constexpr, BLOCK_K: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    lo = block_row_of(crow_ptr, p, n_block_rows)
    kb = tl.load(col_ptr + p).to(tl.int64)
    offs_r = tl.arange(0, R)
    offs_c = tl.arange(0, C)
    offs_k = tl.arange(0, BLOCK_K)
    a_rows = a_ptr + (lo.to(tl.int64) * R + offs_r)[:, None] * stride_am
    b_rows = b_ptr + (kb * C + offs_c)[:, None] * stride_bk
    acc = tl.zeros((R, C), dtype=ACC)
    for k0 in range(0, N, BLOCK_K):
        ks = k0 + offs_k
        k_ok = ks[None, :] < N
        a = tl.load(a_rows + ks[None, :].to(tl.int64) * stride_an, mask=k_ok, other=0.0)
        b = tl.load(b_rows + ks[None, :].to(tl.int64) * stride_bn, mask=k_ok, other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc += tl.dot(a, tl.trans(b), input_precision=PRECISION, out_dtype=ACC)
    out = out_ptr + p * (R * C) + offs_r[:, None] * C + offs_c[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty))


def bsr_mm(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None,
    y: torch.Tensor, x_strides: tuple[int, int], y_strides: tuple[int, int], n: int,
) -> None:
    """Y = W @ X (+ bias per row) into ``y``, X and Y given by (row, column) strides over ``n``
    columns; ``values [nblocks, R, C]`` contiguous."""
    n_block_rows = crow.numel() - 1
    R, C = values.shape[1], values.shape[2]
    if n_block_rows == 0 or n == 0:
        return

    def grid(meta):
        return (n_block_rows, triton.cdiv(n, meta["BLOCK_N"]))

    wrap_triton(_bsr_mm_kernel)[grid](
        crow, col, values, x, bias if bias is not None else values, y,
        n,
        x_strides[0], x_strides[1], y_strides[0], y_strides[1],
        R=R, C=C, HAS_BIAS=bias is not None, ACC=acc_dtype(values.dtype), PRECISION=dot_precision(values.dtype),
        UPCAST=interpreter_upcast(values.dtype),
    )


def bsr_sddmm(crow: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> None:
    """``out [nblocks, R, C]`` = ``(a @ b^T)`` at the stored blocks: ``a [Mb*R, N]``, ``b [Kb*C, N]``
    any strides. Block ``p`` is ``a[r*R:(r+1)*R] @ b[k*C:(k+1)*C]^T`` with ``r`` its block row and
    ``k = col[p]``; ``crow`` starts at 0."""
    nblocks, n_block_rows = col.shape[0], crow.shape[0] - 1
    R, C = out.shape[1], out.shape[2]
    if nblocks == 0:
        return
    if a.shape[1] == 0:
        out.zero_()
        return
    wrap_triton(_bsr_sddmm_kernel)[(nblocks,)](
        crow, col, a, b, out,
        n_block_rows, a.shape[1],
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        R=R, C=C, ACC=acc_dtype(a.dtype), PRECISION=dot_precision(a.dtype),
        UPCAST=interpreter_upcast(a.dtype),
    )

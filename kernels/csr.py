"""CSR weights times dense activations in Triton, for one model or ``G`` stacked ones.

The CUDA extension is the fast path for CSR on NVIDIA GPUs; these kernels serve
when it is not built, and run stacked models (each with its own sparsity
pattern) in one launch. One program computes one output row of one model for a
tile of the batch, gathering ``x[g, b, col[p]]`` for a chunk of the row's
nonzeros at a time; accumulation is in fp32 (fp64 for fp64).

Launchers (the ``torch.ops.sparsemia.triton_stacked_csr_*`` operators that call them, with
their autograd, are in :mod:`sparsemia.ops.backends.triton`):

* :func:`stacked_csr_linear`: ``y[g] = x[g] @ W_g^T + bias[g]`` for ``x [G, B, K]``,
  ``crow [G, M+1]`` (offsets into the shared ``col``/``values``, starting at
  ``crow[0, 0] == 0``), ``bias [G, M]``.
* :func:`stacked_csr_sddmm`: ``sum_b grad[g, b, i] * x[g, b, col[p]]`` for each stored
  entry ``p`` of row ``i`` of model ``g``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .common import acc_dtype, configs

__all__ = ["stacked_csr_linear", "stacked_csr_sddmm"]


@triton.autotune(
    configs=configs([{"BLOCK_B": 16, "BLOCK_NNZ": 32}, {"BLOCK_B": 32, "BLOCK_NNZ": 32}, {"BLOCK_B": 64, "BLOCK_NNZ": 16}],
                    stages=(1, 2)),
    key=["B", "M", "K"],
)
@triton.jit
def _csr_linear_kernel(
    x_ptr, crow_ptr, col_ptr, values_ptr, bias_ptr, y_ptr,
    B, M, K,
    stride_xg, stride_xb, stride_xk, stride_yg, stride_yb, stride_ym,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_NNZ: tl.constexpr,
):
    row = tl.program_id(0)
    pid_b = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    start = tl.load(crow_ptr + g * (M + 1) + row).to(tl.int64)
    end = tl.load(crow_ptr + g * (M + 1) + row + 1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = offs_b < B
    x_rows = x_ptr + g * stride_xg + offs_b[:, None].to(tl.int64) * stride_xb
    acc = tl.zeros((BLOCK_B,), dtype=ACC)
    for p0 in range(start, end, BLOCK_NNZ):
        offs_p = p0 + tl.arange(0, BLOCK_NNZ)
        p_ok = offs_p < end
        cols = tl.load(col_ptr + offs_p, mask=p_ok, other=0).to(tl.int64)
        vals = tl.load(values_ptr + offs_p, mask=p_ok, other=0.0).to(ACC)
        xv = tl.load(x_rows + cols[None, :] * stride_xk, mask=b_ok[:, None] & p_ok[None, :], other=0.0).to(ACC)
        acc += tl.sum(xv * vals[None, :], axis=1)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + g * M + row).to(ACC)
    out = y_ptr + g * stride_yg + offs_b.to(tl.int64) * stride_yb + row * stride_ym
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=b_ok)


@triton.autotune(
    configs=configs([{"BLOCK_B": 16, "BLOCK_NNZ": 32}, {"BLOCK_B": 64, "BLOCK_NNZ": 32}], stages=(1, 2)),
    key=["B", "M", "K"],
)
@triton.jit
def _csr_sddmm_kernel(
    grad_ptr, x_ptr, crow_ptr, col_ptr, out_ptr,
    B, M, K,
    stride_gg, stride_gb, stride_gm, stride_xg, stride_xb, stride_xk,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_NNZ: tl.constexpr,
):
    row = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    start = tl.load(crow_ptr + g * (M + 1) + row).to(tl.int64)
    end = tl.load(crow_ptr + g * (M + 1) + row + 1).to(tl.int64)
    for p0 in range(start, end, BLOCK_NNZ):
        offs_p = p0 + tl.arange(0, BLOCK_NNZ)
        p_ok = offs_p < end
        cols = tl.load(col_ptr + offs_p, mask=p_ok, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_NNZ,), dtype=ACC)
        for b0 in range(0, B, BLOCK_B):
            offs_b = b0 + tl.arange(0, BLOCK_B)
            b_ok = offs_b < B
            bb = offs_b.to(tl.int64)
            gr = tl.load(grad_ptr + g * stride_gg + bb * stride_gb + row * stride_gm, mask=b_ok, other=0.0).to(ACC)
            xv = tl.load(x_ptr + g * stride_xg + bb[:, None] * stride_xb + cols[None, :] * stride_xk,
                         mask=b_ok[:, None] & p_ok[None, :], other=0.0).to(ACC)
            acc += tl.sum(xv * gr[:, None], axis=0)
        tl.store(out_ptr + offs_p, acc.to(out_ptr.dtype.element_ty), mask=p_ok)


def stacked_csr_linear(
    x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
    y: torch.Tensor,
) -> None:
    """``y[g] = x[g] @ W_g^T (+ bias[g])`` into ``y [G, B, M]``: ``x [G, B, K]`` any strides,
    ``crow [G, M+1]``, ``col``/``values [nnz]`` shared by the ``G`` patterns, ``bias [G, M]``."""
    G, B, K = x.shape
    M = crow.shape[1] - 1
    if G == 0 or B == 0 or M == 0:
        return

    def grid(meta):
        return (M, triton.cdiv(B, meta["BLOCK_B"]), G)

    wrap_triton(_csr_linear_kernel)[grid](
        x, crow, col, values, bias.contiguous() if bias is not None else values, y,
        B, M, K,
        x.stride(0), x.stride(1), x.stride(2), y.stride(0), y.stride(1), y.stride(2),
        HAS_BIAS=bias is not None, ACC=acc_dtype(values.dtype),
    )


def stacked_csr_sddmm(
    crow: torch.Tensor, col: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor
) -> None:
    """The weight gradient at the stored entries into ``out [nnz]``: ``grad [G, B, M]``, ``x [G, B, K]``."""
    G, B, K = x.shape
    M = crow.shape[1] - 1
    if col.shape[0] == 0:
        return
    if B == 0:
        out.zero_()
        return
    wrap_triton(_csr_sddmm_kernel)[(M, G)](
        grad, x, crow, col, out,
        B, M, K,
        grad.stride(0), grad.stride(1), grad.stride(2), x.stride(0), x.stride(1), x.stride(2),
        ACC=acc_dtype(x.dtype),
    )

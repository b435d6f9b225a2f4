"""Dense weights under a block mask, for training with block sparsity.

While a block-pruned model trains, its weight stays a dense ``[M, K]`` tensor
(the optimizer's view) and a boolean ``block_mask [ceil(M/R), ceil(K/C)]``
says which ``R x C`` blocks are kept. These kernels compute with the masked
weight without materialising it and skip pruned blocks entirely, forward and
backward; the weight gradient is zero in pruned blocks, so masked training
keeps the pattern by construction. ``R`` and ``C`` are each 16, 32, 64 or 128.

Launchers :func:`masked_mm` and :func:`masked_weight_grad`; the public
:func:`sparsemia.ops.masked_linear` and the ``torch.ops.sparsemia.triton_masked_*``
operators (with their autograd) are in :mod:`sparsemia.ops`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .common import acc_dtype, configs, dot_precision, interpreter_upcast

__all__ = ["BLOCK_SIZES", "masked_mm", "masked_weight_grad"]

BLOCK_SIZES = (16, 32, 64, 128)


# Y = (W * mask) @ X with every operand given by strides, so y = x @ W^T and its input gradient
# (W^T, mask^T) run through the same kernel without copies.
@triton.autotune(configs=configs([{"BLOCK_N": 32}, {"BLOCK_N": 64}, {"BLOCK_N": 128}]), key=["M", "K", "N", "R", "C"])
@triton.jit
def _masked_mm_kernel(
    w_ptr, mask_ptr, x_ptr, bias_ptr, y_ptr,
    M, K, N,
    stride_wm, stride_wk, stride_mm, stride_mk, stride_xk, stride_xn, stride_ym, stride_yn,
    R: tl.constexpr, C: tl.constexpr, BLOCK_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * R + tl.arange(0, R)
    offs_c = tl.arange(0, C)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = rows < M
    n_ok = offs_n < N
    w_rows = w_ptr + rows[:, None].to(tl.int64) * stride_wm
    x_cols = x_ptr + offs_n[None, :].to(tl.int64) * stride_xn
    acc = tl.zeros((R, BLOCK_N), dtype=ACC)
    for kb in range(0, tl.cdiv(K, C)):
        if tl.load(mask_ptr + pid_m * stride_mm + kb * stride_mk) != 0:
            ks = kb * C + offs_c
            k_ok = ks < K
            w = tl.load(w_rows + ks[None, :] * stride_wk, mask=r_ok[:, None] & k_ok[None, :], other=0.0)
            xt = tl.load(x_cols + ks[:, None].to(tl.int64) * stride_xk, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if UPCAST:
                w = w.to(tl.float32)
                xt = xt.to(tl.float32)
            acc += tl.dot(w, xt, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rows, mask=r_ok, other=0.0).to(ACC)[:, None]
    out = y_ptr + rows[:, None].to(tl.int64) * stride_ym + offs_n[None, :].to(tl.int64) * stride_yn
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=r_ok[:, None] & n_ok[None, :])


# dW[rows, cols] = sum_b grad[b, rows] * x[b, cols] in kept blocks, 0 elsewhere.
@triton.autotune(configs=configs([{"BLOCK_B": 32}, {"BLOCK_B": 64}]), key=["M", "K", "B", "R", "C"])
@triton.jit
def _masked_weight_grad_kernel(
    grad_ptr, x_ptr, mask_ptr, out_ptr,
    M, K, B,
    stride_gb, stride_gm, stride_xb, stride_xk, stride_mm, stride_mk,
    R: tl.constexpr, C: tl.constexpr, BLOCK_B: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_m * R + tl.arange(0, R)
    cols = pid_k * C + tl.arange(0, C)
    r_ok = rows < M
    c_ok = cols < K
    acc = tl.zeros((R, C), dtype=ACC)
    if tl.load(mask_ptr + pid_m * stride_mm + pid_k * stride_mk) != 0:
        for b0 in range(0, B, BLOCK_B):
            bs = b0 + tl.arange(0, BLOCK_B)
            b_ok = bs < B
            bb = bs.to(tl.int64)
            gt = tl.load(grad_ptr + rows[:, None] * stride_gm + bb[None, :] * stride_gb,
                         mask=r_ok[:, None] & b_ok[None, :], other=0.0)
            xv = tl.load(x_ptr + bb[:, None] * stride_xb + cols[None, :] * stride_xk,
                         mask=b_ok[:, None] & c_ok[None, :], other=0.0)
            if UPCAST:
                gt = gt.to(tl.float32)
                xv = xv.to(tl.float32)
            acc += tl.dot(gt, xv, input_precision=PRECISION, out_dtype=ACC)
    out = out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=r_ok[:, None] & c_ok[None, :])


def masked_mm(
    weight: torch.Tensor, block_mask: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, y: torch.Tensor,
    R: int, C: int,
) -> None:
    """``y [B, M] = x [B, K] @ (weight * expand(block_mask))^T (+ bias)``, every operand any strides."""
    B, K = x.shape
    M = weight.shape[0]
    if B == 0 or M == 0:
        return
    if K == 0:
        if bias is None:
            y.zero_()
        else:
            y.copy_(bias.expand(B, M))
        return
    mask = block_mask.view(torch.uint8) if block_mask.dtype == torch.bool else block_mask

    def grid(meta):
        return (triton.cdiv(M, R), triton.cdiv(B, meta["BLOCK_N"]))

    # y^T = (W * mask) @ x^T
    wrap_triton(_masked_mm_kernel)[grid](
        weight, mask, x, bias if bias is not None else weight, y,
        M, K, B,
        weight.stride(0), weight.stride(1), mask.stride(0), mask.stride(1),
        x.stride(1), x.stride(0), y.stride(1), y.stride(0),
        R=R, C=C, HAS_BIAS=bias is not None, ACC=acc_dtype(x.dtype), PRECISION=dot_precision(x.dtype),
        UPCAST=interpreter_upcast(x.dtype),
    )


def masked_weight_grad(
    grad: torch.Tensor, x: torch.Tensor, block_mask: torch.Tensor, out: torch.Tensor, R: int, C: int
) -> None:
    """``out [M, K] (contiguous) = (grad^T @ x) * expand(block_mask)`` for ``grad [B, M]``, ``x [B, K]``."""
    B, M = grad.shape
    K = x.shape[1]
    if M == 0 or K == 0:
        return
    mask = block_mask.view(torch.uint8) if block_mask.dtype == torch.bool else block_mask
    wrap_triton(_masked_weight_grad_kernel)[(triton.cdiv(M, R), triton.cdiv(K, C))](
        grad, x, mask, out,
        M, K, B,
        grad.stride(0), grad.stride(1), x.stride(0), x.stride(1), mask.stride(0), mask.stride(1),
        R=R, C=C, ACC=acc_dtype(x.dtype), PRECISION=dot_precision(x.dtype), UPCAST=interpreter_upcast(x.dtype),
    )

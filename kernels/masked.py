"""Dense weights under a block mask, for training with block sparsity.

While a block-pruned model trains, its weight stays a dense ``[M, K]`` tensor
(the optimizer's view) and a boolean ``block_mask [ceil(M/R), ceil(K/C)]``
says which ``R x C`` blocks are kept. These kernels compute with the masked
weight without materialising it and skip pruned blocks entirely, forward and
backward; the weight gradient is zero in pruned blocks, so masked training
keeps the pattern by construction. ``R`` and ``C`` are each 16, 32, 64 or 128.

Public function: :func:`masked_linear`. Ops (``torch.ops.sparsemia``):

* ``triton_masked_linear(x [B, K], weight [M, K], block_mask, bias [M]?, R, C) -> [B, M]``
* ``triton_masked_weight_grad(grad [B, M], x [B, K], block_mask, R, C) -> [M, K]``
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from ._common import FLOAT_DTYPES, configs, device_reason, dot_precision, interpreter_upcast

__all__ = ["masked_linear", "expand_block_mask"]

BLOCK_SIZES = (16, 32, 64, 128)


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


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


@triton_op("sparsemia::triton_masked_linear", mutates_args=())
def _masked_linear_op(
    x: torch.Tensor, weight: torch.Tensor, block_mask: torch.Tensor, bias: torch.Tensor | None, R: int, C: int
) -> torch.Tensor:
    """``x @ (weight * expand(block_mask))^T (+ bias)``: ``x [B, K]``, ``weight [M, K]`` any strides -> ``[B, M]``."""
    B, K = x.shape
    M = weight.shape[0]
    y = x.new_empty(B, M)
    if B == 0 or M == 0:
        return y
    if K == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand(B, M))
    mask = block_mask.view(torch.uint8) if block_mask.dtype == torch.bool else block_mask

    def grid(meta):
        return (triton.cdiv(M, R), triton.cdiv(B, meta["BLOCK_N"]))

    # y^T = (W * mask) @ x^T
    wrap_triton(_masked_mm_kernel)[grid](
        weight, mask, x, bias if bias is not None else weight, y,
        M, K, B,
        weight.stride(0), weight.stride(1), mask.stride(0), mask.stride(1),
        x.stride(1), x.stride(0), y.stride(1), y.stride(0),
        R=R, C=C, HAS_BIAS=bias is not None, ACC=_acc_dtype(x.dtype), PRECISION=dot_precision(x.dtype),
        UPCAST=interpreter_upcast(x.dtype),
    )
    return y


@triton_op("sparsemia::triton_masked_weight_grad", mutates_args=())
def _masked_weight_grad_op(grad: torch.Tensor, x: torch.Tensor, block_mask: torch.Tensor, R: int, C: int) -> torch.Tensor:
    """``(grad^T @ x) * expand(block_mask)``: ``grad [B, M]``, ``x [B, K]`` -> ``[M, K]`` (contiguous)."""
    B, M = grad.shape
    K = x.shape[1]
    out = x.new_empty(M, K)
    if M == 0 or K == 0:
        return out
    mask = block_mask.view(torch.uint8) if block_mask.dtype == torch.bool else block_mask
    wrap_triton(_masked_weight_grad_kernel)[(triton.cdiv(M, R), triton.cdiv(K, C))](
        grad, x, mask, out,
        M, K, B,
        grad.stride(0), grad.stride(1), x.stride(0), x.stride(1), mask.stride(0), mask.stride(1),
        R=R, C=C, ACC=_acc_dtype(x.dtype), PRECISION=dot_precision(x.dtype), UPCAST=interpreter_upcast(x.dtype),
    )
    return out


def _save(ctx, inputs, output) -> None:
    x, weight, block_mask, bias, R, C = inputs
    ctx.save_for_backward(x, weight, block_mask)
    ctx.block = (R, C)
    ctx.has_bias = bias is not None


def _backward(ctx, grad: torch.Tensor):
    x, weight, block_mask = ctx.saved_tensors
    R, C = ctx.block
    grad_x = grad_w = grad_bias = None
    if ctx.needs_input_grad[0]:
        # grad @ (W * mask) = grad @ ((W^T * mask^T))^T: the forward kernel on transposed views.
        grad_x = _masked_linear_op(grad, weight.t(), block_mask.t(), None, C, R)
    if ctx.needs_input_grad[1]:
        grad_w = _masked_weight_grad_op(grad, x, block_mask, R, C)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad.sum(0)
    return grad_x, grad_w, None, grad_bias, None, None


_masked_linear_op.register_autograd(_backward, setup_context=_save)


# --------------------------------------------------------------------------
# Public function and its backends
# --------------------------------------------------------------------------


def expand_block_mask(block_mask: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """The element mask ``[M, K]`` (bool) of a block mask ``[ceil(M/R), ceil(K/C)]``."""
    R, C = block
    M, K = shape
    return block_mask.bool().repeat_interleave(R, 0).repeat_interleave(C, 1)[:M, :K]


def _check(x: torch.Tensor, weight: torch.Tensor, block_mask: torch.Tensor, bias: torch.Tensor | None,
           block: tuple[int, int]) -> None:
    for name, t in (("x", x), ("weight", weight), ("block_mask", block_mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D [M, K] tensor, got shape {tuple(weight.shape)}")
    M, K = weight.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x: expected last dimension {K} (the weight's in_features), got shape {tuple(x.shape)}")
    if x.dtype != weight.dtype or x.device != weight.device:
        raise TypeError(f"x: expected dtype {weight.dtype} on {weight.device} (the weight's), got {x.dtype} on {x.device}")
    if not (isinstance(block, tuple | list) and len(block) == 2 and all(isinstance(b, int) and b >= 1 for b in block)):
        raise ValueError(f"block: expected (R, C) with positive integers, got {block!r}")
    R, C = block
    expected = (-(-M // R), -(-K // C))
    if tuple(block_mask.shape) != expected or block_mask.device != weight.device:
        raise ValueError(
            f"block_mask: expected shape {expected} on {weight.device} for weight {tuple(weight.shape)} and block "
            f"{tuple(block)}, got {tuple(block_mask.shape)} on {block_mask.device}"
        )
    if block_mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"block_mask: expected a bool or uint8 tensor, got {block_mask.dtype}")
    if bias is not None and (tuple(bias.shape) != (M,) or bias.dtype != weight.dtype or bias.device != weight.device):
        raise ValueError(f"bias: expected shape ({M},) with the weight's dtype and device, got {tuple(bias.shape)} {bias.dtype}")


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    block_mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    block: tuple[int, int],
    backend: str | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight * expand(block_mask), bias)``, skipping pruned blocks.

    Args:
        x: ``[..., K]``, the weight's dtype and device.
        weight: dense ``[M, K]`` (any strides).
        block_mask: ``[ceil(M/R), ceil(K/C)]`` bool (or 0/1 uint8); True keeps a block.
        bias: ``[M]`` or None.
        block: ``(R, C)``; the triton backend takes 16, 32, 64 or 128 for each.
        backend: ``None``/``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        ``[..., M]``. Differentiable with respect to ``x``, ``weight`` (zero in
        pruned blocks) and ``bias``.
    """
    from sparsemia.ops import select_backend

    _check(x, weight, block_mask, bias, block)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, weight.shape[1])
    block = (int(block[0]), int(block[1]))
    y = select_backend("masked_linear", x2, weight, block_mask, bias, block, backend=backend).fn(
        x2, weight, block_mask, bias, block
    )
    return y.reshape(*lead, weight.shape[0])


def _reference(x, weight, block_mask, bias, block):
    return F.linear(x, weight * expand_block_mask(block_mask, block, tuple(weight.shape)), bias)


def _triton(x, weight, block_mask, bias, block):
    return _masked_linear_op(x, weight, block_mask, bias, block[0], block[1])


def _triton_supports(x, weight, block_mask, bias, block) -> str | None:
    reason = device_reason(x, weight, block_mask, bias)
    if reason is not None:
        return reason
    if weight.dtype not in FLOAT_DTYPES:
        return f"dtype {weight.dtype} is not supported"
    if block[0] not in BLOCK_SIZES or block[1] not in BLOCK_SIZES:
        return f"block {tuple(block)}: the triton kernels take sides in {BLOCK_SIZES}"
    return None


def register() -> None:
    """Register the ``masked_linear`` backends with :mod:`sparsemia.ops`."""
    from sparsemia.ops import register_impl

    register_impl("masked_linear", "reference", _reference, lambda *a: None, priority=-1)
    register_impl("masked_linear", "triton", _triton, _triton_supports,
                  priority=lambda x, *a: 20.0 if x.is_cuda else -5.0)

"""The ``triton`` backend: the ``torch.ops.sparsemia.triton_*`` operators over the launchers of
:mod:`sparsemia.kernels`, their autograd, and the public ops' ``triton`` implementations.

The operators are declared here with ``torch.library.triton_op`` rather than in
``csrc/ops.cpp``: ``triton_op`` lets ``torch.compile`` trace into the Triton kernels
(``wrap_triton``) and derives each fake kernel by running the function on fake tensors,
so the checks at the top of each function are also the fake kernel's checks. A schema in
C++ with a Python implementation would hide the kernels from the compiler.

* ``spmm`` / ``sparse_linear``: BSR weights with block sides 16/32/64/128 on tensor cores;
  CSR and N:M weights by row gathers (the fallback when the CUDA extension is not built).
* ``sparse_conv2d``: BSR weights by implicit GEMM (groups 1).
* ``masked_linear``: dense weights under a block mask, for block-sparse training.

On the CPU the kernels run only under ``TRITON_INTERPRET=1`` (for tests), and then only
when asked for by ``backend="triton"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import triton_op

from sparsemia import kernels
from sparsemia.formats import SparseWeight, transpose_pattern
from sparsemia.kernels import FLOAT_DTYPES, device_reason
from sparsemia.ops.conv import conv2d_output_size
from sparsemia.ops.registry import register_impl

__all__ = [
    "bsr_conv2d",
    "bsr_conv2d_weight_grad",
    "bsr_linear",
    "bsr_sddmm",
    "bsr_spmm",
    "masked_linear",
    "masked_weight_grad",
    "stacked_csr_linear",
    "stacked_csr_sddmm",
]


def _check(cond: bool, message: str) -> None:
    torch._check(cond, lambda: message)


def _check_bsr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, op: str) -> None:
    _check(crow.dim() == 1 and col.dim() == 1 and crow.dtype == col.dtype, f"{op}: crow and col must be 1-D of one dtype")
    _check(values.dim() == 3 and values.shape[0] == col.shape[0],
           f"{op}: values must be [nblocks, R, C] with one block per column index, got {list(values.shape)}")


# ------------------------------------------------------------------------- BSR


@triton_op("sparsemia::triton_bsr_spmm", mutates_args=())
def bsr_spmm(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``W @ x`` for BSR ``W`` (``values [nblocks, R, C]``), ``x [Kb*C, N]`` any strides -> ``[Mb*R, N]``;
    ``bias [Mb*R]`` (optional) is added to every column. Inputs share one float dtype."""
    op = "triton_bsr_spmm"
    _check_bsr(crow, col, values, op)
    _check(x.dim() == 2 and x.dtype == values.dtype, f"{op}: x must be 2-D with the weight's dtype")
    _check(x.shape[0] % values.shape[2] == 0, f"{op}: x's rows must be a multiple of the block width")
    rows = (crow.shape[0] - 1) * values.shape[1]
    y = x.new_empty(rows, x.shape[1])
    kernels.bsr.bsr_mm(crow, col, values.contiguous(), x, bias, y, (x.stride(0), x.stride(1)),
                       (y.stride(0), y.stride(1)), x.shape[1])
    return y


@triton_op("sparsemia::triton_bsr_linear", mutates_args=())
def bsr_linear(
    x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W^T (+ bias)`` for ``x [B, Kb*C]`` any strides, BSR ``W`` -> ``[B, Mb*R]``; ``bias [Mb*R]``."""
    op = "triton_bsr_linear"
    _check_bsr(crow, col, values, op)
    _check(x.dim() == 2 and x.dtype == values.dtype, f"{op}: x must be 2-D with the weight's dtype")
    _check(x.shape[1] % values.shape[2] == 0, f"{op}: x's features must be a multiple of the block width")
    rows = (crow.shape[0] - 1) * values.shape[1]
    y = x.new_empty(x.shape[0], rows)
    # y^T = W @ x^T: read x and write y through swapped strides.
    kernels.bsr.bsr_mm(crow, col, values.contiguous(), x, bias, y, (x.stride(1), x.stride(0)),
                       (y.stride(1), y.stride(0)), x.shape[0])
    return y


@triton_op("sparsemia::triton_bsr_sddmm", mutates_args=())
def bsr_sddmm(crow: torch.Tensor, col: torch.Tensor, a: torch.Tensor, b: torch.Tensor, R: int, C: int) -> torch.Tensor:
    """``(a @ b^T)`` at the stored blocks: ``a [Mb*R, N]``, ``b [Kb*C, N]`` any strides -> ``[nblocks, R, C]``."""
    op = "triton_bsr_sddmm"
    _check(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[1] and a.dtype == b.dtype,
           f"{op}: a [M, N] and b [K, N] must be 2-D with the same N and dtype")
    _check(a.shape[0] == (crow.shape[0] - 1) * R, f"{op}: a must have one row per weight row")
    out = a.new_empty(col.shape[0], R, C)
    kernels.bsr.bsr_sddmm(crow, col, a, b, out)
    return out


def _bsr_transposed(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, n_block_cols: int):
    crow_t, col_t, perm = transpose_pattern(crow, col, n_block_cols)
    return crow_t, col_t, values[perm].transpose(1, 2).contiguous()


def _save_bsr_spmm(ctx, inputs, output) -> None:
    crow, col, values, x, bias = inputs
    ctx.save_for_backward(crow, col, values, x)
    ctx.has_bias = bias is not None


def _bsr_spmm_backward(ctx, grad: torch.Tensor):
    crow, col, values, x = ctx.saved_tensors
    R, C = values.shape[1], values.shape[2]
    grad_values = grad_x = grad_bias = None
    if ctx.needs_input_grad[3]:
        crow_t, col_t, values_t = _bsr_transposed(crow, col, values, x.shape[0] // C)
        grad_x = bsr_spmm(crow_t, col_t, values_t, grad, None)
    if ctx.needs_input_grad[2]:
        grad_values = bsr_sddmm(crow, col, grad, x, R, C)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.sum(1)
    return None, None, grad_values, grad_x, grad_bias


def _save_linear(ctx, inputs, output) -> None:
    x, crow, col, values, bias = inputs
    ctx.save_for_backward(x, crow, col, values)
    ctx.has_bias = bias is not None


def _bsr_linear_backward(ctx, grad: torch.Tensor):
    x, crow, col, values = ctx.saved_tensors
    R, C = values.shape[1], values.shape[2]
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        crow_t, col_t, values_t = _bsr_transposed(crow, col, values, x.shape[1] // C)
        grad_x = bsr_linear(grad, crow_t, col_t, values_t, None)
    if ctx.needs_input_grad[3]:
        grad_values = bsr_sddmm(crow, col, grad.t(), x.t(), R, C)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.sum(0)
    return grad_x, None, None, grad_values, grad_bias


bsr_spmm.register_autograd(_bsr_spmm_backward, setup_context=_save_bsr_spmm)
bsr_linear.register_autograd(_bsr_linear_backward, setup_context=_save_linear)


# ------------------------------------------------------------------ stacked CSR


@triton_op("sparsemia::triton_stacked_csr_linear", mutates_args=())
def stacked_csr_linear(
    x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``y[g] = x[g] @ W_g^T (+ bias[g])``: ``x [G, B, K]`` any strides, ``crow [G, M+1]``,
    ``col``/``values [nnz]`` shared by the ``G`` patterns, ``bias [G, M]`` -> ``[G, B, M]``."""
    op = "triton_stacked_csr_linear"
    _check(crow.dim() == 2 and col.dim() == 1 and crow.dtype == col.dtype,
           f"{op}: crow must be [G, M+1] and col 1-D, of one dtype")
    _check(values.dim() == 1 and values.shape[0] == col.shape[0], f"{op}: values must be 1-D, one per column index")
    _check(x.dim() == 3 and x.shape[0] == crow.shape[0] and x.dtype == values.dtype,
           f"{op}: x must be [G, B, K] with the weight's G and dtype")
    y = x.new_empty(x.shape[0], x.shape[1], crow.shape[1] - 1)
    kernels.csr.stacked_csr_linear(x, crow, col, values, bias, y)
    return y


@triton_op("sparsemia::triton_stacked_csr_sddmm", mutates_args=())
def stacked_csr_sddmm(crow: torch.Tensor, col: torch.Tensor, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The weight gradient at the stored entries: ``grad [G, B, M]``, ``x [G, B, K]`` -> ``[nnz]``."""
    _check(grad.dim() == 3 and x.dim() == 3 and grad.shape[:2] == x.shape[:2],
           "triton_stacked_csr_sddmm: grad [G, B, M] and x [G, B, K] must agree in G and B")
    out = grad.new_empty(col.shape[0])
    kernels.csr.stacked_csr_sddmm(crow, col, grad, x, out)
    return out


def _stacked_backward(ctx, grad: torch.Tensor):
    x, crow, col, values = ctx.saved_tensors
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        crow_t, col_t, perm = transpose_pattern(crow, col, x.shape[2])
        grad_x = stacked_csr_linear(grad, crow_t, col_t, values[perm], None)
    if ctx.needs_input_grad[3]:
        grad_values = stacked_csr_sddmm(crow, col, grad, x)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.sum(1)
    return grad_x, None, None, grad_values, grad_bias


stacked_csr_linear.register_autograd(_stacked_backward, setup_context=_save_linear)


# ------------------------------------------------------------------ convolution


@triton_op("sparsemia::triton_bsr_conv2d", mutates_args=())
def bsr_conv2d(
    x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
    kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int], cout: int,
) -> torch.Tensor:
    """``F.conv2d(x, W, bias, stride, padding, dilation)`` for ``x [B, Cin, H, W]`` (any strides) and the
    BSR weight ``W [cout, Cin, *kernel_size]`` (``values [nblocks, R, C]``); ``bias [cout]`` or None."""
    op = "triton_bsr_conv2d"
    _check_bsr(crow, col, values, op)
    _check(x.dim() == 4 and x.dtype == values.dtype, f"{op}: x must be 4-D with the weight's dtype")
    oh, ow = conv2d_output_size(tuple(x.shape[2:]), tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation))
    _check(oh >= 1 and ow >= 1, f"{op}: the padded input is smaller than the dilated kernel")
    y = x.new_empty(x.shape[0], cout, oh, ow)
    kernels.conv.bsr_conv2d(x, crow, col, values.contiguous(), bias, y, kernel_size, stride, padding, dilation)
    return y


@triton_op("sparsemia::triton_bsr_conv2d_weight_grad", mutates_args=())
def bsr_conv2d_weight_grad(
    x: torch.Tensor, grad_out: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, R: int, C: int,
    kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
) -> torch.Tensor:
    """d loss / d values of :func:`bsr_conv2d` at the stored blocks: ``[nblocks, R, C]``."""
    _check(x.dim() == 4 and grad_out.dim() == 4 and grad_out.shape[0] == x.shape[0],
           "triton_bsr_conv2d_weight_grad: x and grad_out must be 4-D with one batch")
    out = x.new_empty(col.shape[0], R, C)
    kernels.conv.bsr_conv2d_weight_grad(x, grad_out, crow, col, out, kernel_size, stride, padding, dilation)
    return out


def _save_conv(ctx, inputs, output) -> None:
    x, crow, col, values, bias, kernel_size, stride, padding, dilation, cout = inputs
    ctx.save_for_backward(x, crow, col, values)
    ctx.params = (list(kernel_size), list(stride), list(padding), list(dilation), cout)
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad: torch.Tensor):
    # The input gradient is torch.nn.grad.conv2d_input on the dense weight rebuilt from the
    # blocks (cuDNN on a GPU): exact, but it does not exploit the sparsity.
    x, crow, col, values = ctx.saved_tensors
    kernel, stride, padding, dilation, cout = ctx.params
    R, C = values.shape[1], values.shape[2]
    grad_x = grad_values = grad_bias = None
    if ctx.needs_input_grad[0]:
        shape = (cout, x.shape[1], kernel[0], kernel[1])
        dense = SparseWeight("bsr", shape, values, crow, col, block=(R, C), validate=False).to_dense()
        grad_x = torch.nn.grad.conv2d_input(x.shape, dense, grad, stride, padding, dilation)
    if ctx.needs_input_grad[3]:
        grad_values = bsr_conv2d_weight_grad(x, grad, crow, col, R, C, kernel, stride, padding, dilation)
    if ctx.has_bias and ctx.needs_input_grad[4]:
        grad_bias = grad.sum((0, 2, 3))
    return grad_x, None, None, grad_values, grad_bias, None, None, None, None, None


bsr_conv2d.register_autograd(_conv_backward, setup_context=_save_conv)


# ----------------------------------------------------------------- masked linear


@triton_op("sparsemia::triton_masked_linear", mutates_args=())
def masked_linear(
    x: torch.Tensor, weight: torch.Tensor, block_mask: torch.Tensor, bias: torch.Tensor | None, R: int, C: int
) -> torch.Tensor:
    """``x @ (weight * expand(block_mask))^T (+ bias)``: ``x [B, K]``, ``weight [M, K]`` any strides -> ``[B, M]``."""
    _check(x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1] and x.dtype == weight.dtype,
           "triton_masked_linear: x [B, K] and weight [M, K] must be 2-D with one K and dtype")
    y = x.new_empty(x.shape[0], weight.shape[0])
    kernels.masked.masked_mm(weight, block_mask, x, bias, y, R, C)
    return y


@triton_op("sparsemia::triton_masked_weight_grad", mutates_args=())
def masked_weight_grad(grad: torch.Tensor, x: torch.Tensor, block_mask: torch.Tensor, R: int, C: int) -> torch.Tensor:
    """``(grad^T @ x) * expand(block_mask)``: ``grad [B, M]``, ``x [B, K]`` -> ``[M, K]`` (contiguous)."""
    _check(grad.dim() == 2 and x.dim() == 2 and grad.shape[0] == x.shape[0],
           "triton_masked_weight_grad: grad [B, M] and x [B, K] must be 2-D with one B")
    out = x.new_empty(grad.shape[1], x.shape[1])
    kernels.masked.masked_weight_grad(grad, x, block_mask, out, R, C)
    return out


def _save_masked(ctx, inputs, output) -> None:
    x, weight, block_mask, bias, R, C = inputs
    ctx.save_for_backward(x, weight, block_mask)
    ctx.block = (R, C)
    ctx.has_bias = bias is not None


def _masked_backward(ctx, grad: torch.Tensor):
    x, weight, block_mask = ctx.saved_tensors
    R, C = ctx.block
    grad_x = grad_w = grad_bias = None
    if ctx.needs_input_grad[0]:
        # grad @ (W * mask) = grad @ ((W^T * mask^T))^T: the forward kernel on transposed views.
        grad_x = masked_linear(grad, weight.t(), block_mask.t(), None, C, R)
    if ctx.needs_input_grad[1]:
        grad_w = masked_weight_grad(grad, x, block_mask, R, C)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad.sum(0)
    return grad_x, grad_w, None, grad_bias, None, None


masked_linear.register_autograd(_masked_backward, setup_context=_save_masked)


# ---------------------------------------------------------- the public ops' glue

_MATMUL_BLOCKS = kernels.bsr.BLOCK_SIZES
_CONV_BLOCKS = kernels.conv.BLOCK_SIZES
_MASKED_BLOCKS = kernels.masked.BLOCK_SIZES


def _weight_reason(w: SparseWeight) -> str | None:
    if w.dtype not in FLOAT_DTYPES:
        return f"dtype {w.dtype} is not supported"
    if w.format == "bsr" and (w.block[0] not in _MATMUL_BLOCKS or w.block[1] not in _MATMUL_BLOCKS):
        return f"BSR block {w.block}: the triton kernels take sides in {_MATMUL_BLOCKS}"
    return None


def _priority(w: SparseWeight, on_gpu: bool) -> float:
    # On the CPU (interpreter) never chosen automatically. On a GPU, BSR on tensor
    # cores is the fastest path we have while at most about half the blocks are
    # kept (beyond that, cuBLAS on the dense weight, the reference backend, wins);
    # CSR gathers rank below the CUDA extension's kernels.
    if not on_gpu:
        return -5.0
    if w.format == "bsr":
        return 30.0 if w.sparsity >= 0.5 else -2.0
    return 15.0


def _spmm(w: SparseWeight, x: torch.Tensor) -> torch.Tensor:
    rows, cols = w.matrix_shape
    if w.format == "bsr":
        mp, kp = w.padded_shape
        if kp != cols:
            x = F.pad(x, (0, 0, 0, kp - cols))
        y = bsr_spmm(w.crow_indices, w.col_indices, w.values, x, None)
        return y[:rows] if mp != rows else y
    crow, col, values = w.csr()
    # W @ x = (x^T @ W^T)^T: one model, "batch" = the columns of x.
    y = stacked_csr_linear(x.t().unsqueeze(0), crow.unsqueeze(0), col, values, None)
    return y[0].t().contiguous()


def _linear(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> torch.Tensor:
    rows, cols = w.matrix_shape
    if w.format == "bsr":
        mp, kp = w.padded_shape
        if kp != cols:
            x = F.pad(x, (0, kp - cols))
        if bias is not None and mp != rows:
            bias = F.pad(bias, (0, mp - rows))
        y = bsr_linear(x, w.crow_indices, w.col_indices, w.values, bias)
        return y[:, :rows] if mp != rows else y
    crow, col, values = w.csr()
    y = stacked_csr_linear(x.unsqueeze(0), crow.unsqueeze(0), col, values, None if bias is None else bias[None])
    return y[0]


def _conv2d(x, w, bias, stride, padding, dilation, groups) -> torch.Tensor:
    return bsr_conv2d(x, w.crow_indices, w.col_indices, w.values, bias, list(w.shape[2:]), list(stride),
                      list(padding), list(dilation), w.shape[0])


def _conv_supports(x, w, bias, stride, padding, dilation, groups) -> str | None:
    reason = device_reason(x, w.values, bias)
    if reason:
        return reason
    if w.format != "bsr":
        return f"the triton convolution takes BSR weights, not {w.format}"
    if w.block[0] not in _CONV_BLOCKS or w.block[1] not in _CONV_BLOCKS:
        return f"BSR block {w.block}: the triton convolution takes sides in {_CONV_BLOCKS}"
    if w.dtype not in FLOAT_DTYPES:
        return f"dtype {w.dtype} is not supported"
    if groups != 1:
        return f"the triton convolution takes groups=1, got groups={groups}"
    return None


def _conv_priority(x, w, *_args) -> float:
    # Not measured yet on a GPU: chosen automatically only for clearly sparse block
    # patterns, where skipping 3/4 of the work should beat cuDNN on the dense weight.
    if not x.is_cuda:
        return -5.0
    return 25.0 if w.format == "bsr" and w.sparsity >= 0.75 else -2.0


def _masked(x, weight, block_mask, bias, block):
    return masked_linear(x, weight, block_mask, bias, block[0], block[1])


def _masked_supports(x, weight, block_mask, bias, block) -> str | None:
    reason = device_reason(x, weight, block_mask, bias)
    if reason is not None:
        return reason
    if weight.dtype not in FLOAT_DTYPES:
        return f"dtype {weight.dtype} is not supported"
    if block[0] not in _MASKED_BLOCKS or block[1] not in _MASKED_BLOCKS:
        return f"block {tuple(block)}: the triton kernels take sides in {_MASKED_BLOCKS}"
    return None


register_impl("spmm", "triton", _spmm, lambda w, x: device_reason(w.values, x) or _weight_reason(w),
              priority=lambda w, x: _priority(w, x.is_cuda))
register_impl("sparse_linear", "triton", _linear, lambda x, w, b: device_reason(x, w.values, b) or _weight_reason(w),
              priority=lambda x, w, b: _priority(w, x.is_cuda))
register_impl("sparse_conv2d", "triton", _conv2d, _conv_supports, priority=_conv_priority)
register_impl("masked_linear", "triton", _masked, _masked_supports, priority=lambda x, *a: 20.0 if x.is_cuda else -5.0)

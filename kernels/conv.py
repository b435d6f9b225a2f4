"""Implicit-GEMM 2-D convolution with block-sparse (BSR) weights.

The weight ``[Cout, Cin, kh, kw]`` is stored as the BSR matrix
``[Cout, Cin*kh*kw]`` (column ``(ci*kh + ky)*kw + kx``) with blocks ``(R, C)``,
``R`` and ``C`` each 16, 32 or 64, as :class:`sparsemia.SparseWeight` holds it
(the last block row / column padded with zeros). ``groups == 1`` only.

Forward: one program per (block row, tile of ``BLOCK_N`` output pixels, the
batch and both spatial axes flattened). It walks the block row's stored blocks;
for each it gathers the ``C x BLOCK_N`` input patch straight from ``x``
(implicit im2col: column -> ``(ci, ky, kx)`` -> input coordinate through
stride, padding and dilation, masked where it falls into the padding) and
multiplies it with the ``R x C`` block on tensor cores, accumulating in fp32
(fp64 for fp64 inputs).

Backward: the weight gradient is a Triton kernel too, one program per stored
block (``grad_out[rows] @ patches[cols]^T`` over all output pixels, patches
gathered the same way), so it exists only at the stored blocks. The input
gradient is ``torch.nn.grad.conv2d_input`` on the dense weight rebuilt from the
blocks (cuDNN on a GPU): exact, but it does not exploit the sparsity.

Ops (under ``torch.ops.sparsemia``, with autograd):

* ``triton_bsr_conv2d(x, crow, col, values, bias?, kernel_size, stride, padding, dilation, cout)``
  -> ``[B, Cout, Ho, Wo]``.
* ``triton_bsr_conv2d_weight_grad(x, grad_out, crow, col, R, C, kernel_size, stride, padding, dilation)``
  -> ``[nblocks, R, C]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from sparsemia.formats import SparseWeight

from ._common import FLOAT_DTYPES, configs, device_reason, dot_precision, interpreter_upcast

BLOCK_SIZES = (16, 32, 64)


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _out_size(h: int, w: int, kernel, stride, padding, dilation) -> tuple[int, int]:
    return (
        (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1,
        (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1,
    )


@triton.jit
def _patch(
    x_ptr, k, k_ok, b, ih0, iw0, n_ok,
    H, W, sxb, sxc, sxh, sxw, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
):
    """The ``[len(k), len(n)]`` tile of the implicit im2col matrix: columns ``k``, pixels ``(b, ih0, iw0)``."""
    ci = k // (KH * KW)
    tap = k % (KH * KW)
    ky = tap // KW
    kx = tap % KW
    ih = ih0[None, :] + (ky * DH)[:, None]
    iw = iw0[None, :] + (kx * DW)[:, None]
    ok = k_ok[:, None] & n_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    off = (b.to(tl.int64) * sxb)[None, :] + (ci.to(tl.int64) * sxc)[:, None] + ih.to(tl.int64) * sxh + iw.to(tl.int64) * sxw
    off = tl.where(ok, off, 0)
    return tl.load(x_ptr + off, mask=ok, other=0.0)


# Grid: axis 0 walks block rows (fastest), axis 1 pixel tiles, so programs that
# run together read the same input patch through L2.
@triton.autotune(
    configs=configs([{"BLOCK_N": 32}, {"BLOCK_N": 64}, {"BLOCK_N": 128}, {"BLOCK_N": 256}]),
    key=["NPIX", "K", "R", "C", "KH", "KW"],
)
@triton.jit
def _conv_fwd_kernel(
    x_ptr, crow_ptr, col_ptr, values_ptr, bias_ptr, y_ptr,
    COUT, H, W, OH, OW, NPIX, K,
    sxb, sxc, sxh, sxw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
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
    n_ok = offs_n < NPIX
    ohw = OH * OW
    b = offs_n // ohw
    pix = offs_n % ohw
    ih0 = (pix // OW) * SH - PH
    iw0 = (pix % OW) * SW - PW
    w_tile = offs_r[:, None] * C + offs_c[None, :]
    acc = tl.zeros((R, BLOCK_N), dtype=ACC)
    for p in range(start, end):
        kb = tl.load(col_ptr + p)
        k = kb * C + offs_c
        xt = _patch(x_ptr, k, k < K, b, ih0, iw0, n_ok, H, W, sxb, sxc, sxh, sxw, DH, DW, KH, KW)
        w = tl.load(values_ptr + p * (R * C) + w_tile)
        if UPCAST:
            w = w.to(tl.float32)
            xt = xt.to(tl.float32)
        acc += tl.dot(w, xt, input_precision=PRECISION, out_dtype=ACC)
    co = pid_m * R + offs_r
    co_ok = co < COUT
    if HAS_BIAS:
        acc += tl.load(bias_ptr + co, mask=co_ok, other=0.0).to(ACC)[:, None]
    out = (b.to(tl.int64) * COUT * ohw + pix)[None, :] + co.to(tl.int64)[:, None] * ohw
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=co_ok[:, None] & n_ok[None, :])


# One program per stored block: its block row by binary search in crow, then
# grad_out[rows, :] @ patches[cols, :]^T reduced over all output pixels.
@triton.autotune(configs=configs([{"BLOCK_K": 32}, {"BLOCK_K": 64}, {"BLOCK_K": 128}]),
                 key=["NPIX", "K", "R", "C", "KH", "KW"])
@triton.jit
def _conv_wgrad_kernel(
    x_ptr, g_ptr, crow_ptr, col_ptr, out_ptr,
    n_block_rows, COUT, H, W, OH, OW, NPIX, K,
    sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    R: tl.constexpr, C: tl.constexpr, BLOCK_K: tl.constexpr,
    ACC: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    p = tl.program_id(0).to(tl.int64)
    lo = 0
    hi = n_block_rows - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(crow_ptr + mid) <= p:
            lo = mid
        else:
            hi = mid - 1
    kb = tl.load(col_ptr + p)
    offs_r = tl.arange(0, R)
    offs_c = tl.arange(0, C)
    co = lo * R + offs_r
    co_ok = co < COUT
    k = kb * C + offs_c
    k_ok = k < K
    ohw = OH * OW
    acc = tl.zeros((R, C), dtype=ACC)
    for n0 in range(0, NPIX, BLOCK_K):
        offs_n = n0 + tl.arange(0, BLOCK_K)
        n_ok = offs_n < NPIX
        b = offs_n // ohw
        pix = offs_n % ohw
        oh = pix // OW
        ow = pix % OW
        g_ok = co_ok[:, None] & n_ok[None, :]
        g_off = (b.to(tl.int64) * sgb + oh.to(tl.int64) * sgh + ow.to(tl.int64) * sgw)[None, :] \
            + co.to(tl.int64)[:, None] * sgc
        g = tl.load(g_ptr + tl.where(g_ok, g_off, 0), mask=g_ok, other=0.0)
        xt = _patch(x_ptr, k, k_ok, b, oh * SH - PH, ow * SW - PW, n_ok, H, W, sxb, sxc, sxh, sxw, DH, DW, KH, KW)
        if UPCAST:
            g = g.to(tl.float32)
            xt = xt.to(tl.float32)
        acc += tl.dot(g, tl.trans(xt), input_precision=PRECISION, out_dtype=ACC)
    out = out_ptr + p * (R * C) + offs_r[:, None] * C + offs_c[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty))


@triton_op("sparsemia::triton_bsr_conv2d", mutates_args=())
def bsr_conv2d(
    x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
    kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int], cout: int,
) -> torch.Tensor:
    """``F.conv2d(x, W, bias, stride, padding, dilation)`` for ``x [B, Cin, H, W]`` (any strides) and the
    BSR weight ``W [cout, Cin, *kernel_size]`` (``values [nblocks, R, C]``); ``bias [cout]`` or None."""
    B, _, H, W = x.shape
    kh, kw = kernel_size
    oh, ow = _out_size(H, W, kernel_size, stride, padding, dilation)
    y = x.new_empty(B, cout, oh, ow)
    R, C = values.shape[1], values.shape[2]
    n_block_rows = crow.shape[0] - 1
    npix = B * oh * ow
    if n_block_rows == 0 or npix == 0:
        return y
    values = values.contiguous()

    def grid(meta):
        return (n_block_rows, triton.cdiv(npix, meta["BLOCK_N"]))

    wrap_triton(_conv_fwd_kernel)[grid](
        x, crow, col, values, bias if bias is not None else values, y,
        cout, H, W, oh, ow, npix, x.shape[1] * kh * kw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KH=kh, KW=kw, R=R, C=C, HAS_BIAS=bias is not None, ACC=_acc_dtype(values.dtype),
        PRECISION=dot_precision(values.dtype), UPCAST=interpreter_upcast(values.dtype),
    )
    return y


@triton_op("sparsemia::triton_bsr_conv2d_weight_grad", mutates_args=())
def bsr_conv2d_weight_grad(
    x: torch.Tensor, grad_out: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, R: int, C: int,
    kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
) -> torch.Tensor:
    """d loss / d values of :func:`bsr_conv2d` at the stored blocks: ``[nblocks, R, C]``."""
    B, _, H, W = x.shape
    kh, kw = kernel_size
    _, cout, oh, ow = grad_out.shape
    out = x.new_empty(col.shape[0], R, C)
    npix = B * oh * ow
    if col.shape[0] == 0:
        return out
    if npix == 0:
        return out.zero_()
    wrap_triton(_conv_wgrad_kernel)[(col.shape[0],)](
        x, grad_out, crow, col, out,
        crow.shape[0] - 1, cout, H, W, oh, ow, npix, x.shape[1] * kh * kw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KH=kh, KW=kw, R=R, C=C, ACC=_acc_dtype(x.dtype),
        PRECISION=dot_precision(x.dtype), UPCAST=interpreter_upcast(x.dtype),
    )
    return out


def _setup(ctx, inputs, output) -> None:
    x, crow, col, values, bias, kernel_size, stride, padding, dilation, cout = inputs
    ctx.save_for_backward(x, crow, col, values)
    ctx.params = (list(kernel_size), list(stride), list(padding), list(dilation), cout)
    ctx.has_bias = bias is not None


def _backward(ctx, grad: torch.Tensor):
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


bsr_conv2d.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------- sparse_conv2d backend


def _conv2d(x, w, bias, stride, padding, dilation, groups) -> torch.Tensor:
    return bsr_conv2d(x, w.crow_indices, w.col_indices, w.values, bias, list(w.shape[2:]), list(stride),
                      list(padding), list(dilation), w.shape[0])


def _supports(x, w, bias, stride, padding, dilation, groups) -> str | None:
    reason = device_reason(x, w.values, bias)
    if reason:
        return reason
    if w.format != "bsr":
        return f"the triton convolution takes BSR weights, not {w.format}"
    if w.block[0] not in BLOCK_SIZES or w.block[1] not in BLOCK_SIZES:
        return f"BSR block {w.block}: the triton convolution takes sides in {BLOCK_SIZES}"
    if w.dtype not in FLOAT_DTYPES:
        return f"dtype {w.dtype} is not supported"
    if groups != 1:
        return f"the triton convolution takes groups=1, got groups={groups}"
    return None


def _priority(x, w, *_args) -> float:
    # Not measured yet on a GPU: chosen automatically only for clearly sparse block
    # patterns, where skipping 3/4 of the work should beat cuDNN on the dense weight.
    if not x.is_cuda:
        return -5.0
    return 25.0 if w.format == "bsr" and w.sparsity >= 0.75 else -2.0


def register() -> None:
    """Register the ``triton`` backend of ``sparse_conv2d`` with :mod:`sparsemia.ops`."""
    from sparsemia.ops import register_impl

    register_impl("sparse_conv2d", "triton", _conv2d, _supports, priority=_priority)

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

The weight gradient is a Triton kernel too, one program per stored block
(``grad_out[rows] @ patches[cols]^T`` over all output pixels, patches gathered
the same way), so it exists only at the stored blocks.

Launchers :func:`bsr_conv2d` and :func:`bsr_conv2d_weight_grad`; the
``torch.ops.sparsemia.triton_bsr_conv2d*`` operators that call them, with their
autograd, are in :mod:`sparsemia.ops.backends.triton`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .common import acc_dtype, block_row_of, configs, dot_precision, interpreter_upcast

__all__ = ["BLOCK_SIZES", "bsr_conv2d", "bsr_conv2d_weight_grad"]

BLOCK_SIZES = (16, 32, 64)


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
    lo = block_row_of(crow_ptr, p, n_block_rows)
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


def bsr_conv2d(
    x: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, bias: torch.Tensor | None,
    y: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int], dilation: list[int],
) -> None:
    """``F.conv2d(x, W, bias, stride, padding, dilation)`` into ``y [B, Cout, Ho, Wo]`` for ``x [B, Cin, H, W]``
    (any strides) and the BSR weight ``W [Cout, Cin, *kernel]`` (``values [nblocks, R, C]`` contiguous)."""
    B, cin, H, W = x.shape
    _, cout, oh, ow = y.shape
    kh, kw = kernel
    R, C = values.shape[1], values.shape[2]
    n_block_rows = crow.shape[0] - 1
    npix = B * oh * ow
    if n_block_rows == 0 or npix == 0:
        return

    def grid(meta):
        return (n_block_rows, triton.cdiv(npix, meta["BLOCK_N"]))

    wrap_triton(_conv_fwd_kernel)[grid](
        x, crow, col, values, bias if bias is not None else values, y,
        cout, H, W, oh, ow, npix, cin * kh * kw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KH=kh, KW=kw, R=R, C=C, HAS_BIAS=bias is not None, ACC=acc_dtype(values.dtype),
        PRECISION=dot_precision(values.dtype), UPCAST=interpreter_upcast(values.dtype),
    )


def bsr_conv2d_weight_grad(
    x: torch.Tensor, grad_out: torch.Tensor, crow: torch.Tensor, col: torch.Tensor, out: torch.Tensor,
    kernel: list[int], stride: list[int], padding: list[int], dilation: list[int],
) -> None:
    """d loss / d values of the convolution at the stored blocks into ``out [nblocks, R, C]``."""
    B, cin, H, W = x.shape
    kh, kw = kernel
    _, cout, oh, ow = grad_out.shape
    R, C = out.shape[1], out.shape[2]
    npix = B * oh * ow
    if col.shape[0] == 0:
        return
    if npix == 0:
        out.zero_()
        return
    wrap_triton(_conv_wgrad_kernel)[(col.shape[0],)](
        x, grad_out, crow, col, out,
        crow.shape[0] - 1, cout, H, W, oh, ow, npix, cin * kh * kw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        KH=kh, KW=kw, R=R, C=C, ACC=acc_dtype(x.dtype),
        PRECISION=dot_precision(x.dtype), UPCAST=interpreter_upcast(x.dtype),
    )

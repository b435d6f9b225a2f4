"""Triton kernels of sparsemia, registered as the ``triton`` backend of :mod:`sparsemia.ops`.

Importing this package (``sparsemia.ops`` does it when a CUDA tensor or the
``triton`` backend is asked for) defines the ``torch.ops.sparsemia.triton_*``
operators and registers implementations of the public ops:

* ``spmm`` / ``sparse_linear``: BSR weights with block sides 16/32/64/128 on
  tensor cores (:mod:`.bsr`); CSR and N:M weights by row gathers (:mod:`.csr`),
  the fallback when the CUDA extension is not built.
* ``stacked_sparse_linear``: ``G`` models with their own CSR patterns in one launch.
* ``sparse_conv2d``: BSR weights by implicit GEMM (:mod:`.conv`).
* ``masked_linear`` (new, :func:`masked_linear`): dense weights under a block
  mask, for block-sparse training.

On the CPU the kernels run only under ``TRITON_INTERPRET=1`` (for tests), and
then only when asked for by ``backend="triton"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sparsemia.formats import SparseWeight

from . import bsr, conv, csr, masked
from ._common import FLOAT_DTYPES, INTERPRET, device_reason
from .masked import expand_block_mask, masked_linear

__all__ = ["INTERPRET", "bsr", "conv", "csr", "expand_block_mask", "masked", "masked_linear", "stack_csr"]


def _weight_reason(w: SparseWeight) -> str | None:
    if w.dtype not in FLOAT_DTYPES:
        return f"dtype {w.dtype} is not supported"
    if w.format == "bsr" and (w.block[0] not in bsr.BLOCK_SIZES or w.block[1] not in bsr.BLOCK_SIZES):
        return f"BSR block {w.block}: the triton kernels take sides in {bsr.BLOCK_SIZES}"
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


def _padded(w: SparseWeight) -> tuple[int, int]:
    br, bc = w.block
    rows, cols = w.matrix_shape
    return math.ceil(rows / br) * br, math.ceil(cols / bc) * bc


def _spmm(w: SparseWeight, x: torch.Tensor) -> torch.Tensor:
    rows, cols = w.matrix_shape
    if w.format == "bsr":
        mp, kp = _padded(w)
        if kp != cols:
            x = F.pad(x, (0, 0, 0, kp - cols))
        y = bsr.bsr_spmm(w.crow_indices, w.col_indices, w.values, x, None)
        return y[:rows] if mp != rows else y
    crow, col, values = w.csr()
    # W @ x = (x^T @ W^T)^T: one model, "batch" = the columns of x.
    y = csr.stacked_csr_linear(x.t().unsqueeze(0), crow.unsqueeze(0), col, values, None)
    return y[0].t().contiguous()


def _linear(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> torch.Tensor:
    rows, cols = w.matrix_shape
    if w.format == "bsr":
        mp, kp = _padded(w)
        if kp != cols:
            x = F.pad(x, (0, kp - cols))
        if bias is not None and mp != rows:
            bias = F.pad(bias, (0, mp - rows))
        y = bsr.bsr_linear(x, w.crow_indices, w.col_indices, w.values, bias)
        return y[:, :rows] if mp != rows else y
    crow, col, values = w.csr()
    y = csr.stacked_csr_linear(x.unsqueeze(0), crow.unsqueeze(0), col, values, None if bias is None else bias[None])
    return y[0]


def stack_csr(weights: list[SparseWeight]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``G`` CSR (or N:M) weights as one stacked pattern: ``crow [G, M+1]`` (offsets into
    the shared arrays), ``col [nnz]``, ``values [nnz]``; values stay differentiable."""
    parts = [w.csr() for w in weights]
    counts = torch.tensor([0] + [p[1].numel() for p in parts], dtype=torch.int64)
    offsets = counts.cumsum(0).tolist()
    idt = torch.int32 if offsets[-1] < 2**31 - 1 else torch.int64
    crow = torch.stack([p[0].to(torch.int64) - p[0][0].to(torch.int64) + offsets[g] for g, p in enumerate(parts)])
    col = torch.cat([p[1].to(idt) for p in parts])
    values = torch.cat([p[2] for p in parts])
    return crow.to(idt), col, values


def _stacked(x: torch.Tensor, weights: list[SparseWeight], bias: torch.Tensor | None) -> torch.Tensor:
    crow, col, values = stack_csr(weights)
    return csr.stacked_csr_linear(x, crow, col, values, bias)


def _spmm_supports(w: SparseWeight, x: torch.Tensor) -> str | None:
    return device_reason(w.values, x) or _weight_reason(w)


def _linear_supports(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> str | None:
    return device_reason(x, w.values, bias) or _weight_reason(w)


def _stacked_supports(x: torch.Tensor, weights: list[SparseWeight], bias: torch.Tensor | None) -> str | None:
    return device_reason(x, weights[0].values, bias) or _weight_reason(weights[0])


def _register() -> None:
    from sparsemia.ops import register_impl

    register_impl("spmm", "triton", _spmm, _spmm_supports, priority=lambda w, x: _priority(w, x.is_cuda))
    register_impl("sparse_linear", "triton", _linear, _linear_supports, priority=lambda x, w, b: _priority(w, x.is_cuda))
    register_impl(
        "stacked_sparse_linear", "triton", _stacked, _stacked_supports,
        priority=lambda x, ws, b: 15.0 if x.is_cuda else -5.0,
    )
    masked.register()
    conv.register()


_register()

"""The ``cpu`` backend: the public ops on the C++ extension's kernels (``csrc/cpu``).

Calls that need no gradient go to the kernels below their Python autograd wrapper:
inference on small layers is bound by such fixed per-call costs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsemia.formats import SparseWeight
from sparsemia.ops import extension
from sparsemia.ops.registry import register_impl

__all__ = ["DTYPES", "below_autograd"]

DTYPES = (torch.float32, torch.float64)


def below_autograd(op, *args):
    """``op(*args)``, skipping the op's Python autograd wrapper (a few µs per call) when
    no gradient is needed and nothing is being compiled."""
    if (torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)) or (
        torch.compiler.is_compiling()
    ):
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def _supports(w: SparseWeight, *tensors: torch.Tensor | None) -> str | None:
    if extension.module() is None:
        return f"the C++ extension is not loaded ({extension.error()})"
    if not w.values.is_cpu or any(t is not None and not t.is_cpu for t in tensors):
        return "the cpu backend takes CPU tensors"
    if w.dtype not in DTYPES:
        return f"the cpu backend takes float32 or float64, got {w.dtype}"
    if w.format == "bsr" and w.block[0] > 64:
        return f"the cpu backend takes blocks of at most 64 rows, got {w.block}"
    return None


def _spmm(w: SparseWeight, x: torch.Tensor) -> torch.Tensor:
    ops = torch.ops.sparsemia
    if w.format == "bsr":
        rows, cols = w.matrix_shape
        mp, kp = w.padded_shape
        if kp != cols:
            x = F.pad(x, (0, 0, 0, kp - cols))
        y = below_autograd(ops.bsr_spmm, w.crow_indices, w.col_indices, w.values, x)
        return y[:rows] if mp != rows else y
    crow, col, values = w.csr()
    return below_autograd(ops.csr_spmm, crow, col, values, x)


def _linear(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> torch.Tensor:
    ops = torch.ops.sparsemia
    if w.format == "bsr":
        rows, cols = w.matrix_shape
        mp, kp = w.padded_shape
        if kp != cols:
            x = F.pad(x, (0, kp - cols))
        if bias is not None and mp != rows:
            bias = F.pad(bias, (0, mp - rows))
        y = below_autograd(ops.bsr_linear, x, w.crow_indices, w.col_indices, w.values, bias)
        return y[:, :rows] if mp != rows else y
    crow, col, values = w.csr()
    return below_autograd(ops.csr_linear, x, crow, col, values, bias)


# Convolutions run the direct CSR kernel for every format (BSR on its CSR expansion,
# the explicit zeros of stored blocks included).
def _conv2d(x, w, bias, stride, padding, dilation, groups) -> torch.Tensor:
    crow, col, values = w.csr()
    return below_autograd(
        torch.ops.sparsemia.csr_conv2d,
        x, crow, col, values, bias, list(w.shape[2:]), list(stride), list(padding), list(dilation), groups,
    )


def _conv2d_relu_pool(x, w, bias, stride, padding, dilation, groups, pool) -> torch.Tensor:
    crow, col, values = w.csr()
    return below_autograd(
        torch.ops.sparsemia.csr_conv2d_relu_pool,
        x, crow, col, values, bias, list(w.shape[2:]), list(stride), list(padding), list(dilation), groups, pool,
    )


def _conv_supports(x, w, bias, *_params) -> str | None:
    if extension.module() is None:
        return f"the C++ extension is not loaded ({extension.error()})"
    if w.device.type != "cpu" or x.device.type != "cpu":
        return "the cpu backend takes CPU tensors"
    if w.dtype not in DTYPES:
        return f"the cpu backend takes float32 or float64, got {w.dtype}"
    return None


register_impl("spmm", "cpu", _spmm, lambda w, x: _supports(w, x), priority=10)
register_impl("sparse_linear", "cpu", _linear, lambda x, w, b: _supports(w, x, b), priority=10)
register_impl("sparse_conv2d", "cpu", _conv2d, _conv_supports, priority=10)
register_impl("sparse_conv2d_relu_pool", "cpu", _conv2d_relu_pool, lambda *a: _conv_supports(*a[:-1]), priority=10)

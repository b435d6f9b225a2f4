"""Sparse matmul and linear: the public ops, and the fake kernels and autograd of their
``torch.ops.sparsemia`` operators (``csr_*`` / ``bsr_*``; schemas in ``csrc/ops.cpp``).

Autograd keeps the sparsity: the input gradient is the product with the transposed
weight (``csr_transpose`` gives its pattern and the permutation of the values), the
weight gradient is computed only at the stored entries (``csr_sddmm`` / ``bsr_sddmm``),
in the weight's own layout.
"""

from __future__ import annotations

import torch

from sparsemia.formats import SparseWeight
from sparsemia.ops import extension
from sparsemia.ops.checks import (
    check_bias,
    check_operand,
    check_weight,
    meta_bias,
    meta_bsr_values,
    meta_csr_values,
    meta_pattern,
    meta_values,
)
from sparsemia.ops.registry import select_backend

__all__ = ["sparse_linear", "spmm", "transposed_csr"]


def spmm(w: SparseWeight, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Sparse times dense: ``w @ x``.

    Args:
        w: sparse weight, matrix shape ``[M, K]`` (any format).
        x: dense ``[K, N]``, any strides, the weight's dtype and device.
        backend: ``None``/``"auto"``, or one of :data:`sparsemia.ops.BACKENDS` to force it.

    Returns:
        dense ``[M, N]``. Differentiable with respect to ``x`` and ``w.values``.
    """
    w = check_weight(w)
    x = check_operand(x, w, "x")
    rows, cols = w.matrix_shape
    if x.dim() != 2 or x.shape[0] != cols:
        raise ValueError(f"x: expected shape ({cols}, N) for a weight of shape {(rows, cols)}, got {tuple(x.shape)}")
    return select_backend("spmm", w, x, backend=backend).fn(w, x)


def sparse_linear(
    x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None = None, *, backend: str | None = None
) -> torch.Tensor:
    """Like ``F.linear(x, w.to_dense(), bias)`` with a sparse weight.

    Args:
        x: ``[..., K]``, any leading dims and strides.
        w: sparse weight of matrix shape ``[M, K]``.
        bias: ``[M]`` or None.

    Returns:
        ``[..., M]``. Differentiable with respect to ``x``, ``w.values`` and ``bias``.
    """
    w = check_weight(w)
    x = check_operand(x, w, "x")
    rows, cols = w.matrix_shape
    if x.dim() < 1 or x.shape[-1] != cols:
        raise ValueError(f"x: expected last dimension {cols} (the weight's in_features), got shape {tuple(x.shape)}")
    check_bias(bias, w, rows)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, cols)
    y = select_backend("sparse_linear", x2, w, bias, backend=backend).fn(x2, w, bias)
    return y.reshape(*lead, rows)


def transposed_csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, ncols: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transpose of a CSR matrix with ``ncols`` columns (or of a BSR one with ``ncols`` block
    columns: its blocks are transposed too), by the compiled ``csr_transpose``."""
    crow_t, col_t, perm = torch.ops.sparsemia.csr_transpose(crow, col, ncols)
    values_t = values[perm]
    return crow_t, col_t, values_t.transpose(1, 2).contiguous() if values.dim() == 3 else values_t


# ------------------------------------------------------------------ fake kernels


def _fake_rows(crow, col, values, x, op: str, blocked: bool, features: int, layout: str) -> int:
    """Checks a CSR/BSR weight against ``x`` (features along dim ``features``); its number of rows."""
    meta_pattern(crow, col, op)
    meta_values(values, x, op)
    torch._check(x.dim() == 2, lambda: f"{op}: x must be 2-D {layout}, got {x.dim()}-D")
    if not blocked:
        meta_csr_values(values, col, op)
        return crow.shape[0] - 1
    meta_bsr_values(values, col, op)
    torch._check(x.shape[features] % values.shape[2] == 0,
                 lambda: f"{op}: x's {x.shape[features]} features must be a multiple of the block width {values.shape[2]}")
    return (crow.shape[0] - 1) * values.shape[1]


def _fake_spmm(crow, col, values, x, op: str, blocked: bool):
    return x.new_empty(_fake_rows(crow, col, values, x, op, blocked, 0, "[K, N]"), x.shape[1])


def _fake_linear(x, crow, col, values, bias, op: str, blocked: bool):
    rows = _fake_rows(crow, col, values, x, op, blocked, 1, "[B, K]")
    meta_bias(bias, values, [rows], op)
    return x.new_empty(x.shape[0], rows)


def _fake_sddmm(crow, col, a, b, op: str):
    meta_pattern(crow, col, op)
    meta_values(a, b, op, "b")
    torch._check(
        a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[1],
        lambda: f"{op}: a [M, N] and b [K, N] must be 2-D with the same N, got {list(a.shape)} and {list(b.shape)}",
    )


def _register_fakes() -> None:
    lib = "sparsemia::"

    @torch.library.register_fake(lib + "csr_spmm")
    def _(crow, col, values, x):
        return _fake_spmm(crow, col, values, x, "csr_spmm", blocked=False)

    @torch.library.register_fake(lib + "bsr_spmm")
    def _(crow, col, values, x):
        return _fake_spmm(crow, col, values, x, "bsr_spmm", blocked=True)

    @torch.library.register_fake(lib + "csr_linear")
    def _(x, crow, col, values, bias):
        return _fake_linear(x, crow, col, values, bias, "csr_linear", blocked=False)

    @torch.library.register_fake(lib + "bsr_linear")
    def _(x, crow, col, values, bias):
        return _fake_linear(x, crow, col, values, bias, "bsr_linear", blocked=True)

    @torch.library.register_fake(lib + "csr_sddmm")
    def _(crow, col, a, b):
        _fake_sddmm(crow, col, a, b, "csr_sddmm")
        torch._check(a.shape[0] == crow.shape[0] - 1,
                     lambda: f"csr_sddmm: a must have {crow.shape[0] - 1} rows (one per weight row), got {a.shape[0]}")
        return a.new_empty(col.shape[0])

    @torch.library.register_fake(lib + "bsr_sddmm")
    def _(crow, col, a, b, R, C):
        _fake_sddmm(crow, col, a, b, "bsr_sddmm")
        torch._check(R >= 1 and C >= 1, lambda: f"bsr_sddmm: block shape must be positive, got {R}x{C}")
        torch._check(a.shape[0] == (crow.shape[0] - 1) * R,
                     lambda: f"bsr_sddmm: a must have {(crow.shape[0] - 1) * R} rows, got {a.shape[0]}")
        torch._check(b.shape[0] % C == 0, lambda: f"bsr_sddmm: b's rows must be a multiple of the block width {C}")
        return a.new_empty(col.shape[0], R, C)

    @torch.library.register_fake(lib + "csr_transpose")
    def _(crow, col, ncols):
        meta_pattern(crow, col, "csr_transpose")
        torch._check(ncols >= 0, lambda: f"csr_transpose: ncols must be non-negative, got {ncols}")
        return crow.new_empty(ncols + 1), col.new_empty(col.shape[0]), col.new_empty(col.shape[0], dtype=torch.int64)


# --------------------------------------------------------------------- autograd


def _register_autograd() -> None:
    lib = "sparsemia::"
    ops = torch.ops.sparsemia

    def save_linear(ctx, inputs, output):
        x, crow, col, values, bias = inputs
        ctx.save_for_backward(x, crow, col, values)
        ctx.has_bias = bias is not None

    def linear_backward(ctx, grad):
        x, crow, col, values = ctx.saved_tensors
        blocked = values.dim() == 3
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            ncols = x.shape[1] // values.shape[2] if blocked else x.shape[1]
            crow_t, col_t, values_t = transposed_csr(crow, col, values, ncols)
            grad_x = (ops.bsr_linear if blocked else ops.csr_linear)(grad, crow_t, col_t, values_t, None)
        if ctx.needs_input_grad[3]:
            if blocked:
                grad_values = ops.bsr_sddmm(crow, col, grad.t(), x.t(), values.shape[1], values.shape[2])
            else:
                grad_values = ops.csr_sddmm(crow, col, grad.t(), x.t())
        if ctx.has_bias and ctx.needs_input_grad[4]:
            grad_bias = grad.sum(0)
        return grad_x, None, None, grad_values, grad_bias

    def save_spmm(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def spmm_backward(ctx, grad):
        crow, col, values, x = ctx.saved_tensors
        blocked = values.dim() == 3
        grad_values = grad_x = None
        if ctx.needs_input_grad[3]:
            ncols = x.shape[0] // values.shape[2] if blocked else x.shape[0]
            crow_t, col_t, values_t = transposed_csr(crow, col, values, ncols)
            grad_x = (ops.bsr_spmm if blocked else ops.csr_spmm)(crow_t, col_t, values_t, grad)
        if ctx.needs_input_grad[2]:
            if blocked:
                grad_values = ops.bsr_sddmm(crow, col, grad, x, values.shape[1], values.shape[2])
            else:
                grad_values = ops.csr_sddmm(crow, col, grad, x)
        return None, None, grad_values, grad_x

    for fmt in ("csr", "bsr"):
        torch.library.register_autograd(lib + f"{fmt}_linear", linear_backward, setup_context=save_linear)
        torch.library.register_autograd(lib + f"{fmt}_spmm", spmm_backward, setup_context=save_spmm)


if extension.module() is not None:
    _register_fakes()
    _register_autograd()

"""Argument checks shared by the ops.

Two kinds: the public functions' checks at the boundary (a ``TypeError`` /
``ValueError`` naming the argument and what was expected), and the checks of the
fake (meta) kernels of the ``torch.ops.sparsemia`` operators, which reject what the
compiled kernels reject (shapes, ranks, dtypes) with a ``RuntimeError``, as the
compiled kernels do, so that ``torch.compile`` and fake-tensor tracing fail where a
real call would. Data-dependent checks (index ranges, sortedness) stay in the
kernels: a fake tensor has no data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparsemia.formats import SparseWeight

__all__ = [
    "check_bias",
    "check_operand",
    "check_weight",
    "int_pair",
    "meta_bias",
    "meta_bsr_values",
    "meta_csr_values",
    "meta_pattern",
    "meta_values",
]


# ---------------------------------------------------------------- public boundary


def check_weight(w: object, name: str = "w") -> SparseWeight:
    if not isinstance(w, SparseWeight):
        raise TypeError(f"{name}: expected a sparsemia.SparseWeight, got {type(w).__name__}")
    return w


def check_operand(x: object, w: SparseWeight, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != w.dtype:
        raise TypeError(f"{name}: expected dtype {w.dtype} (the weight's), got {x.dtype}")
    if x.device != w.device:
        raise ValueError(f"{name}: expected device {w.device} (the weight's), got {x.device}")
    return x


def check_bias(bias: torch.Tensor | None, w: SparseWeight, out_features: int) -> None:
    if bias is None:
        return
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias: expected a torch.Tensor or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias: expected shape ({out_features},), got {tuple(bias.shape)}")
    if bias.dtype != w.dtype or bias.device != w.device:
        raise TypeError(f"bias: expected dtype {w.dtype} on {w.device} (the weight's), got {bias.dtype} on {bias.device}")


def int_pair(value: object, name: str, minimum: int) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a pair."""
    items = (value, value) if isinstance(value, int) else value
    if (
        isinstance(value, bool)
        or not isinstance(items, tuple | list)
        or len(items) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in items)
    ):
        raise ValueError(f"{name}: expected an integer >= {minimum} or a pair of them, got {value!r}")
    return int(items[0]), int(items[1])


# ------------------------------------------------------------------ fake kernels

_INDEX_DTYPES = (torch.int32, torch.int64)


def meta_pattern(crow: torch.Tensor, col: torch.Tensor, op: str, crow_dim: int = 1) -> None:
    """crow and col of a CSR / BSR pattern: crow ``crow_dim``-D, col 1-D, one int32 or int64 dtype."""
    torch._check(
        crow.dim() == crow_dim and col.dim() == 1,
        lambda: f"{op}: crow and col must be {crow_dim}-D and 1-D, got {crow.dim()}-D and {col.dim()}-D",
    )
    torch._check(
        crow.dtype == col.dtype and crow.dtype in _INDEX_DTYPES,
        lambda: f"{op}: crow and col must both be int32 or both int64, got {crow.dtype} and {col.dtype}",
    )
    torch._check(crow.shape[-1] >= 1, lambda: f"{op}: crow must have at least one element")


def meta_values(values: torch.Tensor, x: torch.Tensor, op: str, x_name: str = "x") -> None:
    """values and x: floating point, one dtype."""
    torch._check(values.is_floating_point(), lambda: f"{op}: values must be floating point, got {values.dtype}")
    torch._check(
        x.dtype == values.dtype, lambda: f"{op}: {x_name} must have the weight's dtype {values.dtype}, got {x.dtype}"
    )


def meta_csr_values(values: torch.Tensor, col: torch.Tensor, op: str) -> None:
    torch._check(
        values.dim() == 1 and values.shape[0] == col.shape[0],
        lambda: f"{op}: values must be 1-D with one entry per column index",
    )


def meta_bsr_values(values: torch.Tensor, col: torch.Tensor, op: str) -> None:
    torch._check(
        values.dim() == 3 and values.shape[0] == col.shape[0],
        lambda: f"{op}: values must be [nblocks, R, C] with one block per column index, got {tuple(values.shape)}",
    )


def meta_bias(bias: torch.Tensor | None, values: torch.Tensor, shape: Sequence[int], op: str) -> None:
    if bias is None:
        return
    torch._check(
        tuple(bias.shape) == tuple(shape), lambda: f"{op}: bias must have shape {list(shape)}, got {list(bias.shape)}"
    )
    torch._check(
        bias.dtype == values.dtype, lambda: f"{op}: bias must have the weight's dtype {values.dtype}, got {bias.dtype}"
    )

"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is a ``SparseWeight``."""

from __future__ import annotations

import torch
from torch import nn

from sparsemia import ops
from sparsemia.formats import SparseWeight
from sparsemia.nn.base import SparseWeightModule

__all__ = ["SparseLinear"]


class SparseLinear(SparseWeightModule):
    """``y = x @ W^T + b`` with ``W`` stored sparsely (CSR, BSR or N:M).

    The stored values are the only weight parameter, so optimizers never see
    (and never revive) pruned entries: the sparsity pattern is fixed by
    construction. Index tensors are buffers and travel with ``.to()`` and the
    ``state_dict``.

    Args:
        weight: the sparse weight, matrix shape ``[out_features, in_features]``.
        bias: ``[out_features]`` or None.
        backend: force a backend for every call (see :mod:`sparsemia.ops`).
    """

    def __init__(self, weight: SparseWeight, bias: torch.Tensor | None = None, *, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(weight, SparseWeight):
            raise TypeError(f"weight: expected a sparsemia.SparseWeight, got {type(weight).__name__}")
        if len(weight.shape) != 2:
            raise ValueError(f"weight: expected a 2-D weight [out, in], got shape {weight.shape}")
        self.out_features, self.in_features = weight.shape
        self.backend = backend
        self._store_weight(weight, bias, self.out_features)

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        mask: torch.Tensor | None = None,
        format: str = "csr",
        *,
        block: tuple[int, int] = (4, 4),
        n: int = 2,
        m: int = 4,
        backend: str | None = None,
    ) -> SparseLinear:
        """Convert ``linear``; entries where ``mask`` is False (default: its zeros) are pruned."""
        weight, bias = cls._dense_weight(linear, nn.Linear, "linear", mask, format, block, n, m)
        return cls(weight, bias, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.sparse_linear(x, self.weight, self.bias, backend=self.backend)

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the same weights (pruned entries as zeros)."""
        dense = self.weight.to_dense().detach()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=dense.device, dtype=dense.dtype)
        with torch.no_grad():
            linear.weight.copy_(dense)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.format_repr()}"

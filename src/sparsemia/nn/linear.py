"""``SparseLinear``: a drop-in ``nn.Linear`` whose weight is a ``SparseWeight``."""

from __future__ import annotations

import torch
from torch import nn

from sparsemia import ops
from sparsemia.formats import SparseWeight

__all__ = ["SparseLinear"]


class SparseLinear(nn.Module):
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
        self.format = weight.format
        self.block = weight.block
        self.n, self.m = weight.n, weight.m
        self.backend = backend
        self.values = nn.Parameter(weight.values.detach().clone())
        self.register_buffer("crow_indices", None if weight.crow_indices is None else weight.crow_indices.clone())
        self.register_buffer("col_indices", weight.col_indices.clone())
        if bias is not None:
            if tuple(bias.shape) != (self.out_features,):
                raise ValueError(f"bias: expected shape ({self.out_features},), got {tuple(bias.shape)}")
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)

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
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        weight = SparseWeight.from_dense(linear.weight.detach(), mask=mask, format=format, block=block, n=n, m=m)
        return cls(weight, None if linear.bias is None else linear.bias.detach(), backend=backend)

    @property
    def weight(self) -> SparseWeight:
        """The sparse weight, sharing this module's tensors (gradients flow into ``values``)."""
        return SparseWeight(
            self.format,
            (self.out_features, self.in_features),
            self.values,
            self.crow_indices,
            self.col_indices,
            block=self.block,
            n=self.n,
            m=self.m,
            validate=False,
        )

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
        w = self.weight
        fmt = f"bsr{self.block}" if self.format == "bsr" else f"{self.n}:{self.m}" if self.format == "nm" else self.format
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"format={fmt}, sparsity={w.sparsity:.3f}, nnz={w.nnz}"
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # A checkpoint of the same layer may hold a different number of nonzeros
        # (pruned further, say): take its tensors' shapes before copying.
        for name in ("values", "crow_indices", "col_indices"):
            key = prefix + name
            current = getattr(self, name)
            if key in state_dict and current is not None and state_dict[key].shape != current.shape:
                incoming = state_dict[key]
                fresh = torch.empty(incoming.shape, dtype=current.dtype if current.is_floating_point() else incoming.dtype,
                                    device=current.device)
                if name == "values":
                    self.values = nn.Parameter(fresh, requires_grad=current.requires_grad)
                else:
                    setattr(self, name, fresh)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

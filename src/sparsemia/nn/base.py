"""What every sparse layer shares: how it stores its ``SparseWeight`` as a module."""

from __future__ import annotations

import torch
from torch import nn

from sparsemia.formats import SparseWeight

__all__ = ["SparseWeightModule"]


class SparseWeightModule(nn.Module):
    """Holds a sparse weight: ``values`` is the only weight parameter, indices are buffers.

    So optimizers never see (and never revive) pruned entries, and the
    pattern travels with ``.to()`` and the ``state_dict``.
    """

    def _store_weight(self, weight: SparseWeight, bias: torch.Tensor | None, out_features: int) -> None:
        self.weight_shape = tuple(weight.shape)
        self.format = weight.format
        self.block = weight.block
        self.n, self.m = weight.n, weight.m
        self.values = nn.Parameter(weight.values.detach().clone())
        self.register_buffer("crow_indices", None if weight.crow_indices is None else weight.crow_indices.clone())
        self.register_buffer("col_indices", weight.col_indices.clone())
        if bias is not None:
            if tuple(bias.shape) != (out_features,):
                raise ValueError(f"bias: expected shape ({out_features},), got {tuple(bias.shape)}")
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)

    @staticmethod
    def _dense_weight(module: nn.Module, kind: type[nn.Module], name: str, mask: torch.Tensor | None, format: str,
                      block: tuple[int, int], n: int, m: int) -> tuple[SparseWeight, torch.Tensor | None]:
        """The sparse weight and the bias of a dense layer ``module`` (checked to be a ``kind``)."""
        if not isinstance(module, kind):
            raise TypeError(f"{name}: expected an nn.{kind.__name__}, got {type(module).__name__}")
        weight = SparseWeight.from_dense(module.weight.detach(), mask=mask, format=format, block=block, n=n, m=m)
        return weight, None if module.bias is None else module.bias.detach()

    @property
    def weight(self) -> SparseWeight:
        """The sparse weight, sharing this module's tensors (gradients flow into ``values``).

        One object per module, rebuilt only when the module's tensors are replaced (``.to()``
        of buffers, loading a checkpoint of another size), so the patterns it derives and
        caches (CSR of BSR / N:M, its transpose) are computed once, not per call.
        """
        w = self.__dict__.get("_weight")
        if (
            w is None
            or w.values is not self.values
            or w.crow_indices is not self.crow_indices
            or w.col_indices is not self.col_indices
        ):
            w = SparseWeight(
                self.format,
                self.weight_shape,
                self.values,
                self.crow_indices,
                self.col_indices,
                block=self.block,
                n=self.n,
                m=self.m,
                validate=False,
            )
            self.__dict__["_weight"] = w
        return w

    def format_repr(self) -> str:
        w = self.weight
        fmt = f"bsr{self.block}" if self.format == "bsr" else f"{self.n}:{self.m}" if self.format == "nm" else self.format
        return f"bias={self.bias is not None}, format={fmt}, sparsity={w.sparsity:.3f}, nnz={w.nnz}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # A checkpoint of the same layer may hold a different number of nonzeros
        # (pruned further, say): take its tensors' shapes before copying.
        for name in ("values", "crow_indices", "col_indices"):
            key = prefix + name
            current = getattr(self, name)
            if key in state_dict and current is not None and state_dict[key].shape != current.shape:
                incoming = state_dict[key]
                dtype = current.dtype if current.is_floating_point() else incoming.dtype
                fresh = torch.empty(incoming.shape, dtype=dtype, device=current.device)
                if name == "values":
                    self.values = nn.Parameter(fresh, requires_grad=current.requires_grad)
                else:
                    setattr(self, name, fresh)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

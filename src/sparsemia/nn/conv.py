"""``SparseConv2d``: a drop-in ``nn.Conv2d`` whose weight is a ``SparseWeight``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsemia import ops
from sparsemia.formats import SparseWeight

__all__ = ["SparseConv2d"]


class SparseConv2d(nn.Module):
    """``y = conv2d(x, W) + b`` with ``W`` ``[Cout, Cin/groups, kh, kw]`` stored sparsely.

    As in :class:`~sparsemia.nn.SparseLinear`, the stored values are the only
    weight parameter (pruned taps cannot come back under training) and the index
    tensors are buffers that travel with ``.to()`` and the ``state_dict``.

    Args:
        weight: the sparse 4-D weight.
        bias: ``[Cout]`` or None.
        stride, padding, dilation, groups: as for ``nn.Conv2d`` (padding an int, a pair, "valid" or "same").
        padding_mode: ``"zeros"``, or ``"reflect"``, ``"replicate"``, ``"circular"`` (applied with
            ``F.pad`` before an unpadded sparse convolution, as ``nn.Conv2d`` does).
        backend: force a backend for every call (see :mod:`sparsemia.ops`).
    """

    def __init__(
        self,
        weight: SparseWeight,
        bias: torch.Tensor | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(weight, SparseWeight):
            raise TypeError(f"weight: expected a sparsemia.SparseWeight, got {type(weight).__name__}")
        if len(weight.shape) != 4:
            raise ValueError(f"weight: expected a 4-D weight [Cout, Cin/groups, kh, kw], got shape {weight.shape}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"padding_mode: expected 'zeros', 'reflect', 'replicate' or 'circular', got {padding_mode!r}")
        if padding_mode != "zeros" and isinstance(padding, str):
            raise ValueError(f"padding: padding_mode={padding_mode!r} needs a numeric padding, got {padding!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
            raise ValueError(f"groups: expected a positive integer dividing Cout={weight.shape[0]}, got {groups!r}")
        self.out_channels = weight.shape[0]
        self.in_channels = weight.shape[1] * groups
        self.kernel_size = (weight.shape[2], weight.shape[3])
        self.stride = _as_pair(stride)
        self.padding = padding if isinstance(padding, str) else _as_pair(padding)
        self.dilation = _as_pair(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        self.format = weight.format
        self.block = weight.block
        self.n, self.m = weight.n, weight.m
        self.backend = backend
        self.values = nn.Parameter(weight.values.detach().clone())
        self.register_buffer("crow_indices", None if weight.crow_indices is None else weight.crow_indices.clone())
        self.register_buffer("col_indices", weight.col_indices.clone())
        if bias is not None:
            if tuple(bias.shape) != (self.out_channels,):
                raise ValueError(f"bias: expected shape ({self.out_channels},), got {tuple(bias.shape)}")
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.register_parameter("bias", None)

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        mask: torch.Tensor | None = None,
        format: str = "csr",
        *,
        block: tuple[int, int] = (4, 4),
        n: int = 2,
        m: int = 4,
        backend: str | None = None,
    ) -> SparseConv2d:
        """Convert ``conv``; taps where ``mask`` is False (default: its zeros) are pruned.

        ``mask`` has the weight's shape ``[Cout, Cin/groups, kh, kw]``. For BSR,
        ``block = (r, c)`` groups ``r`` output channels by ``c`` columns of the
        flattened ``Cin/groups*kh*kw`` kernel.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv: expected an nn.Conv2d, got {type(conv).__name__}")
        weight = SparseWeight.from_dense(conv.weight.detach(), mask=mask, format=format, block=block, n=n, m=m)
        return cls(
            weight,
            None if conv.bias is None else conv.bias.detach(),
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.padding_mode,
            backend=backend,
        )

    @property
    def weight(self) -> SparseWeight:
        """The sparse weight, sharing this module's tensors (gradients flow into ``values``)."""
        return SparseWeight(
            self.format,
            (self.out_channels, self.in_channels // self.groups, *self.kernel_size),
            self.values,
            self.crow_indices,
            self.col_indices,
            block=self.block,
            n=self.n,
            m=self.m,
            validate=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            padding = 0
        return ops.sparse_conv2d(
            x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups, backend=self.backend
        )

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same weights (pruned taps as zeros)."""
        dense = self.weight.to_dense().detach()
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, bias=self.bias is not None, padding_mode=self.padding_mode, device=dense.device,
            dtype=dense.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(dense)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        w = self.weight
        fmt = f"bsr{self.block}" if self.format == "bsr" else f"{self.n}:{self.m}" if self.format == "nm" else self.format
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", bias={self.bias is not None}, format={fmt}, sparsity={w.sparsity:.3f}, nnz={w.nnz}"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # A checkpoint of the same layer may hold a different number of nonzeros: take its shapes first.
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


def _as_pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return int(value[0]), int(value[1])

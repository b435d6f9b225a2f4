"""``SparseConv2d``: a drop-in ``nn.Conv2d`` whose weight is a ``SparseWeight``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparsemia import ops
from sparsemia.formats import SparseWeight
from sparsemia.nn.base import SparseWeightModule

__all__ = ["SparseConv2d"]


class SparseConv2d(SparseWeightModule):
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
        fused_relu_pool: None, or ``k >= 1``: the layer's output is ``max_pool2d(relu(conv), k)``
            (``k = 1``: the ReLU alone), computed by :func:`sparsemia.ops.sparse_conv2d_relu_pool`.
            :func:`sparsemia.sparsify` sets it where a ReLU (and a max-pool) follow the layer in an
            ``nn.Sequential``, leaving :class:`~sparsemia.nn.FoldedLayer` placeholders in their place.
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
        fused_relu_pool: int | None = None,
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
        self.backend = backend
        self.fused_relu_pool = fused_relu_pool
        self._store_weight(weight, bias, self.out_channels)

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
        weight, bias = cls._dense_weight(conv, nn.Conv2d, "conv", mask, format, block, n, m)
        return cls(
            weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode, backend=backend
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            padding = 0
        if self.fused_relu_pool is not None:
            return ops.sparse_conv2d_relu_pool(
                x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups, self.fused_relu_pool,
                backend=self.backend,
            )
        return ops.sparse_conv2d(
            x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups, backend=self.backend
        )

    @property
    def fused_relu_pool(self) -> int | None:
        return self._fused_relu_pool

    @fused_relu_pool.setter
    def fused_relu_pool(self, pool: int | None) -> None:
        if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
            raise ValueError(f"fused_relu_pool: expected None or a positive integer, got {pool!r}")
        self._fused_relu_pool = pool

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same weights (pruned taps as zeros; a fused ReLU / pooling is not
        part of it: :func:`sparsemia.densify` restores those layers)."""
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
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.fused_relu_pool is not None:
            s += ", fused=relu" + (f"+maxpool{self.fused_relu_pool}" if self.fused_relu_pool > 1 else "")
        return s + f", {self.format_repr()}"


def _as_pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return int(value[0]), int(value[1])

"""Dense weights under a block mask, for training with block sparsity: the public op.

While a block-pruned model trains, its weight stays a dense ``[M, K]`` tensor (the
optimizer's view) and a boolean ``block_mask [ceil(M/R), ceil(K/C)]`` says which
``R x C`` blocks are kept. :func:`masked_linear` computes with the masked weight; the
``triton`` backend (``torch.ops.sparsemia.triton_masked_linear``) never materialises it
and skips pruned blocks, forward and backward, so masked training keeps the pattern.
"""

from __future__ import annotations

import torch

from sparsemia.ops.registry import select_backend

__all__ = ["expand_block_mask", "masked_linear"]


def expand_block_mask(block_mask: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """The element mask ``[M, K]`` (bool) of a block mask ``[ceil(M/R), ceil(K/C)]``."""
    R, C = block
    M, K = shape
    return block_mask.bool().repeat_interleave(R, 0).repeat_interleave(C, 1)[:M, :K]


def _check(x: torch.Tensor, weight: torch.Tensor, block_mask: torch.Tensor, bias: torch.Tensor | None,
           block: tuple[int, int]) -> None:
    for name, t in (("x", x), ("weight", weight), ("block_mask", block_mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D [M, K] tensor, got shape {tuple(weight.shape)}")
    M, K = weight.shape
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"x: expected last dimension {K} (the weight's in_features), got shape {tuple(x.shape)}")
    if x.dtype != weight.dtype or x.device != weight.device:
        raise TypeError(f"x: expected dtype {weight.dtype} on {weight.device} (the weight's), got {x.dtype} on {x.device}")
    if not (isinstance(block, tuple | list) and len(block) == 2 and all(isinstance(b, int) and b >= 1 for b in block)):
        raise ValueError(f"block: expected (R, C) with positive integers, got {block!r}")
    R, C = block
    expected = (-(-M // R), -(-K // C))
    if tuple(block_mask.shape) != expected or block_mask.device != weight.device:
        raise ValueError(
            f"block_mask: expected shape {expected} on {weight.device} for weight {tuple(weight.shape)} and block "
            f"{tuple(block)}, got {tuple(block_mask.shape)} on {block_mask.device}"
        )
    if block_mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"block_mask: expected a bool or uint8 tensor, got {block_mask.dtype}")
    if bias is not None and (tuple(bias.shape) != (M,) or bias.dtype != weight.dtype or bias.device != weight.device):
        raise ValueError(f"bias: expected shape ({M},) with the weight's dtype and device, got {tuple(bias.shape)} {bias.dtype}")


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    block_mask: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    block: tuple[int, int],
    backend: str | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight * expand(block_mask), bias)``, skipping pruned blocks.

    Args:
        x: ``[..., K]``, the weight's dtype and device.
        weight: dense ``[M, K]`` (any strides).
        block_mask: ``[ceil(M/R), ceil(K/C)]`` bool (or 0/1 uint8); True keeps a block.
        bias: ``[M]`` or None.
        block: ``(R, C)``; the triton backend takes 16, 32, 64 or 128 for each.
        backend: ``None``/``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        ``[..., M]``. Differentiable with respect to ``x``, ``weight`` (zero in
        pruned blocks) and ``bias``.
    """
    _check(x, weight, block_mask, bias, block)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, weight.shape[1])
    block = (int(block[0]), int(block[1]))
    y = select_backend("masked_linear", x2, weight, block_mask, bias, block, backend=backend).fn(
        x2, weight, block_mask, bias, block
    )
    return y.reshape(*lead, weight.shape[0])

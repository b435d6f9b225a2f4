"""Magnitude masks for each sparsity structure, on plain tensors (no modules).

Every structure is seen on the weight's 2-D GEMM view ``[out, in * kh * kw]``
(a convolution as its im2col matrix), the view the sparse kernels store:

- ``unstructured``: single weights, scored by ``|w|``.
- ``block``: ``r × c`` tiles of the 2-D view, scored by their L2 norm; both
  dimensions must be divisible by the block.
- ``nm``: in every run of ``m`` consecutive weights along a row (the reduction
  dimension), the ``n`` largest ``|w|`` are kept; ``m`` must divide the row length.
- ``filter``: whole rows (output channels), scored by mean ``|w|`` (the L1 norm
  of Li et al. 2017, divided by the row length so filters of different layers
  compare under a global scope).

A target sparsity ``s`` prunes exactly ``floor(s * units + 1/2)`` of a layer's
units (weights, blocks or rows) for ``scope="layer"``, or of all units of the
targeted layers together for ``scope="global"``. Ties are broken by position,
so masks are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

__all__ = ["compute_masks", "keep_highest", "units_to_prune", "nm_mask", "gemm_shape"]


def gemm_shape(weight: torch.Tensor) -> tuple[int, int]:
    """The 2-D GEMM view of a weight: ``[out, everything else]``."""
    rows = weight.shape[0]
    return rows, weight.numel() // rows if rows else 0


def units_to_prune(sparsity: float, units: int) -> int:
    """How many of ``units`` to prune for a target ``sparsity`` (round half up)."""
    return min(units, math.floor(sparsity * units + 0.5))


def _block_units(
    weight: torch.Tensor, block: tuple[int, int], layer: str
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    rows, cols = gemm_shape(weight)
    r, c = block
    if rows % r or cols % c:
        raise ValueError(
            f"block: {r}x{c} does not divide layer {layer!r}, whose weight is {rows}x{cols} as a matrix; "
            "choose a block that divides both dimensions or exclude the layer"
        )
    tiles = weight.detach().reshape(rows // r, r, cols // c, c).float()
    scores = tiles.pow(2).sum(dim=(1, 3)).sqrt().flatten()

    def expand(keep: torch.Tensor) -> torch.Tensor:
        grid = keep.reshape(rows // r, cols // c)
        return grid.repeat_interleave(r, 0).repeat_interleave(c, 1).reshape(weight.shape)

    return scores, expand


def _units(
    weight: torch.Tensor, structure: str, block: tuple[int, int], layer: str
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Scores of a layer's prunable units and the map from a kept-units vector to a weight mask."""
    if structure == "unstructured":
        return weight.detach().abs().flatten().float(), lambda keep: keep.reshape(weight.shape)
    if structure == "block":
        return _block_units(weight, block, layer)
    if structure == "filter":
        rows, cols = gemm_shape(weight)
        scores = weight.detach().reshape(rows, cols).abs().float().mean(dim=1)
        return scores, lambda keep: keep[:, None].expand(rows, cols).reshape(weight.shape)
    raise ValueError(f"structure: expected one of ['unstructured', 'block', 'filter'] here, got {structure!r}")


def keep_highest(scores: torch.Tensor, prune_count: int) -> torch.Tensor:
    """Bool mask of ``scores`` that drops the ``prune_count`` lowest (ties: the earlier position first)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if prune_count:
        order = torch.argsort(scores, stable=True)
        keep[order[:prune_count]] = False
    return keep


def nm_mask(weight: torch.Tensor, n: int, m: int, layer: str = "weight") -> torch.Tensor:
    """Bool mask keeping the ``n`` largest ``|w|`` of every ``m`` consecutive weights along each row."""
    rows, cols = gemm_shape(weight)
    if cols % m:
        raise ValueError(
            f"m: {n}:{m} sparsity needs the reduction dimension to be a multiple of {m}, "
            f"but layer {layer!r} has {cols} (weight {tuple(weight.shape)}); exclude the layer or choose another m"
        )
    groups = weight.detach().abs().float().reshape(rows, cols // m, m)
    order = torch.argsort(groups, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(weight.shape)


def compute_masks(
    weights: Mapping[str, torch.Tensor],
    targets: Mapping[str, float],
    structure: str,
    scope: str = "layer",
    block: tuple[int, int] = (4, 4),
    n: int = 2,
    m: int = 4,
) -> dict[str, torch.Tensor]:
    """Bool masks (``True`` = kept) for ``weights`` meeting ``targets`` under ``structure`` and ``scope``.

    Args:
        weights: the tensors to score, by layer name.
        targets: sparsity per layer name (a subset of ``weights``); for
            ``scope="global"`` all values must be equal (one global target).
        structure: ``"unstructured"``, ``"block"``, ``"nm"`` or ``"filter"``.
        scope: ``"layer"`` or ``"global"`` (ignored for ``"nm"``, which is local by definition).
        block: ``(r, c)`` for ``structure="block"``.
        n, m: keep ``n`` of every ``m`` for ``structure="nm"``.
    """
    if structure == "nm":
        return {name: nm_mask(weights[name], n, m, name) for name in targets}
    units = {name: _units(weights[name], structure, block, name) for name in targets}
    if scope == "layer":
        return {
            name: expand(keep_highest(scores, units_to_prune(targets[name], scores.numel())))
            for name, (scores, expand) in units.items()
        }
    if not units:
        return {}
    sparsity = next(iter(targets.values()))
    device = next(iter(units.values()))[0].device
    pooled = torch.cat([scores.to(device) for scores, _ in units.values()])
    keep = keep_highest(pooled, units_to_prune(sparsity, pooled.numel()))
    result: dict[str, torch.Tensor] = {}
    offset = 0
    for name, (scores, expand) in units.items():
        result[name] = expand(keep[offset : offset + scores.numel()].to(scores.device))
        offset += scores.numel()
    return result

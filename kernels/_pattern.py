"""Sparsity-pattern bookkeeping on any device, in plain torch: the transposed pattern for backward passes."""

from __future__ import annotations

import torch


def transpose_pattern(
    crow: torch.Tensor, col: torch.Tensor, ncols: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transpose of one or ``G`` stacked compressed-row patterns.

    Args:
        crow: ``[R+1]`` or ``[G, R+1]`` row offsets (int32/int64) into ``col``;
            ``crow`` starts at 0 and model ``g``'s entries follow model ``g-1``'s.
        col: ``[nnz]`` column (or block-column) indices, sorted within each row.
        ncols: columns (block columns) of each pattern.

    Returns:
        ``(crow_t, col_t, perm)``: the transposed pattern in ``crow``'s shape
        convention (``[ncols+1]`` or ``[G, ncols+1]``) with offsets into the same
        global numbering, sorted columns, and ``perm [nnz]`` (int64) such that
        entry ``q`` of the transpose is entry ``perm[q]`` of the input.

    Shapes stay static (no data-dependent sizes), so this also runs under
    fake tensors. Entries keep their order within each transposed row.
    """
    stacked = crow.dim() == 2
    crow2 = crow.reshape(-1, crow.shape[-1]).to(torch.int64)
    groups, rows = crow2.shape[0], crow2.shape[1] - 1
    nnz = col.numel()
    device = col.device
    counts = (crow2[:, 1:] - crow2[:, :-1]).reshape(-1)
    row_of = torch.repeat_interleave(torch.arange(groups * rows, device=device), counts, output_size=nnz)
    key = torch.div(row_of, max(rows, 1), rounding_mode="floor") * ncols + col.to(torch.int64)
    # Entries are stored by (model, row); a stable sort by (model, column) keeps rows increasing.
    perm = torch.argsort(key, stable=True)
    col_t = (row_of[perm] % max(rows, 1)).to(col.dtype)
    counts_t = torch.zeros(groups * ncols, dtype=torch.int64, device=device)
    counts_t.index_add_(0, key, torch.ones_like(key))
    offsets = torch.zeros(groups * ncols + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(counts_t, 0)
    crow_t = offsets.new_zeros(groups, 1) if ncols == 0 else offsets.unfold(0, ncols + 1, ncols)
    crow_t = crow_t.to(crow.dtype).contiguous()
    return (crow_t if stacked else crow_t[0]), col_t, perm

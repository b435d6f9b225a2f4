"""``SparseWeight``: the one interface where pruning and the kernels meet.

A pruned weight is stored in one of three formats, each holding plain tensors
(so it moves with ``.to()`` and lives in a ``state_dict``):

* ``csr``: ``crow_indices [M+1]``, ``col_indices [nnz]`` (sorted within each
  row), ``values [nnz]``. Indices are int32, int64 only past 2**31 nonzeros.
* ``bsr``: blocks of ``block = (r, c)``; ``crow_indices [ceil(M/r)+1]``,
  ``col_indices [nblocks]`` (block columns, sorted), ``values [nblocks, r, c]``.
  A shape that is not a multiple of the block is padded with zeros inside the
  last blocks; the logical ``shape`` is kept.
* ``nm``: ``n`` of every ``m`` consecutive weights along a row are kept;
  ``values [M, K*n/m]`` and ``indices [M, K*n/m]`` (int8 offsets within each
  group of ``m``, increasing). Its nonzeros in row-major order are exactly a
  CSR matrix with ``K*n/m`` entries per row, which is how the CPU runs it.

Weights of any rank are stored as the matrix ``[shape[0], prod(shape[1:])]``
(a convolution's ``[Cout, Cin/groups, kh, kw]`` becomes ``[Cout, Cin/groups*kh*kw]``)
and ``to_dense()`` gives back the original shape exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["FORMATS", "SparseWeight", "csr_from_coo", "index_dtype", "transpose_pattern"]

FORMATS = ("csr", "bsr", "nm")
_INDEX_DTYPES = (torch.int32, torch.int64)


def index_dtype(largest: int) -> torch.dtype:
    """The index dtype of a pattern whose offsets and indices reach ``largest``: int32, or int64
    past 2**31 - 1 (the one place this choice is made)."""
    return torch.int32 if largest < 2**31 - 1 else torch.int64


def csr_from_coo(
    row: torch.Tensor, col: torch.Tensor, nrows: int, ncols: int, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR pattern of entries at ``(row, col)`` (distinct positions, any order).

    Returns ``(crow [nrows+1], col [nnz], perm [nnz] int64)``: columns sorted within each
    row, and entry ``q`` of the CSR is input entry ``perm[q]``. Indices have ``dtype``
    (default: :func:`index_dtype`). Shapes are static (no data-dependent sizes), so this
    also runs on fake tensors.
    """
    row, col = row.to(torch.int64), col.to(torch.int64)
    nnz = row.numel()
    dtype = dtype if dtype is not None else index_dtype(max(nnz, nrows, ncols))
    perm = torch.argsort(row * max(ncols, 1) + col, stable=True)
    counts = torch.zeros(nrows, dtype=torch.int64, device=row.device)
    counts.index_add_(0, row, torch.ones_like(row))
    crow = torch.zeros(nrows + 1, dtype=torch.int64, device=row.device)
    crow[1:] = torch.cumsum(counts, 0)
    return crow.to(dtype), col[perm].to(dtype), perm


def transpose_pattern(
    crow: torch.Tensor, col: torch.Tensor, ncols: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transpose of one or ``G`` stacked compressed-row patterns, in plain torch (any device).

    Args:
        crow: ``[R+1]`` or ``[G, R+1]`` row offsets (int32/int64) into ``col``; ``crow``
            starts at 0 and model ``g``'s entries follow model ``g-1``'s.
        col: ``[nnz]`` column (or block-column) indices, sorted within each row.
        ncols: columns (block columns) of each pattern.

    Returns:
        ``(crow_t, col_t, perm)``: the transposed pattern in ``crow``'s shape convention
        (``[ncols+1]`` or ``[G, ncols+1]``) with offsets into the same global numbering,
        sorted columns, and ``perm [nnz]`` (int64) such that entry ``q`` of the transpose
        is entry ``perm[q]`` of the input. Shapes are static, so this runs on fake tensors.
    """
    stacked = crow.dim() == 2
    crow2 = crow.reshape(-1, crow.shape[-1]).to(torch.int64)
    groups, rows = crow2.shape[0], crow2.shape[1] - 1
    counts = (crow2[:, 1:] - crow2[:, :-1]).reshape(-1)
    row_of = torch.repeat_interleave(torch.arange(groups * rows, device=col.device), counts, output_size=col.numel())
    model = torch.div(row_of, max(rows, 1), rounding_mode="floor")
    # Transposed row (model, column) holds entry (model, row): stored model after model.
    crow_t, col_t, perm = csr_from_coo(model * ncols + col.to(torch.int64), row_of % max(rows, 1), groups * ncols,
                                       max(rows, 1), crow.dtype)
    crow_t = crow_t.new_zeros(groups, 1) if ncols == 0 else crow_t.unfold(0, ncols + 1, ncols).contiguous()
    return (crow_t if stacked else crow_t[0]), col_t, perm


def _as_mask(mask: torch.Tensor | None, dense: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return dense != 0
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(dense.shape):
        raise ValueError(f"mask: expected shape {tuple(dense.shape)} (the weight's), got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask: expected a boolean tensor or one holding only 0 and 1")
        mask = mask != 0
    return mask.to(dense.device)


class SparseWeight:
    """A sparse weight matrix (or convolution kernel) in CSR, BSR or N:M format.

    Build one with :meth:`from_dense`; the constructor takes the raw tensors and
    checks them (index dtypes, ranges, sorted columns) unless ``validate=False``,
    which the layers use for tensors they already own.
    """

    __slots__ = ("format", "shape", "crow_indices", "col_indices", "values", "block", "n", "m", "_derived")

    def __init__(
        self,
        format: str,
        shape: tuple[int, ...] | torch.Size,
        values: torch.Tensor,
        crow_indices: torch.Tensor | None = None,
        col_indices: torch.Tensor | None = None,
        *,
        block: tuple[int, int] | None = None,
        n: int | None = None,
        m: int | None = None,
        validate: bool = True,
    ) -> None:
        self.format = format
        self.shape = tuple(int(s) for s in shape)
        self.values = values
        self.crow_indices = crow_indices
        self.col_indices = col_indices
        self.block = tuple(block) if block is not None else None
        self.n = n
        self.m = m
        # patterns derived from the index tensors (CSR of N:M / BSR), see _pattern()
        self._derived: dict[str, tuple[Any, ...]] = {}
        if validate:
            self._validate()

    # ------------------------------------------------------------------ build
    @classmethod
    def from_dense(
        cls,
        dense: torch.Tensor,
        mask: torch.Tensor | None = None,
        format: str = "csr",
        *,
        block: tuple[int, int] = (4, 4),
        n: int = 2,
        m: int = 4,
    ) -> SparseWeight:
        """Store ``dense`` sparsely; entries where ``mask`` is False (default: zeros) are pruned.

        Args:
            dense: weight of rank >= 2, e.g. ``[out, in]`` or ``[out, in/groups, kh, kw]``.
            mask: boolean (or 0/1) tensor of ``dense``'s shape; True keeps an entry.
            format: ``"csr"``, ``"bsr"`` or ``"nm"``.
            block: ``(r, c)`` block shape for BSR; blocks with any kept entry are stored.
            n, m: for N:M, at most ``n`` kept entries in each group of ``m`` along a row.
        """
        if not isinstance(dense, torch.Tensor):
            raise TypeError(f"dense: expected a torch.Tensor, got {type(dense).__name__}")
        if dense.dim() < 2:
            raise ValueError(f"dense: expected a tensor of rank >= 2, got shape {tuple(dense.shape)}")
        if not dense.is_floating_point():
            raise TypeError(f"dense: expected a floating-point tensor, got {dense.dtype}")
        if format not in FORMATS:
            raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
        dense = dense.detach()
        keep = _as_mask(mask, dense)
        shape = tuple(dense.shape)
        rows, cols = shape[0], math.prod(shape[1:])
        matrix = dense.reshape(rows, cols)
        keep = keep.reshape(rows, cols)
        if format == "csr":
            counts = keep.sum(1)
            nnz = int(counts.sum())
            idt = index_dtype(max(nnz, cols))
            crow = torch.zeros(rows + 1, dtype=idt, device=dense.device)
            crow[1:] = torch.cumsum(counts, 0)
            r, c = keep.nonzero(as_tuple=True)
            return cls("csr", shape, matrix[r, c].contiguous(), crow, c.to(idt).contiguous(), validate=False)
        if format == "bsr":
            br, bc = _check_block(block)
            mp, kp = math.ceil(rows / br) * br, math.ceil(cols / bc) * bc
            padded = torch.zeros(mp, kp, dtype=dense.dtype, device=dense.device)
            padded[:rows, :cols] = torch.where(keep, matrix, torch.zeros((), dtype=dense.dtype, device=dense.device))
            pkeep = torch.zeros(mp, kp, dtype=torch.bool, device=dense.device)
            pkeep[:rows, :cols] = keep
            blocks = padded.reshape(mp // br, br, kp // bc, bc).transpose(1, 2)  # [nbr, nbc, br, bc]
            block_keep = pkeep.reshape(mp // br, br, kp // bc, bc).any(3).any(1)  # [nbr, nbc]
            counts = block_keep.sum(1)
            nb = int(counts.sum())
            idt = index_dtype(max(nb * br * bc, kp // bc))
            crow = torch.zeros(mp // br + 1, dtype=idt, device=dense.device)
            crow[1:] = torch.cumsum(counts, 0)
            bi, bj = block_keep.nonzero(as_tuple=True)
            values = blocks[bi, bj].contiguous()
            return cls("bsr", shape, values, crow, bj.to(idt).contiguous(), block=(br, bc), validate=False)
        # N:M
        _check_nm(n, m, cols)
        groups = keep.reshape(rows, cols // m, m)
        if bool((groups.sum(-1) > n).any()):
            raise ValueError(
                f"dense: some groups of {m} consecutive weights hold more than {n} kept entries; prune to "
                f"{n}:{m} first (sparsemia.prune.magnitude(..., structure='nm')) or pass a {n}:{m} mask"
            )
        # Keep exactly n slots per group: the kept entries first, padded with
        # pruned positions (stored as explicit zeros), offsets increasing.
        order = torch.argsort((~groups).to(torch.int8), dim=-1, stable=True)[..., :n]
        offsets, _ = torch.sort(order, dim=-1)
        vals = torch.gather(matrix.reshape(rows, cols // m, m), -1, offsets)
        kept = torch.gather(groups, -1, offsets)
        vals = torch.where(kept, vals, torch.zeros((), dtype=vals.dtype, device=vals.device))
        return cls(
            "nm",
            shape,
            vals.reshape(rows, n * (cols // m)).contiguous(),  # explicit sizes: -1 is ambiguous for an empty weight
            None,
            offsets.reshape(rows, n * (cols // m)).to(torch.int8).contiguous(),
            n=n,
            m=m,
            validate=False,
        )

    # --------------------------------------------------------------- queries
    @property
    def matrix_shape(self) -> tuple[int, int]:
        """The stored matrix's shape ``(shape[0], prod(shape[1:]))``."""
        return self.shape[0], math.prod(self.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nnz(self) -> int:
        """Stored entries (BSR: all entries of stored blocks; N:M: ``M*K*n/m``)."""
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of the dense weight's entries that are not stored."""
        total = math.prod(self.shape)
        return 0.0 if total == 0 else 1.0 - min(self.nnz, total) / total

    @property
    def padded_shape(self) -> tuple[int, int]:
        """The stored matrix's shape rounded up to whole blocks (BSR); the matrix shape otherwise."""
        rows, cols = self.matrix_shape
        if self.format != "bsr":
            return rows, cols
        br, bc = self.block
        return math.ceil(rows / br) * br, math.ceil(cols / bc) * bc

    def nbytes(self) -> int:
        """Bytes of the stored tensors (values and indices)."""
        total = self.values.numel() * self.values.element_size()
        for t in (self.crow_indices, self.col_indices):
            if t is not None:
                total += t.numel() * t.element_size()
        return total

    def __repr__(self) -> str:
        extra = f", block={self.block}" if self.format == "bsr" else f", n={self.n}, m={self.m}" if self.format == "nm" else ""
        return (
            f"SparseWeight(format={self.format!r}, shape={self.shape}{extra}, nnz={self.nnz}, "
            f"sparsity={self.sparsity:.3f}, dtype={self.dtype}, device={self.device})"
        )

    # ------------------------------------------------------------ conversion
    def to_dense(self) -> torch.Tensor:
        """The dense weight, exactly (differentiable with respect to ``values``)."""
        rows, cols = self.matrix_shape
        if self.format == "bsr":
            br, bc = self.block
            nbr = self.crow_indices.numel() - 1
            nbc = math.ceil(cols / bc)
            block_rows = _row_ids(self.crow_indices, nbr)
            grid = self.values.new_zeros(nbr, nbc, br, bc)
            grid = grid.index_put((block_rows, self.col_indices.long()), self.values)
            dense = grid.transpose(1, 2).reshape(nbr * br, nbc * bc)[:rows, :cols]
        else:
            crow, col, values = self.csr()
            dense = values.new_zeros(rows, cols)
            dense = dense.index_put((_row_ids(crow, rows), col.long()), values)
        return dense.reshape(self.shape)

    def csr(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(crow, col, values)`` of the stored entries as CSR of the matrix ``[M, K]``.

        N:M: its kept slots (explicit zeros included); BSR: every entry of the stored blocks
        (explicit zeros included, padding beyond the logical shape dropped). ``values`` is
        ``self.values`` or a view / gather of it, so gradients reach ``self.values`` in its own
        layout. The index tensors of N:M and BSR are derived once per pattern and cached.
        """
        if self.format == "csr":
            return self.crow_indices, self.col_indices, self.values
        if self.format == "nm":
            crow, col = self._pattern("csr", self._nm_csr_pattern)
            return crow, col, self.values.reshape(-1)
        crow, col, order = self._pattern("csr", self._bsr_csr_pattern)
        return crow, col, self.values.reshape(-1)[order]

    def transposed(self) -> SparseWeight:
        """The transposed matrix ``[K, M]`` as a 2-D weight: CSR for CSR and N:M, BSR with
        transposed blocks for BSR (values gathered, so differentiable)."""
        rows, cols = self.matrix_shape
        if self.format == "bsr":
            br, bc = self.block
            crow_t, col_t, perm = self._pattern(
                "transposed", lambda: transpose_pattern(self.crow_indices, self.col_indices, math.ceil(cols / bc))
            )
            values = self.values[perm].transpose(1, 2).contiguous()
            return SparseWeight("bsr", (cols, rows), values, crow_t, col_t, block=(bc, br), validate=False)
        crow, col, values = self.csr()
        crow_t, col_t, perm = self._pattern("transposed", lambda: transpose_pattern(crow, col, cols))
        return SparseWeight("csr", (cols, rows), values[perm], crow_t, col_t, validate=False)

    @staticmethod
    def stack_csr(weights: Sequence[SparseWeight]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``G`` weights of one matrix shape (any formats) as one stacked CSR pattern, the layout
        of ``torch.ops.sparsemia.stacked_csr_linear``: ``crow [G, M+1]`` (offsets into the shared
        arrays, model after model), ``col [nnz]``, ``values [nnz]`` (differentiable)."""
        if not weights:
            raise ValueError("weights: expected at least one SparseWeight")
        shape = weights[0].matrix_shape
        for i, w in enumerate(weights):
            if not isinstance(w, SparseWeight) or w.matrix_shape != shape:
                raise ValueError(f"weights[{i}]: expected a SparseWeight of matrix shape {shape}")
        parts = [w.csr() for w in weights]
        offsets = [0]
        for crow, _, _ in parts:
            offsets.append(offsets[-1] + int(crow[-1]) - int(crow[0]))
        idt = index_dtype(max(offsets[-1], shape[1]))
        crow = torch.stack([p[0].to(torch.int64) - p[0][0].to(torch.int64) + offsets[g] for g, p in enumerate(parts)])
        col = torch.cat([p[1].to(idt) for p in parts])
        values = torch.cat([p[2] for p in parts])
        return crow.to(idt), col, values

    def _pattern(self, kind: str, build: Callable[[], tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
        # Derived index tensors, rebuilt only when the index tensors are other objects or
        # were modified in place (one entry per kind: bounded by the weight's lifetime).
        sources = (self.crow_indices, self.col_indices)
        key = tuple(id(t) for t in sources), tuple(-1 if t is None or t.is_inference() else t._version for t in sources)
        hit = self._derived.get(kind)
        if hit is not None and hit[0] == key and all(a is b for a, b in zip(hit[1], sources, strict=True)):
            return hit[2]
        value = build()
        if not any(t is not None and t.is_inference() for t in sources) and not torch.compiler.is_compiling():
            self._derived[kind] = (key, sources, value)
        return value

    def _nm_csr_pattern(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = self.matrix_shape
        per_row = cols * self.n // self.m
        crow = torch.arange(rows + 1, dtype=torch.int32, device=self.device) * per_row
        group = torch.arange(per_row, device=self.device) // self.n * self.m
        col = (group + self.col_indices.to(torch.int64)).to(torch.int32).reshape(-1).contiguous()
        return crow, col

    def _bsr_csr_pattern(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Every entry of every stored block in CSR order (row-major, columns ascending:
        # blocks are sorted within a block row); ``order`` gathers the values.
        rows, cols = self.matrix_shape
        br, bc = self.block
        dev = self.device
        crow_b, col_b = self.crow_indices.long(), self.col_indices.long()
        nblocks, nbr = col_b.numel(), crow_b.numel() - 1
        per_row = crow_b[1:] - crow_b[:-1]
        block_row = torch.repeat_interleave(torch.arange(nbr, device=dev), per_row, output_size=nblocks)
        first = crow_b[block_row]  # first block of each block's block row
        i = torch.arange(br, device=dev)[None, :, None]
        j = torch.arange(bc, device=dev)[None, None, :]
        dest = (first * (br * bc))[:, None, None] + i * (per_row[block_row] * bc)[:, None, None] \
            + ((torch.arange(nblocks, device=dev) - first) * bc)[:, None, None] + j
        order = torch.empty(nblocks * br * bc, dtype=torch.int64, device=dev)
        order[dest.reshape(-1)] = torch.arange(nblocks * br * bc, device=dev)
        row = (block_row[:, None, None] * br + i).expand(nblocks, br, bc).reshape(-1)[order]
        col = (col_b[:, None, None] * bc + j).expand(nblocks, br, bc).reshape(-1)[order]
        if rows % br or cols % bc:
            keep = (row < rows) & (col < cols)
            order, row, col = order[keep], row[keep], col[keep]
        idt = index_dtype(max(col.numel(), cols))
        crow = torch.zeros(rows + 1, dtype=torch.int64, device=dev)
        crow[1:] = torch.cumsum(torch.bincount(row, minlength=rows), 0)
        return crow.to(idt), col.to(idt), order

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SparseWeight:
        """A copy on ``device`` and/or with floating-point ``dtype`` for the values (indices keep theirs)."""
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point dtype, got {dtype}")
        move = (lambda t: None if t is None else t.to(device)) if device is not None else (lambda t: t)
        return SparseWeight(
            self.format,
            self.shape,
            self.values.to(device=device, dtype=dtype),
            move(self.crow_indices),
            move(self.col_indices),
            block=self.block,
            n=self.n,
            m=self.m,
            validate=False,
        )

    def with_values(self, values: torch.Tensor) -> SparseWeight:
        """The same sparsity pattern holding other values (same shape as ``self.values``)."""
        if tuple(values.shape) != tuple(self.values.shape):
            raise ValueError(f"values: expected shape {tuple(self.values.shape)}, got {tuple(values.shape)}")
        return SparseWeight(
            self.format, self.shape, values, self.crow_indices, self.col_indices,
            block=self.block, n=self.n, m=self.m, validate=False,
        )

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and metadata; :meth:`from_state_dict` rebuilds the weight."""
        state: dict[str, Any] = {
            "format": self.format,
            "shape": torch.tensor(self.shape, dtype=torch.int64),
            "values": self.values,
        }
        if self.crow_indices is not None:
            state["crow_indices"] = self.crow_indices
        if self.col_indices is not None:
            state["col_indices"] = self.col_indices
        if self.block is not None:
            state["block"] = torch.tensor(self.block, dtype=torch.int64)
        if self.format == "nm":
            state["nm"] = torch.tensor([self.n, self.m], dtype=torch.int64)
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> SparseWeight:
        fmt = state["format"]
        nm = state.get("nm")
        block = state.get("block")
        return cls(
            fmt,
            tuple(int(s) for s in state["shape"]),
            state["values"],
            state.get("crow_indices"),
            state.get("col_indices"),
            block=tuple(int(b) for b in block) if block is not None else None,
            n=int(nm[0]) if nm is not None else None,
            m=int(nm[1]) if nm is not None else None,
        )

    # ------------------------------------------------------------- validation
    def _validate(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format: expected one of {FORMATS}, got {self.format!r}")
        if len(self.shape) < 2 or any(s < 0 for s in self.shape):
            raise ValueError(f"shape: expected a rank >= 2 shape of non-negative sizes, got {self.shape}")
        if not isinstance(self.values, torch.Tensor) or not self.values.is_floating_point():
            raise TypeError("values: expected a floating-point torch.Tensor")
        rows, cols = self.matrix_shape
        if self.format == "nm":
            if self.n is None or self.m is None:
                raise ValueError("n, m: an N:M weight needs both n and m")
            _check_nm(self.n, self.m, cols)
            per_row = cols * self.n // self.m
            idx = self.col_indices
            if idx is None or idx.dtype != torch.int8:
                raise TypeError("col_indices: an N:M weight stores int8 offsets within each group")
            if tuple(self.values.shape) != (rows, per_row) or tuple(idx.shape) != (rows, per_row):
                raise ValueError(f"values, col_indices: expected shape {(rows, per_row)} for {self.n}:{self.m}")
            off = idx.reshape(rows, -1, self.n).to(torch.int64)
            if off.numel() and (int(off.min()) < 0 or int(off.max()) >= self.m):
                raise ValueError(f"col_indices: N:M offsets must lie in [0, {self.m})")
            if self.n > 1 and off.numel() and not bool((off[..., 1:] > off[..., :-1]).all()):
                raise ValueError("col_indices: N:M offsets must increase within each group")
            return
        crow, col = self.crow_indices, self.col_indices
        for name, t in (("crow_indices", crow), ("col_indices", col)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor")
            if t.dtype not in _INDEX_DTYPES:
                raise TypeError(f"{name}: expected int32 or int64 indices, got {t.dtype}")
            if t.dim() != 1:
                raise ValueError(f"{name}: expected a 1-D tensor, got shape {tuple(t.shape)}")
            if t.device != self.values.device:
                raise ValueError(f"{name}: expected device {self.values.device} (the values'), got {t.device}")
        if crow.dtype != col.dtype:
            raise TypeError(f"crow_indices, col_indices: expected one index dtype, got {crow.dtype} and {col.dtype}")
        if self.format == "bsr":
            if self.block is None or len(self.block) != 2:
                raise ValueError("block: a BSR weight needs block=(r, c)")
            br, bc = _check_block(self.block)
            nrows, ncols = math.ceil(rows / br), math.ceil(cols / bc)
            if tuple(self.values.shape) != (col.numel(), br, bc):
                raise ValueError(f"values: expected shape {(col.numel(), br, bc)}, got {tuple(self.values.shape)}")
        else:
            nrows, ncols = rows, cols
            if tuple(self.values.shape) != (col.numel(),):
                raise ValueError(f"values: expected shape ({col.numel()},), got {tuple(self.values.shape)}")
        if crow.numel() != nrows + 1:
            raise ValueError(f"crow_indices: expected {nrows + 1} entries, got {crow.numel()}")
        c = crow.to(torch.int64)
        if int(c[0]) != 0 or int(c[-1]) != col.numel():
            raise ValueError(f"crow_indices: expected to start at 0 and end at nnz={col.numel()}")
        if bool((c[1:] < c[:-1]).any()):
            raise ValueError("crow_indices: expected a non-decreasing sequence")
        if col.numel():
            cl = col.to(torch.int64)
            if int(cl.min()) < 0 or int(cl.max()) >= ncols:
                raise ValueError(f"col_indices: expected indices in [0, {ncols}), got [{int(cl.min())}, {int(cl.max())}]")
            starts = torch.zeros(col.numel(), dtype=torch.bool, device=col.device)
            starts[c[:-1][c[:-1] < col.numel()]] = True
            if bool(((cl[1:] <= cl[:-1]) & ~starts[1:]).any()):
                raise ValueError("col_indices: expected strictly increasing columns within each row")


def _row_ids(crow: torch.Tensor, rows: int) -> torch.Tensor:
    counts = (crow[1:] - crow[:-1]).to(torch.int64)
    return torch.repeat_interleave(torch.arange(rows, device=crow.device), counts)


def _check_block(block: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(block, tuple | list)
        or len(block) != 2
        or not all(isinstance(b, int) and b >= 1 for b in block)
    ):
        raise ValueError(f"block: expected (r, c) with positive integers, got {block!r}")
    return int(block[0]), int(block[1])


def _check_nm(n: int, m: int, cols: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n <= m <= 127):
        raise ValueError(f"n, m: expected integers with 1 <= n <= m <= 127, got n={n!r}, m={m!r}")
    if cols % m:
        raise ValueError(f"m: the weight's row length {cols} is not a multiple of m={m}")

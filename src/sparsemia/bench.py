"""Kernel benchmark harness: sparse ops timed against torch in one process.

Every row times, on the same inputs and in the same process, ``F.linear`` with
the dense weight, ``torch.sparse`` CSR, and sparsemia's CSR and BSR kernels,
and reports medians and ratios (timings on a shared machine are noisy, ratios
taken minutes apart are not comparable). Used by ``sparsemia bench`` and
``benchmarks/``.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from sparsemia import ops
from sparsemia.formats import SparseWeight

__all__ = ["LinearBenchRow", "median_time", "block_pruned", "unstructured_pruned", "bench_linear", "CPU_BLOCKS"]

# Block shapes that suit the CPU kernels' register tiles.
CPU_BLOCKS: tuple[tuple[int, int], ...] = ((1, 8), (4, 4), (8, 1), (8, 8))


def median_time(fn: Callable[[], object], repeat: int = 7, min_time: float = 0.0) -> float:
    """Median seconds per call of ``fn`` over ``repeat`` timed runs (after one warm-up).

    A run that is faster than ``min_time`` is repeated within the run and averaged,
    so short calls are not dominated by timer resolution.
    """
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-9)
    inner = max(1, int(min_time / once)) if min_time > 0 else 1
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def unstructured_pruned(rows: int, cols: int, sparsity: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian weight with a uniformly random ``sparsity`` fraction of exact zeros."""
    dense = torch.randn(rows, cols, generator=generator)
    dense[torch.rand(rows, cols, generator=generator) < sparsity] = 0
    return dense


def block_pruned(rows: int, cols: int, sparsity: float, block: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """Gaussian weight whose ``block``-shaped tiles are zero with probability ``sparsity``."""
    br, bc = block
    keep = torch.rand(-(-rows // br), -(-cols // bc), generator=generator) >= sparsity
    mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:rows, :cols]
    return torch.randn(rows, cols, generator=generator) * mask


@dataclass
class LinearBenchRow:
    """One (size, batch, sparsity) point: milliseconds per call and speedups over torch."""

    size: int
    batch: int
    sparsity: float
    dense_ms: float
    torch_csr_ms: float
    csr_ms: float
    bsr_ms: float
    bsr_block: str
    csr_vs_dense: float
    csr_vs_torch_csr: float
    bsr_vs_dense: float
    max_abs_error: float

    def as_dict(self) -> dict:
        return asdict(self)


def bench_linear(
    sizes: Iterable[int] = (1024, 4096),
    batches: Iterable[int] = (1, 16, 64, 256),
    sparsities: Iterable[float] = (0.5, 0.8, 0.9, 0.95, 0.99),
    blocks: Iterable[tuple[int, int]] = CPU_BLOCKS,
    repeat: int = 7,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Iterator[LinearBenchRow]:
    """Yield one row per (size, batch, sparsity): square ``size`` x ``size`` weights, fp32, CPU.

    CSR is timed on an unstructured-pruned weight; BSR on a block-pruned weight
    of the same sparsity for each shape in ``blocks``, reporting the fastest.
    The dense baseline is ``F.linear`` with the same (zero-filled) weight.
    """
    generator = torch.Generator().manual_seed(seed)
    blocks = tuple(blocks)
    for size in sizes:
        for sparsity in sparsities:
            dense = unstructured_pruned(size, size, sparsity, generator).to(dtype)
            csr = SparseWeight.from_dense(dense, format="csr")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch_csr = dense.to_sparse_csr()
            block_weights = {}
            for block in blocks:
                block_dense = block_pruned(size, size, sparsity, block, generator).to(dtype)
                block_weights[block] = (block_dense, SparseWeight.from_dense(block_dense, format="bsr", block=block))
            for batch in batches:
                x = torch.randn(batch, size, generator=generator).to(dtype)
                min_time = 2e-3
                # Defaults bind this iteration's tensors into the timed closures.
                dense_s = median_time(lambda x=x, d=dense: F.linear(x, d), repeat, min_time)
                torch_csr_s = median_time(lambda x=x, t=torch_csr: torch.mm(t, x.t()), repeat, min_time)
                csr_s = median_time(lambda x=x, w=csr: ops.sparse_linear(x, w, backend="cpu"), repeat, min_time)
                error = float((ops.sparse_linear(x, csr, backend="cpu") - F.linear(x, dense)).abs().max())
                best_block, bsr_s = "-", float("inf")
                for block, (block_dense, bsr) in block_weights.items():
                    t = median_time(lambda x=x, w=bsr: ops.sparse_linear(x, w, backend="cpu"), repeat, min_time)
                    error = max(error, float((ops.sparse_linear(x, bsr, backend="cpu") - F.linear(x, block_dense)).abs().max()))
                    if t < bsr_s:
                        best_block, bsr_s = f"{block[0]}x{block[1]}", t
                yield LinearBenchRow(
                    size=size,
                    batch=batch,
                    sparsity=sparsity,
                    dense_ms=dense_s * 1e3,
                    torch_csr_ms=torch_csr_s * 1e3,
                    csr_ms=csr_s * 1e3,
                    bsr_ms=bsr_s * 1e3,
                    bsr_block=best_block,
                    csr_vs_dense=dense_s / csr_s,
                    csr_vs_torch_csr=torch_csr_s / csr_s,
                    bsr_vs_dense=dense_s / bsr_s if blocks else float("nan"),
                    max_abs_error=error,
                )

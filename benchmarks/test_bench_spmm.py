"""pytest-benchmark suite for the sparse linear kernels (run: make bench).

Each group holds one shape; compare the rows of a group (dense F.linear,
torch.sparse CSR, sparsemia CSR and BSR) to read the speedups.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import sparsemia as sm
from sparsemia.bench import block_pruned, unstructured_pruned

CASES = [(size, batch, sparsity) for size in (1024, 4096) for batch in (1, 16, 64, 256) for sparsity in (0.9, 0.95)]


@pytest.fixture(scope="module")
def weights():
    cache = {}

    def get(size, sparsity):
        key = (size, sparsity)
        if key not in cache:
            g = torch.Generator().manual_seed(0)
            dense = unstructured_pruned(size, size, sparsity, g)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch_csr = dense.to_sparse_csr()
            bsr_dense = block_pruned(size, size, sparsity, (4, 4), g)
            cache[key] = (dense, torch_csr, sm.SparseWeight.from_dense(dense),
                          sm.SparseWeight.from_dense(bsr_dense, format="bsr", block=(4, 4)))
        return cache[key]

    return get


@pytest.mark.parametrize("size,batch,sparsity", CASES)
@pytest.mark.parametrize("impl", ["dense", "torch_csr", "csr", "bsr4x4"])
def test_sparse_linear(benchmark, weights, impl, size, batch, sparsity):
    dense, torch_csr, csr, bsr = weights(size, sparsity)
    x = torch.randn(batch, size)
    benchmark.group = f"{size}x{size} batch={batch} sparsity={sparsity:.0%}"
    fn = {
        "dense": lambda: F.linear(x, dense),
        "torch_csr": lambda: torch.mm(torch_csr, x.t()),
        "csr": lambda: sm.ops.sparse_linear(x, csr),
        "bsr4x4": lambda: sm.ops.sparse_linear(x, bsr),
    }[impl]
    benchmark(fn)

"""The ``cuda`` backend: sparsemia's CUDA kernels and torch's 2:4 semi-structured sparsity.

Imported by :mod:`sparsemia.ops.registry` when a CUDA tensor (or ``backend="cuda"``)
shows up. It registers implementations of ``spmm`` and ``sparse_linear`` for CSR
and N:M weights on CUDA tensors:

* CSR (and N:M other than 2:4, run as its CSR expansion): the extension's
  ``torch.ops.sparsemia.csr_*`` CUDA kernels (``csrc/cuda/spmm``), differentiable
  through the autograd formulas of :mod:`sparsemia.ops.matmul`.
* 2:4 in fp16/bf16 on compute capability >= 8.0, for inference (no gradient
  needed): torch's semi-structured sparse tensor cores
  (``torch.sparse.to_sparse_semi_structured``); the compressed weight is cached
  per values tensor.

Priorities are a small heuristic, not a measurement: sparse kernels win only
when the weight is sparse enough, else the dense ``reference`` backend
(cuBLAS on the densified weight) is preferred.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from sparsemia.cache import TensorCache
from sparsemia.formats import SparseWeight
from sparsemia.ops import extension
from sparsemia.ops.registry import register_impl

__all__: list[str] = []

logger = logging.getLogger(__name__)

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# Above these densities cuBLAS on the dense weight beats the CSR kernels
# (tensor cores make dense fp16/bf16 much faster than CUDA-core gathers).
_MAX_DENSITY = {torch.float16: 0.15, torch.bfloat16: 0.15, torch.float32: 0.35, torch.float64: 0.5}


def _extension_reason() -> str | None:
    if extension.module() is None:
        return f"the C++ extension is not loaded ({extension.error()})"
    if not extension.module().with_cuda():
        return "the extension was built without CUDA (needs a CUDA torch and nvcc at build time)"
    return None


def _supports(w: SparseWeight, *tensors: torch.Tensor | None) -> str | None:
    if w.device.type != "cuda" or any(t is not None and t.device.type != "cuda" for t in tensors):
        return "the cuda backend takes CUDA tensors"
    if w.format not in ("csr", "nm"):
        return f"the cuda backend takes CSR or N:M weights, got {w.format} (BSR runs on the triton backend)"
    if w.dtype not in _DTYPES:
        return f"dtype {w.dtype} is not supported"
    if _semi_structured_reason(w) is None:
        return None
    return _extension_reason()


def _priority(w: SparseWeight) -> float:
    if _semi_structured_reason(w) is None:
        return 40.0
    density = 1.0 - w.sparsity
    return 30.0 if density <= _MAX_DENSITY.get(w.dtype, 0.35) else -2.0


# --------------------------------------------------------------------------
# 2:4 through torch's semi-structured sparsity
# --------------------------------------------------------------------------

_semi_structured_broken: str | None = None
_COMPRESSED: TensorCache = TensorCache(64)


def _semi_structured_reason(w: SparseWeight) -> str | None:
    if _semi_structured_broken is not None:
        return _semi_structured_broken
    if w.format != "nm" or (w.n, w.m) != (2, 4):
        return "not a 2:4 weight"
    if w.dtype not in (torch.float16, torch.bfloat16):
        return "2:4 tensor cores need float16 or bfloat16"
    if w.values.requires_grad and torch.is_grad_enabled():
        return "torch's 2:4 path is inference-only (the weight needs a gradient)"
    if not w.values.is_cuda or torch.cuda.get_device_capability(w.device) < (8, 0):
        return "2:4 tensor cores need compute capability 8.0 or newer"
    sparse = getattr(torch.sparse, "SparseSemiStructuredTensor", None)
    if sparse is None:
        return "this torch has no semi-structured sparsity"
    cls = torch.sparse.SparseSemiStructuredTensorCUTLASS if sparse._FORCE_CUTLASS else (
        torch.sparse.SparseSemiStructuredTensorCUSPARSELT)
    limits = cls._DTYPE_SHAPE_CONSTRAINTS.get(w.dtype)
    rows, cols = w.matrix_shape
    if limits is None or rows % limits.sparse_min_rows or cols % limits.sparse_min_cols:
        return f"shape {w.matrix_shape} is not a multiple of torch's 2:4 tile"
    return None


def _semi_structured(w: SparseWeight) -> torch.Tensor:
    """The weight as torch's compressed 2:4 tensor, cached while its values tensor lives unchanged."""
    return _COMPRESSED.get(
        (w.values, w.col_indices), "2:4",
        lambda: torch.sparse.to_sparse_semi_structured(w.to_dense().reshape(w.matrix_shape).contiguous()),
    )


def _try_semi_structured(fn, w: SparseWeight, *args) -> torch.Tensor | None:
    global _semi_structured_broken
    if _semi_structured_reason(w) is not None:
        return None
    try:
        return fn(_semi_structured(w), *args)
    except (RuntimeError, NotImplementedError) as exc:  # e.g. a torch built without cuSPARSELt
        _semi_structured_broken = f"torch's 2:4 path failed here: {exc}"
        logger.warning("%s; using the CSR kernels for 2:4 weights from now on", _semi_structured_broken)
        return None


# --------------------------------------------------------------------------
# Implementations of the public ops
# --------------------------------------------------------------------------


def _spmm(w: SparseWeight, x: torch.Tensor) -> torch.Tensor:
    y = _try_semi_structured(lambda ws, xx: torch.mm(ws, xx), w, x)
    if y is not None:
        return y
    crow, col, values = w.csr()
    return torch.ops.sparsemia.csr_spmm(crow, col, values, x)


def _linear(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> torch.Tensor:
    y = _try_semi_structured(lambda ws, xx, b: F.linear(xx, ws, b), w, x, bias)
    if y is not None:
        return y
    crow, col, values = w.csr()
    return torch.ops.sparsemia.csr_linear(x, crow, col, values, bias)


register_impl("spmm", "cuda", _spmm, lambda w, x: _supports(w, x), priority=lambda w, x: _priority(w))
register_impl("sparse_linear", "cuda", _linear, lambda x, w, b: _supports(w, x, b), priority=lambda x, w, b: _priority(w))

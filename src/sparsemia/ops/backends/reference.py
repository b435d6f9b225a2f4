"""The ``reference`` backend: every public op in plain torch on the dense weight.

The oracle of the tests and the fallback when nothing compiled can run a call; its
priority is below every compiled backend's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparsemia.formats import SparseWeight
from sparsemia.ops.masked import expand_block_mask
from sparsemia.ops.registry import register_impl

__all__: list[str] = []


def _dense_matrix(w: SparseWeight) -> torch.Tensor:
    return w.to_dense().reshape(w.matrix_shape)


def _spmm(w: SparseWeight, x: torch.Tensor) -> torch.Tensor:
    return _dense_matrix(w) @ x


def _linear(x: torch.Tensor, w: SparseWeight, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, _dense_matrix(w), bias)


def _conv2d(x, w, bias, stride, padding, dilation, groups) -> torch.Tensor:
    return F.conv2d(x, w.to_dense(), bias, stride, padding, dilation, groups)


def _masked_linear(x, weight, block_mask, bias, block) -> torch.Tensor:
    return F.linear(x, weight * expand_block_mask(block_mask, block, tuple(weight.shape)), bias)


def _always(*_args) -> None:
    return None


register_impl("spmm", "reference", _spmm, _always, priority=-1)
register_impl("sparse_linear", "reference", _linear, _always, priority=-1)
register_impl("sparse_conv2d", "reference", _conv2d, _always, priority=-1)
register_impl("masked_linear", "reference", _masked_linear, _always, priority=-1)

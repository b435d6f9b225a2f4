"""The fake kernels of the ``torch.ops.sparsemia`` operators check shapes and dtypes like the
compiled kernels: what a real call rejects, tracing with fake tensors rejects too, and what it
accepts gets the real output's shape and dtype."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from sparsemia import SparseWeight
from tests.conftest import random_pruned

ops = torch.ops.sparsemia


def _weights():
    csr = SparseWeight.from_dense(random_pruned(8, 12, 0.5))
    bsr = SparseWeight.from_dense(random_pruned(8, 12, 0.5), format="bsr", block=(4, 4))
    conv = SparseWeight.from_dense(random_pruned(6, 4 * 9, 0.5).reshape(6, 4, 3, 3))
    return csr, bsr, conv


def _cases():
    csr, bsr, conv = _weights()
    c, k, v = csr.crow_indices, csr.col_indices, csr.values
    bc, bk, bv = bsr.crow_indices, bsr.col_indices, bsr.values
    wc, wk, wv = conv.crow_indices, conv.col_indices, conv.values
    stacked = SparseWeight.stack_csr([csr, csr])
    x = torch.randn(3, 12)
    img = torch.randn(2, 4, 7, 7)
    conv_params = ([3, 3], [1, 1], [1, 1], [1, 1], 1)
    good = [
        ("csr_linear", (x, c, k, v, torch.randn(8))),
        ("csr_spmm", (c, k, v, torch.randn(12, 5))),
        ("bsr_linear", (x, bc, bk, bv, None)),
        ("bsr_spmm", (bc, bk, bv, torch.randn(12, 5))),
        ("csr_sddmm", (c, k, torch.randn(8, 5), torch.randn(12, 5))),
        ("bsr_sddmm", (bc, bk, torch.randn(8, 5), torch.randn(12, 5), 4, 4)),
        ("csr_transpose", (c, k, 12)),
        ("stacked_csr_linear", (torch.randn(2, 3, 12), *stacked, torch.randn(2, 8))),
        ("csr_conv2d", (img, wc, wk, wv, torch.randn(6), *conv_params)),
        ("csr_conv2d_relu_pool", (img, wc, wk, wv, None, *conv_params, 2)),
        ("csr_conv2d_add", (img, wc, wk, wv, torch.randn(6), *conv_params, torch.randn(2, 6, 7, 7), True)),
        ("conv1x1_gemm", (img[:, :, ::2], torch.randn(6, 4), torch.randn(6))),
        ("conv1x1_gemm", (img, torch.randn(6, 4), None)),
        ("csr_conv2d_weight_grad", (img, torch.randn(2, 6, 7, 7), wc, wk, *conv_params)),
    ]
    bad = [
        ("csr_linear", (x, c.long(), k, v, None)),  # mixed index dtypes
        ("csr_linear", (x.double(), c, k, v, None)),  # x's dtype is not the weight's
        ("csr_linear", (x[None], c, k, v, None)),  # 3-D x
        ("csr_linear", (x, c, k, v[:-1], None)),  # one value short
        ("csr_linear", (x, c, k, v, torch.randn(7))),  # bias of the wrong size
        ("csr_linear", (x, c, k, v, torch.randn(8, dtype=torch.float64))),  # bias of the wrong dtype
        ("csr_spmm", (c, k, v, torch.randn(12))),  # 1-D x
        ("bsr_linear", (torch.randn(3, 10), bc, bk, bv, None)),  # features not whole blocks
        ("bsr_spmm", (bc, bk, bv.reshape(-1), torch.randn(12, 5))),  # values not [nblocks, R, C]
        ("csr_sddmm", (c, k, torch.randn(7, 5), torch.randn(12, 5))),  # a's rows are not the weight's
        ("csr_sddmm", (c, k, torch.randn(8, 5), torch.randn(12, 4))),  # different N
        ("bsr_sddmm", (bc, bk, torch.randn(8, 5), torch.randn(10, 5), 4, 4)),  # b's rows not whole blocks
        ("csr_transpose", (c, k, -1)),
        ("stacked_csr_linear", (torch.randn(3, 3, 12), *stacked, None)),  # 3 inputs for 2 models
        ("stacked_csr_linear", (torch.randn(2, 3, 12), *stacked, torch.randn(2, 7))),
        ("csr_conv2d", (img[0], wc, wk, wv, None, *conv_params)),  # 3-D x
        ("csr_conv2d", (torch.randn(2, 6, 7, 7), wc, wk, wv, None, [3, 3], [1, 1], [1, 1], [1, 1], 4)),  # groups
        ("csr_conv2d", (torch.randn(2, 4, 2, 2), wc, wk, wv, None, [3, 3], [1, 1], [0, 0], [1, 1], 1)),  # too small
        ("csr_conv2d", (img, wc, wk, wv, torch.randn(5), *conv_params)),  # bias
        ("csr_conv2d", (img, wc, wk, wv, None, [3, 3], [0, 1], [1, 1], [1, 1], 1)),  # stride 0
        ("csr_conv2d_relu_pool", (img, wc, wk, wv, None, *conv_params, 8)),  # window larger than the output
        ("csr_conv2d_relu_pool", (img, wc, wk, wv, None, *conv_params, 0)),
        ("csr_conv2d_weight_grad", (img, torch.randn(2, 6, 6, 7), wc, wk, *conv_params)),  # grad's shape
        ("csr_conv2d_add", (img, wc, wk, wv, None, *conv_params, torch.randn(2, 6, 7, 6), False)),  # residual
        ("csr_conv2d_add", (img, wc, wk, wv, None, *conv_params, torch.randn(6, 7, 7), False)),  # 3-D residual
        ("csr_conv2d_add", (img, wc, wk, wv, None, *conv_params, torch.randn(2, 6, 7, 7).double(), False)),
        ("conv1x1_gemm", (img, torch.randn(6, 5), None)),  # weight's Cin
        ("conv1x1_gemm", (img[0], torch.randn(6, 4), None)),  # 3-D x
        ("conv1x1_gemm", (img, torch.randn(6, 4).double(), None)),  # dtype
        ("conv1x1_gemm", (img, torch.randn(6, 4), torch.randn(5))),  # bias
    ]
    return good, bad


GOOD, BAD = _cases()


def _fake(args, mode):
    return tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("case", range(len(GOOD)), ids=[name for name, _ in GOOD])
def test_fake_gives_the_real_outputs_shape_and_dtype(case):
    name, args = GOOD[case]
    op = getattr(ops, name).default
    real = op(*args)
    with FakeTensorMode() as mode:
        fake = op(*_fake(args, mode))
    real = real if isinstance(real, tuple) else (real,)
    fake = fake if isinstance(fake, tuple) else (fake,)
    assert [(tuple(t.shape), t.dtype) for t in fake] == [(tuple(t.shape), t.dtype) for t in real]


@pytest.mark.parametrize("case", range(len(BAD)), ids=[f"{name}-{i}" for i, (name, _) in enumerate(BAD)])
def test_fake_rejects_what_the_kernel_rejects(case):
    name, args = BAD[case]
    op = getattr(ops, name).default
    with pytest.raises(RuntimeError):
        op(*args)
    with pytest.raises(RuntimeError), FakeTensorMode() as mode:
        op(*_fake(args, mode))

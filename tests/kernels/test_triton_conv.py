"""The Triton block-sparse implicit-GEMM convolution against F.conv2d: on a GPU if
present, else under TRITON_INTERPRET=1 on the CPU (tiny shapes: the interpreter is slow)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

# first: it skips the module where Triton cannot run
from tests.kernels.triton_setup import DEVICE, OPCHECKS, TOL  # isort: split

import sparsemia as sm
from sparsemia.ops import BackendUnavailableError
from sparsemia.ops.backends import triton as T
from tests.kernels.triton_setup import rel_error as _rel


def _block_sparse_kernel(cout, cin, kh, kw, block, keep, dtype, seed=0) -> torch.Tensor:
    """A ``[cout, cin, kh, kw]`` weight whose matrix ``[cout, cin*kh*kw]`` is block sparse."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = cout, cin * kh * kw
    br, bc = block
    mask = torch.rand(-(-rows // br), -(-cols // bc), generator=g) < keep
    mask[0, 0] = True
    mask = mask.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:rows, :cols]
    return (torch.randn(rows, cols, generator=g) * mask).reshape(cout, cin, kh, kw).to(dtype)


# (Cout, Cin, k, stride, padding, dilation, block): 3x3 and 1x1, stride 1/2,
# padding 0/1, dilation 2, K = Cin*kh*kw not a multiple of the block (144 % 32).
CASES = [
    (32, 16, 3, 1, 1, 1, (16, 16)),
    (32, 16, 3, 2, 1, 1, (16, 32)),
    (32, 16, 3, 1, 0, 2, (32, 16)),
    (32, 16, 1, 1, 0, 1, (16, 16)),
    (32, 16, 1, 2, 0, 1, (32, 16)),
    (24, 16, 3, 1, 1, 1, (16, 16)),  # Cout not a multiple of R: padded last block row
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}b{c[6][0]}x{c[6][1]}")
def test_conv_matches_conv2d(case, dtype):
    cout, cin, k, stride, padding, dilation, block = case
    dense = _block_sparse_kernel(cout, cin, k, k, block, 0.5, dtype)
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=block).to(DEVICE)
    x = torch.randn(2, cin, 6, 6).to(dtype)
    bias = torch.randn(cout).to(dtype)
    ref = F.conv2d(x.double(), dense.double(), bias.double(), stride, padding, dilation)
    y = sm.ops.sparse_conv2d(x.to(DEVICE), w, bias.to(DEVICE), stride, padding, dilation, backend="triton")
    assert y.shape == ref.shape and y.dtype == dtype
    assert _rel(y, ref) < TOL[dtype]


def test_strided_input_unbatched_and_no_bias():
    dense = _block_sparse_kernel(32, 16, 3, 3, (16, 16), 0.5, torch.float32, seed=1)
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=(16, 16)).to(DEVICE)
    x = torch.randn(16, 2, 7, 9).transpose(0, 1)[:, :, :, 1:8]  # [2, 16, 7, 7], not contiguous
    ref = F.conv2d(x.double(), dense.double(), None, 1, 1)
    assert _rel(sm.ops.sparse_conv2d(x.to(DEVICE), w, padding=1, backend="triton"), ref) < 1e-5
    ref1 = F.conv2d(x[0].double(), dense.double(), None, 2, 1)
    assert _rel(sm.ops.sparse_conv2d(x[0].to(DEVICE), w, stride=2, padding=1, backend="triton"), ref1) < 1e-5


def test_gradients_match_reference_at_stored_blocks():
    # Cout = 24 and K = 144 are not multiples of the (16, 32) block: padded edge blocks get zero gradient.
    dense = _block_sparse_kernel(24, 16, 3, 3, (16, 32), 0.5, torch.float64, seed=2)
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=(16, 32)).to(DEVICE)
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    bias = torch.randn(24, dtype=torch.float64, device=DEVICE, requires_grad=True)
    values = w.values.clone().requires_grad_()
    grads = {}
    for backend in ("triton", "reference"):
        y = sm.ops.sparse_conv2d(x, w.with_values(values), bias, 2, 1, backend=backend)
        grads[backend] = torch.autograd.grad((y * y).sum(), (x, values, bias))
    for got, ref in zip(grads["triton"], grads["reference"], strict=True):
        torch.testing.assert_close(got, ref)


def test_gradcheck_and_opcheck():
    dense = _block_sparse_kernel(16, 4, 3, 3, (16, 16), 0.6, torch.float64, seed=3)  # K = 36: 3 block columns
    w = sm.SparseWeight.from_dense(dense, format="bsr", block=(16, 16)).to(DEVICE)
    crow, col = w.crow_indices, w.col_indices
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    values = w.values.clone().requires_grad_()
    bias = torch.randn(16, dtype=torch.float64, device=DEVICE, requires_grad=True)
    params = ([3, 3], [2, 2], [1, 1], [1, 1])
    op = T.bsr_conv2d
    assert torch.autograd.gradcheck(lambda x, v, b: op(x, crow, col, v, b, *params, 16), (x, values, bias),
                                    fast_mode=True)
    torch.library.opcheck(torch.ops.sparsemia.triton_bsr_conv2d.default,
                          (x.detach(), crow, col, values.detach(), bias.detach(), *params, 16), test_utils=OPCHECKS)
    g = torch.randn(1, 16, 2, 2, dtype=torch.float64, device=DEVICE)
    torch.library.opcheck(torch.ops.sparsemia.triton_bsr_conv2d_weight_grad.default,
                          (x.detach(), g, crow, col, 16, 16, *params), test_utils=OPCHECKS)


def test_dispatch_rules():
    dense = _block_sparse_kernel(8, 4, 3, 3, (4, 4), 0.5, torch.float32)
    x = torch.randn(1, 4, 6, 6, device=DEVICE)
    with pytest.raises(BackendUnavailableError, match="block"):
        sm.ops.sparse_conv2d(x, sm.SparseWeight.from_dense(dense, format="bsr", block=(4, 4)).to(DEVICE),
                             backend="triton")
    with pytest.raises(BackendUnavailableError, match="BSR"):
        sm.ops.sparse_conv2d(x, sm.SparseWeight.from_dense(dense).to(DEVICE), backend="triton")
    grouped = sm.SparseWeight.from_dense(_block_sparse_kernel(32, 8, 3, 3, (16, 16), 0.5, torch.float32),
                                         format="bsr", block=(16, 16)).to(DEVICE)
    with pytest.raises(BackendUnavailableError, match="groups"):
        sm.ops.sparse_conv2d(torch.randn(1, 16, 6, 6, device=DEVICE), grouped, groups=2, backend="triton")
    if DEVICE == "cpu":
        # Under the interpreter the triton backend runs only when asked for.
        w = sm.SparseWeight.from_dense(dense, format="bsr", block=(16, 16))
        assert sm.ops.select_backend("sparse_conv2d", x, w, None, (1, 1), (0, 0), (1, 1), 1).backend != "triton"

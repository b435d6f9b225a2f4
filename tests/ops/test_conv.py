"""sparse_conv2d: the CPU direct convolution against F.conv2d, autograd, opcheck, argument errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparsemia import SparseWeight
from sparsemia.ops import select_backend, sparse_conv2d, sparse_conv2d_relu_pool


def pruned_kernel(cout, cin_g, kh, kw, sparsity, dtype=torch.float32, empty_channels=0):
    w = torch.randn(cout, cin_g, kh, kw, dtype=dtype)
    w[torch.rand(w.shape) < sparsity] = 0
    w[:empty_channels] = 0
    return w


def tolerance(dtype, fan_in):
    return (1e-4 * max(1.0, fan_in**0.5), 1e-5) if dtype == torch.float32 else (1e-10, 1e-12)


# (B, Cin, Cout, H, W, k, stride, padding, dilation, groups): every path of the
# kernel: wide rows (Bt = 1), narrow rows with the batch innermost (B > 1, Wo < 16)
# and its last, smaller chunk, stride phases, dilation, groups, depthwise, 1x1
# read in place, non-square kernels, rows narrower than any vector.
SHAPES = [
    (2, 3, 8, 20, 18, (3, 3), 1, 1, 1, 1),
    (1, 8, 16, 9, 9, (3, 3), 2, 1, 1, 1),
    (19, 8, 12, 6, 5, (3, 3), 1, 1, 1, 1),
    (33, 16, 8, 4, 4, (3, 3), 1, 1, 1, 1),
    (4, 6, 6, 11, 13, (3, 3), 1, 2, 2, 3),
    (5, 8, 8, 16, 17, (3, 3), 2, 1, 1, 8),
    (3, 12, 10, 12, 12, (1, 1), 1, 0, 1, 1),
    (20, 12, 10, 5, 5, (1, 1), 2, 0, 1, 1),
    (2, 4, 6, 15, 21, (5, 3), (3, 2), (2, 0), (1, 2), 2),
    (2, 5, 7, 10, 9, (2, 4), 1, (0, 1), 1, 1),
    (1, 4, 4, 3, 2, (3, 1), 1, 1, 1, 1),
    (1, 16, 8, 4, 4, (3, 3), 1, 1, 1, 1),  # one image, narrow rows: the plane as one run (rows Wq apart)
    (1, 6, 5, 12, 12, (5, 5), 1, 0, 1, 1),  # the same for a 5x5 kernel without padding
]


@pytest.fixture(params=["taps", "columns"])
def entries(request, conv_tuning):
    """Runs the test with single taps and with column groups (zero-filled where pruned)
    wherever the geometry allows them (stride and dilation 1 in height, 3- or 5-high kernels)."""
    conv_tuning(COLUMNS="2" if request.param == "taps" else "0")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_matches_conv2d(isa, entries, shape, dtype):
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    w = pruned_kernel(cout, cin // groups, *k, 0.7, dtype, empty_channels=1)
    x = torch.randn(B, cin, H, W, dtype=dtype)
    bias = torch.randn(cout, dtype=dtype)
    y = sparse_conv2d(x, SparseWeight.from_dense(w), bias, stride, padding, dilation, groups, backend="cpu")
    ref = F.conv2d(x, w, bias, stride, padding, dilation, groups)
    atol, rtol = tolerance(dtype, w[0].numel())
    torch.testing.assert_close(y, ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("fmt", ["csr", "nm", "bsr"])
def test_formats_and_backends_agree(fmt):
    w = pruned_kernel(8, 4, 3, 3, 0.5)
    if fmt == "nm":
        w = w.reshape(8, -1)
        w = w * (torch.arange(36) % 4 < 2)  # 2:4 along each row
        w = w.reshape(8, 4, 3, 3)
    sw = SparseWeight.from_dense(w, format=fmt)
    x = torch.randn(3, 4, 10, 10)
    ref = F.conv2d(x, w, padding=1)
    torch.testing.assert_close(sparse_conv2d(x, sw, padding=1, backend="reference"), ref)
    torch.testing.assert_close(sparse_conv2d(x, sw, padding=1, backend="cpu"), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse_conv2d(x, sw, padding=1), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
def test_dense_kernels_take_column_groups_by_default(isa, k):
    # complete columns: grouped by default, same result as single taps (up to summation order)
    for B, H in ((2, 34), (16, 7)):  # wide rows (one image per chunk), narrow rows (batch innermost)
        w = torch.randn(9, 4, k, k, dtype=torch.float64)
        x = torch.randn(B, 4, H, H, dtype=torch.float64)
        bias = torch.randn(9, dtype=torch.float64)
        y = sparse_conv2d(x, SparseWeight.from_dense(w), bias, padding=k // 2, backend="cpu")
        torch.testing.assert_close(y, F.conv2d(x, w, bias, padding=k // 2))


def test_cached_plans_follow_the_weight_the_input_shape_and_the_settings(conv_tuning):
    # plans are cached per weight tensors; in-place changes, other shapes and other
    # settings must never reuse a stale one
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)  # dense: column groups, whose values the plan holds
    sw = SparseWeight.from_dense(w)
    values = sw.values.clone()
    crow, col = sw.crow_indices, sw.col_indices
    op = torch.ops.sparsemia.csr_conv2d

    def run(x):
        return op(x, crow, col, values, None, [3, 3], [1, 1], [1, 1], [1, 1], 1)

    def dense():
        full = torch.zeros(8, 36, dtype=torch.float64)
        rows = torch.repeat_interleave(torch.arange(8), crow.diff().long())
        full[rows, col.long()] = values
        return full.reshape(8, 4, 3, 3)

    for H, B in ((12, 2), (12, 2), (5, 1), (34, 3), (12, 2)):
        x = torch.randn(B, 4, H, H, dtype=torch.float64)
        torch.testing.assert_close(run(x), F.conv2d(x, dense(), padding=1))
    x = torch.randn(2, 4, 12, 12, dtype=torch.float64)
    values.mul_(-0.5)  # in place: the cached grouped values are stale
    torch.testing.assert_close(run(x), F.conv2d(x, dense(), padding=1))
    for setting in ("2", "0", "0.5"):
        conv_tuning(COLUMNS=setting)
        torch.testing.assert_close(run(x), F.conv2d(x, dense(), padding=1))
    with torch.inference_mode():  # inference tensors have no version: built every call
        v = values.clone()
        y = op(x, crow, col, v, None, [3, 3], [1, 1], [1, 1], [1, 1], 1)
        v.mul_(2)
        torch.testing.assert_close(op(x, crow, col, v, None, [3, 3], [1, 1], [1, 1], [1, 1], 1), 2 * y)


@pytest.mark.parametrize("sparsity", [0.0, 0.7])  # complete columns (grouped plans) and single taps
def test_training_steps_reuse_cached_patterns_and_stay_exact(sparsity):
    # the transposed pattern and the plans are cached across steps; values change every step
    w = pruned_kernel(6, 4, 3, 3, sparsity, torch.float64)
    sw = SparseWeight.from_dense(w)
    values = sw.values.clone().requires_grad_(True)
    dense = w.clone().requires_grad_(True)
    mask = w != 0
    for _ in range(3):
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        sparse_conv2d(x, sw.with_values(values), padding=1).square().sum().backward()
        F.conv2d(x2, dense, padding=1).square().sum().backward()
        torch.testing.assert_close(x.grad, x2.grad)
        torch.testing.assert_close(values.grad, dense.grad[mask])
        with torch.no_grad():  # one SGD step on both
            values -= 0.01 * values.grad
            dense -= 0.01 * dense.grad * mask
        values.grad = None
        dense.grad = None


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_fused_optimizer_steps_are_seen_by_cached_plans(optimizer):
    # Fused optimizers write parameters without bumping their version counters; a plan holding
    # the values (column groups: a complete 5x5 kernel) must still not outlive a step.
    from sparsemia.nn import SparseConv2d

    conv = torch.nn.Conv2d(8, 8, 5, bias=False)
    layer = SparseConv2d.from_dense(conv, mask=torch.ones_like(conv.weight, dtype=torch.bool))
    make = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = make(layer.parameters(), lr=0.1, fused=True)
    x = torch.randn(4, 8, 12, 12)
    for _ in range(3):
        y = layer(x)
        torch.testing.assert_close(y, F.conv2d(x, layer.weight.to_dense()), rtol=1e-4, atol=1e-4)
        opt.zero_grad()
        y.square().mean().backward()
        opt.step()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.conv2d(x, layer.weight.to_dense()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (1, 4, 4, 1), (19, 6, 5, 1), (3, 9, 9, 2)],
                         ids=["wide-rows", "flat-plane", "batch-innermost", "stride2"])
def test_all_zero_weight_gives_the_bias(isa, shape):
    # nothing is read from the input (which is not packed): NaN there stays out of the output
    B, H, W, stride = shape
    w = SparseWeight.from_dense(torch.zeros(5, 3, 3, 3))
    bias = torch.randn(5)
    x = torch.randn(B, 3, H, W)
    x[0, 1, 2, 3] = float("nan")
    y = sparse_conv2d(x, w, bias, stride, padding=1, backend="cpu")
    expected = bias[None, :, None, None].expand_as(y)
    torch.testing.assert_close(y, expected)
    with torch.no_grad():
        torch.testing.assert_close(sparse_conv2d_relu_pool(x, w, bias, stride, 1, pool=2),
                                   F.max_pool2d(expected.relu(), 2))
        residual = torch.randn_like(y)
        y = torch.ops.sparsemia.csr_conv2d_add(x, w.crow_indices, w.col_indices, w.values, bias, [3, 3],
                                               [stride, stride], [1, 1], [1, 1], 1, residual, True)
        torch.testing.assert_close(y, (expected + residual).relu())


@pytest.mark.parametrize("shape", [(3, 6, 5, 21, 19, 1, 1), (20, 4, 6, 6, 6, 2, 1), (1, 5, 4, 9, 8, 1, 0)],
                         ids=["wide-rows", "batch-innermost-stride2", "one-image"])
def test_weight_gradient_matches_dense_on_every_isa(isa, shape):
    # rows of 1 .. 40+ stored taps: the 8-, 4- and 1-tap gradient tiles, vector and scalar tails
    B, cin, cout, H, W, stride, padding = shape
    w = pruned_kernel(cout, cin, 3, 3, 0.3, torch.float64, empty_channels=1)
    w[1, :, :, :2] = 0  # a row with few taps
    sw = SparseWeight.from_dense(w)
    x = torch.randn(B, cin, H, W, dtype=torch.float64)
    g = torch.randn_like(F.conv2d(x, w, stride=stride, padding=padding))
    got = torch.ops.sparsemia.csr_conv2d_weight_grad(
        x, g, sw.crow_indices, sw.col_indices, [3, 3], [stride] * 2, [padding] * 2, [1, 1], 1
    )
    dense = w.clone().requires_grad_(True)
    F.conv2d(x, dense, stride=stride, padding=padding).backward(g)
    torch.testing.assert_close(got, dense.grad[w != 0])


@pytest.mark.parametrize("case", [
    ((3, 3), 2, 1, 1, 1, 11), ((3, 3), 2, 0, 1, 1, 10), ((5, 5), 2, 2, 1, 2, 13), ((3, 3), 3, 1, 1, 1, 14),
    ((4, 2), (2, 3), (1, 0), (1, 2), 1, 12), ((3, 3), 2, 1, 2, 1, 9), ((2, 2), 2, 0, 1, 1, 7),
], ids=lambda c: "k{}s{}p{}d{}g{}h{}".format(*c))
def test_strided_input_gradient_matches_dense(case):
    # one stride-1 convolution per stride phase; rows/columns no tap reaches stay zero
    k, stride, padding, dilation, groups, H = case
    w = pruned_kernel(6, 4 // groups, *k, 0.5, torch.float64)
    sw = SparseWeight.from_dense(w)
    x = torch.randn(2, 4, H, H + 1, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y = sparse_conv2d(x, sw, None, stride, padding, dilation, groups)
    g = torch.randn_like(y)
    y.backward(g)
    F.conv2d(x2, w, None, stride, padding, dilation, groups).backward(g)
    torch.testing.assert_close(x.grad, x2.grad)


def test_non_contiguous_unbatched_and_int64_indices():
    w = pruned_kernel(6, 4, 3, 3, 0.6)
    sw = SparseWeight.from_dense(w)
    x = torch.randn(4, 2, 12, 14).transpose(0, 1)[:, :, ::2, 1:]  # [2, 4, 6, 13], strided
    torch.testing.assert_close(sparse_conv2d(x, sw, padding=1), F.conv2d(x, w, padding=1), atol=1e-5, rtol=1e-5)
    x1 = torch.randn(4, 9, 9)
    torch.testing.assert_close(sparse_conv2d(x1, sw), F.conv2d(x1, w), atol=1e-5, rtol=1e-5)
    sw64 = SparseWeight("csr", sw.shape, sw.values, sw.crow_indices.long(), sw.col_indices.long())
    torch.testing.assert_close(sparse_conv2d(x1, sw64), F.conv2d(x1, w), atol=1e-5, rtol=1e-5)
    xcl = torch.randn(2, 4, 7, 7).to(memory_format=torch.channels_last)
    torch.testing.assert_close(sparse_conv2d(xcl, sw, padding=1), F.conv2d(xcl, w, padding=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding(padding):
    for k in (3, 4):
        w = pruned_kernel(4, 3, k, k, 0.5)
        x = torch.randn(2, 3, 9, 9)
        torch.testing.assert_close(
            sparse_conv2d(x, SparseWeight.from_dense(w), padding=padding, dilation=1),
            F.conv2d(x, w, padding=padding), atol=1e-5, rtol=1e-5,
        )


GRAD_SHAPES = [
    (2, 4, 6, 7, 6, (3, 3), 1, 1, 1, 1),
    (3, 4, 4, 8, 7, (3, 3), 2, 1, 1, 2),
    (2, 3, 3, 9, 9, (3, 3), 1, 2, 2, 3),
    (17, 4, 5, 5, 4, (3, 3), 1, 1, 1, 1),
    (2, 6, 4, 6, 6, (1, 1), 2, 0, 1, 1),
    (2, 2, 3, 9, 8, (2, 3), (3, 2), (1, 0), (2, 1), 1),
]


@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_gradcheck(shape):
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    w = pruned_kernel(cout, cin // groups, *k, 0.5, torch.float64, empty_channels=1)
    sw = SparseWeight.from_dense(w)
    x = torch.randn(B, cin, H, W, dtype=torch.float64, requires_grad=True)
    values = sw.values.clone().requires_grad_(True)
    bias = torch.randn(cout, dtype=torch.float64, requires_grad=True)

    def f(x, values, bias):
        return sparse_conv2d(x, sw.with_values(values), bias, stride, padding, dilation, groups, backend="cpu")

    assert torch.autograd.gradcheck(f, (x, values, bias))


def test_gradients_match_dense_conv_and_keep_the_pattern():
    w = pruned_kernel(8, 4, 3, 3, 0.8)
    sw = SparseWeight.from_dense(w)
    values = sw.values.clone().requires_grad_(True)
    x = torch.randn(3, 4, 9, 9, requires_grad=True)
    sparse_conv2d(x, sw.with_values(values), stride=2, padding=1).square().sum().backward()
    wd = w.clone().requires_grad_(True)
    xd = x.detach().clone().requires_grad_(True)
    F.conv2d(xd, wd, stride=2, padding=1).square().sum().backward()
    torch.testing.assert_close(x.grad, xd.grad, atol=1e-4, rtol=1e-4)
    dense_grad_at_taps = wd.grad.reshape(8, -1)[w.reshape(8, -1) != 0]
    torch.testing.assert_close(values.grad, dense_grad_at_taps, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [GRAD_SHAPES[0], GRAD_SHAPES[1], GRAD_SHAPES[3], GRAD_SHAPES[5]],
                         ids=lambda s: "x".join(map(str, s[:5])))
def test_opcheck(shape):
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    as_pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    sw = SparseWeight.from_dense(pruned_kernel(cout, cin // groups, *k, 0.5, torch.float64))
    x = torch.randn(B, cin, H, W, dtype=torch.float64)
    params = (list(k), as_pair(stride), as_pair(padding), as_pair(dilation), groups)
    values = sw.values.clone().requires_grad_(True)
    bias = torch.randn(cout, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.sparsemia.csr_conv2d.default,
                          (x.requires_grad_(True), sw.crow_indices, sw.col_indices, values, bias, *params))
    y = F.conv2d(x.detach(), sw.to_dense(), None, stride, padding, dilation, groups)
    torch.library.opcheck(torch.ops.sparsemia.csr_conv2d_weight_grad.default,
                          (x.detach(), torch.randn_like(y), sw.crow_indices, sw.col_indices, *params))


def test_bad_arguments_name_the_argument():
    sw = SparseWeight.from_dense(pruned_kernel(6, 4, 3, 3, 0.5))
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(TypeError, match="w:"):
        sparse_conv2d(x, torch.randn(6, 4, 3, 3))
    with pytest.raises(ValueError, match="w:"):
        sparse_conv2d(x, SparseWeight.from_dense(torch.randn(6, 36)))
    with pytest.raises(TypeError, match="x:"):
        sparse_conv2d(x.double(), sw)
    with pytest.raises(ValueError, match="x:"):
        sparse_conv2d(torch.randn(2, 5, 8, 8), sw)
    with pytest.raises(ValueError, match="x:"):
        sparse_conv2d(torch.randn(8, 8), sw)
    with pytest.raises(ValueError, match="x:"):
        sparse_conv2d(torch.randn(2, 4, 2, 2), sw)
    with pytest.raises(ValueError, match="groups"):
        sparse_conv2d(torch.randn(2, 8, 8, 8), sw, groups=2.0)
    with pytest.raises(ValueError, match="groups"):
        sparse_conv2d(torch.randn(2, 16, 8, 8), SparseWeight.from_dense(torch.randn(6, 4, 3, 3)), groups=4)
    with pytest.raises(ValueError, match="stride"):
        sparse_conv2d(x, sw, stride=0)
    with pytest.raises(ValueError, match="padding"):
        sparse_conv2d(x, sw, padding=-1)
    with pytest.raises(ValueError, match="padding"):
        sparse_conv2d(x, sw, padding="full")
    with pytest.raises(ValueError, match="padding"):
        sparse_conv2d(x, sw, padding="same", stride=2)
    with pytest.raises(ValueError, match="dilation"):
        sparse_conv2d(x, sw, dilation=(1, 2, 3))
    with pytest.raises(ValueError, match="bias"):
        sparse_conv2d(x, sw, torch.randn(5))
    with pytest.raises(ValueError, match="backend"):
        sparse_conv2d(x, sw, backend="tpu")


def test_the_operator_checks_its_raw_inputs():
    sw = SparseWeight.from_dense(pruned_kernel(4, 2, 3, 3, 0.3))
    x = torch.randn(1, 2, 5, 5)
    op = torch.ops.sparsemia.csr_conv2d
    bad_col = sw.col_indices.clone()
    bad_col[0] = 18
    with pytest.raises(RuntimeError, match="out of range"):
        op(x, sw.crow_indices, bad_col, sw.values, None, [3, 3], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="groups"):
        op(x, sw.crow_indices, sw.col_indices, sw.values, None, [3, 3], [1, 1], [0, 0], [1, 1], 3)
    first_row = slice(int(sw.crow_indices[0]), int(sw.crow_indices[1]))
    unsorted = sw.col_indices.clone()
    unsorted[first_row] = unsorted[first_row].flip(0)
    assert int(sw.crow_indices[1]) >= 2  # the first row has two taps to swap
    with pytest.raises(RuntimeError, match="sorted"):
        op(x, sw.crow_indices, unsorted, sw.values, None, [3, 3], [1, 1], [0, 0], [1, 1], 1)


# ---- BSR weights on the cpu backend: the CSR kernel on the expanded block pattern.


def block_pruned_kernel(cout, cin_g, kh, kw, block, keep, dtype=torch.float32):
    rows, cols = cout, cin_g * kh * kw
    mask = torch.rand(-(-rows // block[0]), -(-cols // block[1])) < keep
    mask = mask.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[:rows, :cols]
    return (torch.randn(rows, cols, dtype=dtype) * mask).reshape(cout, cin_g, kh, kw)


@pytest.mark.parametrize("block", [(4, 4), (2, 8), (16, 16), (3, 5)])  # (3, 5): padded last block row and column
@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[4:7], ids=lambda s: "x".join(map(str, s[:5])))
def test_bsr_on_cpu_matches_reference(shape, block):
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    w = block_pruned_kernel(cout, cin // groups, *k, block, 0.5)
    sw = SparseWeight.from_dense(w, format="bsr", block=block)
    x = torch.randn(B, cin, H, W)
    bias = torch.randn(cout)
    y = sparse_conv2d(x, sw, bias, stride, padding, dilation, groups, backend="cpu")
    ref = sparse_conv2d(x, sw, bias, stride, padding, dilation, groups, backend="reference")
    atol, rtol = tolerance(torch.float32, w[0].numel())
    torch.testing.assert_close(y, ref, atol=atol, rtol=rtol)


def test_bsr_on_cpu_is_the_default_and_handles_an_empty_weight():
    w = block_pruned_kernel(8, 4, 3, 3, (4, 4), 0.5)
    x = torch.randn(2, 4, 7, 7)
    sw = SparseWeight.from_dense(w, format="bsr", block=(4, 4))
    assert select_backend("sparse_conv2d", x, sw, None, (1, 1), (1, 1), (1, 1), 1).backend == "cpu"
    empty = SparseWeight.from_dense(torch.zeros(8, 4, 3, 3), format="bsr", block=(4, 4))
    bias = torch.randn(8)
    torch.testing.assert_close(sparse_conv2d(x, empty, bias, padding=1, backend="cpu"),
                               bias[None, :, None, None].expand(2, 8, 7, 7))


@pytest.mark.parametrize("block", [(2, 4), (3, 5)])
def test_bsr_gradcheck_on_cpu(block):
    w = block_pruned_kernel(5, 3, 3, 3, block, 0.6, torch.float64)
    sw = SparseWeight.from_dense(w, format="bsr", block=block)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    values = sw.values.clone().requires_grad_(True)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def f(x, values, bias):
        return sparse_conv2d(x, sw.with_values(values), bias, 2, 1, backend="cpu")

    assert torch.autograd.gradcheck(f, (x, values, bias))
    # Gradients in the BSR layout, equal to the reference backend's (zero in the padding of edge blocks).
    grads = {}
    for backend in ("cpu", "reference"):
        y = sparse_conv2d(x, sw.with_values(values), bias, 2, 1, backend=backend)
        grads[backend] = torch.autograd.grad(y.square().sum(), (x, values, bias))
    assert grads["cpu"][1].shape == sw.values.shape
    for got, ref in zip(grads["cpu"], grads["reference"], strict=True):
        torch.testing.assert_close(got, ref)


# ---- fused ReLU + max-pool epilogue (inference) ----

RELU_POOL_SHAPES = [SHAPES[i] for i in (0, 1, 2, 3, 4, 6, 8)] + [
    (32, 6, 16, 14, 14, (5, 5), 1, 0, 1, 1),  # LeNet-5's second conv: narrow rows, several chunks
    (3, 1, 6, 28, 28, (5, 5), 1, 2, 1, 1),  # LeNet-5's first conv: wide rows, few images
    (2, 3, 4, 66, 70, (3, 3), 1, 1, 1, 1),  # rows of several vectors, padded staging, vector tail
    (9, 4, 6, 8, 8, (3, 3), 1, 1, 1, 1),  # 8-wide rows: 4 images per chunk (quarter vectors), last chunk of one
    (1, 16, 8, 4, 4, (3, 3), 1, 1, 1, 1),  # one image, narrow rows: flat plane
    (1, 6, 5, 14, 14, (3, 3), 1, 1, 1, 1),  # flat plane, 2x2 pool over 14-wide rows, Wq = 16
]


def _output_size(shape):
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    (s0, s1), (p0, p1), (d0, d1) = pair(stride), pair(padding), pair(dilation)
    return (H + 2 * p0 - d0 * (k[0] - 1) - 1) // s0 + 1, (W + 2 * p1 - d1 * (k[1] - 1) - 1) // s1 + 1


# every shape with every pooling window that fits its output
RELU_POOL_CASES = [(shape, pool) for shape in RELU_POOL_SHAPES for pool in (1, 2, 3) if min(_output_size(shape)) >= pool]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,pool", RELU_POOL_CASES, ids=lambda c: "x".join(map(str, c[:5])) if isinstance(c, tuple) else str(c))
def test_relu_pool_matches_the_three_ops(isa, entries, shape, pool, dtype):
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    w = pruned_kernel(cout, cin // groups, *k, 0.6, dtype, empty_channels=1)
    x = torch.randn(B, cin, H, W, dtype=dtype)
    bias = torch.randn(cout, dtype=dtype)
    ref = F.relu(F.conv2d(x, w, bias, stride, padding, dilation, groups))
    assert ref.shape[2:] == _output_size(shape)
    ref = F.max_pool2d(ref, pool)
    with torch.no_grad():
        y = sparse_conv2d_relu_pool(x, SparseWeight.from_dense(w), bias, stride, padding, dilation, groups, pool,
                                    backend="cpu")
    atol, rtol = tolerance(dtype, w[0].numel())
    torch.testing.assert_close(y, ref, atol=atol, rtol=rtol)


def test_relu_pool_keeps_nan_and_handles_unbatched_input():
    w = SparseWeight.from_dense(pruned_kernel(4, 3, 3, 3, 0.3))
    x = torch.randn(2, 3, 8, 8)
    x[0, :, 2, 2] = float("nan")
    with torch.no_grad():
        y = sparse_conv2d_relu_pool(x, w, padding=1, pool=2)
        # against the unfused sparse conv: pruned taps are skipped, so 0 * NaN never happens there
        ref = F.max_pool2d(F.relu(sparse_conv2d(x, w, padding=1)), 2)
        torch.testing.assert_close(y, ref, equal_nan=True)
        assert y[0].isnan().any() and not y[1].isnan().any()
        torch.testing.assert_close(sparse_conv2d_relu_pool(x[1], w, padding=1, pool=2), ref[1])


def test_relu_pool_composes_the_differentiable_ops_when_training():
    w = pruned_kernel(6, 4, 3, 3, 0.5, torch.float64)
    sw = SparseWeight.from_dense(w)
    values = sw.values.clone().requires_grad_(True)
    x = torch.randn(3, 4, 10, 10, dtype=torch.float64, requires_grad=True)
    y = sparse_conv2d_relu_pool(x, sw.with_values(values), None, 1, 1, 1, 1, 2)
    y.square().sum().backward()
    dense = w.clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    F.max_pool2d(F.relu(F.conv2d(x2, dense, padding=1)), 2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(values.grad, dense.grad[w != 0])


def test_relu_pool_opcheck_and_bad_pool():
    sw = SparseWeight.from_dense(pruned_kernel(5, 3, 3, 3, 0.5, torch.float64))
    x = torch.randn(4, 3, 9, 9, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.sparsemia.csr_conv2d_relu_pool.default,
                          (x, sw.crow_indices, sw.col_indices, sw.values, bias, [3, 3], [1, 1], [1, 1], [1, 1], 1, 2))
    for pool in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="pool"):
            sparse_conv2d_relu_pool(x, sw, pool=pool)
    with pytest.raises(ValueError, match="pool"):
        sparse_conv2d_relu_pool(x, sw, pool=8)  # output 7x7
    with pytest.raises(RuntimeError, match="pool"):
        torch.ops.sparsemia.csr_conv2d_relu_pool(x, sw.crow_indices, sw.col_indices, sw.values, None, [3, 3],
                                                 [1, 1], [0, 0], [1, 1], 1, 0)


@pytest.mark.parametrize("pool", [0, 2])
def test_a_call_above_the_parallel_threshold_matches_on_one_and_two_threads(pool):
    # kMinParallelWork (csrc/cpu/conv/conv_cpu.cpp) is 2^20 multiply-adds; the shapes above stay
    # below it, so this one (about 3e6) keeps the threaded forward and weight gradient tested
    w = pruned_kernel(32, 32, 3, 3, 0.7, torch.float64)
    x = torch.randn(4, 32, 16, 16, dtype=torch.float64)
    bias = torch.randn(32, dtype=torch.float64)
    ref = F.conv2d(x, w, bias, padding=1)
    ref = F.max_pool2d(ref.relu(), 2) if pool else ref
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            sw = SparseWeight.from_dense(w)
            if pool:
                y = sparse_conv2d_relu_pool(x, sw, bias, padding=1, pool=pool, backend="cpu")
            else:
                values = sw.values.clone().requires_grad_()
                y = sparse_conv2d(x, sw.with_values(values), bias, padding=1, backend="cpu")
                y.backward(torch.ones_like(y))
                dense_w = w.clone().requires_grad_()
                F.conv2d(x, dense_w, bias, padding=1).backward(torch.ones_like(y))
                torch.testing.assert_close(values.grad, dense_w.grad[w != 0], atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(y.detach(), ref, atol=1e-10, rtol=1e-12)
    finally:
        torch.set_num_threads(threads)


# (B, Cin, Cout, H, W, k, stride, padding, dilation, groups): one image and batch-innermost
# chunks (and a last, smaller one), strides, an odd width, a 1x1 kernel on narrow rows
EXPAND_SHAPES = [
    (1, 10, 6, 17, 19, (3, 3), 1, 1, 1, 1),
    (5, 12, 7, 6, 6, (3, 3), 1, 1, 1, 1),
    (3, 9, 5, 13, 11, (3, 3), 2, 1, 1, 1),
    (19, 8, 6, 7, 5, (3, 3), (2, 1), 1, 1, 1),
    (4, 8, 6, 9, 9, (5, 3), 1, (2, 0), (1, 2), 2),
    (18, 8, 6, 4, 4, (1, 1), 1, 0, 1, 1),
]


@pytest.mark.parametrize("expand", ["0", "1", "2"])
@pytest.mark.parametrize("pool", [0, 1, 2])
@pytest.mark.parametrize("shape", EXPAND_SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_expanded_layout_and_relu_over_many_channel_blocks(isa, conv_tuning, shape, pool, expand):
    # a tiny L1 budget and one tap per block: many blocks of input channels, so the ReLU
    # (pool 1) is applied where the last block stores, also to channels whose last block is empty
    conv_tuning(EXPAND=expand, L1="256", SEGTAPS="1", COLUMNS="2")
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    w = pruned_kernel(cout, cin // groups, *k, 0.6, empty_channels=1)
    w[2, : cin // groups // 2] = 0  # the last blocks of this channel hold no tap
    x = torch.randn(B, cin, H, W)
    bias = torch.randn(cout)
    ref = F.conv2d(x, w, bias, stride, padding, dilation, groups)
    sw = SparseWeight.from_dense(w)
    with torch.no_grad():
        if pool == 0:
            y = sparse_conv2d(x, sw, bias, stride, padding, dilation, groups, backend="cpu")
        else:
            if min(ref.shape[2:]) < pool:
                pytest.skip("output smaller than the window")
            ref = F.max_pool2d(F.relu(ref), pool)
            y = sparse_conv2d_relu_pool(x, sw, bias, stride, padding, dilation, groups, pool, backend="cpu")
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-5)
    if pool == 1:  # the ReLU keeps NaN (against the unfused sparse conv, which skips pruned taps)
        x[0, 0, 1, 1] = float("nan")
        with torch.no_grad():
            y = sparse_conv2d_relu_pool(x, sw, bias, stride, padding, dilation, groups, 1, backend="cpu")
            ref = F.relu(sparse_conv2d(x, sw, bias, stride, padding, dilation, groups, backend="cpu"))
        assert ref.isnan().any()
        torch.testing.assert_close(y, ref, equal_nan=True)


# ---- fused residual epilogue (csr_conv2d_add: a ResNet block's last convolution and its shortcut) ----


def _conv_add(x, sw, bias, residual, relu, stride, padding, dilation, groups, kernel):
    pair = lambda v: list(v) if isinstance(v, tuple) else [v, v]  # noqa: E731
    return torch.ops.sparsemia.csr_conv2d_add(x, sw.crow_indices, sw.col_indices, sw.values, bias, list(kernel),
                                              pair(stride), pair(padding), pair(dilation), groups, residual, relu)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_add_matches_conv_plus_residual(isa, entries, shape, relu):
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    w = pruned_kernel(cout, cin // groups, *k, 0.7, empty_channels=1)
    x = torch.randn(B, cin, H, W)
    bias = torch.randn(cout)
    ho, wo = _output_size(shape)
    # non-contiguous (channels last), as a shortcut computed elsewhere may be
    residual = torch.randn(B, ho, wo, cout).permute(0, 3, 1, 2)
    ref = F.conv2d(x, w, bias, stride, padding, dilation, groups) + residual
    ref = F.relu(ref) if relu else ref
    y = _conv_add(x, SparseWeight.from_dense(w), bias, residual, relu, stride, padding, dilation, groups, k)
    atol, rtol = tolerance(torch.float32, w[0].numel())
    torch.testing.assert_close(y, ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", EXPAND_SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_add_over_many_channel_blocks_and_layouts(isa, conv_tuning, shape, relu):
    # a tiny L1 budget and one tap per block: the residual is added where the last block stores,
    # also to channels whose last blocks are empty, and to channels without any tap
    conv_tuning(EXPAND="2", L1="256", SEGTAPS="1", COLUMNS="2")
    B, cin, cout, H, W, k, stride, padding, dilation, groups = shape
    w = pruned_kernel(cout, cin // groups, *k, 0.6, torch.float64, empty_channels=1)
    w[2, : cin // groups // 2] = 0
    x = torch.randn(B, cin, H, W, dtype=torch.float64)
    ho, wo = _output_size(shape)
    residual = torch.randn(B, cout, ho, wo, dtype=torch.float64)
    ref = F.conv2d(x, w, None, stride, padding, dilation, groups) + residual
    ref = F.relu(ref) if relu else ref
    y = _conv_add(x, SparseWeight.from_dense(w), None, residual, relu, stride, padding, dilation, groups, k)
    torch.testing.assert_close(y, ref, atol=1e-10, rtol=1e-12)


def test_add_keeps_nan_adds_before_the_relu_and_threads_agree():
    w = pruned_kernel(32, 32, 3, 3, 0.7, torch.float64)
    sw = SparseWeight.from_dense(w)
    x = torch.randn(4, 32, 16, 16, dtype=torch.float64)  # above the parallel threshold
    residual = torch.randn(4, 32, 16, 16, dtype=torch.float64) * 10  # flips the sign of many sums
    residual[1, 3, 4, 5] = float("nan")
    ref = F.relu(sparse_conv2d(x, sw, padding=1) + residual)
    assert ((ref > 0) != (F.relu(sparse_conv2d(x, sw, padding=1)) + residual > 0)).any()
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            y = _conv_add(x, sw, None, residual, True, 1, 1, 1, 1, (3, 3))
            torch.testing.assert_close(y, ref, equal_nan=True, atol=1e-10, rtol=1e-12)
            assert y[1, 3, 4, 5].isnan() and y.isnan().sum() == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("relu", [False, True])
def test_add_opcheck_gradcheck_and_bad_residual(relu):
    sw = SparseWeight.from_dense(pruned_kernel(5, 3, 3, 3, 0.5, torch.float64))
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    residual = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    args = (x, sw.crow_indices, sw.col_indices, sw.values, bias, [3, 3], [2, 2], [1, 1], [1, 1], 1, residual, relu)
    torch.library.opcheck(torch.ops.sparsemia.csr_conv2d_add.default, args)
    values = sw.values.clone().requires_grad_()
    leaves = (x.clone().requires_grad_(), values, bias.clone().requires_grad_(), residual.clone().requires_grad_())

    def fn(x, values, bias, residual):
        return torch.ops.sparsemia.csr_conv2d_add(x, sw.crow_indices, sw.col_indices, values, bias, [3, 3], [2, 2],
                                                  [1, 1], [1, 1], 1, residual, relu)

    torch.autograd.gradcheck(fn, leaves)
    for bad, match in ((residual[:, :4], "shape"), (residual.float(), "dtype")):
        with pytest.raises(RuntimeError, match=match):
            torch.ops.sparsemia.csr_conv2d_add(*args[:10], bad, relu)


def test_conv1x1_gemm_matches_conv2d_and_passes_opcheck():
    # the dense 1x1 layers sm.compile runs as one GEMM per image (a strided input: a subsampled one)
    x = torch.randn(3, 5, 9, 14, dtype=torch.float64)[..., ::2]
    w = torch.randn(7, 5, dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64)
    for b in (bias, None):
        y = torch.ops.sparsemia.conv1x1_gemm(x, w, b)
        torch.testing.assert_close(y, F.conv2d(x, w[:, :, None, None], b))
        torch.library.opcheck(torch.ops.sparsemia.conv1x1_gemm.default, (x, w, b))
    assert torch.ops.sparsemia.conv1x1_gemm(x[:1], w, bias).shape == (1, 7, 9, 7)


@pytest.mark.parametrize("density", [0.1, 0.3])
def test_default_layout_choice_on_either_side_of_the_density_rule(isa, conv_tuning, density):
    # at least 64 stored taps per input channel and kernel column either way: a 10% dense
    # layer takes the plain layout by default, a 30% dense one the expanded one
    conv_tuning()
    w = pruned_kernel(256, 4, 3, 3, 1 - density)
    x = torch.randn(9, 4, 4, 4)
    bias = torch.randn(256)
    ref = F.conv2d(x, w, bias, padding=1)
    sw = SparseWeight.from_dense(w)
    with torch.no_grad():
        y = sparse_conv2d(x, sw, bias, padding=1, backend="cpu")
        y_pool = sparse_conv2d_relu_pool(x, sw, bias, padding=1, pool=1)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(y_pool, F.relu(ref), atol=1e-4, rtol=1e-5)

"""depthwise_conv2d: the CPU kernel against clamp(F.conv2d(groups=C)), autograd, opcheck, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sparsemia.ops import depthwise_conv2d, extension
from sparsemia.ops.depthwise import depthwise_conv2d_reference

pytestmark = pytest.mark.skipif(extension.module() is None, reason="needs the C++ extension")

# (B, C, H, W, k, stride, padding, dilation): MobileNet's 3x3 (wide and 4x4 maps, stride 2),
# odd sizes, rows narrower than a vector, non-square kernels, dilation, batch 1, no padding.
SHAPES = [
    (2, 16, 32, 32, (3, 3), 1, 1, 1),
    (3, 24, 17, 19, (3, 3), 2, 1, 1),
    (1, 960, 4, 4, (3, 3), 1, 1, 1),
    (1, 7, 5, 3, (3, 3), 1, 1, 1),
    (2, 5, 11, 13, (5, 3), (2, 1), (2, 0), 1),
    (2, 6, 12, 12, (3, 3), 1, 2, 2),
    (1, 3, 9, 9, (3, 3), 3, 0, 1),
    (4, 8, 8, 8, (1, 1), 1, 0, 1),
]
CLAMPS = [(None, None), (0.0, None), (0.0, 6.0)]


def pruned_depthwise(c, kh, kw, sparsity, dtype=torch.float32):
    w = torch.randn(c, 1, kh, kw, dtype=dtype)
    w[torch.rand(w.shape) < sparsity] = 0
    return w


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:4])))
@pytest.mark.parametrize("clamp", CLAMPS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_conv2d(shape, clamp, dtype):
    B, C, H, W, k, stride, padding, dilation = shape
    torch.manual_seed(0)
    w = pruned_depthwise(C, *k, 0.3, dtype)
    x, bias = torch.randn(B, C, H, W, dtype=dtype), torch.randn(C, dtype=dtype)
    y = depthwise_conv2d(x, w, bias, stride, padding, dilation, clamp)
    ref = F.conv2d(x, w, bias, stride, padding, dilation, C)
    ref = torch.clamp(ref, *clamp) if clamp != (None, None) else ref
    tol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-12, 1e-12)
    torch.testing.assert_close(y, ref, atol=tol[0], rtol=tol[1])


# Planes of one channel are stacked over a chunk of images: chunks of several images with a
# remainder (32x32 maps: three images per chunk), a whole large batch in one chunk (4x4 maps), stride 2
# with odd sizes, dilation across the images' boundaries, rows of one element.
CHUNKED = [
    (5, 3, 32, 32, (3, 3), 1, 1, 1),
    (5, 3, 32, 31, (3, 3), 2, 1, 1),
    (33, 8, 4, 4, (3, 3), 1, 1, 1),
    (32, 6, 8, 8, (3, 3), 2, 1, 1),
    (7, 4, 9, 10, (3, 3), 2, 1, 1),
    (6, 5, 7, 6, (3, 3), 1, 2, 2),
    (9, 3, 5, 1, (3, 1), (2, 1), (1, 0), 1),
]


@pytest.mark.parametrize("shape", CHUNKED, ids=lambda s: "x".join(map(str, s[:4])) + f"s{s[5]}")
@pytest.mark.parametrize("threads", [1, 2])
def test_chunks_of_images_match_conv2d_on_every_isa(isa, shape, threads):
    B, C, H, W, k, stride, padding, dilation = shape
    torch.manual_seed(4)
    w = pruned_depthwise(C, *k, 0.3)
    w[0] = 0  # a channel pruned away: its bias alone
    x, bias = torch.randn(B, C, H, W), torch.randn(C)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = depthwise_conv2d(x, w, bias, stride, padding, dilation, (0.0, 6.0))
    finally:
        torch.set_num_threads(previous)
    ref = torch.clamp(F.conv2d(x, w, bias, stride, padding, dilation, C), 0.0, 6.0)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_edge_cases(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(1)
        # all-zero weights: the bias alone, clamped
        x = torch.randn(3, 20, 16, 16)
        bias = torch.randn(20)
        y = depthwise_conv2d(x, torch.zeros(20, 1, 3, 3), bias, padding=1, clamp=(0.0, 6.0))
        torch.testing.assert_close(y, bias.clamp(0, 6)[None, :, None, None].expand(3, 20, 16, 16))
        # non-contiguous input (channels-last and a strided view), no bias
        w = pruned_depthwise(20, 3, 3, 0.5)
        for xi in (x.to(memory_format=torch.channels_last), torch.randn(3, 20, 32, 32)[:, :, ::2, 1::2]):
            torch.testing.assert_close(depthwise_conv2d(xi, w, None, 1, 1), F.conv2d(xi, w, None, 1, 1, 1, 20),
                                       atol=1e-5, rtol=1e-5)
        # a NaN in the input reaches exactly the outputs that read it through a kept tap; the clamp keeps it
        x = torch.randn(1, 2, 6, 6)
        x[0, 0, 2, 3] = math.nan
        w = torch.ones(2, 1, 3, 3)
        y = depthwise_conv2d(x, w, None, 1, 1, clamp=(0.0, 6.0))
        assert torch.isnan(y[0, 0, 1:4, 2:5]).all() and torch.isnan(y).sum() == 9
        # empty batch
        assert depthwise_conv2d(torch.randn(0, 4, 5, 5), torch.randn(4, 1, 3, 3), padding=1).shape == (0, 4, 5, 5)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("clamp", CLAMPS, ids=str)
def test_gradcheck(clamp):
    torch.manual_seed(2)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    w = pruned_depthwise(3, 3, 3, 0.3, torch.float64).requires_grad_(True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: depthwise_conv2d(x, w, b, 2, 1, 1, clamp), (x, w, b))


def test_opcheck():
    torch.manual_seed(3)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    w = pruned_depthwise(4, 3, 3, 0.3, torch.float64).requires_grad_(True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.sparsemia.depthwise_conv2d.default, (x, w, b, [1, 2], [1, 1], [1, 1], 0.0, 6.0))
    torch.library.opcheck(torch.ops.sparsemia.depthwise_conv2d.default,
                          (x, w, None, [1, 1], [0, 0], [1, 1], -math.inf, math.inf))


def test_reference_is_the_fallback():
    x, w = torch.randn(2, 3, 6, 6), torch.randn(3, 1, 3, 3)
    torch.testing.assert_close(depthwise_conv2d(x, w, None, 1, 1, 1, (0.0, 6.0)),
                               depthwise_conv2d_reference(x, w, None, (1, 1), (1, 1), (1, 1), 0.0, 6.0))


def test_bad_arguments_name_the_argument():
    x, w = torch.randn(2, 4, 8, 8), torch.randn(4, 1, 3, 3)
    with pytest.raises(ValueError, match="weight:"):
        depthwise_conv2d(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="x:"):
        depthwise_conv2d(x[0], w)
    with pytest.raises(ValueError, match="stride:"):
        depthwise_conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="clamp:"):
        depthwise_conv2d(x, w, clamp=(6.0, 0.0))
    with pytest.raises(RuntimeError, match="smaller than the dilated kernel"):
        depthwise_conv2d(torch.randn(1, 4, 2, 2), w)
    with pytest.raises(RuntimeError, match="dtype"):
        depthwise_conv2d(x.double(), w)
    with pytest.raises(RuntimeError, match="bias"):
        depthwise_conv2d(x, w, torch.randn(3))


@pytest.mark.parametrize("shape", [CHUNKED[0], CHUNKED[3], CHUNKED[6], SHAPES[2]],
                         ids=lambda s: "x".join(map(str, s[:4])) + f"s{s[5]}")
@pytest.mark.parametrize("in_clamp", [(0.0, 6.0), (0.0, math.inf)], ids=str)
def test_clamp_in_is_the_clamped_inputs_convolution_on_every_isa(isa, shape, in_clamp):
    B, C, H, W, k, stride, padding, dilation = shape
    torch.manual_seed(5)
    w, bias = pruned_depthwise(C, *k, 0.3), torch.randn(C)
    x = torch.randn(B, C, H, W) * 4
    w[0] = torch.rand(k) + 0.5  # every tap kept: what reads the NaN below is NaN, as in F.conv2d
    x[0, 0, 0, 0] = math.nan  # NaN kept by the input clamp, as by hardtanh
    y = torch.ops.sparsemia.depthwise_conv2d_clamp_in(x, w, bias, list(_pair(stride)), list(_pair(padding)),
                                                      list(_pair(dilation)), *in_clamp, 0.0, 6.0)
    ref = F.conv2d(torch.clamp(x, *in_clamp), w, bias, stride, padding, dilation, C).clamp(0.0, 6.0)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5, equal_nan=True)
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)  # non-contiguous
    torch.testing.assert_close(torch.ops.sparsemia.depthwise_conv2d_clamp_in(
        xt, w, bias, list(_pair(stride)), list(_pair(padding)), list(_pair(dilation)), *in_clamp, 0.0, 6.0), y,
        equal_nan=True)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)

"""SparseConv2d: conversion from nn.Conv2d, outputs, training keeps the pattern, state_dict, repr."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsemia.nn import SparseConv2d


def pruned_conv(*args, sparsity=0.8, **kwargs) -> nn.Conv2d:
    conv = nn.Conv2d(*args, **kwargs)
    with torch.no_grad():
        conv.weight[torch.rand(conv.weight.shape) < sparsity] = 0
    return conv


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=4, out_channels=8, kernel_size=3, padding=1),
        dict(in_channels=4, out_channels=6, kernel_size=(3, 5), stride=2, padding=(1, 2), bias=False),
        dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6),
        dict(in_channels=4, out_channels=8, kernel_size=3, padding="same", dilation=2),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
        dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, padding_mode="circular"),
    ],
)
def test_from_dense_matches_the_conv(kwargs):
    conv = pruned_conv(**kwargs)
    sparse = SparseConv2d.from_dense(conv)
    x = torch.randn(3, kwargs["in_channels"], 11, 10)
    torch.testing.assert_close(sparse(x), conv(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.to_dense()(x), conv(x))


def test_mask_prunes_nonzeros_and_formats():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    mask = torch.rand(conv.weight.shape) < 0.3
    sparse = SparseConv2d.from_dense(conv, mask=mask)
    assert sparse.weight.nnz == int(mask.sum())
    x = torch.randn(2, 4, 6, 6)
    expected = nn.functional.conv2d(x, conv.weight * mask, conv.bias, padding=1)
    torch.testing.assert_close(sparse(x), expected, atol=1e-5, rtol=1e-5)
    bsr = SparseConv2d.from_dense(conv, mask=mask, format="bsr", block=(4, 9))
    torch.testing.assert_close(bsr(x), expected, atol=1e-5, rtol=1e-5)
    assert "format=bsr(4, 9)" in repr(bsr)


def test_training_updates_only_stored_taps():
    conv = pruned_conv(4, 8, 3, padding=1)
    sparse = SparseConv2d.from_dense(conv)
    pattern = sparse.weight.to_dense() != 0
    opt = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        sparse(torch.randn(2, 4, 7, 7)).square().mean().backward()
        opt.step()
    assert not bool((sparse.weight.to_dense()[~pattern] != 0).any())
    assert [n for n, _ in sparse.named_parameters()] == ["values", "bias"]


def test_state_dict_round_trip_and_repr():
    conv = pruned_conv(4, 8, 3, stride=2, padding=1, sparsity=0.9)
    a = SparseConv2d.from_dense(conv)
    b = SparseConv2d.from_dense(pruned_conv(4, 8, 3, stride=2, padding=1, sparsity=0.5))  # other nnz
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(b(x), a(x))
    assert set(a.state_dict()) == {"values", "crow_indices", "col_indices", "bias"}
    text = repr(a)
    assert "SparseConv2d(4, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1)" in text
    assert "format=csr" in text and "sparsity=" in text


def test_bad_arguments():
    with pytest.raises(TypeError, match="conv"):
        SparseConv2d.from_dense(nn.Linear(3, 4))
    with pytest.raises(TypeError, match="weight"):
        SparseConv2d(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="padding_mode"):
        SparseConv2d.from_dense(nn.Conv2d(3, 4, 3)).__class__(
            SparseConv2d.from_dense(nn.Conv2d(3, 4, 3)).weight, padding_mode="mirror")

"""SparseLinear: drop-in for nn.Linear, trainable with a fixed pattern, state_dict round trip."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import sparsemia as sm
from sparsemia.nn import SparseLinear


def pruned_linear(inp=40, out=24, sparsity=0.8, bias=True, dtype=torch.float32) -> nn.Linear:
    lin = nn.Linear(inp, out, bias=bias, dtype=dtype)
    with torch.no_grad():
        lin.weight[torch.rand(out, inp) < sparsity] = 0
    return lin


@pytest.mark.parametrize("fmt,kw", [("csr", {}), ("bsr", {"block": (4, 4)}), ("bsr", {"block": (1, 8)})])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear(fmt, kw, bias):
    lin = pruned_linear(bias=bias)
    sparse = SparseLinear.from_dense(lin, format=fmt, **kw)
    for x in (torch.randn(1, 40), torch.randn(7, 3, 40), torch.randn(64, 40)):
        torch.testing.assert_close(sparse(x), lin(x), atol=1e-5, rtol=1e-5)
    assert isinstance(sparse.to_dense(), nn.Linear)
    torch.testing.assert_close(sparse.to_dense().weight, lin.weight)


def test_mask_argument_and_repr():
    lin = nn.Linear(16, 8)
    mask = torch.rand(8, 16) < 0.25
    sparse = SparseLinear.from_dense(lin, mask=mask)
    assert sparse.weight.nnz == int(mask.sum())
    text = repr(sparse)
    assert "format=csr" in text and "sparsity=" in text


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_keeps_the_pattern_and_learns(optimizer):
    torch.manual_seed(1)
    lin = pruned_linear(20, 10, 0.7)
    sparse = SparseLinear.from_dense(lin)
    pattern = sparse.weight.to_dense() != 0
    opt = (
        torch.optim.SGD(sparse.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
        if optimizer == "sgd"
        else torch.optim.Adam(sparse.parameters(), lr=0.01, weight_decay=1e-3)
    )
    x, target = torch.randn(128, 20), torch.randn(128, 10)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.mse_loss(sparse(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert torch.equal(sparse.weight.to_dense() != 0, pattern & (sparse.weight.to_dense() != 0))
    assert not bool((sparse.weight.to_dense()[~pattern]).any())


def test_state_dict_round_trip_including_other_nnz():
    sparse = SparseLinear.from_dense(pruned_linear(sparsity=0.5))
    denser = SparseLinear.from_dense(pruned_linear(sparsity=0.1))
    buffer = io.BytesIO()
    torch.save(sparse.state_dict(), buffer)
    buffer.seek(0)
    denser.load_state_dict(torch.load(buffer))
    x = torch.randn(5, 40)
    torch.testing.assert_close(denser(x), sparse(x))
    assert denser.weight.nnz == sparse.weight.nnz


def test_moves_and_casts_like_a_module():
    sparse = SparseLinear.from_dense(pruned_linear()).double()
    assert sparse.values.dtype == torch.float64 and sparse.col_indices.dtype == torch.int32
    x = torch.randn(3, 40, dtype=torch.float64)
    assert sparse(x).dtype == torch.float64


def test_nm_layer():
    lin = nn.Linear(16, 8)
    sm.SparseWeight  # noqa: B018  (public name)
    with torch.no_grad():
        w = lin.weight.reshape(8, 4, 4)
        keep = torch.zeros_like(w, dtype=torch.bool).scatter_(-1, w.abs().topk(2, -1).indices, True)
        lin.weight.copy_((w * keep).reshape(8, 16))
    sparse = SparseLinear.from_dense(lin, format="nm")
    x = torch.randn(4, 16)
    torch.testing.assert_close(sparse(x), lin(x))
    assert "2:4" in repr(sparse)


def test_bad_arguments():
    with pytest.raises(TypeError, match="linear: expected an nn.Linear"):
        SparseLinear.from_dense(nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="weight: expected a sparsemia.SparseWeight"):
        SparseLinear(torch.randn(3, 3))


def test_the_layer_keeps_one_sparse_weight_until_its_tensors_change():
    layer = SparseLinear.from_dense(pruned_linear(), format="bsr", block=(4, 4))
    w = layer.weight
    assert layer.weight is w  # the same object: its derived patterns are built once
    crow, col, _ = w.csr()
    assert layer.weight.csr()[0] is crow and layer.weight.csr()[1] is col
    state = layer.state_dict()
    assert not any("_weight" in key for key in state)
    layer.to(torch.float64)  # the values parameter is the same object; still one weight, new dtype
    assert layer.weight.dtype == torch.float64
    other = SparseLinear.from_dense(pruned_linear(sparsity=0.5), format="bsr", block=(4, 4))
    layer.load_state_dict(other.state_dict())  # another number of blocks: new tensors, new weight
    assert layer.weight is not w
    x = torch.randn(3, 40, dtype=torch.float64)
    torch.testing.assert_close(layer(x), other.double()(x))

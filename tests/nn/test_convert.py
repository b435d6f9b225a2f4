"""sparsify / densify on the model zoo, pruned three ways; save and load; the bytes report."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsemia as sm
from sparsemia.models import LeNet5, ResNet18
from sparsemia.nn import (
    FoldedLayer,
    SparseConv2d,
    SparseLinear,
    bytes_report,
    fuse_relu_pool,
    load_sparsified,
    save_sparsified,
)


def zero_prune(model: nn.Module, sparsity: float) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight[torch.rand(m.weight.shape) < sparsity] = 0
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def sparse_layers(model):
    return [n for n, m in model.named_modules() if isinstance(m, SparseConv2d | SparseLinear)]


def test_sparsify_resnet_matches_and_densify_inverts():
    model = zero_prune(ResNet18(), 0.9)
    x = torch.randn(2, 3, 32, 32)
    sparse = sm.sparsify(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert set(convs) <= set(sparse_layers(sparse))  # every 90%-sparse conv is worth it
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-4, rtol=1e-4)
        dense = sm.densify(sparse)
        assert not sparse_layers(dense)
        torch.testing.assert_close(dense(x), model(x), atol=1e-5, rtol=1e-5)
    assert sparse_layers(sparse)  # not in place by default


def test_min_sparsity_and_cost_model_keep_layers_dense():
    model = zero_prune(LeNet5(), 0.3)
    assert not sparse_layers(sm.sparsify(model))  # below min_sparsity
    assert not sparse_layers(sm.sparsify(model, min_sparsity=0.2))  # too dense to be faster
    with pytest.raises(ValueError, match="min_sparsity"):
        sm.sparsify(model, min_sparsity=1.5)
    with pytest.raises(ValueError, match="format"):
        sm.sparsify(model, format="coo")


def test_torch_prune_and_sparsemia_masks_are_read():
    model = LeNet5().eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            torch_prune.l1_unstructured(m, "weight", amount=0.9)
    x = torch.randn(4, 1, 28, 28)
    sparse = sm.sparsify(model, min_sparsity=0.8)
    conv = sparse.features[0]
    assert isinstance(conv, SparseConv2d) and abs(conv.weight.sparsity - 0.9) < 0.01
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)

    masked = LeNet5().eval()
    sm.prune.magnitude(masked, sparsity=0.9, scope="layer")
    with torch.no_grad():
        torch.testing.assert_close(sm.sparsify(masked)(x), masked(x), atol=1e-5, rtol=1e-5)


def test_measured_choice_and_formats():
    model = zero_prune(LeNet5(), 0.95)
    x = torch.randn(8, 1, 28, 28)
    timed = sm.sparsify(model, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(timed(x), model(x), atol=1e-5, rtol=1e-5)
    bsr = sm.sparsify(model, format="bsr")
    with torch.no_grad():
        torch.testing.assert_close(bsr(x), model(x), atol=1e-5, rtol=1e-5)


def test_save_and_load(tmp_path):
    model = zero_prune(ResNet18(), 0.9)
    sparse = sm.sparsify(model)
    x = torch.randn(2, 3, 32, 32)
    path = str(tmp_path / "sparse.safetensors")
    save_sparsified(sparse, path)
    loaded = load_sparsified(ResNet18().eval(), path)
    assert sparse_layers(loaded) == sparse_layers(sparse)
    from_state = load_sparsified(ResNet18().eval(), sparse.state_dict())
    again = sm.sparsify(zero_prune(ResNet18(), 0.9))
    again.load_state_dict(sparse.state_dict())  # other patterns, same layers
    with torch.no_grad():
        for other in (loaded, from_state, again):
            torch.testing.assert_close(other(x), sparse(x))


def test_bytes_report():
    sparse = sm.sparsify(zero_prune(ResNet18(), 0.9))
    report = bytes_report(sparse)
    conv1 = next(r for r in report.layers if r.name == "conv1")
    assert conv1.kind == "SparseConv2d" and conv1.dense_bytes == 64 * 3 * 9 * 4
    assert report.sparse_total < 0.25 * report.dense_total
    assert "total" in str(report)


def test_sparsify_folds_relu_and_pool_into_sparse_convs_and_densify_restores_them(tmp_path):
    model = zero_prune(LeNet5(), 0.9)
    x = torch.randn(5, 1, 28, 28)
    sparse = sm.sparsify(model)
    unfused = sm.sparsify(model, fuse=False)
    feats = sparse.features
    assert isinstance(feats[0], SparseConv2d) and feats[0].fused_relu_pool == 2
    assert isinstance(feats[1], FoldedLayer) and isinstance(feats[1].layer, nn.ReLU)
    assert isinstance(feats[2], FoldedLayer) and isinstance(feats[2].layer, nn.MaxPool2d)
    assert "fused=relu+maxpool2" in repr(feats[0])
    assert unfused.features[0].fused_relu_pool is None and isinstance(unfused.features[1], nn.ReLU)
    assert sparse.state_dict().keys() == unfused.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)
    # training takes the differentiable path; gradients equal the unfused model's
    sparse.train()
    unfused.train()
    sparse(x).sum().backward()
    unfused(x).sum().backward()
    torch.testing.assert_close(feats[0].weight.values.grad, unfused.features[0].weight.values.grad)
    dense = sm.densify(sparse)
    assert [type(m) for m in dense.features] == [type(m) for m in model.features]
    with torch.no_grad():
        torch.testing.assert_close(dense.eval()(x), model(x), atol=1e-5, rtol=1e-5)
    path = str(tmp_path / "lenet.safetensors")
    save_sparsified(sparse, path)
    loaded = load_sparsified(LeNet5().eval(), path)
    assert loaded.features[0].fused_relu_pool == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=1e-5)


def test_fuse_relu_pool_only_folds_what_it_can():
    conv = SparseConv2d.from_dense(nn.Conv2d(3, 4, 3, padding=1))
    seq = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2, stride=1), nn.ReLU())  # pool with stride != kernel
    assert fuse_relu_pool(seq) == 1
    assert conv.fused_relu_pool == 1 and isinstance(seq[1], FoldedLayer) and isinstance(seq[2], nn.MaxPool2d)
    assert fuse_relu_pool(seq) == 0  # already fused
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = torch.relu(nn.functional.max_pool2d(torch.relu(conv.to_dense()(x)), 2, stride=1))
        torch.testing.assert_close(seq(x), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="fused_relu_pool"):
        conv.fused_relu_pool = 0

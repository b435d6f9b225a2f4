"""Fine-tuning through sparsemia.nn sparse layers keeps the pruning mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsemia as sm
from sparsemia.nn import SparseLinear


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2),
        lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2),
    ],
    ids=["sgd_momentum_wd", "adam_wd"],
)
def test_finetuning_sparse_linear_layers_keeps_the_mask(optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    sm.prune.magnitude(model, 0.75)
    masks = {name: sm.prune.get_mask(layer).bool() for name, layer in sm.prune.prunable_layers(model).items()}
    report = sm.prune.sparsity_report(model)
    sparse = nn.Sequential(
        SparseLinear.from_dense(model[0], mask=masks["0"]), nn.ReLU(), SparseLinear.from_dense(model[2], mask=masks["2"])
    )
    inputs = torch.randn(8, 16)
    torch.testing.assert_close(sparse(inputs), model(inputs))
    assert [(layer.nnz, layer.numel) for layer in sm.prune.sparsity_report(sparse).layers] == [
        (layer.nnz, layer.numel) for layer in report.layers
    ]

    targets = torch.randint(0, 8, (8,))
    opt = optimizer(sparse.parameters())
    before = sparse[0].weight.to_dense().detach().clone()
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(sparse(inputs), targets).backward()
        opt.step()
    for name, layer in (("0", sparse[0]), ("2", sparse[2])):
        dense = layer.weight.to_dense().detach()
        assert bool((dense[~masks[name]] == 0).all())
    assert not torch.equal(sparse[0].weight.to_dense().detach(), before)  # it trained

"""Masks stay exact through fine-tuning with every optimizer; torch.nn.utils.prune and zeros interoperate."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

import sparsemia as sm

OPTIMIZERS = {
    "sgd_momentum_wd": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-3),
    "sgd_nesterov": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "adam_wd": lambda params: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
}


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batch, steps: int) -> None:
    inputs, targets = batch
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach().clone() for name, m in sm.prune.prunable_layers(model).items()}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("structure", ["unstructured", "filter"])
def test_pruned_weights_stay_exactly_zero_through_training(small_net, batch, optimizer, structure):
    opt = OPTIMIZERS[optimizer](small_net.parameters())
    # Momentum and Adam moments are nonzero everywhere before pruning: the hard case.
    train_steps(small_net, opt, batch, 3)
    sm.prune.magnitude(small_net, 0.6, structure=structure)
    zeros = {name: w == 0 for name, w in weights(small_net).items()}
    before = weights(small_net)
    train_steps(small_net, opt, batch, 25)
    after = weights(small_net)  # read right after optimizer.step(), no forward in between
    for name, weight in after.items():
        assert bool((weight[zeros[name]] == 0).all()), name
        assert not torch.equal(weight[~zeros[name]], before[name][~zeros[name]]), name  # it did train
    if structure == "filter":  # the BatchNorm channels of pruned filters stay dead too
        bn = small_net.features[1]
        dead = (small_net.features[0].weight.detach().flatten(1) == 0).all(1)
        assert bool((bn.weight[dead] == 0).all()) and bool((bn.bias[dead] == 0).all())


def test_gradient_of_pruned_weights_is_zero(small_net, batch):
    sm.prune.magnitude(small_net, 0.5)
    F.cross_entropy(small_net(batch[0]), batch[1]).backward()
    layer = small_net.classifier[1]
    original = layer.parametrizations.weight.original
    assert bool((original.grad[sm.prune.get_mask(layer) == 0] == 0).all())


def test_existing_optimizer_keeps_training_the_pruned_parameter(small_net, batch):
    opt = torch.optim.SGD(small_net.parameters(), lr=0.1)
    parameter = small_net.classifier[1].weight
    sm.prune.magnitude(small_net, 0.5)
    assert small_net.classifier[1].parametrizations.weight.original is parameter
    before = parameter.detach().clone()
    train_steps(small_net, opt, batch, 1)
    kept = sm.prune.get_mask(small_net.classifier[1]) == 1
    assert not torch.equal(parameter.detach()[kept], before[kept])


def test_deepcopy_and_state_dict_after_training(small_net, batch):
    sm.prune.magnitude(small_net, 0.7)
    train_steps(small_net, torch.optim.Adam(small_net.parameters()), batch, 2)
    clone = copy.deepcopy(small_net)
    assert torch.equal(clone.classifier[1].weight, small_net.classifier[1].weight)
    fresh = type(small_net)()
    sm.prune.magnitude(fresh, 0.7)  # same parametrization layout, then load
    fresh.load_state_dict(small_net.state_dict())
    assert torch.equal(fresh.classifier[1].weight, small_net.classifier[1].weight)


def test_remove_makes_masks_permanent(small_net, batch):
    sm.prune.magnitude(small_net, 0.7, scope="global")
    expected = weights(small_net)
    report = sm.prune.sparsity_report(small_net)
    sm.prune.remove(small_net)
    assert sm.prune.masks(small_net) == {}
    assert not any(parametrize.is_parametrized(m) for m in small_net.modules())
    for name, weight in weights(small_net).items():
        assert torch.equal(weight, expected[name])
    assert sm.prune.sparsity_report(small_net) == report
    assert all(isinstance(m.weight, nn.Parameter) for m in sm.prune.prunable_layers(small_net).values())
    torch.save(small_net, io.BytesIO())  # plain modules pickle


def test_dense_model_with_zeros_keeps_them_after_mask_zeros(small_net, batch):
    with torch.no_grad():
        for layer in sm.prune.prunable_layers(small_net).values():
            layer.weight[layer.weight.abs() < 0.05] = 0
    zeros = {name: w == 0 for name, w in weights(small_net).items()}
    sm.prune.mask_zeros(small_net)
    train_steps(small_net, OPTIMIZERS["sgd_momentum_wd"](small_net.parameters()), batch, 10)
    for name, weight in weights(small_net).items():
        assert bool((weight[zeros[name]] == 0).all())
        assert int((weight == 0).sum()) == int(zeros[name].sum())


def test_torch_prune_models_are_accepted(small_net, batch):
    torch_prune.l1_unstructured(small_net.classifier[1], "weight", amount=0.5)
    torch_prune.random_unstructured(small_net.features[3], "weight", amount=0.3)
    torch_prune.l1_unstructured(small_net.features[3], "weight", amount=0.2)  # a PruningContainer
    torch_pruned = {name: w == 0 for name, w in weights(small_net).items()}
    small_net(batch[0])  # torch's hook has run: weight is a graph non-leaf

    report = sm.prune.sparsity_report(small_net)
    assert report["classifier.1"].sparsity == pytest.approx(0.5)
    sm.prune.magnitude(small_net, 0.8)
    assert not hasattr(small_net.classifier[1], "weight_orig")
    for name, weight in weights(small_net).items():
        assert bool((weight[torch_pruned[name]] == 0).all()), name  # torch's zeros are kept
        assert abs(int((weight == 0).sum()) - 0.8 * weight.numel()) <= 0.5
    train_steps(small_net, OPTIMIZERS["adam_wd"](small_net.parameters()), batch, 5)
    copy.deepcopy(small_net)
    sm.prune.remove(small_net)
    for weight in weights(small_net).values():
        assert abs(int((weight == 0).sum()) - 0.8 * weight.numel()) <= 0.5


def test_remove_handles_torch_prune_directly(small_net):
    torch_prune.l1_unstructured(small_net.classifier[1], "weight", amount=0.25)
    sm.prune.remove(small_net)
    layer = small_net.classifier[1]
    assert not hasattr(layer, "weight_orig") and not hasattr(layer, "weight_mask")
    assert int((layer.weight == 0).sum()) == 512


def test_remove_leaves_other_parametrizations(small_net):
    class Double(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    parametrize.register_parametrization(small_net.classifier[3], "weight", Double())
    sm.prune.magnitude(small_net, 0.5)
    sm.prune.remove(small_net)
    assert parametrize.is_parametrized(small_net.classifier[3], "weight")
    assert not parametrize.is_parametrized(small_net.classifier[1])


def test_apply_mask_checks_shape(small_net):
    with pytest.raises(ValueError, match="^mask: shape"):
        sm.prune.apply_mask(small_net.classifier[1], "weight", torch.ones(3, 3))
    with pytest.raises(ValueError, match="^name:"):
        sm.prune.apply_mask(small_net.features[0], "bias", torch.ones(8))

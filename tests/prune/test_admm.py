"""ADMM pruning: the primal residual falls, the target is met, the extra loss is optimised, LeNet-5 keeps its accuracy."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsemia as sm


def blobs(samples: int = 512, features: int = 16, classes: int = 4, seed: int = 0) -> TensorDataset:
    """Linearly separable-ish Gaussian blobs: small enough to train in a fraction of a second."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=generator) * 2
    labels = torch.randint(0, classes, (samples,), generator=generator)
    return TensorDataset(centers[labels] + torch.randn(samples, features, generator=generator), labels)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def loader(dataset: TensorDataset, batch_size: int = 64) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))


def accuracy(model: nn.Module, dataset: TensorDataset) -> float:
    inputs, labels = dataset.tensors
    model.eval()
    with torch.no_grad():
        return float((model(inputs).argmax(1) == labels).float().mean())


def test_residual_falls_and_target_is_met():
    data = blobs()
    model = mlp()
    result = sm.prune.admm(model, loader(data), 0.8, rho=0.05, rho_growth=2.0, rounds=6, retrain_epochs=2, lr=1e-2)
    residuals = result.residuals
    assert len(residuals) == 6 and [r.rho for r in result.rounds] == pytest.approx([0.05 * 2**k for k in range(6)])
    assert residuals[-1] < 0.5 * residuals[0], residuals
    assert sum(b < a for a, b in zip(residuals, residuals[1:], strict=False)) >= 4  # falls round after round
    assert set(result.rounds[0].layer_residuals) == {"0", "2", "4"}
    for layer in sm.prune.sparsity_report(model).layers:
        assert abs((layer.numel - layer.nnz) - 0.8 * layer.numel) <= 0.5
    assert len(result.retrain_losses) == 2
    assert accuracy(model, data) > 0.9


def test_structured_admm_with_per_layer_rates_and_rho_sequence():
    model = mlp()
    result = sm.prune.admm(
        model, loader(blobs()), {"0": 0.5, "2": 0.75}, structure="block", block=(4, 4),
        rho=[0.01, 0.1, 1.0], rounds=3, retrain_epochs=1,
    )  # fmt: skip
    assert [r.rho for r in result.rounds] == [0.01, 0.1, 1.0]
    report = sm.prune.sparsity_report(model)
    assert report["0"].sparsity == pytest.approx(0.5)
    assert report["2"].sparsity == pytest.approx(0.75)
    assert report["4"].sparsity == 0.0


def test_extra_loss_is_called_with_the_batch_and_optimised():
    data = blobs()
    calls = []

    def suppress_class_zero(model, inputs, targets, outputs):
        calls.append((inputs.shape, targets.shape, outputs.shape))
        return 10.0 * outputs[:, 0].softmax(0).mean() + outputs[:, 0].mean()

    model = mlp()
    sm.prune.admm(model, loader(data), 0.5, rounds=2, retrain_epochs=1, extra_loss=suppress_class_zero, lr=1e-2)
    assert len(calls) == 3 * 8  # (2 rounds + 1 retrain epoch) x 8 batches
    assert calls[0] == (torch.Size([64, 16]), torch.Size([64]), torch.Size([64, 4]))
    baseline = mlp()
    sm.prune.admm(baseline, loader(data), 0.5, rounds=2, retrain_epochs=1, lr=1e-2)
    inputs = data.tensors[0]
    with torch.no_grad():
        assert model(inputs)[:, 0].mean() < baseline(inputs)[:, 0].mean() - 1.0


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": 0.5, "rho": 0.0}, "rho"),
        ({"sparsity": 0.5, "rho": [0.1, 0.2], "rounds": 3}, "rho"),
        ({"sparsity": 0.5, "rho_growth": 0.5}, "rho_growth"),
        ({"sparsity": 0.5, "rounds": 0}, "rounds"),
        ({"sparsity": 0.5, "retrain_epochs": -1}, "retrain_epochs"),
        ({"sparsity": 0.5, "structure": "rows"}, "structure"),
        ({"sparsity": 0.5, "extra_loss": 3.0}, "extra_loss"),
        ({"sparsity": {"7": 0.5}}, "sparsity"),
    ],
)
def test_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        sm.prune.admm(mlp(), loader(blobs()), **kwargs)


def test_extra_loss_must_return_a_scalar():
    with pytest.raises(ValueError, match="^extra_loss: expected a callable returning a scalar tensor"):
        sm.prune.admm(mlp(), loader(blobs()), 0.5, rounds=1, extra_loss=lambda m, x, y, out: out)


@pytest.mark.slow
def test_lenet5_admm_90_percent_within_two_points_of_dense():
    """LeNet-5 on the embedded MNIST subset (4,000 train / 1,000 test): ADMM to 90% loses < 2 points."""
    torch.manual_seed(0)
    images, labels = sm.data.embedded_mnist()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    train = TensorDataset(images[order[:4000]], labels[order[:4000]])
    test = TensorDataset(images[order[4000:]], labels[order[4000:]])
    model = sm.models.LeNet5()
    sm.prune.train_epochs(model, loader(train), torch.optim.Adam(model.parameters(), lr=1e-3), 8)
    dense_accuracy = accuracy(model, test)
    assert dense_accuracy > 0.94

    result = sm.prune.admm(model, loader(train), 0.9, rho=0.1, rho_growth=1.5, rounds=6, retrain_epochs=4)
    pruned_accuracy = accuracy(model, test)
    assert sm.prune.sparsity_report(model).sparsity == pytest.approx(0.9, abs=1e-4)
    assert result.residuals[-1] < 0.5 * result.residuals[0]
    assert pruned_accuracy >= dense_accuracy - 0.02, (dense_accuracy, pruned_accuracy)


def test_filter_admm_gives_a_shrinkable_model(small_net, batch):
    data = TensorDataset(*batch)
    result = sm.prune.admm(small_net, loader(data, 8), 0.5, structure="filter", rho=0.1, rounds=3, retrain_epochs=1)
    assert len(result.residuals) == 3
    small_net.eval()
    with torch.no_grad():
        expected = small_net(batch[0])
    small = sm.prune.shrink(small_net)
    assert [small.features[0].out_channels, small.features[3].out_channels, small.classifier[1].out_features] == [4, 8, 16]
    torch.testing.assert_close(small(batch[0]), expected)

"""Every defense trained on a stacked model: each model learns, and is defended, on its own subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemia.models import MLP
from sparsemia.nn.stacked import stack_models
from sparsemia.train import DefenseOptions, TrainConfig, evaluate
from sparsemia.train.stacked_defenses import StackedMinMax, train_stacked_defense
from tests.train.blobs import blobs


def _blobs(n=160, features=10, classes=3, seed=0):
    return blobs(n, features, classes, seed)


def _stack(m=4):
    torch.manual_seed(0)
    return stack_models([MLP(10, 3, hidden=(32,)) for _ in range(m)])


CONFIG = TrainConfig(epochs=6, batch_size=16, lr=1e-2, seed=0)
OPTIONS = DefenseOptions(sparsity=0.8, finetune_epochs=2, admm_rounds=3, admm_rho=0.1, lam=1.0)


@pytest.mark.parametrize("defense", ["none", "minmax", "magnitude", "admm", "admm+minmax", "magnitude+minmax"])
def test_each_model_learns_under_the_defense(defense):
    x, y = _blobs()
    inclusion = np.zeros((4, 120), dtype=bool)
    for m in range(4):
        inclusion[m, np.random.default_rng(m).permutation(120)[:60]] = True
    stack = _stack()
    info = train_stacked_defense(defense, stack, x[:120], y[:120], inclusion, CONFIG, options=OPTIONS,
                                 reference=(x[120:], y[120:]), num_classes=3, seed=1)
    for m in range(4):
        model = stack.unstack(m)
        idx = torch.as_tensor(np.flatnonzero(inclusion[m]))
        assert evaluate(model, x[idx], y[idx])["accuracy"] > 0.85
        weights = [mod.weight for mod in model.modules() if isinstance(mod, torch.nn.Linear)]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        if "magnitude" in defense or "admm" in defense:
            assert zeros == pytest.approx(0.8, abs=0.02)  # each model pruned to the sparsity, per layer
        else:
            assert zeros < 0.01
    if "admm" in defense:
        residuals = info["admm_residuals"]
        assert len(residuals) == 3 and residuals[-1] < residuals[0]


def test_models_of_a_stack_are_independent():
    # model 0's training does not depend on what the other models train on
    x, y = _blobs()
    inclusion = np.zeros((2, 120), dtype=bool)
    inclusion[0, :60] = True
    inclusion[1, 60:] = True
    other = inclusion.copy()
    other[1, 100:] = False  # model 1 trains on less (and other) data
    a, b = _stack(2), _stack(2)
    train_stacked_defense("magnitude", a, x[:120], y[:120], inclusion, CONFIG, options=OPTIONS, num_classes=3)
    train_stacked_defense("magnitude", b, x[:120], y[:120], other, CONFIG, options=OPTIONS, num_classes=3)
    for pa, pb in zip(a.unstack(0).parameters(), b.unstack(0).parameters(), strict=True):
        torch.testing.assert_close(pa, pb)


def test_stacked_minmax_regulariser_and_errors():
    x, y = _blobs()
    stack = _stack(3)
    adversary = StackedMinMax(3, 3, (x[120:], y[120:]), lam=2.0, k=2, seed=0)
    inputs = x[:24].reshape(3, 8, 10)
    targets = y[:24].reshape(3, 8)
    term = adversary(stack, inputs, targets, stack(inputs))
    assert term.item() <= 0 and term.requires_grad
    with pytest.raises(ValueError, match="reference"):
        train_stacked_defense("minmax", _stack(), x, y, np.ones((4, 160), dtype=bool), CONFIG)
    with pytest.raises(ValueError, match="DP-SGD"):
        train_stacked_defense("dpsgd", _stack(), x, y, np.ones((4, 160), dtype=bool), CONFIG)


def test_minmax_stack_scores_with_its_trained_weights():
    # Min-Max runs inference forwards (the sparse CPU kernel for LeNet-5's convolutions) between
    # fused-Adam steps; scoring afterwards must use the trained weights, as the unstacked models do
    from sparsemia.models import LeNet5
    from sparsemia.train import predict_logits

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    torch.manual_seed(0)
    stack = stack_models([LeNet5() for _ in range(2)])
    inclusion = np.zeros((2, 64), dtype=bool)
    inclusion[0, :32] = inclusion[1, 32:] = True
    train_stacked_defense("minmax", stack, x[:64], y[:64], inclusion, TrainConfig(epochs=2, batch_size=16, seed=0),
                          options=OPTIONS, reference=(x[64:], y[64:]), num_classes=10, seed=1)
    stack.eval()
    expected = torch.stack([m.eval()(x[:64]) for m in stack.to_modules()]).detach()
    torch.testing.assert_close(predict_logits(stack, x[:64]), expected, rtol=1e-4, atol=1e-4)

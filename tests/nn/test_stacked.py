"""Stacked models compute exactly what a loop over the single models computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsemia.models import MLP, LeNet5
from sparsemia.nn.stacked import FunctionalStack, StackedConv2d, StackedModel, stack_models


def _models(factory, count):
    out = []
    for i in range(count):
        torch.manual_seed(100 + i)
        out.append(factory())
    return out


def _small_cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 3, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(5 * 1 * 1 * 1, 3),
    )


@pytest.mark.parametrize("train_mode", [False, True])
def test_lenet_stack_matches_loop(train_mode):
    models = [m.train(train_mode) for m in _models(LeNet5, 3)]
    stack = stack_models(models).train(train_mode)
    x = torch.rand(3, 7, 1, 28, 28)
    expected = torch.stack([m(xi) for m, xi in zip(models, x, strict=True)])
    torch.testing.assert_close(stack(x), expected, rtol=1e-4, atol=1e-5)
    shared = torch.rand(9, 1, 28, 28)
    expected_shared = torch.stack([m(shared) for m in models])
    # forward_shared uses the fused conv→ReLU→pool GEMM path
    torch.testing.assert_close(stack.forward_shared(shared, chunk_size=4), expected_shared, rtol=1e-4, atol=1e-5)


def test_batchnorm_and_strided_conv_match_loop():
    models = _models(_small_cnn, 2)
    x = torch.rand(2, 5, 2, 6, 6)
    stack = stack_models(models)
    expected = torch.stack([m(xi) for m, xi in zip(models, x, strict=True)])
    torch.testing.assert_close(stack(x), expected, rtol=1e-4, atol=1e-5)
    # per-model batch statistics were used and running stats updated per model
    for i, m in enumerate(models):
        torch.testing.assert_close(stack.unstack(i)[1].running_mean, m[1].running_mean)
    stack.eval()
    for m in models:
        m.eval()
    expected = torch.stack([m(xi) for m, xi in zip(models, x, strict=True)])
    torch.testing.assert_close(stack(x), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stack.forward_shared(x[0]), torch.stack([m(x[0]) for m in models]), rtol=1e-4, atol=1e-5)


def test_mlp_and_gradients_match_loop():
    models = _models(lambda: MLP(12, 4, hidden=(8, 6)), 3)
    stack = stack_models(models)
    x = torch.randn(3, 5, 12)
    y = torch.randint(0, 4, (3, 5))
    out = stack(x)
    loss = sum(F.cross_entropy(o, t) for o, t in zip(out, y, strict=True))
    loss.backward()
    for i, m in enumerate(models):
        F.cross_entropy(m(x[i]), y[i]).backward()
        first = m.net[1]
        torch.testing.assert_close(stack.layers[1].weight.grad[i], first.weight.grad, rtol=1e-4, atol=1e-6)


def test_unstack_round_trip():
    models = _models(LeNet5, 2)
    stack = stack_models(models)
    x = torch.rand(4, 1, 28, 28)
    for i, m in enumerate(models):
        torch.testing.assert_close(stack.unstack(i)(x), m(x))
    with pytest.raises(ValueError, match="index"):
        stack.unstack(2)


def test_masks_zero_weights_and_gradients():
    models = _models(lambda: MLP(6, 3, hidden=(5,)), 2)
    stack = stack_models(models)
    masks = [(torch.rand_like(layer.weight) > 0.5).float() for _, layer in stack.stacked_layers()]
    stack.set_masks(masks)
    x = torch.randn(2, 4, 6)
    stack(x).sum().backward()
    for (_, layer), mask in zip(stack.stacked_layers(), masks, strict=True):
        assert torch.all(layer.weight.grad[mask == 0] == 0)
        assert torch.all(layer.effective_weight()[mask == 0] == 0)
    single = stack.unstack(1)
    torch.testing.assert_close(single(x[1]), stack(x)[1])
    with pytest.raises(ValueError, match="masks"):
        stack.set_masks(masks[:1])


def test_bad_inputs():
    with pytest.raises(ValueError, match="same architecture"):
        stack_models([MLP(4, 2, hidden=(3,)), MLP(4, 2, hidden=(3, 3))])
    with pytest.raises(ValueError, match="layer shapes"):
        stack_models([LeNet5(), LeNet5(num_classes=5)])
    with pytest.raises(ValueError, match="layer shapes"):
        stack_models([MLP(4, 2, hidden=(3,)), MLP(4, 2, hidden=(5,))])
    with pytest.raises(ValueError, match="FunctionalStack"):
        stack_models([nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))])
    stack = stack_models(_models(LeNet5, 2))
    with pytest.raises(ValueError, match="x:"):
        stack(torch.rand(3, 2, 1, 28, 28))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + x)


def test_functional_stack_matches_loop():
    models = _models(_Residual, 3)
    stack = FunctionalStack(models)
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(stack(x), torch.stack([m(xi) for m, xi in zip(models, x, strict=True)]))
    torch.testing.assert_close(stack.forward_shared(x[0]), torch.stack([m(x[0]) for m in models]))
    assert isinstance(stack_models(_models(LeNet5, 1)), StackedModel)


def test_cpu_inference_runs_the_sparse_kernel_and_matches_loop_with_masks():
    models = [m.eval() for m in _models(LeNet5, 3)]
    stack = stack_models(models).eval()
    masks = [(torch.rand_like(layer.weight) > 0.7).float() for _, layer in stack.stacked_layers()]
    stack.set_masks(masks)
    convs = [layer for _, layer in stack.stacked_layers() if isinstance(layer, StackedConv2d)]
    x = torch.rand(3, 5, 1, 28, 28)
    shared = torch.rand(9, 1, 28, 28)
    probe = torch.zeros(1, 3, 8, 8)
    assert not convs[0].uses_sparse_kernel(probe)  # gradients needed: the differentiable path
    with torch.no_grad():
        assert all(conv.uses_sparse_kernel(probe) for conv in convs)
        for _ in range(2):  # the second round runs on weights changed in place (cache refreshed)
            singles = stack.to_modules()
            expected = torch.stack([m(xi) for m, xi in zip(singles, x, strict=True)])
            torch.testing.assert_close(stack(x), expected, rtol=1e-4, atol=1e-5)
            expected_shared = torch.stack([m(shared) for m in singles])
            torch.testing.assert_close(stack.forward_shared(shared, chunk_size=4), expected_shared, rtol=1e-4,
                                       atol=1e-5)
            convs[1].weight.mul_(1.5)
        cnn = [m.eval() for m in _models(_small_cnn, 2)]  # conv → BN → ReLU: no fusion, plain sparse conv
        cnn_stack = stack_models(cnn).eval()
        xs = torch.rand(2, 4, 2, 6, 6)
        torch.testing.assert_close(cnn_stack(xs), torch.stack([m(xi) for m, xi in zip(cnn, xs, strict=True)]),
                                   rtol=1e-4, atol=1e-5)


def test_cpu_inference_after_fused_optimizer_steps_sees_the_new_weights():
    # fused Adam (the trainer's default) writes parameters without bumping their version counters:
    # the sparse kernel's cached weights must still be rebuilt, or inference runs on the old weights
    from sparsemia.train import TrainConfig, fit_stacked

    stack = stack_models(_models(LeNet5, 2)).eval()
    x = torch.rand(40, 1, 28, 28)
    y = torch.randint(0, 10, (40,))
    with torch.no_grad():
        stack.forward_shared(x[:4])  # caches the sparse weights
    fit_stacked(stack, x, y, torch.ones(2, 40, dtype=torch.bool), TrainConfig(epochs=1, batch_size=20, lr=1e-2))
    stack.eval()
    with torch.no_grad():
        expected = torch.stack([m.eval()(x[:4]) for m in stack.to_modules()])
        torch.testing.assert_close(stack.forward_shared(x[:4]), expected, rtol=1e-4, atol=1e-5)

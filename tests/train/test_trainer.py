"""Trainer, stacked trainer and defenses on small problems."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from sparsemia.io import load_state, save_state
from sparsemia.models import MLP, LeNet5
from sparsemia.nn.stacked import stack_models
from sparsemia.train import (
    DPSGD,
    MinMax,
    NoDefense,
    Pruning,
    TrainConfig,
    augment_images,
    build_defense,
    evaluate,
    fit,
    fit_stacked,
)
from tests.train.blobs import blobs


def _blobs(n=120, features=10, classes=3, seed=0):
    return blobs(n, features, classes, seed)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(10, 3, hidden=(16,))


CONFIG = TrainConfig(epochs=15, batch_size=16, optimizer="adam", lr=1e-2, seed=0)


def test_fit_learns_and_is_reproducible():
    x, y = _blobs()
    a, b = _mlp(), _mlp()
    history = fit(a, x, y, CONFIG)
    fit(b, x, y, CONFIG)
    assert history.accuracy[-1] > 0.95 and len(history.loss) == CONFIG.epochs
    assert evaluate(a, x, y)["accuracy"] > 0.95
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    c = _mlp()
    fit(c, x, y, replace(CONFIG, seed=1))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("sgd", "cosine"), ("adam", "constant")])
def test_optimizers_and_schedules(optimizer, schedule):
    x, y = _blobs()
    cfg = replace(CONFIG, optimizer=optimizer, schedule=schedule, lr=0.05 if optimizer == "sgd" else 1e-2,
                  weight_decay=1e-4, step_size=5, deterministic=True)
    assert fit(_mlp(), x, y, cfg).accuracy[-1] > 0.9


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    x, y = _blobs()
    full = _mlp()
    fit(full, x, y, CONFIG)
    ckpt = tmp_path / "ckpt.safetensors"
    part = _mlp()
    # an interrupted run: the checkpoint holds epoch 5 of the same config
    fit(part, x, y, replace(CONFIG, epochs=5), checkpoint_path=tmp_path / "short.safetensors")
    state = load_state(tmp_path / "short.safetensors")
    state["config"] = CONFIG.fingerprint()
    save_state(ckpt, state)
    resumed = _mlp(seed=123)  # different init: everything must come from the checkpoint
    history = fit(resumed, x, y, CONFIG, checkpoint_path=ckpt)
    assert len(history.loss) == CONFIG.epochs
    for pa, pb in zip(full.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(ValueError, match="different training config"):
        fit(_mlp(), x, y, replace(CONFIG, lr=0.5), checkpoint_path=ckpt)


def test_bad_config_and_data():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="linear")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    x, y = _blobs()
    with pytest.raises(ValueError, match="output size 3 does not match the 10 classes"):
        fit(_mlp(), x, y, CONFIG, num_classes=10)
    with pytest.raises(ValueError, match="lengths differ"):
        fit(_mlp(), x, y[:-1], CONFIG)


def test_augment_images_translates_and_flips():
    x = torch.zeros(4, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0
    g = torch.Generator().manual_seed(0)
    out = augment_images(x, padding=1, hflip=True, generator=g)
    assert out.shape == x.shape
    assert torch.all(out.sum((1, 2, 3)) == 1.0)  # the pixel moved by at most 1, never lost
    rows, cols = torch.nonzero(out[:, 0], as_tuple=True)[1:]
    assert torch.all((rows - 2).abs() <= 1) and torch.all((cols - 2).abs() <= 1)
    again = augment_images(x, 1, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    stacked = augment_images(torch.rand(2, 3, 1, 6, 6), 2, False, g)
    assert stacked.shape == (2, 3, 1, 6, 6)


def test_fit_stacked_trains_each_model_on_its_subset():
    x, y = _blobs(n=90)
    models = [_mlp(seed=i) for i in range(3)]
    stack = stack_models(models)
    inclusion = torch.zeros(3, 90, dtype=torch.bool)
    inclusion[0, :30], inclusion[1, 30:60], inclusion[2, 60:] = True, True, True
    # model 2 sees fewer examples: subsets of different sizes wrap around
    inclusion[2, 80:] = False
    history = fit_stacked(stack, x, y, inclusion.numpy(), CONFIG)
    assert history.accuracy[-1] > 0.9
    for i in range(3):
        idx = torch.nonzero(inclusion[i]).flatten()
        assert evaluate(stack.unstack(i), x[idx], y[idx])["accuracy"] > 0.9
    with pytest.raises(ValueError, match="subsets"):
        fit_stacked(stack, x, y, inclusion[:2].numpy(), CONFIG)


def test_fit_stacked_augmented_lenet_runs():
    x = torch.rand(20, 1, 28, 28)
    y = torch.randint(0, 10, (20,))
    stack = stack_models([LeNet5() for _ in range(2)])
    cfg = TrainConfig(epochs=1, batch_size=8, augment=True, crop_padding=2)
    assert len(fit_stacked(stack, x, y, [list(range(10)), list(range(10, 20))], cfg).loss) == 1


def test_minmax_defense_trains_adversary_and_classifier():
    x, y = _blobs(n=160)
    defense = MinMax(lam=1.0, k=2, num_classes=3)
    model = defense.train(_mlp(), x[:80], y[:80], CONFIG, reference=(x[80:], y[80:]), num_classes=3)
    assert defense.inference is not None
    assert evaluate(model, x[:80], y[:80])["accuracy"] > 0.8
    # the regulariser is λ · mean log h(f(x), y): non-positive, differentiable w.r.t. the classifier
    out = model(x[:8])
    term = defense(model, x[:8], y[:8], out)
    assert term.item() <= 0 and term.requires_grad
    with pytest.raises(ValueError, match="reference"):
        MinMax().train(_mlp(), x, y, CONFIG)


def test_pruning_adapter_magnitude_and_admm_with_minmax():
    from sparsemia import prune

    x, y = _blobs(n=160)
    cfg = replace(CONFIG, epochs=3)
    model = Pruning("magnitude", sparsity=0.8, finetune_epochs=2).train(_mlp(), x, y, cfg)
    assert prune.sparsity_report(model).sparsity == pytest.approx(0.8, abs=0.05)
    defense = build_defense("admm+minmax", sparsity=0.7, lam=0.5, finetune_epochs=1, admm_rounds=2)
    assert defense.name == "admm+minmax"
    model = defense.train(_mlp(), x[:80], y[:80], cfg, reference=(x[80:], y[80:]), num_classes=3)
    assert prune.sparsity_report(model).sparsity == pytest.approx(0.7, abs=0.05)


def test_build_defense_and_dpsgd_optional():
    assert isinstance(build_defense("none"), NoDefense)
    with pytest.raises(ValueError, match="unknown defense"):
        build_defense("dropout")
    with pytest.raises(ValueError, match="exactly one"):
        DPSGD(noise_multiplier=None)
    x, y = _blobs()
    try:
        import opacus  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"sparsemia\[dp\]"):
            DPSGD().train(_mlp(), x, y, CONFIG)
    else:
        before = F.cross_entropy(_mlp()(x), y).item()
        defense = DPSGD(noise_multiplier=0.5)
        model = defense.train(_mlp(), x, y, replace(CONFIG, epochs=5))
        # the blobs are separable: clipped, noised gradients still learn them, at a finite privacy cost
        assert F.cross_entropy(model(x), y).item() < 0.5 * before
        assert evaluate(model, x, y)["accuracy"] > 0.9
        assert defense.epsilon is not None and 0 < defense.epsilon < float("inf")

"""Attacks on a model that leaks: LeNet-5 trained to 100% training accuracy on 250 embedded-MNIST members.

MNIST generalises well, so a small member set is what makes the undefended model
measurably leak (with 1,000 members a loss attack measured AUC 0.52).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from sparsemia import mia
from sparsemia.data import load_dataset, make_splits
from sparsemia.models import MLP, LeNet5
from sparsemia.train import TrainConfig, evaluate, fit, predict_logits

CONFIG = TrainConfig(epochs=40, batch_size=32, optimizer="adam", lr=1e-3, seed=0)
MEMBERS = 250


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist-embedded")


@pytest.fixture(scope="module")
def target(mnist):
    splits = make_splits(len(mnist), target_members=MEMBERS, attacker_pool=500, test=1000, seed=0)
    torch.manual_seed(0)
    model = LeNet5()
    history = fit(model, mnist.features[splits.target_members], mnist.labels[splits.target_members], CONFIG, num_classes=10)
    logits = predict_logits(model, mnist.features[splits.candidates]).double().numpy()
    return splits, model, history, logits


def test_loss_attack_on_overfit_lenet(mnist, target, tmp_path):
    splits, model, _, logits = target
    members = splits.target_members
    assert evaluate(model, mnist.features[members], mnist.labels[members])["accuracy"] == 1.0
    labels = mnist.labels[splits.candidates].numpy()
    res = mia.metric_attack("loss", logits, labels)
    metrics = mia.attack_metrics(res.scores, splits.candidate_is_member, labels=labels, n_bootstrap=100)
    assert metrics.auc >= 0.57
    # reported numbers agree with scikit-learn on the saved per-example scores
    path = mia.save_scores(tmp_path / "loss.npz", res.scores, splits.candidate_is_member, splits.candidates)
    score, is_member, index = mia.load_scores(path)
    assert np.array_equal(index, splits.candidates)
    assert metrics.auc == pytest.approx(roc_auc_score(is_member, score), abs=1e-12)
    fpr, tpr, _ = roc_curve(is_member, score)
    assert metrics.tpr_at_1pct_fpr == pytest.approx(tpr[fpr <= 0.01].max())
    assert metrics.ci["auc"][0] <= metrics.auc <= metrics.ci["auc"][1]


@pytest.mark.slow
def test_lira_with_64_shadows_beats_the_loss_attack(mnist, target):
    splits, _, _, target_logits = target
    universe = np.concatenate([splits.candidates, splits.attacker_pool])
    x_u, y_u = mnist.features[universe], mnist.labels[universe]
    # shadows train on as many examples as the target, drawn from pool ∪ candidates
    inclusion = mia.lira_inclusion(64, universe.size, pkeep=MEMBERS / universe.size, seed=1)
    shadows = mia.train_shadow_models(LeNet5, x_u, y_u, inclusion, CONFIG, num_classes=10, seed=2)
    shadow_logits = mia.score_models(shadows, x_u)
    n = splits.candidates.size
    labels = y_u[:n].numpy()
    is_member = splits.candidate_is_member

    records = mia.ShadowRecords.from_models(shadow_logits[:, n:], y_u[n:].numpy(), inclusion[:, n:])
    loss = mia.metric_attack("loss", target_logits, labels, records, threshold="global")
    loss_m = mia.attack_metrics(loss.scores, is_member, predictions=loss.predictions, n_bootstrap=0)
    online = mia.lira(target_logits, labels, shadow_logits[:, :n], inclusion[:, :n], online=True)
    online_m = mia.attack_metrics(online.scores, is_member, n_bootstrap=0)
    assert loss_m.auc >= 0.57
    assert online_m.auc > loss_m.auc
    assert online_m.tpr_at_01pct_fpr > loss_m.tpr_at_01pct_fpr
    for kwargs in ({"online": False}, {"fixed_variance": True}, {"online": False, "fixed_variance": True}):
        res = mia.lira(target_logits, labels, shadow_logits[:, :n], inclusion[:, :n], **kwargs)
        assert mia.attack_metrics(res.scores, is_member, n_bootstrap=0).auc > 0.55
    pool_target = predict_logits(target[1], x_u[n:]).double().numpy()
    for online_mode in (True, False):
        res = mia.rmia(target_logits, labels, shadow_logits[:, :n], inclusion[:, :n], pool_target, y_u[n:].numpy(),
                       shadow_logits[:, n:], inclusion[:, n:], online=online_mode)
        assert mia.attack_metrics(res.scores, is_member, n_bootstrap=0).auc > loss_m.auc - 0.02


def _small_pipeline(seed: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("digits")
    x, y = data.features.reshape(len(data), -1), data.labels
    splits = make_splits(len(data), target_members=150, attacker_pool=300, seed=seed)
    cfg = TrainConfig(epochs=5, batch_size=32, seed=seed)
    torch.manual_seed(seed)
    model = MLP(64, 10, hidden=(32,))
    fit(model, x[splits.target_members], y[splits.target_members], cfg)
    universe = np.concatenate([splits.candidates, splits.attacker_pool])
    inclusion = mia.lira_inclusion(8, universe.size, seed=seed)
    shadows = mia.train_shadow_models(lambda: MLP(64, 10, hidden=(32,)), x[universe], y[universe], inclusion, cfg, seed=seed)
    n = splits.candidates.size
    shadow_logits = mia.score_models(shadows, x[universe])
    target_logits = predict_logits(model, x[splits.candidates]).numpy()
    res = mia.lira(target_logits, y[splits.candidates].numpy(), shadow_logits[:, :n], inclusion[:, :n])
    return res.scores, splits.candidates


def test_same_seed_same_numbers_different_seed_different_splits():
    a, idx_a = _small_pipeline(0)
    b, idx_b = _small_pipeline(0)
    c, idx_c = _small_pipeline(1)
    assert np.array_equal(idx_a, idx_b) and np.array_equal(a, b)
    assert not np.array_equal(idx_a, idx_c)


def test_model_output_size_must_match_classes(mnist, target):
    splits, _, _, logits = target
    labels = mnist.labels[splits.candidates].numpy()
    with pytest.raises(ValueError, match="outputs 10 classes but the data has 100"):
        mia.metric_attack("loss", logits, labels, num_classes=100)
    with pytest.raises(ValueError, match="output size 10 does not match the 100 classes"):
        fit(LeNet5(), mnist.features[:8], mnist.labels[:8], TrainConfig(epochs=1), num_classes=100)

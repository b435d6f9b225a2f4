"""Signals and attacks: formulas, orientation, and argument checking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemia.mia import (
    ShadowRecords,
    lira,
    lira_inclusion,
    metric_attack,
    rmia,
    shadow_model_attack,
    signals,
)
from sparsemia.mia.shadow import disjoint_inclusion


def test_signals_match_their_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 5)) * 4
    labels = rng.integers(0, 5, 50)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    py = p[np.arange(50), labels]
    np.testing.assert_allclose(signals.true_class_probability(logits, labels), py)
    np.testing.assert_allclose(signals.loss(logits, labels), -np.log(py))
    np.testing.assert_allclose(signals.logit_scaled_confidence(logits, labels), np.log(py / (1 - py)), rtol=1e-6)
    np.testing.assert_allclose(signals.entropy(logits), -(p * np.log(p)).sum(1))
    mentr = []
    for row, y in zip(p, labels, strict=True):
        others = np.delete(row, y)
        mentr.append(-(1 - row[y]) * np.log(row[y]) - (others * np.log(1 - others)).sum())
    np.testing.assert_allclose(signals.modified_entropy(logits, labels), mentr, rtol=1e-6)
    # stable where p_y rounds to 1 in float64
    phi = signals.logit_scaled_confidence(np.array([[60.0, 0.0, 0.0]]), np.array([0]))
    assert phi[0] == pytest.approx(60.0 - np.log(2.0))
    # broadcast over a leading model dimension
    assert signals.loss(np.stack([logits, logits]), labels).shape == (2, 50)
    with pytest.raises(ValueError, match="labels"):
        signals.loss(logits, labels + 5)


def _records(n=400, seed=0):
    """Shadow records whose members have higher true-class logits (as an overfit model's would)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    is_member = rng.random(n) < 0.5
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), labels] += 1.0 + 2.0 * is_member
    return ShadowRecords(logits, labels, is_member)


@pytest.mark.parametrize("metric", ["correctness", "confidence", "entropy", "modified_entropy", "loss"])
def test_metric_attacks_orientation_and_thresholds(metric):
    shadow = _records(seed=0)
    target = _records(seed=1)
    for threshold in ("class", "global"):
        res = metric_attack(metric, target.logits, target.labels, shadow, threshold=threshold)
        assert res.predictions is not None and res.predictions.dtype == bool
        from sklearn.metrics import roc_auc_score

        assert roc_auc_score(target.is_member, res.scores) > 0.55
        acc = 0.5 * (res.predictions[target.is_member].mean() + 1 - res.predictions[~target.is_member].mean())
        assert acc > 0.55
    with pytest.raises(ValueError, match="metric"):
        metric_attack("margin", target.logits, target.labels, shadow)
    with pytest.raises(ValueError, match="outputs 3 classes but the data has 10"):
        metric_attack(metric, target.logits, target.labels, shadow, num_classes=10)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("per_class", [False, True])
def test_shadow_model_attack(per_class):
    shadow, target = _records(seed=2), _records(seed=3)
    res = shadow_model_attack(target.logits, target.labels, shadow, per_class=per_class, max_iter=200)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(target.is_member, res.scores) > 0.6
    with pytest.raises(ValueError, match="classes"):
        shadow_model_attack(target.logits[:, :2], target.labels % 2, shadow)


def test_inclusion_designs():
    inc = lira_inclusion(16, 100, pkeep=0.5, seed=0)
    assert inc.shape == (16, 100) and np.all(inc.sum(0) == 8)
    assert not np.array_equal(inc, lira_inclusion(16, 100, seed=1))
    train, evaluated = disjoint_inclusion(4, 100, 10, seed=0)
    assert np.all(train.sum(1) == 10) and np.all(evaluated.sum(1) == 20)
    assert train.sum(0).max() == 1 and evaluated.sum(0).max() == 1
    with pytest.raises(ValueError, match="pool has 100"):
        disjoint_inclusion(4, 100, 20)


def _lira_setup(models=16, n=200, seed=0, queries=None):
    """Per-example Gaussian signals: IN models see φ shifted up by a per-example gap."""
    rng = np.random.default_rng(seed)
    inc = lira_inclusion(models, n, seed=seed)
    labels = rng.integers(0, 2, n)
    base = rng.normal(size=n) * 2
    gap = rng.uniform(0.5, 3.0, size=n)
    is_member = rng.random(n) < 0.5

    def logits_for(phi):
        lab = np.broadcast_to(labels[:, None] if queries else labels, phi.shape)
        out = np.zeros((*phi.shape, 2))
        np.put_along_axis(out, lab[..., None], phi[..., None], -1)
        return out  # logit_y = φ, other = 0 → logit-scaled confidence = φ

    phi_shadow = base[None] + gap[None] * inc + rng.normal(size=(models, n)) * 0.3
    phi_target = base + gap * is_member + rng.normal(size=n) * 0.3
    if queries:
        phi_shadow = phi_shadow[..., None] + rng.normal(size=(models, n, queries)) * 0.1
        phi_target = phi_target[..., None] + rng.normal(size=(n, queries)) * 0.1
    return logits_for(phi_target), labels, logits_for(phi_shadow), inc, is_member


@pytest.mark.parametrize("online,fixed", [(True, False), (False, False), (True, True), (False, True)])
def test_lira_variants_separate_members(online, fixed):
    from sklearn.metrics import roc_auc_score

    target, labels, shadow, inc, is_member = _lira_setup()
    res = lira(target, labels, shadow, inc, online=online, fixed_variance=fixed)
    assert roc_auc_score(is_member, res.scores) > 0.85
    target_q, labels_q, shadow_q, inc_q, member_q = _lira_setup(queries=2)
    res_q = lira(target_q, labels_q, shadow_q, inc_q, online=online, fixed_variance=fixed)
    assert roc_auc_score(member_q, res_q.scores) > 0.85


def test_lira_errors():
    target, labels, shadow, inc, _ = _lira_setup(models=2)
    with pytest.raises(ValueError, match="online LiRA needs at least 2 IN shadow models"):
        lira(target, labels, shadow, inc, online=True)
    with pytest.raises(ValueError, match="OUT shadow models"):
        lira(target, labels, shadow, np.ones_like(inc), online=False)
    with pytest.raises(ValueError, match="shadow_logits"):
        lira(target, labels, shadow[:, :10], inc)
    with pytest.raises(ValueError, match="shadow_in"):
        lira(target, labels, shadow, inc[:, :10])
    with pytest.raises(ValueError, match="outputs 2 classes"):
        lira(target, labels, shadow, inc, num_classes=10)


@pytest.mark.parametrize("online", [True, False])
def test_rmia_scores_members_higher(online):
    from sklearn.metrics import roc_auc_score

    target, labels, shadow, inc, is_member = _lira_setup(models=8, n=300)
    pop_t, pop_labels, pop_shadow, pop_inc, _ = _lira_setup(models=8, n=300, seed=5)
    res = rmia(target, labels, shadow, inc, pop_t, pop_labels, pop_shadow, np.zeros_like(pop_inc), online=online)
    assert res.scores.min() >= 0 and res.scores.max() <= 1
    assert roc_auc_score(is_member, res.scores) > 0.75
    with pytest.raises(ValueError, match="gamma"):
        rmia(target, labels, shadow, inc, pop_t, pop_labels, pop_shadow, gamma=0)
    with pytest.raises(ValueError, match="population_reference_logits"):
        rmia(target, labels, shadow, inc, pop_t, pop_labels, pop_shadow[:2])


def test_shadow_records_checks():
    with pytest.raises(ValueError, match="both shadow members and shadow non-members"):
        ShadowRecords(np.zeros((3, 2)), np.zeros(3), np.ones(3))
    rec = ShadowRecords.from_models(np.zeros((2, 4, 3)), np.arange(4) % 3, np.array([[1, 0, 1, 0], [0, 1, 0, 1]]))
    assert rec.logits.shape == (8, 3)
    torch.manual_seed(0)


def test_pruned_stacked_shadows_have_their_own_masks():
    from sparsemia import prune
    from sparsemia.mia import magnitude_prune_stacked, score_models, train_shadow_models
    from sparsemia.models import MLP
    from sparsemia.nn.stacked import stack_models
    from sparsemia.train import TrainConfig

    torch.manual_seed(0)
    models = [MLP(6, 3, hidden=(8,)) for _ in range(3)]
    stack = stack_models(models)
    masks = magnitude_prune_stacked(stack, 0.5)
    for m, model in enumerate(models):
        prune.magnitude(model, sparsity=0.5)  # the single-model algorithm, for comparison
        layers = [mod for mod in model.modules() if isinstance(mod, torch.nn.Linear)]
        for layer, stacked_mask in zip(layers, masks, strict=True):
            assert torch.equal(prune.get_mask(layer, "weight").to(stacked_mask.dtype), stacked_mask[m])
    assert not torch.equal(masks[0][0], masks[0][1])
    x = torch.randn(40, 6)
    y = torch.randint(0, 3, (40,))
    inclusion = lira_inclusion(4, 40, seed=0)
    shadows = train_shadow_models(lambda: MLP(6, 3, hidden=(8,)), x, y, inclusion, TrainConfig(epochs=2, batch_size=8),
                                  prune_sparsity=0.5, prune_finetune_epochs=1)
    for _, layer in shadows.stack.stacked_layers():
        assert float((layer.effective_weight() == 0).float().mean()) == pytest.approx(0.5, abs=0.05)
    assert score_models(shadows, x).shape == (4, 40, 3)


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("fixed", [False, True])
def test_lira_computes_what_the_reference_code_computes(online, fixed):
    """LiRA's reference (research/mi_lira_2021: score.py's signal, plot.py's Gaussians): per candidate and query
    μ = median, σ = np.std (ddof 0) + 1e-30; fixed variance: the std of all IN (online, both Gaussians) or all
    OUT (offline) signals; online = log N_in − log N_out, offline (two-sided) = −log N_out, averaged over queries."""
    from scipy import stats

    target, labels, shadow, inc, _ = _lira_setup(models=16, n=60, queries=3)
    assert (inc.sum(0) == 8).all()  # equal IN / OUT counts: the reference's truncation keeps every model
    probs = np.exp(shadow - shadow.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)

    def reference_signal(p):  # p: [N, Q, C] softmax probabilities in float64
        idx = np.arange(p.shape[0])
        y_true = p[idx, :, labels]
        p = p.copy()
        p[idx, :, labels] = 0
        return np.log(y_true + 1e-45) - np.log(p.sum(-1) + 1e-45)

    sh = np.stack([reference_signal(probs[m]) for m in range(16)])  # [M, N, Q]
    tp = np.exp(target - target.max(-1, keepdims=True))
    tp /= tp.sum(-1, keepdims=True)
    tg = reference_signal(tp)  # [N, Q]
    dat_in = np.stack([sh[inc[:, j], j] for j in range(60)])  # [N, in_size, Q]
    dat_out = np.stack([sh[~inc[:, j], j] for j in range(60)])
    mean_in, mean_out = np.median(dat_in, 1), np.median(dat_out, 1)
    if fixed:
        std_in = std_out = np.std(dat_in) if online else np.std(dat_out)
    else:
        std_in, std_out = np.std(dat_in, 1), np.std(dat_out, 1)
    if online:
        expected = (stats.norm.logpdf(tg, mean_in, std_in + 1e-30) - stats.norm.logpdf(tg, mean_out, std_out + 1e-30)).mean(1)
    else:
        expected = -stats.norm.logpdf(tg, mean_out, std_out + 1e-30).mean(1)
    got = lira(target, labels, shadow, inc, online=online, fixed_variance=fixed, two_sided=True).scores
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_rmia_offline_tunes_a_on_a_reference_model():
    target, labels, shadow, inc, is_member = _lira_setup(models=8, n=300)
    pop_t, pop_labels, pop_shadow, _, _ = _lira_setup(models=8, n=300, seed=5)
    tuned = rmia(target, labels, shadow, inc, pop_t, pop_labels, pop_shadow, online=False)
    assert tuned.info["offline_a"] in [round(0.1 * i, 1) for i in range(11)]
    fixed = rmia(target, labels, shadow, inc, pop_t, pop_labels, pop_shadow, online=False,
                 offline_a=tuned.info["offline_a"])
    np.testing.assert_array_equal(tuned.scores, fixed.scores)
    with pytest.raises(ValueError, match="^offline_a"):
        rmia(target, labels, shadow, inc, pop_t, pop_labels, pop_shadow, online=False, offline_a=1.5)


def test_offline_lira_keeps_the_order_of_targets_far_above_their_out_distribution():
    """With a tight OUT distribution (few references), targets 40σ+ above it used to tie at log Pr[Z ≤ φ] = 0."""
    n, models = 5, 4
    labels = np.zeros(n, dtype=np.int64)
    out_phi = np.array([[0.0], [1e-3], [-1e-3], [2e-3]]) + np.zeros((models, n))
    shadow = np.stack([out_phi, np.zeros_like(out_phi)], -1)
    target_phi = np.array([0.5, 1.0, 1.5, 2.0, 2.5])
    target = np.stack([target_phi, np.zeros(n)], -1)
    scores = lira(target, labels, shadow, np.zeros((models, n), dtype=bool), online=False).scores
    assert np.all(np.diff(scores) > 0), scores

"""Metrics agree with scikit-learn and with their definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from sparsemia.mia import attack_metrics, load_scores, save_scores, tpr_at_fpr


def _scores(n=2000, shift=0.5, seed=0):
    rng = np.random.default_rng(seed)
    is_member = rng.random(n) < 0.5
    return rng.normal(size=n) + shift * is_member, is_member


def test_agree_with_sklearn_on_saved_scores(tmp_path):
    scores, is_member = _scores()
    path = save_scores(tmp_path / "s.npz", scores, is_member, np.arange(scores.size) + 7)
    s, m, idx = load_scores(path)
    assert np.array_equal(idx, np.arange(scores.size) + 7)
    metrics = attack_metrics(s, m, n_bootstrap=50)
    assert metrics.auc == pytest.approx(roc_auc_score(m, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(m, s)
    assert metrics.tpr_at_1pct_fpr == pytest.approx(tpr[fpr <= 0.01].max())
    assert metrics.tpr_at_01pct_fpr == pytest.approx(tpr[fpr <= 0.001].max())
    assert metrics.best_advantage == pytest.approx((tpr - fpr).max())
    lo, hi = metrics.ci["auc"]
    assert lo < metrics.auc < hi and hi - lo < 0.1
    assert tpr_at_fpr(s, m, 0.01) == pytest.approx(metrics.tpr_at_1pct_fpr)
    d = metrics.to_dict(roc=True)
    assert set(d) >= {"auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "advantage", "attack_acc", "ci95", "roc"}


def test_threshold_decisions_balanced_accuracy_and_per_class():
    is_member = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    predictions = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)  # TPR 0.75, FPR 0.25
    scores = np.arange(8, dtype=float)
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    m = attack_metrics(scores, is_member, predictions=predictions, labels=labels, n_bootstrap=0)
    assert m.advantage == pytest.approx(0.5) and m.attack_acc == pytest.approx(0.75)
    assert set(m.per_class) == {0, 1} and m.per_class[0]["count"] == 4


def test_perfect_and_inverted_scores():
    is_member = np.array([True] * 5 + [False] * 5)
    m = attack_metrics(np.arange(10.0)[::-1], is_member, n_bootstrap=0)
    assert m.auc == 1.0 and m.tpr_at_01pct_fpr == 1.0 and m.best_attack_acc == 1.0
    assert attack_metrics(np.arange(10.0), is_member, n_bootstrap=0).auc == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="lengths differ"):
        attack_metrics([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="both members and non-members"):
        attack_metrics([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="NaN"):
        attack_metrics([np.nan, 0.2], [True, False])
    with pytest.raises(ValueError, match="max_fpr"):
        tpr_at_fpr([0.1, 0.2], [True, False], 2.0)
    with pytest.raises(ValueError, match="predictions"):
        attack_metrics([0.1, 0.2], [True, False], predictions=[True])


@pytest.mark.parametrize("ties", [False, True])
def test_bootstrap_and_per_class_curve_equals_sklearn(ties):
    # the bootstrap replicates and per-class numbers use a numpy ROC without sklearn's
    # per-call validation: it must be the same curve and area, ties included
    from sparsemia.mia.metrics import _core

    for seed in range(5):
        s, m = _scores(n=301, seed=seed)
        if ties:
            s = np.round(s, 1)
        fast, exact = _core(s, m, None, exact=False), _core(s, m, None, exact=True)
        for key, value in exact.items():
            assert fast[key] == pytest.approx(value, abs=1e-12), key
    s, m = _scores(n=400, seed=1)
    labels = np.arange(400) % 3
    metrics = attack_metrics(s, m, labels=labels, n_bootstrap=0)
    for c in range(3):
        assert metrics.per_class[c]["auc"] == pytest.approx(roc_auc_score(m[labels == c], s[labels == c]), abs=1e-12)

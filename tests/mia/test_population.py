"""Population evaluation: the null test, the leave-one-out bias, leaky populations, intervals, comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from sparsemia.mia.metrics import PooledROC, bootstrap_draws, population_metrics
from sparsemia.mia.population import POPULATION_ATTACKS, compare, evaluate_population

from .synthetic import synthetic_population


def test_null_every_attack_is_a_coin_flip():
    """Outputs independent of membership: pooled AUC 0.5 ± 0.01 for every attack (mean of 3 populations)."""
    aucs = {a: [] for a in POPULATION_ATTACKS}
    accs = {a: [] for a in POPULATION_ATTACKS}
    for seed in range(3):
        logits, labels, inclusion = synthetic_population(16, 3000, num_queries=1, leak=0.0, seed=seed)
        result = evaluate_population(logits, labels, inclusion, list(POPULATION_ATTACKS), seed=seed, n_bootstrap=0,
                                     shadow_max_records=600)
        assert result.references_per_side == 6  # 16 models on exact halves: 8 IN, minus target and c(t) at worst
        for a in POPULATION_ATTACKS:
            aucs[a].append(result.metrics[a]["pooled"]["auc"])
            accs[a].append(result.metrics[a]["pooled"]["attack_acc"])
    for a in POPULATION_ATTACKS:
        assert abs(np.mean(aucs[a]) - 0.5) <= 0.01, f"{a}: null AUC {np.mean(aucs[a]):.4f}"
        assert abs(np.mean(accs[a]) - 0.5) <= 0.01, f"{a}: null attack accuracy {np.mean(accs[a]):.4f}"


def test_null_with_augmented_queries():
    """The per-query paths (LiRA's averaged Gaussians, RMIA's majority vote) are unbiased too."""
    attacks = ["lira_online", "lira_offline", "rmia", "rmia_offline"]
    aucs = {a: [] for a in attacks}
    for seed in range(2):
        logits, labels, inclusion = synthetic_population(16, 2000, num_queries=3, leak=0.0, seed=10 + seed)
        result = evaluate_population(logits, labels, inclusion, attacks, seed=seed, n_bootstrap=0, rmia_offline_a=0.5)
        for a in attacks:
            aucs[a].append(result.metrics[a]["pooled"]["auc"])
    for a in attacks:
        assert abs(np.mean(aucs[a]) - 0.5) <= 0.01, f"{a}: null AUC {np.mean(aucs[a]):.4f}"


def test_plain_leave_one_out_biases_lira_and_equalizing_removes_it():
    """With all K − 1 others as references, a member of the target has one IN reference fewer: LiRA online
    scores members lower on a null problem. Equal IN/OUT counts per pair remove it."""
    logits, labels, inclusion = synthetic_population(16, 4000, leak=0.0, seed=7)
    biased = evaluate_population(logits, labels, inclusion, ["lira_online"], seed=0, n_bootstrap=0, equalize=False)
    fair = evaluate_population(logits, labels, inclusion, ["lira_online"], seed=0, n_bootstrap=0)
    assert biased.metrics["lira_online"]["pooled"]["auc"] < 0.49
    assert abs(fair.metrics["lira_online"]["pooled"]["auc"] - 0.5) <= 0.01
    assert biased.references_per_side is None and not biased.equalized


def test_leaky_population_every_attack_detects_it():
    logits, labels, inclusion = synthetic_population(16, 400, num_queries=2, leak=1.5, seed=1)
    result = evaluate_population(logits, labels, inclusion, list(POPULATION_ATTACKS), seed=0, n_bootstrap=100)
    for a in POPULATION_ATTACKS:
        m = result.metrics[a]
        assert m["pooled"]["auc"] > 0.5 and m["ci95"]["auc"][0] > 0.5, (a, m["pooled"]["auc"], m["ci95"]["auc"])
        assert m["ci95"]["attack_acc"][0] > 0.5, (a, m["ci95"]["attack_acc"])
        assert m["num_targets"] == 16 and m["num_candidates"] == 400
    rows = result.rows()
    assert [r["attack"] for r in rows] == list(POPULATION_ATTACKS)
    assert all(r["num_targets"] == 16 for r in rows)
    assert len(result.info["rmia_offline"]["offline_a"]) == 16


def test_same_seed_same_result_and_aliases():
    logits, labels, inclusion = synthetic_population(8, 200, leak=1.0, seed=2)
    a = evaluate_population(logits, labels, inclusion, ["rmia", "lira_online_fixed_var", "shadow"], seed=3, n_bootstrap=20)
    b = evaluate_population(logits, labels, inclusion, ["rmia", "lira_online_fixed_var", "shadow"],
                            seed=3, n_bootstrap=20)
    assert a.attacks == b.attacks == ["rmia", "lira_online_fixed_var", "shadow"]
    for name in a.attacks:
        np.testing.assert_array_equal(a.scores[name], b.scores[name])
        assert a.metrics[name] == b.metrics[name]


def test_intervals_shrink_with_more_targets():
    widths = []
    for k in (8, 32):
        logits, labels, inclusion = synthetic_population(k, 300, leak=1.0, seed=4)
        result = evaluate_population(logits, labels, inclusion, ["lira_online", "loss"], seed=0, n_bootstrap=200)
        widths.append({a: np.diff(result.metrics[a]["ci95"]["auc"])[0] for a in result.attacks})
    for a in widths[0]:
        assert widths[1][a] < 0.75 * widths[0][a], (a, widths)


def test_compare_with_itself_is_zero_and_independent_nulls_contain_zero():
    logits, labels, inclusion = synthetic_population(12, 400, leak=1.0, seed=5)
    result = evaluate_population(logits, labels, inclusion, ["loss", "lira_online"], seed=0, n_bootstrap=100)
    acc = np.linspace(0.9, 0.95, 12)
    rows = compare(result, result, acc, acc, defense="none", versus="none")
    assert {(r["attack"], r["metric"]) for r in rows} == {
        (a, m) for a in ("loss", "lira_online") for m in ("attack_acc", "auc", "tpr_at_0.1pct_fpr")
    } | {(None, "test_acc")}
    for r in rows:
        assert r["delta"] == 0.0 and r["ci_low"] == 0.0 and r["ci_high"] == 0.0, r
        assert set(r) == {"defense", "versus", "attack", "metric", "delta", "ci_low", "ci_high"}

    null_a = synthetic_population(12, 600, leak=0.0, seed=6)
    null_b = synthetic_population(12, 600, leak=0.0, seed=6, logits_seed=99)
    assert np.array_equal(null_a[2], null_b[2])  # same universe and inclusion, independent outputs
    ra = evaluate_population(*null_a, ["loss", "lira_online"], seed=0, n_bootstrap=200)
    rb = evaluate_population(*null_b, ["loss", "lira_online"], seed=0, n_bootstrap=200)
    rng = np.random.default_rng(0)
    rows = compare(ra, rb, 0.9 + 0.01 * rng.standard_normal(12), 0.9 + 0.01 * rng.standard_normal(12))
    for r in rows:
        assert r["ci_low"] <= 0.0 <= r["ci_high"], r
        assert r["ci_low"] <= r["delta"] <= r["ci_high"], r


def test_compare_units_and_pairing():
    """Attack accuracy in points, AUC as a fraction; a real difference is resolved."""
    inc_logits, labels, inclusion = synthetic_population(12, 400, leak=1.5, seed=8)
    weak_logits, _, _ = synthetic_population(12, 400, leak=0.5, seed=8)
    strong = evaluate_population(inc_logits, labels, inclusion, ["loss"], seed=0, n_bootstrap=100)
    weak = evaluate_population(weak_logits, labels, inclusion, ["loss"], seed=0, n_bootstrap=100)
    rows = {r["metric"]: r for r in compare(strong, weak, np.full(12, 0.9), np.full(12, 0.8))}
    auc_delta = strong.metrics["loss"]["pooled"]["auc"] - weak.metrics["loss"]["pooled"]["auc"]
    assert rows["auc"]["delta"] == pytest.approx(auc_delta)
    acc_delta = strong.metrics["loss"]["pooled"]["attack_acc"] - weak.metrics["loss"]["pooled"]["attack_acc"]
    assert rows["attack_acc"]["delta"] == pytest.approx(100 * acc_delta)
    assert rows["auc"]["ci_low"] > 0 and rows["attack_acc"]["ci_low"] > 0
    assert rows["test_acc"]["delta"] == pytest.approx(10.0)


def test_pooled_roc_matches_scikit_learn():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    member = rng.random((5, 300)) < 0.5
    scores = np.round(rng.normal(size=(5, 300)) + member, 1)  # ties included
    got = PooledROC(scores, member).metrics()
    assert got["auc"] == pytest.approx(roc_auc_score(member.ravel(), scores.ravel()))
    fpr, tpr, _ = roc_curve(member.ravel(), scores.ravel(), drop_intermediate=False)
    assert got["tpr_at_1pct_fpr"] == pytest.approx(tpr[fpr <= 0.01].max())
    assert got["tpr_at_0.1pct_fpr"] == pytest.approx(tpr[fpr <= 0.001].max())
    # a bootstrap replicate is the metric of the explicitly resampled pairs
    tw, cw = bootstrap_draws(5, 300, 1, seed=1)
    t_idx = np.repeat(np.arange(5), tw[0].astype(int))
    c_idx = np.repeat(np.arange(300), cw[0].astype(int))
    explicit = roc_auc_score(member[np.ix_(t_idx, c_idx)].ravel(), scores[np.ix_(t_idx, c_idx)].ravel())
    assert PooledROC(scores, member).metrics(tw[0], cw[0])["auc"] == pytest.approx(explicit)


def test_population_metrics_per_target():
    rng = np.random.default_rng(1)
    member = rng.random((4, 200)) < 0.5
    scores = rng.normal(size=(4, 200)) + member * np.arange(4)[:, None]
    out = population_metrics(scores, member, member & (scores > 1), n_bootstrap=50)
    per = [roc for roc in (PooledROC(scores[t : t + 1], member[t : t + 1]).metrics() for t in range(4))]
    assert out["per_target"]["mean"]["auc"] == pytest.approx(np.mean([p["auc"] for p in per]))
    assert out["per_target"]["sd"]["auc"] == pytest.approx(np.std([p["auc"] for p in per], ddof=1))
    assert out["ci95"]["auc"][0] <= out["pooled"]["auc"] <= out["ci95"]["auc"][1]
    assert out["num_targets"] == 4


def test_validation_errors_name_the_argument():
    logits, labels, inclusion = synthetic_population(8, 50, seed=0)
    cases = [
        (dict(logits=logits[0]), "logits"),
        (dict(labels=labels[:10]), "labels"),
        (dict(labels=labels + 10), "labels"),
        (dict(inclusion=inclusion[:, :10]), "inclusion"),
        (dict(inclusion=np.zeros_like(inclusion)), "inclusion"),
        (dict(attacks=["margin"]), "attacks"),
        (dict(attacks=[]), "attacks"),
        (dict(references_per_side=50), "references_per_side"),
        (dict(references_per_side=1), "references_per_side"),
        (dict(equalize=False, references_per_side=2), "references_per_side"),
        (dict(logits=logits.astype(np.int64)), "logits"),
        (dict(rmia_gamma=0.0), "rmia_gamma"),
        (dict(seed=-1), "seed"),
    ]
    for change, name in cases:
        kwargs = dict(logits=logits, labels=labels, inclusion=inclusion, attacks=["loss"])
        kwargs.update(change)
        with pytest.raises(ValueError, match=f"^{name}") as err:
            evaluate_population(**kwargs)
        assert "\n" not in str(err.value)
    few, few_labels, few_inc = synthetic_population(6, 50, seed=0)  # 3 IN per candidate: too few references
    with pytest.raises(ValueError, match="^inclusion: .*at least 2 IN and 2 OUT"):
        evaluate_population(few, few_labels, few_inc, ["lira_online"])
    with pytest.raises(ValueError, match="^logits: a population needs at least 4 models"):
        evaluate_population(logits[:3], labels, inclusion[:3], ["loss"])
    result = evaluate_population(logits, labels, inclusion, ["loss"], n_bootstrap=10)
    with pytest.raises(ValueError, match="^test_acc_a"):
        compare(result, result, np.ones(3), np.ones(8))
    other = evaluate_population(*synthetic_population(8, 50, seed=1), ["loss"], n_bootstrap=10)
    with pytest.raises(ValueError, match="^result_b"):
        compare(result, other, np.ones(8), np.ones(8))


def test_outside_population_for_rmia_and_float32_logits():
    """RMIA's z from data no model trained on; float32 and [K, N, C] logits give the float64 / Q = 1 result."""
    logits, labels, inclusion = synthetic_population(8, 300, leak=1.5, seed=9)
    outside, outside_labels, _ = synthetic_population(8, 200, leak=0.0, seed=19)
    result = evaluate_population(logits, labels, inclusion, ["rmia", "rmia_offline"], n_bootstrap=0,
                                 population_logits=outside, population_labels=outside_labels)
    for a in result.attacks:
        assert result.metrics[a]["pooled"]["auc"] > 0.6, a
    as_64 = evaluate_population(logits, labels, inclusion, ["lira_online"], n_bootstrap=0)
    as_32 = evaluate_population(logits[:, :, 0, :].astype(np.float32), labels, inclusion, ["lira_online"], n_bootstrap=0)
    np.testing.assert_allclose(as_32.scores["lira_online"], as_64.scores["lira_online"], rtol=2e-3, atol=1e-4)
    with pytest.raises(ValueError, match="^population_logits, population_labels"):
        evaluate_population(logits, labels, inclusion, ["rmia"], population_logits=outside)
    with pytest.raises(ValueError, match="^population_logits"):
        evaluate_population(logits, labels, inclusion, ["rmia"], population_logits=outside[:3],
                            population_labels=outside_labels)

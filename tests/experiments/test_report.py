"""report.md and its plots from a results.json: intervals, styles, resolution notes, speed flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sparsemia.experiments import write_report
from sparsemia.experiments.config import ATTACKS
from sparsemia.experiments.report import _attack_styles, attack_family, speed_reliability

DEFENSES = ("none", "minmax", "magnitude", "admm", "admm+minmax")
CONFIG = {
    "preset": "synthetic", "dataset": "mnist-embedded", "model": "lenet5", "target_members": 250,
    "target_non_members": 250, "sparsity": 0.9, "num_shadows": 4, "seed": 0, "speed_batch": 64, "test_size": 1000,
}


def _roc(rng: np.random.Generator, n: int, strength: float) -> dict:
    member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    score = rng.normal(member * strength, 1.0)
    order = np.argsort(-score)
    tpr = np.r_[0.0, np.cumsum(member[order]) / n]
    fpr = np.r_[0.0, np.cumsum(~member[order]) / n]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _target(quiet: bool) -> dict:
    rounds = [1.0, 1.01, 0.99, 1.0, 1.02, 1.0, 0.98] if quiet else [1.0, 2.5, 0.7, 1.9, 1.0, 3.0, 0.8]
    return {
        "dense_ms": 1.0, "sparse_ms": 0.25, "speedup_vs_dense": 4.0, "sparse_layers": 2,
        "dense_round_ms": rounds, "sparse_round_ms": [r / 4 for r in rounds],
        "load_avg_1min": 0.5 if quiet else 9.0, "cpu_count": 2, "sparsity": 0.9,
        "layers": [{"name": "fc", "shape": [10, 84], "sparsity": 0.9}],
    }


def _row(defense: str, attack: str, auc: float, population: bool) -> dict:
    metrics = {
        "attack_acc": 0.5, "auc": auc, "tpr_at_1pct_fpr": 0.02, "tpr_at_0.1pct_fpr": 0.004, "advantage": 0.0,
        # A tiny negative value that rounds to zero: printed as 0.0, never -0.0.
        "target_train_acc": 0.99, "target_test_acc": 0.9 - 1e-9 if defense == "none" else 0.85,
    }
    ci = {"attack_acc": [0.45, 0.55], "auc": [auc - 0.04, auc + 0.05]}
    row = {"defense": defense, "attack": attack, "sparsity": -1e-12 if defense == "none" else 0.9,
           "model_bytes": 1000, "speedup_vs_dense": 4.0}
    if population:
        row |= {"num_targets": 8, "pooled": metrics, "ci95": ci}
        row["target_test_acc"] = metrics["target_test_acc"]
        row["target_train_acc"] = metrics["target_train_acc"]
    else:
        row |= metrics | {"ci95": ci}
    return row


def _write_run(out: Path, population: bool = False, quiet: bool = True) -> Path:
    rng = np.random.default_rng(0)
    (out / "attacks").mkdir(parents=True)
    rows = []
    for d, defense in enumerate(DEFENSES):
        for a, attack in enumerate(ATTACKS):
            auc = 0.55 + 0.01 * a - 0.01 * d
            rows.append(_row(defense, attack, auc, population))
            stored = {"roc": _roc(rng, 250, 0.2 + 0.05 * a - 0.03 * d)}
            stored |= {"num_targets": 8, "num_candidates": 500} if population else {"num_non_members": 250}
            (out / "attacks" / f"{defense}__{attack}.json").write_text(json.dumps(stored))
    targets = {d: _target(quiet) for d in DEFENSES}
    targets["none"]["sparsity"] = 0.0
    if population:
        for defense, target in targets.items():
            mean = 0.9 if defense == "none" else 0.85
            target["test_acc_per_target"] = [mean + d for d in (-0.01, 0.01, -0.02, 0.02, 0.0, 0.0, 0.01, -0.01)]
    results = {"config": CONFIG, "rows": rows, "targets": targets, "seeds": [0], "torch_threads": 2,
               "versions": {"torch": "x"}}
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_report_draws_intervals_family_figures_and_resolution_note(tmp_path):
    out = _write_run(tmp_path / "run")
    report = write_report(out).read_text()
    assert "-0.0" not in report and "-0.00" not in report
    for family in ("metric", "shadow", "lira", "rmia"):
        assert f"roc_family_{family}.png" in report
        assert (out / f"roc_family_{family}.png").stat().st_size > 5000
    assert (out / "roc_admm_minmax.png").is_file()
    # 250 non-members resolve FPRs down to 0.4%: the 0.1% column is marked and explained.
    assert "1/250 non-members = 0.400%" in report
    assert re.search(r"\| 0\.40% † \|", report)
    assert "decided by the single highest-scoring non-member" in report
    assert "load 0.50 on 2 CPUs" in report and "| yes |" in report


@pytest.mark.parametrize("population", [False, True])
def test_privacy_utility_plot_has_error_bars_on_both_axes(tmp_path, monkeypatch, population):
    import matplotlib.axes

    out = _write_run(tmp_path / "run", population=population)
    calls = []
    original = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        calls.append(kwargs)
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    write_report(out)
    assert len(calls) == len(DEFENSES)
    for kwargs in calls:
        (y_low,), (y_high,) = kwargs["yerr"]
        (x_low,), (x_high,) = kwargs["xerr"]
        assert y_low > 0 and y_high > 0 and x_low > 0 and x_high > 0


def test_report_reads_population_rows(tmp_path):
    out = _write_run(tmp_path / "run", population=True)
    report = write_report(out).read_text()
    # 8 targets × 500 candidates, half of them members of each model: 2,000 non-member pairs.
    assert "1/2,000 non-member pairs = 0.050%" in report
    assert "†" not in report.split("## Change")[0].split("|---|")[-1]
    assert "-0.0" not in report


def test_busy_machine_flags_the_speed_figure(tmp_path):
    out = _write_run(tmp_path / "run", quiet=False)
    report = write_report(out).read_text()
    assert "load 9.00 > 2 CPUs" in report
    assert "measured on a busy or noisy machine" in report


def test_speed_reliability_without_records_says_so():
    assert speed_reliability({"dense_ms": 1.0, "sparse_ms": 1.0}) == ("load and spread not recorded", [])
    conditions, problems = speed_reliability(_target(quiet=True))
    assert problems == [] and "IQR/median dense" in conditions


def test_twelve_attacks_get_twelve_distinct_styles():
    styles = _attack_styles(list(ATTACKS))
    pairs = {(tuple(s["color"]), str(s["linestyle"])) for s in styles.values()}
    assert len(pairs) == len(ATTACKS) == 12
    assert {attack_family(a) for a in ATTACKS} == {"metric", "shadow", "LiRA", "RMIA"}


@pytest.mark.parametrize(("value", "text"), [(-1e-9, "0.0"), (-0.04, "0.0"), (-0.06, "-0.1"), (0.0, "0.0")])
def test_no_negative_zero(value, text):
    from sparsemia.experiments.report import _num

    assert _num(value, 1) == text
    assert _num(-1e-9, 1, signed=True) == "0.0"

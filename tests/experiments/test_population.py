"""Populations per defense: the pipeline's population mode, its power and its null, and resume after kill -9."""

from __future__ import annotations

import numpy as np
import pytest

from sparsemia.experiments import ExperimentConfig, run_experiment
from sparsemia.experiments.population import population_task
from sparsemia.mia.population import compare, evaluate_population
from tests.experiments.killed import run_killed

# digits (8x8) and an MLP: a population of 8 models per defense trains in seconds
TINY_POP = ExperimentConfig(
    preset="tiny-population",
    dataset="digits",
    model="mlp",
    target_members=60,
    target_non_members=60,
    defense_reference=60,
    test_size=200,
    attacker_reference=0,
    epochs=8,
    batch_size=32,
    lr=3e-3,
    defenses=("none", "minmax", "magnitude"),
    attacks=("loss", "lira_online"),
    finetune_epochs=2,
    n_bootstrap=50,
    speed_batch=16,
    targets=8,
)

ROW_KEYS = {"defense", "attack", "num_targets", "target_test_acc", "attack_acc", "auc", "tpr_at_1pct_fpr",
            "tpr_at_0.1pct_fpr", "ci95", "per_target", "sparsity"}


def _comparable(results: dict) -> tuple[list, list]:
    rows = [{k: r[k] for k in sorted(ROW_KEYS)} for r in results["rows"]]
    return rows, results["comparisons"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("population")
    return out, run_experiment(TINY_POP, out)


def test_population_rows_and_comparisons(finished):
    out, results = finished
    assert len(results["rows"]) == len(TINY_POP.defenses) * len(TINY_POP.attacks)
    for row in results["rows"]:
        assert set(row) >= ROW_KEYS and row["num_targets"] == 8
        lo, hi = row["ci95"]["attack_acc"]
        assert lo <= row["attack_acc"] <= hi
    pruned = [r for r in results["rows"] if r["defense"] == "magnitude"]
    assert all(r["sparsity"] == pytest.approx(0.9, abs=0.02) for r in pruned)
    keys = {(c["defense"], c["versus"], c["attack"], c["metric"]) for c in results["comparisons"]}
    assert ("magnitude", "none", "loss", "attack_acc") in keys and ("magnitude", "minmax", None, "test_acc") in keys
    assert ("minmax", "none", "lira_online", "auc") in keys and not any(c[1] == c[0] for c in keys)
    for c in results["comparisons"]:
        assert c["ci_low"] <= c["delta"] <= c["ci_high"]
    report = (out / "report.md").read_text()
    title, _, rest = report.partition("\n\n")
    assert title.startswith("# sparsemia report") and rest.startswith("## Verdict")
    assert "13.6 points lower than none" in report and "test accuracy (cost)" in report


def test_a_killed_population_run_resumes_to_the_same_results(finished, tmp_path):
    _, uninterrupted = finished
    out = tmp_path / "killed"
    run_killed("tests.experiments.test_population", "TINY_POP", out, stage="populations", done=1, timeout=900)
    assert len(list(out.glob("populations/*.json"))) == 1  # killed after the first of three populations
    assert not (out / "results.json").exists()
    resumed = run_experiment(TINY_POP, out)
    assert _comparable(resumed) == _comparable(uninterrupted)


def _population(cfg: ExperimentConfig, defense: str, inclusion: np.ndarray, universe, test, reference):
    task = {"config": cfg.to_dict(), "defense": defense, "universe": universe, "test": test, "reference": reference,
            "inclusion": inclusion}
    return population_task(task)


def _draws(cfg: ExperimentConfig):
    from sparsemia.data import load_dataset, make_splits
    from sparsemia.mia.shadow import lira_inclusion

    data = load_dataset(cfg.dataset)
    splits = make_splits(len(data), target_members=cfg.target_members, test=cfg.test_size,
                         defense_reference=cfg.defense_reference, seed=1)
    inclusion = lira_inclusion(cfg.targets, splits.candidates.size, pkeep=0.5, seed=2)
    labels = data.labels[splits.candidates].numpy()
    return data, splits, inclusion, labels


def test_same_defense_retrained_with_another_seed_shows_no_difference():
    cfg = TINY_POP.with_overrides(targets=12)
    data, splits, inclusion, labels = _draws(cfg)
    a = _population(cfg, "none", inclusion, splits.candidates, splits.test, splits.defense_reference)
    b = _population(cfg.with_overrides(seed=7), "none", inclusion, splits.candidates, splits.test,
                    splits.defense_reference)
    assert not np.array_equal(a["logits"], b["logits"])  # really another training run
    ra = evaluate_population(a["logits"], labels, inclusion, ["loss", "lira_online"], seed=3, n_bootstrap=100)
    rb = evaluate_population(b["logits"], labels, inclusion, ["loss", "lira_online"], seed=3, n_bootstrap=100)
    for row in compare(ra, rb, a["test_acc"], b["test_acc"]):
        assert row["ci_low"] <= 0 <= row["ci_high"], row


def test_a_leaky_setting_shows_a_real_defense():
    # 30 members per model, many epochs: the undefended MLPs memorise; Min-Max with a strong adversary
    # and heavy pruning without fine-tuning both cut the loss attack's accuracy, beyond the interval
    cfg = TINY_POP.with_overrides(target_members=60, target_non_members=60, epochs=60, targets=12,
                                  minmax_lambda=3.0, sparsity=0.97, finetune_epochs=0)
    data, splits, inclusion, labels = _draws(cfg)
    pops = {d: _population(cfg, d, inclusion, splits.candidates, splits.test, splits.defense_reference)
            for d in ("none", "magnitude")}
    results = {d: evaluate_population(p["logits"], labels, inclusion, ["loss"], seed=3, n_bootstrap=100)
               for d, p in pops.items()}
    assert results["none"].metrics["loss"]["pooled"]["attack_acc"] > 0.6  # leaky indeed
    (row,) = [r for r in compare(results["magnitude"], results["none"], pops["magnitude"]["test_acc"],
                                  pops["none"]["test_acc"]) if r["metric"] == "attack_acc"]
    assert row["ci_high"] < 0, row

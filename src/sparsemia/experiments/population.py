"""Population evaluation of the defenses: K models per defense, each a target once, compared in pairs.

One universe of candidates (the splits' target members and non-members) and one
LiRA inclusion matrix (every candidate in the training set of exactly half of the
K models) serve every defense. For each defense, K models of the target's
architecture train on their halves *with that defense*, all K stacked
(:func:`sparsemia.train.stacked_defenses.train_stacked_defense`), from the same
initialisations and data orders as every other defense's K models. Every model is
queried on the augmented queries of the universe (:func:`sparsemia.mia.queries.augment`)
and of the test set (RMIA's population samples, and each model's test accuracy).

:func:`sparsemia.mia.population.evaluate_population` then attacks every model with
the others as its references (the leave-one-out IN/OUT-count bias removed), and
:func:`sparsemia.mia.population.compare` gives the paired differences between
defenses, target by target, with intervals that resample targets and candidates.

Each finished population is one file (``populations/<defense>.npz`` with its
``.json``), written atomically: a killed run resumes at the first unfinished population
and ends with the same numbers.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch

from sparsemia.experiments.config import ExperimentConfig
from sparsemia.experiments.rundir import RunDir

__all__ = ["population_task", "run_populations", "PAPER_CLAIM"]

logger = logging.getLogger(__name__)

#: The seed paper's claim: attack accuracy up to this many points lower than ``none`` / ``minmax``.
PAPER_CLAIM = {"none": 13.6, "minmax": 10.0}


def _population_name(defense: str) -> str:
    return f"populations/{defense}"


def _score(stack, queries: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Logits ``[K, N, Q, C]`` (float32) of every stacked model on queries ``[Q, N, ...]``."""
    from sparsemia.train import predict_logits

    return torch.stack([predict_logits(stack, q, batch_size) for q in queries], dim=2).numpy().astype(np.float32)


def population_task(task: dict[str, Any]) -> dict[str, Any]:
    """Train one defense's population and query it; a plain function so that Ray can ship it.

    ``task``: the config (a dict), the defense, the universe / test / reference indices and the
    inclusion matrix ``[K, N]``. Returns ``logits`` ``[K, N, Q, C]`` on the universe's queries,
    ``test_logits`` ``[K, T, Q, C]`` on the test set's, per-model ``train_acc`` (on its own
    members), ``test_acc`` and ``sparsity`` ``[K]``, and ``info`` (timings, the speed of model 0).
    """
    from sparsemia.experiments.pipeline import build_model, load_dataset, measure_speed
    from sparsemia.mia.queries import augment
    from sparsemia.mia.shadow import build_stack
    from sparsemia.train.stacked_defenses import train_stacked_defense

    cfg = ExperimentConfig.from_dict(task["config"])
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    data = load_dataset(cfg)
    x, y = data.features, data.labels
    defense = task["defense"]
    universe = torch.as_tensor(task["universe"])
    test = torch.as_tensor(task["test"])
    reference = torch.as_tensor(task["reference"])
    inclusion = np.asarray(task["inclusion"], dtype=bool)
    k = inclusion.shape[0]
    # every defense's model m starts from the same weights and sees the same batches: paired draws
    stack = build_stack(lambda: build_model(cfg, data.num_classes, data.sample_shape), k,
                        seed=cfg.seed_for("init", "population"))
    started = time.perf_counter()
    info = train_stacked_defense(
        defense, stack, x[universe], y[universe], inclusion, cfg.train_config("population"),
        options=cfg.defense_options(), reference=(x[reference], y[reference]), num_classes=data.num_classes,
        seed=cfg.seed_for("adversary", "population", defense),
    )
    train_seconds = time.perf_counter() - started
    stack.eval()
    logits = _score(stack, augment(x[universe], cfg.dataset))
    test_logits = _score(stack, augment(x[test], cfg.dataset))
    yu, yt = y[universe].numpy(), y[test].numpy()
    correct = logits[:, :, 0].argmax(-1) == yu[None]
    train_acc = (correct & inclusion).sum(1) / inclusion.sum(1)
    test_acc = (test_logits[:, :, 0].argmax(-1) == yt[None]).mean(1)
    layers = [layer for _, layer in stack.stacked_layers()]
    zeros = sum((layer.effective_weight().detach() == 0).flatten(1).sum(1) for layer in layers)
    sparsity = (zeros / sum(layer.weight[0].numel() for layer in layers)).numpy()
    from sparsemia.prune import sparsity_report

    first = stack.unstack(0).eval()
    speed = measure_speed(copy.deepcopy(first).cpu(), x[test[: cfg.speed_batch]])
    # model 0's layers stand for the population's in the report (each model is pruned to the same rates)
    speed["layers"] = [{"name": layer.name, "shape": list(layer.shape), "nnz": layer.nnz, "sparsity": layer.sparsity}
                       for layer in sparsity_report(first).layers]
    info = {"train_seconds": train_seconds, "score_seconds": time.perf_counter() - started - train_seconds,
            **{key: value for key, value in info.items()}, **speed}
    return {"logits": logits, "test_logits": test_logits, "train_acc": train_acc, "test_acc": test_acc,
            "sparsity": sparsity, "info": info}


def _inclusion(cfg: ExperimentConfig, size: int) -> np.ndarray:
    from sparsemia.mia.shadow import lira_inclusion

    if cfg.targets % 2:
        raise ValueError(f"targets: expected an even number of models (each candidate IN for exactly half), got {cfg.targets}")
    return lira_inclusion(cfg.targets, size, pkeep=0.5, seed=cfg.seed_for("inclusion", "population"))


def _run_population_tasks(cfg, run: RunDir, tasks: list[tuple[str, dict]], executor: str, ray_address: str | None,
                          progress) -> None:
    from sparsemia.experiments.pipeline import ray_module

    todo = [(name, task) for name, task in tasks if not (run.exists(name + ".npz") and run.exists(name + ".json"))]
    done = len(tasks) - len(todo)
    progress("populations", done, len(tasks))

    def save(name: str, out: dict[str, Any]) -> None:
        info = out.pop("info")
        # the arrays first: a population counts as finished once its .json exists
        run.save_npz(name + ".npz", **out)
        run.write_json(name + ".json", info)

    if executor == "local":
        for name, task in todo:
            save(name, population_task(task))
            done += 1
            progress("populations", done, len(tasks))
        return
    ray = ray_module(ray_address)
    remote = ray.remote(num_cpus=1)(population_task)
    pending = {remote.remote({**task, "threads": 1}): name for name, task in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            save(pending.pop(ref), ray.get(ref))
            done += 1
            progress("populations", done, len(tasks))


def _attack_names(cfg: ExperimentConfig) -> list[str]:
    """The configuration's attacks (registry names), each one the population evaluation runs."""
    from sparsemia.mia.population import POPULATION_ATTACKS
    from sparsemia.mia.registry import canonical_attack

    names = [canonical_attack(name) for name in cfg.attacks]
    missing = [name for name in names if name not in POPULATION_ATTACKS]
    if missing:
        raise ValueError(f"attacks: {missing} have no population form; expected some of {list(POPULATION_ATTACKS)}")
    return names


def run_populations(cfg: ExperimentConfig, run: RunDir, data, splits, executor: str, ray_address: str | None,
                    progress) -> dict[str, Any]:
    """Train (or load) every defense's population, evaluate them, and compare them in pairs."""
    from sparsemia.mia.metrics import roc_points
    from sparsemia.mia.population import compare, evaluate_population

    universe = splits.candidates
    test = splits.test
    reference = splits.defense_reference
    if any(d != "none" and "minmax" in d for d in cfg.defenses) and reference.size == 0:
        raise ValueError("defense_reference: the Min-Max defenses need a reference set (> 0 examples)")
    inclusion = _inclusion(cfg, universe.size)
    tasks = [
        (_population_name(d), {"config": cfg.to_dict(), "defense": d, "universe": universe, "test": test,
                               "reference": reference, "inclusion": inclusion})
        for d in cfg.defenses
    ]
    _run_population_tasks(cfg, run, tasks, executor, ray_address, progress)
    labels = data.labels[torch.as_tensor(universe)].numpy()
    test_labels = data.labels[torch.as_tensor(test)].numpy()
    names = _attack_names(cfg)
    seed = cfg.seed_for("evaluation")
    populations: dict[str, dict[str, Any]] = {}
    results = {}
    for i, defense in enumerate(cfg.defenses):
        progress("attacks", i, len(cfg.defenses))
        arrays = run.load_npz(_population_name(defense) + ".npz")
        if not np.array_equal(inclusion.shape, arrays["logits"].shape[:2]):
            raise ValueError(f"{_population_name(defense)}.npz: written for another population size")
        populations[defense] = {**arrays, "info": run.read_json(_population_name(defense) + ".json")}
        # one seed for every defense: the same reference draws and bootstrap replicates (paired)
        results[defense] = evaluate_population(
            arrays["logits"], labels, inclusion, names, seed=seed, n_bootstrap=cfg.n_bootstrap,
            population_logits=arrays["test_logits"], population_labels=test_labels,
        )
    progress("attacks", len(cfg.defenses), len(cfg.defenses))
    rows = []
    targets = {}
    for defense in cfg.defenses:
        pop, result = populations[defense], results[defense]
        info = pop["info"]
        targets[defense] = {
            "defense": defense,
            "num_targets": int(cfg.targets),
            "target_train_acc": float(np.mean(pop["train_acc"])),
            "target_test_acc": float(np.mean(pop["test_acc"])),
            "test_acc_per_target": [float(v) for v in pop["test_acc"]],
            "sparsity": float(np.mean(pop["sparsity"])),
            **{key: value for key, value in info.items()},
        }
        for name in result.attacks:
            metrics = result.metrics[name]
            pooled = metrics["pooled"]
            scores = result.scores[name]
            fpr, tpr, _ = roc_points(scores.ravel(), result.is_member.ravel())
            keep = np.unique(np.linspace(0, fpr.size - 1, min(fpr.size, 2000)).astype(int))
            run.write_json(f"attacks/{defense}__{name}.json", {
                **metrics, "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()},
                "info": result.info.get(name, {}),
            })
            run.save_npz(f"scores/{defense}__{name}.npz", scores=scores.astype(np.float32),
                         is_member=result.is_member, index=np.asarray(universe))
            rows.append({
                "defense": defense,
                "attack": name,
                "num_targets": int(cfg.targets),
                "target_train_acc": targets[defense]["target_train_acc"],
                "target_test_acc": targets[defense]["target_test_acc"],
                "attack_acc": pooled["attack_acc"],
                "auc": pooled["auc"],
                "tpr_at_1pct_fpr": pooled["tpr_at_1pct_fpr"],
                "tpr_at_0.1pct_fpr": pooled["tpr_at_0.1pct_fpr"],
                "advantage": 2.0 * pooled["attack_acc"] - 1.0,
                "sparsity": targets[defense]["sparsity"],
                "model_bytes": info["model_bytes"],
                "speedup_vs_dense": info["speedup_vs_dense"],
                "ci95": metrics["ci95"],
                "per_target": metrics["per_target"],
                "threshold_decisions": True,
            })
    comparisons = []
    for defense in cfg.defenses:
        for versus in ("none", "minmax"):
            if versus == defense or versus not in results or (versus == "minmax" and defense == "none"):
                continue
            for row in compare(results[defense], results[versus], populations[defense]["test_acc"],
                               populations[versus]["test_acc"], defense=defense, versus=versus):
                comparisons.append(row)
    return {"rows": rows, "comparisons": comparisons, "targets": targets, "seed": cfg.seed,
            "num_targets": int(cfg.targets), "universe_size": int(universe.size), "pkeep": 0.5}

"""The end-to-end experiment behind ``sparsemia reproduce``.

For each defense (none, Min-Max, magnitude pruning, ADMM pruning, ADMM +
Min-Max, ...): train the target, measure its accuracy, size and the CPU speed
of its sparsified form; train shadow models *with the same defense*; run every
attack against the target; save per-example scores and metrics. Every step
writes its artifact atomically into the run directory and is skipped when the
artifact exists, so a killed run resumes where it stopped and ends with the
same numbers as an uninterrupted one (speed timings are measured once, with the
target, and stored).

Shadow training is split into tasks of ``shadows_per_task`` models; tasks run
in-process (``executor="local"``) or as Ray tasks (``executor="ray"``). The
split is the same for both executors, so they give identical results.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsemia.experiments.config import ExperimentConfig
from sparsemia.experiments.rundir import RunDir

__all__ = ["run_experiment", "ProgressFn", "shadow_task"]

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as work finishes (the CLI draws bars from it)."""

_ROW_FIELDS = (
    "target_train_acc",
    "target_test_acc",
    "attack_acc",
    "auc",
    "tpr_at_1pct_fpr",
    "tpr_at_0.1pct_fpr",
    "advantage",
    "sparsity",
    "model_bytes",
    "speedup_vs_dense",
)


def _noop(stage: str, done: int, total: int) -> None:
    return None


# ----------------------------------------------------------------------------
# Data and models
# ----------------------------------------------------------------------------


def load_dataset(cfg: ExperimentConfig):
    return _load_dataset(cfg.dataset, cfg.data_root)


@functools.lru_cache(maxsize=2)
def _load_dataset(name: str, root: str | None):
    # Loaded once per process: shadow tasks run in-process share it (a Ray worker loads it once).
    from sparsemia.data import load_dataset

    return load_dataset(name, root)


def build_model(cfg: ExperimentConfig, num_classes: int, sample_shape: tuple[int, ...]) -> nn.Module:
    from sparsemia import models

    if cfg.model == "mlp":
        model = models.MLP(int(math.prod(sample_shape)), num_classes)
    else:
        model = models.build(cfg.model, num_classes=num_classes, in_channels=int(sample_shape[0]))
    return model.to(cfg.device)


def _defense(cfg: ExperimentConfig, name: str, seed: int):
    from sparsemia.train import build_defense

    return build_defense(name, cfg.defense_options(), seed=seed)


def _splits(cfg: ExperimentConfig, run: RunDir, num_examples: int):
    from sparsemia.data import load_splits, make_splits

    if run.exists("splits.json"):
        return load_splits(run.path("splits.json"))
    splits = make_splits(
        num_examples,
        target_members=cfg.target_members,
        target_non_members=cfg.target_non_members,
        test=cfg.test_size,
        defense_reference=cfg.defense_reference,
        seed=cfg.seed_for("splits"),
    )
    splits.save(run.path("splits.json"))
    return splits


def _universe(cfg: ExperimentConfig, splits) -> tuple[np.ndarray, np.ndarray, float]:
    """(universe, attacker_reference, pkeep): the examples shadow models sample their training sets from.

    The universe starts with the candidates (so their IN/OUT shadow outputs are
    known) and adds attacker-pool examples while every example still lands in
    the training set of at least two shadow models.
    """
    pool = splits.attacker_pool
    attacker_reference = pool[: cfg.attacker_reference]
    rest = pool[cfg.attacker_reference :]
    candidates = splits.candidates
    members = splits.target_members.size
    largest = int(cfg.num_shadows * members / 2)
    extra = int(min(rest.size, max(0, largest - candidates.size)))
    universe = np.concatenate([candidates, rest[:extra]])
    pkeep = members / universe.size
    in_models = round(pkeep * cfg.num_shadows)
    if in_models < 2 or cfg.num_shadows - in_models < 2:
        raise ValueError(
            f"num_shadows: {cfg.num_shadows} shadow models give each candidate {in_models} IN models; LiRA needs at "
            "least two IN and two OUT models (use more shadow models or fewer members)"
        )
    return universe, attacker_reference, pkeep


# ----------------------------------------------------------------------------
# Target models
# ----------------------------------------------------------------------------


def _model_bytes(model: nn.Module) -> int:
    """Bytes of the model stored compactly: each weight layer as CSR (int32 indices) when
    that is smaller than dense, every other parameter and buffer dense."""
    from sparsemia.prune import sparsity_report

    report = sparsity_report(model)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return int(total - sum(layer.dense_bytes - min(layer.dense_bytes, layer.csr_bytes) for layer in report.layers))


def measure_speed(model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Eval-forward time of the sparsified model vs the dense one, same process, medians."""
    from sparsemia.bench import median_time
    from sparsemia.nn import sparsify

    dense = copy.deepcopy(model).eval()
    # Measure each layer on its real input so that only layers the sparse kernels speed up are replaced.
    sparse = sparsify(copy.deepcopy(model).eval(), min_sparsity=0.5, example_input=example)
    with torch.no_grad():
        # Interleaved rounds, so that a change in machine load hits both models alike.
        dense_times, sparse_times = [], []
        for _ in range(7):
            dense_times.append(median_time(lambda: dense(example), repeat=1, min_time=5e-3))
            sparse_times.append(median_time(lambda: sparse(example), repeat=1, min_time=5e-3))
        # The load when the timing ends, so that a report can flag a figure taken on a busy machine.
        load_1min = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        dense_s, sparse_s = float(np.median(dense_times)), float(np.median(sparse_times))
        max_diff = float((dense(example) - sparse(example)).abs().max())
    replaced = sum(1 for m in sparse.modules() if type(m).__name__.startswith("Sparse"))
    return {
        "dense_ms": dense_s * 1e3,
        "sparse_ms": sparse_s * 1e3,
        "speedup_vs_dense": dense_s / sparse_s,
        "dense_round_ms": [t * 1e3 for t in dense_times],
        "sparse_round_ms": [t * 1e3 for t in sparse_times],
        "load_avg_1min": load_1min,
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "sparse_layers": replaced,
        "model_bytes": _model_bytes(model),
        "dense_model_bytes": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        "max_abs_output_diff": max_diff,
    }


def _train_target(cfg: ExperimentConfig, run: RunDir, data, splits, defense_name: str) -> dict[str, Any]:
    from sparsemia import prune
    from sparsemia.train import evaluate

    info_name = f"targets/{defense_name}.json"
    if run.exists(info_name) and run.exists(f"targets/{defense_name}.safetensors"):
        return run.read_json(info_name)
    x, y = data.features, data.labels
    members = torch.as_tensor(splits.target_members)
    reference = torch.as_tensor(splits.defense_reference)
    # every defense's target starts from the same initialisation and data order (paired comparisons)
    torch.manual_seed(cfg.seed_for("init", "target"))
    model = build_model(cfg, data.num_classes, data.sample_shape)
    defense = _defense(cfg, defense_name, seed=cfg.seed_for("adversary", "target"))
    started = time.perf_counter()
    model = defense.train(
        model, x[members], y[members], cfg.train_config("target"), reference=(x[reference], y[reference]),
        num_classes=data.num_classes,
    )
    train_seconds = time.perf_counter() - started
    prune.remove(model)
    model.eval()
    test = torch.as_tensor(splits.test)
    report = prune.sparsity_report(model)
    info: dict[str, Any] = {
        "defense": defense_name,
        "target_train_acc": evaluate(model, x[members], y[members])["accuracy"],
        "target_test_acc": evaluate(model, x[test], y[test])["accuracy"],
        "sparsity": report.sparsity,
        "layers": [
            {"name": layer.name, "shape": list(layer.shape), "nnz": layer.nnz, "sparsity": layer.sparsity}
            for layer in report.layers
        ],
        "train_seconds": train_seconds,
    }
    info.update(measure_speed(copy.deepcopy(model).cpu(), x[test[: cfg.speed_batch]]))
    run.save_torch(f"targets/{defense_name}.safetensors", model.state_dict())
    run.write_json(info_name, info)
    return info


def _load_target(cfg: ExperimentConfig, run: RunDir, data, defense_name: str) -> nn.Module:
    model = build_model(cfg, data.num_classes, data.sample_shape)
    model.load_state_dict({k: v.to(cfg.device) for k, v in run.load_torch(f"targets/{defense_name}.safetensors").items()})
    return model.eval()


# ----------------------------------------------------------------------------
# Shadow models
# ----------------------------------------------------------------------------


def shadow_task(task: dict[str, Any]) -> dict[str, np.ndarray]:
    """Train one task's shadow models and score them; a plain function so Ray can ship it.

    ``task`` holds the config (as a dict), the defense name, the task index, the
    inclusion rows of its models over the universe, and the example indices.
    Returns ``logits`` ``[S, U + T, C]`` (float32) on universe then test examples
    and the ``inclusion`` ``[S, U]`` it trained with.
    """
    from sparsemia.mia import score_models, train_shadow_models

    cfg = ExperimentConfig.from_dict(task["config"])
    torch.set_num_threads(task.get("threads") or torch.get_num_threads())
    data = load_dataset(cfg)
    x, y = data.features, data.labels
    universe = torch.as_tensor(task["universe"])
    evaluated = torch.as_tensor(np.concatenate([task["universe"], task["test"]]))
    attacker_reference = torch.as_tensor(task["attacker_reference"])
    defense_name = task["defense"]
    index = int(task["index"])
    inclusion = np.asarray(task["inclusion"], dtype=bool)
    defense = _defense(cfg, defense_name, seed=cfg.seed_for("adversary", "shadows", index))
    shadows = train_shadow_models(
        lambda: build_model(cfg, data.num_classes, data.sample_shape),
        x[universe],
        y[universe],
        inclusion,
        cfg.train_config("shadows", index),
        defense=defense,
        reference=(x[attacker_reference], y[attacker_reference]),
        num_classes=data.num_classes,
        seed=cfg.seed_for("init", "shadows", index),
    )
    if shadows.models is not None:
        from sparsemia import prune

        for model in shadows.models:
            prune.remove(model)
    logits = score_models(shadows, x[evaluated])
    return {"logits": logits.astype(np.float32), "inclusion": inclusion}


def _task_names(cfg: ExperimentConfig, defense_name: str) -> list[str]:
    count = math.ceil(cfg.num_shadows / cfg.shadows_per_task)
    return [f"shadows/{defense_name}/task_{index:03d}.npz" for index in range(count)]


def _shadow_tasks(cfg, defense_name, inclusion, universe, test, attacker_reference) -> list[tuple[str, dict]]:
    tasks = []
    names = _task_names(cfg, defense_name)
    for index, start in enumerate(range(0, cfg.num_shadows, cfg.shadows_per_task)):
        stop = min(cfg.num_shadows, start + cfg.shadows_per_task)
        tasks.append(
            (
                names[index],
                {
                    "config": cfg.to_dict(),
                    "defense": defense_name,
                    "index": index,
                    "inclusion": inclusion[start:stop],
                    "universe": universe,
                    "test": test,
                    "attacker_reference": attacker_reference,
                },
            )
        )
    return tasks


def _run_tasks(run: RunDir, tasks: list[tuple[str, dict]], executor: str, ray_address: str | None,
               progress: ProgressFn, stage: str) -> None:
    todo = [(name, task) for name, task in tasks if not run.exists(name)]
    done = len(tasks) - len(todo)
    progress(stage, done, len(tasks))
    if not todo:
        return
    if executor == "local":
        for name, task in todo:
            run.save_npz(name, **shadow_task(task))
            done += 1
            progress(stage, done, len(tasks))
        return
    ray = ray_module(ray_address)
    remote = ray.remote(num_cpus=1)(shadow_task)
    pending = {remote.remote(task): name for name, task in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            run.save_npz(pending.pop(ref), **ray.get(ref))
            done += 1
            progress(stage, done, len(tasks))


def ray_module(address: str | None):
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("executor: Ray is not installed; install it with pip install 'sparsemia[ray]'") from exc
    if not ray.is_initialized():
        if address:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        else:
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    return ray


def _shadow_logits(run: RunDir, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [run.load_npz(name) for name in names]
    return np.concatenate([p["logits"] for p in parts]), np.concatenate([p["inclusion"] for p in parts])


# ----------------------------------------------------------------------------
# Attacks
# ----------------------------------------------------------------------------


def _run_attacks(cfg, run, data, splits, defense_name, universe, test) -> None:
    from sparsemia import mia
    from sparsemia.mia.registry import AttackInputs, run_attack
    from sparsemia.train import predict_logits

    todo = [a for a in cfg.attacks if not (run.exists(f"attacks/{defense_name}__{a}.json")
                                         and run.exists(f"scores/{defense_name}__{a}.npz"))]
    if not todo:
        return
    model = _load_target(cfg, run, data, defense_name)
    x, y = data.features, data.labels
    candidates = splits.candidates
    is_member = splits.candidate_is_member
    shadow_logits, inclusion = _shadow_logits(run, _task_names(cfg, defense_name))
    u = universe.size
    labels = y[torch.as_tensor(candidates)].numpy()
    n = labels.size
    inputs = AttackInputs(
        target_logits=predict_logits(model, x[torch.as_tensor(candidates)]).double().numpy(),
        labels=labels,
        # the universe starts with the candidates
        shadow_logits=shadow_logits[:, :n].astype(np.float64),
        inclusion=inclusion[:, :n],
        records=mia.ShadowRecords.from_models(shadow_logits[:, :u], y[torch.as_tensor(universe)].numpy(), inclusion),
        # RMIA's population samples: the test set, which no model trained on
        population_logits=predict_logits(model, x[torch.as_tensor(test)]).double().numpy(),
        population_labels=y[torch.as_tensor(test)].numpy(),
        shadow_population_logits=shadow_logits[:, u:].astype(np.float64),
        seed=cfg.seed_for("attack-model", bits=32),  # scikit-learn's random_state is 32-bit
    )
    for name in todo:
        result = run_attack(name, inputs)
        metrics = mia.attack_metrics(
            result.scores, is_member, predictions=result.predictions, labels=labels,
            n_bootstrap=cfg.n_bootstrap, seed=cfg.seed_for("bootstrap"),
        )
        mia.save_scores(run.path(f"scores/{defense_name}__{name}.npz"), result.scores, is_member, candidates)
        out = metrics.to_dict(roc=True)
        out["threshold_decisions"] = result.predictions is not None
        out["info"] = {k: v for k, v in result.info.items() if isinstance(v, int | float | str | bool)}
        run.write_json(f"attacks/{defense_name}__{name}.json", out)


# ----------------------------------------------------------------------------
# One seed, many seeds
# ----------------------------------------------------------------------------


def _run_one(cfg: ExperimentConfig, run: RunDir, executor: str, ray_address: str | None,
             progress: ProgressFn) -> dict[str, Any]:
    from sparsemia.mia import lira_inclusion

    data = load_dataset(cfg)
    splits = _splits(cfg, run, len(data))
    if cfg.targets > 1:
        from sparsemia.experiments.population import run_populations

        return run_populations(cfg, run, data, splits, executor, ray_address, progress)
    universe, attacker_reference, pkeep = _universe(cfg, splits)
    test = splits.test
    n_def = len(cfg.defenses)
    targets: dict[str, dict] = {}
    for i, defense_name in enumerate(cfg.defenses):
        progress("targets", i, n_def)
        targets[defense_name] = _train_target(cfg, run, data, splits, defense_name)
    progress("targets", n_def, n_def)
    inclusion = lira_inclusion(cfg.num_shadows, universe.size, pkeep=pkeep, seed=cfg.seed_for("inclusion"))
    for defense_name in cfg.defenses:
        tasks = _shadow_tasks(cfg, defense_name, inclusion, universe, test, attacker_reference)
        _run_tasks(run, tasks, executor, ray_address, progress, f"shadows ({defense_name})")
    for i, defense_name in enumerate(cfg.defenses):
        progress("attacks", i, n_def)
        _run_attacks(cfg, run, data, splits, defense_name, universe, test)
    progress("attacks", n_def, n_def)
    rows = []
    for defense_name in cfg.defenses:
        target = targets[defense_name]
        for attack in cfg.attacks:
            metrics = run.read_json(f"attacks/{defense_name}__{attack}.json")
            rows.append(
                {
                    "defense": defense_name,
                    "attack": attack,
                    "num_targets": 1,
                    "target_train_acc": target["target_train_acc"],
                    "target_test_acc": target["target_test_acc"],
                    "attack_acc": metrics["attack_acc"],
                    "auc": metrics["auc"],
                    "tpr_at_1pct_fpr": metrics["tpr_at_1pct_fpr"],
                    "tpr_at_0.1pct_fpr": metrics["tpr_at_0.1pct_fpr"],
                    "advantage": metrics["advantage"],
                    "sparsity": target["sparsity"],
                    "model_bytes": target["model_bytes"],
                    "speedup_vs_dense": target["speedup_vs_dense"],
                    "ci95": metrics["ci95"],
                    "threshold_decisions": metrics["threshold_decisions"],
                }
            )
    return {"rows": rows, "targets": targets, "seed": cfg.seed, "universe_size": int(universe.size), "pkeep": pkeep}


def _versions() -> dict[str, str]:
    import sklearn

    import sparsemia

    out = {"sparsemia": sparsemia.__version__, "torch": torch.__version__, "numpy": np.__version__,
           "scikit-learn": sklearn.__version__, "python": platform.python_version(), "machine": platform.machine()}
    try:
        from sparsemia import _C

        out["cpu_isa"] = _C.get_cpu_isa()
    except ImportError:
        out["cpu_isa"] = "extension not built"
    return out


def _aggregate(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(per_seed) == 1:
        return per_seed[0]["rows"]
    rows = []
    for i, first in enumerate(per_seed[0]["rows"]):
        row = {"defense": first["defense"], "attack": first["attack"], "seeds": len(per_seed)}
        for key in _ROW_FIELDS:
            values = np.array([run["rows"][i][key] for run in per_seed], dtype=np.float64)
            row[key] = float(values.mean())
            row[f"{key}_std"] = float(values.std(ddof=1))
        rows.append(row)
    return rows


def run_experiment(
    config: ExperimentConfig,
    out: str | Path,
    *,
    seeds: int = 1,
    force: bool = False,
    executor: str = "local",
    ray_address: str | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run (or resume) the experiment into ``out`` and return ``results.json``'s content.

    Args:
        config: the experiment (see :class:`ExperimentConfig` and the presets).
        out: run directory; an existing run with the same config is resumed.
        seeds: repeat the whole pipeline with seeds ``config.seed + i`` (in
            ``out/seed_<s>/``) and report mean and standard deviation.
        force: discard a run with another configuration found in ``out``.
        executor: ``"local"`` or ``"ray"`` (shadow-model tasks as Ray tasks).
        ray_address: a Ray cluster to join; default: start a local instance.
        progress: ``progress(stage, done, total)`` callback.
    """
    if seeds < 1:
        raise ValueError(f"seeds: expected a positive integer, got {seeds}")
    if executor not in ("local", "ray"):
        raise ValueError(f"executor: expected 'local' or 'ray', got {executor!r}")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ValueError(f"device: {config.device!r} asked for, but {why} (torch {torch.__version__})")
    progress = progress or _noop
    run = RunDir(out)
    created = not run.root.exists()
    run.prepare({"experiment": config.to_dict(), "seeds": seeds}, force=force)
    per_seed = []
    try:
        for i in range(seeds):
            cfg = replace(config, seed=config.seed + i)
            sub = run if seeds == 1 else run.sub(f"seed_{cfg.seed}")
            per_seed.append(_run_one(cfg, sub, executor, ray_address, progress))
    except BaseException:
        run.release(remove_root=created)  # a run that finished nothing must not block its directory
        raise
    results = {
        "rows": _aggregate(per_seed),
        "comparisons": per_seed[0].get("comparisons") if seeds == 1 else None,
        "per_seed": per_seed if seeds > 1 else None,
        "targets": per_seed[0]["targets"],
        "config": config.to_dict(),
        "seeds": [config.seed + i for i in range(seeds)],
        "versions": _versions(),
        "torch_threads": torch.get_num_threads(),
    }
    run.write_json("results.json", results)
    from sparsemia.experiments.report import write_report

    write_report(run.root)
    return results

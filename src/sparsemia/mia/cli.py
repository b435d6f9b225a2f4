"""What ``sparsemia attack`` does, as a function: attack a model saved by ``sparsemia train``.

Shadow models of the same architecture are trained like the target (its training
config; stacked, on random subsets of attacker pool ∪ candidates, as large as the
target's training set), then each requested attack scores the candidates.
Writes ``<out>/metrics.json`` and ``<out>/scores/<attack>.npz`` (score, is_member, index).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsemia.data import load_dataset, load_splits
from sparsemia.mia import attacks as A
from sparsemia.mia.metrics import attack_metrics, save_scores
from sparsemia.mia.shadow import lira_inclusion, score_models, train_shadow_models
from sparsemia.train.cli import build_for, sidecar
from sparsemia.train.trainer import TrainConfig, predict_logits

__all__ = ["ATTACKS", "attack_saved_model"]

ATTACKS = (
    *A.METRIC_ATTACKS,
    "shadow",
    "lira_online",
    "lira_offline",
    "lira_online_fixed_variance",
    "lira_offline_fixed_variance",
    "rmia_online",
    "rmia_offline",
)


def attack_saved_model(
    model_path: Path,
    out: Path,
    *,
    attacks: list[str] | None = None,
    num_shadows: int = 16,
    data_root: Path | None = None,
    n_bootstrap: int = 200,
    pkeep: float = 0.5,
    population: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Run ``attacks`` (default all of :data:`ATTACKS`) on a saved target; returns metrics per attack.

    Shadow models train on random subsets, as large as the target's training set,
    of a universe of the candidates plus attacker-pool examples sized so that each
    example is IN for a fraction ``pkeep`` of the shadows (Carlini et al.: 1/2).
    RMIA's population samples are up to ``population`` further pool examples that
    no shadow model trained on.
    """
    attacks = list(attacks or ATTACKS)
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        raise ValueError(f"attacks: unknown {unknown}; expected some of {list(ATTACKS)}")
    record_path, splits_path = sidecar(model_path, "train"), sidecar(model_path, "splits")
    for p in (model_path, record_path, splits_path):
        if not p.exists():
            raise FileNotFoundError(f"model_path: expected {p} (written by `sparsemia train`)")
    record = json.loads(record_path.read_text())
    splits = load_splits(splits_path)
    config = TrainConfig(**record["train_config"])
    dataset = load_dataset(record["data"], data_root)
    target = torch.load(model_path, weights_only=False)
    x, y = dataset.features, dataset.labels

    candidates = splits.candidates
    is_member = splits.candidate_is_member
    n = candidates.size
    train_size = splits.target_members.size
    size = max(int(round(train_size / pkeep)), n)
    pool = np.random.default_rng(seed).permutation(splits.attacker_pool)
    if pool.size < size - n + 1:
        raise ValueError(
            f"splits: the attacker pool has {pool.size} examples; shadows with pkeep={pkeep} need at least "
            f"{size - n + 1} besides the {n} candidates"
        )
    universe = np.concatenate([candidates, pool[: size - n]])
    population_idx = pool[size - n : size - n + population]
    inclusion = lira_inclusion(num_shadows, universe.size, pkeep=train_size / universe.size, seed=seed)
    u = torch.as_tensor(universe)
    shadows = train_shadow_models(
        lambda: build_for(record["model"], dataset.num_classes, dataset.sample_shape),
        x[u], y[u], inclusion, config, num_classes=dataset.num_classes, seed=seed,
    )
    pop = torch.as_tensor(population_idx)
    shadow_logits = score_models(shadows, x[u])
    shadow_pop_logits = score_models(shadows, x[pop])
    labels, pop_labels = y[u].numpy(), y[pop].numpy()
    cand_logits = predict_logits(target, x[torch.as_tensor(candidates)]).double().numpy()
    pop_logits = predict_logits(target, x[pop]).double().numpy()
    # shadow records: every (shadow, universe example) pair, membership known to the attacker
    records = A.ShadowRecords.from_models(shadow_logits, labels, inclusion)

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name in attacks:
        if name in A.METRIC_ATTACKS:
            res = A.metric_attack(name, cand_logits, labels[:n], records, num_classes=dataset.num_classes)
        elif name == "shadow":
            res = A.shadow_model_attack(cand_logits, labels[:n], records, seed=seed)
        elif name.startswith("lira"):
            res = A.lira(cand_logits, labels[:n], shadow_logits[:, :n], inclusion[:, :n],
                         online="online" in name, fixed_variance=name.endswith("fixed_variance"))
        else:
            res = A.rmia(cand_logits, labels[:n], shadow_logits[:, :n], inclusion[:, :n], pop_logits, pop_labels,
                         shadow_pop_logits, None, online=name == "rmia_online")
        metrics = attack_metrics(res.scores, is_member, predictions=res.predictions, labels=labels[:n],
                                 n_bootstrap=n_bootstrap, seed=seed)
        save_scores(out / "scores" / f"{name}.npz", res.scores, is_member, candidates)
        results[name] = metrics.to_dict()
    (out / "metrics.json").write_text(json.dumps({"model": str(model_path), "num_shadows": num_shadows,
                                                  "attacks": results}, indent=2))
    return results

"""What ``sparsemia attack`` does, as a function: attack a model saved by ``sparsemia train``.

Shadow models of the same architecture are trained like the target: its training
config and its defense with the same options (see :data:`sparsemia.train.DEFENSES`;
undefended shadows train stacked), on random subsets of attacker pool ∪ candidates
as large as the target's training set; then each requested attack scores the candidates.
Writes ``<out>/metrics.json`` and ``<out>/scores/<attack>.npz`` (score, is_member, index).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsemia.data import load_dataset, load_splits
from sparsemia.io import atomic_write, check_output_dir, load_model
from sparsemia.mia import attacks as A
from sparsemia.mia.metrics import attack_metrics, save_scores
from sparsemia.mia.registry import ATTACKS as _REGISTRY
from sparsemia.mia.registry import AttackInputs, canonical_attack, run_attack
from sparsemia.mia.shadow import lira_inclusion, score_models, train_shadow_models
from sparsemia.seeds import derive_seed, rng
from sparsemia.train.cli import sidecar
from sparsemia.train.defenses import DEFENSES, build_defense, canonical_defense
from sparsemia.train.trainer import TrainConfig, predict_logits

__all__ = ["ATTACKS", "attack_saved_model"]

_MIN_SHADOWS = 4

#: The attack names (the registry's, :data:`sparsemia.mia.registry.ATTACKS`).
ATTACKS = tuple(_REGISTRY)


def attack_saved_model(
    model_path: Path,
    out: Path,
    *,
    attacks: list[str] | None = None,
    num_shadows: int = 16,
    data: str | None = None,
    data_root: Path | None = None,
    splits: Path | None = None,
    arch: str | None = None,
    train_config: TrainConfig | None = None,
    n_bootstrap: int = 200,
    pkeep: float = 0.5,
    population: int = 1000,
    defense_reference: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Run ``attacks`` (default all of :data:`ATTACKS`) on a saved target; returns metrics per attack.

    ``model_path`` is a model file written by ``sparsemia train`` (its sidecar
    names the architecture, dataset and training config; its splits lie beside
    it), or, with ``arch`` (a :data:`sparsemia.models.MODELS` name), weights
    trained elsewhere: a safetensors file or a ``.pt`` state_dict. Such a model
    needs ``data`` and ``splits`` (which examples it trained on) given
    explicitly; its shadow models train with ``train_config`` (default
    :class:`TrainConfig`'s). No file is unpickled.

    Shadow models train on random subsets, as large as the target's training set,
    of a universe of the candidates plus attacker-pool examples sized so that each
    example is IN for a fraction ``pkeep`` of the shadows (Carlini et al.: 1/2).
    RMIA's population samples are up to ``population`` further pool examples that
    no shadow model trained on. Nothing is written unless every attack succeeds.
    A target trained with a defense (its record's ``defense`` and ``defense_options``)
    gets shadows trained with the same defense; a Min-Max adversary's reference set is
    the next ``defense_reference`` pool examples (default: as many as the target's
    training set).
    """
    attacks = [canonical_attack(a) for a in (attacks or ATTACKS)]
    if num_shadows < _MIN_SHADOWS and any(a.startswith(("lira", "rmia")) for a in attacks):
        raise ValueError(f"num_shadows: LiRA and RMIA need at least {_MIN_SHADOWS} shadow models (two IN and two OUT "
                         f"per example), got {num_shadows}")
    check_output_dir(out, "out")
    model_path = Path(model_path)
    if arch is None:
        loaded = load_model(model_path, what="model_path")
        record = loaded.record
        for key in ("data", "train_config"):
            if key not in record:
                raise ValueError(f"model_path: the sidecar of {model_path} has no {key!r} in its record; give the data "
                                 "and splits explicitly (CLI: --model-arch, --weights, --data, --splits)")
        data = data or record["data"]
        splits_path = Path(splits) if splits is not None else sidecar(model_path, "splits")
        config = train_config or TrainConfig(**record["train_config"])
        defense_name = record.get("defense", "none")
        defense_options = record.get("defense_options") or {}
    else:
        defense_name, defense_options = "none", {}
        if data is None or splits is None:
            raise ValueError("data and splits: weights trained elsewhere need the dataset and the splits file naming "
                             "its members (CLI: --data NAME --splits FILE)")
        loaded = load_model(model_path, arch=arch, what="weights")
        splits_path = Path(splits)
        config = train_config or TrainConfig()
    if not splits_path.is_file():
        raise FileNotFoundError(f"splits: expected {splits_path} (written by `sparsemia train`)")
    split = load_splits(splits_path)
    dataset = load_dataset(data, data_root)
    if split.num_examples not in (-1, len(dataset)):
        raise ValueError(f"splits: {splits_path} was written for {split.num_examples} examples, {data!r} has "
                         f"{len(dataset)}")
    target, spec = loaded.model, loaded.spec
    probe = predict_logits(target, dataset.features[:1])
    if probe.shape[-1] != dataset.num_classes:
        raise ValueError(f"model_path: the model has {probe.shape[-1]} outputs, dataset {data!r} has "
                         f"{dataset.num_classes} classes")
    splits = split
    x, y = dataset.features, dataset.labels

    candidates = splits.candidates
    is_member = splits.candidate_is_member
    n = candidates.size
    train_size = splits.target_members.size
    size = max(int(round(train_size / pkeep)), n)
    pool = rng(seed, "attacker-pool").permutation(splits.attacker_pool)
    if pool.size < size - n + 1:
        raise ValueError(
            f"splits: the attacker pool has {pool.size} examples; shadows with pkeep={pkeep} need at least "
            f"{size - n + 1} besides the {n} candidates"
        )
    universe = np.concatenate([candidates, pool[: size - n]])
    population_idx = pool[size - n : size - n + population]
    defense_spec = DEFENSES[canonical_defense(defense_name)]
    reference = None
    if defense_spec.needs_reference:
        start = size - n + population_idx.size
        want = train_size if defense_reference is None else defense_reference
        reference_idx = torch.as_tensor(pool[start : start + want])
        if reference_idx.numel() < max(want, 1):
            raise ValueError(
                f"splits: the {defense_spec.name} shadows need {want} attacker-pool examples as their adversary's "
                f"reference set after the universe and {population_idx.size} population samples; the pool has "
                f"{pool.size}"
            )
        reference = (x[reference_idx], y[reference_idx])
    defense = build_defense(defense_spec.name, defense_options, seed=derive_seed(seed, "adversary"))
    inclusion = lira_inclusion(num_shadows, universe.size, pkeep=train_size / universe.size,
                               seed=derive_seed(seed, "inclusion"))
    u = torch.as_tensor(universe)
    shadows = train_shadow_models(
        spec.build,
        x[u], y[u], inclusion, config, defense=defense, reference=reference, num_classes=dataset.num_classes,
        seed=seed,
    )
    pop = torch.as_tensor(population_idx)
    shadow_logits = score_models(shadows, x[u])
    shadow_pop_logits = score_models(shadows, x[pop])
    labels, pop_labels = y[u].numpy(), y[pop].numpy()
    cand_logits = predict_logits(target, x[torch.as_tensor(candidates)]).double().numpy()
    pop_logits = predict_logits(target, x[pop]).double().numpy()
    # shadow records: every (shadow, universe example) pair, membership known to the attacker
    inputs = AttackInputs(
        target_logits=cand_logits, labels=labels[:n], shadow_logits=shadow_logits[:, :n], inclusion=inclusion[:, :n],
        records=A.ShadowRecords.from_models(shadow_logits, labels, inclusion), population_logits=pop_logits,
        population_labels=pop_labels, shadow_population_logits=shadow_pop_logits, seed=seed,
        num_classes=dataset.num_classes,
    )

    results: dict[str, dict[str, Any]] = {}
    scores: dict[str, np.ndarray] = {}
    for name in attacks:
        res = run_attack(name, inputs)
        metrics = attack_metrics(res.scores, is_member, predictions=res.predictions, labels=labels[:n],
                                 n_bootstrap=n_bootstrap, seed=seed)
        scores[name] = res.scores
        results[name] = metrics.to_dict()
    # written only once every attack has run, metrics last: a metrics.json that exists has all its scores
    for name, score in scores.items():
        save_scores(out / "scores" / f"{name}.npz", score, is_member, candidates)
    atomic_write(out / "metrics.json", json.dumps({"model": str(model_path), "num_shadows": num_shadows,
                                                   "defense": defense_spec.name, "attacks": results}, indent=2))
    return results

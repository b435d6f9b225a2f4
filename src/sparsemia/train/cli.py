"""What ``sparsemia train`` does, as a function: split a dataset, train a target under a defense, save it.

The output is ``<output>`` (the model's tensors, safetensors), ``<output>.json``
(its architecture and the training record: dataset, training config, defense,
accuracies; see :mod:`sparsemia.io`) and ``<output>.splits.json``: everything
``sparsemia attack`` needs to attack the model with shadow models trained the same way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sparsemia.data import load_dataset, load_splits, make_splits
from sparsemia.io import ModelSpec, check_output_file, save_model, sidecar_path
from sparsemia.models import MODELS
from sparsemia.prune import remove as remove_masks
from sparsemia.train.defenses import DefenseOptions, build_defense, canonical_defense
from sparsemia.train.trainer import TrainConfig, evaluate

__all__ = ["train_target", "build_for", "spec_for", "sidecar"]

logger = logging.getLogger(__name__)


def sidecar(output: Path, kind: str) -> Path:
    """``<output>.<kind>.json`` next to a saved model."""
    return output.with_name(output.name + f".{kind}.json")


def spec_for(model_name: str, num_classes: int, sample_shape: tuple[int, ...]) -> ModelSpec:
    """The zoo architecture ``model_name`` sized for the data (input channels / features, classes)."""
    key = model_name.lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ValueError(f"model: unknown name {model_name!r}; expected one of {sorted(MODELS)}")
    if key == "mlp":
        return ModelSpec(key, {"in_features": math.prod(sample_shape), "num_classes": num_classes})
    return ModelSpec(key, {"num_classes": num_classes, "in_channels": int(sample_shape[0])})


def build_for(model_name: str, num_classes: int, sample_shape: tuple[int, ...]) -> torch.nn.Module:
    """A model from the zoo sized for the data (input channels / features, classes)."""
    return spec_for(model_name, num_classes, sample_shape).build()


def train_target(
    output: Path,
    *,
    model: str = "lenet5",
    data: str = "mnist-embedded",
    data_root: Path | None = None,
    download: bool = False,
    members: int = 250,
    pool: int | None = None,
    test: int = 1000,
    reference: int = 0,
    splits: Path | None = None,
    defense: str = "none",
    defense_options: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train a target model and write it with its splits and training record; returns the record."""
    config = config or TrainConfig()
    check_output_file(output, "output")
    for path in (sidecar_path(output), sidecar(output, "splits")):
        check_output_file(path, "output")
    dataset = load_dataset(data, data_root, download=download)
    if splits is not None:
        split = load_splits(splits)
        if split.num_examples not in (-1, len(dataset)):
            raise ValueError(f"splits: written for {split.num_examples} examples, {data!r} has {len(dataset)}")
    else:
        split = make_splits(len(dataset), target_members=members, attacker_pool=pool, test=test,
                            defense_reference=reference, seed=config.seed)
    torch.manual_seed(config.seed)
    spec = spec_for(model, dataset.num_classes, dataset.sample_shape)
    net = spec.build()
    x, y = dataset.features, dataset.labels
    ref = None
    if split.defense_reference.size:
        ref_idx = torch.as_tensor(split.defense_reference)
        ref = (x[ref_idx], y[ref_idx])
    defense = canonical_defense(defense)
    options = DefenseOptions.from_dict(defense_options)
    chosen = build_defense(defense, options)
    member_idx = torch.as_tensor(split.target_members)
    net = chosen.train(net, x[member_idx], y[member_idx], config, reference=ref, num_classes=dataset.num_classes)
    # a pruned model keeps its zeros as plain weights (masks are training-time parametrizations)
    remove_masks(net)
    record: dict[str, Any] = {
        "model": model,
        "data": data,
        "defense": defense,
        # every option the defense used, defaults included: `sparsemia attack` trains its shadows with them
        "defense_options": options.relevant(defense),
        "train_config": asdict(config),
        "train_accuracy": evaluate(net, x[member_idx], y[member_idx])["accuracy"],
    }
    if split.test.size:
        test_idx = torch.as_tensor(split.test)
        record["test_accuracy"] = evaluate(net, x[test_idx], y[test_idx])["accuracy"]
    # splits first: a model file that exists always has its splits beside it
    split.save(sidecar(output, "splits"))
    save_model(output, net, spec, record=record)
    return record

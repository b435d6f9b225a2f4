"""What ``sparsemia train`` does, as a function: split a dataset, train a target under a defense, save it.

The output is ``<output>`` (the model, ``torch.save``), ``<output>.splits.json`` and
``<output>.train.json`` (dataset, model, training config, defense, accuracies),
everything ``sparsemia attack`` needs to attack the model with shadow models trained the same way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from sparsemia.data import load_dataset, load_splits, make_splits
from sparsemia.models import build
from sparsemia.train.defenses import build_defense
from sparsemia.train.trainer import TrainConfig, evaluate

__all__ = ["train_target", "build_for", "sidecar"]

logger = logging.getLogger(__name__)


def sidecar(output: Path, kind: str) -> Path:
    """``<output>.<kind>.json`` next to a saved model."""
    return output.with_name(output.name + f".{kind}.json")


def build_for(model_name: str, num_classes: int, sample_shape: tuple[int, ...]) -> torch.nn.Module:
    """A model from the zoo sized for the data (input channels / features, classes)."""
    key = model_name.lower().replace("-", "").replace("_", "")
    if key == "mlp":
        features = 1
        for d in sample_shape:
            features *= d
        return build("mlp", in_features=features, num_classes=num_classes)
    return build(model_name, num_classes=num_classes, in_channels=sample_shape[0])


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
    dataset = load_dataset(data, data_root, download=download)
    if splits is not None:
        split = load_splits(splits)
        if split.num_examples not in (-1, len(dataset)):
            raise ValueError(f"splits: written for {split.num_examples} examples, {data!r} has {len(dataset)}")
    else:
        split = make_splits(len(dataset), target_members=members, attacker_pool=pool, test=test,
                            defense_reference=reference, seed=config.seed)
    torch.manual_seed(config.seed)
    net = build_for(model, dataset.num_classes, dataset.sample_shape)
    x, y = dataset.features, dataset.labels
    ref = None
    if split.defense_reference.size:
        ref_idx = torch.as_tensor(split.defense_reference)
        ref = (x[ref_idx], y[ref_idx])
    chosen = build_defense(defense, **(defense_options or {}))
    member_idx = torch.as_tensor(split.target_members)
    net = chosen.train(net, x[member_idx], y[member_idx], config, reference=ref, num_classes=dataset.num_classes)
    record: dict[str, Any] = {
        "model": model,
        "data": data,
        "defense": defense,
        "defense_options": defense_options or {},
        "train_config": asdict(config),
        "train_accuracy": evaluate(net, x[member_idx], y[member_idx])["accuracy"],
    }
    if split.test.size:
        test_idx = torch.as_tensor(split.test)
        record["test_accuracy"] = evaluate(net, x[test_idx], y[test_idx])["accuracy"]
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net, output)
    split.save(sidecar(output, "splits"))
    sidecar(output, "train").write_text(json.dumps(record, indent=2))
    return record

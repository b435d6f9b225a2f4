"""Every real-data preset end to end, on small datasets written in their published on-disk formats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparsemia.experiments import preset, run_experiment
from tests.data.formats import (
    write_cifar_binary,
    write_cifar_python,
    write_purchase100,
    write_texas100,
)

ATTACKS = ("loss", "lira_offline", "rmia_offline")
# A few examples of each split: the CIFAR models (VGG-16, ResNet-18) cost about a second per image per step
# on one busy core, and the point is that every stage runs on the real formats, not what it learns.
TINY = dict(target_members=10, target_non_members=10, defense_reference=0, test_size=10, attacker_reference=0,
            defenses=("none",), attacks=ATTACKS, num_shadows=4, shadows_per_task=4, epochs=1, batch_size=10,
            n_bootstrap=0, speed_batch=1, augment=False)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("cifar10-vgg16", lambda root: write_cifar_python(root, classes=10, per_batch=60)),
        ("cifar10-resnet18", lambda root: write_cifar_binary(root, classes=10, per_batch=60)),
        ("cifar100-resnet18", lambda root: write_cifar_python(root, classes=100, per_batch=12)),
        ("purchase100-mlp", lambda root: write_purchase100(root, n=200)),
        ("texas100-mlp", lambda root: write_texas100(root, n=200)),
    ],
)
def test_preset_runs_on_published_formats(tmp_path, name, write):
    data_root = tmp_path / "data"
    write(data_root)
    cfg = preset(name).with_overrides(data_root=str(data_root), **TINY)
    out = tmp_path / "run"
    results = run_experiment(cfg, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == results["rows"] and saved["config"]["dataset"] == preset(name).dataset
    assert [(r["defense"], r["attack"]) for r in saved["rows"]] == [("none", a) for a in ATTACKS]
    for row in saved["rows"]:
        for key in ("target_train_acc", "target_test_acc", "attack_acc", "auc", "tpr_at_1pct_fpr"):
            assert 0.0 <= row[key] <= 1.0, (key, row[key])
        assert np.isfinite(row["speedup_vs_dense"]) and row["model_bytes"] > 0
    assert (out / "report.md").is_file() and (out / "targets" / "none.safetensors").is_file()

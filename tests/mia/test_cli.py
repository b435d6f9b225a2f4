"""`sparsemia train` and `sparsemia attack` end to end on tiny settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sparsemia.cli import main
from sparsemia.mia import load_scores


def test_train_then_attack(tmp_path):
    model = tmp_path / "lenet.safetensors"
    assert main(["train", "-o", str(model), "--members", "40", "--test", "100", "--epochs", "2", "--seed", "3"]) == 0
    record = json.loads((tmp_path / "lenet.safetensors.json").read_text())["record"]
    assert record["train_config"]["seed"] == 3 and 0.0 <= record["test_accuracy"] <= 1.0
    out = tmp_path / "attack"
    code = main(["attack", str(model), "--out", str(out), "--num-shadows", "4",
                 "--attacks", "loss,lira_online,lira_offline,rmia_offline,shadow", "--n-bootstrap", "10"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())["attacks"]
    assert set(metrics) == {"loss", "lira_online", "lira_offline", "rmia_offline", "shadow"}
    score, is_member, index = load_scores(out / "scores" / "lira_online.npz")
    assert metrics["lira_online"]["auc"] == roc_auc_score(is_member, score)
    assert is_member.sum() == 40 and np.unique(index).size == 80


def test_attack_errors_are_one_line(tmp_path, capsys):
    assert main(["attack", str(tmp_path / "missing.pt"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pt" in err


def test_attack_on_a_defended_target_trains_defended_shadows(tmp_path, monkeypatch):
    from sparsemia import prune
    from sparsemia.mia import cli as attack_cli

    model = tmp_path / "pruned.safetensors"
    assert main(["train", "-o", str(model), "--members", "40", "--test", "50", "--epochs", "2",
                 "--defense", "magnitude", "--sparsity", "0.8"]) == 0
    record = json.loads((tmp_path / "pruned.safetensors.json").read_text())["record"]
    # the record holds every option the defense used, defaults included
    assert record["defense"] == "magnitude"
    assert record["defense_options"]["sparsity"] == 0.8 and record["defense_options"]["finetune_epochs"] == 20
    trained = []
    real = attack_cli.train_shadow_models

    def spy(*args, **kwargs):
        shadows = real(*args, **kwargs)
        trained.append((kwargs.get("defense"), shadows))
        return shadows

    monkeypatch.setattr(attack_cli, "train_shadow_models", spy)
    attack_cli.attack_saved_model(model, tmp_path / "attack", attacks=["loss"], num_shadows=4, n_bootstrap=0)
    (defense, shadows), = trained
    assert defense.name == "magnitude" and defense.sparsity == 0.8
    for shadow in shadows.models:
        assert prune.sparsity_report(shadow).sparsity == pytest.approx(0.8, abs=0.02)

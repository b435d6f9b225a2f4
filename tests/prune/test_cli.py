"""``prune_saved_model``: the logic of ``sparsemia prune`` on a saved model."""

from __future__ import annotations

import json

import pytest
import torch

import sparsemia as sm
from sparsemia.io import ModelSpec, load_model, save_model
from sparsemia.prune.cli import prune_saved_model, report_path

LENET = ModelSpec("lenet5", {"num_classes": 10, "in_channels": 1})


@pytest.fixture
def saved_lenet(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "lenet.safetensors"
    save_model(path, LENET.build(), LENET)
    return path


def test_magnitude_writes_pruned_model_and_report(saved_lenet, tmp_path):
    output = tmp_path / "out" / "pruned.safetensors"
    report = prune_saved_model(saved_lenet, output, sparsity=0.8, scope="global", skip_first_last=True)
    model = load_model(output).model
    assert sm.prune.sparsity_report(model) == report
    assert report["features.0"].sparsity == 0.0 and report["classifier.5"].sparsity == 0.0
    pruned = [layer for layer in report.layers if layer.sparsity > 0]
    assert sum(layer.numel - layer.nnz for layer in pruned) == round(0.8 * sum(layer.numel for layer in pruned))
    saved = json.loads(report_path(output).read_text())
    assert saved["nnz"] == report.nnz


def test_filter_structure_writes_a_smaller_model(saved_lenet, tmp_path):
    output = tmp_path / "small.safetensors"
    prune_saved_model(saved_lenet, output, sparsity=0.5, structure="filter")
    model = load_model(output).model
    assert model.features[0].out_channels == 3 and model.features[3].out_channels == 8
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_iterative_schedule_fine_tunes_on_the_named_dataset(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("mlp", {"in_features": 64, "num_classes": 10, "hidden": [32]})  # digits: 1x8x8 images
    save_model(tmp_path / "mlp.safetensors", spec.build(), spec)
    report = prune_saved_model(
        tmp_path / "mlp.safetensors", tmp_path / "it.safetensors", sparsity=0.5, schedule="iterative", steps=2, data="digits", epochs=1, batch_size=256
    )
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"method": "obd"}, "method"),
        ({"schedule": "iterative", "steps": 2}, "data"),
        ({"method": "admm"}, "data"),
        ({"method": "admm", "schedule": "gradual", "data": "digits"}, "schedule"),
        ({"sparsity": 1.2}, "sparsity"),
    ],
)
def test_bad_arguments(saved_lenet, tmp_path, kwargs, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        prune_saved_model(saved_lenet, tmp_path / "x.pt", **kwargs)


def test_state_dict_needs_its_architecture(tmp_path):
    path = tmp_path / "weights.pt"
    model = sm.models.LeNet5()
    torch.save(model.state_dict(), path)
    with pytest.raises(FileNotFoundError, match=r"^model_path: expected the sidecar .* --model-arch NAME"):
        prune_saved_model(path, tmp_path / "x.safetensors")
    report = prune_saved_model(path, tmp_path / "x.safetensors", arch="lenet5", sparsity=0.5)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
    pruned = load_model(tmp_path / "x.safetensors").model
    assert pruned.features[0].weight.shape == model.features[0].weight.shape


def test_sparsemia_prune_command(saved_lenet, tmp_path, capsys):
    from sparsemia import cli

    output = tmp_path / "nm.safetensors"
    code = cli.main(["prune", str(saved_lenet), "-o", str(output), "--structure", "nm", "--n", "1", "--m", "2", "--skip-first-last"])
    assert code == 0
    assert "classifier.1" in capsys.readouterr().out
    report = json.loads(report_path(output).read_text())
    assert [layer["sparsity"] for layer in report["layers"]] == [0.0, 0.5, 0.5, 0.5, 0.0]
    assert cli.main(["prune", str(saved_lenet), "-o", str(output), "--sparsity", "1.5"]) == 2
    assert "sparsity: expected a number in [0, 1)" in capsys.readouterr().err

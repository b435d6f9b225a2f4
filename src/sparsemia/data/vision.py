"""Image datasets read from their published files with numpy: no torchvision, nothing unpickled as code.

Each reader looks under ``root`` and under the folder torchvision would use
(so a directory torchvision downloaded into works as is):

* CIFAR-10: ``cifar-10-batches-py/`` (the "python version": ``data_batch_1..5``,
  ``test_batch``) or ``cifar-10-batches-bin/`` (the "binary version":
  ``data_batch_1..5.bin``, ``test_batch.bin``; records of 1 label byte + 3,072
  pixel bytes);
* CIFAR-100: ``cifar-100-python/`` (``train``, ``test``) or ``cifar-100-binary/``
  (``train.bin``, ``test.bin``; 1 coarse + 1 fine label byte + 3,072 pixels);
* MNIST, Fashion-MNIST: the IDX files ``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-…`` (gzipped or not), in ``root``,
  ``root/MNIST/raw`` or ``root/FashionMNIST/raw``;
* SVHN: ``train_32x32.mat`` / ``test_32x32.mat`` (MATLAB, read with scipy; label
  10 stands for digit 0).

The CIFAR "python version" files are pickles of a dict of numpy arrays; they are
read with an unpickler that only rebuilds numpy arrays and refuses any other
object, so a crafted file cannot run code.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

__all__ = ["read_vision", "VISION_FILES"]

#: What each dataset's files are called (shown in errors).
VISION_FILES = {
    "cifar10": "cifar-10-batches-py/ or cifar-10-batches-bin/ (https://www.cs.toronto.edu/~kriz/cifar.html)",
    "cifar100": "cifar-100-python/ or cifar-100-binary/ (https://www.cs.toronto.edu/~kriz/cifar.html)",
    "mnist": "train-images-idx3-ubyte[.gz] and friends, in <root> or <root>/MNIST/raw",
    "fashion-mnist": "train-images-idx3-ubyte[.gz] and friends, in <root> or <root>/FashionMNIST/raw",
    "svhn": "train_32x32.mat / test_32x32.mat (http://ufldl.stanford.edu/housenumbers/)",
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays (and the plain containers around them); refuses every other global."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are expected)")


def _unpickle_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            data = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"data_root: {path} is not a CIFAR python batch (corrupted or not CIFAR?): {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"data_root: {path} is not a CIFAR python batch (holds a {type(data).__name__})")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in data.items()}


def _first_dir(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_dir()), None)


def _images_from_rows(rows: np.ndarray, path: Path) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.uint8)
    if rows.ndim != 2 or rows.shape[1] != 3072:
        raise ValueError(f"data_root: {path}: expected rows of 3,072 pixel bytes, got an array of shape {rows.shape}")
    return rows.reshape(-1, 3, 32, 32)


def _cifar(root: Path, key: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    ten = key == "cifar10"
    label_key = "labels" if ten else "fine_labels"
    py = _first_dir(root, ("cifar-10-batches-py",) if ten else ("cifar-100-python",))
    binary = _first_dir(root, ("cifar-10-batches-bin",) if ten else ("cifar-100-binary",))
    if py is not None:
        names = ([f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]) if ten else (
            ["train"] if train else ["test"])
        images, labels = [], []
        for name in names:
            path = py / name
            if not path.is_file():
                raise FileNotFoundError(f"data_root: expected the file {path}")
            batch = _unpickle_batch(path)
            if "data" not in batch or label_key not in batch:
                raise ValueError(f"data_root: {path} lacks 'data' or {label_key!r} (found {sorted(batch)})")
            images.append(_images_from_rows(batch["data"], path))
            labels.append(np.asarray(batch[label_key], dtype=np.int64).reshape(-1))
        return np.concatenate(images), np.concatenate(labels)
    if binary is not None:
        names = ([f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]) if ten else (
            ["train.bin"] if train else ["test.bin"])
        label_bytes = 1 if ten else 2
        record = label_bytes + 3072
        images, labels = [], []
        for name in names:
            path = binary / name
            if not path.is_file():
                raise FileNotFoundError(f"data_root: expected the file {path}")
            raw = np.fromfile(path, dtype=np.uint8)
            if raw.size == 0 or raw.size % record:
                raise ValueError(f"data_root: {path} is {raw.size} bytes, not a whole number of {record}-byte records")
            table = raw.reshape(-1, record)
            labels.append(table[:, label_bytes - 1].astype(np.int64))  # CIFAR-100: the fine label
            images.append(table[:, label_bytes:].reshape(-1, 3, 32, 32))
        return np.concatenate(images), np.concatenate(labels)
    raise FileNotFoundError(f"data_root: no {key} files under {root}; expected {VISION_FILES[key]}")


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"data_root: cannot read {path} (corrupted?): {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"data_root: {path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise ValueError(f"data_root: {path} holds {len(data) - header} bytes of data, its header says {shape} "
                         "(truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _mnist(root: Path, key: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = "MNIST" if key == "mnist" else "FashionMNIST"
    prefix = "train" if train else "t10k"
    for where in (root, root / folder / "raw", root / folder):
        found = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            path = next((p for p in (where / f"{prefix}-{kind}", where / f"{prefix}-{kind}.gz") if p.is_file()), None)
            found.append(path)
        if all(found):
            images, labels = (_read_idx(p) for p in found)
            if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(f"data_root: {found[0]} and {found[1]} do not match ({images.shape} images, "
                                 f"{labels.shape} labels)")
            return images[:, None], labels.astype(np.int64)
    raise FileNotFoundError(f"data_root: no {key} files under {root}; expected {VISION_FILES[key]}")


def _svhn(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat

    path = root / ("train_32x32.mat" if train else "test_32x32.mat")
    if not path.is_file():
        raise FileNotFoundError(f"data_root: no svhn files under {root}; expected {VISION_FILES['svhn']}")
    try:
        mat = loadmat(path)
    except Exception as exc:  # scipy raises several types for a damaged file
        raise ValueError(f"data_root: {path} is not a readable MATLAB file (corrupted?): {exc}") from None
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"data_root: {path} lacks the arrays 'X' and 'y'")
    images = np.transpose(mat["X"], (3, 2, 0, 1))  # [32, 32, 3, N] -> [N, 3, 32, 32]
    labels = mat["y"].astype(np.int64).reshape(-1) % 10  # 10 is digit 0
    return np.ascontiguousarray(images), labels


def read_vision(key: str, root: str | Path, *, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, C, H, W], labels int64 [N])`` of dataset ``key`` from its published files under ``root``."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data_root: {root} does not exist (expected a directory holding {VISION_FILES[key]})")
    if not root.is_dir():
        raise NotADirectoryError(f"data_root: {root} is a file, expected a directory")
    if key in ("cifar10", "cifar100"):
        return _cifar(root, key, train)
    if key in ("mnist", "fashion-mnist"):
        return _mnist(root, key, train)
    if key == "svhn":
        return _svhn(root, train)
    raise ValueError(f"name: {key!r} is not an image dataset read from files")

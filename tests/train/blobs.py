"""Gaussian blobs: a classification task tiny models learn in a few epochs."""

from __future__ import annotations

import torch


def blobs(n: int, features: int = 10, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points around ``classes`` random centres in ``features`` dimensions, and their labels."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=g) * 3
    labels = torch.randint(0, classes, (n,), generator=g)
    return centers[labels] + torch.randn(n, features, generator=g), labels

"""Augmented queries: the copies of each candidate that target and reference models are asked about.

LiRA (Carlini et al. 2022, §VI-B "augmented queries") and RMIA (Zarifzadeh et al. 2024,
Appendix "augmented queries") query every model not only on a candidate ``x`` but also on
the augmentations the models were trained with; a model that trained on ``x`` has seen
(some of) them, so each query carries evidence, and the attacks combine the per-query
statistics (LiRA averages per-query log-likelihood ratios; RMIA takes a majority vote over
per-query comparisons). Queries are only useful if they are augmentations the model
was trained under, so the choice per dataset follows this project's training
augmentation (:class:`sparsemia.train.TrainConfig`: zero-padded random crops, and
horizontal flips only where the experiment enables ``hflip``):

=================================================  =======================  =====
dataset kind                                       queries                  Q
=================================================  =======================  =====
``mnist-embedded``, ``mnist``, ``fashion-mnist``,  shifts by up to ``shift``  9
``digits``, ``image``                              pixels (no mirror: a
                                                   mirrored digit is another
                                                   symbol, and these models
                                                   never train on flips)
``cifar10``, ``cifar100``, ``svhn``,               shifts, and each shift     18
``natural-image``                                  mirrored (the models
                                                   train with flips)
``purchase100``, ``texas100``, ``location``,       the example itself         1
``tabular``                                        (no meaningful
                                                   transformation)
=================================================  =======================  =====

(Q for the default ``shift=1``: a 3 × 3 grid of offsets.) Shifted copies are zero-padded,
as the training crops are; LiRA's code pads by reflection because its models train that way.
Index 0 is always the plain, unshifted query, which attacks that take one query
(the metric attacks, Shokri et al.'s) use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["augment", "query_plan", "num_queries", "QUERY_KINDS"]

_DIGIT_LIKE = ("mnist-embedded", "mnist", "fashion-mnist", "digits", "image")
_NATURAL = ("cifar10", "cifar100", "svhn", "natural-image")
_TABULAR = ("purchase100", "texas100", "location", "tabular")

#: Every accepted ``dataset_kind``.
QUERY_KINDS = _DIGIT_LIKE + _NATURAL + _TABULAR


def query_plan(dataset_kind: str) -> tuple[bool, bool]:
    """``(shifted, mirrored)``: which augmentations :func:`augment` makes for ``dataset_kind``."""
    if dataset_kind in _DIGIT_LIKE:
        return True, False
    if dataset_kind in _NATURAL:
        return True, True
    if dataset_kind in _TABULAR:
        return False, False
    raise ValueError(f"dataset_kind: expected one of {list(QUERY_KINDS)}, got {dataset_kind!r}")


def num_queries(dataset_kind: str, shift: int = 1) -> int:
    """Q, the number of queries :func:`augment` makes per example."""
    shifted, mirrored = query_plan(dataset_kind)
    if shift < 0:
        raise ValueError(f"shift: expected >= 0, got {shift}")
    return (2 * shift + 1) ** 2 * (1 + mirrored) if shifted else 1


def augment(features: torch.Tensor, dataset_kind: str, shift: int = 1) -> torch.Tensor:
    """The queries for each example: ``features`` ``[N, ...]`` → ``[Q, N, ...]``.

    Images (``[N, C, H, W]``) get every translation by ``(dy, dx)`` with
    ``|dy|, |dx| ≤ shift`` (zero-filled, as in training), and for natural images
    each of those mirrored left–right; tabular data get Q = 1. Index 0 is
    ``features`` itself; the order of the rest is fixed (shifts row by row, then
    their mirrors), so queries line up across models.
    """
    shifted, mirrored = query_plan(dataset_kind)
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"features: expected a torch.Tensor, got {type(features).__name__}")
    if shift < 0:
        raise ValueError(f"shift: expected >= 0, got {shift}")
    if not shifted:
        return features.unsqueeze(0)
    if features.dim() != 4:
        raise ValueError(f"features: {dataset_kind!r} images must be [N, C, H, W], got {tuple(features.shape)}")
    h, w = features.shape[-2:]
    padded = F.pad(features, (shift, shift, shift, shift))
    # (0, 0) first: the plain query is index 0
    offsets = [(0, 0)] + [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1) if dy or dx]
    # the content moves by (dy, dx): the crop window starts at (shift - dy, shift - dx) in the padded image
    copies = [padded[..., shift - dy : shift - dy + h, shift - dx : shift - dx + w] for dy, dx in offsets]
    if mirrored:
        copies += [c.flip(-1) for c in copies]
    return torch.stack(copies)

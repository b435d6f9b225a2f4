"""Magnitude pruning: the smallest weights (or blocks, N:M groups, filters) are masked to zero.

Scores are taken from the *effective* weights, so pruning an already pruned
model (iterative and gradual schedules) only ever adds zeros to the existing
ones while the target grows.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from sparsemia.prune.filter import channel_groups, mask_channels, plan_filters, unique_groups
from sparsemia.prune.masks import adopt_torch_prune, apply_mask
from sparsemia.prune.structures import compute_masks
from sparsemia.prune.targets import SCOPES, STRUCTURES, Exclude, check_choice, resolve_targets

__all__ = ["magnitude", "plan_masks", "check_structure_args"]

logger = logging.getLogger(__name__)


def check_structure_args(structure: str, scope: str, block: object, n: object, m: object) -> tuple[int, int]:
    """Validate the structure arguments; returns ``block`` as a pair of ints."""
    check_choice(structure, STRUCTURES, "structure")
    check_choice(scope, SCOPES, "scope")
    if (
        not isinstance(block, tuple | list)
        or len(block) != 2
        or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)
    ):
        raise ValueError(f"block: expected two positive ints (rows, cols), got {block!r}")
    for argument, value in (("n", n), ("m", m)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{argument}: expected a positive int, got {value!r}")
    if structure == "nm" and not n < m:
        raise ValueError(f"n: expected fewer kept weights than the group size m={m}, got n={n}")
    return int(block[0]), int(block[1])


def plan_masks(
    model: nn.Module,
    sparsity: float | Mapping[str, float] | None,
    *,
    scope: str = "layer",
    structure: str = "unstructured",
    block: tuple[int, int] = (4, 4),
    n: int = 2,
    m: int = 4,
    exclude: Exclude = None,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Validate the arguments and compute weight masks without touching the model.

    Returns bool masks keyed by layer name. ``weights`` overrides the tensors
    that are scored (ADMM projects ``W + U``, not ``W``). Arguments as in :func:`magnitude`.
    """
    block = check_structure_args(structure, scope, block, n, m)
    candidates = None
    if structure == "filter":
        candidates = {name: model.get_submodule(name) for name in channel_groups(model)}
    if structure == "nm":
        nm_sparsity = 1.0 - n / m
        if sparsity is None:
            sparsity = nm_sparsity
        values = sparsity.values() if isinstance(sparsity, Mapping) else [sparsity]
        for value in values:
            if isinstance(value, int | float) and not math.isclose(value, nm_sparsity):
                raise ValueError(
                    f"sparsity: {n}:{m} pruning gives sparsity {nm_sparsity:g}, got {value!r}; "
                    "pass sparsity=None or change n and m"
                )
    if sparsity is None:
        raise ValueError(f"sparsity: required for structure={structure!r} (a number in [0, 1) or a dict by layer)")
    if scope == "global" and isinstance(sparsity, Mapping):
        raise ValueError("scope: 'global' takes one sparsity for all layers, got a dict; use scope='layer' for per-layer targets")
    try:
        targets = resolve_targets(model, sparsity, exclude, candidates)
    except ValueError as error:
        if structure == "filter" and "no prunable layer named" in str(error):
            raise ValueError(
                f"{error}. With structure='filter' only layers whose output channels feed nothing but "
                "other layers' inputs can be pruned (not residual additions or the model output)"
            ) from None
        raise
    if structure == "filter":
        return plan_filters(model, targets, scope, weights, explicit=isinstance(sparsity, Mapping))
    if weights is None:
        weights = {name: model.get_submodule(name).weight for name in targets}
    return compute_masks(weights, targets, structure, scope, block, n, m)


def magnitude(
    model: nn.Module,
    sparsity: float | Mapping[str, float] | None = None,
    *,
    scope: str = "layer",
    structure: str = "unstructured",
    block: tuple[int, int] = (4, 4),
    n: int = 2,
    m: int = 4,
    exclude: Exclude = None,
) -> nn.Module:
    """Mask the lowest-magnitude weights of ``model`` in place; returns ``model``.

    Masks stay fixed through later training (see :mod:`sparsemia.prune.masks`);
    calling again with a higher target prunes further.

    Args:
        model: any model with ``nn.Linear`` / convolution layers, including ones
            pruned with ``torch.nn.utils.prune`` or holding zeros.
        sparsity: fraction in ``[0, 1)`` of each targeted layer's weights (units)
            to prune, or ``{layer name: sparsity}``. For ``structure="nm"`` it is
            implied (``1 - n/m``) and may be omitted.
        scope: ``"layer"`` meets the target in every layer; ``"global"`` ranks
            the units of all targeted layers together.
        structure: ``"unstructured"``, ``"block"`` (``block=(r, c)`` tiles),
            ``"nm"`` (``n`` of every ``m`` along the reduction dimension) or
            ``"filter"`` (whole output channels; the sparsity is the fraction of
            filters; BatchNorm and depthwise channels follow, and
            :func:`sparsemia.prune.shrink` then removes them physically).
        block: tile shape for ``structure="block"``.
        n, m: for ``structure="nm"`` (2:4 by default).
        exclude: layer names, or a rule ``callable(name, module) -> bool``, to
            leave dense; e.g. :func:`sparsemia.prune.first_and_last`.
    """
    adopt_torch_prune(model)
    planned = plan_masks(
        model, sparsity, scope=scope, structure=structure, block=block, n=n, m=m, exclude=exclude
    )
    if structure == "filter":
        groups = channel_groups(model)
        for group in unique_groups({name: groups[name] for name in planned}):
            mask = planned[group.producers[0]]
            mask_channels(model, group, mask.reshape(mask.shape[0], -1)[:, 0])
    else:
        for name, mask in planned.items():
            apply_mask(model.get_submodule(name), "weight", mask)
        if structure == "unstructured":
            _warn_if_beyond(model, list(planned), sparsity, scope)
    logger.info(
        "magnitude pruning (%s, %s scope) of %d layers", structure, scope, len(planned)
    )
    return model


def _warn_if_beyond(model: nn.Module, names: list[str], sparsity: float | Mapping[str, float], scope: str) -> None:
    """Warn when earlier zeros leave the model sparser than asked.

    Pruning a pruned model with another scope compounds: after ``magnitude(model, 0.9, scope="global")``
    a per-layer 0.9 (``admm``'s default scope) finds the big layers already above 90%; their zeros
    are ranked lowest, so they stay zero (a kept one restarts from zero and only later training
    regrows it) and the model ends sparser than 90%.
    """
    zeros = {name: int((model.get_submodule(name).weight == 0).sum()) for name in names}
    sizes = {name: model.get_submodule(name).weight.numel() for name in names}
    # rounding of the kept counts, and weights that are zero by chance
    def slack(size: int) -> float:
        return 0.005 + 1 / max(size, 1)

    if scope == "global":
        achieved = sum(zeros.values()) / max(sum(sizes.values()), 1)
        if achieved > float(sparsity) + slack(sum(sizes.values())):
            warnings.warn(
                f"magnitude: the pruned layers are {achieved:.1%} sparse, more than sparsity={float(sparsity):g} "
                "asks, because they already held zeros (earlier pruning); prune an unpruned copy of the model "
                "to reach the target", stacklevel=3)
        return
    target = sparsity if isinstance(sparsity, Mapping) else dict.fromkeys(names, float(sparsity))
    beyond = {name: zeros[name] / sizes[name] for name in names
              if sizes[name] and zeros[name] / sizes[name] > target[name] + slack(sizes[name])}
    if beyond:
        listed = ", ".join(f"{name} {value:.1%}" for name, value in beyond.items())
        warnings.warn(
            f"magnitude: layers already held more zeros than their sparsity target ({listed}), from earlier "
            "pruning; they stay sparser than asked (a zero kept by the new mask only regrows in later "
            "training): prune an unpruned copy of the model, or use the scope that pruned it, to reach "
            "the target", stacklevel=3)

"""Which layers get pruned, to what sparsity: argument validation at the public boundary.

A sparsity target is either one float for every prunable layer or a dict
``{layer name: sparsity}``; ``exclude`` removes layers by name or by a rule
(``callable(name, module) -> bool``). :func:`first_and_last` gives the usual
rule "skip the first conv and the classifier".
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping

from torch import nn

__all__ = [
    "PRUNABLE_TYPES",
    "STRUCTURES",
    "SCOPES",
    "prunable_layers",
    "first_and_last",
    "resolve_targets",
    "check_sparsity",
    "check_choice",
]

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
STRUCTURES = ("unstructured", "block", "nm", "filter")
SCOPES = ("layer", "global")

Exclude = Iterable[str] | Callable[[str, nn.Module], bool] | None


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` and convolution in ``model``, by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def first_and_last(model: nn.Module) -> list[str]:
    """Names of the first and the last prunable layer (usually the first conv and the classifier).

    Use as ``exclude=first_and_last(model)``: the input layer has few weights and
    the classifier is sensitive, so they are often left dense.
    """
    names = list(prunable_layers(model))
    return sorted({names[0], names[-1]}, key=names.index) if names else []


def check_sparsity(value: object, argument: str = "sparsity") -> float:
    """A sparsity as a float in ``[0, 1)``, or a ``ValueError`` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{argument}: expected a number in [0, 1), got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{argument}: expected a number in [0, 1), got {value!r}")
    return float(value)


def check_choice(value: object, choices: Iterable[str], argument: str) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` naming the argument."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{argument}: expected one of {list(choices)}, got {value!r}")
    return str(value)


def _excluded_names(layers: Mapping[str, nn.Module], exclude: Exclude) -> set[str]:
    if exclude is None:
        return set()
    if callable(exclude):
        return {name for name, module in layers.items() if exclude(name, module)}
    if isinstance(exclude, str):
        exclude = [exclude]
    names = set(exclude)
    unknown = sorted(names - set(layers))
    if unknown:
        raise ValueError(f"exclude: no prunable layer named {unknown[0]!r}; prunable layers are {list(layers)}")
    return names


def resolve_targets(
    model: nn.Module,
    sparsity: float | Mapping[str, float],
    exclude: Exclude = None,
    candidates: Mapping[str, nn.Module] | None = None,
) -> dict[str, float]:
    """Per-layer sparsity targets ``{name: sparsity}`` from the public arguments, validated.

    Args:
        model: the model.
        sparsity: one float in ``[0, 1)`` for every candidate layer, or a dict
            naming layers (layers not named are left alone).
        exclude: layer names or a rule ``callable(name, module) -> bool``.
        candidates: the layers that may be pruned (default :func:`prunable_layers`).
    """
    layers = dict(candidates) if candidates is not None else prunable_layers(model)
    excluded = _excluded_names(prunable_layers(model) if candidates is not None else layers, exclude)
    if isinstance(sparsity, Mapping):
        targets: dict[str, float] = {}
        for name, value in sparsity.items():
            if name not in layers:
                raise ValueError(f"sparsity: no prunable layer named {name!r}; prunable layers are {list(layers)}")
            targets[name] = check_sparsity(value, f"sparsity[{name!r}]")
        return {name: value for name, value in targets.items() if name not in excluded}
    value = check_sparsity(sparsity)
    targets = {name: value for name in layers if name not in excluded}
    if not targets:
        raise ValueError("sparsity: no layer left to prune after exclude; the model has no prunable layer or all were excluded")
    return targets

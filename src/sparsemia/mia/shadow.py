"""Shadow / reference models: who trains on what, training them together, scoring them.

* :func:`lira_inclusion` — Carlini et al.'s random halves: over K examples
  (attacker pool ∪ the target's candidates) each example is IN for exactly
  ``round(pkeep·M)`` of the M models, so every candidate has IN and OUT models;
* :func:`disjoint_inclusion` — Shokri et al.'s shadows: each model a disjoint
  training slice of the pool and an equally sized disjoint held-out slice;
* :func:`train_shadow_models` — M models of one architecture trained like the
  target, together as a stacked model (each its own subset, and its own mask when
  pruned), or one by one under a defense;
* :func:`score_models` — logits of every model on every example, ``[M, K, C]``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sparsemia.nn.stacked import FunctionalStack, StackedModel, stack_models
from sparsemia.seeds import derive_seed
from sparsemia.train.trainer import TrainConfig, fit_stacked, predict_logits

__all__ = [
    "ShadowModels",
    "lira_inclusion",
    "disjoint_inclusion",
    "build_stack",
    "train_shadow_models",
    "score_models",
    "magnitude_prune_stacked",
]

logger = logging.getLogger(__name__)


def lira_inclusion(num_models: int, num_examples: int, pkeep: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean ``[M, K]``: each example IN for exactly ``round(pkeep·M)`` randomly chosen models."""
    if num_models < 1 or num_examples < 1:
        raise ValueError(f"num_models, num_examples: expected positive, got {num_models}, {num_examples}")
    if not 0.0 < pkeep < 1.0:
        raise ValueError(f"pkeep: expected a fraction in (0, 1), got {pkeep}")
    rng = np.random.default_rng(seed)
    order = rng.uniform(size=(num_models, num_examples)).argsort(0)
    return order < int(round(pkeep * num_models))


def disjoint_inclusion(
    num_models: int, num_examples: int, train_size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(inclusion, evaluated)``, each ``[M, K]``: model m trains on its own ``train_size`` examples and
    is evaluated on those plus its own ``train_size`` held-out ones; all slices disjoint."""
    if train_size < 1:
        raise ValueError(f"train_size: expected >= 1, got {train_size}")
    need = 2 * train_size * num_models
    if need > num_examples:
        raise ValueError(
            f"train_size: {num_models} disjoint shadow models with {train_size} members and {train_size} "
            f"non-members each need {need} examples; the pool has {num_examples}"
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    inclusion = np.zeros((num_models, num_examples), dtype=bool)
    evaluated = np.zeros_like(inclusion)
    for m in range(num_models):
        part = order[2 * train_size * m : 2 * train_size * (m + 1)]
        inclusion[m, part[:train_size]] = True
        evaluated[m, part] = True
    return inclusion, evaluated


def build_stack(model_fn: Callable[[], nn.Module], num_models: int, seed: int = 0) -> StackedModel | FunctionalStack:
    """``num_models`` freshly initialised models (model m seeded with ``derive_seed(seed, "init", m)``), stacked."""
    models = []
    for m in range(num_models):
        torch.manual_seed(derive_seed(seed, "init", m))
        models.append(model_fn())
    try:
        return stack_models(models)
    except ValueError:
        logger.info("architecture not supported by stack_models; using FunctionalStack (vmap)")
        return FunctionalStack(models)


@dataclass
class ShadowModels:
    """Trained shadow models and what each trained on (indices into the examples they were given)."""

    stack: StackedModel | FunctionalStack | None
    models: list[nn.Module] | None
    inclusion: np.ndarray

    @property
    def num_models(self) -> int:
        return int(self.inclusion.shape[0])


def train_shadow_models(
    model_fn: Callable[[], nn.Module],
    features: torch.Tensor,
    labels: torch.Tensor,
    inclusion: np.ndarray,
    config: TrainConfig,
    *,
    defense=None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_classes: int | None = None,
    masks: Sequence[torch.Tensor | None] | None = None,
    models_per_stack: int | None = None,
    prune_sparsity: float | None = None,
    prune_finetune_epochs: int = 5,
    seed: int = 0,
) -> ShadowModels:
    """Train ``M = inclusion.shape[0]`` shadow models like the target.

    Model m trains on ``features[inclusion[m]]`` with ``config``. Without a
    defense (or ``NoDefense``) the models train together as stacked models of
    at most ``models_per_stack`` (default all); ``masks`` (one stacked
    ``[M, *weight_shape]`` per conv/linear layer) give each model its own fixed
    pruning mask. ``prune_sparsity`` prunes the stacked models after training,
    each by its own weight magnitudes (:func:`magnitude_prune_stacked`), and
    fine-tunes them with fixed masks for ``prune_finetune_epochs`` (the stacked
    counterpart of ``Pruning("magnitude")``). With another defense each model
    is trained by ``defense.train`` in turn, exactly as the target was.
    """
    inclusion = np.asarray(inclusion).astype(bool)
    if inclusion.ndim != 2 or inclusion.shape[1] != features.shape[0]:
        raise ValueError(f"inclusion: expected [M, {features.shape[0]}] booleans, got {inclusion.shape}")
    num_models = inclusion.shape[0]
    if defense is not None and getattr(defense, "name", None) != "none":
        models = []
        for m in range(num_models):
            torch.manual_seed(derive_seed(seed, "init", m))
            model = model_fn()
            idx = torch.as_tensor(np.flatnonzero(inclusion[m]))
            cfg = _reseed(config, m)
            models.append(defense.train(model, features[idx], labels[idx], cfg, reference=reference, num_classes=num_classes))
        return ShadowModels(None, models, inclusion)
    per_stack = models_per_stack or num_models
    if per_stack < num_models:
        stacks = []
        for start in range(0, num_models, per_stack):
            part = train_shadow_models(
                model_fn, features, labels, inclusion[start : start + per_stack], _reseed(config, start),
                num_classes=num_classes, seed=derive_seed(seed, "stack", start),
                masks=None if masks is None else [None if k is None else k[start : start + per_stack] for k in masks],
            )
            stacks.extend(part.stack.to_modules() if isinstance(part.stack, StackedModel) else [part.stack])
        return ShadowModels(None, stacks, inclusion)
    stack = build_stack(model_fn, num_models, seed)
    if masks is not None:
        if not isinstance(stack, StackedModel):
            raise ValueError("masks: per-model masks need an architecture supported by stack_models")
        stack.set_masks(masks)
    fit_stacked(stack, features, labels, inclusion, config, num_classes=num_classes)
    if prune_sparsity is not None:
        if not isinstance(stack, StackedModel):
            raise ValueError("prune_sparsity: stacked pruning needs an architecture supported by stack_models")
        magnitude_prune_stacked(stack, prune_sparsity)
        if prune_finetune_epochs > 0:
            from dataclasses import replace

            finetune = replace(config, epochs=prune_finetune_epochs, seed=derive_seed(config.seed, "finetune"))
            fit_stacked(stack, features, labels, inclusion, finetune, num_classes=num_classes)
    return ShadowModels(stack, None, inclusion)


def magnitude_prune_stacked(stack: StackedModel, sparsity: float, **plan_kwargs) -> list[torch.Tensor]:
    """Give every model of ``stack`` its own magnitude-pruning masks, as ``sparsemia.prune.magnitude``
    would compute them for that model alone (``plan_kwargs``: ``scope``, ``structure``, ``exclude``...).

    Returns the stacked masks (one ``[M, *weight_shape]`` per conv/linear layer), already set on ``stack``.
    """
    from sparsemia.prune.magnitude import plan_masks as plan_masks_for

    layers = [layer for _, layer in stack.stacked_layers()]
    per_layer: list[list[torch.Tensor]] = [[] for _ in layers]
    for m in range(stack.num_models):
        single = stack.unstack(m)
        masks = plan_masks_for(single, sparsity, **plan_kwargs)
        names = [name for name, mod in single.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
        if len(names) != len(layers):
            raise ValueError("stack: its conv/linear layers do not match the unstacked model's")
        for j, name in enumerate(names):
            mask = masks.get(name)
            per_layer[j].append(torch.ones_like(layers[j].weight[m]) if mask is None else mask.to(layers[j].weight.dtype))
    stacked = [torch.stack(ms) for ms in per_layer]
    stack.set_masks(stacked)
    return stacked


def _reseed(config: TrainConfig, offset: int) -> TrainConfig:
    from dataclasses import replace

    return replace(config, seed=derive_seed(config.seed, "model", offset))


@torch.no_grad()
def score_models(shadows: ShadowModels | nn.Module | Sequence[nn.Module], features: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Logits ``[M, K, C]`` (float64 numpy) of every shadow model on every example of ``features``."""
    if isinstance(shadows, ShadowModels):
        if shadows.stack is not None:
            return predict_logits(shadows.stack, features, batch_size).double().numpy()
        shadows = shadows.models or []
    if isinstance(shadows, nn.Module):
        out = predict_logits(shadows, features, batch_size)
        return (out if out.dim() == 3 else out.unsqueeze(0)).double().numpy()
    outs = []
    for model in shadows:
        if isinstance(model, StackedModel | FunctionalStack):
            outs.append(predict_logits(model, features, batch_size))
        else:
            outs.append(predict_logits(model, features, batch_size).unsqueeze(0))
    return torch.cat(outs, 0).double().numpy()

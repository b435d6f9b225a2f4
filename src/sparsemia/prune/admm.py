"""ADMM pruning (Zhang et al. 2018, "A Systematic DNN Weight Pruning Framework using ADMM").

Pruning is posed as ``min loss(W) + Σ_i g_i(Z_i)`` subject to ``W_i = Z_i``, with
``g_i`` the indicator of the sparsity set of layer ``i`` (at most a given
number of nonzero weights, blocks, N:M groups or filters). In scaled form,
each ADMM round

1. trains ``W`` for some epochs on ``loss(W) + extra + Σ_i ρ/2 ‖W_i − Z_i + U_i‖²``,
2. projects ``Z_i = Π(W_i + U_i)`` (keep the largest-magnitude units),
3. updates the scaled dual ``U_i += W_i − Z_i``,

and reports the primal residual ``‖W − Z‖``. ``ρ`` grows over the rounds (the
dual ``U`` is rescaled by ``ρ_old / ρ_new``, as the scaled form requires), which
pulls ``W`` onto the sparsity set. Then ``W`` is hard-pruned to the set and
retrained with the mask fixed.

``extra_loss(model, inputs, targets, outputs)`` is added to the objective in
both phases, so that, for example, a membership-inference adversary's gain can
be minimised jointly with pruning (pruning + Min-Max).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sparsemia.prune.finetune import (
    ExtraLoss,
    LossFn,
    OptimizerFactory,
    make_optimizer,
    train_epochs,
)
from sparsemia.prune.magnitude import magnitude, plan_masks
from sparsemia.prune.masks import adopt_torch_prune
from sparsemia.prune.targets import Exclude

__all__ = ["AdmmRound", "AdmmResult", "admm", "rho_schedule", "DEFAULT_RHO", "DEFAULT_ROUNDS", "DEFAULT_RHO_GROWTH"]

logger = logging.getLogger(__name__)

# The one set of ADMM defaults: the library call, the pruning defenses, `sparsemia prune`
# and the experiment presets all start from these. On LeNet-5 / MNIST at 90% sparsity,
# rho = 0.1 growing 1.5x per round over 6 rounds brings the residual ||W - Z|| within a
# few percent of ||W|| before the hard prune (rho = 1e-3 barely moves W toward Z).
DEFAULT_RHO = 0.1
DEFAULT_ROUNDS = 6
DEFAULT_RHO_GROWTH = 1.5


@dataclass(frozen=True)
class AdmmRound:
    """One ADMM round: the penalty ``rho`` used, mean task loss, and the primal residual after the update."""

    index: int
    rho: float
    loss: float
    residual: float
    relative_residual: float
    layer_residuals: dict[str, float]


@dataclass
class AdmmResult:
    """What :func:`admm` did: one :class:`AdmmRound` per round and the retraining losses per epoch."""

    model: nn.Module
    rounds: list[AdmmRound] = field(default_factory=list)
    retrain_losses: list[float] = field(default_factory=list)

    @property
    def residuals(self) -> list[float]:
        """Primal residual ``‖W − Z‖`` (Frobenius, over all pruned layers) after each round."""
        return [r.residual for r in self.rounds]


def rho_schedule(rho: float | Sequence[float], rounds: int, growth: float) -> list[float]:
    """``rho`` per round: ``rho * growth**k`` from a float, or the given sequence (one value per round)."""
    if isinstance(rho, Sequence) and not isinstance(rho, str):
        values = [float(v) for v in rho]
        if len(values) != rounds:
            raise ValueError(f"rho: expected {rounds} values (one per round), got {len(values)}")
    elif isinstance(rho, int | float) and not isinstance(rho, bool):
        values = [float(rho) * growth**k for k in range(rounds)]
    else:
        raise ValueError(f"rho: expected a positive number or a sequence of them, got {rho!r}")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"rho: expected positive finite values, got {values}")
    return values


def _penalty(
    layers: Mapping[str, nn.Module], Z: Mapping[str, torch.Tensor], U: Mapping[str, torch.Tensor], rho: float
) -> torch.Tensor:
    """The augmented-Lagrangian term ``Σ_i ρ/2 ‖W_i − Z_i + U_i‖²``."""
    return sum((layer.weight - Z[name] + U[name]).pow(2).sum() for name, layer in layers.items()) * (rho / 2)


def _check_count(value: object, argument: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{argument}: expected an int >= {minimum}, got {value!r}")
    return value


def admm(
    model: nn.Module,
    train_loader: Iterable,
    sparsity: float | Mapping[str, float] | None = None,
    *,
    rho: float | Sequence[float] = DEFAULT_RHO,
    rho_growth: float = DEFAULT_RHO_GROWTH,
    rounds: int = DEFAULT_ROUNDS,
    epochs_per_round: int = 1,
    retrain_epochs: int = 5,
    structure: str = "unstructured",
    scope: str = "layer",
    block: tuple[int, int] = (4, 4),
    n: int = 2,
    m: int = 4,
    exclude: Exclude = None,
    loss_fn: LossFn = F.cross_entropy,
    extra_loss: ExtraLoss | None = None,
    optimizer: OptimizerFactory | None = None,
    lr: float = 1e-3,
) -> AdmmResult:
    """Prune ``model`` in place by ADMM, hard-prune it, and retrain it with fixed masks.

    Args:
        model: a (usually trained) model; it is modified in place and returned in the result.
        train_loader: iterable of ``(inputs, targets)`` batches, re-iterated every epoch.
        sparsity, structure, scope, block, n, m, exclude: the sparsity set, as in
            :func:`sparsemia.prune.magnitude` (per-layer dicts give per-layer rates).
        rho: the penalty ``ρ`` of the first round, or one value per round.
        rho_growth: factor by which a float ``rho`` grows each round (``1`` keeps it fixed).
        rounds: ADMM rounds (W-training, Z-projection, U-update).
        epochs_per_round: training epochs in each round's W-step.
        retrain_epochs: masked retraining epochs after the hard prune.
        loss_fn: task loss ``loss_fn(outputs, targets)``.
        extra_loss: ``callable(model, inputs, targets, outputs) -> scalar tensor``
            added to the objective in both phases (e.g. an adversary's gain).
        optimizer: ``callable(parameters) -> torch.optim.Optimizer``; one is made
            for the ADMM phase and a fresh one for retraining. Default Adam(``lr``).
        lr: learning rate of the default optimizer.

    Returns:
        :class:`AdmmResult` with the residual per round (also logged at INFO).
    """
    if train_loader is None:
        raise ValueError("train_loader: expected an iterable of (inputs, targets) batches, got None")
    _check_count(rounds, "rounds", 1)
    _check_count(epochs_per_round, "epochs_per_round", 1)
    _check_count(retrain_epochs, "retrain_epochs", 0)
    if isinstance(rho_growth, bool) or not isinstance(rho_growth, int | float) or not rho_growth >= 1:
        raise ValueError(f"rho_growth: expected a number >= 1, got {rho_growth!r}")
    if extra_loss is not None and not callable(extra_loss):
        raise ValueError(f"extra_loss: expected a callable(model, inputs, targets, outputs) or None, got {extra_loss!r}")
    rhos = rho_schedule(rho, rounds, float(rho_growth))
    adopt_torch_prune(model)
    structure_args = dict(scope=scope, structure=structure, block=block, n=n, m=m, exclude=exclude)

    def project(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        masks = plan_masks(model, sparsity, weights=weights, **structure_args)
        return {name: weights[name] * masks[name] for name in masks}

    layers = {name: model.get_submodule(name) for name in plan_masks(model, sparsity, **structure_args)}
    with torch.no_grad():
        Z = project({name: layer.weight.detach() for name, layer in layers.items()})
    U = {name: torch.zeros_like(z) for name, z in Z.items()}

    result = AdmmResult(model=model)
    admm_optimizer = make_optimizer(model, optimizer, lr)
    for index, rho_now in enumerate(rhos):
        penalty = functools.partial(_penalty, layers, Z, U, rho_now)
        losses = train_epochs(
            model, train_loader, admm_optimizer, epochs_per_round,
            loss_fn=loss_fn, extra_loss=extra_loss, penalty=penalty,
        )  # fmt: skip
        with torch.no_grad():
            W = {name: layer.weight.detach() for name, layer in layers.items()}
            Z = project({name: W[name] + U[name] for name in layers})
            layer_residuals = {}
            for name in layers:
                difference = W[name] - Z[name]
                U[name] += difference
                layer_residuals[name] = float(difference.norm())
            residual = math.sqrt(sum(r * r for r in layer_residuals.values()))
            weight_norm = math.sqrt(sum(float(w.norm()) ** 2 for w in W.values()))
            if index + 1 < rounds:  # scaled dual: u = y / rho, so it follows rho
                for name in U:
                    U[name] *= rho_now / rhos[index + 1]
        result.rounds.append(
            AdmmRound(index, rho_now, losses[-1], residual, residual / max(weight_norm, 1e-12), layer_residuals)
        )
        logger.info("ADMM round %d: rho=%.3g loss=%.4f residual=%.4g", index, rho_now, losses[-1], residual)

    magnitude(model, sparsity, **structure_args)
    if retrain_epochs:
        result.retrain_losses = train_epochs(
            model, train_loader, make_optimizer(model, optimizer, lr), retrain_epochs,
            loss_fn=loss_fn, extra_loss=extra_loss,
        )  # fmt: skip
        logger.info("ADMM retraining: loss %.4f after %d epochs", result.retrain_losses[-1], retrain_epochs)
    return result

"""Defenses for stacked models: M models of one architecture trained together, each under the defense.

A population of target models (or shadow models trained like a defended target)
is many models with the same defense on different subsets of the data. Trained
one at a time, Min-Max and ADMM models cost M times a target; here every
defense of :data:`~sparsemia.train.defenses.DEFENSES` but DP-SGD trains as one
:class:`~sparsemia.nn.stacked.StackedModel` with :func:`~sparsemia.train.fit_stacked`:

* ``none``: plain stacked training;
* ``minmax``: :class:`StackedMinMax`, one Nasr et al. inference model per model, stacked too;
* ``magnitude``: stacked training, then each model pruned by its own weight magnitudes
  (:func:`~sparsemia.mia.shadow.magnitude_prune_stacked`) and fine-tuned with its masks;
* ``admm``: stacked training, then ADMM (Zhang et al. 2018) with one round per epoch,
  each model projected onto its own sparsity set, hard pruning and masked retraining;
* ``+minmax``: the same, with the stacked adversary's gain in every phase's objective.

Every model's loss, penalty and adversary are its own (the stacked loss is their
sum and Adam acts elementwise), so a stacked model trains as its models would
alone, with the steps :func:`~sparsemia.train.fit_stacked` takes; the algorithms
are those of :class:`~sparsemia.train.MinMax`, :class:`~sparsemia.train.Pruning`
and :func:`sparsemia.prune.admm`, the batch orders are not.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsemia.nn.stacked import StackedModel, stack_models
from sparsemia.seeds import derive_seed
from sparsemia.train.defenses import DEFENSES, DefenseOptions, InferenceModel, canonical_defense
from sparsemia.train.trainer import TrainConfig, fit_stacked, fused_optimizer

__all__ = ["StackedMinMax", "train_stacked_defense", "stacked_masks"]

logger = logging.getLogger(__name__)


class StackedMinMax:
    """Adversarial regularization (Nasr et al. 2018) for a stacked model: model m has its own
    inference model ``h_m``, trained on its members and the defender's reference set, exactly as
    :class:`~sparsemia.train.MinMax` does for one model (``k`` steps of ``h`` before each
    classifier step; the classifier's regulariser is ``λ · mean log h_m(f_m(x), y)``).

    An instance is a stacked ``extra_loss(model, inputs, targets, outputs)`` for
    :func:`~sparsemia.train.fit_stacked`; its value is the sum of the models' regularisers.
    """

    name = "minmax"

    def __init__(self, num_models: int, num_classes: int, reference: tuple[torch.Tensor, torch.Tensor], *,
                 lam: float = 1.0, k: int = 1, attack_lr: float = 1e-3, seed: int = 0) -> None:
        if lam < 0:
            raise ValueError(f"lam: expected >= 0, got {lam}")
        if k < 1:
            raise ValueError(f"k: expected >= 1 inference-model steps per classifier step, got {k}")
        ref_x, ref_y = reference
        if ref_x.shape[0] == 0 or ref_x.shape[0] != ref_y.shape[0]:
            raise ValueError("reference: expected a non-empty (features, labels) pair of equal length")
        self.num_models, self.num_classes, self.lam, self.k = num_models, num_classes, lam, k
        self._reference = (ref_x, ref_y)
        models = []
        with torch.random.fork_rng(devices=[]):
            for m in range(num_models):
                torch.manual_seed(derive_seed(seed, "inference-init", m))
                models.append(InferenceModel(num_classes))
        self.prediction = stack_models([m.prediction for m in models])
        self.label = stack_models([m.label for m in models])
        self.combine = stack_models([m.combine for m in models])
        self._parameters = [p for part in (self.prediction, self.label, self.combine) for p in part.parameters()]
        self._optimizer = fused_optimizer(torch.optim.Adam, self._parameters, lr=attack_lr)
        self._generator = torch.Generator().manual_seed(derive_seed(seed, "reference-batches"))

    def inference(self, probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Membership logits ``[M, b]`` of every ``h_m`` on its model's probabilities ``[M, b, C]``."""
        onehot = F.one_hot(labels, self.num_classes).to(probabilities.dtype)
        features = torch.cat([self.prediction(probabilities), self.label(onehot)], dim=-1)
        return self.combine(features).squeeze(-1)

    def _train_inference(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                         outputs: torch.Tensor) -> None:
        ref_x, ref_y = self._reference
        was_training = model.training
        model.eval()
        with torch.no_grad():
            # h sees f's eval-mode outputs; without dropout or batch norm they are the training step's own
            member_p = F.softmax(outputs.detach() if _mode_free(model) else model(inputs), dim=-1)
        for _ in range(self.k):
            pick = torch.randint(0, ref_x.shape[0], targets.shape, generator=self._generator)
            rx, ry = ref_x[pick].to(inputs.device), ref_y[pick].to(inputs.device)
            with torch.no_grad():
                ref_p = F.softmax(model(rx), dim=-1)
            member_logit = self.inference(member_p, targets)
            ref_logit = self.inference(ref_p, ry)
            # −gain per model: BCE with members labelled 1 and reference 0; summed over models
            attack_loss = (
                F.binary_cross_entropy_with_logits(member_logit, torch.ones_like(member_logit), reduction="none").mean(1)
                + F.binary_cross_entropy_with_logits(ref_logit, torch.zeros_like(ref_logit), reduction="none").mean(1)
            ).sum()
            self._optimizer.zero_grad(set_to_none=True)
            attack_loss.backward()
            self._optimizer.step()
        model.train(was_training)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        self._train_inference(model, inputs, targets, outputs)
        for p in self._parameters:
            p.requires_grad_(False)
        try:
            member_logit = self.inference(F.softmax(outputs, dim=-1), targets)
            gain = F.logsigmoid(member_logit).mean(1).sum()  # Σ_m mean log h_m(f_m(x), y)
        finally:
            for p in self._parameters:
                p.requires_grad_(True)
        return self.lam * gain


def _mode_free(model: nn.Module) -> bool:
    """Whether ``model`` computes the same in training and eval mode (a stacked model without dropout or batch norm)."""
    return isinstance(model, StackedModel) and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm | nn.modules.dropout._DropoutNd) for m in model.modules())


def _weight_names(stack: StackedModel) -> tuple[nn.Module, list[str]]:
    single = stack.unstack(0)
    names = [name for name, mod in single.named_modules() if isinstance(mod, nn.Conv2d | nn.Linear)]
    if len(names) != len(list(stack.stacked_layers())):
        raise ValueError("stack: its conv/linear layers do not match the unstacked model's")
    return single, names


def stacked_masks(stack: StackedModel, weights: list[torch.Tensor], sparsity: float, scope: str = "layer") -> list[torch.Tensor]:
    """Per-model magnitude masks of the stacked ``weights`` (one ``[M, *shape]`` per conv/linear layer),
    each model's as :func:`sparsemia.prune.magnitude` plans them for that model alone."""
    from sparsemia.prune.magnitude import plan_masks

    single, names = _weight_names(stack)
    per_layer: list[list[torch.Tensor]] = [[] for _ in names]
    for m in range(stack.num_models):
        masks = plan_masks(single, sparsity, weights={n: w[m] for n, w in zip(names, weights, strict=True)}, scope=scope)
        for j, name in enumerate(names):
            mask = masks.get(name)
            per_layer[j].append(torch.ones_like(weights[j][m]) if mask is None else mask.to(weights[j].dtype))
    return [torch.stack(ms) for ms in per_layer]


def _admm(stack: StackedModel, features, labels, inclusion, config: TrainConfig, opts: DefenseOptions,
          extra, num_classes: int | None) -> list[float]:
    """ADMM rounds on a stacked model (one round per epoch), each model projected onto its own set.

    The scaled form of :func:`sparsemia.prune.admm`: W-step on ``loss + Σ_i ρ/2 ‖W_i − Z_i + U_i‖²``,
    ``Z = Π(W + U)``, ``U += W − Z``, ρ growing by :data:`~sparsemia.prune.admm.DEFAULT_RHO_GROWTH`
    per round with ``U`` rescaled. Returns the primal residual ``‖W − Z‖`` (all models) per round.
    """
    from sparsemia.prune.admm import DEFAULT_RHO_GROWTH, rho_schedule

    layers = [layer for _, layer in stack.stacked_layers()]
    rhos = rho_schedule(opts.admm_rho, opts.admm_rounds, DEFAULT_RHO_GROWTH)
    with torch.no_grad():
        weights = [layer.weight.detach().clone() for layer in layers]
        masks = stacked_masks(stack, weights, opts.sparsity, opts.scope)
        Z = [w * mk for w, mk in zip(weights, masks, strict=True)]
    U = [torch.zeros_like(z) for z in Z]
    state = {"round": 0}
    residuals: list[float] = []

    def objective(model, inputs, targets, outputs):
        rho = rhos[state["round"]]
        penalty = sum((layer.weight - z + u).pow(2).sum() for layer, z, u in zip(layers, Z, U, strict=True)) * (rho / 2)
        return penalty if extra is None else penalty + extra(model, inputs, targets, outputs)

    def end_of_round(epoch: int) -> None:
        index = state["round"]
        with torch.no_grad():
            W = [layer.weight.detach() for layer in layers]
            projected = stacked_masks(stack, [w + u for w, u in zip(W, U, strict=True)], opts.sparsity, opts.scope)
            for j, (w, u, mk) in enumerate(zip(W, U, projected, strict=True)):
                Z[j] = (w + u) * mk
                U[j] += w - Z[j]
            residuals.append(float(sum(float((w - z).pow(2).sum()) for w, z in zip(W, Z, strict=True)) ** 0.5))
            if index + 1 < len(rhos):
                for u in U:
                    u *= rhos[index] / rhos[index + 1]
        state["round"] = min(index + 1, len(rhos) - 1)

    rounds = replace(config, epochs=opts.admm_rounds, seed=derive_seed(config.seed, "admm"))
    fit_stacked(stack, features, labels, inclusion, rounds, num_classes=num_classes, extra_loss=objective,
                epoch_end=end_of_round)
    return residuals


def train_stacked_defense(
    defense: str,
    stack: StackedModel,
    features: torch.Tensor,
    labels: torch.Tensor,
    inclusion: np.ndarray,
    config: TrainConfig,
    *,
    options: DefenseOptions | None = None,
    reference: tuple[torch.Tensor, torch.Tensor] | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> dict:
    """Train every model of ``stack`` under ``defense`` (model m on ``features[inclusion[m]]``), in place.

    ``options`` default to :data:`~sparsemia.train.DEFAULTS`; ``reference`` is the defender's
    reference set (Min-Max); ``seed`` seeds the adversaries. Pruned models keep their masks
    on ``stack`` (``mask`` buffers). Returns what was done (e.g. ADMM's residual per round).
    """
    spec = DEFENSES[canonical_defense(defense)]
    opts = options or DefenseOptions()
    if spec.dpsgd:
        raise ValueError("defense: DP-SGD has no stacked training here (per-example clipping is per model); "
                         "train its models one by one")
    if not isinstance(stack, StackedModel):
        raise ValueError("stack: stacked defenses need an architecture supported by stack_models")
    classes = num_classes or int(labels.max()) + 1
    extra = None
    if spec.minmax:
        if reference is None:
            raise ValueError(f"reference: the {spec.name} defense needs a reference set disjoint from the training sets")
        extra = StackedMinMax(stack.num_models, classes, reference, lam=opts.lam, k=opts.k,
                              seed=derive_seed(seed, "adversary"))
    fit_stacked(stack, features, labels, inclusion, config, num_classes=num_classes, extra_loss=extra)
    info: dict = {}
    if spec.pruning == "admm":
        info["admm_residuals"] = _admm(stack, features, labels, inclusion, config, opts, extra, num_classes)
    if spec.pruning is not None:
        layers = [layer for _, layer in stack.stacked_layers()]
        with torch.no_grad():
            masks = stacked_masks(stack, [layer.weight.detach() for layer in layers], opts.sparsity, opts.scope)
        stack.set_masks(masks)
        if opts.finetune_epochs > 0:
            finetune = replace(config, epochs=opts.finetune_epochs, seed=derive_seed(config.seed, "finetune"))
            fit_stacked(stack, features, labels, inclusion, finetune, num_classes=num_classes, extra_loss=extra)
    return info

"""A small training loop for fine-tuning and retraining pruned models.

Masks need nothing from the loop (they live in the model), so any training
loop keeps them; this one exists so that pruning schedules and ADMM can
retrain without depending on the full trainer, and so that the extra loss term
(for example a membership-inference adversary's gain) has one signature everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ExtraLoss", "LossFn", "OptimizerFactory", "train_epochs", "make_optimizer", "model_device"]

logger = logging.getLogger(__name__)

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``extra_loss(model, inputs, targets, outputs) -> scalar tensor`` added to the training loss."""
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def make_optimizer(model: nn.Module, optimizer: OptimizerFactory | None, lr: float) -> torch.optim.Optimizer:
    """``optimizer(model.parameters())``, or Adam with learning rate ``lr``."""
    if optimizer is None:
        return torch.optim.Adam(model.parameters(), lr=lr)
    return optimizer(model.parameters())


def _scalar(value: torch.Tensor, argument: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        raise ValueError(f"{argument}: expected a callable returning a scalar tensor, got {type(value).__name__}")
    return value.reshape(())


def train_epochs(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    *,
    loss_fn: LossFn = F.cross_entropy,
    extra_loss: ExtraLoss | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> list[float]:
    """Train ``model`` for ``epochs`` passes over ``loader`` of ``(inputs, targets)``; returns mean loss per epoch.

    The minimised loss is ``loss_fn(outputs, targets) + extra_loss(model,
    inputs, targets, outputs) + penalty()``; the reported loss is ``loss_fn``'s alone.
    """
    device = model_device(model)
    model.train()
    history = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            outputs = model(inputs)
            task_loss = loss_fn(outputs, targets)
            loss = task_loss
            if extra_loss is not None:
                loss = loss + _scalar(extra_loss(model, inputs, targets, outputs), "extra_loss")
            if penalty is not None:
                loss = loss + penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(task_loss.detach()) * len(targets)
            count += len(targets)
        history.append(total / max(count, 1))
        logger.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, history[-1])
    return history

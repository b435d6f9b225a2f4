"""Training loops: one model, or many stacked models each on its own data subset.

The defaults follow the membership-inference literature's undefended baselines:
train for a fixed number of epochs with no early stopping, so that an
overfitting model overfits. Seeds fix initialisation, data order and
augmentation; ``deterministic=True`` also makes torch refuse nondeterministic
kernels. Checkpoints are written atomically after each epoch and a run resumes
from the last one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsemia.prune.finetune import ExtraLoss
from sparsemia.seeds import derive_seed

__all__ = [
    "TrainConfig",
    "TrainHistory",
    "ExtraLoss",
    "fit",
    "fit_stacked",
    "evaluate",
    "predict_logits",
    "augment_images",
    "make_optimizer",
    "make_scheduler",
    "deterministic_mode",
    "seed_everything",
]

logger = logging.getLogger(__name__)

_OPTIMIZERS = ("sgd", "adam")
_SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train a model (and its shadow models: they use the same config)."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    step_size: int = 10
    gamma: float = 0.1
    augment: bool = False
    crop_padding: int = 2
    hflip: bool = False
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs: expected >= 0, got {self.epochs}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size: expected > 0, got {self.batch_size}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer: expected one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"schedule: expected one of {_SCHEDULES}, got {self.schedule!r}")
        if self.lr <= 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: expected >= 0, got {self.weight_decay}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding: expected >= 0, got {self.crop_padding}")

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class TrainHistory:
    """Mean training loss and accuracy per epoch (for stacked training: averaged over the models)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed torch's and numpy's global generators (model initialisation uses torch's)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Within the block, make torch use deterministic kernels only (restored afterwards)."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    previous_cudnn = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.benchmark = previous_cudnn


def make_optimizer(params: Sequence[nn.Parameter] | Iterator[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names (SGD with momentum or Adam, with weight decay).

    The fused implementation is used where torch has one (one pass over memory per
    step matters for stacked models with millions of parameters).
    """
    cls = torch.optim.SGD if config.optimizer == "sgd" else torch.optim.Adam
    kwargs: dict = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        kwargs["momentum"] = config.momentum
    return fused_optimizer(cls, params, **kwargs)


def fused_optimizer(cls: type[torch.optim.Optimizer], params: Sequence[torch.Tensor] | Iterator[torch.Tensor],
                    **kwargs) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)``, fused where torch has it for these tensors (one kernel per step instead
    of a dozen small ops per tensor: for the small stacked adversaries and attack models, most of the step)."""
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kwargs)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate schedule: constant, step (``step_size``, ``gamma``) or cosine."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(config.epochs, 1))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def augment_images(x: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``padding`` pixels (zero-padded crop) and optional horizontal flip.

    ``x``: ``[..., C, H, W]``; every image gets its own offsets, drawn from ``generator``.
    """
    if padding == 0 and not hflip:
        return x
    lead, (c, h, w) = x.shape[:-3], x.shape[-3:]
    flat = x.reshape(-1, c, h, w)
    n = flat.shape[0]
    if padding > 0:
        padded = F.pad(flat, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        rows = (torch.arange(h).unsqueeze(0) + dy.unsqueeze(1)).to(x.device)  # [n, h]
        cols = (torch.arange(w).unsqueeze(0) + dx.unsqueeze(1)).to(x.device)  # [n, w]
        idx_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        idx_c = torch.arange(c, device=x.device).view(1, c, 1, 1)
        flat = padded[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        flat = torch.where(flip.view(n, 1, 1, 1), flat.flip(-1), flat)
    return flat.reshape(*lead, c, h, w)


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _check_data(features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"features and labels: lengths differ ({features.shape[0]} vs {labels.shape[0]})")
    if features.shape[0] == 0:
        raise ValueError("features: empty training set")
    if labels.dtype != torch.int64:
        raise ValueError(f"labels: expected int64 class indices, got {labels.dtype}")


def _save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, history: TrainHistory, epoch: int,
                     config: TrainConfig) -> None:
    """Everything needed to resume after ``epoch`` finished epochs, written atomically (safetensors, no pickle)."""
    from sparsemia.io import save_state

    save_state(
        path,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": asdict(history),
            "epoch": epoch,
            "config": config.fingerprint(),
        },
    )


def _resume(path: Path | None, config: TrainConfig, model: nn.Module, optimizer, scheduler) -> tuple[TrainHistory, int]:
    """Restore the checkpoint at ``path`` if there is one: (history, first epoch to run)."""
    from sparsemia.io import load_state

    if path is None or not path.exists():
        return TrainHistory(), 0
    state = load_state(path, what="checkpoint_path")
    if not isinstance(state, dict) or state.get("config") != config.fingerprint():
        raise ValueError(f"checkpoint_path: {path} was written with a different training config")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    logger.info("resuming training from %s at epoch %d", path, state["epoch"])
    return TrainHistory(**state["history"]), int(state["epoch"])


def _check_outputs(outputs: torch.Tensor, num_classes: int | None) -> None:
    if num_classes is not None and outputs.shape[-1] != num_classes:
        raise ValueError(f"model: output size {outputs.shape[-1]} does not match the {num_classes} classes of the data")


def fit(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    extra_loss: ExtraLoss | None = None,
    num_classes: int | None = None,
    checkpoint_path: str | Path | None = None,
) -> TrainHistory:
    """Train ``model`` in place on ``(features, labels)`` for ``config.epochs`` epochs.

    Args:
        extra_loss: ``callable(model, inputs, targets, outputs) -> scalar`` added to
            cross-entropy every step (defenses such as the Min-Max game use it).
        num_classes: if given, the model's output size is checked against it.
        checkpoint_path: if given, model/optimizer/scheduler state is saved there
            after each epoch and training resumes from it.

    Masks held in the model (``sparsemia.prune``) are kept by construction.
    """
    _check_data(features, labels)
    device = _device_of(model)
    with deterministic_mode(config.deterministic):
        torch.manual_seed(config.seed)
        optimizer = make_optimizer(model.parameters(), config)
        scheduler = make_scheduler(optimizer, config)
        ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
        history, start = _resume(ckpt, config, model, optimizer, scheduler)
        n = features.shape[0]
        augment = config.augment and features.dim() == 4
        for epoch in range(start, config.epochs):
            epoch_seed = derive_seed(config.seed, "epoch", epoch)
            generator = torch.Generator().manual_seed(epoch_seed)
            torch.manual_seed(epoch_seed)  # dropout etc.
            order = torch.randperm(n, generator=generator)
            model.train()
            total_loss, correct = 0.0, 0
            for s in range(0, n, config.batch_size):
                idx = order[s : s + config.batch_size]
                inputs, targets = features[idx], labels[idx]
                if augment:
                    inputs = augment_images(inputs, config.crop_padding, config.hflip, generator)
                inputs, targets = inputs.to(device), targets.to(device)
                outputs = model(inputs)
                _check_outputs(outputs, num_classes)
                task_loss = F.cross_entropy(outputs, targets)
                loss = task_loss
                if extra_loss is not None:
                    loss = loss + extra_loss(model, inputs, targets, outputs).reshape(())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(task_loss.detach()) * len(idx)
                correct += int((outputs.detach().argmax(-1) == targets).sum())
            scheduler.step()
            history.loss.append(total_loss / n)
            history.accuracy.append(correct / n)
            logger.info("epoch %d/%d: loss %.4f, accuracy %.1f%%", epoch + 1, config.epochs, history.loss[-1],
                        100 * history.accuracy[-1])
            if ckpt is not None:
                _save_checkpoint(ckpt, model, optimizer, scheduler, history, epoch + 1, config)
    return history


def _subset_indices(subsets: torch.Tensor | Sequence[Sequence[int]], num_examples: int) -> list[torch.Tensor]:
    if isinstance(subsets, torch.Tensor | np.ndarray) and np.asarray(subsets).dtype == bool:
        mask = torch.as_tensor(np.asarray(subsets))
        if mask.dim() != 2 or mask.shape[1] != num_examples:
            raise ValueError(f"subsets: expected a boolean [M, {num_examples}] inclusion matrix, got {tuple(mask.shape)}")
        out = [torch.nonzero(row).flatten() for row in mask]
    else:
        out = [torch.as_tensor(np.asarray(s), dtype=torch.int64).reshape(-1) for s in subsets]
    for m, idx in enumerate(out):
        if idx.numel() == 0:
            raise ValueError(f"subsets: model {m} has an empty training set")
        if idx.min() < 0 or idx.max() >= num_examples:
            raise ValueError(f"subsets: model {m} has indices outside 0..{num_examples - 1}")
    return out


def fit_stacked(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    subsets: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
    config: TrainConfig,
    *,
    num_classes: int | None = None,
    checkpoint_path: str | Path | None = None,
    extra_loss: ExtraLoss | None = None,
    epoch_end: Callable[[int], None] | None = None,
) -> TrainHistory:
    """Train a stacked model (:class:`~sparsemia.nn.stacked.StackedModel` or ``FunctionalStack``).

    Model ``m`` trains on ``features[subsets[m]]`` only, with its own shuffled
    data order and augmentation and the same config (optimizer, schedule,
    epochs, batch size) as :func:`fit` uses for a single model. Every model
    takes ``ceil(max_size / batch)`` steps per epoch; a model whose subset is
    smaller than the largest wraps around within the epoch (with LiRA's
    inclusion the sizes differ by a few percent). The loss is the sum
    of the per-model mean losses, so each model's gradient is its own; SGD and
    Adam act elementwise, so stacking does not couple the models. The data
    order is not the one :func:`fit` would draw, so numbers match a
    one-by-one run in distribution, not bit for bit.

    Args:
        subsets: boolean inclusion matrix ``[M, N]`` or a list of ``M`` index arrays.
        extra_loss: ``callable(model, inputs [M, b, ...], targets [M, b], outputs [M, b, C]) -> scalar``
            added to the loss every step: the sum over models of each model's own term
            (a stacked Min-Max adversary's gain, an ADMM penalty).
        epoch_end: ``callable(epoch)`` run after each epoch (an ADMM round's projection and dual update).
    """
    _check_data(features, labels)
    num_models = int(model.num_models)
    per_model = _subset_indices(subsets, features.shape[0])
    if len(per_model) != num_models:
        raise ValueError(f"subsets: expected {num_models} subsets (one per stacked model), got {len(per_model)}")
    device = _device_of(model)
    max_size = max(int(idx.numel()) for idx in per_model)
    steps = math.ceil(max_size / config.batch_size)
    batch = min(config.batch_size, max_size)
    with deterministic_mode(config.deterministic):
        torch.manual_seed(config.seed)
        optimizer = make_optimizer(model.parameters(), config)
        scheduler = make_scheduler(optimizer, config)
        ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
        history, start = _resume(ckpt, config, model, optimizer, scheduler)
        augment = config.augment and features.dim() == 4
        for epoch in range(start, config.epochs):
            epoch_seed = derive_seed(config.seed, "epoch", epoch)
            generator = torch.Generator().manual_seed(epoch_seed)
            torch.manual_seed(epoch_seed)
            # one order per model; cycled so that every model has steps * batch indices
            orders = []
            for idx in per_model:
                reps = math.ceil(steps * batch / idx.numel())
                orders.append(torch.cat([idx[torch.randperm(idx.numel(), generator=generator)] for _ in range(reps)]))
            order = torch.stack([o[: steps * batch] for o in orders])  # [M, steps*batch]
            model.train()
            total_loss, correct = 0.0, 0
            for s in range(steps):
                idx = order[:, s * batch : (s + 1) * batch]  # [M, b]
                inputs, targets = features[idx], labels[idx]
                if augment:
                    inputs = augment_images(inputs, config.crop_padding, config.hflip, generator)
                inputs, targets = inputs.to(device), targets.to(device)
                outputs = model(inputs)  # [M, b, C]
                _check_outputs(outputs, num_classes)
                per_model_loss = F.cross_entropy(
                    outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1), reduction="none"
                ).view(num_models, -1).mean(1)
                loss = per_model_loss.sum()
                if extra_loss is not None:
                    loss = loss + extra_loss(model, inputs, targets, outputs).reshape(())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(per_model_loss.detach().mean())
                correct += int((outputs.detach().argmax(-1) == targets).sum())
            scheduler.step()
            if epoch_end is not None:
                epoch_end(epoch)
            history.loss.append(total_loss / steps)
            history.accuracy.append(correct / (steps * batch * num_models))
            logger.info("epoch %d/%d of %d stacked models: mean loss %.4f, accuracy %.1f%%", epoch + 1, config.epochs,
                        num_models, history.loss[-1], 100 * history.accuracy[-1])
            if ckpt is not None:
                _save_checkpoint(ckpt, model, optimizer, scheduler, history, epoch + 1, config)
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, features: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` (eval mode) on ``features``, ``[N, classes]``, on the CPU.

    A stacked model (anything with ``forward_shared``) gives ``[M, N, classes]``.
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    stacked = hasattr(model, "forward_shared")
    outs = []
    for s in range(0, features.shape[0], batch_size):
        x = features[s : s + batch_size].to(device)
        out = model.forward_shared(x) if stacked else model(x)
        outs.append(out.float().cpu())
    model.train(was_training)
    return torch.cat(outs, dim=1 if stacked else 0)


@torch.no_grad()
def evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(features, labels)``."""
    _check_data(features, labels)
    logits = predict_logits(model, features, batch_size)
    if logits.dim() == 3:
        raise ValueError("model: evaluate takes a single model; index a stacked model's predict_logits instead")
    return {
        "loss": float(F.cross_entropy(logits, labels)),
        "accuracy": float((logits.argmax(-1) == labels).float().mean()),
    }

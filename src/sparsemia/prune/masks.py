"""Pruning masks: attach, read, make permanent, and adopt masks made elsewhere.

A pruned tensor (usually a layer's ``weight``) is stored as a dense ``original``
parameter and a 0/1 ``mask`` buffer, combined by a ``torch.nn.utils.parametrize``
parametrization: every read of ``module.weight`` computes ``original * mask``.

Why a parametrization and not hooks that re-zero weights after each step:
the effective weight is a product with exact zeros, so it is exactly zero at
pruned positions whatever an optimizer does to ``original`` — SGD momentum
buffers filled before pruning, Adam moments, weight decay — with no hook on any
optimizer and nothing for the training loop to remember. The gradient reaching
``original`` is the weight gradient times the mask, so pruned entries receive
none from the loss.

Why not ``torch.nn.utils.prune``'s own reparametrization (``weight_orig`` /
``weight_mask`` and a forward pre-hook): it stores the product as a plain
attribute computed in the last forward, so after a training step the module
cannot be ``copy.deepcopy``-ed (the attribute is a graph non-leaf) and
``module.weight`` is stale until the next forward. Models pruned with
``torch.nn.utils.prune`` are still accepted: :func:`adopt_torch_prune` moves
their masks onto this mechanism, and every public function here calls it first.

A parametrized module pickles only through ``state_dict()``; call
:func:`remove` before ``torch.save(model)`` (the zeros remain, and
:func:`mask_zeros` turns them back into fixed masks after loading).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

__all__ = [
    "WeightMask",
    "apply_mask",
    "get_mask",
    "is_masked",
    "masks",
    "remove",
    "mask_zeros",
    "adopt_torch_prune",
]

logger = logging.getLogger(__name__)


class WeightMask(nn.Module):
    """Parametrization ``tensor -> tensor * mask`` with a fixed 0/1 mask (a buffer, saved in ``state_dict``)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


def _mask_parametrization(module: nn.Module, name: str) -> WeightMask | None:
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, WeightMask):
            return p
    return None


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` carries a pruning mask (ours or ``torch.nn.utils.prune``'s)."""
    return _mask_parametrization(module, name) is not None or hasattr(module, f"{name}_mask")


def get_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The 0/1 mask of ``module.<name>`` (same shape and dtype as the tensor), or ``None`` if unmasked."""
    p = _mask_parametrization(module, name)
    if p is not None:
        return p.mask
    torch_mask = getattr(module, f"{name}_mask", None)
    return torch_mask if isinstance(torch_mask, torch.Tensor) else None


def _original(module: nn.Module, name: str) -> torch.Tensor:
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)


def apply_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Fix ``module.<name>`` to ``original * mask`` from now on, replacing any earlier mask.

    Entries of ``original`` that are masked now are set to zero, so that a later,
    looser mask revives them from zero rather than from stale values.

    Args:
        module: the layer.
        name: the tensor's attribute name (``"weight"``, ``"bias"``, ...).
        mask: bool or 0/1 tensor of the tensor's shape.
    """
    adopt_torch_prune(module)
    tensor = getattr(module, name)
    if tensor is None:
        raise ValueError(f"name: module {type(module).__name__} has no tensor {name!r}")
    if tuple(mask.shape) != tuple(tensor.shape):
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not match {name} of shape {tuple(tensor.shape)}")
    mask = mask.detach().to(device=tensor.device, dtype=tensor.dtype).clone()
    existing = _mask_parametrization(module, name)
    with torch.no_grad():
        _original(module, name).mul_(mask)
    if existing is not None:
        existing.mask.copy_(mask)
    else:
        parametrize.register_parametrization(module, name, WeightMask(mask))


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """All masks in ``model`` (ours and ``torch.nn.utils.prune``'s), keyed ``"<module>.<tensor>"``, e.g. ``"features.0.weight"``.

    Reading does not change the model.
    """
    found: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        names = list(module.parametrizations) if parametrize.is_parametrized(module) else []
        names += [b[: -len("_mask")] for b, _ in module.named_buffers(recurse=False) if b.endswith("_mask")]
        for tensor_name in names:
            mask = get_mask(module, tensor_name)
            if mask is not None:
                found[f"{module_name}.{tensor_name}" if module_name else tensor_name] = mask
    return found


def remove(model: nn.Module) -> nn.Module:
    """Make every mask in ``model`` permanent: plain parameters that hold exact zeros; returns ``model``.

    Handles masks from :func:`apply_mask` and from ``torch.nn.utils.prune``.
    Parametrizations other than pruning masks are left in place.
    """
    adopt_torch_prune(model)
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(module.parametrizations):
            chain = module.parametrizations[tensor_name]
            if any(not isinstance(p, WeightMask) for p in chain):
                continue  # someone else's parametrization: not ours to bake in
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model


def mask_zeros(model: nn.Module, layer_types: tuple[type[nn.Module], ...] | None = None) -> nn.Module:
    """Fix the zeros already in a dense model's weights as masks, so fine-tuning keeps them; returns ``model``.

    Args:
        model: a model whose ``weight`` tensors contain exact zeros (for example
            one saved after :func:`remove`).
        layer_types: layers to consider; default every ``nn.Linear`` and convolution.
    """
    from sparsemia.prune.targets import PRUNABLE_TYPES

    types = layer_types or PRUNABLE_TYPES
    for module in model.modules():
        if isinstance(module, types) and not is_masked(module, "weight"):
            weight = module.weight
            if bool((weight == 0).any()):
                apply_mask(module, "weight", weight != 0)
    return model


def adopt_torch_prune(model: nn.Module) -> nn.Module:
    """Move masks made by ``torch.nn.utils.prune`` (``weight_orig`` / ``weight_mask``) onto :class:`WeightMask`.

    The effective tensor is unchanged; only the mechanism that keeps it masked
    changes. Returns ``model``.
    """
    for module in model.modules():
        hooks = [h for h in module._forward_pre_hooks.values() if isinstance(h, torch_prune.BasePruningMethod)]
        if not hooks:
            continue
        names = {h._tensor_name for h in hooks}
        for name in names:
            mask = getattr(module, f"{name}_mask").detach().clone()
            torch_prune.remove(module, name)  # leaves a plain parameter equal to orig * mask
            parametrize.register_parametrization(module, name, WeightMask(mask.to(getattr(module, name).dtype)))
            logger.debug("adopted torch.nn.utils.prune mask of %s.%s", type(module).__name__, name)
    return model

"""Filter (output-channel) pruning that keeps a network consistent, and physical shrinking.

The model is traced with ``torch.fx`` to find *channel groups*: a producer (a
convolution with ``groups=1`` or a linear layer) whose output channels flow,
through BatchNorm, activations with ``f(0) = 0``, pooling, dropout, depthwise
convolutions and a channels-first flatten, into the inputs of other
convolutions or linear layers and nowhere else. Removing a channel of such a
group touches: the producer's filter and bias, the channel of every BatchNorm
and depthwise convolution on the way, and the matching input channels (input
columns, after a flatten) of every consumer.

Channels that reach a residual addition, a concatenation, the model output or
anything not understood are *coupled* to other layers and are not pruned. For
ResNet this leaves the residual stream and prunes the first conv of each basic
block (as in Li et al. 2017); for MobileNetV2 it prunes the expanded channels
of each inverted residual (expand 1×1 → depthwise 3×3 → project 1×1) and the
last 1×1 conv before the classifier; for VGG it prunes every conv.

Pruning first *masks* a channel: the producer's filter and bias and every
BatchNorm's ``weight`` and ``bias`` on the way are masked, so the channel is
exactly zero after any fine-tuning. :func:`shrink` then removes the zero
channels, giving a smaller dense model with the same function.
"""

from __future__ import annotations

import logging
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from sparsemia.prune.masks import apply_mask, remove

__all__ = ["ChannelGroup", "channel_groups", "mask_channels", "shrink"]

logger = logging.getLogger(__name__)

# Modules and functions that map a zero channel to a zero channel and keep channel positions.
_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.ELU, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.relu6, torch.tanh, F.tanh, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu,
    F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}  # fmt: skip
_ELEMENTWISE_METHODS = {"relu", "relu_", "tanh", "contiguous"}


@dataclass
class ChannelGroup:
    """The layers that share one producer's output channels.

    Attributes:
        producer: name of the layer whose output channels (weight dim 0) are pruned.
        channels: how many there are.
        batchnorms: names of BatchNorm layers on those channels.
        depthwise: names of depthwise convolutions on those channels.
        consumers: ``(name, columns per channel)`` of the layers reading them
            (columns per channel > 1 after a flatten of a spatial map).
    """

    producer: str
    channels: int
    batchnorms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)


class _Coupled(Exception):
    """The producer's channels reach something that is not safe to prune through."""


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, _ConvNd) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _is_dense_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, _ConvNd) and module.groups == 1)


def _flatten_start(node: torch.fx.Node) -> int | None:
    """``start_dim`` if ``node`` is a flatten keeping the batch dimension, else ``None``."""
    args = list(node.args[1:]) + [node.kwargs.get("start_dim")]
    start = next((a for a in args if a is not None), 0)
    end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
    return start if start == 1 and end == -1 else None


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types; all mean the same thing here
        raise ValueError(
            f"structure: 'filter' needs a model that torch.fx can trace, and tracing "
            f"{type(model).__name__} failed ({type(error).__name__}: {error})"
        ) from error


def _follow(
    start: torch.fx.Node, modules: dict[str, nn.Module], calls: Counter, group: ChannelGroup
) -> None:
    """Walk every path from ``start`` to the consumers, filling ``group``; raise :class:`_Coupled` if unsafe."""
    producer_is_linear = isinstance(modules[group.producer], nn.Linear)
    stack: list[tuple[torch.fx.Node, bool]] = [(start, False)]  # (node, flattened)
    seen: set[torch.fx.Node] = set()
    while stack:
        node, flattened = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for user in node.users:
            if user.args[:1] != (node,) or any(a is node for a in list(user.args[1:]) + list(user.kwargs.values())):
                raise _Coupled(f"{user.name} uses the channels other than as its only input")
            if user.op == "call_module":
                module = modules[str(user.target)]
                if calls[user.target] != 1:
                    raise _Coupled(f"{user.target} is called more than once")
                if _is_dense_layer(module):
                    if isinstance(module, nn.Linear):
                        if not (flattened or producer_is_linear) or module.in_features % group.channels:
                            raise _Coupled(f"{user.target} does not read the channels as whole columns")
                        group.consumers.append((str(user.target), module.in_features // group.channels))
                    else:
                        if flattened or producer_is_linear or module.in_channels != group.channels:
                            raise _Coupled(f"{user.target} does not read the channels as input channels")
                        group.consumers.append((str(user.target), 1))
                elif isinstance(module, _BatchNorm) and module.affine and not flattened:
                    group.batchnorms.append(str(user.target))
                    stack.append((user, flattened))
                elif _is_depthwise(module) and module.in_channels == group.channels and not flattened:
                    group.depthwise.append(str(user.target))
                    stack.append((user, flattened))
                elif isinstance(module, _ELEMENTWISE_MODULES):
                    stack.append((user, flattened))
                elif isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
                    stack.append((user, True))
                else:
                    raise _Coupled(f"{user.target} ({type(module).__name__}) is not understood")
            elif user.op == "call_function" and user.target in _ELEMENTWISE_FUNCTIONS:
                stack.append((user, flattened))
            elif user.op == "call_function" and user.target is torch.flatten and _flatten_start(user) is not None:
                stack.append((user, True))
            elif user.op == "call_method" and user.target in _ELEMENTWISE_METHODS:
                stack.append((user, flattened))
            elif user.op == "call_method" and user.target == "flatten" and _flatten_start(user) is not None:
                stack.append((user, True))
            else:
                kind = "a residual addition" if user.target in (operator.add, torch.add) else f"{user.op} {user.target}"
                raise _Coupled(f"the channels reach {kind}")


def channel_groups(model: nn.Module) -> dict[str, ChannelGroup]:
    """The filter-prunable layers of ``model`` and what removing their output channels touches.

    Layers whose channels are coupled (residual additions, model outputs, ...)
    are absent. Raises ``ValueError`` if the model cannot be traced by ``torch.fx``.
    """
    graph = _trace(model).graph
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    groups: dict[str, ChannelGroup] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not _is_dense_layer(modules[str(node.target)]):
            continue
        name = str(node.target)
        module = modules[name]
        channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        group = ChannelGroup(producer=name, channels=channels)
        try:
            if calls[node.target] != 1:
                raise _Coupled("called more than once")
            _follow(node, modules, calls, group)
            if not group.consumers:
                raise _Coupled("no layer reads the channels")
        except _Coupled as reason:
            logger.debug("filter pruning skips %s: %s", name, reason)
            continue
        groups[name] = group
    return groups


def mask_channels(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Mask the output channels of ``group.producer`` where ``keep`` is ``False``, everywhere they live.

    Masks the producer's filters and bias, and the ``weight`` / ``bias`` of
    every BatchNorm and depthwise convolution on the channels, so that the
    channels are exactly zero at the consumers' inputs.
    """
    keep = keep.to(torch.bool)

    def mask_param(module: nn.Module, name: str) -> None:
        tensor = getattr(module, name, None)
        if tensor is None:
            return
        shape = (-1,) + (1,) * (tensor.dim() - 1)
        apply_mask(module, name, keep.to(tensor.device).reshape(shape).expand_as(tensor))

    for layer in [group.producer, *group.depthwise, *group.batchnorms]:
        module = model.get_submodule(layer)
        mask_param(module, "weight")
        mask_param(module, "bias")


def _zero_channels(model: nn.Module, group: ChannelGroup, order: list[str]) -> torch.Tensor:
    """Bool ``[channels]``: which channels are provably zero where the consumers read them."""

    def zero_rows(tensor: torch.Tensor | None) -> torch.Tensor:
        if tensor is None:
            return torch.ones(group.channels, dtype=torch.bool)
        return (tensor.detach().reshape(group.channels, -1) == 0).all(dim=1).cpu()

    producer = model.get_submodule(group.producer)
    zero = zero_rows(producer.weight) & zero_rows(producer.bias)
    # Walk the chain in graph order: a BatchNorm with weight = bias = 0 outputs zero whatever
    # its input; a depthwise conv outputs zero if its input or its filter is zero and it has no bias.
    for name in order:
        module = model.get_submodule(name)
        if name in group.batchnorms:
            zero = zero_rows(module.weight) & zero_rows(module.bias)
        elif name in group.depthwise:
            zero = (zero | zero_rows(module.weight)) & zero_rows(module.bias)
    return zero


def _new_conv(conv: _ConvNd, out_index: torch.Tensor, in_index: torch.Tensor, depthwise: bool) -> _ConvNd:
    weight = conv.weight.detach()
    if depthwise:
        new_weight = weight[out_index]
        in_channels = out_channels = groups = len(out_index)
    else:
        new_weight = weight[out_index][:, in_index]
        in_channels, out_channels, groups = len(in_index), len(out_index), 1
    new = type(conv)(
        in_channels, out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        device=weight.device, dtype=weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(new_weight)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[out_index])
    return new


def _new_linear(linear: nn.Linear, out_index: torch.Tensor, in_columns: torch.Tensor) -> nn.Linear:
    weight = linear.weight.detach()
    new = nn.Linear(len(in_columns), len(out_index), bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight[out_index][:, in_columns])
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach()[out_index])
    return new


def _new_batchnorm(bn: _BatchNorm, index: torch.Tensor) -> _BatchNorm:
    new = type(bn)(
        len(index), eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats,
        device=bn.weight.device, dtype=bn.weight.dtype,
    )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(bn.weight.detach()[index])
        new.bias.copy_(bn.bias.detach()[index])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[index])
            new.running_var.copy_(bn.running_var[index])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new.train(model.get_submodule(name).training)
    setattr(parent, child, new)


def shrink(model: nn.Module) -> nn.Module:
    """Remove the zero output channels of every channel group, in place; returns ``model``.

    A channel is removed where it is provably zero at its consumers' inputs
    (typically after :func:`sparsemia.prune.magnitude` with
    ``structure="filter"``), so the smaller model computes exactly what the
    masked one did (up to floating-point summation order). Masks are made
    permanent first (:func:`sparsemia.prune.remove`). A group keeps at least one
    channel.
    """
    remove(model)
    groups = channel_groups(model)
    graph_order = {
        str(node.target): i for i, node in enumerate(_trace(model).graph.nodes) if node.op == "call_module"
    }
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, tuple[torch.Tensor, int]] = {}
    for group in groups.values():
        chain = sorted(group.batchnorms + group.depthwise, key=graph_order.__getitem__)
        alive = ~_zero_channels(model, group, chain)
        if not alive.any():
            alive[0] = True  # a layer with no channels is not a layer
        if alive.all():
            continue
        index = alive.nonzero().flatten()
        out_keep[group.producer] = index
        for name in chain:
            out_keep[name] = index
        for consumer, columns in group.consumers:
            in_keep[consumer] = (index, columns)
        logger.info("shrink: %s keeps %d of %d channels", group.producer, len(index), group.channels)

    for name in set(out_keep) | set(in_keep):
        module = model.get_submodule(name)
        out_index = out_keep.get(name)
        if isinstance(module, _BatchNorm):
            _replace(model, name, _new_batchnorm(module, out_index))
            continue
        rows = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        if out_index is None:
            out_index = torch.arange(rows)
        if isinstance(module, nn.Linear):
            if name in in_keep:
                index, columns = in_keep[name]
                in_columns = (index[:, None] * columns + torch.arange(columns)).flatten()
            else:
                in_columns = torch.arange(module.in_features)
            _replace(model, name, _new_linear(module, out_index, in_columns))
        else:
            in_index = in_keep[name][0] if name in in_keep else torch.arange(module.in_channels)
            _replace(model, name, _new_conv(module, out_index, in_index, _is_depthwise(module)))
    return model

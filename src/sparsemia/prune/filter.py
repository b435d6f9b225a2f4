"""Filter (output-channel) pruning that keeps a network consistent, and physical shrinking.

The model is traced with ``torch.fx`` to find *channel groups*. A producer (a
convolution with ``groups=1`` or a linear layer) owns a space of channels that
flows through BatchNorm, activations with ``f(0) = 0``, pooling, dropout,
depthwise convolutions and a channels-first flatten into the inputs of other
convolutions or linear layers. Producers whose channels are summed (residual
additions) share one space and are pruned together: a channel removed from one
is removed from all, so the residual stream stays aligned. Removing a channel
touches every producer's filter and bias, the channel of every BatchNorm and
depthwise convolution on the way, and the matching input channels (input
columns, after a flatten) of every consumer.

Channels that reach the model output, a concatenation, a reshape or anything
not understood, or a sum with something that is not a producer's output (the
model input), are not pruned. For ResNet this gives one group per basic
block's inner channels and one per stage's residual stream (stem or 1×1
shortcut conv plus every block's second conv); for MobileNetV2 one per inverted
residual's expanded channels (expand 1×1 → depthwise 3×3 → project 1×1) and
one per stage's bottleneck stream; for VGG one per conv.

Pruning first *masks* channels (:func:`mask_channels`): every producer's filter
and bias and every BatchNorm's ``weight`` and ``bias`` on the way are masked, so
the channels stay exactly zero through any fine-tuning. :func:`shrink` then
removes the zero channels, giving a smaller dense model with the same function.
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
from sparsemia.prune.structures import keep_highest, units_to_prune

__all__ = ["ChannelGroup", "channel_groups", "unique_groups", "plan_filters", "mask_channels", "shrink"]

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
    """Layers that share one space of channels, pruned together.

    Usually one producer; several when their outputs are summed (a residual
    addition), in which case a channel is removed from all of them at once.

    Attributes:
        producers: names of the layers whose output channels (weight dim 0) are pruned.
        channels: how many channels there are.
        batchnorms: names of BatchNorm layers on those channels.
        depthwise: names of depthwise convolutions on those channels.
        consumers: ``(name, columns per channel)`` of the layers reading them
            (columns per channel > 1 after a flatten of a spatial map).
    """

    producers: list[str]
    channels: int
    batchnorms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    # fx node names carrying the channels, in graph order, and those the consumers read
    nodes: list[str] = field(default_factory=list, repr=False)
    reads: list[str] = field(default_factory=list, repr=False)


class _Coupled(Exception):
    """The channels reach something that is not safe to prune through."""


@dataclass
class _Walk:
    """What one producer's channels reach (before merging producers joined by additions)."""

    producer: str
    channels: int
    visited: set[torch.fx.Node] = field(default_factory=set)
    additions: set[torch.fx.Node] = field(default_factory=set)
    batchnorms: list[str] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)
    reads: set[torch.fx.Node] = field(default_factory=set)
    error: str | None = None


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, _ConvNd) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _is_dense_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, _ConvNd) and module.groups == 1)


def _is_addition(node: torch.fx.Node) -> bool:
    if node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add):
        return not node.kwargs and len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args)
    if node.op == "call_method" and node.target in ("add", "add_"):
        return not node.kwargs and len(node.args) == 2 and all(isinstance(a, torch.fx.Node) for a in node.args)
    return False


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


def _follow(start: torch.fx.Node, modules: dict[str, nn.Module], calls: Counter, walk: _Walk) -> None:
    """Walk every path from ``start`` to the consumers, filling ``walk``; raise :class:`_Coupled` if unsafe."""
    producer_is_linear = isinstance(modules[walk.producer], nn.Linear)
    stack: list[tuple[torch.fx.Node, bool]] = [(start, False)]  # (node, flattened)
    while stack:
        node, flattened = stack.pop()
        if node in walk.visited:
            continue
        walk.visited.add(node)
        for user in node.users:
            if _is_addition(user):
                if flattened:
                    raise _Coupled(f"{user.name} adds flattened channels")
                walk.additions.add(user)
                stack.append((user, flattened))
                continue
            if user.args[:1] != (node,) or any(a is node for a in list(user.args[1:]) + list(user.kwargs.values())):
                raise _Coupled(f"{user.name} uses the channels other than as its only input")
            if user.op == "call_module":
                module = modules[str(user.target)]
                if calls[user.target] != 1:
                    raise _Coupled(f"{user.target} is called more than once")
                if _is_dense_layer(module):
                    if isinstance(module, nn.Linear):
                        if not (flattened or producer_is_linear) or module.in_features % walk.channels:
                            raise _Coupled(f"{user.target} does not read the channels as whole columns")
                        walk.consumers.append((str(user.target), module.in_features // walk.channels))
                    else:
                        if flattened or producer_is_linear or module.in_channels != walk.channels:
                            raise _Coupled(f"{user.target} does not read the channels as input channels")
                        walk.consumers.append((str(user.target), 1))
                    walk.reads.add(node)
                elif isinstance(module, _BatchNorm) and module.affine and not flattened:
                    walk.batchnorms.append(str(user.target))
                    stack.append((user, flattened))
                elif _is_depthwise(module) and module.in_channels == walk.channels and not flattened:
                    walk.depthwise.append(str(user.target))
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
                raise _Coupled(f"the channels reach {user.op} {user.target}")


def _merge(walks: list[_Walk], order: dict[torch.fx.Node, int]) -> ChannelGroup | None:
    """One group from walks joined by additions, or ``None`` (with a debug log) if it cannot be pruned."""
    names = [w.producer for w in walks]
    reason = next((f"{w.producer}: {w.error}" for w in walks if w.error), None)
    visited = set().union(*(w.visited for w in walks))
    if reason is None:
        for addition in set().union(*(w.additions for w in walks)):
            outside = [a for a in addition.args if a not in visited]
            if outside:
                reason = f"{addition.name} also adds {outside[0].name}, which is not a pruned layer's output"
    if reason is None and len({w.channels for w in walks}) > 1:
        reason = "the added layers have different channel counts"
    consumers = list(dict.fromkeys(c for w in walks for c in w.consumers))
    if reason is None and not consumers:
        reason = "no layer reads the channels"
    if reason is not None:
        logger.debug("filter pruning skips %s: %s", names, reason)
        return None

    def unique(items: list[str]) -> list[str]:
        return list(dict.fromkeys(items))

    nodes = sorted(visited, key=order.__getitem__)
    return ChannelGroup(
        producers=names,
        channels=walks[0].channels,
        batchnorms=unique([b for w in walks for b in w.batchnorms]),
        depthwise=unique([d for w in walks for d in w.depthwise]),
        consumers=consumers,
        nodes=[n.name for n in nodes],
        reads=[n.name for n in nodes if any(n in w.reads for w in walks)],
    )


def channel_groups(model: nn.Module) -> dict[str, ChannelGroup]:
    """The filter-prunable layers of ``model``, each mapped to its :class:`ChannelGroup`.

    Producers joined by a residual addition map to the same group. Layers
    whose channels reach the model output or anything not understood are
    absent. Raises ``ValueError`` if the model cannot be traced by ``torch.fx``.
    """
    graph = _trace(model).graph
    modules = dict(model.named_modules())
    order = {node: i for i, node in enumerate(graph.nodes)}
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    walks: list[_Walk] = []
    for node in graph.nodes:
        if node.op != "call_module" or not _is_dense_layer(modules[str(node.target)]):
            continue
        module = modules[str(node.target)]
        channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        walk = _Walk(producer=str(node.target), channels=channels)
        try:
            if calls[node.target] != 1:
                raise _Coupled("called more than once")
            _follow(node, modules, calls, walk)
        except _Coupled as reason:
            walk.error = str(reason)
        walks.append(walk)

    # Producers whose channels meet (at an addition, and everything after it) form one group.
    parent = list(range(len(walks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_walk: dict[torch.fx.Node, int] = {}
    for i, walk in enumerate(walks):
        for node in walk.additions:
            parent[root(i)] = root(first_walk.setdefault(node, i))
    members: dict[int, list[_Walk]] = {}
    for i, walk in enumerate(walks):
        members.setdefault(root(i), []).append(walk)

    groups: dict[str, ChannelGroup] = {}
    for joined in members.values():
        group = _merge(joined, order)
        if group is not None:
            groups.update(dict.fromkeys(group.producers, group))
    return dict(sorted(groups.items(), key=lambda item: order[_node_by_target(graph, item[0])]))


def _node_by_target(graph: torch.fx.Graph, target: str) -> torch.fx.Node:
    return next(n for n in graph.nodes if n.op == "call_module" and n.target == target)


def unique_groups(groups: dict[str, ChannelGroup]) -> list[ChannelGroup]:
    """Each group once, in the order of its first producer."""
    return list({id(g): g for g in groups.values()}.values())


def _row_scores(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1).abs().float().mean(dim=1)


def plan_filters(
    model: nn.Module,
    targets: dict[str, float],
    scope: str,
    weights: dict[str, torch.Tensor] | None = None,
    explicit: bool = False,
) -> dict[str, torch.Tensor]:
    """Bool weight masks (whole rows) of the producers to filter-prune, by name.

    A group is scored by the sum over its producers of each filter's mean
    ``|w|``. A group joined by an addition is pruned only if all its producers
    are targeted, with one sparsity: when ``explicit`` (a per-layer dict) a
    partial or inconsistent request is an error; otherwise (a float with
    ``exclude``) such a group is left alone.
    """
    groups = channel_groups(model)
    chosen: list[tuple[ChannelGroup, float]] = []
    for group in unique_groups({name: groups[name] for name in targets}):
        requested = {p: targets[p] for p in group.producers if p in targets}
        if len(requested) < len(group.producers) or len(set(requested.values())) > 1:
            if explicit:
                raise ValueError(
                    f"sparsity: layers {group.producers} share output channels through a residual addition "
                    f"and are pruned together; give all of them the same sparsity (got {requested})"
                )
            logger.info("filter pruning skips %s: coupled with an excluded layer", group.producers)
            continue
        chosen.append((group, next(iter(requested.values()))))

    def tensor(name: str) -> torch.Tensor:
        return weights[name] if weights is not None else model.get_submodule(name).weight

    scores = [sum(_row_scores(tensor(p)).cpu() for p in group.producers) for group, _ in chosen]
    if scope == "layer":
        keeps = [keep_highest(s, units_to_prune(sparsity, s.numel())) for s, (_, sparsity) in zip(scores, chosen, strict=True)]
    elif chosen:
        pooled = torch.cat(scores)
        keep = keep_highest(pooled, units_to_prune(chosen[0][1], pooled.numel()))
        keeps = list(keep.split([s.numel() for s in scores]))
    else:
        keeps = []
    masks: dict[str, torch.Tensor] = {}
    for (group, _), keep in zip(chosen, keeps, strict=True):
        for name in group.producers:
            weight = tensor(name)
            shape = (-1,) + (1,) * (weight.dim() - 1)
            masks[name] = keep.to(weight.device).reshape(shape).expand_as(weight)
    return masks


def mask_channels(model: nn.Module, group: ChannelGroup, keep: torch.Tensor) -> None:
    """Mask the channels of ``group`` where ``keep`` is ``False``, everywhere they live.

    Masks every producer's filters and bias, and the ``weight`` / ``bias`` of
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

    for layer in [*group.producers, *group.depthwise, *group.batchnorms]:
        module = model.get_submodule(layer)
        mask_param(module, "weight")
        mask_param(module, "bias")


def _zero_channels(model: nn.Module, graph: torch.fx.Graph, group: ChannelGroup) -> torch.Tensor:
    """Bool ``[channels]``: which channels are provably zero wherever the consumers read them.

    Evaluated along the group's nodes in graph order: a producer's channel is
    zero if its filter and bias are; a BatchNorm with weight = bias = 0 outputs
    zero whatever its input; a depthwise conv outputs zero if its input or its
    filter is zero and its bias is; a sum is zero where all its terms are.
    """

    def zero_rows(tensor: torch.Tensor | None) -> torch.Tensor:
        if tensor is None:
            return torch.ones(group.channels, dtype=torch.bool)
        return (tensor.detach().reshape(group.channels, -1) == 0).all(dim=1).cpu()

    by_name = {node.name: node for node in graph.nodes}
    zero: dict[str, torch.Tensor] = {}
    for name in group.nodes:
        node = by_name[name]
        target = str(node.target)
        inputs = [zero[a.name] for a in node.args if isinstance(a, torch.fx.Node) and a.name in zero]
        if node.op == "call_module" and (target in group.producers or target in group.batchnorms):
            module = model.get_submodule(target)
            zero[name] = zero_rows(module.weight) & zero_rows(module.bias)
        elif node.op == "call_module" and target in group.depthwise:
            module = model.get_submodule(target)
            zero[name] = (inputs[0] | zero_rows(module.weight)) & zero_rows(module.bias)
        else:  # activation, pooling, flatten (channel blocks stay in place) or an addition
            zero[name] = torch.stack(inputs).all(dim=0)
    return torch.stack([zero[name] for name in group.reads]).all(dim=0)


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
    """Remove the zero channels of every channel group, in place; returns ``model``.

    A channel is removed where it is provably zero at its consumers' inputs
    (typically after :func:`sparsemia.prune.magnitude` with
    ``structure="filter"``), so the smaller model computes what the masked one
    did (up to floating-point summation order). Masks are made permanent first
    (:func:`sparsemia.prune.remove`). A group keeps at least one channel.
    """
    remove(model)
    graph = _trace(model).graph
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, tuple[torch.Tensor, int]] = {}
    for group in unique_groups(channel_groups(model)):
        alive = ~_zero_channels(model, graph, group)
        if not alive.any():
            alive[0] = True  # a layer with no channels is not a layer
        if alive.all():
            continue
        index = alive.nonzero().flatten()
        for name in [*group.producers, *group.batchnorms, *group.depthwise]:
            out_keep[name] = index
        for consumer, columns in group.consumers:
            in_keep[consumer] = (index, columns)
        logger.info("shrink: %s keep %d of %d channels", group.producers, len(index), group.channels)

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

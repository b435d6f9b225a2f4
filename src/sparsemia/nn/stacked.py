"""Stacked models: many models of one architecture computed together.

LiRA and RMIA want 64–256 shadow / reference models. Training and scoring them one
at a time wastes most of a CPU on per-call overhead and on layers too narrow to
fill the vector units (LeNet-5's first conv has 6 output channels). A
:class:`StackedModel` holds the parameters of ``M`` models with a leading model
dimension and computes all of them in one pass:

* convolutions are grouped convolutions (``groups=M``) on activations laid out as
  ``[B, M*C, H, W]`` (model-major channels). In inference on the CPU, layers with
  few input channels per model (LeNet-5's) or pruned weights run on sparsemia's
  direct sparse convolution, each model's taps (only the kept ones, when masked)
  stored as one CSR weight, with a following ReLU + max-pool fused in; others
  run oneDNN's grouped convolution, channels-last in memory;
* linear layers are batched matmuls (``baddbmm``) on ``[M, B, F]``;
* a first convolution that every model applies to the *same* input (scoring) is
  one convolution with ``M`` times the output channels, no grouping; followed by
  ReLU and a 2×2 max-pool it is fused (the sparse kernel's epilogue on the CPU;
  elsewhere ``max over the four pool offsets of (patches @ W)``, exact since
  max-pool commutes with the per-channel bias and ReLU is monotone);
* batch norm over ``M*C`` channels is exactly per-model batch norm.

Each model may carry its own pruning mask per weight (``mask`` buffers with the
weight's stacked shape); masked weights are ``weight * mask`` in every forward,
so masked entries stay zero in outputs and receive zero gradient.

Models are stacked from ordinary modules (:func:`stack_models`) and taken apart
again (:meth:`StackedModel.unstack`). Supported are sequential architectures
(``nn.Sequential`` trees and :class:`~sparsemia.models.LeNet5`,
:class:`~sparsemia.models.VGG16`, :class:`~sparsemia.models.MLP`) made of
``Conv2d`` (groups=1), ``Linear``, ``BatchNorm2d``, pooling, ``Flatten``,
``Dropout`` and elementwise activations. For any other architecture,
:class:`FunctionalStack` uses ``torch.func.stack_module_state`` + ``vmap``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsemia.cache import TensorCache
from sparsemia.nn.convert import pool_size

__all__ = [
    "StackedConv2d",
    "StackedLinear",
    "StackedBatchNorm2d",
    "StackedFlatten",
    "StackedModel",
    "FunctionalStack",
    "stack_models",
]

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Identity, nn.Dropout)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _sequential_models() -> tuple[type, ...]:
    from sparsemia.models import MLP, VGG16, LeNet5

    return (LeNet5, VGG16, MLP)


# The direct sparse convolution beats oneDNN's grouped convolution when each model
# sees few input channels, or when the stacked weight is mostly pruned.
_SPARSE_KERNEL_MAX_CIN = 16
_SPARSE_KERNEL_MAX_DENSITY = 0.4
# Stacked weights as CSR, per weight (and mask) tensor, while unmodified.
_SPARSE_WEIGHTS: TensorCache = TensorCache(16)


class StackedConv2d(nn.Module):
    """``M`` independent ``Conv2d`` layers (groups=1) as one grouped convolution.

    Parameters: ``weight`` ``[M, O, C, kh, kw]``, ``bias`` ``[M, O]`` or None,
    optional ``mask`` buffer shaped like ``weight`` (1 keeps, 0 prunes).
    Input/output layout ``[B, M*C, H, W]`` (model-major channels).
    """

    def __init__(self, num_models: int, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError(f"conv: grouped convolutions (groups={conv.groups}) cannot be stacked; use FunctionalStack")
        if isinstance(conv.padding, str):
            raise ValueError("conv: string padding is not supported in stacked models; use integer padding")
        self.num_models = num_models
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)
        shape = (num_models, *conv.weight.shape)
        self.weight = nn.Parameter(torch.empty(shape, dtype=conv.weight.dtype))
        self.bias = nn.Parameter(torch.empty(num_models, conv.out_channels)) if conv.bias is not None else None
        self.register_buffer("mask", None)

    def effective_weight(self) -> torch.Tensor:
        """The stacked weight with pruned entries zeroed, ``[M, O, C, kh, kw]``."""
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.uses_sparse_kernel(h):
            return self.forward_sparse(h, self.num_models)
        w = self.effective_weight().reshape(-1, self.in_channels, *self.kernel_size)
        b = None if self.bias is None else self.bias.reshape(-1)
        return F.conv2d(h, w, b, self.stride, self.padding, self.dilation, groups=self.num_models)

    # ---- inference on sparsemia's CPU convolution kernel
    def uses_sparse_kernel(self, h: torch.Tensor) -> bool:
        """Whether ``h`` goes through the direct sparse convolution: CPU inference (no gradient
        needed), float32/64, the extension loaded, and few input channels or a mostly pruned weight."""
        from sparsemia import ops

        if h.device.type != "cpu" or h.dtype not in (torch.float32, torch.float64) or ops.extension.module() is None:
            return False
        if torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        if self.in_channels <= _SPARSE_KERNEL_MAX_CIN:
            return True
        return self.mask is not None and float(self.mask.mean()) <= _SPARSE_KERNEL_MAX_DENSITY

    def sparse_weight(self):
        """The stacked weight ``[M*O, C, kh, kw]`` (masked entries dropped) as a CSR
        :class:`~sparsemia.SparseWeight`, rebuilt only when the weight or mask changed."""
        from sparsemia.formats import SparseWeight

        mask = self.mask

        def build() -> SparseWeight:
            w = self.weight.detach().reshape(-1, self.in_channels, *self.kernel_size)
            m = None if mask is None else mask.reshape(w.shape) != 0
            return SparseWeight.from_dense(w, mask=m, format="csr")

        tensors = [self.weight] + ([] if mask is None else [mask])
        # data_ptr and dtype: .to() swaps a parameter's data without a new version
        key = tuple((t.data_ptr(), t.dtype) for t in tensors)
        return _SPARSE_WEIGHTS.get(tensors, key, build)

    def forward_sparse(self, h: torch.Tensor, groups: int, relu_pool: int | None = None) -> torch.Tensor:
        """The convolution on the sparse CPU kernel, ``groups=M`` (per-model inputs) or ``1`` (one
        input shared by all models); ``relu_pool=k`` fuses a following ReLU and k×k max-pool."""
        from sparsemia import ops

        w = self.sparse_weight()
        b = None if self.bias is None else self.bias.detach().reshape(-1)
        h = h.contiguous()
        if relu_pool is None:
            return ops.sparse_conv2d(h, w, b, self.stride, self.padding, self.dilation, groups, backend="cpu")
        return ops.sparse_conv2d_relu_pool(h, w, b, self.stride, self.padding, self.dilation, groups, relu_pool,
                                           backend="cpu")

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """All models on the same input ``[B, C, H, W]`` → ``[B, M*O, H', W']`` (one convolution)."""
        if self.uses_sparse_kernel(x):
            return self.forward_sparse(x, 1)
        w = self.effective_weight().reshape(-1, self.in_channels, *self.kernel_size)
        b = None if self.bias is None else self.bias.reshape(-1)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        return f"M={self.num_models}, {self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"


class StackedLinear(nn.Module):
    """``M`` independent ``Linear`` layers as one batched matmul on ``[M, B, in]`` → ``[M, B, out]``.

    Parameters: ``weight`` ``[M, out, in]``, ``bias`` ``[M, out]`` or None, optional
    ``mask`` buffer shaped like ``weight``.
    """

    def __init__(self, num_models: int, linear: nn.Linear) -> None:
        super().__init__()
        self.num_models = num_models
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = nn.Parameter(torch.empty(num_models, *linear.weight.shape, dtype=linear.weight.dtype))
        self.bias = nn.Parameter(torch.empty(num_models, linear.out_features)) if linear.bias is not None else None
        self.register_buffer("mask", None)

    def effective_weight(self) -> torch.Tensor:
        """The stacked weight with pruned entries zeroed, ``[M, out, in]``."""
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        wt = self.effective_weight().transpose(1, 2)
        if self.bias is None:
            return torch.bmm(h, wt)
        return torch.baddbmm(self.bias.unsqueeze(1), h, wt)

    def extra_repr(self) -> str:
        return f"M={self.num_models}, in_features={self.in_features}, out_features={self.out_features}"


class StackedBatchNorm2d(nn.BatchNorm2d):
    """``M`` independent ``BatchNorm2d(C)`` layers: one ``BatchNorm2d(M*C)`` on ``[B, M*C, H, W]``."""

    def __init__(self, num_models: int, bn: nn.BatchNorm2d) -> None:
        super().__init__(num_models * bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.num_models = num_models


class StackedFlatten(nn.Module):
    """Grouped conv layout ``[B, M*C, H, W]`` → linear layout ``[M, B, C*H*W]`` (``nn.Flatten`` order)."""

    def __init__(self, num_models: int) -> None:
        super().__init__()
        self.num_models = num_models

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() == 3:  # already [M, B, F]
            return h
        batch = h.shape[0]
        # reshape needs the model-major NCHW order; channels-last activations are copied here
        return h.contiguous().reshape(batch, self.num_models, -1).transpose(0, 1)


def _flatten_layers(model: nn.Module) -> list[nn.Module]:
    if isinstance(model, (nn.Sequential, *_sequential_models())):
        layers: list[nn.Module] = []
        for child in model.children():
            layers += _flatten_layers(child)
        return layers
    return [model]


def _stack_layer(num_models: int, layer: nn.Module) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        return StackedConv2d(num_models, layer)
    if isinstance(layer, nn.Linear):
        return StackedLinear(num_models, layer)
    if isinstance(layer, nn.BatchNorm2d):
        return StackedBatchNorm2d(num_models, layer)
    if isinstance(layer, nn.Flatten):
        if layer.start_dim != 1 or layer.end_dim != -1:
            raise ValueError("models: only nn.Flatten(start_dim=1) can be stacked")
        return StackedFlatten(num_models)
    if isinstance(layer, _ELEMENTWISE + _POOLS):
        return copy.deepcopy(layer)
    raise ValueError(
        f"models: layer type {type(layer).__name__} cannot be stacked by stack_models; use FunctionalStack"
    )


def _is_maxpool2(layer: nn.Module) -> bool:
    if not isinstance(layer, nn.MaxPool2d):
        return False
    k, s, p, d = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    return k in (2, (2, 2)) and s in (2, (2, 2)) and p in (0, (0, 0)) and d in (1, (1, 1)) and not layer.ceil_mode


class StackedModel(nn.Module):
    """``M`` models of one sequential architecture with stacked parameters.

    ``forward(x)``: per-model inputs ``[M, B, *sample_shape]`` → logits ``[M, B, classes]``
    (each model its own batch, e.g. its own training subset).
    ``forward_shared(x)``: one input ``[B, *sample_shape]`` for all models → ``[M, B, classes]``.
    """

    def __init__(self, layers: Sequence[nn.Module], num_models: int, template: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.num_models = num_models
        # a copy of one member, kept (outside the module tree) to rebuild single models
        self._template = [copy.deepcopy(template)]

    # ---------------------------------------------------------------- structure
    def stacked_layers(self) -> Iterator[tuple[int, nn.Module]]:
        """(index, layer) for layers with stacked weights (conv, linear)."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, StackedConv2d | StackedLinear):
                yield i, layer

    def set_masks(self, masks: Sequence[torch.Tensor | None]) -> None:
        """Give each weighted layer (in :meth:`stacked_layers` order) a mask ``[M, *weight_shape]`` or None."""
        layers = [layer for _, layer in self.stacked_layers()]
        if len(masks) != len(layers):
            raise ValueError(f"masks: expected {len(layers)} entries (one per conv/linear layer), got {len(masks)}")
        for layer, mask in zip(layers, masks, strict=True):
            if mask is not None and tuple(mask.shape) != tuple(layer.weight.shape):
                raise ValueError(f"masks: shape {tuple(mask.shape)} does not match weight {tuple(layer.weight.shape)}")
            layer.mask = None if mask is None else mask.to(layer.weight.dtype).to(layer.weight.device)
            if mask is not None:
                with torch.no_grad():
                    layer.weight.mul_(layer.mask)

    # ---------------------------------------------------------------- forward
    def _run(self, h: torch.Tensor, start: int) -> torch.Tensor:
        layers = self.layers
        i = start
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, StackedConv2d) and layer.uses_sparse_kernel(h):
                pool = self._relu_pool_after(i)
                if pool is not None:
                    h = layer.forward_sparse(h, self.num_models, pool)
                    i += 3 if pool > 1 or self._pool_at(i + 2) == 1 else 2
                    continue
            elif isinstance(layer, StackedConv2d) and h.dim() == 4 and h.device.type == "cpu":
                # oneDNN's grouped convolution is fastest channels-last on CPU
                h = h.contiguous(memory_format=torch.channels_last)
            if isinstance(layer, nn.ReLU) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.MaxPool2d):
                # max-pool first, then ReLU on 4× fewer values: equal, since ReLU is monotone
                h = layers[i + 1](h).relu_()
                i += 2
                continue
            h = layer(h)
            i += 1
        if h.dim() != 3:
            raise ValueError("model: the stacked model must end in linear layers (output [M, B, classes])")
        return h

    def _pool_at(self, i: int) -> int | None:
        return pool_size(self.layers[i]) if i < len(self.layers) else None

    def _relu_pool_after(self, i: int) -> int | None:
        """k when layer i is followed by ReLU and a k×k max-pool (1: by a ReLU alone), else None."""
        if i + 1 >= len(self.layers) or not isinstance(self.layers[i + 1], nn.ReLU):
            return None
        return self._pool_at(i + 2) or 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.num_models
        if x.dim() < 2 or x.shape[0] != m:
            raise ValueError(f"x: expected per-model inputs [M={m}, B, ...], got shape {tuple(x.shape)}")
        first = self.layers[0]
        if isinstance(first, StackedConv2d):
            if x.dim() != 5:
                raise ValueError(f"x: expected [M, B, C, H, W] for a convolutional model, got {tuple(x.shape)}")
            batch = x.shape[1]
            h = x.transpose(0, 1).reshape(batch, m * x.shape[2], *x.shape[3:])
        else:
            h = x.reshape(m, x.shape[1], -1) if isinstance(first, StackedFlatten) else x
        return self._run(h, 0)

    def forward_shared(self, x: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """All models on the same inputs ``[B, *sample_shape]`` → ``[M, B, classes]``.

        Convolutional models run ``chunk_size`` inputs at a time (default: 64 on the
        CPU, where the ``M``-times wider activations of small chunks stay in cache;
        the whole batch elsewhere).
        """
        first = self.layers[0]
        if chunk_size is None:
            chunk_size = 64 if x.device.type == "cpu" else max(x.shape[0], 1)
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}")
        if isinstance(first, StackedConv2d):
            outs = [self._forward_shared_conv(x[s : s + chunk_size]) for s in range(0, x.shape[0], chunk_size)]
            return torch.cat(outs, dim=1)
        return self.forward(x.unsqueeze(0).expand(self.num_models, *x.shape))

    def _forward_shared_conv(self, x: torch.Tensor) -> torch.Tensor:
        conv: StackedConv2d = self.layers[0]  # type: ignore[assignment]
        layers = self.layers
        fusable = (
            len(layers) > 2
            and isinstance(layers[1], nn.ReLU)
            and _is_maxpool2(layers[2])
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
        )
        if conv.uses_sparse_kernel(x):
            pool = self._relu_pool_after(0)
            if pool is None:
                return self._run(conv.forward_sparse(x, 1), 1)
            return self._run(conv.forward_sparse(x, 1, pool), 3 if pool > 1 or self._pool_at(2) == 1 else 2)
        if not fusable:
            return self._run(conv.forward_shared(x), 1)
        # conv → ReLU → maxpool(2) as one GEMM per pool offset over patches shared by all models
        batch, channels, _, _ = x.shape
        kh, kw = conv.kernel_size
        ph, pw = conv.padding
        xp = F.pad(x, (pw, pw, ph, ph))
        patches = xp.unfold(2, kh, 1).unfold(3, kw, 1)  # [B, C, Ho, Wo, kh, kw]
        ho, wo = patches.shape[2] // 2, patches.shape[3] // 2
        patches = patches.permute(0, 2, 3, 1, 4, 5)  # [B, Ho, Wo, C, kh, kw]
        w = conv.effective_weight().reshape(-1, channels * kh * kw).t()  # [C*kh*kw, M*O]
        track_grad = torch.is_grad_enabled() and w.requires_grad
        pooled = None
        for a in (0, 1):
            for b in (0, 1):
                p = patches[:, a : 2 * ho : 2, b : 2 * wo : 2].reshape(-1, channels * kh * kw)
                out = p @ w
                if pooled is None:
                    pooled = out
                elif track_grad:
                    pooled = torch.maximum(pooled, out)
                else:
                    torch.maximum(pooled, out, out=pooled)
        assert pooled is not None
        if conv.bias is not None:
            bias = conv.bias.reshape(1, -1)
            pooled = pooled + bias if track_grad else pooled.add_(bias)
        pooled = pooled.relu_()
        h = pooled.reshape(batch, ho, wo, -1).permute(0, 3, 1, 2)  # channels-last [B, M*O, Ho, Wo]
        return self._run(h, 3)

    # ---------------------------------------------------------------- single models
    def unstack(self, index: int) -> nn.Module:
        """Model ``index`` as an ordinary module (a copy; masks are applied to its weights)."""
        if not 0 <= index < self.num_models:
            raise ValueError(f"index: expected 0..{self.num_models - 1}, got {index}")
        model = copy.deepcopy(self._template[0])
        singles = _flatten_layers(model)
        with torch.no_grad():
            for single, stacked in zip(singles, self.layers, strict=True):
                if isinstance(stacked, StackedConv2d | StackedLinear):
                    single.weight.copy_(stacked.effective_weight()[index])
                    if stacked.bias is not None:
                        single.bias.copy_(stacked.bias[index])
                elif isinstance(stacked, StackedBatchNorm2d):
                    c = single.num_features
                    sl = slice(index * c, (index + 1) * c)
                    if single.affine:
                        single.weight.copy_(stacked.weight[sl])
                        single.bias.copy_(stacked.bias[sl])
                    if single.track_running_stats:
                        single.running_mean.copy_(stacked.running_mean[sl])
                        single.running_var.copy_(stacked.running_var[sl])
                        single.num_batches_tracked.copy_(stacked.num_batches_tracked)
        return model.train(self.training)

    def to_modules(self) -> list[nn.Module]:
        """All ``M`` models as ordinary modules."""
        return [self.unstack(i) for i in range(self.num_models)]


def stack_models(models: Sequence[nn.Module]) -> StackedModel:
    """Stack ``models`` (same sequential architecture) into one :class:`StackedModel`.

    The parameters are copied; the originals are not modified.
    """
    if len(models) == 0:
        raise ValueError("models: expected at least one model")
    per_model = [_flatten_layers(m) for m in models]
    kinds = [[type(layer) for layer in layers] for layers in per_model]
    if any(k != kinds[0] for k in kinds):
        raise ValueError("models: all models must have the same architecture")
    m = len(models)
    stacked_layers = [_stack_layer(m, layer) for layer in per_model[0]]
    with torch.no_grad():
        for j, stacked in enumerate(stacked_layers):
            column = [layers[j] for layers in per_model]
            if isinstance(stacked, StackedConv2d | StackedLinear):
                if any(tuple(c.weight.shape) != tuple(column[0].weight.shape) for c in column):
                    raise ValueError("models: layer shapes differ between models")
                stacked.weight.copy_(torch.stack([c.weight for c in column]))
                if stacked.bias is not None:
                    stacked.bias.copy_(torch.stack([c.bias for c in column]))
            elif isinstance(stacked, StackedBatchNorm2d):
                if stacked.affine:
                    stacked.weight.copy_(torch.cat([c.weight for c in column]))
                    stacked.bias.copy_(torch.cat([c.bias for c in column]))
                if stacked.track_running_stats:
                    stacked.running_mean.copy_(torch.cat([c.running_mean for c in column]))
                    stacked.running_var.copy_(torch.cat([c.running_var for c in column]))
    out = StackedModel(stacked_layers, m, models[0])
    return out.train(models[0].training)


class FunctionalStack(nn.Module):
    """Any architecture, stacked with ``torch.func.stack_module_state`` and evaluated with ``vmap``.

    Slower than :class:`StackedModel` for the layers it supports but general (ResNet,
    MobileNetV2). Parameters and buffers carry a leading model dimension.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(models) == 0:
            raise ValueError("models: expected at least one model")
        params, buffers = torch.func.stack_module_state(list(models))
        self.num_models = len(models)
        self.params = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v) for k, v in params.items()})
        for k, v in buffers.items():
            self.register_buffer("buf__" + k.replace(".", "__"), v)
        self._names = list(params)
        self._buffer_names = list(buffers)
        base = copy.deepcopy(models[0]).to("meta")
        self._base = [base]

    def _state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        params = {k: self.params[k.replace(".", "__")] for k in self._names}
        buffers = {k: getattr(self, "buf__" + k.replace(".", "__")) for k in self._buffer_names}
        return params, buffers

    def _call(self) -> Callable[..., torch.Tensor]:
        base = self._base[0]
        base.train(self.training)

        def one(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(base, (params, buffers), (x,))

        return one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-model inputs ``[M, B, ...]`` → ``[M, B, classes]``."""
        params, buffers = self._state()
        return torch.vmap(self._call(), randomness="different")(params, buffers, x)

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Shared input ``[B, ...]`` → ``[M, B, classes]``."""
        params, buffers = self._state()
        return torch.vmap(self._call(), in_dims=(0, 0, None), randomness="different")(params, buffers, x)

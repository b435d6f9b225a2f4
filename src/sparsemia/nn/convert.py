"""``sparsify`` / ``densify``: swap a pruned model's layers for sparse ones and back.

``sparsify`` walks a model pruned any way sparsemia knows (dense weights with
zeros, ``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask``, or
sparsemia's own parametrized masks) and replaces each ``nn.Linear`` /
``nn.Conv2d`` by :class:`SparseLinear` / :class:`SparseConv2d` where the sparse
kernel should be faster for that layer: by a cost model, or, given an example
input, by timing both on the layer's real input (results cached per shape).
The replaced layers compute the same outputs within fp32 tolerance.

Saving: a sparsified model's ``state_dict`` loads into an equally sparsified
model; :func:`save_sparsified` / :func:`load_sparsified` also go through a
safetensors file (with the layers' formats in its metadata) into a model built
from the dense architecture. :func:`bytes_report` compares storage.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from sparsemia.cache import LruCache
from sparsemia.formats import SparseWeight
from sparsemia.nn.conv import SparseConv2d
from sparsemia.nn.linear import SparseLinear

__all__ = [
    "sparsify",
    "densify",
    "fuse_relu_pool",
    "FoldedLayer",
    "bytes_report",
    "BytesReport",
    "save_sparsified",
    "load_sparsified",
]

logger = logging.getLogger(__name__)

_SPARSE_TYPES = (SparseLinear, SparseConv2d)

# Cost model, calibrated on a 2-core AVX-512 machine (benchmarks/bench_conv.py,
# sparsemia bench): the direct sparse convolution spends about 3x the time per
# stored tap that a dense conv2d spends per tap (2.3-4x faster at 90% sparsity,
# 1.5-1.8x at 80%), the CSR linear kernel about 2-3x a dense GEMM's per entry
# (4-9x faster at 90% on 4096x4096, 1.7-4x on 1024x1024). A layer turns sparse
# when density * factor < 1.
_CONV_TAP_COST = 3.0
_LINEAR_ENTRY_COST = 3.0
# Below this many weights a layer is dominated by per-call overhead; keep it dense.
_MIN_LINEAR_WEIGHTS = 1 << 14

# Per layer shape and input shape: sparse faster than dense? (bounded like every cache here)
_TIMING_CACHE: LruCache[bool] = LruCache(256)


def layer_mask(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The effective dense weight and the pruning mask (None: zeros are pruned)."""
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):  # torch.nn.utils.prune
        mask = module.weight_mask.detach()
        return (module.weight_orig.detach() * mask), mask != 0
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations["weight"]:
            mask = getattr(p, "mask", None)
            if isinstance(mask, torch.Tensor):
                return module.weight.detach(), mask.detach() != 0
    return module.weight.detach(), None


def _sparse_is_faster(module: nn.Module, density: float) -> bool:
    if isinstance(module, nn.Conv2d):
        return density * _CONV_TAP_COST < 1.0
    return module.weight.numel() >= _MIN_LINEAR_WEIGHTS and density * _LINEAR_ENTRY_COST < 1.0


def _best_time(fn, x: torch.Tensor, runs: int = 3) -> float:
    with torch.no_grad():
        fn(x)
        best = math.inf
        for _ in range(runs):
            start = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - start)
    return best


def _measured_faster(module: nn.Module, sparse: nn.Module, x: torch.Tensor, nnz: int) -> bool:
    key = (type(module).__name__, tuple(module.weight.shape), tuple(x.shape), x.dtype, round(nnz / module.weight.numel(), 2),
           getattr(module, "stride", None), getattr(module, "padding", None), getattr(module, "dilation", None),
           getattr(module, "groups", None))
    return _TIMING_CACHE.get(key, lambda: _best_time(sparse, x) < _best_time(module, x))


def _layer_inputs(model: nn.Module, example_input: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    inputs: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_pre_hook(lambda _m, args, name=name: inputs.setdefault(name, args[0].detach()))
        for name in names
    ]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return inputs


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that works for models pruned with ``torch.nn.utils.prune``."""
    # torch.nn.utils.prune leaves `weight` as a plain attribute holding a graph
    # non-leaf (weight_orig * weight_mask), which deepcopy refuses: copy it detached.
    memo: dict[int, object] = {}
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if name == "":
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


class FoldedLayer(nn.Module):
    """Stands where a ReLU or max-pool was folded into the :class:`SparseConv2d` before it.

    The identity in ``forward`` (the sparse layer already applied it); keeps the
    original layer (outside the module tree: it has no state) for :func:`densify`.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self._layer = [layer]

    @property
    def layer(self) -> nn.Module:
        return self._layer[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"folded into the previous layer: {self.layer}"


def pool_size(layer: nn.Module) -> int | None:
    """k for an ``nn.MaxPool2d`` with kernel = stride = k, no padding or dilation, floor mode."""
    if not isinstance(layer, nn.MaxPool2d) or layer.ceil_mode or layer.return_indices:
        return None
    k, st, p, d = (v if isinstance(v, tuple) else (v, v) for v in
                   (layer.kernel_size, layer.stride, layer.padding, layer.dilation))
    if k[0] != k[1] or st != k or p != (0, 0) or d != (1, 1):
        return None
    return int(k[0])


def fuse_relu_pool(model: nn.Module) -> int:
    """Fold each ``ReLU`` (and a square ``MaxPool2d`` right after it) into the :class:`SparseConv2d`
    before it in an ``nn.Sequential``, in place; returns how many layers were fused.

    The folded layers are replaced by :class:`FoldedLayer` placeholders (indices and
    ``state_dict`` keys are unchanged); :func:`densify` puts them back.
    """
    fused = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        items = list(seq._modules.items())
        i = 0
        while i < len(items) - 1:
            layer = items[i][1]
            if not (
                isinstance(layer, SparseConv2d)
                and layer.fused_relu_pool is None
                and isinstance(items[i + 1][1], nn.ReLU)
            ):
                i += 1
                continue
            pool = pool_size(items[i + 2][1]) if i + 2 < len(items) else None
            span = 3 if pool is not None else 2
            layer.fused_relu_pool = pool or 1
            for name, folded in items[i + 1 : i + span]:
                seq._modules[name] = FoldedLayer(folded)
            fused += 1
            i += span
    return fused


def sparsify(
    model: nn.Module,
    min_sparsity: float = 0.5,
    format: str = "auto",
    *,
    example_input: torch.Tensor | None = None,
    inplace: bool = False,
    backend: str | None = None,
    fuse: bool = True,
) -> nn.Module:
    """Replace the pruned ``nn.Linear`` / ``nn.Conv2d`` layers of ``model`` by sparse layers.

    Args:
        model: a pruned model (zeros in the weights, ``torch.nn.utils.prune`` masks, or sparsemia masks).
        min_sparsity: layers with a smaller fraction of pruned weights stay dense.
        format: ``"auto"`` (CSR, the format the CPU convolution runs), or ``"csr"``, ``"bsr"``, ``"nm"``
            to force one (BSR and N:M with the SparseWeight defaults).
        example_input: when given, each candidate layer is timed dense and sparse on the input it sees
            in ``model(example_input)`` and turns sparse only if that is faster (cached per shape);
            otherwise a cost model decides.
        inplace: modify ``model`` itself instead of a deep copy.
        backend: forwarded to the sparse layers (forces a backend).
        fuse: fold a ``ReLU`` (and a square ``MaxPool2d``) that follows a sparse convolution in an
            ``nn.Sequential`` into it (:func:`fuse_relu_pool`; same outputs, one pass fewer).

    Returns:
        the model with sparse layers (``model`` itself when ``inplace``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, int | float) or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity: expected a number in [0, 1], got {min_sparsity!r}")
    if format not in ("auto", "csr", "bsr", "nm"):
        raise ValueError(f"format: expected 'auto', 'csr', 'bsr' or 'nm', got {format!r}")
    if not inplace:
        model = copy_model(model)
    fmt = "csr" if format == "auto" else format
    candidates: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor | None, float]] = {}
    for name, module in model.named_modules():
        if isinstance(module, _SPARSE_TYPES) or not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        weight, mask = layer_mask(module)
        kept = int((mask if mask is not None else weight != 0).sum())
        density = kept / max(weight.numel(), 1)
        if 1.0 - density >= min_sparsity:
            candidates[name] = (module, weight, mask, density)
    inputs = _layer_inputs(model, example_input, list(candidates)) if example_input is not None else {}
    for name, (module, weight, mask, density) in candidates.items():
        sparse_weight = SparseWeight.from_dense(weight, mask=mask, format=fmt)
        bias = None if module.bias is None else module.bias.detach()
        if isinstance(module, nn.Conv2d):
            sparse: nn.Module = SparseConv2d(
                sparse_weight, bias, module.stride, module.padding, module.dilation, module.groups,
                module.padding_mode, backend=backend,
            )
        else:
            sparse = SparseLinear(sparse_weight, bias, backend=backend)
        sparse.train(module.training)
        if name in inputs:
            faster = _measured_faster(module, sparse, inputs[name], sparse_weight.nnz)
        else:
            faster = _sparse_is_faster(module, density)
        if faster:
            model = _replace(model, name, sparse)
        else:
            logger.debug("sparsify: %s stays dense (density %.3f; sparse kernel not faster)", name, density)
    if fuse:
        fuse_relu_pool(model)
    return model


def densify(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every :class:`SparseLinear` / :class:`SparseConv2d` by its dense ``nn`` layer (the inverse of :func:`sparsify`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy_model(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, _SPARSE_TYPES):
            dense = module.to_dense()
            dense.train(module.training)
            model = _replace(model, name, dense)
        elif isinstance(module, FoldedLayer):
            model = _replace(model, name, module.layer)
    return model


# --------------------------------------------------------------------------
# Storage report
# --------------------------------------------------------------------------


@dataclass
class LayerBytes:
    name: str
    kind: str
    format: str
    dense_bytes: int
    sparse_bytes: int


@dataclass
class BytesReport:
    """Weight storage per layer, dense versus as stored (values plus indices; biases excluded)."""

    layers: list[LayerBytes] = field(default_factory=list)

    @property
    def dense_total(self) -> int:
        return sum(r.dense_bytes for r in self.layers)

    @property
    def sparse_total(self) -> int:
        return sum(r.sparse_bytes for r in self.layers)

    def __str__(self) -> str:
        lines = [f"{'layer':<32} {'kind':<13} {'format':<7} {'dense B':>12} {'stored B':>12} {'ratio':>6}"]
        for r in [*self.layers, LayerBytes("total", "", "", self.dense_total, self.sparse_total)]:
            ratio = r.sparse_bytes / r.dense_bytes if r.dense_bytes else 0.0
            lines.append(f"{r.name:<32} {r.kind:<13} {r.format:<7} {r.dense_bytes:>12,} {r.sparse_bytes:>12,} {ratio:>6.3f}")
        return "\n".join(lines)


def bytes_report(model: nn.Module) -> BytesReport:
    """Bytes of every Linear / Conv2d weight (sparse or dense layer) dense versus as stored."""
    report = BytesReport()
    for name, module in model.named_modules():
        if isinstance(module, _SPARSE_TYPES):
            w = module.weight
            dense = math.prod(w.shape) * w.values.element_size()
            report.layers.append(LayerBytes(name, type(module).__name__, w.format, dense, w.nbytes()))
        elif isinstance(module, nn.Linear | nn.Conv2d):
            n = module.weight.numel() * module.weight.element_size()
            report.layers.append(LayerBytes(name, type(module).__name__, "dense", n, n))
    return report


# --------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------

_META_KEY = "sparsemia.sparse_layers"


def _layer_formats(model: nn.Module) -> dict[str, dict]:
    return {
        name: {"format": m.format, "block": m.block, "n": m.n, "m": m.m}
        for name, m in model.named_modules()
        if isinstance(m, _SPARSE_TYPES)
    }


def save_sparsified(model: nn.Module, path: str) -> None:
    """Write ``model.state_dict()`` to a safetensors file, with each sparse layer's format in its metadata.

    The write is atomic (:func:`sparsemia.io.atomic_write`).
    """
    from safetensors.torch import save

    from sparsemia.io import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, save(state, metadata={_META_KEY: json.dumps(_layer_formats(model))}))


def load_sparsified(
    model: nn.Module, source: str | Mapping[str, torch.Tensor], *, strict: bool = True, fuse: bool = True
) -> nn.Module:
    """Load a sparsified state into ``model`` built from the dense architecture (or already sparsified).

    Args:
        model: the architecture; its ``nn.Linear`` / ``nn.Conv2d`` layers that are sparse in ``source``
            are replaced (in place) by sparse layers of the stored pattern.
        source: a safetensors file written by :func:`save_sparsified`, or a ``state_dict`` of a
            sparsified model (CSR and BSR layers are recognised from their tensors; N:M needs the file).
        strict: as for ``load_state_dict``.
        fuse: fold ReLU / max-pool layers into the sparse convolutions before them, as :func:`sparsify` does.

    Returns:
        ``model`` (or the replacement, if the model itself is one layer).
    """
    if isinstance(source, str):
        from sparsemia.io import read_safetensors

        state, metadata = read_safetensors(source, what="source")
        try:
            meta = json.loads(metadata.get(_META_KEY, "{}"))
        except json.JSONDecodeError:
            raise ValueError(f"source: {source} has a corrupted layer-format header") from None
    else:
        state, meta = source, {}
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear | nn.Conv2d):
            continue
        prefix = f"{name}." if name else ""
        if prefix + "col_indices" not in state:
            continue
        values = state[prefix + "values"]
        info = meta.get(name)
        if info is None:
            if prefix + "crow_indices" not in state:
                raise ValueError(f"source: layer {name!r} looks N:M; load it from a file written by save_sparsified")
            info = {"format": "bsr" if values.dim() == 3 else "csr",
                    "block": list(values.shape[1:]) if values.dim() == 3 else None, "n": None, "m": None}
        shell = SparseWeight(
            info["format"], tuple(module.weight.shape), values.to(module.weight.dtype),
            state.get(prefix + "crow_indices"), state[prefix + "col_indices"],
            block=tuple(info["block"]) if info["block"] else None, n=info["n"], m=info["m"],
        )
        bias = None if module.bias is None else module.bias.detach()
        if isinstance(module, nn.Conv2d):
            new: nn.Module = SparseConv2d(shell, bias, module.stride, module.padding, module.dilation, module.groups,
                                          module.padding_mode)
        else:
            new = SparseLinear(shell, bias)
        model = _replace(model, name, new)
    model.load_state_dict(dict(state), strict=strict)
    if fuse:
        fuse_relu_pool(model)
    return model

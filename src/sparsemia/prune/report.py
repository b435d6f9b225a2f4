"""Sparsity report: per-layer and global sparsity, nonzeros, and bytes dense vs CSR."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

__all__ = ["LayerSparsity", "SparsityReport", "sparsity_report", "csr_bytes"]

_INDEX_BYTES = 4  # CSR with int32 column indices and row pointers (DESIGN.md: int64 only past 2^31 nonzeros)


def csr_bytes(rows: int, nnz: int, value_bytes: int) -> int:
    """Bytes of a CSR matrix with int32 indices: values + column indices + ``rows + 1`` row pointers."""
    return nnz * (value_bytes + _INDEX_BYTES) + (rows + 1) * _INDEX_BYTES


@dataclass(frozen=True)
class LayerSparsity:
    """One layer's weight: shape, size, nonzeros and storage (the weight as a 2-D ``[out, rest]`` matrix)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    numel: int
    nnz: int
    dense_bytes: int
    csr_bytes: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Sparsity of every weight layer of a model; ``str(report)`` is a readable table."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def nnz(self) -> int:
        return sum(layer.nnz for layer in self.layers)

    @property
    def sparsity(self) -> float:
        """Global sparsity: zeros over all weights of the listed layers."""
        return 1.0 - self.nnz / self.numel if self.numel else 0.0

    @property
    def dense_bytes(self) -> int:
        return sum(layer.dense_bytes for layer in self.layers)

    @property
    def csr_bytes(self) -> int:
        return sum(layer.csr_bytes for layer in self.layers)

    def __getitem__(self, name: str) -> LayerSparsity:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        """Plain JSON-able data: the layers and the totals."""
        return {
            "layers": [{**asdict(layer), "shape": list(layer.shape), "sparsity": layer.sparsity} for layer in self.layers],
            "numel": self.numel,
            "nnz": self.nnz,
            "sparsity": self.sparsity,
            "dense_bytes": self.dense_bytes,
            "csr_bytes": self.csr_bytes,
        }

    def __str__(self) -> str:
        header = ("layer", "type", "shape", "params", "nonzero", "sparsity", "dense", "csr")
        rows = [
            (
                layer.name, layer.kind, "x".join(map(str, layer.shape)), f"{layer.numel:,}", f"{layer.nnz:,}",
                f"{layer.sparsity:.2%}", _human(layer.dense_bytes), _human(layer.csr_bytes),
            )
            for layer in self.layers
        ]  # fmt: skip
        total = (
            "total", "", "", f"{self.numel:,}", f"{self.nnz:,}", f"{self.sparsity:.2%}",
            _human(self.dense_bytes), _human(self.csr_bytes),
        )  # fmt: skip
        widths = [max(len(str(r[i])) for r in [header, *rows, total]) for i in range(len(header))]

        def line(cells: tuple) -> str:
            return "  ".join(
                str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(header), rule, *map(line, rows), rule, line(total)])


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _dense_weight(module: nn.Module) -> torch.Tensor | None:
    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        # torch.nn.utils.prune: ``module.weight`` is only refreshed by a forward pass
        return module.weight_orig * module.weight_mask
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight
    if hasattr(weight, "to_dense"):  # sparse layers (sparsemia.nn) hold a SparseWeight
        return weight.to_dense()
    return None


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Report on every layer whose ``weight`` is a matrix or a convolution kernel.

    Counts the *effective* weights (masks applied); BatchNorm and biases are
    not listed. Works on masked, ``torch.nn.utils.prune``-pruned, sparse
    (``sparsemia.nn``) and dense models, and does not change the model.
    """
    layers = []
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = _dense_weight(module)
            if weight is None or weight.dim() < 2:
                continue
            nnz = int(torch.count_nonzero(weight))
            layers.append(
                LayerSparsity(
                    name=name,
                    kind=type(module).__name__.removeprefix("Parametrized"),
                    shape=tuple(weight.shape),
                    numel=weight.numel(),
                    nnz=nnz,
                    dense_bytes=weight.numel() * weight.element_size(),
                    csr_bytes=csr_bytes(weight.shape[0], nnz, weight.element_size()),
                )
            )
    return SparsityReport(layers)

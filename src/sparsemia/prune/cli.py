"""What ``sparsemia prune`` does, as a function: prune a saved model and write it with its sparsity report.

The command-line layer only parses options and prints; this module holds the
logic so it can be tested and called without the CLI.

The input is a model file (:mod:`sparsemia.io`: safetensors plus its JSON
sidecar, as ``sparsemia train`` writes), or weights trained elsewhere (a
safetensors file or a ``.pt`` state_dict) with their zoo architecture named; no
file is unpickled. The pruned model is written as a model file, with masks made
permanent (the zeros remain; :func:`sparsemia.prune.mask_zeros` fixes them again
for further training) and, for ``structure="filter"``, physically shrunk.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsemia import io as _io
from sparsemia.io import LoadedModel
from sparsemia.prune.admm import DEFAULT_RHO, DEFAULT_ROUNDS, admm
from sparsemia.prune.filter import shrink
from sparsemia.prune.finetune import make_optimizer, train_epochs
from sparsemia.prune.masks import remove
from sparsemia.prune.report import SparsityReport, sparsity_report
from sparsemia.prune.schedule import SCHEDULES, scheduled
from sparsemia.prune.targets import check_choice, first_and_last

__all__ = ["METHODS", "prune_saved_model", "load_model", "report_path"]

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "admm")


def load_model(path: str | Path, arch: str | None = None) -> LoadedModel:
    """The model at ``path``: a sparsemia model file, or weights of the zoo architecture ``arch``; never unpickled."""
    return _io.load_model(path, arch=arch, what="model_path")


def report_path(output_path: str | Path) -> Path:
    """Where the sparsity report of a pruned model written to ``output_path`` goes (``<name>.sparsity.json``)."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + ".sparsity.json")


def _loader(data: str, data_root: str | Path | None, batch_size: int, seed: int) -> DataLoader:
    from sparsemia.data import load_dataset

    dataset = load_dataset(data, data_root)
    return DataLoader(
        TensorDataset(dataset.features, dataset.labels),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )


def prune_saved_model(
    model_path: str | Path,
    output_path: str | Path,
    *,
    method: str = "magnitude",
    sparsity: float | None = 0.9,
    structure: str = "unstructured",
    scope: str = "layer",
    schedule: str = "one_shot",
    steps: int = 1,
    skip_first_last: bool = False,
    block: tuple[int, int] = (4, 4),
    n: int = 2,
    m: int = 4,
    data: str | None = None,
    data_root: str | Path | None = None,
    epochs: int = 1,
    rounds: int = DEFAULT_ROUNDS,
    rho: float = DEFAULT_RHO,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    arch: str | None = None,
) -> SparsityReport:
    """Prune the model at ``model_path``, write it to ``output_path`` and its report beside it; returns the report.

    Args:
        model_path: a model file (:func:`sparsemia.io.save_model`), or with
            ``arch`` weights of that zoo architecture (safetensors or a ``.pt``
            state_dict).
        output_path: where the pruned model goes (a model file); the report
            goes to :func:`report_path` (JSON).
        method: ``"magnitude"`` or ``"admm"``.
        sparsity, structure, scope, block, n, m: as in :func:`sparsemia.prune.magnitude`.
        schedule, steps: magnitude pruning schedule (``"one_shot"``, ``"iterative"``, ``"gradual"``).
        skip_first_last: leave the first and the last prunable layer dense.
        data, data_root: training data (a :data:`sparsemia.data.DATASETS` name)
            for fine-tuning between schedule steps and for ADMM; required by
            ``method="admm"`` and by multi-step schedules.
        epochs: fine-tuning epochs after each magnitude step (with ``data``), or
            ADMM retraining epochs.
        rounds, rho: ADMM rounds and initial penalty.
        lr, batch_size, seed: optimisation settings (Adam).
        arch: the architecture of weights without a sidecar (a
            :data:`sparsemia.models.MODELS` name).
    """
    check_choice(method, METHODS, "method")
    check_choice(schedule, SCHEDULES, "schedule")
    if method == "admm" and schedule != "one_shot":
        raise ValueError("schedule: ADMM has its own rho schedule; use schedule='one_shot' with method='admm'")
    if data is None and (method == "admm" or schedule != "one_shot"):
        raise ValueError(f"data: method={method!r} with schedule={schedule!r} trains the model; name a dataset")
    output_path = Path(output_path)
    _io.check_output_file(output_path, "output")
    _io.check_output_file(report_path(output_path), "output")
    loaded = load_model(model_path, arch)
    model = loaded.model.train()
    exclude = first_and_last(model) if skip_first_last else None
    structure_args = dict(scope=scope, structure=structure, block=block, n=n, m=m, exclude=exclude)
    loader = _loader(data, data_root, batch_size, seed) if data is not None else None

    if method == "admm":
        result = admm(model, loader, sparsity, rounds=rounds, rho=rho, retrain_epochs=epochs, lr=lr, **structure_args)
        logger.info("ADMM residual per round: %s", [f"{r:.4g}" for r in result.residuals])
    else:
        finetune = None
        if loader is not None and epochs > 0:

            def finetune(model: nn.Module, step: int) -> None:
                train_epochs(model, loader, make_optimizer(model, None, lr), epochs)

        scheduled(model, sparsity, schedule=schedule, steps=steps, finetune=finetune, **structure_args)

    remove(model)
    if structure == "filter":
        shrink(model)
    report = sparsity_report(model)
    record = dict(loaded.record)
    record["pruned"] = {"from": str(model_path), "method": method, "structure": structure, "sparsity": report.sparsity}
    _io.save_model(output_path, model.eval(), loaded.spec, record=record)
    _io.atomic_write(report_path(output_path), json.dumps(report.to_dict(), indent=2))
    return report

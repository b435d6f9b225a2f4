"""The end-to-end pipeline (``sparsemia reproduce``), its presets, run directories and reports."""

from sparsemia.experiments.config import (
    ATTACKS,
    DEFENSES,
    PRESETS,
    ExperimentConfig,
    load_config_file,
    preset,
)
from sparsemia.experiments.pipeline import run_experiment, shadow_task
from sparsemia.experiments.report import write_report
from sparsemia.experiments.rundir import ConfigMismatchError, RunDir

__all__ = [
    "ATTACKS",
    "DEFENSES",
    "PRESETS",
    "ExperimentConfig",
    "ConfigMismatchError",
    "RunDir",
    "load_config_file",
    "preset",
    "run_experiment",
    "shadow_task",
    "write_report",
]

"""Training target and shadow models, with or without membership-inference defenses."""

from sparsemia.train.defenses import (
    DPSGD,
    Defense,
    InferenceModel,
    MinMax,
    NoDefense,
    Pruning,
    build_defense,
)
from sparsemia.train.trainer import (
    ExtraLoss,
    TrainConfig,
    TrainHistory,
    augment_images,
    deterministic_mode,
    evaluate,
    fit,
    fit_stacked,
    make_optimizer,
    make_scheduler,
    predict_logits,
    seed_everything,
)

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
    "Defense",
    "NoDefense",
    "MinMax",
    "InferenceModel",
    "Pruning",
    "DPSGD",
    "build_defense",
]

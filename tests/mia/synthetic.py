"""Synthetic populations of model outputs with a known amount of membership leakage (test helper)."""

from __future__ import annotations

import numpy as np

from sparsemia.mia import lira_inclusion


def synthetic_population(
    num_models: int,
    num_candidates: int,
    *,
    num_queries: int = 1,
    num_classes: int = 10,
    leak: float = 0.0,
    seed: int = 0,
    logits_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logits [K, N, Q, C], labels [N], inclusion [K, N])`` on LiRA's exact halves.

    The true-class logit of model k on candidate n is a per-candidate difficulty (shared by all
    models, so candidates differ as real ones do), a per-(model, candidate) draw shared by the
    queries, a per-query draw, and ``leak`` more where model k trained on candidate n.
    ``leak=0``: outputs independent of membership (the null). ``seed`` draws the universe (labels,
    difficulties, inclusion), ``logits_seed`` (default ``seed``) the models' own randomness.
    """
    rng = np.random.default_rng(seed)
    inclusion = lira_inclusion(num_models, num_candidates, 0.5, seed=seed)
    labels = rng.integers(0, num_classes, num_candidates)
    difficulty = rng.normal(2.0, 1.5, num_candidates)
    rng = np.random.default_rng([seed if logits_seed is None else logits_seed, 1])
    logits = rng.normal(0.0, 1.0, (num_models, num_candidates, num_queries, num_classes))
    margin = (
        difficulty[None, :, None]
        + rng.normal(0.0, 1.0, (num_models, num_candidates, 1))
        + 0.3 * rng.normal(0.0, 1.0, (num_models, num_candidates, num_queries))
        + leak * inclusion[:, :, None]
    )
    idx = np.arange(num_candidates)
    logits[:, idx, :, labels] += margin.transpose(1, 0, 2)
    return logits, labels, inclusion

"""Null test: when the "members" are examples no model trained on, every attack is a coin flip.

Real models are trained (MLPs on scikit-learn's digits, shadows stacked); only the
membership labels are meaningless: the target trained on a third, disjoint set.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparsemia import mia
from sparsemia.data import load_dataset
from sparsemia.models import MLP
from sparsemia.train import TrainConfig, fit, predict_logits

CONFIG = TrainConfig(epochs=15, batch_size=32, optimizer="adam", lr=3e-3)


def _mlp():
    return MLP(64, 10, hidden=(64,))


def _all_attack_aucs(seed: int) -> dict[str, float]:
    data = load_dataset("digits")
    x, y = data.features.reshape(len(data), -1), data.labels
    order = np.random.default_rng(seed).permutation(len(data))
    target_train, members, non_members, pool = order[:200], order[200:600], order[600:1000], order[1000:]
    torch.manual_seed(seed)
    target = _mlp()
    fit(target, x[target_train], y[target_train], TrainConfig(**{**CONFIG.__dict__, "seed": seed}))

    candidates = np.concatenate([members, non_members])
    is_member = np.arange(candidates.size) < members.size
    universe = np.concatenate([candidates, pool])
    inclusion = mia.lira_inclusion(16, universe.size, pkeep=0.2, seed=seed)
    shadows = mia.train_shadow_models(_mlp, x[universe], y[universe], inclusion, CONFIG, seed=seed)
    shadow_logits = mia.score_models(shadows, x[universe])
    n = candidates.size
    labels = y[candidates].numpy()
    target_logits = predict_logits(target, x[candidates]).double().numpy()
    records = mia.ShadowRecords.from_models(shadow_logits[:, n:], y[pool].numpy(), inclusion[:, n:])
    pool_target = predict_logits(target, x[pool]).double().numpy()

    results = [mia.metric_attack(m, target_logits, labels, records) for m in mia.METRIC_ATTACKS]
    results.append(mia.shadow_model_attack(target_logits, labels, records, max_iter=100, max_records=4000, seed=seed))
    for online in (True, False):
        for fixed in (False, True):
            results.append(
                mia.lira(target_logits, labels, shadow_logits[:, :n], inclusion[:, :n], online=online, fixed_variance=fixed)
            )
        results.append(
            mia.rmia(target_logits, labels, shadow_logits[:, :n], inclusion[:, :n], pool_target, y[pool].numpy(),
                     shadow_logits[:, n:], inclusion[:, n:], online=online)
        )
    return {r.name: mia.attack_metrics(r.scores, is_member, n_bootstrap=0).auc for r in results}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_every_attack_is_a_coin_flip_on_unseen_members():
    runs = [_all_attack_aucs(seed) for seed in range(5)]
    for name in runs[0]:
        mean_auc = float(np.mean([r[name] for r in runs]))
        assert abs(mean_auc - 0.5) <= 0.03, f"{name}: mean AUC {mean_auc:.3f} on a null problem"

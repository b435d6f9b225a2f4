"""The attack registry: one vocabulary (old spellings accepted) and one dispatcher."""

from __future__ import annotations

import numpy as np
import pytest

from sparsemia.mia import attacks as A
from sparsemia.mia.registry import ATTACKS, AttackInputs, canonical_attack, run_attack


def test_names_are_the_ones_results_carry_and_aliases_map_to_them():
    assert "lira_online_fixed_var" in ATTACKS and "rmia" in ATTACKS and "rmia_offline" in ATTACKS
    assert canonical_attack("lira_online_fixed_variance") == "lira_online_fixed_var"
    assert canonical_attack("lira-offline-fixed-variance") == "lira_offline_fixed_var"
    assert canonical_attack("rmia_online") == "rmia"
    with pytest.raises(ValueError, match="attacks: unknown attack 'lira_sideways'"):
        canonical_attack("lira_sideways")


def _inputs(seed=0, n=40, m=6, c=4, z=30):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    inclusion = np.zeros((m, n), dtype=bool)
    for j in range(n):
        inclusion[rng.permutation(m)[: m // 2], j] = True
    shadow = rng.normal(size=(m, n, c))
    shadow[np.arange(m)[:, None], np.arange(n)[None], labels[None]] += 2.0 * inclusion
    records = A.ShadowRecords.from_models(shadow, labels, inclusion)
    return AttackInputs(
        target_logits=rng.normal(size=(n, c)), labels=labels, shadow_logits=shadow, inclusion=inclusion,
        records=records, population_logits=rng.normal(size=(z, c)), population_labels=rng.integers(0, c, z),
        shadow_population_logits=rng.normal(size=(m, z, c)), seed=seed,
    )


def test_run_attack_is_the_attack_function_with_the_registered_options():
    x = _inputs()
    direct = {
        "loss": A.metric_attack("loss", x.target_logits, x.labels, x.records),
        "lira_offline_fixed_var": A.lira(x.target_logits, x.labels, x.shadow_logits, x.inclusion, online=False,
                                         fixed_variance=True),
        "rmia": A.rmia(x.target_logits, x.labels, x.shadow_logits, x.inclusion, x.population_logits,
                       x.population_labels, x.shadow_population_logits, online=True),
        "rmia_offline": A.rmia(x.target_logits, x.labels, x.shadow_logits, x.inclusion, x.population_logits,
                               x.population_labels, x.shadow_population_logits, online=False),
    }
    for name, expected in direct.items():
        np.testing.assert_array_equal(run_attack(name, x).scores, expected.scores)
    np.testing.assert_array_equal(run_attack("rmia_online", x).scores, direct["rmia"].scores)
    for name in ATTACKS:
        assert run_attack(name, x).scores.shape == (40,)


def test_rmia_without_population_is_a_clear_error():
    x = _inputs()
    x.population_logits = None
    with pytest.raises(ValueError, match="population"):
        run_attack("rmia", x)

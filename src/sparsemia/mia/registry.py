"""The attacks by name: one vocabulary and one dispatcher for every command.

``sparsemia attack``, ``sparsemia reproduce`` and the experiment pipeline name
attacks with the names of :data:`ATTACKS` (the names results files carry);
older spellings are accepted through :func:`canonical_attack`. :func:`run_attack`
runs one attack on an :class:`AttackInputs`, so that every caller computes an
attack the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparsemia.mia import attacks as A

__all__ = ["AttackSpec", "AttackInputs", "ATTACKS", "ALIASES", "canonical_attack", "run_attack"]


@dataclass(frozen=True)
class AttackSpec:
    """An attack: its ``family`` (``metric``, ``shadow``, ``lira``, ``rmia``) and the options it passes."""

    name: str
    family: str
    options: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def _specs() -> dict[str, AttackSpec]:
    specs = [AttackSpec("shadow", "shadow", {}, "Shokri et al. 2017: attack MLP trained on shadow models' outputs")]
    specs += [AttackSpec(m, "metric", {"metric": m}, "Song & Mittal 2021 / Yeom et al. 2018: a threshold "
                         "learned on shadow models") for m in A.METRIC_ATTACKS]
    for fixed in (False, True):
        for online in (True, False):
            name = "lira_" + ("online" if online else "offline") + ("_fixed_var" if fixed else "")
            specs.append(AttackSpec(name, "lira", {"online": online, "fixed_variance": fixed},
                                    "Carlini et al. 2022: likelihood ratio test over shadow models"))
    specs.append(AttackSpec("rmia", "rmia", {"online": True}, "Zarifzadeh et al. 2024, online"))
    specs.append(AttackSpec("rmia_offline", "rmia", {"online": False}, "Zarifzadeh et al. 2024, offline"))
    return {s.name: s for s in specs}


#: Every attack, by the name results carry.
ATTACKS: dict[str, AttackSpec] = _specs()

#: Other accepted spellings → the name in :data:`ATTACKS`.
ALIASES = {
    "lira_online_fixed_variance": "lira_online_fixed_var",
    "lira_offline_fixed_variance": "lira_offline_fixed_var",
    "rmia_online": "rmia",
    "shadow_model": "shadow",
}


def canonical_attack(name: str, argument: str = "attacks") -> str:
    """The :data:`ATTACKS` name of ``name`` (an alias is translated); a clear error for an unknown one."""
    key = str(name).strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in ATTACKS:
        raise ValueError(f"{argument}: unknown attack {name!r}; expected one of {list(ATTACKS)}")
    return key


@dataclass
class AttackInputs:
    """What the attacks see.

    * ``target_logits`` ``[N, C]``, ``labels`` ``[N]``: the target on the N candidates;
    * ``shadow_logits`` ``[M, N, C]`` and ``inclusion`` ``[M, N]``: shadow / reference models on the candidates;
    * ``records``: shadow outputs with known membership (learned thresholds, Shokri's attack model);
    * ``population_*``: the target ``[Z, C]`` and shadows ``[M, Z, C]`` on population samples no model
      trained on, with their labels ``[Z]`` (RMIA);
    * ``seed``: the seed of the attack model (Shokri's).
    """

    target_logits: np.ndarray
    labels: np.ndarray
    shadow_logits: np.ndarray
    inclusion: np.ndarray
    records: A.ShadowRecords
    population_logits: np.ndarray | None = None
    population_labels: np.ndarray | None = None
    shadow_population_logits: np.ndarray | None = None
    seed: int = 0
    num_classes: int | None = None


def run_attack(name: str, inputs: AttackInputs) -> A.AttackResult:
    """Run the attack ``name`` (see :data:`ATTACKS`; aliases accepted) on ``inputs``."""
    spec = ATTACKS[canonical_attack(name, "name")]
    z, y = inputs.target_logits, inputs.labels
    if spec.family == "metric":
        return A.metric_attack(spec.options["metric"], z, y, inputs.records, threshold="class",
                               num_classes=inputs.num_classes)
    if spec.family == "shadow":
        return A.shadow_model_attack(z, y, inputs.records, seed=inputs.seed)
    if spec.family == "lira":
        return A.lira(z, y, inputs.shadow_logits, inputs.inclusion, num_classes=inputs.num_classes, **spec.options)
    if inputs.population_logits is None or inputs.shadow_population_logits is None:
        raise ValueError(f"inputs: {spec.name} needs population samples (population_logits and their shadow logits)")
    return A.rmia(z, y, inputs.shadow_logits, inputs.inclusion, inputs.population_logits, inputs.population_labels,
                  inputs.shadow_population_logits, None, num_classes=inputs.num_classes, **spec.options)

"""Experiment configuration: one dataclass, named presets, YAML files, overrides.

A configuration fully determines a run: the run directory stores it, and a
directory holding a different configuration is refused (see
:mod:`sparsemia.experiments.rundir`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from sparsemia.mia.registry import ATTACKS as _ATTACK_REGISTRY
from sparsemia.mia.registry import canonical_attack
from sparsemia.seeds import Purpose, derive_seed
from sparsemia.train.defenses import DEFAULTS as _DEFENSE_DEFAULTS
from sparsemia.train.defenses import DEFENSES as _DEFENSE_REGISTRY
from sparsemia.train.defenses import DefenseOptions, canonical_defense

__all__ = ["ExperimentConfig", "PRESETS", "ATTACKS", "DEFENSES", "preset", "load_config_file"]

#: Names of the defenses and attacks (the registries: :mod:`sparsemia.train.defenses`, :mod:`sparsemia.mia.registry`).
DEFENSES = tuple(_DEFENSE_REGISTRY)
ATTACKS = tuple(_ATTACK_REGISTRY)


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that determines a ``sparsemia reproduce`` run.

    Data: ``dataset`` (see :func:`sparsemia.data.load_dataset`) is split into
    target members / non-members (the attacks' candidates), the defender's
    reference set (Min-Max), a test set, and the attacker's pool (shadow and
    reference models; a slice of it is the attacker's own Min-Max reference).

    Shadow models: ``num_shadows`` models trained like the target (same
    architecture, same defense, same number of training examples) on random
    subsets of a universe made of the candidates plus attacker-pool examples;
    every universe example is in the training set of exactly
    ``round(num_shadows * pkeep)`` of them (LiRA's design), ``pkeep`` being the
    target's training-set size over the universe's. The universe is sized so
    that each candidate has at least two IN models. ``shadows_per_task`` models
    form one task (the unit of work for the Ray executor).
    """

    preset: str = "mnist-lenet5"
    dataset: str = "mnist-embedded"
    data_root: str | None = None
    model: str = "lenet5"
    target_members: int = 500
    target_non_members: int = 500
    defense_reference: int = 500
    test_size: int = 1000
    attacker_reference: int = 500
    defenses: tuple[str, ...] = ("none", "minmax", "magnitude", "admm", "admm+minmax")
    attacks: tuple[str, ...] = ATTACKS
    sparsity: float = _DEFENSE_DEFAULTS.sparsity
    # training (see sparsemia.train.TrainConfig)
    epochs: int = 40
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    augment: bool = False
    # defenses (defaults: sparsemia.train.defenses.DEFAULTS)
    minmax_lambda: float = _DEFENSE_DEFAULTS.lam
    minmax_k: int = _DEFENSE_DEFAULTS.k
    finetune_epochs: int = _DEFENSE_DEFAULTS.finetune_epochs
    admm_rounds: int = _DEFENSE_DEFAULTS.admm_rounds
    admm_rho: float = _DEFENSE_DEFAULTS.admm_rho
    # population evaluation: K models per defense, each a target once (1: one target, shadow models)
    targets: int = 1
    # attacks
    num_shadows: int = 8
    shadows_per_task: int = 4
    n_bootstrap: int = 200
    speed_batch: int = 256
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("target_members", "target_non_members", "test_size", "num_shadows", "shadows_per_task", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        for name in ("defense_reference", "attacker_reference", "n_bootstrap", "finetune_epochs", "admm_rounds"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected a non-negative integer, got {getattr(self, name)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity: expected a fraction in [0, 1), got {self.sparsity}")
        if not self.defenses:
            raise ValueError(f"defenses: expected a non-empty subset of {DEFENSES}, got {list(self.defenses)}")
        if not self.attacks:
            raise ValueError(f"attacks: expected a non-empty subset of {ATTACKS}, got {list(self.attacks)}")
        # one vocabulary: older spellings (lira_online_fixed_variance, rmia_online, ...) become the registry's
        object.__setattr__(self, "defenses", tuple(canonical_defense(d, "defenses") for d in self.defenses))
        object.__setattr__(self, "attacks", tuple(canonical_attack(a, "attacks") for a in self.attacks))
        if self.targets != 1 and (self.targets < 4 or self.targets % 2):
            raise ValueError(f"targets: expected 1 (one target with shadow models) or an even number >= 4 "
                             f"(a population per defense), got {self.targets}")
        if self.num_shadows < 4:
            raise ValueError(f"num_shadows: expected at least 4 (LiRA needs IN and OUT models), got {self.num_shadows}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device: expected 'cpu' or 'cuda[:N]', got {self.device!r}")
        if any("minmax" in d for d in self.defenses) and self.defense_reference < 1:
            raise ValueError("defense_reference: the Min-Max defenses need a reference set (> 0 examples)")

    # ------------------------------------------------------------- plumbing
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["defenses"] = list(self.defenses)
        out["attacks"] = list(self.attacks)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExperimentConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown option(s) {unknown}; expected some of {sorted(known)}")
        return cls(**dict(data))

    def fingerprint(self) -> str:
        """A short hash of the configuration (what makes two runs comparable)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, **overrides: Any) -> ExperimentConfig:
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given) if given else self

    def defense_options(self) -> DefenseOptions:
        """The defenses' options of this experiment."""
        return DefenseOptions(sparsity=self.sparsity, finetune_epochs=self.finetune_epochs,
                              admm_rounds=self.admm_rounds, admm_rho=self.admm_rho, lam=self.minmax_lambda,
                              k=self.minmax_k)

    def seed_for(self, *purpose: Purpose, bits: int = 63) -> int:
        """The seed of ``purpose`` in this experiment (see :func:`sparsemia.seeds.derive_seed`)."""
        return derive_seed(self.seed, *purpose, bits=bits)

    def train_config(self, *purpose: Purpose):
        """The training config; its seed is the one of ``("train", *purpose)``."""
        from sparsemia.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            lr=self.lr,
            weight_decay=self.weight_decay,
            augment=self.augment,
            hflip=self.augment and self.dataset.startswith(("cifar", "svhn")),
            seed=self.seed_for("train", *purpose),
        )


_MNIST = ExperimentConfig()
PRESETS: dict[str, ExperimentConfig] = {
    # The embedded default: LeNet-5 on the 5,000-image MNIST subset, trained to
    # 100% training accuracy on 500 members (with 1,000 members MNIST-trained
    # LeNet-5 barely leaks: loss-attack AUC ~0.52). Eight shadow models per
    # defense keep the run within minutes on two cores; LiRA's paper uses 64+
    # (--num-shadows).
    # Evaluated as populations: 16 models per defense, each trained on a random half of the
    # 1,000 candidates and attacked once as the target (see sparsemia.experiments.population).
    "mnist-lenet5": replace(_MNIST, targets=16),
    # The short run: 8 models per defense on 500 candidates.
    "mnist-lenet5-quick": replace(
        _MNIST, preset="mnist-lenet5-quick", target_members=250, target_non_members=250, defense_reference=250,
        test_size=500, attacker_reference=250, num_shadows=4, shadows_per_task=4, n_bootstrap=100, targets=8,
    ),
    "cifar10-vgg16": replace(
        _MNIST, preset="cifar10-vgg16", dataset="cifar10", model="vgg16", target_members=10000,
        target_non_members=10000, defense_reference=10000, test_size=10000, attacker_reference=5000, epochs=60,
        batch_size=128, optimizer="sgd", lr=0.05, weight_decay=5e-4, augment=True, num_shadows=16, shadows_per_task=8,
    ),
    "cifar10-resnet18": replace(
        _MNIST, preset="cifar10-resnet18", dataset="cifar10", model="resnet18", target_members=10000,
        target_non_members=10000, defense_reference=10000, test_size=10000, attacker_reference=5000, epochs=60,
        batch_size=128, optimizer="sgd", lr=0.05, weight_decay=5e-4, augment=True, num_shadows=16, shadows_per_task=8,
    ),
    "cifar100-resnet18": replace(
        _MNIST, preset="cifar100-resnet18", dataset="cifar100", model="resnet18", target_members=10000,
        target_non_members=10000, defense_reference=10000, test_size=10000, attacker_reference=5000, epochs=60,
        batch_size=128, optimizer="sgd", lr=0.05, weight_decay=5e-4, augment=True, num_shadows=16, shadows_per_task=8,
    ),
    "purchase100-mlp": replace(
        _MNIST, preset="purchase100-mlp", dataset="purchase100", model="mlp", target_members=10000,
        target_non_members=10000, defense_reference=10000, test_size=10000, attacker_reference=5000, epochs=50,
        batch_size=128, lr=1e-3, num_shadows=16, shadows_per_task=8,
    ),
    "texas100-mlp": replace(
        _MNIST, preset="texas100-mlp", dataset="texas100", model="mlp", target_members=10000,
        target_non_members=10000, defense_reference=10000, test_size=10000, attacker_reference=5000, epochs=50,
        batch_size=128, lr=1e-3, num_shadows=16, shadows_per_task=8,
    ),
}


def preset(name: str) -> ExperimentConfig:
    """The named preset (one of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown name {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML or JSON file, as a dict (``preset`` may name the base)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config: expected a mapping of option names to values in {path}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}

"""Disjoint member / non-member / attacker / test splits, deterministic from a seed.

A membership-inference evaluation needs index sets that never overlap:

* ``target_members`` — the target model's training set;
* ``target_non_members`` — held out from the target; with the members, the
  candidates the attack must tell apart;
* ``attacker_pool`` — data the attacker owns, for shadow / reference models
  (LiRA and RMIA also train reference models on halves of pool ∪ candidates);
* ``test`` — for the target's test accuracy;
* ``defense_reference`` — optional data the *defender* holds for the Min-Max game.

Splits are saved with a run (JSON, or ``.npz``) and checked for disjointness on
creation and on load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsemia.io import atomic_write, read_json, read_npz

__all__ = ["MembershipSplits", "make_splits", "load_splits", "SPLIT_NAMES"]

SPLIT_NAMES = ("target_members", "target_non_members", "attacker_pool", "test", "defense_reference")


@dataclass(frozen=True)
class MembershipSplits:
    """Index arrays (int64, into one dataset) for each split; see the module docstring."""

    target_members: np.ndarray
    target_non_members: np.ndarray
    attacker_pool: np.ndarray
    test: np.ndarray
    defense_reference: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    num_examples: int = -1
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64).reshape(-1))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError if any split repeats an index, overlaps another, or falls outside the dataset."""
        checked: list[str] = []
        for name in SPLIT_NAMES:
            idx = getattr(self, name)
            if idx.size and idx.min() < 0:
                raise ValueError(f"{name}: negative index {int(idx.min())}")
            if self.num_examples >= 0 and idx.size and idx.max() >= self.num_examples:
                raise ValueError(f"{name}: index {int(idx.max())} outside a dataset of {self.num_examples} examples")
            if np.unique(idx).size != idx.size:
                raise ValueError(f"{name}: contains repeated indices")
            for other_name in checked:
                common = np.intersect1d(idx, getattr(self, other_name))
                if common.size:
                    raise ValueError(
                        f"splits overlap: {name} and {other_name} share {common.size} indices (e.g. {int(common[0])})"
                    )
            checked.append(name)

    @property
    def candidates(self) -> np.ndarray:
        """Target members then target non-members (the examples an attack scores)."""
        return np.concatenate([self.target_members, self.target_non_members])

    @property
    def candidate_is_member(self) -> np.ndarray:
        """Boolean membership labels aligned with :attr:`candidates`."""
        return np.concatenate(
            [np.ones(self.target_members.size, dtype=bool), np.zeros(self.target_non_members.size, dtype=bool)]
        )

    def to_dict(self) -> dict:
        out: dict = {name: getattr(self, name).tolist() for name in SPLIT_NAMES}
        out["num_examples"] = self.num_examples
        out["seed"] = self.seed
        return out

    def save(self, path: str | Path) -> Path:
        """Write atomically to ``path`` (``.json`` or ``.npz``)."""
        path = Path(path)
        if path.suffix == ".npz":
            arrays = {name: getattr(self, name) for name in SPLIT_NAMES}
            seed = -1 if self.seed is None else self.seed
            atomic_write(path, lambda f: np.savez(f, num_examples=self.num_examples, seed=seed, **arrays))
        else:
            atomic_write(path, json.dumps(self.to_dict()))
        return path


def load_splits(path: str | Path) -> MembershipSplits:
    """Read splits saved by :meth:`MembershipSplits.save`, checking them again."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no splits file at {path}")
    if path.suffix == ".npz":
        npz = read_npz(path, "splits")
        if "seed" not in npz or "num_examples" not in npz:
            raise ValueError(f"splits: {path} is not a splits file (no 'seed' / 'num_examples')")
        seed = int(npz["seed"])
        arrays = {name: npz[name] for name in SPLIT_NAMES if name in npz}
        return MembershipSplits(num_examples=int(npz["num_examples"]), seed=None if seed < 0 else seed, **arrays)
    data = read_json(path, "splits")
    if not isinstance(data, dict):
        raise ValueError(f"splits: {path} holds a JSON {type(data).__name__}, expected an object of index lists")
    arrays = {name: np.asarray(data.get(name, []), dtype=np.int64) for name in SPLIT_NAMES}
    return MembershipSplits(num_examples=int(data.get("num_examples", -1)), seed=data.get("seed"), **arrays)


def make_splits(
    num_examples: int,
    *,
    target_members: int,
    target_non_members: int | None = None,
    attacker_pool: int | None = None,
    test: int = 0,
    defense_reference: int = 0,
    seed: int = 0,
) -> MembershipSplits:
    """Random disjoint splits of ``range(num_examples)``, deterministic from ``seed``.

    ``target_non_members`` defaults to ``target_members`` (a balanced candidate
    set); ``attacker_pool=None`` gives the pool every index not used elsewhere.
    """
    if num_examples <= 0:
        raise ValueError(f"num_examples: expected a positive integer, got {num_examples}")
    if target_non_members is None:
        target_non_members = target_members
    fixed = {
        "target_members": target_members,
        "target_non_members": target_non_members,
        "test": test,
        "defense_reference": defense_reference,
    }
    for name, size in fixed.items():
        if size < 0:
            raise ValueError(f"{name}: expected a non-negative size, got {size}")
    if target_members == 0:
        raise ValueError("target_members: expected at least one member")
    used = sum(fixed.values())
    if attacker_pool is None:
        attacker_pool = num_examples - used
    if attacker_pool < 0 or used + attacker_pool > num_examples:
        raise ValueError(
            f"split sizes: {used + max(attacker_pool, 0)} indices requested from a dataset of {num_examples}"
        )
    order = np.random.default_rng(seed).permutation(num_examples)
    sizes = [target_members, target_non_members, attacker_pool, test, defense_reference]
    bounds = np.cumsum([0, *sizes])
    parts = [np.sort(order[bounds[i] : bounds[i + 1]]) for i in range(len(sizes))]
    return MembershipSplits(*parts, num_examples=num_examples, seed=seed)

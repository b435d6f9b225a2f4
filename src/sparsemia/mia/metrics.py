"""Attack metrics from per-example membership scores, with bootstrap confidence intervals.

Scores are oriented "higher = more likely a member". ROC curves and AUC come
from scikit-learn (``roc_curve``, ``roc_auc_score``), so reported numbers agree
with it on the saved scores. Definitions:

* ``auc`` — area under the ROC curve;
* ``tpr_at_1pct_fpr`` / ``tpr_at_0.1pct_fpr`` — the highest TPR among ROC points
  with FPR ≤ 1% / 0.1% (Carlini et al. 2022's low-FPR metric);
* ``advantage`` — membership advantage TPR − FPR (Yeom et al. 2018) of the attack's
  decisions when given (a threshold learned on shadow models), else the best over
  all thresholds;
* ``attack_acc`` — balanced accuracy (TPR + TNR)/2 of those decisions
  (= 0.5 + advantage / 2); ``best_attack_acc`` — the best over thresholds (an
  oracle upper bound, reported separately);
* ``per_class`` — AUC and balanced accuracy among examples of each class;
* ``ci`` — 95% percentile bootstrap intervals (resampling examples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from sparsemia.io import atomic_write, read_npz

__all__ = [
    "AttackMetrics",
    "attack_metrics",
    "tpr_at_fpr",
    "roc_points",
    "save_scores",
    "load_scores",
    "POPULATION_METRICS",
    "bootstrap_draws",
    "PooledROC",
    "population_metrics",
]


def _check(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.asarray(is_member)
    if m.dtype != bool:
        if not np.isin(m, (0, 1)).all():
            raise ValueError("is_member: expected booleans (or 0/1)")
        m = m.astype(bool)
    m = m.reshape(-1)
    if s.shape != m.shape:
        raise ValueError(f"scores and is_member: lengths differ ({s.size} vs {m.size})")
    if not np.isfinite(s).all():
        raise ValueError("scores: contain NaN or infinite values")
    if m.all() or not m.any():
        raise ValueError("is_member: need both members and non-members")
    return s, m


def roc_points(scores, is_member) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from ``sklearn.metrics.roc_curve`` (all points kept)."""
    s, m = _check(scores, is_member)
    return roc_curve(m, s, drop_intermediate=False)


def tpr_at_fpr(scores, is_member, max_fpr: float) -> float:
    """Highest TPR among ROC points with FPR ≤ ``max_fpr``."""
    if not 0.0 <= max_fpr <= 1.0:
        raise ValueError(f"max_fpr: expected a rate in [0, 1], got {max_fpr}")
    fpr, tpr, _ = roc_points(scores, is_member)
    return float(tpr[fpr <= max_fpr].max())


def _roc(s: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` at every distinct threshold, as ``roc_curve(m, s, drop_intermediate=False)``
    computes them (without its input validation, which dominates the cost of a bootstrap)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, m_sorted = s[order], m[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(m_sorted)[last]
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr


def _core(s: np.ndarray, m: np.ndarray, predictions: np.ndarray | None, exact: bool = True) -> dict[str, float]:
    # exact: scikit-learn's roc_curve / roc_auc_score (the reported point estimates);
    # otherwise the same curve and trapezoidal area from _roc (bootstrap replicates, per class)
    if exact:
        fpr, tpr, _ = roc_curve(m, s, drop_intermediate=False)
        auc = float(roc_auc_score(m, s))
    else:
        fpr, tpr = _roc(s, m)
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
    best_adv = float((tpr - fpr).max())
    out = {
        "auc": auc,
        "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()),
        "tpr_at_0.1pct_fpr": float(tpr[fpr <= 0.001].max()),
        "best_advantage": best_adv,
        "best_attack_acc": 0.5 + best_adv / 2,
    }
    if predictions is not None:
        tpr_p = float(predictions[m].mean())
        fpr_p = float(predictions[~m].mean())
        out["advantage"] = tpr_p - fpr_p
        out["attack_acc"] = 0.5 * (tpr_p + 1.0 - fpr_p)
    else:
        out["advantage"] = best_adv
        out["attack_acc"] = out["best_attack_acc"]
    return out


@dataclass
class AttackMetrics:
    """Metrics of one attack on one target (see the module docstring)."""

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    advantage: float
    attack_acc: float
    best_advantage: float
    best_attack_acc: float
    num_members: int
    num_non_members: int
    roc_fpr: np.ndarray = field(repr=False)
    roc_tpr: np.ndarray = field(repr=False)
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_class: dict[int, dict[str, float]] = field(default_factory=dict)

    def to_dict(self, roc: bool = False) -> dict:
        out = {
            "auc": self.auc,
            "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            "tpr_at_0.1pct_fpr": self.tpr_at_01pct_fpr,
            "advantage": self.advantage,
            "attack_acc": self.attack_acc,
            "best_advantage": self.best_advantage,
            "best_attack_acc": self.best_attack_acc,
            "num_members": self.num_members,
            "num_non_members": self.num_non_members,
            "ci95": {k: list(v) for k, v in self.ci.items()},
            "per_class": {str(k): v for k, v in self.per_class.items()},
        }
        if roc:
            out["roc"] = {"fpr": self.roc_fpr.tolist(), "tpr": self.roc_tpr.tolist()}
        return out


def attack_metrics(
    scores,
    is_member,
    *,
    predictions=None,
    labels=None,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> AttackMetrics:
    """All metrics for membership ``scores`` (higher = member) against the truth ``is_member``.

    Args:
        predictions: the attack's boolean member decisions (e.g. a threshold learned
            on shadow models); without them advantage and accuracy are the best over thresholds.
        labels: class labels for the per-class breakdown.
        n_bootstrap: bootstrap resamples for the 95% intervals (0 disables them).
        seed: seed of the bootstrap resampling.
    """
    s, m = _check(scores, is_member)
    pred = None
    if predictions is not None:
        pred = np.asarray(predictions).astype(bool).reshape(-1)
        if pred.shape != s.shape:
            raise ValueError(f"predictions: expected {s.size} decisions, got {pred.size}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap: expected >= 0, got {n_bootstrap}")
    core = _core(s, m, pred)
    fpr, tpr, _ = roc_curve(m, s, drop_intermediate=False)
    ci: dict[str, tuple[float, float]] = {}
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        samples: dict[str, list[float]] = {k: [] for k in core}
        n = s.size
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, n)
            mb = m[idx]
            if mb.all() or not mb.any():
                continue
            for k, v in _core(s[idx], mb, None if pred is None else pred[idx], exact=False).items():
                samples[k].append(v)
        ci = {k: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) for k, v in samples.items() if v}
    per_class: dict[int, dict[str, float]] = {}
    if labels is not None:
        lab = np.asarray(labels).reshape(-1)
        if lab.shape != s.shape:
            raise ValueError(f"labels: expected {s.size} labels, got {lab.size}")
        for c in np.unique(lab):
            sel = lab == c
            if m[sel].all() or not m[sel].any():
                continue
            cc = _core(s[sel], m[sel], None if pred is None else pred[sel], exact=False)
            per_class[int(c)] = {
                "auc": cc["auc"],
                "attack_acc": cc["attack_acc"],
                "advantage": cc["advantage"],
                "count": int(sel.sum()),
            }
    return AttackMetrics(
        auc=core["auc"],
        tpr_at_1pct_fpr=core["tpr_at_1pct_fpr"],
        tpr_at_01pct_fpr=core["tpr_at_0.1pct_fpr"],
        advantage=core["advantage"],
        attack_acc=core["attack_acc"],
        best_advantage=core["best_advantage"],
        best_attack_acc=core["best_attack_acc"],
        num_members=int(m.sum()),
        num_non_members=int((~m).sum()),
        roc_fpr=fpr,
        roc_tpr=tpr,
        ci=ci,
        per_class=per_class,
    )


def save_scores(path: str | Path, score, is_member, index) -> Path:
    """Write per-example scores atomically as ``.npz`` with arrays ``score``, ``is_member``, ``index``."""
    path = Path(path)
    s, m = _check(score, is_member)
    idx = np.asarray(index, dtype=np.int64).reshape(-1)
    if idx.shape != s.shape:
        raise ValueError(f"index: expected {s.size} dataset indices, got {idx.size}")
    atomic_write(path, lambda f: np.savez(f, score=s, is_member=m, index=idx))
    return path


def load_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(score, is_member, index)`` from a file written by :func:`save_scores`."""
    arrays = read_npz(path, "path")
    missing = [k for k in ("score", "is_member", "index") if k not in arrays]
    if missing:
        raise ValueError(f"path: {path} is not a scores file (no {missing})")
    return arrays["score"], arrays["is_member"], arrays["index"]


# ---------------------------------------------------------------------------- populations of targets
#
# A population evaluation scores K target models on the same N candidates: scores and
# membership are [K, N]. Metrics are pooled over every (target, candidate) pair, as LiRA's
# plotting code pools its test models into one ROC curve, and their 95% intervals come from a
# bootstrap that resamples targets and candidates together (a two-way bootstrap: replicate b
# weights pair (t, x) by count_t · count_x, the multiplicities of t and x in its draws). The
# pooled ROC is sorted once; a replicate is a weighted cumulative sum over that order, so it
# costs O(K·N) instead of a sort.

#: Metrics of a population, in the order reported.
POPULATION_METRICS = ("attack_acc", "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")


def bootstrap_draws(num_targets: int, num_candidates: int, n_bootstrap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Multiplicities ``([B, K], [B, N])`` of targets and candidates in B two-way bootstrap draws.

    Deterministic in ``(num_targets, num_candidates, n_bootstrap, seed)``, so two populations
    evaluated on the same candidates and inclusion get the same draws (paired comparisons).
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap: expected >= 0, got {n_bootstrap}")
    rng = np.random.default_rng([seed, num_targets, num_candidates, 0x5EED])
    t = rng.integers(0, num_targets, (n_bootstrap, num_targets))
    c = rng.integers(0, num_candidates, (n_bootstrap, num_candidates))
    t_counts = np.zeros((n_bootstrap, num_targets))
    c_counts = np.zeros((n_bootstrap, num_candidates))
    rows = np.arange(n_bootstrap)[:, None]
    np.add.at(t_counts, (rows, t), 1.0)
    np.add.at(c_counts, (rows, c), 1.0)
    return t_counts, c_counts


class PooledROC:
    """Pooled ROC metrics of ``scores`` / ``is_member`` ``[K, N]`` (and decisions ``predictions``),
    at unit weights (the point estimate) or at a bootstrap replicate's target and candidate weights.

    At unit weights the curve is scikit-learn's ``roc_curve(..., drop_intermediate=False)`` of the
    flattened arrays (a point per distinct score), and the AUC its trapezoidal area (= ``roc_auc_score``).
    """

    def __init__(self, scores: np.ndarray, is_member: np.ndarray, predictions: np.ndarray | None = None) -> None:
        s = np.asarray(scores, dtype=np.float64)
        m = np.asarray(is_member, dtype=bool)
        if s.ndim != 2 or s.shape != m.shape:
            raise ValueError(f"scores and is_member: expected equal [K, N] shapes, got {s.shape} and {m.shape}")
        if not np.isfinite(s).all():
            raise ValueError("scores: contain NaN or infinite values")
        if m.all() or not m.any():
            raise ValueError("is_member: need both members and non-members")
        self.shape = s.shape
        order = np.argsort(-s.ravel(), kind="mergesort")
        s_sorted = s.ravel()[order]
        self._t, self._x = np.divmod(order, s.shape[1])
        self._member = m.ravel()[order]
        self._last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
        self._m = m
        self._pred = None if predictions is None else np.asarray(predictions, dtype=bool)
        if self._pred is not None and self._pred.shape != s.shape:
            raise ValueError(f"predictions: expected shape {s.shape}, got {self._pred.shape}")

    def metrics(self, target_weights: np.ndarray | None = None, candidate_weights: np.ndarray | None = None) -> dict:
        """``{"attack_acc", "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"}`` (``attack_acc``: balanced
        accuracy of the decisions, or the best over thresholds when there are none)."""
        if target_weights is None:
            w = np.ones(self._member.size)
            w_grid = None
        else:
            w = target_weights[self._t] * candidate_weights[self._x]
            w_grid = target_weights[:, None] * candidate_weights[None, :]
        tps = np.cumsum(w * self._member)[self._last]
        fps = np.cumsum(w * ~self._member)[self._last]
        if tps[-1] <= 0 or fps[-1] <= 0:
            return {k: float("nan") for k in POPULATION_METRICS}
        tpr = np.r_[0.0, tps / tps[-1]]
        fpr = np.r_[0.0, fps / fps[-1]]
        out = {
            "auc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2),
            "tpr_at_1pct_fpr": float(tpr[fpr <= 0.01].max()),
            "tpr_at_0.1pct_fpr": float(tpr[fpr <= 0.001].max()),
        }
        if self._pred is None:
            out["attack_acc"] = float(0.5 + (tpr - fpr).max() / 2)
        else:
            wm = self._m if w_grid is None else self._m * w_grid
            wn = ~self._m if w_grid is None else ~self._m * w_grid
            tpr_p = float((wm * self._pred).sum() / wm.sum())
            fpr_p = float((wn * self._pred).sum() / wn.sum())
            out["attack_acc"] = 0.5 * (tpr_p + 1.0 - fpr_p)
        return {k: out[k] for k in POPULATION_METRICS}


def _percentile_ci(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))


def population_metrics(
    scores,
    is_member,
    predictions=None,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """Metrics of K targets scored on N candidates (``[K, N]`` arrays; higher score = member).

    Returns ``{"num_targets", "num_candidates", "pooled": {metric: value}, "ci95": {metric: [lo, hi]},
    "per_target": {"mean": {...}, "sd": {...}}}`` over :data:`POPULATION_METRICS`:

    * ``pooled``: every (target, candidate) pair in one ROC curve / one confusion matrix
      (as LiRA's code evaluates its test models);
    * ``ci95``: 95% percentile intervals of the pooled metrics from ``n_bootstrap`` two-way
      bootstrap replicates (targets and candidates resampled, :func:`bootstrap_draws`);
    * ``per_target``: each target's own metrics, their mean and standard deviation (ddof 1)
      over targets (how much one target model alone would have varied).
    """
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member, dtype=bool)
    pred = None if predictions is None else np.asarray(predictions, dtype=bool)
    roc = PooledROC(s, m, pred)
    k, n = s.shape
    out: dict = {"num_targets": k, "num_candidates": n, "pooled": roc.metrics()}
    tw, cw = bootstrap_draws(k, n, n_bootstrap, seed)
    reps = np.array([[r[key] for key in POPULATION_METRICS] for r in (roc.metrics(a, b) for a, b in zip(tw, cw, strict=True))])
    out["ci95"] = {
        key: list(_percentile_ci(reps[:, i])) if n_bootstrap else [float("nan")] * 2
        for i, key in enumerate(POPULATION_METRICS)
    }
    per = []
    for t in range(k):
        if m[t].all() or not m[t].any():
            continue
        per.append(PooledROC(s[t : t + 1], m[t : t + 1], None if pred is None else pred[t : t + 1]).metrics())
    values = np.array([[p[key] for key in POPULATION_METRICS] for p in per])
    out["per_target"] = {
        "mean": {key: float(values[:, i].mean()) for i, key in enumerate(POPULATION_METRICS)},
        "sd": {key: float(values[:, i].std(ddof=1)) if len(per) > 1 else 0.0 for i, key in enumerate(POPULATION_METRICS)},
    }
    return out

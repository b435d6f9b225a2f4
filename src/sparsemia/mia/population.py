"""Population evaluation: K models on random halves of one candidate universe, each a target once.

``logits[k, n, q]`` are model k's outputs on query q (:func:`sparsemia.mia.queries.augment`)
of candidate n and ``inclusion[k, n]`` says whether model k trained on candidate n (LiRA's
random halves, :func:`sparsemia.mia.shadow.lira_inclusion`). Every model is a target once;
the other K − 1 are its shadow / reference models. Scores, decisions and membership are
``[K, N]``; metrics are pooled over all (target, candidate) pairs, with intervals that
resample targets and candidates (:func:`sparsemia.mia.metrics.population_metrics`).

**The leave-one-out bias and its removal.** With the other K − 1 models as references, a
member of target t has one IN reference fewer (and one OUT more) than a non-member: the
reference counts carry the answer. Scores that depend on those counts are biased even
when outputs carry no membership signal at all — a Gaussian fitted to fewer samples
assigns lower likelihood to a fresh one, so LiRA online scores members *lower* (AUC 0.47–0.485
with 16 models when outputs carry no membership signal). Here each (target, candidate) pair
instead gets exactly ``r`` IN and ``r`` OUT reference models, drawn at random (from
``seed``) among the other models, with ``r`` the same for every pair. The references' count
and composition are then independent of the target's membership, so when outputs are
independent of membership every attack's score has the same distribution for members and
non-members: AUC 0.5 in expectation (the null test in ``tests/mia/test_population.py``).
LiRA's and RMIA's reference code equalise the same way (the first ``in_size`` /
``num_ref_models // 2`` IN and OUT models of each example). ``equalize=False`` keeps every
other model (plain leave-one-out), to measure the bias.

**Decisions.** Attack accuracy needs a yes/no per pair. Metric attacks use thresholds
learned on the reference models' own outputs (Song & Mittal 2021), Shokri et al.'s attack
its classifier's 0.5. LiRA and RMIA have no threshold of their own; for target t one
other model c(t) (drawn from ``seed``) is attacked like a target with references drawn
among the models other than t and c(t), and the threshold of best balanced accuracy on
c(t) — whose membership the attacker knows — is used on t. The same attack on c(t) tunes
offline RMIA's ``a``, as the RMIA paper tunes it by attacking one reference model.

**Choices per attack** (formulas and references in :mod:`sparsemia.mia.attacks`): metric and
shadow-model attacks use the plain query; LiRA (:func:`~sparsemia.mia.attacks.lira_scores`) fits
per-query Gaussians to the r IN / r OUT references and averages over queries; RMIA
(:func:`~sparsemia.mia.attacks.rmia_ratio`, :func:`~sparsemia.mia.attacks.rmia_scores`) uses the
2r references online, the r OUT ones offline, and as population z the target's own candidates
(or outside data, ``population_logits``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from sparsemia.mia import signals
from sparsemia.mia.attacks import (
    best_threshold,
    lira_scores,
    rmia_ratio,
    rmia_scores,
    thresholds_from_values,
)
from sparsemia.mia.metrics import PooledROC, bootstrap_draws, population_metrics
from sparsemia.mia.registry import ATTACKS, canonical_attack

__all__ = ["PopulationResult", "evaluate_population", "compare", "POPULATION_ATTACKS"]

logger = logging.getLogger(__name__)

#: Attacks :func:`evaluate_population` runs: every attack of the registry, by the names
#: results carry (older spellings are accepted through :func:`~sparsemia.mia.registry.canonical_attack`).
POPULATION_ATTACKS = tuple(ATTACKS)

#: RMIA's offline ``a`` grid (the RMIA code's ``np.arange(0, 1.1, 0.1)``).
OFFLINE_A_GRID = tuple(round(0.1 * i, 1) for i in range(11))


@dataclass
class PopulationResult:
    """Scores and metrics of every attack over a population of K targets on N candidates.

    ``scores[a]`` / ``predictions[a]``: ``[K, N]`` for attack ``a`` (row t: model t as the
    target); ``is_member``: ``[K, N]`` (= the inclusion matrix); ``metrics[a]``: the
    dictionary of :func:`~sparsemia.mia.metrics.population_metrics`; ``info[a]``: what the
    attack chose per target (e.g. RMIA's ``offline_a``).
    """

    attacks: list[str]
    scores: dict[str, np.ndarray]
    predictions: dict[str, np.ndarray]
    is_member: np.ndarray
    metrics: dict[str, dict]
    seed: int
    n_bootstrap: int
    references_per_side: int | None
    equalized: bool
    info: dict[str, dict] = field(default_factory=dict)

    @property
    def num_targets(self) -> int:
        return int(self.is_member.shape[0])

    @property
    def num_candidates(self) -> int:
        return int(self.is_member.shape[1])

    def rows(self) -> list[dict]:
        """One JSON-ready row per attack: ``{"attack", "num_targets", "num_candidates", "pooled",
        "ci95", "per_target", "references_per_side", "info"}``."""
        out = []
        for name in self.attacks:
            row = {"attack": name, **self.metrics[name]}
            row["references_per_side"] = self.references_per_side
            row["info"] = self.info.get(name, {})
            out.append(row)
        return out


# ---------------------------------------------------------------------------- checks


def _canonical(name: str) -> str:
    return canonical_attack(name)


def _check_inputs(logits, labels, inclusion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z = np.asarray(logits)
    if not np.issubdtype(z.dtype, np.floating):
        raise ValueError(f"logits: expected floating-point values, got dtype {z.dtype}")
    # float32 logits stay float32 ([K, N, Q, C] can be large); signals are computed from them in float64
    z = z.astype(np.promote_types(z.dtype, np.float32), copy=False)
    if z.ndim == 3:
        z = z[:, :, None, :]
    if z.ndim != 4:
        raise ValueError(f"logits: expected [K, N, Q, C] (or [K, N, C]), got shape {z.shape}")
    k, n, q, c = z.shape
    if c < 2 or q < 1 or n < 2:
        raise ValueError(f"logits: expected at least 2 candidates, 1 query and 2 classes, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits: contain NaN or infinite values")
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},) to match logits, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels: expected integer classes in 0..{c - 1}")
    inc = np.asarray(inclusion)
    if inc.shape != (k, n):
        raise ValueError(f"inclusion: expected shape ({k}, {n}) to match logits, got {inc.shape}")
    if inc.dtype != bool:
        if not np.isin(inc, (0, 1)).all():
            raise ValueError("inclusion: expected booleans (or 0/1)")
        inc = inc.astype(bool)
    empty = np.flatnonzero(inc.all(1) | ~inc.any(1))
    if empty.size:
        raise ValueError(f"inclusion: target {int(empty[0])} has no members or no non-members among the candidates")
    return z, y.astype(np.int64), inc


# ---------------------------------------------------------------------------- reference selection


@dataclass
class _Plan:
    """Reference models of one scored model: boolean ``[K, N]`` masks of its IN and OUT references."""

    scored: int
    ref_in: np.ndarray
    ref_out: np.ndarray
    exclude: tuple[int, ...]


def _calibration_models(k: int, seed: int) -> np.ndarray:
    """c(t) ≠ t for every target t, drawn from ``seed``."""
    rng = np.random.default_rng([seed, 0xCA1])
    return (np.arange(k) + 1 + rng.integers(0, k - 1, k)) % k


def _references_available(inc: np.ndarray, calib: np.ndarray) -> int:
    """The most IN (and OUT) references every pair can get with the target and c(t) both excluded."""
    n_in = inc.sum(0)
    n_out = (~inc).sum(0)
    best = None
    for t in range(inc.shape[0]):
        c = calib[t]
        avail_in = n_in - inc[t] - inc[c]
        avail_out = n_out - (~inc[t]) - (~inc[c])
        r = int(min(avail_in.min(), avail_out.min()))
        best = r if best is None else min(best, r)
    return int(best)


def _select(inc: np.ndarray, scored: int, exclude: tuple[int, ...], per_side: int | None, key: list[int]) -> _Plan:
    k, n = inc.shape
    avail = np.ones(k, dtype=bool)
    avail[list(exclude)] = False
    if per_side is None:
        return _Plan(scored, inc & avail[:, None], ~inc & avail[:, None], exclude)
    keys = np.random.default_rng(key).random((k, n))
    keys[~avail] = np.inf

    def pick(side: np.ndarray) -> np.ndarray:
        # the per_side eligible models with the smallest random keys, in each column
        side_keys = np.where(side, keys, np.inf)
        chosen = np.argpartition(side_keys, per_side - 1, axis=0)[:per_side]
        mask = np.zeros((k, n), dtype=bool)
        mask[chosen, np.arange(n)[None, :]] = True
        return mask

    return _Plan(scored, pick(inc), pick(~inc), exclude)


# ---------------------------------------------------------------------------- the evaluation


def _shadow_model_scores(
    plain: np.ndarray,
    labels: np.ndarray,
    inclusion: np.ndarray,
    record_masks: list[np.ndarray],
    *,
    hidden: tuple[int, ...],
    steps: int,
    max_records: int,
    seed: int,
) -> np.ndarray:
    """Shokri et al. (2017)'s attack, one attack MLP per target, all K trained at once: ``[K, N]`` member probabilities.

    Target t's attack model learns "member vs non-member" from its references' outputs on the
    candidates (the pairs ``record_masks[t]`` selects: per candidate as many IN as OUT records),
    on the features of :func:`~sparsemia.mia.attacks.shadow_model_attack`'s global model (the
    probability vector sorted in descending order and the one-hot label), then scores target t's
    outputs. Records are subsampled to ``max_records`` per target, half members; the K MLPs train
    together as one batched model (full-batch Adam, lr 1e-2, weight decay 1e-4 — scikit-learn's
    ``MLPClassifier`` one target at a time costs seconds per target for the same attack).
    """
    from sparsemia.train.trainer import fused_optimizer

    k, n, c = plain.shape
    probs = np.sort(signals.probabilities(plain), axis=-1)[..., ::-1]
    feats = np.concatenate([probs, np.broadcast_to(np.eye(c)[labels][None], (k, n, c))], axis=-1)
    rng = np.random.default_rng([seed, 0x5A])
    per_side = min(max_records // 2, min(int((m & inclusion).sum()) for m in record_masks),
                   min(int((m & ~inclusion).sum()) for m in record_masks))
    x_train, y_train = [], []
    for mask in record_masks:
        rows = []
        for side in (mask & inclusion, mask & ~inclusion):
            flat = np.flatnonzero(side)
            rows.append(rng.choice(flat, per_side, replace=False))
        pick = np.concatenate(rows)
        x_train.append(feats.reshape(k * n, -1)[pick])
        y_train.append(np.r_[np.ones(per_side), np.zeros(per_side)])
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    xt = torch.as_tensor(np.stack(x_train), dtype=torch.float32)  # [K, R, F]
    yt = torch.as_tensor(np.stack(y_train), dtype=torch.float32)  # [K, R]
    widths = [xt.shape[-1], *hidden, 1]
    params = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        bound = (6.0 / (fan_in + fan_out)) ** 0.5  # Glorot uniform, as MLPClassifier initialises
        w = (torch.rand(k, fan_in, fan_out, generator=gen) * 2 - 1) * bound
        b = (torch.rand(k, 1, fan_out, generator=gen) * 2 - 1) * bound
        params += [w.requires_grad_(), b.requires_grad_()]

    def forward(x: torch.Tensor) -> torch.Tensor:
        for i in range(0, len(params), 2):
            x = torch.baddbmm(params[i + 1], x, params[i])
            if i + 2 < len(params):
                x = torch.relu(x)
        return x.squeeze(-1)

    opt = fused_optimizer(torch.optim.Adam, params, lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(xt), yt)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(forward(torch.as_tensor(feats, dtype=torch.float32))).double().numpy()


def _per_model(signal, logits: np.ndarray, labels: np.ndarray, *args) -> np.ndarray:
    """``signal`` (float64) of each model's ``[N, Q, C]`` logits in turn: ``[K, N, Q]`` without a float64
    copy of all the logits at once."""
    return np.stack([signal(logits[k], labels[:, None], *args) for k in range(logits.shape[0])])


def _rmia_of(
    plan: _Plan,
    offline_a: float | None,
    p_all: np.ndarray,
    p_pop: np.ndarray | None,
    z_idx: np.ndarray,
    trim: float,
    gamma: float,
) -> np.ndarray:
    """RMIA scores ``[N]`` of model ``plan.scored``: online (``offline_a`` None) with its IN and OUT references,
    offline with its OUT references and ``a``; population z: the scored model's own candidates
    (``p_pop`` None) or the outside data ``p_pop`` ``[K, Z, Q]``, subsampled to ``z_idx``."""
    s = plan.scored
    refs = (plan.ref_in | plan.ref_out) if offline_a is None else plan.ref_out
    lr_x = rmia_ratio(p_all[s], p_all, refs, offline_a, trim)
    if p_pop is None:
        lr_z = lr_x[z_idx]
    else:
        # no model trained on the outside data: every model but the excluded ones is a reference for z
        others = np.ones(p_pop.shape[:2], dtype=bool)
        others[list(plan.exclude)] = False
        others[s] = False
        lr_z = rmia_ratio(p_pop[s], p_pop, others, offline_a, trim)[z_idx]
    return rmia_scores(lr_x, lr_z, gamma)


def _best_threshold_decisions(cal_scores: np.ndarray, cal_member: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, float]:
    t = best_threshold(cal_scores[cal_member], cal_scores[~cal_member])
    return scores >= t, t


def _auc(scores: np.ndarray, member: np.ndarray) -> float:
    return PooledROC(scores[None, :], member[None, :]).metrics()["auc"]


def evaluate_population(
    logits,
    labels,
    inclusion,
    attacks,
    seed: int = 0,
    *,
    n_bootstrap: int = 200,
    equalize: bool = True,
    references_per_side: int | None = None,
    population_logits=None,
    population_labels=None,
    rmia_gamma: float = 1.0,
    rmia_temperature: float = 1.0,
    rmia_trim: float = 0.2,
    rmia_offline_a: float | None = None,
    rmia_max_population: int = 1000,
    lira_two_sided: bool = False,
    threshold: str = "class",
    shadow_max_records: int = 1000,
    shadow_steps: int = 200,
    shadow_hidden: tuple[int, ...] = (64,),
) -> PopulationResult:
    """Attack every model of a population with the others as its references (leave-one-out, bias removed).

    Args:
        logits: ``[K, N, Q, C]`` (or ``[K, N, C]``): model k's logits on query q of candidate n;
            query 0 is the plain example (:func:`~sparsemia.mia.queries.augment`).
        labels: ``[N]`` true classes of the candidates.
        inclusion: ``[K, N]`` bool, model k trained on candidate n.
        attacks: names from :data:`POPULATION_ATTACKS` (or an alias of :data:`~sparsemia.mia.registry.ALIASES`).
        seed: draws the reference subsets, c(t), RMIA's population subsample, the shadow-model
            attack's records and the bootstrap; the same seed gives the same result.
        n_bootstrap: two-way bootstrap replicates for the 95% intervals (0: none).
        equalize: give every (target, candidate) pair ``r`` IN and ``r`` OUT references (the
            leave-one-out bias removed; see the module docstring); False: all other models.
        references_per_side: ``r`` (default: the most every pair can get with the target and
            its calibration model c(t) excluded, e.g. 6 for K = 16 models on exact halves).
        population_logits / population_labels: ``[K, Z, Q, C]`` / ``[Z]`` outputs on data no model
            trained on, RMIA's population z; default: the target's own candidates.
        rmia_gamma / rmia_temperature / rmia_trim: RMIA's γ, the softmax temperature of ``Pr(x|θ)``
            and the trimmed-mean proportion of ``Pr(x)`` (the paper's code: 0.2). γ = 1 as in ML Privacy
            Meter's RMIA, which like this one compares plain softmax probabilities; the paper's experiment
            configurations pair γ = 2 with a soft-margin Taylor softmax at temperature 2 (see :func:`~sparsemia.mia.attacks.rmia`).
        rmia_offline_a: offline RMIA's ``a``; None tunes it per target on c(t) over
            :data:`OFFLINE_A_GRID` (best AUC), as the RMIA paper does with one reference model.
        rmia_max_population: at most this many population samples z (a fixed subsample from ``seed``).
        lira_two_sided: offline LiRA as the reference code's two-sided density test instead of the
            paper's one-sided test.
        threshold: metric attacks' thresholds, per class (``"class"``) or one (``"global"``).
        shadow_max_records / shadow_steps / shadow_hidden: the shadow-model attack's training
            records per target (half members), optimiser steps and hidden layers.

    Returns:
        A :class:`PopulationResult`.
    """
    z, y, inc = _check_inputs(logits, labels, inclusion)
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    if isinstance(attacks, str) or not len(attacks):
        raise ValueError("attacks: expected a non-empty list of attack names")
    names = list(dict.fromkeys(_canonical(a) for a in attacks))
    if threshold not in ("class", "global"):
        raise ValueError(f"threshold: expected 'class' or 'global', got {threshold!r}")
    if not rmia_gamma > 0:
        raise ValueError(f"rmia_gamma: expected > 0, got {rmia_gamma}")
    if not 0.0 <= rmia_trim < 0.5:
        raise ValueError(f"rmia_trim: expected a proportion in [0, 0.5), got {rmia_trim}")
    if rmia_offline_a is not None and not 0.0 <= rmia_offline_a <= 1.0:
        raise ValueError(f"rmia_offline_a: expected a value in [0, 1], got {rmia_offline_a}")
    if rmia_max_population < 1:
        raise ValueError(f"rmia_max_population: expected >= 1, got {rmia_max_population}")
    k, n, q, c = z.shape
    if k < 4:
        raise ValueError(f"logits: a population needs at least 4 models (a target, a calibration model and references), got {k}")

    calib = _calibration_models(k, seed)
    available = _references_available(inc, calib)
    if equalize:
        per_side = available if references_per_side is None else int(references_per_side)
        if per_side > available:
            raise ValueError(
                f"references_per_side: {per_side} IN and OUT references per pair requested; the inclusion "
                f"allows at most {available}"
            )
    else:
        if references_per_side is not None:
            raise ValueError("references_per_side: only meaningful with equalize=True")
        per_side = None
    if references_per_side is not None and references_per_side < 2:
        raise ValueError(f"references_per_side: expected at least 2 (a variance is estimated), got {references_per_side}")
    if (available if per_side is None else per_side) < 2:
        raise ValueError(
            f"inclusion: every (target, candidate) pair needs at least 2 IN and 2 OUT reference models among the "
            f"other models (target and calibration model excluded); this inclusion allows {available} — use more "
            f"models (at least 8 on exact halves) or a pkeep nearer 0.5"
        )

    logger.debug("population of %d models, %d candidates, %d queries: %s references per side", k, n, q, per_side)
    pop_z = pop_y = None
    if population_logits is not None or population_labels is not None:
        if population_logits is None or population_labels is None:
            raise ValueError("population_logits, population_labels: give both or neither")
        pop_z = np.asarray(population_logits, dtype=np.float32)
        if pop_z.ndim == 3:
            pop_z = pop_z[:, :, None, :]
        if pop_z.ndim != 4 or pop_z.shape[0] != k or pop_z.shape[2:] != (q, c):
            raise ValueError(f"population_logits: expected [{k}, Z, {q}, {c}], got {np.shape(population_logits)}")
        pop_y = np.asarray(population_labels, dtype=np.int64)
        if pop_y.shape != (pop_z.shape[1],):
            raise ValueError(f"population_labels: expected shape ({pop_z.shape[1]},), got {pop_y.shape}")

    needs = set(names)
    phi_all = _per_model(signals.logit_scaled_confidence, z, y) if any(a.startswith("lira") for a in needs) else None
    rmia_names = [a for a in names if a.startswith("rmia")]
    p_all = _per_model(signals.true_class_probability, z, y, rmia_temperature) if rmia_names else None
    p_pop = None
    z_idx = np.arange(n)
    if rmia_names:
        if pop_z is not None:
            p_pop = _per_model(signals.true_class_probability, pop_z, pop_y, rmia_temperature)  # [K, Z, Q]
            z_idx = np.arange(p_pop.shape[1])
        size = z_idx.size
        if size > rmia_max_population:
            z_idx = np.sort(np.random.default_rng([seed, 0x2]).choice(size, rmia_max_population, replace=False))
    plain = z[:, :, 0, :]  # metric and shadow-model attacks use the plain query
    metric_values = {
        a: signals.SIGNALS[a][1] * signals.SIGNALS[a][0](plain, y[None, :])
        for a in names
        if a in signals.SIGNALS
    }

    scores = {a: np.zeros((k, n)) for a in names}
    preds = {a: np.zeros((k, n), dtype=bool) for a in names}
    info: dict[str, dict] = {a: {} for a in names}
    if "rmia_offline" in names:
        info["rmia_offline"]["offline_a"] = []

    record_masks: list[np.ndarray] = []
    for t in range(k):
        ct = int(calib[t])
        plan = _select(inc, t, (t,), per_side, [seed, t, 0])
        cal = _select(inc, ct, (t, ct), per_side, [seed, t, 1])
        refs = plan.ref_in | plan.ref_out

        for a in names:
            if a in metric_values:
                values = metric_values[a]
                scores[a][t] = values[t]
                if a == "correctness":
                    preds[a][t] = values[t] > 0.5
                    continue
                sel_labels = np.broadcast_to(y[None, :], (k, n))[refs]
                global_t, per = thresholds_from_values(values[refs], sel_labels, inc[refs], threshold == "class")
                thr = np.array([per.get(int(label), global_t) for label in y]) if threshold == "class" else global_t
                preds[a][t] = values[t] >= thr
            elif a == "shadow":
                record_masks.append(refs)
            elif a.startswith("lira"):
                kw = {
                    "online": "online" in a,
                    "fixed_variance": a.endswith("fixed_var"),
                    "two_sided": lira_two_sided,
                }
                s_t = lira_scores(phi_all[t], phi_all, plan.ref_in, plan.ref_out, **kw)
                s_c = lira_scores(phi_all[ct], phi_all, cal.ref_in, cal.ref_out, **kw)
                scores[a][t] = s_t
                preds[a][t], _ = _best_threshold_decisions(s_c, inc[ct], s_t)
            elif a.startswith("rmia"):
                online = a == "rmia"
                ctx = (p_all, p_pop, z_idx, rmia_trim, rmia_gamma)
                if online:
                    a_t = None
                elif rmia_offline_a is not None:
                    a_t = rmia_offline_a
                else:
                    aucs = [_auc(_rmia_of(cal, grid_a, *ctx), inc[ct]) for grid_a in OFFLINE_A_GRID]
                    a_t = OFFLINE_A_GRID[int(np.argmax(aucs))]
                if a == "rmia_offline":
                    info[a]["offline_a"].append(a_t)
                s_t = _rmia_of(plan, a_t, *ctx)
                s_c = _rmia_of(cal, a_t, *ctx)
                scores[a][t] = s_t
                preds[a][t], _ = _best_threshold_decisions(s_c, inc[ct], s_t)

    if "shadow" in names:
        probs = _shadow_model_scores(
            plain, y, inc, record_masks, hidden=shadow_hidden, steps=shadow_steps,
            max_records=shadow_max_records, seed=seed,
        )
        scores["shadow"] = probs
        preds["shadow"] = probs >= 0.5
    metrics = {a: population_metrics(scores[a], inc, preds[a], n_bootstrap=n_bootstrap, seed=seed) for a in names}
    return PopulationResult(
        attacks=names, scores=scores, predictions=preds, is_member=inc, metrics=metrics, seed=seed,
        n_bootstrap=n_bootstrap, references_per_side=per_side, equalized=equalize, info=info,
    )


# ---------------------------------------------------------------------------- paired comparisons

#: Metrics :func:`compare` reports, and their unit in the rows (points = ×100).
COMPARED_METRICS = {"attack_acc": 100.0, "auc": 1.0, "tpr_at_0.1pct_fpr": 100.0}


def compare(
    result_a: PopulationResult,
    result_b: PopulationResult,
    test_acc_a,
    test_acc_b,
    *,
    defense: str = "a",
    versus: str = "b",
    n_bootstrap: int | None = None,
    seed: int | None = None,
) -> list[dict]:
    """Paired differences ``a − b`` between two populations evaluated on the same candidates and inclusion.

    For every attack in both results: the difference of the pooled attack accuracy, AUC and
    TPR at 0.1% FPR; and once, the difference of the models' mean test accuracy. The 95%
    intervals come from two-way bootstrap replicates (targets and candidates resampled)
    drawn **once and applied to both populations**: target t of ``a`` and of ``b`` trained on the
    same half of the universe, so the pairing cancels the variation the two share.

    Args:
        test_acc_a / test_acc_b: ``[K]`` test accuracy of each model (fractions).
        defense / versus: names written into the rows.
        n_bootstrap / seed: default to ``result_a``'s.

    Returns:
        Rows ``{"defense", "versus", "attack", "metric", "delta", "ci_low", "ci_high"}``; attack
        accuracy, TPR and test accuracy in points, AUC as a fraction; the test-accuracy row has
        ``"attack": None``.
    """
    if not isinstance(result_a, PopulationResult) or not isinstance(result_b, PopulationResult):
        raise ValueError("result_a, result_b: expected PopulationResult objects from evaluate_population")
    if result_a.is_member.shape != result_b.is_member.shape or not np.array_equal(result_a.is_member, result_b.is_member):
        raise ValueError("result_b: its inclusion differs from result_a's; paired comparisons need the same universe and inclusion")
    k, n = result_a.is_member.shape
    acc_a = np.asarray(test_acc_a, dtype=np.float64).reshape(-1)
    acc_b = np.asarray(test_acc_b, dtype=np.float64).reshape(-1)
    if acc_a.shape != (k,):
        raise ValueError(f"test_acc_a: expected {k} test accuracies (one per model), got {acc_a.size}")
    if acc_b.shape != (k,):
        raise ValueError(f"test_acc_b: expected {k} test accuracies (one per model), got {acc_b.size}")
    n_bootstrap = result_a.n_bootstrap if n_bootstrap is None else n_bootstrap
    seed = result_a.seed if seed is None else seed
    tw, cw = bootstrap_draws(k, n, n_bootstrap, seed)

    def row(attack, metric, delta, reps):
        lo, hi = (
            (float(np.percentile(reps[np.isfinite(reps)], 2.5)), float(np.percentile(reps[np.isfinite(reps)], 97.5)))
            if len(reps) and np.isfinite(reps).any()
            else (float("nan"), float("nan"))
        )
        return {"defense": defense, "versus": versus, "attack": attack, "metric": metric,
                "delta": float(delta), "ci_low": lo, "ci_high": hi}

    rows = []
    for attack in [a for a in result_a.attacks if a in result_b.attacks]:
        roc_a = PooledROC(result_a.scores[attack], result_a.is_member, result_a.predictions[attack])
        roc_b = PooledROC(result_b.scores[attack], result_b.is_member, result_b.predictions[attack])
        point_a, point_b = roc_a.metrics(), roc_b.metrics()
        reps = [(roc_a.metrics(a, b), roc_b.metrics(a, b)) for a, b in zip(tw, cw, strict=True)]
        for metric, unit in COMPARED_METRICS.items():
            deltas = np.array([ra[metric] - rb[metric] for ra, rb in reps]) * unit
            rows.append(row(attack, metric, (point_a[metric] - point_b[metric]) * unit, deltas))
    diff = acc_a - acc_b
    test_reps = (tw @ diff) / tw.sum(1) * 100.0 if n_bootstrap else np.array([])
    rows.append(row(None, "test_acc", diff.mean() * 100.0, test_reps))
    return rows


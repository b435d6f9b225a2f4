"""The run report: ``report.md`` with its tables and PNG plots, from ``results.json``.

The report states what the numbers support: each change in attack accuracy
against the undefended baseline and against Min-Max is shown with whether the
two 95% bootstrap intervals overlap, so a difference inside the noise is said
to be one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from sparsemia.experiments.rundir import RunDir

__all__ = ["write_report", "attack_family", "speed_reliability", "FAMILIES"]


#: Attack families, each drawn in its own line style and compared across defenses in its own figure.
FAMILIES = ("metric", "shadow", "LiRA", "RMIA")
_LINESTYLES = {"metric": "-", "shadow": (0, (6, 2, 1, 2)), "LiRA": "--", "RMIA": ":"}
_MARKERS = "osD^vP*Xh<>p"

#: A speed measurement is flagged when the 1-minute load average exceeds the CPUs or when the
#: interquartile range of either model's per-round times exceeds this fraction of its median.
SPEED_SPREAD_LIMIT = 0.2


def attack_family(attack: str) -> str:
    """The family of an attack name: ``metric``, ``shadow``, ``LiRA`` or ``RMIA``."""
    if attack.startswith("lira"):
        return "LiRA"
    if attack.startswith("rmia"):
        return "RMIA"
    if attack.startswith("shadow"):
        return "shadow"
    return "metric"


def _num(value: float, digits: int, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals, never ``-0.0`` (a value that rounds to zero has no sign)."""
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    if float(text) == 0.0:
        text = f"{0.0:.{digits}f}"
    return text


def _metric(row: dict[str, Any], key: str) -> float:
    """A metric of a row: top-level (single target, seed means) or under ``pooled`` (a population)."""
    if key in row:
        return float(row[key])
    return float((row.get("pooled") or {})[key])


def _interval(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    ci = (row.get("ci95") or {}).get(key)
    if ci is None or len(ci) != 2 or not all(np.isfinite(ci)):
        return None
    return float(ci[0]), float(ci[1])


def _fmt_ci(row: dict[str, Any], key: str, scale: float = 100.0, digits: int = 1) -> str:
    value = _num(_metric(row, key) * scale, digits)
    std = row.get(f"{key}_std")
    if std is not None:
        return f"{value} ± {_num(std * scale, digits)}"
    ci = _interval(row, key)
    if ci:
        return f"{value} [{_num(ci[0] * scale, digits)}, {_num(ci[1] * scale, digits)}]"
    return value


def _non_members(run: RunDir, row: dict[str, Any], config: dict[str, Any]) -> int | None:
    """How many non-member (target, candidate) pairs the row's metrics were computed on."""
    if row.get("num_non_members"):
        return int(row["num_non_members"])
    path = f"attacks/{row['defense']}__{row['attack']}.json"
    stored = run.read_json(path) if run.exists(path) else {}
    if stored.get("num_non_members"):
        return int(stored["num_non_members"])
    k, n = row.get("num_targets") or stored.get("num_targets"), row.get("num_candidates") or stored.get("num_candidates")
    if k and n:
        # Every candidate is a member of exactly half of the models (LiRA's inclusion).
        return int(k) * int(n) // 2
    return int(config["target_non_members"]) if config.get("target_non_members") else None


def _tpr_low(row: dict[str, Any], non_members: int | None) -> str:
    text = f"{_num(_metric(row, 'tpr_at_0.1pct_fpr') * 100, 2)}%"
    if non_members and 1.0 / non_members > 1e-3:
        text += " †"
    return text


def _test_acc_interval(row: dict[str, Any], config: dict[str, Any], target: dict[str, Any]) -> tuple[float, float] | None:
    """95% interval of the target's test accuracy: the run's own when stored; for a population,
    the t interval of the mean over its models; else the Wilson interval of a binomial
    proportion over the ``test_size`` test examples of one model."""
    stored = _interval(row, "target_test_acc")
    if stored:
        return stored
    per_target = target.get("test_acc_per_target") or []
    if len(per_target) > 1:
        from scipy.stats import t as student_t

        values = np.asarray(per_target, dtype=float)
        half = student_t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
        return float(values.mean() - half), float(values.mean() + half)
    n = config.get("test_size")
    if not n or row.get("num_targets"):
        return None
    from scipy.stats import binomtest

    acc = _metric(row, "target_test_acc")
    ci = binomtest(round(acc * n), n).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_roc(run: RunDir, defense: str, attack: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = f"attacks/{defense}__{attack}.json"
    if not run.exists(path):
        return None
    roc = run.read_json(path).get("roc")
    if not roc:
        return None
    return np.asarray(roc["fpr"], dtype=float), np.asarray(roc["tpr"], dtype=float)


def _roc_axes(ax, min_fpr: float | None, title: str) -> None:
    low = 1e-3 if min_fpr is None else min(1e-3, min_fpr / 2)
    ax.plot([low, 1], [low, 1], color="0.4", linestyle=(0, (2, 2)), linewidth=0.8, label="chance")
    if min_fpr is not None and min_fpr > low:
        ax.axvspan(low, min_fpr, color="0.9", zorder=0, label=f"FPR < 1/{round(1 / min_fpr)} non-members: not resolved")
    ax.set(xscale="log", yscale="log", xlim=(low, 1), ylim=(low, 1.02), xlabel="false positive rate",
           ylabel="true positive rate", title=title)
    ax.grid(True, which="major", linewidth=0.3, alpha=0.6)


def _draw_roc(ax, fpr: np.ndarray, tpr: np.ndarray, low: float, **style) -> None:
    # Zero rates have no place on log axes; they are drawn at the axes' lower edge instead.
    ax.step(np.maximum(fpr, low), np.maximum(tpr, low), where="post", **style)


def _attack_styles(attacks: list[str]) -> dict[str, dict[str, Any]]:
    """Colour × line style: the line style names the family, the colour the attack within it."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10").colors
    seen: dict[str, int] = {}
    styles = {}
    for attack in attacks:
        family = attack_family(attack)
        index = seen.get(family, 0)
        seen[family] = index + 1
        styles[attack] = {"color": colours[index % len(colours)], "linestyle": _LINESTYLES[family]}
    return styles


def _roc_plots(run: RunDir, defenses: list[str], attacks: list[str], min_fpr: float | None) -> list[str]:
    """One figure per defense with every attack's ROC curve."""
    plt = _pyplot()
    styles = _attack_styles(attacks)
    names = []
    for defense in defenses:
        fig, ax = plt.subplots(figsize=(6.5, 5))
        low = 1e-3 if min_fpr is None else min(1e-3, min_fpr / 2)
        drawn = 0
        for attack in attacks:
            roc = _read_roc(run, defense, attack)
            if roc is None:
                continue
            _draw_roc(ax, *roc, low, label=f"{attack} ({attack_family(attack)})", linewidth=1.6, **styles[attack])
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        _roc_axes(ax, min_fpr, f"ROC of every attack, defense: {defense}")
        ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
        name = f"roc_{defense.replace('+', '_')}.png"
        run.write_bytes(name, _png(fig))
        plt.close(fig)
        names.append(name)
    return names


def _family_plots(run: RunDir, defenses: list[str], attacks: list[str], min_fpr: float | None) -> list[str]:
    """One figure per attack family: a panel per attack, each comparing the defenses."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10").colors
    linestyles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]
    low = 1e-3 if min_fpr is None else min(1e-3, min_fpr / 2)
    names = []
    for family in FAMILIES:
        members = [a for a in attacks if attack_family(a) == family]
        curves = {a: {d: _read_roc(run, d, a) for d in defenses} for a in members}
        members = [a for a in members if any(c is not None for c in curves[a].values())]
        if not members:
            continue
        cols = min(3, len(members))
        rows = -(-len(members) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.0 * rows), squeeze=False)
        for ax, attack in zip(axes.flat, members, strict=False):
            for i, defense in enumerate(defenses):
                roc = curves[attack][defense]
                if roc is not None:
                    _draw_roc(ax, *roc, low, label=defense, color=colours[i % len(colours)],
                              linestyle=linestyles[(i // len(colours)) % len(linestyles)], linewidth=1.6)
            _roc_axes(ax, min_fpr, attack)
        for ax in list(axes.flat)[len(members):]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
        fig.suptitle(f"{family} attacks: ROC by defense", fontsize=12)
        fig.tight_layout()
        name = f"roc_family_{family.lower()}.png"
        run.write_bytes(name, _png(fig))
        plt.close(fig)
        names.append(name)
    return names


def _privacy_utility_plot(run: RunDir, rows: list[dict[str, Any]], config: dict[str, Any],
                          targets: dict[str, Any]) -> str:
    """Per defense, its strongest attack's AUC against the target's test accuracy, with the
    95% interval (or ±1 sd over seeds) of both where the results hold one."""
    plt = _pyplot()
    colours = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(7, 5))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    for i, defense in enumerate(defenses):
        best = max((r for r in rows if r["defense"] == defense), key=lambda r: _metric(r, "auc"))
        x, y = _metric(best, "target_test_acc") * 100, _metric(best, "auc")
        if best.get("auc_std") is not None:
            yerr = [[best["auc_std"]], [best["auc_std"]]]
        else:
            ci = _interval(best, "auc")
            yerr = None if ci is None else [[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]]
        if best.get("target_test_acc_std") is not None:
            xerr = [[best["target_test_acc_std"] * 100], [best["target_test_acc_std"] * 100]]
        else:
            ci = _test_acc_interval(best, config, targets.get(defense) or {})
            xerr = None if ci is None else [[max(0.0, x - ci[0] * 100)], [max(0.0, ci[1] * 100 - x)]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=_MARKERS[i % len(_MARKERS)], color=colours[i % len(colours)],
                    markersize=8, capsize=4, elinewidth=1.2, label=f"{defense} ({best['attack']})")
    ax.axhline(0.5, color="0.4", linestyle="--", linewidth=0.8)
    ax.text(ax.get_xlim()[0], 0.5, " chance", va="bottom", ha="left", fontsize=8, color="0.3")
    multi = any(r.get("auc_std") is not None for r in rows)
    ax.set(xlabel="target test accuracy (%)", ylabel="AUC of the defense's strongest attack",
           title="privacy vs utility (bars: " + ("±1 sd over seeds)" if multi else "95% intervals)"))
    ax.grid(True, linewidth=0.3, alpha=0.6)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    name = "privacy_utility.png"
    run.write_bytes(name, _png(fig))
    plt.close(fig)
    return name


def speed_reliability(target: dict[str, Any]) -> tuple[str, list[str]]:
    """How a target's stored speed measurement was taken, and why it may be unreliable.

    Returns ``(conditions, problems)``: a short text with the load, CPUs and spread, and the
    reasons to distrust the figure (empty when none, or when the run did not record them).
    """
    load, cpus = target.get("load_avg_1min"), target.get("cpu_count")
    dense, sparse = target.get("dense_round_ms"), target.get("sparse_round_ms")
    if load is None or not dense or not sparse:
        return "load and spread not recorded", []
    spreads = {}
    for label, times in (("dense", dense), ("sparse", sparse)):
        q1, med, q3 = np.percentile(np.asarray(times, dtype=float), [25, 50, 75])
        spreads[label] = (q3 - q1) / med if med > 0 else float("inf")
    ratios = np.asarray(dense, dtype=float) / np.asarray(sparse, dtype=float)
    conditions = (f"load {load:.2f} on {cpus} CPUs; IQR/median dense {spreads['dense']:.0%}, sparse "
                  f"{spreads['sparse']:.0%}; per-round speedup {ratios.min():.2f}–{ratios.max():.2f}x")
    problems = []
    if cpus and load > cpus:
        problems.append(f"load {load:.2f} > {cpus} CPUs")
    for label, spread in spreads.items():
        if spread > SPEED_SPREAD_LIMIT:
            problems.append(f"{label} times spread {spread:.0%} > {SPEED_SPREAD_LIMIT:.0%}")
    return conditions, problems


def _delta_table(rows: list[dict[str, Any]], baseline: str) -> list[str]:
    by_key = {(r["defense"], r["attack"]): r for r in rows}
    defenses = [d for d in dict.fromkeys(r["defense"] for r in rows) if d != baseline]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    if baseline not in {r["defense"] for r in rows} or not defenses:
        return []
    lines = [
        f"Change in attack accuracy (points) against **{baseline}**; `≈` marks a change whose 95% "
        "intervals overlap the baseline's (not a supported difference).",
        "",
        "| attack | " + " | ".join(defenses) + " |",
        "|---|" + "---|" * len(defenses),
    ]
    for attack in attacks:
        base = by_key.get((baseline, attack))
        cells = []
        for defense in defenses:
            row = by_key.get((defense, attack))
            if base is None or row is None:
                cells.append("-")
                continue
            delta = (_metric(row, "attack_acc") - _metric(base, "attack_acc")) * 100
            a, b = _interval(row, "attack_acc"), _interval(base, "attack_acc")
            overlap = a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]
            cells.append(f"{_num(delta, 1, signed=True)}{' ≈' if overlap else ''}")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return lines + [""]


def _change(delta: float, low: float, high: float, unit: str = "points") -> str:
    """A paired difference in words: lower / higher when its 95% interval excludes 0, else its bound."""
    if high < 0:
        return f"lower by {_num(-delta, 1)} [{_num(-high, 1)}, {_num(-low, 1)}] {unit}"
    if low > 0:
        return f"higher by {_num(delta, 1)} [{_num(low, 1)}, {_num(high, 1)}] {unit}"
    return f"no difference beyond ±{_num(max(abs(low), abs(high)), 1)} {unit}"


def _verdict(results: dict[str, Any]) -> list[str]:
    """The answer first: per defense and attack, the paired change in attack accuracy with its interval."""
    from sparsemia.experiments.population import PAPER_CLAIM

    comparisons = results.get("comparisons") or []
    if not comparisons:
        return []
    k = results["rows"][0].get("num_targets", 1)
    lines = [
        "## Verdict",
        "",
        f"Each defense was trained as a population of {k} models on random halves of one candidate universe "
        "(the same halves for every defense); every model was attacked once as the target, with the others as "
        "its references. Changes are paired differences (defense − baseline, target by target) in pooled attack "
        "accuracy, with 95% intervals that resample targets and candidates.",
        "",
    ]
    for versus in ("none", "minmax"):
        mine = [c for c in comparisons if c["versus"] == versus]
        if not mine:
            continue
        defenses = list(dict.fromkeys(c["defense"] for c in mine))
        attacks = list(dict.fromkeys(c["attack"] for c in mine if c["attack"] is not None))
        by = {(c["defense"], c["attack"], c["metric"]): c for c in mine}
        lines += [f"Against **{versus}**:", "", "| attack | " + " | ".join(defenses) + " |",
                  "|---|" + "---|" * len(defenses)]
        for attack in attacks:
            cells = []
            for defense in defenses:
                c = by.get((defense, attack, "attack_acc"))
                cells.append("-" if c is None else _change(c["delta"], c["ci_low"], c["ci_high"]))
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        cells = []
        for defense in defenses:
            c = by.get((defense, None, "test_acc"))
            cells.append("-" if c is None else _change(c["delta"], c["ci_low"], c["ci_high"]))
        lines += ["| *test accuracy (cost)* | " + " | ".join(cells) + " |", ""]
    sentences = []
    for versus, claim in PAPER_CLAIM.items():
        pruned = [c for c in comparisons if c["versus"] == versus and c["metric"] == "attack_acc"
                  and c["defense"] in ("magnitude", "admm", "admm+minmax", "magnitude+minmax")]
        if not pruned:
            continue
        best = min(pruned, key=lambda c: c["ci_high"])
        if best["ci_high"] < 0:
            found = (f"the largest reduction against {versus} is {-best['delta']:.1f} "
                     f"[{-best['ci_high']:.1f}, {-best['ci_low']:.1f}] points ({best['defense']}, {best['attack']} attack)")
        else:
            found = f"no pruning defense lowers any attack's accuracy against {versus} beyond its interval"
        raised = [c for c in pruned if c["ci_low"] > 0]
        if raised:
            worst = max(raised, key=lambda c: c["delta"])
            found += (f", and pruning *raises* it by up to {worst['delta']:.1f} "
                      f"[{worst['ci_low']:.1f}, {worst['ci_high']:.1f}] points ({worst['defense']}, {worst['attack']})")
        sentences.append(f"up to {claim:g} points lower than {versus}: here {found}")
    if sentences:
        lines += ["The seed paper reports pruning lowering attack accuracy " + "; and ".join(sentences) + ".", ""]
    return lines


def write_report(out: str | Path) -> Path:
    """(Re)write ``report.md`` and its plots in run directory ``out`` from its ``results.json``."""
    run = RunDir(out)
    if not run.exists("results.json"):
        raise FileNotFoundError(f"out: no results.json in {run.root}; run 'sparsemia reproduce --out {run.root}' first")
    results = run.read_json("results.json")
    rows = results["rows"]
    config = results["config"]
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    seeds = results.get("seeds", [config.get("seed")])
    lines = [
        f"# sparsemia report: {config['preset']}",
        "",
        *_verdict(results),
        f"Dataset `{config['dataset']}`, model `{config['model']}`, {config['target_members']} target members and "
        f"{config['target_non_members']} non-members, target sparsity {config['sparsity']:.0%} for pruning defenses, "
        f"{config['num_shadows']} shadow models per defense (trained with that defense), seeds {seeds}.",
        "",
        "Attack accuracy is balanced accuracy: with threshold decisions learned on shadow models where the attack "
        "makes decisions (shadow, metric attacks), otherwise at the best threshold (LiRA, RMIA: an upper bound). "
        + ("Intervals are 95% bootstrap intervals over the candidates." if len(seeds) == 1
           else f"Values are mean ± standard deviation over {len(seeds)} seeds."),
        "",
        "| defense | attack | train acc | test acc | attack acc | AUC | TPR@1%FPR | TPR@0.1%FPR | sparsity | "
        "model bytes | CPU speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    non_members = {(r["defense"], r["attack"]): _non_members(run, r, config) for r in rows}
    for r in rows:
        lines.append(
            f"| {r['defense']} | {r['attack']} | {_num(_metric(r, 'target_train_acc') * 100, 1)} | "
            f"{_num(_metric(r, 'target_test_acc') * 100, 1)} | {_fmt_ci(r, 'attack_acc')} | {_fmt_ci(r, 'auc', 1.0, 3)} | "
            f"{_num(_metric(r, 'tpr_at_1pct_fpr') * 100, 2)}% | {_tpr_low(r, non_members[(r['defense'], r['attack'])])} | "
            f"{_num(r['sparsity'] * 100, 1)}% | {int(r['model_bytes']):,} | {_num(r['speedup_vs_dense'], 2)}x |"
        )
    lines.append("")
    known = [n for n in non_members.values() if n]
    if known:
        fewest = min(known)
        resolution = (f"The smallest false positive rate the sample resolves is 1/{fewest:,} non-member"
                      f"{' pairs' if any((r.get('num_targets') or 1) > 1 for r in rows) else 's'} = {_num(100 / fewest, 3)}%.")
        if 1.0 / fewest > 1e-3:
            resolution += (" † marks a TPR at 0.1% FPR below that resolution: it is the TPR at zero false positives, "
                           "decided by the single highest-scoring non-member, not a measurement at 0.1%.")
        lines += [resolution, ""]
    lines.append("## Change in attack accuracy")
    lines.append("")
    lines += _delta_table(rows, "none")
    lines += _delta_table(rows, "minmax")
    lines.append("## Privacy vs utility")
    lines.append("")
    lines.append(f"![privacy vs utility]({_privacy_utility_plot(run, rows, config, results.get('targets') or {})})")
    lines.append("")
    lines.append("## ROC curves (log-log)")
    lines.append("")
    root = run if len(seeds) == 1 else run.sub(f"seed_{seeds[0]}")
    min_fpr = 1.0 / min(known) if known else None
    lines.append("Each attack family compared across defenses (one panel per attack), then every attack per "
                 "defense (line style: family; colour: attack). The grey band is below the smallest resolvable FPR."
                 + ("" if len(seeds) == 1 else f" Curves of seed {seeds[0]}."))
    lines.append("")
    for name in _family_plots(root, defenses, attacks, min_fpr) + _roc_plots(root, defenses, attacks, min_fpr):
        rel = name if len(seeds) == 1 else f"seed_{seeds[0]}/{name}"
        lines.append(f"![{name}]({rel})")
    lines.append("")
    lines.append("## Per-layer sparsity")
    lines.append("")
    targets = results.get("targets") or {}
    pruned = [d for d in defenses if targets.get(d, {}).get("sparsity", 0) > 0]
    if pruned:
        layer_names = [layer["name"] for layer in targets[pruned[0]]["layers"]]
        lines.append("| layer | shape | " + " | ".join(pruned) + " |")
        lines.append("|---|---|" + "---|" * len(pruned))
        for i, name in enumerate(layer_names):
            shape = "×".join(str(s) for s in targets[pruned[0]]["layers"][i]["shape"])
            cells = [f"{_num(targets[d]['layers'][i]['sparsity'] * 100, 1)}%" for d in pruned]
            lines.append(f"| {name} | {shape} | " + " | ".join(cells) + " |")
    else:
        lines.append("No defense in this run pruned the model.")
    lines.append("")
    lines.append("## Speed")
    lines.append("")
    lines.append("| defense | dense ms | sparsified ms | speedup | sparse layers | conditions | reliable |")
    lines.append("|---|---|---|---|---|---|---|")
    flagged = []
    for d in defenses:
        t = targets.get(d)
        if t:
            conditions, problems = speed_reliability(t)
            recorded = t.get("load_avg_1min") is not None
            verdict = "**no**: " + "; ".join(problems) if problems else ("yes" if recorded else "unknown")
            if problems:
                flagged.append(d)
            lines.append(f"| {d} | {_num(t['dense_ms'], 3)} | {_num(t['sparse_ms'], 3)} | "
                         f"{_num(t['speedup_vs_dense'], 2)}x | {t['sparse_layers']} | {conditions} | {verdict} |")
    lines.append("")
    if flagged:
        lines.append(f"**The speed of {', '.join(flagged)} was measured on a busy or noisy machine** (1-minute load "
                     f"above the CPU count, or an interquartile range above {SPEED_SPREAD_LIMIT:.0%} of the median): "
                     "rerun on a quiet machine before quoting it.")
        lines.append("")
    lines.append(f"Eval forward of a batch of {config['speed_batch']} test inputs on the CPU "
                 f"({results.get('torch_threads')} threads), medians, measured in the same process as the dense model.")
    lines.append("")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items()))
    lines.append("")
    return run.write_text("report.md", "\n".join(lines))

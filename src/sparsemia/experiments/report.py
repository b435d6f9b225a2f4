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

__all__ = ["write_report"]


def _fmt_ci(row: dict[str, Any], key: str, scale: float = 100.0, digits: int = 1) -> str:
    value = row[key] * scale
    ci = (row.get("ci95") or {}).get(key)
    std = row.get(f"{key}_std")
    if std is not None:
        return f"{value:.{digits}f} ± {std * scale:.{digits}f}"
    if ci:
        return f"{value:.{digits}f} [{ci[0] * scale:.{digits}f}, {ci[1] * scale:.{digits}f}]"
    return f"{value:.{digits}f}"


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _roc_plots(run: RunDir, defenses: list[str], attacks: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for defense in defenses:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for attack in attacks:
            path = f"attacks/{defense}__{attack}.json"
            if not run.exists(path):
                continue
            roc = run.read_json(path).get("roc")
            if not roc:
                continue
            fpr, tpr = np.asarray(roc["fpr"]), np.asarray(roc["tpr"])
            keep = (fpr > 0) & (tpr > 0)
            ax.plot(fpr[keep], tpr[keep], label=attack, linewidth=1)
        ax.plot([1e-4, 1], [1e-4, 1], "k--", linewidth=0.6, label="chance")
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1), xlabel="false positive rate",
               ylabel="true positive rate", title=f"ROC, defense: {defense}")
        ax.legend(fontsize=6, loc="lower right")
        name = f"roc_{defense.replace('+', '_')}.png"
        run.write_bytes(name, _png(fig))
        plt.close(fig)
        names.append(name)
    return names


def _privacy_utility_plot(run: RunDir, rows: list[dict[str, Any]], attacks: list[str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    for defense in defenses:
        mine = [r for r in rows if r["defense"] == defense]
        best = max(mine, key=lambda r: r["auc"])
        ax.scatter(best["target_test_acc"] * 100, best["auc"], s=40, label=f"{defense} ({best['attack']})")
    ax.axhline(0.5, color="k", linestyle="--", linewidth=0.6)
    ax.set(xlabel="target test accuracy (%)", ylabel="AUC of the strongest attack", title="privacy vs utility")
    ax.legend(fontsize=7)
    name = "privacy_utility.png"
    run.write_bytes(name, _png(fig))
    plt.close(fig)
    return name


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
            delta = (row["attack_acc"] - base["attack_acc"]) * 100
            a, b = (row.get("ci95") or {}).get("attack_acc"), (base.get("ci95") or {}).get("attack_acc")
            overlap = a is not None and b is not None and a[0] <= b[1] and b[0] <= a[1]
            cells.append(f"{delta:+.1f}{' ≈' if overlap else ''}")
        lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return lines + [""]


def _change(delta: float, low: float, high: float, unit: str = "points") -> str:
    """A paired difference in words: lower / higher when its 95% interval excludes 0, else its bound."""
    if high < 0:
        return f"lower by {-delta:.1f} [{-high:.1f}, {-low:.1f}] {unit}"
    if low > 0:
        return f"higher by {delta:.1f} [{low:.1f}, {high:.1f}] {unit}"
    return f"no difference beyond ±{max(abs(low), abs(high)):.1f} {unit}"


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
    for r in rows:
        lines.append(
            f"| {r['defense']} | {r['attack']} | {r['target_train_acc'] * 100:.1f} | {r['target_test_acc'] * 100:.1f} | "
            f"{_fmt_ci(r, 'attack_acc')} | {_fmt_ci(r, 'auc', 1.0, 3)} | {r['tpr_at_1pct_fpr'] * 100:.2f}% | "
            f"{r['tpr_at_0.1pct_fpr'] * 100:.2f}% | {r['sparsity']:.1%} | {int(r['model_bytes']):,} | "
            f"{r['speedup_vs_dense']:.2f}x |"
        )
    lines.append("")
    lines.append("## Change in attack accuracy")
    lines.append("")
    lines += _delta_table(rows, "none")
    lines += _delta_table(rows, "minmax")
    lines.append("## Privacy vs utility")
    lines.append("")
    lines.append(f"![privacy vs utility]({_privacy_utility_plot(run, rows, attacks)})")
    lines.append("")
    lines.append("## ROC curves (log-log)")
    lines.append("")
    root = run if len(seeds) == 1 else run.sub(f"seed_{seeds[0]}")
    for name in _roc_plots(root, defenses, attacks):
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
            cells = [f"{targets[d]['layers'][i]['sparsity']:.1%}" for d in pruned]
            lines.append(f"| {name} | {shape} | " + " | ".join(cells) + " |")
    else:
        lines.append("No defense in this run pruned the model.")
    lines.append("")
    lines.append("## Speed")
    lines.append("")
    lines.append("| defense | dense ms | sparsified ms | speedup | sparse layers |")
    lines.append("|---|---|---|---|---|")
    for d in defenses:
        t = targets.get(d)
        if t:
            lines.append(f"| {d} | {t['dense_ms']:.3f} | {t['sparse_ms']:.3f} | {t['speedup_vs_dense']:.2f}x | "
                         f"{t['sparse_layers']} |")
    lines.append("")
    lines.append(f"Eval forward of a batch of {config['speed_batch']} test inputs on the CPU "
                 f"({results.get('torch_threads')} threads), medians, measured in the same process as the dense model.")
    lines.append("")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items()))
    lines.append("")
    return run.write_text("report.md", "\n".join(lines))

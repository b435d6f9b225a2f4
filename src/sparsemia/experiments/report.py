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

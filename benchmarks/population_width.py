"""How the paired intervals of a population run narrow with K (models) and N (candidates scored).

Reads a run directory written by ``sparsemia reproduce --targets K`` and re-evaluates its
populations on the first K' models and a random N' of the candidates, printing the 95%
half-width of the paired change in attack accuracy (each pruning defense vs ``none``) per
attack. Sub-populations keep every model's training as it was; only fewer are attacked
and used as references.

    python benchmarks/population_width.py runs/mnist --attacks loss,lira_online
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sparsemia.data import load_dataset, load_splits
from sparsemia.mia.population import compare, evaluate_population
from sparsemia.mia.shadow import lira_inclusion
from sparsemia.seeds import derive_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--attacks", default="loss,lira_online")
    parser.add_argument("--ks", default="")
    parser.add_argument("--fractions", default="0.25,0.5,1.0")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    args = parser.parse_args()
    config = json.loads((args.run / "results.json").read_text())["config"]
    k_full = int(config["targets"])
    data = load_dataset(config["dataset"], config.get("data_root"))
    splits = load_splits(args.run / "splits.json")
    universe, test = splits.candidates, splits.test
    labels = data.labels[torch.as_tensor(universe)].numpy()
    test_labels = data.labels[torch.as_tensor(test)].numpy()
    inclusion = lira_inclusion(k_full, universe.size, pkeep=0.5,
                               seed=derive_seed(int(config["seed"]), "inclusion", "population"))
    pops = {d: dict(np.load(args.run / "populations" / f"{d}.npz")) for d in config["defenses"]}
    attacks = args.attacks.split(",")
    ks = [int(k) for k in args.ks.split(",")] if args.ks else sorted({k_full // 4 * 2, k_full // 2, k_full} - {0})
    fractions = [float(f) for f in args.fractions.split(",")]
    print("| K | candidates | defense | attack | delta attack acc (points) | 95% half-width |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        for fraction in fractions:
            cols = np.sort(np.random.default_rng(0).permutation(universe.size)[: int(round(fraction * universe.size))])
            inc = inclusion[:k][:, cols]
            results = {
                d: evaluate_population(p["logits"][:k][:, cols], labels[cols], inc, attacks, seed=1,
                                       n_bootstrap=args.n_bootstrap, population_logits=p["test_logits"][:k],
                                       population_labels=test_labels)
                for d, p in pops.items()
            }
            for defense in [d for d in pops if d in ("magnitude", "admm", "admm+minmax", "magnitude+minmax")]:
                for row in compare(results[defense], results["none"], pops[defense]["test_acc"][:k],
                                   pops["none"]["test_acc"][:k]):
                    if row["metric"] == "attack_acc":
                        half = (row["ci_high"] - row["ci_low"]) / 2
                        print(f"| {k} | {cols.size} | {defense} | {row['attack']} | {row['delta']:+.2f} | {half:.2f} |",
                              flush=True)


if __name__ == "__main__":
    main()

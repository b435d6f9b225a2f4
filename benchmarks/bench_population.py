"""How much one target model understates the spread of membership-inference metrics, and how intervals fall with K.

Trains K models (stacked: an MLP on scikit-learn's digits, or LeNet-5 on the embedded MNIST
subset as ``sparsemia reproduce`` trains it) on LiRA's random halves of one candidate universe, evaluates the population (every model a target once, the others its
references) and prints, per attack:

* the spread of TPR at 1% FPR (and AUC) **between targets** — the standard deviation of the
  per-target metric over the K targets — against the spread a **candidate bootstrap** of one
  target reports (resampling that target's candidates, the only interval a single-target
  evaluation can give), averaged over targets; ratio > 1: one target understates how much the
  metric depends on which model was trained;
* the half-width of the pooled 95% interval (two-way bootstrap over targets and candidates)
  for the first K' models, K' = 8, 16, …, K, every pair with 2 IN and 2 OUT references (what
  K' = 8 allows), so that the attack is the same at every K' and only the population grows.

These are statistics, not timings; the run takes a minute or two on two cores.

    python benchmarks/bench_population.py                  # K = 32, 1000 candidates
    python benchmarks/bench_population.py --dataset mnist-embedded --models 16 --epochs 40
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from sparsemia import mia
from sparsemia.data import load_dataset
from sparsemia.mia.metrics import PooledROC, bootstrap_draws
from sparsemia.models import MLP, LeNet5
from sparsemia.train import TrainConfig

ATTACKS = ["loss", "lira_online", "lira_offline", "rmia"]


def candidate_bootstrap_sd(scores: np.ndarray, member: np.ndarray, metric: str, n_bootstrap: int, seed: int) -> float:
    """Standard deviation of ``metric`` over bootstrap resamples of one target's candidates."""
    roc = PooledROC(scores[None, :], member[None, :])
    _, cw = bootstrap_draws(1, scores.size, n_bootstrap, seed)
    values = np.array([roc.metrics(np.ones(1), w)[metric] for w in cw])
    return float(np.nanstd(values, ddof=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("digits", "mnist-embedded"), default="digits")
    parser.add_argument("--models", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = load_dataset(args.dataset)
    if args.dataset == "digits":
        x = data.features.reshape(len(data), -1)
        model_fn, lr, name = (lambda: MLP(64, 10, hidden=(128,))), 3e-3, "MLPs on digits"
    else:
        x = data.features
        model_fn, lr, name = LeNet5, 1e-3, "LeNet-5s on embedded MNIST"
    order = np.random.default_rng(args.seed).permutation(len(data))[: args.candidates]
    if args.models % 8:
        parser.error("--models: expected a multiple of 8")
    # exact halves within each block of 8 models, so that the first K' models (K' a multiple of 8)
    # are a population on exact halves too
    inclusion = np.concatenate(
        [mia.lira_inclusion(8, order.size, 0.5, seed=args.seed * 1000 + b) for b in range(args.models // 8)]
    )
    config = TrainConfig(epochs=args.epochs, batch_size=32, optimizer="adam", lr=lr, seed=args.seed)
    models = mia.train_shadow_models(model_fn, x[order], data.labels[order], inclusion, config, seed=args.seed)
    logits = mia.score_models(models, x[order])  # [K, N, C]
    labels = data.labels[order].numpy()
    train_acc = float((logits.argmax(-1) == labels)[inclusion].mean())
    held_out_acc = float((logits.argmax(-1) == labels)[~inclusion].mean())
    print(f"{args.models} {name}, {order.size} candidates, {args.epochs} epochs: "
          f"train accuracy {train_acc:.3f}, held-out {held_out_acc:.3f}")

    result = mia.evaluate_population(logits, labels, inclusion, ATTACKS, seed=args.seed, n_bootstrap=args.bootstrap)
    print(f"\nreferences per side: {result.references_per_side}\n")
    print("Spread between targets vs one target's candidate bootstrap (standard deviations)")
    print(f"{'attack':<14} {'metric':<16} {'pooled':>7} {'between targets':>16} {'cand. bootstrap':>16} {'ratio':>6}"
          f" {'per-target range':>17}")
    for attack in ATTACKS:
        scores, member = result.scores[attack], result.is_member
        for metric in ("auc", "tpr_at_1pct_fpr"):
            per_target = np.array([PooledROC(scores[t : t + 1], member[t : t + 1]).metrics()[metric]
                                   for t in range(args.models)])
            between = float(per_target.std(ddof=1))
            within = float(np.mean([candidate_bootstrap_sd(scores[t], member[t], metric, args.bootstrap, args.seed + t)
                                    for t in range(args.models)]))
            pooled = result.metrics[attack]["pooled"][metric]
            print(f"{attack:<14} {metric:<16} {pooled:7.3f} {between:16.4f} {within:16.4f} {between / within:6.2f}"
                  f"   {per_target.min():.3f}–{per_target.max():.3f}")

    print("\nHalf-width of the pooled 95% interval (two-way bootstrap) with the first K' models as the population"
          " (2 IN + 2 OUT references per pair at every K')")
    sizes = [k for k in (8, 16, 32, 64, 128) if k <= args.models]
    print(f"{'attack':<14} {'metric':<16} " + " ".join(f"{'K=' + str(k):>8}" for k in sizes))
    widths = {}
    for k in sizes:
        sub = mia.evaluate_population(logits[:k], labels, inclusion[:k], ATTACKS, seed=args.seed,
                                      n_bootstrap=args.bootstrap, references_per_side=2)
        for attack in ATTACKS:
            for metric in ("attack_acc", "auc", "tpr_at_1pct_fpr"):
                lo, hi = sub.metrics[attack]["ci95"][metric]
                widths.setdefault((attack, metric), []).append((hi - lo) / 2)
    for (attack, metric), values in widths.items():
        print(f"{attack:<14} {metric:<16} " + " ".join(f"{v:8.4f}" for v in values))


if __name__ == "__main__":
    main()

"""Benchmark: 64 stacked LeNet-5 shadow models on the embedded MNIST subset.

Trains a LeNet-5 target on a small member set (so that it overfits and leaks),
trains and scores M shadow models together as one stacked model on random
subsets of attacker pool ∪ candidates (LiRA's design), times batched inference
against a loop over the same M models (same data, same batch size, same run),
and prints the loss attack's and LiRA's AUC and TPR at low FPR.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_shadow.py [--models 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from sparsemia import mia
from sparsemia.data import load_dataset, make_splits
from sparsemia.models import LeNet5
from sparsemia.train import TrainConfig, evaluate, fit, predict_logits

BATCH = 512


def _time_inference(stack, x: torch.Tensor, repeats: int) -> tuple[list[float], list[float], float]:
    """Seconds per pass over ``x`` for a loop over the unstacked models and for the stack, interleaved."""
    singles = [m.eval() for m in stack.to_modules()]
    stack = stack.eval()
    with torch.no_grad():
        ref = torch.stack([m(x[:BATCH]) for m in singles])
        err = float((stack.forward_shared(x[:BATCH]) - ref).abs().max())
        t_loop, t_batched = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, x.shape[0], BATCH):
                stack.forward_shared(x[s : s + BATCH])
            t_batched.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for s in range(0, x.shape[0], BATCH):
                for m in singles:
                    m(x[s : s + BATCH])
            t_loop.append(time.perf_counter() - t0)
    return t_loop, t_batched, err


def _print_inference(models: int, examples: int, t_loop: list[float], t_batched: list[float], err: float) -> None:
    ratios = [a / b for a, b in zip(t_loop, t_batched, strict=True)]
    print(f"inference on {examples} examples, batch {BATCH}, {len(ratios)} interleaved repeats (max |diff| {err:.1e}):")
    print(f"  loop over {models} models  best {min(t_loop):7.3f} s  median {statistics.median(t_loop):7.3f} s")
    print(f"  stacked                best {min(t_batched):7.3f} s  median {statistics.median(t_batched):7.3f} s")
    print(f"  speedup (loop / stacked): best/best {min(t_loop) / min(t_batched):5.2f}x, "
          f"median of per-repeat ratios {statistics.median(ratios):5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--members", type=int, default=250)
    parser.add_argument("--pool", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats for inference")
    parser.add_argument("--inference-only", action="store_true",
                        help="only time inference (untrained models: the cost does not depend on the weights)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.inference_only:
        x = load_dataset("mnist-embedded").features[:1000]
        t_loop, t_batched, err = _time_inference(mia.build_stack(LeNet5, args.models, args.seed), x, args.repeats)
        _print_inference(args.models, x.shape[0], t_loop, t_batched, err)
        return

    data = load_dataset("mnist-embedded")
    splits = make_splits(
        len(data), target_members=args.members, attacker_pool=args.pool, test=1000, seed=args.seed
    )
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer="adam", lr=1e-3, seed=args.seed)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    target = LeNet5()
    history = fit(target, data.features[splits.target_members], data.labels[splits.target_members], config)
    t_target = time.perf_counter() - t0

    # LiRA's universe: attacker pool ∪ candidates; shadows train on as many examples as the target
    universe = np.concatenate([splits.candidates, splits.attacker_pool])
    x_u, y_u = data.features[universe], data.labels[universe]
    inclusion = mia.lira_inclusion(args.models, universe.size, pkeep=args.members / universe.size, seed=args.seed + 1)

    t0, c0 = time.perf_counter(), time.process_time()
    shadows = mia.train_shadow_models(LeNet5, x_u, y_u, inclusion, config, seed=args.seed + 2)
    t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    shadow_logits = mia.score_models(shadows, x_u)
    t_score, c_score = time.perf_counter() - t0, time.process_time() - c0

    t_loop, t_batched, err = _time_inference(shadows.stack, x_u, args.repeats)
    # attacks on the target's candidates
    n_cand = splits.candidates.size
    is_member = splits.candidate_is_member
    labels = data.labels[splits.candidates].numpy()
    target_logits = predict_logits(target, data.features[splits.candidates]).double().numpy()
    test_acc = float((predict_logits(target, data.features[splits.test]).argmax(1) == data.labels[splits.test]).float().mean())
    records = mia.ShadowRecords.from_models(shadow_logits[:, n_cand:], y_u[n_cand:].numpy(), inclusion[:, n_cand:])
    loss_res = mia.metric_attack("loss", target_logits, labels, records, threshold="global")
    online = mia.lira(target_logits, labels, shadow_logits[:, :n_cand], inclusion[:, :n_cand], online=True)
    offline = mia.lira(target_logits, labels, shadow_logits[:, :n_cand], inclusion[:, :n_cand], online=False)
    fixed = mia.lira(target_logits, labels, shadow_logits[:, :n_cand], inclusion[:, :n_cand], fixed_variance=True)

    members = torch.as_tensor(splits.target_members)
    train_acc = evaluate(target, data.features[members], data.labels[members])["accuracy"]
    print(f"target: {args.members} members, train acc {train_acc:.3f} (last epoch, running: "
          f"{history.accuracy[-1]:.3f}), test acc {test_acc:.3f}, "
          f"trained in {t_target:.1f} s")
    print(f"{args.models} stacked LeNet-5 shadow models on {universe.size} examples "
          f"({int(inclusion.sum(1).mean())} each), {args.epochs} epochs, {torch.get_num_threads()} threads")
    print(f"  training {t_train:7.1f} s wall  {c_train:7.1f} s CPU (all threads)")
    print(f"  scoring  {t_score:7.1f} s wall  {c_score:7.1f} s CPU  ({shadow_logits.shape[1]} examples x {args.models} models)")
    print(f"  total    {t_train + t_score:7.1f} s wall = {(t_train + t_score) / 300:.2f} x the 5-minute budget"
          f" (load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    _print_inference(args.models, universe.size, t_loop, t_batched, err)
    print(f"{'attack':28s} {'AUC':>6s} {'TPR@1%':>7s} {'TPR@0.1%':>8s} {'acc':>6s}")
    for res in (loss_res, online, offline, fixed):
        m = mia.attack_metrics(res.scores, is_member, predictions=res.predictions, n_bootstrap=0)
        print(f"{res.name:28s} {m.auc:6.3f} {m.tpr_at_1pct_fpr:7.3f} {m.tpr_at_01pct_fpr:8.3f} {m.attack_acc:6.3f}")


if __name__ == "__main__":
    main()

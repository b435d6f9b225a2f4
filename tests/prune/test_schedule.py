"""Schedules: one-shot, iterative and gradual cubic targets, applied with fine-tuning in between."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import sparsemia as sm


def test_one_shot_is_the_final_target():
    assert sm.prune.sparsity_schedule("one_shot", 0.9) == [0.9]


def test_iterative_prunes_the_same_fraction_of_the_remaining_weights_each_step():
    targets = sm.prune.sparsity_schedule("iterative", 0.9, steps=3)
    assert targets[-1] == pytest.approx(0.9)
    remaining = [1.0] + [1 - t for t in targets]
    ratios = [b / a for a, b in zip(remaining, remaining[1:], strict=False)]
    assert ratios == pytest.approx([0.1 ** (1 / 3)] * 3)


def test_gradual_follows_zhu_and_gupta_cubic():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
    assert sm.prune.cubic_sparsity(0, 0.8, 0, 10) == 0.0
    assert sm.prune.cubic_sparsity(5, 0.8, 0, 10) == pytest.approx(0.8 - 0.8 * 0.5**3)
    assert sm.prune.cubic_sparsity(10, 0.8, 0, 10) == pytest.approx(0.8)
    assert sm.prune.cubic_sparsity(99, 0.8, 0, 10) == pytest.approx(0.8)
    assert sm.prune.cubic_sparsity(3, 0.8, 5, 10, initial=0.1) == pytest.approx(0.1)
    targets = sm.prune.sparsity_schedule("gradual", 0.8, steps=4)
    assert targets == pytest.approx([0.8 * (1 - (1 - k / 4) ** 3) for k in range(1, 5)])
    increments = [b - a for a, b in zip([0.0, *targets], targets, strict=False)]
    assert increments == sorted(increments, reverse=True)  # prunes fast first, slowly at the end


@pytest.mark.parametrize("schedule", ["iterative", "gradual"])
def test_scheduled_prunes_then_finetunes_each_step(small_net, batch, schedule):
    seen = []
    optimizer = torch.optim.SGD(small_net.parameters(), lr=0.05, momentum=0.9)

    def finetune(model, step):
        seen.append((step, sm.prune.sparsity_report(model).sparsity))
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(batch[0]), batch[1]).backward()
            optimizer.step()

    sm.prune.scheduled(small_net, 0.75, schedule=schedule, steps=3, finetune=finetune, scope="global")
    expected = sm.prune.sparsity_schedule(schedule, 0.75, steps=3)
    assert [step for step, _ in seen] == [0, 1, 2]
    assert [s for _, s in seen] == pytest.approx(expected, abs=1e-3)
    assert sm.prune.sparsity_report(small_net).sparsity == pytest.approx(0.75, abs=1e-3)


def test_scheduled_per_layer_targets(small_net):
    sm.prune.scheduled(small_net, {"features.3": 0.5, "classifier.1": 0.9}, schedule="iterative", steps=2)
    report = sm.prune.sparsity_report(small_net)
    assert report["features.3"].sparsity == pytest.approx(0.5, abs=1e-3)
    assert report["classifier.1"].sparsity == pytest.approx(0.9, abs=1e-3)


def test_gradual_pruner_inside_a_training_loop(small_net, batch):
    pruner = sm.prune.GradualPruner(small_net, 0.8, begin_step=2, end_step=12, frequency=2)
    optimizer = torch.optim.Adam(small_net.parameters(), lr=1e-2)
    history = []
    for _ in range(16):
        optimizer.zero_grad()
        F.cross_entropy(small_net(batch[0]), batch[1]).backward()
        optimizer.step()
        pruner.step()
        history.append(sm.prune.sparsity_report(small_net).sparsity)
    assert history[:2] == [0.0, 0.0]
    assert history == sorted(history)
    assert history[12] == pytest.approx(0.8, abs=1e-3) and history[-1] == history[12]


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda m: sm.prune.scheduled(m, 0.5, schedule="cosine"), "schedule"),
        (lambda m: sm.prune.scheduled(m, 0.5, schedule="iterative", steps=0), "steps"),
        (lambda m: sm.prune.scheduled(m, 0.5, schedule="one_shot", steps=3), "steps"),
        (lambda m: sm.prune.scheduled(m, 1.5, schedule="iterative", steps=2), "sparsity"),
        (lambda m: sm.prune.scheduled(m, None, schedule="gradual", steps=2, structure="nm"), "schedule"),
        (lambda m: sm.prune.scheduled(m, 0.5, finetune="yes"), "finetune"),
        (lambda m: sm.prune.GradualPruner(m, 0.5, begin_step=5, end_step=2), "end_step"),
        (lambda m: sm.prune.GradualPruner(m, 0.5, begin_step=0, end_step=2, frequency=0), "frequency"),
    ],
)
def test_bad_arguments(small_net, call, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        call(small_net)

"""Pruning schedules: one-shot, iterative (prune, fine-tune, repeat) and gradual cubic (Zhu & Gupta 2017).

:func:`sparsity_schedule` gives the target after each pruning step;
:func:`scheduled` runs magnitude pruning along it with a fine-tuning callback
between steps; :class:`GradualPruner` prunes inside a training loop, every
``frequency`` optimizer steps, as in Zhu & Gupta.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from torch import nn

from sparsemia.prune.magnitude import magnitude
from sparsemia.prune.targets import check_choice, check_sparsity

__all__ = ["SCHEDULES", "cubic_sparsity", "sparsity_schedule", "scheduled", "GradualPruner"]

logger = logging.getLogger(__name__)

SCHEDULES = ("one_shot", "iterative", "gradual")

Sparsity = float | Mapping[str, float]


def cubic_sparsity(step: int, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta's target at ``step``: ``s_f + (s_i − s_f)(1 − (t − t_0)/(t_1 − t_0))³``, clamped to ``[t_0, t_1]``."""
    if end <= begin:
        return final if step >= end else initial
    progress = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def sparsity_schedule(schedule: str, final: float, steps: int = 1, initial: float = 0.0) -> list[float]:
    """Target sparsity after each of ``steps`` pruning steps; the last is ``final``.

    - ``one_shot``: ``[final]`` (``steps`` must be 1).
    - ``iterative``: each step prunes the same fraction of the weights still
      left: ``1 − (1 − s_f)^{k/steps}``.
    - ``gradual``: the cubic schedule sampled at ``k = 1..steps`` (fast first, slow last).
    """
    check_choice(schedule, SCHEDULES, "schedule")
    final = check_sparsity(final, "sparsity")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if schedule == "one_shot":
        if steps != 1:
            raise ValueError(f"steps: a one-shot schedule has exactly 1 step, got {steps}")
        return [final]
    if schedule == "iterative":
        kept = 1.0 - initial
        return [1.0 - kept * ((1.0 - final) / kept) ** (k / steps) for k in range(1, steps + 1)]
    return [cubic_sparsity(k, final, 0, steps, initial) for k in range(1, steps + 1)]


def _targets(sparsity: Sparsity, schedule: str, steps: int) -> list[Sparsity]:
    """The target of every step, per layer when ``sparsity`` is a dict."""
    if not isinstance(sparsity, Mapping):
        return list(sparsity_schedule(schedule, sparsity, steps))
    per_layer = {name: sparsity_schedule(schedule, value, steps) for name, value in sparsity.items()}
    return [{name: values[k] for name, values in per_layer.items()} for k in range(steps)]


def scheduled(
    model: nn.Module,
    sparsity: Sparsity | None,
    *,
    schedule: str = "one_shot",
    steps: int = 1,
    finetune: Callable[[nn.Module, int], None] | None = None,
    **magnitude_kwargs: object,
) -> nn.Module:
    """Magnitude-prune ``model`` to ``sparsity`` along a schedule, calling ``finetune(model, step)`` after each step.

    Args:
        model: the model, pruned in place and returned.
        sparsity: the final target, a float or ``{layer name: sparsity}`` (each
            layer follows the schedule to its own target).
        schedule: ``"one_shot"``, ``"iterative"`` or ``"gradual"``.
        steps: number of pruning steps (1 for one-shot).
        finetune: called as ``finetune(model, step)`` after every pruning step;
            masks are fixed, so any training loop keeps them.
        magnitude_kwargs: ``scope``, ``structure``, ``block``, ``exclude``, ... for
            :func:`sparsemia.prune.magnitude`.
    """
    check_choice(schedule, SCHEDULES, "schedule")
    if finetune is not None and not callable(finetune):
        raise ValueError(f"finetune: expected a callable(model, step) or None, got {finetune!r}")
    if magnitude_kwargs.get("structure") == "nm" and schedule != "one_shot":
        raise ValueError("schedule: N:M sparsity has one fixed level (1 - n/m), so only 'one_shot' applies")
    if schedule == "one_shot":
        if steps != 1:
            raise ValueError(f"steps: a one-shot schedule has exactly 1 step, got {steps!r}")
        targets: list[Sparsity | None] = [sparsity]  # magnitude validates it (None is fine for N:M)
    elif sparsity is None:
        raise ValueError(f"sparsity: required for schedule={schedule!r}, expected a number in [0, 1) or a dict by layer")
    else:
        targets = _targets(sparsity, schedule, steps)
    for k, target in enumerate(targets):
        magnitude(model, target, **magnitude_kwargs)
        logger.info("%s pruning step %d/%d: target %s", schedule, k + 1, len(targets), target)
        if finetune is not None:
            finetune(model, k)
    return model


class GradualPruner:
    """Gradual pruning inside a training loop (Zhu & Gupta 2017): call :meth:`step` after each optimizer step.

    Every ``frequency`` steps from ``begin_step`` to ``end_step`` the model is
    magnitude-pruned to the cubic target; masks hold in between.

    Args:
        model: the model being trained.
        sparsity: final target (float).
        begin_step, end_step: the pruning window in optimizer steps.
        frequency: steps between pruning events.
        initial_sparsity: target at ``begin_step``.
        magnitude_kwargs: passed to :func:`sparsemia.prune.magnitude`.
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        begin_step: int,
        end_step: int,
        frequency: int = 100,
        initial_sparsity: float = 0.0,
        **magnitude_kwargs: object,
    ) -> None:
        self.final = check_sparsity(sparsity, "sparsity")
        self.initial = check_sparsity(initial_sparsity, "initial_sparsity")
        for argument, value in (("begin_step", begin_step), ("end_step", end_step), ("frequency", frequency)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{argument}: expected a non-negative int, got {value!r}")
        if end_step < begin_step:
            raise ValueError(f"end_step: expected >= begin_step ({begin_step}), got {end_step}")
        if frequency < 1:
            raise ValueError(f"frequency: expected an int >= 1, got {frequency}")
        self.model, self.begin, self.end, self.frequency = model, begin_step, end_step, frequency
        self.magnitude_kwargs = magnitude_kwargs
        self.step_count = 0
        self.current = 0.0

    def target(self, step: int) -> float:
        """The cubic target at optimizer step ``step``."""
        return cubic_sparsity(step, self.final, self.begin, self.end, self.initial)

    def step(self) -> None:
        """Advance one optimizer step; prune when a pruning event falls on it."""
        t = self.step_count
        self.step_count += 1
        on_event = (t - self.begin) % self.frequency == 0 or t == self.end
        if self.begin <= t <= self.end and on_event:
            target = self.target(t)
            if target > self.current:
                magnitude(self.model, target, **self.magnitude_kwargs)
                self.current = target

"""Learning-rate schedules as pure functions of the global optimizer step (so a resume needs only the step)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from voltron.registries import register_once

# name -> f(step, peak_lr, warmup_steps, total_steps, min_lr) -> lr
Schedule = Callable[[int, float, int, int, float], float]
SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    def wrap(fn: Schedule) -> Schedule:
        return register_once(SCHEDULES, name, fn, "schedule")

    return wrap


def _warmup(step: int, peak_lr: float, warmup_steps: int) -> float:
    # (step + 1): the first update already moves, and the LR reaches the peak on the last warm-up step
    return peak_lr * (step + 1) / warmup_steps


@register_schedule("warmup-cosine")
def warmup_cosine(step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up to `peak_lr` over `warmup_steps`, then half a cosine down to `min_lr` at `total_steps`
    (the paper: 20 warm-up epochs, then cosine to 0 at 400 epochs). Steps are 0-based optimizer steps."""
    if step < warmup_steps:
        return _warmup(step, peak_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


@register_schedule("warmup-constant")
def warmup_constant(step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up, then `peak_lr` for ever (upstream R3M-ResNet trained at a constant Adam LR)."""
    return _warmup(step, peak_lr, warmup_steps) if step < warmup_steps else peak_lr


@dataclass(frozen=True)
class LRSchedule:
    """A named schedule bound to its constants; `schedule(step)` is the LR for optimizer step `step` (0-based)."""

    name: str
    peak_lr: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown LR schedule {self.name!r}; expected one of {sorted(SCHEDULES)}")
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError(
                f"LR schedule needs warmup_steps >= 0 and total_steps >= 1; got {self.warmup_steps}, {self.total_steps}"
            )

    def __call__(self, step: int) -> float:
        return SCHEDULES[self.name](step, self.peak_lr, self.warmup_steps, self.total_steps, self.min_lr)

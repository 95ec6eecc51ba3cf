"""Learning-rate schedules of :func:`physim.optim.adam` and the check of their arguments.

Kept apart from the result record and the argument checks so that a new schedule is one edit
here (the factor in :func:`learning_rate`, its name in :func:`check_schedule`)."""

from __future__ import annotations

import math

from .checks import check_positive_int

__all__ = ["learning_rate", "check_schedule"]


def learning_rate(base, schedule: str, i: int, n: int, min_frac: float, step_every: int | None,
                  step_gamma: float):
    """The learning rate of iteration ``i`` (0-based) of ``n``: ``base`` times a factor.

    "constant": 1; "cosine": ``min_frac + (1 - min_frac) (1 + cos(pi i / n)) / 2`` (from 1 down
    towards ``min_frac``); "step": ``step_gamma ** (i // step_every)`` (``step_every`` default
    max(1, n // 3)).
    """
    if schedule == "constant":
        f = 1.0
    elif schedule == "cosine":
        f = min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * i / max(n, 1)))
    elif schedule == "step":
        every = step_every or max(1, n // 3)
        f = step_gamma ** (i // every)
    else:
        raise ValueError(f"lr_schedule must be 'cosine', 'constant' or 'step', got {schedule!r}")
    return base * f


def check_schedule(lr_schedule: str, lr_min_frac: float, step_every, step_gamma: float) -> None:
    if lr_schedule not in ("cosine", "constant", "step"):
        raise ValueError(f"lr_schedule must be 'cosine', 'constant' or 'step', got {lr_schedule!r}")
    if not (0.0 <= float(lr_min_frac) <= 1.0):
        raise ValueError(f"lr_min_frac must be in [0, 1], got {lr_min_frac!r}")
    if step_every is not None:
        check_positive_int("step_every", step_every)
    if not (0.0 < float(step_gamma) <= 1.0):
        raise ValueError(f"step_gamma must be in (0, 1], got {step_gamma!r}")

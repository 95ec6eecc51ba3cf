"""The result record shared by every optimizer, and the checks they share.

Every optimizer works on a *problem* (see :mod:`physim.optim.problem`): any object with
``horizon`` (T steps), ``action_dim`` (A), ``action_low`` / ``action_high`` ((A,) bounds in the
problem's action units), ``sim_steps`` (a counter of simulated steps), ``loss(actions)`` and
``loss_and_grad(actions)`` for a (t, A) action array with 1 <= t <= T. A
:class:`~physim.optim.problem.SceneProblem` and ``env.unwrapped`` of a physim Gymnasium env
both qualify.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["OptimResult"]


@dataclass
class OptimResult:
    """What an optimizer returns.

    Attributes:
        actions: (T, A) the best action sequence found (lowest full-horizon loss evaluated).
        loss: its task loss (units of the problem's loss).
        losses: one entry per iteration: the loss of the iterate (Adam, policy training) or the
            best loss of the generation (CMA-ES). During a temporal-expansion stage of Adam this is
            the loss of the shortened window (see ``stages``).
        initial_loss: full-horizon loss of the starting point.
        sim_steps: simulated steps the run used (``problem.sim_steps`` after minus before; a
            gradient evaluation counts its steps twice).
        wall_seconds: wall-clock time of the run, in seconds.
        method: "adam", "cmaes", "hybrid" or "policy".
        stages: per-stage records (Adam temporal expansion: ``horizon``, ``start_iter``, ``iters``,
            ``full_loss``; hybrid: one record per sub-optimizer).
        stage_boundary: hybrid only: index into ``losses`` of the first Adam iteration.
        policy: :func:`~physim.optim.train_policy` only: the trained policy module.
        extras: anything else method-specific (documented by each optimizer).
    """

    actions: np.ndarray
    loss: float
    losses: list[float]
    initial_loss: float
    sim_steps: int
    wall_seconds: float
    method: str
    stages: list[dict] = field(default_factory=list)
    stage_boundary: int | None = None
    policy: Any = None
    extras: dict = field(default_factory=dict)

    @property
    def improvement(self) -> float:
        """initial_loss - loss (how much the run lowered the loss)."""
        return self.initial_loss - self.loss

    def __repr__(self) -> str:
        return (f"OptimResult(method={self.method!r}, loss={self.loss:.6g}, initial_loss={self.initial_loss:.6g}, "
                f"iterations={len(self.losses)}, sim_steps={self.sim_steps}, wall_seconds={self.wall_seconds:.1f})")


# ---------------------------------------------------------------------- shared checks
def check_positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0), else ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")
    return v


def check_problem(problem) -> tuple[Any, int, int, np.ndarray, np.ndarray]:
    """Validate the duck-typed problem protocol; returns (problem, T, A, low, high).

    A Gymnasium env is accepted too: its ``unwrapped`` env is the problem."""
    target = getattr(problem, "unwrapped", problem)
    missing = [k for k in ("horizon", "action_dim", "action_low", "action_high", "sim_steps", "loss",
                           "loss_and_grad") if not hasattr(target, k)]
    if missing:
        raise ValueError(f"problem {type(problem).__name__} lacks {missing} of the problem protocol "
                         f"(horizon, action_dim, action_low, action_high, sim_steps, loss, loss_and_grad)")
    T = check_positive_int("problem.horizon", target.horizon)
    A = check_positive_int("problem.action_dim", target.action_dim)
    low = np.broadcast_to(np.asarray(target.action_low, dtype=np.float64), (A,)).copy()
    high = np.broadcast_to(np.asarray(target.action_high, dtype=np.float64), (A,)).copy()
    if np.isnan(low).any() or np.isnan(high).any() or not np.all(low <= high):
        raise ValueError(f"problem bounds must satisfy action_low <= action_high, got {low} and {high}")
    return target, T, A, low, high


def initial_actions(init, T: int, A: int, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The (T, A) starting sequence: ``init`` as a (T, A) array or one (A,) row repeated, clipped
    into the bounds; ``None``: the point of the box closest to zero, at every step."""
    if init is None:
        return np.tile(np.clip(0.0, low, high), (T, 1))
    a = np.asarray(init, dtype=np.float64)
    if a.shape == (A,):
        a = np.tile(a, (T, 1))
    if a.shape != (T, A):
        raise ValueError(f"init must have shape ({T}, {A}) (horizon, action_dim) or ({A},), got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("init contains NaN or inf")
    return np.clip(a, low, high)


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


def check_callback(callback) -> None:
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable(iteration, loss, actions) or None, got {callback!r}")

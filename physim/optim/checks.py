"""Argument checks shared by the optimizers.

Each check raises ``ValueError`` naming the offending argument, so a bad call fails before any
simulation runs; :func:`check_problem` validates the duck-typed problem protocol described in
:mod:`physim.optim.problem`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

__all__ = ["check_positive_int", "check_positive_float", "check_problem", "initial_actions", "check_callback"]


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


def check_callback(callback) -> None:
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable(iteration, loss, actions) or None, got {callback!r}")

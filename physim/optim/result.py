"""The result record shared by every optimizer.

Every optimizer works on a *problem* (see :mod:`physim.optim.problem`): any object with
``horizon`` (T steps), ``action_dim`` (A), ``action_low`` / ``action_high`` ((A,) bounds in the
problem's action units), ``sim_steps`` (a counter of simulated steps), ``loss(actions)`` and
``loss_and_grad(actions)`` for a (t, A) action array with 1 <= t <= T. A
:class:`~physim.optim.problem.SceneProblem` and ``env.unwrapped`` of a physim Gymnasium env
both qualify. Their argument checks are in :mod:`physim.optim.checks`, the learning-rate
schedules in :mod:`physim.optim.schedules`.
"""

from __future__ import annotations

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

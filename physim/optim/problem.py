"""Differentiable trajectory problems: a built Scene + a task loss of its state.

Every optimizer in :mod:`physim.optim` talks to a *problem*: anything with

* ``horizon`` (T steps), ``action_dim`` (A), ``action_low`` / ``action_high`` ((A,) bounds),
* ``sim_steps``: simulated steps used so far (a gradient evaluation counts its steps twice:
  the forward pass and the reverse pass, which recomputes it),
* ``loss(actions)`` and ``loss_and_grad(actions)`` for an action array of 1..T rows: the task
  loss of the state reached after those steps, from the problem's start state.

:class:`SceneProblem` implements it for any scene and any torch loss of the state by name
(``"mpm.x"``, ``"tools.pos"``, ``"springs.x"``, ...): of the final state, or of the states at
every step (a time series); the Gymnasium environments in :mod:`physim.envs` expose the same
attributes on ``env.unwrapped``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..rollout import series_seeds

__all__ = ["SceneProblem", "Evaluation", "rollout_loss"]


def rollout_loss(scene, actions: np.ndarray, loss_fn, observe=None, grad: bool = True, what: str = "the loss"):
    """Run ``actions`` from the scene's current state and evaluate ``loss_fn`` (a torch scalar
    of the final state by name, or with ``observe`` of those entries' time series); with
    ``grad``, run reverse mode seeded by the loss's gradient (one seed per step for a time
    series). Returns (loss value, :class:`physim.Gradients` or None, final numpy state)."""
    series = scene.forward(actions, requires_grad=grad, observe=observe)
    final = scene.get_state()
    arrays = final if series is None else series
    tensors = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=grad) for k, v in arrays.items()}
    loss = loss_fn(tensors)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("the loss function must return a scalar torch tensor")
    value = float(loss.detach())
    if not np.isfinite(value):
        raise FloatingPointError(f"{what} is {value} (NaN/inf)")
    if not grad:
        return value, None, final
    loss.backward()
    used = {k: t.grad.numpy() for k, t in tensors.items() if t.grad is not None}
    return value, scene.backward(used if series is None else series_seeds(used)), final


@dataclass
class Evaluation:
    """One evaluation of a problem: the loss and (if requested) its gradients."""

    loss: float
    grad_actions: np.ndarray | None = None  #: (t, A) d loss / d actions
    #: d loss / d initial state, by name (e.g. ``"tools.pos"``: (E, dim) initial tool positions)
    grad_initial: dict[str, np.ndarray] = field(default_factory=dict)
    #: d loss / d every differentiable parameter, by name (``"mpm.E"``, ``"tools.friction"``, ...)
    grad_params: dict[str, np.ndarray] = field(default_factory=dict)
    action_grad_norm: float = 0.0
    state: dict | None = None  #: the final state (numpy, as Scene.get_state) when kept


class SceneProblem:
    """A differentiable trajectory problem on a built :class:`physim.Scene`.

    Args:
        scene: a built scene (``max_steps >= horizon``).
        loss_fn: ``loss_fn(state) -> scalar tensor``; ``state`` maps every state name
            (``scene.state_names``: ``"mpm.x"``, ``"tools.pos"``, ...) to a float64 tensor of the
            state after the actions; with ``observe``, it maps each observed name to the
            time series of shape (t + 1, ...) (entry 0 the start state). Must be differentiable.
        horizon: T, the number of steps of a full trajectory.
        action_low, action_high: per-step action bounds, scalars or (A,) arrays.
        action_map: (A, scene.action_dim) matrix M; the scene is driven by ``actions @ M``
            (e.g. to scale normalized actions to tool velocities or to hide fixed tools).
            Default: the identity (A = scene.action_dim).
        start_state: the state every evaluation starts from (as :meth:`Scene.get_state`);
            default: the scene's state now. Assign ``problem.start_state`` to change it.
        observe: state names whose whole time series the loss reads (a loss at many steps);
            ``None``: the loss reads the final state only.
    """

    def __init__(
        self,
        scene,
        loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        horizon: int,
        action_low=-1.0,
        action_high=1.0,
        action_map=None,
        start_state: dict | None = None,
        observe: Sequence[str] | None = None,
    ):
        scene._check_built()
        if not (isinstance(horizon, int) and 1 <= horizon <= scene.max_steps):
            raise ValueError(f"horizon must be an integer in [1, {scene.max_steps}] (scene max_steps), got {horizon!r}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.scene = scene
        self.loss_fn = loss_fn
        self.horizon = horizon
        if action_map is None:
            action_map = np.eye(scene.action_dim)
        self.action_map = np.asarray(action_map, dtype=np.float64)
        if self.action_map.ndim != 2 or self.action_map.shape[1] != scene.action_dim:
            raise ValueError(
                f"action_map must have shape (A, {scene.action_dim}) for this scene, got {self.action_map.shape}")
        self.action_dim = int(self.action_map.shape[0])
        self.action_low = np.broadcast_to(np.asarray(action_low, dtype=np.float64), (self.action_dim,)).copy()
        self.action_high = np.broadcast_to(np.asarray(action_high, dtype=np.float64), (self.action_dim,)).copy()
        if not np.all(self.action_low < self.action_high):
            raise ValueError(f"action_low must be below action_high, got {self.action_low} and {self.action_high}")
        self.start_state = scene.get_state() if start_state is None else start_state
        self.observe = None if observe is None else list(observe)
        if self.observe is not None:
            unknown = [n for n in self.observe if n not in scene.state_names]
            if unknown:
                raise ValueError(f"observe names {unknown} are not state entries; the scene has {scene.state_names}")
        self.sim_steps = 0

    # ------------------------------------------------------------------ checks
    def check_actions(self, actions) -> np.ndarray:
        """Validate an action array: (t, A) with 1 <= t <= T, finite, within the bounds."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != self.action_dim or not (1 <= a.shape[0] <= self.horizon):
            raise ValueError(
                f"actions must have shape (t, {self.action_dim}) with 1 <= t <= {self.horizon}, got {a.shape}")
        if not np.isfinite(a).all():
            t, k = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"actions contain NaN or inf (step {t}, column {k})")
        tol = 1e-9 * (1 + np.abs(self.action_high - self.action_low))
        low, high = a < self.action_low - tol, a > self.action_high + tol
        if low.any() or high.any():
            t, k = np.argwhere(low | high)[0]
            raise ValueError(
                f"action {a[t, k]:.4g} at step {t}, column {k} is outside the bounds "
                f"[{self.action_low[k]:g}, {self.action_high[k]:g}]")
        return a

    def zero_actions(self) -> np.ndarray:
        """A (T, A) array of the action closest to zero inside the bounds (a neutral start)."""
        return np.tile(np.clip(0.0, self.action_low, self.action_high), (self.horizon, 1))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, actions, grad: bool = True, keep_state: bool = False) -> Evaluation:
        """Run ``actions`` from the start state; the loss, and its gradients when ``grad``.

        The scene's state before the call is restored afterwards, so a running episode
        (e.g. of a Gymnasium env built on the same scene) is not disturbed.
        """
        a = self.check_actions(actions)
        scene = self.scene
        saved = scene.get_state()
        try:
            scene.set_state(self.start_state)
            value, grads, s = rollout_loss(scene, a @ self.action_map, self.loss_fn, self.observe, grad,
                                           f"the task loss after {len(a)} steps")
            self.sim_steps += len(a) * (2 if grad else 1)
            out = Evaluation(loss=value, state=s if keep_state else None)
            if grad:
                out.grad_actions = grads.actions @ self.action_map.T
                out.grad_initial = grads.initial
                out.grad_params = grads.params
                out.action_grad_norm = float(np.linalg.norm(out.grad_actions))
            return out
        finally:
            scene.set_state(saved)

    def loss(self, actions) -> float:
        """Task loss after running ``actions`` (t <= T rows) from the start state; no gradient."""
        return self.evaluate(actions, grad=False).loss

    def loss_and_grad(self, actions) -> tuple[float, np.ndarray]:
        """(loss, d loss / d actions) for ``actions`` (t <= T rows) from the start state."""
        e = self.evaluate(actions, grad=True)
        return e.loss, e.grad_actions

"""The shared Gymnasium base of every physim task.

A task subclasses :class:`PhysimEnv` and writes only its scene, its goal, its loss and
(optionally) extra observation features and metrics; the Gymnasium API, action checks,
rewards, rendering and the differentiable rollout API live here once.

Differentiable API on ``env.unwrapped`` (the protocol of :mod:`physim.optim.problem`):

* ``horizon``, ``action_dim``, ``action_low``, ``action_high``, ``sim_steps``;
* ``loss(actions)`` / ``loss_and_grad(actions)``: run a (t <= horizon, action_dim) action
  sequence from the state of the latest ``reset()`` and return the task loss (and its
  gradient w.r.t. the actions); a running episode is left untouched;
* ``evaluate(actions, grad=True)``: also the gradients w.r.t. the initial state by name
  (``grad_initial["tools.pos"]``: the tools' start positions) and every parameter;
  ``set_initial_tool_pos(pos)`` moves the tools' start pose for later evaluations.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from physim.optim.problem import Evaluation, SceneProblem

from ._args import SCALES, Arg, arguments_table, collect

__all__ = ["PhysimEnv", "Arg"]


class PhysimEnv(gym.Env):
    """Base class of physim's Gymnasium environments (see the module docstring).

    Subclasses set ``default_horizon`` and implement:

    * ``_build_scene() -> Scene`` (built with ``max_steps >= self.horizon``),
    * ``_action_map() -> (A, scene.action_dim)`` matrix from normalized actions in [-1, 1]
      to scene actions (tool velocities in m/s, rad/s; actuation signals),
    * ``_sample_goal(rng)``: the procedural goal (and optionally a new start state via
      ``self.scene.reset(...)``), seeded by ``reset(seed=...)``,
    * ``_loss(state) -> torch scalar``: the task loss of a state (name -> float64 tensor:
      ``state["mpm.x"]``, ``state["springs.x"]``, ``state["tools.pos"]``, ...),
    * optionally ``_goal_features() -> 1-D array`` (fixed size) appended to observations,
      ``_metrics(state) -> dict`` added to ``info``, ``_goal_points() -> (m, dim)`` (the goal
      as points) and ``_goal_overlay(renderer)``, which draws the goal in every ``render()``
      frame and video (default: the goal points as dots; tasks draw their target shape,
      region, pattern or line with ``renderer.add_goal``).

    Size and settings are ``gym.make`` keyword arguments: each task declares them in ``args``
    (name -> :class:`Arg`; the default is the class attribute of that name, so a subclass can
    change a default by setting the attribute) and the values ``scale="paper"`` sets in
    ``paper`` (the reference task's resolution); both dicts merge along the class hierarchy,
    and every task's docstring ends with the "Arguments" table written from them. Explicit
    keyword arguments override ``scale``; a bad value raises a ``ValueError`` naming it, an
    unknown name a ``TypeError`` listing the accepted ones. Cross-argument checks go in
    ``_check_args()``.

    The observation is the rows ``obs_index`` (at most ``obs_particles``, drawn once with a
    fixed seed) of every state entry in ``obs_entries`` (default the MPM particles' x and v;
    a mass-spring task uses ``("springs.x", "springs.v")``), the tools' poses, the goal
    features and the phase ``t / horizon``.
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 15}
    default_horizon = 50
    #: per-row state entries (particles, nodes) whose sampled rows start the observation
    obs_entries: tuple[str, ...] = ("mpm.x", "mpm.v")
    #: rows of ``obs_entries`` sampled (fixed indices) into the observation (all if fewer)
    obs_particles = 128
    #: keyword arguments of :func:`physim.optim.train_policy` that suit this task, used by
    #: ``physim optimize ... --method policy`` unless the command line says otherwise
    policy_defaults: dict = {}
    #: keyword arguments of :func:`physim.optim.adam` that suit this task, used by
    #: ``physim optimize ... --method adam`` unless the command line says otherwise
    adam_defaults: dict = {}
    #: the task's keyword arguments besides render_mode, horizon, seed and scale (merged along the
    #: class hierarchy; see the class docstring)
    args: dict[str, Arg] = {}
    #: argument values at ``scale="paper"`` (merged along the class hierarchy; may hold ``horizon``)
    paper: dict[str, Any] = {}
    #: one sentence under the Arguments table: what the paper scale is (reference, measured size)
    paper_note: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        doc = cls.__dict__.get("__doc__")
        if doc and not cls.__name__.startswith("_") and all(hasattr(cls, name) for name in collect(cls, "args")):
            table = "\n".join("    " + line for line in arguments_table(cls).splitlines())
            cls.__doc__ = (doc.rstrip() + "\n\n    Arguments (``gym.make`` keywords; ``scale=\"paper\"`` sets the"
                           " third column):\n\n" + table + "\n")

    def __init__(self, render_mode: str | None = None, horizon: int | None = None, seed: int | None = None,
                 scale: str = "default", **kwargs):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        if horizon is not None:
            kwargs["horizon"] = horizon
        self._configure(scale, kwargs)
        self._check_args()
        self.scene = self._build_scene()
        M = np.asarray(self._action_map(), dtype=np.float64)
        self.action_dim = int(M.shape[0])
        self.action_low = -np.ones(self.action_dim)
        self.action_high = np.ones(self.action_dim)
        self.action_space = spaces.Box(-1.0, 1.0, (self.action_dim,), dtype=np.float32)
        self.problem = SceneProblem(self.scene, self._loss, self.horizon, -1.0, 1.0, action_map=M)
        # particle masses only where there are MPM particles (a mass-spring scene has none)
        self._mass = (torch.as_tensor(self.scene.particle_mass().astype(np.float64))
                      if self.scene.n_particles else None)
        n = int(self.scene.initial_state()[self.obs_entries[0]].shape[0])
        pick = np.random.default_rng(12345).choice(n, size=min(self.obs_particles, n), replace=False)
        self._obs_index = np.sort(pick)
        self._renderer = None
        self._t = 0
        self._prev_loss = None
        self._sample_goal(np.random.default_rng(seed if seed is not None else 0))
        self._start_state = self.scene.get_state()
        obs_dim = self._observation(self._start_state).shape[0]
        self.observation_space = spaces.Box(-np.inf, np.inf, (obs_dim,), dtype=np.float32)

    # ------------------------------------------------------------------ arguments
    @classmethod
    def config(cls, scale: str = "default", **kwargs) -> dict[str, Any]:
        """The validated argument values an env made with ``scale`` and ``kwargs`` would have
        (every entry of ``args``, plus ``horizon`` when the scale or ``kwargs`` sets it), without
        building anything. Raises like the constructor on a bad value."""
        owner = cls.__name__
        if scale not in SCALES:
            raise ValueError(f"{owner}: scale must be one of {SCALES}, got {scale!r}")
        args = collect(cls, "args")
        horizon = kwargs.pop("horizon", None)
        unknown = sorted(set(kwargs) - set(args))
        if unknown:
            raise TypeError(f"{owner} got unknown argument(s) {unknown}; it takes render_mode, horizon, seed, "
                            f"scale, {', '.join(args)}")
        settings = dict(collect(cls, "paper")) if scale == "paper" else {}
        horizon = settings.pop("horizon", None) if horizon is None else horizon
        settings.update(kwargs)
        out = {name: getattr(cls, name) for name in args}
        out.update({name: args[name].check(owner, name, value) for name, value in settings.items()})
        if horizon is not None:
            if isinstance(horizon, (bool, np.bool_)) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
                raise ValueError(f"{owner}: horizon must be an integer >= 1, got {horizon!r}")
            out["horizon"] = int(horizon)
        return out

    def _configure(self, scale: str, kwargs: dict) -> None:
        """Set the task's arguments: ``scale``'s values, then the explicit ones, each validated."""
        settings = self.config(scale, **kwargs)
        self.horizon = settings.pop("horizon", int(self.default_horizon))
        for name, value in settings.items():
            setattr(self, name, value)
        self.scale = scale

    def _check_args(self) -> None:
        """Checks between arguments (after they are set, before the scene is built); raise a
        ``ValueError`` naming the argument."""

    @property
    def settings(self) -> dict[str, Any]:
        """The task's argument values (``horizon``, ``scale`` and every entry of ``args``)."""
        return {"horizon": self.horizon, "scale": self.scale,
                **{name: getattr(self, name) for name in collect(type(self), "args")}}

    # ------------------------------------------------------------------ task hooks
    def _build_scene(self):
        raise NotImplementedError

    def _action_map(self) -> np.ndarray:
        raise NotImplementedError

    def _sample_goal(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _loss(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _goal_features(self) -> np.ndarray:
        return np.zeros(0)

    def _metrics(self, state: dict) -> dict[str, float]:
        return {}

    def _goal_points(self) -> np.ndarray | None:
        return None

    # ------------------------------------------------------------------ helpers
    @property
    def dim(self) -> int:
        return self.scene.dim

    @property
    def mass(self) -> torch.Tensor:
        """(n,) MPM particle masses (kg, float64 tensor); raises in a scene without particles."""
        if self._mass is None:
            raise RuntimeError(f"{type(self).__name__}: the scene has no MPM particles, so no particle masses")
        return self._mass

    def _observation(self, state: dict) -> np.ndarray:
        i = self._obs_index
        parts = [np.asarray(state[name])[i].reshape(-1) for name in self.obs_entries] + [
            state["tools.pos"].reshape(-1),
            state["tools.rot"].reshape(-1),
            np.asarray(self._goal_features(), dtype=np.float64).reshape(-1),
            [self._t / self.horizon],
        ]
        return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in parts]).astype(np.float32)

    def _state_loss(self, state: dict) -> float:
        with torch.no_grad():
            return float(self._loss({k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in state.items()}))

    def _check_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (self.action_dim,):
            raise ValueError(f"{type(self).__name__}: action must have shape ({self.action_dim},), got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{type(self).__name__}: action contains NaN or inf: {a.tolist()}")
        if np.any(np.abs(a) > 1.0 + 1e-6):
            k = int(np.argmax(np.abs(a)))
            raise ValueError(
                f"{type(self).__name__}: action[{k}] = {a[k]:.4g} is outside the action space [-1, 1]")
        return np.clip(a, -1.0, 1.0)

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.scene.reset()
        if seed is not None:
            self._sample_goal(self.np_random)
            if self._renderer is not None:
                self._draw_goal()
        self._start_state = self.scene.get_state()
        self.problem.start_state = self._start_state
        self._t = 0
        self._prev_loss = self._state_loss(self._start_state)
        info = {"loss": self._prev_loss, **self._metrics(self._start_state)}
        if self.render_mode == "human":
            self.render()
        return self._observation(self._start_state), info

    def step(self, action):
        if self._prev_loss is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.horizon:
            raise RuntimeError(f"the episode ended after {self.horizon} steps; call reset()")
        a = self._check_action(action)
        self.scene.step(a @ self.problem.action_map)
        self._t += 1
        state = self.scene.get_state()
        loss = self._state_loss(state)
        reward = self._prev_loss - loss
        self._prev_loss = loss
        info = {"loss": loss, **self._metrics(state)}
        truncated = self._t >= self.horizon
        if self.render_mode == "human":
            self.render()
        return self._observation(state), float(reward), False, truncated, info

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'human'")
            return None
        if self._renderer is None:
            from physim.render import Renderer

            self._renderer = Renderer(self.scene, off_screen=self.render_mode != "human", **self.camera_kwargs())
            self._draw_goal()
        if self.render_mode == "rgb_array":
            return self._renderer.frame()
        self._renderer.update()
        return None

    def camera_kwargs(self) -> dict:
        """Extra keyword arguments for :class:`physim.render.Renderer` (e.g. ``camera``)."""
        return {}

    def _draw_goal(self) -> None:
        """(Re)draw the goal into the renderer: called when it is created and after every seeded
        reset (the goal's actors keep their names, so they are replaced)."""
        self._goal_overlay(self._renderer)

    def _goal_overlay(self, renderer) -> None:
        """Draw the task's goal with ``renderer.add_goal`` / ``add_points`` (default: the
        ``_goal_points()`` as translucent dots); a task overrides it with its target shape,
        region, pattern or line."""
        goal = self._goal_points()
        if goal is not None:
            from physim.render import GOAL_COLOR

            renderer.add_points(goal, color=GOAL_COLOR, name="goal", opacity=0.8)

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ------------------------------------------------------------------ differentiable API
    @property
    def sim_steps(self) -> int:
        """Simulated steps used by loss / loss_and_grad so far (a gradient counts twice)."""
        return self.problem.sim_steps

    def loss(self, actions) -> float:
        """Task loss after running ``actions`` ((t <= horizon, action_dim), in [-1, 1]) from
        the start state of the latest reset; no gradient."""
        return self.problem.loss(actions)

    def loss_and_grad(self, actions) -> tuple[float, np.ndarray]:
        """(loss, d loss / d actions) for ``actions`` from the start state of the latest reset."""
        return self.problem.loss_and_grad(actions)

    def evaluate(self, actions, grad: bool = True) -> Evaluation:
        """Loss and gradients w.r.t. the actions, the initial state by name
        (``grad_initial["tools.pos"]``, (E, dim)) and the parameters (``grad_params``)."""
        return self.problem.evaluate(actions, grad=grad)

    def set_initial_tool_pos(self, pos) -> None:
        """Move the tools' start positions ((E, dim)) for the following evaluations and the
        current episode (until the next ``reset()``, which restores the task's start pose)."""
        pos = np.asarray(pos, dtype=np.float64)
        cur = self._start_state["tools.pos"]
        if pos.shape != cur.shape or not np.isfinite(pos).all():
            raise ValueError(f"initial tool positions must be a finite {cur.shape} array, got {pos.shape}")
        lo, hi = 2 * self.scene.dx, 1 - 2 * self.scene.dx
        if np.any((pos < lo) | (pos > hi)):
            raise ValueError(f"initial tool positions {pos.tolist()} leave the domain [{lo:g}, {hi:g}]")
        self._start_state = {**self._start_state, "tools.pos": pos}
        self.problem.start_state = self._start_state
        self.scene.set_state(self._start_state)

    def rollout(self, actions, render: bool = False, every: int = 1):
        """Replay ``actions`` from the start state with env steps; returns (losses, frames)."""
        a = self.problem.check_actions(actions)
        self.scene.set_state(self._start_state)
        self._t, self._prev_loss = 0, self._state_loss(self._start_state)
        losses, frames = [self._prev_loss], []
        if render:
            frames.append(self._frame())
        for k, row in enumerate(a):
            _, _, _, _, info = self.step(row)
            losses.append(info["loss"])
            if render and (k + 1) % every == 0:
                frames.append(self._frame())
        return losses, frames

    def _frame(self) -> np.ndarray:
        mode = self.render_mode
        self.render_mode = "rgb_array" if mode is None else mode
        try:
            if self.render_mode == "human":
                self.render()
                return self._renderer.frame()
            return self.render()
        finally:
            self.render_mode = mode

    def measure_speed(self, steps: int = 10) -> float:
        """Environment steps per second of random actions (after one warm-up step)."""
        self.reset(seed=0)
        self.step(self.action_space.sample())
        t0 = time.perf_counter()
        n = min(steps, self.horizon - 1)
        for _ in range(n):
            self.step(self.action_space.sample())
        return n / (time.perf_counter() - t0)

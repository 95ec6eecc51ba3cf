"""Native vector environments: ``gym.make_vec("physim/<Task>-v0", num_envs=B)``.

Every task registers a ``vector_entry_point`` (``vectorization_mode="vector_entry_point"``, the
default of :func:`gymnasium.make_vec` for these ids). Where the task's scene can be batched
(MPM, mass-spring and FEM bodies, their coupling and tools: :class:`physim.Scene` with
``n_worlds``), it is a :class:`PhysimVectorEnv`: one scene of B worlds stepped by the same
kernel launches, with one goal per world. Tasks with parts that batched worlds do not support
yet (thin shells, emitters, the smoke field) get Gymnasium's
:class:`~gymnasium.vector.SyncVectorEnv` of B single envs in this process instead; both use
next-step autoreset (Gymnasium 1.x's default) and ``env.metadata["batched"]`` says which one
you got.

    import gymnasium as gym
    import physim.envs  # registers the tasks
    envs = gym.make_vec("physim/Pinch-v0", num_envs=8)
    obs, info = envs.reset(seed=0)            # world i gets the goal of seed 0 + i
    obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())

World ``i`` of a :class:`PhysimVectorEnv` behaves step for step as the single env
``gym.make(id, **kwargs)`` reset with world ``i``'s seed (same observations, rewards and
losses up to the order of threaded sums): the tests check it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from physim.optim.batched import build_batched_scene, world_rows
from physim.scene import UnbatchableScene

__all__ = ["PhysimVectorEnv", "make_vector_env", "vector_entry_point"]

#: the PhysimEnv attributes that are the same object for every world (everything else of the
#: task's instance -- its goal, start-state bookkeeping -- is kept per world)
_SHARED = ("scene", "problem", "_renderer", "_mass", "_obs_index", "action_space", "observation_space",
           "np_random", "_np_random", "_np_random_seed")


class PhysimVectorEnv(VectorEnv):
    """B worlds of one physim task in one batched scene (see the module docstring).

    Args:
        env_cls: the task's :class:`physim.envs.PhysimEnv` subclass.
        num_envs: B, the number of worlds.
        **kwargs: the task's ``gym.make`` keywords (``horizon``, ``scale``, its arguments).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": [], "batched": True}

    def __init__(self, env_cls, num_envs: int, **kwargs):
        if not (isinstance(num_envs, (int, np.integer)) and not isinstance(num_envs, bool) and num_envs >= 1):
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if kwargs.get("render_mode") is not None:
            raise ValueError(f"{env_cls.__name__}: a batched vector env does not render (render_mode="
                             f"{kwargs['render_mode']!r}); render a single env made with gym.make")
        kwargs.pop("render_mode", None)
        self.num_envs = int(num_envs)
        # one world: goals, losses, observations (its own one-world scene samples the goals)
        self.task = env_cls(**kwargs)
        self.scene = build_batched_scene(self.task, self.num_envs)
        if self.scene.n_worlds != self.num_envs:
            raise UnbatchableScene(f"{env_cls.__name__}'s scene was built with n_worlds={self.scene.n_worlds}")
        self.map = self.task.problem.action_map  # (action_dim, world_action_dim)
        self.single_action_space = self.task.action_space
        self.single_observation_space = self.task.observation_space
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.horizon = self.task.horizon
        self.render_mode = None
        # per world: the task's goal and start state (the goal of the task's constructor: seed 0)
        self._worlds = [self._capture() for _ in range(self.num_envs)]
        self._t = np.zeros(self.num_envs, np.int64)
        self._prev_loss = np.full(self.num_envs, np.nan)
        self._autoreset = np.zeros(self.num_envs, bool)
        self._started = False

    # ------------------------------------------------------------------ worlds
    def _capture(self) -> dict[str, Any]:
        """The task's per-world attributes now (after a reset of the one-world task) and its start state."""
        task = self.task
        goal = {k: v for k, v in vars(task).items() if k not in _SHARED}
        return {"goal": goal, "start": {k: np.asarray(v).copy() for k, v in task.scene.get_state().items()}}

    def _use(self, w: int) -> None:
        """Make the one-world task hold world ``w``'s goal (for its loss, observation and metrics)."""
        vars(self.task).update(self._worlds[w]["goal"])

    def _keep(self, w: int) -> None:
        """Store the task's per-world attributes back as world ``w``'s (a task may keep state
        per episode: SurfaceFollowing's loss reads the episode's history of readings)."""
        self._worlds[w]["goal"] = {k: v for k, v in vars(self.task).items() if k not in _SHARED}

    def _world_eval(self, w: int, state: dict[str, np.ndarray], t: int):
        """World ``w``'s observation, loss and metrics at ``state``, its step ``t`` of the episode
        (0: ``state`` is the episode's start, as the single env's reset passes it)."""
        self._use(w)
        self.task._t = int(t)
        if t == 0:
            self.task._start_state = state  # the start by identity, as the single env's reset
        loss = self.task._state_loss(state)
        out = self.task._observation(state), loss, self.task._metrics(state)
        self._keep(w)
        return out

    def _world_observation(self, w: int, state: dict[str, np.ndarray]) -> np.ndarray:
        """World ``w``'s observation at its current state, leaving its episode's record alone."""
        self._use(w)
        self.task._t = int(self._t[w])
        return self.task._observation(state)

    def _set_world_state(self, full: dict[str, np.ndarray], w: int, state: dict[str, np.ndarray]) -> None:
        for name, value in state.items():
            rows = full[name].shape[0] // self.num_envs
            full[name][w * rows:(w + 1) * rows] = value

    def _infos(self, per_world: list[dict | None]) -> dict[str, Any]:
        """Gymnasium's vector info: each key an array over the worlds, with its ``"_key"`` mask."""
        info: dict[str, Any] = {}
        for w, entry in enumerate(per_world):
            if entry is not None:
                info = self._add_info(info, entry, w)
        return info

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        """Reset every world (or those of ``options["reset_mask"]``). ``seed``: an int (world i
        gets ``seed + i``), a list of one seed per world, or ``None`` (keep each world's goal)."""
        mask = np.ones(self.num_envs, bool)
        if options is not None and "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"options['reset_mask'] must have shape ({self.num_envs},), got {mask.shape}")
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset(seed=...) takes one seed per world ({self.num_envs}), got {len(seeds)}")
        full = self.scene.get_state() if self._started else self.scene.initial_state()
        obs = np.zeros((self.num_envs, *self.single_observation_space.shape), self.single_observation_space.dtype)
        infos: list[dict | None] = [None] * self.num_envs
        current = self.scene.per_world(full)
        for w in range(self.num_envs):
            if not mask[w]:
                obs[w] = self._world_observation(w, {k: v[w] for k, v in current.items()})
                continue
            self._use(w)
            if seeds[w] is not None:
                self.task.reset(seed=seeds[w])  # samples world w's goal (and start state) as the single env does
                self._worlds[w] = self._capture()
            start = self._worlds[w]["start"]
            self._set_world_state(full, w, start)
            self._t[w] = 0
            o, loss, metrics = self._world_eval(w, start, 0)
            obs[w], self._prev_loss[w] = o, loss
            infos[w] = {"loss": loss, **metrics}
        self.scene.set_state(full)
        self._autoreset[mask] = False
        self._started = True
        return obs, self._infos(infos)

    def step(self, actions):
        if not self._started:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(actions, dtype=np.float64)
        if a.shape != (self.num_envs, self.task.action_dim):
            raise ValueError(f"actions must have shape ({self.num_envs}, {self.task.action_dim}), got {a.shape}")
        rows = []
        for w in range(self.num_envs):
            try:
                rows.append(self.task._check_action(a[w]))
            except ValueError as e:
                raise ValueError(f"world {w}: {e}") from None
        self.scene.step(np.stack(rows) @ self.map)
        full = self.scene.get_state()
        per = self.scene.per_world(full)
        obs = np.zeros((self.num_envs, *self.single_observation_space.shape), self.single_observation_space.dtype)
        reward = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        infos: list[dict | None] = [None] * self.num_envs
        reset_any = False
        for w in range(self.num_envs):
            if self._autoreset[w]:  # next-step autoreset: this step starts world w's next episode
                start = self._worlds[w]["start"]
                self._set_world_state(full, w, start)
                reset_any = True
                self._t[w] = 0
                o, loss, metrics = self._world_eval(w, start, 0)
            else:
                self._t[w] += 1
                o, loss, metrics = self._world_eval(w, {k: v[w] for k, v in per.items()}, self._t[w])
                reward[w] = self._prev_loss[w] - loss
                truncated[w] = self._t[w] >= self.horizon
            obs[w], self._prev_loss[w] = o, loss
            infos[w] = {"loss": loss, **metrics}
        if reset_any:
            self.scene.set_state(full)
        self._autoreset = terminated | truncated
        return obs, reward, terminated, truncated, self._infos(infos)

    # ------------------------------------------------------------------ differentiable API
    def loss_and_grad(self, actions) -> tuple[np.ndarray, np.ndarray]:
        """Each world's task loss after running its row of ``actions`` ((B, t, action_dim), t <=
        horizon, in [-1, 1]) from its latest reset's start state, at its own goal, and its gradient
        w.r.t. those actions ((B, t, action_dim)): one batched forward and one reverse pass. The
        running episodes are left untouched (as ``env.unwrapped.loss_and_grad`` does)."""
        import torch

        from physim.optim.problem import rollout_loss

        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 3 or a.shape[0] != self.num_envs:
            raise ValueError(f"actions must have shape ({self.num_envs}, t, {self.task.action_dim}), got {a.shape}")
        rows = [self.task.problem.check_actions(a[w]) for w in range(self.num_envs)]
        scene, observe = self.scene, self.task.problem.observe
        saved = scene.get_state()
        full = self.scene.initial_state()
        for w in range(self.num_envs):
            self._set_world_state(full, w, self._worlds[w]["start"])
        losses = []

        def summed(tensors):  # every world's own loss at its own goal; their sum seeds reverse mode
            for w in range(self.num_envs):
                self._use(w)
                losses.append(self.task._loss(world_rows(tensors, self.num_envs, w, observe is not None)))
            return torch.stack(losses).sum()

        try:
            scene.set_state(full)
            _, g, _ = rollout_loss(scene, np.einsum("wta,ab->twb", np.stack(rows), self.map), summed,
                                   observe=observe, what="the worlds' summed loss")
        finally:
            scene.set_state(saved)
        grad = np.einsum("twb,ab->wta", g.actions, self.map)
        return np.array([float(v.detach()) for v in losses]), grad

    def close_extras(self, **kwargs):
        self.task.close()


def make_vector_env(entry: str, num_envs: int = 1, **kwargs):
    """A :class:`PhysimVectorEnv` of the task at ``entry`` (``"physim.envs.pinch:PinchEnv"``) where
    its scene batches, else a :class:`~gymnasium.vector.SyncVectorEnv` of single envs (next-step
    autoreset)."""
    module, _, name = entry.partition(":")
    cls = getattr(importlib.import_module(module), name)
    kwargs.pop("max_episode_steps", None)  # the tasks truncate at their horizon themselves
    try:
        return PhysimVectorEnv(cls, num_envs, **kwargs)
    except UnbatchableScene:
        env = gym.vector.SyncVectorEnv([functools.partial(cls, **kwargs) for _ in range(num_envs)],
                                       autoreset_mode=AutoresetMode.NEXT_STEP)
        env.metadata = {**env.metadata, "batched": False}
        return env


def vector_entry_point(entry: str):
    """The ``vector_entry_point`` of a task whose single-env entry point is ``entry``: a picklable
    callable (a registered spec travels to spawned workers of an AsyncVectorEnv)."""
    return functools.partial(make_vector_env, entry)

"""Evaluate a whole population in one batched rollout: ``W`` candidates in the ``W`` worlds of
one :class:`physim.Scene` (``n_worlds``), stepped by the same kernel launches.

    env = gym.make("physim/Pinch-v0").unwrapped
    with BatchedPool(env, worlds=16) as pool:
        result = cmaes(env, iters=8, popsize=16, pool=pool)

:class:`BatchedPool` has the interface of :class:`physim.optim.parallel.Pool` (``start``,
``losses``, ``sim_steps``, ``workers``, ``backend``), so :func:`~physim.optim.cmaes`,
:func:`~physim.optim.random_search` and the hybrid take it as their ``pool``. Every
candidate's loss is the loss ``env.loss(actions)`` returns in this process (to round-off): the
worlds start from the problem's start state and the loss is the task's own, per world. A
population larger than ``worlds`` runs in several batches; a smaller one fills the spare
worlds with copies of its first candidate. It needs a task whose scene batches (MPM bodies,
mass-spring bodies and their coupling, FEM gels, tools; not shells, emitters or smoke:
:class:`physim.scene.UnbatchableScene` otherwise).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..scene import batched_worlds

__all__ = ["BatchedPool", "build_batched_scene", "world_rows"]


def build_batched_scene(task, worlds: int):
    """A scene of ``worlds`` worlds from ``task``'s own scene builder (a physim task's
    ``_build_scene``), leaving the task's attributes as they were (its builder may set some from
    the scene it builds)."""
    saved = dict(vars(task))
    try:
        with batched_worlds(worlds):
            return task._build_scene()
    finally:
        vars(task).clear()
        vars(task).update(saved)


def world_rows(arrays: dict, worlds: int, w: int, series: bool = False) -> dict:
    """World ``w``'s rows of every world-major entry of ``arrays`` (numpy arrays or torch tensors):
    a state ``(W n, ...)``, or with ``series`` a time series ``(steps + 1, W n, ...)``."""
    if series:
        return {k: v.reshape(v.shape[0], worlds, -1, *v.shape[2:])[:, w] for k, v in arrays.items()}
    return {k: v.reshape(worlds, -1, *v.shape[1:])[w] for k, v in arrays.items()}


class BatchedPool:
    """A population evaluator over the ``worlds`` worlds of one batched scene of ``env``'s task.

    Args:
        env: a physim task (``gym.make(...).unwrapped``, a :class:`physim.envs.PhysimEnv`):
            its scene builder, action map, start state and loss.
        worlds: candidates per batched rollout (>= 1).
    """

    backend = "batched"

    def __init__(self, env, worlds: int = 16):
        if isinstance(worlds, bool) or not isinstance(worlds, (int, np.integer)) or worlds < 1:
            raise ValueError(f"worlds must be an integer >= 1, got {worlds!r}")
        env = getattr(env, "unwrapped", env)
        if not hasattr(env, "_build_scene") or not hasattr(env, "problem"):
            raise TypeError(f"BatchedPool needs a physim task (gym.make(...).unwrapped), got {type(env).__name__}")
        self.env = env
        self.worlds = int(worlds)
        self.workers = self.worlds  #: candidates evaluated together (what Pool calls its workers)
        self.scene = None
        self.sim_steps = 0  #: world-steps simulated (one candidate's step counts once)
        self.start_seconds = 0.0
        self.seconds = 0.0  #: wall time of the batched rollouts
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    def start(self, reference=None) -> BatchedPool:
        """Build the batched scene (compiles once); with ``reference = (actions, loss)`` check that a
        batched evaluation of ``actions`` gives ``loss`` (relative 1e-6 in f64, 1e-3 in f32)."""
        if self._started:
            return self
        from physim import backend

        t0 = time.perf_counter()
        self.scene = build_batched_scene(self.env, self.worlds)
        self._started = True
        if reference is not None:
            actions, loss = reference
            got = self.losses([np.asarray(actions, dtype=np.float64)])[0]
            cfg = backend.config()
            rtol = 1e-3 if cfg is not None and cfg.precision == "f32" else 1e-6
            if not abs(got - loss) <= rtol * max(abs(loss), 1e-12):
                raise ValueError(f"the batched scene's loss {got!r} differs from this process's {loss!r} for the same "
                                 f"actions (relative tolerance {rtol:g})")
        self.start_seconds = time.perf_counter() - t0
        return self

    def __enter__(self) -> BatchedPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.scene = None
        self._started = False

    def losses(self, candidates) -> list[float]:
        """The task loss of each candidate action array ((t, A) in the env's bounds), in order; a
        batch whose simulation fails gives NaN for each of its candidates."""
        if not self._started:
            self.start()
        prob = self.env.problem
        cands = [prob.check_actions(a) for a in candidates]
        out = np.full(len(cands), np.nan)
        # one batch per run of equal lengths (a batched rollout has one horizon)
        order = sorted(range(len(cands)), key=lambda i: len(cands[i]))
        k = 0
        while k < len(order):
            t = len(cands[order[k]])
            same = [i for i in order[k:] if len(cands[i]) == t][: self.worlds]
            out[same] = self._batch([cands[i] for i in same])
            k += len(same)
        return out.tolist()

    def _batch(self, group: list[np.ndarray]) -> np.ndarray:
        from physim.rollout import GradientError, SimulationError

        W, prob, scene = self.worlds, self.env.problem, self.scene
        t = len(group[0])
        acts = np.stack(group + [group[0]] * (W - len(group)))  # (W, t, A)
        scene_actions = np.einsum("wta,ab->twb", acts, prob.action_map)
        start = {}
        for name, value in prob.start_state.items():
            value = np.asarray(value)
            start[name] = np.broadcast_to(value, (W, *value.shape)).reshape(W * value.shape[0], *value.shape[1:])
        t0 = time.perf_counter()
        try:
            scene.set_state(start)
            series = scene.forward(scene_actions, requires_grad=False, observe=prob.observe)
        except (SimulationError, GradientError, FloatingPointError):
            return np.full(len(group), np.nan)
        finally:
            self.seconds += time.perf_counter() - t0
        self.sim_steps += t * len(group)
        final = scene.get_state()
        losses = np.empty(len(group))
        with torch.no_grad():
            for w in range(len(group)):
                rows = world_rows(final if series is None else series, W, w, series is not None)
                value = prob.loss_fn({k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in rows.items()})
                losses[w] = float(value)
        return losses

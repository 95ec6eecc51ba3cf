"""System identification: recover parameters of any part from observations, by gradients.

Any differentiable parameter a part declares (``scene.param_names``: ``"mpm.E"``,
``"mpm.friction_angle"``, ``"tools.friction"``, ``"springs.stiffness"``, ``"coupler.damping"``,
...; a row other than 0 as ``"springs.stiffness[3]"``) under any loss of the state (final, or
the time series of the observed entries): the parameters become the variables of a small
problem that :func:`physim.optim.adam` optimizes in log space (projected onto the bounds,
with backtracking), so identification shares the optimizer, its schedules, progress bar and
callback with trajectory optimization.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from ..materials import DIFF_PARAMS
from .adam import adam
from .checks import check_positive_float, check_positive_int
from .problem import rollout_loss

__all__ = ["identify", "SysIdResult", "positions_loss"]

#: default search interval of the MPM material parameters, in user units
_MPM_BOUNDS = {
    "E": (1e-6, 1e12),  # Pa
    "nu": (1e-4, 0.499),
    "yield_stress": (1e-8, 1e12),  # Pa
    "viscosity": (1e-8, 1e12),  # Pa s
    "friction_angle": (0.1, 89.9),  # degrees
}
_NAME = re.compile(r"^(?P<name>[a-z_]+\.[A-Za-z_]+)(\[(?P<row>\d+)\])?$")


@dataclass
class SysIdResult:
    """What :func:`identify` returns.

    Attributes:
        params: the identified values (the evaluation with the lowest loss), name -> value in
            user units (Pa for E, degrees for friction_angle, N/m for a spring stiffness, ...).
        loss: its loss.
        losses: the loss of every iteration.
        history: the values evaluated at every iteration (name -> value).
        initial_guess: the starting values.
        sim_steps: simulated steps (a forward + reverse evaluation counts its steps twice).
        wall_seconds: wall-clock time, in seconds.
    """

    params: dict[str, float]
    loss: float
    losses: list[float]
    history: list[dict[str, float]]
    initial_guess: dict[str, float]
    sim_steps: int
    wall_seconds: float

    @property
    def value(self) -> float:
        """The identified value when one parameter was identified."""
        if len(self.params) != 1:
            raise ValueError(f"{len(self.params)} parameters were identified; read result.params")
        return next(iter(self.params.values()))

    def relative_error(self, truth: Mapping[str, float] | float) -> float:
        """Largest |value - truth| / |truth| over the parameters (dimensionless)."""
        if not isinstance(truth, Mapping):
            truth = {next(iter(self.params)): truth} if len(self.params) == 1 else {}
        return max(abs(self.params[k] - t) / abs(t) for k, t in truth.items())


def positions_loss(observed, observed_v=None, v_weight: float = 1.0, name: str = "mpm"):
    """The classic identification loss: mean over entries of ``(x - observed)^2`` (m^2) for the
    final positions of part ``name`` (``"mpm"``: particles, ``"springs"``: nodes), plus
    ``v_weight`` times the same for velocities when ``observed_v`` is given."""
    obs_x = torch.as_tensor(np.asarray(observed, dtype=np.float64))
    obs_v = None if observed_v is None else torch.as_tensor(np.asarray(observed_v, dtype=np.float64))

    def loss(state):
        out = ((state[f"{name}.x"] - obs_x) ** 2).mean()
        if obs_v is not None:
            out = out + v_weight * ((state[f"{name}.v"] - obs_v) ** 2).mean()
        return out

    return loss


class _ParamProblem:
    """Parameters in log space as a one-step problem for :func:`physim.optim.adam`."""

    def __init__(self, scene, actions, loss_fn, keys, lo, hi, observe):
        self.scene, self.actions, self.loss_fn, self.keys, self.observe = scene, actions, loss_fn, keys, observe
        self.horizon, self.action_dim = 1, len(keys)
        self.action_low, self.action_high = np.log(lo), np.log(hi)
        self.sim_steps = 0
        self.history: list[dict[str, float]] = []
        self.exact: dict[tuple, float] = {}  # log value -> the exact value it came from (the guess)

    def values(self, u: np.ndarray) -> list[float]:
        return [self.exact.get((i, float(ui)), math.exp(ui)) for i, ui in enumerate(u)]

    def evaluate(self, actions, grad: bool):
        u = np.asarray(actions, dtype=np.float64).reshape(-1)
        vals = self.values(u)
        scene = self.scene
        for (name, row), value in zip(self.keys, vals, strict=True):
            for r in _rows(scene, name, row):
                scene.set_param(name, value, row=r)
        scene.reset()
        value, g, _ = rollout_loss(scene, self.actions, self.loss_fn, self.observe, grad,
                                   f"the identification loss at {self._labels} = {vals}")
        self.sim_steps += len(self.actions) * (2 if grad else 1)
        self.history.append(dict(zip(self._labels, vals, strict=True)))
        if not grad:
            return value, None
        # d loss / d log(value) = d loss / d value * value
        # (a batched scene's trials share the parameter: the sum over its worlds' rows)
        du = np.array([sum(g.params[name][r] for r in _rows(scene, name, row)) * value
                       for (name, row), value in zip(self.keys, vals, strict=True)])
        return value, du[None, :]

    @property
    def _labels(self):
        return [name if row == 0 else f"{name}[{row}]" for name, row in self.keys]

    def loss(self, actions) -> float:
        return self.evaluate(actions, grad=False)[0]

    def loss_and_grad(self, actions):
        return self.evaluate(actions, grad=True)


def _rows(scene, name: str, row: int) -> list[int]:
    """The rows of parameter ``name`` that one world's ``row`` stands for: itself, or in a batched
    scene (``n_worlds`` trials of one physical system) that row in every world."""
    W = getattr(scene, "n_worlds", 1)
    if W == 1:
        return [row]
    per = scene._param(name)[1].rows() // W
    return [w * per + row for w in range(W)]


def _parse(scene, key: str) -> tuple[str, int]:
    m = _NAME.match(key)
    if m is None or m["name"] not in scene.param_names:
        raise ValueError(f"unknown parameter {key!r}; identifiable: "
                         f"{[d['name'] for d in scene.describe_params() if d['differentiable']]} "
                         f"(a row other than 0 as 'name[row]')")
    name, row = m["name"], int(m["row"] or 0)
    info = next(d for d in scene.describe_params() if d["name"] == name)
    if not info["differentiable"]:
        raise ValueError(f"parameter {name!r} is not differentiable; it cannot be identified by gradients")
    rows = info["rows"] // getattr(scene, "n_worlds", 1)  # a batched scene: the rows of one world
    if not 0 <= row < rows:
        raise ValueError(f"{key!r}: {name} has {rows} rows" + (" per world" if rows != info["rows"] else ""))
    if name.startswith("mpm."):
        short = name[4:]
        mat = scene.materials[row]
        own = {f.name for f in fields(mat)} | ({"E"} if hasattr(mat, "bulk_modulus") else set())
        if short in DIFF_PARAMS and short not in own:
            raise ValueError(f"{type(mat).__name__} (material {row}) has no parameter {short!r}; "
                             f"it has {sorted(own & set(DIFF_PARAMS))}")
    return name, row


def identify(
    scene,
    actions,
    guess: Mapping[str, float],
    loss: Callable | None = None,
    *,
    observed=None,
    observed_v=None,
    v_weight: float = 1.0,
    observe: Sequence[str] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    iters: int = 40,
    lr: float = 0.1,
    lr_schedule: str = "cosine",
    backtrack: bool = True,
    progress: bool = True,
    callback=None,
) -> SysIdResult:
    """Identify parameters of a known rollout from observations.

    Each iteration sets the parameters, resets the scene, runs ``actions`` forward and
    backward once, and takes one step of :func:`physim.optim.adam` on ``log(value)`` (``lr``
    in log units: 0.1 is about a 10 % change; projected onto ``bounds``; ``backtrack`` returns
    to the best point with half the step when a step raises the loss). The scene is left with
    the identified values set and reset to its initial state.

    Args:
        scene: the built scene of the observed rollout (same bodies, same initial state). A
            batched scene (``n_worlds=W``) holds W trials of the same system (each world its
            own initial state and actions): the parameters are shared by the worlds (set in
            every world, their gradients summed), the loss reads the state of all of them.
        actions: (steps, scene.action_dim) actions of the rollout (a batched scene: also
            (steps, W, scene.world_action_dim)).
        guess: starting values by parameter name (``{"mpm.E": 4e3}``, ``{"springs.stiffness[2]": 50}``),
            positive, in user units.
        loss: ``loss(state) -> scalar tensor`` of the final state by name (torch float64), or
            with ``observe`` of the time series of those entries; default :func:`positions_loss`
            of ``observed`` (and ``observed_v``).
        observed, observed_v, v_weight: the classic loss: observed final MPM positions (n, dim)
            in m and optionally velocities in m/s.
        observe: state names whose time series ``loss`` reads (a loss at every step).
        bounds: (low, high) search interval per name (positive; defaults: per MPM parameter,
            else the parameter's declared bounds within [1e-12, 1e12]).
        iters: iterations (one forward + one reverse rollout each).
        lr, lr_schedule: Adam step size in log units and its schedule (see :func:`adam`).
        progress: show a progress bar. callback: as in :func:`adam` (``actions`` is the (1, P)
            array of log values).
    """
    scene._check_built()
    if not isinstance(guess, Mapping) or not guess:
        raise ValueError(f"guess must be a non-empty dict of parameter name -> starting value, got {guess!r}")
    iters = check_positive_int("iters", iters)
    lr = check_positive_float("lr", lr)
    v_weight = check_positive_float("v_weight", v_weight, allow_zero=True)
    if loss is None:
        if observed is None:
            raise ValueError("give a loss(state) or the observed final positions (observed=...)")
        shape = (scene.n_particles, scene.dim)
        if np.shape(observed) != shape or not np.isfinite(observed).all():
            raise ValueError(f"observed must be a finite {shape} array of final positions, got shape "
                             f"{np.shape(observed)}")
        if observed_v is not None and (np.shape(observed_v) != shape or not np.isfinite(observed_v).all()):
            raise ValueError(f"observed_v must be a finite {shape} array of final velocities, got shape "
                             f"{np.shape(observed_v)}")
        loss = positions_loss(observed, observed_v, v_weight)
    elif not callable(loss):
        raise TypeError(f"loss must be callable, got {type(loss).__name__}")
    keys, lo, hi, start = [], [], [], []
    for key, value in guess.items():
        name, row = _parse(scene, key)
        info = next(d for d in scene.describe_params() if d["name"] == name)
        default = _MPM_BOUNDS.get(name[4:]) if name.startswith("mpm.") else (
            max(info["lower"], 1e-12), min(info["upper"], 1e12))
        b = (bounds or {}).get(key, default)
        low, high = float(b[0]), float(b[1])
        if not (0 < low < high and math.isfinite(high)):
            raise ValueError(f"bounds of {key} must satisfy 0 < low < high < inf, got {b!r}")
        g0 = check_positive_float(f"initial guess of {key}", value)
        if not low <= g0 <= high:
            raise ValueError(f"initial guess {key}={value!r} is outside its search interval [{low:g}, {high:g}]")
        keys.append((name, row))
        lo.append(low)
        hi.append(high)
        start.append(g0)
    a = scene._check_actions(actions)
    prob = _ParamProblem(scene, a, loss, keys, np.array(lo), np.array(hi), None if observe is None else list(observe))
    u0 = np.log(np.array(start))
    prob.exact = {(i, float(u)): g for i, (u, g) in enumerate(zip(u0, start, strict=True))}
    t0 = time.perf_counter()
    r = adam(prob, iters=iters, lr=lr, init=u0[None, :], lr_schedule=lr_schedule, backtrack=backtrack,
             progress=progress, callback=callback)
    best = dict(zip(prob._labels, prob.values(r.actions[0]), strict=True))
    for (name, row), value in zip(keys, best.values(), strict=True):
        for world_row in _rows(scene, name, row):
            scene.set_param(name, value, row=world_row)
    scene.reset()
    return SysIdResult(
        params=best, loss=r.loss, losses=r.losses, history=prob.history[: len(r.losses)],
        initial_guess=dict(zip(prob._labels, start, strict=True)), sim_steps=prob.sim_steps,
        wall_seconds=time.perf_counter() - t0)

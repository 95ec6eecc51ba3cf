"""System identification: recover a material parameter from an observed final state."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import numpy as np
from tqdm.auto import tqdm

from ..materials import DIFF_PARAMS, Material
from .result import (
    check_callback,
    check_positive_float,
    check_positive_int,
    check_schedule,
    learning_rate,
)

__all__ = ["identify", "SysIdResult"]

#: default search interval of each parameter, in the units of Scene.set_material_param
_DEFAULT_BOUNDS = {
    "E": (1e-6, 1e12),  # Pa
    "nu": (1e-4, 0.499),
    "yield_stress": (1e-8, 1e12),  # Pa
    "viscosity": (1e-8, 1e12),  # Pa s
    "friction_angle": (0.1, 89.9),  # degrees
}


@dataclass
class SysIdResult:
    """What :func:`identify` returns.

    Attributes:
        value: the identified parameter (the evaluated value with the lowest loss), in the units of
            :meth:`Scene.set_material_param` (Pa for E and yield_stress, Pa s for viscosity,
            degrees for friction_angle).
        loss: its loss, the mean squared position error in m^2 (plus the weighted mean squared
            velocity error in (m/s)^2 when velocities were observed).
        losses: the loss of every iteration.
        values: the parameter value evaluated at every iteration (same units as ``value``).
        grads: d loss / d parameter at every iteration (loss units per parameter unit; per degree
            for friction_angle).
        initial_guess, material (index), param: what was asked.
        sim_steps: simulated steps (a forward + reverse evaluation counts its steps twice).
        wall_seconds: wall-clock time, in seconds.
    """

    value: float
    loss: float
    losses: list[float]
    values: list[float]
    grads: list[float]
    initial_guess: float
    material: int
    param: str
    sim_steps: int
    wall_seconds: float

    def relative_error(self, true_value: float) -> float:
        """|value - true_value| / |true_value| (dimensionless)."""
        return abs(self.value - true_value) / abs(true_value)


def _material_index(scene, material) -> int:
    if isinstance(material, Material):
        for i, m in enumerate(scene.materials):
            if m is material:
                return i
        raise ValueError(f"material {material!r} is not a material of this scene")
    if isinstance(material, bool) or not isinstance(material, (int, np.integer)) or not (
            0 <= material < len(scene.materials)):
        raise ValueError(f"material must be a material index in [0, {len(scene.materials)}) or a Material of the "
                         f"scene, got {material!r}")
    return int(material)


def identify(
    scene,
    actions,
    observed,
    material,
    param: str,
    initial_guess: float,
    iters: int = 40,
    lr: float = 0.1,
    observed_v=None,
    v_weight: float = 1.0,
    max_step: float = 0.5,
    bounds: tuple[float, float] | None = None,
    lr_schedule: str = "cosine",
    lr_min_frac: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.999),
    backtrack: bool = True,
    tol: float = 0.0,
    min_step: float = 1e-4,
    seed: int | None = None,
    progress: bool = True,
    callback=None,
) -> SysIdResult:
    """Recover one material parameter from the observed final state of a known rollout.

    Each iteration: ``scene.set_material_param(material, param, value)``, ``scene.reset()``,
    ``scene.forward(actions)``; loss = mean over particles and axes of (x - observed)^2 (m^2),
    plus ``v_weight`` times the same for velocities if ``observed_v`` is given; its gradient from
    ``scene.backward(grad_x=..., grad_v=...)`` -> ``Gradients.materials[material][param]``. Adam
    runs on ``log(value)`` (``lr`` and ``max_step`` are in log units: 0.1 is about a 10 % change),
    each step limited to ``max_step`` and the value kept inside ``bounds``; see ``backtrack``. The scene is left with
    the identified value set and reset to its initial state.

    Args:
        scene: the built scene that produced ``observed`` (same bodies, same initial state).
        actions: (steps, scene.action_dim) actions of the observed rollout.
        observed: (n_particles, dim) observed final positions, in m.
        material: material index or the :class:`~physim.Material` object of the scene.
        param: one of "E", "nu", "yield_stress", "viscosity", "friction_angle" that this material has.
        initial_guess: starting value (Pa, Pa s, or degrees for friction_angle), > 0.
        iters: iterations (one forward + one reverse rollout each).
        lr: Adam step size in log units. max_step: largest |change of log(value)| per iteration.
        observed_v: optional (n_particles, dim) observed final velocities in m/s; v_weight their weight.
        bounds: (low, high) search interval (default per parameter, e.g. nu in [1e-4, 0.499]).
        lr_schedule, lr_min_frac: learning-rate schedule as in :func:`physim.optim.adam`.
        betas: Adam moment decay rates.
        backtrack: when a step raises the loss, return to the best value so far and restart Adam
            there with half the step size (a robust 1-D line search; Adam's momentum alone
            overshoots and oscillates around the minimum).
        tol: stop once the loss is <= tol.
        min_step: stop once the step size (log units) falls below this.
        seed: accepted for a uniform signature; the method is deterministic.
        progress: show a tqdm progress bar.
        callback: ``callback(iteration, loss, value)``; returning True stops.
    """
    if param not in DIFF_PARAMS:
        raise ValueError(f"unknown material parameter param={param!r}; identifiable: {list(DIFF_PARAMS)}")
    scene._check_built()
    mi = _material_index(scene, material)
    mat = scene.materials[mi]
    own = {f.name for f in fields(mat)}
    if "bulk_modulus" in own:
        own.add("E")
    if param not in own:
        raise ValueError(f"{type(mat).__name__} (material {mi}) has no parameter param={param!r}; "
                         f"it has {sorted(own & set(DIFF_PARAMS))}")
    iters = check_positive_int("iters", iters)
    lr = check_positive_float("lr", lr)
    max_step = check_positive_float("max_step", max_step)
    v_weight = check_positive_float("v_weight", v_weight, allow_zero=True)
    tol = check_positive_float("tol", tol, allow_zero=True)
    min_step = check_positive_float("min_step", min_step, allow_zero=True)
    check_schedule(lr_schedule, lr_min_frac, None, 0.5)
    check_callback(callback)
    b1, b2 = (float(b) for b in betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    lo, hi = _DEFAULT_BOUNDS[param] if bounds is None else (float(bounds[0]), float(bounds[1]))
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds!r}")
    guess = check_positive_float("initial_guess", initial_guess)
    if not lo <= guess <= hi:
        raise ValueError(f"initial_guess={initial_guess!r} is outside the search interval [{lo:g}, {hi:g}] of {param}")
    shape = (scene.n_particles, scene.dim)
    obs_x = np.asarray(observed, dtype=np.float64)
    if obs_x.shape != shape or not np.isfinite(obs_x).all():
        raise ValueError(f"observed must be a finite {shape} array of final positions, got shape {obs_x.shape}")
    obs_v = None
    if observed_v is not None:
        obs_v = np.asarray(observed_v, dtype=np.float64)
        if obs_v.shape != shape or not np.isfinite(obs_v).all():
            raise ValueError(f"observed_v must be a finite {shape} array of final velocities, got shape {obs_v.shape}")
    a = scene._check_actions(actions)
    size = obs_x.size

    t0 = time.perf_counter()
    u, u_lo, u_hi = math.log(guess), math.log(lo), math.log(hi)
    m = v = 0.0
    losses: list[float] = []
    values: list[float] = []
    grads: list[float] = []
    best_loss, best_u, best_du, best_value = math.inf, u, 0.0, guess
    factor, count = 1.0, 0
    bar = tqdm(range(iters), desc=f"sysid {param}", disable=not progress, leave=False)
    try:
        for it in bar:
            value = guess if it == 0 else math.exp(u)  # exactly the guess first (exp(log(x)) != x)
            scene.set_material_param(mi, param, value)
            scene.reset()
            scene.forward(a, requires_grad=True)
            s = scene.get_state()
            dx = s["mpm.x"] - obs_x
            loss = float((dx**2).sum() / size)
            gx, gv = 2.0 * dx / size, None
            if obs_v is not None:
                dv = s["mpm.v"] - obs_v
                loss += v_weight * float((dv**2).sum() / size)
                gv = 2.0 * v_weight * dv / size
            g = scene.backward(grad_x=gx, grad_v=gv)
            dl_dvalue = float(g.params["mpm." + param][mi])  # per user unit (degrees for friction_angle)
            losses.append(loss)
            values.append(value)
            grads.append(dl_dvalue)
            du = dl_dvalue * value  # d loss / d log(value)
            if loss < best_loss:
                best_loss, best_u, best_du, best_value = loss, u, du, value
            elif backtrack:  # overshot: back to the best point, a fresh Adam with half the step
                factor *= 0.5
                m = v = 0.0
                count = 0
                u, du = best_u, best_du
            bar.set_postfix(loss=f"{loss:.3e}", value=f"{value:.5g}")
            if (callback is not None and callback(it, loss, value)) or loss <= tol:
                break
            rate = factor * learning_rate(lr, lr_schedule, it, iters, lr_min_frac, None, 0.5)
            if rate < min_step:
                break
            count += 1
            m = b1 * m + (1 - b1) * du
            v = b2 * v + (1 - b2) * du * du
            mhat, vhat = m / (1 - b1**count), v / (1 - b2**count)
            step = float(np.clip(rate * mhat / (math.sqrt(vhat) + 1e-300), -max_step, max_step))
            u = min(max(u - step, u_lo), u_hi)
    finally:
        bar.close()
    scene.set_material_param(mi, param, best_value)
    scene.reset()
    return SysIdResult(
        value=best_value,
        loss=best_loss,
        losses=losses,
        values=values,
        grads=grads,
        initial_guess=guess,
        material=mi,
        param=param,
        sim_steps=2 * len(a) * len(losses),
        wall_seconds=time.perf_counter() - t0,
    )

"""Real-to-sim calibration of a tactile gel: recover E, nu and the contact friction from readings.

A vision-based tactile sensor (:class:`physim.tactile.TactileSensor`) records, at every step of
a known motion, its marker pixels (T + 1, m, 2) and the net contact force in its own frame
(T + 1, 3): (shear x, shear y, normal) in N. :func:`calibrate` fits parameters of the simulated
scene (``"fem.E"``, ``"fem.nu"``, ``"tools.friction[1]"``, any differentiable parameter by name)
so that the simulated readings match the recorded ones at every step, by gradients through the
simulator and the sensor model (:func:`physim.optim.identify`: Adam on log(value), projected onto
the bounds, with backtracking). The recordings are plain arrays: from a real sensor, or from
:func:`sensor_readings` of a simulation (synthetic ground truth)::

    truth = sensor_readings(scene, sensor, actions)                  # or arrays of a real sensor
    r = calibrate(scene, sensor, actions, markers=truth["markers"], force=truth["force"],
                  params={"fem.E": 4e4, "tools.friction[1]": 0.3})
    r.params, r.losses

Loss (:func:`readings_loss`), dimensionless, each reading normalized by its own scale so markers
(pixels) and forces (N) weigh comparably whatever their units::

    L = w_m * mean_{t,k} |d_sim(t,k) - d_obs(t,k)|^2 / s_m^2  +  w_f * mean_t |F_sim(t) - F_obs(t)|^2 / s_f^2

``d``: marker displacements from the first frame (``relative_markers=True``, the default: a
camera offset or a different print of the marker grid in a real sensor cancels) or the absolute
pixels; ``s_m^2 = mean_{t,k} |d_obs|^2`` (the recorded motion's mean square, px^2) and
``s_f^2 = mean_t |F_obs|^2`` (N^2). A reading scaled by (1 + e) everywhere costs about e^2 in
its term.

What the motion must contain (see tests/test_calibration.py): normal loading (an indenter
pressed in: the normal force scales with E) and tangential loading
past the stick-slip transition (the indenter slides: the shear force saturates at about mu times
the normal force, so the friction coefficient is read from the ratio). Under a
displacement-controlled indenter the markers barely see E (a linear gel's quasi-static
displacements do not depend on it): E comes mostly from the force. nu is the least determined
(the layer's confinement, the markers' lateral spread): in the test's scene a 5 % change of nu
raises the loss a quarter as much as one of E; it is recovered from exact synthetic readings,
to a few % from noisy ones. Fix it when it is known.

Sub-stepping: the FEM part sub-cycles each substep by a count that depends on the parameters
(stiffer gel, shorter stable step). A change of that count inside the search interval changes
the time discretization, so the loss jumps there; :func:`calibrate` checks the stiffest corner
of the bounds up front and warns if its count differs from the guess's (lower dt or narrow the
bounds). The FEM parameters' default search interval is (guess / 10, guess * 10); nu's is
(0.01, 0.49).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np
import torch

from .sysid import SysIdResult, _parse, identify

__all__ = ["calibrate", "sensor_readings", "readings_loss", "READINGS_OBSERVE"]

#: state entries whose time series the readings are made of
READINGS_OBSERVE = ("fem.x", "fem.f_contact", "tools.pos", "tools.rot")
#: default search interval of the Poisson ratio (the part declares (-1, 0.5); 0.5 is incompressible)
_NU_BOUNDS = (0.01, 0.49)
#: default search interval of the other FEM parameters: (guess / _SPAN, guess * _SPAN)
_SPAN = 10.0


# ------------------------------------------------------------------------- mount and checks
def _body_of(scene, sensor) -> int:
    """Index of the FEM body the sensor reads (by its node offset and node count)."""
    offset = 0
    for i, b in enumerate(getattr(scene, "fem_bodies", [])):
        n = b.mesh.n_vertices
        if offset == sensor.node_offset and n == sensor.n_nodes:
            return i
        offset += n
    raise ValueError(f"the sensor reads nodes {sensor.node_offset}..{sensor.node_offset + sensor.n_nodes - 1}, "
                     f"which are not one FEM body of the scene (its bodies have "
                     f"{[b.mesh.n_vertices for b in getattr(scene, 'fem_bodies', [])]} nodes, in order)")


def _resolve_mount(scene, sensor, mount):
    """The tool index whose pose the readings take at every step, or None (the sensor's own,
    fixed construction pose). ``"auto"``: the mount of the body the sensor reads."""
    if isinstance(mount, str):
        if mount != "auto":
            raise ValueError(f"mount must be 'auto', a tool index or None, got {mount!r}")
        mount = scene.fem_bodies[_body_of(scene, sensor)].mount
    if mount is None:
        return None
    if not (isinstance(mount, (int, np.integer)) and 0 <= mount < len(scene.tools)):
        raise ValueError(f"mount must be a tool index in 0..{len(scene.tools) - 1} or None, got {mount!r}")
    mount = int(mount)
    init = scene.initial_state()
    pos, rot = init["tools.pos"][mount], init["tools.rot"][mount]
    p0, q0 = (sensor._t[k].detach().cpu().numpy() for k in ("p0", "q0"))
    q0n, rotn = q0 / np.linalg.norm(q0), rot / np.linalg.norm(rot)
    scale = max(1.0, float(np.abs(pos).max()))
    if np.abs(p0 - pos).max() > 1e-9 * scale or min(np.abs(q0n - rotn).max(), np.abs(q0n + rotn).max()) > 1e-9:
        raise ValueError(f"the sensor was built at mount pose (pos {p0.tolist()}, quat {q0.tolist()}) but its mount, "
                         f"tool {mount}, starts at (pos {pos.tolist()}, quat {rot.tolist()}): build it as "
                         f"TactileSensor(body, pose=(pos, quat)) with the tool's initial pose, or pass mount=None "
                         f"for a sensor that stays at its construction pose")
    return mount


def _series(name: str, value, shape: tuple) -> np.ndarray:
    """A recorded reading as a finite float64 array of exactly ``shape``."""
    a = np.asarray(value, dtype=np.float64)
    if a.shape != shape:
        what = {"markers": "(steps + 1, markers, 2) pixels", "force": "(steps + 1, 3) N: (shear x, shear y, normal)"}
        raise ValueError(f"{name} must have shape {shape} = {what[name]} for {shape[0] - 1} actions and this sensor, "
                         f"got {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} contains NaN or inf ({int(bad.sum())} entries; the first at index {idx}); "
                         f"drop or interpolate those frames before calibrating")
    return a


# ------------------------------------------------------------------------- readings
def _poses(series, mount):
    if mount is None:
        return None
    return [(series["tools.pos"][t, mount], series["tools.rot"][t, mount]) for t in range(series["fem.x"].shape[0])]


def simulated_readings(sensor, series: Mapping[str, torch.Tensor], mount=None) -> dict[str, torch.Tensor]:
    """The sensor's readings at every step of observed time series (torch, differentiable):
    ``markers`` (T + 1, m, 2) px and ``force`` (T + 1, 3) N, from ``series["fem.x"]``,
    ``series["fem.f_contact"]`` ((T + 1, N, 3)) and, with a ``mount`` tool index, that tool's
    pose series ``series["tools.pos"]`` / ``series["tools.rot"]``."""
    x, fc = series["fem.x"], series["fem.f_contact"]
    poses = _poses(series, mount)
    uv, f = [], []
    for t in range(x.shape[0]):
        pose = None if poses is None else poses[t]
        uv.append(sensor.markers(x[t], pose))
        f.append(sensor.total_force(fc[t], pose))
    return {"markers": torch.stack(uv), "force": torch.stack(f)}


def _observe(mount) -> list[str]:
    return list(READINGS_OBSERVE) if mount is not None else ["fem.x", "fem.f_contact"]


def sensor_readings(scene, sensor, actions, mount="auto") -> dict[str, np.ndarray]:
    """Record what ``sensor`` reads over a rollout: from the scene's initial state (it is reset
    first, and reset again afterwards), run ``actions`` ((T, scene.action_dim), T <= max_steps)
    and read every step, the start included.

    Args:
        mount: tool index whose pose the sensor follows; ``"auto"``: the mount of the body the
            sensor reads (None for a pinned body: the sensor stays at its construction pose).

    Returns:
        ``markers``: (T + 1, m, 2) marker pixels; ``force``: (T + 1, 3) net contact force in N in
        the sensor frame (shear x, shear y, normal); ``time``: (T + 1,) s. The arrays
        :func:`calibrate` takes, to compare with (or stand in for) a real recording.
    """
    scene._check_built()
    mount = _resolve_mount(scene, sensor, mount)
    a = scene._check_actions(actions)
    scene.reset()
    try:
        obs = scene.forward(a, requires_grad=False, observe=_observe(mount))
    finally:
        scene.reset()
    with torch.no_grad():
        r = simulated_readings(sensor, {k: torch.as_tensor(np.asarray(v, np.float64)) for k, v in obs.items()}, mount)
    step = float(scene.dt) * scene.substeps_per_step
    return {"markers": r["markers"].numpy(), "force": r["force"].numpy(), "time": np.arange(len(a) + 1) * step}


def readings_loss(sensor, markers=None, force=None, weights: Mapping[str, float] | None = None, mount=None,
                  relative_markers: bool = True) -> Callable:
    """The calibration loss (module docstring) as ``loss(series) -> scalar tensor`` of the time
    series of :data:`READINGS_OBSERVE` (the ``loss`` of :func:`identify` / :func:`rollout_loss`
    with ``observe``). ``markers`` (T + 1, m, 2) px and ``force`` (T + 1, 3) N are the recorded
    readings (one of them may be None: that term is left out); ``weights``: ``{"markers": w_m,
    "force": w_f}`` (default 1 each); ``mount``: the tool index whose pose the sensor follows
    (None: its construction pose)."""
    if markers is None and force is None:
        raise ValueError("give the recorded markers (T + 1, m, 2) and/or force (T + 1, 3)")
    w = {"markers": 1.0, "force": 1.0}
    for k, v in (weights or {}).items():
        if k not in w:
            raise ValueError(f"weights has unknown key {k!r}; use 'markers' and 'force'")
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"weights[{k!r}] must be a finite number >= 0, got {v!r}")
        w[k] = float(v)
    if (markers is None or w["markers"] == 0) and (force is None or w["force"] == 0):
        raise ValueError("every term of the loss has weight 0 or no recording")
    frames = (markers if markers is not None else force)
    T1 = np.shape(frames)[0] if np.ndim(frames) else 0
    terms = []
    if markers is not None and w["markers"] > 0:
        m_obs = _series("markers", markers, (T1, sensor.n_markers, 2))
        d_obs = m_obs - m_obs[0] if relative_markers else m_obs - sensor.rest_markers
        s2 = float((d_obs ** 2).sum(-1).mean())
        if not s2 > 0:
            raise ValueError("the recorded markers do not move: their term has no scale (and nothing to fit)")
        ref = torch.as_tensor(m_obs if not relative_markers else d_obs)
        terms.append(("markers", w["markers"] / s2, ref))
    if force is not None and w["force"] > 0:
        f_obs = _series("force", force, (T1, 3))
        s2 = float((f_obs ** 2).sum(-1).mean())
        if not s2 > 0:
            raise ValueError("the recorded force is zero at every step: its term has no scale (and nothing to fit)")
        terms.append(("force", w["force"] / s2, torch.as_tensor(f_obs)))

    def loss(series):
        n = series["fem.x"].shape[0]
        if n != T1:
            raise ValueError(f"the recordings have {T1} frames but the rollout {n} (steps + 1)")
        r = simulated_readings(sensor, series, mount)
        out = 0.0
        for name, k, ref in terms:
            sim = r[name]
            if name == "markers" and relative_markers:
                sim = sim - sim[0]
            out = out + k * ((sim - ref.to(sim.dtype)) ** 2).sum(-1).mean()
        return out

    loss.terms = [name for name, _, _ in terms]
    return loss


# ------------------------------------------------------------------------- sub-cycling check
#: the direction of each FEM parameter that shortens the stable step
_STIFF = {"fem.E": 1, "fem.nu": 1, "fem.contact_stiffness": 1, "fem.contact_damping": 1, "fem.beta": 1,
          "fem.density": 0}


def _check_subcycles(scene, keys, lo, hi, guess) -> None:
    fem = getattr(getattr(scene, "partset", None), "fem", None)
    todo = [(k, i) for i, k in enumerate(keys) if k[0] in _STIFF]
    if fem is None or not todo:
        return
    dt = float(fem.dt[None])
    saved = {k: scene.get_param(*k) for k, _ in todo}
    try:
        for k, i in todo:
            scene.set_param(k[0], guess[i], row=k[1])
        n_guess = fem.subcycles_for(dt)
        for k, i in todo:
            scene.set_param(k[0], hi[i] if _STIFF[k[0]] else lo[i], row=k[1])
        try:
            n_stiff = fem.subcycles_for(dt)
        except ValueError as e:
            n_stiff = f"more than the scene was built for ({e})"
    finally:
        for k, v in saved.items():
            scene.set_param(k[0], v, row=k[1])
    if n_stiff != n_guess:
        corner = {k[0] if k[1] == 0 else f"{k[0]}[{k[1]}]": hi[i] if _STIFF[k[0]] else lo[i] for k, i in todo}
        warnings.warn(f"calibrate: the FEM part takes {n_guess} sub-step(s) per substep at the guess but {n_stiff} at "
                      f"the stiffest corner of the bounds {corner}: the loss jumps where that count changes, and a "
                      f"count past the built one stops the fit (lower dt so that it is the same, or narrow the "
                      f"bounds)", stacklevel=3)


# ------------------------------------------------------------------------- calibration
def calibrate(
    scene,
    sensor,
    actions,
    markers=None,
    force=None,
    params: Mapping[str, float] | None = None,
    *,
    weights: Mapping[str, float] | None = None,
    mount="auto",
    relative_markers: bool = True,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    iters: int = 30,
    lr: float = 0.1,
    lr_schedule: str = "cosine",
    backtrack: bool = True,
    progress: bool = False,
    callback=None,
) -> SysIdResult:
    """Fit gel and contact parameters so the simulated tactile readings match recorded ones.

    Each iteration sets the parameters, resets the scene, runs ``actions`` forward and backward
    once and takes a step of :func:`identify` (Adam on log(value): positive parameters only,
    projected onto ``bounds``; ``lr`` in log units, 0.1 is about a 10 % change; ``backtrack``
    returns to the best point with half the step when a step raises the loss). The loss is
    :func:`readings_loss` of the simulated readings at every step against the recorded ones.

    Args:
        scene: the built scene of the recorded motion (gel, sensor mount, indenter), in its
            initial state; ``scene.reset()`` starts every evaluation.
        sensor: the :class:`physim.tactile.TactileSensor` on the gel (for a mounted gel, built at
            its mount tool's initial pose).
        actions: (T, scene.action_dim) actions of the recorded motion, T <= scene.max_steps.
        markers: recorded marker pixels (T + 1, sensor.n_markers, 2), frame 0 before the motion;
            or None.
        force: recorded net contact force (T + 1, 3) in N, sensor frame (shear x, shear y,
            normal: pressing in is positive); or None. At least one of the two.
        params: starting values (positive, user units) by parameter name, e.g. ``{"fem.E": 4.2e4,
            "tools.friction[1]": 0.3}`` (a row other than 0 as ``"name[row]"``; ``fem.nu`` too,
            searched in (0.01, 0.49) unless ``bounds`` says otherwise).
        weights: ``{"markers": w_m, "force": w_f}`` (default 1 each; the terms are normalized).
        mount: tool index whose pose the sensor follows; ``"auto"``: the gel's mount (None for a
            pinned gel).
        relative_markers: compare marker displacements from frame 0 (True) or absolute pixels.
        bounds: (low, high) search interval per name (default: :func:`identify`'s).
        iters, lr, lr_schedule, backtrack, progress, callback: as in :func:`identify`.

    Returns:
        :func:`identify`'s :class:`SysIdResult`: ``params`` (the best values), ``loss``,
        ``losses`` (every iteration), ``history``, ``sim_steps``, ``wall_seconds``. The scene is
        left with the identified values set and reset.
    """
    scene._check_built()
    if not isinstance(params, Mapping) or not params:
        raise ValueError(f"params must be a non-empty dict of parameter name -> starting value, got {params!r}")
    a = scene._check_actions(actions)
    mount = _resolve_mount(scene, sensor, mount)
    T1 = len(a) + 1
    if markers is not None:
        _series("markers", markers, (T1, sensor.n_markers, 2))
    if force is not None:
        _series("force", force, (T1, 3))
    loss = readings_loss(sensor, markers, force, weights, mount, relative_markers)
    b = dict(bounds or {})
    keys, lo, hi, start = [], [], [], []
    for key, value in params.items():
        name, row = _parse(scene, key)
        if name == "fem.nu":
            b.setdefault(key, _NU_BOUNDS)
        elif name in _STIFF and value > 0:
            b.setdefault(key, (value / _SPAN, value * _SPAN))
        info = next(d for d in scene.describe_params() if d["name"] == name)
        low, high = b.get(key, (max(info["lower"], 1e-12), min(info["upper"], 1e12)))
        keys.append((name, row))
        lo.append(float(low))
        hi.append(float(high))
        start.append(float(value))
    _check_subcycles(scene, keys, lo, hi, start)
    return identify(scene, a, dict(params), loss, observe=_observe(mount), bounds=b or None, iters=iters, lr=lr,
                    lr_schedule=lr_schedule, backtrack=backtrack, progress=progress, callback=callback)

"""Particle emitters: MPM material that enters a rollout through a nozzle (a tool).

An :class:`Emitter` is a particle source: a nozzle -- one of the scene's tools, so it moves
with that tool's actions -- that releases particles of one material at a steady ``rate``
(particles/s) from ``start`` to ``stop`` (s), at ``speed`` (m/s) along the nozzle's axis plus
the tool's own velocity there. :meth:`physim.Scene.add_emitter` adds one.

**Pre-allocated rows.** The particles exist from build time: the scene appends each
emitter's ``capacity`` rows after the bodies' particles, in the order they will be emitted
(all emitters together, by emission time). The MPM kernels step only rows
``0 .. mpm.n_particles - 1``; this part sets that count at every substep, so a particle
not emitted yet contributes nothing to P2G, is not moved and not checked. Its
state (``mpm.x`` ... ``mpm.Jp``) is carried from slot to slot unchanged (parked at the
nozzle's exit at build), and :meth:`physim.Scene.particle_active` reports it inactive.

**Schedule.** Particle ``k`` of an emitter is emitted at ``t_k = start + k / rate`` for
``t_k < stop``, in the substep ``s_k = floor(t_k / dt)`` that contains it, cycling over
the nozzle's cross-section (a row of points ``particle_spacing`` apart across the nozzle's
diameter in 2D, the square lattice of that spacing inside its disk in 3D); so the count
emitted by time ``t`` is ``N(t) = ceil((t - start) rate)`` (``rate (t - start) <= N(t) <
rate (t - start) + 1``: the injected mass is rate x particle mass x time to within one
particle). The schedule is a table fixed at build (it depends on ``dt`` only), and the
part's state ``emitter.clock`` (substeps since :meth:`physim.Scene.reset`) says which rows
are active, so checkpoints, a replayed chunk and :meth:`physim.Scene.set_state` emit exactly
what the forward pass emitted.

**Emission.** A particle emitted in substep ``l`` (slot ``l`` -> ``l + 1``, after the tools
advanced) starts at slot ``l + 1`` with

    r = R (exit + lateral_k),   v = speed * R axis + v_tool(r),   x = c + r + lag_k v,

``c``, ``R`` the tool's pose at slot ``l + 1``, ``v_tool(r)`` its velocity (action row ``t``)
at arm ``r``, ``lag_k = (s_k + 1) dt - t_k`` the time it has flown by the end of the substep
(so a jet is evenly spaced whatever dt), and ``C = 0``, ``F = I``, ``Jp = 1``. The launch is
recorded with Taichi's adjoint: d loss / d ``emitter.speed`` (a parameter, per emitter), and
the gradients of the tool's pose (slot state) and velocity (actions) of every emitted
particle flow back through the tools part to the actions and the initial pose.

Errors: a bad argument names the value (:class:`Emitter`, :meth:`physim.Scene.add_emitter`);
a nozzle whose exit starts outside the domain raises at :meth:`physim.Scene.add_emitter` /
build; a rollout in which an emitter needs more particles than its ``capacity``, or emits
outside the domain, raises :class:`physim.SimulationError` saying when and how many.

The coupler (mass-spring / FEM contact) and the smoke field's drag loop to ``mpm.n_particles``,
which this part sets before they run, so waiting particles take no part in them
(tests/test_emitters.py). Limits: a nozzle tool with ``softness > 0`` acts on grid nodes outside
it too, so it slows its own jet.
"""


import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import taichi as ti

from .. import backend
from ..materials import Material
from ..solvers._linalg import rotation_matrix
from .base import Part

__all__ = ["Emitter", "EmitterLayout", "EmitterPart", "get_emitter_part", "schedule"]


def _number(name: str, value, lower: float, lower_open: bool, allow_inf: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    ok = (math.isfinite(v) or (allow_inf and v == math.inf)) and (v > lower if lower_open else v >= lower)
    if not ok:
        bound = f"> {lower:g}" if lower_open else f">= {lower:g}"
        raise ValueError(f"{name} must be {'' if allow_inf else 'finite and '}{bound}, got {value!r}")
    return v


class Emitter:
    """A particle source at a nozzle tool (see the module docstring).

    Args:
        material: the emitted material (any physim material but :class:`physim.Rigid`); one
            object given to several emitters or bodies is one material row.
        nozzle: the tool the particles leave from: the :class:`physim.Tool` object added with
            ``add_tool`` or its index. The jet moves and turns with it.
        speed: jet speed along the nozzle axis (m/s, >= 0), relative to the tool; a
            differentiable parameter (``emitter.speed``, one row per emitter).
        rate: particles per second (> 0). ``None``: the rate that fills the jet at the
            material's rest density, ``n_cross * speed / particle_spacing`` (``n_cross``:
            the particles across the nozzle), fixed at build.
        radius: nozzle radius (m, > 0); ``None``: two grid cells.
        direction: jet axis in the tool's frame (``dim`` values; default ``-y``: a nozzle
            pointing down, along the capsule / cylinder axis).
        offset: the nozzle's exit in the tool's frame (m); ``None``: where the axis leaves
            the tool's shape, plus 1.5 grid cells and half a particle spacing (beyond the
            reach of a particle's grid stencil, so the nozzle's own contact leaves its jet alone).
        capacity: particles reserved (a positive integer); ``None``: as many as the schedule
            needs within the longest rollout the scene is built for (``max_steps``). A rollout
            that needs more raises :class:`physim.SimulationError`.
        start, stop: emission window (s from :meth:`physim.Scene.reset`; ``stop`` may be ``inf``).
    """

    def __init__(self, material: Material, nozzle, *, speed: float = 1.0, rate: float | None = None,
                 radius: float | None = None, direction: Sequence[float] | None = None,
                 offset: Sequence[float] | None = None, capacity: int | None = None, start: float = 0.0,
                 stop: float = math.inf):
        if not isinstance(material, Material):
            raise TypeError(f"Emitter material must be a physim material, got {type(material).__name__}")
        if material.model == "rigid":
            raise ValueError(f"Emitter material {material!r} is a rigid body (one body per material row): an "
                             f"emitter releases deformable material (Fluid, Elastic, Plasticine, Sand, ...)")
        from ..tools import Tool

        if not (isinstance(nozzle, Tool) or (isinstance(nozzle, (int, np.integer)) and not isinstance(nozzle, bool))):
            raise TypeError(f"Emitter nozzle must be a physim tool or a tool index, got {type(nozzle).__name__}")
        if isinstance(nozzle, (int, np.integer)) and nozzle < 0:
            raise ValueError(f"Emitter nozzle index must be >= 0, got {nozzle!r}")
        self.material = material
        self.nozzle = nozzle
        self.speed = _number("Emitter.speed (m/s)", speed, 0.0, False)
        self.rate = None if rate is None else _number("Emitter.rate (particles/s)", rate, 0.0, True)
        self.radius = None if radius is None else _number("Emitter.radius (m)", radius, 0.0, True)
        self.start = _number("Emitter.start (s)", start, 0.0, False)
        self.stop = _number("Emitter.stop (s)", stop, self.start, True, allow_inf=True)
        if capacity is not None and not (isinstance(capacity, (int, np.integer)) and not isinstance(capacity, bool)
                                         and capacity >= 1):
            raise ValueError(f"Emitter.capacity must be a positive integer (particles) or None, got {capacity!r}")
        self.capacity = None if capacity is None else int(capacity)
        self.direction = None if direction is None else np.asarray(direction, np.float64).reshape(-1)
        if self.direction is not None and not (np.isfinite(self.direction).all()
                                               and np.linalg.norm(self.direction) > 0):
            raise ValueError(f"Emitter.direction must be a finite nonzero vector, got {direction!r}")
        self.offset = None if offset is None else np.asarray(offset, np.float64).reshape(-1)
        if self.offset is not None and not np.isfinite(self.offset).all():
            raise ValueError(f"Emitter.offset must be finite, got {offset!r}")
        # resolved by Scene.add_emitter
        self.tool_index: int | None = None
        self.axis: np.ndarray | None = None
        self.exit: np.ndarray | None = None
        self.lateral: np.ndarray | None = None

    def __repr__(self) -> str:
        nozzle = self.nozzle if self.tool_index is None else self.tool_index
        return (f"Emitter({type(self.material).__name__}, nozzle={nozzle}, speed={self.speed:g}, "
                f"rate={self.rate}, radius={self.radius}, start={self.start:g}, stop={self.stop:g}, "
                f"capacity={self.capacity})")

    # --------------------------------------------------------- scene-side resolution
    def resolve(self, tools: list, dim: int, spacing: float, dx: float, lo: float, hi: float, index: int) -> None:
        """Bind to the scene: the nozzle's tool index, the jet axis, exit and cross-section (tool
        frame), the rate; refuse a nozzle whose exit starts outside ``[lo, hi]^dim``."""
        from ..tools import Tool

        who = f"emitter {index}"
        if isinstance(self.nozzle, Tool):
            found = [i for i, t in enumerate(tools) if t is self.nozzle]
            if not found:
                raise ValueError(f"{who}: its nozzle {type(self.nozzle).__name__} at {self.nozzle.position.tolist()} "
                                 f"is not a tool of this scene; add it with scene.add_tool() first")
            self.tool_index = found[0]
        else:
            if not int(self.nozzle) < len(tools):
                raise ValueError(f"{who}: nozzle index {self.nozzle} but the scene has {len(tools)} tool(s); add the "
                                 f"nozzle with scene.add_tool() first")
            self.tool_index = int(self.nozzle)
        tool = tools[self.tool_index]
        if tool.dim != dim:
            raise ValueError(f"{who}: its nozzle is {tool.dim}D but the scene is {dim}D")
        axis = np.zeros(dim)
        axis[1] = -1.0
        if self.direction is not None:
            if self.direction.shape != (dim,):
                raise ValueError(f"{who}: direction must have {dim} values, got {self.direction.tolist()}")
            axis = self.direction / np.linalg.norm(self.direction)
        self.axis = axis
        if self.offset is not None:
            if self.offset.shape != (dim,):
                raise ValueError(f"{who}: offset must have {dim} values, got {self.offset.tolist()}")
            self.exit = self.offset.copy()
        else:
            # 1.5 cells (a particle's stencil) + half a spacing out: the tool's contact, which acts on
            # the grid nodes inside it, does not reach a particle as it leaves
            self.exit = (_exit_distance(tool, axis) + 1.5 * dx + 0.5 * spacing) * axis
        radius = self.radius if self.radius is not None else 2.0 * dx
        self.lateral = _cross_section(axis, radius, spacing)
        self.n_cross = len(self.lateral)
        self.particle_rate = self.rate if self.rate is not None else self.n_cross * self.speed / spacing
        if not self.particle_rate > 0:
            raise ValueError(f"{who}: rate=None matches the rate to the jet speed, which is {self.speed:g} m/s: give a "
                             f"positive speed or an explicit rate")
        x0 = self.exit_points(tool.position, tool.initial_rotation())
        out = np.any((x0 < lo) | (x0 > hi), axis=1)
        if out.any():
            i = int(np.argmax(out))
            raise ValueError(f"{who}: its nozzle exit at {x0[i].round(4).tolist()} (tool {self.tool_index} at "
                             f"{tool.position.tolist()}) is outside the simulation domain [{lo:.4f}, {hi:.4f}]^{dim}; "
                             f"move the nozzle inside")

    def exit_points(self, position, rotation) -> np.ndarray:
        """World positions of the nozzle's cross-section points at a tool pose (n_cross, dim)."""
        R = _rotation(np.asarray(rotation, np.float64), len(position))
        return np.asarray(position, np.float64) + (self.exit + self.lateral) @ R.T

    def times(self, until: float) -> np.ndarray:
        """Emission times ``start + k / rate`` before ``stop``: the first ``capacity`` of them, or
        (``capacity=None``) those before ``until`` too."""
        if self.capacity is not None:
            n, end = self.capacity, self.stop
        else:
            end = min(self.stop, until)
            n = max(0, math.ceil((end - self.start) * self.particle_rate) + 1) if end > self.start else 0
        t = self.start + np.arange(n) / self.particle_rate
        return t[t < end]

    def overflow_time(self, reserved: int) -> float:
        """When the schedule wants particle ``reserved`` (one past the reserve); ``inf``: never."""
        t = self.start + reserved / self.particle_rate
        return t if t < self.stop else math.inf


def _rotation(rot: np.ndarray, dim: int) -> np.ndarray:
    if dim == 2:
        c, s = math.cos(rot[0]), math.sin(rot[0])
        return np.array([[c, -s], [s, c]])
    w, x, y, z = rot / np.linalg.norm(rot)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def _exit_distance(tool, d: np.ndarray) -> float:
    """Distance from the tool's centre along unit ``d`` (tool frame) to its shape's boundary (a cup:
    its outer cylinder)."""
    a = tool.size_params()
    dy = abs(d[1])
    radial = math.sqrt(max(1.0 - dy * dy, 0.0))
    if tool.shape == "sphere":
        return float(a[0])
    if tool.shape == "box":
        h = np.asarray(tool.half_extents, np.float64)
        return float(min(h[i] / abs(d[i]) for i in range(len(d)) if abs(d[i]) > 1e-12))
    if tool.shape == "capsule":
        r, half = float(a[0]), float(a[1])
        # the ray s d leaves the segment's radius-r tube: s radial = r, or the end cap
        s_side = r / radial if radial > 1e-12 else math.inf
        if dy * s_side <= half:
            return s_side
        # |s d - half e_y| = r  ->  s^2 - 2 s half dy + half^2 - r^2 = 0 (larger root)
        return half * dy + math.sqrt(max(half * half * dy * dy - half * half + r * r, 0.0))
    r, half = float(a[0]), float(a[1])
    if tool.shape == "cup":
        r = r + float(a[2])
    s_side = r / radial if radial > 1e-12 else math.inf
    s_cap = half / dy if dy > 1e-12 else math.inf
    return min(s_side, s_cap)


def _cross_section(axis: np.ndarray, radius: float, spacing: float) -> np.ndarray:
    """Points of the nozzle's cross-section (tool frame, relative to the exit): ``spacing`` apart,
    centred, within ``radius`` of the axis, in the plane normal to it; at least the centre."""
    dim = len(axis)
    n = max(1, int(math.floor(2.0 * radius / spacing + 1e-9)))
    offs = (np.arange(n) - 0.5 * (n - 1)) * spacing
    if dim == 2:
        side = np.array([-axis[1], axis[0]])
        return offs[:, None] * side[None, :]
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
    e1 = np.cross(axis, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    a, b = np.meshgrid(offs, offs, indexing="ij")
    keep = a**2 + b**2 <= radius**2 + 1e-12
    pts = a[keep][:, None] * e1 + b[keep][:, None] * e2
    return pts if len(pts) else np.zeros((1, 3))


def schedule(emitters: list[Emitter], until: float) -> dict[str, np.ndarray]:
    """Every emitter's reserved particles, in emission order: ``time`` (s), ``owner`` (emitter
    index), ``index`` (k within its emitter), ``lateral`` (its cross-section point, tool frame)."""
    parts = []
    for e, em in enumerate(emitters):
        t = em.times(until)
        k = np.arange(len(t))
        parts.append((t, np.full(len(t), e), k))
    t = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0)
    owner = np.concatenate([p[1] for p in parts]).astype(np.int32) if parts else np.zeros(0, np.int32)
    k = np.concatenate([p[2] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
    order = np.lexsort((k, owner, t))  # by time, then emitter, then k: deterministic
    t, owner, k = t[order], owner[order], k[order]
    dim = len(emitters[0].axis) if emitters else 2
    lateral = np.zeros((len(t), dim))
    for e, em in enumerate(emitters):
        sel = owner == e
        lateral[sel] = em.lateral[k[sel] % em.n_cross]
    return dict(time=t, owner=owner, index=k, lateral=lateral)


@dataclass(frozen=True)
class EmitterLayout:
    """What an :class:`EmitterPart` is compiled for: ``dim``, emitter rows, reserve rows."""

    dim: int
    emitters: int
    reserve: int


@dataclass
class EmitterSpec:
    """What :meth:`EmitterPart.load` writes."""

    emitters: list
    first: int  # MPM row of the first reserved particle
    table: dict  # schedule(): time, owner, index, lateral


@ti.data_oriented
class EmitterPart(Part):
    """The scene's emitters (see the module docstring). Stepped right after the tools (it reads
    their slot ``l + 1`` pose), before the parts that read MPM particles (it sets
    ``mpm.n_particles``, the rows the coupler and the smoke drag read)."""

    name = "emitter"

    def __init__(self, layout: EmitterLayout, K: int, real, tools, mpm):
        super().__init__(K, real)
        self.layout = layout
        self.dim = dim = layout.dim
        self.tools, self.mpm = tools, mpm
        E, P = max(layout.emitters, 1), max(layout.reserve, 1)
        # substeps since reset (an integer-valued real: exact in f32 below 2^24)
        self.clock = self.slot_field("clock", (), 1)
        self.speed = ti.field(real, shape=E, needs_grad=True)
        self.tool = ti.field(ti.i32, shape=E)
        self.axis = ti.Vector.field(dim, real, shape=E)
        self.exit = ti.Vector.field(dim, real, shape=E)
        self.param("speed", "m/s", self.speed, lower=0.0, doc="jet speed along the nozzle axis (m/s)")
        # the reserve, in emission order: emission substep (integer-valued real), lag (s), owner,
        # cross-section point (tool frame)
        self.step = ti.field(real, shape=P)
        self.lag = ti.field(real, shape=P)
        self.owner = ti.field(ti.i32, shape=P)
        self.lateral = ti.Vector.field(dim, real, shape=P)
        self.first = ti.field(ti.i32, shape=())
        self.n_reserve = ti.field(ti.i32, shape=())
        self.bad = ti.field(ti.i32, shape=self.S)  # 1 + the emitter that emitted outside the domain
        self.lo = ti.field(real, shape=())
        self.hi = ti.field(real, shape=())
        self.n_emitters = 0
        self.emitters: list[Emitter] = []
        # on the CPU the rows' loop runs on one thread: its work (a copy per waiting row) is far less
        # than the thread pool's dispatch (PHYSIM_SERIAL_SCATTER=0 turns it off, as for MPM)
        self.serial = mpm.serial
        self._times = np.zeros(0)
        self._overflow: list[float] = []

    def param_rows(self, name: str) -> int:
        return self.n_emitters

    # ------------------------------------------------------------------ protocol
    def load(self, spec: EmitterSpec) -> None:
        """Write the emitters and their reserve (the schedule's times; :meth:`set_dt` turns them
        into substeps once the scene's dt is known)."""
        ems, table = spec.emitters, spec.table
        n = len(table["time"])
        if len(ems) > max(self.layout.emitters, 1) or n > max(self.layout.reserve, 1):
            raise ValueError(f"{len(ems)} emitters / {n} reserved particles exceed this layout's "
                             f"{self.layout.emitters} / {self.layout.reserve}")
        self.rows[None] = 1
        self.n_emitters = len(ems)
        self.emitters = list(ems)
        E, P, dim = self.speed.shape[0], self.step.shape[0], self.dim
        speed, tool, axis, exit_ = np.zeros(E), np.zeros(E, np.int32), np.zeros((E, dim)), np.zeros((E, dim))
        for i, em in enumerate(ems):
            speed[i], tool[i], axis[i], exit_[i] = em.speed, em.tool_index, em.axis, em.exit
        self.speed.from_numpy(speed.astype(self.np_real))
        self.tool.from_numpy(tool)
        self.axis.from_numpy(axis.astype(self.np_real))
        self.exit.from_numpy(exit_.astype(self.np_real))
        owner, lateral = np.zeros(P, np.int32), np.zeros((P, dim))
        owner[:n], lateral[:n] = table["owner"], table["lateral"]
        self.owner.from_numpy(owner)
        self.lateral.from_numpy(lateral.astype(self.np_real))
        self.first[None] = spec.first
        self.n_reserve[None] = n
        self._times = np.asarray(table["time"], np.float64)
        counts = np.bincount(table["owner"], minlength=len(ems)) if n else np.zeros(len(ems), int)
        self._reserved = [int(c) for c in counts]
        self._overflow = [em.overflow_time(int(c)) for em, c in zip(ems, counts, strict=True)]

    def set_dt(self, dt: float, lo: float, hi: float) -> None:
        """The schedule in substeps of ``dt``: particle k enters in substep floor(t_k / dt), having
        flown lag_k = (s_k + 1) dt - t_k by its end. ``lo``, ``hi``: the domain emitted particles
        must be in."""
        self._dt = dt
        P = self.step.shape[0]
        n = len(self._times)
        s = np.floor(self._times / dt)
        step, lag = np.full(P, np.inf), np.zeros(P)
        step[:n], lag[:n] = s, (s + 1) * dt - self._times
        self._steps = s
        self.step.from_numpy(np.where(np.isfinite(step), step, 0.0).astype(self.np_real))
        self.lag.from_numpy(lag.astype(self.np_real))
        self.lo[None], self.hi[None] = lo, hi

    def initial_state(self) -> dict[str, np.ndarray]:
        return {"clock": np.zeros(1)}

    def import_(self, slot: int, state: dict, grad: bool = False) -> None:
        """As :meth:`Part.import_`; the clock must count whole substeps (which rows are active)."""
        if not grad and "clock" in state:
            c = np.asarray(state["clock"], np.float64).reshape(-1)
            if len(c) == 1 and not (0 <= c[0] < 2**24 and c[0] == math.floor(c[0])):
                raise ValueError(f"state['emitter.clock'] counts the substeps since reset (which reserved particles "
                                 f"are emitted): a whole number in [0, 2^24), got {c[0]!r}")
        super().import_(slot, state, grad)

    def stable_dt(self) -> float:
        """The jet must not move a particle more than one grid cell per substep: dx / max speed."""
        v = self.speed.to_numpy()[: self.n_emitters].astype(np.float64)
        vmax = float(v.max(initial=0.0))
        return self.mpm.dx / vmax if vmax > 0 else math.inf

    def dt_reason(self) -> str:
        v = self.speed.to_numpy()[: self.n_emitters].astype(np.float64)
        e = int(np.argmax(v)) if len(v) else 0
        return (f"emitter {e}'s jet speed {v[e] if len(v) else 0:.4g} m/s would move its particles more than one grid "
                f"cell (dx = {self.mpm.dx:.4g} m) per substep; lower dt or the speed")

    def active(self, slot: int) -> np.ndarray:
        """Which reserved particles are emitted at slot ``slot`` (bool, in reserve order)."""
        clock = float(self.clock.to_numpy()[slot, 0])
        return self._steps < clock

    def health(self, first: int, last: int):
        from ..rollout import SimulationError

        clock = self.clock.to_numpy()[:, 0].astype(np.float64)
        done = int(round(clock[last]))  # substeps run by the end of this chunk
        for e, t_over in enumerate(self._overflow):
            if t_over < math.inf and math.floor(t_over / self._dt) < done:
                em = self.emitters[e]
                s = int(math.floor(t_over / self._dt))
                needed = math.ceil((min(done * self._dt, em.stop) - em.start) * em.particle_rate)
                raise SimulationError(
                    f"emitter {e} ran out of capacity at t={t_over:.6g} s (substep {s}): all {self._reserved[e]} of "
                    f"its reserved particles are emitted and its schedule ({em.particle_rate:g} particles/s from "
                    f"t={em.start:g} s to {em.stop:g} s) needs {needed} by t={done * self._dt:.6g} s; give it a "
                    f"larger capacity (Emitter(capacity=...)), a lower rate or an earlier stop")
        if self.n_reserve[None] == 0:
            return None
        self._check_emitted(first, last)
        bad = self.bad.to_numpy()
        hits = np.nonzero(bad[first: last + 1])[0]
        if len(hits):
            s = first + int(hits[0])
            e = int(bad[s]) - 1
            sub = int(round(clock[s])) - 1
            raise SimulationError(
                f"emitter {e} emitted particles outside the simulation domain [{float(self.lo[None]):.4g}, "
                f"{float(self.hi[None]):.4g}]^{self.dim} in substep {sub} (t={sub * self._dt:.4g} s): its nozzle "
                f"(tool {self.emitters[e].tool_index}) had left the domain; keep the nozzle inside")
        return None

    @ti.kernel
    def _check_emitted(self, first: ti.i32, last: ti.i32):
        for s in range(first, last + 1):
            self.bad[s] = 0
        for s, k in ti.ndrange((first, last + 1), self.n_reserve[None]):
            if self.step[k] == self.clock[s, 0] - 1.0:
                x = self.mpm.x[s, self.first[None] + k]
                if x.min() < self.lo[None] or x.max() > self.hi[None]:
                    ti.atomic_max(self.bad[s], self.owner[k] + 1)

    # ------------------------------------------------------------------ substep
    @ti.func
    def _set_live(self, l):
        """``mpm.n_particles`` for substep ``l``: the bodies' rows and the reserve emitted before it
        (one thread: a binary search of the sorted schedule)."""
        clock = self.clock[l, 0]
        lo, hi = 0, self.n_reserve[None]
        while lo < hi:  # the count of reserved rows with step < clock
            mid = (lo + hi) // 2
            if self.step[mid] < clock:
                lo = mid + 1
            else:
                hi = mid
        self.mpm.n_particles[None] = self.first[None] + lo

    @ti.func
    def _emit_row(self, l, t, k):
        """Reserved row ``k`` at slot ``l + 1``: it leaves the nozzle if this substep is its turn,
        keeps its state if it is still waiting (rows emitted earlier are the MPM part's)."""
        dim = ti.static(self.dim)
        mpm, tools = self.mpm, self.tools
        p = self.first[None] + k
        s = self.step[k]
        now = self.clock[l, 0]
        if s == now:
            e = self.owner[k]
            i = self.tool[e]
            R = rotation_matrix(tools.rot[l + 1, i], dim)
            r = R @ (self.exit[e] + self.lateral[k])
            v = self.speed[e] * (R @ self.axis[e]) + tools.velocity(i, t, r)
            mpm.x[l + 1, p] = tools.pos[l + 1, i] + r + self.lag[k] * v
            mpm.v[l + 1, p] = v
            mpm.C[l + 1, p] = ti.Matrix.zero(self.real, dim, dim)
            mpm.F[l + 1, p] = ti.Matrix.identity(self.real, dim)
            mpm.Jp[l + 1, p] = 1.0
        elif s > now:
            mpm.x[l + 1, p] = mpm.x[l, p]
            mpm.v[l + 1, p] = mpm.v[l, p]
            mpm.C[l + 1, p] = mpm.C[l, p]
            mpm.F[l + 1, p] = mpm.F[l, p]
            mpm.Jp[l + 1, p] = mpm.Jp[l, p]

    @ti.kernel
    def emit(self, l: ti.i32, t: ti.i32):
        """Substep ``l`` of the emitters in one launch: set ``mpm.n_particles``, write slot ``l + 1``
        of the reserve from the first row left out (:meth:`_emit_row`), tick the clock. Replayed
        before the substep's adjoints (it restores ``mpm.n_particles``; it rewrites slot ``l + 1``
        with the values it wrote); differentiated by :meth:`emit_rows`' Taichi adjoint."""
        for _ in range(1):
            self._set_live(l)
        if ti.static(self.serial):
            ti.loop_config(serialize=True)
        for k in range(self.mpm.n_particles[None] - self.first[None], self.n_reserve[None]):
            self._emit_row(l, t, k)
        for _ in range(1):
            self.clock[l + 1, 0] = self.clock[l, 0] + 1.0

    @ti.kernel
    def emit_rows(self, l: ti.i32, t: ti.i32):
        """The differentiable part of :meth:`emit` (its rows and clock), whose adjoint reverse mode
        runs; ``mpm.n_particles`` is the replayed one."""
        if ti.static(self.serial):
            ti.loop_config(serialize=True)
        for k in range(self.mpm.n_particles[None] - self.first[None], self.n_reserve[None]):
            self._emit_row(l, t, k)
        for _ in range(1):
            self.clock[l + 1, 0] = self.clock[l, 0] + 1.0

    def _emit_grad(self, l: int, t: int) -> None:
        backend.grad(self.emit_rows, l, t)

    def substep(self, tape, l: int, t: int) -> None:
        # one launch forward (Taichi launches cost ~40 us each on the CPU: as much as a small MPM substep)
        tape.launch(self.emit, l, t, grad=self._emit_grad, replay=True)


def get_emitter_part(partset, layout: EmitterLayout, real) -> EmitterPart:
    """The emitter part of ``layout`` bound to ``partset``'s tools and MPM part (compiled once per
    part set and layout, kept with the part set)."""
    cache = getattr(partset, "_emitter_parts", None)
    if cache is None:
        cache = partset._emitter_parts = {}
    part = cache.get(layout)
    if part is None:
        part = cache[layout] = EmitterPart(layout, partset.layout.K, real, partset.tools, partset.mpm)
    return part

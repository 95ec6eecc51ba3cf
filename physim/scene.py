"""Scene: the builder and public API of a simulation of several parts.

Ten lines::

    import physim as ps
    ps.init(arch="cpu")
    scene = ps.Scene(dim=2, grid_res=64)
    scene.add_body(ps.Box(center=(0.5, 0.2), size=(0.2, 0.2)), ps.Plasticine())
    scene.add_tool(ps.SphereTool(position=(0.3, 0.2), radius=0.05))
    scene.build(max_steps=20)
    scene.forward(np.tile([1.0, 0.0, 0.0], (20, 1)))
    print(scene.get_state()["mpm.x"].mean(axis=0))

What a scene holds is decided by what is added: particle bodies (:meth:`add_body`) make an
MPM part, tools (:meth:`add_tool`) the tools part, mass-spring bodies
(:meth:`add_mass_spring`) the mass-spring part, tetrahedral FEM bodies (:meth:`add_fem`) the
FEM part, and MPM + mass-spring together a coupler.
State is a mapping of namespaced arrays (``"mpm.x"``, ``"tools.pos"``, ``"springs.x"``);
parameters are named the same way (``"mpm.E"``, ``"tools.friction"``,
``"springs.stiffness"``). Stepping and reverse mode are in :mod:`physim.rollout`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from dataclasses import dataclass

import numpy as np

from . import backend
from .checkpoints import DEFAULT_RAM_MB
from .geometry import Shape
from .materials import Material
from .parts import SceneLayout, get_partset
from .parts.base import Part
from .rollout import GradientError, Gradients, Rollout, SimulationError
from .solvers.mpm import BOUND, BOUNDARY_IDS, WAVE_CFL_LIMIT, MPMLayout, MPMSpec
from .tape import Tape
from .tools import Tool

__all__ = ["Scene", "Gradients", "SimulationError", "GradientError", "UnbatchableScene", "batched_worlds"]

#: default dt uses this fraction of the MPM wave-speed limit (0.4 dx / c)
WAVE_CFL_DEFAULT = 0.4
#: the default dt never exceeds this (s)
MAX_DEFAULT_DT = 1e-3


#: n_worlds of a Scene constructed without one (see :func:`batched_worlds`)
_DEFAULT_WORLDS: contextvars.ContextVar[int] = contextvars.ContextVar("physim_n_worlds", default=1)


class UnbatchableScene(ValueError):
    """A scene with ``n_worlds > 1`` holds a part that batched worlds do not support yet (thin
    shells, emitters, the smoke field)."""


@contextlib.contextmanager
def batched_worlds(n_worlds: int):
    """Scenes constructed inside ``with batched_worlds(W):`` without an explicit ``n_worlds``
    get ``n_worlds=W`` (how a task's own scene builder is reused for a batched vector env)."""
    token = _DEFAULT_WORLDS.set(n_worlds)
    try:
        yield
    finally:
        _DEFAULT_WORLDS.reset(token)


def floor_height(grid_res: int) -> float:
    """Height of the floor of a ``grid_res`` grid: the top of MPM's bottom wall, ``BOUND`` cells.

    :attr:`Scene.floor` is this value; call it directly only where a height is needed before a
    scene exists (a module-level constant of a demo). Written as ``BOUND * (1 / grid_res)`` so
    it equals ``BOUND * scene.dx`` bit for bit."""
    return BOUND * (1.0 / grid_res)


@dataclass
class _Body:
    shape: Shape
    material_index: int
    actuator: int | None
    start: int
    count: int


def _weak_call(method):
    ref = weakref.WeakMethod(method)
    return lambda: ref()()


def _inside_tets(mesh, points: np.ndarray) -> np.ndarray:
    """Which ``points`` (p, 3) lie inside (or on) a tet of ``mesh`` (barycentric test against the
    8 tets with the nearest centroids, among points inside the mesh's bounding box)."""
    from scipy.spatial import cKDTree

    v, t = mesh.vertices, mesh.tets
    out = np.zeros(len(points), bool)
    lo, hi = v.min(axis=0), v.max(axis=0)
    cand = np.flatnonzero(((points >= lo) & (points <= hi)).all(axis=1))
    if len(cand) == 0:
        return out
    x0 = v[t[:, 0]]
    T = np.stack([v[t[:, 1]] - x0, v[t[:, 2]] - x0, v[t[:, 3]] - x0], axis=-1)
    Tinv = np.linalg.inv(T)
    _, near = cKDTree(v[t].mean(axis=1)).query(points[cand], k=min(8, len(t)))
    near = near.reshape(len(cand), -1)
    for k in range(near.shape[1]):
        e = near[:, k]
        b = np.einsum("pij,pj->pi", Tinv[e], points[cand] - x0[e])
        out[cand] |= (b > -1e-12).all(axis=1) & (b.sum(axis=1) < 1 + 1e-12)  # a shared face: both tets
    return out


def _next_pow2(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


class Scene(Rollout):
    """A differentiable scene in the unit square/cube.

    Args:
        dim: 2 or 3.
        grid_res: MPM grid cells per axis (dx = 1 / grid_res).
        dt: substep length in seconds; ``None`` picks 0.4 of the MPM elastic-wave limit
            dx / c (c the fastest P-wave speed of the scene's materials), at most 1e-3, and
            within every other part's stable limit. A ``dt`` above a part's limit (MPM:
            0.9 dx / c) raises ``ValueError``.
        substeps_per_step: substeps per action step (actions are held constant over them).
        gravity: gravity vector (default (0, -9.8[, 0])).
        boundary: MPM grid walls, ``"sticky"``, ``"slip"``, ``"friction"`` (frictional slip) or
            ``"rough"`` (friction walls whose surface row of grid nodes also holds material: for
            granular heaps and collapses, which slide out on plain ``"friction"`` walls).
        wall_friction: Coulomb coefficient of ``"friction"`` and ``"rough"`` walls.
        checkpoint_every: K, substeps per checkpoint chunk. Reverse mode stores K + 1
            states on the device plus one host checkpoint per chunk, and recomputes
            each chunk once in backward. ``None``: 50.
        checkpoint_ram_mb: host RAM for those per-chunk checkpoints; beyond it they are
            written to a temporary directory, so RAM does not grow with the horizon
            (``None``: keep all in RAM). Default 64.
        specialize: compile MPM kernels for only the constitutive models this scene uses, and
            without tool contact if it has no tools (faster); ``False`` uses generic kernels
            shared with scenes of other materials (fewer compilations when a script builds
            many small scenes of different materials).
        particle_spacing: lattice spacing of sampled particles (default dx / 2).
        floor: height of the floor (the lowest y any body may reach): MPM's bottom wall is
            ``BOUND`` cells up, the mass-spring part collides with the same height. ``None``:
            ``BOUND * dx``.
        n_worlds: W copies of the scene ("worlds") simulated by the same kernel launches, each
            with its own state, actions, material parameters and tool friction, and its own
            gradients (see "Batched worlds" below). MPM, mass-spring and FEM bodies, their
            coupling and tools (thin shells, emitters and smoke raise
            :class:`UnbatchableScene`). ``None``: 1, or the ``W`` of an enclosing
            ``with physim.scene.batched_worlds(W):``.

    Batched worlds (``n_worlds=W > 1``): describe one world (``add_body``, ``add_tool``); the
    build makes W copies. Every state array is world-major: ``"mpm.x"`` has ``W * n`` rows,
    world ``w``'s are rows ``w * n ... (w + 1) * n - 1`` (``scene.per_world(state)`` reshapes
    a state to ``(W, n, ...)``; ``set_initial_state`` and ``reset`` take either shape), tools
    likewise. :meth:`forward` takes actions of shape ``(steps, W, world_action_dim)`` (a row per
    world, as a one-world scene's), and :meth:`backward` returns the action gradient in that
    shape; a loss summed over the worlds gives each world its own gradients. Material and tool
    rows are world-major too (``world * n_materials_per_world + m``): ``set_material_param(m,
    name, value, world=w)`` sets one world's, ``world=None`` every world's. So are mass-spring
    springs and FEM bodies (``set_param("fem.E", value, row=w * bodies_per_world + b)``); the
    coupling law (``coupler.*``) is one row shared by the worlds, and the FEM part sub-cycles
    every world as often as its stiffest world needs (a world then matches a one-world scene
    that sub-cycles as often).
    """

    def __init__(
        self,
        dim: int = 3,
        grid_res: int = 64,
        dt: float | None = None,
        substeps_per_step: int = 10,
        gravity=None,
        boundary: str = "slip",
        wall_friction: float = 0.3,
        checkpoint_every: int | None = None,
        particle_spacing: float | None = None,
        checkpoint_ram_mb: float | None = DEFAULT_RAM_MB,
        specialize: bool = True,
        n_worlds: int | None = None,
    ):
        if n_worlds is None:
            n_worlds = _DEFAULT_WORLDS.get()
        if not (isinstance(n_worlds, (int, np.integer)) and not isinstance(n_worlds, bool) and n_worlds >= 1):
            raise ValueError(f"n_worlds must be a positive integer, got {n_worlds!r}")
        if dim not in (2, 3):
            raise ValueError(f"dim must be 2 or 3, got {dim!r}")
        if not (isinstance(grid_res, int) and grid_res >= 8):
            raise ValueError(f"grid_res must be an integer >= 8, got {grid_res!r}")
        if boundary not in BOUNDARY_IDS:
            raise ValueError(f"boundary must be one of {sorted(BOUNDARY_IDS)}, got {boundary!r}")
        if dt is not None and not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be positive and finite, got {dt!r}")
        if not (isinstance(substeps_per_step, int) and substeps_per_step >= 1):
            raise ValueError(f"substeps_per_step must be a positive integer, got {substeps_per_step!r}")
        if checkpoint_every is not None and not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        if checkpoint_ram_mb is not None and not (math.isfinite(checkpoint_ram_mb) and checkpoint_ram_mb >= 0):
            raise ValueError(f"checkpoint_ram_mb must be >= 0 or None, got {checkpoint_ram_mb!r}")
        if not (math.isfinite(wall_friction) and wall_friction >= 0):
            raise ValueError(f"wall_friction must be >= 0, got {wall_friction!r}")
        self.dim = dim
        self.grid_res = grid_res
        self.dx = 1.0 / grid_res
        self.requested_dt = dt
        self.dt: float | None = None
        self.substeps_per_step = substeps_per_step
        g = np.zeros(dim)
        g[1] = -9.8
        self.gravity = g if gravity is None else np.asarray(gravity, dtype=np.float64).reshape(-1)
        if self.gravity.shape != (dim,) or not np.isfinite(self.gravity).all():
            raise ValueError(f"gravity must be {dim} finite values, got {gravity!r}")
        self.boundary = boundary
        self.wall_friction = float(wall_friction)
        self.checkpoint_every = checkpoint_every or 50
        self.checkpoint_ram_mb = checkpoint_ram_mb
        self.specialize = bool(specialize)
        self.spacing = particle_spacing or self.dx / 2
        self.materials: list[Material] = []
        self.bodies: list[_Body] = []
        self.tools: list[Tool] = []
        self.spring_bodies: list = []
        self.fem_bodies: list = []
        self.shell_bodies: list = []
        self._fem_subcycle = True
        self._x: list[np.ndarray] = []
        self._v: list[np.ndarray] = []
        self._mat: list[np.ndarray] = []
        self._act: list[np.ndarray] = []
        self._fiber: list[np.ndarray] = []
        self.n_actuators = 0
        self.coupling = None
        self.smoke = None  # a physim.SmokeField (add_smoke)
        self.emitters: list = []  # physim.Emitter (add_emitter)
        self._reserve_added = False
        self.partset = None
        self.parts: list[Part] = []
        self.tape = Tape()
        self._rollout = None
        self.n_worlds = int(n_worlds)
        self._one_world = None  # a batched scene's one-world description (see _expand_worlds)

    @property
    def floor(self) -> float:
        """Height of the floor: MPM's bottom wall (``BOUND`` grid cells, :func:`floor_height`)."""
        return floor_height(self.grid_res)

    # ------------------------------------------------------------------ building
    def add_body(
        self,
        shape: Shape,
        material: Material,
        velocity=None,
        actuator: int | None = None,
        fiber=None,
        jitter: float = 0.0,
        seed: int = 0,
    ) -> int:
        """Sample MPM particles inside ``shape`` with ``material``; returns the body index.

        Args:
            velocity: initial velocity of every particle.
            actuator: actuation group (0, 1, ...) for a :class:`physim.Muscle` body: its
                signal is action column ``scene.actuation_slice.start + actuator``.
            fiber: fiber direction of the active stress (default: the y axis).
            jitter: random offset of the lattice points, as a fraction of the spacing.
        """
        self._check_not_built()
        if not isinstance(material, Material):
            raise TypeError(f"material must be a physim material, got {type(material).__name__}")
        if shape.dim != self.dim:
            raise ValueError(f"shape {shape!r} is {shape.dim}D but the scene is {self.dim}D")
        pts = shape.sample(self.spacing, jitter=jitter, rng=np.random.default_rng(seed))
        lo, hi = BOUND * self.dx, 1.0 - BOUND * self.dx
        outside = np.any((pts < lo) | (pts > hi), axis=1)
        if outside.any():
            bad = pts[outside][0]
            raise ValueError(
                f"body {len(self.bodies)} ({shape!r}) has {int(outside.sum())} particles outside the "
                f"simulation domain [{lo:.4f}, {hi:.4f}]^{self.dim} (e.g. at {np.round(bad, 4).tolist()})"
            )
        # one row per material object (identity, not equality): two equal-valued materials are two
        # rows, so set_material_param / identification of either one changes only its bodies
        m = next((i for i, known in enumerate(self.materials) if known is material), len(self.materials))
        vel = np.zeros(self.dim) if velocity is None else np.asarray(velocity, dtype=np.float64).reshape(-1)
        if vel.shape != (self.dim,) or not np.isfinite(vel).all():
            raise ValueError(f"velocity must be {self.dim} finite values, got {velocity!r}")
        if actuator is not None:
            if not (isinstance(actuator, int) and actuator >= 0):
                raise ValueError(f"actuator must be a non-negative integer, got {actuator!r}")
            self.n_actuators = max(self.n_actuators, actuator + 1)
        d = np.zeros(self.dim)
        d[1] = 1.0
        if fiber is not None:
            d = np.asarray(fiber, dtype=np.float64).reshape(-1)
            if d.shape != (self.dim,) or not np.linalg.norm(d) > 0:
                raise ValueError(f"fiber must be a nonzero {self.dim}-vector, got {fiber!r}")
            d = d / np.linalg.norm(d)
        if self._x:
            # a body sampled into another doubles the density where they overlap: almost always a
            # mistake in the scene description, so refuse it (touching bodies are fine)
            from scipy.spatial import cKDTree

            dist, idx = cKDTree(np.concatenate(self._x)).query(pts)
            close = dist < 0.5 * self.spacing
            if close.any():
                other = next(i for i, b in enumerate(self.bodies) if b.start <= idx[close][0] < b.start + b.count)
                raise ValueError(
                    f"body {len(self.bodies)} ({shape!r}) overlaps body {other}: {int(close.sum())} of its particles "
                    f"lie within half a particle spacing of body {other}'s (e.g. at "
                    f"{np.round(pts[close][0], 4).tolist()}); move or shrink one of them")
            # each shape samples its own lattice (from its lower corner), so the particles of two
            # overlapping bodies need not be close (lattices offset by half a spacing are 0.71
            # spacing apart, and the density is still doubled): test each body's particles against
            # the other's shape too. A touching body's particles lie at least half a spacing (less
            # the jitter) outside the other's shape, so any particle inside is an overlap.
            self._check_shape_overlap(shape, pts)
        if m == len(self.materials):
            self.materials.append(material)
        n = len(pts)
        self.bodies.append(_Body(shape, m, actuator, sum(len(x) for x in self._x), n))
        self._x.append(pts)
        self._v.append(np.tile(vel, (n, 1)))
        self._mat.append(np.full(n, m, dtype=np.int32))
        self._act.append(np.full(n, -1 if actuator is None else actuator, dtype=np.int32))
        self._fiber.append(np.tile(d, (n, 1)))
        return len(self.bodies) - 1

    def _check_shape_overlap(self, shape: Shape, pts: np.ndarray) -> None:
        """Refuse a new body (``shape``, particles ``pts``) whose particles lie inside an earlier
        body's shape, or an earlier body's particles inside ``shape``."""
        def inside(s: Shape, x: np.ndarray) -> np.ndarray:
            lo, hi = s.bounds()
            out = np.zeros(len(x), bool)
            near = np.flatnonzero(((x >= lo) & (x <= hi)).all(axis=1))  # contains() only where it can be true
            if len(near):
                out[near] = s.contains(x[near])
            return out

        new = len(self.bodies)
        for i, body in enumerate(self.bodies):
            mine = inside(body.shape, pts)
            theirs = inside(shape, self._x[i])
            if mine.any() or theirs.any():
                what = (f"{int(mine.sum())} of its particles lie inside body {i}'s shape (e.g. at "
                        f"{np.round(pts[mine][0], 4).tolist()})" if mine.any() else
                        f"{int(theirs.sum())} of body {i}'s particles lie inside its shape (e.g. at "
                        f"{np.round(self._x[i][theirs][0], 4).tolist()})")
                raise ValueError(f"body {new} ({shape!r}) overlaps body {i}: {what}, where the two would double the "
                                 f"density; move or shrink one of them (touching is fine)")

    def add_tool(self, tool: Tool) -> int:
        """Add a kinematic rigid tool; returns its index (its action columns are
        ``scene.tool_slice(index)``)."""
        self._check_not_built()
        if not isinstance(tool, Tool):
            raise TypeError(f"expected a physim tool (SphereTool, BoxTool, ...), got {type(tool).__name__}")
        if tool.dim != self.dim:
            raise ValueError(f"tool at {tool.position.tolist()} is {tool.dim}D but the scene is {self.dim}D")
        if np.any((tool.position < 0.0) | (tool.position > 1.0)):
            # the tools act on the grid, which covers the unit square/cube: a tool centred outside it
            # is a wrong position (a parked tool belongs inside, away from the material)
            raise ValueError(f"tool {len(self.tools)} at {tool.position.tolist()} is outside the simulation domain "
                             f"[0, 1]^{self.dim} (its position is its centre)")
        self.tools.append(tool)
        return len(self.tools) - 1

    def _check_in_domain(self, x: np.ndarray, owner: str, point: str) -> None:
        """Refuse a body whose first point outside [floor, 1 - BOUND dx]^dim is named in the error."""
        lo, hi = self.floor, 1.0 - BOUND * self.dx
        out = np.any((x < lo) | (x > hi), axis=1)
        if out.any():
            i = int(np.argmax(out))
            raise ValueError(f"{owner}: {point} {i} at {x[i].round(4).tolist()} is outside the domain "
                             f"[{lo:.4f}, {hi:.4f}]^{self.dim}")

    def add_mass_spring(self, body) -> int:
        """Add a :class:`physim.MassSpring` body (point masses and springs); returns its index.
        Its actuated springs read action columns ``scene.spring_actuation_slice``."""
        from .parts.springs import MassSpring

        self._check_not_built()
        if not isinstance(body, MassSpring):
            raise TypeError(f"expected a physim.MassSpring, got {type(body).__name__}")
        if body.dim != self.dim:
            raise ValueError(f"mass-spring body {len(self.spring_bodies)} is {body.dim}D but the scene is "
                             f"{self.dim}D")
        self._check_in_domain(body.vertices, f"mass-spring body {len(self.spring_bodies)}", "vertex")
        self.spring_bodies.append(body)
        return len(self.spring_bodies) - 1

    def add_fem(self, body, subcycle: bool = True) -> int:
        """Add a :class:`physim.FEMBody` (a tetrahedral gel); returns its index.

        Args:
            subcycle: when the scene's dt exceeds the gels' explicit stability limit, take as
                many equal sub-steps per substep as it needs (announced by a
                :class:`physim.parts.fem.Subcycling` warning; ``scene.partset.fem.subcycles``
                reads the count). ``False`` (for any body) makes such a dt a ValueError.
        """
        from .parts.fem import FEMBody

        self._check_not_built()
        if not isinstance(body, FEMBody):
            raise TypeError(f"expected a physim.FEMBody, got {type(body).__name__}")
        if self.dim != 3:
            raise ValueError(f"FEM bodies are 3D but the scene is {self.dim}D")
        self._check_in_domain(body.mesh.vertices, f"FEM body {len(self.fem_bodies)}", "node")
        self.fem_bodies.append(body)
        self._fem_subcycle = self._fem_subcycle and bool(subcycle)
        return len(self.fem_bodies) - 1

    def add_shell(self, body) -> int:
        """Add a :class:`physim.ShellBody` (a thin sheet: cloth, paper, card); returns its index.
        Shells are stepped implicitly (:mod:`physim.parts.shell`): pass ``dt`` to the scene
        (2e-3 to 5e-3 s is typical)."""
        from .shells import ShellBody

        self._check_not_built()
        if not isinstance(body, ShellBody):
            raise TypeError(f"expected a physim.ShellBody, got {type(body).__name__}")
        if self.dim != 3:
            raise ValueError(f"shell bodies are 3D but the scene is {self.dim}D")
        self._check_in_domain(body.mesh.vertices, f"shell body {len(self.shell_bodies)}", "vertex")
        self.shell_bodies.append(body)
        return len(self.shell_bodies) - 1

    def add_smoke(self, field) -> None:
        """Add the scene's air: a :class:`physim.SmokeField` (an Eulerian grid of velocity, smoke
        density and temperature over the unit domain; :mod:`physim.parts.smoke`). Its vents take
        the last action columns (:attr:`smoke_slice`); with MPM bodies the air and the material
        exchange drag (``smoke.drag``). State: ``smoke.v``, ``smoke.density``,
        ``smoke.temperature``."""
        from .parts.smoke import SmokeField

        self._check_not_built()
        if not isinstance(field, SmokeField):
            raise TypeError(f"expected a physim.SmokeField, got {type(field).__name__}")
        if self.smoke is not None:
            raise ValueError("the scene already has a smoke field")
        field.check(self.dim)
        field.initial_state(self.dim)  # checks the initial fields now, not at build
        self.smoke = field

    def add_emitter(self, emitter) -> int:
        """Add a :class:`physim.Emitter`: a particle source at one of the scene's tools (add the
        tool first); returns its index. Its particles are MPM rows reserved after the bodies',
        inactive until emitted (:meth:`particle_active`; :mod:`physim.parts.emitter`). Its jet speed
        is the parameter ``emitter.speed`` (row = this index)."""
        from .parts.emitter import Emitter

        self._check_not_built()
        if not isinstance(emitter, Emitter):
            raise TypeError(f"expected a physim.Emitter, got {type(emitter).__name__}")
        if any(e is emitter for e in self.emitters):
            raise ValueError(f"{emitter!r} is already in the scene")
        emitter.resolve(self.tools, self.dim, self.spacing, self.dx, BOUND * self.dx, 1.0 - BOUND * self.dx,
                        len(self.emitters))
        if not any(m is emitter.material for m in self.materials):
            self.materials.append(emitter.material)
        self.emitters.append(emitter)
        return len(self.emitters) - 1

    @property
    def _has_mpm(self) -> bool:
        """Whether the scene has MPM particles (bodies or emitters)."""
        return bool(self.bodies) or bool(self.emitters)

    def _parts_by_name(self) -> dict[str, Part]:
        """The scene's parts by name (the part set's and the scene's own: the emitters')."""
        return {p.name: p for p in self.parts}

    def _reserve_emitted(self, max_steps: int) -> None:
        """Append the emitters' reserved particles (emission order) after the bodies' particles,
        parked at their nozzle's exit; ``capacity=None`` reserves the schedule of the longest
        rollout (``max_steps`` steps at the largest dt the scene may choose)."""
        from .parts.emitter import schedule

        if self._reserve_added:  # a build that failed after adding them
            for rows in (self._x, self._v, self._mat, self._act, self._fiber):
                rows.pop()
            self._reserve_added = False
        c = self.max_wave_speed()
        dt_max = self.requested_dt or min(WAVE_CFL_DEFAULT * self.dx / c if c > 0 else MAX_DEFAULT_DT,
                                          MAX_DEFAULT_DT)
        self._emit_table = table = schedule(self.emitters, max_steps * self.substeps_per_step * dt_max)
        n, d = len(table["time"]), self.dim
        x = np.zeros((n, d))
        mat = np.zeros(n, np.int32)
        for e, em in enumerate(self.emitters):
            sel = table["owner"] == e
            tool = self.tools[em.tool_index]
            x[sel] = em.exit_points(tool.position, tool.initial_rotation())[table["index"][sel] % em.n_cross]
            mat[sel] = next(i for i, m in enumerate(self.materials) if m is em.material)
        fiber = np.zeros((n, d))
        fiber[:, 1] = 1.0
        self._emit_first = self.n_particles
        self._x.append(x)
        self._v.append(np.zeros((n, d)))
        self._mat.append(mat)
        self._act.append(np.full(n, -1, np.int32))
        self._fiber.append(fiber)
        self._reserve_added = True

    @property
    def smoke_slice(self) -> slice:
        """Action columns of the smoke field's vents (each: ``dim`` velocity components, then a
        temperature above ambient); the last columns."""
        n = 0 if self.smoke is None else len(self.smoke.vents) * (self.dim + 1)
        return slice(self.action_dim - n, self.action_dim)

    def couple(self, stiffness: float = 2e3, damping: float = 2.0, friction: float = 0.3,
               radius: float | None = None, *, fem_friction: float | None = None,
               fem_radius: float | None = None) -> None:
        """Set the contact of MPM material with mass-spring nodes and FEM surfaces (used when the
        scene has MPM bodies and either).

        Mass-spring nodes: a penalty force ``stiffness * (radius - d)`` (N per m of overlap, per
        particle-node pair closer than ``radius``, default one grid cell), normal damping
        (N s/m) and regularized Coulomb friction ``friction``. FEM gels: the gel's own
        ``contact_stiffness`` / ``contact_damping`` (pressure laws, as against the tools) within
        ``fem_radius`` of its surface (default half the particle spacing), friction
        ``fem_friction`` (default ``friction``). See :mod:`physim.parts.coupler`; every
        coefficient is a differentiable parameter (``coupler.stiffness``,
        ``coupler.fem_friction``, ``fem.contact_stiffness``, ...)."""
        from .parts.coupler import CouplingSpec

        self._check_not_built()
        self.coupling = CouplingSpec(stiffness, damping, friction, self.dx if radius is None else radius,
                                     fem_friction, fem_radius)

    def _check_not_built(self):
        if self.partset is not None:
            raise RuntimeError("the scene is already built; create a new Scene to change its contents")

    def _check_built(self):
        if self.partset is None:
            raise RuntimeError("call scene.build() first")

    # ------------------------------------------------------------- action layout
    @property
    def tool_action_dim(self) -> int:
        """Action columns per tool: linear velocity (dim) + angular velocity (1 or 3)."""
        return self.dim + (1 if self.dim == 2 else 3)

    @property
    def n_spring_actuators(self) -> int:
        return sum(b.n_actuators for b in self.spring_bodies)

    @property
    def action_dim(self) -> int:
        """Values per action row: each tool's (linear, angular) velocity, then MPM actuation
        signals, then mass-spring actuation signals, then the smoke field's vents."""
        smoke = 0 if self.smoke is None else len(self.smoke.vents) * (self.dim + 1)
        return len(self.tools) * self.tool_action_dim + self.n_actuators + self.n_spring_actuators + smoke

    def tool_slice(self, index: int) -> slice:
        k = self.tool_action_dim
        return slice(index * k, (index + 1) * k)

    @property
    def actuation_slice(self) -> slice:
        """Columns of the MPM muscle actuators."""
        start = len(self.tools) * self.tool_action_dim
        return slice(start, start + self.n_actuators)

    @property
    def spring_actuation_slice(self) -> slice:
        """Columns of the mass-spring actuators (body by body)."""
        start = self.actuation_slice.stop
        return slice(start, start + self.n_spring_actuators)

    @property
    def n_particles(self) -> int:
        return int(sum(len(x) for x in self._x))

    def max_wave_speed(self) -> float:
        return max((m.wave_speed() for m in self.materials), default=0.0)

    # ------------------------------------------------------------------ build
    def _layout(self, max_steps: int) -> SceneLayout:
        has_tools = bool(self.tools)
        coupled = self._has_mpm and (bool(self.spring_bodies) or bool(self.fem_bodies))
        mpm = None
        if self._has_mpm:
            mpm = MPMLayout(
                dim=self.dim, res=self.grid_res, capacity=_next_pow2(self.n_particles, 256),
                n_mat=_next_pow2(len(self.materials), 4),
                models=tuple(sorted({m.model for m in self.materials})) if self.specialize else None,
                has_actuators=self.n_actuators > 0 if self.specialize else True,
                # no tools: specialized kernels leave the contact code out (it costs even when skipped)
                tool_contact=has_tools or not self.specialize,
                external_force=coupled or self.smoke is not None,  # the smoke field's drag
                worlds=self.n_worlds,
            )
        springs = coupler = None
        if self.spring_bodies:
            from .parts.springs import SpringsLayout

            springs = SpringsLayout(
                dim=self.dim,
                nodes=_next_pow2(sum(b.n_vertices for b in self.spring_bodies), 16),
                springs=_next_pow2(sum(b.n_springs for b in self.spring_bodies), 16),
                tool_contact=has_tools, external_force=coupled, worlds=self.n_worlds)
        if coupled:
            from .parts.coupler import CouplerLayout

            coupler = CouplerLayout(
                dim=self.dim, res=self.grid_res, springs=bool(self.spring_bodies),
                fem_faces=_next_pow2(sum(len(b.mesh.surface_faces()) for b in self.fem_bodies), 16)
                if self.fem_bodies else 0, worlds=self.n_worlds)
        fem = None
        if self.fem_bodies:
            from .parts.fem import FEMLayout

            # sub-step ring for the largest dt this scene can have (requested, or the default's cap),
            # with 2x headroom for stiffer parameters set later
            limit = min(b.stable_dt() for b in self.fem_bodies)
            need = math.ceil((self.requested_dt or MAX_DEFAULT_DT) / limit) if self._fem_subcycle else 1
            fem = FEMLayout(
                nodes=_next_pow2(sum(b.n_vertices for b in self.fem_bodies), 16),
                tets=_next_pow2(sum(b.n_tets for b in self.fem_bodies), 16),
                bodies=_next_pow2(len(self.fem_bodies), 1),
                models=tuple(sorted({b.model for b in self.fem_bodies})), tool_contact=has_tools,
                subcycles=_next_pow2(2 * need, 1) if need > 1 else 1, mpm_contact=self._has_mpm,
                worlds=self.n_worlds,
                faces=_next_pow2(sum(len(b.mesh.surface_faces()) for b in self.fem_bodies), 16))
        shell = None
        if self.shell_bodies:
            from .parts.shell import ShellLayout
            from .parts.shell_contact import PAIRS_PER_VERTEX

            shell = ShellLayout(nodes=_next_pow2(sum(b.n_vertices for b in self.shell_bodies), 16),
                                tris=_next_pow2(sum(b.n_triangles for b in self.shell_bodies), 16),
                                hinges=_next_pow2(sum(b.n_hinges for b in self.shell_bodies), 16),
                                bodies=_next_pow2(len(self.shell_bodies), 1),
                                contact_pairs=_next_pow2(PAIRS_PER_VERTEX * sum(
                                    b.n_vertices for b in self.shell_bodies if b.self_contact or fem), 16)
                                if fem or any(b.self_contact for b in self.shell_bodies) else 0,
                                fem_nodes=fem.nodes if fem else 0)
        return SceneLayout(
            shell=shell,
            dim=self.dim, K=_next_pow2(self.checkpoint_every, 16), max_steps=_next_pow2(max_steps, 8),
            action_capacity=_next_pow2(self.action_dim, 8),
            # tools per world (the contact loops unroll over them)
            tools=_next_pow2(len(self.tools) // self.n_worlds, 1)
            if has_tools or (self._has_mpm and not self.specialize) else 0,
            mpm=mpm, springs=springs, coupler=coupler, fem=fem, worlds=self.n_worlds)

    def build(self, max_steps: int = 100) -> Scene:
        """Compile (or reuse) the parts for this scene's layout and load the initial state.

        Args:
            max_steps: longest action sequence :meth:`forward` will be given.
        """
        self._check_not_built()
        if not (self._has_mpm or self.spring_bodies or self.fem_bodies or self.shell_bodies or self.smoke):
            raise ValueError("the scene has no particle bodies; add one with add_body() (or add_mass_spring(), "
                             "add_fem(), add_shell(), add_smoke(), add_emitter())")
        if not (isinstance(max_steps, int) and max_steps >= 1):
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        if self.n_worlds > 1:
            self._expand_worlds()
        cfg = backend.ensure_init()
        self.max_steps = max_steps
        if self.emitters:
            self._reserve_emitted(max_steps)
        if self.smoke is None:
            self.partset = ps = get_partset(self._layout(max_steps), self, cfg.real)
        else:
            from .parts.smoke import SmokeLayout, get_smoke_partset

            layout = self._layout(max_steps)
            self.partset = ps = get_smoke_partset(layout, SmokeLayout(
                dim=self.dim, res=self.smoke.res, vents=len(self.smoke.vents), tools=layout.tools,
                mpm=0 if not self._has_mpm else 2 if layout.coupler is not None else 1), self, cfg.real)
            ps.smoke.load((self.smoke, self.gravity, cfg.precision))
        self.parts = list(ps.parts)  # a copy: the scene's own parts (emitters) join it, not the pooled set
        self._np_real = cfg.np_real
        self._precision = cfg.precision
        ps.tools.load(self.tools, self.n_worlds)
        if ps.mpm is not None:
            ps.mpm.load(MPMSpec(
                n=self.n_particles, materials=self.materials, material=np.concatenate(self._mat),
                act_group=np.concatenate(self._act), fiber=np.concatenate(self._fiber), spacing=self.spacing,
                gravity=self.gravity, boundary=self.boundary, wall_friction=self.wall_friction,
                precision=cfg.precision, world=self._particle_world if self.n_worlds > 1 else None))
        if ps.springs is not None:
            from .parts.springs import SpringsSpec

            ps.springs.load(SpringsSpec(bodies=self.spring_bodies, gravity=self.gravity, floor=self.floor,
                                        wall_lo=BOUND * self.dx, wall_hi=1.0 - BOUND * self.dx))
        if ps.fem is not None:
            from .parts.fem import FEMSpec

            poses = [(t.position, t.initial_rotation()) for t in self.tools]
            ps.fem.load(FEMSpec(bodies=self.fem_bodies, tool_poses=poses,
                                gravity=self.gravity, floor=self.floor, wall_lo=BOUND * self.dx,
                                wall_hi=1.0 - BOUND * self.dx, subcycle=self._fem_subcycle))
        if ps.shell is not None:
            from .parts.shell import ShellSpec

            if ps.fem is not None:
                ps.shell.attach_fem(ps.fem)  # the pads are obstacles of the sheets
            from .parts.tools import SHAPE_IDS

            ps.shell.load(ShellSpec(
                bodies=self.shell_bodies, tool_poses=[(t.position, t.initial_rotation()) for t in self.tools],
                tool_shapes=[(SHAPE_IDS[t.shape], t.size_params()) for t in self.tools], gravity=self.gravity,
                floor=self.floor, wall_lo=BOUND * self.dx, wall_hi=1.0 - BOUND * self.dx,
                wall_friction=self.wall_friction))
        if ps.coupler is not None:
            from .parts.coupler import CouplingSpec

            ps.coupler.load(self.coupling or CouplingSpec(radius=self.dx))
        if self.emitters:
            from .parts.emitter import EmitterLayout, EmitterSpec, get_emitter_part

            em = get_emitter_part(ps, EmitterLayout(self.dim, _next_pow2(len(self.emitters), 1),
                                                    _next_pow2(len(self._emit_table["time"]), 16)), cfg.real)
            em.load(EmitterSpec(self.emitters, self._emit_first, self._emit_table))
            # right after the tools (it reads their new pose), before every part that reads MPM particles
            self.parts.insert(self.parts.index(ps.tools) + 1, em)
        self.dt = self._choose_dt()
        if self.emitters:
            em.set_dt(self.dt, self.dx, 1.0 - self.dx)
        offset = 0
        for part in sorted(self.parts, key=lambda p: p.name == "smoke"):  # the vents' columns last
            part.dt[None] = self.dt
            part.act_offset[None] = offset
            offset += part.action_dim
        assert offset == self.action_dim, (offset, self.action_dim)
        # weak: a bound method here would make scene -> tape -> scene a cycle, and a dropped scene
        # would keep its compiled parts from the pool until the garbage collector runs
        self.tape.snapshot = _weak_call(self._snapshot)
        self.tape.nonfinite = _weak_call(self._nonfinite)
        self._initial = self._initial_state()
        self.reset()
        self._check_overlaps()
        return self

    # ------------------------------------------------------------ batched worlds
    def _expand_worlds(self) -> None:
        """Make the W worlds of a batched scene from the one-world description: particles,
        materials, actuator groups and tools repeated world-major (world w's material rows
        ``w * M ...``, actuator groups ``w * A ...``, tools ``w * T ...``)."""
        W = self.n_worlds
        other = [what for what, has in (("thin shells", self.shell_bodies), ("a smoke field", self.smoke is not None),
                                        ("emitters", self.emitters)) if has]
        if other:
            raise UnbatchableScene(f"n_worlds={W}: batched worlds are built for MPM bodies, mass-spring bodies, "
                                   f"FEM bodies, their coupling and tools so far; this scene also has "
                                   f"{', '.join(other)} (build it with n_worlds=1)")
        if not (self.bodies or self.spring_bodies or self.fem_bodies):
            raise ValueError(f"n_worlds={W}: a batched scene needs MPM bodies (add_body), mass-spring bodies or "
                             f"FEM bodies")
        if self._one_world is None:
            d = self.dim
            cat = lambda rows, shape, dtype=np.float64: np.concatenate(rows) if rows else np.zeros(shape, dtype)  # noqa: E731
            self._one_world = dict(x=cat(self._x, (0, d)), v=cat(self._v, (0, d)), mat=cat(self._mat, 0, np.int32),
                                   act=cat(self._act, 0, np.int32), fiber=cat(self._fiber, (0, d)),
                                   materials=list(self.materials), tools=list(self.tools), n_act=self.n_actuators,
                                   springs=list(self.spring_bodies), fem=list(self.fem_bodies))
        o = self._one_world
        M, A, n = len(o["materials"]), o["n_act"], len(o["x"])
        self.spring_bodies = o["springs"] * W
        self.fem_bodies = o["fem"] * W  # each world's mounts: its own tools (FEMPart.load)
        if not n:
            self.tools = o["tools"] * W
            return
        self._x = [o["x"]] * W
        self._v = [o["v"]] * W
        self._fiber = [o["fiber"]] * W
        self._mat = [o["mat"] + w * M for w in range(W)]
        self._act = [np.where(o["act"] >= 0, o["act"] + w * A, -1).astype(np.int32) for w in range(W)]
        self._particle_world = np.repeat(np.arange(W, dtype=np.int32), n)
        self.materials = o["materials"] * W
        self.tools = o["tools"] * W
        self.n_actuators = A * W

    def _world_description(self, key: str):
        return self._one_world[key] if self._one_world is not None else None

    @property
    def particles_per_world(self) -> int:
        """MPM particles in one world (all of them in a one-world scene)."""
        one = self._world_description("x")
        return self.n_particles if one is None else len(one)

    @property
    def tools_per_world(self) -> int:
        one = self._world_description("tools")
        return len(self.tools) if one is None else len(one)

    @property
    def materials_per_world(self) -> int:
        one = self._world_description("materials")
        return len(self.materials) if one is None else len(one)

    @property
    def world_action_dim(self) -> int:
        """Action columns of one world: its tools' (linear, angular) velocities, then its actuators
        (``action_dim`` in a one-world scene)."""
        if self._one_world is None:
            return self.action_dim
        o = self._one_world
        return self.tools_per_world * self.tool_action_dim + o["n_act"] + sum(b.n_actuators for b in o["springs"])

    @property
    def _world_columns(self) -> np.ndarray:
        """(W, world_action_dim): the scene's action column of each world's each column."""
        W, T, c, A = self.n_worlds, self.tools_per_world, self.tool_action_dim, self._one_world["n_act"]
        S = sum(b.n_actuators for b in self._one_world["springs"])
        cols = np.zeros((W, T * c + A + S), np.int64)
        for w in range(W):  # the scene's columns: every world's tools, MPM actuators, spring actuators
            cols[w, : T * c] = w * T * c + np.arange(T * c)
            cols[w, T * c: T * c + A] = W * T * c + w * A + np.arange(A)
            cols[w, T * c + A:] = W * (T * c + A) + w * S + np.arange(S)
        return cols

    def per_world(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A state (or gradient) by name, each entry reshaped to ``(W, rows per world, ...)``."""
        W = self.n_worlds
        out = {}
        for name, value in state.items():
            a = np.asarray(value)
            if a.shape[0] % W:
                raise ValueError(f"{name} has {a.shape[0]} rows, not a multiple of the {W} worlds")
            out[name] = a.reshape(W, a.shape[0] // W, *a.shape[1:])
        return out

    def _world_major(self, value, want: tuple) -> np.ndarray:
        """``value`` as float64; in a batched scene a per-world array ``(W, rows per world, ...)`` of
        an entry of shape ``want`` becomes its world-major ``want`` (other shapes pass unchanged)."""
        arr = np.asarray(value, dtype=np.float64)
        W = self.n_worlds
        if W > 1 and arr.shape == (W, want[0] // W, *want[1:]):
            arr = arr.reshape(want)
        return arr

    def _world_rows(self, row: int, world: int | None, per_world: int, what: str) -> list[int]:
        """Rows of one world's ``row`` (a material or tool of the one-world description) in world
        ``world`` (``None``: every world's)."""
        if not (isinstance(row, (int, np.integer)) and 0 <= row < per_world):
            raise IndexError(f"{what} {row!r} is not one of the {per_world} {what}s of a world")
        if world is None:
            return [w * per_world + int(row) for w in range(self.n_worlds)]
        if not (isinstance(world, (int, np.integer)) and 0 <= world < self.n_worlds):
            raise IndexError(f"world must be in [0, {self.n_worlds}), got {world!r}")
        return [int(world) * per_world + int(row)]

    def _choose_dt(self) -> float:
        limits = {part.name: part.stable_dt() for part in self.parts}
        limit = min(limits.values())
        c = self.max_wave_speed()
        if self.requested_dt is None:
            dt = WAVE_CFL_DEFAULT * self.dx / c if c > 0 else MAX_DEFAULT_DT
            return min(dt, MAX_DEFAULT_DT, WAVE_CFL_DEFAULT / WAVE_CFL_LIMIT * limit)
        dt = float(self.requested_dt)
        for name, lim in limits.items():
            if dt > lim:
                if name == "mpm":
                    worst = max(self.materials, key=lambda m: m.wave_speed())
                    why = (f"{type(worst).__name__} has wave speed {c:.3g} m/s, so dt must be <= "
                           f"{WAVE_CFL_LIMIT} * dx / c = {lim:.3g} s on a {self.grid_res}-cell grid "
                           f"(lower dt, raise substeps_per_step, or soften the material)")
                else:
                    reason = self._parts_by_name()[name].dt_reason()
                    why = f"the {name} part's stability limit is {lim:.3g} s ({reason})"
                raise ValueError(f"dt={self.requested_dt:g} is unstable: {why}")
        return dt

    def _check_overlaps(self) -> None:
        """Refuse a tool that starts deep inside MPM material (deeper than one grid cell:
        shallower overlaps are the documented soft-contact start of several tasks), a
        mass-spring body that starts overlapping MPM particles (closer than half the contact
        radius: the first substep's penalty force would be enormous) and MPM particles that
        start inside a FEM gel's tets. Runs on slot 0."""
        ps = self.partset
        W = self.n_worlds
        if self.tools and self._has_mpm:
            self._check_tool_start()
        if self.spring_bodies and self._has_mpm:
            from scipy.spatial import cKDTree

            # a batched scene's worlds are copies of one at build: world 0 stands for all
            verts = np.concatenate([b.vertices for b in self.spring_bodies[: len(self.spring_bodies) // W]])
            r = ps.coupler.radius
            dist, _ = cKDTree(np.concatenate(self._x[: len(self._x) // W])).query(verts)
            if (dist < 0.5 * r).any():
                i = int(np.argmin(dist))
                raise ValueError(
                    f"mass-spring vertex {i} at {verts[i].round(4).tolist()} starts inside MPM material "
                    f"(nearest particle {dist[i]:.3g} away, contact radius {r:.3g}): move the bodies apart")
        if self.fem_bodies and self._has_mpm:
            x = np.concatenate(self._x[: len(self._x) // W])
            for bi, body in enumerate(self.fem_bodies[: len(self.fem_bodies) // W]):
                inside = _inside_tets(body.mesh, x)
                if inside.any():
                    i = int(np.argmax(inside))
                    pressure = 2 * ps.fem.params["contact_stiffness"].get(bi) * ps.coupler.fem_radius
                    raise ValueError(
                        f"MPM particle {i} at {x[i].round(4).tolist()} starts inside FEM body {bi} "
                        f"({int(inside.sum())} particles inside its tets): the contact would throw them out with "
                        f"a pressure of up to {pressure:.3g} Pa; move the bodies apart (touching is fine)")

    def _check_tool_start(self) -> None:
        """Refuse initial tool poses (slot 0, after reset) centred outside the unit domain or deeper
        than one grid cell inside the initial MPM material (build and set_initial_state)."""
        pos = self._initial["tools.pos"]
        out = np.any((pos < 0.0) | (pos > 1.0), axis=1)
        if out.any():
            i = int(np.argmax(out))
            raise ValueError(f"tool {i} at {pos[i].tolist()} is outside the simulation domain [0, 1]^{self.dim} "
                             f"(its position is its centre)")
        x = self._initial["mpm.x"]
        d = self.partset.tools.min_distance(x, self._particle_world if self.n_worlds > 1 else None)
        if d.min() < -self.dx:
            i = int(np.argmin(d))
            raise ValueError(
                f"a tool starts inside the material: particle {i} at {x[i].round(4).tolist()} is "
                f"{-d[i]:.3g} inside it ({int((d < -self.dx).sum())} particles deeper than one grid cell); "
                f"move the tool or the body")

    def _initial_state(self) -> dict[str, np.ndarray]:
        init: dict[str, np.ndarray] = {}
        n, d = self.n_particles, self.dim
        if self._has_mpm:
            init.update({
                "mpm.x": np.concatenate(self._x), "mpm.v": np.concatenate(self._v),
                "mpm.C": np.zeros((n, d, d)), "mpm.F": np.broadcast_to(np.eye(d), (n, d, d)).copy(),
                "mpm.Jp": np.ones(n)})
        init["tools.pos"] = np.array([t.position for t in self.tools]).reshape(-1, d)
        init["tools.rot"] = np.array([t.initial_rotation() for t in self.tools]).reshape(-1, 4)
        if self.spring_bodies:
            init["springs.x"] = np.concatenate([b.vertices for b in self.spring_bodies])
            init["springs.v"] = np.concatenate([b.initial_velocities() for b in self.spring_bodies])
        if self.fem_bodies:
            init["fem.x"] = np.concatenate([b.mesh.vertices for b in self.fem_bodies])
            init["fem.v"] = np.concatenate([b.initial_velocities() for b in self.fem_bodies])
            init["fem.f_contact"] = np.zeros_like(init["fem.x"])
        if self.shell_bodies:
            init.update({f"shell.{k}": v for k, v in self.partset.shell.initial_state().items()})
        if self.smoke is not None:
            init.update({f"smoke.{k}": v for k, v in self.smoke.initial_state(self.dim).items()})
        if self.emitters:
            init["emitter.clock"] = np.zeros(1)
        return init

    # ------------------------------------------------------------------ state I/O
    @property
    def state_names(self) -> list[str]:
        """Names of the state entries (``"mpm.x"``, ``"tools.pos"``, ...)."""
        return list(self._initial)

    def _export(self, slot: int, grad: bool = False) -> dict[str, np.ndarray]:
        out = {}
        for part in self.parts:
            for k, v in part.export(slot, grad).items():
                out[f"{part.name}.{k}"] = v
        return out

    def _split(self, state: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        per: dict[str, dict[str, np.ndarray]] = {p.name: {} for p in self.parts if p.slots}
        for key, value in state.items():
            part, _, name = key.partition(".")
            if part not in per:
                raise KeyError(f"unknown state entry {key!r}; this scene has {sorted(self._initial)}")
            per[part][name] = value
        return per

    def _import(self, slot: int, state: dict[str, np.ndarray], grad: bool = False) -> None:
        by_name = self._parts_by_name()
        for part, values in self._split(state).items():
            by_name[part].import_(slot, values, grad)

    def get_state(self) -> dict[str, np.ndarray]:
        """The current full state as numpy arrays, by name (see :attr:`state_names`)."""
        self._check_built()
        return self._export(self._slot)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Set the full current state (every entry of :attr:`state_names`)."""
        self._check_built()
        missing = set(self._initial) - set(state)
        if missing:
            raise KeyError(f"set_state needs every entry; missing {sorted(missing)}")
        if "mpm.x" in state:
            x = np.asarray(state["mpm.x"])
            lo, hi = self.dx, 1.0 - self.dx
            if x.shape == (self.n_particles, self.dim) and np.any((x < lo) | (x > hi)):
                i = int(np.argwhere(np.any((x < lo) | (x > hi), axis=1))[0, 0])
                raise ValueError(
                    f"particle {i} at {x[i].tolist()} is outside the domain [{lo:g}, {hi:g}]^{self.dim}")
        self._import(0, state)
        self._slot = 0
        self._drop_rollout("set_state() (or reset(), set_initial_state())")

    def set_initial_state(self, values: dict | None = None, *, x=None, v=None) -> None:
        """Replace entries of the initial state used by :meth:`reset` (``values``: name ->
        array, e.g. ``{"tools.pos": ...}``; ``x`` / ``v`` are short for ``mpm.x`` / ``mpm.v``)."""
        self._check_built()
        values = dict(values or {})
        if x is not None:
            values["mpm.x"] = x
        if v is not None:
            values["mpm.v"] = v
        old = {name: self._initial[name] for name in values if name in self._initial}
        for name, value in values.items():
            if name not in self._initial:
                raise KeyError(f"unknown state entry {name!r}; this scene has {sorted(self._initial)}")
            arr = self._world_major(value, self._initial[name].shape)
            want = self._initial[name].shape
            if arr.shape != want or not np.isfinite(arr).all():
                raise ValueError(f"initial {name} must be a finite array of shape {want}, got {arr.shape}")
            self._initial[name] = arr
        self.reset()
        if self.tools and self._has_mpm and {"tools.pos", "tools.rot", "mpm.x"} & set(values):
            try:  # a tool moved into (or material moved under) a tool: the build's check again
                self._check_tool_start()
            except ValueError:
                self._initial.update(old)
                self.reset()
                raise

    def initial_state(self) -> dict[str, np.ndarray]:
        """A copy of the initial state used by :meth:`reset`."""
        return {k: v.copy() for k, v in self._initial.items()}

    def reset(self, state: dict | None = None) -> None:
        """Return to the initial state, with entries of ``state`` (name -> array; ``None`` keeps
        the initial value) replaced. Gradients with respect to every entry come from
        :meth:`backward`."""
        self._check_built()
        init = dict(self._initial)
        for name, value in (state or {}).items():
            if name not in init:
                raise KeyError(f"unknown state entry {name!r}; this scene has {sorted(init)}")
            if value is not None:
                init[name] = self._world_major(value, init[name].shape)
        self.set_state(init)
        self.time = 0.0

    def particle_positions(self) -> np.ndarray:
        """(n, dim) current MPM particle positions."""
        return self.get_state()["mpm.x"]

    def particle_velocities(self) -> np.ndarray:
        return self.get_state()["mpm.v"]

    def tool_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions (E, dim), rotations (E, 4): angle in column 0 for 2D, quaternion w,x,y,z for 3D)."""
        s = self.get_state()
        return s["tools.pos"], s["tools.rot"]

    def particle_active(self) -> np.ndarray:
        """(n,) whether each MPM particle is in the simulation now: True for the bodies' particles and
        the emitted ones, False for an emitter's reserved particles not emitted yet (their rows hold
        a parked state that nothing reads)."""
        self._check_built()
        active = np.ones(self.n_particles, bool)
        part = self._parts_by_name().get("emitter")
        if part is not None:
            active[self._emit_first:] = part.active(self._slot)
        return active

    def particle_materials(self) -> np.ndarray:
        """(n,) material index of each particle."""
        return np.concatenate(self._mat)

    def particle_mass(self) -> np.ndarray:
        return self.partset.mpm.particle_mass()

    @property
    def engine(self):
        """The MPM part (``None`` in a scene without particle bodies)."""
        return None if self.partset is None else self.partset.mpm

    # -------------------------------------------------------------- parameters
    def _param(self, name: str):
        self._check_built()
        part, _, short = name.partition(".")
        by_name = self._parts_by_name()
        if part not in by_name or short not in by_name[part].params:
            known = sorted(f"{p.name}.{k}" for p in self.parts for k in p.params)
            raise KeyError(f"unknown parameter {name!r}; this scene has {known}")
        return by_name[part], by_name[part].params[short]

    @property
    def param_names(self) -> list[str]:
        """Every declared parameter, ``"part.name"`` (see :meth:`describe_params`)."""
        self._check_built()
        return [f"{p.name}.{k}" for p in self.parts for k in p.params]

    def describe_params(self) -> list[dict]:
        """One dict per parameter: name, units, rows, differentiable, bounds, doc."""
        self._check_built()
        return [dict(name=f"{p.name}.{k}", units=q.units, rows=q.rows(), differentiable=q.differentiable,
                     lower=q.lower, upper=q.upper, doc=q.doc) for p in self.parts for k, q in p.params.items()]

    def set_param(self, name: str, value: float, row: int = 0) -> None:
        """Set parameter ``name`` (``"mpm.E"``, ``"tools.friction"``, ``"springs.stiffness"``,
        ...) of row ``row`` (material, tool, spring) in user units; checked against its bounds
        and against the scene's dt: a value that makes ``dt`` exceed its part's stability limit
        (a stiffer or lighter material: 0.9 dx / c) raises ``ValueError`` naming the limit and
        leaves the parameter unchanged (the FEM part, which sub-cycles, checks at forward).
        Setting a parameter drops a recorded forward pass that awaits :meth:`backward` (its
        replay would use the new value): backward then raises, naming this call; call forward
        again after changing parameters."""
        part, p = self._param(name)
        if not (isinstance(row, (int, np.integer)) and 0 <= row < p.rows()):
            raise IndexError(f"{name} has {p.rows()} rows, got row {row!r}")
        v = p.check(value, part.name)
        old = p.get(int(row))
        p.set(int(row), v)
        # every part's limit: one part's parameter can move another's (mpm.density: the coupler's)
        for other in self.parts if part.name != "fem" else ():
            if other.name != "fem" and self.dt > other.stable_dt() * (1 + 1e-6):  # 1e-6: f32 fields
                why = other.dt_reason()
                p.set(int(row), old)
                raise ValueError(f"{name}={value:g} (row {row}) would make dt={self.dt:g} s unstable for the "
                                 f"{other.name} part: {why}")
        self._drop_rollout(f"set_param({name!r}, row={row})")

    def get_param(self, name: str, row: int = 0) -> float:
        part, p = self._param(name)
        if not (isinstance(row, (int, np.integer)) and 0 <= row < p.rows()):
            raise IndexError(f"{name} has {p.rows()} rows, got row {row!r}")
        return p.get(int(row))

    def _material_row(self, material: int | Material) -> int:
        """The row of ``material`` (an index, or one of the objects given to add_body: found by
        identity, so two equal-valued materials are two rows)."""
        if isinstance(material, (int, np.integer)):
            return int(material)
        for i, m in enumerate(self.materials):
            if m is material:
                return i
        raise ValueError(f"{material!r} is not a material of this scene (materials are matched by identity: pass "
                         f"the object given to add_body, or its index)")

    def set_material_param(self, material: int | Material, name: str, value: float,
                           world: int | None = None) -> None:
        """Shorthand for ``set_param("mpm." + name, value, row=material)`` (``material``: its
        index or the object given to :meth:`add_body`). In a batched scene ``material`` is one
        world's material and ``world`` picks the world (``None``: every world)."""
        m = self._material_row(material)
        self._check_built()
        if self.n_worlds > 1:
            rows = self._world_rows(m, world, self.materials_per_world, "material")
        elif world not in (None, 0):
            raise IndexError(f"world must be 0 or None in a one-world scene, got {world!r}")
        else:
            rows = [m]
        if name not in self.partset.mpm.params:
            raise KeyError(f"unknown material parameter {name!r}; known: {list(self.partset.mpm.params)}")
        try:
            self.partset.mpm.params[name].check(value, "mpm")
        except ValueError as e:
            if name == "nu":
                raise ValueError(f"Poisson ratio nu must be < 0.5 (and > -1): {e}") from e
            if name in ("E", "density"):
                raise ValueError(f"material parameter {name} must be positive and finite: {e}") from e
            raise
        for row in rows:
            self.set_param("mpm." + name, value, row=row)

    def get_material_param(self, material: int | Material, name: str, world: int = 0) -> float:
        m = self._material_row(material)
        if self.n_worlds > 1:
            m = self._world_rows(m, world, self.materials_per_world, "material")[0]
        return self.get_param("mpm." + name, row=m)

    def set_tool_friction(self, index: int, value: float, world: int | None = None) -> None:
        """Shorthand for ``set_param("tools.friction", value, row=index)``; in a batched scene
        ``index`` is one world's tool and ``world`` picks the world (``None``: every world)."""
        if self.n_worlds > 1:
            self._check_built()
            for row in self._world_rows(index, world, self.tools_per_world, "tool"):
                self.set_param("tools.friction", value, row=row)
            return
        self.set_param("tools.friction", value, row=index)

    def set_checkpoint_every(self, k: int) -> None:
        """Change K (substeps per checkpoint chunk) of a built scene, up to the slot
        capacity. Takes effect at the next :meth:`forward`."""
        self._check_built()
        cap = self.partset.layout.K
        if not (isinstance(k, int) and 1 <= k <= cap):
            raise ValueError(f"checkpoint_every must be an integer in [1, {cap}] for this scene, got {k!r}")
        self.checkpoint_every = k
        self._drop_rollout("set_checkpoint_every()")

    # ------------------------------------------------------------------ physics
    def total_mass(self) -> float:
        """Mass of the MPM material in the scene (an emitter's particles count once emitted)."""
        return float(self.particle_mass()[self.particle_active()].sum())

    def momentum(self) -> np.ndarray:
        s = self.get_state()
        return (self.particle_mass()[:, None] * s["mpm.v"]).sum(axis=0)

    def angular_momentum(self) -> np.ndarray:
        """Total angular momentum of the MPM particles about the origin, with the APIC affine part."""
        s = self.get_state()
        m = self.particle_mass()
        x, v, C = s["mpm.x"], s["mpm.v"], s["mpm.C"]
        D = 0.25 * self.dx**2  # APIC inertia-like tensor D = dx^2 / 4 I for quadratic B-splines
        if self.dim == 2:
            orbital = (m * (x[:, 0] * v[:, 1] - x[:, 1] * v[:, 0])).sum()
            affine = (m * D * (C[:, 1, 0] - C[:, 0, 1])).sum()
            return np.array([orbital + affine])
        orbital = (m[:, None] * np.cross(x, v)).sum(axis=0)
        skew = C - np.transpose(C, (0, 2, 1))
        affine = D * (m[:, None] * np.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], axis=1)).sum(axis=0)
        return orbital + affine

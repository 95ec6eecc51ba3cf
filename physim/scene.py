"""Scene: particle bodies + effectors + an MPM solver, differentiable end to end.

Ten lines::

    import physim as ps
    ps.init(arch="cpu")
    scene = ps.Scene(dim=2, grid_res=64)
    scene.add_body(ps.Box(center=(0.5, 0.2), size=(0.2, 0.2)), ps.Plasticine())
    scene.add_effector(ps.SphereTool(position=(0.3, 0.2), radius=0.05))
    scene.build(max_steps=20)
    scene.forward(np.tile([1.0, 0.0, 0.0], (20, 1)))
    print(scene.particle_positions().mean(axis=0))
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from . import backend
from .checkpoints import DEFAULT_RAM_MB, CheckpointStore
from .effectors import SHAPE_IDS, Effector
from .geometry import Shape
from .materials import DIFF_PARAMS, MODEL_IDS, PARAM_COLUMNS, Material
from .solvers import get_engine
from .solvers.mpm import BAD_NONFINITE, BAD_OUTSIDE, BOUND, BOUNDARY_IDS, MPMEngine
from .tape import Tape

__all__ = ["Scene", "Gradients", "SimulationError", "GradientError"]

#: the time step must satisfy dt * wave_speed / dx <= this (explicit MPM stability)
WAVE_CFL_LIMIT = 0.9
#: default dt uses this fraction of the wave-speed limit
WAVE_CFL_DEFAULT = 0.4
#: a particle may move at most this many cells in one substep
VELOCITY_CFL_LIMIT = 1.0


class SimulationError(RuntimeError):
    """The simulation blew up (non-finite state, particles left the domain, CFL violated)."""


class GradientError(RuntimeError):
    """A gradient became NaN or infinite."""


@dataclass
class Gradients:
    """Gradients of the loss returned by :meth:`Scene.backward` (numpy arrays).

    Attributes:
        actions: (steps, action_dim) d loss / d actions.
        x0, v0: (n_particles, dim) d loss / d initial positions and velocities.
        effector_pos0: (n_effectors, dim) d loss / d initial effector positions.
        effector_rot0: (n_effectors, 4) d loss / d initial rotation state.
        materials: one dict per material, {"E", "nu", "yield_stress", "friction_angle",
            "viscosity"} -> d loss / d parameter (friction angle per radian; a Fluid's
            "E" is its bulk modulus).
        effector_friction: (n_effectors,) d loss / d friction coefficient.
        action_norm: norm of the action gradient before clipping.
    """

    actions: np.ndarray
    x0: np.ndarray
    v0: np.ndarray
    effector_pos0: np.ndarray
    effector_rot0: np.ndarray
    materials: list[dict[str, float]]
    effector_friction: np.ndarray
    action_norm: float = 0.0


@dataclass
class _Body:
    shape: Shape
    material_index: int
    actuator: int | None
    start: int
    count: int


def _next_pow2(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


class Scene:
    """A differentiable MPM scene in the unit square/cube.

    Args:
        dim: 2 or 3.
        grid_res: grid cells per axis (dx = 1 / grid_res).
        dt: substep length in seconds; ``None`` picks 0.4 of the elastic-wave limit
            dx / c (c the fastest P-wave speed of the scene's materials), at most 1e-3.
            A ``dt`` above 0.9 dx / c raises ``ValueError``.
        substeps_per_step: substeps per action step (actions are held constant over them).
        gravity: gravity vector (default (0, -9.8[, 0])).
        boundary: grid walls, ``"sticky"``, ``"slip"`` or ``"friction"`` (frictional slip).
        wall_friction: Coulomb coefficient of ``"friction"`` walls.
        checkpoint_every: K, substeps per checkpoint chunk. Reverse mode stores K + 1
            states on the device plus one host checkpoint per chunk, and recomputes
            each chunk once in backward. ``None``: 50.
        checkpoint_ram_mb: host RAM for those per-chunk checkpoints; beyond it they are
            written to a temporary directory, so RAM does not grow with the horizon
            (``None``: keep all in RAM). Default 64.
        specialize: compile kernels for only the constitutive models this scene uses, and
            without tool contact if it has no tools (faster); ``False`` uses generic kernels
            shared with scenes of other materials (fewer compilations when a script builds
            many small scenes of different materials).
        particle_spacing: lattice spacing of sampled particles (default dx / 2).
    """

    _warned_gpu_grad = False

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
    ):
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
        self._rollout: dict | None = None
        self.spacing = particle_spacing or self.dx / 2
        self.materials: list[Material] = []
        self.bodies: list[_Body] = []
        self.effectors: list[Effector] = []
        self._x: list[np.ndarray] = []
        self._v: list[np.ndarray] = []
        self._mat: list[np.ndarray] = []
        self._act: list[np.ndarray] = []
        self._fiber: list[np.ndarray] = []
        self.n_actuators = 0
        self.engine: MPMEngine | None = None
        self.tape = Tape()

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
        """Sample particles inside ``shape`` with ``material``; returns the body index.

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
        if material not in self.materials:
            self.materials.append(material)
        m = self.materials.index(material)
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
        n = len(pts)
        self.bodies.append(_Body(shape, m, actuator, sum(len(x) for x in self._x), n))
        self._x.append(pts)
        self._v.append(np.tile(vel, (n, 1)))
        self._mat.append(np.full(n, m, dtype=np.int32))
        self._act.append(np.full(n, -1 if actuator is None else actuator, dtype=np.int32))
        self._fiber.append(np.tile(d, (n, 1)))
        return len(self.bodies) - 1

    def add_effector(self, effector: Effector) -> int:
        """Add a kinematic rigid tool; returns its index (its action columns are
        ``scene.effector_slice(index)``)."""
        self._check_not_built()
        if not isinstance(effector, Effector):
            raise TypeError(f"expected a physim effector, got {type(effector).__name__}")
        if effector.dim != self.dim:
            raise ValueError(
                f"effector at {effector.position.tolist()} is {effector.dim}D but the scene is {self.dim}D")
        self.effectors.append(effector)
        return len(self.effectors) - 1

    def _check_not_built(self):
        if self.engine is not None:
            raise RuntimeError("the scene is already built; create a new Scene to change its contents")

    def _check_built(self):
        if self.engine is None:
            raise RuntimeError("call scene.build() first")

    @property
    def effector_action_dim(self) -> int:
        return self.dim + (1 if self.dim == 2 else 3)

    @property
    def action_dim(self) -> int:
        """Values per action row: each effector's (linear, angular) velocity, then actuation signals."""
        return len(self.effectors) * self.effector_action_dim + self.n_actuators

    def effector_slice(self, index: int) -> slice:
        k = self.effector_action_dim
        return slice(index * k, (index + 1) * k)

    @property
    def actuation_slice(self) -> slice:
        start = len(self.effectors) * self.effector_action_dim
        return slice(start, start + self.n_actuators)

    @property
    def n_particles(self) -> int:
        return int(sum(len(x) for x in self._x))

    def max_wave_speed(self) -> float:
        return max((m.wave_speed() for m in self.materials), default=0.0)

    def build(self, max_steps: int = 100) -> Scene:
        """Allocate (or reuse) the compiled engine and load the initial state.

        Args:
            max_steps: longest action sequence :meth:`forward` will be given.
        """
        self._check_not_built()
        if not self.bodies:
            raise ValueError("the scene has no particle bodies; add one with add_body()")
        if not (isinstance(max_steps, int) and max_steps >= 1):
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        cfg = backend.ensure_init()
        c = self.max_wave_speed()
        limit = WAVE_CFL_LIMIT * self.dx / c if c > 0 else math.inf
        if self.requested_dt is None:
            self.dt = min(WAVE_CFL_DEFAULT * self.dx / c if c > 0 else 1e-3, 1e-3)
        else:
            if self.requested_dt > limit:
                worst = max(self.materials, key=lambda m: m.wave_speed())
                raise ValueError(
                    f"dt={self.requested_dt:g} is unstable: {type(worst).__name__} has wave speed {c:.3g} m/s, "
                    f"so dt must be <= {WAVE_CFL_LIMIT} * dx / c = {limit:.3g} s on a {self.grid_res}-cell grid "
                    f"(lower dt, raise substeps_per_step, or soften the material)"
                )
            self.dt = float(self.requested_dt)
        self.max_steps = max_steps
        n = self.n_particles
        layout = (
            self.dim,
            self.grid_res,
            _next_pow2(n, 256),
            _next_pow2(self.checkpoint_every, 16),
            _next_pow2(max_steps, 8),
            # no tools: specialized kernels leave the contact code out (it costs even when skipped)
            _next_pow2(len(self.effectors), 1) if self.effectors or not self.specialize else 0,
            _next_pow2(self.action_dim, 8),
            _next_pow2(len(self.materials), 4),
            tuple(sorted({m.model for m in self.materials})) if self.specialize else None,
            self.n_actuators > 0 if self.specialize else True,
        )
        self.engine = eng = get_engine(MPMEngine, layout, self, cfg.real)
        self._np_real = cfg.np_real
        eng.n_particles[None] = n
        eng.n_eff[None] = len(self.effectors)
        eng.dt[None] = self.dt
        eng.p_vol[None] = self.spacing**self.dim
        eng.gravity[None] = self.gravity.tolist()
        eng.boundary[None] = BOUNDARY_IDS[self.boundary]
        eng.wall_friction[None] = self.wall_friction
        eng.act_offset[None] = self.actuation_slice.start
        cap = eng.capacity
        mat_id = np.zeros(cap, np.int32)
        mat_id[:n] = np.concatenate(self._mat)
        eng.material.from_numpy(mat_id)
        act = np.full(cap, -1, np.int32)
        act[:n] = np.concatenate(self._act)
        eng.act_group.from_numpy(act)
        fib = np.zeros((cap, self.dim), self._np_real)
        fib[:n] = np.concatenate(self._fiber)
        eng.fiber.from_numpy(fib)
        models = np.zeros(eng.n_mat, np.int32)
        params = np.zeros((eng.n_mat, len(PARAM_COLUMNS)), self._np_real)
        for i, m in enumerate(self.materials):
            models[i] = MODEL_IDS[m.model]
            params[i] = m.row()
        eng.mat_model.from_numpy(models)
        eng.needs_svd = any(m.model not in ("fluid", "neohookean") for m in self.materials)
        eng.mat_params.from_numpy(params)
        dens = params[mat_id, PARAM_COLUMNS.index("density")]
        eng.p_mass.from_numpy((dens * self.spacing**self.dim).astype(self._np_real))
        # f32: 1/m^2 in the adjoint must stay finite; f64 has the range to keep (almost) every node
        rel = 1e-9 if cfg.precision == "f32" else 1e-14
        eng.min_node_mass[None] = rel * float(dens[:n].min()) * self.spacing**self.dim
        E = eng.eff_shape.shape[0]
        shapes = np.zeros(E, np.int32)
        sizes = np.zeros((E, 3), self._np_real)
        fric = np.zeros(E, self._np_real)
        soft = np.zeros(E, self._np_real)
        for i, ef in enumerate(self.effectors):
            shapes[i], sizes[i], fric[i], soft[i] = SHAPE_IDS[ef.shape], ef.size_params(), ef.friction, ef.softness
        eng.eff_shape.from_numpy(shapes)
        eng.eff_size.from_numpy(sizes)
        eng.eff_friction.from_numpy(fric)
        eng.eff_softness.from_numpy(soft)
        eye = np.broadcast_to(np.eye(self.dim), (n, self.dim, self.dim))
        self._initial = {
            "x": np.concatenate(self._x),
            "v": np.concatenate(self._v),
            "C": np.zeros((n, self.dim, self.dim)),
            "F": eye.copy(),
            "Jp": np.ones(n),
            "effector_pos": np.array([ef.position for ef in self.effectors]).reshape(-1, self.dim),
            "effector_rot": np.array([ef.initial_rotation() for ef in self.effectors]).reshape(-1, 4),
        }
        self.reset()
        return self

    # ------------------------------------------------------------------ state I/O
    def _empty_state(self) -> dict[str, np.ndarray]:
        n, d, e = self.n_particles, self.dim, max(len(self.effectors), 1)
        r = self._np_real
        return {
            "x": np.zeros((n, d), r), "v": np.zeros((n, d), r), "C": np.zeros((n, d, d), r),
            "F": np.zeros((n, d, d), r), "Jp": np.zeros(n, r),
            "effector_pos": np.zeros((e, d), r), "effector_rot": np.zeros((e, 4), r),
        }

    def _export(self, slot: int, grad: bool = False) -> dict[str, np.ndarray]:
        s = self._empty_state()
        self.engine.export_slot(slot, s["x"], s["v"], s["C"], s["F"], s["Jp"], s["effector_pos"], s["effector_rot"],
                                grad)
        if not self.effectors:
            s["effector_pos"] = s["effector_pos"][:0]
            s["effector_rot"] = s["effector_rot"][:0]
        return s

    def _import(self, slot: int, state: dict[str, np.ndarray], grad: bool = False) -> None:
        full = self._empty_state()
        for k, arr in state.items():
            if k not in full:
                raise KeyError(f"unknown state entry {k!r}; expected {sorted(full)}")
            arr = np.asarray(arr, dtype=self._np_real)
            target = full[k] if k not in ("effector_pos", "effector_rot") else full[k][: len(self.effectors)]
            if arr.shape != target.shape:
                raise ValueError(f"state[{k!r}] must have shape {target.shape}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"state[{k!r}] contains NaN or inf")
            target[...] = arr
        self.engine.import_slot(slot, full["x"], full["v"], full["C"], full["F"], full["Jp"],
                                full["effector_pos"], full["effector_rot"], grad)

    def get_state(self) -> dict[str, np.ndarray]:
        """The current full state as numpy arrays (x, v, C, F, Jp, effector_pos, effector_rot)."""
        self._check_built()
        return self._export(self._slot)

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Set the full current state (all seven entries, as returned by :meth:`get_state`)."""
        self._check_built()
        missing = set(self._initial) - set(state)
        if missing:
            raise KeyError(f"set_state needs every entry; missing {sorted(missing)}")
        x = np.asarray(state["x"])
        lo, hi = self.dx, 1.0 - self.dx
        if x.shape == (self.n_particles, self.dim) and np.any((x < lo) | (x > hi)):
            i = int(np.argwhere(np.any((x < lo) | (x > hi), axis=1))[0, 0])
            raise ValueError(f"particle {i} at {x[i].tolist()} is outside the domain [{lo:g}, {hi:g}]^{self.dim}")
        self._import(0, state)
        self._slot = 0
        self._drop_rollout()

    def set_initial_state(self, x=None, v=None) -> None:
        """Replace the initial particle positions and/or velocities used by :meth:`reset`."""
        self._check_built()
        for name, value in (("x", x), ("v", v)):
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != (self.n_particles, self.dim) or not np.isfinite(arr).all():
                raise ValueError(
                    f"initial {name} must be a finite ({self.n_particles}, {self.dim}) array, got {arr.shape}")
            self._initial[name] = arr
        self.reset()

    def reset(self, x=None, v=None, effector_pos=None, effector_rot=None) -> None:
        """Return to the initial state, optionally with other initial particle positions /
        velocities or effector poses ((E, dim) positions, (E, 4) rotations as in
        :meth:`effector_poses`). Gradients w.r.t. all of them come from :meth:`backward`."""
        self._check_built()
        init = dict(self._initial)
        for name, value in (("x", x), ("v", v), ("effector_pos", effector_pos), ("effector_rot", effector_rot)):
            if value is not None:
                init[name] = np.asarray(value, dtype=np.float64)
        self.set_state(init)
        self.time = 0.0

    def particle_positions(self) -> np.ndarray:
        """(n, dim) current particle positions."""
        return self.get_state()["x"]

    def particle_velocities(self) -> np.ndarray:
        return self.get_state()["v"]

    def effector_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions (E, dim), rotations (E, 4): angle in column 0 for 2D, quaternion w,x,y,z for 3D)."""
        s = self.get_state()
        return s["effector_pos"], s["effector_rot"]

    def particle_materials(self) -> np.ndarray:
        """(n,) material index of each particle."""
        return np.concatenate(self._mat)

    def particle_mass(self) -> np.ndarray:
        return self.engine.p_mass.to_numpy()[: self.n_particles]

    # -------------------------------------------------------------- parameters
    def set_material_param(self, material: int | Material, name: str, value: float) -> None:
        """Change a material parameter of the built scene (e.g. for system identification)."""
        self._check_built()
        m = material if isinstance(material, int) else self.materials.index(material)
        if name not in PARAM_COLUMNS:
            raise KeyError(f"unknown material parameter {name!r}; known: {PARAM_COLUMNS}")
        value = float(value)
        if not math.isfinite(value) or (value <= 0 and name in ("E", "density")) or value < 0:
            raise ValueError(f"material parameter {name} must be positive and finite, got {value!r}")
        if name == "nu" and not value < 0.5:
            raise ValueError(f"Poisson ratio nu must be < 0.5, got {value!r}")
        if name == "friction_angle":
            value = math.radians(value)
        self.engine.mat_params[m, PARAM_COLUMNS.index(name)] = value

    def get_material_param(self, material: int | Material, name: str) -> float:
        self._check_built()
        m = material if isinstance(material, int) else self.materials.index(material)
        value = float(self.engine.mat_params[m, PARAM_COLUMNS.index(name)])
        return math.degrees(value) if name == "friction_angle" else value

    def set_effector_friction(self, index: int, value: float) -> None:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"effector friction must be >= 0, got {value!r}")
        self.engine.eff_friction[index] = float(value)

    def set_checkpoint_every(self, k: int) -> None:
        """Change K (substeps per checkpoint chunk) of a built scene, up to the engine's
        slot capacity. Takes effect at the next :meth:`forward`."""
        self._check_built()
        if not (isinstance(k, int) and 1 <= k <= self.engine.K):
            raise ValueError(f"checkpoint_every must be an integer in [1, {self.engine.K}] for this scene, got {k!r}")
        self.checkpoint_every = k
        self._drop_rollout()

    # ------------------------------------------------------------------ stepping
    def _check_actions(self, actions) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim == 1 and a.shape[0] == self.action_dim:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != self.action_dim:
            raise ValueError(
                f"actions must have shape (steps, {self.action_dim}) "
                f"[{len(self.effectors)} effector(s) x {self.effector_action_dim} + {self.n_actuators} actuator(s)], "
                f"got {a.shape}"
            )
        if a.shape[0] > self.max_steps:
            raise ValueError(f"{a.shape[0]} steps exceed max_steps={self.max_steps} given to build()")
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"actions contain NaN or inf (first at step {bad[0]}, column {bad[1]})")
        return a

    def _load_actions(self, a: np.ndarray) -> None:
        full = np.zeros(self.engine.action.shape, self._np_real)
        full[: a.shape[0], : self.action_dim] = a
        self.engine.action.from_numpy(full)

    def _check_health(self, first_slot: int, last_slot: int, first_substep: int) -> None:
        self.engine.health_check(first_slot, last_slot, VELOCITY_CFL_LIMIT)
        bad = self.engine.bad.to_numpy()[first_slot : last_slot + 1]
        hits = np.nonzero(bad)[0]
        if len(hits) == 0:
            return
        k = int(hits[0])
        flag = int(bad[k])
        step = first_substep + k  # slot first_slot + k holds the state after this many substeps
        if flag & BAD_NONFINITE:
            why = "particle state became NaN/inf"
        elif flag & BAD_OUTSIDE:
            why = "particles left the simulation domain"
        else:
            why = f"particles moved more than {VELOCITY_CFL_LIMIT} grid cell in one substep (CFL violated)"
        raise SimulationError(
            f"simulation blew up at substep {step} (t={step * self.dt:.4g}s, dt={self.dt:g}): {why}; "
            f"lower dt, slow the effectors, or soften the materials"
        )

    def _run(self, actions: np.ndarray, record: bool, checkpoints: CheckpointStore | None) -> None:
        """Run len(actions) steps from slot 0, in chunks of K substeps."""
        eng, K, ns = self.engine, self.checkpoint_every, self.substeps_per_step
        total = actions.shape[0] * ns
        self.tape.recording = record
        self.tape.clear()
        self._load_actions(actions)
        g = 0
        while g < total:
            length = min(K, total - g)
            if g > 0:
                eng.copy_slot(K, 0)
            if checkpoints is not None:
                checkpoints.append(self._export(0))
            self.tape.clear()
            for l in range(length):
                eng.substep(self.tape, l, (g + l) // ns)
            self._check_health(1, length, self._substeps_done + g + 1)
            g += length
            self._slot = length
        self.time += total * self.dt
        self._substeps_done += total

    def _drop_rollout(self) -> None:
        """Forget the recorded rollout and delete its checkpoints (incl. spilled files)."""
        r = self._rollout
        if r is not None and r["checkpoints"] is not None:
            r["checkpoints"].close()
        self._rollout = None

    def _to_slot0(self) -> None:
        if self._slot != 0:
            self.engine.copy_slot(self._slot, 0)
            self._slot = 0

    def step(self, action) -> None:
        """Advance one step (``substeps_per_step`` substeps) with one action row; no gradients."""
        self._check_built()
        a = self._check_actions(action)
        if a.shape[0] != 1:
            raise ValueError(f"step() takes one action row of {self.action_dim} values, got shape {np.shape(action)}")
        self._to_slot0()
        self._substeps_done = 0
        self._run(a, record=False, checkpoints=None)
        self._drop_rollout()

    def forward(self, actions, requires_grad: bool = True) -> None:
        """Simulate ``len(actions)`` steps from the current state.

        Args:
            actions: (steps, action_dim) array; row t drives every substep of step t.
            requires_grad: keep what :meth:`backward` needs (checkpoints every K substeps).
        """
        self._check_built()
        a = self._check_actions(actions)
        self._to_slot0()
        self._substeps_done = 0
        total = a.shape[0] * self.substeps_per_step
        self._drop_rollout()
        checkpoints = None
        if requires_grad and total > self.checkpoint_every:
            ram = None if self.checkpoint_ram_mb is None else int(self.checkpoint_ram_mb * 2**20)
            checkpoints = CheckpointStore(ram)
        self._run(a, record=requires_grad, checkpoints=checkpoints)
        if requires_grad:
            final = self._export(self._slot) if checkpoints is not None else None
            self._rollout = {"actions": a, "checkpoints": checkpoints, "final": final, "total": total}

    def backward(self, grad_x=None, grad_v=None, grad_effector_pos=None, grad_effector_rot=None,
                 clip_norm: float | None = None) -> Gradients:
        """Reverse mode over the last :meth:`forward`, seeded with d loss / d final state.

        Args:
            grad_x, grad_v: (n, dim) gradients of the loss w.r.t. final positions / velocities.
            grad_effector_pos, grad_effector_rot: gradients w.r.t. final effector poses.
            clip_norm: if set, scale the action gradient to at most this norm.

        Raises:
            GradientError: a gradient became NaN/inf (names the substep range).
        """
        self._check_built()
        r = self._rollout
        if r is None:
            raise RuntimeError("backward() needs a forward(..., requires_grad=True) first (and no step/reset since)")
        if backend.config().arch != "cpu" and not Scene._warned_gpu_grad:
            Scene._warned_gpu_grad = True
            warnings.warn(
                "physim: reverse mode on GPU backends does not yet pass the finite-difference gradient checks "
                "that pass on CPU (errors of several percent, NaN without fast-math); use arch='cpu' for "
                "gradients you rely on. Forward simulation on GPU is fine.",
                RuntimeWarning,
                stacklevel=2,
            )
        eng, K, ns = self.engine, self.checkpoint_every, self.substeps_per_step
        total = r["total"]
        n_chunks = -(-total // K)
        last_len = total - (n_chunks - 1) * K
        eng.zero_all_grads()
        seed = {k: np.zeros_like(v) for k, v in self._initial.items()}
        for name, value in (("x", grad_x), ("v", grad_v), ("effector_pos", grad_effector_pos),
                            ("effector_rot", grad_effector_rot)):
            if value is not None:
                seed[name] = np.asarray(value, dtype=np.float64)
        self._import(last_len, seed, grad=True)
        for c in reversed(range(n_chunks)):
            length = K if c < n_chunks - 1 else last_len
            if c != n_chunks - 1:
                self._import(0, r["checkpoints"][c])
                self.tape.recording = True
                self.tape.clear()
                for l in range(length):
                    eng.substep(self.tape, l, (c * K + l) // ns)
            for l in reversed(range(length)):
                self.tape.backward_substep(l, eng.zero_scratch_grads)
            g0 = self._export(0, grad=True)
            if not all(np.isfinite(v).all() for v in g0.values()):
                raise GradientError(
                    f"gradient became NaN/inf while differentiating substeps {c * K}..{c * K + length - 1}"
                )
            if c > 0:
                eng.move_grad_slot(0, K)
        action_grad = eng.action.grad.to_numpy()[: r["actions"].shape[0], : self.action_dim].astype(np.float64)
        if not np.isfinite(action_grad).all():
            raise GradientError("action gradient is NaN/inf")
        norm = float(np.linalg.norm(action_grad))
        if clip_norm is not None and norm > clip_norm > 0:
            action_grad *= clip_norm / norm
        mp = eng.mat_params.grad.to_numpy()
        materials = [{p: float(mp[i, PARAM_COLUMNS.index(p)]) for p in DIFF_PARAMS} for i in range(len(self.materials))]
        grads = Gradients(
            actions=action_grad,
            x0=g0["x"].astype(np.float64),
            v0=g0["v"].astype(np.float64),
            effector_pos0=g0["effector_pos"].astype(np.float64),
            effector_rot0=g0["effector_rot"].astype(np.float64),
            materials=materials,
            effector_friction=eng.eff_friction.grad.to_numpy()[: len(self.effectors)].astype(np.float64),
            action_norm=norm,
        )
        if r["final"] is not None:  # slots now hold chunk 0: put the final state back
            self._import(0, r["final"])
            self._slot = 0
            self.tape.clear()
            self._drop_rollout()  # the last chunk's tape is gone; run forward again to differentiate again
        return grads

    # ------------------------------------------------------------------ physics
    def total_mass(self) -> float:
        return float(self.particle_mass().sum())

    def momentum(self) -> np.ndarray:
        s = self.get_state()
        return (self.particle_mass()[:, None] * s["v"]).sum(axis=0)

    def angular_momentum(self) -> np.ndarray:
        """Total angular momentum about the origin including the APIC affine part."""
        s = self.get_state()
        m = self.particle_mass()
        x, v, C = s["x"], s["v"], s["C"]
        if self.dim == 2:
            orbital = (m * (x[:, 0] * v[:, 1] - x[:, 1] * v[:, 0])).sum()
            # APIC: D = spacing^2/4 I for quadratic B-splines; L_affine = m D (C_yx - C_xy)... per Jiang et al.
            D = 0.25 * self.dx**2
            affine = (m * D * (C[:, 1, 0] - C[:, 0, 1])).sum()
            return np.array([orbital + affine])
        orbital = (m[:, None] * np.cross(x, v)).sum(axis=0)
        D = 0.25 * self.dx**2
        skew = C - np.transpose(C, (0, 2, 1))
        affine = D * (m[:, None] * np.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], axis=1)).sum(axis=0)
        return orbital + affine

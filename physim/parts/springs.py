"""Mass-spring bodies as a part: point masses joined by damped, optionally actuated springs.

User-facing: :class:`MassSpring` (one body: vertices, springs, masses, stiffness, ...), added
with :meth:`physim.Scene.add_mass_spring`. The scene concatenates its bodies into one
:class:`SpringsPart` (state ``springs.x``, ``springs.v``: (nodes, dim) positions in m and
velocities in m/s; parameters ``springs.stiffness`` (N/m) and ``springs.damping`` (N s/m),
one row per spring, bodies in the order they were added).

One substep (record-and-run launches on the tape; see :mod:`physim.tape`):

1. ``clear_forces`` and ``accumulate_forces`` (both replayed in reverse mode: the integration's
   adjoint reads the force accumulator): every spring adds Hooke's force with its (actuated)
   rest length plus a dashpot on the relative velocity along it, equal and opposite on its ends.
2. ``integrate`` (writes slot ``l + 1`` only): symplectic Euler ``v' = v + dt (f + m g + f_ext)
   / m``, tool contact, floor and walls (velocity level, as MPM's ``"friction"`` walls), then
   ``x' = x + dt v'``.

The forward pass runs these as one fused launch (``substep_fused``: each node gathers its
springs' forces from incidence lists, no atomics) and records the three phase kernels for
reverse mode, as MPM does.

Actuation (DiffTaichi's mass-spring robots): spring ``s`` with actuator ``a >= 0`` has rest
length ``rest_s * (1 + actuation_strength * signal_a)``, ``signal_a`` the action column
``scene.spring_actuation_slice.start + a`` (actuators numbered body by body).
"""


import math
from dataclasses import dataclass

import numpy as np
import taichi as ti

from ..solvers._linalg import safe_norm
from .base import BAD_FAST, BAD_NONFINITE, BAD_OUTSIDE, Part

__all__ = ["MassSpring", "SpringsLayout", "SpringsSpec", "SpringsPart"]

#: a node may move at most this fraction of the shortest rest length in one substep; faster
#: means explicit integration has gone unstable (a stable spring oscillates far slower)
MAX_MOVE_FRACTION = 0.5


def _finite(name: str, value, shape=None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if shape is not None:
        if arr.ndim == 0:
            arr = np.full(shape, float(arr))
        if arr.shape != shape:
            raise ValueError(f"MassSpring.{name} must be a scalar or have shape {shape}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(np.atleast_1d(arr)))[0].tolist()
        raise ValueError(f"MassSpring.{name} must be finite, got {float(np.atleast_1d(arr)[tuple(bad)])!r} at {bad}")
    return arr


def _non_negative(name: str, arr: np.ndarray, strict: bool = False) -> None:
    bad = arr <= 0 if strict else arr < 0
    if bad.any():
        i = int(np.argmax(bad.ravel()))
        rel = "positive" if strict else ">= 0"
        raise ValueError(f"MassSpring.{name} must be {rel}, got {float(arr.ravel()[i])!r} (entry {i})")


@dataclass
class MassSpring:
    """One mass-spring body.

    Attributes:
        vertices: (n, dim) initial positions (m), dim 2 or 3.
        springs: (m, 2) vertex index pairs.
        mass: kg per vertex, scalar or (n,).
        stiffness: N/m per spring, scalar or (m,).
        damping: N s/m of the dashpot along each spring, scalar or (m,).
        rest_length: m per spring; ``None``: the initial distance of its vertices.
        actuator: (m,) actuator index per spring, -1 for a passive spring.
        actuation_strength: rest length factor per unit signal (rest * (1 + strength * signal)).
        velocity: initial velocity (m/s, dim values) of every vertex.
        friction: Coulomb coefficient against the floor and the walls.

    After construction every per-vertex / per-spring entry is a full numpy array.
    """

    vertices: np.ndarray
    springs: np.ndarray
    mass: float | np.ndarray = 1e-3
    stiffness: float | np.ndarray = 100.0
    damping: float | np.ndarray = 0.01
    rest_length: np.ndarray | None = None
    actuator: np.ndarray | None = None
    actuation_strength: float = 0.2
    velocity: np.ndarray | None = None
    friction: float = 0.5

    def __post_init__(self):
        v = _finite("vertices", self.vertices)
        if v.ndim != 2 or v.shape[1] not in (2, 3) or v.shape[0] < 1:
            raise ValueError(f"MassSpring.vertices must have shape (n, 2) or (n, 3), got shape {v.shape}")
        self.vertices = v
        n, dim = v.shape
        s = np.asarray(self.springs)
        if s.size == 0:
            s = np.zeros((0, 2), np.int64)
        if s.ndim != 2 or s.shape[1] != 2 or not np.issubdtype(s.dtype, np.integer):
            raise ValueError(f"MassSpring.springs must be an (m, 2) integer array of vertex pairs, got {s.dtype} "
                             f"of shape {s.shape}")
        out = (s < 0) | (s >= n)
        if out.any():
            k = int(np.argmax(out.any(axis=1)))
            raise ValueError(f"MassSpring.springs: spring {k} {s[k].tolist()} indexes a vertex outside 0..{n - 1}")
        loop = s[:, 0] == s[:, 1]
        if loop.any():
            k = int(np.argmax(loop))
            raise ValueError(f"MassSpring.springs: spring {k} joins vertex {int(s[k, 0])} to itself")
        self.springs = s.astype(np.int32)
        m = len(s)
        self.mass = _finite("mass", self.mass, (n,))
        _non_negative("mass", self.mass, strict=True)
        self.stiffness = _finite("stiffness", self.stiffness, (m,))
        _non_negative("stiffness", self.stiffness)
        self.damping = _finite("damping", self.damping, (m,))
        _non_negative("damping", self.damping)
        if self.rest_length is None:
            rest = np.linalg.norm(v[s[:, 1]] - v[s[:, 0]], axis=1)
            zero = rest <= 0
            if zero.any():
                k = int(np.argmax(zero))
                raise ValueError(f"MassSpring: spring {k} joins coincident vertices {s[k].tolist()} at "
                                 f"{v[s[k, 0]].tolist()}: rest length 0")
            self.rest_length = rest
        else:
            self.rest_length = _finite("rest_length", self.rest_length, (m,))
            _non_negative("rest_length", self.rest_length, strict=True)
        if self.actuator is None:
            self.actuator = np.full(m, -1, np.int32)
        else:
            a = np.asarray(self.actuator)
            if a.shape != (m,) or not np.issubdtype(a.dtype, np.integer) or (a < -1).any():
                raise ValueError(f"MassSpring.actuator must be {m} integers >= -1 (-1: passive), got {self.actuator!r}")
            self.actuator = a.astype(np.int32)
        self.actuation_strength = float(_finite("actuation_strength", self.actuation_strength))
        vel = np.zeros(dim) if self.velocity is None else _finite("velocity", self.velocity).reshape(-1)
        if vel.shape != (dim,):
            raise ValueError(f"MassSpring.velocity must be {dim} values, got {self.velocity!r}")
        self.velocity = vel
        self.friction = float(_finite("friction", self.friction))
        _non_negative("friction", np.array([self.friction]))

    @property
    def dim(self) -> int:
        return int(self.vertices.shape[1])

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_springs(self) -> int:
        return int(self.springs.shape[0])

    @property
    def n_actuators(self) -> int:
        """Action columns this body reads (largest actuator index + 1)."""
        return int(self.actuator.max(initial=-1)) + 1

    def initial_velocities(self) -> np.ndarray:
        """(n, dim) initial velocities (m/s)."""
        return np.tile(self.velocity, (self.n_vertices, 1))

    # ------------------------------------------------------------- constructors
    @classmethod
    def chain(cls, start, end, n: int, bending: bool = True, **kw) -> "MassSpring":
        """A cable of ``n`` vertices evenly spaced from ``start`` to ``end``: springs between
        consecutive vertices and, with ``bending``, across every two edges (i, i + 2)."""
        if not (isinstance(n, (int, np.integer)) and n >= 2):
            raise ValueError(f"MassSpring.chain needs n >= 2 vertices, got {n!r}")
        a, b = np.asarray(start, np.float64), np.asarray(end, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"MassSpring.chain: start {start!r} and end {end!r} differ in dimension")
        verts = a + np.linspace(0.0, 1.0, n)[:, None] * (b - a)
        i = np.arange(n)
        springs = [np.stack([i[:-1], i[1:]], axis=1)]
        if bending and n >= 3:
            springs.append(np.stack([i[:-2], i[2:]], axis=1))
        return cls(verts, np.concatenate(springs), **kw)

    @classmethod
    def grid(cls, lower, upper, cells, diagonals: bool = True, **kw) -> "MassSpring":
        """A lattice box from ``lower`` to ``upper`` with ``cells`` cells per axis (an int or
        one per axis): springs along the lattice edges and, with ``diagonals``, both diagonals
        of every square (2D) or of every face square (3D) -- the shear springs that keep it
        from collapsing. Vertex (i, j[, k]) is number ``np.ravel_multi_index``."""
        lo, hi = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
        dim = lo.shape[0] if lo.ndim == 1 else 0
        if dim not in (2, 3) or hi.shape != lo.shape or not (hi > lo).all():
            raise ValueError(f"MassSpring.grid needs lower < upper, 2 or 3 values each, got {lower!r}, {upper!r}")
        c = np.broadcast_to(np.asarray(cells), (dim,))
        if not np.issubdtype(c.dtype, np.integer) or (c < 1).any():
            raise ValueError(f"MassSpring.grid: cells must be positive integers, got {cells!r}")
        shape = tuple(int(k) + 1 for k in c)
        axes = [np.linspace(lo[d], hi[d], shape[d]) for d in range(dim)]
        verts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, dim)
        offsets = [tuple(int(d == e) for e in range(dim)) for d in range(dim)]
        if diagonals:
            for d in range(dim):
                for e in range(d + 1, dim):
                    for sign in (1, -1):
                        offsets.append(tuple(1 if f == d else sign if f == e else 0 for f in range(dim)))
        idx = np.indices(shape).reshape(dim, -1).T
        springs = []
        for off in offsets:
            other = idx + np.array(off)
            ok = ((other >= 0) & (other < np.array(shape))).all(axis=1)
            a = np.ravel_multi_index(idx[ok].T, shape)
            b = np.ravel_multi_index(other[ok].T, shape)
            springs.append(np.stack([a, b], axis=1))
        return cls(verts, np.concatenate(springs), **kw)


@dataclass(frozen=True)
class SpringsLayout:
    """What a :class:`SpringsPart` is compiled for.

    Attributes:
        dim: 2 or 3.
        nodes, springs: row capacities.
        tool_contact: compile contact with the tools part.
        external_force: compile the ``f_ext`` input written by the coupler.
    """

    dim: int
    nodes: int
    springs: int
    tool_contact: bool
    external_force: bool
    worlds: int = 1  # batched worlds (Scene(n_worlds)): each node meets only its world's tools


@dataclass
class SpringsSpec:
    """What :meth:`SpringsPart.load` writes: the bodies and the scene's environment."""

    bodies: list
    gravity: np.ndarray  # (dim,) m/s^2
    floor: float  # lowest y (m)
    wall_lo: float  # lowest x (and z) (m)
    wall_hi: float  # highest x, y (and z) (m)


@ti.data_oriented
class SpringsPart(Part):
    """Point masses and springs of every :class:`MassSpring` body of a scene."""

    name = "springs"

    def __init__(self, layout: SpringsLayout, K: int, real, tools, controls):
        super().__init__(K, real)
        self.layout = layout
        self.dim = dim = layout.dim
        self.tools, self.controls = tools, controls
        N, M = layout.nodes, layout.springs
        self.capacity = N
        self.x = self.slot_field("x", (dim,), N)
        self.v = self.slot_field("v", (dim,), N)
        # scratch: spring forces on each node (N); f_ext: the coupler's force on each node (N)
        self.force = self.scratch_field((dim,), N)
        self.f_ext = self.scratch_field((dim,), N) if layout.external_force else None
        # constants
        self.mass = ti.field(real, shape=N)  # kg
        # the world of each node (batched layouts): bodies come world-major, the same count per world
        self.node_world = ti.field(ti.i32, shape=N) if layout.worlds > 1 else None
        self.friction = ti.field(real, shape=N)  # Coulomb coefficient against floor and walls
        self.ends = ti.Vector.field(2, ti.i32, shape=M)
        # incidence lists (CSR) for the fused forward's per-node gather: node i's springs are
        # adj_spring[adj_start[i]:adj_start[i + 1]], adj_sign +1 where i is the spring's first end
        self.adj_start = ti.field(ti.i32, shape=N + 1)
        self.adj_spring = ti.field(ti.i32, shape=2 * M)
        self.adj_sign = ti.field(real, shape=2 * M)
        self.rest = ti.field(real, shape=M)  # m
        self.actuator = ti.field(ti.i32, shape=M)  # action column offset within this part, -1 passive
        self.act_strength = ti.field(real, shape=M)
        self.n_springs = ti.field(ti.i32, shape=())
        self.stiffness = ti.field(real, shape=M, needs_grad=True)  # N/m
        self.damping = ti.field(real, shape=M, needs_grad=True)  # N s/m
        self.param("stiffness", "N/m", self.stiffness, lower=0.0, doc="spring stiffness (N/m)")
        self.param("damping", "N s/m", self.damping, lower=0.0, doc="spring dashpot along the spring (N s/m)")
        # environment
        self.gravity = ti.Vector.field(dim, real, shape=())
        self.lo = ti.Vector.field(dim, real, shape=())
        self.hi = ti.Vector.field(dim, real, shape=())
        self.max_move = ti.field(real, shape=())
        self.bad = ti.field(ti.i32, shape=self.S)
        self.vertices = np.zeros((0, dim))  # the loaded bodies' vertices (the coupler's dt estimate reads them)

    def param_rows(self, name: str) -> int:
        return int(self.n_springs[None])

    # ------------------------------------------------------------------ protocol
    def load(self, spec: SpringsSpec) -> None:
        bodies, dim = spec.bodies, self.dim
        N, M = self.layout.nodes, self.layout.springs
        n = sum(b.n_vertices for b in bodies)
        m = sum(b.n_springs for b in bodies)
        if n > N or m > M:
            raise ValueError(f"{n} nodes / {m} springs exceed this layout's capacity {N} / {M}")
        mass, fric = np.ones(N), np.zeros(N)
        ends, rest = np.zeros((M, 2), np.int32), np.ones(M)
        act, strength = np.full(M, -1, np.int32), np.zeros(M)
        k, c = np.zeros(M), np.zeros(M)
        v0 = s0 = a0 = 0
        for b in bodies:
            nv, ns = b.n_vertices, b.n_springs
            mass[v0: v0 + nv] = b.mass
            fric[v0: v0 + nv] = b.friction
            ends[s0: s0 + ns] = b.springs + v0
            rest[s0: s0 + ns] = b.rest_length
            act[s0: s0 + ns] = np.where(b.actuator >= 0, b.actuator + a0, -1)
            strength[s0: s0 + ns] = b.actuation_strength
            k[s0: s0 + ns], c[s0: s0 + ns] = b.stiffness, b.damping
            v0, s0, a0 = v0 + nv, s0 + ns, a0 + b.n_actuators
        self.rows[None] = n
        self.n_springs[None] = m
        self.action_dim = a0
        r = self.np_real
        self.mass.from_numpy(mass.astype(r))
        self.friction.from_numpy(fric.astype(r))
        self.ends.from_numpy(ends)
        node = np.concatenate([ends[:m, 0], ends[:m, 1]])
        order = np.argsort(node, kind="stable")
        adj_spring, adj_sign = np.zeros(2 * M, np.int32), np.zeros(2 * M)
        adj_spring[: 2 * m] = np.concatenate([np.arange(m), np.arange(m)])[order]
        adj_sign[: 2 * m] = np.concatenate([np.ones(m), -np.ones(m)])[order]
        start = np.zeros(N + 1, np.int32)
        start[1:] = np.cumsum(np.bincount(node, minlength=N)[:N])
        self.adj_start.from_numpy(start)
        self.adj_spring.from_numpy(adj_spring)
        self.adj_sign.from_numpy(adj_sign.astype(r))
        self.rest.from_numpy(rest.astype(r))
        self.actuator.from_numpy(act)
        self.act_strength.from_numpy(strength.astype(r))
        self.stiffness.from_numpy(k.astype(r))
        self.damping.from_numpy(c.astype(r))
        self.gravity[None] = np.asarray(spec.gravity, np.float64).tolist()
        lo = np.full(dim, spec.wall_lo)
        lo[1] = spec.floor
        self.lo[None] = lo.tolist()
        self.hi[None] = [spec.wall_hi] * dim
        self.max_move[None] = MAX_MOVE_FRACTION * float(rest[:m].min()) if m else 1.0
        self.vertices = np.concatenate([b.vertices for b in bodies]) if bodies else np.zeros((0, dim))
        W = self.layout.worlds
        if W > 1:
            if len(bodies) % W:
                raise ValueError(f"{len(bodies)} mass-spring bodies do not split into {W} worlds")
            per = len(bodies) // W
            world = np.zeros(N, np.int32)
            world[:n] = np.repeat([k // per for k in range(len(bodies))], [b.n_vertices for b in bodies])
            self.node_world.from_numpy(world)

    def _matrices(self):
        """(masses (n,), spring ends (m, 2), stiffness (m,), damping (m,)) in use, as numpy."""
        n, m = int(self.rows[None]), int(self.n_springs[None])
        return (self.mass.to_numpy()[:n].astype(np.float64), self.ends.to_numpy()[:m],
                self.stiffness.to_numpy()[:m].astype(np.float64), self.damping.to_numpy()[:m].astype(np.float64))

    def _limit(self):
        """(dt limit (s), node attaining it). Symplectic Euler on a damped oscillator
        x'' = -w^2 x - c x' is stable iff dt^2 w^2 / 4 + dt c / 2 < 1 (Jury's criterion on its
        2x2 update matrix). Every mode of the linearized network has w^2 <= lam_k and c <= lam_c,
        the Gershgorin bounds of M^-1/2 K M^-1/2 (row i: sum over its springs of k / m_i +
        k / sqrt(m_i m_j); transverse geometric stiffness k (1 - rest / L) is at most k) and of
        the same for the dashpots. For one mass m on a spring k to a fixed (heavy) anchor this is
        dt < 2 sqrt(m / k); we use half of it, a margin for actuated (stretched) springs and the
        contact and coupling forces the bound does not see."""
        mass, ends, k, c = self._matrices()
        if len(k) == 0:
            return math.inf, -1
        a, b = ends[:, 0], ends[:, 1]
        lam_k, lam_c = np.zeros(len(mass)), np.zeros(len(mass))
        for coef, lam in ((k, lam_k), (c, lam_c)):
            cross = coef / np.sqrt(mass[a] * mass[b])
            np.add.at(lam, a, coef / mass[a] + cross)
            np.add.at(lam, b, coef / mass[b] + cross)
        # largest dt with dt^2 lam_k / 4 + dt lam_c / 2 <= 1, per node
        with np.errstate(divide="ignore", invalid="ignore"):
            root = np.where(lam_k > 0, (np.sqrt(lam_c**2 / 4 + lam_k) - lam_c / 2) / (lam_k / 2),
                            np.where(lam_c > 0, 2.0 / np.maximum(lam_c, 1e-300), np.inf))
        i = int(np.argmin(root))
        return 0.5 * float(root[i]), i

    def stable_dt(self) -> float:
        """Largest safe substep (s) of explicit integration (see :meth:`_limit`)."""
        return self._limit()[0]

    def dt_reason(self) -> str:
        lim, i = self._limit()
        if i < 0:
            return "no springs"
        mass, ends, k, c = self._matrices()
        at = (ends[:, 0] == i) | (ends[:, 1] == i)
        s = int(np.flatnonzero(at)[np.argmax(k[at])])
        return (f"stiffest spring at node {i}: spring {s} k={k[s]:.3g} N/m, damping {c[s]:.3g} N s/m; "
                f"lightest node m={mass.min():.3g} kg, node {i} m={mass[i]:.3g} kg: soften the springs, "
                f"make the nodes heavier or lower dt")

    def health(self, first: int, last: int):
        self.health_check(first, last)
        return self.first_flagged(self.bad.to_numpy(), first, last, {
            BAD_NONFINITE: "mass-spring node state became NaN/inf",
            BAD_OUTSIDE: "mass-spring nodes left the simulation domain",
            BAD_FAST: (f"mass-spring nodes moved more than {MAX_MOVE_FRACTION} of the shortest rest length "
                       f"({self.max_move[None]:.3g} m) in one substep (explicit integration unstable)")})

    @ti.kernel
    def health_check(self, first: ti.i32, last: ti.i32):
        """Flag slots first..last whose nodes are non-finite, outside the unit domain or move
        more than ``max_move`` in one substep."""
        for s in range(first, last + 1):
            self.bad[s] = 0
        for s, i in ti.ndrange((first, last + 1), self.rows[None]):
            flag = self.point_health(self.x[s, i], self.v[s, i], 0.0, 1.0, self.max_move[None])
            if flag != 0:
                ti.atomic_or(self.bad[s], flag)

    # ------------------------------------------------------------------ substep
    @ti.kernel
    def clear_forces(self):
        for i in range(self.rows[None]):
            self.force[i] = ti.zero(self.force[i])

    @ti.kernel
    def accumulate_forces(self, l: ti.i32, t: ti.i32):
        """Spring and dashpot forces of slot ``l`` (action row ``t``), added to both ends."""
        for s in range(self.n_springs[None]):
            a, b = self.ends[s][0], self.ends[s][1]
            f = self._spring_force(s, l, t)
            self.force[a] += f
            self.force[b] -= f

    @ti.func
    def _spring_force(self, s, l, t):
        """Force of spring ``s`` (slot ``l``, action row ``t``) on its first end (minus it on the second)."""
        a, b = self.ends[s][0], self.ends[s][1]
        d = self.x[l, b] - self.x[l, a]
        length = safe_norm(d)
        u = d / length
        rest = self.rest[s]
        act = self.actuator[s]
        if act >= 0:  # a branch, not ti.select: a passive part may have no action column to read
            rest = rest * (1.0 + self.act_strength[s] * self.controls.action[t, self.act_offset[None] + act])
        # tension > 0 pulls a towards b; the dashpot resists the ends separating along u
        tension = self.stiffness[s] * (length - rest) + self.damping[s] * (self.v[l, b] - self.v[l, a]).dot(u)
        return tension * u

    @ti.kernel
    def integrate(self, l: ti.i32, t: ti.i32):
        """Symplectic Euler from slot ``l`` to ``l + 1`` with contact and walls."""
        for i in range(self.rows[None]):
            self._integrate_node(l, t, i, self.force[i])

    @ti.func
    def _integrate_node(self, l, t, i, spring_force):
        dt = self.dt[None]
        m = self.mass[i]
        f = spring_force + m * self.gravity[None]
        if ti.static(self.layout.external_force):
            f += self.f_ext[i]
        x = self.x[l, i]
        v = self.v[l, i] + dt * f / m
        if ti.static(self.layout.tool_contact):
            if ti.static(self.layout.worlds > 1):
                v = self.tools.contact_world(l, t, x, v, self.node_world[i])
            else:
                v = self.tools.contact(l, t, x, v)
        # floor and walls, MPM's "friction" response: a node whose step would cross a wall
        # loses its approaching normal velocity, Coulomb friction scales the tangential part
        x_pred = x + dt * v
        for d in ti.static(range(self.dim)):
            into_wall = (x_pred[d] < self.lo[None][d] and v[d] < 0) or (x_pred[d] > self.hi[None][d] and v[d] > 0)
            if into_wall:
                normal = ti.Vector.unit(self.dim, d, self.real)
                vn = v.dot(normal)
                v = v - vn * normal
                vt = safe_norm(v)
                v = v * ti.max(1.0 - self.friction[i] * ti.abs(vn) / vt, 0.0)
        self.v[l + 1, i] = v
        self.x[l + 1, i] = x + dt * v

    @ti.kernel
    def substep_fused(self, l: ti.i32, t: ti.i32):
        """The whole substep in one launch, forward only: every node gathers its springs' forces
        (each spring evaluated at both ends, no atomics) and integrates. Writes slot ``l + 1``
        as ``clear_forces -> accumulate_forces -> integrate`` do, to round-off (summation
        order), but not the force scratch, which reverse mode restores by replaying those."""
        for i in range(self.rows[None]):
            f = ti.Vector.zero(self.real, self.dim)
            for k in range(self.adj_start[i], self.adj_start[i + 1]):
                f += self.adj_sign[k] * self._spring_force(self.adj_spring[k], l, t)
            self._integrate_node(l, t, i, f)

    @ti.kernel
    def zero_scratch_grads(self):
        """Zero the scratch gradients (one launch; the tape calls it before each substep's adjoints)."""
        for i in range(self.capacity):
            self.force.grad[i] = ti.zero(self.force.grad[i])
            if ti.static(self.layout.external_force):
                self.f_ext.grad[i] = ti.zero(self.f_ext.grad[i])

    def substep(self, tape, l: int, t: int) -> None:
        """One fused launch (a per-node gather: 3 launches and the atomics saved); when recording,
        the phase kernels are recorded for reverse mode: the force launches write scratch the
        integration's adjoint reads, so they are replayed; the clear has no adjoint worth running
        (zero_scratch_grads zeroes force.grad anyway); integrate writes slot ``l + 1`` only."""
        self.substep_fused(l, t)
        tape.record(self.clear_forces, grad=None, replay=True)
        tape.record(self.accumulate_forces, l, t, replay=True)
        tape.record(self.integrate, l, t)

"""Two-way coupling of MPM particles and mass-spring nodes by penalty contact forces.

Every substep, before the solvers step, the coupler writes ``mpm.f_ext`` (force on each
particle, N) and ``springs.f_ext`` (force on each node, N) from slot ``l``: for every
particle-node pair closer than ``radius`` it applies the same force ``f`` to the particle and
``-f`` to the node, so the coupled system's momentum changes only by gravity and the walls.

The force on the particle of a pair at distance ``d`` with unit normal ``n`` (node -> particle)
and relative velocity ``v_rel = v_p - v_node``::

    f_n = s * max(stiffness * (radius - d) - damping * (v_rel . n), 0)     (pushes apart only)
    f_t = -friction * f_n * v_t / sqrt(|v_t|^2 + v_s^2)                     (v_t: tangential v_rel)
    f   = f_n n + f_t

Sampling independence: ``s = p_vol / (radius / 2)^dim``. The number of particles within
``radius`` of a node grows as ``radius^dim / p_vol``, so the total force on a node (and so the
contact's stiffness) does not depend on how finely the MPM body is sampled. At the scene's
default sampling (spacing dx / 2) and radius (dx), s = 1: ``stiffness`` is then the force per
metre of overlap of each particle-node pair.

Friction is Coulomb's law regularized smoothly (the x / sqrt(x^2 + 1) form of tanh, which is
differentiable everywhere, including at v_t = 0): it slips with |f_t| -> friction * f_n for
|v_t| >> v_s and sticks (a viscous force -eta v_t) for |v_t| << v_s. The stick viscosity is
``eta = STICK * m_red / (dt * n_ball)`` (v_s = friction f_n / eta + 1e-6 m/s): it removes at
most the fraction STICK of a pair's relative tangential velocity per substep even when all
``n_ball = ball volume / p_vol`` particles around a node stick to it, so the stick regime is as
stiff as explicit integration allows and never overshoots (m_red the pair's reduced mass).

Neighbour search: one integer launch (replayed before the substep is differentiated, never
differentiated itself) counting-sorts the nodes of slot ``l`` into a cell list (cells of size
>= radius, so the 3^dim cells around a particle hold every node within reach), then lets every
particle visit those cells and list its pairs closer than ``radius``. The force launch is one
flat loop over that pair list, differentiated by Taichi's autodiff. (Visiting the cells inside
the differentiated launch made Taichi's adjoint keep a stack per inner loop, 32 entries by
default: 48 nodes in one cell crashed it; the flat loop needs none.) The list holds
``PAIRS_PER_ROW`` pairs per particle (or node) row; a substep with more is reported by
:meth:`Coupler.health`.
"""


import math
from dataclasses import dataclass

import taichi as ti

from .base import Part

__all__ = ["CouplerLayout", "CouplingSpec", "Coupler"]

#: fraction of a sticking pair's relative tangential velocity friction may remove per substep
STICK = 0.5
#: contact pair capacity per particle (or node) row
PAIRS_PER_ROW = 16
#: velocity floor of the friction regularization (m/s): keeps v_s > 0 where f_n = 0
V_FLOOR = 1e-6


@dataclass(frozen=True)
class CouplerLayout:
    """What a :class:`Coupler` is compiled for: the dimension and the MPM grid (its cell
    list has at most ``res`` cells per axis)."""

    dim: int
    res: int


@dataclass
class CouplingSpec:
    """The MPM <-> mass-spring contact (see the module docstring).

    Attributes:
        stiffness: penalty stiffness (N/m per pair at the default sampling).
        damping: normal dashpot (N s/m per pair at the default sampling).
        friction: Coulomb coefficient.
        radius: contact distance (m); ``None``: one grid cell.
    """

    stiffness: float = 2e3
    damping: float = 2.0
    friction: float = 0.3
    radius: float | None = None


def _ball(dim: int) -> float:
    """Volume of the unit ball (area of the unit disk in 2D)."""
    return math.pi if dim == 2 else 4.0 / 3.0 * math.pi


@ti.data_oriented
class Coupler(Part):
    """Penalty contact between the MPM part's particles and the springs part's nodes."""

    name = "coupler"

    def __init__(self, layout: CouplerLayout, K: int, real, mpm, springs):
        super().__init__(K, real)
        self.layout = layout
        self.dim = dim = layout.dim
        self.mpm, self.springs = mpm, springs
        # stiffness (N/m), damping (N s/m), friction (1) in columns 0, 1, 2 of one row
        self.coef = ti.field(real, shape=(1, 3), needs_grad=True)
        self.param("stiffness", "N/m", self.coef, 0, lower=0.0, doc="coupling penalty stiffness (N/m)")
        self.param("damping", "N s/m", self.coef, 1, lower=0.0, doc="coupling normal damping (N s/m)")
        self.param("friction", "1", self.coef, 2, lower=0.0, doc="coupling Coulomb friction coefficient")
        self.radius = 1.0 / layout.res
        self.r = ti.field(real, shape=())  # contact radius (m)
        self.ref_vol = ti.field(real, shape=())  # (radius / 2)^dim
        self.stick = ti.field(real, shape=())  # STICK / n_ball (the stick viscosity is this * m_red / dt)
        self.inv_cell = ti.field(real, shape=())
        self.ncell = ti.field(ti.i32, shape=())  # cells per axis in use
        nodes = springs.capacity
        cells = layout.res**dim
        self.cell_count = ti.field(ti.i32, shape=cells)
        self.cell_start = ti.field(ti.i32, shape=cells)
        self.node_cell = ti.field(ti.i32, shape=nodes)
        self.node_rank = ti.field(ti.i32, shape=nodes)
        self.sorted = ti.field(ti.i32, shape=nodes)  # node ids ordered by cell
        # contact pairs (particle, node) of the substep; room for PAIRS_PER_ROW per particle or node
        self.pair_capacity = PAIRS_PER_ROW * max(mpm.capacity, nodes)
        self.pairs = ti.Vector.field(2, ti.i32, shape=self.pair_capacity)
        self.n_pairs = ti.field(ti.i32, shape=())
        self.pair_peak = ti.field(ti.i32, shape=())  # most pairs of one substep since the last health check

    def param_rows(self, name: str) -> int:
        return 1

    def load(self, spec: CouplingSpec) -> None:
        """``spec``: a :class:`CouplingSpec`; reads the MPM part's particle volume (load it first)."""
        r = 1.0 / self.layout.res if spec.radius is None else float(spec.radius)
        if not (math.isfinite(r) and 0 < r <= 1.0 / 3.0):
            raise ValueError(f"coupling radius must be in (0, 1/3] m, got {spec.radius!r}")
        for name in ("stiffness", "damping", "friction"):
            p = self.params[name]
            p.set(0, p.check(getattr(spec, name), self.name))
        self.radius = r
        self.r[None] = r
        self.ref_vol[None] = (r / 2) ** self.dim
        p_vol = float(self.mpm.p_vol[None])
        self.stick[None] = STICK * p_vol / (_ball(self.dim) * r**self.dim)
        # cells of size >= radius (at most res per axis), at least 3 per axis so the 3^dim block
        # around a particle's (clamped) cell always lies inside the grid
        n = max(3, min(self.layout.res, int(math.floor(1.0 / r))))
        self.ncell[None] = n
        self.inv_cell[None] = float(n)

    # ------------------------------------------------------------------ stability
    def _limit(self):
        """(dt limit, reason). A node inside material feels all ``n_ball`` particles of its
        radius ball: stiffness s * k * n_ball = k * ball / ref_vol against the node's mass; a
        particle feels the nodes near it (the most nodes within ``radius`` of a node, counted on
        the initial vertices) against the particle's mass. Each is a damped oscillator: Jury's
        bound dt^2 w^2 / 4 + dt c / (2 m) <= 1 (as the springs part), halved for margin."""
        k, c, _ = (self.params[n].get(0) for n in ("stiffness", "damping", "friction"))
        p_vol = float(self.mpm.p_vol[None])
        s = p_vol / float(self.ref_vol[None])
        n_ball = _ball(self.dim) * self.radius**self.dim / p_vol
        m_node = float(self.springs.mass.to_numpy()[: int(self.springs.rows[None])].min())
        m_part = float(self.mpm.particle_mass().min())
        verts = self.springs.vertices
        from scipy.spatial import cKDTree

        near = int(cKDTree(verts).query_ball_point(verts, self.radius, return_length=True).max()) if len(verts) else 1
        cases = [(s * n_ball, m_node, "node"), (s * near, m_part, "particle")]
        best = (math.inf, "")
        for count, m, who in cases:
            w2, cm = k * count / m, c * count / m
            if w2 > 0:
                dt = (math.sqrt(cm**2 / 4 + w2) - cm / 2) / (w2 / 2)
            else:
                dt = 2.0 / cm if cm > 0 else math.inf
            dt *= 0.5
            if dt < best[0]:
                best = (dt, f"coupling stiffness {k:.3g} N/m and damping {c:.3g} N s/m on the lightest {who} "
                            f"m={m:.3g} kg ({count:.3g} pairs): lower them, make the bodies heavier or lower dt")
        return best

    def stable_dt(self) -> float:
        return self._limit()[0]

    def dt_reason(self) -> str:
        return self._limit()[1]

    # ------------------------------------------------------------------ kernels
    @ti.func
    def _cell(self, x, margin: ti.template()):
        """Integer cell coordinates of point ``x``, clamped to ``margin .. n - 1 - margin`` (in
        floating point: integer min/max trips Taichi's CUDA adjoints)."""
        n = self.ncell[None]
        c = ti.min(ti.max(x * self.inv_cell[None], float(margin)), n - margin - 0.5)
        return ti.cast(c, ti.i32)

    @ti.func
    def _flat(self, c):
        n = self.ncell[None]
        out = 0
        for d in ti.static(range(self.dim)):
            out = out * n + c[d]
        return out

    @ti.kernel
    def build_pairs(self, l: ti.i32):
        """The contact pairs of slot ``l`` (integers only): counting sort of the nodes into the
        cell list, then every particle visits the 3^dim cells around it and lists the nodes
        closer than ``radius``."""
        n = self.ncell[None]
        total = n
        for _ in ti.static(range(self.dim - 1)):
            total *= n
        for c in range(total):
            self.cell_count[c] = 0
        for i in range(self.springs.rows[None]):
            c = self._flat(self._cell(self.springs.x[l, i], 0))
            self.node_cell[i] = c
            self.node_rank[i] = ti.atomic_add(self.cell_count[c], 1)
        for _ in range(1):  # serial exclusive prefix sum
            acc = 0
            for c in range(total):
                self.cell_start[c] = acc
                acc += self.cell_count[c]
            self.n_pairs[None] = 0
        for i in range(self.springs.rows[None]):
            self.sorted[self.cell_start[self.node_cell[i]] + self.node_rank[i]] = i
        for p in range(self.mpm.rows[None]):
            xp = self.mpm.x[l, p]
            # the clamp keeps the 3^dim block inside the grid; it still holds xp's own cell
            c0 = self._cell(xp, 1)
            for off in ti.static(ti.grouped(ti.ndrange(*((3,) * self.dim)))):
                c = self._flat(c0 + off - 1)
                for k in range(self.cell_start[c], self.cell_start[c] + self.cell_count[c]):
                    i = self.sorted[k]
                    d = xp - self.springs.x[l, i]
                    if d.dot(d) < self.r[None] ** 2:
                        slot = ti.atomic_add(self.n_pairs[None], 1)
                        if slot < self.pair_capacity:  # overflow: counted, reported by health()
                            self.pairs[slot] = ti.Vector([p, i])
        for _ in range(1):
            self.pair_peak[None] = ti.max(self.pair_peak[None], self.n_pairs[None])

    @ti.kernel
    def forces(self, l: ti.i32):
        """Zero both parts' ``f_ext``, then add every pair's force (particle) and reaction (node)."""
        for p in range(self.mpm.rows[None]):
            self.mpm.f_ext[p] = ti.zero(self.mpm.f_ext[p])
        for i in range(self.springs.rows[None]):
            self.springs.f_ext[i] = ti.zero(self.springs.f_ext[i])
        # one flat loop over the pairs: a loop over each particle's cells here would make Taichi's
        # adjoint keep a stack per inner loop (32 entries by default; more nodes in one cell
        # overflowed it: a crash); the pairs need none
        for k in range(ti.min(self.n_pairs[None], self.pair_capacity)):
            self._pair(l, self.pairs[k][0], self.pairs[k][1])

    @ti.func
    def _pair(self, l, p, i):
        """Force of pair (particle ``p``, node ``i``): added to the particle, subtracted from the node."""
        mpm, spr = self.mpm, self.springs
        r = self.r[None]
        d = mpm.x[l, p] - spr.x[l, i]
        dist = ti.sqrt(d.dot(d) + 1e-24)
        if dist < r:
            n = d / dist
            v_rel = mpm.v[l, p] - spr.v[l, i]
            vn = v_rel.dot(n)
            s = mpm.p_vol[None] / self.ref_vol[None]
            fn = s * ti.max(self.coef[0, 0] * (r - dist) - self.coef[0, 1] * vn, 0.0)
            v_t = v_rel - vn * n
            mp, mi = mpm.p_mass[p], spr.mass[i]
            eta = self.stick[None] * mp * mi / ((mp + mi) * self.dt[None])
            mu = self.coef[0, 2]
            v_s = mu * fn / eta + V_FLOOR
            f = fn * n - mu * fn / ti.sqrt(v_t.dot(v_t) + v_s * v_s) * v_t
            mpm.f_ext[p] += f
            spr.f_ext[i] -= f

    def substep(self, tape, l: int, t: int) -> None:
        # the pair list is integer scratch: replayed (the force adjoint walks it), no adjoint
        tape.launch(self.build_pairs, l, grad=None, replay=True)
        # f_ext is scratch both solvers' adjoints read through their own replays: replayed
        tape.launch(self.forces, l, replay=True)

    def health(self, first: int, last: int):
        """Reports a substep that had more contact pairs than the pair list holds (the forces of
        the pairs beyond it were left out). The slot is not known: reports ``first``."""
        peak = int(self.pair_peak[None])
        self.pair_peak[None] = 0
        if peak > self.pair_capacity:
            return first, (f"{peak} MPM particle / mass-spring node pairs were within the contact radius "
                           f"{self.radius:.3g} m in one substep, more than the {self.pair_capacity} the coupler "
                           f"holds; lower the coupling radius or sample fewer particles or nodes")
        return None


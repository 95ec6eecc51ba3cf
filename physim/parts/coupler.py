"""Two-way coupling of MPM particles with mass-spring nodes and FEM surfaces by penalty forces.

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

**MPM <-> FEM surface** (``fem.f_ext``, added to the gel's nodes at every sub-step): each
particle is paired with its *closest* boundary triangle of the FEM bodies (one pair per
particle, so a particle over an edge or a vertex is pushed once, not by both triangles,
and the closest point, hence the force, is continuous across edges: nothing leaks between
triangles). With ``q = sum_j w_j x_j`` the closest point on the triangle (barycentric
weights ``w``), ``n_f`` its outward normal and ``g = sign((x_p - q) . n_f) |x_p - q|`` the
signed gap (negative once the particle is behind the surface)::

    n   = sign * (x_p - q) / |x_p - q|,   v_rel = v_p - sum_j w_j v_j
    f_n = A_p * max(kc * (fem_radius - g) - cc * (v_rel . n), 0)
    f   = f_n n + f_t      (f_t: the same regularized Coulomb law, coefficient fem_friction)

Friction's stick viscosity is ``eta = STICK m_red n / dt`` per pair, with ``m_red`` the
reduced mass of the particle and the gel behind its footprint (``A_p`` times the nodes'
mass per surface area): at most half the pair's slip is removed per FEM sub-step, however
many particles share a node. ``kc``, ``cc``: the gel's own surface contact law, ``fem.contact_stiffness`` (Pa/m) and
``fem.contact_damping`` (Pa s/m), the same as against the tools; ``A_p = p_vol^(2/3)`` the
surface a particle covers, so ``kc * overlap`` is a contact pressure whatever the
sampling. ``fem_radius`` defaults to half the particle spacing: a particle stands for a
cube of material of that half-width, so material rests on the gel where its surface would
be. ``f`` goes to the particle and ``-w_j f`` to node ``j``: momentum is exchanged exactly.
The gel's surface nodes are light (a DiffTactile dome's weigh ~4 mg), so a penalty stiff
enough to hold material would be unstable at the MPM substep if evaluated once per
substep: the coupler lists the pairs once per substep, but the FEM part evaluates the
pair forces at each of its sub-steps (:meth:`Coupler.face_forces`: the gel at the
sub-step's state, each particle moved on by its velocity), and the particle receives the
mean. The FEM part therefore runs before the MPM part; its stability limit counts the
contact stiffness on its surface nodes, the coupler's limit the particle's side.
The search: a cell list over the gels' bounding box only (at most ``FACE_GRID``^3 cells, each
no smaller than a triangle's grown box); every triangle is listed in the cells its
bounding box (grown by ``fem_radius``) overlaps, so a particle only scans its own cell --
cost linear in particles and triangles, no search over all triangles -- and keeps the closest triangle with
``|g| < fem_radius`` (deeper than that behind the surface a particle is lost, but the
pressure there is already ``2 kc fem_radius``). ``FACE_CELLS`` cell
entries per triangle are allocated (a triangle at rest size overlaps at most 8); more is
reported by :meth:`Coupler.health`.

Batched worlds (``Scene(n_worlds=W)``, :class:`CouplerLayout` ``worlds``): the worlds share
coordinates, so the coupler keeps them apart by their rows' worlds. The node cell list has one
block of cells per world (world-major); a node is sorted into its world's block and a particle
visits only its world's cells. The triangles' cell list is shared (one bounding box over every
world's gels), and a particle skips the triangles of other worlds while it looks for its
closest. The coupling coefficients are one row for every world.
"""


import math
from dataclasses import dataclass

import numpy as np
import taichi as ti

from ..contact.sdf import STICK, penalty_response
from .base import Part

__all__ = ["CouplerLayout", "CouplingSpec", "Coupler"]

#: contact pair capacity per particle (or node) row
PAIRS_PER_ROW = 16
#: cell-list entries per FEM surface triangle
FACE_CELLS = 64
#: most cells per axis of the FEM triangles' cell list (over the gels' bounding box)
FACE_GRID = 32


@dataclass(frozen=True)
class CouplerLayout:
    """What a :class:`Coupler` is compiled for: the dimension and the MPM grid (its cell
    list has at most ``res`` cells per axis)."""

    dim: int
    res: int
    springs: bool = True  #: couple mass-spring nodes
    fem_faces: int = 0  #: capacity of FEM surface triangles (0: no FEM coupling)
    worlds: int = 1  #: batched worlds (Scene(n_worlds)): a particle pairs only with its own world's nodes


@dataclass
class CouplingSpec:
    """The MPM <-> mass-spring and MPM <-> FEM contact (see the module docstring).

    Attributes:
        stiffness: penalty stiffness (N/m per pair at the default sampling).
        damping: normal dashpot (N s/m per pair at the default sampling).
        friction: Coulomb coefficient.
        radius: contact distance (m); ``None``: one grid cell.
        fem_friction: Coulomb coefficient of MPM material on FEM surfaces (``None``: ``friction``).
        fem_radius: reach of the MPM <-> FEM contact (m); ``None``: half the particle spacing.
            (Its stiffness and damping are the gel's ``contact_stiffness`` / ``contact_damping``.)
    """

    stiffness: float = 2e3
    damping: float = 2.0
    friction: float = 0.3
    radius: float | None = None
    fem_friction: float | None = None
    fem_radius: float | None = None


def _ball(dim: int) -> float:
    """Volume of the unit ball (area of the unit disk in 2D)."""
    return math.pi if dim == 2 else 4.0 / 3.0 * math.pi


@ti.data_oriented
class Coupler(Part):
    """Penalty contact of the MPM part's particles with the springs part's nodes and the FEM
    part's surface triangles."""

    name = "coupler"

    def __init__(self, layout: CouplerLayout, K: int, real, mpm, springs, fem=None):
        super().__init__(K, real)
        self.layout = layout
        self.dim = dim = layout.dim
        self.mpm = mpm
        self.springs = springs if layout.springs else None
        self.fem = fem if layout.fem_faces > 0 else None
        self._has_springs = self.springs is not None
        # mass-spring coupling: stiffness (N/m), damping (N s/m), friction (1) in columns 0..2;
        # FEM coupling: friction in column 3
        self.coef = ti.field(real, shape=(1, 4), needs_grad=True)
        if self.springs is not None:
            self.param("stiffness", "N/m", self.coef, 0, lower=0.0, doc="coupling penalty stiffness (N/m)")
            self.param("damping", "N s/m", self.coef, 1, lower=0.0, doc="coupling normal damping (N s/m)")
            self.param("friction", "1", self.coef, 2, lower=0.0, doc="coupling Coulomb friction coefficient")
        if self.fem is not None:
            self.param("fem_friction", "1", self.coef, 3, lower=0.0, doc="MPM-FEM Coulomb friction coefficient")
        self.radius = 1.0 / layout.res
        self.r = ti.field(real, shape=())  # contact radius (m)
        self.fr = ti.field(real, shape=())  # MPM <-> FEM contact radius (m)
        self.fem_radius = 0.0
        self.ref_vol = ti.field(real, shape=())  # (radius / 2)^dim
        self.stick = ti.field(real, shape=())  # STICK / n_ball (the stick viscosity is this * m_red / dt)
        self.inv_cell = ti.field(real, shape=())
        self.ncell = ti.field(ti.i32, shape=())  # cells per axis in use
        # batched layouts: one cell list per world, world-major (world w's cells follow world w - 1's)
        self.worlds = layout.worlds
        cells = layout.res**dim * layout.worlds
        self.cell_count = ti.field(ti.i32, shape=cells)
        self.cell_start = ti.field(ti.i32, shape=cells)
        self.pair_peak = ti.field(ti.i32, shape=())  # most pairs of one substep since the last health check
        self.pair_capacity = 1
        if self.springs is not None:
            nodes = springs.capacity
            self.node_cell = ti.field(ti.i32, shape=nodes)
            self.node_rank = ti.field(ti.i32, shape=nodes)
            self.sorted = ti.field(ti.i32, shape=nodes)  # node ids ordered by cell
            # contact pairs (particle, node) of the substep; room for PAIRS_PER_ROW per particle or node
            self.pair_capacity = PAIRS_PER_ROW * max(mpm.capacity, nodes)
            self.pairs = ti.Vector.field(2, ti.i32, shape=self.pair_capacity)
            self.n_pairs = ti.field(ti.i32, shape=())
        if self.fem is not None:
            self.entry_capacity = FACE_CELLS * layout.fem_faces
            # the triangles' cell list spans only the gels' bounding box (recomputed every substep),
            # FACE_GRID cells per axis at most: its cost does not grow with the MPM grid
            fcells = FACE_GRID**3
            self.face_count = ti.field(ti.i32, shape=fcells)
            self.face_start = ti.field(ti.i32, shape=fcells)
            self.face_fill = ti.field(ti.i32, shape=fcells)
            self.box_lo = ti.Vector.field(3, real, shape=())
            self.box_hi = ti.Vector.field(3, real, shape=())
            self.fcell = ti.field(real, shape=())  # cell size (m)
            self.fcell_min = ti.field(real, shape=())  # smallest cell: the largest rest triangle + 2 fem_radius
            self.fn = ti.Vector.field(3, ti.i32, shape=())  # cells per axis in use
            self.face_entries = ti.field(ti.i32, shape=self.entry_capacity)
            self.n_entries = ti.field(ti.i32, shape=())
            self.entry_peak = ti.field(ti.i32, shape=())
            # (particle, triangle) pairs: at most one per particle
            self.fpairs = ti.Vector.field(2, ti.i32, shape=mpm.capacity)
            self.n_fpairs = ti.field(ti.i32, shape=())

    def param_rows(self, name: str) -> int:
        return 1

    def load(self, spec: CouplingSpec) -> None:
        """``spec``: a :class:`CouplingSpec`; reads the MPM part's particle volume and the FEM
        part's surface (load those first)."""
        r = 1.0 / self.layout.res if spec.radius is None else float(spec.radius)
        if not (math.isfinite(r) and 0 < r <= 1.0 / 3.0):
            raise ValueError(f"coupling radius must be in (0, 1/3] m, got {spec.radius!r}")
        values = {"stiffness": spec.stiffness, "damping": spec.damping, "friction": spec.friction}
        values["fem_friction"] = spec.friction if spec.fem_friction is None else spec.fem_friction
        for name, p in self.params.items():
            p.set(0, p.check(values[name], self.name))
        self.radius = r
        self.r[None] = r
        self.ref_vol[None] = (r / 2) ** self.dim
        p_vol = float(self.mpm.p_vol[None])
        fr = 0.5 * p_vol ** (1.0 / self.dim) if spec.fem_radius is None else float(spec.fem_radius)
        if not (math.isfinite(fr) and 0 < fr <= 1.0 / 3.0):
            raise ValueError(f"fem_radius must be in (0, 1/3] m, got {spec.fem_radius!r}")
        self.fem_radius = fr
        self.fr[None] = fr
        if self.fem is not None:
            n = int(self.fem.n_faces[None])
            f = self.fem.faces.to_numpy()[:n]
            x = self.fem.x.to_numpy()[0, : int(self.fem.rows[None])].astype(np.float64)
            ext = (x[f].max(axis=1) - x[f].min(axis=1)).max() if n else 0.0
            # cells no smaller than a triangle's grown box: each triangle lands in <= 8 cells
            self.fcell_min[None] = float(ext) + 2.0 * fr
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
        the initial vertices; one triangle for a FEM surface) against the particle's mass. Each
        is a damped oscillator: Jury's bound dt^2 w^2 / 4 + dt c / (2 m) <= 1 (as the springs
        part), halved for margin."""
        p_vol = float(self.mpm.p_vol[None])
        s = p_vol / float(self.ref_vol[None])
        n_ball = _ball(self.dim) * self.radius**self.dim / p_vol
        m_part = float(self.mpm.particle_mass().min())
        cases = []
        if self.springs is not None:
            k, c = self.params["stiffness"].get(0), self.params["damping"].get(0)
            m_node = float(self.springs.mass.to_numpy()[: int(self.springs.rows[None])].min())
            verts = self.springs.vertices
            verts = verts[: len(verts) // self.worlds]  # one world's (the worlds start as copies)
            from scipy.spatial import cKDTree

            near = 1
            if len(verts):
                near = int(cKDTree(verts).query_ball_point(verts, self.radius, return_length=True).max())
            cases += [(k, c, s * n_ball, m_node, "mass-spring node"), (k, c, s * near, m_part, "particle")]
        if self.fem is not None:
            # the gel's side is sub-cycled with the FEM part (its limits() count the contact)
            nb = int(self.fem.n_bodies[None])
            k = float(self.fem.kc.to_numpy()[:nb].max()) * p_vol ** (2.0 / self.dim)
            c = float(self.fem.cc.to_numpy()[:nb].max()) * p_vol ** (2.0 / self.dim)
            cases += [(k, c, 1.0, m_part, "particle (against a FEM gel: its contact_stiffness / damping)")]
        best = (math.inf, "")
        for k, c, count, m, who in cases:
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

    @ti.func
    def _n_cells(self):
        n = self.ncell[None]
        total = n
        for _ in ti.static(range(self.dim - 1)):
            total *= n
        return total

    @ti.func
    def _world_offset(self, world):
        """First cell of world ``world``'s cell list (0 in an unbatched layout)."""
        out = 0
        if ti.static(self.worlds > 1):
            out = world * self._n_cells()
        return out

    @ti.func
    def _node_world(self, i):
        out = 0
        if ti.static(self.worlds > 1):
            out = self.springs.node_world[i]
        return out

    @ti.func
    def _particle_world(self, p):
        out = 0
        if ti.static(self.worlds > 1):
            out = self.mpm.p_world[p]
        return out

    @ti.kernel
    def build_pairs(self, l: ti.i32):
        """The contact pairs of slot ``l`` (integers only): counting sort of the nodes into the
        cell list, then every active particle (rows ``0 .. mpm.n_particles - 1``: an emitter's
        particles not emitted yet touch nothing) visits the 3^dim cells around it and lists the
        nodes closer than ``radius``. Batched layouts keep one cell list per world: a particle
        visits only its own world's cells, so it pairs only with its own world's nodes."""
        total = self._n_cells() * self.worlds
        for c in range(total):
            self.cell_count[c] = 0
        for i in range(self.springs.rows[None]):
            c = self._flat(self._cell(self.springs.x[l, i], 0)) + self._world_offset(self._node_world(i))
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
        for p in range(self.mpm.n_particles[None]):
            xp = self.mpm.x[l, p]
            # the clamp keeps the 3^dim block inside the grid; it still holds xp's own cell
            c0 = self._cell(xp, 1)
            base = self._world_offset(self._particle_world(p))
            for off in ti.static(ti.grouped(ti.ndrange(*((3,) * self.dim)))):
                c = self._flat(c0 + off - 1) + base
                for k in range(self.cell_start[c], self.cell_start[c] + self.cell_count[c]):
                    i = self.sorted[k]
                    d = xp - self.springs.x[l, i]
                    if d.dot(d) < self.r[None] ** 2:
                        slot = ti.atomic_add(self.n_pairs[None], 1)
                        if slot < self.pair_capacity:  # overflow: counted, reported by health()
                            self.pairs[slot] = ti.Vector([p, i])
        for _ in range(1):
            self.pair_peak[None] = ti.max(self.pair_peak[None], self.n_pairs[None])

    @ti.func
    def _fcell(self, x):
        """Cell of point ``x`` in the triangles' cell list, clamped into it."""
        c = (x - self.box_lo[None]) / self.fcell[None]
        out = ti.Vector([0, 0, 0])
        for d in ti.static(range(3)):
            out[d] = ti.cast(ti.min(ti.max(c[d], 0.0), self.fn[None][d] - 0.5), ti.i32)
        return out

    @ti.func
    def _fflat(self, c):
        n = self.fn[None]
        return (c[0] * n[1] + c[1]) * n[2] + c[2]

    @ti.func
    def _face_box(self, l, f):
        """Cell range (lo, hi inclusive) of triangle ``f``'s bounding box grown by the radius."""
        ids = self.fem.faces[f]
        a, b, c = self.fem.x[l, ids[0]], self.fem.x[l, ids[1]], self.fem.x[l, ids[2]]
        grow = self.fr[None]
        lo = ti.min(ti.min(a, b), c) - grow
        hi = ti.max(ti.max(a, b), c) + grow
        return self._fcell(lo), self._fcell(hi)

    @ti.kernel
    def build_face_pairs(self, l: ti.i32):
        """Slot ``l``'s particle -> closest FEM surface triangle pairs (integers only): the
        gels' bounding box (grown by the radius) gets a cell list of at most FACE_GRID^3
        cells, each no smaller than a grown triangle; every triangle is listed in the cells its
        grown bounding box overlaps (count, prefix sum, fill); every active particle (rows
        ``0 .. mpm.n_particles - 1``) inside the box scans its own cell's triangles. Cost:
        linear in triangles and particles, and in FACE_GRID^3, not in the MPM grid."""
        big = 1e30
        for _ in range(1):
            self.box_lo[None] = ti.Vector([big, big, big])
            self.box_hi[None] = ti.Vector([-big, -big, -big])
        for i in range(self.fem.rows[None]):
            ti.atomic_min(self.box_lo[None], self.fem.x[l, i])
            ti.atomic_max(self.box_hi[None], self.fem.x[l, i])
        for _ in range(1):  # serial: the cell size and counts, then the prefix sum below
            self.box_lo[None] -= self.fr[None]
            self.box_hi[None] += self.fr[None]
            ext = self.box_hi[None] - self.box_lo[None]
            h = ti.max(self.fcell_min[None], ext.max() / FACE_GRID)
            self.fcell[None] = h
            for d in ti.static(range(3)):
                self.fn[None][d] = ti.min(ti.max(ti.cast(ext[d] / h, ti.i32) + 1, 1), FACE_GRID)
        total = self.fn[None][0] * self.fn[None][1] * self.fn[None][2]
        for c in range(total):
            self.face_count[c] = 0
            self.face_fill[c] = 0
        for f in range(self.fem.n_faces[None]):
            lo, hi = self._face_box(l, f)
            for i, j, k in ti.ndrange((lo[0], hi[0] + 1), (lo[1], hi[1] + 1), (lo[2], hi[2] + 1)):
                ti.atomic_add(self.face_count[self._fflat(ti.Vector([i, j, k]))], 1)
        for _ in range(1):  # serial exclusive prefix sum
            acc = 0
            for c in range(total):
                self.face_start[c] = acc
                acc += self.face_count[c]
            self.n_entries[None] = acc
            self.entry_peak[None] = ti.max(self.entry_peak[None], acc)
            self.n_fpairs[None] = 0
        for f in range(self.fem.n_faces[None]):
            lo, hi = self._face_box(l, f)
            for i, j, k in ti.ndrange((lo[0], hi[0] + 1), (lo[1], hi[1] + 1), (lo[2], hi[2] + 1)):
                c = self._fflat(ti.Vector([i, j, k]))
                slot = self.face_start[c] + ti.atomic_add(self.face_fill[c], 1)
                if slot < self.entry_capacity:  # overflow: reported by health()
                    self.face_entries[slot] = f
        for p in range(self.mpm.n_particles[None]):
            xp = self.mpm.x[l, p]
            inside = True
            for d in ti.static(range(3)):
                if xp[d] < self.box_lo[None][d] or xp[d] > self.box_hi[None][d]:
                    inside = False
            if inside:
                c = self._fflat(self._fcell(xp))
                best, best_g = -1, 0.0
                for k in range(self.face_start[c], ti.min(self.face_start[c] + self.face_count[c],
                                                          self.entry_capacity)):
                    f = self.face_entries[k]
                    ids = self.fem.faces[f]
                    mine = True
                    if ti.static(self.worlds > 1):  # the worlds share the cell list: keep to the particle's
                        mine = self.fem.node_world[ids[0]] == self.mpm.p_world[p]
                    if mine:
                        g, _n, _w, _d = self._closest(xp, self.fem.x[l, ids[0]], self.fem.x[l, ids[1]],
                                                      self.fem.x[l, ids[2]])
                        if g > -self.fr[None] and g < self.fr[None]:
                            if best < 0 or ti.abs(g) < ti.abs(best_g):
                                best, best_g = f, g
                if best >= 0:
                    slot = ti.atomic_add(self.n_fpairs[None], 1)
                    self.fpairs[slot] = ti.Vector([p, best])

    @ti.func
    def _closest(self, xp, a, b, c):
        """(signed gap g, contact normal n, barycentric weights w, unsigned distance) of point
        ``xp`` and the triangle (a, b, c) (outward by its winding; module docstring). Pure
        expressions (no mutable locals): the closest point is the nearest of the face's
        interior projection (when inside) and the three edges' clamped projections."""
        ab, ac = b - a, c - a
        nf = ab.cross(ac)
        nf = nf / ti.sqrt(nf.dot(nf) + 1e-30)
        # interior: barycentrics of the projection
        d00, d01, d11 = ab.dot(ab), ab.dot(ac), ac.dot(ac)
        ap = xp - a
        d20, d21 = ap.dot(ab), ap.dot(ac)
        den = d00 * d11 - d01 * d01 + 1e-30
        wv = (d11 * d20 - d01 * d21) / den
        ww = (d00 * d21 - d01 * d20) / den
        wu = 1.0 - wv - ww
        inside = wu >= 0 and wv >= 0 and ww >= 0
        q0 = wu * a + wv * b + ww * c
        e0 = ti.select(inside, (xp - q0).dot(xp - q0), 1e30)
        # edges a-b, b-c, c-a
        t1 = ti.min(ti.max(ap.dot(ab) / (d00 + 1e-30), 0.0), 1.0)
        q1 = a + t1 * ab
        e1 = (xp - q1).dot(xp - q1)
        bc = c - b
        t2 = ti.min(ti.max((xp - b).dot(bc) / (bc.dot(bc) + 1e-30), 0.0), 1.0)
        q2 = b + t2 * bc
        e2 = (xp - q2).dot(xp - q2)
        ca = a - c
        t3 = ti.min(ti.max((xp - c).dot(ca) / (ca.dot(ca) + 1e-30), 0.0), 1.0)
        q3 = c + t3 * ca
        e3 = (xp - q3).dot(xp - q3)
        w0 = ti.Vector([wu, wv, ww])
        w1 = ti.Vector([1.0 - t1, t1, 0.0])
        w2 = ti.Vector([0.0, 1.0 - t2, t2])
        w3 = ti.Vector([t3, 0.0, 1.0 - t3])
        use0 = e0 <= e1 and e0 <= e2 and e0 <= e3
        use1 = (not use0) and e1 <= e2 and e1 <= e3
        use2 = (not use0) and (not use1) and e2 <= e3
        e = ti.select(use0, e0, ti.select(use1, e1, ti.select(use2, e2, e3)))
        q = ti.select(use0, q0, ti.select(use1, q1, ti.select(use2, q2, q3)))
        w = ti.select(use0, w0, ti.select(use1, w1, ti.select(use2, w2, w3)))
        dist = ti.sqrt(e + 1e-24)
        d = xp - q
        side = ti.select(d.dot(nf) >= 0, 1.0, -1.0)
        # contact normal: along x_p - q (continuous across edges); the face normal on the surface
        n = ti.select(dist > 1e-9, side * d / dist, nf)
        return side * dist, n, w, dist

    @ti.kernel
    def forces(self, l: ti.i32):
        """Zero the parts' ``f_ext``, then add every pair's force (particle) and reaction (nodes)."""
        for p in range(self.mpm.rows[None]):
            self.mpm.f_ext[p] = ti.zero(self.mpm.f_ext[p])
        if ti.static(self._has_springs):
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
            s = mpm.p_vol[None] / self.ref_vol[None]
            fn = s * ti.max(self.coef[0, 0] * (r - dist) - self.coef[0, 1] * v_rel.dot(n), 0.0)
            mp, mi = mpm.p_mass[p], spr.mass[i]
            eta = self.stick[None] * mp * mi / ((mp + mi) * self.dt[None])
            f = penalty_response(fn, n, v_rel, eta, self.coef[0, 2])
            mpm.f_ext[p] += f
            spr.f_ext[i] -= f

    @ti.kernel
    def face_forces(self, l: ti.i32, k: ti.i32, n: ti.i32):
        """The MPM <-> FEM pair forces at the FEM part's sub-step ``k`` of ``n`` (called by it):
        the gel at its ring state ``k``, each particle at slot ``l`` moved on by its velocity
        to the sub-step's time. Reactions go to ``fem.f_ext[k]``, the forces' mean over the
        sub-steps to ``mpm.f_ext`` (the MPM part steps after the FEM part)."""
        for q in range(self.n_fpairs[None]):
            self._face_pair(l, k, n, self.fpairs[q][0], self.fpairs[q][1])

    @ti.func
    def _face_pair(self, l, k, n, p, f):
        """Force of pair (particle ``p``, FEM surface triangle ``f``) at sub-step ``k``: its mean
        share added to the particle, the reaction split to the triangle's nodes by the
        barycentric weights of the closest point."""
        mpm, fem = self.mpm, self.fem
        r = self.fr[None]
        vp = mpm.v[l, p]
        xp = mpm.x[l, p] + (k / n) * self.dt[None] * vp
        ids = fem.faces[f]
        g, nrm, w, _d = self._closest(xp, fem.xs[k, ids[0]], fem.xs[k, ids[1]], fem.xs[k, ids[2]])
        if g < r:
            v_surf = w[0] * fem.vs[k, ids[0]] + w[1] * fem.vs[k, ids[1]] + w[2] * fem.vs[k, ids[2]]
            v_rel = vp - v_surf
            b = fem.node_body[ids[0]]
            area = ti.pow(mpm.p_vol[None], 2.0 / 3.0)
            # the gel's mass behind the particle's footprint: node mass per surface area (a
            # kinematic node, of no area, counts as infinitely heavy), times the footprint
            m_area = (w[0] * self._node_mass(ids[0]) / ti.max(fem.anode[ids[0]], 1e-30)
                      + w[1] * self._node_mass(ids[1]) / ti.max(fem.anode[ids[1]], 1e-30)
                      + w[2] * self._node_mass(ids[2]) / ti.max(fem.anode[ids[2]], 1e-30))
            m_s = area * m_area
            mp = mpm.p_mass[p]
            m_red = mp * m_s / (mp + m_s)
            # stick: remove at most STICK of the pair's slip per FEM sub-step (dt / n)
            eta = STICK * m_red * n / self.dt[None]
            fn = area * ti.max(fem.kc[b] * (r - g) - fem.cc[b] * v_rel.dot(nrm), 0.0)
            fv = penalty_response(fn, nrm, v_rel, eta, self.coef[0, 3])
            mpm.f_ext[p] += fv / n
            for j in ti.static(range(3)):
                fem.f_ext[k, ids[j]] -= w[j] * fv

    @ti.func
    def _node_mass(self, i):
        return self.fem.density[self.fem.node_body[i]] * self.fem.vnode[i]

    def substep(self, tape, l: int, t: int) -> None:
        # the pair lists are integer scratch: replayed (the force adjoint walks them), no adjoint
        if self.springs is not None:
            tape.launch(self.build_pairs, l, grad=None, replay=True)
        if self.fem is not None:
            tape.launch(self.build_face_pairs, l, grad=None, replay=True)
        # f_ext is scratch the solvers' adjoints read through their own replays: replayed
        tape.launch(self.forces, l, replay=True)

    def health(self, first: int, last: int):
        """Reports a substep that had more contact pairs (or FEM cell entries) than the coupler
        holds (the forces beyond them were left out). The slot is not known: reports ``first``."""
        peak = int(self.pair_peak[None])
        self.pair_peak[None] = 0
        if peak > self.pair_capacity:
            return first, (f"{peak} MPM particle / mass-spring node pairs were within the contact radius "
                           f"{self.radius:.3g} m in one substep, more than the {self.pair_capacity} the coupler "
                           f"holds; lower the coupling radius or sample fewer particles or nodes")
        if self.fem is not None:
            peak = int(self.entry_peak[None])
            self.entry_peak[None] = 0
            if peak > self.entry_capacity:
                return first, (f"the FEM surface triangles overlapped {peak} contact cells in one substep, more "
                               f"than the {self.entry_capacity} the coupler holds ({FACE_CELLS} per triangle): "
                               f"the gel's surface triangles were stretched far beyond their rest size (or the gels "
                               f"are spread so far apart that their bounding box needs cells larger than "
                               f"{FACE_GRID}^3); check the gel for a blow-up")
        return None

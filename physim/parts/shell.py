"""Thin shells (cloth, paper, card, rubber sheets) as a part: implicit Euler by Newton, with
an implicit-function-theorem adjoint.

User-facing: :class:`physim.ShellBody` (a :class:`physim.ShellMesh` with a
:class:`physim.ShellMaterial`), added with :meth:`physim.Scene.add_shell`. The scene's bodies are
concatenated into one :class:`ShellPart` (3D only). State: ``shell.x``, ``shell.v`` ((n, 3)
vertex positions in m and velocities in m/s), ``shell.rest_angle`` (h,) the rest dihedral angle of
every hinge (rad; it moves when a crease yields) and ``shell.plastic`` (h,) the accumulated plastic
angle of every hinge (rad, for hardening); with FEM pads in the scene also ``shell.f_pad`` ((fem nodes, 3),
N) the sheets' relaxed contact force on the pads' nodes, applied by the FEM part in the next substep
(:mod:`physim.parts.shell_contact`; two-way coupling, the default: :meth:`ShellPart.set_pad_reaction`
switches it off, leaving the gel a one-way obstacle that never feels the sheets). Parameters, one row
per body: ``shell.E`` (Pa), ``shell.nu``, ``shell.thickness`` (m, not differentiable), ``shell.density`` (kg/m^3),
``shell.bending`` (the bending stiffness D, N m), ``shell.yield_angle`` (deg), ``shell.hardening``,
``shell.damping`` (1/s), ``shell.contact_stiffness`` (Pa/m) and ``shell.wall_friction``; the tools'
Coulomb coefficients are ``tools.friction``.

Energies
    Membrane (per triangle, St. Venant-Kirchhoff in plane stress): ``F = Ds Dm^-1`` (3 x 2: the
    deformed edge vectors over the rest edges in the triangle's own 2D rest frame), Green strain
    ``G = (F^T F - I) / 2``, ``Psi = t A (mu |G|^2 + lam/2 tr(G)^2)`` with ``mu = E / (2 (1 + nu))``
    and the plane-stress ``lam = E nu / (1 - nu^2)``. It depends on the strain tensor only, so the
    response to a stretch does not depend on how a region is triangulated (tested).

    Bending (per interior edge, discrete shells, Grinspun et al. 2003): ``k_e (theta - theta_rest)^2``
    with ``k_e = D |e|^2 / (2 (A1 + A2))``, i.e. ``(1/6) D * 3 |e|^2 / (A1 + A2)``. The constant: on
    a sheet bent to a cylinder of curvature kappa, inscribed vertices put all the curvature on the
    edges along the axis (``theta = kappa s``, ``s`` the spacing across), and
    ``sum_e 3 |e|^2 / (A1 + A2) theta^2`` tends to ``3 kappa^2 A`` -- on a rectangle grid bent about
    either grid axis (any diagonal pattern) and on an equilateral mesh bent about any direction
    (measured: 2.97-2.97 at 0-90 degrees) -- so 1/6 recovers the plate energy ``D kappa^2 / 2`` per
    area. (A rectangle grid bent about a diagonal gives 2.6-4.5: the known mesh dependence of hinge
    energies.) ``theta`` is the signed dihedral angle ``atan2((n1 x n2) . e/|e|, n1 . n2)`` (never
    acos), ``n1 = e x (xa - x0)``, ``n2 = (xb - x0) x e`` for the hinge ``[e0, e1, a, b]``; its
    gradient (hand-written, Bridson et al. 2003): ``d theta / d xa = -|e| n1 / |n1|^2``,
    ``d theta / d xb = -|e| n2 / |n2|^2``, and for the edge's ends ``d/dx0 = -(1 - s_a) d/dxa -
    (1 - s_b) d/dxb``, ``d/dx1 = -s_a d/dxa - s_b d/dxb`` with ``s = (x - x0) . e / |e|^2``.

    Plastic creases: after each step, hinge by hinge, with ``d = theta - theta_rest`` and the yield
    angle ``y = yield_angle + hardening * plastic``: if ``|d| > y`` the rest angle moves by the
    excess (``theta_rest <- theta - sign(d) y``) and ``plastic += |d| - y``. Its adjoint is Taichi's
    of that kernel: exact on each branch (``d theta_rest' / d theta`` is 1 on a yielding hinge, 0
    on an elastic one; ``d / d yield_angle`` is ``-sign(d)`` on a yielding hinge), undefined only on
    the measure-zero set ``|d| = y``. No gradient leaks through a hinge that does not yield.

    Contact (every scene tool except the ones a body is attached to, and the floor, walls and
    ceiling of the unit box as planes): ``0.5 k (phi - eps)^2`` where the signed distance ``phi``
    to the surface is below ``eps`` = half the thickness + :data:`MARGIN`; ``k`` =
    ``contact_stiffness`` times the vertex's lumped area (N/m). The tools are where they are at the
    end of the substep (slot ``l + 1``). Friction is lagged (IPC, Li et al. 2020): the normal force
    ``lam = k (eps - phi)`` and normal ``n`` at the start of the step (``x_n``, tools at slot ``l``)
    give the potential ``mu lam (sqrt(|u|^2 + eps_u^2) - eps_u)`` of the tangential slip
    ``u = (I - n n^T)(x - y)``, ``y`` where the tool's material point at ``x_n`` moves to over the
    step, ``eps_u = V_SMOOTH dt`` (smooth, strictly convex; sticks below ``V_SMOOTH``). ``mu`` is
    ``tools.friction`` (differentiable) or ``shell.wall_friction``.

    Shell <-> shell contact (bodies with ``ShellBody.self_contact``; parameters
    ``shell.self_contact_stiffness`` and ``shell.self_friction``): a barrier on vertex-triangle and
    edge-edge distances with lagged friction between sheets, inside E, with a collision-aware step
    bound and its exact pair Hessians (:mod:`physim.parts.shell_contact`). Off (no such body):
    nothing of it is compiled or run.

Time integration (implicit Euler as incremental potential):
    ``E(x) = |x - x_hat|_M^2 / (2 dt^2) + alpha |x - x_n|_M^2 / (2 dt) + Psi(x)``,
    ``x_hat = x_n + dt v_n + dt^2 g``, ``M`` the lumped mass (density t A / 3 per vertex),
    ``alpha`` the mass-proportional damping; ``v_{n+1} = (x_{n+1} - x_n) / dt``. Minimized by a
    truncated Newton method: the residual ``r = grad E`` by hand-written kernels
    (:meth:`ShellPart.residual`: per vertex, per triangle, per hinge); Hessian-vector products
    exactly by Taichi's reverse mode of those kernels (``r.grad = p`` -> ``x.grad = H p``; H is
    symmetric; :meth:`ShellPart.residual_vjp`). The linear solve (``set_newton(linear_solver=...)``):
    by default (up to :data:`DIRECT_MAX_DOFS` free dofs) H is assembled exactly by Curtis-Powell-Reid
    compression -- the vertices are coloured at load time so that no vertex has two stencil
    neighbours (sharing a triangle or a hinge) of one colour, and one Hessian-vector product per
    colour and axis (~20-30 colours on grids) gives every 3 x 3 block -- and factored by scipy's
    ``splu`` with diagonal pivots (a pivot <= 0 means H is not positive definite -- a compressed
    membrane, St. Venant-Kirchhoff in compression, the more often the finer the mesh, as the mass
    term ``M / dt^2`` per vertex falls with its area while the membrane's stiffness stays ``E t``:
    then the modified Newton step of ``H + tau M / dt^2``, ``tau`` grown by :data:`SHIFT_GROWTH`
    from a factor :data:`SHIFT_GROWTH` below the last ``tau`` that worked in the substep until the pivots are
    positive -- a descent direction continuous in the iterate; a switch to truncated CG there made
    the minimum reached, where a compressed sheet can buckle either way, depend on round-off; or,
    with ``set_newton(modified_step="project")``, projected Newton: H plus the negative part of every
    compressed triangle's membrane Hessian (:meth:`ShellPart.membrane_hessian`: the triangle's
    Hessian projected onto the positive semi-definite cone), positive definite where bending and
    contact are; not the default: on the cloth dropped on a sphere at 64 x 64 it converged linearly
    (the projection stiffens the wrinkling modes the sheet has to move along) and hit ``max_newton``
    where the shift converged; where H is positive definite the step is Newton's); otherwise preconditioned CG
    (Jacobi, from the mass and a per-vertex stiffness estimate), truncated at the first negative curvature;
    backtracking line search with the Armijo test on E (where E's change is at its round-off,
    within ``ENERGY_ROUNDOFF`` epsilons, a step that lowers ``|r|`` instead); each iteration moves no vertex by more
    than :data:`STEP_BOUND` of the shortest rest edge (contact cannot be stepped over). Stops when
    ``|r| <= rtol |M g|`` (``rtol`` = :attr:`ShellPart.rtol`, 1e-10 in f64, 1e-4 in f32) or when
    ``|r|`` is below its round-off floor ``ROUNDOFF * eps * |(k_i |x_i|)_i|`` (``k_i`` the Jacobi
    stiffness estimate of vertex i: a stiff card cannot resolve its forces below that; a floor
    above ``FLOOR_MAX |M g|``, e.g. paper in f32, is reported as not converged), or after
    :attr:`ShellPart.max_newton` iterations: then the step is recorded as not converged, a
    :class:`NewtonWarning` is issued, and :meth:`physim.Scene.backward` raises
    :class:`NewtonNotConverged` naming the substep and the residual (the adjoint would be of
    another function).

Reverse mode: one launch per substep with a hand-written adjoint (:meth:`ShellPart.step_grad`).
At the converged ``x_{n+1}``, with ``g = dL/dx_{n+1} + dL/dv_{n+1} / dt`` on the free vertices,
``H lam = g`` is solved (H assembled and factored at ``x_{n+1}``, with one step of iterative
refinement, or CG, as in the forward); then every other gradient is one vector-Jacobian product of the residual
kernels with ``-lam`` (their Taichi adjoints, :meth:`ShellPart.residual_vjp`), run on private copies of
its inputs (``x_n``, ``v_n``, the rest angles, the tool poses and frictions, the parameters),
whose gradients are then added to the state's, the tools' and the parameters': the residual
depends on ``x_n``, ``v_n`` (through ``x_hat``, the damping and the lagged friction), the rest
angles, the tool poses at both ends of the step, every parameter and the kinematic vertices
(which follow their tool). The crease update is a second launch with Taichi's adjoint.
"""


import math
import warnings
from dataclasses import dataclass

import numpy as np
import taichi as ti

from .. import backend
from ..contact.sdf import tool_sdf
from ..solvers._linalg import rotation_matrix
from .base import BAD_NONFINITE, BAD_OUTSIDE, Part

__all__ = ["ShellPart", "ShellLayout", "ShellSpec", "NewtonWarning", "NewtonNotConverged",
           "MARGIN", "V_SMOOTH", "STEP_BOUND", "DIRECT_MAX_DOFS", "DEFAULT_CONTACT_STIFFNESS", "dihedral_angles"]

#: contact offset beyond half the sheet thickness (m)
MARGIN = 5e-4
#: friction smoothing velocity (m/s): slips slower than this are resisted viscously (static friction)
V_SMOOTH = 1e-3
#: the most a vertex moves in one Newton iteration, as a fraction of the shortest rest edge
STEP_BOUND = 0.5
#: the residual test passes below this many machine epsilons of |K x| (its round-off floor)
ROUNDOFF = 10.0
#: a solve whose round-off floor exceeds this fraction of |M g| is refused (reported as not converged)
FLOOR_MAX = 1e-2
FORCING = 1e-2
#: modified Newton (direct solver): where H is not positive definite, H + tau M / dt^2 is factored, tau from
#: max(SHIFT_START, last tau / SHIFT_GROWTH) times SHIFT_GROWTH per try, SHIFT_TRIES tries
#: (:meth:`ShellPart._direct_newton_step`)
SHIFT_START = 1e-3
SHIFT_GROWTH = 4.0
SHIFT_TRIES = 40
#: a change of E below this many epsilons of |E| is round-off: the line search then asks |r| to decrease
ENERGY_ROUNDOFF = 1e3
#: linear_solver="auto" factors H directly up to this many free degrees of freedom (3 per free vertex). Measured
#: (benchmarks/README.md, "Thin shells"): a 224 x 224 cloth, 150,528 dofs, 4.9e6 nonzeros in H, factors with
#: 2.7e7 nonzeros in L + U (splu, MMD_AT_PLUS_A ordering) in 19 s on two loaded cores; Jacobi-preconditioned CG
#: stalls there (400 iterations per Newton iteration, stopped at 1e-5 |M g|)
DIRECT_MAX_DOFS = 200000
#: default contact stiffness (Pa/m: contact pressure per metre of penetration)
DEFAULT_CONTACT_STIFFNESS = 1e7
# vertex kinds
FREE, PINNED = -2, -1
# columns of the work copy of the parameters
C_E, C_NU, C_T, C_RHO, C_D, C_ALPHA, C_KC, C_WMU, C_SKC, C_SMU, C_PMU = range(11)
N_COLS = 11


class NewtonWarning(UserWarning):
    """A shell substep's Newton solve stopped before its residual test passed."""


class NewtonNotConverged(RuntimeError):
    """Reverse mode through a shell substep whose Newton solve did not converge."""


def dihedral_angles(x: np.ndarray, hinges: np.ndarray) -> np.ndarray:
    """Signed dihedral angles (rad) of ``hinges`` (h, 4) at positions ``x`` (n, 3): numpy twin of
    the kernels' ``atan2((n1 x n2) . e/|e|, n1 . n2)``."""
    x0, x1, xa, xb = (x[hinges[:, k]] for k in range(4))
    e = x1 - x0
    n1 = np.cross(e, xa - x0)
    n2 = np.cross(xb - x0, e)
    return np.arctan2((np.cross(n1, n2) * e).sum(-1) / np.linalg.norm(e, axis=-1), (n1 * n2).sum(-1))


@dataclass(frozen=True)
class ShellLayout:
    """What a :class:`ShellPart` is compiled for (row capacities)."""

    nodes: int
    tris: int
    hinges: int
    bodies: int
    #: shell <-> shell contact pair capacity (0: no body has ``self_contact``, nothing compiled)
    contact_pairs: int = 0
    #: FEM node capacity of the scene's pads (0: no FEM part; else its surface is an obstacle of the shells)
    fem_nodes: int = 0


@dataclass
class ShellSpec:
    """What :meth:`ShellPart.load` writes."""

    bodies: list
    tool_poses: list  # (position (3,), quaternion (4,)) of every tool at the start
    tool_shapes: list  # (shape id, size (3,)) of every tool
    gravity: np.ndarray
    floor: float
    wall_lo: float
    wall_hi: float
    wall_friction: float = 0.3


def _quat_matrix(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


@ti.func
def _hinge_grad(x0, x1, xa, xb):
    """(theta, d theta/d x0, d/d x1, d/d xa, d/d xb) of a hinge (module docstring)."""
    e = x1 - x0
    n1 = e.cross(xa - x0)
    n2 = (xb - x0).cross(e)
    le2 = e.dot(e)
    le = ti.sqrt(le2)
    theta = ti.atan2(n1.cross(n2).dot(e) / le, n1.dot(n2))
    ga = -le / n1.dot(n1) * n1
    gb = -le / n2.dot(n2) * n2
    sa = (xa - x0).dot(e) / le2
    sb = (xb - x0).dot(e) / le2
    g0 = -(1.0 - sa) * ga - (1.0 - sb) * gb
    g1 = -sa * ga - sb * gb
    return theta, g0, g1, ga, gb


@ti.func
def _theta(x0, x1, xa, xb):
    e = x1 - x0
    n1 = e.cross(xa - x0)
    n2 = (xb - x0).cross(e)
    return ti.atan2(n1.cross(n2).dot(e) / ti.sqrt(e.dot(e)), n1.dot(n2))


@ti.data_oriented
class ShellPart(Part):
    """The thin-shell bodies of a scene (module docstring)."""

    name = "shell"

    def __init__(self, layout: ShellLayout, K: int, real, tools, controls):
        super().__init__(K, real)
        self.layout = layout
        self.tools, self.controls = tools, controls
        N, T, H, B = layout.nodes, layout.tris, layout.hinges, layout.bodies
        E = max(tools.capacity, 1)
        self.capacity = N
        self.x = self.slot_field("x", (3,), N)
        self.v = self.slot_field("v", (3,), N)
        self.rest_angle = self.slot_field("rest_angle", (), H, group="hinges")
        self.plastic = self.slot_field("plastic", (), H, group="hinges")
        self.n_hinges = self.group_rows("hinges")
        #: the sheets' contact force on every FEM pad node (N), from the substep that ended at the slot (scenes
        #: with FEM pads: the FEM part adds slot l's to its nodes in substep l, see :meth:`attach_fem`)
        self.f_pad = None
        if layout.fem_nodes:
            self.f_pad = self.slot_field("f_pad", (3,), layout.fem_nodes, group="pad_nodes")
            self.n_pad_nodes = self.group_rows("pad_nodes")
        #: whether the sheets' reaction acts on the FEM pads (:meth:`set_pad_reaction`)
        self.pad_reaction = True
        # constants
        self.tri = ti.Vector.field(3, ti.i32, shape=T)
        self.Dminv = ti.Matrix.field(2, 2, real, shape=T)
        self.area = ti.field(real, shape=T)
        self.tri_gn = ti.Vector.field(3, real, shape=T)  # |grad N_a|^2 of the 3 corners (1/m^2)
        self.tri_body = ti.field(ti.i32, shape=T)
        self.n_tris = ti.field(ti.i32, shape=())
        self.hinge = ti.Vector.field(4, ti.i32, shape=H)
        self.hinge_w = ti.field(real, shape=H)  # |e|^2 / (2 (A1 + A2)) at rest (1)
        self.hinge_body = ti.field(ti.i32, shape=H)
        self.node_body = ti.field(ti.i32, shape=N)
        self.node_area = ti.field(real, shape=N)  # lumped rest area (m^2)
        self.kind = ti.field(ti.i32, shape=N)
        self.X_local = ti.Vector.field(3, real, shape=N)
        self.attached = ti.field(ti.i32, shape=(B, E))  # body b attached to tool e: no contact with it
        self.n_bodies = ti.field(ti.i32, shape=())
        self.gravity = ti.Vector.field(3, real, shape=())
        self.lo = ti.Vector.field(3, real, shape=())
        self.hi = ti.Vector.field(3, real, shape=())
        # parameters (the registry's fields; kernels read the work copy ``bp``)
        self.E = ti.field(real, shape=B, needs_grad=True)
        self.nu = ti.field(real, shape=B, needs_grad=True)
        self.thickness = ti.field(real, shape=B, needs_grad=True)
        self.density = ti.field(real, shape=B, needs_grad=True)
        self.bending = ti.field(real, shape=B, needs_grad=True)
        self.yield_angle = ti.field(real, shape=B, needs_grad=True)
        self.hardening = ti.field(real, shape=B, needs_grad=True)
        self.damping = ti.field(real, shape=B, needs_grad=True)
        self.kc = ti.field(real, shape=B, needs_grad=True)
        self.wall_mu = ti.field(real, shape=B, needs_grad=True)
        self.self_kc = ti.field(real, shape=B, needs_grad=True)
        self.self_mu = ti.field(real, shape=B, needs_grad=True)
        self.pad_mu = ti.field(real, shape=B, needs_grad=True)
        self.param("E", "Pa", self.E, lower=0.0, lower_open=True, doc="Young's modulus of the sheet (Pa)")
        self.param("nu", "1", self.nu, lower=-1.0, upper=0.5, lower_open=True, upper_open=True,
                   doc="Poisson ratio of the sheet")
        self.param("thickness", "m", self.thickness, lower=0.0, lower_open=True, differentiable=False,
                   doc="sheet thickness (m)")
        self.param("density", "kg/m^3", self.density, lower=0.0, lower_open=True, doc="sheet density (kg/m^3)")
        self.param("bending", "N m", self.bending, lower=0.0, lower_open=True, doc="bending stiffness D (N m)")
        self.param("yield_angle", "deg", self.yield_angle, lower=0.0, lower_open=True, upper=math.inf,
                   scale=math.pi / 180, doc="crease yield angle (deg)")
        self.param("hardening", "1", self.hardening, lower=0.0, doc="crease hardening (yield growth per plastic angle)")
        self.param("damping", "1/s", self.damping, lower=0.0, doc="mass-proportional damping (1/s)")
        self.param("contact_stiffness", "Pa/m", self.kc, lower=0.0, lower_open=True,
                   doc="contact stiffness against tools, floor and walls (Pa/m)")
        self.param("wall_friction", "1", self.wall_mu, lower=0.0, doc="Coulomb coefficient against floor and walls")
        self.param("self_contact_stiffness", "Pa/m", self.self_kc, lower=0.0, lower_open=True,
                   doc="shell <-> shell contact barrier stiffness (Pa/m; bodies with self_contact)")
        self.param("self_friction", "1", self.self_mu, lower=0.0,
                   doc="Coulomb coefficient between sheets (bodies with self_contact)")
        self.param("pad_friction", "1", self.pad_mu, lower=0.0, doc="Coulomb coefficient against FEM pads")
        # work copies: the residual kernel reads only these (and the iterate), so its adjoint --
        # run for every Hessian-vector product -- never touches the state's or parameters' gradients
        self.xk = self.scratch_field((3,), N)  # the Newton iterate (x_{n+1})
        self.xn = self.scratch_field((3,), N)
        self.vn = self.scratch_field((3,), N)
        self.ra = self.scratch_field((), H)
        self.bp = self.scratch_field((), (B, N_COLS))
        self.tp = self.scratch_field((3,), (2, E))  # tool positions at slots l, l + 1
        self.tq = self.scratch_field((4,), (2, E))
        self.tmu = self.scratch_field((), E)
        self.r = self.scratch_field((3,), N)  # residual (gradient of the incremental potential)
        # Newton / CG vectors (no gradients)
        self.xs = self.scratch_field((3,), N, grad=False)
        self.cx = self.scratch_field((3,), N, grad=False)
        self.cr = self.scratch_field((3,), N, grad=False)
        self.cz = self.scratch_field((3,), N, grad=False)
        self.cp = self.scratch_field((3,), N, grad=False)
        self.cq = self.scratch_field((3,), N, grad=False)
        self.diag = self.scratch_field((), N, grad=False)
        self.color = ti.field(ti.i32, shape=N)  # distance-2 colouring of the stencil graph (Hessian assembly)
        self.red = ti.field(real, shape=8)  # reductions
        self.bad = ti.field(ti.i32, shape=self.S)
        self._energy = ti.field(real, shape=8)
        self.min_edge = 1.0
        self.rtol = 1e-10 if real == ti.f64 else 1e-4
        self._eps = float(np.finfo(self.np_real).eps)
        self._floor = 0.0
        self._infeasible = False
        self.max_newton = 50
        self.max_cg = 400
        self.adjoint_rtol = 1e-10 if real == ti.f64 else 1e-5
        #: linear solver of the Newton steps and the adjoint: "auto", "direct" or "cg" (:meth:`set_newton`)
        self.linear_solver = "auto"
        #: sparse factorizations done (direct solver), modified Newton steps (H not positive definite: the projected
        #: H + C, or H + C + tau M / dt^2, factored instead) and fallbacks to CG (no shift worked, or the adjoint's
        #: H not positive definite)
        self.n_factor = 0
        self.n_shift = 0
        #: modified Newton steps for which the projection of the membrane (:meth:`membrane_hessian`) was enough
        self.n_project = 0
        #: where H is not positive definite: "shift" (H + tau M / dt^2) or "project" (the compressed triangles'
        #: membrane Hessians projected first; :meth:`set_newton`)
        self.modified_step = "shift"
        self._tau = 0.0  # the last shift that made H + tau M / dt^2 positive definite in this substep
        self.n_fallback = 0
        self._pattern = None
        self._status: dict[int, tuple] = {}
        #: per substep of the last forward: (Newton iterations, CG iterations, residual / scale)
        self.stats: list[tuple[int, int, float]] = []
        self.bodies: list = []
        #: shell <-> shell contact (:mod:`physim.parts.shell_contact`), or None (no body has ``self_contact``)
        self.contact = None
        if layout.contact_pairs:
            from .shell_contact import ShellContact

            self.contact = ShellContact(self, layout.contact_pairs,
                                        dict(thickness=C_T, stiffness=C_SKC, friction=C_SMU, pad_stiffness=C_KC,
                                             pad_friction=C_PMU))

    def param_rows(self, name: str) -> int:
        return int(self.n_bodies[None])

    # ------------------------------------------------------------------ loading
    def load(self, spec: ShellSpec) -> None:
        """Write the bodies into the fields (checks capacities, attachments, tool overlaps)."""
        L = self.layout
        bodies = spec.bodies
        n = sum(b.n_vertices for b in bodies)
        m = sum(b.n_triangles for b in bodies)
        h = sum(b.n_hinges for b in bodies)
        if n > L.nodes or m > L.tris or h > L.hinges or len(bodies) > L.bodies:
            raise ValueError(f"{n} vertices / {m} triangles / {h} hinges / {len(bodies)} bodies exceed this layout's "
                             f"capacity {L.nodes} / {L.tris} / {L.hinges} / {L.bodies}")
        r = self.np_real
        N, T, H, B = L.nodes, L.tris, L.hinges, L.bodies
        E = self.attached.shape[1]
        tri, dminv, area, gn = np.zeros((T, 3), np.int32), np.tile(np.eye(2), (T, 1, 1)), np.zeros(T), np.zeros((T, 3))
        tbody, hinge, hw, hbody = np.zeros(T, np.int32), np.zeros((H, 4), np.int32), np.zeros(H), np.zeros(H, np.int32)
        nbody, narea, kind, xloc = np.zeros(N, np.int32), np.ones(N), np.full(N, FREE, np.int32), np.zeros((N, 3))
        attached = np.zeros((B, E), np.int32)
        prm = {k: np.ones(B) for k in ("E", "nu", "thickness", "density", "bending", "yield_angle", "hardening",
                                       "damping", "kc", "wall_mu", "self_kc", "self_mu", "pad_mu")}
        rest0 = np.zeros(h)
        min_edge = math.inf
        v0 = t0 = h0 = 0
        for bi, b in enumerate(bodies):
            X = b.mesh.vertices
            tr = b.mesh.triangles
            nv, nt, nh = b.n_vertices, b.n_triangles, b.n_hinges
            # rest 2D frame of each triangle: e1 along edge 01, e2 in the plane
            a1, a2 = X[tr[:, 1]] - X[tr[:, 0]], X[tr[:, 2]] - X[tr[:, 0]]
            l1 = np.linalg.norm(a1, axis=1)
            u = a1 / l1[:, None]
            nrm = np.cross(a1, a2)
            ar = 0.5 * np.linalg.norm(nrm, axis=1)
            w = np.cross(nrm / np.linalg.norm(nrm, axis=1)[:, None], u)
            Dm = np.stack([np.stack([l1, (a2 * u).sum(1)], 1), np.stack([np.zeros(nt), (a2 * w).sum(1)], 1)], 1)
            Di = np.linalg.inv(Dm)
            tri[t0: t0 + nt], dminv[t0: t0 + nt], area[t0: t0 + nt], tbody[t0: t0 + nt] = tr + v0, Di, ar, bi
            # |grad N_a|^2: F = Ds Dm^-1 moves with x1 by row 0 of Dm^-1, with x2 by row 1, x0 by minus their sum
            gn[t0: t0 + nt] = np.stack([(Di.sum(axis=1) ** 2).sum(1), (Di[:, 0] ** 2).sum(1),
                                        (Di[:, 1] ** 2).sum(1)], 1)
            hg = b.mesh.hinges()
            # the two triangles' areas of every hinge: triangle (e0, e1, a) and (e1, e0, b)
            # directed edge p -> q of triangle k has key p * nv + q; look both triangles up by key
            keys = np.concatenate([tr[:, k].astype(np.int64) * nv + tr[:, (k + 1) % 3] for k in range(3)])
            order = np.argsort(keys)
            tri_of = np.tile(np.arange(nt), 3)[order]
            keys = keys[order]
            t1 = tri_of[np.searchsorted(keys, hg[:, 0].astype(np.int64) * nv + hg[:, 1])]
            t2 = tri_of[np.searchsorted(keys, hg[:, 1].astype(np.int64) * nv + hg[:, 0])]
            A12 = ar[t1] + ar[t2]
            le2 = ((X[hg[:, 1]] - X[hg[:, 0]]) ** 2).sum(1) if nh else np.zeros(0)
            hinge[h0: h0 + nh], hbody[h0: h0 + nh] = hg + v0, bi
            hw[h0: h0 + nh] = le2 / (2.0 * A12) if nh else 0.0
            rest0[h0: h0 + nh] = dihedral_angles(X, hg) if nh else 0.0
            edges = b.mesh.edges()
            min_edge = min(min_edge, float(np.linalg.norm(X[edges[:, 1]] - X[edges[:, 0]], axis=1).min()))
            lump = np.zeros(nv)
            np.add.at(lump, tr.ravel(), np.repeat(ar / 3.0, 3))
            nbody[v0: v0 + nv], narea[v0: v0 + nv] = bi, lump
            kind[v0 + b.pinned] = PINNED
            xloc[v0 + b.pinned] = X[b.pinned]
            for tool, idx in b.attach.items():
                if tool >= len(spec.tool_poses):
                    raise ValueError(f"shell body {bi}: attach has tool {tool} but the scene has "
                                     f"{len(spec.tool_poses)} tool(s)")
                p0, q0 = spec.tool_poses[tool]
                kind[v0 + idx] = tool
                xloc[v0 + idx] = (X[idx] - p0) @ _quat_matrix(q0)  # R0^T (X - p0), row-wise
                attached[bi, tool] = 1
            mat = b.material
            vals = dict(E=mat.E, nu=mat.nu, thickness=mat.thickness, density=mat.density,
                        bending=mat.bending_stiffness(), yield_angle=math.radians(mat.yield_angle),
                        hardening=mat.hardening, damping=mat.damping, kc=DEFAULT_CONTACT_STIFFNESS,
                        wall_mu=spec.wall_friction, self_kc=b.self_contact_stiffness,
                        self_mu=b.self_friction, pad_mu=b.pad_friction)
            for k, val in vals.items():
                prm[k][bi] = val
            v0, t0, h0 = v0 + nv, t0 + nt, h0 + nh
        self.rows[None] = n
        self.n_hinges[None] = h
        self.n_tris[None] = m
        self.n_bodies[None] = len(bodies)
        self.tri.from_numpy(tri)
        self.Dminv.from_numpy(dminv.astype(r))
        self.area.from_numpy(area.astype(r))
        self.tri_gn.from_numpy(gn.astype(r))
        self.tri_body.from_numpy(tbody)
        self.hinge.from_numpy(hinge)
        self.hinge_w.from_numpy(hw.astype(r))
        self.hinge_body.from_numpy(hbody)
        self.node_body.from_numpy(nbody)
        self.node_area.from_numpy(narea.astype(r))
        self.kind.from_numpy(kind)
        self.X_local.from_numpy(xloc.astype(r))
        self.attached.from_numpy(attached)
        for k, arr in prm.items():
            getattr(self, k).from_numpy(arr.astype(r))
        self.gravity[None] = np.asarray(spec.gravity, np.float64).tolist()
        lo = np.full(3, spec.wall_lo)
        lo[1] = spec.floor
        self.lo[None] = lo.tolist()
        self.hi[None] = [spec.wall_hi] * 3
        self.min_edge = min_edge
        self.bodies = list(bodies)
        self.initial_rest_angle = rest0
        self._build_pattern(tri[:m], hinge[:h], kind[:n], n)
        # the membrane's element data for its positive semi-definite projection (:meth:`membrane_hessian`)
        w = np.empty((m, 3, 2))
        w[:, 1], w[:, 2] = dminv[:m, 0], dminv[:m, 1]
        w[:, 0] = -w[:, 1] - w[:, 2]
        self._pattern.update(tri=tri[:m].astype(np.int64), tri_w=w, tri_area=area[:m].astype(np.float64),
                             tri_body=tbody[:m].astype(np.int64))
        self._check_tool_overlap(spec)
        if any(b.self_contact for b in bodies) or (self.contact is not None and self.contact.fem is not None):
            if self.contact is None:
                raise ValueError("a shell body has self_contact=True but this shell layout was compiled without "
                                 "shell contact (contact_pairs=0)")
            self.contact.load(bodies, tri[:m], kind[:n], narea[:n], min_edge)
        elif self.contact is not None:
            self.contact.topology = None

    def attach_fem(self, fem) -> None:
        """Couple the sheets with the FEM part's surface (its pads) both ways (before :meth:`load`, after the FEM
        part's): the gel's surface is an obstacle of the shells' implicit steps, and the sheets' contact force on
        it, the state ``shell.f_pad``, is the FEM part's external force one substep later
        (:meth:`physim.parts.fem.FEMPart.set_external_force`; :mod:`physim.parts.shell_contact`)."""
        if self.contact is None or not self.contact.has_pad or self.f_pad is None:
            raise ValueError("this shell layout was compiled without FEM pads (fem_nodes=0)")
        n = int(fem.rows[None])
        if n > self.f_pad.shape[1]:
            raise ValueError(f"the FEM part has {n} nodes but this shell layout holds the reaction of "
                             f"{self.f_pad.shape[1]} (fem_nodes)")
        self.contact.fem = fem
        self.n_pad_nodes[None] = n
        fem.set_external_force(self.f_pad)

    def set_pad_relaxation(self, relaxation: float, adaptive: bool = False) -> None:
        """The relaxation ``w`` of the sheets' reaction on the FEM pads, in (0, 1] (default
        :data:`physim.parts.shell_contact.PAD_RELAXATION`): the force applied to the gel moves this fraction
        of the way to the newest reaction per substep (:mod:`physim.parts.shell_contact`; smaller is more
        stable and slower). ``adaptive``: each pad node's is ``min(w, 1 / (1 + g_j))``, ``g_j`` the contact
        stiffness over the gel's static stiffness at the node, from the parameters when set (and at load).
        Not differentiable."""
        w = float(relaxation)
        if not (math.isfinite(w) and 0.0 < w <= 1.0):
            raise ValueError(f"pad relaxation must be in (0, 1], got {relaxation!r}")
        if not isinstance(adaptive, (bool, np.bool_)):
            raise TypeError(f"pad relaxation's adaptive must be True or False, got {adaptive!r}")
        if self.contact is None or self.f_pad is None:
            raise ValueError("this shell layout was compiled without FEM pads (fem_nodes=0): no reaction to relax")
        self.contact.set_relaxation(w, bool(adaptive))

    def set_pad_reaction(self, enabled: bool) -> None:
        """Two-way (``True``, the default) or one-way (``False``) shell <-> FEM pad coupling. One-way: the gel's
        surface stays the sheets' obstacle (with its gradients to ``fem.x`` and the mount), but ``shell.f_pad``
        is held at 0 from the next substep on, so the gel never feels the sheets (no reaction, no indentation
        by them, nothing of it in ``fem.f_contact``) and no gradient flows through a reaction. Nothing is
        compiled anew; the switch acts from the next forward pass (roll out again before differentiating)."""
        if not isinstance(enabled, (bool, np.bool_)):
            raise TypeError(f"pad reaction must be True (two-way) or False (one-way), got {enabled!r}")
        if self.contact is None or self.f_pad is None:
            raise ValueError("this shell layout was compiled without FEM pads (fem_nodes=0): no reaction to switch")
        self.pad_reaction = bool(enabled)

    @property
    def _reacting(self) -> bool:
        """Whether the sheets' reaction on the pads is computed (pads attached, contact on, two-way)."""
        return self.pad_reaction and self.contact_on and self.contact.fem is not None

    @property
    def contact_on(self) -> bool:
        """Whether shell <-> shell contact is active (some loaded body has ``self_contact``)."""
        return self.contact is not None and self.contact.topology is not None

    def _load_rest_for_contact(self) -> None:
        """The work copies at the rest shape (the load-time check of the contact pairs)."""
        x = np.zeros(self.xk.shape + (3,), self.np_real)
        X = np.concatenate([b.mesh.vertices for b in self.bodies])
        x[: len(X)] = X
        self.xk.from_numpy(x)
        self._params_to_work()

    @ti.kernel
    def _params_to_work(self):
        for b in range(self.n_bodies[None]):
            self.bp[b, C_T] = self.thickness[b]
            self.bp[b, C_SKC] = self.self_kc[b]
            self.bp[b, C_SMU] = self.self_mu[b]
            self.bp[b, C_KC] = self.kc[b]
            self.bp[b, C_PMU] = self.pad_mu[b]

    def _build_pattern(self, tri: np.ndarray, hinge: np.ndarray, kind: np.ndarray, n: int) -> None:
        """The Hessian's block sparsity (vertices sharing a triangle or a hinge), a greedy distance-2
        colouring of it (no vertex has two stencil neighbours of one colour, itself included) and the
        gather indices that turn one Hessian-vector product per colour and axis into the blocks
        (Curtis-Powell-Reid compression; :meth:`assemble_hessian`)."""
        import scipy.sparse as sp

        elems = [tri.astype(np.int64), hinge.astype(np.int64)]
        rows = np.concatenate([np.repeat(np.arange(len(e)) + off, e.shape[1]) for e, off in
                               zip(elems, (0, len(tri)), strict=True)])
        cols = np.concatenate([e.ravel() for e in elems])
        inc = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(tri) + len(hinge), n))
        S = (inc.T @ inc + sp.identity(n, format="csr")).tocsr()
        S.data[:] = 1.0
        S2 = (S @ S).tocsr()
        color = np.full(n, -1, np.int64)
        ip, ix = S2.indptr, S2.indices
        for v in range(n):
            used = set(color[ix[ip[v]: ip[v + 1]]].tolist())
            c = 0
            while c in used:
                c += 1
            color[v] = c
        ncol = int(color.max()) + 1 if n else 0
        free = np.flatnonzero(kind == FREE)
        dof = np.full(n, -1, np.int64)
        dof[free] = np.arange(len(free))
        Sc = S.tocoo()
        keep = (dof[Sc.row] >= 0) & (dof[Sc.col] >= 0)
        i, j = Sc.row[keep].astype(np.int64), Sc.col[keep].astype(np.int64)
        a, d = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")  # H[3i + a, 3j + d]
        r = (3 * dof[i])[:, None, None] + a[None]
        c_ = (3 * dof[j])[:, None, None] + d[None]
        # the probe (colour of j, axis d) returns column 3 j + d of H in the rows of every i next to j
        src = ((color[j][:, None, None] * 3 + d[None]) * n + i[:, None, None]) * 3 + a[None]
        # CSR order once (the pairs (i, j) are distinct): each assembly is then one gather
        r, c_, src = r.ravel(), c_.ravel(), src.ravel()
        order = np.lexsort((c_, r))
        m = 3 * len(free)
        indptr = np.zeros(m + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=m), out=indptr[1:])
        idx_type = np.int32 if len(r) < 2**31 - 1 else np.int64
        self._pattern = dict(n=n, ncol=ncol, free=free, src=src[order], indices=c_[order].astype(idx_type),
                             indptr=indptr.astype(idx_type), size=m, dof=dof)
        full = np.zeros(self.color.shape[0], np.int32)
        full[:n] = color
        self.color.from_numpy(full)

    def _check_tool_overlap(self, spec: ShellSpec) -> None:
        """Refuse a tool (other than one a body is attached to) that starts with a free vertex inside
        it (signed distance < 0): the penalty would throw the sheet out violently."""
        from .fem import tool_sdf_np

        for bi, b in enumerate(spec.bodies):
            free = np.setdiff1d(np.arange(b.n_vertices), b.kinematic())
            X = b.mesh.vertices[free]
            for ti_, ((p0, q0), (shape, size)) in enumerate(zip(spec.tool_poses, spec.tool_shapes, strict=True)):
                if ti_ in b.attach:
                    continue
                d = tool_sdf_np(shape, size, (X - p0) @ _quat_matrix(q0))
                if (d < 0).any():
                    j = int(np.argmin(d))
                    raise ValueError(f"tool {ti_} starts inside shell body {bi}: vertex {int(free[j])} at "
                                     f"{X[j].round(4).tolist()} is {-d[j]:.3g} m inside it ({int((d < 0).sum())} "
                                     f"vertices inside); move the tool or the sheet, or attach the vertices to it")
            lo = np.array([spec.wall_lo, spec.floor, spec.wall_lo])
            out = np.any((b.mesh.vertices < lo) | (b.mesh.vertices > spec.wall_hi), axis=1)
            if out.any():
                i = int(np.argmax(out))
                raise ValueError(f"shell body {bi}: vertex {i} at {b.mesh.vertices[i].round(4).tolist()} is outside "
                                 f"the domain [{spec.wall_lo:.4f}, {spec.wall_hi:.4f}]^3 (floor {spec.floor:.4f})")

    def initial_state(self) -> dict[str, np.ndarray]:
        """The loaded bodies' initial state (by field name, without the ``shell.`` prefix)."""
        x = np.concatenate([b.mesh.vertices for b in self.bodies])
        v = []
        for b in self.bodies:
            vb = np.tile(np.asarray(b.velocity, np.float64), (b.n_vertices, 1))
            vb[b.kinematic()] = 0.0
            v.append(vb)
        h = len(self.initial_rest_angle)
        out = {"x": x, "v": np.concatenate(v), "rest_angle": self.initial_rest_angle.copy(), "plastic": np.zeros(h)}
        if self.f_pad is not None:
            out["f_pad"] = np.zeros((int(self.n_pad_nodes[None]), 3))  # no contact before the first step
        return out

    def set_newton(self, rtol: float | None = None, max_iter: int | None = None, max_cg: int | None = None,
                   linear_solver: str | None = None, modified_step: str | None = None) -> None:
        """Newton's stopping test: ``|r| <= rtol |M g|``, at most ``max_iter`` iterations, at most
        ``max_cg`` CG iterations per Newton iteration (and per adjoint solve: 4x).

        ``linear_solver``: ``"direct"`` assembles H exactly (one Hessian-vector product per colour
        and axis) and factors it (scipy ``splu``), with the compressed triangles' membrane Hessians
        projected (and if need be a multiple of the mass matrix added) where H is not positive
        definite (:meth:`_direct_newton_step`; the adjoint falls back to CG there);
        ``"cg"`` is Jacobi-preconditioned CG; ``"auto"`` (default) is direct up to
        :data:`DIRECT_MAX_DOFS` free degrees of freedom. ``modified_step``: where H is not positive
        definite, ``"shift"`` (default: ``H + tau M / dt^2``) or ``"project"`` (projected Newton on the
        membrane first; :meth:`_direct_newton_step`)."""
        if modified_step is not None:
            if modified_step not in ("shift", "project"):
                raise ValueError(f"modified_step must be 'shift' or 'project', got {modified_step!r}")
            self.modified_step = modified_step
        if linear_solver is not None:
            if linear_solver not in ("auto", "direct", "cg"):
                raise ValueError(f"linear_solver must be 'auto', 'direct' or 'cg', got {linear_solver!r}")
            self.linear_solver = linear_solver
        if rtol is not None:
            if not (math.isfinite(rtol) and rtol > 0):
                raise ValueError(f"rtol must be > 0, got {rtol!r}")
            self.rtol = float(rtol)
        if max_iter is not None:
            if not (isinstance(max_iter, int) and max_iter >= 1):
                raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
            self.max_newton = max_iter
        if max_cg is not None:
            if not (isinstance(max_cg, int) and max_cg >= 1):
                raise ValueError(f"max_cg must be an integer >= 1, got {max_cg!r}")
            self.max_cg = max_cg

    # ------------------------------------------------------------------ health
    def health(self, first: int, last: int):
        self._health(first, last)
        return self.first_flagged(self.bad.to_numpy(), first, last, {
            BAD_NONFINITE: "a shell vertex position or velocity is NaN/inf",
            BAD_OUTSIDE: "a shell vertex left the unit box"})

    @ti.kernel
    def _health(self, first: ti.i32, last: ti.i32):
        for s in range(first, last + 1):
            self.bad[s] = 0
        for s, i in ti.ndrange((first, last + 1), self.rows[None]):
            ti.atomic_or(self.bad[s], self.point_health(self.x[s, i], self.v[s, i], -0.01, 1.01, 1e30))

    # ------------------------------------------------------------------ work copies
    @ti.kernel
    def load_work(self, l: ti.i32, l1: ti.i32):
        """Copy slot ``l``'s state, the tools' poses at slots ``l`` and ``l1`` (``l + 1`` in a
        substep), their friction and the parameters into the work fields the residual reads."""
        for i in range(self.rows[None]):
            self.xn[i] = self.x[l, i]
            self.vn[i] = self.v[l, i]
            self.xk[i] = self.x[l, i]
        for k in range(self.n_hinges[None]):
            self.ra[k] = self.rest_angle[l, k]
        for b in range(self.n_bodies[None]):
            self.bp[b, C_E] = self.E[b]
            self.bp[b, C_NU] = self.nu[b]
            self.bp[b, C_T] = self.thickness[b]
            self.bp[b, C_RHO] = self.density[b]
            self.bp[b, C_D] = self.bending[b]
            self.bp[b, C_ALPHA] = self.damping[b]
            self.bp[b, C_KC] = self.kc[b]
            self.bp[b, C_WMU] = self.wall_mu[b]
            self.bp[b, C_SKC] = self.self_kc[b]
            self.bp[b, C_SMU] = self.self_mu[b]
            self.bp[b, C_PMU] = self.pad_mu[b]
        for e in range(self.tools.rows[None]):
            self.tp[0, e] = self.tools.pos[l, e]
            self.tq[0, e] = self.tools.rot[l, e]
            self.tp[1, e] = self.tools.pos[l1, e]
            self.tq[1, e] = self.tools.rot[l1, e]
            self.tmu[e] = self.tools.friction[e]

    @ti.kernel
    def place_kinematic(self):
        """The kinematic vertices of the iterate: pinned ones at rest, attached ones with their tool
        (pose at the end of the substep)."""
        for i in range(self.rows[None]):
            kind = self.kind[i]
            if kind == PINNED:
                self.xk[i] = self.X_local[i]
            elif kind >= 0:
                self.xk[i] = rotation_matrix(self.tq[1, kind], 3) @ self.X_local[i] + self.tp[1, kind]

    @ti.kernel
    def _zero_work_grads(self):
        for i in range(self.rows[None]):
            self.xk.grad[i] = ti.zero(self.xk.grad[i])
            self.xn.grad[i] = ti.zero(self.xn.grad[i])
            self.vn.grad[i] = ti.zero(self.vn.grad[i])
            self.r.grad[i] = ti.zero(self.r.grad[i])
        for k in range(self.n_hinges[None]):
            self.ra.grad[k] = 0.0
        for b, c in ti.ndrange(self.n_bodies[None], N_COLS):
            self.bp.grad[b, c] = 0.0
        for e in range(self.tools.rows[None]):
            self.tmu.grad[e] = 0.0
            for s in ti.static(range(2)):
                self.tp.grad[s, e] = ti.zero(self.tp.grad[s, e])
                self.tq.grad[s, e] = ti.zero(self.tq.grad[s, e])

    @ti.kernel
    def _scatter_work_grads(self, l: ti.i32):
        """Add the work copies' gradients to the state's (slot l), the tools' and the parameters'."""
        for i in range(self.rows[None]):
            self.x.grad[l, i] += self.xn.grad[i]
            self.v.grad[l, i] += self.vn.grad[i]
        for k in range(self.n_hinges[None]):
            self.rest_angle.grad[l, k] += self.ra.grad[k]
        for b in range(self.n_bodies[None]):
            self.E.grad[b] += self.bp.grad[b, C_E]
            self.nu.grad[b] += self.bp.grad[b, C_NU]
            self.thickness.grad[b] += self.bp.grad[b, C_T]
            self.density.grad[b] += self.bp.grad[b, C_RHO]
            self.bending.grad[b] += self.bp.grad[b, C_D]
            self.damping.grad[b] += self.bp.grad[b, C_ALPHA]
            self.kc.grad[b] += self.bp.grad[b, C_KC]
            self.wall_mu.grad[b] += self.bp.grad[b, C_WMU]
            self.self_kc.grad[b] += self.bp.grad[b, C_SKC]
            self.self_mu.grad[b] += self.bp.grad[b, C_SMU]
            self.pad_mu.grad[b] += self.bp.grad[b, C_PMU]
        for e in range(self.tools.rows[None]):
            self.tools.friction.grad[e] += self.tmu.grad[e]
            for s in ti.static(range(2)):
                self.tools.pos.grad[l + s, e] += self.tp.grad[s, e]
                self.tools.rot.grad[l + s, e] += self.tq.grad[s, e]

    # ------------------------------------------------------------------ physics
    @ti.func
    def _mass(self, i, b):
        return self.bp[b, C_RHO] * self.bp[b, C_T] * self.node_area[i]

    @ti.func
    def _plane(self, x, x0, nrm, phi, phi0, k, eps, mu, eps_u):
        """(force, energy, stiffness estimate) of one contact plane or tool surface: penalty at the
        end-of-step distance ``phi`` with normal ``nrm``, lagged friction from ``phi0`` / the slip
        ``x0`` (the displacement relative to the surface, normal part removed with ``nrm0`` by the
        caller)."""
        f = ti.Vector.zero(self.real, 3)
        en = phi * 0.0
        kd = phi * 0.0
        if phi < eps:
            f = k * (eps - phi) * nrm
            en = 0.5 * k * (eps - phi) * (eps - phi)
            kd = k
        return f, en, kd

    @ti.func
    def _friction(self, u, lam, mu, eps_u):
        """(force, energy, stiffness estimate) of the lagged smoothed Coulomb friction on slip ``u``."""
        s = ti.sqrt(u.dot(u) + eps_u * eps_u)
        return -mu * lam / s * u, mu * lam * (s - eps_u), mu * lam / eps_u

    @ti.func
    def _contact(self, i, b):
        """(force, energy, stiffness estimate) of vertex ``i``'s contacts (module docstring): the
        domain's walls and every tool it is not attached to."""
        f, en, kd = self._wall_contact(i, b)
        for e in ti.static(range(self.tools.capacity)):
            if e < self.tools.rows[None] and self.attached[b, e] == 0:
                ft, et, kt = self._tool_contact(i, b, e)
                f += ft
                en += et
                kd += kt
        return f, en, kd

    @ti.func
    def _wall_contact(self, i, b):
        """:meth:`_contact`'s part from the domain's six walls."""
        x = self.xk[i]
        x0 = self.xn[i]
        k = self.bp[b, C_KC] * self.node_area[i]
        eps = 0.5 * self.bp[b, C_T] + MARGIN
        eps_u = V_SMOOTH * self.dt[None]
        f = ti.Vector.zero(self.real, 3)
        en = k * 0.0
        kd = k * 0.0
        for d in ti.static(range(3)):
            for side in ti.static(range(2)):
                sgn = 1.0 if side == 0 else -1.0
                nrm = ti.Vector.unit(3, d, self.real) * sgn
                phi = x[d] - self.lo[None][d] if side == 0 else self.hi[None][d] - x[d]
                phi0 = x0[d] - self.lo[None][d] if side == 0 else self.hi[None][d] - x0[d]
                fp, ep, kp = self._plane(x, x0, nrm, phi, phi0, k, eps, 0.0, eps_u)
                f += fp
                en += ep
                kd += kp
                if phi0 < eps:
                    u = x - x0
                    u -= u.dot(nrm) * nrm
                    ff, ef, kf = self._friction(u, k * (eps - phi0), self.bp[b, C_WMU], eps_u)
                    f += ff
                    en += ef
                    kd += kf
        return f, en, kd

    @ti.func
    def _tool_contact(self, i, b, e):
        """:meth:`_contact`'s part from tool ``e``: penalty at the end-of-step distance, friction
        lagged from the start of the step."""
        x = self.xk[i]
        x0 = self.xn[i]
        k = self.bp[b, C_KC] * self.node_area[i]
        eps = 0.5 * self.bp[b, C_T] + MARGIN
        eps_u = V_SMOOTH * self.dt[None]
        R1 = rotation_matrix(self.tq[1, e], 3)
        phi, nl = tool_sdf(self.tools.shape[e], self.tools.size[e], R1.transpose() @ (x - self.tp[1, e]), 3)
        f, en, kd = self._plane(x, x0, R1 @ nl, phi, phi, k, eps, 0.0, eps_u)
        R0 = rotation_matrix(self.tq[0, e], 3)
        p0 = R0.transpose() @ (x0 - self.tp[0, e])
        phi0, nl0 = tool_sdf(self.tools.shape[e], self.tools.size[e], p0, 3)
        if phi0 < eps:
            n0 = R0 @ nl0
            y = R1 @ p0 + self.tp[1, e]  # where the tool's material point at x0 goes
            u = x - y
            u -= u.dot(n0) * n0
            ff, ef, kf = self._friction(u, k * (eps - phi0), self.tmu[e], eps_u)
            f += ff
            en += ef
            kd += kf
        return f, en, kd

    @ti.func
    def _lame(self, b):
        E, nu = self.bp[b, C_E], self.bp[b, C_NU]
        return E / (2.0 * (1.0 + nu)), E * nu / (1.0 - nu * nu)

    @ti.func
    def _membrane(self, e):
        """(vertex ids, gradient of the membrane energy on vertices 1 and 2, energy) of triangle e."""
        ids = self.tri[e]
        b = self.tri_body[e]
        mu, lam = self._lame(b)
        x0 = self.xk[ids[0]]
        Ds = ti.Matrix.cols([self.xk[ids[1]] - x0, self.xk[ids[2]] - x0])
        F = Ds @ self.Dminv[e]
        G = 0.5 * (F.transpose() @ F - ti.Matrix.identity(self.real, 2))
        S = 2.0 * mu * G + lam * G.trace() * ti.Matrix.identity(self.real, 2)
        ta = self.bp[b, C_T] * self.area[e]
        Hm = ta * F @ S @ self.Dminv[e].transpose()
        en = ta * (mu * (G * G).sum() + 0.5 * lam * G.trace() * G.trace())
        return ids, ti.Vector([Hm[0, 0], Hm[1, 0], Hm[2, 0]]), ti.Vector([Hm[0, 1], Hm[1, 1], Hm[2, 1]]), en

    def residual(self) -> None:
        """r = grad E at the iterate ``xk`` (0 on kinematic vertices): inertia, damping, gravity,
        contact and friction per vertex, membrane per triangle, bending per hinge. Three launches:
        Taichi's reverse mode of one kernel holding all three compiles several times longer."""
        self.residual_vertices()
        self.residual_membrane()
        self.residual_bending()
        if self.contact_on:
            self.contact.residual()

    def residual_vjp(self) -> None:
        """x.grad (and the work copies' gradients) += (dr/d inputs)^T r.grad: the three adjoints
        (and shell contact's)."""
        if self.contact_on:
            self.contact.residual_vjp()
        self._residual_vjp_elements()

    def _residual_vjp_elements(self) -> None:
        backend.grad(self.residual_bending)
        backend.grad(self.residual_membrane)
        backend.grad(self.residual_vertices)

    @ti.kernel
    def residual_vertices(self):
        """Inertia, damping, gravity, contact and friction of every free vertex (assigns r)."""
        for i in range(self.rows[None]):
            h = self.dt[None]
            r = ti.Vector.zero(self.real, 3)
            if self.kind[i] == FREE:
                b = self.node_body[i]
                m = self._mass(i, b)
                xh = self.xn[i] + h * self.vn[i] + h * h * self.gravity[None]
                f, _en, _kd = self._wall_contact(i, b)
                r = m * (self.xk[i] - xh) / (h * h) + self.bp[b, C_ALPHA] * m * (self.xk[i] - self.xn[i]) / h - f
            self.r[i] = r
        # the tools: one (vertex, tool) pair per iteration, so that Taichi's reverse mode
        # differentiates one copy of the tool code (unrolled over fold_paper's four tools in the
        # loop above, the adjoint took 219 s to compile; a dynamic loop over the tools there
        # crashes Taichi 1.7.4's reverse-mode code generation)
        for i, e in ti.ndrange(self.rows[None], self.tools.rows[None]):
            if self.kind[i] == FREE:
                b = self.node_body[i]
                if self.attached[b, e] == 0:
                    f, _en, _kd = self._tool_contact(i, b, e)
                    self.r[i] -= f

    @ti.kernel
    def residual_membrane(self):
        """Membrane forces of every triangle, added to r."""
        for e in range(self.n_tris[None]):
            ids, g1, g2, _en = self._membrane(e)
            self.r[ids[1]] += g1
            self.r[ids[2]] += g2
            self.r[ids[0]] -= g1 + g2

    @ti.kernel
    def residual_bending(self):
        """Bending forces of every hinge, added to r."""
        for k in range(self.n_hinges[None]):
            hv = self.hinge[k]
            theta, g0, g1, ga, gb = _hinge_grad(self.xk[hv[0]], self.xk[hv[1]], self.xk[hv[2]], self.xk[hv[3]])
            c = 2.0 * self.bp[self.hinge_body[k], C_D] * self.hinge_w[k] * (theta - self.ra[k])
            self.r[hv[0]] += c * g0
            self.r[hv[1]] += c * g1
            self.r[hv[2]] += c * ga
            self.r[hv[3]] += c * gb

    @ti.kernel
    def energy_kernel(self):
        """E at the iterate into ``_energy``: [total, inertia + damping, membrane, bending, contact
        and friction, gravity part of the inertia]."""
        for j in range(8):
            self._energy[j] = 0.0
        h = self.dt[None]
        for i in range(self.rows[None]):
            if self.kind[i] == FREE:
                b = self.node_body[i]
                m = self._mass(i, b)
                d = self.xk[i] - (self.xn[i] + h * self.vn[i] + h * h * self.gravity[None])
                dn = self.xk[i] - self.xn[i]
                _f, en, _kd = self._contact(i, b)
                ei = 0.5 * m * d.dot(d) / (h * h) + 0.5 * self.bp[b, C_ALPHA] * m * dn.dot(dn) / h
                self._energy[1] += ei
                self._energy[4] += en
                self._energy[0] += ei + en
        for e in range(self.n_tris[None]):
            _ids, _g1, _g2, en = self._membrane(e)
            self._energy[2] += en
            self._energy[0] += en
        for k in range(self.n_hinges[None]):
            hv = self.hinge[k]
            d = _theta(self.xk[hv[0]], self.xk[hv[1]], self.xk[hv[2]], self.xk[hv[3]]) - self.ra[k]
            en = self.bp[self.hinge_body[k], C_D] * self.hinge_w[k] * d * d
            self._energy[3] += en
            self._energy[0] += en

    @ti.kernel
    def diag_kernel(self):
        """Jacobi preconditioner: mass / dt^2 + damping + per-vertex estimates of the membrane,
        bending and contact stiffness."""
        h = self.dt[None]
        for i in range(self.rows[None]):
            d = 1.0
            if self.kind[i] == FREE:
                b = self.node_body[i]
                m = self._mass(i, b)
                _f, _en, kd = self._contact(i, b)
                d = m / (h * h) + self.bp[b, C_ALPHA] * m / h + kd
            self.diag[i] = d
        for e in range(self.n_tris[None]):
            b = self.tri_body[e]
            mu, lam = self._lame(b)
            s = self.bp[b, C_T] * self.area[e] * (lam + 2.0 * mu)
            for a in ti.static(range(3)):
                self.diag[self.tri[e][a]] += s * self.tri_gn[e][a]
        for k in range(self.n_hinges[None]):
            hv = self.hinge[k]
            _t, g0, g1, ga, gb = _hinge_grad(self.xk[hv[0]], self.xk[hv[1]], self.xk[hv[2]], self.xk[hv[3]])
            c = 2.0 * self.bp[self.hinge_body[k], C_D] * self.hinge_w[k]
            self.diag[hv[0]] += c * g0.dot(g0)
            self.diag[hv[1]] += c * g1.dot(g1)
            self.diag[hv[2]] += c * ga.dot(ga)
            self.diag[hv[3]] += c * gb.dot(gb)

    # ------------------------------------------------------------------ vector kernels
    @ti.kernel
    def _norms(self):
        """red[0] = |r|^2 (free vertices), red[1] = |M g|^2, red[2] = sum m."""
        for j in range(3):
            self.red[j] = 0.0
        for i in range(self.rows[None]):
            if self.kind[i] == FREE:
                m = self._mass(i, self.node_body[i])
                self.red[0] += self.r[i].dot(self.r[i])
                self.red[1] += m * m * self.gravity[None].dot(self.gravity[None])
                self.red[2] += m

    @ti.kernel
    def _roundoff(self):
        """red[7] = |diag_i |x_i||: the residual's round-off is about machine epsilon times this (a
        force ``k x`` evaluated at positions ``x`` of relative precision epsilon)."""
        self.red[7] = 0.0
        for i in range(self.rows[None]):
            if self.kind[i] == FREE:
                a = self.diag[i] * self.xk[i].norm()
                self.red[7] += a * a

    @ti.kernel
    def _cg_start(self, from_residual: ti.i32):
        """x = 0, r = -residual (or the rhs already in ``cr``), z = r / diag, p = z;
        red[3] = r.z, red[4] = |r|^2."""
        self.red[3] = 0.0
        self.red[4] = 0.0
        for i in range(self.rows[None]):
            r = ti.Vector.zero(self.real, 3)
            if self.kind[i] == FREE:
                r = -self.r[i] if from_residual else self.cr[i]
            self.cx[i] = ti.zero(r)
            self.cr[i] = r
            z = r / self.diag[i]
            self.cz[i] = z
            self.cp[i] = z
            self.red[3] += r.dot(z)
            self.red[4] += r.dot(r)

    @ti.kernel
    def _hvp_seed(self):
        """r.grad = p on the free vertices; x.grad = 0 (one Hessian-vector product follows)."""
        for i in range(self.rows[None]):
            p = self.cp[i]
            if self.kind[i] != FREE:
                p = ti.zero(p)
            self.r.grad[i] = p
            self.xk.grad[i] = ti.zero(p)

    @ti.kernel
    def _hvp_collect(self):
        """q = H p (the free rows of x.grad); red[5] = p.q, red[6] = |p|^2."""
        self.red[5] = 0.0
        self.red[6] = 0.0
        for i in range(self.rows[None]):
            q = self.xk.grad[i]
            if self.kind[i] != FREE:
                q = ti.zero(q)
            self.cq[i] = q
            self.red[5] += self.cp[i].dot(q)
            self.red[6] += self.cp[i].dot(self.cp[i])

    @ti.kernel
    def _cg_update(self, alpha: ti.f64):
        """x += alpha p, r -= alpha q, z = r / diag; red[3] = r.z (new), red[4] = |r|^2."""
        self.red[3] = 0.0
        self.red[4] = 0.0
        for i in range(self.rows[None]):
            self.cx[i] += alpha * self.cp[i]
            r = self.cr[i] - alpha * self.cq[i]
            self.cr[i] = r
            z = r / self.diag[i]
            self.cz[i] = z
            self.red[3] += r.dot(z)
            self.red[4] += r.dot(r)

    @ti.kernel
    def _cg_direction(self, beta: ti.f64):
        for i in range(self.rows[None]):
            self.cp[i] = self.cz[i] + beta * self.cp[i]

    @ti.kernel
    def _copy_p_to_x(self):
        for i in range(self.rows[None]):
            self.cx[i] = self.cp[i]

    @ti.kernel
    def _direction_stats(self):
        """red[5] = r . dx (directional derivative of E), red[6] = max |dx_i|."""
        self.red[5] = 0.0
        self.red[6] = 0.0
        for i in range(self.rows[None]):
            if self.kind[i] == FREE:
                self.red[5] += self.r[i].dot(self.cx[i])
                ti.atomic_max(self.red[6], self.cx[i].norm())

    @ti.kernel
    def _save_iterate(self):
        for i in range(self.rows[None]):
            self.xs[i] = self.xk[i]

    @ti.kernel
    def _set_trial(self, alpha: ti.f64):
        for i in range(self.rows[None]):
            if self.kind[i] == FREE:
                self.xk[i] = self.xs[i] + alpha * self.cx[i]

    @ti.kernel
    def write_out(self, l: ti.i32):
        """x_{n+1} and v_{n+1} = (x_{n+1} - x_n) / dt into slot l + 1."""
        for i in range(self.rows[None]):
            self.x[l + 1, i] = self.xk[i]
            self.v[l + 1, i] = (self.xk[i] - self.xn[i]) / self.dt[None]

    @ti.kernel
    def _load_iterate(self, l: ti.i32):
        for i in range(self.rows[None]):
            self.xk[i] = self.x[l + 1, i]

    @ti.kernel
    def _adjoint_rhs(self, l: ti.i32):
        """cr = dL/dx_{n+1} + dL/dv_{n+1} / dt on the free vertices; on the kinematic ones it is
        kept in ``xs`` (it goes to their tools); dL/dx_n -= dL/dv_{n+1} / dt."""
        h = self.dt[None]
        for i in range(self.rows[None]):
            g = self.x.grad[l + 1, i] + self.v.grad[l + 1, i] / h
            self.x.grad[l, i] -= self.v.grad[l + 1, i] / h
            if self.kind[i] == FREE:
                self.cr[i] = g
                self.xs[i] = ti.zero(g)
            else:
                self.cr[i] = ti.zero(g)
                self.xs[i] = g

    @ti.kernel
    def _adjoint_seed(self):
        """r.grad = -lambda on the free vertices (the vector-Jacobian product's seed)."""
        for i in range(self.rows[None]):
            lam = self.cx[i]
            if self.kind[i] != FREE:
                lam = ti.zero(lam)
            self.r.grad[i] = -lam

    def _write_pad_reaction(self, l: int) -> None:
        """shell.f_pad[l + 1] = the sheets' contact force on the pad nodes at the converged x_{n+1} (0 without
        contact, or one-way: :meth:`set_pad_reaction`)."""
        if self._reacting:
            self.contact.write_reaction(l)
        else:
            self._zero_pad_reaction(l)

    @ti.kernel
    def _zero_pad_reaction(self, l: ti.i32):
        for j in range(self.n_pad_nodes[None]):
            self.f_pad[l + 1, j] = ti.zero(self.f_pad[l + 1, j])

    @ti.kernel
    def _reaction_rhs(self):
        """cr += (d f_pad / d x_{n+1})^T dL/df_pad on the free vertices (left in xk.grad by the reaction's VJP)."""
        for i in range(self.rows[None]):
            if self.kind[i] == FREE:
                self.cr[i] += self.xk.grad[i]

    @ti.kernel
    def _kinematic_grads(self):
        """After the VJP: x.grad of the iterate's free rows is scratch (zeroed); its kinematic rows
        get dL/dx_{n+1} of those vertices added (kept in ``xs``), for their tools' adjoint."""
        for i in range(self.rows[None]):
            if self.kind[i] == FREE:
                self.xk.grad[i] = ti.zero(self.xk.grad[i])
            else:
                self.xk.grad[i] += self.xs[i]

    @ti.kernel
    def plastic_update(self, l: ti.i32):
        """Crease update of every hinge at the converged x_{n+1} (module docstring)."""
        for k in range(self.n_hinges[None]):
            hv = self.hinge[k]
            b = self.hinge_body[k]
            theta = _theta(self.x[l + 1, hv[0]], self.x[l + 1, hv[1]], self.x[l + 1, hv[2]], self.x[l + 1, hv[3]])
            rest = self.rest_angle[l, k]
            acc = self.plastic[l, k]
            y = self.yield_angle[b] + self.hardening[b] * acc
            d = theta - rest
            if d > y:
                self.rest_angle[l + 1, k] = theta - y
                self.plastic[l + 1, k] = acc + d - y
            elif d < -y:
                self.rest_angle[l + 1, k] = theta + y
                self.plastic[l + 1, k] = acc - d - y
            else:
                self.rest_angle[l + 1, k] = rest
                self.plastic[l + 1, k] = acc

    @ti.kernel
    def _probe(self, c: ti.i32, d: ti.i32):
        """r.grad = the probe (1 on axis d of every free vertex of colour c); x.grad = 0."""
        for i in range(self.rows[None]):
            p = ti.Vector.zero(self.real, 3)
            if self.kind[i] == FREE and self.color[i] == c:
                p[d] = 1.0
            self.r.grad[i] = p
            self.xk.grad[i] = ti.zero(p)

    # ------------------------------------------------------------------ solvers
    def use_direct(self) -> bool:
        """Whether the Newton steps and the adjoint use the sparse direct solver (:meth:`set_newton`)."""
        if self.linear_solver == "auto":
            return self._pattern is not None and self._pattern["size"] <= DIRECT_MAX_DOFS
        return self.linear_solver == "direct"

    def assemble_hessian(self, project: bool = False):
        """H = d r / d x at the iterate ``xk`` on the free degrees of freedom (3 per free vertex, in
        vertex order; kinematic vertices are not unknowns), a scipy CSR matrix, assembled exactly from
        one Hessian-vector product (Taichi's reverse mode of the residual kernels) per colour and
        axis: with the distance-2 colouring every vertex has at most one stencil neighbour of each
        colour, so the product with a colour's probe holds that neighbour's column block. Every term
        of H is there (mass, damping, membrane, bending, contact, friction). Shell <-> shell contact
        couples vertices the colouring does not know: its pair blocks are added apart
        (:meth:`physim.parts.shell_contact.ShellContact.hessian_blocks`; ``project``: each clamped to
        positive semi-definite). Leaves the work copies' gradients dirty (as CG does)."""
        import scipy.sparse as sp

        P = self._pattern
        n, ncol = P["n"], P["ncol"]
        Q = np.empty((ncol, 3, n, 3))
        for c in range(ncol):
            for d in range(3):
                self._probe(c, d)
                self._residual_vjp_elements()
                Q[c, d] = self.xk.grad.to_numpy()[:n]
        m = P["size"]
        H = sp.csr_matrix((Q.ravel()[P["src"]], P["indices"], P["indptr"]), shape=(m, m))
        if self.contact_on:
            Hc = self.contact.hessian_blocks(P["dof"], m, project)
            if Hc is not None:
                H = (H + Hc).tocsr()
        return H

    def membrane_hessian(self, negative_part: bool = True):
        """The membrane's Hessian at the iterate ``xk`` on the free degrees of freedom (as
        :meth:`assemble_hessian`), computed triangle by triangle in numpy from the energy's Hessian in
        the deformation gradient: with ``P(F) = F S``, ``S = 2 mu G + lam tr(G) I``, the 6 x 6 form
        ``K(dF1, dF2) = <dF1, dF2 S> + 2 mu <dG1, dG2> + lam tr(dG1) tr(dG2)`` (``dG = sym(F^T dF)``),
        times ``t A``, mapped to the triangle's 9 coordinates by the constant ``dF / dx`` (``F = Ds Dm^-1``).

        ``negative_part``: only minus each triangle's negative part, ``-sum_{k: l_k < 0} l_k v_k v_k^T``
        of ``K``'s eigenpairs (positive semi-definite; zero for a triangle that is not compressed): added
        to H it replaces every triangle's membrane Hessian by its projection onto the positive
        semi-definite cone (Teran et al. 2005), so H + this is positive definite wherever bending and
        contact are positive semi-definite (the mass term is positive definite)."""
        import scipy.sparse as sp

        P = self._pattern
        tri, w, area, tb = P["tri"], P["tri_w"], P["tri_area"], P["tri_body"]
        m = P["size"]
        if not len(tri):
            return sp.csr_matrix((m, m))
        x = self.xk.to_numpy()[: P["n"]].astype(np.float64)
        bp = self.bp.to_numpy().astype(np.float64)
        E, nu = bp[tb, C_E], bp[tb, C_NU]
        mu, lam = E / (2.0 * (1.0 + nu)), E * nu / (1.0 - nu * nu)
        ta = bp[tb, C_T] * area
        F = np.einsum("tvi,tvc->tic", x[tri], w)  # (T, 3, 2): sum_v x_v w_v^T
        G = 0.5 * (np.einsum("tic,tid->tcd", F, F) - np.eye(2))
        S = 2.0 * mu[:, None, None] * G + (lam * np.trace(G, axis1=1, axis2=2))[:, None, None] * np.eye(2)
        # dG for the 6 unit directions E_(a,c) of F: sym(F^T E_(a,c))[c', d] = (F[a, c'] d_{d c} + F[a, d] d_{c' c}) / 2
        eye2 = np.eye(2)
        dG = 0.5 * (np.einsum("tae,cf->tacef", F, eye2) + np.einsum("taf,ce->tacef", F, eye2))
        dG = dG.reshape(len(tri), 6, 2, 2)
        K = (2.0 * mu[:, None, None] * np.einsum("tjef,tkef->tjk", dG, dG)
             + lam[:, None, None] * np.einsum("tjee,tkff->tjk", dG, dG))
        K += np.einsum("ab,tcd->tacbd", np.eye(3), S).reshape(len(tri), 6, 6)
        K *= ta[:, None, None]
        if negative_part:
            lam_k, V = np.linalg.eigh(K)
            neg = lam_k.min(axis=1) < 0
            if not neg.any():
                return sp.csr_matrix((m, m))
            tri, w, lam_k, V = tri[neg], w[neg], lam_k[neg], V[neg]
            K = np.einsum("tjk,tk,tlk->tjl", V, np.maximum(-lam_k, 0.0), V)
        C = np.einsum("tvc,tacbd,tud->tvaub", w, K.reshape(-1, 3, 2, 3, 2), w)  # (T, 3, 3, 3, 3)
        dof = P["dof"][tri]  # (T, 3)
        ax = np.arange(3)
        r = (3 * dof)[:, :, None, None, None] + ax[None, None, :, None, None]
        c = (3 * dof)[:, None, None, :, None] + ax[None, None, None, None, :]
        r, c = np.broadcast_to(r, C.shape), np.broadcast_to(c, C.shape)
        keep = (np.broadcast_to(dof[:, :, None, None, None], C.shape) >= 0) & \
               (np.broadcast_to(dof[:, None, None, :, None], C.shape) >= 0)
        return sp.csr_matrix((C[keep], (r[keep], c[keep])), shape=(m, m))

    def _factor(self, project: bool = False):
        """Assemble H at ``xk`` and factor it; None where it is not positive definite."""
        H = self.assemble_hessian(project).tocsc()
        lu = self._factor_pd(H)
        return None if lu is None else (H, lu)

    def _factor_pd(self, A):
        """LU of the CSC matrix ``A`` with diagonal pivots, or None where ``A`` is not positive definite (a
        pivot <= 0 without row pivoting: by Sylvester's law of inertia, the pivots' signs are the eigenvalues')."""
        from scipy.sparse.linalg import splu

        self.n_factor += 1
        try:
            lu = splu(A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                      options=dict(SymmetricMode=True))
        except RuntimeError:  # exactly singular
            return None
        if not (np.array_equal(lu.perm_r, lu.perm_c) and np.all(lu.U.diagonal() > 0)):
            return None
        return lu

    def _scatter_free(self, field, y: np.ndarray) -> None:
        out = np.zeros(field.shape + (3,), self.np_real)
        out[self._pattern["free"]] = y.reshape(-1, 3)
        field.from_numpy(out)

    def _direct_newton_step(self) -> bool:
        """The Newton step dx = -H^-1 r into ``cx`` by the sparse direct solver. Where H is not
        positive definite (a compressed sheet buckling; counted in :attr:`n_shift`): with
        ``modified_step="project"`` first the projected Newton step of ``H + C`` (``C`` =
        :meth:`membrane_hessian`, the negative part of every compressed triangle's membrane Hessian;
        counted in :attr:`n_project`); then (the default, or where ``H + C`` is not positive definite
        either: bending or contact Hessians indefinite) the modified Newton step of ``H (+ C) + tau M /
        dt^2`` (the lumped mass; ``tau`` from a factor :data:`SHIFT_GROWTH` below the last one that
        worked, at least :data:`SHIFT_START`, times :data:`SHIFT_GROWTH` until the factorization's
        pivots are positive: Nocedal & Wright, "Numerical Optimization", 3.4): descent directions that
        change continuously with the iterate. False (nothing written) where no shift gives a positive
        definite matrix or the step is not finite (then the caller falls back to truncated CG)."""
        import scipy.sparse as sp

        H = self.assemble_hessian(project=True).tocsc()
        A, lu = H, self._factor_pd(H)
        if lu is None:
            self.n_shift += 1
            if self.modified_step == "project":
                # projected Newton: every compressed triangle's membrane Hessian projected onto the positive
                # semi-definite cone (positive definite with the mass term where bending and contact are
                # positive semi-definite)
                A = (H + self.membrane_hessian(negative_part=True)).tocsc()
                lu = self._factor_pd(A)
                if lu is not None:
                    self.n_project += 1
        if lu is None:
            h = float(self.dt[None])
            D = sp.diags(np.repeat(self.vertex_mass()[self._pattern["free"]], 3) / (h * h), format="csc")
            # the search starts a factor SHIFT_GROWTH below the last shift that worked (Levenberg-Marquardt-like:
            # consecutive iterates of a buckling sheet need similar shifts)
            Ap, tau = A, max(SHIFT_START, self._tau / SHIFT_GROWTH)
            for _ in range(SHIFT_TRIES):
                A = (Ap + tau * D).tocsc()
                lu = self._factor_pd(A)
                if lu is not None:
                    self._tau = tau
                    break
                tau *= SHIFT_GROWTH
            else:
                return False
        free = self._pattern["free"]
        rhs = -self.r.to_numpy()[free].astype(np.float64).ravel()
        dx = lu.solve(rhs)
        if not (np.all(np.isfinite(dx)) and dx @ (A @ dx) > 0):
            return False
        self._scatter_free(self.cx, dx)
        return True

    def _direct_adjoint(self) -> bool:
        """lambda = H^-1 cr (free rows) into ``cx`` by the sparse direct solver at the converged
        ``xk``, refined once; False where H is not positive definite or the solve misses
        ``adjoint_rtol``."""
        fac = self._factor()
        if fac is None:
            return False
        H, lu = fac
        free = self._pattern["free"]
        g = self.cr.to_numpy()[free].astype(np.float64).ravel()
        lam = lu.solve(g)
        res = g - H @ lam
        lam += lu.solve(res)  # one step of iterative refinement
        gn = np.linalg.norm(g)
        if not (np.all(np.isfinite(lam)) and np.linalg.norm(g - H @ lam) <= max(self.adjoint_rtol * gn, 1e-300)):
            return False
        self._scatter_free(self.cx, lam)
        return True

    def _hvp(self) -> tuple[float, float]:
        self._hvp_seed()
        self.residual_vjp()
        self._hvp_collect()
        red = self.red.to_numpy()
        return float(red[5]), float(red[6])

    def _cg(self, from_residual: bool, rtol: float, max_iter: int, truncate: bool) -> tuple[int, bool]:
        """Preconditioned CG on H dx = rhs (rhs: -r, or ``cr``); the result in ``cx``. Returns
        (iterations, converged). ``truncate``: stop at negative curvature (the first direction if
        it is met at once)."""
        self._cg_start(int(from_residual))
        red = self.red.to_numpy()
        rz, rr0 = float(red[3]), float(red[4])
        if rr0 == 0.0:
            return 0, True
        tol2 = (rtol ** 2) * rr0
        for it in range(max_iter):
            pq, _pp = self._hvp()
            if pq <= 0.0:  # negative curvature
                if truncate and it == 0:
                    self._copy_p_to_x()
                return it + 1, truncate
            self._cg_update(rz / pq)
            red = self.red.to_numpy()
            rz_new, rr = float(red[3]), float(red[4])
            if rr <= tol2:
                return it + 1, True
            self._cg_direction(rz_new / rz)
            rz = rz_new
        return max_iter, False

    def _residual_norm(self) -> tuple[float, float]:
        self.residual()
        self._norms()
        red = self.red.to_numpy()
        scale = math.sqrt(float(red[1])) or float(red[2]) or 1.0
        return math.sqrt(float(red[0])), scale

    def _energy_value(self) -> float:
        self.energy_kernel()
        e = float(self._energy[0])
        if self.contact_on:
            e += self.contact.energy()
        return e

    def _newton(self) -> tuple[int, int, float, bool]:
        """Minimize E from the iterate in ``xk``. Returns (iterations, CG iterations, |r| / scale,
        converged)."""
        cg_total = 0
        bound = STEP_BOUND * self.min_edge
        self._infeasible = False
        if self.contact_on:
            self.contact.update()
            bound = min(bound, self.contact.delta)
            if not math.isfinite(self._energy_value()):
                # kinematic vertices (or the start state) put a shell pair at or past contact
                self._infeasible = True
                return 0, 0, math.inf, False
        rnorm, scale = self._residual_norm()
        floor = 0.0
        for it in range(self.max_newton):
            if rnorm <= max(self.rtol * scale, floor):
                return it, cg_total, rnorm / scale, True
            self.diag_kernel()
            self._roundoff()
            floor = ROUNDOFF * self._eps * math.sqrt(float(self.red[7]))
            self._floor = floor / scale
            if floor > FLOOR_MAX * scale:
                # this precision cannot resolve the sheet's forces to a fraction of its weight (a stiff
                # sheet in f32: positions of relative precision eps times stiffness E t): not a solve
                return it, cg_total, rnorm / scale, False
            if rnorm <= floor:
                return it, cg_total, rnorm / scale, True
            if not (self.use_direct() and self._direct_newton_step()):
                if self.use_direct():
                    self.n_fallback += 1
                forcing = min(FORCING, math.sqrt(rnorm / scale))
                n_cg, _ok = self._cg(True, forcing, self.max_cg, truncate=True)
                cg_total += n_cg
            self._direction_stats()
            red = self.red.to_numpy()
            slope, dmax = float(red[5]), float(red[6])
            if not slope < 0:  # not a descent direction (round-off at the bottom): steepest descent
                self._cg_start(1)
                self._copy_p_to_x()
                self._direction_stats()
                red = self.red.to_numpy()
                slope, dmax = float(red[5]), float(red[6])
            alpha = min(1.0, bound / dmax) if dmax > 0 else 1.0
            e0 = self._energy_value()
            if self.contact_on:
                alpha = min(alpha, self.contact.step_bound())  # no pair closes past MIN_GAP_KEEP of its gap
            self._save_iterate()
            accepted = False
            for _ls in range(30):
                self._set_trial(alpha)
                e1 = self._energy_value()
                if e1 <= e0 + 1e-4 * alpha * slope:
                    accepted = True
                    break
                if abs(e1 - e0) <= ENERGY_ROUNDOFF * self._eps * abs(e0):
                    # E cannot resolve the decrease any more (near the minimum the decrease is ~|r|^2 / k):
                    # accept a step that lowers the residual instead
                    r1, s1 = self._residual_norm()
                    if r1 < rnorm:
                        accepted = True
                        break
                alpha *= 0.5
            if not accepted:
                # no decrease of E or |r|: the minimum is as good as this precision allows
                self._set_trial(0.0)
                rnorm, scale = self._residual_norm()
                return it + 1, cg_total, rnorm / scale, rnorm <= max(self.rtol * scale, floor)
            if self.contact_on:
                self.contact.update()
            rnorm, scale = self._residual_norm()
        return self.max_newton, cg_total, rnorm / scale, rnorm <= max(self.rtol * scale, floor)

    # ------------------------------------------------------------------ substep
    def step_forward(self, l: int, t: int) -> None:
        """Substep ``l``: Newton from x_n to x_{n+1} (slot l + 1). Records its convergence."""
        self.load_work(l, l + 1)
        self.place_kinematic()
        self._floor = 0.0
        self._tau = 0.0  # the shift search's memory lasts one substep: a substep is a function of its inputs
        if self.contact_on:
            self.contact.begin_step(l, l + 1)
        its, cgs, res, ok = self._newton()
        self.write_out(l)
        if self.f_pad is not None:
            self._write_pad_reaction(l)
        self._status[l] = (ok, res, t)
        self.stats.append((its, cgs, res))
        if len(self.stats) > 100000:
            del self.stats[:50000]
        if not ok:
            why = (f"|r| / |M g| = {res:.3g} > rtol {self.rtol:g} after {its} iterations" if self._floor <= FLOOR_MAX
                   else f"its round-off floor is {self._floor:.3g} |M g| (> {FLOOR_MAX:g}): this precision cannot "
                        f"resolve the sheet's forces (use precision='f64' for stiff sheets)")
            if self._infeasible:
                why = (f"a shell <-> shell contact pair starts the step at or past contact (least gap "
                       f"{self.contact.min_gap():.3g} of the margin): a tool-attached or pinned vertex was moved "
                       f"into another sheet")
            warnings.warn(f"shell Newton did not converge in substep {l} of the chunk (action step {t}): {why}; "
                          f"gradients through this step raise NewtonNotConverged", NewtonWarning, stacklevel=2)

    def step_grad(self, l: int, t: int) -> None:
        """Adjoint of :meth:`step_forward` by the implicit function theorem (module docstring)."""
        ok, res, step = self._status.get(l, (False, math.nan, t))
        if not ok:
            raise NewtonNotConverged(
                f"cannot differentiate shell substep {l} of the chunk (action step {step}): its Newton solve stopped "
                f"at |r| / |M g| = {res:.3g} (rtol {self.rtol:g}), so the implicit-function adjoint would be of "
                f"another function; lower dt, raise max_iter with scene.partset.shell.set_newton(), or soften "
                f"the contact")
        self.load_work(l, l + 1)
        self._load_iterate(l)
        if self.contact_on:
            self.contact.begin_step(l, l + 1)
            self.contact.update()
        self._adjoint_rhs(l)
        if self._reacting:
            # the reaction on the pads (shell.f_pad[l + 1]) depends on x_{n+1} too: its gradient joins the rhs
            self._zero_work_grads()
            self.contact.zero_obstacle_grads()
            self.contact.reaction_vjp(l)
            self._reaction_rhs()
        self.diag_kernel()
        n_cg, converged = 0, self.use_direct() and self._direct_adjoint()
        if not converged:
            if self.use_direct():
                self.n_fallback += 1
            n_cg, converged = self._cg(False, self.adjoint_rtol, 4 * self.max_cg, truncate=False)
        if not converged:
            raise NewtonNotConverged(
                f"shell substep {l} of the chunk (action step {step}): the adjoint solve H lambda = g did not "
                f"converge in {n_cg} CG iterations (H not positive definite at the converged state?)")
        self._zero_work_grads()  # the Hessian-vector products above accumulated into them
        pad = self.contact_on and self.contact.fem is not None
        if pad:
            self.contact.zero_obstacle_grads()
        self._adjoint_seed()
        self.residual_vjp()
        if pad:
            if self.pad_reaction:
                self.contact.reaction_vjp(l)  # the reaction's own dependence on x_n, the gel and the parameters
                self.contact.carry_grad(l)
            self.contact.scatter_obstacle_grads(l)
        self._kinematic_grads()
        backend.grad(self.place_kinematic)
        self._scatter_work_grads(l)

    def substep(self, tape, l: int, t: int) -> None:
        if l == 0 and tape.recording:
            self._status.clear()
        tape.launch(self.step_forward, l, t, grad=self.step_grad)  # writes slot l + 1 only: no replay
        tape.launch(self.plastic_update, l)

    def zero_scratch_grads(self) -> None:
        """Nothing: :meth:`step_grad` zeroes the work gradients it uses."""

    # ------------------------------------------------------------------ queries
    def energy(self, slot: int = 0) -> dict[str, float]:
        """Energies at ``slot`` (J): membrane, bending, contact (penalty + friction of a step from
        that state at rest) and gravitational potential ``-m g . x`` (free vertices) and kinetic;
        with shell <-> shell contact on, also ``self_contact`` (the barrier's)."""
        self.load_work(slot, slot)
        self._zero_v()
        self.energy_kernel()
        e = self._energy.to_numpy()
        extra = {}
        if self.contact_on:
            self.contact._fric = self.contact._pad_fric = np.zeros((0, 5), np.int64)
            if self.contact.fem is not None:
                self.contact.load_obstacle(slot, slot)
            self.contact.update()
            extra["self_contact"] = self.contact.energy()
        m = self.vertex_mass()
        st = self.export(slot)
        free = self.kind.to_numpy()[: len(m)] == FREE
        g = self.gravity.to_numpy()
        return {"membrane": float(e[2]), "bending": float(e[3]), "contact": float(e[4]),
                "gravity": float(-(m[free, None] * st["x"][free] * g).sum()),
                "kinetic": float(0.5 * (m[:, None] * st["v"] ** 2).sum()), **extra}

    @ti.kernel
    def _zero_v(self):
        for i in range(self.rows[None]):
            self.vn[i] = ti.zero(self.vn[i])

    def vertex_mass(self) -> np.ndarray:
        """(n,) lumped vertex masses (kg) at the current densities and thicknesses."""
        n = int(self.rows[None])
        b = self.node_body.to_numpy()[:n]
        rho = self.density.to_numpy().astype(np.float64)[b]
        t = self.thickness.to_numpy().astype(np.float64)[b]
        return rho * t * self.node_area.to_numpy()[:n].astype(np.float64)

    def dihedral(self, slot: int = 0) -> np.ndarray:
        """(h,) signed dihedral angles (rad) at ``slot``."""
        x = self.export(slot)["x"]
        h = int(self.n_hinges[None])
        return dihedral_angles(x, self.hinge.to_numpy()[:h])

"""Tetrahedral FEM bodies (gels of tactile sensors) as a part: linear tets, explicit dynamics.

User-facing: :class:`FEMBody` (a :class:`physim.TetMesh` with a material, damping and its
kinematic nodes), added with :meth:`physim.Scene.add_fem`. The scene concatenates its bodies
into one :class:`FEMPart`: state ``fem.x``, ``fem.v`` ((nodes, 3) positions in m and
velocities in m/s); parameters ``fem.E`` (Pa), ``fem.nu``, ``fem.density`` (kg/m^3),
``fem.alpha`` (1/s) and ``fem.beta`` (s), one row per body, all differentiable.

Elasticity (per tet, ``F = Ds Dm^-1``, ``Ds`` / ``Dm`` the deformed / rest edge matrices;
``mu``, ``lam`` the Lame parameters of ``E``, ``nu``; ``J = det F``, ``I_C = |F|^2``,
``cof F = J F^-T``):

- ``"stable_neohookean"`` (Smith, de Goes and Kim 2018, their rest-stable energy)::

      Psi = mu'/2 (I_C - 3) + lam'/2 (J - a)^2 - mu'/2 log(I_C + 1),   a = 1 + 3 mu' / (4 lam')
      P   = mu' (1 - 1 / (I_C + 1)) F + lam' (J - a) cof F

  with the paper's reparametrization ``mu' = 4/3 mu``, ``lam' = lam + 5/6 mu``, which makes
  its linearization at F = I the linear elasticity of (E, nu) (the tests check both).
  (``a = 1 + mu'/lam'`` is the variant without the log term; with it, P(I) = 0 needs 3/4.)
- ``"corotated"`` (fixed corotated, Stomakhin et al. 2012)::

      Psi = mu |F - R|^2 + lam/2 (J - 1)^2,   P = 2 mu (F - R) + lam (J - 1) cof F

  ``R`` the rotation of the polar decomposition F = R S, by 7 scaled Newton iterations
  ``X <- (g X + X^-T / g) / 2``, ``g = |det X|^(-1/3)`` (round-off for stretches within
  [0.05, 20]), in its own launch (``polar``) whose adjoint is written by hand (Taichi's
  would differentiate the iterations, and compiling that takes a minute): with
  ``dR = R [w]_x`` and ``[w]_x S + S [w]_x = [(tr S I - S) w]_x``,
  ``dL/dF = R [y]_x``, ``y = (tr S I - S)^-1 a``, ``a = axial(R^T dL/dR - (R^T dL/dR)^T)``.

Nodal forces ``f = -V P Dm^-T`` (columns to vertices 1..3, minus their sum to vertex 0),
scattered with atomics. Lumped mass ``m_i = density * (sum of V / 4 over the tets at i)``,
evaluated in the kernels (so ``fem.density`` has its exact gradient).

Damping (Rayleigh): mass-proportional ``-alpha m v``, integrated implicitly
(``v' = (v + dt a) / (1 + alpha dt)``: no stability limit), and stiffness-proportional as
a Kelvin-Voigt viscous stress of the Green strain rate ``Edot = sym(F^T dF/dt)``::

      S_v = beta (2 mu Edot + lam tr(Edot) I),   P_v = F S_v

(a second Piola stress: ``beta`` times the linear-elastic moduli applied to the strain rate).
At the rest state it is exactly ``beta K v`` (K the stiffness matrix); it vanishes for rigid
motion at any rotation (F^T dF/dt is then skew) and conserves angular momentum (P_v F^T =
F S_v F^T is symmetric). Unlike a Cauchy stress of ``sym(dF/dt F^-1)`` it needs no F^-1, and
its reverse mode compiles faster.

Time stepping: symplectic Euler; the kinematic nodes follow their mount tool's pose
(``x = R(rot) X_local + pos``, ``X_local`` the node in the tool's frame at the start) or stay
pinned; floor and walls at velocity level as the mass-spring part does.

Contact with the tools (every tool but the body's mount) is a penalty on the surface nodes,
evaluated at every sub-step with the tools' pose interpolated to it (a rigid indenter is
felt as smoothly as the gel deforms, and the force is a smooth function of the state)::

    f_n = A_i * max(kc * (-phi) - cc * (v_rel . n), 0)                  (phi < 0: penetration)
    f_t = -mu * f_n * v_t / sqrt(|v_t|^2 + v_s^2),   v_s = mu f_n / eta + 1e-6 m/s

``A_i`` the node's lumped rest surface area, ``phi``/``n`` the tool's signed distance and
normal, ``kc`` = ``fem.contact_stiffness`` (Pa/m), ``cc`` = ``fem.contact_damping``,
``mu`` = ``tools.friction``; the stick viscosity ``eta = STICK m_i / h`` removes at most
half of a node's tangential slip per sub-step (static friction without overshoot). The
coupler's force of MPM material (:mod:`physim.parts.coupler`) is added to the same nodes.
The sum is kept per node as the slot state ``fem.f_contact`` (N; the mean over the
substep's sub-steps), the force field a tactile sensor reads (:mod:`physim.tactile`).
Another part's force on the nodes enters through :meth:`FEMPart.set_external_force` (the thin
shells' reaction on the pads, :mod:`physim.parts.shell_contact`): a vector slot field of that part,
slot ``l`` added to the free nodes during substep ``l`` (held over its sub-steps) and to
``fem.f_contact``; Taichi's adjoint of :meth:`FEMPart.external_forces` gives its gradient.
A tool that starts inside a gel (a free rest node deeper than ``START_DEPTH`` = 0.1 of the
smallest tet's height scale) is a ValueError at load naming the body, node, tool and depth.

The explicit limit (:func:`explicit_limit`) is rigorous for the linearized system: by the
element eigenvalue bound, every mode has ``w^2 <= 4 (lam + 2 mu) / rho * max_e sum_a
|grad N_a|^2`` (plus ``kc A_i / m_i`` for a node in tool contact); symplectic Euler with
damping rate ``c = beta w^2`` (plus ``cc A_i / m_i``) is stable iff
``dt^2 w^2 / 4 + dt c / 2 < 1``; half that dt is used (nonlinear stiffening,
contact). When the scene's dt is larger, the part **sub-cycles**: n = ceil(dt / limit) equal
sub-steps per substep (:attr:`FEMPart.subcycles`, announced by a :class:`Subcycling`
warning), each recorded on the tape; with ``subcycle=False`` such a dt is a ValueError.

One substep on the tape (every launch record-and-run; all but the last replayed in reverse
mode, restoring the sub-step ring ``xs``/``vs``/``force`` the adjoints read):
``copy_in`` (slot l -> ring 0), ``clear_forces``, n x (``deform`` k, [``polar`` k,]
``elastic_forces`` k, ``damping_forces`` k, [``face_forces`` k,] [``contact_forces`` k,]
[``external_forces`` k,] ``integrate`` k),
``copy_out`` (ring n -> slot l + 1).

Batched worlds (``Scene(n_worlds=W)``, :class:`FEMLayout` ``worlds``): the bodies come
world-major (world ``w``'s bodies are rows ``w * B ...`` of every per-body parameter), a body
mounted on tool ``j`` follows its own world's tool ``j`` (row ``w * T + j``) and its surface
meets only its world's tools (``body_world``) and, through the coupler, its world's particles
(``node_world``). Every world takes the same number of sub-steps: the most any world's gels
need at their parameters.
"""


import math
import warnings
from dataclasses import dataclass

import numpy as np
import taichi as ti

from ..contact.sdf import STICK, penalty_response, tool_sdf
from ..meshes import TetMesh
from ..solvers._linalg import rotation_matrix, safe_norm
from .base import BAD_NONFINITE, BAD_OUTSIDE, BAD_PART, Part
from .tools import SHAPE_IDS

__all__ = ["FEMBody", "FEMLayout", "FEMSpec", "FEMPart", "Subcycling", "explicit_limit", "MODELS"]

MODELS = {"stable_neohookean": 0, "corotated": 1}
#: fraction of the explicit stability bound used
SAFETY = 0.5
POLAR_ITERS = 7
#: default tool-contact stiffness, in units of E / h (h: the smallest tet's height scale)
CONTACT_K = 5.0
#: deepest a free rest node may start inside a tool, in units of the body's smallest tet height
#: scale h (:meth:`FEMPart._check_tool_overlap`)
START_DEPTH = 0.1
# node kinds
FREE, PINNED = -2, -1
# health flags
BAD_INVERTED = BAD_PART


class Subcycling(UserWarning):
    """The FEM part sub-steps each scene substep (the scene's dt exceeds the gels' limit)."""


def lame(E, nu):
    """(mu, lam) of Young's modulus ``E`` and Poisson ratio ``nu`` (numpy or float)."""
    return E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))


def explicit_limit(E, nu, density, beta, smax, kc=0.0, cc=0.0, amax=0.0, w2_extra=0.0, c_extra=0.0):
    """Largest safe explicit step (s) of a body: see the module docstring. ``smax``: the body's
    largest ``sum_a |grad N_a|^2`` over its tets (1/m^2); ``kc``, ``cc``: tool-contact
    stiffness (Pa/m) and damping (Pa s/m), ``amax`` the largest surface area over lumped volume
    of a node (1/m): a node pressed into a tool adds ``kc amax / density`` to w^2 and
    ``cc amax / density`` to the damping rate; ``w2_extra``, ``c_extra``: more of each (the
    MPM coupling)."""
    mu, lam = lame(np.asarray(E, float), np.asarray(nu, float))
    rho = np.asarray(density, float)
    w2e = 4.0 * (lam + 2 * mu) / rho * np.asarray(smax, float)
    w2 = w2e + np.asarray(kc, float) * np.asarray(amax, float) / rho + w2_extra
    cd = np.asarray(beta, float) * w2e + np.asarray(cc, float) * np.asarray(amax, float) / rho + c_extra
    return SAFETY * (np.sqrt(cd**2 / 4 + w2) - cd / 2) / (w2 / 2)


def _finite_scalar(owner: str, name: str, value, lo: float, hi: float = math.inf, lo_open=False, hi_open=False):
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        a = "(" if lo_open else "["
        b = ")" if hi_open else "]"
        raise ValueError(f"{owner}.{name} must be in {a}{lo:g}, {hi:g}{b}, got {value!r}")
    return v


@dataclass
class FEMBody:
    """One tetrahedral FEM body.

    Attributes:
        mesh: a :class:`physim.TetMesh` (rest shape; :func:`physim.flat_pad`,
            :func:`physim.dome_gel`, :func:`physim.read_tet_mesh`).
        E: Young's modulus (Pa). nu: Poisson ratio, in (-1, 0.5). density: kg/m^3.
        model: ``"stable_neohookean"`` or ``"corotated"``.
        alpha: mass-proportional damping (1/s). beta: stiffness-proportional damping (s).
        fixed: kinematic node indices; ``None``: ``mesh.fixed`` (a pad's or dome's rigid back).
            Pass ``[]`` for a free body.
        mount: index of the tool whose pose drives the kinematic nodes (the sensor's mount);
            ``None``: they stay where they are.
        velocity: initial velocity of every free node (3 values, m/s).
        friction: Coulomb coefficient against the floor and the walls.
        contact_stiffness: penalty stiffness of the surface against the tools and MPM material
            (Pa/m: contact pressure per metre of penetration); ``None``: ``CONTACT_K E / h``, ``h`` the smallest
            tet's height scale (``1/sqrt(max sum_a |grad N_a|^2)``): contact much stiffer than
            one layer of tets, so penetration is a few % of the indentation.
        contact_damping: normal dashpot of that contact (Pa s/m: pressure per m/s).
    """

    mesh: TetMesh
    E: float = 1e5
    nu: float = 0.4
    density: float = 1000.0
    model: str = "stable_neohookean"
    alpha: float = 0.0
    beta: float = 0.0
    fixed: np.ndarray | None = None
    mount: int | None = None
    velocity: np.ndarray | None = None
    friction: float = 0.5
    contact_stiffness: float | None = None
    contact_damping: float = 0.0

    def __post_init__(self):
        if not isinstance(self.mesh, TetMesh):
            raise TypeError(f"FEMBody.mesh must be a physim.TetMesh, got {type(self.mesh).__name__}")
        if self.model not in MODELS:
            raise ValueError(f"FEMBody.model must be one of {sorted(MODELS)}, got {self.model!r}")
        self.E = _finite_scalar("FEMBody", "E", self.E, 0.0, lo_open=True)
        self.nu = _finite_scalar("FEMBody", "nu", self.nu, -1.0, 0.5, lo_open=True, hi_open=True)
        self.density = _finite_scalar("FEMBody", "density", self.density, 0.0, lo_open=True)
        self.alpha = _finite_scalar("FEMBody", "alpha", self.alpha, 0.0)
        self.beta = _finite_scalar("FEMBody", "beta", self.beta, 0.0)
        self.friction = _finite_scalar("FEMBody", "friction", self.friction, 0.0)
        if self.contact_stiffness is not None:
            self.contact_stiffness = _finite_scalar("FEMBody", "contact_stiffness", self.contact_stiffness, 0.0,
                                                    lo_open=True)
        self.contact_damping = _finite_scalar("FEMBody", "contact_damping", self.contact_damping, 0.0)
        n = self.mesh.n_vertices
        fixed = self.mesh.fixed if self.fixed is None else np.asarray(self.fixed)
        if fixed.size == 0:
            fixed = np.zeros(0, np.int32)
        if fixed.ndim != 1 or not np.issubdtype(fixed.dtype, np.integer):
            raise ValueError(f"FEMBody.fixed must be a 1D array of node indices, got {fixed.dtype} of shape "
                             f"{fixed.shape}")
        if ((fixed < 0) | (fixed >= n)).any():
            raise ValueError(f"FEMBody.fixed: index {int(fixed[(fixed < 0) | (fixed >= n)][0])} is outside "
                             f"0..{n - 1}")
        self.fixed = np.unique(fixed).astype(np.int32)
        if self.mount is not None:
            if not (isinstance(self.mount, (int, np.integer)) and self.mount >= 0):
                raise ValueError(f"FEMBody.mount must be a tool index >= 0 or None, got {self.mount!r}")
            if len(self.fixed) == 0:
                raise ValueError(f"FEMBody.mount={self.mount} but the body has no kinematic nodes (fixed is empty): "
                                 f"nothing would attach it to the tool")
            self.mount = int(self.mount)
        if len(self.fixed) == n:
            raise ValueError("FEMBody.fixed lists every node: nothing is left to simulate")
        vel = np.zeros(3) if self.velocity is None else np.asarray(self.velocity, dtype=np.float64).reshape(-1)
        if vel.shape != (3,) or not np.isfinite(vel).all():
            raise ValueError(f"FEMBody.velocity must be 3 finite values, got {self.velocity!r}")
        self.velocity = vel

    @property
    def n_vertices(self) -> int:
        return self.mesh.n_vertices

    @property
    def n_tets(self) -> int:
        return self.mesh.n_tets

    def initial_velocities(self) -> np.ndarray:
        v = np.tile(self.velocity, (self.n_vertices, 1))
        v[self.fixed] = 0.0
        return v

    def geometry(self):
        """(Dm^-1 (m, 3, 3), rest volumes (m,), sum_a |grad N_a|^2 per tet (m,), lumped
        volume per node (n,))."""
        x = self.mesh.vertices[self.mesh.tets]
        Dm = np.stack([x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]], axis=-1)
        Dminv = np.linalg.inv(Dm)
        vol = np.linalg.det(Dm) / 6.0
        s = (Dminv**2).sum(axis=(1, 2)) + (Dminv.sum(axis=1) ** 2).sum(axis=1)
        vnode = np.zeros(self.n_vertices)
        np.add.at(vnode, self.mesh.tets.ravel(), np.repeat(vol / 4.0, 4))
        return Dminv, vol, s, vnode

    def surface_area(self) -> np.ndarray:
        """(n,) lumped rest surface area per node (m^2): a third of each boundary triangle's."""
        x = self.mesh.vertices
        f = self.mesh.surface_faces()
        area = 0.5 * np.linalg.norm(np.cross(x[f[:, 1]] - x[f[:, 0]], x[f[:, 2]] - x[f[:, 0]]), axis=1)
        out = np.zeros(self.n_vertices)
        np.add.at(out, f.ravel(), np.repeat(area / 3.0, 3))
        return out

    def contact_k(self, smax: float | None = None) -> float:
        """The tool-contact stiffness in use (Pa/m): :attr:`contact_stiffness` or its default."""
        if self.contact_stiffness is not None:
            return self.contact_stiffness
        smax = self.geometry()[2].max() if smax is None else smax
        return CONTACT_K * self.E * math.sqrt(smax)

    def stable_dt(self) -> float:
        """This body's explicit limit (s) at its current parameters (with surface contact)."""
        _d, _v, s, vnode = self.geometry()
        amax = float((self.surface_area() / vnode).max())
        return float(explicit_limit(self.E, self.nu, self.density, self.beta, s.max(),
                                    self.contact_k(s.max()), self.contact_damping, amax))


@dataclass(frozen=True)
class FEMLayout:
    """What a :class:`FEMPart` is compiled for: row capacities, the models in use, contact with
    the tools, and the sub-step ring's capacity (most sub-steps per scene substep)."""

    nodes: int
    tets: int
    bodies: int
    models: tuple
    tool_contact: bool
    subcycles: int = 1
    mpm_contact: bool = False
    faces: int = 16
    #: batched worlds (Scene(n_worlds)): bodies world-major, each meets only its world's tools
    #: (and, through the coupler, its world's MPM particles)
    worlds: int = 1


@dataclass
class FEMSpec:
    """What :meth:`FEMPart.load` writes."""

    bodies: list
    tool_poses: list  # (position (3,), quaternion (4,)) of every tool at the start
    gravity: np.ndarray
    floor: float
    wall_lo: float
    wall_hi: float
    subcycle: bool = True


@ti.func
def _cols(M):
    return (ti.Vector([M[0, 0], M[1, 0], M[2, 0]]), ti.Vector([M[0, 1], M[1, 1], M[2, 1]]),
            ti.Vector([M[0, 2], M[1, 2], M[2, 2]]))


@ti.func
def _cof_det(F):
    """(cof F = d det F / dF, det F)."""
    f0, f1, f2 = _cols(F)
    c0 = f1.cross(f2)
    return ti.Matrix.cols([c0, f2.cross(f0), f0.cross(f1)]), f0.dot(c0)


@ti.func
def polar_rotation(F):
    """Rotation of the polar decomposition F = R S by scaled Newton iterations."""
    X = F
    for _ in ti.static(range(POLAR_ITERS)):
        c, d = _cof_det(X)
        g = ti.pow(ti.abs(d), -1.0 / 3.0)
        X = 0.5 * (g * X + c / (g * d))
    return X


@ti.data_oriented
class FEMPart(Part):
    """The linear-tet FEM bodies of a scene."""

    name = "fem"

    def __init__(self, layout: FEMLayout, K: int, real, tools, controls):
        super().__init__(K, real)
        self.layout = layout
        self.tools, self.controls = tools, controls
        N, M, B, NS = layout.nodes, layout.tets, layout.bodies, layout.subcycles
        self.capacity = N
        self.x = self.slot_field("x", (3,), N)
        self.v = self.slot_field("v", (3,), N)
        # contact force on each node (N), mean over the substep that ended at the slot (0 at slot 0)
        self.f_contact = self.slot_field("f_contact", (3,), N)
        # the sub-step ring: states 0..n and forces 0..n-1 of the current substep
        self.xs = self.scratch_field((3,), (NS + 1, N))
        self.vs = self.scratch_field((3,), (NS + 1, N))
        self.force = self.scratch_field((3,), (NS, N))
        self.fc = self.scratch_field((3,), (NS, N))  # contact part of force (tools + coupler)
        # force of the coupler (MPM material) on each node, written once per substep
        self.f_ext = self.scratch_field((3,), (NS, N) if layout.mpm_contact else (1, 1))
        self.coupler = None  # set by the PartSet when MPM material touches the gel
        # external force on each node (N): another part's (K + 1, >= N) vector slot field, or None
        # (set_external_force: the sheets' reaction on the pads)
        self.external = None
        self.corotated = "corotated" in layout.models
        self._contact = layout.tool_contact or layout.mpm_contact
        # per sub-step and tet: F and dF/dt (gathered once: the stress launches read them)
        self.Fs = self.scratch_field((3, 3), (NS, M))
        self.Fdot = self.scratch_field((3, 3), (NS, M))
        # polar rotations of the corotated tets, per sub-step (one row when no tet needs them)
        self.R = self.scratch_field((3, 3), (NS, M) if self.corotated else (1, 1))
        # constants
        self.tets = ti.Vector.field(4, ti.i32, shape=M)
        self.Dminv = ti.Matrix.field(3, 3, real, shape=M)
        self.vol = ti.field(real, shape=M)
        self.tet_body = ti.field(ti.i32, shape=M)
        self.node_body = ti.field(ti.i32, shape=N)
        self.vnode = ti.field(real, shape=N)  # lumped volume (m^3)
        self.anode = ti.field(real, shape=N)  # lumped rest surface area (m^2), 0 inside
        # boundary triangles (outward), every body's, for the coupler and the readings
        self.faces = ti.Vector.field(3, ti.i32, shape=layout.faces)
        self.n_faces = ti.field(ti.i32, shape=())
        self.kind = ti.field(ti.i32, shape=N)  # FREE, PINNED or the mount tool's row
        # the world of each body and node (batched layouts only): bodies come world-major, the same
        # count per world
        self.worlds = layout.worlds
        self.body_world = ti.field(ti.i32, shape=B) if layout.worlds > 1 else None
        self.node_world = ti.field(ti.i32, shape=N) if layout.worlds > 1 else None
        self.X_local = ti.Vector.field(3, real, shape=N)  # kinematic node in its mount's frame
        self.model = ti.field(ti.i32, shape=B)
        self.mount = ti.field(ti.i32, shape=B)  # tool row or -1
        self.friction = ti.field(real, shape=B)
        self.n_tets = ti.field(ti.i32, shape=())
        self.n_bodies = ti.field(ti.i32, shape=())
        self.E = ti.field(real, shape=B, needs_grad=True)
        self.nu = ti.field(real, shape=B, needs_grad=True)
        self.density = ti.field(real, shape=B, needs_grad=True)
        self.alpha = ti.field(real, shape=B, needs_grad=True)
        self.beta = ti.field(real, shape=B, needs_grad=True)
        self.param("E", "Pa", self.E, lower=0.0, lower_open=True, doc="Young's modulus of the gel (Pa)")
        self.param("nu", "1", self.nu, lower=-1.0, upper=0.5, lower_open=True, upper_open=True,
                   doc="Poisson ratio of the gel")
        self.param("density", "kg/m^3", self.density, lower=0.0, lower_open=True, doc="gel density (kg/m^3)")
        self.param("alpha", "1/s", self.alpha, lower=0.0, doc="mass-proportional damping (1/s)")
        self.param("beta", "s", self.beta, lower=0.0, doc="stiffness-proportional damping (s)")
        self.kc = ti.field(real, shape=B, needs_grad=True)
        self.cc = ti.field(real, shape=B, needs_grad=True)
        self.param("contact_stiffness", "Pa/m", self.kc, lower=0.0, lower_open=True,
                   doc="surface contact stiffness against tools and MPM material (pressure per metre, Pa/m)")
        self.param("contact_damping", "Pa s/m", self.cc, lower=0.0, doc="surface contact normal damping (Pa s/m)")
        self.gravity = ti.Vector.field(3, real, shape=())
        self.lo = ti.Vector.field(3, real, shape=())
        self.hi = ti.Vector.field(3, real, shape=())
        self.bad = ti.field(ti.i32, shape=self.S)
        self._energy = ti.field(real, shape=3)
        self.subcycle = True
        self._n = 1  # sub-steps of the current chunk
        self._damped = True  # some body has beta > 0 (else a forward-only run skips damping_forces)
        self._announced = 1
        self._smax = np.zeros(0)
        self._hmin = np.zeros(0)
        self._amax = np.zeros(0)

    def param_rows(self, name: str) -> int:
        return int(self.n_bodies[None])

    # ------------------------------------------------------------------ protocol
    def load(self, spec: FEMSpec) -> None:
        L = self.layout
        N, M, B = L.nodes, L.tets, L.bodies
        bodies = spec.bodies
        n = sum(b.n_vertices for b in bodies)
        m = sum(b.n_tets for b in bodies)
        if n > N or m > M or len(bodies) > B:
            raise ValueError(f"{n} nodes / {m} tets / {len(bodies)} bodies exceed this layout's capacity "
                             f"{N} / {M} / {B}")
        r = self.np_real
        tets, dminv = np.zeros((M, 4), np.int32), np.tile(np.eye(3), (M, 1, 1))
        vol, tbody = np.zeros(M), np.zeros(M, np.int32)
        nbody, vnode, anode = np.zeros(N, np.int32), np.ones(N), np.zeros(N)
        faces = []
        amax = []  # per body: the largest surface area / lumped volume of a node
        kind, xloc = np.full(N, FREE, np.int32), np.zeros((N, 3))
        model, mount, fric = np.zeros(B, np.int32), np.full(B, -1, np.int32), np.zeros(B)
        prm = {k: np.ones(B) for k in ("E", "nu", "density", "alpha", "beta", "kc", "cc")}
        prm["nu"][:] = 0.0
        smax, hmin = [], []
        W = L.worlds
        if len(bodies) % W or len(spec.tool_poses) % W:
            raise ValueError(f"{len(bodies)} FEM bodies and {len(spec.tool_poses)} tools do not split into {W} worlds")
        per_body, per_tool = len(bodies) // W, len(spec.tool_poses) // W
        v0 = t0 = 0
        for bi, b in enumerate(bodies):
            nv, nt = b.n_vertices, b.n_tets
            Di, vo, s, vn = b.geometry()
            tets[t0: t0 + nt] = b.mesh.tets + v0
            dminv[t0: t0 + nt], vol[t0: t0 + nt], tbody[t0: t0 + nt] = Di, vo, bi
            nbody[v0: v0 + nv], vnode[v0: v0 + nv] = bi, vn
            area = b.surface_area()
            area[b.fixed] = 0.0  # kinematic nodes feel no contact
            anode[v0: v0 + nv] = area
            amax.append(float((area / vn).max()))
            faces.append(b.mesh.surface_faces() + v0)
            X = b.mesh.vertices
            if b.mount is None:
                kind[v0 + b.fixed] = PINNED
                xloc[v0 + b.fixed] = X[b.fixed]
            else:
                if b.mount >= per_tool:
                    raise ValueError(f"FEM body {bi}: mount={b.mount} but the scene has {per_tool} tool(s)"
                                     + (" per world" if W > 1 else ""))
                row = (bi // per_body) * per_tool + b.mount  # the mount of this body's world
                p0, q0 = spec.tool_poses[row]
                R0 = _quat_matrix(q0)
                kind[v0 + b.fixed] = row
                xloc[v0 + b.fixed] = (X[b.fixed] - p0) @ R0  # R0^T (X - p0), row-wise
                mount[bi] = row
            model[bi], fric[bi] = MODELS[b.model], b.friction
            for k in ("E", "nu", "density", "alpha", "beta"):
                prm[k][bi] = getattr(b, k)
            prm["kc"][bi], prm["cc"][bi] = b.contact_k(float(s.max())), b.contact_damping
            smax.append(float(s.max()))
            hmin.append(float(1.0 / np.sqrt(s.max())))
            v0, t0 = v0 + nv, t0 + nt
        missing = set(MODELS[b.model] for b in bodies) - set(MODELS[k] for k in L.models)
        if missing:
            raise ValueError(f"this FEM layout is compiled for {L.models}, not {sorted(missing)}")
        self.rows[None] = n
        self.n_tets[None] = m
        self.n_bodies[None] = len(bodies)
        self.tets.from_numpy(tets)
        self.Dminv.from_numpy(dminv.astype(r))
        self.vol.from_numpy(vol.astype(r))
        self.tet_body.from_numpy(tbody)
        self.node_body.from_numpy(nbody)
        self.vnode.from_numpy(vnode.astype(r))
        self.anode.from_numpy(anode.astype(r))
        faces = np.concatenate(faces).astype(np.int32)
        if len(faces) > L.faces:
            raise ValueError(f"{len(faces)} surface triangles exceed this layout's capacity {L.faces}")
        fbuf = np.zeros((L.faces, 3), np.int32)
        fbuf[: len(faces)] = faces
        self.faces.from_numpy(fbuf)
        self.n_faces[None] = len(faces)
        self.kind.from_numpy(kind)
        self.X_local.from_numpy(xloc.astype(r))
        if W > 1:
            bworld = np.zeros(B, np.int32)
            bworld[: len(bodies)] = np.arange(len(bodies)) // per_body
            self.body_world.from_numpy(bworld)
            nworld = np.zeros(N, np.int32)
            nworld[:n] = bworld[nbody[:n]]
            self.node_world.from_numpy(nworld)
        self.model.from_numpy(model)
        self.mount.from_numpy(mount)
        self.friction.from_numpy(fric.astype(r))
        for k, arr in prm.items():
            getattr(self, k).from_numpy(arr.astype(r))
        self.gravity[None] = np.asarray(spec.gravity, np.float64).tolist()
        lo = np.full(3, spec.wall_lo)
        lo[1] = spec.floor
        self.lo[None] = lo.tolist()
        self.hi[None] = [spec.wall_hi] * 3
        self.subcycle = bool(spec.subcycle)
        self._smax, self._hmin, self._amax = np.array(smax), np.array(hmin), np.array(amax)
        self._n = self._announced = 1
        self.bodies = list(bodies)
        if L.tool_contact:
            self._check_tool_overlap(spec)

    def _check_tool_overlap(self, spec: FEMSpec) -> None:
        """Refuse a tool (other than a body's mount) that starts inside a gel: a free rest node
        deeper than :data:`START_DEPTH` times the body's smallest tet height scale ``h`` (the
        ``h`` of the default contact stiffness ``CONTACT_K E / h``). Shallower is a start in
        touch: the penalty's first pressure is at most ``CONTACT_K * START_DEPTH E`` = 0.5 E and
        the surface layer strains ~10 % to push the node out. Deeper, the penalty throws the
        surface nodes through their tets (or, past a sphere's centre, out of its far side)."""
        nt = len(spec.tool_poses)
        if nt == 0:
            return
        shapes = self.tools.shape.to_numpy()[:nt]
        sizes = self.tools.size.to_numpy()[:nt].astype(np.float64)
        mounts = self.mount.to_numpy()
        W = self.layout.worlds
        per_body, per_tool = len(self.bodies) // W, nt // W
        v0 = 0
        for bi, b in enumerate(self.bodies):
            free = np.setdiff1d(np.arange(b.n_vertices), b.fixed)
            X = b.mesh.vertices[free]
            tol = START_DEPTH * float(self._hmin[bi])
            first = (bi // per_body) * per_tool  # this body's world's tools only
            for e in range(first, first + per_tool):
                pos, quat = spec.tool_poses[e]
                if e == mounts[bi]:
                    continue
                p = (X - np.asarray(pos, np.float64).reshape(1, 3)) @ _quat_matrix(quat)  # R^T (x - c), row-wise
                phi = tool_sdf_np(int(shapes[e]), sizes[e], p)
                k = int(np.argmin(phi))
                if phi[k] < -tol:
                    i = int(free[k])
                    name = {v: s for s, v in SHAPE_IDS.items()}.get(int(shapes[e]), str(shapes[e]))
                    raise ValueError(
                        f"FEM body {bi}: tool {e} ({name}) starts inside the gel: node {i} (scene node {v0 + i}) at "
                        f"{X[k].round(5).tolist()} is {-phi[k]:.3g} m inside it ({int((phi < -tol).sum())} free nodes "
                        f"deeper than the tolerance {tol:.3g} m = {START_DEPTH:g} x the smallest tet's height "
                        f"scale); start the tool outside the gel (touching at most) and move it in with actions")
            v0 += b.n_vertices

    def _params(self) -> dict[str, np.ndarray]:
        nb = int(self.n_bodies[None])
        return {k: getattr(self, k).to_numpy()[:nb].astype(np.float64)
                for k in ("E", "nu", "density", "beta", "kc", "cc")}

    def limits(self) -> np.ndarray:
        """Explicit stability limit (s) of each body at the current parameters (tool contact
        included when the scene has tools)."""
        p = self._params()
        amax = self._amax if self._contact else 0.0
        return explicit_limit(p["E"], p["nu"], p["density"], p["beta"], self._smax, p["kc"], p["cc"], amax)

    def stable_dt(self) -> float:
        """The gels' explicit limit, or ``inf`` when the part sub-cycles (the default)."""
        if self.subcycle or int(self.n_bodies[None]) == 0:
            return math.inf
        return float(self.limits().min())

    def dt_reason(self) -> str:
        lim = self.limits()
        b = int(np.argmin(lim))
        p = self._params()
        mu, lam = lame(p["E"][b], p["nu"][b])
        c = math.sqrt((lam + 2 * mu) / p["density"][b])
        contact = ""
        if self._contact:
            contact = f" with contact stiffness {p['kc'][b]:.3g} Pa/m"
        return (f"FEM body {b}: P-wave speed {c:.3g} m/s (E={p['E'][b]:.3g} Pa, nu={p['nu'][b]:.3g}, density="
                f"{p['density'][b]:.3g} kg/m^3, beta={p['beta'][b]:.3g} s) across its smallest tet (height "
                f"~{self._hmin[b] * 2:.3g} m){contact} limits explicit steps to {lim[b]:.3g} s; let the part "
                f"sub-cycle (scene.add_fem(body, subcycle=True)), lower dt, or soften the gel")

    def subcycles_for(self, dt: float) -> int:
        """Sub-steps per scene substep of length ``dt`` at the current parameters."""
        if int(self.n_bodies[None]) == 0:
            return 1
        lim = float(self.limits().min())
        if not self.subcycle:
            if dt > lim * (1 + 1e-12):
                raise ValueError(f"dt={dt:g} is unstable for the FEM part without sub-cycling: {self.dt_reason()}")
            return 1
        n = max(1, math.ceil(dt / lim * (1 - 1e-12)))
        if n > self.layout.subcycles:
            raise ValueError(f"the FEM part needs {n} sub-steps per substep (dt={dt:g} s, limit {lim:.3g} s) but was "
                             f"built for at most {self.layout.subcycles}: {self.dt_reason()}; rebuild the scene "
                             f"with these parameters or lower dt")
        return n

    @property
    def subcycles(self) -> int:
        """Sub-steps the part takes per scene substep (1: none), at the current dt and parameters."""
        return self.subcycles_for(float(self.dt[None]))

    def _refresh(self) -> None:
        self._n = self.subcycles
        nb = int(self.n_bodies[None])
        self._damped = bool((self.beta.to_numpy()[:nb] != 0).any())
        if self._n != self._announced:
            self._announced = self._n
            if self._n > 1:
                warnings.warn(
                    f"physim: the FEM part sub-cycles {self._n} explicit steps of {self.dt[None] / self._n:.3g} s per "
                    f"substep of {self.dt[None]:.3g} s (its stability limit is {self.limits().min():.3g} s); "
                    f"scene.partset.fem.subcycles reads it", Subcycling, stacklevel=4)

    def health(self, first: int, last: int):
        self.health_check(first, last)
        return self.first_flagged(self.bad.to_numpy(), first, last, {
            BAD_NONFINITE: "FEM node state became NaN/inf",
            BAD_OUTSIDE: "FEM nodes left the simulation domain",
            BAD_INVERTED: "a FEM tet inverted (det F <= 0: the gel was crushed or explicit integration went unstable)"})

    @ti.kernel
    def health_check(self, first: ti.i32, last: ti.i32):
        for s in range(first, last + 1):
            self.bad[s] = 0
        for s, i in ti.ndrange((first, last + 1), self.rows[None]):
            flag = self.point_health(self.x[s, i], self.v[s, i], 0.0, 1.0, 1e30)  # no speed limit
            if flag != 0:
                ti.atomic_or(self.bad[s], flag)
        for s, e in ti.ndrange((first, last + 1), self.n_tets[None]):
            F = self._F(self.x, s, e)
            _c, J = _cof_det(F)
            if not (J > 0):
                ti.atomic_or(self.bad[s], BAD_INVERTED)

    # ------------------------------------------------------------ constitutive
    @ti.func
    def _F(self, xf: ti.template(), k, e):
        ids = self.tets[e]
        x0 = xf[k, ids[0]]
        Ds = ti.Matrix.cols([xf[k, ids[1]] - x0, xf[k, ids[2]] - x0, xf[k, ids[3]] - x0])
        return Ds @ self.Dminv[e]

    @ti.func
    def _lame(self, b):
        E, nu = self.E[b], self.nu[b]
        return E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))

    @ti.func
    def _snh(self, F, cof, J, mu, lam, energy: ti.template()):
        """P, or with ``energy`` Psi - Psi(I), of the stable neo-Hookean energy (module docstring)."""
        m = 4.0 / 3.0 * mu
        la = lam + 5.0 / 6.0 * mu
        a = 1.0 + 0.75 * m / la
        Ic = (F * F).sum()
        if ti.static(energy):
            psi = 0.5 * m * (Ic - 3.0) + 0.5 * la * (J - a) * (J - a) - 0.5 * m * ti.log(Ic + 1.0)
            return psi - (0.5 * la * (1.0 - a) * (1.0 - a) - 0.5 * m * ti.log(4.0))
        else:
            return m * (1.0 - 1.0 / (Ic + 1.0)) * F + la * (J - a) * cof

    @ti.func
    def _corot(self, F, R, cof, J, mu, lam, energy: ti.template()):
        """P, or with ``energy`` Psi, of the fixed-corotated energy."""
        if ti.static(energy):
            return mu * ((F - R) * (F - R)).sum() + 0.5 * lam * (J - 1.0) * (J - 1.0)
        else:
            return 2.0 * mu * (F - R) + lam * (J - 1.0) * cof

    @ti.func
    def _model(self, F, R, cof, J, mu, lam, b, energy: ti.template()):
        """Body ``b``'s model at F: P, or with ``energy`` its energy density (``R``: the polar
        rotation of F, read by the corotated model only). Written without mutable locals and
        with the energy apart: both cost Taichi's reverse mode much compilation time."""
        if ti.static(len(self.layout.models) == 1):
            if ti.static(self.layout.models[0] == "stable_neohookean"):
                return self._snh(F, cof, J, mu, lam, energy)
            else:
                return self._corot(F, R, cof, J, mu, lam, energy)
        else:
            # both models in the scene: evaluate both, select per body
            return ti.select(self.model[b] == 0, self._snh(F, cof, J, mu, lam, energy),
                             self._corot(F, R, cof, J, mu, lam, energy))

    @ti.func
    def _R(self, k, e):
        """The polar rotation of tet ``e`` at ring state ``k`` (computed by :meth:`polar`)."""
        if ti.static(self.corotated):
            return self.R[k, e]
        else:
            return ti.Matrix.identity(self.real, 3)

    @ti.kernel
    def polar(self, k: ti.i32):
        """Polar rotations of the corotated tets at ring state ``k`` (adjoint: :meth:`polar_grad`)."""
        for e in range(self.n_tets[None]):
            if self.model[self.tet_body[e]] == 1:
                self.R[k, e] = polar_rotation(self.Fs[k, e])

    @ti.kernel
    def polar_grad(self, k: ti.i32):
        """Adjoint of :meth:`polar` (module docstring): R.grad -> Fs.grad."""
        for e in range(self.n_tets[None]):
            if self.model[self.tet_body[e]] == 1:
                F = self.Fs[k, e]
                R = self.R[k, e]
                S = R.transpose() @ F
                S = 0.5 * (S + S.transpose())
                A = R.transpose() @ self.R.grad[k, e]
                a = ti.Vector([A[2, 1] - A[1, 2], A[0, 2] - A[2, 0], A[1, 0] - A[0, 1]])
                y = (S.trace() * ti.Matrix.identity(self.real, 3) - S).inverse() @ a
                Y = ti.Matrix([[0.0, -y[2], y[1]], [y[2], 0.0, -y[0]], [-y[1], y[0], 0.0]])
                self.Fs.grad[k, e] += R @ Y

    # ------------------------------------------------------------------ substep
    @ti.kernel
    def copy_in(self, l: ti.i32):
        for i in range(self.rows[None]):
            self.xs[0, i] = self.x[l, i]
            self.vs[0, i] = self.v[l, i]

    @ti.kernel
    def copy_out(self, l: ti.i32, n: ti.i32):
        """Ring ``n`` -> slot ``l + 1``; the contact force of the slot is the sub-steps' mean."""
        for i in range(self.rows[None]):
            self.x[l + 1, i] = self.xs[n, i]
            self.v[l + 1, i] = self.vs[n, i]
            self.f_contact[l + 1, i] = self.fc[0, i] / n
        for k, i in ti.ndrange((1, n), self.rows[None]):
            self.f_contact[l + 1, i] += self.fc[k, i] / n

    @ti.kernel
    def clear_forces(self, n: ti.i32):
        for k, i in ti.ndrange(n, self.rows[None]):
            self.force[k, i] = ti.zero(self.force[k, i])
            if ti.static(self.layout.mpm_contact):
                self.f_ext[k, i] = ti.zero(self.f_ext[k, i])

    @ti.kernel
    def deform(self, k: ti.i32):
        """F = Ds Dm^-1 and dF/dt of every tet at ring state ``k``. The gather is a launch of its
        own: Taichi's reverse mode compiles a kernel that gathers, computes stresses and
        scatters several times longer than the three apart (damping: 12.6 s vs 2 + 6)."""
        for e in range(self.n_tets[None]):
            ids = self.tets[e]
            self.Fs[k, e] = self._F(self.xs, k, e)
            v0 = self.vs[k, ids[0]]
            self.Fdot[k, e] = ti.Matrix.cols([self.vs[k, ids[1]] - v0, self.vs[k, ids[2]] - v0,
                                              self.vs[k, ids[3]] - v0]) @ self.Dminv[e]

    @ti.kernel
    def elastic_forces(self, k: ti.i32):
        """Elastic forces of ring state ``k``, scattered to the nodes."""
        for e in range(self.n_tets[None]):
            b = self.tet_body[e]
            F = self.Fs[k, e]
            mu, lam = self._lame(b)
            cof, J = _cof_det(F)
            P = self._model(F, self._R(k, e), cof, J, mu, lam, b, False)
            self._scatter(k, e, P)

    @ti.kernel
    def damping_forces(self, k: ti.i32):
        """Stiffness-proportional damping forces of ring state ``k`` (module docstring), scattered
        to the nodes. A launch of its own: in one with the elastic forces, Taichi's reverse mode
        compiles several times longer than the two apart."""
        for e in range(self.n_tets[None]):
            b = self.tet_body[e]
            F = self.Fs[k, e]
            mu, lam = self._lame(b)
            A = F.transpose() @ self.Fdot[k, e]  # the Green strain rate is sym(A)
            S = self.beta[b] * (mu * (A + A.transpose()) + (lam * A.trace()) * ti.Matrix.identity(self.real, 3))
            self._scatter(k, e, F @ S)

    @ti.func
    def _scatter(self, k, e, P):
        """Add the nodal forces -V P Dm^-T of tet ``e`` (first Piola stress ``P``) to ``force[k]``."""
        ids = self.tets[e]
        H = -self.vol[e] * P @ self.Dminv[e].transpose()
        f1, f2, f3 = _cols(H)
        self.force[k, ids[1]] += f1
        self.force[k, ids[2]] += f2
        self.force[k, ids[3]] += f3
        self.force[k, ids[0]] += -(f1 + f2 + f3)

    @ti.kernel
    def contact_forces(self, l: ti.i32, t: ti.i32, k: ti.i32, n: ti.i32):
        """Contact forces of ring state ``k`` (sub-step ``k`` of ``n``): the coupler's force
        (MPM material) and the penalty against every tool but the body's mount, at the tools'
        pose interpolated to the sub-step (module docstring); added to ``force[k]`` and kept
        apart in ``fc[k]`` (the ``fem.f_contact`` reading)."""
        for i in range(self.rows[None]):
            f = ti.Vector.zero(self.real, 3)
            if self.kind[i] == FREE:
                if ti.static(self.layout.mpm_contact):
                    f += self.f_ext[k, i]
                if ti.static(self.layout.tool_contact):
                    if self.anode[i] > 0:
                        f += self._tool_penalty(l, t, k, n, i)
            self.fc[k, i] = f
            self.force[k, i] += f

    def set_external_force(self, field) -> None:
        """Hook for another part's force on the gel's nodes: ``field`` is a vector slot field of that part
        (shape (K + 1, >= nodes), N) whose slot ``l`` row ``i`` is added to free node ``i``'s force at every
        sub-step of substep ``l`` (held over the substep: the writer fills slot ``l + 1`` during substep ``l``,
        after this part has stepped, so the force acts one substep later) and to its contact force reading
        ``fem.f_contact``. Reverse mode adds to ``field.grad[l]`` (Taichi's adjoint of :meth:`external_forces`);
        the field is the writer's state, so checkpoints carry it. Used by the thin shells
        (:meth:`physim.parts.shell.ShellPart.attach_fem`)."""
        if field.shape[0] != self.S or field.shape[1] < self.capacity or field.n != 3:
            raise ValueError(f"FEMPart.set_external_force needs a 3-vector slot field of shape ({self.S}, >= "
                             f"{self.capacity}), got shape {field.shape}")
        self.external = field

    @ti.kernel
    def external_forces(self, l: ti.i32, k: ti.i32):
        """The external force of slot ``l`` (:meth:`set_external_force`) on the free nodes, added to
        ``force[k]`` and to the contact force ``fc[k]``."""
        for i in range(self.rows[None]):
            f = ti.Vector.zero(self.real, 3)
            if self.kind[i] == FREE:
                f = self.external[l, i]
            self.force[k, i] += f
            if ti.static(self._contact):
                self.fc[k, i] += f  # after contact_forces, which assigns it
            else:
                self.fc[k, i] = f

    @ti.func
    def _body_world(self, b):
        out = 0
        if ti.static(self.worlds > 1):
            out = self.body_world[b]
        return out

    @ti.func
    def _tool_penalty(self, l, t, k, n, i):
        """Penalty + regularized Coulomb force on surface node ``i`` against the tools."""
        b = self.node_body[i]
        x, v = self.xs[k, i], self.vs[k, i]
        area = self.anode[i]
        m = self.density[b] * self.vnode[i]
        eta = STICK * m * n / self.dt[None]  # removes at most STICK of v_t per sub-step
        f = ti.Vector.zero(self.real, 3)
        s = k / n
        for j in ti.static(range(self.tools.capacity)):
            # row of this body's world's j-th tool (unbatched: j, while j < the tools' rows)
            e, inside = self.tools._world_tool(j, self._body_world(b))
            if inside and e != self.mount[b]:
                c = self.tools.pos[l, e] + s * (self.tools.pos[l + 1, e] - self.tools.pos[l, e])
                R = rotation_matrix(self.tools.rot[l, e] + s * (self.tools.rot[l + 1, e] - self.tools.rot[l, e]), 3)
                r = x - c
                phi, n_local = tool_sdf(self.tools.shape[e], self.tools.size[e], R.transpose() @ r, 3)
                if phi < 0:
                    nrm = R @ n_local
                    v_rel = v - self.tools.velocity(e, t, r)
                    fn = area * ti.max(self.kc[b] * (-phi) - self.cc[b] * v_rel.dot(nrm), 0.0)
                    f += penalty_response(fn, nrm, v_rel, eta, self.tools.friction[e])
        return f

    @ti.kernel
    def integrate(self, l: ti.i32, t: ti.i32, k: ti.i32, n: ti.i32):
        """Sub-step ``k`` of ``n`` of substep ``l``: ring ``k`` -> ring ``k + 1``."""
        for i in range(self.rows[None]):
            dt = self.dt[None]
            h = dt / n
            kind = self.kind[i]
            x = self.xs[k, i]
            v = self.vs[k, i]
            if kind == FREE:
                b = self.node_body[i]
                m = self.density[b] * self.vnode[i]
                v = (v + h * (self.force[k, i] / m + self.gravity[None])) / (1.0 + h * self.alpha[b])
                x_pred = x + h * v
                for d in ti.static(range(3)):
                    into_wall = ((x_pred[d] < self.lo[None][d] and v[d] < 0)
                                 or (x_pred[d] > self.hi[None][d] and v[d] > 0))
                    if into_wall:
                        normal = ti.Vector.unit(3, d, self.real)
                        vn = v.dot(normal)
                        v = v - vn * normal
                        vt = safe_norm(v)
                        v = v * ti.max(1.0 - self.friction[b] * ti.abs(vn) / vt, 0.0)
                x = x + h * v
            elif kind == PINNED:
                x = self.X_local[i]
                v = x * 0.0
            else:
                # the mount's pose at the substep's start and end; nodes move along the chord
                X = self.X_local[i]
                xa = rotation_matrix(self.tools.rot[l, kind], 3) @ X + self.tools.pos[l, kind]
                xb = rotation_matrix(self.tools.rot[l + 1, kind], 3) @ X + self.tools.pos[l + 1, kind]
                v = (xb - xa) / dt
                x = xa + (k + 1.0) / n * (xb - xa)
            self.xs[k + 1, i] = x
            self.vs[k + 1, i] = v

    @ti.kernel
    def _zero_ring_grads(self, n: ti.i32):
        for k, i in ti.ndrange(n + 1, self.rows[None]):
            self.xs.grad[k, i] = ti.zero(self.xs.grad[k, i])
            self.vs.grad[k, i] = ti.zero(self.vs.grad[k, i])
            if k < n:
                self.force.grad[k, i] = ti.zero(self.force.grad[k, i])
                self.fc.grad[k, i] = ti.zero(self.fc.grad[k, i])
        if ti.static(self.layout.mpm_contact):
            for k, i in ti.ndrange(n, self.rows[None]):
                self.f_ext.grad[k, i] = ti.zero(self.f_ext.grad[k, i])
        for k, e in ti.ndrange(n, self.n_tets[None]):
            self.Fs.grad[k, e] = ti.zero(self.Fs.grad[k, e])
            self.Fdot.grad[k, e] = ti.zero(self.Fdot.grad[k, e])
            if ti.static(self.corotated):
                self.R.grad[k, e] = ti.zero(self.R.grad[k, e])

    def zero_scratch_grads(self) -> None:
        self._zero_ring_grads(self._n)

    def substep(self, tape, l: int, t: int) -> None:
        if l == 0:
            self._refresh()
        n = self._n
        tape.launch(self.copy_in, l, replay=True)
        tape.launch(self.clear_forces, n, grad=None, replay=True)
        for k in range(n):
            tape.launch(self.deform, k, replay=True)
            if self.corotated:
                tape.launch(self.polar, k, grad=self.polar_grad, replay=True)
            tape.launch(self.elastic_forces, k, replay=True)
            if self._damped or tape.recording:  # recorded: d loss / d beta exists even at beta = 0
                tape.launch(self.damping_forces, k, replay=True)
            if self.coupler is not None:
                tape.launch(self.coupler.face_forces, l, k, n, replay=True)
            if self._contact:
                tape.launch(self.contact_forces, l, t, k, n, replay=True)
            if self.external is not None:
                tape.launch(self.external_forces, l, k, replay=True)
            tape.launch(self.integrate, l, t, k, n, replay=True)
        tape.launch(self.copy_out, l, n)

    # ------------------------------------------------------------------ queries
    @ti.kernel
    def _energy_kernel(self, s: ti.i32):
        for j in range(3):
            self._energy[j] = 0.0
        for e in range(self.n_tets[None]):
            F = self._F(self.x, s, e)
            b = self.tet_body[e]
            mu, lam = self._lame(b)
            cof, J = _cof_det(F)
            self._energy[0] += self.vol[e] * self._model(F, polar_rotation(F), cof, J, mu, lam, b, True)
        for i in range(self.rows[None]):
            m = self.density[self.node_body[i]] * self.vnode[i]
            self._energy[1] += 0.5 * m * self.v[s, i].dot(self.v[s, i])
            self._energy[2] -= m * self.gravity[None].dot(self.x[s, i])

    def energy(self, slot: int = 0) -> dict[str, float]:
        """Elastic (J, relative to the rest state), kinetic and gravitational energy at ``slot``."""
        self._energy_kernel(slot)
        e = self._energy.to_numpy()
        return {"elastic": float(e[0]), "kinetic": float(e[1]), "gravity": float(e[2])}

    def node_mass(self) -> np.ndarray:
        """(n,) lumped node masses (kg) at the current densities."""
        n = int(self.rows[None])
        rho = self.density.to_numpy().astype(np.float64)
        return rho[self.node_body.to_numpy()[:n]] * self.vnode.to_numpy()[:n].astype(np.float64)

    def nodal_forces(self, slot: int = 0) -> np.ndarray:
        """(n, 3) internal (elastic + stiffness-damping) forces on the nodes at ``slot`` (N).
        Overwrites the sub-step ring's scratch (harmless: the tape restores it)."""
        self.copy_in(slot)
        self.clear_forces(1)
        self.deform(0)
        if self.corotated:
            self.polar(0)
        self.elastic_forces(0)
        self.damping_forces(0)
        return self.force.to_numpy()[0, : int(self.rows[None])].astype(np.float64)


def tool_sdf_np(shape: int, size, p: np.ndarray) -> np.ndarray:
    """Signed distance (m) of tool ``shape`` (:data:`physim.parts.tools.SHAPE_IDS`) with size
    parameters ``size`` at local points ``p`` (k, 3): numpy twin of
    :func:`physim.contact.sdf.tool_sdf` (3D), for load-time checks that need no kernel."""
    p = np.asarray(p, np.float64)

    def cylinder(q, r, hh):
        dr = np.hypot(q[:, 0], q[:, 2]) - r
        dy = np.abs(q[:, 1]) - hh
        return np.where((dr > 0) & (dy > 0), np.sqrt(dr * dr + dy * dy), np.maximum(dr, dy))

    if shape == 0:
        return np.linalg.norm(p, axis=1) - size[0]
    if shape == 1:
        q = np.abs(p) - np.asarray(size[:3], np.float64)
        return np.where(q.max(axis=1) > 0, np.linalg.norm(np.maximum(q, 0.0), axis=1), q.max(axis=1))
    if shape == 2:
        c = np.zeros_like(p)
        c[:, 1] = np.clip(p[:, 1], -size[1], size[1])
        return np.linalg.norm(p - c, axis=1) - size[0]
    if shape == 3:
        return cylinder(p, size[0], size[1])
    q = p.copy()
    q[:, 1] -= size[2]
    return np.maximum(cylinder(p, size[0] + size[2], size[1]), -cylinder(q, size[0], size[1]))


def _quat_matrix(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])

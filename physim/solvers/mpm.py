"""Differentiable MLS-MPM (Hu et al. 2018), 2D and 3D, several materials in one scene.

The MPM part of a scene (see :mod:`physim.parts.base` for the protocol). One substep is
these phases, each a kernel of its own for reverse mode (after the grid is cleared):

    trial_deformation -> svd -> plasticity -> stress -> p2g -> grid_update -> g2p

The forward pass runs them fused into one launch (``substep_fused``; per-particle
intermediates stay in registers and the per-launch overhead is paid once: on the 2-core CPU
the 2D mpm88 configuration went from 1.3-2.0 to 1.0-1.3 ms per substep). The tape records
the phase kernels for their adjoints; before it differentiates a substep, one fused launch
(``substep_scratch``) restores the scratch values those adjoints read. Substeps that are
differentiated right after they run (a chunk's recompute in reverse mode, the last chunk of a
forward pass) keep their particle scratch per substep (``substep_keep``), and that launch
becomes a copy plus the scatter (``substep_restore``: no SVD, return mapping or stress), within
``KEEP_SCRATCH_MAX_BYTES``. On the CPU the loops that scatter into shared memory run on one
thread with plain adds instead of atomics (``SERIAL_SCATTER_CPU``).

Particle state (``mpm.x``, ``mpm.v``, ``mpm.C``, ``mpm.F``, ``mpm.Jp``) lives in slot fields
declared through the part protocol: substep ``l`` of a checkpoint chunk reads slot ``l`` and
writes slot ``l+1``. The grid and the per-particle intermediates (SVD factors, stress) are
scratch, recomputed before their substep is differentiated (see :mod:`physim.tape`). Tool
poses belong to the tools part (:mod:`physim.parts.tools`), read at slot ``l`` by the grid
update; forces from other parts arrive through ``f_ext`` (written by the coupler before this
part's substep, added to the particles' momentum in the scatter).

Every value that changes between scenes of the same layout (dt, gravity, boundary,
materials, tools) is a field, not a compile-time constant, so a compiled engine is
reused by every scene with the same layout (dim, grid, particle capacity, K, ...).
The exception is the set of constitutive models: a layout either names the models its
scenes use (``models``, a sorted tuple; the kernels then contain only those, which makes
a single-material scene's forward and reverse passes several times cheaper) or is
generic (``models=None``: every model, shared by scenes of any materials).

Rigid bodies (:class:`physim.Rigid`, model ``"rigid"``; one body per material row) add a
last phase after g2p, ``rigid_project``: each body's particles are projected onto the rigid
motion that best fits the gathered state (centre of mass, polar rotation of the moment
matrix sum (x - c) X^T over the rest shape X) with the body's linear and angular momentum
(orbital + APIC affine) unchanged; C becomes the rigid velocity gradient skew(omega), F stays
I and the stress 0. The fused forward pass appends it as four more loops (compiled only
when the scene has a rigid body: a template argument). On the tape it is four phase
kernels after g2p -- ``rigid_save`` (whose hand-written adjoint hands the gradient of the
gathered state back to g2p), ``rigid_reduce`` (per-body sums by atomics), ``rigid_polar``
(2D: closed-form angle, Taichi's adjoint; 3D: physim's SVD, hand-written polar adjoint) and
``rigid_project`` -- whose scratch (the gathered state, the sums, the polar factors) the
replay launch restores. Between the rotation and the projection, the walls act on each body as a
whole (the grid's walls stop only the nodes in the wall band, which the projection shares with
the whole body, so without this a resting body sinks into the band): ``rigid_motion`` (the
body's c, V, w), then ``RIGID_CONTACT_PASSES`` passes of ``rigid_contact_select`` (count and
centroid of the body's particles in each wall's band moving into it; atomics) and
``rigid_contact_impulse`` (one launch per wall, in turn: a normal impulse at that centroid
through the body's mass and inverse inertia that stops its normal velocity, and a
Coulomb-bounded tangential one), all with Taichi's adjoints (the selection is piecewise constant); ``rigid_project``
then sets v = V + w x r, C = skew(w) and advances x with the contact's velocity change
(x = c + dt dV + turn(dt dw) R X, an exact rotation). Before all that, the bodies are coupled to
the other materials on the grid: ``rigid_grid_reduce`` sums, per body, the updated mass and
momentum of every node its particles reach (other materials' mass included) and
``rigid_grid_motion`` solves the rigid motion that keeps them, which ``grid_update`` sets on
those nodes -- the body gets the whole force on its nodes, not its mass share (see
:meth:`MPMEngine._rigid_grid_motion`). Particle masses are density * particle volume evaluated in the
kernels, so ``mpm.density`` is differentiable (for every material).
"""


import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
import taichi as ti

from .. import backend
from ..materials import DIFF_PARAMS, MODEL_IDS, PARAM_COLUMNS
from ..parts.base import BAD_FAST, BAD_NONFINITE, BAD_OUTSIDE, Param, Part
from ._linalg import (
    SVD_GAP_EPS,
    SVD_TIE_SPLIT,
    SVD_TOL,
    diag_matrix,
    polar_adjoint,
    prod,
    safe_norm,
    split_ties,
    svd2,
    svd3,
    svd_adjoint,
)

COL = {name: i for i, name in enumerate(PARAM_COLUMNS)}
#: grid walls: "sticky" (a node moving into a wall stops), "slip" (its normal velocity is
#: removed), "friction" (slip with Coulomb friction ``wall_friction``), "rough" (friction walls
#: that also hold the nodes on the wall's surface, row BOUND: see MPMEngine._grid_node)
BOUNDARY_IDS = {"sticky": 0, "slip": 1, "friction": 2, "rough": 3}
BOUND = 3  # cells of wall on each side of the grid

# reasons the health check flags a slot (BAD_CFL: a particle moved more than VELOCITY_CFL_LIMIT cells)
BAD_CFL = BAD_FAST
#: a particle may move at most this many cells in one substep
VELOCITY_CFL_LIMIT = 1.0
#: the time step must satisfy dt * wave_speed / dx <= this (explicit MPM stability)
WAVE_CFL_LIMIT = 0.9
#: a rigid body's rest shape must span the space: its smallest principal extent (singular
#: value of the centred rest positions) at least this fraction of its largest
RIGID_MIN_SPAN = 1e-6
#: run the particle loops that add into shared memory on one thread on the CPU: the P2G
#: scatter (forward and replay), the G2P adjoint's scatter into the grid gradient, and the
#: Taichi-generated adjoints of the particle phases (which add every particle's share of
#: d loss / d E, nu, density into one entry per material). In a serial loop Taichi compiles
#: ``+=`` on fields as a plain add instead of an atomic compare-and-swap loop; on the 2-core
#: CPU a 2D scatter of 10k particles took 16x less CPU time serial than threaded (atomics),
#: and a P2G adjoint's shared parameter gradients are contended by every thread. The loops
#: of per-particle work without shared writes (the SVD and its adjoint, G2P) stay threaded. On a CPU with
#: many idle cores the threaded atomics may win for large scenes: ``PHYSIM_SERIAL_SCATTER=0``
#: (read when an engine is built) turns this off. In f32 the Taichi-generated adjoints stay
#: threaded (``MPMEngine.serial_ad``: Taichi miscompiled a serialized one).
SERIAL_SCATTER_CPU = True
#: most bytes of per-substep particle scratch (F_trial, U, sig, V, sig_elastic, affine for each
#: of a chunk's K substeps) an engine keeps so reverse mode can skip recomputing it (see
#: :meth:`MPMEngine.substep`); a layout whose K x capacity needs more replays it instead
KEEP_SCRATCH_MAX_BYTES = 2**30
#: the material models grouped by stress law (:meth:`MPMEngine._family_stress`); the rigid family last
STRESS_FAMILIES = (("corotated", "von_mises", "bingham", "snow"), ("drucker_prager",), ("fluid",), ("neohookean",),
                   ("rigid",))
#: passes of the rigid bodies' wall contact (each: find the body's particles in a wall band
#: moving into the wall, one impulse per wall at their centroid; see MPMEngine._rigid_impulse)
RIGID_CONTACT_PASSES = 2
#: Newton iterations of the Herschel-Bulkley flow rule (in log of the plastic strain increment,
#: from a start above the root, where the convex residual makes them monotone): measured over
#: n in [0.2, 3], consistency 0-100, excess strain 1e-8-0.1, 6 reach round-off
HB_NEWTON = 8
#: :meth:`MPMEngine._no_grad` truncates to this many fractional bits (its value error, <= 2^-40
#: ~ 1e-12 in log g, is removed to second order by the Newton step that follows it)
NO_GRAD_BITS = 40


@dataclass(frozen=True)
class _MassParam(Param):
    """The density parameter: setting it also refreshes the per-particle mass table (read by
    the coupler and ``particle_mass``; the MPM kernels evaluate density * volume themselves)."""

    refresh: Callable | None = None

    def set(self, row: int, value: float) -> None:
        super().set(row, value)
        if self.refresh is not None:
            self.refresh()


@dataclass(frozen=True)
class MPMLayout:
    """What an MPM part is compiled for; every entry is a capacity or a compile-time choice
    (the counts in use, dt, gravity, materials' values, ... are fields set at run time).

    Attributes:
        dim, res: 2 or 3; grid cells per axis.
        capacity: particle rows.
        n_mat: material rows.
        models: the constitutive models compiled in (sorted tuple), or ``None`` for every one
            (``"rigid"`` among them compiles the rigid-body projection and its fields).
        has_actuators: compile the active (muscle) stress.
        tool_contact: compile contact with the tools part.
        external_force: compile the ``f_ext`` input written by the coupler.
        worlds: copies of the scene simulated by the same launches (``Scene(n_worlds=...)``):
            the grid holds one ``res``-cell tile per world along axis 0, each particle scatters
            into its world's tile (``p_world``) and each node meets only its world's tools and
            walls. 1 compiles none of it.
    """

    dim: int
    res: int
    capacity: int
    n_mat: int
    models: tuple | None
    has_actuators: bool
    tool_contact: bool
    external_force: bool
    worlds: int = 1


@dataclass
class MPMSpec:
    """What :meth:`MPMEngine.load` writes: the scene's particles and materials."""

    n: int
    materials: list
    material: np.ndarray  # (n,) material row of each particle
    act_group: np.ndarray  # (n,) actuator group or -1
    fiber: np.ndarray  # (n, dim)
    spacing: float
    gravity: np.ndarray
    boundary: str
    wall_friction: float
    precision: str
    world: np.ndarray | None = None  # (n,) world of each particle (batched layouts)


@ti.data_oriented
class MPMEngine(Part):
    """Fields and kernels of one MPM layout. Build through :class:`physim.Scene`."""

    name = "mpm"

    def __init__(self, layout: MPMLayout, K: int, real, tools, controls):
        super().__init__(K, real)
        self.layout = layout
        self.dim, self.res, self.capacity = layout.dim, layout.res, layout.capacity
        self.worlds = layout.worlds
        self.n_mat, self.models, self.has_actuators = layout.n_mat, layout.models, layout.has_actuators
        self.tools, self.controls = tools, controls
        self.svd_gap_eps = SVD_GAP_EPS["f64" if real == ti.f64 else "f32"]
        self.svd_tie_split = SVD_TIE_SPLIT["f64" if real == ti.f64 else "f32"]
        self.svd_tol = SVD_TOL["f64" if real == ti.f64 else "f32"]
        # on the CPU the scatters (p2g, the g2p adjoint) and the particle adjoints run on one
        # thread, where Taichi turns their atomic adds into plain ones (see SERIAL_SCATTER_CPU)
        self.serial = (SERIAL_SCATTER_CPU and os.environ.get("PHYSIM_SERIAL_SCATTER", "1") != "0"
                       and backend.config().arch == "cpu")
        # ... except, in f32, the phase kernels whose adjoints Taichi generates (trial deformation,
        # plasticity, stress, p2g): Taichi 1.7.4 miscompiled the serialized f32 adjoint of the
        # plasticity kernel on an AMD EPYC (Zen 3) CPU -- d loss / d sig 245 % off f64 and central
        # differences, nonzero for particles that do not yield -- while the threaded f32 adjoint and
        # the serial f64 one match them to 2e-7 (an earlier CPU got the serial f32 one right, so the
        # fault depends on the host's code generation). f32 is not the CPU default; its particle
        # adjoints pay the threaded atomics (tests/test_precision.py)
        self.serial_ad = self.serial and real == ti.f64
        dim, N = self.dim, self.capacity
        self.dx = 1.0 / self.res
        self.inv_dx = float(self.res)

        self.x = self.slot_field("x", (dim,), N)
        self.v = self.slot_field("v", (dim,), N)
        self.C = self.slot_field("C", (dim, dim), N)
        self.F = self.slot_field("F", (dim, dim), N)
        self.Jp = self.slot_field("Jp", (), N)
        # the particles the substep kernels step: rows 0 .. n_particles - 1 (an emitter's reserve
        # rows after them wait inactive, see physim.parts.emitter; without emitters, every row)
        self.n_particles = ti.field(ti.i32, shape=())

        # scratch, overwritten every substep
        self.F_trial = self.scratch_field((dim, dim), N)
        self.U = self.scratch_field((dim, dim), N)
        self.V = self.scratch_field((dim, dim), N)
        self.sig = self.scratch_field((dim,), N)
        self.sig_elastic = self.scratch_field((dim,), N)
        self.affine = self.scratch_field((dim, dim), N)
        # external force on each particle (N), written by the coupler before this substep
        self.f_ext = self.scratch_field((dim,), N) if layout.external_force else None
        # one res^dim tile per world, side by side along axis 0 (see MPMLayout.worlds)
        gshape = (self.worlds * self.res,) + (self.res,) * (dim - 1)
        self.grid_mv = self.scratch_field((dim,), gshape)
        self.grid_m = self.scratch_field((), gshape)
        self.grid_v = self.scratch_field((dim,), gshape)
        self.particle_scratch = [self.F_trial, self.U, self.V, self.sig, self.sig_elastic, self.affine]
        # the converged Herschel-Bulkley root log g of each particle's trial state, for the
        # plasticity adjoint (constant there: see _hb_flow); written by hb_root in the replay
        self.hb_u = ti.field(real, shape=N)
        # and r'(u) / e^u there (the Newton step's denominator, also without gradient)
        self.hb_d = ti.field(real, shape=N)
        if self.f_ext is not None:
            self.particle_scratch.append(self.f_ext)
        self.grid_scratch = [self.grid_mv, self.grid_m, self.grid_v]
        # the particle scratch of every substep of a chunk (allocated by the first substep that
        # keeps it, see substep): [F_trial, U, sig, V, sig_elastic, affine] with a leading axis K
        self.kept: list | None = None
        per_particle = 4 * dim * dim + 2 * dim
        self.keep_bytes = K * N * per_particle * (8 if real == ti.f64 else 4)

        # per-particle constants
        self.material = ti.field(ti.i32, shape=N)
        self.p_mass = ti.field(real, shape=N)
        self.act_group = ti.field(ti.i32, shape=N)
        self.fiber = ti.Vector.field(dim, real, shape=N)
        # the world of each particle (batched layouts only)
        self.p_world = ti.field(ti.i32, shape=N) if self.worlds > 1 else None

        # materials: one row per material, columns PARAM_COLUMNS
        self.mat_model = ti.field(ti.i32, shape=self.n_mat)
        self.mat_params = ti.field(real, shape=(self.n_mat, len(PARAM_COLUMNS)), needs_grad=True)
        units = {"E": "Pa", "nu": "1", "yield_stress": "Pa", "friction_angle": "deg", "viscosity": "Pa s",
                 "flow_index": "1"}
        for col, name in enumerate(PARAM_COLUMNS):
            kw = {}
            if name in ("E", "density", "flow_index"):
                kw = dict(lower=0.0, lower_open=True)
            elif name == "nu":
                kw = dict(lower=-1.0, upper=0.5, lower_open=True, upper_open=True)
            elif name == "friction_angle":
                kw = dict(lower=0.0, upper=90.0, lower_open=True, upper_open=True, scale=math.pi / 180)
            else:
                kw = dict(lower=0.0)
            self.param(name, units.get(name, "1"), self.mat_params, col,
                       differentiable=name in DIFF_PARAMS or name == "density", doc=f"material {name}", **kw)
        dens = self.params["density"]
        self.params["density"] = _MassParam(**{f.name: getattr(dens, f.name) for f in fields(Param)},
                                            refresh=self._refresh_mass)
        self.n_materials = 0
        self._n = 0

        # run-time scalars
        self.p_vol = ti.field(real, shape=())
        self.gravity = ti.Vector.field(dim, real, shape=())
        self.boundary = ti.field(ti.i32, shape=())
        self.wall_friction = ti.field(real, shape=())
        self.min_node_mass = ti.field(real, shape=())
        self.bad = ti.field(ti.i32, shape=self.S)
        self.needs_svd = True  # set by load() from the scene's materials
        self.has_rigid = False  # set by load(): the scene has a rigid body
        self._rest_pending = False
        if self.has("rigid"):
            self._declare_rigid()

    def _declare_rigid(self) -> None:
        """Fields of the rigid-body projection: one body per material row (``n_mat``)."""
        dim, N, B, real = self.dim, self.capacity, self.n_mat, self.real
        ad = 1 if dim == 2 else 3  # components of an angular velocity / momentum
        self.ang_dim = ad
        # constants (load / the first import of a scene's state)
        self.rest = ti.Vector.field(dim, real, shape=N)  # X_p: rest position - rest centre of the body
        self.body_rigid = ti.field(ti.i32, shape=B)
        self.body_count = ti.field(real, shape=B)
        self.body_sum_rest = ti.Vector.field(dim, real, shape=B)  # sum X_p (0 up to round-off)
        # inverse of sum (|X|^2 I - X X^T) + 2 D I per particle (D = dx^2 / 4: APIC's own inertia)
        self.body_inertia_inv = ti.Matrix.field(ad, ad, real, shape=B)
        # scratch: the gathered (pre-projection) state of every particle, the body sums, polar factors
        self.rg_x = self.scratch_field((dim,), N)
        self.rg_v = self.scratch_field((dim,), N)
        self.rg_C = self.scratch_field((dim, dim), N)
        self.body_sx = self.scratch_field((dim,), B)  # sum x
        self.body_sv = self.scratch_field((dim,), B)  # sum v
        self.body_sa = self.scratch_field((dim, dim), B)  # sum x X^T
        self.body_sl = self.scratch_field((ad,), B)  # sum x cross v + D axial(C - C^T)
        self.body_R = self.scratch_field((dim, dim), B)
        self.body_U = self.scratch_field((dim, dim), B, grad=False)
        self.body_sig = self.scratch_field((dim,), B, grad=False)
        self.body_V = self.scratch_field((dim, dim), B, grad=False)
        self.rigid_particle_scratch = [self.rg_x, self.rg_v, self.rg_C]
        self.body_scratch = [self.body_sx, self.body_sv, self.body_sa, self.body_sl, self.body_R]
        # wall contact (after the shape matching): the body's centre, its velocity V and angular
        # velocity w before (pass 0) and after each contact pass, and per pass, body and wall
        # (2 * dim: low / high side of each axis) the count and the summed arms R X of the
        # particles in that wall's band moving into it
        # (V, w are kept after every wall of every pass: slot k W + j holds them before wall j of
        # pass k, so each wall is one launch of rigid_contact_impulse and its adjoint compiles
        # one wall's code, not 2 * dim unrolled copies)
        P, W = RIGID_CONTACT_PASSES, 2 * dim
        self.body_c = self.scratch_field((dim,), B)
        self.body_lv = self.scratch_field((dim,), (P * W + 1, B))
        self.body_av = self.scratch_field((ad,), (P * W + 1, B))
        self.contact_n = self.scratch_field((), (P, B, W), grad=False)
        self.contact_r = self.scratch_field((dim,), (P, B, W))
        self.body_scratch.append(self.body_c)
        self.contact_scratch = [self.body_lv, self.body_av, self.contact_n, self.contact_r]
        # grid-level coupling, before the grid velocities are final: the body owning each grid node
        # (material row + 1, the largest among the rigid particles whose stencil reaches it; 0:
        # none), per body the sums over its nodes (all their mass, other materials' included) of
        # m, m x, m v, m x x^T, m x cross v of the updated velocities, and the rigid motion (c, V,
        # w) those give, which the grid update then sets on the body's nodes (see _rigid_grid_motion)
        self.grid_body = ti.field(ti.i32, shape=(self.worlds * self.res,) + (self.res,) * (dim - 1))
        self.body_gm = self.scratch_field((), B)
        self.body_gmx = self.scratch_field((dim,), B)
        self.body_gmv = self.scratch_field((dim,), B)
        self.body_gmxx = self.scratch_field((dim, dim), B)
        self.body_gml = self.scratch_field((ad,), B)
        self.body_gc = self.scratch_field((dim,), B)
        self.body_gV = self.scratch_field((dim,), B)
        self.body_gw = self.scratch_field((ad,), B)
        self.body_grid_scratch = [self.body_gm, self.body_gmx, self.body_gmv, self.body_gmxx, self.body_gml,
                                  self.body_gc, self.body_gV, self.body_gw]

    @property
    def action(self):
        return self.controls.action

    def param_rows(self, name: str) -> int:
        return self.n_materials

    # ------------------------------------------------------------------ protocol
    def load(self, spec: MPMSpec) -> None:
        n, cap, dim = spec.n, self.capacity, self.dim
        self.rows[None] = n
        self.n_particles[None] = n
        # where hb_root never runs (a scene without the SVD: none of its rows is Herschel-Bulkley)
        # the plasticity adjoint's discarded HB step still divides by hb_d: 1, not 0 (NaN d/dE in
        # the 3D rigid + fluid FD check). Filled, not guarded by a select in the kernel: the
        # select made f32's d/dE wrong (tests/test_precision.py)
        self.hb_d.fill(1.0)
        self.n_materials = len(spec.materials)
        self.p_vol[None] = spec.spacing**dim
        self.gravity[None] = np.asarray(spec.gravity).tolist()
        self.boundary[None] = BOUNDARY_IDS[spec.boundary]
        self.wall_friction[None] = spec.wall_friction
        mat_id = np.zeros(cap, np.int32)
        mat_id[:n] = spec.material
        self.material.from_numpy(mat_id)
        act = np.full(cap, -1, np.int32)
        act[:n] = spec.act_group
        self.act_group.from_numpy(act)
        self.action_dim = int(spec.act_group.max(initial=-1)) + 1
        fib = np.zeros((cap, dim), self.np_real)
        fib[:n] = spec.fiber
        self.fiber.from_numpy(fib)
        if self.worlds > 1:
            if spec.world is None or len(spec.world) != n:
                raise ValueError("a batched MPM layout needs the world of every particle")
            wid = np.zeros(cap, np.int32)
            wid[:n] = spec.world
            self.p_world.from_numpy(wid)
        models = np.zeros(self.n_mat, np.int32)
        params = np.zeros((self.n_mat, len(PARAM_COLUMNS)), self.np_real)
        for i, m in enumerate(spec.materials):
            models[i] = MODEL_IDS[m.model]
            params[i] = m.row()
        self.mat_model.from_numpy(models)
        self.needs_svd = any(m.model not in ("fluid", "neohookean", "rigid") for m in spec.materials)
        self.mat_params.from_numpy(params)
        self._n = n
        self._refresh_mass()
        dens = params[mat_id, PARAM_COLUMNS.index("density")]
        self.has_rigid = any(m.model == "rigid" for m in spec.materials)
        if self.has_rigid:
            if not self.has("rigid"):  # a layout's models come from the scene's materials
                raise ValueError("this MPM layout was compiled without rigid bodies")
            rigid = np.array([m.model == "rigid" for m in spec.materials] +
                             [False] * (self.n_mat - len(spec.materials)), np.int32)
            need = self.dim + 1
            for b in np.nonzero(rigid)[0]:
                count = int((spec.material == b).sum())
                if count < need:
                    raise ValueError(
                        f"rigid body of material {b} ({spec.materials[b]!r}) has {count} particle(s); a "
                        f"{self.dim}D rigid body needs at least {need} (not all on one "
                        f"{'line' if self.dim == 2 else 'plane'}): enlarge its shape or lower the particle spacing")
            self.body_rigid.from_numpy(rigid)
            # the rest shape is the state the scene imports first (its sampled bodies): see import_
            self._rest_pending = True
        # f32: 1/m^2 in the adjoint must stay finite; f64 has the range to keep (almost) every node
        rel = 1e-9 if spec.precision == "f32" else 1e-14
        self.min_node_mass[None] = rel * float(dens[:n].min()) * spec.spacing**dim

    def _refresh_mass(self) -> None:
        """p_mass = density of the particle's material * particle volume (after load or a new density)."""
        dens = self.mat_params.to_numpy()[:, COL["density"]].astype(np.float64)
        mat = self.material.to_numpy()
        mass = np.zeros(self.capacity, self.np_real)
        mass[: self._n] = dens[mat[: self._n]] * float(self.p_vol[None])
        self.p_mass.from_numpy(mass)

    def particle_mass(self) -> np.ndarray:
        return self.p_mass.to_numpy()[: int(self.rows[None])].astype(np.float64)

    def import_(self, slot: int, state: dict, grad: bool = False) -> None:
        super().import_(slot, state, grad)
        if self._rest_pending and not grad:
            # the scene's first import after load() is its initial state: the sampled bodies,
            # whose shapes are the rigid bodies' rest shapes
            self._rest_pending = False
            self._set_rest(np.asarray(state["x"], dtype=np.float64))

    def _set_rest(self, x: np.ndarray) -> None:
        """Rest shapes X_p (positions relative to the body's centre) and the bodies' constants."""
        n, dim, B = self._n, self.dim, self.n_mat
        mat = self.material.to_numpy()[:n]
        rigid = self.body_rigid.to_numpy()
        D = 0.25 * self.dx**2
        rest = np.zeros((self.capacity, dim))
        count = np.zeros(B)
        sum_rest = np.zeros((B, dim))
        inv = np.zeros((B, self.ang_dim, self.ang_dim))
        for b in np.nonzero(rigid)[0]:
            idx = np.nonzero(mat == b)[0]
            X = x[idx] - x[idx].mean(axis=0)
            span = np.linalg.svd(X, compute_uv=False)
            if not span[-1] > RIGID_MIN_SPAN * span[0]:
                raise ValueError(
                    f"rigid body of material {b} has its {len(idx)} particles on one "
                    f"{'line' if dim == 2 else 'plane'} (principal extents {np.round(span, 6).tolist()}): its "
                    f"rotation is undetermined; give it a shape at least two particle layers thick")
            rest[idx] = X
            count[b] = len(idx)
            sum_rest[b] = X.sum(axis=0)
            r2 = (X * X).sum()
            if dim == 2:
                inertia = np.array([[r2 + 2 * D * len(idx)]])
            else:
                inertia = r2 * np.eye(3) - X.T @ X + 2 * D * len(idx) * np.eye(3)
            inv[b] = np.linalg.inv(inertia)
        self.rest.from_numpy(rest.astype(self.np_real))
        self.body_count.from_numpy(count.astype(self.np_real))
        self.body_sum_rest.from_numpy(sum_rest.astype(self.np_real))
        self.body_inertia_inv.from_numpy(inv.astype(self.np_real))

    def health(self, first: int, last: int):
        self.health_check(first, last, VELOCITY_CFL_LIMIT)
        return self.first_flagged(self.bad.to_numpy(), first, last, {
            BAD_NONFINITE: "particle state became NaN/inf",
            BAD_OUTSIDE: "particles left the simulation domain",
            BAD_CFL: f"particles moved more than {VELOCITY_CFL_LIMIT} grid cell in one substep (CFL violated)"})

    # ------------------------------------------------------------------ substep
    @ti.func
    def _clear_node(self, I):
        for f in ti.static(self.grid_scratch):
            f[I] = ti.zero(f[I])
        if ti.static(self.has("rigid")):
            self.grid_body[I] = 0

    @ti.func
    def _trial_F(self, l, p):
        identity = ti.Matrix.identity(self.real, self.dim)
        return (identity + self.dt[None] * self.C[l, p]) @ self.F[l, p]

    @ti.kernel
    def trial_deformation(self, l: ti.i32):
        if ti.static(self.serial_ad):
            ti.loop_config(serialize=True)
        for p in range(self.n_particles[None]):
            self.F_trial[p] = self._trial_F(l, p)

    @ti.kernel
    def svd(self):
        """F_trial = U diag(sig) V^T (physim's own SVD: ti.svd loses ~1e-6 on nearly
        diagonal matrices, which corrupts f64 gradients). Differentiated by svd_grad."""
        for p in range(self.n_particles[None]):
            U, sig, V = self._svd(self.F_trial[p])
            self.U[p], self.sig[p], self.V[p] = U, sig, V

    @ti.func
    def _svd(self, F):
        U, sig, V = F * 0.0, ti.Vector.zero(self.real, self.dim), F * 0.0
        if ti.static(self.dim == 2):
            U, sig, V = svd2(F)
        else:
            U, sig, V = svd3(F, 5, self.svd_tol)
        return U, sig, V

    @ti.kernel
    def svd_grad(self):
        for p in range(self.n_particles[None]):
            self.F_trial.grad[p] += svd_adjoint(
                self.U[p], self.sig[p], self.V[p], self.U.grad[p], self.sig.grad[p], self.V.grad[p], self.dim,
                self.svd_gap_eps,
            )

    def has(self, *models: str) -> bool:
        """Whether kernels of this engine include any of ``models`` (compile-time)."""
        return self.models is None or any(m in self.models for m in models)

    @ti.func
    def _return_mapping(self, model, m, U, sig, V, F_trial, jp, mu, la, p, root_field: ti.template()):
        """Plastic projection: returns (elastic F, its singular values, new J_plastic).

        Written branch-free (every model present in the layout is computed, ``ti.select``
        picks one) so Taichi's reverse mode sees no mutation inside data-dependent branches.
        Models absent from the layout are removed at compile time (``ti.static``). With
        ``root_field`` the Herschel-Bulkley root of particle ``p`` is read from :attr:`hb_u`
        (the differentiated ``plasticity`` kernel) instead of solved in place.
        """
        dim = ti.static(self.dim)
        sig_c = ti.max(sig, 1e-6)
        F_new = F_trial
        sig_new = sig_c
        jp_new = jp
        # a rigid row has E = 0, so mu = 0: the plastic branches computed for it (and discarded by
        # ti.select) would divide 0 / 0, and the discarded NaN still poisons the adjoint (0 * NaN).
        # Those branches see mu = 1 there; every other model has mu > 0 and keeps its own.
        mu = ti.select(mu > 0, mu, 1.0)
        if ti.static(self.has("von_mises", "bingham", "drucker_prager", "snow")):
            eps = ti.log(sig_c)
            tr = eps.sum()
            eps_hat = eps - tr / dim
            norm = safe_norm(eps_hat)
            direction = eps_hat / norm
            sig_p = sig_c
            projected = 0
            if ti.static(self.has("von_mises", "bingham")):
                # von Mises / Herschel-Bulkley: shrink the deviatoric log strain onto the yield
                # surface; Herschel-Bulkley flows only by the increment its rate law allows
                excess = ti.max(norm - self.mat_params[m, COL["yield_stress"]] / (2 * mu), 0.0)
                flow = excess
                if ti.static(self.has("bingham")):
                    # an arithmetic mask, not ti.select: with the select, f32 reverse mode (fast
                    # compile, every model compiled in) let the discarded Herschel-Bulkley solve of
                    # a yielding von Mises particle into d/dE (tests/test_precision.py's block:
                    # -2.24e-7 against f64's -1.19e-7, with the Newton step's denominator still
                    # differentiated); with the mask it was main's f32 value to the bit. Forward
                    # values are exact (0 * g + 1 * excess)
                    w = ti.cast(model == MODEL_IDS["bingham"], self.real)
                    flow = w * self._hb_flow(m, excess, mu, p, root_field) + (1.0 - w) * excess
                sig_vm = ti.exp(eps - flow * direction)
                is_vm = model == MODEL_IDS["von_mises"] or model == MODEL_IDS["bingham"]
                sig_p = ti.select(is_vm, sig_vm, sig_p)
                projected = ti.select(is_vm and excess > 0, 1, projected)
            if ti.static(self.has("drucker_prager")):
                # Drucker-Prager (Klar et al. 2016): cone projection, apex when expanding
                phi = self.mat_params[m, COL["friction_angle"]]
                # the cone |s| <= alpha d p (s the deviatoric Kirchhoff stress, p the pressure).
                # 3D: matched to Mohr-Coulomb at triaxial compression (Klar et al.). 2D: the shear
                # on the plane of flow |s| / sqrt(2) <= p tan(phi) (the static friction of the
                # mu(I) rheology, mu_s = tan phi): the flow rule is non-dilatant and coaxial, so a
                # sheared layer's maximum shear lies on its slope, and a flank stops at phi (the
                # plane Mohr-Coulomb cone, sin(phi) here, stopped it at atan(sin phi): 27.9 deg
                # at phi = 32; benchmarks/sand_repose.py, tests/test_materials_experiments.py)
                # tan(phi) as sin / sqrt(1 - sin^2): Taichi's reverse mode has no tan, and with
                # ti.cos here Taichi 1.7.4's f32 adjoint of the generic kernel lost the
                # Herschel-Bulkley gradients (d/d viscosity 7.5e-9 vs 3.5e-6 in f64;
                # tests/test_precision.py)
                alpha = (ti.sin(phi) / ti.sqrt(2.0 * (1.0 - ti.sin(phi) ** 2)) if ti.static(dim == 2)
                         else ti.sqrt(2.0 / 3.0) * 2.0 * ti.sin(phi) / (3.0 - ti.sin(phi)))
                dgamma = ti.max(norm + (dim * la + 2 * mu) / (2 * mu) * tr * alpha, 0.0)
                sig_dp = ti.select(tr >= 0, sig_c * 0.0 + 1.0, ti.exp(eps - dgamma * direction))
                is_dp = model == MODEL_IDS["drucker_prager"]
                sig_p = ti.select(is_dp, sig_dp, sig_p)
                projected = ti.select(is_dp and (tr >= 0 or dgamma > 0), 1, projected)
            if ti.static(self.has("snow")):
                # snow (Stomakhin et al. 2013): clamp the singular values, move the rest to Jp
                sig_snow = ti.min(ti.max(sig_c, 1.0 - self.mat_params[m, COL["theta_c"]]),
                                  1.0 + self.mat_params[m, COL["theta_s"]])
                is_snow = model == MODEL_IDS["snow"]
                sig_p = ti.select(is_snow, sig_snow, sig_p)
                jp_new = ti.select(is_snow, jp * prod(sig_c) / prod(sig_snow), jp)
                projected = ti.select(is_snow and (sig_snow - sig_c).norm_sqr() > 0, 1, projected)
            # Only particles whose state is actually projected take the U diag(sig) V^T route:
            # for the rest F_new = F_trial exactly, and differentiating through the SVD would
            # lose the symmetric off-diagonal derivative where singular values coincide (F = I).
            F_proj = U @ diag_matrix(sig_p, F_trial) @ V.transpose()
            F_new = ti.select(projected != 0, F_proj, F_new)
            sig_new = ti.select(projected != 0, sig_p, sig_c)
        if ti.static(self.has("fluid")):
            J = ti.max(F_trial.determinant(), 1e-6)  # from F, not sig: fluid-only scenes skip the SVD
            F_fluid = diag_matrix(sig_c * 0.0 + ti.pow(J, 1.0 / dim), F_trial)
            F_new = ti.select(model == MODEL_IDS["fluid"], F_fluid, F_new)
        if ti.static(self.has("rigid")):
            # rigid: no deformation (the projection after g2p makes the motion rigid)
            is_rigid = model == MODEL_IDS["rigid"]
            F_new = ti.select(is_rigid, ti.Matrix.identity(self.real, dim), F_new)
            sig_new = ti.select(is_rigid, sig_c * 0.0 + 1.0, sig_new)
        return F_new, sig_new, jp_new

    @ti.func
    def _hb_flow(self, m, excess, mu, p, root_field: ti.template()):
        """Herschel-Bulkley plastic increment g (of the deviatoric log strain's norm) in one
        substep for a trial ``excess`` beyond the yield surface: the root of
        2 mu (excess - g) = K (g / dt)^n, stress above yield = viscous stress of the rate g / dt
        (n = 1: the Bingham relaxation g = excess 2 mu dt / (K + 2 mu dt)); 0 where excess = 0.

        The root u = log g comes from :meth:`_hb_root` (solved here, or with ``root_field`` read
        from :attr:`hb_u`, which :meth:`hb_root` filled for this state), then one more Newton
        step whose residual's inputs carry the gradients: with the root and the step's
        denominator r'(u) held constant (fields without gradient, or :meth:`_no_grad`), that
        step's derivative is the implicit-function one, du = -(dr / dtheta) / r'(u) for every
        input theta (K, n, mu, excess, dt); r = 0 at the root, so the denominator's own
        derivative would only multiply 0 (and in f32, differentiating it gave NaN d/dE). Taichi's
        parallel adjoints (threaded CPU with PHYSIM_SERIAL_SCATTER=0, GPU) of a kernel holding
        the whole Newton solve gave wrong gradients (the 3D FD matrix's plasticine d/dE off by
        6.5 %, the viscoplastic one of the wrong sign; the serial CPU adjoint was right), so the
        differentiated ``plasticity`` kernel reads the root instead of solving for it."""
        K, n, ex, log_dt = self._hb_inputs(m, excess)
        u_root = ti.cast(0.0, self.real)
        den = ti.cast(1.0, self.real)
        if ti.static(root_field):
            u_root = self.hb_u[p]
            den = self.hb_d[p]
        else:
            u_root = self._no_grad(self._hb_root(m, excess, mu))
            den = self._hb_slope(u_root, K, n, mu, log_dt)
        u = u_root - self._hb_residual(u_root, K, n, mu, ex, log_dt) / den
        return ti.select(excess > 0, ti.exp(u), 0.0)

    @ti.func
    def _hb_inputs(self, m, excess):
        """(K, n, excess, log dt) of the Herschel-Bulkley solve, with placeholders where its
        result is discarded: n = 1 for a row without a flow index (another model's), and an
        excess of 1 where there is none (the result there is 0). The placeholders keep every
        partial derivative of the discarded solve finite: with a tiny excess (1e-30) the f32
        adjoint of its Newton step overflowed, and 0 * inf made d/dE NaN for every material."""
        K = self.mat_params[m, COL["viscosity"]]
        n = ti.select(self.mat_params[m, COL["flow_index"]] > 0, self.mat_params[m, COL["flow_index"]], 1.0)
        ex = ti.select(excess > 0, excess, 1.0)
        return K, n, ex, ti.log(self.dt[None])

    @ti.func
    def _no_grad(self, x):
        """``x`` without a gradient (Taichi has no stop-gradient for a local, and its reverse mode
        propagates nothing through a cast to an integer): truncated to NO_GRAD_BITS fractional
        bits, for |x| < 2^23 (the log of a strain increment is within +-70)."""
        scale = ti.static(2.0**NO_GRAD_BITS)
        return ti.cast(ti.cast(x * scale, ti.i64), self.real) / scale

    @ti.func
    def _hb_root(self, m, excess, mu):
        """u = log g of :meth:`_hb_flow`'s root: Newton's method (HB_NEWTON = 8 steps) on the
        convex residual r(u) = K e^(n (u - log dt)) + 2 mu e^u - 2 mu excess, from the smaller of
        the two one-term roots (above the root, so the iterates decrease monotonically)."""
        K, n, ex, log_dt = self._hb_inputs(m, excess)
        # as a difference of logs: 2 mu ex / 1e-30 (K = 0) overflows f32
        u0 = ti.min(ti.log(ex), log_dt + (ti.log(2 * mu * ex) - ti.log(ti.max(K, 1e-30))) / n)
        # every iterate a new value: Taichi's reverse mode crashed (segfault) on a local
        # reassigned in an unrolled loop
        u2 = self._hb_newton_step(self._hb_newton_step(u0, K, n, mu, ex, log_dt), K, n, mu, ex, log_dt)
        u4 = self._hb_newton_step(self._hb_newton_step(u2, K, n, mu, ex, log_dt), K, n, mu, ex, log_dt)
        u6 = self._hb_newton_step(self._hb_newton_step(u4, K, n, mu, ex, log_dt), K, n, mu, ex, log_dt)
        return self._hb_newton_step(self._hb_newton_step(u6, K, n, mu, ex, log_dt), K, n, mu, ex, log_dt)

    @ti.kernel
    def hb_root(self):
        """Reverse mode's replay, after the scratch restore (and the tie split): the
        Herschel-Bulkley root of every particle's trial state (scratch ``sig``) into
        :attr:`hb_u`, for the ``plasticity`` adjoint (see :meth:`_hb_flow`). Forward only."""
        for p in range(self.n_particles[None]):
            m = self.material[p]
            mu, _la = self._lame(m)
            mu = ti.select(mu > 0, mu, 1.0)
            eps = ti.log(ti.max(self.sig[p], 1e-6))
            norm = safe_norm(eps - eps.sum() / self.dim)
            excess = ti.max(norm - self.mat_params[m, COL["yield_stress"]] / (2 * mu), 0.0)
            K, n, _ex, log_dt = self._hb_inputs(m, excess)
            u = self._hb_root(m, excess, mu)
            self.hb_u[p] = u
            self.hb_d[p] = self._hb_slope(u, K, n, mu, log_dt)

    @ti.func
    def _hb_newton_step(self, u, K, n, mu, ex, log_dt):
        """One Newton step of :meth:`_hb_flow` in u = log g: u - r(u) / r'(u), with r and r'
        divided by g = e^u (the same step; :meth:`_hb_residual`, :meth:`_hb_slope`): the
        denominator is then >= 2 mu > 0 at every scale of g, where the unscaled one (~2 mu g)
        squared underflowed in f32 for g < 1e-23."""
        return u - self._hb_residual(u, K, n, mu, ex, log_dt) / self._hb_slope(u, K, n, mu, log_dt)

    @ti.func
    def _hb_residual(self, u, K, n, mu, ex, log_dt):
        """r(u) / e^u of :meth:`_hb_root`'s residual: a + 2 mu (1 - excess e^-u), a = K e^((n - 1) u) / dt^n."""
        return K * ti.exp((n - 1.0) * u - n * log_dt) + 2 * mu * (1.0 - ex * ti.exp(-u))

    @ti.func
    def _hb_slope(self, u, K, n, mu, log_dt):
        """r'(u) / e^u of :meth:`_hb_root`'s residual: n a + 2 mu (>= 2 mu > 0)."""
        return n * K * ti.exp((n - 1.0) * u - n * log_dt) + 2 * mu

    @ti.func
    def _family_stress(self, f: ti.template(), model, m, U, V, F, sig, jp, C, mu, la):
        """Kirchhoff stress tau = P F^T of the models of :data:`STRESS_FAMILIES` ``[f]`` (unselected:
        the caller picks the family of the particle's model; the rigid family's is 0)."""
        dim = ti.static(self.dim)
        identity = ti.Matrix.identity(self.real, dim)
        tau = F * 0.0
        if ti.static(f == 0):
            # fixed-corotated family (corotated, von Mises, Bingham, snow with hardening)
            J = F.determinant()
            h = 1.0
            if ti.static(self.has("snow")):
                h = ti.select(model == MODEL_IDS["snow"],
                              ti.exp(self.mat_params[m, COL["hardening"]] * (1.0 - jp)), 1.0)
            R = U @ V.transpose()
            tau = 2 * mu * h * (F - R) @ F.transpose() + la * h * (J - 1) * J * identity
        elif ti.static(f == 1):
            # Drucker-Prager: St. Venant-Kirchhoff in Hencky strain
            eps = ti.log(ti.max(sig, 1e-6))
            tau = U @ diag_matrix(2 * mu * eps + la * eps.sum(), F) @ U.transpose()
        elif ti.static(f == 2):
            # weakly compressible Newtonian fluid: E column holds the bulk modulus
            J = F.determinant()
            eta = self.mat_params[m, COL["viscosity"]]
            tau = self.mat_params[m, COL["E"]] * J * (J - 1) * identity + eta * J * (C + C.transpose())
        elif ti.static(f == 3):
            J = F.determinant()
            tau = mu * (F @ F.transpose() - identity) + la * ti.log(ti.max(J, 1e-6)) * identity
        return tau

    @ti.func
    def _active_stress(self, m, p, t, F):
        """The muscle groups' active stress along the fiber (group -1: passive; 0 without actuators)."""
        tau = F * 0.0
        if ti.static(self.has_actuators):
            g = self.act_group[p]
            a = ti.select(g >= 0, self.action[t, self.act_offset[None] + ti.max(g, 0)], 0.0)
            d = F @ self.fiber[p]
            tau = a * self.mat_params[m, COL["actuation_strength"]] * d.outer_product(d)
        return tau

    @ti.func
    def _in_family(self, f: ti.template(), model):
        """Whether material model id ``model`` is one of :data:`STRESS_FAMILIES` ``[f]``."""
        out = False
        for name in ti.static(STRESS_FAMILIES[f]):
            out = out or model == ti.static(MODEL_IDS[name])
        return out

    def _stress_families(self) -> list[int]:
        """Indices of the :data:`STRESS_FAMILIES` with a model in this engine's kernels."""
        return [f for f, names in enumerate(STRESS_FAMILIES) if self.has(*names)]

    @ti.func
    def _kirchhoff_stress(self, model, m, p, t, U, V, F, sig, jp, C, mu, la):
        """Kirchhoff stress tau = P F^T of every model present, branch-free (``ti.select``; the
        fused forward pass). Reverse mode differentiates :meth:`stress`, one loop per family."""
        tau = F * 0.0
        for f in ti.static(self._stress_families()):
            if ti.static(f == 0):  # the default: every model's stress unless another family's
                tau = self._family_stress(f, model, m, U, V, F, sig, jp, C, mu, la)
            elif ti.static(f < len(STRESS_FAMILIES) - 1):
                tau = ti.select(self._in_family(f, model), self._family_stress(f, model, m, U, V, F, sig, jp, C, mu,
                                                                                la), tau)
        tau += self._active_stress(m, p, t, F)
        if ti.static(self.has("rigid")):
            tau = ti.select(model == MODEL_IDS["rigid"], F * 0.0, tau)
        return tau

    @ti.func
    def _lame(self, m):
        E = self.mat_params[m, COL["E"]]
        nu = self.mat_params[m, COL["nu"]]
        return E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))

    @ti.kernel
    def plasticity(self, l: ti.i32):
        """Return mapping: writes the elastic F[l+1], its singular values and Jp[l+1]."""
        if ti.static(self.serial_ad):
            ti.loop_config(serialize=True)
        for p in range(self.n_particles[None]):
            m = self.material[p]
            mu, la = self._lame(m)
            F_new, sig_new, jp_new = self._return_mapping(
                self.mat_model[m], m, self.U[p], self.sig[p], self.V[p], self.F_trial[p], self.Jp[l, p], mu, la, p,
                True)
            self.F[l + 1, p] = F_new
            self.sig_elastic[p] = sig_new
            self.Jp[l + 1, p] = jp_new

    @ti.kernel
    def stress(self, l: ti.i32, t: ti.i32):
        """Kirchhoff stress of F[l+1]; stores each particle's MLS affine matrix."""
        # one loop per family of models (each particle's in the loop of its family): the
        # adjoint of one loop of all the families' stresses (ti.select) took 57 s to compile
        # in 3D, every family's code in one block
        for f in ti.static(self._stress_families()):
            if ti.static(self.serial_ad):
                ti.loop_config(serialize=True)
            for p in range(self.n_particles[None]):
                m = self.material[p]
                model = self.mat_model[m]
                if self._in_family(f, model):
                    mu, la = self._lame(m)
                    C = self.C[l, p]
                    F = self.F[l + 1, p]
                    tau = F * 0.0
                    if ti.static(f < len(STRESS_FAMILIES) - 1):  # the rigid family: no stress
                        tau = self._family_stress(f, model, m, self.U[p], self.V[p], F, self.sig_elastic[p],
                                                  self.Jp[l + 1, p], C, mu, la) + self._active_stress(m, p, t, F)
                    self.affine[p] = self._affine(m, tau, C)

    @ti.func
    def _affine(self, m, tau, C):
        inv_dx = ti.static(self.inv_dx)
        mass = self.mat_params[m, COL["density"]] * self.p_vol[None]
        return -self.dt[None] * self.p_vol[None] * 4 * inv_dx * inv_dx * tau + mass * C

    @ti.func
    def _mass(self, p):
        """Particle ``p``'s mass, density * volume, in the kernels (so the density has a gradient)."""
        return self.mat_params[self.material[p], COL["density"]] * self.p_vol[None]

    @ti.kernel
    def p2g(self, l: ti.i32):
        """Scatter mass and momentum (with the affine/stress term) to the grid."""
        if ti.static(self.serial_ad):
            ti.loop_config(serialize=True)
        for p in range(self.n_particles[None]):
            self._scatter(l, p, self.affine[p])

    @ti.func
    def _stencil(self, l, p):
        """Particle ``p``'s quadratic B-spline stencil: lower corner cell, offset from it (in
        cells) and the weights per axis, shared by the scatter (p2g) and the gather (g2p)."""
        xp = self.x[l, p] * self.inv_dx
        # clamp in floating point (an escaped particle must not index outside the grid; the
        # health check reports it) -- integer min/max trips Taichi's CUDA adjoints
        base = ti.cast(ti.min(ti.max(xp, 0.5), self.res - 2.0) - 0.5, ti.i32)
        fx = xp - ti.cast(base, self.real)
        if ti.static(self.worlds > 1):  # the particle's world's tile of the grid (axis 0)
            base[0] += self.p_world[p] * self.res
        # products, not ** 2: the adjoint of pow() has a log(base) term that is NaN for negative bases
        w = [0.5 * (1.5 - fx) * (1.5 - fx), 0.75 - (fx - 1.0) * (fx - 1.0), 0.5 * (fx - 0.5) * (fx - 0.5)]
        return base, fx, w

    @ti.func
    def _node_weight(self, w: ti.template(), dw: ti.template(), offset: ti.template()):
        """One stencil node's weight prod_d w[offset[d]][d] and its gradient w.r.t. fx
        (``dw`` from :meth:`_stencil_dw`), for :meth:`g2p_grad`."""
        weight = 1.0
        grad = ti.Vector.one(self.real, self.dim)
        for d in ti.static(range(self.dim)):
            weight *= w[offset[d]][d]
            for e in ti.static(range(self.dim)):
                if ti.static(e == d):
                    grad[e] *= dw[offset[d]][d]
                else:
                    grad[e] *= w[offset[d]][d]
        return weight, grad

    @ti.func
    def _stencil_dw(self, fx):
        """Derivatives of the quadratic B-spline weights of :meth:`_stencil` w.r.t. fx."""
        return [fx - 1.5, -2.0 * (fx - 1.0), fx - 0.5]

    @ti.func
    def _scatter(self, l, p, affine):
        dim = ti.static(self.dim)
        mass = self._mass(p)
        base, fx, w = self._stencil(l, p)
        mv = mass * self.v[l, p]
        if ti.static(self.layout.external_force):
            mv += self.dt[None] * self.f_ext[p]  # impulse of the coupler's force over this substep
        for offset in ti.static(ti.grouped(ti.ndrange(*((3,) * dim)))):
            weight = 1.0
            for d in ti.static(range(dim)):
                weight *= w[offset[d]][d]
            dpos = (ti.cast(offset, self.real) - fx) * self.dx
            self.grid_mv[base + offset] += weight * (mv + affine @ dpos)
            self.grid_m[base + offset] += weight * mass

    @ti.kernel
    def grid_update(self, l: ti.i32, t: ti.i32):
        for I in ti.grouped(self.grid_m):
            self._update_node(I, l, t)

    @ti.func
    def _update_node(self, I, l, t):
        self._grid_node(I, l, t, False)

    @ti.func
    def _grid_node(self, I, l, t, rigid_sum: ti.template()):
        """Node ``I``'s updated velocity (momentum / mass, gravity, tools, walls) into ``grid_v``,
        set to its rigid body's motion where a body owns the node; with ``rigid_sum`` (the
        coupling's first phase) added to its body's sums instead."""
        m = self.grid_m[I]
        # nodes at the very edge of a stencil get ~1e-20 of a particle's mass; treating them as
        # empty keeps the adjoint of v = mv / m (which has 1 / m^2) from overflowing in f32
        if m > self.min_node_mass[None]:
            v = self.grid_mv[I] / m + self.dt[None] * self.gravity[None]
            # J: the node's index in its world's tile (I itself in an unbatched layout)
            J, world = self._local_node(I)
            xg = ti.cast(J, self.real) * self.dx
            if ti.static(self.layout.tool_contact):
                v = self.tools.contact_world(l, t, xg, v, world)
            kind = self.boundary[None]
            # "rough" walls also hold the nodes on the wall's surface (row BOUND): with only the
            # band behind it, material resting on a friction wall felt 3 % of its grip (its lowest
            # particles' weight on the band's last row) and slid as a block. An opt-in kind: the
            # other walls (and every gait, grasp and task tuned on them) are unchanged. Not a
            # rigid body's nodes: its walls act on it as a whole (_rigid_impulse)
            edge = ti.select(kind == BOUNDARY_IDS["rough"], 1, 0)
            if ti.static(self.has("rigid")):
                edge = ti.select(self.grid_body[I] > 0, 0, edge)
            for d in ti.static(range(self.dim)):
                into_wall = (J[d] < BOUND + edge and v[d] < 0) or (J[d] > self.res - BOUND - edge and v[d] > 0)
                if into_wall:
                    if kind == BOUNDARY_IDS["sticky"]:
                        v = v * 0.0
                    else:
                        normal = ti.Vector.unit(self.dim, d, self.real)
                        vn = v.dot(normal)
                        v = v - vn * normal
                        if kind == BOUNDARY_IDS["friction"] or kind == BOUNDARY_IDS["rough"]:
                            vt = safe_norm(v)
                            scale = ti.max(1.0 - self.wall_friction[None] * ti.abs(vn) / vt, 0.0)
                            v = v * scale
            if ti.static(rigid_sum):
                self._rigid_grid_accumulate(I, m, xg, v)
            else:
                if ti.static(self.has("rigid")):
                    v = self._rigid_node_velocity(I, xg, v)
                self.grid_v[I] = v

    @ti.func
    def _local_node(self, I):
        """Grid node ``I``'s index within its world's tile and that world (batched layouts tile
        the worlds along axis 0; unbatched: ``I`` and 0)."""
        J = I
        world = 0
        if ti.static(self.worlds > 1):
            world = I[0] // self.res
            J[0] = I[0] - world * self.res
        return J, world

    @ti.kernel
    def g2p(self, l: ti.i32):
        for p in range(self.n_particles[None]):
            self._gather(l, p)

    @ti.func
    def _gather(self, l, p):
        new_v, new_C, new_x = self._gather_values(l, p)
        self.v[l + 1, p] = new_v
        self.C[l + 1, p] = new_C
        self.x[l + 1, p] = new_x

    @ti.func
    def _gather_values(self, l, p):
        """Particle ``p``'s gathered v, C and advected x (g2p) from ``grid_v``."""
        dim, inv_dx = ti.static(self.dim, self.inv_dx)
        base, fx, w = self._stencil(l, p)
        new_v = self.v[l, p] * 0.0
        new_C = self.C[l, p] * 0.0
        for offset in ti.static(ti.grouped(ti.ndrange(*((3,) * dim)))):
            weight = 1.0
            for d in ti.static(range(dim)):
                weight *= w[offset[d]][d]
            dpos = ti.cast(offset, self.real) - fx
            g_v = self.grid_v[base + offset]
            new_v += weight * g_v
            new_C += 4 * inv_dx * weight * g_v.outer_product(dpos)
        return new_v, new_C, self.x[l, p] + self.dt[None] * new_v

    @ti.kernel
    def g2p_grad(self, l: ti.i32):
        """Hand-written adjoint of :meth:`g2p`: 1.5x (2D) to 2x (3D) faster than Taichi's
        generated one (a hand-written p2g adjoint was not faster, so p2g keeps Taichi's).
        Reads the gradients of slot ``l + 1``'s x, v, C; adds to ``grid_v.grad`` and
        ``x.grad[l]`` (v[l] and C[l] do not enter the gather)."""
        dim, inv_dx = ti.static(self.dim, self.inv_dx)
        if ti.static(self.serial):
            ti.loop_config(serialize=True)
        for p in range(self.n_particles[None]):
            base, fx, w = self._stencil(l, p)
            g_x1 = self.x.grad[l + 1, p]
            g_v = self.v.grad[l + 1, p] + self.dt[None] * g_x1  # x[l+1] = x[l] + dt v[l+1]
            g_C = 4 * inv_dx * self.C.grad[l + 1, p]
            g_fx = ti.Vector.zero(self.real, dim)
            new_v = ti.Vector.zero(self.real, dim)
            dw = self._stencil_dw(fx)
            along_0 = g_v - g_C @ fx
            for offset in ti.static(ti.grouped(ti.ndrange(*((3,) * dim)))):
                weight, grad_weight = self._node_weight(w, dw, offset)
                g_node = self.grid_v[base + offset]
                # new_v += weight g_node;  new_C += 4 inv_dx weight g_node (x) (offset - fx)
                along = along_0 + g_C @ ti.cast(offset, self.real)  # = g_v + g_C dpos
                self.grid_v.grad[base + offset] += weight * along
                new_v += weight * g_node
                g_fx += g_node.dot(along) * grad_weight
            g_fx -= g_C.transpose() @ new_v  # d dpos / d fx = -I, summed over the nodes
            self.x.grad[l, p] = self.x.grad[l, p] + g_x1 + inv_dx * g_fx

    # ------------------------------------------------------------ rigid bodies
    @ti.func
    def _is_rigid(self, p):
        return self.mat_model[self.material[p]] == MODEL_IDS["rigid"]

    @ti.func
    def _cross(self, a, b):
        """a x b as an angular vector (one component in 2D)."""
        out = ti.Vector.zero(self.real, self.ang_dim)
        if ti.static(self.dim == 2):
            out = ti.Vector([a[0] * b[1] - a[1] * b[0]])
        else:
            out = a.cross(b)
        return out

    @ti.func
    def _axial(self, C):
        """Axial vector of C - C^T (2D: its one component): APIC's affine angular momentum / (m D)."""
        out = ti.Vector.zero(self.real, self.ang_dim)
        if ti.static(self.dim == 2):
            out = ti.Vector([C[1, 0] - C[0, 1]])
        else:
            out = ti.Vector([C[2, 1] - C[1, 2], C[0, 2] - C[2, 0], C[1, 0] - C[0, 1]])
        return out

    @ti.func
    def _spin(self, w, r):
        """Velocity w x r of a point at arm r (w: angular velocity)."""
        out = r * 0.0
        if ti.static(self.dim == 2):
            out = w[0] * ti.Vector([-r[1], r[0]])
        else:
            out = w.cross(r)
        return out

    @ti.func
    def _skew(self, w):
        """The velocity gradient of a rigid rotation at angular velocity w (the APIC C)."""
        out = ti.Matrix.zero(self.real, self.dim, self.dim)
        if ti.static(self.dim == 2):
            out = ti.Matrix([[0.0, -w[0]], [w[0], 0.0]])
        else:
            out = ti.Matrix([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])
        return out

    @ti.func
    def _rigid_mark_nodes(self, l, p):
        """Rigid particle ``p`` claims the nodes of its stencil for its body (the largest material
        row wins where two bodies' stencils overlap)."""
        base, _fx, _w = self._stencil(l, p)
        for offset in ti.static(ti.grouped(ti.ndrange(*((3,) * self.dim)))):
            ti.atomic_max(self.grid_body[base + offset], self.material[p] + 1)

    @ti.func
    def _rigid_grid_accumulate(self, I, m, xg, v):
        """Add node ``I`` (mass m at xg, updated velocity v) to the sums of the body owning it."""
        b = self.grid_body[I] - 1
        if b >= 0:
            self.body_gm[b] += m
            self.body_gmx[b] += m * xg
            self.body_gmv[b] += m * v
            self.body_gmxx[b] += m * xg.outer_product(xg)
            self.body_gml[b] += m * self._cross(xg, v)

    @ti.func
    def _rigid_grid_motion(self, b):
        """Body ``b``'s rigid motion on the grid: the velocity V and angular velocity w about the
        centre c of all the mass on its nodes that keep their linear and angular momentum
        (w = I^-1 L, I the nodes' inertia about c). Setting it on those nodes moves the body and
        the material sharing its nodes as one rigid piece for this substep, so the body receives
        the whole force the other materials put on its nodes (pressure, contact), not a share in
        proportion to its mass there; the particle projection after g2p then finds this motion
        again (a rigid field is reproduced exactly by the quadratic B-spline transfer)."""
        M = self.body_gm[b]
        c = self.body_gmx[b] / M
        P = self.body_gmv[b]
        S = self.body_gmxx[b] - M * c.outer_product(c)
        L = self.body_gml[b] - self._cross(c, P)
        w = L * 0.0
        if ti.static(self.dim == 2):
            w = L / (S[0, 0] + S[1, 1])
        else:
            inertia = (S[0, 0] + S[1, 1] + S[2, 2]) * ti.Matrix.identity(self.real, 3) - S
            w = inertia.inverse() @ L
        self.body_gc[b] = c
        self.body_gV[b] = P / M
        self.body_gw[b] = w

    @ti.func
    def _rigid_node_velocity(self, I, xg, v):
        """The velocity of node ``I`` at xg: its body's rigid motion V + w x (xg - c) where a body
        owns it, else v."""
        b = self.grid_body[I] - 1
        k = ti.max(b, 0)
        rigid = self.body_gV[k] + self._spin(self.body_gw[k], xg - self.body_gc[k])
        return ti.select(b >= 0, rigid, v)

    @ti.func
    def _rigid_grid_couple(self, l, t):
        """The grid-level coupling's loops (fused kernels): mark the bodies' nodes, sum them,
        solve each body's motion (the grid update then sets it on the nodes)."""
        for p in range(self.n_particles[None]):
            if self._is_rigid(p):
                self._rigid_mark_nodes(l, p)
        for b in range(self.n_mat):
            for f in ti.static(self.body_grid_scratch):
                f[b] = ti.zero(f[b])
        for I in ti.grouped(self.grid_m):
            self._grid_node(I, l, t, True)
        for b in range(self.n_mat):
            if self.body_rigid[b] != 0:
                self._rigid_grid_motion(b)

    @ti.kernel
    def rigid_grid_reduce(self, l: ti.i32, t: ti.i32):
        """Per-body sums of the nodes' updated state (atomics); recorded for its adjoint."""
        for I in ti.grouped(self.grid_m):
            self._grid_node(I, l, t, True)

    @ti.kernel
    def rigid_grid_motion(self):
        """Each body's rigid motion on the grid; recorded for its adjoint."""
        for b in range(self.n_mat):
            if self.body_rigid[b] != 0:
                self._rigid_grid_motion(b)

    @ti.func
    def _rigid_clear(self, b):
        for f in ti.static(self.body_scratch):
            f[b] = ti.zero(f[b])
        for s in ti.static(range(RIGID_CONTACT_PASSES * 2 * self.dim + 1)):
            self.body_lv[s, b] = ti.zero(self.body_lv[s, b])
            self.body_av[s, b] = ti.zero(self.body_av[s, b])
        for k, j in ti.static(ti.ndrange(RIGID_CONTACT_PASSES, 2 * self.dim)):
            self.contact_n[k, b, j] = 0.0
            self.contact_r[k, b, j] = ti.zero(self.contact_r[k, b, j])

    @ti.func
    def _rigid_accumulate(self, p, x, v, C):
        """Add rigid particle ``p``'s gathered state to its body's sums (per unit mass: a body's
        particles share one density, which cancels from the projection)."""
        b = self.material[p]
        self.body_sx[b] += x
        self.body_sv[b] += v
        self.body_sa[b] += x.outer_product(self.rest[p])
        self.body_sl[b] += self._cross(x, v) + ti.static(0.25 * self.dx * self.dx) * self._axial(C)

    @ti.func
    def _rigid_rotation(self, b):
        """Body ``b``'s rotation: the polar rotation of A = sum (x - c) X^T (the rotation that
        best fits the gathered positions to the rest shape)."""
        A = self.body_sa[b] - (self.body_sx[b] / self.body_count[b]).outer_product(self.body_sum_rest[b])
        if ti.static(self.dim == 2):
            # closed form: the angle maximizing tr(R^T A)
            theta = ti.atan2(A[1, 0] - A[0, 1], A[0, 0] + A[1, 1])
            c, s = ti.cos(theta), ti.sin(theta)
            self.body_R[b] = ti.Matrix([[c, -s], [s, c]])
        else:
            U, sig, V = svd3(A, 5, self.svd_tol)
            self.body_U[b], self.body_sig[b], self.body_V[b] = U, sig, V
            self.body_R[b] = U @ V.transpose()

    @ti.func
    def _inertia_inv(self, b, R, L):
        """I^-1 L for body ``b`` at rotation R (I = R I_rest R^T, per unit particle mass)."""
        w = L * 0.0
        if ti.static(self.dim == 2):
            w = self.body_inertia_inv[b][0, 0] * L
        else:
            w = R @ (self.body_inertia_inv[b] @ (R.transpose() @ L))
        return w

    @ti.func
    def _rigid_motion(self, b):
        """Body ``b``'s centre c, velocity V and angular velocity w = I^-1 L (L about c,
        orbital + APIC affine) from the sums: the state before the wall contact (pass 0)."""
        n = self.body_count[b]
        c = self.body_sx[b] / n
        L = self.body_sl[b] - self._cross(c, self.body_sv[b])
        self.body_c[b] = c
        self.body_lv[0, b] = self.body_sv[b] / n
        self.body_av[0, b] = self._inertia_inv(b, self.body_R[b], L)

    @ti.func
    def _contact_select(self, k, p):
        """Contact pass ``k``: count rigid particle ``p`` (and add its arm R X) for every wall
        whose band (the grid's wall cells, BOUND cells from the domain's edge) it is in while
        moving into the wall at the body's velocity of pass ``k``."""
        b = self.material[p]
        r = self.body_R[b] @ self.rest[p]
        x = self.body_c[b] + r
        s = k * ti.static(2 * self.dim)
        v = self.body_lv[s, b] + self._spin(self.body_av[s, b], r)
        for d in ti.static(range(self.dim)):
            if x[d] < ti.static(BOUND * self.dx) and v[d] < 0:
                self.contact_n[k, b, 2 * d] += 1.0
                self.contact_r[k, b, 2 * d] += r
            if x[d] > ti.static(1.0 - BOUND * self.dx) and v[d] > 0:
                self.contact_n[k, b, 2 * d + 1] += 1.0
                self.contact_r[k, b, 2 * d + 1] += r

    @ti.func
    def _rigid_impulse(self, k, j, b):
        """Wall ``j`` (axis j // 2; low side for even j, high for odd) in contact pass ``k`` of
        body ``b``: the impulse at the centroid a of the body's particles in its band moving
        into it that stops a's normal velocity (through the body's mass and inverse inertia),
        then a tangential impulse that stops a's sliding, bounded by the wall's Coulomb friction
        times the normal impulse (slip walls: none; sticky walls: unbounded). Reads V, w of slot
        s = k W + j, writes slot s + 1 (W = 2 dim walls per pass, in turn). Branch-free; ``j``
        may be a runtime index."""
        n = self.body_count[b]
        R = self.body_R[b]
        s = k * ti.static(2 * self.dim) + j
        V = self.body_lv[s, b]
        w = self.body_av[s, b]
        kind = self.boundary[None]
        mu = ti.select(kind == BOUNDARY_IDS["friction"] or kind == BOUNDARY_IDS["rough"], self.wall_friction[None],
                       0.0)
        sticky = kind == BOUNDARY_IDS["sticky"]
        cnt = self.contact_n[k, b, j]
        a = self.contact_r[k, b, j] / ti.max(cnt, 1.0)
        sign = 1.0 - 2.0 * (j % 2)
        normal = ti.Vector.zero(self.real, self.dim)
        for e in ti.static(range(self.dim)):
            normal[e] = ti.select(j // 2 == e, sign, 0.0)
        u = V + self._spin(w, a)
        an = self._cross(a, normal)
        jn = ti.select(cnt > 0, ti.max(-u.dot(normal), 0.0) / (1.0 / n + an.dot(self._inertia_inv(b, R, an))),
                       0.0)
        V += (jn / n) * normal
        w += self._inertia_inv(b, R, jn * an)
        u = V + self._spin(w, a)
        ut = u - u.dot(normal) * normal
        speed = safe_norm(ut)
        tangent = ut / speed
        at = self._cross(a, tangent)
        stop = speed / (1.0 / n + at.dot(self._inertia_inv(b, R, at)))
        jt = ti.select(sticky, ti.select(jn > 0, stop, 0.0), ti.min(stop, mu * jn))
        V -= (jt / n) * tangent
        w -= self._inertia_inv(b, R, jt * at)
        self.body_lv[s + 1, b] = V
        self.body_av[s + 1, b] = w

    @ti.func
    def _turn(self, a):
        """The rotation by the small angle vector a (Cayley: exactly orthogonal, smooth at 0,
        the identity at a = 0)."""
        out = ti.Matrix.identity(self.real, self.dim)
        if ti.static(self.dim == 2):
            q = 0.5 * a[0]
            den = 1.0 + q * q
            cs, sn = (1.0 - q * q) / den, 2.0 * q / den
            out = ti.Matrix([[cs, -sn], [sn, cs]])
        else:
            K = self._skew(0.5 * a)
            out += (2.0 / (1.0 + 0.25 * a.dot(a))) * (K + K @ K)
        return out

    @ti.func
    def _rigid_project(self, l, p):
        """Rigid particle ``p`` onto its body's rigid motion after the wall contact: v = V + w x r,
        C = skew(w) (V, w of the last contact pass) and x = c + dt dV + turn(dt dw) R X (the
        position advanced with the contact's velocity change dV, dw, as g2p advanced it with the
        gathered velocity; without contact x = c + R X)."""
        b = self.material[p]
        last = ti.static(RIGID_CONTACT_PASSES * 2 * self.dim)
        V, w = self.body_lv[last, b], self.body_av[last, b]
        dt = self.dt[None]
        r = self._turn(dt * (w - self.body_av[0, b])) @ (self.body_R[b] @ self.rest[p])
        self.x[l + 1, p] = self.body_c[b] + dt * (V - self.body_lv[0, b]) + r
        self.v[l + 1, p] = V + self._spin(w, r)
        self.C[l + 1, p] = self._skew(w)

    @ti.kernel
    def rigid_save(self, l: ti.i32):
        """Copy the rigid particles' gathered state (slot ``l + 1`` before the projection) to
        scratch. Recorded for its adjoint (``rigid_save_grad``); the replay restores the copy."""
        for p in range(self.n_particles[None]):
            if self._is_rigid(p):
                self.rg_x[p] = self.x[l + 1, p]
                self.rg_v[p] = self.v[l + 1, p]
                self.rg_C[p] = self.C[l + 1, p]

    @ti.kernel
    def rigid_save_grad(self, l: ti.i32):
        """Adjoint of the in-place projection of slot ``l + 1``: the projection's adjoint has
        read the gradients of the projected state; replace them by those of the gathered state."""
        for p in range(self.n_particles[None]):
            if self._is_rigid(p):
                self.x.grad[l + 1, p] = self.rg_x.grad[p]
                self.v.grad[l + 1, p] = self.rg_v.grad[p]
                self.C.grad[l + 1, p] = self.rg_C.grad[p]

    @ti.kernel
    def rigid_reduce(self):
        """Per-body sums of the gathered state (atomics)."""
        for p in range(self.n_particles[None]):
            if self._is_rigid(p):
                self._rigid_accumulate(p, self.rg_x[p], self.rg_v[p], self.rg_C[p])

    @ti.kernel
    def rigid_polar(self):
        """Each body's rotation (2D: Taichi's adjoint; 3D: ``rigid_polar_grad``)."""
        for b in range(self.n_mat):
            if self.body_rigid[b] != 0:
                self._rigid_rotation(b)

    @ti.kernel
    def rigid_polar_grad(self):
        """Hand-written adjoint of the 3D :meth:`rigid_polar` (through the SVD factors the replay stored)."""
        for b in range(self.n_mat):
            if self.body_rigid[b] != 0:
                gA = polar_adjoint(self.body_U[b], self.body_sig[b], self.body_V[b], self.body_R.grad[b],
                                   self.svd_gap_eps)
                self.body_sa.grad[b] += gA
                self.body_sx.grad[b] += -(gA @ self.body_sum_rest[b]) / self.body_count[b]

    @ti.kernel
    def rigid_motion(self):
        for b in range(self.n_mat):
            if self.body_rigid[b] != 0:
                self._rigid_motion(b)

    @ti.kernel
    def rigid_contact_select(self, k: ti.i32):
        for p in range(self.n_particles[None]):
            if self._is_rigid(p):
                self._contact_select(k, p)

    @ti.kernel
    def rigid_contact_impulse(self, k: ti.i32, j: ti.i32):
        """Wall ``j``'s impulses in contact pass ``k`` (one launch per wall, in order)."""
        for b in range(self.n_mat):
            if self.body_rigid[b] != 0:
                self._rigid_impulse(k, j, b)

    @ti.kernel
    def rigid_project(self, l: ti.i32):
        for p in range(self.n_particles[None]):
            if self._is_rigid(p):
                self._rigid_project(l, p)

    # ------------------------------------------------------------ fused forward
    @ti.func
    def _particle_to_grid(self, l, t, p, svd: ti.template(), keep: ti.template()):
        """Particle ``p``'s part of trial_deformation -> svd -> plasticity -> stress -> p2g, with
        its intermediates in registers; ``keep`` also stores the ones the phase kernels'
        adjoints read (F_trial, U, sig, V, sig_elastic, affine): ``1`` in the scratch fields,
        ``2`` in the kept scratch of substep ``l`` (:attr:`kept`)."""
        m = self.material[p]
        mu, la = self._lame(m)
        F_trial = self._trial_F(l, p)
        U, sig, V = F_trial * 0.0, ti.Vector.one(self.real, self.dim), F_trial * 0.0
        if ti.static(svd):
            U, sig, V = self._svd(F_trial)
        F_new, sig_new, jp_new = self._return_mapping(self.mat_model[m], m, U, sig, V, F_trial, self.Jp[l, p],
                                                      mu, la, p, False)
        self.F[l + 1, p] = F_new
        self.Jp[l + 1, p] = jp_new
        C = self.C[l, p]
        tau = self._kirchhoff_stress(self.mat_model[m], m, p, t, U, V, F_new, sig_new, jp_new, C, mu, la)
        affine = self._affine(m, tau, C)
        if ti.static(keep == 2):
            kF, kU, ksig, kV, ksig_e, kaff = ti.static(self.kept)
            kF[l, p] = F_trial
            if ti.static(svd):
                kU[l, p], ksig[l, p], kV[l, p] = U, sig, V
            ksig_e[l, p] = sig_new
            kaff[l, p] = affine
        elif ti.static(keep):
            self.F_trial[p] = F_trial
            if ti.static(svd):
                self.U[p], self.sig[p], self.V[p] = U, sig, V
            self.sig_elastic[p] = sig_new
        if ti.static(keep == 1 or self.serial):
            self.affine[p] = affine
        if ti.static(not self.serial):
            self._scatter(l, p, affine)

    @ti.kernel
    def substep_keep(self, l: ti.i32, t: ti.i32, svd: ti.template()):
        """:meth:`substep_fused` (no rigid bodies) that also keeps substep ``l``'s particle
        scratch in :attr:`kept` for :meth:`substep_restore`."""
        for I in ti.grouped(self.grid_m):
            self._clear_node(I)
        for p in range(self.n_particles[None]):
            self._particle_to_grid(l, t, p, svd, 2)
        self._serial_scatter(l)
        for I in ti.grouped(self.grid_m):
            self._update_node(I, l, t)
        for p in range(self.n_particles[None]):
            self._gather(l, p)

    @ti.kernel
    def substep_restore(self, l: ti.i32, t: ti.i32, svd: ti.template()):
        """Reverse mode's replay of a substep run by :meth:`substep_keep`: the particle scratch
        from :attr:`kept` (no SVD, return mapping or stress; tied singular values split as
        :meth:`split_tied_scratch` does), then the scatter and the grid update as
        :meth:`substep_scratch` does. Writes only scratch, and zeroes the scratch gradients
        (what :meth:`zero_scratch_grads` would do next: see :meth:`_replay_restore`)."""
        kF, kU, ksig, kV, ksig_e, kaff = ti.static(self.kept)
        for I in ti.grouped(self.grid_m):
            self._clear_node(I)
            for f in ti.static(self.grid_scratch):
                f.grad[I] = ti.zero(f.grad[I])
        for p in range(self.n_particles[None]):
            for f in ti.static(self.particle_scratch):
                f.grad[p] = ti.zero(f.grad[p])
            self.F_trial[p] = kF[l, p]
            if ti.static(svd):
                self.U[p], self.sig[p], self.V[p] = kU[l, p], ksig[l, p], kV[l, p]
            self.sig_elastic[p] = ksig_e[l, p]
            self.affine[p] = kaff[l, p]
            if ti.static(not self.serial):
                self._scatter(l, p, kaff[l, p])
            if ti.static(svd):
                self._split_tie(l, p)
        self._serial_scatter(l)
        for I in ti.grouped(self.grid_m):
            self._update_node(I, l, t)

    def _replay_restore(self, l: int, t: int, svd: bool) -> None:
        """The replay launch of a kept substep: :meth:`substep_restore`, which also zeroes the
        scratch gradients, so the :meth:`zero_scratch_grads` that the tape calls next skips its
        launch."""
        self.substep_restore(l, t, svd)
        self._scratch_grads_zeroed = True

    def _keeps(self, tape) -> bool:
        """Whether this substep keeps its scratch (tape.keep_scratch: it is differentiated
        before the next chunk runs), when the layout's kept scratch fits KEEP_SCRATCH_MAX_BYTES
        (allocated here, once) and the scene has no rigid body (whose scratch is replayed)."""
        if not (tape.keep_scratch and not self.has_rigid and self.keep_bytes <= KEEP_SCRATCH_MAX_BYTES):
            return False
        if self.kept is None:
            dim, shape = self.dim, (self.K, self.capacity)
            mat = lambda: ti.Matrix.field(dim, dim, self.real, shape=shape)  # noqa: E731
            vec = lambda: ti.Vector.field(dim, self.real, shape=shape)  # noqa: E731
            self.kept = [mat(), mat(), vec(), mat(), vec(), mat()]
        return True

    @ti.func
    def _serial_scatter(self, l):
        """The P2G scatter of every particle from ``affine`` on one thread (after
        :meth:`_particle_to_grid` stored it), when ``self.serial``; a loop of the caller's kernel."""
        if ti.static(self.serial):
            ti.loop_config(serialize=True)
            for p in range(self.n_particles[None]):
                self._scatter(l, p, self.affine[p])

    @ti.kernel
    def substep_fused(self, l: ti.i32, t: ti.i32, svd: ti.template(), rigid: ti.template()):
        """One whole substep in one launch (the phases above as consecutive loops of one
        kernel), keeping per-particle intermediates in registers. Forward only: it writes
        slot ``l + 1`` exactly as the phase kernels do, but not their scratch fields, which
        reverse mode restores with :meth:`substep_scratch` before differentiating."""
        for I in ti.grouped(self.grid_m):
            self._clear_node(I)
        for p in range(self.n_particles[None]):
            self._particle_to_grid(l, t, p, svd, False)
        self._serial_scatter(l)
        if ti.static(rigid):
            self._rigid_grid_couple(l, t)
        for I in ti.grouped(self.grid_m):
            self._update_node(I, l, t)
        for p in range(self.n_particles[None]):
            self._gather(l, p)
        if ti.static(rigid):
            for b in range(self.n_mat):
                self._rigid_clear(b)
            for p in range(self.n_particles[None]):
                if self._is_rigid(p):
                    self._rigid_accumulate(p, self.x[l + 1, p], self.v[l + 1, p], self.C[l + 1, p])
            for b in range(self.n_mat):
                if self.body_rigid[b] != 0:
                    self._rigid_rotation(b)
            self._rigid_contact()
            for p in range(self.n_particles[None]):
                if self._is_rigid(p):
                    self._rigid_project(l, p)

    @ti.func
    def _rigid_contact(self):
        """The bodies' motion and wall contact passes (loops of the fused kernels)."""
        for b in range(self.n_mat):
            if self.body_rigid[b] != 0:
                self._rigid_motion(b)
        for k in ti.static(range(RIGID_CONTACT_PASSES)):
            for p in range(self.n_particles[None]):
                if self._is_rigid(p):
                    self._contact_select(k, p)
            for b in range(self.n_mat):
                if self.body_rigid[b] != 0:
                    for j in range(2 * self.dim):  # the walls in turn (a serial loop per body)
                        self._rigid_impulse(k, j, b)

    @ti.kernel
    def substep_scratch(self, l: ti.i32, t: ti.i32, svd: ti.template(), rigid: ti.template()):
        """Reverse mode's replay of substep ``l`` in one launch: grid clear ... grid_update
        fused, storing every scratch value the phase kernels' adjoints read (particle
        intermediates and the grid; with ``rigid`` the rigid particles' gathered state, the
        body sums and rotations). Idempotent: it writes only scratch and F, Jp of slot
        ``l + 1``, with the values the forward pass wrote there."""
        for I in ti.grouped(self.grid_m):
            self._clear_node(I)
        for p in range(self.n_particles[None]):
            self._particle_to_grid(l, t, p, svd, True)
        self._serial_scatter(l)
        if ti.static(rigid):
            self._rigid_grid_couple(l, t)
        for I in ti.grouped(self.grid_m):
            self._update_node(I, l, t)
        if ti.static(rigid):
            for b in range(self.n_mat):
                self._rigid_clear(b)
            for p in range(self.n_particles[None]):
                if self._is_rigid(p):
                    v, C, x = self._gather_values(l, p)
                    self.rg_x[p], self.rg_v[p], self.rg_C[p] = x, v, C
                    self._rigid_accumulate(p, x, v, C)
            for b in range(self.n_mat):
                if self.body_rigid[b] != 0:
                    self._rigid_rotation(b)
            self._rigid_contact()

    @ti.kernel
    def split_tied_scratch(self, l: ti.i32):
        """Reverse mode's replay, after :meth:`substep_scratch`: particles whose singular values
        (nearly) tie get them split apart (:func:`physim.solvers._linalg.split_ties`) in the
        scratch the adjoints read -- ``sig`` and the ``sig_elastic`` of the return mapping at the
        split values -- so the SVD adjoint recovers the consumers' divided differences that its
        clamped gap would drop (the shear stiffness of sand at an isotropic F, the plastic flow
        of a tied pair). Forward only; F and Jp of slot ``l + 1`` stay as the forward pass wrote
        them (the adjoints are evaluated O(split) away from them)."""
        for p in range(self.n_particles[None]):
            self._split_tie(l, p)

    @ti.func
    def _split_tie(self, l, p):
        """:meth:`split_tied_scratch` for particle ``p`` (on its scratch values)."""
        sig = self.sig[p]
        split = split_ties(sig, self.svd_tie_split)
        if (split - sig).norm_sqr() > 0:
            m = self.material[p]
            mu, la = self._lame(m)
            _F, sig_new, _jp = self._return_mapping(self.mat_model[m], m, self.U[p], split, self.V[p],
                                                    self.F_trial[p], self.Jp[l, p], mu, la, p, False)
            self.sig[p] = split
            self.sig_elastic[p] = sig_new

    # ------------------------------------------------------------ bookkeeping
    @ti.kernel
    def health_check(self, first: ti.i32, last: ti.i32, max_cells: ti.f64):
        """Flag slots first..last whose particles are non-finite, outside the domain,
        or move more than ``max_cells`` grid cells in one substep."""
        for s in range(first, last + 1):
            self.bad[s] = 0
        for s, p in ti.ndrange((first, last + 1), self.n_particles[None]):
            flag = self.point_health(self.x[s, p], self.v[s, p], self.dx, 1.0 - self.dx, max_cells * self.dx)
            if flag != 0:
                ti.atomic_or(self.bad[s], flag)

    def zero_grads(self) -> None:
        """Zero every gradient (the start of a backward pass); also forgets a replay's zeroing."""
        self._scratch_grads_zeroed = False
        super().zero_grads()

    def zero_scratch_grads(self) -> None:
        """Zero the gradients of every scratch field (one launch; the tape calls it per substep,
        after the replay: nothing to do when that was :meth:`_replay_restore`)."""
        if getattr(self, "_scratch_grads_zeroed", False):
            self._scratch_grads_zeroed = False
            return
        self._zero_scratch_grads(self.has_rigid)

    @ti.kernel
    def _zero_scratch_grads(self, rigid: ti.template()):
        for I in ti.grouped(self.grid_m):
            for f in ti.static(self.grid_scratch):
                f.grad[I] = ti.zero(f.grad[I])
        for p in range(self.n_particles[None]):
            for f in ti.static(self.particle_scratch):
                f.grad[p] = ti.zero(f.grad[p])
            if ti.static(rigid):
                for f in ti.static(self.rigid_particle_scratch):
                    f.grad[p] = ti.zero(f.grad[p])
        if ti.static(rigid):
            for b in range(self.n_mat):
                for f in ti.static(self.body_scratch + self.body_grid_scratch):
                    f.grad[b] = ti.zero(f.grad[b])
                for s in ti.static(range(RIGID_CONTACT_PASSES * 2 * self.dim + 1)):
                    self.body_lv.grad[s, b] = ti.zero(self.body_lv.grad[s, b])
                    self.body_av.grad[s, b] = ti.zero(self.body_av.grad[s, b])
                for k, j in ti.static(ti.ndrange(RIGID_CONTACT_PASSES, 2 * self.dim)):
                    self.contact_r.grad[k, b, j] = ti.zero(self.contact_r.grad[k, b, j])

    def wave_speeds(self) -> np.ndarray:
        """P-wave speed (m/s) of each material row at its current parameters:
        sqrt((lambda + 2 mu) / rho) = sqrt(E (1 - nu) / ((1 + nu)(1 - 2 nu) rho)); a fluid's
        sqrt(K / rho) (its E column holds the bulk modulus K); 0 for a rigid body. Read from the
        parameter fields, so a value set after build (``set_param``) counts."""
        n = self.n_materials
        p = self.mat_params.to_numpy()[:n].astype(np.float64)
        model = self.mat_model.to_numpy()[:n]
        E, nu, rho = p[:, COL["E"]], p[:, COL["nu"]], p[:, COL["density"]]
        modulus = np.where(model == MODEL_IDS["fluid"], E, E * (1 - nu) / ((1 + nu) * (1 - 2 * nu)))
        modulus = np.where(model == MODEL_IDS["rigid"], 0.0, modulus)
        return np.sqrt(np.maximum(modulus, 0.0) / rho)

    def stable_dt(self) -> float:
        """0.9 dx / c, c the fastest elastic-wave speed of the scene's materials at their
        current parameters (``inf`` before :meth:`load` or with only rigid bodies)."""
        c = self.wave_speeds()
        cmax = float(c.max(initial=0.0))
        return WAVE_CFL_LIMIT * self.dx / cmax if cmax > 0 else math.inf

    def dt_reason(self) -> str:
        c = self.wave_speeds()
        if len(c) == 0 or c.max() <= 0:
            return "no elastic material"
        m = int(np.argmax(c))
        p = self.mat_params.to_numpy()[m].astype(np.float64)
        return (f"material {m} has P-wave speed c = {c[m]:.4g} m/s (E={p[COL['E']]:.4g} Pa, nu={p[COL['nu']]:.4g}, "
                f"density={p[COL['density']]:.4g} kg/m^3), so dt must be <= {WAVE_CFL_LIMIT} * dx / c = "
                f"{WAVE_CFL_LIMIT * self.dx / c[m]:.4g} s on a {self.res}-cell grid (lower dt, raise "
                f"substeps_per_step, or soften the material)")

    # ------------------------------------------------------------------ step
    def substep(self, tape, l: int, t: int) -> None:
        """One substep: reads slot ``l``, writes slot ``l + 1``, actions row ``t``.

        Runs as one fused launch; when ``tape.recording``, also records the phase kernels
        (without running them) so reverse mode can replay and differentiate them."""
        keep = tape.recording and self._keeps(tape)
        if keep:
            self.substep_keep(l, t, self.needs_svd)
        else:
            self.substep_fused(l, t, self.needs_svd, self.has_rigid)
        if not tape.recording:
            return
        # one fused launch restores the substep's scratch (replayed, no adjoint): from the kept
        # scratch, or recomputed; the phase kernels are recorded for their adjoints only
        if keep:
            tape.record(self._replay_restore, l, t, self.needs_svd, grad=None, replay=True)
        else:
            tape.record(self.substep_scratch, l, t, self.needs_svd, self.has_rigid, grad=None, replay=True)
            if self.needs_svd:
                tape.record(self.split_tied_scratch, l, grad=None, replay=True)
        if self.needs_svd and self.has("bingham"):
            tape.record(self.hb_root, grad=None, replay=True)
        tape.record(self.trial_deformation, l)
        if self.needs_svd:  # fluid / neo-Hookean only scenes never read U, sig, V
            tape.record(self.svd, grad=self.svd_grad)
        tape.record(self.plasticity, l)
        tape.record(self.stress, l, t)
        tape.record(self.p2g, l)
        if self.has_rigid:  # the grid-level coupling: the bodies' nodes' sums, their rigid motion
            tape.record(self.rigid_grid_reduce, l, t)
            tape.record(self.rigid_grid_motion)
        tape.record(self.grid_update, l, t)
        tape.record(self.g2p, l, grad=self.g2p_grad)
        if self.has_rigid:
            # the projection of slot l + 1 in place; rigid_save's adjoint hands g2p's adjoint the
            # gradients of the gathered (pre-projection) state
            tape.record(self.rigid_save, l, grad=self.rigid_save_grad)
            tape.record(self.rigid_reduce)
            if self.dim == 2:
                tape.record(self.rigid_polar)
            else:
                tape.record(self.rigid_polar, grad=self.rigid_polar_grad)
            tape.record(self.rigid_motion)
            for k in range(RIGID_CONTACT_PASSES):
                tape.record(self.rigid_contact_select, k)
                for j in range(2 * self.dim):
                    tape.record(self.rigid_contact_impulse, k, j)
            tape.record(self.rigid_project, l)

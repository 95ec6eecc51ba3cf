"""An Eulerian smoke / air field as a part: velocity, smoke density and temperature on a grid.

The field covers the unit square/cube with ``res`` cells per axis (``dx = 1 / res``) on a
staggered (MAC) grid: ``smoke.v[c, d]`` is the air velocity (m/s) through the *lower* face of
cell ``c`` along axis ``d`` (the face at ``x_d = c_d dx``; the faces on the domain walls are 0,
and the upper wall's faces are not stored); ``smoke.density[c]`` (smoke concentration, 1) and
``smoke.temperature[c]`` (K above ambient) live at cell centres. Cells are flattened in C order
(``c = (i * res + j) * res + k``); :meth:`SmokePart.to_grid` reshapes.

Every substep (reads slot ``l``, writes slot ``l + 1``, action row ``t``):

1. **drag** (a scene with MPM material): each particle feels ``f = drag * V_p * (u(x_p) - v_p)``
   (N), written to ``mpm.f_ext`` (added to the coupler's, when there is one); the reaction
   ``-f`` is spread to the air faces with the trilinear weights that sampled ``u``. The
   material moves the air, the air pushes light material.
2. **advection**: semi-Lagrangian with a midpoint (RK2) backtrace and trilinear sampling, for
   the face velocities and both scalars (not conservative: mass changes by the interpolation
   error, see :meth:`SmokePart.total_smoke`).
3. **forces and sources**: Boussinesq buoyancy ``(buoyancy * T - smoke_weight * density)``
   along ``-gravity``, explicit viscosity ``viscosity * laplacian(u)``, the drag reaction, and
   every :class:`Vent`: inside its box the velocity, temperature and density relax towards
   the vent's values (velocity and temperature are action columns) at ``rate`` (1/s).
   Faces inside a tool (its SDF < 0 at the face) take the tool's velocity (moving walls).
4. **projection**: ``A p = -D u*`` with ``A = -D W G`` (``W`` zero on wall and tool faces),
   solved by Jacobi-preconditioned conjugate gradients to a relative residual ``tolerance``;
   ``u = u* - W G p``. The discrete divergence of ``u`` is exactly the CG residual, so
   ``||D u||_2 <= tolerance * ||D u*||_2``. Its adjoint solves the same system (``A`` is
   symmetric): ``du* = w (du + G q)``, ``A q = D (W du)`` (implicit function theorem); an
   unconverged solve is reported by :meth:`health` (forward) or raised (reverse), never
   silently differentiated.

Parameters (``smoke.<name>``, one row): ``buoyancy`` (m/s^2/K), ``smoke_weight``
(m/s^2 per unit density), ``viscosity`` (m^2/s), ``drag`` (kg/(m^3 s)); all differentiable
(tool-face classification is a step function of the tool pose and is not).
"""


import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import taichi as ti

from ..contact.sdf import tool_sdf
from ..solvers._linalg import rotation_matrix
from . import _POOL, PartSet, SceneLayout
from .base import BAD_NONFINITE, BAD_PART, Part

__all__ = ["SmokeField", "Vent", "SmokeLayout", "SmokePart", "SmokePartSet", "get_smoke_partset"]

#: default relative residual of the pressure solve, per precision
DEFAULT_TOLERANCE = {"f64": 1e-10, "f32": 1e-5}


def _finite(name: str, value, lower: float = -math.inf, lower_open: bool = False) -> float:
    v = float(value)
    ok = math.isfinite(v) and (v > lower if lower_open else v >= lower)
    if not ok:
        bound = f"> {lower:g}" if lower_open else f">= {lower:g}"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


@dataclass(init=False)
class Vent:
    """A source of air, heat and smoke: an axis-aligned box whose cells relax towards the
    vent's velocity and temperature (two action entries of every step: ``dim`` velocity
    components (m/s), then the temperature above ambient (K)) and its smoke ``density``.

    Args:
        center, size: the box (m; ``size`` is the full edge lengths), inside the unit domain.
        density: smoke concentration it emits (1).
        rate: relaxation rate (1/s): each substep blends ``a = 1 - exp(-rate dt)`` of the vent's
            values into the cells (``inf``: set them).
    """

    center: np.ndarray
    size: np.ndarray
    density: float
    rate: float

    def __init__(self, center: Sequence[float], size: Sequence[float], density: float = 1.0,
                 rate: float = math.inf):
        self.center = np.asarray(center, np.float64).reshape(-1)
        self.size = np.asarray(size, np.float64).reshape(-1)
        if self.center.shape != self.size.shape or len(self.center) not in (2, 3):
            raise ValueError(f"Vent center and size must both have 2 or 3 values, got {center!r} and {size!r}")
        if not (np.isfinite(self.center).all() and np.isfinite(self.size).all()):
            raise ValueError(f"Vent center/size must be finite, got {center!r} / {size!r}")
        if np.any(self.size <= 0):
            raise ValueError(f"Vent.size must be positive, got {self.size.tolist()}")
        self.density = _finite("Vent.density", density, 0.0)
        rate = float(rate)
        if not (rate > 0):  # also NaN
            raise ValueError(f"Vent.rate must be > 0 (1/s; inf sets the cells), got {rate!r}")
        self.rate = rate

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.center - self.size / 2, self.center + self.size / 2

    def check(self, dim: int, index: int) -> None:
        lo, hi = self.bounds()
        if len(lo) != dim:
            raise ValueError(f"vent {index} has {len(lo)} coordinates but the scene is {dim}D")
        if np.any(lo < 0.0) or np.any(hi > 1.0):
            raise ValueError(f"vent {index} (center {self.center.tolist()}, size {self.size.tolist()}) reaches "
                             f"outside the simulation domain [0, 1]^{dim}: its box spans {lo.tolist()}..{hi.tolist()}")


class SmokeField:
    """The description of a scene's air: :meth:`physim.Scene.add_smoke` adds it.

    Args:
        res: cells per axis (an integer >= 4; the field covers the unit domain).
        buoyancy: upward acceleration per kelvin above ambient (m/s^2/K; ``g / T_ambient``
            = 9.8 / 293 for an ideal gas).
        smoke_weight: downward acceleration per unit smoke density (m/s^2).
        viscosity: kinematic viscosity (m^2/s; explicit, so it limits dt to dx^2 / (2 dim nu)).
        air_density: kg/m^3 (the drag reaction's inertia).
        drag: air <-> MPM drag coefficient per particle volume (kg/(m^3 s)); 0: no coupling.
        vents: :class:`Vent` sources, each driven by ``dim + 1`` action columns.
        density, temperature: initial cell values: ``None`` (0), a scalar, an array of
            ``res**dim`` (or shape ``(res,) * dim``) values, or a callable of the cell centres
            ``(n, dim)`` returning ``(n,)``.
        velocity: initial air velocity: ``None`` (at rest) or a callable of points ``(n, dim)``
            returning ``(n, dim)``, sampled at the faces (component ``d`` on the faces of axis ``d``).
        tolerance: relative residual of the pressure solve (default 1e-10 in f64, 1e-5 in f32).
        max_iterations: CG iterations per solve before it is reported as unconverged
            (default ``max(200, 20 * res)``).
    """

    def __init__(self, res: int = 32, *, buoyancy: float = 9.8 / 293.0, smoke_weight: float = 0.0,
                 viscosity: float = 0.0, air_density: float = 1.2, drag: float = 0.0,
                 vents: Sequence[Vent] = (), density=None, temperature=None,
                 velocity: Callable | None = None, tolerance: float | None = None,
                 max_iterations: int | None = None):
        if isinstance(res, bool) or not isinstance(res, (int, np.integer)) or res < 4:
            raise ValueError(f"SmokeField res must be an integer >= 4 (cells per axis), got {res!r}")
        self.res = int(res)
        self.buoyancy = _finite("SmokeField.buoyancy", buoyancy)
        self.smoke_weight = _finite("SmokeField.smoke_weight", smoke_weight)
        self.viscosity = _finite("SmokeField.viscosity", viscosity, 0.0)
        self.air_density = _finite("SmokeField.air_density", air_density, 0.0, lower_open=True)
        self.drag = _finite("SmokeField.drag", drag, 0.0)
        self.vents = list(vents)
        for i, v in enumerate(self.vents):
            if not isinstance(v, Vent):
                raise TypeError(f"vents[{i}] must be a physim.Vent, got {type(v).__name__}")
        self.density, self.temperature, self.velocity = density, temperature, velocity
        if velocity is not None and not callable(velocity):
            raise TypeError(f"SmokeField velocity must be None or a callable of points, got {type(velocity).__name__}")
        if tolerance is not None:
            tolerance = _finite("SmokeField.tolerance", tolerance, 0.0, lower_open=True)
            if tolerance >= 1:
                raise ValueError(f"SmokeField.tolerance must be < 1 (a relative residual), got {tolerance!r}")
        self.tolerance = tolerance
        if max_iterations is not None and not (isinstance(max_iterations, int) and max_iterations >= 1):
            raise ValueError(f"SmokeField.max_iterations must be a positive integer, got {max_iterations!r}")
        self.max_iterations = max_iterations or max(200, 20 * self.res)

    def check(self, dim: int) -> None:
        """Check the vents against a ``dim``-D scene's unit domain (``Scene.add_smoke`` calls it)."""
        for i, v in enumerate(self.vents):
            v.check(dim, i)

    def n_cells(self, dim: int) -> int:
        return self.res**dim

    def cell_centers(self, dim: int) -> np.ndarray:
        """Cell centres (res**dim, dim), C order."""
        ax = (np.arange(self.res) + 0.5) / self.res
        return np.stack(np.meshgrid(*([ax] * dim), indexing="ij"), axis=-1).reshape(-1, dim)

    def face_points(self, dim: int, d: int) -> np.ndarray:
        """Positions of the lower faces along axis ``d`` of every cell (res**dim, dim)."""
        x = self.cell_centers(dim)
        x[:, d] -= 0.5 / self.res
        return x

    def _scalar(self, name: str, value, dim: int) -> np.ndarray:
        n = self.n_cells(dim)
        if value is None:
            out = np.zeros(n)
        elif callable(value):
            out = np.asarray(value(self.cell_centers(dim)), np.float64).reshape(-1)
        elif np.isscalar(value):
            out = np.full(n, float(value))
        else:
            out = np.asarray(value, np.float64).reshape(-1)
        if out.shape != (n,):
            raise ValueError(f"SmokeField.{name} must give {n} = {self.res}^{dim} cell values, got {out.size}")
        if not np.isfinite(out).all():
            bad = int(np.argmin(np.isfinite(out)))
            raise ValueError(f"SmokeField.{name} contains NaN or inf (first at cell {bad}: {float(out[bad])!r})")
        return out

    def initial_state(self, dim: int) -> dict[str, np.ndarray]:
        """``{"v", "density", "temperature"}`` at the start (walls' faces zeroed)."""
        n = self.n_cells(dim)
        v = np.zeros((n, dim))
        if self.velocity is not None:
            for d in range(dim):
                vd = np.asarray(self.velocity(self.face_points(dim, d)), np.float64)
                if vd.shape != (n, dim):
                    raise ValueError(f"SmokeField.velocity must return ({n}, {dim}) values, got {vd.shape}")
                v[:, d] = vd[:, d]
            if not np.isfinite(v).all():
                raise ValueError("SmokeField.velocity returned NaN or inf")
            idx = np.stack(np.unravel_index(np.arange(n), (self.res,) * dim), axis=1)
            v[idx == 0] = 0.0
        return {"v": v, "density": self._scalar("density", self.density, dim),
                "temperature": self._scalar("temperature", self.temperature, dim)}


@dataclass(frozen=True)
class SmokeLayout:
    """What a :class:`SmokePart` is compiled for.

    Attributes:
        dim, res: the grid.
        vents: vent rows.
        tools: tool rows of the scene's tools part (0: no tool boundaries compiled).
        mpm: 0 no MPM part, 1 write ``mpm.f_ext`` (no coupler), 2 add to the coupler's.
    """

    dim: int
    res: int
    vents: int
    tools: int
    mpm: int


@ti.data_oriented
class SmokePart(Part):
    """The air of a scene (see the module docstring)."""

    name = "smoke"

    def __init__(self, layout: SmokeLayout, K: int, real, tools, controls, mpm=None):
        super().__init__(K, real)
        self.layout = layout
        self.dim = dim = layout.dim
        self.n = n = layout.res
        self.n_cells = N = n**dim
        self.tools, self.controls, self.mpm = tools, controls, mpm if layout.mpm else None
        self.coupled = self.mpm is not None  # compile the drag with MPM material
        self.v = self.slot_field("v", (dim,), N)
        self.density = self.slot_field("density", (), N)
        self.temperature = self.slot_field("temperature", (), N)
        # scratch (restored by replay): advected fields, the field before projection, drag reaction
        self.v_adv = self.scratch_field((dim,), N)
        self.rho_adv = self.scratch_field((), N)
        self.T_adv = self.scratch_field((), N)
        self.v_mix = self.scratch_field((dim,), N)
        # the backtrace's midpoint and departure point of every sample point (row d < dim: the
        # faces of axis d; row dim: the cell centres), each stage its own kernel
        self.x_mid = self.scratch_field((dim,), (dim + 1, N))
        self.x_dep = self.scratch_field((dim,), (dim + 1, N))
        self.f_air = self.scratch_field((dim,), N) if self.mpm is not None else None
        # fluid weight of every face (0 on walls and inside tools) and the CG vectors: no gradients
        self.w_face = ti.Vector.field(dim, real, shape=N)
        self.diag = ti.field(real, shape=N)
        self.cg = {k: ti.field(real, shape=N) for k in ("p", "r", "z", "s", "As")}
        V = max(layout.vents, 1)
        self.vent_lo = ti.Vector.field(dim, real, shape=V)
        self.vent_hi = ti.Vector.field(dim, real, shape=V)
        self.vent_density = ti.field(real, shape=V)
        self.vent_rate = ti.field(real, shape=V)
        self.up = ti.Vector.field(dim, real, shape=())
        self.air_density = ti.field(real, shape=())
        self.coefs = {}
        for name, units, doc, lower in (
                ("buoyancy", "m/s^2/K", "upward acceleration per kelvin above ambient (m/s^2/K)", -math.inf),
                ("smoke_weight", "m/s^2", "downward acceleration per unit smoke density (m/s^2)", -math.inf),
                ("viscosity", "m^2/s", "kinematic viscosity of the air (m^2/s)", 0.0),
                ("drag", "kg/(m^3 s)", "air <-> material drag per particle volume (kg/(m^3 s))", 0.0)):
            f = ti.field(real, shape=1, needs_grad=True)
            self.coefs[name] = f
            self.param(name, units, f, lower=lower, doc=doc)
        self.bad = ti.field(ti.i32, shape=self.S)
        self.cg_failed = np.zeros(self.S, bool)
        self.tolerance = 1e-10
        self.max_iterations = 200
        #: run CG as one serial launch (CPU) instead of 4 parallel launches per iteration (GPU)
        self.serial_cg = ti.lang.impl.current_cfg().arch in (ti.x64, ti.arm64)
        #: (iterations, relative residual) of the last forward and adjoint pressure solves
        self.last_solve = (0, 0.0)
        self.last_adjoint_solve = (0, 0.0)
        self.action_dim = layout.vents * (dim + 1)
        # static lattice tables: cell centres at (i + 1/2) dx; faces of axis d at i dx along d
        self._cell_shift, self._cell_hi = (0.5,) * dim, (n - 1,) * dim
        self._face_shift = tuple(tuple(0.0 if k == d else 0.5 for k in range(dim)) for d in range(dim))
        self._face_hi = tuple(tuple(n if k == d else n - 1 for k in range(dim)) for d in range(dim))

    def param_rows(self, name: str) -> int:
        return 1

    # ------------------------------------------------------------------ protocol
    def load(self, spec: tuple) -> None:
        """``spec``: ``(SmokeField, gravity, precision)``."""
        field, gravity, precision = spec
        dim = self.dim
        if field.res != self.n or len(field.vents) > self.layout.vents:
            raise ValueError(f"smoke field res {field.res} / {len(field.vents)} vents do not fit this layout "
                             f"({self.n} / {self.layout.vents})")
        field.check(dim)
        self.rows[None] = self.n_cells
        g = np.asarray(gravity, np.float64)
        gn = float(np.linalg.norm(g))
        up = -g / gn if gn > 0 else np.eye(dim)[1]
        self.up[None] = up.tolist()
        self.air_density[None] = field.air_density
        for name in self.coefs:
            self.coefs[name][0] = getattr(field, name)
        V = self.vent_lo.shape[0]
        lo, hi = np.zeros((V, dim)), np.zeros((V, dim))
        dens, rate = np.zeros(V), np.zeros(V)
        for i, vent in enumerate(field.vents):
            lo[i], hi[i] = vent.bounds()
            dens[i], rate[i] = vent.density, min(vent.rate, 1e30)
        r = self.np_real
        self.vent_lo.from_numpy(lo.astype(r))
        self.vent_hi.from_numpy(hi.astype(r))
        self.vent_density.from_numpy(dens.astype(r))
        self.vent_rate.from_numpy(rate.astype(r))
        self.tolerance = field.tolerance or DEFAULT_TOLERANCE[precision]
        self.max_iterations = field.max_iterations
        self.cg_failed[:] = False

    def _limit(self) -> tuple[float, str]:
        dx = ti.static(1.0 / self.n)
        nu = float(self.coefs["viscosity"][0])
        gamma = float(self.coefs["drag"][0])
        lim, why = math.inf, "no viscosity or drag"
        if nu > 0:
            lim, why = dx * dx / (2 * self.dim * nu), f"explicit viscosity {nu:.3g} m^2/s: dt <= dx^2 / (2 dim nu)"
        if gamma > 0 and self.mpm is not None:
            rho_air = float(self.air_density[None])
            d = gamma / rho_air
            if 1.0 / d < lim:
                lim, why = 1.0 / d, f"explicit drag {gamma:.3g} kg/(m^3 s) on air of {rho_air:.3g} kg/m^3: " \
                                    f"dt <= air_density / drag"
        return lim, why

    def stable_dt(self) -> float:
        """Explicit viscosity (``dx^2 / (2 dim nu)``) and drag (``air_density / drag``, the air
        side of the exchange in a cell full of material) limit dt; advection does not."""
        return self._limit()[0]

    def dt_reason(self) -> str:
        return self._limit()[1]

    def health(self, first: int, last: int):
        self._health(first, last)
        flags = self.bad.to_numpy()
        flags[first: last + 1] |= np.where(self.cg_failed[first: last + 1], BAD_PART, 0)
        return self.first_flagged(flags, first, last, {
            BAD_NONFINITE: "the smoke field's velocity, density or temperature became NaN/inf",
            BAD_PART: (f"the smoke field's pressure solve did not reach the relative residual {self.tolerance:g} in "
                       f"{self.max_iterations} CG iterations (last: {self.last_solve[1]:.3g}); raise "
                       f"max_iterations or tolerance")})

    @ti.kernel
    def _health(self, first: ti.i32, last: ti.i32):
        for s in range(first, last + 1):
            self.bad[s] = 0
        for s, c in ti.ndrange((first, last + 1), self.n_cells):
            ok = ti.abs(self.density[s, c]) < 1e30 and ti.abs(self.temperature[s, c]) < 1e30
            for d in ti.static(range(self.dim)):
                ok = ok and ti.abs(self.v[s, c][d]) < 1e30
            if not ok:
                ti.atomic_or(self.bad[s], BAD_NONFINITE)

    # ------------------------------------------------------------------ helpers
    def to_grid(self, values: np.ndarray) -> np.ndarray:
        """Reshape per-cell values (``res**dim``, ...) to ``(res,) * dim + (...)``."""
        values = np.asarray(values)
        return values.reshape((self.n,) * self.dim + values.shape[1:])

    def cell_velocity(self, v: np.ndarray) -> np.ndarray:
        """Cell-centred velocity (``res**dim``, dim) from face velocities ``smoke.v``: the mean of
        each cell's two faces per axis (the upper wall's faces are 0)."""
        g = self.to_grid(v)
        out = np.zeros_like(g)
        for d in range(self.dim):
            lower = np.moveaxis(g[..., d], d, 0)
            upper = np.concatenate([lower[1:], np.zeros_like(lower[:1])], axis=0)
            out[..., d] = np.moveaxis(0.5 * (lower + upper), 0, d)
        return out.reshape(v.shape)

    def total_smoke(self, density: np.ndarray) -> float:
        """Smoke 'mass' ``sum(density) * dx^dim`` (advection changes it by its interpolation error)."""
        return float(np.sum(density)) / self.n_cells

    # ------------------------------------------------------------------ kernels: sampling
    @ti.func
    def flat(self, I):
        k = I[0] * 0
        for d in ti.static(range(self.dim)):
            k = k * self.n + I[d]
        return k

    @ti.func
    def _lattice(self, x, shift: ti.template(), hi: ti.template()):
        """Base index and fractions of point ``x`` on a lattice at ``(i + shift) dx``,
        clamped to indices ``0..hi`` per axis (``hi`` and ``shift`` static vectors)."""
        base = ti.Vector.zero(ti.i32, self.dim)
        fr = ti.Vector.zero(self.real, self.dim)
        for d in ti.static(range(self.dim)):
            g = ti.min(ti.max(x[d] * self.n - shift[d], 0.0), float(hi[d]))
            b = ti.min(ti.cast(ti.floor(g), ti.i32), hi[d] - 1)
            base[d] = b
            fr[d] = g - b
        return base, fr

    @ti.func
    def sample_cell(self, f: ti.template(), l, x):
        """Trilinear sample of cell-centred slot field ``f`` (slot ``l``) at ``x``."""
        base, fr = self._lattice(x, self._cell_shift, self._cell_hi)
        val = x[0] * 0.0
        for off in ti.static(ti.grouped(ti.ndrange(*([2] * self.dim)))):
            w = x[0] * 0.0 + 1.0
            for d in ti.static(range(self.dim)):
                w *= (1.0 - fr[d]) + off[d] * (2.0 * fr[d] - 1.0)
            val += w * f[l, self.flat(base + off)]
        return val

    @ti.func
    def _face_lattice(self, x, d: ti.template()):
        return self._lattice(x, self._face_shift[d], self._face_hi[d])

    @ti.func
    def sample_face(self, f: ti.template(), l, d: ti.template(), x):
        """Trilinear sample of component ``d`` of face field ``f`` (slot ``l``) at ``x``; the upper
        wall's faces (index ``res``, not stored) are 0."""
        base, fr = self._face_lattice(x, d)
        val = x[0] * 0.0
        for off in ti.static(ti.grouped(ti.ndrange(*([2] * self.dim)))):
            w, i = self._face_corner(base, fr, off, d)
            val += w * f[l, i][d]
        return val

    @ti.func
    def _face_corner(self, base, fr, off, d: ti.template()):
        """Trilinear weight and flat index of corner ``off`` of the face lattice cell at ``base``
        (fractions ``fr``) for component ``d``: the weight is 0 for the upper wall's faces (index
        ``res``, not stored), whose index is clamped to the last stored face."""
        w = fr[0] * 0.0 + 1.0
        for k in ti.static(range(self.dim)):
            w *= (1.0 - fr[k]) + off[k] * (2.0 * fr[k] - 1.0)
        idx = base + off
        inside = ti.select(idx[d] < self.n, 1.0, 0.0)
        idx[d] = ti.min(idx[d], self.n - 1)
        return inside * w, self.flat(idx)

    @ti.func
    def velocity_at(self, l, x):
        u = ti.Vector.zero(self.real, self.dim)
        for d in ti.static(range(self.dim)):
            u[d] = self.sample_face(self.v, l, d, x)
        return u

    # ------------------------------------------------------------------ kernels: substep
    @ti.kernel
    def face_weights(self, l: ti.i32):
        """Fluid weight of every face (0 on the walls and where a tool's SDF (slot ``l``) is
        negative at the face) and the pressure matrix's diagonal. Not differentiable."""
        dx = ti.static(1.0 / self.n)
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            w = ti.Vector.zero(self.real, self.dim)
            for d in ti.static(range(self.dim)):
                if I[d] > 0:
                    w[d] = 1.0
                    if ti.static(self.layout.tools > 0):
                        x = (I.cast(self.real) + 0.5) * dx
                        x[d] -= 0.5 * dx
                        if self.tools.signed_distance(l, x) < 0:
                            w[d] = 0.0
            self.w_face[c] = w
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            s = self.w_face[c].sum()
            for d in ti.static(range(self.dim)):
                if I[d] < self.n - 1:
                    s += self.w_face[self.flat(I + ti.Vector.unit(self.dim, d, ti.i32))][d]
            self.diag[c] = s * self.n * self.n

    @ti.kernel
    def clear_air_force(self):
        for c in range(self.n_cells):
            self.f_air[c] = ti.zero(self.f_air[c])

    @ti.kernel
    def drag_force(self, l: ti.i32):
        """Drag between the air (slot ``l``) and every active MPM particle (rows ``0 ..
        mpm.n_particles - 1``: an emitter's particles not emitted yet feel and exert none): the
        particle's force goes to ``mpm.f_ext``, the reaction to the air faces (``f_air``)."""
        mpm = self.mpm
        for p in range(mpm.n_particles[None]):
            x = mpm.x[l, p]
            f = self.coefs["drag"][0] * mpm.p_vol[None] * (self.velocity_at(l, x) - mpm.v[l, p])
            if ti.static(self.layout.mpm == 1):
                mpm.f_ext[p] = f
            else:
                mpm.f_ext[p] += f
            for d in ti.static(range(self.dim)):
                base, fr = self._face_lattice(x, d)
                for off in ti.static(ti.grouped(ti.ndrange(*([2] * self.dim)))):
                    w, i = self._face_corner(base, fr, off, d)
                    self.f_air[i][d] -= w * f[d]

    @ti.func
    def _sample_point(self, I, d):
        """The advected quantity's point of cell ``I``: the centre of its lower face of axis
        ``d`` (a runtime index), the cell centre for ``d == dim``."""
        dx = ti.static(1.0 / self.n)
        x = (I.cast(self.real) + 0.5) * dx
        for e in ti.static(range(self.dim)):
            x[e] -= ti.select(d == e, 0.5 * dx, 0.0)
        return x

    @ti.kernel
    def backtrace_mid(self, l: ti.i32, d: ti.i32):
        """First stage of the backtrace (midpoint rule) of the sample points of row ``d``
        (:meth:`_sample_point`): x - dt/2 u(x) into ``x_mid``. The stages and the sampling are
        separate kernels: the adjoint of all in one kernel took 17-27 s to compile per axis in 3D."""
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            x = self._sample_point(I, d)
            self.x_mid[d, self.flat(I)] = x - 0.5 * self.dt[None] * self.velocity_at(l, x)

    @ti.kernel
    def backtrace_dep(self, l: ti.i32, d: ti.i32):
        """Second stage: the departure point x - dt u(x_mid) into ``x_dep``."""
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            self.x_dep[d, c] = self._sample_point(I, d) - self.dt[None] * self.velocity_at(l, self.x_mid[d, c])

    @ti.kernel
    def advect_faces(self, l: ti.i32, d: ti.template()):
        """Semi-Lagrangian advection of slot ``l``'s velocity component ``d`` into ``v_adv``,
        sampled at the departure points ``x_dep[d]``."""
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            self.v_adv[c][d] = ti.select(I[d] > 0, 1.0, 0.0) * self.sample_face(self.v, l, d, self.x_dep[d, c])

    @ti.kernel
    def advect_cells(self, l: ti.i32):
        """Semi-Lagrangian advection of slot ``l``'s density and temperature into ``rho_adv``,
        ``T_adv``, sampled at the departure points ``x_dep[dim]``."""
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            xb = self.x_dep[self.dim, c]
            self.rho_adv[c] = self.sample_cell(self.density, l, xb)
            self.T_adv[c] = self.sample_cell(self.temperature, l, xb)

    @ti.func
    def _vent_weight(self, e, x):
        inside = 1
        for d in ti.static(range(self.dim)):
            if x[d] < self.vent_lo[e][d] or x[d] > self.vent_hi[e][d]:
                inside = 0
        return ti.select(inside == 1, 1.0 - ti.exp(-self.vent_rate[e] * self.dt[None]), 0.0)

    @ti.func
    def _solid_velocity(self, l, t, x):
        """Velocity of the tool whose SDF (slot ``l``) is negative at ``x`` (zero if none)."""
        u = ti.Vector.zero(self.real, self.dim)
        if ti.static(self.layout.tools > 0):
            tools = self.tools
            for e in ti.static(range(self.layout.tools)):
                if e < tools.rows[None]:
                    R = rotation_matrix(tools.rot[l, e], self.dim)
                    r = x - tools.pos[l, e]
                    phi, _n = tool_sdf(tools.shape[e], tools.size[e], R.transpose() @ r, self.dim)
                    if phi < 0:
                        u = tools.velocity(e, t, r)
        return u

    @ti.kernel
    def forces(self, l: ti.i32, t: ti.i32):
        """Vents, buoyancy, viscosity, drag reaction and moving walls: writes slot ``l + 1``'s
        density and temperature and the velocity before projection (``v_mix``)."""
        dx = ti.static(1.0 / self.n)
        a = ti.static(self.controls.action)
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            dt = self.dt[None]
            k0 = self.act_offset[None]
            c = self.flat(I)
            xc = (I.cast(self.real) + 0.5) * dx
            rho, T = self.rho_adv[c], self.T_adv[c]
            for e in ti.static(range(self.layout.vents)):
                m = self._vent_weight(e, xc)
                rho = (1.0 - m) * rho + m * self.vent_density[e]
                T = (1.0 - m) * T + m * a[t, k0 + e * (self.dim + 1) + self.dim]
            self.density[l + 1, c] = rho
            self.temperature[l + 1, c] = T
            out = ti.Vector.zero(self.real, self.dim)
            for d in ti.static(range(self.dim)):
                ed = ti.Vector.unit(self.dim, d, ti.i32)
                cm = self.flat(ti.max(I - ed, 0))
                Tf = 0.5 * (self.T_adv[c] + self.T_adv[cm])
                rf = 0.5 * (self.rho_adv[c] + self.rho_adv[cm])
                acc = (self.coefs["buoyancy"][0] * Tf - self.coefs["smoke_weight"][0] * rf) * self.up[None][d]
                ud = self.v_adv[c][d]
                lap = ud * 0.0
                for k in ti.static(range(self.dim)):
                    ek = ti.Vector.unit(self.dim, k, ti.i32)
                    up_ = self.flat(ti.min(I + ek, self.n - 1))
                    dn_ = self.flat(ti.max(I - ek, 0))
                    lap += self.v_adv[up_][d] + self.v_adv[dn_][d] - 2.0 * ud
                ud += dt * (acc + self.coefs["viscosity"][0] * lap * self.n * self.n)
                if ti.static(self.coupled):
                    ud += dt * self.f_air[c][d] * self.n**self.dim / self.air_density[None]
                x = xc
                x[d] -= 0.5 * dx
                for e in ti.static(range(self.layout.vents)):
                    m = self._vent_weight(e, x)
                    ud = (1.0 - m) * ud + m * a[t, k0 + e * (self.dim + 1) + d]
                w = self.w_face[c][d]
                us = self._solid_velocity(l, t, x)
                out[d] = ti.select(I[d] > 0, 1.0, 0.0) * (w * ud + (1.0 - w) * us[d])
            self.v_mix[c] = out

    # ------------------------------------------------------------------ projection
    @ti.kernel
    def _rhs(self, adjoint: ti.template(), l: ti.i32) -> ti.types.vector(2, ti.f64):
        """r = -D v_mix (forward) or r = D (W dv) with dv = v.grad[l] (adjoint); returns |r|^2 and
        the sum of the squared face terms of D (the scale of D's round-off)."""
        tot = 0.0
        scale = 0.0
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            div = self.v_mix[c][0] * 0.0
            for d in ti.static(range(self.dim)):
                ed = ti.Vector.unit(self.dim, d, ti.i32)
                up = div * 0.0
                here = div * 0.0
                if ti.static(adjoint):
                    here = self.w_face[c][d] * self.v.grad[l, c][d]
                    if I[d] < self.n - 1:
                        cp = self.flat(I + ed)
                        up = self.w_face[cp][d] * self.v.grad[l, cp][d]
                else:
                    here = self.v_mix[c][d]
                    if I[d] < self.n - 1:
                        up = self.v_mix[self.flat(I + ed)][d]
                div += (up - here) * self.n
                scale += (up * up + here * here) * self.n * self.n
            r = ti.static(1.0 if adjoint else -1.0) * div
            self.cg["r"][c] = r
            self.cg["p"][c] = 0.0
            tot += r * r
        return ti.Vector([tot, scale], ti.f64)

    @ti.kernel
    def _cg_precondition(self) -> ti.f64:
        """z = r / diag (0 where a cell has no fluid face); returns r . z."""
        tot = 0.0
        for c in range(self.n_cells):
            z = 0.0 * self.cg["r"][c]
            if self.diag[c] > 0:
                z = self.cg["r"][c] / self.diag[c]
            self.cg["z"][c] = z
            tot += self.cg["r"][c] * z
        return tot

    @ti.kernel
    def _cg_direction(self, beta: ti.f64):
        for c in range(self.n_cells):
            self.cg["s"][c] = self.cg["z"][c] + beta * self.cg["s"][c]

    @ti.kernel
    def _cg_apply(self) -> ti.f64:
        """As = A s; returns s . As."""
        s, As = ti.static(self.cg["s"], self.cg["As"])
        tot = 0.0
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            As[c] = self._apply_A(I)
            tot += s[c] * As[c]
        return tot

    @ti.kernel
    def _cg_update(self, alpha: ti.f64) -> ti.f64:
        """p += alpha s, r -= alpha As; returns |r|^2."""
        tot = 0.0
        for c in range(self.n_cells):
            self.cg["p"][c] += alpha * self.cg["s"][c]
            r = self.cg["r"][c] - alpha * self.cg["As"][c]
            self.cg["r"][c] = r
            tot += r * r
        return tot

    @ti.func
    def _apply_A(self, I):
        """(A s)_c for the cell at ``I``."""
        s = ti.static(self.cg["s"])
        c = self.flat(I)
        acc = 0.0 * s[c]
        for d in ti.static(range(self.dim)):
            ed = ti.Vector.unit(self.dim, d, ti.i32)
            if I[d] > 0:
                acc += self.w_face[c][d] * (s[c] - s[self.flat(I - ed)])
            if I[d] < self.n - 1:
                cp = self.flat(I + ed)
                acc += self.w_face[cp][d] * (s[c] - s[cp])
        return acc * self.n * self.n

    @ti.kernel
    def _cg_serial(self, max_iter: ti.i32, goal: ti.f64) -> ti.types.vector(2, ti.f64):
        """The whole preconditioned CG in one launch, serial (on a CPU the per-iteration launches
        and reductions of :meth:`_solve`'s parallel path cost more than the arithmetic on small
        grids). Returns (iterations, |r|^2)."""
        out = ti.Vector([0.0, 0.0], ti.f64)
        p, r, z, s, As = ti.static(self.cg["p"], self.cg["r"], self.cg["z"], self.cg["s"], self.cg["As"])
        ti.loop_config(serialize=True)
        for _once in range(1):
            rz = ti.cast(0.0, ti.f64)
            rr = ti.cast(0.0, ti.f64)
            for c in range(self.n_cells):
                zc = 0.0 * r[c]
                if self.diag[c] > 0:
                    zc = r[c] / self.diag[c]
                z[c] = zc
                s[c] = zc
                rz += r[c] * zc
                rr += r[c] * r[c]
            it = 0
            while it < max_iter and ti.sqrt(rr) > goal:
                it += 1
                sAs = ti.cast(0.0, ti.f64)
                for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
                    c = self.flat(I)
                    As[c] = self._apply_A(I)
                    sAs += s[c] * As[c]
                if not sAs > 0:
                    break
                alpha = rz / sAs
                rr = 0.0
                for c in range(self.n_cells):
                    p[c] += alpha * s[c]
                    r[c] -= alpha * As[c]
                    rr += r[c] * r[c]
                if ti.sqrt(rr) <= goal:
                    break
                rz_new = ti.cast(0.0, ti.f64)
                for c in range(self.n_cells):
                    zc = 0.0 * r[c]
                    if self.diag[c] > 0:
                        zc = r[c] / self.diag[c]
                    z[c] = zc
                    rz_new += r[c] * zc
                beta = rz_new / rz
                rz = rz_new
                for c in range(self.n_cells):
                    s[c] = z[c] + beta * s[c]
            out = ti.Vector([ti.cast(it, ti.f64), rr])
        return out

    def _solve(self, rhs) -> tuple[bool, int, float]:
        """Preconditioned CG on A p = r (set by :meth:`_rhs`, which returned ``rhs``: |r|^2 and
        the scale of its round-off), from p = 0. Converged: |r| <= tolerance |b|, or |r| at the
        round-off level of the divergence itself (a field already divergence-free).
        Returns (converged, iterations, relative residual)."""
        rr, scale = float(rhs[0]), float(rhs[1])
        b = math.sqrt(rr)
        eps = 2.2e-16 if self.real == ti.f64 else 1.2e-7
        goal = max(self.tolerance * b, 16 * eps * math.sqrt(scale))
        if b <= goal:
            return True, 0, 0.0 if b == 0 else 1.0
        if self.serial_cg:
            it, rr = (float(v) for v in self._cg_serial(self.max_iterations, goal))
            return math.sqrt(rr) <= goal, int(it), math.sqrt(rr) / b
        self.cg["s"].fill(0)
        rz = self._cg_precondition()
        self._cg_direction(0.0)
        for it in range(1, self.max_iterations + 1):
            sAs = self._cg_apply()
            if not sAs > 0:  # breakdown (or NaN): nothing more to gain
                return math.sqrt(rr) <= goal, it, math.sqrt(rr) / b
            rr = self._cg_update(rz / sAs)
            if math.sqrt(rr) <= goal:
                return True, it, math.sqrt(rr) / b
            rz_new = self._cg_precondition()
            self._cg_direction(rz_new / rz)
            rz = rz_new
        return False, self.max_iterations, math.sqrt(rr) / b

    @ti.kernel
    def _apply_pressure(self, l: ti.i32):
        """v[l + 1] = v_mix - W G p."""
        p = ti.static(self.cg["p"])
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            u = self.v_mix[c]
            for d in ti.static(range(self.dim)):
                if I[d] > 0:
                    u[d] -= self.w_face[c][d] * (p[c] - p[self.flat(I - ti.Vector.unit(self.dim, d, ti.i32))]) * self.n
            self.v[l + 1, c] = u

    @ti.kernel
    def _apply_pressure_adjoint(self, l: ti.i32):
        """v_mix.grad += dv + G q (dv = v.grad[l + 1], q in ``p``)."""
        q = ti.static(self.cg["p"])
        for I in ti.grouped(ti.ndrange(*([self.n] * self.dim))):
            c = self.flat(I)
            g = self.v.grad[l + 1, c]
            for d in ti.static(range(self.dim)):
                if I[d] > 0:
                    g[d] += (q[c] - q[self.flat(I - ti.Vector.unit(self.dim, d, ti.i32))]) * self.n
            self.v_mix.grad[c] += g

    def project(self, l: int) -> None:
        """Make ``v_mix`` divergence-free into slot ``l + 1`` (CG to ``tolerance``)."""
        ok, it, res = self._solve(self._rhs(False, l))
        self.last_solve = (it, res)
        self.cg_failed[l + 1] = not ok
        self._apply_pressure(l)

    def project_grad(self, l: int) -> None:
        """Adjoint of :meth:`project` (the same solve with ``D (W dv)`` on the right)."""
        ok, it, res = self._solve(self._rhs(True, l + 1))
        self.last_adjoint_solve = (it, res)
        if not ok:
            raise RuntimeError(
                f"the smoke field's adjoint pressure solve did not reach the relative residual {self.tolerance:g} "
                f"in {self.max_iterations} CG iterations (reached {res:.3g}); raise max_iterations or tolerance")
        self._apply_pressure_adjoint(l)

    # ------------------------------------------------------------------ substep
    def substep(self, tape, l: int, t: int) -> None:
        """Face weights (replayed, no adjoint) -> drag (replayed: it writes ``mpm.f_ext``) ->
        advection (replayed: its scratch feeds the forces' adjoint) -> forces and sources ->
        projection (custom adjoint)."""
        tape.launch(self.face_weights, l, grad=None, replay=True)
        if self.mpm is not None:
            tape.launch(self.clear_air_force, grad=None, replay=True)
            tape.launch(self.drag_force, l, replay=True)
        for d in range(self.dim + 1):  # the backtraces: faces of each axis, cell centres
            tape.launch(self.backtrace_mid, l, d, replay=True)
            tape.launch(self.backtrace_dep, l, d, replay=True)
        for d in range(self.dim):
            tape.launch(self.advect_faces, l, d, replay=True)
        tape.launch(self.advect_cells, l, replay=True)
        tape.launch(self.forces, l, t)
        tape.launch(self.project, l, grad=self.project_grad)


class SmokePartSet(PartSet):
    """A :class:`physim.parts.PartSet` with a smoke part, stepped after the FEM part and before
    the MPM part (its drag writes ``mpm.f_ext`` before MPM's P2G reads it)."""

    def __init__(self, layout: SceneLayout, smoke: SmokeLayout, real):
        super().__init__(layout, real)
        self.smoke = SmokePart(smoke, layout.K, real, self.tools, self.controls, self.mpm)
        at = self.parts.index(self.mpm) if self.mpm is not None else len(self.parts)
        self.parts.insert(at, self.smoke)


def get_smoke_partset(layout: SceneLayout, smoke: SmokeLayout, owner, real) -> SmokePartSet:
    """A :class:`SmokePartSet` for the layouts not used by another live owner (pooled with the
    other part sets, so a Taichi restart forgets it too)."""
    import weakref

    pool = _POOL.setdefault(("smoke", layout, smoke, str(real)), [])
    for entry in pool:
        ps, ref = entry
        if ref is None or ref() is None:
            entry[1] = weakref.ref(owner)
            return ps
    ps = SmokePartSet(layout, smoke, real)
    pool.append([ps, weakref.ref(owner)])
    return ps

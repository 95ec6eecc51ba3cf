"""Constitutive models for the MPM solver, as small dataclasses.

Units are SI-like but the default scene lives in a unit cube: E and yield stress
in Pa, density in kg/m^3 (relative units are fine as long as they are consistent:
the defaults follow PlasticineLab/DiffTaichi, density 1, E in the hundreds to
thousands). Each material maps to a model id used inside the solver's kernels; the
differentiable parameters (``E``, ``nu``, ``yield_stress``, ``friction_angle``,
``viscosity``; and ``density``, through the particle masses) live in Taichi fields with
gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

__all__ = [
    "Material",
    "Elastic",
    "NeoHookean",
    "Plasticine",
    "Sand",
    "Snow",
    "Fluid",
    "Viscoplastic",
    "Muscle",
    "Rigid",
    "MODEL_IDS",
    "DIFF_PARAMS",
]

# model ids used by the kernels (keep in sync with physim.solvers.mpm)
MODEL_IDS = {
    "corotated": 0,
    "neohookean": 1,
    "von_mises": 2,
    "drucker_prager": 3,
    "snow": 4,
    "fluid": 5,
    "bingham": 6,
    "rigid": 7,
}

#: parameters with gradients, in the order of the solver's ``material_params`` columns
DIFF_PARAMS = ("E", "nu", "yield_stress", "friction_angle", "viscosity", "flow_index")
#: every per-material column the solver stores
PARAM_COLUMNS = DIFF_PARAMS + ("density", "hardening", "theta_c", "theta_s", "actuation_strength")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value!r}")


@dataclass
class Material:
    """Base class: every material has a density (kg/m^3).

    A scene keeps one material row per material *object* given to ``add_body`` (identity, not
    value equality): two equal-valued instances are two rows whose parameters are set and
    identified separately; one instance given to several bodies is one row they share."""

    density: float = 1.0

    #: constitutive model id (a key of MODEL_IDS) used by the kernels
    model: ClassVar[str] = "corotated"

    def __post_init__(self) -> None:
        _positive("density", self.density)
        for f in fields(self):
            if f.name in ("E", "bulk_modulus"):
                _positive(f"{type(self).__name__}.{f.name}", getattr(self, f.name))
            elif f.name == "nu":
                nu = float(self.nu)
                if not (-1.0 < nu < 0.5):
                    raise ValueError(
                        f"{type(self).__name__}.nu (Poisson ratio) must be in (-1, 0.5), got {nu!r}"
                    )
            elif f.name in ("yield_stress", "viscosity", "hardening", "actuation_strength"):
                _positive(f"{type(self).__name__}.{f.name}", getattr(self, f.name), allow_zero=True)
            elif f.name == "flow_index":
                _positive(f"{type(self).__name__}.flow_index (Herschel-Bulkley exponent n)", self.flow_index)
            elif f.name == "friction_angle":
                a = float(self.friction_angle)
                if not (0.0 < a < 90.0):
                    raise ValueError(f"friction_angle must be in (0, 90) degrees, got {a!r}")

    # --- what the solver needs -------------------------------------------------
    def lame(self) -> tuple[float, float]:
        """(mu, lambda) of the elastic part."""
        E, nu = self.param("E"), self.param("nu")
        return E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))

    def param(self, name: str) -> float:
        if name == "E":
            return float(getattr(self, "E", getattr(self, "bulk_modulus", 0.0)))
        return float(getattr(self, name, 0.0))

    def wave_speed(self) -> float:
        """Fastest elastic (P-)wave speed sqrt((lambda + 2 mu) / rho), for the time-step limit."""
        mu, lam = self.lame()
        return math.sqrt(max(lam + 2 * mu, 0.0) / self.density)

    def row(self) -> np.ndarray:
        """This material's values for :data:`PARAM_COLUMNS`."""
        vals = []
        for name in PARAM_COLUMNS:
            if name == "friction_angle":
                vals.append(math.radians(self.param(name)) if hasattr(self, name) else 0.0)
            else:
                vals.append(self.param(name))
        return np.array(vals, dtype=np.float64)


@dataclass
class Elastic(Material):
    """Fixed-corotated hyperelastic solid (jelly, rubber)."""

    E: float = 1e3
    nu: float = 0.2

    model: ClassVar[str] = "corotated"


@dataclass
class NeoHookean(Material):
    """Compressible neo-Hookean solid: tau = mu (F F^T - I) + lambda log(J) I."""

    E: float = 1e3
    nu: float = 0.3

    model: ClassVar[str] = "neohookean"


@dataclass
class Plasticine(Material):
    """Elastoplastic clay: fixed-corotated elasticity + von Mises return mapping
    in log (Hencky) strain; ``yield_stress`` in Pa (PlasticineLab: E 5e3, nu 0.2, yield 50-200)."""

    E: float = 5e3
    nu: float = 0.2
    yield_stress: float = 50.0

    model: ClassVar[str] = "von_mises"


@dataclass
class Sand(Material):
    """Drucker-Prager sand (Klar et al. 2016), St. Venant-Kirchhoff in Hencky strain, cohesionless
    (the cone's apex at zero pressure; no hardening state). ``friction_angle`` phi in degrees.

    2D: phi is the angle of repose, the friction of the plane the sand flows on: the cone is
    |s| / sqrt(2) <= p tan(phi) (s the deviatoric Kirchhoff stress, p the pressure; the static
    friction mu_s = tan phi of the mu(I) rheology, Jop et al. 2006). The flow rule is non-dilatant
    and coaxial (plastic strain rate along s), so a layer shearing down a slope has its maximum
    shear on the slope plane and stops where tan(slope) = tan(phi): a heap's flanks avalanche down
    to phi. Measured (benchmarks/sand_repose.py, rough floor, phi = 32): poured from a nozzle,
    grid 128: 32.1 / 32.2 degrees; a 50 degree heap released: 33.5 / 32.7 (grid 64), 27.2 / 26.5
    (grid 128: a collapse overshoots on finer grids); tests/test_materials_experiments.py. A
    static flank can stand steeper, up to asin(tan phi) (the cone's plane Mohr-Coulomb angle:
    21.3 degrees at 20, 38.7 at 32, 57 at 40; grid 64 holds a few degrees more), as real sand
    keeps slopes a few degrees above its repose angle until they avalanche. (Until this change
    the 2D cone was plane Mohr-Coulomb, max shear <= p sin(phi), and flanks stopped at
    atan(sin phi): 27.9 degrees at phi = 32, measured 28.8 / 27.3.)

    3D: the cone matches Mohr-Coulomb at phi in triaxial compression (Klar et al.), whose flowing
    layers stop at atan(3 alpha / sqrt 2) = 36.6 degrees for phi = 32 (from the same relation; not
    measured here).

    A heap also needs a floor that holds its base: ``Scene(boundary="rough")`` (on plain
    ``"friction"`` walls the grid's floor row does not hold and heaps spread: see
    physim.solvers.mpm.BOUNDARY_IDS). A collapsing column overshoots below phi (inertia), as in the
    experiments its runout is validated against."""

    E: float = 3.5e3
    nu: float = 0.3
    friction_angle: float = 30.0
    density: float = 1.5

    model: ClassVar[str] = "drucker_prager"


@dataclass
class Snow(Material):
    """Snow (Stomakhin et al. 2013): singular values clamped to [1-theta_c, 1+theta_s],
    Lame parameters scaled by exp(hardening * (1 - J_plastic))."""

    E: float = 1.4e3
    nu: float = 0.2
    theta_c: float = 2.5e-2
    theta_s: float = 7.5e-3
    hardening: float = 10.0
    model: ClassVar[str] = "snow"

    def __post_init__(self):
        super().__post_init__()
        if not (0 < self.theta_c < 1 and 0 < self.theta_s):
            raise ValueError(f"Snow needs 0 < theta_c < 1 and theta_s > 0, got {self.theta_c}, {self.theta_s}")


@dataclass
class Fluid(Material):
    """Weakly compressible Newtonian fluid: pressure from bulk modulus K,
    viscous Kirchhoff stress J * viscosity * (grad v + grad v^T). F is reset to J^(1/d) I."""

    bulk_modulus: float = 400.0
    viscosity: float = 0.0

    model: ClassVar[str] = "fluid"

    def lame(self) -> tuple[float, float]:
        return 0.0, float(self.bulk_modulus)

    def param(self, name: str) -> float:
        if name == "nu":
            return 0.0
        return super().param(name)


@dataclass
class Viscoplastic(Material):
    """Herschel-Bulkley viscoplastic material (ice cream, toothpaste, mud); Bingham at
    ``flow_index`` n = 1 (the default).

    Elastic below the yield surface (fixed-corotated, ``E``, ``nu``); beyond it the deviatoric
    Kirchhoff stress s (its Frobenius norm |s|, over the principal log strains) flows plastically at
    the rate D_p that satisfies, each substep (implicitly, by Newton's method in log D_p),

        |s| = yield_stress + viscosity * |D_p| ** flow_index,

    with |D_p| the Frobenius norm of the plastic strain rate (1/s). ``viscosity`` is the
    consistency K (Pa s^n), ``flow_index`` n > 0 (shear thinning below 1, thickening above). In
    simple shear (|s| = sqrt(2) tau, |D_p| = gamma_dot / sqrt(2)) this is the rheometer's
    tau = tau_y + K_rheo gamma_dot^n with tau_y = yield_stress / sqrt(2) and K_rheo = viscosity *
    2 ** (-(1 + n) / 2): :meth:`from_rheology` converts. Differentiable in ``yield_stress``,
    ``viscosity``, ``flow_index`` (and E, nu, density)."""

    E: float = 2e3
    nu: float = 0.3
    yield_stress: float = 30.0
    viscosity: float = 5.0
    flow_index: float = 1.0

    model: ClassVar[str] = "bingham"

    @classmethod
    def from_rheology(cls, tau_y: float, K: float, n: float = 1.0, **kw) -> Viscoplastic:
        """A Herschel-Bulkley material from rheometer values: shear yield stress ``tau_y`` (Pa),
        consistency ``K`` (Pa s^n) and flow index ``n`` of tau = tau_y + K gamma_dot^n in simple
        shear; other keywords (E, nu, density) as for the class."""
        _positive("tau_y (shear yield stress)", tau_y, allow_zero=True)
        _positive("K (consistency)", K, allow_zero=True)
        _positive("n (flow index)", n)
        return cls(yield_stress=math.sqrt(2.0) * tau_y, viscosity=K * 2.0 ** ((1.0 + n) / 2.0), flow_index=n, **kw)


@dataclass
class Muscle(Material):
    """Actuated soft material (ChainQueen/DiffTaichi walker): fixed-corotated
    elasticity plus an active Kirchhoff stress a * strength * (F d)(F d)^T along the
    fiber direction d, where a is the actuation signal of the particle's group (an
    action in [-1, 1] per step)."""

    E: float = 1e3
    nu: float = 0.2
    actuation_strength: float = 400.0

    model: ClassVar[str] = "corotated"


@dataclass(eq=False)
class Rigid(Material):
    """A rigid body (per-body shape matching, as FluidLab's floating and grasped objects).

    After every substep's grid-to-particle transfer the body's particles are projected onto
    the rigid motion that best fits them (centre of mass, polar rotation of the moment
    matrix) with the body's linear and angular momentum (APIC included) unchanged; their
    deformation gradient stays the identity and their stress zero, so the grid carries only
    the momentum exchange with other materials, tools and walls. ``density`` (kg/m^3) is
    differentiable.

    Walls: after the projection the scene's walls act on the body as a whole. For each wall,
    the body's particles inside its band (the grid's wall cells, below :attr:`Scene.floor` for
    the floor) that move into it get one impulse at their centroid, through the body's mass
    and inverse inertia, that stops the centroid's normal velocity (inelastic: no bounce),
    then a tangential impulse that stops its sliding, at most the wall's friction coefficient
    times the normal impulse on ``"friction"`` walls (none on ``"slip"``, unbounded on
    ``"sticky"``); two such passes, and the positions follow the corrected velocity. A block
    comes to rest on the floor (1e-12 m/s; 3e-8 m/s once slid to a stop on a friction floor),
    slides to a stop at mu g, and a block landing on a corner turns and settles flat.

    Other materials: the body is coupled to them on the grid. Each substep, before the grid
    velocities are final, the body's nodes (every node its particles reach) and all the mass on
    them, fluid included, get one rigid motion that keeps their linear and angular momentum, so
    the body receives the whole force the fluid's pressure puts on those nodes (before, the
    projection after g2p gave it only its mass share of it: a 0.4-density body dropped into
    water floated 0.66-0.74 submerged instead of Archimedes' 0.4, and fluid seeped into it).
    Bodies of density 0.3 / 0.5 / 0.7 now float 0.53 / 0.60 / 0.78 submerged in a 64-cell tank,
    as deep as elastic bodies of those densities (0.52 / 0.60 / 0.79; the MPM free surface is
    spread over about a cell), and a heavy one sinks (tests/test_rigid.py). The fluid on the
    body's nodes, up to 1.5 cells from it, moves with it (a no-slip layer): bodies are slow to
    settle to their depth (seconds in a 0.02 Pa s fluid).

    One instance is one rigid body: give every ``add_body`` its own ``Rigid(...)``; several
    ``add_body`` calls with the same instance make one compound body (instances compare by
    identity, so two equal-valued instances stay two bodies). A body needs at least 3 (2D)
    / 4 (3D) particles not on one line / plane."""

    model: ClassVar[str] = "rigid"

    # identity, not value, equality: each instance is a body of its own (the scene keeps one
    # material row per distinct material, and a row is a rigid body)
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def lame(self) -> tuple[float, float]:
        return 0.0, 0.0

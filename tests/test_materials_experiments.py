"""MPM materials against laws and published experiments.

Herschel-Bulkley (``ps.Viscoplastic`` with a flow index): a layer on an incline stops where its
yield stress balances the load, gradients in its parameters against central differences (f64),
bad inputs. Drucker-Prager sand: the runout of collapsing granular columns against the
two-dimensional experiments of Lube et al. 2005 / Lajeunesse et al. 2005, and the angle of
repose a too-steep heap avalanches to (Terzaghi 1943, Taylor 1948: the friction angle). (Floating rigid
bodies against Archimedes: tests/test_rigid.py.)
"""

import os
import sys

import numpy as np
import pytest
from conftest import small_scene
from gradcheck import assert_close, central_difference, loss_and_grad, loss_only

import physim as ps

# the heap shape and the flank fit of the repose benchmark (one measurement for both)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from sand_repose import Triangle, flank_angles  # noqa: E402

G = 9.8


def _incline_layer(ratio, n=0.5, K=0.2, theta_deg=30.0, h_stop=0.05):
    """A 60 cm long layer of thickness ``ratio`` * h_stop on a rough floor (``boundary="rough"``,
    Coulomb 1 > tan theta: it does not slide as a block), gravity tilted by
    theta (the floor is the incline), the Herschel-Bulkley yield stress chosen so that the
    analytic stopping thickness tau_y / (rho g sin theta) is ``h_stop``. It starts in its static
    elastic state (shear strain tau / mu, vertical strain from the overburden), so the load is
    not applied as a jump (a sudden load overshoots the static stress by up to 2x). Returns the
    mean downhill speed of the middle third over time (0.05 s apart, 0.5 s)."""
    theta = np.radians(theta_deg)
    rho = 1.0
    tau_y = rho * G * np.sin(theta) * h_stop
    mat = ps.Viscoplastic.from_rheology(tau_y, K, n, E=300.0, nu=0.45, density=rho)
    scene = ps.Scene(dim=2, grid_res=64, substeps_per_step=10, boundary="rough", wall_friction=1.0,
                     gravity=[G * np.sin(theta), -G * np.cos(theta)])
    lo, h, length = scene.floor, ratio * h_stop, 0.6
    scene.add_body(ps.Box(center=(0.45, lo + h / 2), size=(length, h)), mat)
    scene.build(max_steps=300)
    mu, lam = mat.lame()
    s0 = scene.initial_state()
    x, F = s0["mpm.x"], s0["mpm.F"]
    depth = h - (x[:, 1] - lo)
    F[:, 0, 1] = rho * G * np.sin(theta) * depth / mu
    F[:, 1, 1] = 1.0 - rho * G * np.cos(theta) * depth / (lam + 2 * mu)
    scene.set_initial_state({"mpm.F": F})
    middle = np.abs(x[:, 0] - 0.45) < length / 6
    steps = int(round(0.05 / (scene.dt * scene.substeps_per_step)))
    speeds = []
    for _ in range(10):
        scene.forward(np.zeros((steps, 0)), requires_grad=False)
        speeds.append(scene.particle_velocities()[middle, 0].mean())
    return np.array(speeds)


def test_herschel_bulkley_layer_stops_where_yield_stress_balances_load():
    """A Herschel-Bulkley layer (n = 0.5) on a 30 degree incline: the shear stress at its base
    is rho g h sin(theta), so it stays at rest below h_stop = tau_y / (rho g sin theta) and
    flows above it (the deviatoric normal stress of the overburden adds 1.2 % at nu = 0.45).
    h_stop = 5 cm = 3.2 cells; the layers at 0.8 and 1.25 h_stop (a quarter off either way:
    the base is resolved to about a cell, 0.3 h_stop). Measured: 0.8 h_stop comes to rest
    (2e-8 m/s at 0.5 s, from 1e-3 m/s as the initial state settles); 1.25 h_stop keeps
    flowing at 0.9 mm/s."""
    below, above = _incline_layer(0.8), _incline_layer(1.25)
    print("speeds below / above h_stop:", below[-1], above[-1])
    assert abs(below[-1]) < 1e-6 and abs(below[-1]) < 0.01 * abs(below[0])
    assert above[-1] > 3e-4 and above[-1] > 0.5 * above[0]  # flowing downhill, not stopping


def test_herschel_bulkley_gradients_match_finite_differences():
    """d loss / d (yield stress, consistency, flow index) of a Herschel-Bulkley block pushed by
    a sphere, 4 steps x 4 substeps, shear-thinning n = 0.6: reverse mode vs central
    differences (f64), with the gradient-test layout of tests/test_gradients.py."""
    mat = ps.Viscoplastic(E=2e3, nu=0.3, yield_stress=2.0, viscosity=1.0, flow_index=0.6)
    scene = small_scene(2, mat)
    rng = np.random.default_rng(14)
    actions = rng.normal(scale=0.3, size=(4, scene.action_dim))
    actions[:, 0] += 1.5
    x0 = scene.initial_state()["mpm.x"]
    scene.set_initial_state(v=scene.initial_state()["mpm.v"] - 2.0 * (x0 - x0.mean(axis=0)))
    n = scene.n_particles
    weights = (rng.normal(size=(n, 2)), 0.01 * rng.normal(size=(n, 2)))
    _, g = loss_and_grad(scene, actions, weights)
    for name in ("yield_stress", "viscosity", "flow_index"):
        value = scene.get_param(f"mpm.{name}", 0)

        def shifted(e, name=name, value=value):
            scene.set_param(f"mpm.{name}", value + e, 0)
            out = loss_only(scene, actions, weights)
            scene.set_param(f"mpm.{name}", value, 0)
            return out
        fd = central_difference(shifted, 1e-6 * value)
        assert abs(fd) * value > 1e-7, f"the loss barely depends on {name}"
        assert_close([fd], [g.params[f"mpm.{name}"][0]], f"Herschel-Bulkley d/d {name}")


def test_herschel_bulkley_bad_inputs():
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="flow_index"):
            ps.Viscoplastic(flow_index=bad)
        with pytest.raises(ValueError, match="flow index"):
            ps.Viscoplastic.from_rheology(1.0, 1.0, bad)
    with pytest.raises(ValueError, match="yield_stress"):
        ps.Viscoplastic(yield_stress=-1.0)
    with pytest.raises(ValueError, match="tau_y"):
        ps.Viscoplastic.from_rheology(-1.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="viscosity"):
        ps.Viscoplastic(viscosity=-1.0)
    # rheometer values: tau = tau_y + K gamma_dot^n maps to |s| = Y + eta |D_p|^n
    m = ps.Viscoplastic.from_rheology(10.0, 2.0, 0.5)
    assert m.yield_stress == pytest.approx(10.0 * np.sqrt(2)) and m.flow_index == 0.5
    gamma_dot = 3.0  # simple shear: |s| = sqrt(2) tau, |D_p| = gamma_dot / sqrt(2)
    assert m.yield_stress + m.viscosity * (gamma_dot / np.sqrt(2)) ** 0.5 == pytest.approx(
        np.sqrt(2) * (10.0 + 2.0 * gamma_dot**0.5))
    scene = ps.Scene(dim=2, grid_res=32)
    scene.add_body(ps.Box(center=(0.5, 0.3), size=(0.1, 0.1)), ps.Viscoplastic(flow_index=0.5))
    scene.build(max_steps=1)
    with pytest.raises(ValueError, match="flow_index"):
        scene.set_param("mpm.flow_index", -1.0, 0)


def _column_runout(a, width):
    """Normalized runout (L_inf - L0) / L0 of a 2D granular column of half-width L0 = ``width``
    and height a L0 against the left wall (the symmetry plane of a column of width 2 L0, as in
    the experiments' half-channel releases) on a rough floor (``boundary="rough"``: Coulomb 0.7,
    and the floor's surface nodes hold the sand, as a bed of glued grains would), friction angle 32
    degrees, grid 96, after 1 s (at rest: mean speed < 1 mm/s). The front is the third-furthest
    particle plus half a spacing (one or two grains rolling ahead do not count, as in the
    experiments)."""
    scene = ps.Scene(dim=2, grid_res=96, substeps_per_step=10, boundary="rough", wall_friction=0.7)
    lo = scene.floor
    scene.add_body(ps.Box(center=(lo + width / 2, lo + a * width / 2), size=(width, a * width)),
                   ps.Sand(E=2e3, nu=0.3, friction_angle=32.0, density=1.5))
    scene.build(max_steps=2000)
    steps = int(round(1.0 / (scene.dt * scene.substeps_per_step)))
    scene.forward(np.zeros((steps, 0)), requires_grad=False)
    x = scene.particle_positions()
    assert np.linalg.norm(scene.particle_velocities(), axis=1).mean() < 1e-3, "the sand is still moving"
    front = np.sort(x[:, 0])[-3] + scene.spacing / 2 - lo
    return (front - width) / width


@pytest.mark.parametrize(("a", "width", "expected"), [(2.0, 0.15, 1.2 * 2.0), (5.0, 0.12, 1.9 * 5.0 ** (2 / 3))])
def test_granular_column_collapse_runout_matches_experiments(a, width, expected):
    """Runout of a collapsing 2D sand column vs its aspect ratio a = H0 / L0: the experiments
    (Lube et al. 2005, Phys. Rev. E 72 041301; Lajeunesse et al. 2005, Phys. Fluids 17 103302;
    quasi-2D channels) give (L_inf - L0) / L0 = 1.2 a for small a and 1.9 a^(2/3) for tall
    columns (a above ~3). Tolerance 25 %: the experiments' prefactors vary by 15-30 % with the
    grains and the channel (Balmforth & Kerswell 2005). The column is 14 and 11.5 cells wide: the
    runout falls short on coarser grids (numerical dissipation of the flow; a = 2, 2D cone with
    tan(phi): 1.62 at 6.4 cells wide, grid 64; 1.85 at 9.6, grid 64; 2.06 at 12.8, grid 128;
    2.19 at 14.4, grid 96). Measured (grid 96): a = 2: 2.19 (expected 2.4, -9 %); a = 5: 5.13
    (expected 5.56, -8 %). The earlier 2D cone (sin(phi): the cone of friction_angle 27.9 now)
    spread these columns too far: 2.63 (+9 %) and 6.57 (+18 %) on grid 96 (on the old grid-64
    test, 6.4 and 5 cells wide, 1.96 and 4.61). On plain ``"friction"`` walls (the floor's
    surface nodes free, see physim.solvers.mpm) that sand slid on the floor: 2.38 and 6.08 for
    a = 2, 6 on a 96 grid."""
    runout = _column_runout(a, width)
    print(f"a = {a}: runout {runout:.3f}, experiments {expected:.3f}")
    assert abs(runout - expected) < 0.25 * expected


@pytest.mark.parametrize(("phi", "start"), [(20.0, 30.0), (32.0, 50.0)])
def test_sand_heap_avalanches_to_its_angle_of_repose(phi, start):
    """Angle of repose: a cohesionless heap steeper than it fails by avalanches down its flanks
    and the sliding material "does not come to rest until the angle of inclination of the slope
    becomes equal to ... the angle of repose" (Terzaghi 1943), which for a dry sand is its friction
    angle at (nearly) zero pressure, the critical-state one (Taylor 1948; Santamarina & Cho 2001,
    Geotech. Testing J. 24(2) 185-192, measure a sand's critical-state friction angle by its
    repose angle for that reason). A 2D heap (25 cm tall) of ``ps.Sand`` with friction angle
    phi, its flanks ``start`` degrees steep, released on a rough floor (grid 64): after 1.5 s both
    flanks must lie within 3 degrees of phi (the spread of repose angles measured on one sand by
    one method). The start must be steeper than the 2D cone lets a static flank stand,
    asin(tan phi) (21.3 and 38.7 degrees; see ps.Sand): from 42 degrees a phi = 32 heap stands
    (43.1 / 43.0). Before the fix (2D cone plane Mohr-Coulomb, sin(phi)) the flanks stopped at
    atan(sin phi): 18.9 and 27.9 degrees (measured at phi = 32 from 42: 28.8 / 27.3). Measured
    now (benchmarks/sand_repose.py): phi = 20 from 30: 20.2 / 20.2; phi = 32 from 50: 33.5 / 32.7.
    Not grid-converged: the release is a collapse, and on grid 128 it overshoots below phi
    (phi = 20 from 30: 15.5 / 15.2; phi = 32 from 44: 30.1 / 30.1, from 50: 27.2 / 26.5), as
    collapsing columns do; on grid 64 a start only 5 degrees above asin(tan phi) fails on one
    side only (phi = 32 from 44: 36.9 / 46.4)."""
    scene = ps.Scene(dim=2, grid_res=64, substeps_per_step=10, boundary="rough", wall_friction=0.7)
    lo = scene.floor
    scene.add_body(Triangle(0.5, lo, 0.25, start), ps.Sand(E=3.5e3, nu=0.3, friction_angle=phi, density=1.5))
    scene.build(max_steps=2000)
    scene.forward(np.zeros((int(round(1.5 / (scene.dt * scene.substeps_per_step))), 0)), requires_grad=False)
    x = scene.particle_positions()
    assert np.linalg.norm(scene.particle_velocities(), axis=1).mean() < 5e-3, "the heap is still moving"
    angles, _ = flank_angles(x, lo, scene.dx, scene.spacing)
    assert None not in angles, "too few surface points on a flank"
    print(f"phi = {phi}: flanks at {np.round(angles, 1)} degrees")
    assert all(abs(a - phi) < 3.0 for a in angles), f"flanks at {angles} degrees, friction angle {phi}"


#: Martin & Moyce (1952), Phil. Trans. R. Soc. A 244, 312-324, their tables 2 and 6: surge front
#: of a water column of width a = 2.25 in and height 2a (n^2 = 2) collapsing on a dry horizontal
#: floor; front distance from the back wall Z = z / a at dimensionless time T = t sqrt(2 g / a)
MARTIN_MOYCE_T = np.array([0.41, 0.84, 1.19, 1.43, 1.63, 1.83, 1.98, 2.20, 2.32, 2.51, 2.65, 2.83, 2.98, 3.11, 3.33])
MARTIN_MOYCE_Z = np.array([1.11, 1.22, 1.44, 1.67, 1.89, 2.11, 2.33, 2.56, 2.78, 3.00, 3.22, 3.44, 3.67, 3.89, 4.11])


def test_dam_break_front_matches_martin_moyce():
    """A 2D weakly compressible water column (width a = 12 cm, height 2a, inviscid, bulk
    modulus 900 Pa at density 1: sound speed 30 m/s, ten times the Ritter front speed
    2 sqrt(g 2a) = 3.1 m/s) released against the left wall on a slip floor, grid 64 (7.7 cells
    across a): its front (the third-furthest particle plus half a spacing) against Martin &
    Moyce's surge front, by Froude scaling (T = t sqrt(2 g / a), Z = z / a; the experiment at
    a = 5.7 cm). Tolerance: every point within 20 % and the mean within 15 %: inviscid
    simulations run 10-15 % ahead of this experiment (its gate took a finite time to lift, and
    the 1-2 mm tip felt the floor's friction and surface tension, none of which is modelled).
    Measured: -10 % at T = 0.41 (the front has not left the column's corner yet), then +6 to
    +16 % (mean of all points +9.7 %); on grid 128: +14 to +24 %."""
    a = 0.12
    scene = ps.Scene(dim=2, grid_res=64, substeps_per_step=1, boundary="slip")
    lo = scene.floor
    scene.add_body(ps.Box(center=(lo + a / 2, lo + a), size=(a, 2 * a)),
                   ps.Fluid(bulk_modulus=900.0, viscosity=0.0, density=1.0))
    scene.build(max_steps=2000)
    to_seconds = 1.0 / np.sqrt(2 * G / a)
    fronts, t = [], 0.0
    for T in MARTIN_MOYCE_T:
        n = int(round((T * to_seconds - t) / scene.dt))
        scene.forward(np.zeros((n, 0)), requires_grad=False)
        t += n * scene.dt
        x = scene.particle_positions()
        fronts.append((np.sort(x[:, 0])[-3] + scene.spacing / 2 - lo) / a)
    rel = (np.array(fronts) - MARTIN_MOYCE_Z) / MARTIN_MOYCE_Z
    print("Z simulated:", np.round(fronts, 3), "relative to Martin & Moyce:", np.round(rel, 3))
    assert np.all(np.abs(rel) < 0.20), f"front off Martin & Moyce by {rel.round(3)}"
    assert abs(rel.mean()) < 0.15

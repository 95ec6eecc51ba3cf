"""Tactile physics of the FEM gel: sphere indentation against contact theory, a process that
builds, runs and differentiates 100 tactile scenes, and an indenter that starts inside a gel.

Indentation (:func:`test_sphere_indentation_follows_hertz_for_a_bonded_layer`): a rigid sphere
(R = 10 mm, frictionless) pressed step by step into a flat gel (E = 10 kPa, nu = 0.3; 20 x 20 mm,
H = 10 mm thick, its back pinned), the total normal contact force ``F = -sum fem.f_contact[:, 1]``
read at equilibrium after each step. Theory: Hertz for a half-space,
``F_H = 4/3 E / (1 - nu^2) sqrt(R) d^(3/2)``, times the finite-thickness factor of a layer bonded
to a rigid base (Dimitriadis et al., Biophys. J. 82, 2798 (2002), eq. 12), a series in
``chi = a / H``, ``a = sqrt(R d)`` the contact radius. Depths 0.25..1.3 mm give chi = 0.16..0.36,
where the factor is 1.16..1.42: not negligible (it raises the local exponent from 1.5 to ~1.63),
so the test divides it out and checks exponent and prefactor of what remains.
"""

import gc
import math
import os
import time
import warnings

import numpy as np
import pytest
import torch
from conftest import RIG_STEPS, RIG_TOP, tactile_rig

import physim as ps
from physim.meshes import quality
from physim.parts.fem import START_DEPTH

pytestmark = pytest.mark.filterwarnings("ignore::physim.parts.fem.Subcycling")

# ------------------------------------------------------------------ indentation
R_SPHERE, H_GEL, W_GEL = 0.01, 0.01, 0.02
E_GEL, NU_GEL, RHO_GEL = 1e4, 0.3, 1000.0
CENTER = np.array([0.5, 0.3, 0.5])
TOP = CENTER[1] + H_GEL / 2
DEPTHS = np.array([0.25, 0.45, 0.7, 1.0, 1.3]) * 1e-3
GAP = 2e-5  # the sphere starts this far above the gel


def graded_pad(cells=12, layers=6, b=3.5):
    """A ``flat_pad`` whose grid is graded (x, z: ``sinh(b u) / sinh(b)`` about the centre; y
    about the top surface with 0.8 b): cells of 0.35 mm under the sphere growing to 5 mm at the
    sides, 0.6 mm thick at the surface. Each axis is mapped monotonically on its own, so the
    Kuhn tets stay positively oriented. 12 x 6 x 12 cells: 5184 tets."""
    m = ps.flat_pad(center=tuple(CENTER), size=(W_GEL, W_GEL), thickness=H_GEL, resolution=(cells, layers, cells))
    v = m.vertices.copy()
    for d in (0, 2):
        u = (v[:, d] - CENTER[d]) / (W_GEL / 2)
        v[:, d] = CENTER[d] + W_GEL / 2 * np.sinh(b * u) / np.sinh(b)
    s = (TOP - v[:, 1]) / H_GEL
    v[:, 1] = TOP - H_GEL * np.sinh(0.8 * b * s) / np.sinh(0.8 * b)
    return ps.TetMesh(v, m.tets, m.fixed)


def thickness_factor(chi, nu):
    """F / F_Hertz of a frictionless sphere on an incompressible-or-not layer bonded to a rigid
    base, chi = sqrt(R d) / H (Dimitriadis et al. 2002, eq. 12 with their alpha_0, beta_0)."""
    a0 = -(1.2876 - 1.4678 * nu + 1.3442 * nu**2) / (1 - nu)
    b0 = (0.6387 - 1.0277 * nu + 1.5164 * nu**2) / (1 - nu)
    p = math.pi
    return (1 - 2 * a0 / p * chi + 4 * a0**2 / p**2 * chi**2 - 8 / p**3 * (a0**3 + 4 * p**2 / 15 * b0) * chi**3
            + 16 * a0 / p**4 * (a0**3 + 3 * p**2 / 5 * b0) * chi**4)


def hertz(d):
    return 4.0 / 3.0 * E_GEL / (1 - NU_GEL**2) * math.sqrt(R_SPHERE) * d**1.5


def test_sphere_indentation_follows_hertz_for_a_bonded_layer():
    """Quasi-static indentation (module docstring) against Hertz x the bonded-layer factor.

    Procedure: mass damping alpha = 2 w1 (w1 = pi c_s / 2H, the layer's lowest shear mode:
    critically damped, every mode decays at least at rate w1); each depth reached by a move at
    0.1 c_s, then held 5 / w1 (F changes by < 5e-3 relative over the hold's last
    quarter; measured 0.6e-3..2.3e-3: 0.2 % of F, small against the mesh's +-4 %).
    The depth used is the tool's depth less the penalty's deepest penetration
    (measured 0.004..0.01 mm, < 2 % of d): the gel's own deflection under the sphere's pole.

    Checks and tolerances:
    - before contact (the sphere 20 um above the gel) F is exactly 0 at every step;
    - exponent of F / factor(chi) against d: 1.5 +- 0.06 (measured ~1.50). A linear-tet surface
      meshed by 0.35 mm cells resolves the contact edge (a = 1.6..3.6 mm, 4..10 cells) to a few
      %: the ratio to theory scatters by +-4 % from depth to depth as a crosses rings of nodes,
      which over the fitted range (d x 5.2, ln 1.65) moves a fitted slope by up to ~0.05;
    - the raw exponent (no thickness correction; measured ~1.62) is above 1.55: the test is not
      blind to the finite thickness the factor accounts for;
    - prefactor: F / (F_Hertz x factor) in [0.95, 1.25] at every depth (measured 1.09..1.18).
      Linear tets are stiffer than the continuum (no locking at nu = 0.3, but 4..10 elements
      across a) and the contact edge is resolved to a cell, +10..20 %; a / R reaches 0.36, where
      the neo-Hookean response stiffens a few % past Hertz's small-strain theory; the free sides
      at 1 H from the axis soften slightly (a few %), hence the lower bound below 1;
    - force balance at the last depth: the internal force on the pinned back nodes equals the
      total contact force (sum of internal forces is 0, and the free nodes are in equilibrium)
      to 1 % of F: the residual is the free nodes' inertia m a plus the difference between the
      step-mean contact force and the end-of-step state, both bounded by the < 5e-3 drift."""
    gc.collect()
    t_start = time.time()
    mesh = graded_pad()
    q = quality(mesh)
    assert q["n_tets"] == 5184 and q["min_volume_ratio"] > 0.02, q
    mu = E_GEL / (2 * (1 + NU_GEL))
    cs = math.sqrt(mu / RHO_GEL)
    w1 = math.pi * cs / (2 * H_GEL)
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-4, substeps_per_step=1, gravity=(0.0, 0.0, 0.0))
    scene.add_tool(ps.SphereTool(position=(CENTER[0], TOP + R_SPHERE + GAP, CENTER[2]), radius=R_SPHERE,
                                 friction=0.0))
    body = ps.FEMBody(mesh, E=E_GEL, nu=NU_GEL, density=RHO_GEL, alpha=2 * w1, beta=0.0)
    scene.add_fem(body)
    scene.build(max_steps=64)
    fem = scene.partset.fem
    dt = scene.dt

    def press(vy, n):
        """n steps with the sphere's vertical velocity vy; the contact force series (n, nodes, 3)."""
        a = np.zeros((n, scene.action_dim))
        a[:, 1] = vy
        out = []
        for k in range(0, n, 64):
            out.append(scene.forward(a[k: k + 64], requires_grad=False, observe=["fem.f_contact"])["fem.f_contact"][1:])
        return np.concatenate(out)

    fc = press(-GAP / (4 * dt) * 0.5, 4)  # halfway down the gap: still apart
    assert np.all(fc == 0.0), f"contact force before contact: {np.abs(fc).max():.3g} N"
    sensor = ps.TactileSensor(body, image_size=(33, 33), markers=(9, 9))
    st = scene.get_state()
    rest = sensor.reading(torch.tensor(st["fem.x"]), f_contact=torch.tensor(st["fem.f_contact"]))
    background = sensor.image(torch.tensor(mesh.vertices))
    hold = int(math.ceil(5 / w1 / dt))
    depth, F, pen, drift = -GAP / 2, [], [], []
    for d in DEPTHS:
        n = max(1, int(round((d - depth) / (0.1 * cs) / dt)))
        press(-(d - depth) / (n * dt), n)
        depth = d
        fy = -press(0.0, hold)[:, :, 1].sum(axis=1)
        st = scene.get_state()
        F.append(fy[-1])
        pen.append(-(np.linalg.norm(st["fem.x"] - st["tools.pos"][0], axis=1) - R_SPHERE).min())
        drift.append(abs(fy[-1] - fy[-hold // 4]) / fy[-1])
    F, pen, drift = np.array(F), np.array(pen), np.array(drift)
    assert drift.max() < 5e-3, drift
    assert (pen > 0).all() and (pen < 0.02 * DEPTHS).all(), pen
    d_gel = DEPTHS - pen
    factor = thickness_factor(np.sqrt(R_SPHERE * d_gel) / H_GEL, NU_GEL)
    ratio = F / (hertz(d_gel) * factor)
    k_raw = np.polyfit(np.log(d_gel), np.log(F), 1)[0]
    k = np.polyfit(np.log(d_gel), np.log(F / factor), 1)[0]
    # the back's reaction: internal force on the pinned nodes balances the contact force
    f_int = fem.nodal_forces(scene._slot)
    f_c = scene.get_state()["fem.f_contact"]
    back = f_int[body.fixed].sum(axis=0)
    total = f_c.sum(axis=0)
    balance = np.abs(back - total).max() / F[-1]
    print(f"\nindentation: exponent {k:.4f} (raw {k_raw:.4f}), F / (Hertz x factor) {np.round(ratio, 3)}, "
          f"factor {np.round(factor, 3)}, penetration {np.round(pen * 1e3, 4)} mm, drift {drift.max():.1e}, "
          f"balance {balance:.1e}, F {np.round(F * 1e3, 3)} mN, {time.time() - t_start:.1f} s")
    # the sensor's readings of the simulated gel: at rest (no contact) nothing, under the
    # sphere a centred, radially symmetric imprint
    assert np.abs(rest["marker_displacement"].numpy()).max() < 1e-9  # px: the gel has not moved
    assert np.abs(rest["depth"].numpy()).max() < 1e-12
    assert np.abs((rest["image"] - background).numpy()).max() < 1e-9
    assert np.all(rest["total_force"].numpy() == 0.0)
    check_imprint(sensor, scene.get_state(), F[-1])
    assert abs(k - 1.5) < 0.06, f"exponent {k:.4f} (raw {k_raw:.4f}) vs 1.5; ratios {ratio}"
    assert k_raw > 1.55, f"raw exponent {k_raw:.4f}: the finite thickness should raise it above 1.5"
    assert ((ratio > 0.95) & (ratio < 1.25)).all(), f"F / (Hertz x thickness factor) = {ratio}"
    assert balance < 0.01, f"back reaction {back} vs total contact force {total} (F = {F[-1]:.4g} N)"


def check_imprint(sensor, state, F):
    """Readings of the gel pressed by the sphere at its centre (1.3 mm deep, F the contact
    force): the deepest depth pixel is the centre one (to one pixel) and equals the gel's
    deflection under the pole (the sphere's depth less the penalty's penetration, within
    5 %: the pixel grid samples the rounded bottom); the depth map is symmetric under the
    square's 90-degree turns and mirrors (the graded mesh is symmetric; its Kuhn diagonals
    are not: tolerance 10 % of the peak, measured 5.6 %); markers move radially (their
    azimuthal displacement, summed over markers, is < 15 % of the radial one: measured 10.3 %,
    the same diagonals); the total force
    in the sensor frame is F along the normal with shear < 1 % of F."""
    x, fc = torch.tensor(state["fem.x"]), torch.tensor(state["fem.f_contact"])
    r = sensor.reading(x, f_contact=fc)
    depth = r["depth"].numpy()
    H, W = depth.shape
    i, j = np.unravel_index(np.argmax(depth), depth.shape)
    assert abs(i - H // 2) <= 1 and abs(j - W // 2) <= 1, (i, j)
    top = np.isclose(sensor.rest_vertices[:, 1], TOP)
    pole = TOP - x[:, 1].numpy()[top].min()  # the top surface's deepest point (under the pole)
    assert depth.max() == pytest.approx(pole, rel=0.05)
    sym = max(np.abs(depth - np.rot90(depth, k)).max() for k in (1, 2, 3))
    sym = max(sym, np.abs(depth - depth[::-1]).max(), np.abs(depth - depth[:, ::-1]).max())
    print(f"imprint: peak {depth.max() * 1e3:.4f} mm (pole {pole * 1e3:.4f}), asymmetry {sym / depth.max():.3f}")
    assert sym < 0.1 * depth.max()
    m = sensor.markers(torch.tensor(sensor.rest_vertices)).numpy()
    d = r["marker_displacement"].numpy()
    rad = m - np.array([(W - 1) / 2, (H - 1) / 2])
    rn = rad / np.maximum(np.linalg.norm(rad, axis=1, keepdims=True), 1e-12)
    radial = (d * rn).sum(axis=1)
    azim = d[:, 0] * rn[:, 1] - d[:, 1] * rn[:, 0]
    assert np.abs(azim).sum() < 0.15 * np.abs(radial).sum(), (np.abs(azim).sum(), np.abs(radial).sum())
    f = r["total_force"].numpy()
    assert f[2] == pytest.approx(F, rel=1e-6) and np.abs(f[:2]).max() < 0.01 * F, f


# ------------------------------------------------------------------ process stability
def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _build_run_differentiate(i):
    """One tactile scene of the rig layout (tests/conftest.py): the sphere 0.2 mm above the pad,
    shifted by ``0.001 (i % 3)`` m in x, pressed down at 0.4 m/s for 8 steps (1.6 ms: 0.64 mm,
    into the gel) under gravity, and the vertical contact force differentiated w.r.t. the
    actions and E. Returns (vertical force, sum |d / d actions|, d / d E)."""
    scene, _, _ = tactile_rig(RIG_TOP + 0.01 + 2e-4, sphere_x=0.5 + 0.001 * (i % 3), friction=0.3, E=5e4, nu=0.4,
                              alpha=0.0, gravity=(0.0, -9.8, 0.0), substeps=4)
    a = np.zeros((8, scene.action_dim))
    a[:, 7] = -0.4  # tool 1 (columns 6..11): down
    scene.forward(a, requires_grad=True)
    st = scene.get_state()
    seed = np.zeros_like(st["fem.f_contact"])
    seed[:, 1] = 1.0
    g = scene.backward({"fem.f_contact": seed})
    return [float(st["fem.f_contact"][:, 1].sum()), float(np.abs(g.actions).sum()), float(g.params["fem.E"][0])]


def test_hundred_tactile_scenes_in_one_process():
    """100 tactile scenes (the 192-tet rig pad on its box mount, a sphere pressed 0.64 mm into
    it in 8 steps, the vertical contact force differentiated w.r.t. actions and E) built, run
    and differentiated one after another in this (the test session's) process: no crash, every
    run's results finite and the same for the same input (runs i and i + 3 differ only by index),
    and the resident set after run 100 at most 8 MB above its value after run 20 (a leak of one
    scene per run -- fields of ~300 nodes x 8 slots, a tape, Python objects, ~100 kB or more --
    would add >= 8 MB over 80 runs; pools and caches settle by run 20). The scenes have the
    rig's layout, so in the full suite they reuse the engine tests/test_calibration.py compiled
    (forward and reverse) and this test costs only its runs, ~0.3 s each; alone it compiles
    them first. (It used to run in a fresh subprocess, which compiled the reverse mode again:
    ~160 s cold.)"""
    t0 = time.time()
    rss, outs = [], []
    for i in range(100):
        outs.append(_build_run_differentiate(i))
        rss.append(_rss_mb())
    rss, outs = np.array(rss), np.array(outs)
    print(f"\nstability: RSS after runs 1/20/50/100 {rss[0]:.1f}/{rss[19]:.1f}/{rss[49]:.1f}/{rss[99]:.1f} MB, "
          f"{time.time() - t0:.1f} s")
    assert len(outs) == 100 and np.isfinite(outs).all()
    assert (outs[:, 0] < 0).all() and (outs[:, 1] > 0).all(), "no contact / no gradient: the check is vacuous"
    np.testing.assert_array_equal(outs[3:], outs[:-3])
    assert rss[99] - rss[19] < 8.0, f"RSS grew {rss[99] - rss[19]:.1f} MB from run 20 to run 100"


# ------------------------------------------------------------------ indenter starting inside
def _small_scene(sphere_y, tool=None):
    """The rig (tests/conftest.py: its layout, so no new compilation), not built yet."""
    scene, pad, _ = tactile_rig(sphere_y, tool=tool, build=False)
    return scene, pad


def test_indenter_starting_inside_the_gel_is_an_error_at_build():
    """A sphere whose pole is 2 mm inside the pad (the top at y = 0.305) is a ValueError naming
    the body, the tool, the node and the depth; touching (pole on the surface, and 0.05 h inside:
    half the tolerance) builds, and so does the mount box the back sits on. The tolerance is
    START_DEPTH = 0.1 of the smallest tet height scale h (module docstring of physim.parts.fem)."""
    top = RIG_TOP
    scene, pad = _small_scene(top + 0.01 - 0.002)
    with pytest.raises(ValueError, match=r"FEM body 0: tool 1 \(sphere\) starts inside the gel: node \d+ .* is "
                                         r"0\.002 m inside it") as err:
        scene.build(max_steps=RIG_STEPS)
    assert "start the tool outside" in str(err.value)
    del scene
    h = 1.0 / math.sqrt(ps.FEMBody(pad).geometry()[2].max())  # the smallest tet's height scale
    for inside in (0.0, 0.5 * START_DEPTH):
        scene, _ = _small_scene(top + 0.01 - inside * h)
        scene.build(max_steps=RIG_STEPS)
        assert np.all(scene.get_state()["fem.f_contact"] == 0.0)
        del scene
    # a rotated box half-sunk into the gel's side is caught too (the numpy SDF follows the pose)
    box = ps.BoxTool(position=(0.5, 0.305, 0.5), half_extents=(0.003, 0.003, 0.003),
                     rotation=(math.cos(0.3), 0.0, math.sin(0.3), 0.0))
    scene, _ = _small_scene(0.0, tool=box)
    with pytest.raises(ValueError, match=r"tool 1 \(box\) starts inside the gel"):
        scene.build(max_steps=RIG_STEPS)


def test_numpy_tool_sdf_matches_the_kernel():
    """The load-time check's numpy SDF equals the contact kernels' ``tool_sdf`` (through
    ``ToolsPart.min_distance``) for every shape at rotated poses, to round-off (1e-12 m)."""
    from physim.parts.fem import _quat_matrix, tool_sdf_np
    from physim.parts.tools import SHAPE_IDS

    rng = np.random.default_rng(0)
    shapes = [(ps.SphereTool, dict(radius=0.02)), (ps.BoxTool, dict(half_extents=(0.02, 0.01, 0.03))),
              (ps.CapsuleTool, dict(radius=0.01, half_length=0.02)),
              (ps.CylinderTool, dict(radius=0.015, half_height=0.01)),
              (ps.CupTool, dict(radius=0.02, half_height=0.015, thickness=0.005))]
    pts = 0.5 + 0.05 * rng.uniform(-1, 1, size=(400, 3))
    for cls, kw in shapes:
        q = rng.normal(size=4)
        tool = cls(position=(0.5, 0.5, 0.5), rotation=q / np.linalg.norm(q), **kw)
        gc.collect()
        scene = ps.Scene(dim=3, grid_res=32, dt=1e-4, gravity=(0.0, 0.0, 0.0))
        scene.add_tool(tool)
        scene.add_fem(ps.FEMBody(ps.flat_pad(center=(0.2, 0.2, 0.2), size=(0.01, 0.01), thickness=0.005,
                                             resolution=(1, 1, 1))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scene.build(max_steps=8)
        want = scene.partset.tools.min_distance(pts)
        p = (pts - np.array(tool.position)) @ _quat_matrix(tool.initial_rotation())
        got = tool_sdf_np(SHAPE_IDS[tool.shape], tool.size_params(), p)
        np.testing.assert_allclose(got, want, atol=1e-12, err_msg=tool.shape)
        del scene

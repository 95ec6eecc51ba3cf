"""Rigid MPM bodies (:class:`physim.Rigid`): per-body shape matching after g2p.

Rigidity and momentum to f64 round-off, contact with the floor, a tool and a fluid, the
errors, and reverse mode against central finite differences (2D and one small 3D scene).
"""

import gc

import numpy as np
import pytest
from gradcheck import action_entries_fd, assert_close, central_difference, initial_entries_fd, loss_and_grad, loss_only

import physim as ps

#: central-difference step: the forward pass has ~1e-15 of atomics-order noise, so h = 1e-6
#: leaves ~1e-9 of noise in a difference (as for the elastic scenes); h = 1e-4 brings it to ~1e-11
#: while the truncation error stays below that (measured: h = 1e-4 and 1e-5 agree to 1e-11)
H = 1e-4


def _pairwise(x):
    d = x[:, None, :] - x[None, :, :]
    return np.sqrt((d * d).sum(-1))


def _spin_velocity(x, v, w):
    """v + w x (x - centre) in 2D."""
    r = x - x.mean(axis=0)
    return v + w * np.stack([-r[:, 1], r[:, 0]], axis=1)


def _rigid_scene(gravity=None, **kw):
    # every scene of these tests with only rigid bodies on a 64^2 grid shares one layout
    return ps.Scene(dim=2, grid_res=64, dt=1e-3, substeps_per_step=5, gravity=gravity, **kw)


def test_free_flight_keeps_shape_and_momentum():
    """No gravity, no contact: a spinning, translating body keeps its pairwise distances and
    its linear and angular momentum (orbital + APIC affine, what scene.angular_momentum
    measures) to round-off. 150 substeps; measured: distances 2e-16, P and L 1e-11 relative
    (grid sums of ~3000 terms per substep), asserted at 1e-9."""
    scene = _rigid_scene(gravity=[0.0, 0.0])
    scene.add_body(ps.Box(center=(0.45, 0.5), size=(0.2, 0.1)), ps.Rigid(density=2.0))
    scene.build(max_steps=40)
    x0 = scene.initial_state()["mpm.x"]
    scene.set_initial_state(v=_spin_velocity(x0, np.array([0.3, 0.1]), 2.0))
    P0, L0 = scene.momentum(), scene.angular_momentum()
    out = scene.forward(np.zeros((30, 0)), requires_grad=False, observe=["mpm.x"])
    x = scene.particle_positions()
    for xs in out["mpm.x"][1:]:
        assert np.abs(_pairwise(xs) - _pairwise(x0)).max() < 1e-12
    assert np.abs(scene.momentum() - P0).max() < 1e-9 * np.abs(P0).max()
    assert np.abs(scene.angular_momentum() - L0).max() < 1e-9 * np.abs(L0).max()
    # it did move and turn: 0.15 s at 2 rad/s
    assert np.linalg.norm(x.mean(axis=0) - x0.mean(axis=0)) > 0.04
    # the velocity is a rigid field V + w x r, and C its gradient skew(w) (w a bit below 2 rad/s:
    # the initial C = 0 spins no particle, the projection shares L with APIC's particle inertia)
    s = scene.get_state()
    r, dv = x - x.mean(axis=0), s["mpm.v"] - s["mpm.v"].mean(axis=0)
    w = (dv * np.stack([-r[:, 1], r[:, 0]], axis=1)).sum() / (r * r).sum()
    assert 1.8 < w < 2.0
    assert np.abs(dv - w * np.stack([-r[:, 1], r[:, 0]], axis=1)).max() < 1e-12
    assert np.abs(s["mpm.C"] - np.array([[0.0, -w], [w, 0.0]])).max() < 1e-12

    # with gravity: P changes by exactly M g t, L about the centre of mass is kept
    g = np.array([0.0, -9.8])
    scene = _rigid_scene(gravity=g.tolist())
    scene.add_body(ps.Box(center=(0.45, 0.7), size=(0.2, 0.1)), ps.Rigid(density=2.0))
    scene.build(max_steps=40)
    scene.set_initial_state(v=_spin_velocity(x0 + [0.0, 0.2], np.array([0.3, 0.5]), 2.0))
    m = scene.particle_mass()

    def spin_about_centre():
        s = scene.get_state()
        r = s["mpm.x"] - s["mpm.x"].mean(axis=0)
        orbital = (m * (r[:, 0] * s["mpm.v"][:, 1] - r[:, 1] * s["mpm.v"][:, 0])).sum()
        return orbital + (m * 0.25 * scene.dx**2 * (s["mpm.C"][:, 1, 0] - s["mpm.C"][:, 0, 1])).sum()

    P0, S0 = scene.momentum(), spin_about_centre()
    scene.forward(np.zeros((20, 0)), requires_grad=False)
    t = 20 * 5 * scene.dt
    assert np.abs(scene.momentum() - (P0 + m.sum() * g * t)).max() < 1e-9 * np.abs(P0).max()
    assert abs(spin_about_centre() - S0) < 1e-9 * abs(S0)
    assert np.abs(_pairwise(scene.particle_positions()) - _pairwise(x0)).max() < 1e-12


def _dropped_block():
    scene = _rigid_scene()
    scene.add_body(ps.Box(center=(0.5, 0.2), size=(0.16, 0.08)), ps.Rigid(density=1.0), velocity=[0.0, -0.5])
    scene.build(max_steps=120)
    x0 = scene.initial_state()["mpm.x"]
    out = scene.forward(np.zeros((100, 0)), requires_grad=False, observe=["mpm.x"])
    return scene, x0, out["mpm.x"]


def test_block_dropped_on_floor_stays_rigid():
    scene, x0, xs = _dropped_block()
    for x in xs[1:]:
        assert np.abs(_pairwise(x) - _pairwise(x0)).max() < 1e-12
    x = scene.particle_positions()
    # landed level on the floor (in the wall band, above the domain's edge)
    assert scene.dx < x[:, 1].min() < scene.floor + scene.dx
    assert np.ptp(x[:, 1]) == pytest.approx(np.ptp(x0[:, 1]), abs=1e-3)
    assert np.abs(scene.particle_velocities()[:, 0]).max() < 1e-9


def test_block_on_floor_comes_to_rest():
    """The body-level wall contact after the projection stops the body: from 0.15 s (it lands
    at 0.13 s) every particle's speed stays below 1e-9 m/s and the block does not sink (its
    lowest particle moves < 1e-9 m). Measured: 3e-13 m/s and 3e-13 m (slip, friction, sticky
    alike); before the contact step it sank at 0.02 m/s after 0.5 s -- 1e-9 is 1e-6 of the
    g dt = 2e-3 m/s each substep adds, i.e. round-off, not a slow leak."""
    scene, _, xs = _dropped_block()
    v = scene.particle_velocities()
    assert np.abs(v).max() < 1e-9
    low = np.array([x[:, 1].min() for x in xs[30:]])
    assert np.ptp(low) < 1e-9
    assert abs(low[-1] - scene.floor) < 0.5 * scene.spacing  # rests on the floor, not in the wall band


def _floor_scene(boundary, steps, **body):
    scene = _rigid_scene(boundary=boundary, wall_friction=0.3)
    scene.add_body(ps.Box(center=body.pop("center"), size=(0.16, 0.08)), ps.Rigid(density=1.0), **body)
    scene.build(max_steps=steps)
    return scene


def test_block_slides_with_coulomb_friction():
    """A block sliding at 1 m/s on a friction floor (mu = 0.3) decelerates at mu g (the normal
    impulse is the weight's, the tangential one mu times it) and stops after v^2 / (2 mu g) =
    0.17 m; on a slip floor it keeps its speed. Measured: 2.940 m/s^2 (mu g = 2.94), 0.171 m;
    slip: 1 m/s to 1e-14."""
    lo = _rigid_scene().floor
    vx = []
    for boundary in ("friction", "slip"):
        scene = _floor_scene(boundary, 80, center=(0.3, lo + 0.041), velocity=[1.0, 0.0])
        x0 = scene.initial_state()["mpm.x"]
        out = scene.forward(np.zeros((80, 0)), requires_grad=False, observe=["mpm.x", "mpm.v"])
        vx.append([v[:, 0].mean() for v in out["mpm.v"]])
        for x in out["mpm.x"][1:]:
            assert np.abs(_pairwise(x) - _pairwise(x0)).max() < 1e-12
        travel = out["mpm.x"][-1][:, 0].mean() - x0[:, 0].mean()
        if boundary == "friction":
            assert travel == pytest.approx(1.0 / (2 * 0.3 * 9.8), rel=0.03)
            # at rest (measured 3e-8 m/s: the two contact passes leave a residual turn of order
            # 1e-8 m/s where the friction impulse acts below the centre of mass)
            assert np.abs(out["mpm.v"][-1]).max() < 1e-6
        del scene
        gc.collect()  # the slip floor's scene (same layout) reuses this one's engine: not a second compile
    step = 5 * 1e-3
    decel = (vx[0][10] - vx[0][60]) / (50 * step)
    assert decel == pytest.approx(0.3 * 9.8, rel=0.01)
    assert np.abs(np.array(vx[1][10:60]) - 1.0).max() < 1e-9


def test_spinning_block_lands_on_a_corner_and_settles_flat():
    """Thrown spinning (4 rad/s) onto a friction floor, the block hits it with a corner: the
    contact impulse at the corner turns it (through the inverse inertia), it rocks and comes
    to rest lying flat on a long side. Measured: at rest by 0.5 s, level to 1e-3 degrees."""
    scene = _floor_scene("friction", 100, center=(0.5, 0.3))
    x0 = scene.initial_state()["mpm.x"]
    r = x0 - x0.mean(axis=0)
    scene.set_initial_state(v=_spin_velocity(x0, np.array([0.3, -0.5]), 4.0))
    out = scene.forward(np.zeros((100, 0)), requires_grad=False, observe=["mpm.x"])
    for x in out["mpm.x"][1:]:
        assert np.abs(_pairwise(x) - _pairwise(x0)).max() < 1e-12
    x = scene.particle_positions()
    assert np.abs(scene.particle_velocities()).max() < 1e-5
    # lying on a long side: the block's height is its short side, its bottom on the floor
    assert np.ptp(x[:, 1]) == pytest.approx(np.ptp(r[:, 1]), abs=1e-4)
    assert abs(x[:, 1].min() - scene.floor) < 0.5 * scene.spacing


def test_tool_pushes_block_as_a_whole():
    """No gravity: a sphere pushing a block at the height of its centre translates it."""
    scene = _rigid_scene(gravity=[0.0, 0.0])
    scene.add_body(ps.Box(center=(0.5, 0.5), size=(0.1, 0.1)), ps.Rigid(density=1.0))
    scene.add_tool(ps.SphereTool(position=(0.39, 0.5), radius=0.04))
    scene.build(max_steps=40)
    x0 = scene.initial_state()["mpm.x"]
    actions = np.zeros((30, scene.action_dim))
    actions[:, 0] = 0.5  # the tool moves right at 0.5 m/s
    out = scene.forward(actions, requires_grad=False, observe=["mpm.x"])
    for xs in out["mpm.x"][1:]:
        assert np.abs(_pairwise(xs) - _pairwise(x0)).max() < 1e-12
    d = scene.particle_positions() - x0
    # every particle moved right by (nearly) the same amount: a translation, hardly a turn
    assert d[:, 0].min() > 0.03
    assert np.ptp(d[:, 0]) < 0.1 * d[:, 0].mean()


def test_floating_bodies_float_at_archimedes_depth():
    """Bodies of density 0.3, 0.5 and 0.7 float in water (density 1) submerged by their density
    ratio (Archimedes); one started a quarter of its height too deep rises towards it; one of
    density 2 sinks. Every body keeps its shape to round-off.

    10 x 8 cm bodies (6 x 5 cells at dx = 1/64) start at rest in a 20 cm deep tank whose fluid
    fills the space around them; the fraction of each body below the free surface (the top
    fluid particles away from the bodies and walls, plus half a spacing) is averaged over
    1.0-1.5 s (the surface still rocks by a few mm). Tolerance: 1.5 cells of depth, 1.5 dx /
    height = 0.29 of the fraction: the MPM free surface and the pressure near it are spread
    over the quadratic B-spline's reach, 1.5 cells (elastic bodies of the same densities, coupled
    by their stress with no projection, float as deep: 0.515, 0.603, 0.786). Measured (f64):
    0.528, 0.598, 0.776, the offset body 0.675 (still rising), the heavy one sank 6 cm in
    1.5 s. Before the grid-level coupling the bodies floated as deep in this tank but the fluid
    seeped into them (the surface fell 1.5 cm), and a 0.4 body dropped in floated 0.66-0.74
    deep."""
    scene = ps.Scene(dim=2, grid_res=64, substeps_per_step=20)
    lo, hi = scene.floor, 1.0 - 3 * scene.dx
    depth, width, height = 0.2, 0.1, 0.08
    surface0 = lo + depth
    water = ps.Fluid(bulk_modulus=400.0, viscosity=0.02)
    # (density, initial submerged fraction)
    cases = ((0.3, 0.3), (0.5, 0.5), (0.7, 0.7), (0.5, 0.75), (2.0, 0.9))
    centres = lo + (np.arange(len(cases)) + 0.5) * (hi - lo) / len(cases)
    bodies, edges = [], [lo]
    for x, (rho, f0) in zip(centres, cases, strict=True):
        bottom = surface0 - f0 * height
        bodies.append(ps.Rigid(density=rho))
        scene.add_body(ps.Box(center=(x, bottom + height / 2), size=(width, height)), bodies[-1])
        scene.add_body(ps.Box(center=(x, (lo + bottom) / 2), size=(width, bottom - lo)), water)
        edges += [x - width / 2, x + width / 2]
    edges.append(hi)
    for a, b in zip(edges[0::2], edges[1::2], strict=True):
        scene.add_body(ps.Box(center=((a + b) / 2, lo + depth / 2), size=(b - a, depth)), water)
    scene.build(max_steps=100)
    mat = scene.particle_materials()
    rows = [scene.materials.index(b) for b in bodies]
    x0 = scene.initial_state()["mpm.x"]
    steps = int(round(0.1 / (scene.dt * 20)))
    half = scene.spacing / 2
    fractions = []
    for k in range(15):
        scene.forward(np.zeros((steps, 0)), requires_grad=False)
        x = scene.particle_positions()
        fluid = x[mat == scene.materials.index(water)]
        away = (fluid[:, 0] > lo + 0.05) & (fluid[:, 0] < hi - 0.05)
        for c in centres:
            away &= np.abs(fluid[:, 0] - c) > width / 2 + 0.02
        surface = fluid[away, 1].max() + half
        frac = []
        for r in rows:
            body = x[mat == r]
            assert np.abs(_pairwise(body) - _pairwise(x0[mat == r])).max() < 1e-12
            bottom, top = body[:, 1].min() - half, body[:, 1].max() + half
            frac.append((surface - bottom) / (top - bottom))
        if k >= 10:
            fractions.append(frac)
    mean = np.mean(fractions, axis=0)
    print("submerged fractions", np.round(mean, 3))
    tol = 1.5 * scene.dx / height
    for (rho, _), f in zip(cases[:3], mean[:3], strict=True):
        assert abs(f - rho) < tol, (rho, f)
    assert fractions[-1][3] < 0.7 and abs(mean[3] - 0.5) < tol  # rose from 0.75
    assert fractions[-1][4] > 1.5, "the heavy body did not sink"  # its top 4 cm under the surface


def test_rigid_errors():
    scene = _rigid_scene()
    scene.add_body(ps.Box(center=(0.5, 0.5), size=(0.01, 0.01)), ps.Rigid())  # one particle
    with pytest.raises(ValueError, match="needs at least 3"):
        scene.build(max_steps=1)
    scene = _rigid_scene()
    scene.add_body(ps.Box(center=(0.5, 0.5), size=(0.2, 0.005)), ps.Rigid())  # one row
    with pytest.raises(ValueError, match="on one line"):
        scene.build(max_steps=1)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="density"):
            ps.Rigid(density=bad)
    # two equal-valued instances are two bodies (two material rows)
    scene = _rigid_scene()
    scene.add_body(ps.Box(center=(0.3, 0.5), size=(0.1, 0.1)), ps.Rigid(density=2.0))
    scene.add_body(ps.Box(center=(0.7, 0.5), size=(0.1, 0.1)), ps.Rigid(density=2.0))
    assert len(scene.materials) == 2
    scene.build(max_steps=1)
    with pytest.raises(ValueError, match="density"):
        scene.set_material_param(0, "density", 0.0)


def _grad_scene(dim):
    """A rigid body thrown into an elastic block, pushed by a tool: the elastic neighbour makes
    the loss depend on the rigid density (a rigid body's own motion is mass-independent).
    Generic kernels (``specialize=False``) and < 256 particles: the layout of
    conftest.small_scene, whose forward and reverse kernels the gradient tests of
    tests/test_gradients.py and tests/test_checkpoint.py compile (shared from the pool)."""
    gc.collect()  # a previous scene of the layout is collected: its engine is free for reuse
    res = 32 if dim == 2 else 16
    scene = ps.Scene(dim=dim, grid_res=res, dt=5e-4, substeps_per_step=4, checkpoint_every=8, specialize=False)
    if dim == 2:
        scene.add_body(ps.Box(center=(0.4, 0.3), size=(0.12, 0.1)), ps.Rigid(density=2.0), velocity=[0.8, 0.3],
                       jitter=0.2, seed=2)
        scene.add_body(ps.Box(center=(0.6, 0.3), size=(0.12, 0.14)), ps.Elastic(E=2e3, nu=0.3), velocity=[-0.3, 0])
        scene.add_tool(ps.SphereTool(position=(0.4, 0.42), radius=0.04, softness=50.0, friction=0.4))
    else:
        # 125 + 125 particles; the blocks' facing sides 3 cm apart and the rigid top 3 cm under
        # the sphere, as in the 216 + 216 particle version this replaced
        scene.add_body(ps.Box(center=(0.4, 0.365, 0.5), size=(0.15, 0.15, 0.15)), ps.Rigid(density=2.0),
                       velocity=[0.8, 0.3, 0.1], jitter=0.2, seed=2)
        scene.add_body(ps.Box(center=(0.58, 0.365, 0.5), size=(0.15, 0.15, 0.15)), ps.Fluid(bulk_modulus=300.0),
                       velocity=[-0.3, 0, 0])
        scene.add_tool(ps.SphereTool(position=(0.4, 0.52, 0.5), radius=0.05, softness=50.0, friction=0.4))
    scene.build(max_steps=8)
    assert scene.n_particles <= 256, scene.n_particles  # the shared layout's capacity
    return scene


@pytest.mark.parametrize("dim", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_gradients_match_finite_differences(dim):
    """Loss on the rigid body's final positions, 4 steps x 4 substeps (16 projections):
    d/d tool velocities, d/d initial velocities (rigid and neighbour particles) and d/d the
    rigid density, against central differences. (3D is marked slow: ~60 s of CPU cold, mostly
    compiling the 3D adjoints of the rigid projection; the MPM ones are shared, _grad_scene.)"""
    scene = _grad_scene(dim)
    rng = np.random.default_rng(dim)
    steps = 4
    actions = rng.normal(scale=0.3, size=(steps, scene.action_dim))
    actions[:, 1] -= 1.0  # the tool comes down onto the rigid body
    n, nr = scene.n_particles, scene.bodies[0].count
    wx = np.zeros((n, dim))
    wx[:nr] = rng.normal(size=(nr, dim))
    weights = (wx, np.zeros((n, dim)))
    _, g = loss_and_grad(scene, actions, weights)

    entries = [(t, j) for t in (0, steps - 1) for j in range(dim)]
    fd = action_entries_fd(scene, actions, weights, entries, H)
    assert_close(fd, [g.actions[t, j] for t, j in entries], f"{dim}D rigid d/d tool velocity")

    v0 = scene.initial_state()["mpm.v"]
    rows = (0, nr // 2, nr - 1, nr + 3)
    fd = initial_entries_fd(scene, actions, weights, "v0", v0, rows, H)
    assert_close(fd, [g.v0[i, d] for i in rows for d in range(dim)], f"{dim}D rigid d/d v0")

    def density(dh):
        scene.set_material_param(0, "density", 2.0 + dh)
        out = loss_only(scene, actions, weights)
        scene.set_material_param(0, "density", 2.0)
        return out
    fd = central_difference(density, 2.0 * H)
    assert abs(fd) > 1e-8, "the loss does not depend on the rigid density; scene too gentle"
    assert_close([fd], [g.params["mpm.density"][0]], f"{dim}D rigid d/d density")


@pytest.mark.parametrize("boundary", ["friction", "sticky"])
def test_gradients_through_wall_contact(boundary):
    """A spinning rigid block thrown into the floor and the left wall (both in contact from
    the second substep on: normal impulses at the contact centroids, sliding friction bounded
    by mu times the normal impulse, or sticky), 4 steps x 4 substeps: reverse mode vs central
    differences w.r.t. initial velocities and positions. Measured: 1e-11 (v0), 5e-9 (x0)
    relative."""
    # the specialized kernels (rigid only, no tools; the scenes of _grad_scene use the generic ones)
    scene = ps.Scene(dim=2, grid_res=32, dt=5e-4, substeps_per_step=4, checkpoint_every=8, boundary=boundary,
                     wall_friction=0.3)
    lo = scene.floor
    scene.add_body(ps.Box(center=(lo + 0.058, lo + 0.038), size=(0.12, 0.08)), ps.Rigid(density=2.0),
                   velocity=[-1.5, -2.0], jitter=0.2, seed=2)
    scene.build(max_steps=4)
    x0, v0 = scene.initial_state()["mpm.x"], scene.initial_state()["mpm.v"].copy()
    v0 = _spin_velocity(x0, v0.mean(axis=0), 3.0)
    scene.set_initial_state(v=v0)
    rng = np.random.default_rng(0)
    n = scene.n_particles
    weights = (rng.normal(size=(n, 2)), 0.01 * rng.normal(size=(n, 2)))
    actions = np.zeros((4, 0))
    _, g = loss_and_grad(scene, actions, weights)
    low = scene.particle_positions().min(axis=0)
    assert (low < lo + 0.5 * scene.spacing).all(), "the block did not reach both walls"

    rows = (0, n // 2, n - 1)
    fd = initial_entries_fd(scene, actions, weights, "v0", v0, rows, H)
    assert_close(fd, [g.v0[i, d] for i in rows for d in range(2)], f"{boundary} wall contact d/d v0")
    rows = (0, n // 3)
    # a position step of 0.01 H = 1e-6 (well inside a cell)
    fd = initial_entries_fd(scene, actions, weights, "x0", x0, rows, H, step=0.01)
    assert_close(fd, [g.x0[i, d] for i in rows for d in range(2)], f"{boundary} wall contact d/d x0")

"""MPM material against FEM gels through the coupler (physim.parts.coupler).

One small layout is shared by every test (kernels compile once): a 64^3 grid, dt = 1e-4 s,
a flat pad (8 x 8 x 2 cm, 1 cm cells, 243 nodes, back pinned, E = 5e4 Pa) with its top at
y = 0.21 m, and a 3 cm elastic cube (64 particles, spacing 1/128 m) just above it. The
contact reaches FR = half the spacing; its pressure law is the gel's contact stiffness
(default 5 E / h = 6.8e7 Pa/m here) times the overlap, on A_p = spacing^2 per particle.
"""

import gc

import numpy as np
import pytest
from gradcheck import central_difference

import physim as ps

DT = 1e-4
RES = 64
SPACING = 0.5 / RES
FR = 0.5 * SPACING  # the default MPM <-> FEM contact reach
TOP = 0.21


def coupled_scene(velocity=(0.0, 0.0, 0.0), gravity=(0.0, -9.8, 0.0), gap=FR, **couple):
    gc.collect()
    scene = ps.Scene(dim=3, grid_res=RES, dt=DT, substeps_per_step=2, gravity=gravity, checkpoint_every=4)
    mesh = ps.flat_pad(center=(0.5, 0.2, 0.5), size=(0.08, 0.08), thickness=0.02, cell=0.01)
    scene.add_fem(ps.FEMBody(mesh, E=5e4, nu=0.4, density=1000.0, alpha=5.0))
    # the lowest particle layer half a spacing above the box's bottom: ``gap`` above the gel
    scene.add_body(ps.Box(center=(0.5, TOP + gap - 0.5 * SPACING + 0.015, 0.5), size=(0.03, 0.03, 0.03)),
                   ps.Elastic(E=2e4, nu=0.3, density=1000.0), velocity=velocity)
    if couple:
        scene.couple(**couple)
    scene.build(max_steps=8)
    return scene


@pytest.fixture
def scene():
    # per test, not per module: a module-scoped scene would hold the layout's engine while the
    # later tests build their own scenes, which would compile a second engine of the layout
    return coupled_scene()


def _pair_forces(scene, x):
    """Put the particles at ``x`` (at rest) and evaluate the coupler once at slot 0: (force on
    each particle, reaction on each gel node)."""
    n = scene.n_particles
    scene.reset({"mpm.x": x, "mpm.v": np.zeros_like(x)})
    cp, fem = scene.partset.coupler, scene.partset.fem
    cp.build_face_pairs(0)
    cp.forces(0)
    fem.copy_in(0)
    fem.clear_forces(1)
    cp.face_forces(0, 0, 1)
    return cp.mpm.f_ext.to_numpy()[:n].astype(np.float64), fem.f_ext.to_numpy()[0, : fem.rows[None]].astype(
        np.float64)


def _kc(scene):
    return scene.get_param("fem.contact_stiffness")


def test_no_leak_at_triangle_edges_and_action_equals_reaction(scene):
    """Particles at one height (FR / 2) above the pad's flat top, on a line that crosses its
    triangles' interiors, edges and vertices (and along a cell's diagonal edge): each is
    pushed straight up by the same force A_p kc (FR - FR / 2) (the closest-point distance is
    FR / 2 whichever triangle wins), to 1e-9 relative (round-off of the closest-point
    arithmetic at coordinates ~0.5 m); none is left out where two triangles meet
    (DiffTactile's projection gives nothing there). The reactions on the gel's nodes sum to
    minus the particles' forces to round-off (Newton's third law: barycentric weights sum to
    one). Out of reach (g > FR): no force at all."""
    assert scene.partset.coupler.fem_radius == pytest.approx(FR, rel=1e-12)
    n = scene.n_particles
    u = np.linspace(0.0, 1.0, n)
    x = np.stack([0.47 + 0.06 * u, np.full(n, TOP + 0.5 * FR), 0.5 + 0.013 * np.sin(7 * u)], axis=1)
    x[::4, 2] = 0.5  # on the pad's lattice line: vertices and edges
    x[1::4, 0] = 0.49 + 0.01 * u[1::4]  # along a cell's diagonal edge (x = z within a cell)
    x[1::4, 2] = 0.49 + 0.01 * u[1::4]
    f, react = _pair_forces(scene, x)
    expect = SPACING**2 * _kc(scene) * 0.5 * FR
    assert np.allclose(f[:, 1], expect, rtol=1e-9, atol=0), (f[:, 1].min(), f[:, 1].max(), expect)
    assert np.abs(f[:, [0, 2]]).max() < 1e-9 * expect
    assert np.allclose(react.sum(axis=0), -f.sum(axis=0), rtol=0, atol=1e-12 * np.abs(f).sum())
    x[:, 1] = TOP + 1.01 * FR
    f, react = _pair_forces(scene, x)
    assert np.abs(f).max() == 0 and np.abs(react).max() == 0


def test_force_grows_linearly_with_overlap_inside_the_gel_too(scene):
    """The contact pressure is kc (FR - g) for the signed gap g: 0 at g = FR, kc FR at the
    surface, continuing linearly for a particle pushed behind it (g < 0, down to -0.99 FR),
    always along the outward normal (+y) of the top face. Exact to round-off."""
    n = scene.n_particles
    gaps = np.linspace(-0.99 * FR, 0.99 * FR, n)
    x = np.stack([np.full(n, 0.503), TOP + gaps, np.full(n, 0.497)], axis=1)
    f, _ = _pair_forces(scene, x)
    assert np.allclose(f[:, 1], SPACING**2 * _kc(scene) * (FR - gaps), rtol=1e-9, atol=0)


def test_block_dropped_on_the_gel_is_stopped_and_dents_it():
    """Two-way: the cube falling at 0.5 m/s onto the pad is stopped by it (its lowest particle
    never gets below the gel's surface minus FR: it does not pass through; measured: it
    stops 3.5 mm above within 2 substeps) and the gel feels it (its top dents under the
    impact by > 0.2 mm; measured 1.1 mm). In contact the MPM side receives exactly minus the
    force on the gel (sum of mpm.f_ext = -sum of fem.f_contact, round-off)."""
    scene = coupled_scene(velocity=(0.0, -0.5, 0.0), gap=0.9 * FR)
    n = scene.n_particles
    # first substep in contact: action = reaction
    scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)
    f_part = scene.partset.mpm.f_ext.to_numpy()[:n].astype(np.float64).sum(axis=0)
    f_gel = scene.get_state()["fem.f_contact"].sum(axis=0)
    assert f_part[1] > 1.0  # N: the gel pushes the cube up
    assert np.allclose(f_part, -f_gel, rtol=0, atol=1e-10 * np.abs(f_part).max())
    scene.reset()
    runs = [scene.forward(np.zeros((8, scene.action_dim)), requires_grad=False,
                          observe=["mpm.x", "fem.x", "fem.f_contact"]) for _ in range(6)]
    obs = {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}
    lowest = obs["mpm.x"][:, :n, 1].min(axis=1)
    top_nodes = np.isclose(obs["fem.x"][0, :, 1], TOP)
    gel_top = obs["fem.x"][:, top_nodes, 1]
    assert lowest.min() > TOP - FR, lowest
    assert gel_top.min() < TOP - 2e-4, gel_top.min()


def _loss(state, w):
    return sum(float((w[k] * state[k]).sum()) for k in w)


def test_coupled_gradients_match_finite_differences():
    """d loss / d (fem.contact_stiffness, fem.contact_damping, coupler.fem_friction, fem.E, the cube's initial
    velocity), loss linear in the final mpm.x, fem.x and fem.f_contact after 3 steps (6
    substeps) of the cube sliding (0.2 m/s sideways) into the gel (0.3 m/s down) starting
    in contact range. Central differences in f64 (h = 1e-3 relative for parameters, 1e-5
    m/s for the velocity; the friction entry is small, 3.5e-7, as the contact lasts two
    substeps: at h = 1e-5 its FD is round-off (-3.470e-7), at 1e-2..1e-4 it converges to
    -3.4797e-7); tolerance 1e-3 relative where max(|fd|, |ad|) > 1e-4 of the largest."""
    from gradcheck import assert_close

    scene = coupled_scene(velocity=(0.2, -0.3, 0.0), gap=0.5 * FR)
    scene.set_param("fem.contact_damping", 1e3)
    rng = np.random.default_rng(3)
    init = scene.initial_state()
    w = {k: rng.normal(size=init[k].shape) for k in ("mpm.x", "fem.x")}
    w["fem.f_contact"] = 1e-2 * rng.normal(size=init["fem.f_contact"].shape)
    actions = np.zeros((3, scene.action_dim))
    scene.reset()
    series = scene.forward(actions, observe=["fem.f_contact"])
    assert np.abs(series["fem.f_contact"]).max() > 0  # the cube touches the gel
    g = scene.backward(w)

    def run(over=None):
        scene.reset(over)
        scene.forward(actions, requires_grad=False)
        return _loss(scene.get_state(), w)

    for name in ("fem.contact_stiffness", "fem.contact_damping", "coupler.fem_friction", "fem.E"):
        v = scene.get_param(name)
        h = 1e-3 * v

        def f(e, name=name, v=v):
            scene.set_param(name, v + e)
            return run()
        num = central_difference(f, h)
        scene.set_param(name, v)
        assert_close(num, g.params[name], name)
    v0 = init["mpm.v"]
    d = rng.normal(size=v0.shape)
    num = central_difference(lambda e: run({"mpm.v": v0 + e * d}), 1e-5)
    assert_close(num, (g.initial["mpm.v"] * d).sum(), "initial mpm.v")


def test_material_starting_inside_the_gel_is_refused():
    """A cube whose lowest layer starts 2 mm inside the pad is refused at build, naming the
    particle and the body; a bad fem_radius is refused by name."""
    with pytest.raises(ValueError, match=r"MPM particle \d+ at .* starts inside FEM body 0 \(16 particles"):
        coupled_scene(gap=-2e-3)
    with pytest.raises(ValueError, match=r"fem_radius must be in \(0, 1/3\] m, got -0.001"):
        coupled_scene(fem_radius=-1e-3)

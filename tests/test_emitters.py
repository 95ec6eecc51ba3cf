"""Particle emitters (physim.parts.emitter): the injected mass and momentum laws, the ballistic
free jet, gradients against central finite differences (f64) across checkpoint chunks,
checkpointed = unchunked reverse mode, state restore, bad inputs, the renderer hiding the
particles not emitted yet.

2D scenes on a 32-cell grid (dx = 1/32, particle spacing dx/2, dt = 5e-4 s, 5 substeps a step),
a Fluid jet from a small sphere nozzle; one small 3D forward check."""

import math

import numpy as np
import pytest
from gradcheck import actions_fd, assert_close, central_difference

import physim as ps

DT, SUB, STEPS = 5e-4, 5, 8
G = -9.8


def jet(*, gravity=(0.0, 0.0), speed=1.0, rate=None, radius=None, direction=(1.0, 0.5), start=0.0, stop=math.inf,
        capacity=None, pos=(0.25, 0.6), checkpoint_every=16, softness=0.0, dim=2, max_steps=STEPS, dt=DT,
        build=True):
    """A jet of Fluid from a sphere nozzle (radius 0.02) at ``pos``: (scene, emitter)."""
    res = 32 if dim == 2 else 16
    scene = ps.Scene(dim=dim, grid_res=res, dt=dt, substeps_per_step=SUB, gravity=gravity,
                     checkpoint_every=checkpoint_every, boundary="slip")
    noz = ps.SphereTool(position=pos, radius=0.02, softness=softness)
    scene.add_tool(noz)
    em = ps.Emitter(ps.Fluid(bulk_modulus=200.0, density=1000.0), noz, speed=speed, rate=rate, radius=radius,
                    direction=direction, start=start, stop=stop, capacity=capacity)
    scene.add_emitter(em)
    if build:
        scene.build(max_steps=max_steps)
    return scene, em


def em_active(scene, em, t):
    """The rows emitted by time t (the bodies' rows first; here none): the first N(t) reserve rows."""
    n = int((np.arange(scene.n_particles) / em.particle_rate + em.start < t).sum())
    return np.arange(scene.n_particles) < n


def particle_mass(scene) -> float:
    return 1000.0 * scene.spacing**scene.dim


# ------------------------------------------------------------------------------------ laws
def test_mass_injected_equals_rate_times_time():
    """N(t) = #{k : start + k / rate < t} particles are in the scene at time t: rate (t - start) <=
    N(t) < rate (t - start) + 1 inside the emission window, 0 before it, ceil((stop - start) rate)
    after it; the mass is N(t) times the particle mass (density x spacing^dim)."""
    rate, start, stop = 3000.0, 0.0031, 0.0142  # (off the substep and particle grids: no ties)
    scene, em = jet(rate=rate, start=start, stop=stop)
    m = particle_mass(scene)
    assert scene.total_mass() == 0.0 and not scene.particle_active().any()
    for step in range(STEPS):
        scene.step(np.zeros(3))
        t = (step + 1) * SUB * DT
        n = scene.particle_active().sum()
        assert scene.total_mass() == pytest.approx(n * m, rel=1e-12)
        if t <= start:
            assert n == 0, (t, n)
        elif t < stop:
            assert rate * (t - start) <= n < rate * (t - start) + 1, (t, n)
        else:
            assert n == (start + np.arange(100) / rate < stop).sum() == math.ceil((stop - start) * rate), (t, n)
    assert n > 20


def test_momentum_injected_is_mass_times_jet_velocity():
    """Zero gravity, a nozzle moving at (0.3, -0.2) m/s turned by 0.4 rad: every particle leaves at
    speed * R(0.4) axis + the nozzle's velocity and MLS-MPM conserves linear momentum, so before the
    jet reaches a wall the momentum is the injected mass times that velocity (to round-off)."""
    scene, em = jet(speed=1.5)
    scene.set_initial_state({"tools.rot": np.array([[0.4, 0.0, 0.0, 0.0]])})
    v_tool = np.array([0.3, -0.2])
    axis = np.array([1.0, 0.5]) / np.linalg.norm([1.0, 0.5])
    c, s = math.cos(0.4), math.sin(0.4)
    v_jet = 1.5 * np.array([[c, -s], [s, c]]) @ axis + v_tool
    for _ in range(STEPS):
        scene.step(np.array([v_tool[0], v_tool[1], 0.0]))
        M = scene.total_mass()
        np.testing.assert_allclose(scene.momentum(), M * v_jet, rtol=1e-11, atol=1e-14)
    x = scene.particle_positions()[scene.particle_active()]
    assert M > 0 and x[:, 0].max() < 1 - 3 / 32  # never reached the wall


def test_free_jet_follows_the_ballistic_parabola():
    """Under gravity, a sparse stream (one particle across, 4 dx apart: no two share a grid node,
    nothing else to touch) follows x(t) = x_e + v (t - t_k) + g (t - t_k)^2 / 2 from its emission
    (t_k = k / rate at x_e). Symplectic Euler (v += g dt; x += v dt) and the emission lag
    (particles appear at the end of their substep, having flown the lag without gravity) differ
    from the parabola by at most g (dt tau + dt^2) (tau = t - t_k): the tolerance."""
    speed, direction, dt, steps = 3.0, np.array([1.0, 1.0]) / math.sqrt(2.0), 2e-3, 30
    rate = speed / (4 / 32)
    scene, em = jet(gravity=(0.0, G), speed=speed, rate=rate, radius=0.005, direction=direction, pos=(0.15, 0.3),
                    dt=dt, max_steps=steps)
    exit0 = em.exit_points(np.array([0.15, 0.3]), [0.0, 0, 0, 0])[0]
    scene.forward(np.zeros((steps, 3)), requires_grad=False)
    t = steps * SUB * dt
    active = scene.particle_active()
    x = scene.particle_positions()[active]
    tk = np.arange(len(x)) / rate
    tau = t - tk
    g = np.array([0.0, G])
    want = exit0 + speed * direction * tau[:, None] + 0.5 * g * tau[:, None] ** 2
    err = np.linalg.norm(x - want, axis=1)
    bound = abs(G) * (dt * tau + dt**2)
    assert len(x) >= 6 and (err <= bound + 1e-12).all(), np.c_[err, bound]
    # the bound is not loose enough to hide a missing gravity: the drop is 10x the bound
    assert (0.5 * abs(G) * tau[:2] ** 2 > 10 * bound[:2]).all()


def test_dense_jet_centre_of_mass_is_ballistic():
    """A dense jet (its particles press on each other): internal forces cancel, so the centre of mass
    of the emitted particles is the mean of their ballistic paths (the parabola of each from its
    emission, within the g (dt tau + dt^2) of the scheme) at every step."""
    dt, steps = 2e-3, 30
    scene, em = jet(gravity=(0.0, G), speed=1.0, direction=(1.0, 0.2), pos=(0.2, 0.7), dt=dt, max_steps=steps)
    exits = em.exit_points(np.array([0.2, 0.7]), [0.0, 0, 0, 0])
    d = np.array([1.0, 0.2]) / np.linalg.norm([1.0, 0.2])
    g = np.array([0.0, G])
    out = scene.forward(np.zeros((steps, 3)), requires_grad=False, observe=["mpm.x"])
    for step in range(1, steps + 1):
        t = step * SUB * dt
        x = out["mpm.x"][step][em_active(scene, em, t)]
        k = np.arange(len(x))
        tau = t - k / em.particle_rate
        paths = exits[k % em.n_cross] + d * tau[:, None] + 0.5 * g * tau[:, None] ** 2
        bound = abs(G) * (dt * tau + dt**2).mean()
        assert np.linalg.norm(x.mean(axis=0) - paths.mean(axis=0)) <= bound + 1e-12, step
    assert len(x) > 100 and x[:, 1].min() > 0.2


def test_3d_jet_mass_and_momentum():
    """3D: the nozzle's disk of particles, the injected count within one particle of rate x time and
    the momentum the injected mass times the jet velocity (zero gravity)."""
    scene, em = jet(dim=3, gravity=(0.0, 0.0, 0.0), pos=(0.3, 0.6, 0.5), direction=(1.0, 0.0, 0.0), speed=1.0,
                    radius=0.05, max_steps=4)
    assert em.n_cross > 4
    for step in range(4):
        scene.step(np.zeros(6))
        t = (step + 1) * SUB * DT
        n = scene.particle_active().sum()
        assert em.particle_rate * t <= n < em.particle_rate * t + 1
        np.testing.assert_allclose(scene.momentum(), scene.total_mass() * np.array([1.0, 0.0, 0.0]), rtol=1e-11,
                                   atol=1e-14)


# ------------------------------------------------------------------------------- gradients
@pytest.fixture(scope="module")
def fd_scene():
    """A 2D jet under gravity from a turning, moving nozzle; 3 steps = 15 substeps in chunks of 8
    (the slot ring holds 16), so the emission runs across a checkpoint boundary."""
    scene, em = jet(gravity=(0.0, G), speed=2.0, direction=(1.0, -0.3), pos=(0.3, 0.6), checkpoint_every=8,
                    max_steps=3, dt=2e-3)
    return scene


def _actions():
    return np.array([[0.2, -0.1, 0.5], [0.1, 0.3, -0.4], [-0.2, 0.1, 0.8]])


def _weights(scene, seed=3):
    rng = np.random.default_rng(seed)
    scene.reset()
    scene.forward(_actions(), requires_grad=False)
    active = scene.particle_active()[:, None]
    n = scene.n_particles
    return rng.normal(size=(n, 2)) * active, rng.normal(size=(n, 2)) * active


def _loss(scene, weights, actions=None, state=None):
    wx, wv = weights
    scene.reset(state)
    scene.forward(_actions() if actions is None else actions, requires_grad=False)
    s = scene.get_state()
    return float((wx * s["mpm.x"]).sum() + 0.01 * (wv * s["mpm.v"]).sum())


@pytest.fixture(scope="module")
def fd_grads(fd_scene):
    weights = _weights(fd_scene)
    fd_scene.reset()
    fd_scene.forward(_actions())
    assert fd_scene.particle_active().sum() > 20
    g = fd_scene.backward(grad_x=weights[0], grad_v=0.01 * weights[1])
    return weights, g


def test_gradient_jet_speed(fd_scene, fd_grads):
    weights, g = fd_grads
    u0 = fd_scene.get_param("emitter.speed")

    def f(e):
        fd_scene.set_param("emitter.speed", u0 + e)
        return _loss(fd_scene, weights)

    try:
        fd = central_difference(f, 1e-6)
    finally:
        fd_scene.set_param("emitter.speed", u0)
    assert_close([fd], g.params["emitter.speed"], "d loss / d emitter.speed")


def test_gradient_nozzle_initial_pose(fd_scene, fd_grads):
    weights, g = fd_grads
    init = fd_scene.initial_state()
    fd = []
    for name, idx in (("tools.pos", (0, 0)), ("tools.pos", (0, 1)), ("tools.rot", (0, 0))):
        def f(e, name=name, idx=idx):
            arr = init[name].copy()
            arr[idx] += e
            return _loss(fd_scene, weights, state={name: arr})
        fd.append(central_difference(f, 1e-6))
    ad = [g.initial["tools.pos"][0, 0], g.initial["tools.pos"][0, 1], g.initial["tools.rot"][0, 0]]
    assert_close(fd, ad, "d loss / d nozzle pose (x, y, angle)")


def test_gradient_nozzle_actions(fd_scene, fd_grads):
    weights, g = fd_grads
    entries = [(0, 0), (0, 2), (1, 1), (2, 2)]
    fd = actions_fd(lambda a: _loss(fd_scene, weights, actions=a), _actions(), entries, 1e-6)
    assert_close(fd, [g.actions[t, j] for t, j in entries], "d loss / d nozzle actions")


def test_checkpointed_backward_equals_unchunked(fd_scene, fd_grads):
    """Chunks of 4 (4 chunks, the emission replayed in each) and one chunk of 16 (no checkpoint)
    give the gradients of chunks of 8 to round-off."""
    weights, g8 = fd_grads
    out = []
    for k in (4, 16):
        fd_scene.set_checkpoint_every(k)
        fd_scene.reset()
        fd_scene.forward(_actions())
        out.append(fd_scene.backward(grad_x=weights[0], grad_v=0.01 * weights[1]))
    fd_scene.set_checkpoint_every(8)
    for g in out:
        np.testing.assert_allclose(g.actions, g8.actions, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(g.params["emitter.speed"], g8.params["emitter.speed"], rtol=1e-9)
        np.testing.assert_allclose(g.initial["tools.pos"], g8.initial["tools.pos"], rtol=1e-9, atol=1e-12)


def test_state_restores_which_particles_are_active(fd_scene):
    """set_state of a mid-rollout state (emitter.clock with it) continues exactly as the rollout did."""
    fd_scene.reset()
    fd_scene.forward(_actions()[:1], requires_grad=False)
    mid = fd_scene.get_state()
    n_mid = fd_scene.particle_active().sum()
    fd_scene.forward(_actions()[1:], requires_grad=False)
    final, n_final = fd_scene.get_state(), fd_scene.particle_active().sum()
    fd_scene.set_state(mid)
    assert fd_scene.particle_active().sum() == n_mid < n_final
    fd_scene.forward(_actions()[1:], requires_grad=False)
    assert fd_scene.particle_active().sum() == n_final
    for k, v in final.items():
        np.testing.assert_array_equal(fd_scene.get_state()[k], v, err_msg=k)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(speed=-1.0), r"speed.*-1"),
    (dict(rate=-5.0), r"rate.*-5"),
    (dict(rate=0.0), r"rate.*0"),
    (dict(radius=0.0), r"radius"),
    (dict(capacity=0), r"capacity.*0"),
    (dict(capacity=2.5), r"capacity.*2.5"),
    (dict(start=-0.1), r"start.*-0.1"),
    (dict(start=0.2, stop=0.1), r"stop.*0.1"),
    (dict(direction=(0.0, 0.0)), r"direction"),
])
def test_bad_emitter_arguments(kwargs, match):
    noz = ps.SphereTool(position=(0.5, 0.5), radius=0.02)
    with pytest.raises(ValueError, match=match):
        ps.Emitter(ps.Fluid(), noz, **kwargs)


def test_bad_material_and_nozzle():
    noz = ps.SphereTool(position=(0.5, 0.5), radius=0.02)
    with pytest.raises(TypeError, match="material"):
        ps.Emitter("water", noz)
    with pytest.raises(ValueError, match="rigid"):
        ps.Emitter(ps.Rigid(), noz)
    with pytest.raises(TypeError, match="nozzle"):
        ps.Emitter(ps.Fluid(), (0.5, 0.5))
    scene = ps.Scene(dim=2, grid_res=32)
    with pytest.raises(ValueError, match="not a tool of this scene"):
        scene.add_emitter(ps.Emitter(ps.Fluid(), noz))
    with pytest.raises(ValueError, match="nozzle index 3"):
        scene.add_emitter(ps.Emitter(ps.Fluid(), 3))
    scene.add_tool(noz)
    with pytest.raises(ValueError, match="direction must have 2 values"):
        scene.add_emitter(ps.Emitter(ps.Fluid(), noz, direction=(1.0, 0.0, 0.0)))
    edge = ps.SphereTool(position=(0.5, 0.08), radius=0.02)
    scene.add_tool(edge)
    with pytest.raises(ValueError, match=r"nozzle exit at .* outside the simulation domain"):
        scene.add_emitter(ps.Emitter(ps.Fluid(), edge))  # pointing down, into the floor's wall band
    with pytest.raises(TypeError, match="Emitter"):
        scene.add_emitter(noz)


def test_capacity_exceeded_says_when_and_how_many():
    scene, em = jet(rate=2000.0, capacity=10)
    with pytest.raises(ps.SimulationError, match=r"emitter 0 ran out of capacity at t=0.005 s \(substep 10\): all "
                                                 r"10 .* needs \d+ by t="):
        scene.forward(np.zeros((STEPS, 3)), requires_grad=False)


def test_nozzle_leaving_the_domain_is_an_error():
    """A nozzle driven out of the domain emits outside it: the error names the emitter and when."""
    scene, em = jet(pos=(0.2, 0.5), direction=(-1.0, 0.0))
    with pytest.raises(ps.SimulationError, match=r"emitter 0 emitted particles outside the simulation domain"):
        scene.forward(np.tile([-12.0, 0.0, 0.0], (STEPS, 1)), requires_grad=False)


def test_bad_clock_state(fd_scene):
    fd_scene.reset()
    state = fd_scene.get_state()
    state["emitter.clock"] = np.array([2.5])
    with pytest.raises(ValueError, match=r"emitter.clock.*2.5"):
        fd_scene.set_state(state)
    fd_scene.reset()


def test_bad_speed_parameter(fd_scene):
    with pytest.raises(ValueError, match=r"emitter.speed.*-2"):
        fd_scene.set_param("emitter.speed", -2.0)
    with pytest.raises(ValueError, match=r"unstable for the emitter part"):
        fd_scene.set_param("emitter.speed", 500.0)


# ------------------------------------------------------------------------------- rendering
def test_renderer_hides_particles_not_emitted():
    """Before the emission starts nothing of the fluid's color is drawn (the reserve is parked at the
    nozzle); after it, the jet is."""
    pytest.importorskip("pyvista")
    from physim.render import Renderer, material_color

    scene, em = jet(pos=(0.3, 0.6), start=0.01, speed=3.0)
    color = np.array(material_color(em.material)) * 255.0

    def fluid_pixels(renderer):
        renderer.sync()
        img = renderer.frame()[..., :3].astype(np.float64)
        return int((np.abs(img - color).max(axis=2) < 60).sum())

    r = Renderer(scene, off_screen=True, window_size=(160, 120))
    try:
        assert fluid_pixels(r) == 0
        scene.forward(np.zeros((2, 3)), requires_grad=False)  # t = 0.005 s < start: still none
        assert not scene.particle_active().any() and fluid_pixels(r) == 0
        scene.forward(np.zeros((STEPS - 2, 3)), requires_grad=False)
        assert scene.particle_active().sum() > 10 and fluid_pixels(r) > 10
    finally:
        r.close()


# ------------------------------------------------------------------- parked rows and the couplings
def test_parked_particles_feel_and_exert_no_air_drag():
    """A jet into moving air (uniform 0.4 m/s, drag 5): the smoke part's drag must loop over the
    emitted rows only (``mpm.n_particles``). Before the emission starts (t = 0.0051 s) the reserve
    is parked at the nozzle at rest, and the air must receive no force at all (before the fix
    every parked particle pulled on it: |f_air| ~ drag V_p 0.4 per particle). Once particles
    are emitted the air does feel them (so the check is not vacuous)."""
    field = ps.SmokeField(res=16, air_density=1.0, drag=5.0, buoyancy=0.0,
                          velocity=lambda x: np.tile([0.4, 0.0], (len(x), 1)))
    start = 0.0051  # in substep 10 (of 5e-4 s): rows active from substep 11
    scene = ps.Scene(dim=2, grid_res=32, dt=DT, substeps_per_step=SUB, gravity=(0.0, 0.0), checkpoint_every=4 * SUB,
                     boundary="slip")
    noz = ps.SphereTool(position=(0.3, 0.6), radius=0.02)
    scene.add_tool(noz)
    scene.add_emitter(ps.Emitter(ps.Fluid(bulk_modulus=200.0, density=1000.0), noz, speed=2.0, rate=1e4,
                                 direction=(1.0, 0.0), start=start))
    scene.add_smoke(field)
    scene.build(max_steps=4)
    sm, mpm = scene.partset.smoke, scene.partset.mpm
    scene.reset()
    scene.partset.controls.action.fill(0)
    n_sub = 4 * SUB
    force, live = [], []
    for l in range(n_sub):
        scene._substep(l, l // SUB)
        live.append(int(mpm.n_particles[None]))
        force.append(float(np.abs(sm.f_air.to_numpy()).sum()))
    assert scene.n_particles > 40
    before = [f for f, n in zip(force, live, strict=True) if n == 0]
    after = [f for f, n in zip(force, live, strict=True) if n > 0]
    assert len(before) == math.floor(start / DT) + 1 and len(after) > 3, live
    assert max(before) == 0.0, force
    assert min(after) > 0.0, force


def test_parked_particles_do_not_touch_a_mass_spring_cable():
    """A cable of springs hangs across a downward nozzle's exit, where the reserve is parked; no
    gravity, the jet starts at t = 0.0051 s. The coupler must pair the emitted rows only
    (``mpm.n_particles``): before the emission no contact pair exists and the cable stays exactly
    where it was (before the fix the parked particles pushed it). Once the jet is on, it hits the
    cable (pairs form and the cable moves)."""
    start = 0.0051
    scene = ps.Scene(dim=2, grid_res=32, dt=DT, substeps_per_step=SUB, gravity=(0.0, 0.0), checkpoint_every=16,
                     boundary="slip")
    noz = ps.SphereTool(position=(0.3, 0.6), radius=0.02)
    scene.add_tool(noz)
    em = ps.Emitter(ps.Fluid(bulk_modulus=200.0, density=1000.0), noz, speed=2.0, rate=1e4, direction=(0.0, -1.0),
                    start=start)
    scene.add_emitter(em)
    y = 0.6 - 0.02 - 1.5 / 32 - 0.5 / 64  # the nozzle's exit (Emitter's default offset)
    # the cable 0.02 m below it: inside the contact radius (0.031 m), outside the build's overlap check
    scene.add_mass_spring(ps.MassSpring.chain((0.24, y - 0.02), (0.36, y - 0.02), 7, mass=1e-2, stiffness=50.0,
                                              damping=0.01))
    scene.couple(stiffness=300.0, damping=0.05, friction=0.3)
    scene.build(max_steps=4)
    mpm, cp = scene.partset.mpm, scene.partset.coupler
    parked = scene.get_state()["mpm.x"]
    assert np.abs(parked[:, 1] - y).max() < 0.005  # the reserve is parked within reach of the cable
    x0 = scene.get_state()["springs.x"].copy()
    scene.partset.controls.action.fill(0)
    for l in range(math.floor(start / DT) + 1):
        scene._substep(l, l // SUB)
        assert int(mpm.n_particles[None]) == 0
        assert int(cp.n_pairs[None]) == 0, l
    scene.reset()
    scene.forward(np.zeros((4, scene.action_dim)), requires_grad=False)
    assert int(cp.n_pairs[None]) > 0, (int(cp.n_pairs[None]), int(mpm.n_particles[None]))
    assert np.abs(scene.get_state()["springs.x"] - x0).max() > 1e-4

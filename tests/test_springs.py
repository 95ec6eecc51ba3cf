"""The mass-spring part and its two-way coupling with MPM: physics, gradients, bad input.

Scenes are tiny and share two layouts (2D, grid 32, K = 16, max_steps 8, at most 16 nodes and
16 springs): springs alone, and springs + a ~150-particle elastic block + the coupler, so the
kernels of each compile once per session. Scenes are built after ``gc.collect()``: a scene
refers to itself through its tape, and its compiled parts are reused only once it is collected.

Gradients are compared with central finite differences in f64 (conftest's runtime), entry by
entry where max(|fd|, |analytic|) exceeds ``FLOOR`` times the largest entry.
"""

import gc

import numpy as np
import pytest
from gradcheck import chunked_and_full

import physim as ps
from physim import MassSpring

DX = 1.0 / 32
DT = 2e-4
FLOOR = 1e-4
#: the coupled scenes' MPM block, resting 6 mm above the floor (3 cells = 0.094 m)
BLOCK = ps.Box(center=(0.5, 0.16), size=(0.3, 0.12))
#: height of its top particle row (particles sit at spacing dx / 2)
TOP = float(BLOCK.sample(DX / 2)[:, 1].max())


# ---------------------------------------------------------------------------- helpers
def springs_scene(*bodies, gravity=(0.0, 0.0), dt=DT, substeps=4, checkpoint_every=8):
    gc.collect()  # let the previous scene release its compiled parts
    scene = ps.Scene(dim=2, grid_res=32, dt=dt, substeps_per_step=substeps, gravity=gravity,
                     checkpoint_every=checkpoint_every)
    for body in bodies:
        scene.add_mass_spring(body)
    return scene.build(max_steps=8)


def coupled_scene(chain, *, gravity=None, substeps=4, checkpoint_every=8, stiffness=1e3, block=BLOCK):
    gc.collect()
    scene = ps.Scene(dim=2, grid_res=32, dt=DT, substeps_per_step=substeps, gravity=gravity,
                     checkpoint_every=checkpoint_every)
    scene.add_body(block, ps.Elastic(E=1e3, nu=0.2, density=4.0))
    scene.add_mass_spring(chain)
    scene.couple(stiffness=stiffness, damping=0.2, friction=0.3)
    return scene.build(max_steps=8)


def cable(y=TOP + 1.02 * DX, velocity=(0.0, -0.5), actuated=True):
    """A 6-node cable across the block's top, just outside the contact radius of its particles."""
    act = np.full(9, -1)
    if actuated:
        act[[1, 6]] = 0
    return MassSpring.chain((0.42, y), (0.58, y), 6, mass=2e-3, stiffness=50.0, damping=0.01, actuator=act,
                            velocity=velocity)


def loss_of(state, weights):
    return sum(float((w * state[k]).sum()) for k, w in weights.items())


def final_loss(scene, actions, weights, initial=None):
    scene.reset(initial)
    scene.forward(actions, requires_grad=False)
    return loss_of(scene.get_state(), weights)


def analytic(scene, actions, weights):
    scene.reset()
    scene.forward(actions)
    return scene.backward(dict(weights))


def fd(f, h):
    return (f(h) - f(-h)) / (2 * h)


def assert_close(fd_vals, ad_vals, what, rtol):
    f, a = np.ravel(np.asarray(fd_vals, float)), np.ravel(np.asarray(ad_vals, float))
    scale = max(np.abs(f).max(), np.abs(a).max())
    assert scale > 0, f"{what}: gradient identically zero (vacuous check)"
    big = np.maximum(np.abs(f), np.abs(a))
    mask = big > FLOOR * scale
    err = (np.abs(f - a)[mask] / big[mask]).max()
    assert err < rtol, f"{what}: max relative error {err:.2e} (tol {rtol:g})\nfd={f}\nad={a}"


def fd_state(scene, actions, weights, name, h):
    """Entry-by-entry central differences of the final loss w.r.t. initial state ``name``."""
    x0 = scene.initial_state()[name]
    out = np.zeros(x0.size)
    for j in range(x0.size):
        def f(e, j=j):
            x = x0.copy().ravel()
            x[j] += e
            return final_loss(scene, actions, weights, {name: x.reshape(x0.shape)})
        out[j] = fd(f, h)
    return out


def fd_param(scene, actions, weights, name, rows, rel_h=1e-4):
    out = []
    for row in rows:
        v = scene.get_param(name, row)
        h = rel_h * v

        def f(e, row=row, v=v):
            scene.set_param(name, v + e, row=row)
            return final_loss(scene, actions, weights)
        out.append(fd(f, h))
        scene.set_param(name, v, row=row)
    return np.array(out)


def fd_actions(scene, actions, weights, h):
    out = np.zeros(actions.shape)
    for idx in np.ndindex(*actions.shape):
        def f(e, idx=idx):
            a = actions.copy()
            a[idx] += e
            return final_loss(scene, a, weights)
        out[idx] = fd(f, h)
    return out


def run(scene, steps, observe):
    """Simulate ``steps`` steps (in forwards of at most 8) from the current state; returns the
    observed series, (steps + 1, ...) each."""
    zero = np.zeros((1, scene.action_dim))
    series = {name: [scene.get_state()[name]] for name in observe}
    done = 0
    while done < steps:
        k = min(8, steps - done)
        obs = scene.forward(np.repeat(zero, k, axis=0), requires_grad=False, observe=observe)
        for name in observe:
            series[name].extend(obs[name][1:])
        done += k
    return {name: np.stack(v) for name, v in series.items()}


# ---------------------------------------------------------------------------- physics
def test_one_mass_on_a_spring_oscillates_with_its_period():
    """m = 10 g on k = 100 N/m to a 10-tonne anchor (the anchor shifts the period by
    sqrt(1 + m / M) - 1 = 5e-7), stretched 2 cm, no gravity: T = 2 pi sqrt(m / k) = 62.8 ms.
    Symplectic Euler's discrete period is 2 pi dt / arccos(1 - (w dt)^2 / 2), longer by
    (w dt)^2 / 24 = 4e-6 at w dt = 0.01; zero crossings are linearly interpolated between
    samples 8 substeps apart (w h = 0.08), and a sine is straight to O((w h)^3) ~ 5e-4 of a
    sample interval at its zero crossings, ~3e-7 of the period. Tolerance 1e-4: 25x the
    expected error; a dt, mass or stiffness bug shows as percent."""
    m, k, dt, sub = 0.01, 100.0, 1e-4, 8
    body = MassSpring(np.array([[0.5, 0.5], [0.6, 0.5]]), np.array([[0, 1]]), mass=[1e4, m], stiffness=k,
                      damping=0.0, rest_length=[0.08])
    scene = springs_scene(body, dt=dt, substeps=sub)
    period = 2 * np.pi * np.sqrt(m / k)
    steps = int(2.3 * period / (dt * sub))
    x = run(scene, steps, ["springs.x"])["springs.x"]
    u = x[:, 1, 0] - x[:, 0, 0] - 0.08  # stretch (m)
    t = np.arange(len(u)) * dt * sub
    s = np.flatnonzero(np.sign(u[:-1]) != np.sign(u[1:]))
    crossings = t[s] - u[s] * (t[s + 1] - t[s]) / (u[s + 1] - u[s])
    assert len(crossings) >= 4
    measured = 2 * (crossings[-1] - crossings[0]) / (len(crossings) - 1)
    assert abs(measured / period - 1) < 1e-4, (measured, period)
    # symplectic: the amplitude over the last period neither grows nor decays (energy error
    # O((w dt)^2); samples w h = 0.08 apart miss the peak by at most 1 - cos(0.04) = 8e-4)
    last = int(np.ceil(period / (dt * sub)))
    assert abs(np.abs(u[-last:]).max() / 0.02 - 1) < 1e-2


def test_free_chain_conserves_momentum():
    """Spring, dashpot and actuation forces are equal and opposite: without gravity and walls
    the total momentum of a tumbling, actuated chain stays put to round-off (1e-12 relative)."""
    rng = np.random.default_rng(1)
    body = MassSpring.chain((0.4, 0.5), (0.6, 0.55), 6, mass=rng.uniform(1e-3, 3e-3, 6),
                            stiffness=rng.uniform(50, 150, 9), damping=rng.uniform(0.01, 0.03, 9),
                            actuator=np.array([0, -1, 1, -1, 0, -1, -1, 1, -1]))
    scene = springs_scene(body)
    v0 = rng.normal(scale=0.3, size=(6, 2))
    scene.set_initial_state({"springs.v": v0})
    obs = scene.forward(rng.normal(scale=0.5, size=(8, 2)), requires_grad=False, observe=["springs.v"])
    mass = body.mass[:, None]
    p = (mass * obs["springs.v"]).sum(axis=1)  # (steps + 1, 2)
    scale = (mass * np.abs(v0)).sum()
    assert np.abs(obs["springs.v"][-1] - v0).max() > 1e-2  # the chain did deform
    assert np.abs(p - p[0]).max() < 1e-12 * scale, p - p[0]


def test_body_dropped_on_the_floor_comes_to_rest_on_it():
    """A 2x1-cell lattice dropped from 20 cm above the floor (it lands at 0.2 s and 2 m/s) never
    goes below it and rests on it: at 0.5 s its bottom nodes are within 1 mm of the floor and
    every node is slower than 1 cm/s (damping ratio ~0.3: the rebound dies out in ~0.1 s)."""
    body = MassSpring.grid((0.4, 0.3), (0.5, 0.35), (2, 1), mass=2e-3, stiffness=100.0, damping=0.2)
    scene = springs_scene(body, gravity=(0.0, -9.8), substeps=16)
    floor = scene.floor
    obs = run(scene, int(0.5 / (DT * 16)), ["springs.x", "springs.v"])
    y = obs["springs.x"][..., 1]
    assert y.min() >= floor - 1e-12, y.min() - floor
    bottom = [0, 2, 4]  # vertices (i, 0) of the 3x2 lattice
    assert np.abs(y[-1, bottom] - floor).max() < 1e-3
    assert np.abs(obs["springs.v"][-1]).max() < 1e-2


# ---------------------------------------------------------------------------- gradients
def _springs_fd_setup():
    rng = np.random.default_rng(2)
    body = MassSpring.chain((0.35, 0.5), (0.65, 0.52), 6, mass=rng.uniform(1e-3, 3e-3, 6),
                            stiffness=rng.uniform(50, 150, 9), damping=rng.uniform(0.01, 0.03, 9),
                            actuator=np.array([-1, 0, -1, 1, -1, -1, 0, -1, -1]))
    scene = springs_scene(body, gravity=(0.0, -9.8))
    scene.set_initial_state({"springs.v": rng.normal(scale=0.3, size=(6, 2))})
    actions = rng.normal(scale=0.5, size=(4, 2))
    weights = {"springs.x": rng.normal(size=(6, 2)), "springs.v": 0.01 * rng.normal(size=(6, 2))}
    return scene, actions, weights


def test_springs_gradients_match_finite_differences():
    """d loss / d (actions, initial x and v, stiffness, damping) of a falling, actuated chain
    (16 substeps, loss linear in the final state). f64, h = 1e-5 (1e-4 relative for the
    parameters): truncation ~h^2 ~1e-10 and round-off ~1e-16 |loss| / h ~1e-11 absolute
    against gradients down to FLOOR * max ~1e-10; tol 1e-5."""
    scene, actions, weights = _springs_fd_setup()
    g = analytic(scene, actions, weights)
    assert_close(fd_actions(scene, actions, weights, 1e-5), g.actions, "actions", 1e-5)
    for name in ("springs.x", "springs.v"):
        assert_close(fd_state(scene, actions, weights, name, 1e-5), g.initial[name], f"initial {name}", 1e-5)
    rows = range(9)
    for name in ("springs.stiffness", "springs.damping"):
        assert_close(fd_param(scene, actions, weights, name, rows), g.params[name], name, 1e-5)


def test_per_step_seeds_match_finite_differences():
    """A loss summed over the states after steps 1, 2 and 4: backward({step: seeds}) against
    central differences of the same sum computed from forward(..., observe=[...])."""
    scene, actions, _ = _springs_fd_setup()
    rng = np.random.default_rng(3)
    w = {s: rng.normal(size=(6, 2)) for s in (1, 2, 4)}

    def loss(a, initial=None):
        scene.reset(initial)
        obs = scene.forward(a, requires_grad=False, observe=["springs.x"])["springs.x"]
        return sum(float((ws * obs[s]).sum()) for s, ws in w.items())

    scene.reset()
    scene.forward(actions)
    g = scene.backward({s: {"springs.x": ws} for s, ws in w.items()})
    fd_a = np.zeros(actions.shape)
    for idx in np.ndindex(*actions.shape):
        e = np.zeros(actions.shape)
        e[idx] = 1.0
        fd_a[idx] = fd(lambda h, e=e: loss(actions + h * e), 1e-5)
    assert_close(fd_a, g.actions, "actions (per-step seeds)", 1e-5)
    v0 = scene.initial_state()["springs.v"]
    for _ in range(2):
        d = rng.normal(size=v0.shape)
        fd_v = fd(lambda h, d=d: loss(actions, {"springs.v": v0 + h * d}), 1e-5)
        assert_close(fd_v, (g.initial["springs.v"] * d).sum(), "initial springs.v (per-step seeds)", 1e-5)


def test_coupled_gradients_match_finite_differences():
    """A cable falling at 0.5 m/s onto an elastic block (152 particles, grid 32): contact starts
    within the first substeps and the cable bounces during the 16. d loss / d (actions, initial
    cable velocity, coupler stiffness / damping / friction, spring stiffness) against central
    differences, h = 1e-5 (actions, velocity) or 1e-4 relative (parameters): the loss sums
    ~300 weighted positions (|loss| ~ 10), so round-off in FD is ~1e-15 / h relative to a
    gradient of ~1e-4; tol 1e-4."""
    scene = coupled_scene(cable())
    rng = np.random.default_rng(4)
    n = scene.n_particles
    actions = rng.normal(scale=0.5, size=(4, 1))
    weights = {"springs.x": rng.normal(size=(6, 2)), "springs.v": 0.01 * rng.normal(size=(6, 2)),
               "mpm.x": rng.normal(size=(n, 2)), "mpm.v": 0.01 * rng.normal(size=(n, 2))}
    scene.reset()
    scene.forward(actions)
    pairs_seen = int(scene.partset.coupler.n_pairs[None])
    assert pairs_seen > 0  # the contact is active at the end of the rollout
    g = scene.backward(weights)
    assert_close(fd_actions(scene, actions, weights, 1e-5), g.actions, "actions", 1e-4)
    v0 = scene.initial_state()["springs.v"]
    for _ in range(2):
        d = rng.normal(size=v0.shape)
        fd_v = fd(lambda h, d=d: final_loss(scene, actions, weights, {"springs.v": v0 + h * d}), 1e-5)
        assert_close(fd_v, (g.initial["springs.v"] * d).sum(), "initial springs.v", 1e-4)
    for name in ("coupler.stiffness", "coupler.damping", "coupler.friction"):
        assert_close(fd_param(scene, actions, weights, name, [0]), g.params[name], name, 1e-4)
    assert_close(fd_param(scene, actions, weights, "springs.stiffness", [0, 4]), g.params["springs.stiffness"][[0, 4]],
                 "springs.stiffness (coupled)", 1e-4)


def test_checkpointed_equals_full_tape_in_a_coupled_scene():
    """substeps_per_step = 3, checkpoint_every = 4: chunk boundaries (substeps 4, 8) fall inside
    steps, and per-step seeds land in every chunk; the same gradients as one chunk of 12
    (checkpoint_every 16 >= the 12 substeps), to 1e-9 relative (only the order of atomic sums
    may differ)."""
    scene = coupled_scene(cable(), substeps=3, checkpoint_every=4)
    rng = np.random.default_rng(5)
    actions = rng.normal(scale=0.5, size=(4, 1))
    n = scene.n_particles
    seeds = {s: {"springs.x": rng.normal(size=(6, 2)), "mpm.v": rng.normal(size=(n, 2))} for s in (1, 2, 3, 4)}
    chunked, full = chunked_and_full(scene, actions, seeds)
    assert_close(chunked.actions, full.actions, "actions", 1e-9)
    for name in ("springs.x", "springs.v", "mpm.x", "mpm.v"):
        assert_close(chunked.initial[name], full.initial[name], f"initial {name}", 1e-9)
    for name in ("coupler.stiffness", "coupler.damping", "coupler.friction", "springs.stiffness"):
        assert_close(chunked.params[name], full.params[name], name, 1e-9)


# ---------------------------------------------------------------------------- coupling
def test_coupling_exchanges_momentum_both_ways():
    """No gravity: a cable moving down at 0.5 m/s hits a block at rest. The block, alone, would
    keep zero momentum and the cable alone would keep its own; coupled, the cable is stopped
    and thrown back while the block gains exactly the momentum the cable lost (equal and
    opposite forces; MPM's transfers conserve momentum): total conserved to 1e-9. The block
    floats 0.2 m higher than the others (same particle count, same layout): on the floor, the
    push would hand momentum to the floor."""
    lift = 0.2
    chain = cable(y=TOP + lift + 1.02 * DX, actuated=False)
    p_chain0 = (chain.mass[:, None] * chain.initial_velocities()).sum(axis=0)
    block = ps.Box(center=BLOCK.center + [0.0, lift], size=BLOCK.size)
    scene = coupled_scene(chain, gravity=(0.0, 0.0), block=block)
    mass_p = scene.particle_mass()[:, None]
    obs = run(scene, 8, ["springs.x", "springs.v", "mpm.v"])
    p_chain = (chain.mass[:, None] * obs["springs.v"]).sum(axis=1)
    p_block = (mass_p * obs["mpm.v"]).sum(axis=1)
    scale = np.abs(p_chain0).max()
    assert np.abs(p_chain + p_block - p_chain0).max() < 1e-9 * scale
    assert p_chain[-1, 1] > 0.1 * scale  # the cable bounced back up (measured: 0.3) ...
    assert p_block[-1, 1] < -1.1 * scale  # ... so the block took more than the cable's momentum
    assert obs["springs.x"][..., 1].min() > TOP + lift + 0.5 * DX  # and it never went into the block
    del scene
    alone = springs_scene(chain)  # the same cable without the block keeps moving down
    v = run(alone, 8, ["springs.v"])["springs.v"]
    assert np.allclose(v[-1], chain.initial_velocities())


def test_block_supports_the_cable():
    """Gravity on: a cable released just above the block (which itself drops 6 mm to the floor
    and wobbles) rides on it: over the last 8 ms of 0.15 s every node stays above the block's
    top particles and within the contact radius of them. Without the block the same cable
    falls through the block's place to below its middle."""
    chain = cable(velocity=(0.0, 0.0), actuated=False)
    scene = coupled_scene(chain)
    steps = int(0.15 / (DT * 4))
    obs = run(scene, steps, ["springs.x", "mpm.x"])
    y = obs["springs.x"][-10:, :, 1]  # the last 10 steps (8 ms)
    top_now = obs["mpm.x"][-10:, :, 1].max(axis=1)[:, None]
    assert (y > top_now).all()  # on the block's top particles (which still wobble after landing) ...
    assert (y < top_now + DX).all()  # ... within the contact radius: it rests on them, not floats
    del scene, obs
    alone = springs_scene(chain, gravity=(0.0, -9.8))
    y_alone = run(alone, steps, ["springs.x"])["springs.x"][-1, :, 1]
    assert y_alone.max() < BLOCK.center[1]


# ---------------------------------------------------------------------------- bad input
V2 = np.array([[0.4, 0.5], [0.5, 0.5]])


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(vertices=np.zeros((3, 4)), springs=[[0, 1]]),
     r"vertices must have shape \(n, 2\) or \(n, 3\), got shape \(3, 4\)"),
    (dict(vertices=V2, springs=[[0, 2]]), r"spring 0 \[0, 2\] indexes a vertex outside 0..1"),
    (dict(vertices=V2, springs=[[1, 1]]), r"spring 0 joins vertex 1 to itself"),
    (dict(vertices=np.array([[0.4, 0.5], [0.4, 0.5]]), springs=[[0, 1]]), r"coincident vertices .* rest length 0"),
    (dict(vertices=V2, springs=[[0, 1]], rest_length=[0.0]), r"rest_length must be positive, got 0.0"),
    (dict(vertices=V2, springs=[[0, 1]], stiffness=-5.0), r"stiffness must be >= 0, got -5.0"),
    (dict(vertices=V2, springs=[[0, 1]], damping=[-0.1]), r"damping must be >= 0, got -0.1"),
    (dict(vertices=V2, springs=[[0, 1]], mass=[1e-3, -1e-3]), r"mass must be positive, got -0.001 \(entry 1\)"),
    (dict(vertices=np.array([[0.4, np.nan], [0.5, 0.5]]), springs=[[0, 1]]), r"vertices must be finite, got nan"),
])
def test_bad_mass_spring_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MassSpring(**kwargs)


def test_bad_scene_input_is_refused():
    scene = ps.Scene(dim=2, grid_res=32, dt=DT)
    with pytest.raises(ValueError, match=r"is 3D but the scene is 2D"):
        scene.add_mass_spring(MassSpring.chain((0.4, 0.5, 0.5), (0.6, 0.5, 0.5), 3))
    with pytest.raises(ValueError, match=r"vertex 0 at \[0.4, 0.05\] is outside the domain"):
        scene.add_mass_spring(MassSpring.chain((0.4, 0.05), (0.6, 0.5), 3))
    # dt above the springs' limit (k = 1e4 N/m on 1 g: ~3e-4 s)
    with pytest.raises(ValueError, match=r"dt=0.005 is unstable: the springs part's stability limit is .*stiffest "
                                         r"spring .*k=1e\+04 N/m.*m=0.001 kg"):
        springs_scene(MassSpring.chain((0.4, 0.5), (0.6, 0.5), 4, stiffness=1e4), dt=5e-3)
    scene = springs_scene(MassSpring.chain((0.4, 0.5), (0.6, 0.5), 4))
    with pytest.raises(ValueError, match=r"springs.stiffness .* must be in \[0, inf\], got -1.0"):
        scene.set_param("springs.stiffness", -1.0, row=2)
    del scene
    # a vertex inside the block (the coupler's penalty would explode on the first substep)
    with pytest.raises(ValueError, match=r"mass-spring vertex 2 at \[0.5, 0.16\] starts inside MPM material"):
        coupled_scene(MassSpring.chain((0.5, 0.3), (0.5, 0.16), 3, mass=2e-3))
    with pytest.raises(ValueError, match=r"coupler.stiffness .* must be in \[0, inf\], got -1"):
        coupled_scene(cable(), stiffness=-1.0)


# ---------------------------------------------------------------------------- identification
def test_identify_spring_stiffness_from_a_trajectory():
    """physim.optim.identify recovers two spring stiffnesses of the mass-spring part from the
    node positions at every step (a time-series loss, seeded at every step in reverse mode)."""
    from physim.optim import identify

    body = MassSpring.chain((0.42, 0.5), (0.58, 0.5), 3, mass=2e-3, stiffness=[50.0, 20.0], damping=0.01,
                            bending=False)
    scene = springs_scene(body)
    v0 = np.array([[-0.3, 0.1], [0.0, 0.0], [0.3, -0.1]])  # stretch both springs
    scene.set_initial_state({"springs.v": v0})
    actions = np.zeros((8, scene.action_dim))
    observed = scene.forward(actions, requires_grad=False, observe=["springs.x"])["springs.x"]
    scene.set_param("springs.stiffness", 80.0, row=0)
    scene.set_param("springs.stiffness", 10.0, row=1)
    import torch

    target = torch.as_tensor(observed)
    r = identify(scene, actions, {"springs.stiffness": 80.0, "springs.stiffness[1]": 10.0},
                 loss=lambda s: ((s["springs.x"] - target) ** 2).sum(), observe=["springs.x"], iters=30, lr=0.2,
                 progress=False)
    # the loss is a smooth function of two well-separated stiffnesses; 2 % is far below the
    # 60 % / 50 % initial errors and loose enough for Adam's last steps
    assert r.relative_error({"springs.stiffness": 50.0, "springs.stiffness[1]": 20.0}) < 0.02, r.params
    assert r.loss < 1e-3 * r.losses[0]
    assert scene.get_param("springs.stiffness", row=1) == pytest.approx(r.params["springs.stiffness[1]"])

"""The emitter tasks (physim/Transporting-v0, physim/IceCreamDynamic-v0): gradients of the task
loss against central finite differences (f64), a short Adam run, the floating box's physics with the jet off, goals,
rendering and bad arguments.

Transporting: one env layout with the jet (horizon 6, compiled once per module, forward and
reverse) and one without it (forward only); IceCreamDynamic: one layout (horizon 14: the cream
reaches the cone after ~0.1 s)."""

import gc

import gymnasium as gym
import numpy as np
import pytest
from gradcheck import actions_fd, assert_close

import physim.envs  # noqa: F401  (registers the tasks)
from physim import optim
from physim.envs.ice_cream_dynamic import IceCreamDynamicEnv
from physim.envs.transporting import TransportingEnv

H = 6


@pytest.fixture(scope="module")
def env():
    e = gym.make("physim/Transporting-v0", horizon=H)
    e.reset(seed=0)
    yield e.unwrapped
    e.close()
    gc.collect()


# ------------------------------------------------------------------------------- gradients
def test_gradient_matches_finite_differences(env):
    """d loss / d a few action entries (nozzle x and y velocity, angular velocity at several
    steps) against central differences (f64, h = 1e-4 in normalized actions). The jet reaches
    the box in the first steps, so the nozzle's motion moves the box."""
    rng = np.random.default_rng(4)
    a = np.clip(rng.normal(0.0, 0.4, (H, 3)), -0.9, 0.9)
    loss, grad = env.loss_and_grad(a)
    entries = [(0, 0), (1, 1), (2, 2), (3, 0)]
    fd = actions_fd(env.loss, a, entries, 1e-4)
    ad = [grad[t, j] for t, j in entries]
    print("loss", loss, "fd", fd, "ad", ad)
    assert max(abs(v) for v in fd) > 1e-4  # the actions do move the box
    assert_close(fd, ad, "d loss / d actions")


def test_adam_lowers_the_loss(env):
    """Five Adam iterations from zero actions lower the loss by at least 5 % (measured: see the
    report; the jet alone, with the nozzle still, already pushes the box towards the target)."""
    res = optim.adam(env, iters=5, lr=0.3, progress=False)
    print("adam", res.initial_loss, res.losses)
    assert res.loss < 0.95 * res.initial_loss, res.losses


# ------------------------------------------------------------------------------- physics
def test_box_floats_still_without_the_jet():
    """With the jet off the box floats still: over 40 steps (0.43 s) its centre moves less than
    a third of a cell sideways and its speed stays below 0.1 m/s, and it sits at Archimedes'
    depth to within 1.5 cells (the MPM free surface and the pressure near it are spread over
    the quadratic B-spline's reach, 1.5 cells; tests/test_rigid.py measures the same offset):
    the box (density 0.5, 6 cm tall) is submerged 3 cm below the water's surface (the top
    water particles away from the box and the walls, plus half a spacing). With the jet on
    (same steps, nozzle still), the box moves right by several cells."""
    T = 40
    e = gym.make("physim/Transporting-v0", horizon=T, jet_time=0.0).unwrapped
    e.reset(seed=0)
    scene = e.scene
    assert e.emitter is None and scene.particle_active().all()
    x0 = e.start_centre
    dx = scene.dx
    half = scene.spacing / 2
    mats = scene.particle_materials()
    water = mats == scene.materials.index(e.water)
    for t in range(T):
        _, _, _, _, info = e.step(np.zeros(3))
        c = np.array([info["object_x"], info["object_y"]])
        assert abs(c[0] - x0[0]) < dx / 3, (t, c)
    v = scene.get_state()["mpm.v"][e._is_body].mean(axis=0)
    assert np.linalg.norm(v) < 0.1, v
    x = scene.particle_positions()
    fluid = x[water]
    away = (np.abs(fluid[:, 0] - c[0]) > e.size[0] / 2 + 0.05) & (fluid[:, 0] > 0.15) & (fluid[:, 0] < 0.85)
    surface = fluid[away, 1].max() + half
    body = x[e._is_body]
    submerged = surface - (body[:, 1].min() - half)
    print("submerged depth", submerged, "Archimedes", e.object_density * e.size[1])
    assert abs(submerged - e.object_density * e.size[1]) < 1.5 * dx
    e.close()


def test_jet_pushes_the_box(env):
    """The same box with the jet on and the nozzle still: after the 6 steps it has moved right
    (the jet's momentum), unlike the jet-off case (< dx / 3 in 40 steps)."""
    env.reset(seed=0)
    for _ in range(H):
        _, _, _, _, info = env.step(np.zeros(3))
    assert info["object_x"] - env.start_centre[0] > 0.01, info
    assert info["water_added"] > 0


# ------------------------------------------------------------------------------- goals, render, args
def test_goal_is_seeded_and_in_range(env):
    t = []
    for seed in (0, 1, 0):
        env.reset(seed=seed)
        d = env.target - env.start_centre
        assert env.target_range[0] <= d[0] <= env.target_range[1] and d[1] == 0.0
        t.append(env.target.copy())
    assert np.array_equal(t[0], t[2]) and not np.array_equal(t[0], t[1])
    _, info = env.reset(seed=0)
    assert info["loss"] == pytest.approx(1.0, rel=1e-9) and info["distance"] == pytest.approx(
        float(np.linalg.norm(t[0] - env.start_centre)))


def test_render_shows_the_goal(env):
    """The goal outline (green) is drawn where the target is: the frame has goal-coloured
    pixels, and they move right when the target does."""
    pytest.importorskip("pyvista")
    from physim.render import GOAL_COLOR

    e = gym.make("physim/Transporting-v0", horizon=H, render_mode="rgb_array").unwrapped

    def goal_columns():
        img = e.render()[..., :3].astype(np.float64)
        mask = np.abs(img - np.array(GOAL_COLOR[:3]) * 255.0).max(axis=2) < 40
        assert mask.sum() > 20
        return np.nonzero(mask)[1].mean()

    try:
        e.reset(seed=0)
        c0, x0 = goal_columns(), e.target[0]
        for s in range(1, 20):
            e.reset(seed=s)
            if abs(e.target[0] - x0) > 0.05:
                break
        c1 = goal_columns()
        assert (c1 - c0) * (e.target[0] - x0) > 0
    finally:
        e.close()


@pytest.mark.parametrize("kwargs, match", [
    (dict(jet_speed=-1.0), r"jet_speed must be .*-1"),
    (dict(jet_speed=0.0), r"jet_speed must be > 0 while the jet runs"),
    (dict(object_density=1.5), r"object_density must be .*1\.5"),
    (dict(target_range=(0.3, 0.1)), r"target_range must be a pair"),
    (dict(grid_res=8), r"grid_res must be an integer in \[16"),
    (dict(scale="huge"), r"scale must be one of"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TransportingEnv(**kwargs)


def test_unknown_argument():
    with pytest.raises(TypeError, match="unknown argument"):
        TransportingEnv(nozzle_speed=1.0)


# ------------------------------------------------------------------------------- IceCreamDynamic
HI = 14


@pytest.fixture(scope="module")
def cream():
    e = gym.make("physim/IceCreamDynamic-v0", horizon=HI)
    e.reset(seed=0)
    yield e.unwrapped
    e.close()
    gc.collect()


def test_ice_cream_gradient_matches_finite_differences(cream):
    """d loss / d the cone's velocity at a few steps (x early, y, x late) against central
    differences (f64, h = 1e-4)."""
    rng = np.random.default_rng(1)
    a = np.clip(rng.normal(0.0, 0.4, (HI, 2)), -0.9, 0.9)
    loss, grad = cream.loss_and_grad(a)
    entries = [(2, 0), (5, 1), (9, 0)]
    fd = actions_fd(cream.loss, a, entries, 1e-4)
    ad = [grad[t, j] for t, j in entries]
    print("loss", loss, "fd", fd, "ad", ad)
    assert max(abs(v) for v in fd) > 1e-4
    assert_close(fd, ad, "d loss / d actions")


def test_ice_cream_goal_is_reachable_and_adam_lowers_the_loss(cream):
    """The seeded script that made the target reproduces it (loss 0 to round-off); from zero
    actions five Adam iterations lower the loss by at least 10 %."""
    cream.reset(seed=0)
    assert cream.loss(cream.script(*cream.goal_params)) < 1e-12
    res = optim.adam(cream, iters=5, lr=0.05, progress=False)
    print("adam", res.initial_loss, res.losses)
    assert res.loss < 0.9 * res.initial_loss, res.losses


def test_ice_cream_mass_dispensed_and_caught(cream):
    """With the cone still: the dispensed count is the emitter's ceil(rate x time) (the mass law of
    tests/test_emitters.py, here through the env), and the cream the cone caught stays on it:
    every dispensed particle lies above the cone's top face and within its half-width of the
    nozzle's axis (a 0.125 m wide ribbon on a 0.16 m wide cone)."""
    import math

    cream.reset(seed=0)
    for _ in range(HI):
        _, _, _, _, info = cream.step(np.zeros(2))
    t = HI * cream.scene.substeps_per_step * cream.scene.dt
    assert info["dispensed"] == math.ceil(t * cream.emitter.particle_rate) > 16
    x = cream.scene.particle_positions()[cream.scene.particle_active()]
    top = cream.cone_pos[1] + cream.cone_half[1]
    assert x[:, 1].min() > top - 0.25 * cream.scene.spacing, x[:, 1].min()
    assert np.abs(x[:, 0] - cream.nozzle_pos[0]).max() < cream.cone_half[0]


@pytest.mark.parametrize("kwargs, match", [
    (dict(yield_stress=-1.0), r"yield_stress must be .*-1"),
    (dict(sweep_range=(0.1, 0.2)), r"sweep_range must be a pair"),
    (dict(substeps=0), r"substeps must be an integer"),
])
def test_ice_cream_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IceCreamDynamicEnv(**kwargs)

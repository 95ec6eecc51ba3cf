"""The tactile SurfaceFollowing task: the sensor's force reading against the gel's contact forces,
the trajectory loss against its definition, analytic gradients against finite differences, and
the optimizers on it.

One env (horizon 8, as tests/test_envs.py makes every env, so the compiled engine is the same
layout) is shared by the module. At horizon 8 the y action scale is its cap, 0.25 m/s (0.4 mm
per 1.6 ms step); the apex starts 0.05 mm above the surface. Runtime on 2 shared cores: ~50 s
with a warm Taichi kernel cache, ~95 s cold (PHYSIM_OFFLINE_CACHE=0: the reverse mode compiles
in the gradient test).
"""

import gc

import gymnasium as gym
import numpy as np
import pytest
from gradcheck import ABS_FLOOR, REL_TOL

import physim.envs  # noqa: F401  (registers the tasks)
from physim import optim

H = 8
ENV_ID = "physim/SurfaceFollowing-v0"


@pytest.fixture(scope="module")
def env():
    gc.collect()
    e = gym.make(ENV_ID, horizon=H)
    yield e
    e.close()
    del e
    gc.collect()


def _run(env, actions, seed=0):
    """Step ``actions`` from reset(seed); (infos, states) after every step (start first)."""
    task = env.unwrapped
    _, info = env.reset(seed=seed)
    infos, states = [info], [task.scene.get_state()]
    for a in actions:
        infos.append(env.step(a)[4])
        states.append(task.scene.get_state())
    return infos, states


def test_pressing_reads_a_growing_normal_force_and_no_contact_reads_exactly_zero(env):
    """Straight down at full speed (0.4 mm per step, 3.2 mm in all: inside the 3.5 mm descent
    budget): the sensor's normal force is positive from the first step (the 0.05 mm gap closes
    in it) and grows with every step. With the dome's axis along -y and no rotation the
    sensor frame's normal is +y, so the reading equals the sum of the gel's contact forces'
    y components and its shear the x, z ones (to round-off). Moving up and sideways while
    spinning, the gel never touches: every contact force and reading is exactly 0."""
    task = env.unwrapped
    press = np.zeros((H, task.action_dim))
    press[:, 1] = -1.0
    infos, states = _run(env, press)
    fn = np.array([i["normal_force"] for i in infos])
    assert fn[0] == 0.0
    assert (fn[1:] > 0).all() and (np.diff(fn) > 0).all(), fn
    for info, st in zip(infos[1:], states[1:], strict=True):
        f = st["fem.f_contact"].sum(axis=0)
        assert info["normal_force"] == pytest.approx(f[1], rel=1e-12)
        assert info["shear_force"] == pytest.approx(np.hypot(f[0], f[2]), rel=1e-9, abs=1e-15)
    depth = -np.array([st["tools.pos"][0, 1] for st in states]) + states[0]["tools.pos"][0, 1] - task.start_gap
    print(f"\npress: depth (mm) {np.round(depth[1:] * 1e3, 3)} -> normal force (N) {np.round(fn[1:], 4)}")
    # the scale of a soft (10 kPa) fingertip: ~0.05-0.3 N at ~1 mm, a few N at most at 3 mm
    assert 0.02 < fn[3] < 0.6 and fn[-1] < 5.0, fn

    away = np.tile([0.5, 1.0, -0.3, 0.4, -0.6, 0.8], (H, 1))
    infos, states = _run(env, away)
    for info, st in zip(infos, states, strict=True):
        assert np.all(st["fem.f_contact"] == 0.0)
        assert info["normal_force"] == 0.0 and info["shear_force"] == 0.0


def test_loss_is_the_trajectory_loss_of_its_readings(env):
    """The loss after stepping (the env's series bookkeeping) and ``loss(actions)`` (the problem's
    observed series) both equal the docstring's formula evaluated from the step infos:
    (1/T) sum_k [((F_n,k - F*) / F*)^2 + 0.1 (F_shear,k / F*)^2] + ((s - s*) / s*)^2 (no z motion:
    the lateral offset is exactly 0)."""
    task = env.unwrapped
    a = np.zeros((H, task.action_dim))
    a[:, 1] = -0.6
    a[:, 5] = 0.3  # spin about z: the reading's frame turns with the mount
    infos, _ = _run(env, a, seed=5)
    Fs, s_goal = task.target_force, task.target_arc
    fn = np.array([i["normal_force"] for i in infos[1:]])
    fsh = np.array([i["shear_force"] for i in infos[1:]])
    want = (((fn - Fs) / Fs) ** 2 + task.shear_weight * (fsh / Fs) ** 2).sum() / H
    want += ((infos[-1]["arc_position"] - s_goal) / s_goal) ** 2
    assert infos[-1]["loss"] == pytest.approx(want, rel=1e-10)
    env.reset(seed=5)
    assert task.loss(a) == pytest.approx(want, rel=1e-9)
    # a shorter sequence is the loss of that part of the trajectory (force terms still / T)
    assert task.loss(a[:3]) == pytest.approx(infos[3]["loss"], rel=1e-9)


def test_action_gradient_matches_central_differences(env):
    """d loss / d actions (reverse mode through the FEM contact, the sensor's reading and the
    torch loss) against central differences in f64 on six entries (every action column),
    compared where max(|fd|, |ad|) exceeds ABS_FLOOR x the largest analytic entry, to
    REL_TOL (1e-3) relative (tests/gradcheck.py). The trajectory presses 0.24 mm per step and
    slides towards the goal, so the gel is in contact from step 1 and all terms are live.
    h = 1e-4 action units (3e-5 m/s, 5e-8 m over a step): measured against h = 1e-5..1e-7, the
    differences agree with the analytic entries to < 1e-5 relative at h = 1e-4 (truncation is
    negligible: no contact kink lies within h of these actions), while at h = 1e-6 the loss's
    round-off (~5e-16, parallel atomic sums) already costs 3e-4 on the smallest entries (6e-4)."""
    task = env.unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(7)
    a = rng.normal(0.0, 0.2, (H, task.action_dim))
    a[:, 0] += 0.5 * np.sign(task.target_arc)
    a[:, 1] += -0.6
    a = np.clip(a, -0.9, 0.9)
    loss, g = task.loss_and_grad(a)
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    entries = [(1, 1), (2, 0), (3, 2), (4, 3), (5, 4), (6, 5)]
    h = 1e-4
    fd, ad = [], []
    for t, k in entries:
        e = np.zeros_like(a)
        e[t, k] = h
        fd.append((task.loss(a + e) - task.loss(a - e)) / (2 * h))
        ad.append(g[t, k])
    fd, ad = np.array(fd), np.array(ad)
    print(f"\ngradient: loss {loss:.6g}\n fd {fd}\n ad {ad}")
    big = np.maximum(np.abs(fd), np.abs(ad))
    mask = big > ABS_FLOOR * np.abs(g).max()
    assert mask.sum() >= 4, f"too few entries above the floor: {big}"
    rel = np.abs(fd - ad)[mask] / big[mask]
    assert rel.max() < REL_TOL, f"max relative error {rel.max():.2e}\nfd={fd}\nad={ad}"


def test_adam_lowers_the_loss(env):
    """Adam (what ``physim optimize physim/SurfaceFollowing-v0 --lr 0.2`` runs) from zero
    actions at horizon 8: the loss 2.0 (never touching: force term 1, arc term 1) falls to
    0.63 / 0.57 / 0.79 in 6 iterations (seeds 0 / 1 / 2; 0.46-0.50 after 12 iterations). Run
    here on seed 1 for 4 iterations (each a forward and a reverse rollout; the cosine schedule
    over 4): 2.0, 1.242, 0.896, 0.873 and 0.797 at the final iterate (measured: 0.40 of the
    start). Asserted: below half the start."""
    task = env.unwrapped
    env.reset(seed=1)
    res = optim.adam(task, iters=4, lr=0.2, progress=False, seed=1)
    print(f"\nadam: {np.round(res.losses, 4)}, final iterate {res.extras['final_loss']:.4f}")
    assert res.initial_loss == pytest.approx(2.0)
    assert res.loss < 0.5 * res.initial_loss, res.losses


def test_cmaes_and_hybrid_run(env):
    """CMA-ES (gradient free) and the hybrid (CMA-ES on keyframes, then Adam) run on the task
    (one generation of 4 candidates each, and one Adam step): finite losses, the best kept."""
    task = env.unwrapped
    env.reset(seed=2)
    r1 = optim.cmaes(task, iters=1, popsize=4, seed=0, progress=False)
    assert np.isfinite(r1.loss) and r1.loss <= r1.initial_loss
    assert r1.actions.shape == (H, task.action_dim) and np.abs(r1.actions).max() <= 1.0
    r2 = optim.hybrid(task, cma_iters=1, adam_iters=1, popsize=4, lr=0.2, seed=0, progress=False)
    assert np.isfinite(r2.loss) and r2.loss <= r2.initial_loss

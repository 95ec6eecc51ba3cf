"""MassSpringWalker2D: the hand-designed gait walks forward (zero actions stand still), seeded
goals, the observation (nodes, centroid), gradients w.r.t. the actions against central finite
differences, and a closed-loop policy trained through the simulator lowers the loss.

Two envs: the default horizon (50 steps: the gait needs a few periods to show) and horizon 20
(gradients on its first 6 steps, policy training); f64 (conftest's runtime)."""

import gc

import gymnasium as gym
import numpy as np
import pytest

import physim.envs  # noqa: F401  (registers the ids)
from physim import optim

ID = "physim/MassSpringWalker2D-v0"
FLOOR = 1e-4


@pytest.fixture(scope="module")
def walker():
    env = gym.make(ID)
    yield env
    env.close()
    del env
    gc.collect()


@pytest.fixture(scope="module")
def short():
    env = gym.make(ID, horizon=20)
    yield env
    env.close()
    del env
    gc.collect()


def test_hand_gait_walks(walker):
    env, u = walker, walker.unwrapped
    assert u.horizon == 50 and u.action_dim == 4
    x0 = u.scene.get_state()["springs.x"]
    assert 20 <= len(x0) <= 60 and u.scene.n_particles == 0
    assert x0[:, 1].min() == pytest.approx(u.scene.floor)  # feet on the floor
    assert u.scene.dt <= u.scene.partset.springs.stable_dt()
    with pytest.raises(RuntimeError, match="no MPM particles"):
        _ = u.mass
    obs, info = env.reset(seed=0)
    assert info["loss"] == pytest.approx(1.0) and info["displacement"] == 0.0
    assert obs.shape == env.observation_space.shape == (4 * len(x0) + 8,)
    gait = u.hand_gait()
    assert gait.shape == (50, 4) and np.abs(gait).max() <= 1
    rewards, progress = [], [0.0]
    for a in gait:  # through the Gymnasium API
        obs, r, terminated, truncated, info = env.step(a.astype(np.float32))
        rewards.append(r)
        progress.append(info["progress"])
    assert truncated and not terminated
    # the gait walks ~0.16 m forward; the target is 0.6-1.0 of that: reached or passed
    assert info["displacement"] > 0.12, info
    assert info["progress"] >= 1.0 and 0.1 < progress[25] < progress[40] < progress[50]
    assert sum(rewards) == pytest.approx(1.0 - info["loss"], abs=1e-9)  # reward = loss decrease
    # the observation: every node's x first, the centroid and the distance to go last
    x = u.scene.get_state()["springs.x"]
    np.testing.assert_allclose(obs[: 2 * len(x)], x.ravel(), atol=1e-6)
    assert obs[-5] == pytest.approx(x[:, 0].mean(), abs=1e-5)  # equal node masses
    assert obs[-1] == pytest.approx(u.target_x - x[:, 0].mean(), abs=1e-5)
    # zero actions stand still: the gait's loss is far below
    zero = u.loss(np.zeros((50, 4)))
    assert zero == pytest.approx(1.0, abs=0.01)
    assert info["loss"] < 0.2 * zero
    assert u.loss(gait) == pytest.approx(info["loss"], abs=1e-6)  # (float32 actions in step)


def test_seeded_goal_and_goal_points(walker):
    env, u = walker, walker.unwrapped
    targets = []
    for seed in (0, 1, 2, 0):
        obs, _ = env.reset(seed=seed)
        targets.append((u.target_x, obs.copy()))
        assert 0.6 * u.gait_distance() <= u.target_distance <= u.gait_distance()
    assert len({round(t, 9) for t, _ in targets[:3]}) == 3
    assert targets[3][0] == targets[0][0] and np.array_equal(targets[3][1], targets[0][1])
    pts = u._goal_points()
    assert pts.shape == u.scene.get_state()["springs.x"].shape
    assert pts[:, 0].mean() == pytest.approx(u.target_x)


def test_action_gradients_match_finite_differences(short):
    """d loss / d actions of a 6-step rollout (random actions in [-0.6, 0.6], feet on the floor
    with friction) against central differences (h = 1e-6) in f64, entry by entry where
    max(|fd|, |analytic|) exceeds 1e-4 of the largest entry."""
    env, u = short, short.unwrapped
    env.reset(seed=0)
    a = np.random.default_rng(3).uniform(-0.6, 0.6, (6, u.action_dim))
    loss, g = u.loss_and_grad(a)
    assert loss == pytest.approx(u.loss(a), abs=1e-12)
    h = 1e-6
    fd = np.zeros_like(a)
    for idx in np.ndindex(*a.shape):
        e = np.zeros_like(a)
        e[idx] = h
        fd[idx] = (u.loss(a + e) - u.loss(a - e)) / (2 * h)
    g = np.asarray(g).reshape(a.shape)
    scale = max(np.abs(fd).max(), np.abs(g).max())
    assert scale > 1e-3, "gradient vanishes: vacuous check"
    big = np.maximum(np.abs(fd), np.abs(g))
    mask = big > FLOOR * scale
    err = (np.abs(fd - g)[mask] / big[mask]).max()
    assert err < 1e-4, f"max relative error {err:.2e}\nfd={fd}\nad={g}"


def test_train_policy_lowers_the_loss(short):
    """The issue's acceptance ("MassSpringWalker2D trains"): train_policy with its defaults
    for 4 iterations at horizon 20 (~1 s each)."""
    res = optim.train_policy(short, iters=4, progress=False)
    assert len(res.losses) == 4 and res.initial_loss == pytest.approx(1.0, abs=0.01)
    assert res.loss < res.initial_loss - 0.03, res.losses
    obs, _ = short.reset(seed=0)
    assert np.abs(res.policy.act(obs, 0)).max() <= 1.0

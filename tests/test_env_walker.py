"""Walker2D / Walker3D: the hand-designed gait walks forward (zero actions stand still),
seeded goals, reward = forward progress towards the target, the observation's centroid.

Forward rollouts only, at the default horizon (50 steps): the gait needs a few periods to
show (in 8 steps the 3D bound moves under 2 mm)."""

import gc

import gymnasium as gym
import numpy as np
import pytest

import physim.envs  # noqa: F401  (registers the ids)


@pytest.fixture(scope="module")
def walker2d():
    env = gym.make("physim/Walker2D-v0")
    yield env
    env.close()
    del env
    gc.collect()


@pytest.fixture(scope="module")
def walker3d():
    env = gym.make("physim/Walker3D-v0")
    yield env
    env.close()
    del env
    gc.collect()


def test_walker2d_hand_gait_walks(walker2d):
    env, u = walker2d, walker2d.unwrapped
    assert u.horizon == 50 and u.action_dim == 4 and u.scene.n_particles <= 2000
    obs, info = env.reset(seed=0)
    assert info["loss"] == pytest.approx(1.0) and info["displacement"] == 0.0
    gait = u.hand_gait()
    assert gait.shape == (50, 4) and np.abs(gait).max() <= 1
    rewards, progress = [], [0.0]
    for a in gait:  # through the Gymnasium API
        obs, r, terminated, truncated, info = env.step(a.astype(np.float32))
        rewards.append(r)
        progress.append(info["progress"])
    assert truncated and not terminated
    # the gait walks ~0.14 m forward; the target is 0.6-1.0 of that: reached or passed
    assert info["displacement"] > 0.1, info
    assert info["progress"] >= 1.0 and 0.1 < progress[25] < progress[40] < progress[50]
    assert sum(rewards) == pytest.approx(1.0 - info["loss"], abs=1e-9)  # reward = loss decrease
    # the centroid x in the observation matches the state
    x = u.scene.particle_positions()
    assert obs[-5] == pytest.approx(x[:, 0].mean(), abs=1e-5)
    assert obs[-1] == pytest.approx(u.target_x - x[:, 0].mean(), abs=1e-5)
    assert obs[-3] > 0.05  # moving forward
    # zero actions stand still: the gait's loss is far below
    zero = u.loss(np.zeros((50, 4)))
    assert zero == pytest.approx(1.0, abs=0.01)
    assert info["loss"] < 0.5 * zero
    assert u.loss(gait) == pytest.approx(info["loss"], abs=1e-6)  # (float32 actions in step)


def test_walker2d_seeded_goal(walker2d):
    env, u = walker2d, walker2d.unwrapped
    targets = []
    for seed in (0, 1, 2, 0):
        obs, _ = env.reset(seed=seed)
        targets.append((u.target_x, obs.copy()))
        assert 0.6 * u.gait_distance() <= u.target_distance <= u.gait_distance()
    assert len({round(t, 9) for t, _ in targets[:3]}) == 3
    assert targets[3][0] == targets[0][0] and np.array_equal(targets[3][1], targets[0][1])
    assert env.observation_space.contains(targets[0][1])
    pts = u._goal_points()
    assert pts.shape == (u.scene.n_particles, 2)
    assert pts[:, 0].mean() == pytest.approx(u.target_x)


def test_walker3d_hand_gait_walks(walker3d):
    env, u = walker3d, walker3d.unwrapped
    assert u.action_dim == 8 and u.scene.n_particles <= 3000 and u.scene.grid_res == 32
    obs, info = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape and np.isfinite(obs).all()
    assert info["loss"] == pytest.approx(1.0)
    assert u.gait_distance() > 0.1  # the bound walks ~0.15 m in 50 steps (cached rollout)
    zero = u.loss(np.zeros((50, 8)))
    assert zero == pytest.approx(1.0, abs=0.02)  # zero actions stand (the settling drifts < 1 mm)
    gait = u.loss(u.hand_gait())  # (1 / f - 1)^2 for the target fraction f in [0.6, 1]
    assert gait < 0.45 and gait < 0.5 * zero, (zero, gait)
    t3 = u.target_x
    env.reset(seed=4)
    assert u.target_x != t3
    env.reset(seed=3)
    assert u.target_x == t3

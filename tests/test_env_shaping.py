"""Task-specific physics tests of the IceCream, RollingPin and Writer environments (forward only).

Goal sampling is checked on short episodes (``horizon=8``, the layout the generic env tests
compile); the physics checks run the default horizon, the shortest on which the scripted tool
motions that make the goals can reach and shape the material.
"""

import gymnasium as gym
import numpy as np
import pytest

import physim.envs  # noqa: F401  (registers the tasks)

IDS = ["physim/IceCream-v0", "physim/RollingPin-v0", "physim/Writer-v0"]
#: the task metric that must improve under the scripted actions
METRIC = {"physim/IceCream-v0": "iou", "physim/RollingPin-v0": "iou", "physim/Writer-v0": "groove_iou"}


@pytest.mark.parametrize("env_id", IDS)
def test_goal_depends_on_seed_and_is_reproducible(env_id):
    env = gym.make(env_id, horizon=8)
    u = env.unwrapped
    _, info = env.reset(seed=1)
    p1, a1, t1 = u.goal_params.copy(), u._goal_actions.copy(), u._target_x.copy()
    assert np.isfinite(info["loss"]) and info["loss"] >= 0
    env.reset(seed=2)
    assert not np.allclose(u.goal_params, p1)
    assert not np.allclose(u._goal_actions, a1)
    obs, _ = env.reset(seed=1)
    np.testing.assert_array_equal(u.goal_params, p1)
    np.testing.assert_array_equal(u._goal_actions, a1)
    np.testing.assert_allclose(u._target_x, t1)
    assert env.observation_space.contains(obs)
    # reset without a seed keeps the goal and restores the start state
    env.reset()
    np.testing.assert_array_equal(u.goal_params, p1)
    np.testing.assert_allclose(u.scene.particle_positions(), u._start_state["mpm.x"])


@pytest.mark.parametrize("env_id", IDS)
def test_scripted_actions_beat_zero_actions(env_id):
    """The scripted tool motion that made the goal reaches it (loss near 0, metric up),
    while doing nothing leaves the material far from it: the loss and goal make sense."""
    env = gym.make(env_id)
    u = env.unwrapped
    env.reset(seed=0)
    zero = np.zeros((u.horizon, u.action_dim))
    losses_zero, _ = u.rollout(zero)
    m_zero = u._metrics(u.scene.get_state())
    losses_script, _ = u.rollout(u._goal_actions)
    m_script = u._metrics(u.scene.get_state())
    assert np.all(np.abs(u._goal_actions) <= 1)
    assert losses_script[-1] < 0.2 * losses_zero[-1], (losses_script[-1], losses_zero[-1])
    assert losses_zero[-1] > 0.05
    key = METRIC[env_id]
    assert m_script[key] > m_zero[key] + 0.1, (m_script, m_zero)
    assert m_script[key] > 0.8
    # the rewards of the scripted episode add up to the loss decrease
    assert losses_script[-1] < losses_script[0]

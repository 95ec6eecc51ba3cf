"""Native vector envs (``gym.make_vec(id, num_envs=B)``, the tasks' ``vector_entry_point``):
one batched scene of B worlds that must match B single envs step for step, follow
Gymnasium 1.x's next-step autoreset, and refuse bad input."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import physim.envs  # noqa: F401  (registers the tasks)

B = 3
H = 3
#: a 2D task with muscle actuators (action columns per world after the tools') and a 3D tool task
#: and DiffTaichi's mass-spring walker (spring actuators: the mass-spring part batched), and a
#: tactile task (a FEM gel on its mount; its loss reads each episode's history of readings)
BATCHED = ["physim/Walker2D-v0", "physim/Pinch-v0", "physim/MassSpringWalker2D-v0", "physim/SurfaceFollowing-v0"]


def _make_vec(env_id, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # make_vec warns about a missing / wrong autoreset_mode metadata
        return gym.make_vec(env_id, num_envs=B, horizon=H, **kw)


@pytest.fixture(scope="module", params=BATCHED)
def vec(request):
    envs = _make_vec(request.param)
    yield request.param, envs
    envs.close()


def test_vector_env_matches_single_envs_step_for_step(vec):
    env_id, envs = vec
    assert envs.metadata["batched"] and envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
    assert envs.unwrapped.scene.n_worlds == B
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, (B,) + envs.single_action_space.shape).astype(np.float32) for _ in range(H)]
    obs0, info0 = envs.reset(seed=11)
    assert envs.observation_space.contains(obs0)
    steps = [envs.step(a) for a in actions]
    single = gym.make(env_id, horizon=H)
    for w in range(B):
        o, i = single.reset(seed=11 + w)
        np.testing.assert_allclose(obs0[w], o, rtol=0, atol=1e-6, err_msg=f"world {w}: reset observation")
        assert info0["loss"][w] == pytest.approx(i["loss"], rel=1e-9, abs=1e-15) and info0["_loss"][w]
        for k, a in enumerate(actions):
            o, r, term, trunc, i = single.step(a[w])
            vo, vr, vterm, vtrunc, vi = steps[k]
            np.testing.assert_allclose(vo[w], o, rtol=0, atol=1e-6, err_msg=f"world {w}, step {k}: observation")
            assert vr[w] == pytest.approx(r, rel=1e-7, abs=1e-12), (w, k)
            assert vi["loss"][w] == pytest.approx(i["loss"], rel=1e-9, abs=1e-15)
            assert (vterm[w], vtrunc[w]) == (term, trunc)
    single.close()
    # the worlds' goals differ (seeded per world): their losses are not all equal
    assert len({round(float(v), 12) for v in steps[-1][4]["loss"]}) > 1 or env_id == "physim/Pinch-v0"


def test_vector_env_autoresets_on_the_next_step(vec):
    _env_id, envs = vec
    obs0, info0 = envs.reset(seed=3)
    zero = np.zeros((B,) + envs.single_action_space.shape)
    for _k in range(H):
        obs, rew, term, trunc, info = envs.step(zero)
    assert trunc.all() and not term.any()
    # next step: every world starts its next episode (same goal: autoreset passes no seed), the
    # action is ignored, reward 0, not done
    obs, rew, term, trunc, info = envs.step(np.ones((B,) + envs.single_action_space.shape))
    np.testing.assert_array_equal(obs, obs0)
    np.testing.assert_array_equal(rew, 0.0)
    assert not trunc.any() and not term.any()
    np.testing.assert_allclose(info["loss"], info0["loss"], rtol=1e-12)
    # a partial reset (Gymnasium 1.x reset_mask) leaves the other worlds running
    envs.step(zero)
    moved = envs.unwrapped.scene.per_world(envs.unwrapped.scene.get_state())
    obs, info = envs.reset(options={"reset_mask": np.array([False, True, False])})
    after = envs.unwrapped.scene.per_world(envs.unwrapped.scene.get_state())
    name = envs.unwrapped.task.obs_entries[0]
    np.testing.assert_array_equal(after[name][0], moved[name][0])
    np.testing.assert_array_equal(obs[1], obs0[1])
    assert list(info["_loss"]) == [False, True, False]


def test_vector_env_refuses_bad_input(vec):
    _env_id, envs = vec
    envs.reset(seed=0)
    shape = envs.single_action_space.shape
    with pytest.raises(ValueError, match=rf"shape \({B}, {shape[0]}\)"):
        envs.step(np.zeros((B + 1,) + shape))
    bad = np.zeros((B,) + shape)
    bad[2, 0] = 1.5
    with pytest.raises(ValueError, match=r"world 2: .*outside the action space"):
        envs.step(bad)
    with pytest.raises(ValueError, match="one seed per world"):
        envs.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="reset_mask"):
        envs.reset(options={"reset_mask": [True]})


def test_vector_entry_point_refusals_and_fallback():
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        gym.make_vec("physim/Walker2D-v0", num_envs=0, horizon=H)
    with pytest.raises(ValueError, match="does not render"):
        gym.make_vec("physim/Walker2D-v0", num_envs=2, horizon=H, render_mode="rgb_array")
    # a task whose scene does not batch yet (an emitter): Gymnasium's SyncVectorEnv of single
    # envs, next-step autoreset, said in its metadata
    envs = gym.make_vec("physim/Transporting-v0", num_envs=2, horizon=H)
    try:
        assert isinstance(envs, gym.vector.SyncVectorEnv) and envs.metadata["batched"] is False
        assert envs.metadata["autoreset_mode"] is AutoresetMode.NEXT_STEP
        obs, _ = envs.reset(seed=0)
        obs, rew, term, trunc, _ = envs.step(envs.action_space.sample())
        assert obs.shape == (2,) + envs.single_observation_space.shape and np.isfinite(obs).all()
    finally:
        envs.close()


def test_batched_pool_gives_cmaes_the_one_process_losses():
    """CMA-ES with each generation in one batched rollout (BatchedPool): the same losses, the same
    search and result as CMA-ES evaluating candidate after candidate in this process."""
    from physim.optim import cmaes
    from physim.optim.batched import BatchedPool

    env = gym.make("physim/Walker2D-v0", horizon=H).unwrapped
    env.reset(seed=4)
    rng = np.random.default_rng(1)
    cands = [rng.uniform(-1, 1, (H, env.action_dim)) for _ in range(B + 2)]  # two batches, the second padded
    cands.append(cands[0][:2])  # a shorter candidate: a batch of its own length
    one = [env.loss(a) for a in cands]
    with BatchedPool(env, worlds=B) as pool:
        np.testing.assert_allclose(pool.losses(cands), one, rtol=1e-9)
        assert pool.sim_steps == H * (B + 2) + 2
        a = cmaes(env, iters=2, popsize=B, seed=3, progress=False)
        b = cmaes(env, iters=2, popsize=B, seed=3, progress=False, pool=pool)
    assert b.loss == pytest.approx(a.loss, rel=1e-9)
    np.testing.assert_allclose(b.actions, a.actions, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="worlds must be an integer >= 1"):
        BatchedPool(env, worlds=0)
    with pytest.raises(TypeError, match="needs a physim task"):
        BatchedPool(object())
    with pytest.raises(ValueError, match=r"outside the bounds"):
        BatchedPool(env, worlds=B).losses([np.full((H, env.action_dim), 2.0)])


def test_optimize_with_worlds_matches_one_process(tmp_path):
    """``physim optimize ... --worlds N``: the generations in batched rollouts, the same result."""
    from physim.cli import optimize

    kw = dict(method="random", iters=1, horizon=H, video=False, progress=False)
    one = optimize("physim/Walker2D-v0", out=str(tmp_path / "one"), **kw)
    batched = optimize("physim/Walker2D-v0", out=str(tmp_path / "batched"), worlds=B, **kw)
    assert batched["pool"]["backend"] == "batched" and batched["pool"]["worlds"] == B
    assert batched["final_loss"] == pytest.approx(one["final_loss"], rel=1e-9)
    with pytest.raises(ValueError, match="population methods"):
        optimize("physim/Walker2D-v0", method="adam", iters=1, horizon=H, worlds=B, out=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="pass one of them"):
        optimize("physim/Walker2D-v0", method="cma", iters=1, horizon=H, worlds=B, workers=2, out=str(tmp_path / "y"))


#: reverse mode of a batched 3D task (Pinch) compiles for ~70 s: the 2D tasks cover the API
@pytest.mark.parametrize("vec", ["physim/Walker2D-v0", "physim/MassSpringWalker2D-v0"], indirect=True)
def test_vector_env_loss_and_grad_per_world_goal(vec):
    """The batched env's loss_and_grad: world w's loss and gradient are the single env's at world
    w's goal (seed + w), from one batched forward and reverse pass."""
    env_id, envs = vec
    envs.reset(seed=21)
    task = envs.unwrapped.task
    rng = np.random.default_rng(4)
    actions = rng.uniform(-1, 1, (B, H, task.action_dim))
    losses, grad = envs.unwrapped.loss_and_grad(actions)
    assert losses.shape == (B,) and grad.shape == actions.shape
    single = gym.make(env_id, horizon=H).unwrapped
    for w in range(B):
        single.reset(seed=21 + w)
        loss, g = single.loss_and_grad(actions[w])
        assert losses[w] == pytest.approx(loss, rel=1e-9, abs=1e-15), w
        np.testing.assert_allclose(grad[w], g, rtol=0, atol=1e-9 * max(np.abs(g).max(), 1e-30), err_msg=f"world {w}")
    single.close()
    with pytest.raises(ValueError, match=rf"shape \({B}, t, {task.action_dim}\)"):
        envs.unwrapped.loss_and_grad(actions[0])


def test_train_policy_over_a_batch_of_goals():
    """One MLP policy trained over 3 seeded goals at once (batched worlds): the mean loss over the
    goals falls, and the result holds every world's actions."""
    from physim.optim import train_policy

    envs = gym.make_vec("physim/MassSpringWalker2D-v0", num_envs=B, horizon=12)
    try:
        res = train_policy(envs, iters=8, seed=0, lr=1e-2, progress=False)
    finally:
        envs.close()
    assert res.actions.shape == (B, 12, envs.single_action_space.shape[0])
    assert min(res.losses) < 0.8 * res.losses[0], res.losses

"""`physim train`: Stable-Baselines3 PPO / SAC baselines on a physim task (the ``physim[rl]`` extra).

One PPO run of 200 env steps on the mass-spring walker at a horizon of 10 (the cheapest task)
is shared by the tests of its outputs; every number in its record is checked against the run
it came from: episode returns against the losses (a return is the loss decrease), the saved
actions replayed through the differentiable API against the recorded final loss.
"""

import importlib.util
import json
import sys
import warnings

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest

from physim import cli, rl

ENV, T, STEPS = "physim/MassSpringWalker2D-v0", 10, 200

HAVE_SB3 = importlib.util.find_spec("stable_baselines3") is not None
needs_sb3 = pytest.mark.skipif(not HAVE_SB3, reason='Stable-Baselines3 not installed (pip install "physim[rl]")')


@pytest.fixture(scope="module")
def ppo(tmp_path_factory):
    if not HAVE_SB3:
        pytest.skip('Stable-Baselines3 not installed (pip install "physim[rl]")')
    import torch

    out = tmp_path_factory.mktemp("ppo")
    torch.set_num_threads(2)
    rc = cli.main(["train", "MassSpringWalker2D", "--algo", "ppo", "--steps", str(STEPS), "--horizon", str(T),
                   "--seed", "3", "--out", str(out), "--no-progress"])
    assert rc == 0
    # training ran with one torch thread (the record says so) and gave torch its setting back
    assert torch.get_num_threads() == 2
    return out, json.loads((out / "result.json").read_text())


def test_ppo_writes_curve_and_record(ppo):
    out, rec = ppo
    assert rec["env"] == ENV and rec["algo"] == "ppo" and rec["seed"] == 3 and rec["horizon"] == T
    assert rec["torch_threads"] == 1
    # PPO's rollouts (n_steps = 200, a multiple of T) fit the budget exactly
    assert rec["env_steps"] == STEPS and rec["sim_steps"] == STEPS + T
    assert rec["episodes"] == STEPS // T == len(rec["curve"]["returns"])
    assert rec["curve"]["steps"] == [T * (k + 1) for k in range(STEPS // T)]
    # each episode's end time (for loss-versus-seconds curves): increasing, within the training time
    secs = rec["curve"]["seconds"]
    assert len(secs) == rec["episodes"] and np.all(np.diff(secs) > 0)
    assert 0 < secs[0] and secs[-1] <= rec["train_seconds"] + 1e-3
    img = iio.imread(out / "curve.png")
    assert img.ndim == 3 and img.shape[0] > 200 and img.std() > 5  # a drawn plot, not a blank canvas
    assert (out / "model.zip").stat().st_size > 1000


def test_ppo_record_matches_the_run(ppo):
    out, rec = ppo
    # the reward is the per-step loss decrease, so a return telescopes to initial - final loss
    # (Monitor rounds returns to 1e-6)
    assert np.all(np.isfinite(rec["curve"]["returns"]))
    for r, loss in zip(rec["curve"]["returns"], rec["curve"]["losses"], strict=True):
        assert r == pytest.approx(rec["initial_loss"] - loss, abs=2e-6)
    assert rec["best_episode_loss"] == min(rec["curve"]["losses"])
    assert np.isfinite(rec["final_mean_return"])
    # SB3's vector env stores rewards as float32: 10 steps of rounding ~1e-7 of a reward <= 1
    assert rec["final_mean_return"] == pytest.approx(rec["initial_loss"] - rec["final_loss"], abs=1e-6)
    # the trained policy's actions replayed through the differentiable API give the recorded loss
    actions = np.load(out / "actions.npy")
    assert actions.shape == (T, 4) and np.all(np.abs(actions) <= 1)
    env = rl.make_env(ENV, horizon=T)
    env.reset(seed=3)  # the goal `train --seed 3` trained on
    assert env.unwrapped.loss(actions) == pytest.approx(rec["final_loss"], rel=1e-6)
    env.close()


@needs_sb3
def test_sac_runs_and_records_in_smoke_mode(tmp_path, monkeypatch):
    """SAC through the command; ``PHYSIM_SMOKE=1`` (the README command test) shrinks the run to
    8 env steps over a horizon of 4."""
    monkeypatch.setenv("PHYSIM_SMOKE", "1")
    assert cli.main(["train", "MassSpringWalker2D", "--algo", "sac", "--steps", "5000", "--out", str(tmp_path),
                     "--no-progress"]) == 0
    rec = json.loads((tmp_path / "result.json").read_text())
    assert rec["algo"] == "sac" and rec["horizon"] == 4 and rec["env_steps"] == 8 and rec["episodes"] == 2
    assert rec["final_mean_return"] == pytest.approx(rec["initial_loss"] - rec["final_loss"], abs=1e-6)
    assert (tmp_path / "curve.png").stat().st_size > 1000 and np.load(tmp_path / "actions.npy").shape == (4, 4)


@needs_sb3
def test_wrapped_env_passes_the_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = rl.make_env("MassSpringWalker2D", horizon=T)
    assert env.observation_space.dtype == np.float32 and len(env.observation_space.shape) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)  # raises on any failed check
    # the checker only warns about the unbounded observation (positions, velocities) and the wrapper
    for w in caught:
        assert "infinity" in str(w.message) or "different from the unwrapped" in str(w.message), w.message
    sb3_check_env(env, warn=False)
    env.close()


def test_flatten_wrapper_flattens_a_dict_space():
    class DictEnv(gym.Env):
        observation_space = gym.spaces.Dict({"a": gym.spaces.Box(0, 1, (2, 2)), "b": gym.spaces.Discrete(3)})
        action_space = gym.spaces.Box(-1, 1, (1,))

        def reset(self, *, seed=None, options=None):
            return {"a": np.full((2, 2), 0.5, np.float32), "b": 2}, {}

    env = rl.FlatBoxObservation(DictEnv())
    assert env.observation_space.shape == (7,) and env.observation_space.dtype == np.float32
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, [0.5, 0.5, 0.5, 0.5, 0, 0, 1])


def test_missing_sb3_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)  # import fails as if not installed
    with pytest.raises(SystemExit, match=r'pip install "physim\[rl\]"'):
        cli.main(["train", "MassSpringWalker2D", "--steps", "10", "--out", str(tmp_path)])
    with pytest.raises(ImportError, match=r'physim train needs .*pip install "physim\[rl\]"'):
        rl.train(ENV, steps=10, out=str(tmp_path))


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit, match="unknown environment 'Nope'"):
        cli.main(["train", "Nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["train", "MassSpringWalker2D", "--algo", "dqn"])
    assert "invalid choice: 'dqn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train", "MassSpringWalker2D", "--steps", "0"])
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="algo must be one of .*, got 'dqn'"):
        rl.train(ENV, algo="dqn", out=str(tmp_path))
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got -5"):
        rl.train(ENV, steps=-5, out=str(tmp_path))
    with pytest.raises(ValueError, match="horizon must be an integer >= 1, got 0"):
        rl.train(ENV, horizon=0, out=str(tmp_path))
    with pytest.raises(ValueError, match="torch_threads must be an integer >= 1 or None, got 0"):
        rl.train(ENV, torch_threads=0, out=str(tmp_path))
    with pytest.raises(SystemExit):
        cli.main(["train", "MassSpringWalker2D", "--torch-threads", "-1"])
    assert "expected an integer >= 0, got -1" in capsys.readouterr().err


@pytest.mark.slow
def test_rllib_ppo_creates_and_trains_a_physim_env():
    """RLlib (``ray[rllib]``) creates a physim env through ``register_rllib`` and PPO trains on
    it: examples/rllib_ppo.py, 2 iterations of 40 env steps at a horizon of 10."""
    pytest.importorskip("ray.rllib.algorithms.ppo", reason='RLlib not installed (pip install "ray[rllib]")')
    from subproc import ROOT

    spec = importlib.util.spec_from_file_location("rllib_ppo", ROOT / "examples" / "rllib_ppo.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rows = example.run(ENV, horizon=T, iters=2, batch=40)
    assert [r["env_steps"] for r in rows] == [40, 80]
    # 4 episodes of 10 steps per iteration finished: a finite mean return (loss decrease)
    assert all(np.isfinite(r["episode_return_mean"]) for r in rows)
    # every task is registered by default; a creator passes env_config to gym.make
    from physim.envs import ENVS

    assert rl.register_rllib() == list(ENVS)
    env = rl._RLlibCreator(ENV)({"horizon": 4})
    assert env.unwrapped.horizon == 4 and env.observation_space.dtype == np.float32
    env.close()

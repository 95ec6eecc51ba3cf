"""Reinforcement-learning baselines on physim's tasks: Stable-Baselines3 and Ray RLlib.

    physim train physim/Walker2D-v0 --algo ppo --steps 20000    # writes out/train/Walker2D-v0-ppo/

:func:`train` runs Stable-Baselines3 PPO or SAC (the optional extra ``pip install
"physim[rl]"``) on any registered env and writes a learning curve and a JSON record, so its
numbers sit next to those of ``physim optimize`` on the same task and goal:

* the goal is the one ``reset(seed=seed)`` draws, the same as ``physim optimize --seed`` uses
  (later resets without a seed keep it, see :class:`physim.envs.PhysimEnv`);
* an env's reward is the decrease of the task loss in the step, so an episode's return is
  ``initial_loss - final_loss`` and the record's ``final_loss`` (the trained policy's,
  deterministic) compares directly with ``optimize``'s;
* ``sim_steps`` counts every simulated env step (training and evaluation), the budget
  ``optimize`` reports as ``sim_steps`` too (where a gradient counts twice).

:func:`make_env` builds an env in the form both libraries want (a flat float32 ``Box``
observation, a ``Box`` action in [-1, 1]); :func:`register_rllib` registers every task with
RLlib's env registry (``ray[rllib]``) under its Gymnasium id.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["ALGOS", "FlatBoxObservation", "make_env", "train", "plot_curve", "register_rllib", "require"]

ALGOS = ("ppo", "sac")

_PIP = {"stable_baselines3": 'pip install "physim[rl]"', "ray": 'pip install "physim[ray]"',
        "ray.rllib": 'pip install "ray[rllib]"', "ray.tune.registry": 'pip install "ray[rllib]"'}


def require(module: str, what: str):
    """Import ``module`` (an optional dependency) or raise an ``ImportError`` that says which
    command needs it and how to install it (e.g. ``pip install "physim[rl]"``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        pip = _PIP.get(module, f"pip install {module.split('.')[0]}")
        raise ImportError(f"{what} needs the optional dependency {module!r}, which is not installed: {pip}") from e


class FlatBoxObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Present any observation space as a flat float32 ``Box`` (what SB3's MLP policies and
    RLlib's default models take): a ``Box`` is reshaped to 1-D, a ``Dict`` / ``Tuple`` is
    flattened with :func:`gymnasium.spaces.flatten`. Infinite bounds stay infinite (physim's
    observations are positions and velocities without hard limits); normalize with SB3's
    ``VecNormalize`` or RLlib's connectors."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        flat = spaces.flatten_space(space)
        if not isinstance(flat, spaces.Box):
            raise TypeError(f"cannot flatten observation space {space} to a Box")
        self.observation_space = spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32),
                                            dtype=np.float32)

    def observation(self, observation):
        return spaces.flatten(self.env.observation_space, observation).astype(np.float32)


def _check_action_space(env: gym.Env) -> None:
    space = env.action_space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1:
        raise TypeError(f"{env.spec.id if env.spec else env}: RL baselines need a 1-D Box action space, got {space}")
    if not (np.all(space.low == -1.0) and np.all(space.high == 1.0)):
        raise TypeError(f"RL baselines expect actions normalized to [-1, 1], got bounds {space.low}, {space.high}")


def _env_id(name: str) -> str:
    from physim.cli import _env_id as cli_env_id

    return cli_env_id(name)


def make_env(env_id: str, horizon: int | None = None, **kwargs) -> gym.Env:
    """``gym.make`` a physim task (``"physim/Walker2D-v0"`` or ``"Walker2D"``) wrapped in
    :class:`FlatBoxObservation`; ``horizon`` and ``kwargs`` go to ``gym.make`` (the task's
    arguments). The result passes Gymnasium's ``check_env`` and suits SB3 and RLlib."""
    import physim.envs  # noqa: F401  (registers the tasks)

    env_id = _env_id(env_id)
    if horizon is not None:
        kwargs["horizon"] = int(horizon)
    env = FlatBoxObservation(gym.make(env_id, **kwargs))
    _check_action_space(env)
    return env


class _Curve:
    """Collects (env steps, episode return, final loss, seconds since :attr:`t0`) of every
    finished training episode."""

    def __init__(self):
        self.steps: list[int] = []
        self.returns: list[float] = []
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self.t0 = time.perf_counter()


def _curve_callback(curve: _Curve):
    from stable_baselines3.common.callbacks import BaseCallback

    class CurveCallback(BaseCallback):
        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                ep = info.get("episode")
                if ep is not None:
                    curve.steps.append(int(self.num_timesteps))
                    curve.returns.append(float(ep["r"]))
                    curve.losses.append(float(info["loss"]))
                    curve.seconds.append(time.perf_counter() - curve.t0)
            return True

    return CurveCallback()


def plot_curve(steps, returns, path, title: str, eval_return: float | None = None) -> None:
    """Write the learning curve (episode return vs env steps; a dashed line for the trained
    policy's deterministic return) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if len(steps):
        ax.plot(steps, returns, ".", alpha=0.4, label="training episode")
        k = max(1, len(returns) // 10)
        if len(returns) >= 2 * k:
            smooth = np.convolve(returns, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, "-", label=f"mean of {k}")
    if eval_return is not None:
        ax.axhline(eval_return, color="k", ls="--", lw=1, label="trained policy (deterministic)")
    ax.set_xlabel("env steps (simulated)")
    ax.set_ylabel("episode return (= loss decrease)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _algo_kwargs(algo: str, steps: int, horizon: int, seed: int) -> dict:
    """Defaults sized to the budget: PPO collects ``n_steps`` (a multiple of the horizon, at most
    1024 and at most the budget) per update; SAC's replay buffer holds the whole run."""
    kw = {"seed": seed, "device": "cpu", "verbose": 0}
    if algo == "ppo":
        n_steps = max(horizon, min(1024, steps) // horizon * horizon)
        # about 64 samples per mini-batch, dividing the rollout evenly (no truncated mini-batch)
        parts = next(d for d in range(max(1, n_steps // 64), 0, -1) if n_steps % d == 0)
        batch = n_steps // parts
        kw.update(n_steps=n_steps, batch_size=batch)
    else:
        kw.update(buffer_size=max(steps, 1000), learning_starts=min(100, max(steps // 4, 1)))
    return kw


def train(env_id: str, algo: str = "ppo", steps: int = 10_000, seed: int = 0, out: str | None = None,
          horizon: int | None = None, normalize: bool = True, eval_episodes: int = 1, progress: bool = True,
          algo_kwargs: dict | None = None, env_kwargs: dict | None = None, torch_threads: int | None = 1) -> dict:
    """Train Stable-Baselines3 PPO or SAC on a physim task and write the results.

    Args:
        env_id: a registered id (``"physim/Walker2D-v0"``) or its short name (``"Walker2D"``).
        algo: ``"ppo"`` or ``"sac"``.
        steps: training budget in env steps (PPO rounds it up to whole rollouts of ``n_steps``;
            the record's ``env_steps`` is what ran).
        seed: seeds the goal (``reset(seed=seed)``, as ``physim optimize --seed``), the policy's
            initialization and its exploration.
        out: output directory (default ``out/train/<Task>-v0-<algo>``).
        horizon: episode length in steps (default the task's).
        normalize: normalize observations with running statistics (SB3 ``VecNormalize``; rewards
            are left raw so returns stay loss decreases).
        eval_episodes: episodes of the trained deterministic policy averaged into
            ``final_mean_return`` (the task is deterministic for a fixed goal, so 1 suffices).
        progress: show SB3's progress bar (tqdm / rich).
        algo_kwargs: overrides of the SB3 constructor's keyword arguments.
        env_kwargs: further ``gym.make`` keyword arguments (the task's arguments).
        torch_threads: torch's intra-op threads while training (``torch.set_num_threads``;
            restored afterwards); None leaves torch's setting. The default 1 keeps the policy's
            small matrix products from competing with Taichi's simulation threads: on the 2-core
            CPU, SAC's 640 steps on Walker2D trained in 16 s with 1 thread and 75 s with torch's
            default 2 (same result); PPO was unaffected (5.4 s / 5.2 s).

    Writes ``result.json`` (the returned record), ``curve.png`` (episode return vs env steps),
    ``actions.npy`` (the deterministic policy's actions in its first evaluation episode) and
    ``model.zip`` (the SB3 model). Returns the record: env, algo, seed, horizon, steps,
    env_steps, sim_steps, wall_seconds, train_seconds, initial_loss, final_loss,
    final_mean_return, eval_returns, episodes, best_episode_loss (lowest final loss of a training
    episode), curve (env steps, returns, final losses and seconds since the start of training of
    the training episodes), algo_kwargs, backend.
    """
    if algo not in ALGOS:
        raise ValueError(f"algo must be one of {ALGOS}, got {algo!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(eval_episodes, bool) or not isinstance(eval_episodes, (int, np.integer)) or eval_episodes < 1:
        raise ValueError(f"eval_episodes must be an integer >= 1, got {eval_episodes!r}")
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer))
                                or horizon < 1):
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    if torch_threads is not None and (isinstance(torch_threads, bool)
                                      or not isinstance(torch_threads, (int, np.integer)) or torch_threads < 1):
        raise ValueError(f"torch_threads must be an integer >= 1 or None, got {torch_threads!r}")
    sb3 = require("stable_baselines3", "physim train")
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    import physim
    from physim.cli import _backend_name

    env_id = _env_id(env_id)
    steps, seed = int(steps), int(seed)
    if physim.backend.config() is None:
        physim.init()
    out_dir = Path(out or Path("out") / "train" / f"{env_id.split('/')[-1]}-{algo}")
    out_dir.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    env = make_env(env_id, horizon=horizon, **(env_kwargs or {}))
    task = env.unwrapped
    T = int(task.horizon)
    venv = DummyVecEnv([lambda: Monitor(env)])
    if normalize:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False)
    venv.seed(seed)
    kw = {**_algo_kwargs(algo, steps, T, seed), **(algo_kwargs or {})}
    cls = sb3.PPO if algo == "ppo" else sb3.SAC
    model = cls("MlpPolicy", venv, **kw)
    import torch

    threads_before = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(int(torch_threads))
    try:
        curve = _Curve()
        model.learn(total_timesteps=steps, callback=_curve_callback(curve), progress_bar=progress)
        train_seconds = time.perf_counter() - curve.t0
    finally:
        torch.set_num_threads(threads_before)
    env_steps = int(model.num_timesteps)

    # evaluation: the deterministic policy on the same goal, observations normalized with the
    # statistics frozen
    if normalize:
        venv.training = False
    returns, final_losses, first_actions, initial_loss = [], [], None, None
    for _ in range(eval_episodes):
        venv.seed(seed)
        obs = venv.reset()
        if initial_loss is None:
            initial_loss = float(venv.unwrapped.reset_infos[0]["loss"])
        total, acts = 0.0, []
        for _ in range(T):
            action, _ = model.predict(obs, deterministic=True)
            acts.append(np.clip(np.asarray(action[0], dtype=np.float64), -1.0, 1.0))
            obs, reward, done, infos = venv.step(action)
            total += float(reward[0])
            if done[0]:
                break
        if not done[0]:
            raise RuntimeError(f"{env_id}: an evaluation episode did not end after the horizon of {T} steps")
        returns.append(total)
        final_losses.append(float(infos[0]["loss"]))
        if first_actions is None:
            first_actions = np.asarray(acts)
    wall = time.perf_counter() - t_start

    final_mean_return = float(np.mean(returns))
    record = {
        "env": env_id,
        "algo": algo,
        "seed": seed,
        "horizon": T,
        "steps": steps,
        "env_steps": env_steps,
        "sim_steps": env_steps + T * eval_episodes,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(train_seconds, 2),
        "initial_loss": initial_loss,
        "final_loss": final_losses[0],
        "final_mean_return": final_mean_return,
        "eval_returns": returns,
        "episodes": len(curve.returns),
        # the lowest final loss of a training episode (exploration noise included): comparable with
        # the best candidate a CMA-ES run evaluated, not what the trained policy does
        "best_episode_loss": min(curve.losses) if curve.losses else None,
        "curve": {"steps": curve.steps, "returns": curve.returns, "losses": curve.losses,
                  "seconds": [round(t, 3) for t in curve.seconds]},
        "normalize": bool(normalize),
        "torch_threads": torch_threads,
        "algo_kwargs": {k: v for k, v in kw.items() if isinstance(v, (int, float, str, bool))},
        "backend": _backend_name(),
    }
    if not all(np.isfinite([final_mean_return, initial_loss, *final_losses])):
        raise FloatingPointError(f"{env_id}: the trained policy's return or loss is not finite: {record}")
    np.save(out_dir / "actions.npy", first_actions)
    model.save(out_dir / "model.zip")
    plot_curve(curve.steps, curve.returns, out_dir / "curve.png",
               f"{env_id} {algo.upper()} (seed {seed}, T={T})", eval_return=final_mean_return)
    (out_dir / "result.json").write_text(json.dumps(record, indent=2))
    venv.close()
    return record


def register_rllib(env_ids=None) -> list[str]:
    """Register physim tasks with RLlib's env registry (``ray.tune.registry.register_env``),
    each under its Gymnasium id, so ``PPOConfig().environment("physim/Walker2D-v0",
    env_config={"horizon": 20})`` creates it (in every RLlib worker: the creator imports
    physim there and starts its Taichi runtime). ``env_config`` holds ``gym.make`` keyword
    arguments (``horizon`` and the task's arguments). Needs ``ray[rllib]``. Returns the ids
    registered (default: every task)."""
    from physim.envs import ENVS

    registry = require("ray.tune.registry", "physim.rl.register_rllib")
    ids = list(ENVS) if env_ids is None else [_env_id(e) for e in env_ids]
    for env_id in ids:
        registry.register_env(env_id, _RLlibCreator(env_id))
    return ids


class _RLlibCreator:
    """A picklable env creator for RLlib: ``creator(env_config) -> env``."""

    def __init__(self, env_id: str):
        self.env_id = env_id

    def __call__(self, env_config=None):
        import physim

        if physim.backend.config() is None:
            physim.init(verbose=False)
        return make_env(self.env_id, **dict(env_config or {}))

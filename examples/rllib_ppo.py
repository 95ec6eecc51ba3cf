"""Train RLlib's PPO on a physim task: the tasks registered with RLlib by ``physim.rl.register_rllib``.

    pip install "ray[rllib]"
    python examples/rllib_ppo.py --env physim/MassSpringWalker2D-v0 --horizon 10 --iters 2

RLlib creates the env (in its env runners, here the driver process: ``num_env_runners=0``)
through the creator ``register_rllib`` put in its registry under the Gymnasium id;
``env_config`` carries ``gym.make`` keyword arguments (``horizon`` and the task's arguments).
Prints one line per training iteration: env steps sampled so far and the mean episode return
(an episode's return is the decrease of the task loss, as in ``physim train``).
"""

from __future__ import annotations

import argparse
import sys


def run(env_id: str = "physim/MassSpringWalker2D-v0", horizon: int = 10, iters: int = 2, batch: int = 40,
        seed: int = 0) -> list[dict]:
    """Build RLlib PPO on ``env_id`` and train ``iters`` iterations of ``batch`` env steps each;
    returns per iteration {"iteration", "env_steps", "episode_return_mean"}."""
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig

    from physim.rl import register_rllib

    register_rllib([env_id])
    config = (
        PPOConfig()
        .environment(env_id, env_config={"horizon": horizon})
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .learners(num_learners=0)
        .training(train_batch_size_per_learner=batch, minibatch_size=min(batch, 64), num_epochs=2)
        .debugging(seed=seed)
    )
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    algo = config.build_algo()
    rows = []
    try:
        for _ in range(iters):
            result = algo.train()
            runners = result["env_runners"]
            rows.append({"iteration": int(result["training_iteration"]),
                         "env_steps": int(runners["num_env_steps_sampled_lifetime"]),
                         "episode_return_mean": float(runners.get("episode_return_mean", float("nan")))})
    finally:
        algo.stop()
        if started:
            ray.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="physim/MassSpringWalker2D-v0")
    p.add_argument("--horizon", type=int, default=10)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--batch", type=int, default=40, help="env steps per training iteration")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for row in run(a.env, a.horizon, a.iters, a.batch, a.seed):
        print(f"iteration {row['iteration']}: {row['env_steps']} env steps, "
              f"mean episode return {row['episode_return_mean']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Results table: the loss each optimizer reaches on each environment under one budget of
simulated steps, plus each env's speed.

    python benchmarks/env_table.py                        # all envs, budget = 24 x horizon steps
    python benchmarks/env_table.py --only Pinch --budget 12 --json out.json

Budget accounting (``sim_steps`` of physim.optim): a forward rollout of T steps costs T, a
gradient evaluation 2T (forward + reverse pass). Under a budget of B steps: random search
samples B / T uniform action sequences and keeps the best; CMA-ES (4 keyframes) runs
generations until B is spent; Adam runs B / 2T iterations from zero actions; hybrid spends
a third of B on CMA-ES and the rest on Adam from CMA's best.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np


def run_env(env_id: str, budget_factor: int, seed: int, horizon: int | None) -> dict:
    import gymnasium as gym

    import physim.envs  # noqa: F401
    from physim import optim

    env = gym.make(env_id, **({} if horizon is None else {"horizon": horizon}))
    task = env.unwrapped
    T = task.horizon
    budget = budget_factor * T
    row = {"env": env_id, "horizon": T, "budget_sim_steps": budget, "action_dim": task.action_dim}
    env.reset(seed=seed)
    task.loss(task.problem.zero_actions())  # warm-up compile of the forward kernels
    row["steps_per_s"] = round(task.measure_speed(10), 2)
    env.reset(seed=seed)
    zero = task.problem.zero_actions()
    task.loss_and_grad(zero)  # warm-up compile of the reverse kernels
    t0 = time.perf_counter()
    row["zero_action_loss"], _ = task.loss_and_grad(zero)
    row["loss_and_grad_seconds"] = round(time.perf_counter() - t0, 2)

    # random search
    rng = np.random.default_rng(seed)
    start = task.sim_steps
    t0 = time.perf_counter()
    best = math.inf
    while task.sim_steps - start + T <= budget:
        best = min(best, task.loss(rng.uniform(-1, 1, (T, task.action_dim))))
    row["random"] = {"loss": best, "wall_seconds": round(time.perf_counter() - t0, 1)}

    k = 4
    popsize = 4 + int(3 * math.log(k * task.action_dim))
    cma_gens = max(1, budget // (popsize * T))
    res = optim.cmaes(task, iters=cma_gens, keyframes=k, popsize=popsize, seed=seed, progress=False)
    row["cma"] = {"loss": res.loss, "iters": cma_gens, "sim_steps": res.sim_steps, "wall_seconds": res.wall_seconds}

    adam_iters = max(1, budget // (2 * T))
    res = optim.adam(task, iters=adam_iters, lr=0.1, seed=seed, progress=False)
    row["adam"] = {"loss": res.loss, "iters": adam_iters, "sim_steps": res.sim_steps, "wall_seconds": res.wall_seconds}

    h_cma = max(1, (budget // 3) // (popsize * T))
    h_adam = max(1, (budget - h_cma * popsize * T) // (2 * T))
    res = optim.hybrid(task, cma_iters=h_cma, adam_iters=h_adam, keyframes=k, popsize=popsize, lr=0.1, seed=seed,
                       progress=False)
    row["hybrid"] = {"loss": res.loss, "iters": [h_cma, h_adam], "sim_steps": res.sim_steps,
                     "wall_seconds": res.wall_seconds}
    env.close()
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| env | T | zero actions | random | CMA-ES | Adam | hybrid | steps/s | loss+grad s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        losses = {m: r[m]["loss"] for m in ("random", "cma", "adam", "hybrid")}
        best = min(losses.values())
        cells = [f"**{v:.4g}**" if v == best else f"{v:.4g}" for v in losses.values()]
        lines.append(f"| {r['env'].split('/')[-1]} | {r['horizon']} | {r['zero_action_loss']:.4g} | "
                     + " | ".join(cells) + f" | {r['steps_per_s']:.1f} | {r['loss_and_grad_seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="regex on env ids")
    parser.add_argument("--budget", type=int, default=24, help="budget in units of the horizon (default 24)")
    parser.add_argument("--horizon", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "envs.json"))
    args = parser.parse_args(argv)
    import physim
    from physim.envs import ENVS

    physim.init(fast_compile=True)
    ids = [e for e in ENVS if args.only is None or re.search(args.only, e)]
    rows = []
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    for env_id in ids:
        print(f"== {env_id}", flush=True)
        try:
            rows.append(run_env(env_id, args.budget, args.seed, args.horizon))
        except Exception as exc:  # keep going: one broken env must not hide the others' numbers
            print(f"   failed: {type(exc).__name__}: {exc}", flush=True)
            rows.append({"env": env_id, "error": f"{type(exc).__name__}: {exc}"})
        out.write_text(json.dumps(rows, indent=2))
    ok = [r for r in rows if "error" not in r]
    print(markdown(ok))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())

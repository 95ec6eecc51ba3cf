"""PPO and SAC at the README results table's budget: 16 x T env steps (T = 20), seed 0, on the
table's tasks (the same goal as ``physim optimize --seed 0``).

    python benchmarks/rl_column.py                      # both algorithms, every task
    python benchmarks/rl_column.py --algos ppo --tasks Pinch Walker2D

Each run is :func:`physim.rl.train` (``physim train``); the record keeps the trained deterministic
policy's final loss, the lowest final loss of a training episode, env and simulated steps and wall
time. Results are written after every run to ``benchmarks/results/rl_column.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ["Pouring", "LatteArt", "IceCream", "Gathering", "Pinch", "RollingPin", "Writer", "Walker2D", "Walker3D",
         "Circulation", "Mixing"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", nargs="+", default=["ppo", "sac"])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--budget", type=int, default=16, help="env steps = budget x horizon")
    parser.add_argument("--out", default=str(HERE / "results" / "rl_column.json"))
    parser.add_argument("--work", default="/tmp/rlcol", help="each run's output directory goes here")
    args = parser.parse_args(argv)

    import physim
    from physim import rl

    physim.init(arch="cpu", fast_compile=True, verbose=False)
    out: dict = {}
    for algo in args.algos:
        for task in args.tasks:
            t0 = time.time()
            try:
                r = rl.train(f"physim/{task}-v0", algo=algo, steps=args.budget * args.horizon, seed=0,
                             horizon=args.horizon, progress=False, out=f"{args.work}/{task}-{algo}")
                out[f"{task}/{algo}"] = {k: r[k] for k in ("initial_loss", "final_loss", "best_episode_loss",
                                                            "env_steps", "sim_steps", "wall_seconds")}
            except Exception as e:  # one task's failure is recorded, the others still run
                out[f"{task}/{algo}"] = {"error": f"{type(e).__name__}: {e}"}
                traceback.print_exc()
            print(task, algo, json.dumps(out[f"{task}/{algo}"]), f"{time.time() - t0:.0f}s", flush=True)
            Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

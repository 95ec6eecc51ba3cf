"""A CMA-ES generation's rollouts one after another versus on worker processes or Ray actors.

One process makes the task (``gym.make(id, horizon=H)``, ``reset(seed=0)``) and runs
:func:`physim.optim.cmaes` with ``popsize`` candidates per generation for ``generations``
generations, three ways with the same seed:

* ``sequential``: every candidate in this process (Taichi's threads on all cores);
* ``processes``: a :class:`physim.optim.parallel.Pool` of ``workers`` spawned processes;
* ``ray``: the same pool as Ray actors of a new local Ray on this machine (skipped without Ray).

Each pool is started once (its workers' envs built, kernels loaded from Taichi's offline cache)
before any timing and serves every run; its start-up is reported on its own
(``start_seconds``). The modes run interleaved, ``rounds`` times each, so a change in the
machine's load hits them alike. A generation's time is the wall time between two consecutive
generation callbacks (the first generation, which includes the initial loss, is not counted);
``generation_seconds`` is the median over all runs, every one in ``generation_seconds_all``.
``cpu_seconds_per_rollout`` is the CPU time of this process's threads plus the workers' per
candidate (the overhead of a mode, which on a loaded machine moves far less than wall time).
``same_losses``: a mode's per-generation best losses match the sequential run's to 1e-9
(relative). The 1- and 5-minute load averages before and after every run are recorded: this
machine is shared, and wall times carry the other sessions' load.

    python benchmarks/cma_parallel.py                                  # popsize 16 and 32
    python benchmarks/cma_parallel.py --popsize 16 --modes sequential,processes

Results go to ``benchmarks/results/cma_parallel.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODES = ("sequential", "processes", "ray")


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()[:2]]


def _run(mode: str, task, pool, seed: int, popsize: int, generations: int) -> dict:
    """One CMA-ES run; per timed generation its wall seconds, this process's CPU seconds and the
    workers' CPU seconds (0 in-process)."""
    import numpy as np

    from physim import optim

    stamps: list[tuple[float, float, float]] = []

    def callback(gen, loss, actions):
        stamps.append((time.perf_counter(), time.process_time(), 0.0 if pool is None else pool.cpu_seconds))

    load = _load()
    res = optim.cmaes(task, iters=generations, popsize=popsize, seed=seed, progress=False, callback=callback,
                      pool=pool)
    d = np.diff(np.array(stamps), axis=0)
    return {"wall": d[:, 0].tolist(), "main_cpu": d[:, 1].tolist(), "worker_cpu": d[:, 2].tolist(),
            "losses": res.losses, "sim_steps": res.sim_steps, "load": [load, _load()]}


def _summary(mode: str, workers: int, popsize: int, runs: list[dict], start_seconds) -> dict:
    wall = [w for r in runs for w in r["wall"]]
    cpu = [m + w for r in runs for m, w in zip(r["main_cpu"], r["worker_cpu"], strict=True)]
    med = statistics.median(wall)
    return {"mode": mode, "workers": workers, "popsize": popsize, "generation_seconds": round(med, 3),
            "generation_seconds_all": [round(w, 3) for w in wall], "rollouts_per_s": round(popsize / med, 2),
            "cpu_seconds_per_rollout": round(statistics.median(cpu) / popsize, 4),
            "start_seconds": None if start_seconds is None else round(start_seconds, 2),
            "losses": runs[0]["losses"], "sim_steps": runs[0]["sim_steps"],
            "load_1min_5min": [r["load"] for r in runs]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="physim/MassSpringWalker2D-v0")
    parser.add_argument("--horizon", type=int, default=50)
    parser.add_argument("--popsize", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--generations", type=int, default=4, help="generations per run (the first is not timed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="runs per mode and popsize, the modes interleaved")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "cma_parallel.json"))
    args = parser.parse_args(argv)
    if args.generations < 2:
        parser.error("--generations must be >= 2 (the first generation is not timed)")
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"unknown mode(s) {bad}; choose from {MODES}")

    import gymnasium as gym
    import numpy as np

    import physim
    import physim.envs  # noqa: F401  (registers the tasks)
    from physim.optim import parallel

    if "ray" in modes and not parallel.ray_available():
        print("Ray is not installed: skipping the ray mode", file=sys.stderr)
        modes.remove("ray")
    cfg = physim.init(arch="cpu", fast_compile=True, verbose=False)  # as `physim optimize` starts it
    env = gym.make(args.env, horizon=args.horizon)
    env.reset(seed=args.seed)
    task = env.unwrapped
    zero = task.problem.zero_actions()
    t0 = time.perf_counter()
    reference = (zero, task.loss(zero))  # compiles (or loads) the kernels here: untimed
    warm = time.perf_counter() - t0
    pools = {"sequential": None}
    for mode in modes:  # every pool started once, before any timing, and kept for all the runs
        if mode != "sequential":
            kw = {"ray_init_kwargs": {"log_to_driver": False}} if mode == "ray" else {}
            pools[mode] = parallel.Pool(parallel.EnvFactory.from_env(env, args.seed), workers=args.workers,
                                        backend=mode, **kw).start(reference)
            print(f"{mode}: {args.workers} workers started in {pools[mode].start_seconds:.1f} s", flush=True)
    rows = []
    try:
        for popsize in args.popsize:
            runs: dict[str, list] = {m: [] for m in modes}
            for _ in range(args.rounds):  # the modes interleaved, so a change of load hits them alike
                for mode in modes:
                    runs[mode].append(_run(mode, task, pools[mode], args.seed, popsize, args.generations))
            ref = None
            for mode in modes:
                pool = pools[mode]
                row = _summary(mode, 1 if pool is None else args.workers, popsize, runs[mode],
                               None if pool is None else pool.start_seconds)
                if mode == "sequential":
                    ref = row
                elif ref is not None:
                    row["same_losses"] = bool(np.allclose(row["losses"], ref["losses"], rtol=1e-9, atol=0))
                    row["speedup"] = round(ref["generation_seconds"] / row["generation_seconds"], 2)
                rows.append(row)
                print(f"popsize {popsize:3d} {mode:10s}: {row['generation_seconds']:.2f} s per generation, "
                      f"{row['cpu_seconds_per_rollout']:.3f} CPU s per rollout"
                      + (f", speedup {row['speedup']}x, same losses {row['same_losses']}" if "speedup" in row else "")
                      + f"; load {row['load_1min_5min']}", flush=True)
    finally:
        for pool in pools.values():
            if pool is not None:
                pool.close()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout
    record = {"meta": {"command": "python benchmarks/cma_parallel.py " + " ".join(argv or sys.argv[1:]),
                       "env": args.env, "horizon": args.horizon, "seed": args.seed, "cpus": os.cpu_count(),
                       "machine": platform.processor() or platform.machine(), "backend": f"{cfg.arch}/{cfg.precision}",
                       "fast_compile": cfg.fast_compile, "physim_commit": commit.strip(),
                       "first_loss_seconds": round(warm, 2), "generations": args.generations,
                       "rounds": args.rounds,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
              "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Batched worlds against separate scenes run one after another, in the same run.

Two measurements:

* ``scaling``: a small 2D scene (an elastic block pressed by a sphere tool: grid 32, a few
  hundred particles; the shape of the test suite's gradient scenes) simulated for ``substeps``
  substeps as one ``Scene(n_worlds=B)`` and as B rollouts of a one-world scene, for B = 1 ... 256.
  World-substeps/s and particle-substeps/s of each, and the batched throughput over B times the
  B = 1 batched throughput ("linear scaling" efficiency) and over the sequential throughput.
* ``cma``: one CMA-ES generation's ``popsize`` rollouts of a task (``env.loss``), one after
  another in this process versus in one batched rollout (:class:`physim.optim.batched.BatchedPool`),
  with the losses compared (relative 1e-9).

Each timing is the median of ``rounds`` runs after an untimed warm-up (compilation), the two
ways interleaved so a change of the machine's load hits them alike; the 1- and 5-minute load
averages are recorded (this machine is shared: wall times carry other work's load).

    python benchmarks/batched.py                       # both, B up to 256, Walker2D and Pinch
    python benchmarks/batched.py --max-worlds 32 --tasks physim/Walker2D-v0

Results: ``benchmarks/results/batched.json`` and ``benchmarks/batched.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()[:2]]


def _scene(ps, n_worlds: int):
    scene = ps.Scene(dim=2, grid_res=32, dt=2e-4, substeps_per_step=10, n_worlds=n_worlds)
    scene.add_body(ps.Box(center=[0.5, 0.3], size=[0.16, 0.12]), ps.Elastic(E=5e3, nu=0.3), velocity=[0.2, 0.0],
                   jitter=0.3, seed=1)
    scene.add_tool(ps.SphereTool(position=[0.38, 0.34], radius=0.05, softness=50.0, friction=0.4))
    return scene


def _median_time(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def scaling(ps, worlds: list[int], substeps: int, rounds: int) -> list[dict]:
    steps = max(1, substeps // 10)
    one = _scene(ps, 1).build(max_steps=steps)
    n = one.n_particles
    rng = np.random.default_rng(0)
    rows = []
    for B in worlds:
        batched = _scene(ps, B).build(max_steps=steps)
        acts = rng.normal(0.0, 0.2, (steps, B, one.action_dim))

        def run_batched():
            batched.reset()
            batched.forward(acts, requires_grad=False)

        def run_sequential():
            for w in range(B):
                one.reset()
                one.forward(acts[:, w], requires_grad=False)

        run_batched()  # compile / warm
        run_sequential()
        load = _load()
        tb, ts = [], []
        for _ in range(rounds):
            tb.append(_median_time(run_batched, 1))
            ts.append(_median_time(run_sequential, 1))
        tb, ts = statistics.median(tb), statistics.median(ts)
        total = steps * 10
        rows.append({"worlds": B, "particles_per_world": n, "substeps": total,
                     "batched_seconds": round(tb, 4), "sequential_seconds": round(ts, 4),
                     "batched_world_substeps_per_s": round(B * total / tb, 1),
                     "sequential_world_substeps_per_s": round(B * total / ts, 1),
                     "batched_particle_substeps_per_s": round(B * n * total / tb, 1),
                     "speedup_over_sequential": round(ts / tb, 3), "load_1min_5min": [load, _load()]})
        base = rows[0]["batched_world_substeps_per_s"]
        rows[-1]["linear_scaling_efficiency"] = round(rows[-1]["batched_world_substeps_per_s"] / (B * base), 3)
        print(json.dumps(rows[-1]), flush=True)
    return rows


def cma_generation(env_id: str, popsize: int, horizon: int | None, rounds: int) -> dict:
    import gymnasium as gym

    import physim.envs  # noqa: F401
    from physim.optim.batched import BatchedPool

    kw = {} if horizon is None else {"horizon": horizon}
    env = gym.make(env_id, **kw).unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    cands = [rng.uniform(-1, 1, (env.horizon, env.action_dim)) for _ in range(popsize)]
    ref = env.loss(cands[0])  # compile / warm
    pool = BatchedPool(env, worlds=popsize).start(reference=(cands[0], ref))
    pool.losses(cands)  # warm
    load = _load()
    tb, ts, seq, bat = [], [], None, None
    for _ in range(rounds):
        t0 = time.perf_counter()
        seq = [env.loss(a) for a in cands]
        ts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bat = pool.losses(cands)
        tb.append(time.perf_counter() - t0)
    tb, ts = statistics.median(tb), statistics.median(ts)
    rel = float(np.max(np.abs(np.subtract(seq, bat)) / np.maximum(np.abs(seq), 1e-300)))
    row = {"env": env_id, "horizon": env.horizon, "popsize": popsize, "particles_per_world": env.scene.n_particles,
           "sequential_seconds": round(ts, 3), "batched_seconds": round(tb, 3), "batched_over_sequential":
           round(tb / ts, 3), "max_relative_loss_difference": rel, "same_losses": rel < 1e-9,
           "load_1min_5min": [load, _load()]}
    print(json.dumps(row), flush=True)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    B = [r["worlds"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(B, [r["batched_world_substeps_per_s"] for r in rows], "o-", label="one batched scene")
    ax.loglog(B, [r["sequential_world_substeps_per_s"] for r in rows], "s-", label="B scenes one after another")
    ax.loglog(B, [rows[0]["batched_world_substeps_per_s"] * b for b in B], "k:", label="linear in B")
    ax.set_xlabel("worlds B")
    ax.set_ylabel("world-substeps / s")
    ax.set_title(f"2D, {rows[0]['particles_per_world']} particles per world, grid 32 ({platform.machine()})")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-worlds", type=int, default=256)
    parser.add_argument("--substeps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", default=["physim/Walker2D-v0", "physim/Pinch-v0"])
    parser.add_argument("--popsize", type=int, default=32)
    parser.add_argument("--horizon", type=int, default=None)
    parser.add_argument("--arch", default="cpu")
    parser.add_argument("--out", default=str(HERE / "results" / "batched.json"))
    args = parser.parse_args(argv)

    import physim as ps

    cfg = ps.init(arch=args.arch, fast_compile=True, verbose=False)
    worlds = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b <= args.max_worlds]
    record = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "arch": args.arch,
                          "precision": cfg.precision},
              "scaling": scaling(ps, worlds, args.substeps, args.rounds),
              "cma": [cma_generation(t, args.popsize, args.horizon, args.rounds) for t in args.tasks]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    plot(record["scaling"], HERE / "batched.png")
    print(f"wrote {args.out} and {HERE / 'batched.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

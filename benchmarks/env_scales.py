"""Env steps per second at the default (CPU-sized) and the paper scale of physim's tasks.

Each (task, scale) runs in its own process (fresh Taichi runtime, no memory carried over):
``gym.make(id, horizon=H, scale=...)``, ``reset(seed=0)``, one warm-up step (kernel compiles),
then ``steps`` timed steps of random actions (``PhysimEnv.measure_speed``). Written per run:
the scene's size (grid, MPM particles, FEM nodes and tets), dt, substeps and the simulated
seconds per env step (the two scales should agree: the paper scale refines space and time,
not the task), construction seconds (scene build plus the scripted goal rollout, compiles
included) and env steps/s.

    python benchmarks/env_scales.py                       # the default task list
    python benchmarks/env_scales.py --envs Pinch Pouring --steps 10 --paper-steps 3

Results go to ``benchmarks/results/env_scales.json`` (with the commands that made them;
``--append`` merges a run into it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: one task per family at least: PlasticineLab, FluidLab, DiffTaichi, DiffTactile
DEFAULT_ENVS = ("Pinch", "Pouring", "Walker2D", "SurfaceFollowing", "ElasticGrasp")

_WORKER = r"""
import json, sys, time
import gymnasium as gym
import physim.envs  # noqa: F401
env_id, scale, horizon, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
env = gym.make(env_id, horizon=horizon, scale=scale)
u = env.unwrapped
build = time.perf_counter() - t0
scene = u.scene
state = scene.get_state()
t0 = time.perf_counter()
env.reset(seed=0)
env.step(env.action_space.sample())
warm = time.perf_counter() - t0
t0 = time.perf_counter()
for _ in range(steps):
    env.step(env.action_space.sample())
wall = time.perf_counter() - t0
fem = getattr(scene, "fem_bodies", [])
print("RESULT " + json.dumps({
    "env": env_id, "scale": scale, "horizon": horizon, "settings": {k: v for k, v in u.settings.items()},
    "grid_res": scene.grid_res, "particles": int(scene.n_particles),
    "fem_nodes": int(sum(b.n_vertices for b in fem)), "fem_tets": int(sum(b.n_tets for b in fem)),
    "spring_nodes": int(state["springs.x"].shape[0]) if "springs.x" in state else 0,
    "dt": scene.dt, "substeps": scene.substeps_per_step, "step_seconds": scene.dt * scene.substeps_per_step,
    "construct_s": round(build, 2), "warmup_step_s": round(warm, 2), "timed_steps": steps,
    "steps_per_s": round(steps / wall, 3), "substeps_per_s": round(steps * scene.substeps_per_step / wall, 1),
    "load_avg_1min": round(__import__("os").getloadavg()[0], 1),
}, default=str))
"""


def run_one(env: str, scale: str, horizon: int, steps: int, timeout: float) -> dict:
    """One (task, scale) measurement in a fresh process; ``{"error": ...}`` when it fails."""
    env_id = env if "/" in env else f"physim/{env}-v0"
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", _WORKER, env_id, scale, str(horizon), str(steps)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"env": env_id, "scale": scale, "error": f"timed out after {timeout:g} s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            rec = json.loads(line[len("RESULT "):])
            rec["process_s"] = round(time.perf_counter() - t0, 1)
            return rec
    return {"env": env_id, "scale": scale, "error": (out.stderr or out.stdout).strip().splitlines()[-3:]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), help="task names or ids")
    p.add_argument("--scales", nargs="+", default=["default", "paper"], choices=["default", "paper"])
    p.add_argument("--horizon", type=int, default=8, help="episode length (the scripted goals run it once)")
    p.add_argument("--steps", type=int, default=6, help="timed env steps at the default scale")
    p.add_argument("--paper-steps", type=int, default=2, help="timed env steps at the paper scale")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per (task, scale) process")
    p.add_argument("--out", default=str(HERE / "results" / "env_scales.json"))
    p.add_argument("--append", action="store_true",
                   help="merge into --out: replace its runs of the same (task, scale), keep the others")
    a = p.parse_args(argv)
    if a.horizon < a.steps + 2 or a.horizon < a.paper_steps + 2:
        p.error(f"--horizon {a.horizon} must exceed the timed steps + 1 (warm-up)")
    command = "python benchmarks/env_scales.py " + " ".join(argv if argv is not None else sys.argv[1:])
    old = json.loads(Path(a.out).read_text()) if a.append and Path(a.out).exists() else {"runs": [], "commands": []}
    commands = old.get("commands", [old.get("command")]) + [command]
    runs: list[dict] = []
    result: dict = {}
    for env in a.envs:
        for scale in a.scales:
            steps = a.steps if scale == "default" else a.paper_steps
            rec = run_one(env, scale, a.horizon, steps, a.timeout)
            runs.append(rec)
            print(json.dumps(rec), flush=True)
            done = {(r["env"], r["scale"]) for r in runs}
            result = {
                "commands": commands,
                "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()},
                "note": "ti.cpu, f64; CPU cores shared with other jobs (each run records its 1-minute load "
                        "average: timings scale with it); steps/s exclude the warm-up step (kernel compiles) "
                        "and construction (scene build + the scripted goal rollout)",
                "runs": [r for r in old["runs"] if (r["env"], r["scale"]) not in done] + runs,
            }
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(result, indent=1) + "\n")  # after every run: partial results survive
    return result


if __name__ == "__main__":
    main()

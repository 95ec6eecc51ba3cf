"""Emitter benchmark (issue 14, "Speed"): an MPM scene whose fluid enters through an emitter, side
by side with the same scene with all its particles present from the start.

Cases, each in a fresh subprocess (its own ``ti.init``, f32, CPU, checkpointing on):

* ``emitter``: a 2D ``res``-cell grid, a sphere nozzle (a tool, moving right at 0.2 m/s) of radius
  0.06 m emitting Fluid at 1.5 m/s down-right at the matched rate from t = 0 for the whole rollout
  (``steps`` x 10 substeps of 5e-4 s): ``N`` reserved particles, emitted linearly in time, so on
  average about half of them are active;
* ``present``: the same grid, tool and actions, with ``N`` particles of the same fluid present
  from the start (a box of them below the nozzle) and no emitter.

Per case: forward substeps/s (``requires_grad=False``), the recorded forward + backward time
over the plain forward time (fwd+bwd / fwd), and the compile times (first forward, first
backward, each over 11 steps: two checkpoint chunks). Times are the best of ``repeats`` (the
2-core machine is shared: +-2x noise, and more while others compile).

    nice -n 5 python benchmarks/emitter.py --json benchmarks/results/emitter.json   # ~2-4 min
    python benchmarks/emitter.py --worker emitter --res 64 --steps 20              # one case, JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DT, SUB = 5e-4, 10


def worker(case: str, res: int, steps: int, repeats: int, n_particles: int | None) -> dict:
    import numpy as np

    import physim as ps

    ps.init(arch="cpu", precision="f32", verbose=False)
    scene = ps.Scene(dim=2, grid_res=res, dt=DT, substeps_per_step=SUB, checkpoint_every=50)
    noz = ps.SphereTool(position=(0.25, 0.75), radius=0.03)
    scene.add_tool(noz)
    fluid = ps.Fluid(bulk_modulus=2e3, density=1000.0, viscosity=0.0)
    if case == "emitter":
        scene.add_emitter(ps.Emitter(fluid, noz, speed=1.5, radius=0.06, direction=(1.0, -1.0)))
    else:
        # a box of the emitter's particle count (spacing dx / 2: 4 particles per cell in 2D)
        side = np.sqrt(n_particles) * scene.spacing
        scene.add_body(ps.Box(center=(0.55, 0.1 + side / 2 + 0.01), size=(side, side)), fluid)
    scene.build(max_steps=steps)
    actions = np.tile([0.2, 0.0, 0.0], (steps, 1))
    warm = min(steps, 11)  # 110 substeps: across two chunk boundaries (compiles the slot copies too)
    t0 = time.perf_counter()
    scene.forward(actions[:warm], requires_grad=False)
    compile_fwd = time.perf_counter() - t0
    scene.reset()
    t0 = time.perf_counter()
    scene.forward(actions[:warm])
    scene.backward(grad_x=np.ones((scene.n_particles, 2)))
    compile_bwd = time.perf_counter() - t0
    fwd, both = [], []
    for _ in range(repeats):
        scene.reset()
        t0 = time.perf_counter()
        scene.forward(actions, requires_grad=False)
        fwd.append(time.perf_counter() - t0)
        active = int(scene.particle_active().sum())
        scene.reset()
        t0 = time.perf_counter()
        scene.forward(actions)
        scene.backward(grad_x=np.ones((scene.n_particles, 2)))
        both.append(time.perf_counter() - t0)
    substeps = steps * SUB
    return dict(case=case, dim=2, res=res, particles=scene.n_particles, active_at_end=active, substeps=substeps,
                dt=DT, precision="f32", compile_forward_seconds=compile_fwd, compile_backward_seconds=compile_bwd,
                forward_seconds=min(fwd), forward_seconds_all=fwd, fwd_bwd_seconds=min(both),
                fwd_bwd_seconds_all=both, substeps_per_s=substeps / min(fwd), fwd_bwd_over_fwd=min(both) / min(fwd))


def run_case(args, case: str, n_particles: int | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, "--res", str(args.res), "--steps",
           str(args.steps), "--repeats", str(args.repeats)]
    if n_particles is not None:
        cmd += ["--particles", str(n_particles)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["emitter", "present"])
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--particles", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.res, args.steps, args.repeats, args.particles)))
        return
    em = run_case(args, "emitter", None)
    present = run_case(args, "present", em["particles"])
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    result = dict(benchmark="emitter", command="python benchmarks/emitter.py " + " ".join(sys.argv[1:]),
                  machine=dict(cpu_count=os.cpu_count(), platform=platform.platform()), physim_rev=rev.strip(),
                  date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), cases=[em, present])
    for c in result["cases"]:
        print(f"{c['case']:8s} {c['particles']:6d} particles ({c['active_at_end']} active at the end): "
              f"{c['substeps_per_s']:8.1f} substeps/s, fwd+bwd / fwd = {c['fwd_bwd_over_fwd']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

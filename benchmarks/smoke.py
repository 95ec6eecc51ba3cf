"""Smoke / air field benchmark (issue 14, "Speed"): physim's ``SmokeField`` against Taichi's own
``examples/simulation/stable_fluid.py`` on the same grid, side by side in one run.

Cases, each in a fresh subprocess (its own ``ti.init``):

* physim, 2D ``res x res`` (f32, checkpointing on): a hot smoky blob and one vent blowing up-right,
  dt = 0.01 s: forward substeps/s (``requires_grad=False``), and forward (recorded) + backward
  over that forward; the mean CG iterations per pressure solve (relative residual 1e-5, f32);
* the same in 3D at ``res3^3`` (physim only: the example is 2D; the first forward and the first
  backward compile the kernels, reported as ``compile_seconds`` / ``compile_backward_seconds``);
* Taichi's ``stable_fluid.py`` (the installed file, run unmodified on disk and headless: its
  top-level GUI loop, argparse-driven ``ti.init`` and sparse-matrix branch are dropped by
  ``reference_worker.filter_statements``; we call ``ti.init(arch=ti.cpu)`` ourselves), with
  ``res`` set to the same grid and its own 500 Jacobi iterations per step (f32), a mouse impulse
  to the right from the centre every step: steps/s of its ``step()``.

What differs: stable_fluid is collocated (cell-centred velocity, central differences, so its
"divergence-free" field is only so on the wide stencil), RK3 backtrace, a fixed 500 Jacobi
iterations (residual not controlled), no temperature, no gradients; physim is a MAC grid,
RK2 backtrace, CG to a relative residual of 1e-5 (the iterations it takes), temperature and
density, differentiable, with tape recording in the fwd+bwd case.

    nice -n 5 python benchmarks/smoke.py --json benchmarks/results/smoke.json   # ~3-6 min, 2 loaded cores
    python benchmarks/smoke.py --worker physim --dim 2 --res 32 --steps 4       # one case, JSON on stdout
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
DT = 0.01


def physim_worker(dim: int, res: int, steps: int, repeats: int) -> dict:
    import numpy as np

    import physim as ps

    ps.init(arch="cpu", precision="f32", verbose=False)
    c = np.array([0.5, 0.3, 0.5][:dim])

    def blob(x):
        return np.exp(-((x - c) ** 2).sum(axis=1) / (2 * 0.08**2))

    vent = ps.Vent(center=[0.2, 0.1, 0.5][:dim], size=[0.1] * dim, density=1.0, rate=50.0)
    field = ps.SmokeField(res=res, buoyancy=1.0, smoke_weight=0.1, temperature=blob, density=blob, vents=[vent])
    scene = ps.Scene(dim=dim, grid_res=16, dt=DT, substeps_per_step=1, checkpoint_every=min(steps, 50))
    scene.add_smoke(field)
    scene.build(max_steps=steps)
    actions = np.zeros((steps, scene.action_dim))
    actions[:, scene.smoke_slice] = [0.5, 1.0] + [0.0] * (dim - 2) + [5.0]  # velocity (m/s), then +5 K
    sm = scene.partset.smoke
    iters = []
    orig = sm._solve

    def counting(rhs):
        out = orig(rhs)
        iters.append(out[1])
        return out

    sm._solve = counting
    t0 = time.perf_counter()
    scene.forward(actions[:2], requires_grad=False)  # compile
    compile_s = time.perf_counter() - t0
    fwd, fwdbwd = [], []
    for _ in range(repeats):
        scene.reset()
        iters.clear()
        t0 = time.perf_counter()
        scene.forward(actions, requires_grad=False)
        fwd.append(time.perf_counter() - t0)
        cg_fwd = float(np.mean(iters))
    seeds = {"smoke.temperature": np.ones(res**dim)}
    scene.reset()
    t0 = time.perf_counter()
    scene.forward(actions[:2])
    scene.backward(seeds)  # compile the adjoints
    compile_bwd_s = time.perf_counter() - t0
    for _ in range(repeats):
        scene.reset()
        iters.clear()
        t0 = time.perf_counter()
        scene.forward(actions)
        g = scene.backward(seeds)
        fwdbwd.append(time.perf_counter() - t0)
    assert np.isfinite(g.params["smoke.buoyancy"]).all()
    s = scene.get_state()
    return {"case": f"physim_{dim}d", "dim": dim, "res": res, "cells": res**dim, "substeps": steps, "dt": DT,
            "precision": "f32", "compile_seconds": compile_s, "compile_backward_seconds": compile_bwd_s,
            "forward_seconds": min(fwd), "forward_seconds_all": fwd,
            "substeps_per_s": steps / min(fwd), "fwd_bwd_seconds": min(fwdbwd), "fwd_bwd_seconds_all": fwdbwd,
            "fwd_bwd_over_fwd": min(fwdbwd) / min(fwd), "cg_iterations_per_solve_forward": cg_fwd,
            "cg_tolerance": sm.tolerance, "max_speed": float(np.abs(s["smoke.v"]).max())}


def taichi_worker(res: int, steps: int, repeats: int) -> dict:
    import ast

    import numpy as np
    import taichi as ti

    sys.path.insert(0, HERE)
    from reference_worker import _override, filter_statements

    path = os.path.join(os.path.dirname(ti.__file__), "examples", "simulation", "stable_fluid.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: this taichi wheel does not ship stable_fluid.py")
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    kept, dropped = filter_statements(tree, keep_calls=("parser.add_argument",))
    applied: set[str] = set()
    for node in kept:
        _override(node, {"res": res}, applied)
    if applied != {"res"}:
        raise RuntimeError("stable_fluid.py has no top-level `res = ...` any more")
    ti.init(arch=ti.cpu, log_level=ti.ERROR)
    ns = {"__name__": "taichi_example_stable_fluid", "__file__": path}
    argv = sys.argv
    sys.argv = [path]
    try:
        module = ast.fix_missing_locations(ast.Module(body=kept, type_ignores=[]))
        exec(compile(module, path, "exec", dont_inherit=True), ns)
    finally:
        sys.argv = argv
    step, reset = ns["step"], ns["reset"]
    mouse = np.zeros(8, np.float32)
    mouse[:2] = [1.0, 0.0]
    mouse[2:4] = [res / 2, res / 2]
    mouse[4:7] = [1.0, 0.5, 0.2]
    t0 = time.perf_counter()
    step(mouse)
    ti.sync()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        reset()
        ti.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step(mouse)
        ti.sync()
        times.append(time.perf_counter() - t0)
    v = ns["velocities_pair"].cur.to_numpy()
    return {"case": "taichi_stable_fluid", "dim": 2, "res": res, "cells": res * res, "substeps": steps,
            "dt": ns["dt"], "jacobi_iterations": ns["p_jacobi_iters"], "precision": "f32",
            "compile_seconds": compile_s, "forward_seconds": min(times), "forward_seconds_all": times,
            "substeps_per_s": steps / min(times), "max_speed_cells_per_s": float(np.abs(v).max()),
            "dropped_statements": [ast.unparse(n).splitlines()[0] for n in dropped]}


def run_case(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"case": " ".join(args), "error": f"timed out after {timeout:g} s"}
    if proc.returncode != 0:
        return {"case": " ".join(args), "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=("physim", "taichi"))
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--res", type=int, default=128, help="2D grid (both solvers)")
    p.add_argument("--res3", type=int, default=24, help="3D grid (physim)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.worker == "physim":
        print(json.dumps(physim_worker(a.dim, a.res, a.steps, a.repeats)))
        return 0
    if a.worker == "taichi":
        print(json.dumps(taichi_worker(a.res, a.steps, a.repeats)))
        return 0
    common = ["--steps", str(a.steps), "--repeats", str(a.repeats)]
    cases = [run_case(["--worker", "taichi", "--res", str(a.res), *common], a.timeout),
             run_case(["--worker", "physim", "--dim", "2", "--res", str(a.res), *common], a.timeout),
             run_case(["--worker", "physim", "--dim", "3", "--res", str(a.res3), *common], a.timeout)]
    ok = {c["case"]: c for c in cases if "error" not in c}
    result = {"benchmark": "smoke", "command": "python benchmarks/smoke.py " + " ".join(argv or sys.argv[1:]),
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
              "physim_rev": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                           text=True).stdout.strip(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": cases}
    if "taichi_stable_fluid" in ok and "physim_2d" in ok:
        result["physim_2d_over_taichi_substeps_per_s"] = (ok["physim_2d"]["substeps_per_s"]
                                                          / ok["taichi_stable_fluid"]["substeps_per_s"])
    text = json.dumps(result, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0 if len(ok) == len(cases) else 1


if __name__ == "__main__":
    sys.exit(main())

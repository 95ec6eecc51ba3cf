"""f32 versus f64 reverse mode, per MPM material, 2D and 3D, over long horizons.

For each material a block is pressed by a sphere tool (soft contact, friction 0.4); the loss is
mean(x_final) (the particles' mean position, summed over the axes), differentiated with respect
to every action (the tool's velocities) and every differentiable material parameter. Each
precision runs in its own process (``physim.init(precision=...)`` holds for the process); the
gradients are saved and compared here:

* ``cos``: cosine similarity of the f32 and f64 action gradients (``_fm``: f32 with LLVM's
  fast-math on, ``PHYSIM_FAST_MATH=1``, physim's default for f32 before this measurement);
* ``rel``: ||g32 - g64|| / ||g64|| (action gradient; ``rel_params``: material parameters);
* ``cos_pert`` / ``rel_pert``: the same between f64 and f64 started from the initial positions
  perturbed by 1e-7 relative (about one f32 rounding). When f64 itself moves that much, the
  divergence is the rollout's own sensitivity (chaotic contact or plastic flow), not round-off
  in the adjoint code.

It also measures the speed of both precisions on one 3D case (forward without gradients and
forward + backward, substeps/s) and determinism: two identical threaded runs in one process
(max |difference| of the final positions and of the action gradient).

Usage::

    nice -n 10 python benchmarks/precision.py            # full sweep -> results/precision.json
    python benchmarks/precision.py --dims 2 --horizons 200 --materials Plasticine   # a subset

Kernels are cached in ``~/.cache/taichi/physim-precision`` (``TI_OFFLINE_CACHE_FILE_PATH``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MATERIALS = ["Elastic", "NeoHookean", "Plasticine", "Sand", "Snow", "Fluid", "Viscoplastic", "Rigid"]
HORIZONS = [200, 1000, 4000]
SUBSTEPS_PER_STEP = 10
DT = 2e-4
PERTURBATION = 1e-7
#: case timed for the speed comparison (material, substeps), in the first dimension run
SPEED_CASE = ("Plasticine", 200)


# ---------------------------------------------------------------------------- worker
def make_scene(ps, dim: int, material: str, max_steps: int):
    """The benchmark scene: a block on the floor pressed from above by a sphere tool.
    2D: grid 32, ~500 particles; 3D: grid 16, ~1,400 particles. One layout per dimension
    (generic kernels, ``specialize=False``) so every material reuses the same compiled kernels."""
    mat = getattr(ps, material)()
    if dim == 2:
        scene = ps.Scene(dim=2, grid_res=32, dt=DT, substeps_per_step=SUBSTEPS_PER_STEP, boundary="slip",
                         checkpoint_every=50, specialize=False, particle_spacing=1 / 128)
        center, size, tool_pos, radius = [0.5, 0.17], [0.22, 0.14], [0.5, 0.305], 0.06
    else:
        scene = ps.Scene(dim=3, grid_res=16, dt=DT, substeps_per_step=SUBSTEPS_PER_STEP, boundary="slip",
                         checkpoint_every=50, specialize=False)
        center, size, tool_pos, radius = [0.5, 0.32, 0.5], [0.36, 0.36, 0.36], [0.5, 0.58, 0.5], 0.08
    scene.add_body(ps.Box(center=center, size=size), mat, velocity=[0.0] * dim, jitter=0.3, seed=1)
    scene.add_tool(ps.SphereTool(position=tool_pos, radius=radius, softness=50.0, friction=0.4))
    scene.build(max_steps=max_steps)
    return scene


def make_actions(scene, substeps: int) -> np.ndarray:
    """The tool descends 0.06 over the horizon (whatever its length) with a small sideways wobble."""
    steps = substeps // SUBSTEPS_PER_STEP
    duration = substeps * DT
    t = np.arange(steps) / steps
    a = np.zeros((steps, scene.action_dim))
    a[:, 1] = -0.06 / duration
    a[:, 0] = 0.2 * (0.06 / duration) * np.sin(2 * np.pi * t)
    return a


def run_case(ps, scene, actions, x0=None):
    """forward + backward from the initial state (optionally with other initial positions)."""
    scene.reset()
    if x0 is not None:
        scene.set_initial_state(x=x0)
        scene.reset()
    t0 = time.perf_counter()
    scene.forward(actions)
    t1 = time.perf_counter()
    x = scene.particle_positions()
    n = x.shape[0]
    g = scene.backward(grad_x=np.ones_like(x) / n)
    t2 = time.perf_counter()
    params = {k[4:]: float(v[0]) for k, v in g.params.items() if k.startswith("mpm.")}
    return x.astype(np.float64), g.actions.copy(), params, t1 - t0, t2 - t1


def horizons_of(args, material: str) -> list[int]:
    """The horizons measured for ``material``: ``--horizons``, plus ``--long-horizons`` for the
    ``--long-materials``."""
    extra = args.long_horizons if material in args.long_materials else []
    return sorted(set(args.horizons) | set(extra))


def worker(args) -> None:
    import physim as ps

    ps.init(arch="cpu", precision=args.precision, fast_compile=True, verbose=False)
    # one layout for every subset run
    max_steps = max(HORIZONS + args.horizons + args.long_horizons) // SUBSTEPS_PER_STEP
    out = {}
    scenes = {}
    for mat in args.materials:
        scene = make_scene(ps, args.dim, mat, max_steps)
        scenes[mat] = scene
        x0 = scene.initial_state()["mpm.x"]
        rng = np.random.default_rng(7)
        pert = x0 * (1 + PERTURBATION * rng.standard_normal(x0.shape)) if args.perturb else None
        for T in horizons_of(args, mat):
            acts = make_actions(scene, T)
            t = time.perf_counter()
            try:
                x, ga, gp, tf, tb = run_case(ps, scene, acts, pert)
                out[f"{mat}/{T}/x"] = x
                out[f"{mat}/{T}/ga"] = ga
                out[f"{mat}/{T}/gp_names"] = np.array(sorted(gp))
                out[f"{mat}/{T}/gp"] = np.array([gp[k] for k in sorted(gp)])
                out[f"{mat}/{T}/time"] = np.array([tf, tb])
            except Exception as e:  # noqa: BLE001 - recorded: a NaN gradient is a result too
                out[f"{mat}/{T}/error"] = np.array(f"{type(e).__name__}: {e}")
            print(f"  [{args.precision}{' pert' if args.perturb else ''} {args.dim}D] {mat} T={T}: "
                  f"{time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        if pert is not None:
            scene.set_initial_state(x=x0)
    if args.speed:
        mat, T = SPEED_CASE
        scene = scenes.get(mat) or make_scene(ps, args.dim, mat, max_steps)
        acts = make_actions(scene, T)
        fwd, fb = [], [np.inf]
        for _ in range(2):
            scene.reset()
            t0 = time.perf_counter()
            scene.forward(acts, requires_grad=False)
            fwd.append(time.perf_counter() - t0)
            try:
                _, _, _, tf, tb = run_case(ps, scene, acts)
                fb.append(tf + tb)
            except Exception as e:  # noqa: BLE001 - f32 with fast-math: NaN gradients
                print(f"  speed: fwd+bwd failed: {type(e).__name__}: {e}", file=sys.stderr)
        out["speed"] = np.array([T / min(fwd), T / min(fb)])
    if args.determinism:
        mat, T = args.materials[0], min(1000, max(args.horizons))
        scene = scenes[mat]
        acts = make_actions(scene, T)
        try:
            runs = [run_case(ps, scene, acts) for _ in range(2)]
        except Exception as e:  # noqa: BLE001
            print(f"  determinism run failed: {type(e).__name__}: {e}", file=sys.stderr)
            runs = None
    if args.determinism and runs is not None:
        out["det_x"] = np.array(float(np.abs(runs[0][0] - runs[1][0]).max()))
        out["det_g"] = np.array(float(np.abs(runs[0][1] - runs[1][1]).max()))
        out["det_g_scale"] = np.array(float(np.abs(runs[0][1]).max()))
    np.savez(args.out, **out)


# ---------------------------------------------------------------------------- driver
def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(cosine, ||a - b|| / ||b||) of two gradients, b the reference."""
    a, b = a.ravel(), b.ravel()
    nb = np.linalg.norm(b)
    cos = float(a @ b / (np.linalg.norm(a) * nb)) if nb > 0 and np.linalg.norm(a) > 0 else float("nan")
    return cos, float(np.linalg.norm(a - b) / nb) if nb > 0 else float("nan")


#: the runs compared, name -> (precision, extra environment, perturbed initial state)
RUNS = {
    "f64": ("f64", {}, False),
    "f32": ("f32", {"PHYSIM_FAST_MATH": "0"}, False),  # physim's default for f32 on the CPU
    "f32_fm": ("f32", {"PHYSIM_FAST_MATH": "1"}, False),  # the default before: LLVM fast-math on
    "pert": ("f64", {}, True),
}


def start_worker(name: str, dim: int, args, tmp: Path):
    """Start one worker process (they run side by side); returns (process, output file)."""
    precision, extra_env, perturb = RUNS[name]
    out = tmp / f"{name}_{dim}.npz"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--precision", precision, "--dim",
           str(dim), "--materials", *args.materials, "--horizons", *map(str, args.horizons),
           "--long-materials", *args.long_materials, "--long-horizons", *map(str, args.long_horizons),
           "--out", str(out)]
    if perturb:
        cmd.append("--perturb")
    else:
        cmd += ["--speed"] + ["--determinism"] * (not args.no_determinism)
    env = dict(os.environ)
    env.setdefault("TI_OFFLINE_CACHE_FILE_PATH", str(Path.home() / ".cache/taichi/physim-precision"))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra_env)
    return subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir()), out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="f64", help=argparse.SUPPRESS)
    p.add_argument("--perturb", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--speed", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--determinism", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--dim", type=int, default=2, help=argparse.SUPPRESS)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    p.add_argument("--materials", nargs="+", default=MATERIALS)
    p.add_argument("--horizons", type=int, nargs="+", default=[200])
    p.add_argument("--long-materials", nargs="*", default=["Elastic", "Plasticine"],
                   help="materials also measured over --long-horizons")
    p.add_argument("--long-horizons", type=int, nargs="*", default=[1000, 4000])
    p.add_argument("--no-determinism", action="store_true", help="skip the threaded-run comparison")
    p.add_argument("--json", default=str(HERE / "results" / "precision.json"))
    args = p.parse_args(argv)
    bad = [m for m in args.materials if m not in MATERIALS]
    if bad:
        raise ValueError(f"unknown materials {bad}; choose from {MATERIALS}")
    bad = [T for T in args.horizons + args.long_horizons if T <= 0 or T % SUBSTEPS_PER_STEP]
    if bad:
        raise ValueError(f"horizons must be positive multiples of {SUBSTEPS_PER_STEP} substeps, got {bad}")
    if args.worker:
        worker(args)
        return

    t_start = time.perf_counter()
    records, speed, det = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="physim-precision-") as tmp:
        tmp = Path(tmp)
        for dim in args.dims:
            procs = {name: start_worker(name, dim, args, tmp) for name in RUNS}
            res = {}
            for name, (proc, out) in procs.items():
                if proc.wait() != 0:
                    raise RuntimeError(f"worker {name} ({dim}D) failed with exit code {proc.returncode}")
                with np.load(out) as z:
                    res[name] = {k: z[k] for k in z.files}
            print(f"{dim}D: {time.perf_counter() - t_start:.0f} s", flush=True)
            for prec in ("f32", "f32_fm", "f64"):
                if "speed" in res[prec]:
                    speed[f"{prec}_{dim}d"] = {"forward_substeps_per_s": float(res[prec]["speed"][0]),
                                               "fwd_bwd_substeps_per_s": float(res[prec]["speed"][1])}
                if "det_x" in res[prec]:
                    det[f"{prec}_{dim}d"] = {k: float(res[prec][k]) for k in ("det_x", "det_g", "det_g_scale")}
            for mat in args.materials:
                for T in horizons_of(args, mat):
                    key = f"{mat}/{T}"
                    rec = {"dim": dim, "material": mat, "substeps": T}
                    errs = {k: str(r[f"{key}/error"]) for k, r in res.items() if f"{key}/error" in r}
                    if errs:
                        rec["error"] = errs
                    if "f64" in errs or "pert" in errs:
                        records.append(rec)
                        continue
                    for name in errs:  # a failed f32 run: its gradient is NaN (compares as NaN)
                        res[name][f"{key}/ga"] = res["f64"][f"{key}/ga"] * np.nan
                        res[name][f"{key}/gp"] = res["f64"][f"{key}/gp"] * np.nan
                        res[name][f"{key}/x"] = res["f64"][f"{key}/x"] * np.nan
                        res[name][f"{key}/time"] = np.array([np.nan, np.nan])
                    g32, g64, gp = res["f32"][f"{key}/ga"], res["f64"][f"{key}/ga"], res["pert"][f"{key}/ga"]
                    rec["cos"], rec["rel"] = compare(g32, g64)
                    rec["cos_fm"], rec["rel_fm"] = compare(res["f32_fm"][f"{key}/ga"], g64)
                    rec["cos_pert"], rec["rel_pert"] = compare(gp, g64)
                    names = [str(s) for s in res["f64"][f"{key}/gp_names"]]
                    p32, p64, pp = res["f32"][f"{key}/gp"], res["f64"][f"{key}/gp"], res["pert"][f"{key}/gp"]
                    nz = np.abs(p64) > 0
                    rec["params"] = names
                    rec["cos_params"], rec["rel_params"] = compare(p32[nz], p64[nz]) if nz.any() else (None, None)
                    rec["rel_params_pert"] = compare(pp[nz], p64[nz])[1] if nz.any() else None
                    pn = res["f32_fm"][f"{key}/gp"]
                    rec["rel_params_fm"] = compare(pn[nz], p64[nz])[1] if nz.any() else None
                    rec["grad_params_f64"] = dict(zip(names, p64.tolist(), strict=True))
                    rec["grad_params_f32"] = dict(zip(names, p32.tolist(), strict=True))
                    rec["norm_f64"] = float(np.linalg.norm(g64))
                    rec["x_diff_f32"] = float(np.abs(res["f32"][f"{key}/x"] - res["f64"][f"{key}/x"]).max())
                    rec["x_diff_pert"] = float(np.abs(res["pert"][f"{key}/x"] - res["f64"][f"{key}/x"]).max())
                    rec["x_diff_f32_fm"] = float(np.abs(res["f32_fm"][f"{key}/x"] - res["f64"][f"{key}/x"]).max())
                    rec["seconds_fwd_bwd"] = {p: float(res[p][f"{key}/time"].sum()) for p in ("f32", "f32_fm", "f64")}
                    records.append(rec)

    print()
    hdr = f"{'dim':>3} {'material':<13}{'T':>5} {'cos':>9} {'rel':>9} {'cos_fm':>9} {'rel_fm':>9} " \
          f"{'cos_pert':>9} {'rel_pert':>9} {'rel_par':>9} {'par_fm':>9} {'par_pert':>9}"
    print(hdr)
    for r in records:
        if "cos" not in r:
            print(f"{r['dim']:>3} {r['material']:<13}{r['substeps']:>5}  error: {r['error']}")
            continue
        f = lambda v: f"{v:9.2e}" if v is not None else f"{'-':>9}"  # noqa: E731
        print(f"{r['dim']:>3} {r['material']:<13}{r['substeps']:>5} {r['cos']:9.6f} {f(r['rel'])} "
              f"{r['cos_fm']:9.6f} {f(r['rel_fm'])} {r['cos_pert']:9.6f} {f(r['rel_pert'])} "
              f"{f(r['rel_params'])} {f(r['rel_params_fm'])} {f(r['rel_params_pert'])}")
    if speed:
        print("\nspeed", SPEED_CASE, json.dumps(speed))
    if det:
        print("determinism (two threaded runs, max |diff|):", json.dumps(det))
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "seconds": time.perf_counter() - t_start, "dt": DT, "substeps_per_step": SUBSTEPS_PER_STEP,
            "perturbation": PERTURBATION, "speed_case": SPEED_CASE, "loadavg": os.getloadavg()}
    try:
        meta["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip()
    except OSError:
        pass
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"meta": meta, "records": records, "speed": speed,
                                           "determinism": det}, indent=1))
    print(f"\nwrote {args.json} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

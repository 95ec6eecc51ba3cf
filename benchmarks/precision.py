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
    python benchmarks/precision.py --dims 3 --runs f64 f32 pert --no-determinism    # 3D, merged into the JSON
    python benchmarks/precision.py --dims 3 --materials Sand Rigid --horizons 1000 --long-materials Sand \
        --long-horizons 4000 --keep /tmp/p3d       # worker files kept; compare a partial run later with
    python benchmarks/precision.py --dims 3 --materials Sand Rigid --horizons 1000 --long-materials Sand \
        --long-horizons 4000 --from-dir /tmp/p3d                   # (cases not reached: "not run")

The JSON keeps the records this run did not measure again (``--replace`` overwrites it); each
record's ``run`` names its entry in ``runs`` (that run's ``meta``). ``norm_f64`` (the f64 action gradient's norm)
over the horizons is the rollout's Jacobian growth: where it grows fast, so does any round-off.

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
    2D: grid 32, ~500 particles; 3D: grid 32, a 0.16 m cube of 10^3 = 1,000 particles (spacing
    1/64). One layout per dimension (generic kernels, ``specialize=False``): every material has
    the same kernels, yet each new scene compiles them again within one process (7435a6a, 3D, load
    ~10: 5-8 min per material in f64, ~15 in f32); a later process finds them in the offline cache,
    which Taichi writes when a process exits. A cold 3D sweep of several materials is faster as
    one run per material side by side, each with ``--keep DIR_i``, compared by ``--from-dir DIR_1
    DIR_2 ...``."""
    mat = getattr(ps, material)()
    if dim == 2:
        scene = ps.Scene(dim=2, grid_res=32, dt=DT, substeps_per_step=SUBSTEPS_PER_STEP, boundary="slip",
                         checkpoint_every=50, specialize=False, particle_spacing=1 / 128)
        center, size, tool_pos, radius = [0.5, 0.17], [0.22, 0.14], [0.5, 0.305], 0.06
    else:
        scene = ps.Scene(dim=3, grid_res=32, dt=DT, substeps_per_step=SUBSTEPS_PER_STEP, boundary="slip",
                         checkpoint_every=50, specialize=False)
        top = scene.floor + 0.16  # the block rests on the floor; the sphere starts 5 mm above it
        center, size = [0.5, scene.floor + 0.08 + 1e-3, 0.5], [0.16, 0.16, 0.16]
        radius = 0.05
        tool_pos = [0.5, top + 1e-3 + radius + 0.005, 0.5]
    scene.add_body(ps.Box(center=center, size=size), mat, velocity=[0.0] * dim, jitter=0.3, seed=1)
    scene.add_tool(ps.SphereTool(position=tool_pos, radius=radius, softness=50.0, friction=0.4))
    scene.build(max_steps=max_steps)
    return scene


#: how far the tool descends over the horizon (m), by dimension
DESCENT = {2: 0.06, 3: 0.05}


def make_actions(scene, substeps: int) -> np.ndarray:
    """The tool descends :data:`DESCENT` over the horizon (whatever its length) with a small sideways wobble."""
    steps = substeps // SUBSTEPS_PER_STEP
    duration = substeps * DT
    d = DESCENT[scene.dim]
    t = np.arange(steps) / steps
    a = np.zeros((steps, scene.action_dim))
    a[:, 1] = -d / duration
    a[:, 0] = 0.2 * (d / duration) * np.sin(2 * np.pi * t)
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
            np.savez(args.out, **out)  # what is measured so far survives a later failure
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
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS),
                   help="configurations to run (f64 and pert are needed for every comparison)")
    p.add_argument("--from-dir", nargs="+", default=None, metavar="DIR",
                   help="start no workers: compare the NAME_DIM.npz files workers wrote to DIR (cases they did not "
                        "reach are recorded as not run); several DIRs (e.g. one run per material) are merged")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="workers write their NAME_DIM.npz files to DIR (kept) instead of a temporary folder, so a "
                        "run stopped early can be compared later with --from-dir DIR")
    p.add_argument("--replace", action="store_true",
                   help="overwrite --json; default: merge, keeping its records of the other dimensions")
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
        if args.keep:
            tmp = Path(args.keep)
            tmp.mkdir(parents=True, exist_ok=True)
        for dim in args.dims:
            res = {}
            if args.from_dir:  # compare the (possibly partial) results of workers that ran before
                for name in args.runs:
                    for d in args.from_dir:  # several runs (e.g. one per material): their cases merged
                        f = Path(d) / f"{name}_{dim}.npz"
                        if f.exists():
                            with np.load(f) as z:
                                res.setdefault(name, {}).update({k: z[k] for k in z.files})
                missing = {"f64", "pert"} - set(res)
                res.update({name: {} for name in args.runs if name not in res})  # every case: not run
                if missing:
                    raise FileNotFoundError(f"{' '.join(args.from_dir)} have no {sorted(missing)} results for {dim}D")
            procs = {} if args.from_dir else {name: start_worker(name, dim, args, tmp) for name in args.runs}
            for name, (proc, out) in procs.items():
                if proc.wait() != 0:
                    if not out.exists() or name in ("f64", "pert"):
                        raise RuntimeError(f"worker {name} ({dim}D) failed with exit code {proc.returncode}")
                    print(f"worker {name} ({dim}D) failed with exit code {proc.returncode}; using the cases it "
                          f"finished", file=sys.stderr)
                with np.load(out) as z:
                    res[name] = {k: z[k] for k in z.files}
            print(f"{dim}D: {time.perf_counter() - t_start:.0f} s", flush=True)
            for prec in ("f32", "f32_fm", "f64"):
                if prec not in res:
                    continue
                if "speed" in res[prec]:
                    speed[f"{prec}_{dim}d"] = {"forward_substeps_per_s": float(res[prec]["speed"][0]),
                                               "fwd_bwd_substeps_per_s": float(res[prec]["speed"][1])}
                if "det_x" in res[prec]:
                    det[f"{prec}_{dim}d"] = {k: float(res[prec][k]) for k in ("det_x", "det_g", "det_g_scale")}
            for mat in args.materials:
                for T in horizons_of(args, mat):
                    key = f"{mat}/{T}"
                    rec = {"dim": dim, "material": mat, "substeps": T}
                    for r in res.values():  # a case a failed worker never reached
                        if f"{key}/ga" not in r and f"{key}/error" not in r:
                            r[f"{key}/error"] = np.array("not run (the worker stopped before it)")
                    errs = {k: str(r[f"{key}/error"]) for k, r in res.items() if f"{key}/error" in r}
                    if errs:
                        rec["error"] = errs
                    if "f64" in errs or "pert" in errs:
                        records.append(rec)
                        continue
                    for name in [k for k, e in errs.items() if not e.startswith("not run")]:
                        # a failed f32 run: its gradient is NaN (compares as NaN)
                        res[name][f"{key}/ga"] = res["f64"][f"{key}/ga"] * np.nan
                        res[name][f"{key}/gp"] = res["f64"][f"{key}/gp"] * np.nan
                        res[name][f"{key}/x"] = res["f64"][f"{key}/x"] * np.nan
                        res[name][f"{key}/time"] = np.array([np.nan, np.nan])
                    g64, p64 = res["f64"][f"{key}/ga"], res["f64"][f"{key}/gp"]
                    names = [str(s) for s in res["f64"][f"{key}/gp_names"]]
                    nz = np.abs(p64) > 0
                    rec["params"] = names
                    rec["grad_params_f64"] = dict(zip(names, p64.tolist(), strict=True))
                    rec["norm_f64"] = float(np.linalg.norm(g64))
                    # suffix of each run's fields: f32 -> cos, rel, ...; f32_fm -> cos_fm, ...; pert -> cos_pert, ...
                    for name, sfx in (("f32", ""), ("f32_fm", "_fm"), ("pert", "_pert")):
                        if name not in res or f"{key}/ga" not in res[name]:  # not run
                            continue
                        r = res[name]
                        rec[f"cos{sfx}"], rec[f"rel{sfx}"] = compare(r[f"{key}/ga"], g64)
                        cp, rp = compare(r[f"{key}/gp"][nz], p64[nz]) if nz.any() else (None, None)
                        rec[f"rel_params{sfx}"] = rp
                        if name == "f32":
                            rec["cos_params"] = cp
                            rec["grad_params_f32"] = dict(zip(names, r[f"{key}/gp"].tolist(), strict=True))
                        rec[f"x_diff_{name}"] = float(np.abs(r[f"{key}/x"] - res["f64"][f"{key}/x"]).max())
                    rec["seconds_fwd_bwd"] = {p: float(res[p][f"{key}/time"].sum()) for p in ("f32", "f32_fm", "f64")
                                              if f"{key}/time" in res.get(p, {})}
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
        g = lambda k: f"{r[k]:9.6f}" if r.get(k) is not None else f"{'-':>9}"  # noqa: E731
        print(f"{r['dim']:>3} {r['material']:<13}{r['substeps']:>5} {g('cos')} {f(r.get('rel'))} "
              f"{g('cos_fm')} {f(r.get('rel_fm'))} {g('cos_pert')} {f(r.get('rel_pert'))} "
              f"{f(r.get('rel_params'))} {f(r.get('rel_params_fm'))} {f(r.get('rel_params_pert'))}")
    if speed:
        print("\nspeed", SPEED_CASE, json.dumps(speed))
    if det:
        print("determinism (two threaded runs, max |diff|):", json.dumps(det))
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "seconds": time.perf_counter() - t_start, "dt": DT, "substeps_per_step": SUBSTEPS_PER_STEP,
            "perturbation": PERTURBATION, "speed_case": SPEED_CASE, "loadavg": os.getloadavg()}
    try:
        meta["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip() or os.environ.get("PHYSIM_SOURCE_COMMIT", "")
    except OSError:
        pass
    meta["dims"] = args.dims
    meta["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - meta["seconds"]))
    meta["runs"] = args.runs
    out = {"meta": meta, "records": records, "speed": speed, "determinism": det}
    path = Path(args.json)
    if path.exists() and not args.replace:  # keep the records (and speeds) this run did not measure again
        old = json.loads(path.read_text())
        new_keys = {(r["dim"], r["material"], r["substeps"]) for r in records}
        kept = [r for r in old.get("records", []) if (r["dim"], r["material"], r["substeps"]) not in new_keys]
        out["records"] = sorted(kept + records, key=lambda r: (r["dim"], MATERIALS.index(r["material"]), r["substeps"]))
        out["speed"] = {**old.get("speed", {}), **speed}
        out["determinism"] = {**old.get("determinism", {}), **det}
        old_meta = old.get("meta", {})
        for r in records:
            r["run"] = meta["started"]
        for r in kept:
            r.setdefault("run", old_meta.get("started", old_meta.get("commit", "before")))
        runs = old.get("runs", {str(old_meta.get("started", old_meta.get("commit", "before"))): old_meta})
        out["runs"] = {**runs, meta["started"]: meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.json} ({meta['seconds']:.0f} s)")


if __name__ == "__main__":
    main()

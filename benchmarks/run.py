"""physim benchmark suite: throughput against Taichi's own MPM, mass-spring and FEM examples,
gradient cost, memory versus horizon, and scaling with the particle count.

Usage::

    python benchmarks/run.py                 # full suite (tens of minutes on 2 CPU cores)
    python benchmarks/run.py --quick         # reduced sizes and horizons (~5 minutes, warm kernel cache)
    python benchmarks/run.py --arch cuda --json benchmarks/results/cuda.json

Every case runs in fresh subprocesses (``physim_worker.py`` for physim,
``reference_worker.py`` for the Taichi example it is compared with, back to back),
so each reports its own peak memory and no case inherits another's Taichi fields.
Results go to a JSON file (one record per case) and a table on stdout; the scaling
cases are also plotted (``benchmarks/scaling.png`` for the full suite).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
KERNEL_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "taichi", "physim-benchmarks")

#: configurations whose estimated particle-state memory exceeds this are skipped
MEMORY_LIMIT_BYTES = 16 * 2**30
#: checkpointed peak memory at the longest horizon may be at most this times the shortest
MEMORY_FLAT_TARGET = 1.2
#: forward + backward may cost at most this many forwards (with checkpointing)
GRADIENT_COST_TARGET = 3.0
#: physim's forward throughput should be at least this fraction of the Taichi example's
THROUGHPUT_TARGET = 1.0
#: the same for the mass-spring cloth: physim's general solver (tape-ready slots, per-spring
#: atomics, walls, health checks) against mass_spring_3d_ggui.py's one hand-fused kernel
SPRING_THROUGHPUT_TARGET = 0.5
#: the tetrahedral FEM part against implicit_fem.py's explicit mode on the same mesh
FEM_THROUGHPUT_TARGET = 1.0
#: cold compile (empty kernel cache) of a small 3D differentiable scene, build to first gradient
COLD_COMPILE_TARGET_SECONDS = 60.0

ELASTIC = {"kind": "elastic", "E": 1000.0, "nu": 0.2}
FLUID = {"kind": "fluid", "bulk_modulus": 400.0}  # Taichi's examples: E = 400, pressure only
SUBSTEPS_PER_STEP = 10
#: 3D scene of the gradient / horizon cases: a 27^3 lattice block (19,683 particles) on 64^3
BLOCK_3D = {"center": [0.5, 0.4, 0.5], "size": [27 / 128] * 3}
BLOCK_3D_PARTICLES = 27**3
BLOCK_2D = {"center": [0.5, 0.4], "size": [100 / 256] * 2}  # 100^2 particles on 128^2


@dataclass
class Case:
    """One benchmark case: a physim run, optionally compared with a Taichi example."""

    name: str
    group: str  # "reference", "scaling", "gradient", "horizon", "mass_spring", "fem" or "compile"
    physim: dict
    reference: tuple[str, list[str]] | None = None  # (example, ["NAME=VALUE", ...])
    skip: str | None = None
    extra: dict = field(default_factory=dict)


def _next_pow2(n: int, minimum: int) -> int:
    """Capacity rounding used by physim's Scene.build (particles, checkpoint slots)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def state_bytes_estimate(dim: int, particles: int, checkpoint_every: int, itemsize: int = 4) -> int:
    """Bytes physim allocates for particle state: (slot capacity + 1) x particle capacity
    x (x, v, C, F, Jp = 2 dim + 2 dim^2 + 1 values) x 2 (values and gradients)."""
    per_particle = 2 * dim + 2 * dim * dim + 1
    slots = _next_pow2(checkpoint_every, 16) + 1
    return slots * _next_pow2(particles, 256) * per_particle * 2 * itemsize


def _forward_spec(dim, grid, dt, n, lo, hi, substeps, repeats, velocity=None):
    return {
        "mode": "forward", "dim": dim, "grid": grid, "dt": dt, "substeps": substeps,
        "substeps_per_step": SUBSTEPS_PER_STEP, "checkpoint_every": 50, "build_steps": 256,
        "gravity": [0.0, -9.8, 0.0][:dim], "boundary": "slip", "material": FLUID, "repeats": repeats,
        "random": {"n": n, "lo": lo, "hi": hi, "velocity": velocity, "seed": 0},
    }


def _gradient_spec(dim, substeps, checkpoint_every, repeats):
    grid, dt, block, build_steps = (128, 1e-4, BLOCK_2D, 100) if dim == 2 else (64, 2e-4, BLOCK_3D, 400)
    return {
        "mode": "gradient", "dim": dim, "grid": grid, "dt": dt, "substeps": substeps,
        "substeps_per_step": SUBSTEPS_PER_STEP, "checkpoint_every": checkpoint_every, "build_steps": build_steps,
        "gravity": [0.0, -9.8, 0.0][:dim], "boundary": "slip", "material": ELASTIC, "repeats": repeats,
        "box": block,
    }


#: Taichi's mass_spring_3d_ggui.py cloth: n x n unit masses, 12 springs per node, a ball
CLOTH_EXAMPLE = "mass_spring_3d_ggui"
#: one dt for every cloth size, below physim's stable limit for n = 32..128 (1.07e-4 to 1.25e-4 s;
#: the example's own dt is 4e-2 / n: 1.25e-3 at n = 32, 3.1e-4 at its n = 128)
CLOTH_DT = 1e-4


def _cloth_case(name: str, n: int, substeps: int, repeats: int, mode: str) -> Case:
    """physim's cloth (physim_worker.build_cloth) next to the example with the same n and dt.
    The example runs without its air drag (physim has none): ``drag_damping=0``."""
    spec = {
        "mode": mode, "dim": 3, "grid": 64, "dt": CLOTH_DT, "substeps": substeps,
        "substeps_per_step": SUBSTEPS_PER_STEP, "checkpoint_every": 50, "build_steps": 1,
        "gravity": [0.0, -9.8, 0.0], "repeats": repeats, "cloth": {"n": n},
    }
    return Case(name, "mass_spring", spec,
                reference=(CLOTH_EXAMPLE, [f"n={n}", f"dt={CLOTH_DT:g}", "drag_damping=0"]))


#: Taichi's implicit_fem.py in its explicit mode: a 1 m cube of n_cube^3 nodes split into
#: 5 (n_cube - 1)^3 tets, fixed corotated (E 5e4, nu 0), density 1000, dt 2e-4, falling from 1 m
FEM_EXAMPLE = "implicit_fem"
FEM_DT = 2e-4
#: physim position = origin + FEM_SCALE x example position (the cube becomes 0.25 m wide)
FEM_SCALE = 0.25


def _fem_box_case(name: str, n_cube: int, substeps: int, repeats: int) -> Case:
    """physim's FEM part (physim_worker.build_fem_box) on the mesh implicit_fem.py builds with
    ``n_cube`` nodes per edge (read from the example's fields: run_case passes the file), same dt.
    ``substeps``: FEM steps, a multiple of 10 (the example's substep() takes 10)."""
    spec = {
        "mode": "forward", "dim": 3, "grid": 64, "dt": FEM_DT, "substeps": substeps,
        "substeps_per_step": SUBSTEPS_PER_STEP, "checkpoint_every": 50, "build_steps": 1,
        "gravity": [0.0, -9.8, 0.0], "repeats": repeats,
        "fem": {"E": 5e4, "nu": 0.0, "density": 1000.0, "model": "corotated", "scale": FEM_SCALE},
    }
    values = [f"dt={FEM_DT:g}"] + ([f"n_cube=np.array([{n_cube}] * 3)"] if n_cube != 5 else [])
    return Case(name, "fem", spec, reference=(FEM_EXAMPLE, values), extra={"n_cube": n_cube})


#: the DiffTactile-scale dome gel: 1 -> 1.5 cm, 3 layers, 75 degrees, 13 rings: 1,952 nodes,
#: 8,226 tets (488 of them on the core)
DOME = {"center": [0.5, 0.3, 0.5], "inner_radius": 0.01, "outer_radius": 0.015, "layers": 3, "angle": 75.0,
        "rings": 13}
DOME_DT = 1e-4
#: how far the core moves down over the timed horizon (the apex starts 0.1 mm above the plate)
DOME_PRESS = 1.5e-3


def _fem_dome_case(name: str, dome: dict, substeps: int, repeats: int) -> Case:
    """A tactile sensor pressing a plate (physim_worker.build_fem_dome): forward, then forward +
    backward with d loss / d fem.x(final) = 1. ``mpm_object``: the MPM object the gel will press
    once FEM <-> MPM contact exists (``{"center", "size", "E", "nu"}``): a one-line change here."""
    spec = {
        # build_steps: quick and full share one compiled layout (the reverse kernels take ~2 min)
        "mode": "gradient", "dim": 3, "grid": 64, "dt": DOME_DT, "substeps": substeps,
        "substeps_per_step": SUBSTEPS_PER_STEP, "checkpoint_every": 50, "build_steps": 100,
        "gravity": [0.0, -9.8, 0.0], "repeats": repeats,
        "fem": {"dome": dome, "E": 5e4, "nu": 0.4, "density": 1000.0, "beta": 2e-5,
                "model": "stable_neohookean", "gap": 1e-4, "press_speed": DOME_PRESS / (substeps * DOME_DT),
                "mpm_object": None},
    }
    return Case(name, "fem", spec)


def _compile_case(name: str, precision: str, fast_compile: bool = False) -> Case:
    """Cold compile time of a small 3D differentiable scene (physim_worker.measure_compile),
    run with an empty kernel cache of its own: an elastic block (16^3 = 4,096 particles) on a
    32^3 grid under a sphere tool (contact and action gradients compiled in), 20 substeps in
    chunks of K = 8 (so the checkpoint save/restore kernels compile too)."""
    spec = {
        "mode": "compile", "dim": 3, "grid": 32, "dt": 2e-4, "substeps": 20, "substeps_per_step": SUBSTEPS_PER_STEP,
        "checkpoint_every": 8, "build_steps": 2, "gravity": [0.0, -9.8, 0.0], "boundary": "slip",
        "material": ELASTIC, "box": {"center": [0.5, 0.3, 0.5], "size": [0.25] * 3},
        "tool": {"position": [0.5, 0.6, 0.5], "radius": 0.08}, "precision": precision,
        "fast_compile": fast_compile, "repeats": 1,
    }
    return Case(name, "compile", spec, extra={"fresh_kernel_cache": True})


def _round_substeps(n: float, lo: int, hi: int) -> int:
    n = min(hi, max(lo, n))
    return int(SUBSTEPS_PER_STEP * round(n / SUBSTEPS_PER_STEP))


def make_cases(quick: bool) -> list[Case]:
    """The suite. ``quick`` keeps every layout of the full suite (so both share Taichi's
    kernel cache) but runs fewer substeps, fewer repeats and fewer sizes."""
    reps = 2 if quick else 3
    # mpm88.py: 8,192 particles on 128^2, dt 2e-4, fluid E 400, dropped at v = (0, -1)
    mpm88 = _forward_spec(2, 128, 2e-4, 8192, 0.2, 0.6, 500 if quick else 2000, reps, velocity=[0.0, -1.0])
    cases = [
        Case("mpm88_2d", "reference", mpm88, reference=("mpm88", [])),
        # the same with physim's generic kernels (every material model compiled in, shared by
        # scenes of any materials: Scene(specialize=False)), to show what specialization buys
        Case("mpm88_2d_generic", "reference", {**mpm88, "specialize": False}, reference=("mpm88", [])),
        # mpm3d.py as shipped: dim 3, 32^3 grid, dt 4e-4, 32^3 / 4 = 8,192 particles
        Case("mpm3d_32", "reference", _forward_spec(3, 32, 4e-4, 8192, 0.15, 0.55, 200 if quick else 1000, reps),
             reference=("mpm3d", [])),
    ]
    # scaling on mpm3d's 64^3 configuration (its commented-out dt 2e-4 line); n = 65,536 is
    # that configuration's own particle count (64^3 / 4)
    counts = [1024, 4096, 16384, 65536] if quick else [1024, 4096, 16384, 65536, 262144]
    for n in counts:
        substeps = _round_substeps(3e6 / n, 50, 300) if quick else _round_substeps(2e7 / n, 100, 1000)
        cases.append(Case(f"mpm3d_64_n{n}", "scaling", _forward_spec(3, 64, 2e-4, n, 0.15, 0.55, substeps, reps),
                          reference=("mpm3d", ["n_grid=64", "dt=2e-4", f"n_particles={n}"])))
    # mass-spring cloth against mass_spring_3d_ggui.py: n = 32 (full: 0.4 s, falls onto the ball
    # at ~0.25 s and drapes; quick: 0.05 s of free fall), physim also forward + backward; and the
    # example's own n = 128, forward only
    cases.append(_cloth_case("cloth_n32", 32, 500 if quick else 4000, 2, "gradient"))
    if not quick:
        cases.append(_cloth_case("cloth_n128", 128, 1000, reps, "forward"))
    # tetrahedral FEM: implicit_fem.py's explicit mode as shipped (5^3 nodes, 320 tets: 0.2 s of
    # free fall, full 1 s: lands at 0.45 s) and on a 13^3-node cube (2,197 nodes, 8,640 tets,
    # DiffTactile's size), then the dome gel pressing a plate, forward and forward + backward
    cases.append(_fem_box_case("fem_box_n5", 5, 1000 if quick else 5000, reps))
    cases.append(_fem_box_case("fem_box_n13", 13, 200 if quick else 2500, reps))
    cases.append(_fem_dome_case("fem_dome", DOME, 200 if quick else 1000, 2))
    # cold compile: physim's CPU default (f64, Taichi's optimizations on) and the suite's f32
    cases.append(_compile_case("compile_3d_f64", "f64"))
    if not quick:
        cases.append(_compile_case("compile_3d_f32", "f32"))
        cases.append(_compile_case("compile_3d_f64_fast", "f64", fast_compile=True))
        # f32 with fast_compile: forward kernels fast, Taichi's adjoints optimized (backend.grad)
        cases.append(_compile_case("compile_3d_f32_fast", "f32", fast_compile=True))
    cases.append(Case("grad_2d", "gradient", _gradient_spec(2, 200 if quick else 1000, 50, 1 if quick else 2)))
    # gradient cost and memory versus horizon, 3D, with (K = 50) and without (K = T) checkpointing
    # (quick: checkpointed T = 100 and 400, unchecked T = 200, whose 256 slots match full T = 250)
    runs = [(100, True), (200, False), (400, True)] if quick else [(t, c) for t in (250, 1000, 4000)
                                                                   for c in (True, False)]
    for t, ckpt in runs:
        k = 50 if ckpt else t
        spec = _gradient_spec(3, t, k, 2 if (t == 1000 and not quick) else 1)
        estimate = state_bytes_estimate(3, BLOCK_3D_PARTICLES, k)
        skip = None
        if estimate > MEMORY_LIMIT_BYTES:
            skip = f"estimated particle state {estimate / 2**30:.1f} GiB > {MEMORY_LIMIT_BYTES / 2**30:.0f} GiB"
        # forward with gradients keeps one host copy of the state per chunk, plus the final state
        host = (-(-t // k) + 1) * BLOCK_3D_PARTICLES * (2 * 3 + 2 * 9 + 1) * 4 if t > k else 0
        cases.append(Case(f"grad_3d_T{t}_{'ckpt' if ckpt else 'nockpt'}", "horizon", spec, skip=skip,
                          extra={"checkpointing": ckpt, "state_bytes_estimate": estimate,
                                 "host_checkpoint_bytes_estimate": host, "particles": BLOCK_3D_PARTICLES}))
    return cases


# --------------------------------------------------------------------------- running
def snapshot_physim(dest: str, rev: str | None) -> str:
    """Copy the physim package into ``dest`` so that every worker of a run imports the
    same code, even if the checkout is edited while the suite runs (Taichi compiles
    kernels lazily, from the source files as they are at that moment).

    ``rev``: a git revision of this checkout to take physim from (``git archive``);
    ``None``: the package ``import physim`` finds from the repository root (the
    working tree, or the installed package when there is none). Returns where it came from.
    """
    if rev:
        archive = subprocess.run(["git", "archive", rev, "physim"], cwd=ROOT, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
        return f"git {rev}"
    src = os.path.join(ROOT, "physim")
    if not os.path.isdir(src):
        spec = importlib.util.find_spec("physim")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("physim is neither in this checkout nor installed")
        src = list(spec.submodule_search_locations)[0]
    shutil.copytree(src, os.path.join(dest, "physim"), ignore=shutil.ignore_patterns("__pycache__"))
    return src


def _child_env() -> dict:
    """Environment of the workers: this checkout importable, and Taichi's offline kernel
    cache in a directory of its own, large enough to keep every layout of the suite.

    Taichi's default cache (``~/.cache/taichi/ticache``) holds at most 100 MB and evicts
    the least recently used quarter when full; one 3D reverse-mode layout takes several
    MB, so sharing it with a test suite evicts the benchmark's kernels and every run
    would recompile (minutes per 3D layout). ``TI_OFFLINE_CACHE_*`` set by the caller win.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE["path"], env.get("PYTHONPATH")) if p)
    env.setdefault("TI_OFFLINE_CACHE_FILE_PATH", KERNEL_CACHE)
    env.setdefault("TI_OFFLINE_CACHE_MAX_SIZE_OF_FILES", str(2**31 - 1))  # a C int: 2 GiB at most
    return env


_SOURCE = {"path": ROOT}  # directory holding the physim package the workers import (see snapshot_physim)


def _run_worker(script: str, args: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run a worker script (``env``: variables set on top of :func:`_child_env`'s); returns its
    JSON record or raises RuntimeError with its output."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "record.json")
        cmd = [sys.executable, os.path.join(HERE, script), *args, "--out", out]
        proc = subprocess.run(cmd, env={**_child_env(), **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            raise RuntimeError(f"{script} failed (exit {proc.returncode}):\n" + "\n".join(tail))
        with open(out) as f:
            return json.load(f)


def run_case(case: Case, arch: str, timeout: float) -> dict:
    """Run one case (reference first, then physim, back to back) and merge the records."""
    spec = dict(case.physim, arch=arch)
    record = {"case": case.name, "group": case.group, "dim": spec["dim"], "grid": spec["grid"],
              "substeps": spec["substeps"], "checkpoint_every": spec["checkpoint_every"], "arch": arch,
              **case.extra}
    if case.skip:
        record["skipped"] = case.skip
        return record
    ref = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if case.reference is not None:
                example, values = case.reference
                ref_args = [example, "--arch", arch, "--substeps", str(spec["substeps"]),
                            "--repeats", str(spec["repeats"])]
                for v in values:
                    ref_args += ["--set", v]
                if "fem" in spec:  # physim simulates the example's own mesh
                    mesh = os.path.join(tmp, "mesh.npz")
                    ref_args += ["--mesh-out", mesh]
                    spec["fem"] = {**spec["fem"], "mesh_file": mesh}
                ref = _run_worker("reference_worker.py", ref_args, timeout)
                if "cloth" in spec:  # start physim's cloth where the example's last timed run started
                    spec["cloth"] = {**spec["cloth"], "first_node": ref["first_node"]}
            # a compile case gets an empty kernel cache of its own (deleted with tmp)
            env = {"TI_OFFLINE_CACHE_FILE_PATH": os.path.join(tmp, "ticache")} if case.group == "compile" else None
            mine = _run_worker("physim_worker.py", ["--spec", json.dumps(spec)], timeout, env)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        record["error"] = str(err)
        return record
    record.update(mine)
    record["case"] = case.name
    if ref is not None and "cloth" in spec:
        record.update(_compare_cloth(ref, mine, spec))
    elif ref is not None and "fem" in spec:
        record.update(_compare_fem(ref, mine))
    elif ref is not None:
        cfg = ref["config"]
        if cfg["n_particles"] != mine["particles"] or cfg["n_grid"] != mine["grid"] or cfg["dt"] != mine["dt"]:
            record["error"] = f"configuration mismatch: reference {cfg} vs physim {mine['particles']} particles"
        record.update({
            "reference": ref["example"],
            "reference_config": cfg,
            "reference_dropped_statements": ref["dropped_statements"],
            "reference_seconds": ref["seconds"],
            "reference_seconds_all": ref["seconds_all"],
            "reference_particle_steps_per_s": ref["particle_steps_per_s"],
            "reference_peak_memory_bytes": ref["peak_memory_bytes"],
            "ratio_vs_reference": mine["particle_steps_per_s"] / ref["particle_steps_per_s"],
        })
        if "cpu_seconds" in ref and "forward_cpu_seconds" in mine:  # CPU time per particle-substep, ratio
            record["reference_cpu_seconds"] = ref["cpu_seconds"]
            record["ratio_vs_reference_cpu"] = ((ref["cpu_seconds"] / cfg["n_particles"])
                                                / (mine["forward_cpu_seconds"] / mine["particles"]))
    return record


def _compare_cloth(ref: dict, mine: dict, spec: dict) -> dict:
    """The reference fields of a cloth record: throughput ratio, and how far apart the two
    final states are (centroid and bounding box, the example's units)."""
    cfg = ref["config"]
    out = {}
    if (cfg["n"] != spec["cloth"]["n"] or cfg["nodes"] != mine["nodes"] or cfg["springs"] != mine["springs"]
            or abs(cfg["dt"] - mine["dt"]) > 1e-6 * mine["dt"]):
        out["error"] = (f"configuration mismatch: reference {cfg} vs physim {mine['nodes']} nodes, "
                        f"{mine['springs']} springs, dt {mine['dt']}")
    diff = max(abs(a - b) for key in ("mean", "min", "max")
               for a, b in zip(ref["final_summary"][key], mine["final_summary"][key], strict=True))
    out.update({
        "reference": ref["example"],
        "reference_config": cfg,
        "reference_dropped_statements": ref["dropped_statements"],
        "reference_seconds": ref["seconds"],
        "reference_seconds_all": ref["seconds_all"],
        "reference_node_steps_per_s": ref["node_steps_per_s"],
        "reference_spring_steps_per_s": ref["spring_steps_per_s"],
        "reference_peak_memory_bytes": ref["peak_memory_bytes"],
        "reference_final_summary": ref["final_summary"],
        "final_state_difference": diff,
        "ratio_vs_reference": mine["node_steps_per_s"] / ref["node_steps_per_s"],
    })
    return out


def _compare_fem(ref: dict, mine: dict) -> dict:
    """The reference fields of an FEM record: per-step throughput ratio on the same mesh and dt,
    and how far apart the final states are (centroid and bounding box, the example's units)."""
    cfg = ref["config"]
    out = {}
    if (cfg["nodes"] != mine["nodes"] or cfg["tets"] != mine["tets"] or mine["fem_subcycles"] != 1
            or abs(cfg["dt"] - mine["fem_dt"]) > 1e-6 * mine["fem_dt"]):
        out["error"] = (f"configuration mismatch: reference {cfg} vs physim {mine['nodes']} nodes, {mine['tets']} "
                        f"tets, dt {mine['fem_dt']} ({mine['fem_subcycles']} sub-steps per substep)")
    diff = max(abs(a - b) for key in ("mean", "min", "max")
               for a, b in zip(ref["final_summary"][key], mine["final_summary"][key], strict=True))
    out.update({
        "reference": ref["example"],
        "reference_config": cfg,
        "reference_dropped_statements": ref["dropped_statements"],
        "reference_seconds": ref["seconds"],
        "reference_seconds_all": ref["seconds_all"],
        "reference_tet_steps_per_s": ref["tet_steps_per_s"],
        "reference_peak_memory_bytes": ref["peak_memory_bytes"],
        "reference_final_summary": ref["final_summary"],
        "final_state_difference": diff,
        "ratio_vs_reference": mine["tet_steps_per_s"] / ref["tet_steps_per_s"],
    })
    return out


# --------------------------------------------------------------------------- reporting
def _fmt(value, spec: str = "", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:{spec}}{suffix}"


COLUMNS = [
    ("case", lambda r: r["case"]),
    ("dim", lambda r: _fmt(r.get("dim"))),
    ("particles", lambda r: _fmt(r.get("particles"), ",")),
    ("grid", lambda r: _fmt(r.get("grid"))),
    ("substeps", lambda r: _fmt(r.get("substeps"), ",")),
    ("K", lambda r: _fmt(r.get("checkpoint_every"))),
    ("fwd s", lambda r: _fmt(r.get("seconds"), ".2f")),
    ("Mpart-steps/s", lambda r: _fmt(r.get("particle_steps_per_s", math.nan) / 1e6, ".2f")),
    ("Taichi ex. Mps/s", lambda r: _fmt(r.get("reference_particle_steps_per_s", math.nan) / 1e6, ".2f")),
    ("vs Taichi", lambda r: _fmt(r.get("ratio_vs_reference"), ".2f", "x")),
    ("fwd+bwd s", lambda r: _fmt(r.get("fwd_bwd_seconds"), ".2f")),
    ("fwd+bwd/fwd", lambda r: _fmt(r.get("fwd_bwd_over_fwd"), ".2f", "x")),
    ("vs Taichi CPU", lambda r: _fmt(r.get("ratio_vs_reference_cpu"), ".2f", "x")),
    ("fwd+bwd/fwd CPU", lambda r: _fmt(r.get("fwd_bwd_over_fwd_cpu"), ".2f", "x")),
    ("load", lambda r: _fmt(r.get("load_average"), ".1f")),
    ("peak MiB", lambda r: _fmt(r.get("peak_memory_bytes", math.nan) / 2**20, ".0f")),
]


#: the mass-spring cases' table (rates in million node- and spring-substeps per second; springs
#: counted once on both sides; "state diff": largest difference of the final centroid and
#: bounding box, the example's units)
SPRING_COLUMNS = [
    ("case", lambda r: r["case"]),
    ("nodes", lambda r: _fmt(r.get("nodes"), ",")),
    ("springs", lambda r: _fmt(r.get("springs"), ",")),
    ("dt", lambda r: _fmt(r.get("dt"), "g")),
    ("substeps", lambda r: _fmt(r.get("substeps"), ",")),
    ("K", lambda r: _fmt(r.get("checkpoint_every"))),
    ("fwd s", lambda r: _fmt(r.get("seconds"), ".2f")),
    ("Mnode-steps/s", lambda r: _fmt(r.get("node_steps_per_s", math.nan) / 1e6, ".2f")),
    ("Mspring-steps/s", lambda r: _fmt(r.get("spring_steps_per_s", math.nan) / 1e6, ".1f")),
    ("Taichi ex. Mnode/s", lambda r: _fmt(r.get("reference_node_steps_per_s", math.nan) / 1e6, ".2f")),
    ("Taichi ex. Mspring/s", lambda r: _fmt(r.get("reference_spring_steps_per_s", math.nan) / 1e6, ".1f")),
    ("vs Taichi", lambda r: _fmt(r.get("ratio_vs_reference"), ".2f", "x")),
    ("fwd+bwd s", lambda r: _fmt(r.get("fwd_bwd_seconds"), ".2f")),
    ("fwd+bwd/fwd", lambda r: _fmt(r.get("fwd_bwd_over_fwd"), ".2f", "x")),
    ("state diff", lambda r: _fmt(r.get("final_state_difference"), ".1e")),
    ("peak MiB", lambda r: _fmt(r.get("peak_memory_bytes", math.nan) / 2**20, ".0f")),
]


#: the FEM cases' table: FEM steps (scene substeps x the part's sub-steps), rates in thousand FEM
#: steps and million tet-steps per second ("state diff": as for the cloth, the example's units)
FEM_COLUMNS = [
    ("case", lambda r: r["case"]),
    ("nodes", lambda r: _fmt(r.get("nodes"), ",")),
    ("tets", lambda r: _fmt(r.get("tets"), ",")),
    ("FEM dt", lambda r: _fmt(r.get("fem_dt"), ".3g")),
    ("FEM steps", lambda r: _fmt(r.get("fem_steps"), ",")),
    ("K", lambda r: _fmt(r.get("checkpoint_every"))),
    ("fwd s", lambda r: _fmt(r.get("seconds"), ".2f")),
    ("kstep/s", lambda r: _fmt(r.get("fem_steps_per_s", math.nan) / 1e3, ".2f")),
    ("Mtet-steps/s", lambda r: _fmt(r.get("tet_steps_per_s", math.nan) / 1e6, ".2f")),
    ("Taichi ex. Mtet/s", lambda r: _fmt(r.get("reference_tet_steps_per_s", math.nan) / 1e6, ".2f")),
    ("vs Taichi", lambda r: _fmt(r.get("ratio_vs_reference"), ".2f", "x")),
    ("fwd+bwd s", lambda r: _fmt(r.get("fwd_bwd_seconds"), ".2f")),
    ("fwd+bwd/fwd", lambda r: _fmt(r.get("fwd_bwd_over_fwd"), ".2f", "x")),
    ("state diff", lambda r: _fmt(r.get("final_state_difference"), ".1e")),
    ("peak MiB", lambda r: _fmt(r.get("peak_memory_bytes", math.nan) / 2**20, ".0f")),
]


#: the cold-compile cases' table (seconds; "fwd compile" / "rev compile": first call minus a
#: warm call, forward without gradients / forward with the tape + backward)
COMPILE_COLUMNS = [
    ("case", lambda r: r["case"]),
    ("dim", lambda r: _fmt(r.get("dim"))),
    ("particles", lambda r: _fmt(r.get("particles"), ",")),
    ("grid", lambda r: _fmt(r.get("grid"))),
    ("precision", lambda r: r.get("precision", "-") + (" fast_compile" if r.get("fast_compile") else "")),
    ("build s", lambda r: _fmt(r.get("build_seconds"), ".1f")),
    ("fwd compile s", lambda r: _fmt(r.get("compile_forward_seconds"), ".1f")),
    ("rev compile s", lambda r: _fmt(r.get("compile_reverse_seconds"), ".1f")),
    ("build to 1st gradient s", lambda r: _fmt(r.get("cold_total_seconds"), ".1f")),
    ("same, CPU s", lambda r: _fmt(r.get("cold_total_cpu_seconds"), ".1f")),
    ("load avg", lambda r: _fmt(r.get("load_average_before"), ".1f")),
    ("peak MiB", lambda r: _fmt(r.get("peak_memory_bytes", math.nan) / 2**20, ".0f")),
]


def _note(r: dict) -> str:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    if "error" in r:
        return "ERROR: " + r["error"].splitlines()[0]
    if "gradient_error" in r:
        return "backward failed: " + r["gradient_error"].split(";")[0]
    return ""


def format_table(records: list[dict], markdown: bool = False, columns=None) -> str:
    """The results as a plain-text (or Markdown) table (``columns``: default :data:`COLUMNS`)."""
    columns = COLUMNS if columns is None else columns
    header = [c[0] for c in columns] + ["note"]
    rows = [[fn(r) for _, fn in columns] + [_note(r)] for r in records]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 or i == len(header) - 1 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*row).rstrip() for row in [header, *rows])


def format_tables(records: list[dict], markdown: bool = False) -> str:
    """The MPM cases' table, then the mass-spring, the FEM and the cold-compile cases' (each only
    if it has rows)."""
    groups = ([r for r in records if r["group"] not in ("mass_spring", "fem", "compile")], COLUMNS), \
        ([r for r in records if r["group"] == "mass_spring"], SPRING_COLUMNS), \
        ([r for r in records if r["group"] == "fem"], FEM_COLUMNS), \
        ([r for r in records if r["group"] == "compile"], COMPILE_COLUMNS)
    return "\n\n".join(format_table(rs, markdown, cols) for rs, cols in groups if rs)


def evaluate_targets(records: list[dict]) -> list[dict]:
    """Compare the records with the issue's three targets, and the mass-spring cases with theirs."""
    ok = [r for r in records if "error" not in r and "skipped" not in r]
    springs = [r for r in ok if r["group"] == "mass_spring"]
    fems = [r for r in ok if r["group"] == "fem"]
    compiles = [r for r in ok if r["group"] == "compile"]
    ok = [r for r in ok if r["group"] not in ("mass_spring", "fem", "compile")]
    targets = []
    ratios = {r["case"]: r["ratio_vs_reference"] for r in ok if "ratio_vs_reference" in r}
    if ratios:
        worst = min(ratios, key=ratios.get)
        targets.append({"target": f"forward throughput >= {THROUGHPUT_TARGET:.1f}x Taichi's example",
                        "value": ratios[worst], "where": f"worst case {worst}",
                        "met": all(v >= THROUGHPUT_TARGET for v in ratios.values()), "all": ratios})
    costs = {r["case"]: r["fwd_bwd_over_fwd"] for r in ok
             if "fwd_bwd_over_fwd" in r and r.get("checkpointing", True) and r["substeps"] > r["checkpoint_every"]}
    if costs:
        worst = max(costs, key=costs.get)
        targets.append({"target": f"forward + backward <= {GRADIENT_COST_TARGET:.0f}x forward with checkpointing",
                        "value": costs[worst], "where": f"worst case {worst}",
                        "met": all(v <= GRADIENT_COST_TARGET for v in costs.values()), "all": costs})
    # on CUDA the particle state lives in device memory, which ru_maxrss does not see
    ckpt = sorted((r["substeps"], r["peak_memory_bytes"]) for r in ok
                  if r["group"] == "horizon" and r.get("checkpointing") and r["arch"] == "cpu")
    if len(ckpt) >= 2:
        (t0, m0), (t1, m1) = ckpt[0], ckpt[-1]
        partial = [r["substeps"] for r in ok if r["group"] == "horizon" and r.get("checkpointing")
                   and "gradient_error" in r and r["substeps"] in (t0, t1)]
        where = f"T={t1} vs T={t0}"
        if partial:
            where += f"; backward at T={partial} stopped early on a GradientError"
        targets.append({"target": f"checkpointed peak memory at the longest horizon <= {MEMORY_FLAT_TARGET}x "
                                  f"the shortest", "value": m1 / m0, "where": where,
                        "met": m1 / m0 <= MEMORY_FLAT_TARGET})
    ratios = {r["case"]: r["ratio_vs_reference"] for r in springs if "ratio_vs_reference" in r}
    if ratios:
        worst = min(ratios, key=ratios.get)
        targets.append({"target": f"mass-spring forward throughput >= {SPRING_THROUGHPUT_TARGET:.1f}x Taichi's "
                                  f"{CLOTH_EXAMPLE}.py", "value": ratios[worst], "where": f"worst case {worst}",
                        "met": all(v >= SPRING_THROUGHPUT_TARGET for v in ratios.values()), "all": ratios})
    ratios = {r["case"]: r["ratio_vs_reference"] for r in fems if "ratio_vs_reference" in r}
    if ratios:
        worst = min(ratios, key=ratios.get)
        targets.append({"target": f"FEM forward throughput >= {FEM_THROUGHPUT_TARGET:.1f}x Taichi's "
                                  f"{FEM_EXAMPLE}.py (explicit, same mesh and dt)", "value": ratios[worst],
                        "where": f"worst case {worst}",
                        "met": all(v >= FEM_THROUGHPUT_TARGET for v in ratios.values()), "all": ratios})
    costs = {r["case"]: r["fwd_bwd_over_fwd"] for r in fems if "fwd_bwd_over_fwd" in r}
    if costs:
        worst = max(costs, key=costs.get)
        targets.append({"target": f"FEM forward + backward <= {GRADIENT_COST_TARGET:.0f}x forward",
                        "value": costs[worst], "where": f"worst case {worst}",
                        "met": all(v <= GRADIENT_COST_TARGET for v in costs.values()), "all": costs})
    # the goal is for what a user gets by default (f64 on the CPU, Taichi's optimizations on)
    cold = {r["case"]: r["cold_total_seconds"] for r in compiles if not r.get("fast_compile")}
    if cold:
        worst = max(cold, key=cold.get)
        targets.append({"target": f"cold compile of a 3D differentiable scene (build to first gradient) <= "
                                  f"{COLD_COMPILE_TARGET_SECONDS:.0f} s", "value": cold[worst],
                        "where": f"worst case {worst}", "met": all(v <= COLD_COMPILE_TARGET_SECONDS
                                                                   for v in cold.values()), "all": cold})
    return targets


def plot_scaling(records: list[dict], path: str, device: str) -> None:
    """Throughput versus particle count (physim and Taichi's mpm3d.py), log-log."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no scaling plot")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    pts = sorted((r["particles"], r["particle_steps_per_s"], r.get("reference_particle_steps_per_s"))
                 for r in records if r["group"] == "scaling" and "error" not in r and "skipped" not in r)
    if not pts:
        return
    n = [p[0] for p in pts]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.plot(n, [p[1] / 1e6 for p in pts], "o-",
            label="physim (MLS-MPM with tape, kernels for the scene's materials); x = ratio")
    if all(p[2] for p in pts):
        ax.plot(n, [p[2] / 1e6 for p in pts], "s--", label="Taichi mpm3d.py (fluid only)")
    if all(p[2] for p in pts):
        for k, mine, ref in pts:
            ax.annotate(f"{mine / ref:.2f}x", (k, mine / 1e6), textcoords="offset points", xytext=(0, -14),
                        ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.margins(x=0.06, y=0.12)
    values = [p[1] for p in pts] + [p[2] for p in pts if p[2]]
    narrow = math.log10(max(values) / min(values)) < 2  # label minor ticks 2, 4, 6 too
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if narrow and f"{v:g}".lstrip("0.")[0] in "246"
                                               else ""))
    ax.set_xticks(n, [f"{k // 1024}k" for k in n])
    ax.set_xlabel("particles (3D, 64³ grid, fluid)")
    ax.set_ylabel("million particle-substeps / s")
    ax.set_title(f"Forward throughput vs particle count\n{device}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"scaling plot: {path}")


def machine_info(arch: str) -> dict:
    """Where the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import taichi

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    device = cpu
    if arch == "cuda":
        try:
            device = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                    text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            device = "CUDA GPU"
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "arch": arch, "device": device, "cpu": cpu,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "taichi": ".".join(map(str, taichi.__version__)), "git_commit": git("rev-parse", "--short", "HEAD"),
            "physim_uncommitted_changes": git("status", "--porcelain", "--", "physim").splitlines()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="physim benchmark suite")
    parser.add_argument("--quick", action="store_true", help="reduced suite, ~5 minutes with a warm cache")
    parser.add_argument("--arch", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", help="results file (default benchmarks/results/latest[_quick].json)")
    parser.add_argument("--plot", help="scaling plot (default: benchmarks/scaling.png)")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    parser.add_argument("--only", help="run only cases whose name matches this regular expression")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other cases' records already in the results file (with --only: refresh "
                             "some rows of latest_quick.json without losing the rest)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per worker process")
    parser.add_argument("--physim-rev", metavar="REV",
                        help="benchmark physim as of this git revision (default: the working tree)")
    args = parser.parse_args(argv)
    suffix = "" if args.arch == "cpu" else f"_{args.arch}"
    quick = "_quick" if args.quick else ""
    json_path = args.json or os.path.join(RESULTS, f"latest{suffix}{quick}.json")
    plot_path = args.plot or (os.path.join(RESULTS, f"scaling{suffix}_quick.png") if args.quick
                              else os.path.join(HERE, f"scaling{suffix}.png"))
    cases = make_cases(args.quick)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    if args.physim_rev:  # resolve once, so a commit landing during the run changes nothing
        args.physim_rev = subprocess.run(["git", "rev-parse", "--short", args.physim_rev], cwd=ROOT,
                                         capture_output=True, text=True, check=True).stdout.strip()
    snapshot = tempfile.mkdtemp(prefix="physim-bench-")
    try:
        origin = snapshot_physim(snapshot, args.physim_rev)
        _SOURCE["path"] = snapshot
        return _run_suite(args, cases, json_path, plot_path, origin)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _run_suite(args, cases: list[Case], json_path: str, plot_path: str, origin: str) -> int:
    from tqdm import tqdm

    meta = {**machine_info(args.arch), "quick": args.quick, "physim_source": origin}
    if args.physim_rev:
        meta["physim_commit"] = args.physim_rev
    for path in (json_path, plot_path, args.markdown):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    records = []
    kept = []  # --merge: earlier records of cases this run does not repeat
    if args.merge and os.path.exists(json_path):
        with open(json_path) as f:
            old = json.load(f)
        names = {c.name for c in cases}
        kept = [r for r in old.get("records", []) if r["case"] not in names]
        meta["merged_from"] = {k: old.get("meta", {}).get(k) for k in ("date", "git_commit", "physim_source")}
    start = datetime.datetime.now()
    bar = tqdm(cases, unit="case", file=sys.stderr)
    for case in bar:
        bar.set_description(case.name)
        records.append(run_case(case, args.arch, args.timeout))
        targets = evaluate_targets(kept + records)
        meta["wall_seconds"] = (datetime.datetime.now() - start).total_seconds()
        with open(json_path, "w") as f:  # after every case, so an interrupted run keeps its results
            json.dump({"meta": meta, "records": kept + records, "targets": targets}, f, indent=1)
    bar.close()
    print(format_tables(records))
    print()
    for t in evaluate_targets(records):
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {t['value']:.2f} ({t['where']})")
    print(f"\n{len(records)} cases in {meta['wall_seconds']:.0f} s; results: {json_path}")
    if any(r["group"] == "scaling" for r in records):
        device = meta["device"] if args.arch == "cuda" else f"{meta['device']}, {meta['cpu_count']} cores"
        plot_scaling(records, plot_path, device)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_tables(records, markdown=True) + "\n")
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())

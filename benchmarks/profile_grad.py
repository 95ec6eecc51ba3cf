"""Where the time of forward + backward goes: per kernel and per phase of reverse mode.

Builds a gradient case of ``run.py`` (``grad_2d`` or the 3D elastic block of ``grad_3d_*``,
optionally smaller) in this process, runs it once to compile, then times, with ``ti.sync()``
around every launch (CPU launches are synchronous anyway, so this adds only the Python timer).
``--clock cpu`` (the default) counts the CPU time of this process's threads
(``time.process_time``), which other processes on a loaded machine disturb far less than
wall time (``--clock wall``):

* ``forward``: the forward pass without gradients;
* ``forward_tape``: the forward pass with the tape (what ``forward(requires_grad=True)`` costs);
* reverse mode split into: ``restore`` (a chunk's checkpoint to the device), ``recompute``
  (re-running a chunk with the tape), ``replay:<kernel>`` (launches re-run before each
  substep's adjoints), ``zero_scratch``, ``adjoint:<kernel>`` (each adjoint), ``seed/move``
  and ``other`` (the rest of ``backward``).

Usage::

    python benchmarks/profile_grad.py --dim 3 --substeps 200        # the grad_3d block, T = 200, K = 50
    python benchmarks/profile_grad.py --dim 2 --substeps 1000       # grad_2d

Kernels compile into the suite's cache (``~/.cache/taichi/physim-benchmarks``) with the same
layout as run.py's cases (``build_steps``), so a warm suite makes this start fast.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=3, choices=(2, 3))
    parser.add_argument("--substeps", type=int, default=200)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--precision", default="f32", choices=("f32", "f64"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"))
    parser.add_argument("--phases", action="store_true", help="also time the MPM phase kernels one by one")
    args = parser.parse_args(argv)
    os.environ.setdefault("TI_OFFLINE_CACHE_FILE_PATH", os.path.join(os.path.expanduser("~"), ".cache", "taichi",
                                                                      "physim-benchmarks"))
    os.environ.setdefault("TI_OFFLINE_CACHE_MAX_SIZE_OF_FILES", str(2**31 - 1))
    import physim_worker
    import run
    import taichi as ti

    import physim as ps
    from physim import rollout as rollout_mod
    from physim import tape as tape_mod

    ps.init(arch="cpu", precision=args.precision, fast_compile=False, verbose=False)
    spec = run._gradient_spec(args.dim, args.substeps, args.checkpoint_every, 1)
    scene, n_steps = physim_worker.build_scene(ps, spec)
    actions = np.zeros((n_steps, scene.action_dim))
    seeds = {"mpm.x": np.ones_like(scene.get_state()["mpm.x"])}

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    times: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    active = {"on": False}

    def timed(name, fn, *a, **kw):
        if not active["on"]:
            return fn(*a, **kw)
        ti.sync()
        t0 = clock()
        out = fn(*a, **kw)
        ti.sync()
        times[name] += clock() - t0
        counts[name] += 1
        return out

    def kname(launch):
        return getattr(launch.kernel, "__name__", str(launch.kernel))

    orig_fwd, orig_bwd = tape_mod.Launch.run_forward, tape_mod.Launch.run_backward
    tape_mod.Launch.run_forward = lambda self: timed("replay:" + kname(self), orig_fwd, self)
    tape_mod.Launch.run_backward = lambda self: timed("adjoint:" + kname(self), orig_bwd, self)
    orig_zero = rollout_mod.Rollout._zero_scratch_grads
    rollout_mod.Rollout._zero_scratch_grads = lambda self: timed("zero_scratch", orig_zero, self)
    orig_import = ps.Scene._import
    ps.Scene._import = lambda self, *a, **kw: timed("restore", orig_import, self, *a, **kw)
    orig_add_seed = rollout_mod.Rollout._add_seed
    rollout_mod.Rollout._add_seed = lambda self, *a, **kw: timed("seed/move", orig_add_seed, self, *a, **kw)
    in_backward = {"on": False}
    orig_substep = rollout_mod.Rollout._substep

    def substep(self, l, t):
        return timed("recompute" if in_backward["on"] else "forward_substeps", orig_substep, self, l, t)
    rollout_mod.Rollout._substep = substep

    def forward_backward():
        scene.forward(actions, requires_grad=True)
        scene.backward(seeds)

    scene.forward(actions[:1], requires_grad=False)  # compile
    scene.reset()
    forward_backward()

    best: dict[str, float] = {}
    for _ in range(args.repeats):
        scene.reset()
        ti.sync()
        t0 = clock()
        scene.forward(actions, requires_grad=False)
        ti.sync()
        best["forward"] = min(best.get("forward", 1e9), clock() - t0)
    per_run = []
    for _ in range(args.repeats):
        times.clear()
        counts.clear()
        scene.reset()
        ti.sync()
        active["on"] = True
        t0 = clock()
        scene.forward(actions, requires_grad=True)
        ti.sync()
        t1 = clock()
        in_backward["on"] = True
        scene.backward(seeds)
        ti.sync()
        t2 = clock()
        in_backward["on"] = False
        active["on"] = False
        per_run.append((t1 - t0, t2 - t1, dict(times), dict(counts)))
    fwd_tape, bwd, times_b, counts_b = min(per_run, key=lambda r: r[0] + r[1])
    f = best["forward"]
    print(f"{args.dim}D, {scene.n_particles} particles, grid {spec['grid']}, T={n_steps * spec['substeps_per_step']}, "
          f"K={scene.checkpoint_every}, {args.precision}; {args.clock} time; load {os.getloadavg()[0]:.2f}")
    print(f"forward (no tape)   {f:8.3f} s  1.00x")
    print(f"forward with tape   {fwd_tape:8.3f} s  {fwd_tape / f:.2f}x")
    print(f"backward            {bwd:8.3f} s  {bwd / f:.2f}x")
    print(f"fwd+bwd             {fwd_tape + bwd:8.3f} s  {(fwd_tape + bwd) / f:.2f}x")
    accounted = 0.0
    for name in sorted(times_b, key=times_b.get, reverse=True):
        if name == "forward_substeps":
            continue
        accounted += times_b[name]
        print(f"  {name:34s} {times_b[name]:8.3f} s  {times_b[name] / f:.2f}x  ({counts_b[name]} calls)")
    print(f"  {'other (backward)':34s} {bwd - accounted:8.3f} s  {(bwd - accounted) / f:.2f}x")
    if args.phases:
        phases(scene, ti, clock, f, n_steps * spec["substeps_per_step"])


def phases(scene, ti, clock, forward_seconds: float, substeps: int) -> None:
    """The MPM phase kernels run one by one (forward, on the initial state, as often as the
    horizon has substeps), against the forward pass: where a fused substep's time goes."""
    mpm = scene.partset.by_name()["mpm"]
    scene.reset()
    svd, rigid = mpm.needs_svd, mpm.has_rigid
    calls = {
        "substep_fused (forward)": lambda: mpm.substep_fused(0, 0, svd, rigid),
        "substep_scratch (replay)": lambda: mpm.substep_scratch(0, 0, svd, rigid),
        "zero_scratch_grads": mpm.zero_scratch_grads,
        "trial_deformation": lambda: mpm.trial_deformation(0),
        "svd": mpm.svd,
        "plasticity": lambda: mpm.plasticity(0),
        "stress": lambda: mpm.stress(0, 0),
        "p2g": lambda: mpm.p2g(0),
        "grid_update": lambda: mpm.grid_update(0, 0),
        "g2p": lambda: mpm.g2p(0),
    }
    print(f"phase kernels, {substeps} calls each, vs the forward pass ({forward_seconds:.3f} s):")
    for name, fn in calls.items():
        fn()
        ti.sync()
        t0 = clock()
        for _ in range(substeps):
            fn()
        ti.sync()
        dt = clock() - t0
        print(f"  {name:34s} {dt:8.3f} s  {dt / forward_seconds:.2f}x")
    scene.reset()


if __name__ == "__main__":
    main()

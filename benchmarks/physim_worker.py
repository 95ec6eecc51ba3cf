"""Run one physim benchmark case in this process and write a JSON record.

The case is a JSON object (``--spec``); :mod:`run` builds these. Keys:

* ``dim``, ``grid``, ``dt``, ``substeps`` (timed horizon), ``substeps_per_step``,
  ``checkpoint_every`` (K), ``gravity``, ``boundary``, ``arch``, ``repeats``;
* ``build_steps``: build for at least this many steps (cases with the same value share
  a compiled layout, see :func:`build_scene`);
* ``specialize`` (default true): kernels compiled for the scene's materials only
  (``Scene(specialize=...)``);
* ``material``: ``{"kind": "fluid", "bulk_modulus": ...}`` or ``{"kind": "elastic", "E": ..., "nu": ...}``;
* the particles, either ``"random": {"n": N, "lo": a, "hi": b, "velocity": [...], "seed": s}``
  (exactly N particles uniformly random in the cube [a, b]^dim, like Taichi's
  examples) or ``"box": {"center": [...], "size": [...]}`` (physim's default
  lattice, two particles per cell per axis);
* ``mode``: ``"forward"`` (time forward without gradients) or ``"gradient"``
  (time forward without gradients, then forward + backward with the tape).

Every run is preceded by an untimed warm-up that compiles (or loads from Taichi's
offline cache) every kernel the timed runs use. The peak resident memory of the
process (``ru_maxrss``) is reported as measured: it includes Taichi, LLVM and the
Python interpreter, and is only meaningful when one case runs per process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from bench_util import peak_rss_bytes, time_runs, write_result


def lattice_shape(n: int, dim: int) -> list[int]:
    """Factor ``n`` into ``dim`` integers as close to each other as possible."""
    shape = []
    rest = n
    for left in range(dim, 1, -1):
        target = round(rest ** (1.0 / left))
        best = min((d for d in range(1, rest + 1) if rest % d == 0), key=lambda d: (abs(d - target), -d))
        shape.append(best)
        rest //= best
    shape.append(rest)
    return sorted(shape, reverse=True)


def make_material(ps, spec: dict):
    """A physim material from ``{"kind": "fluid" | "elastic", **parameters}``."""
    kind = spec["kind"]
    params = {k: v for k, v in spec.items() if k != "kind"}
    if kind == "fluid":
        return ps.Fluid(**params)
    if kind == "elastic":
        return ps.Elastic(**params)
    raise ValueError(f"unknown material kind {kind!r}")


def build_scene(ps, spec: dict):
    """Build the scene of ``spec``; returns it built for ``spec['substeps']`` substeps."""
    dim = spec["dim"]
    n_steps = -(-spec["substeps"] // spec["substeps_per_step"])
    # build for at least ``build_steps`` steps: the engine's layout (and so Taichi's
    # kernel cache entry) depends on this capacity, so cases that share it share kernels
    capacity = max(n_steps, spec.get("build_steps", 1))
    common = dict(dim=dim, grid_res=spec["grid"], dt=spec["dt"], substeps_per_step=spec["substeps_per_step"],
                  gravity=spec.get("gravity"), boundary=spec.get("boundary", "slip"),
                  checkpoint_every=spec["checkpoint_every"], specialize=spec.get("specialize", True))
    material = make_material(ps, spec["material"])
    if "random" in spec:
        # physim samples bodies on a lattice, so first make a lattice body with exactly
        # N points, then replace its positions by uniform random ones. Particle volume
        # (spacing^dim) scales mass and stress alike, so it does not change the motion.
        r = spec["random"]
        shape = lattice_shape(r["n"], dim)
        spacing = 0.5 / max(shape)
        scene = ps.Scene(particle_spacing=spacing, **common)
        scene.add_body(ps.Box(center=[0.5] * dim, size=[k * spacing for k in shape]), material,
                       velocity=r.get("velocity"))
        scene.build(max_steps=capacity)
        rng = np.random.default_rng(r.get("seed", 0))
        scene.set_initial_state(x=rng.uniform(r["lo"], r["hi"], size=(r["n"], dim)))
    else:
        b = spec["box"]
        scene = ps.Scene(**common)
        scene.add_body(ps.Box(center=b["center"], size=b["size"]), material, velocity=b.get("velocity"))
        scene.build(max_steps=capacity)
    return scene, n_steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON case specification")
    parser.add_argument("--out", help="write the JSON record here (default: stdout)")
    args = parser.parse_args(argv)
    spec = json.loads(args.spec)

    try:
        import physim as ps
    except ModuleNotFoundError:  # not installed: use the checkout this file lives in
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import physim as ps
    import taichi as ti

    ps.init(arch=spec.get("arch", "cpu"), precision="f32", fast_compile=False, verbose=False)
    t0 = time.perf_counter()
    scene, n_steps = build_scene(ps, spec)
    build_seconds = time.perf_counter() - t0
    ns = spec["substeps_per_step"]
    substeps = n_steps * ns
    actions = np.zeros((n_steps, scene.action_dim))
    repeats = spec.get("repeats", 3)
    grad_mode = spec["mode"] == "gradient"

    # Warm-up: compile (or load from Taichi's offline cache) every kernel the timed runs
    # use. A checkpoint interval of 4 substeps over one step makes the short warm-up
    # run several chunks, so the checkpoint copy/restore kernels are compiled as well.
    t0 = time.perf_counter()
    horizon_k = scene.checkpoint_every
    scene.set_checkpoint_every(min(4, horizon_k))
    scene.forward(actions[:1], requires_grad=False)
    if grad_mode:
        scene.reset()
        scene.forward(actions[:1], requires_grad=True)
        scene.backward(grad_x=np.ones((scene.n_particles, spec["dim"])))
    scene.set_checkpoint_every(horizon_k)
    scene.reset()
    ti.sync()
    warmup_seconds = time.perf_counter() - t0

    fwd = time_runs(lambda: scene.forward(actions, requires_grad=False), prepare=scene.reset, sync=ti.sync,
                    repeats=repeats)
    record = {
        "dim": spec["dim"],
        "particles": scene.n_particles,
        "grid": spec["grid"],
        "dt": scene.dt,
        "substeps": substeps,
        "checkpoint_every": scene.checkpoint_every,
        "arch": ps.backend.config().arch,
        "physim_file": ps.__file__,
        "repeats": repeats,
        "build_seconds": build_seconds,
        "warmup_seconds": warmup_seconds,
        "forward_seconds": fwd["seconds"],
        "forward_seconds_all": fwd["seconds_all"],
        "seconds": fwd["seconds"],
        "particle_steps_per_s": scene.n_particles * substeps / fwd["seconds"],
    }
    if grad_mode:
        grad_x = np.ones((scene.n_particles, spec["dim"]))

        def forward_backward():
            scene.forward(actions, requires_grad=True)
            scene.backward(grad_x=grad_x)

        try:
            fb = time_runs(forward_backward, prepare=scene.reset, sync=ti.sync, repeats=repeats)
        except ps.GradientError as err:
            # physim refuses to return NaN/inf gradients; keep what was measured (the whole
            # checkpointed forward and the backward up to the failing chunk) and say why
            record["gradient_error"] = f"GradientError: {err}"
        else:
            record.update({
                "fwd_bwd_seconds": fb["seconds"],
                "fwd_bwd_seconds_all": fb["seconds_all"],
                "fwd_bwd_over_fwd": fb["seconds"] / fwd["seconds"],
            })
    pos = scene.particle_positions()
    if not np.isfinite(pos).all():
        raise RuntimeError("physim produced non-finite positions")
    record["peak_memory_bytes"] = peak_rss_bytes()
    write_result(args.out, record)


if __name__ == "__main__":
    sys.exit(main())

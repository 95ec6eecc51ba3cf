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
* or, instead of ``material`` and particles, ``"cloth": {...}``: the mass-spring cloth of
  Taichi's ``mass_spring_3d_ggui.py`` (see :func:`build_cloth`; ``gravity`` is then in the
  example's units);
* or ``"fem": {...}``: a tetrahedral FEM body, either the mesh Taichi's ``implicit_fem.py``
  built (``"mesh_file"``, see :func:`build_fem_box`) or a DiffTactile-scale dome gel pressed
  onto a plate (``"dome"``, see :func:`build_fem_dome`);
* ``mode``: ``"forward"`` (time forward without gradients), ``"gradient"``
  (time forward without gradients, then forward + backward with the tape) or ``"compile"``
  (cold compile time, see :func:`measure_compile`: run it with an empty kernel cache);
* ``precision`` (default ``"f32"``), ``fast_compile`` (default false): ``physim.init``'s;
* ``tool`` (optional): ``{"position": [...], "radius": r}``, a sphere tool added to a
  ``box`` scene (its contact code and action gradients are compiled in; the actions are 0).

Every timed run is preceded by an untimed warm-up that compiles (or loads from Taichi's
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


def cloth_springs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Springs of Taichi's ``mass_spring_3d_ggui.py`` cloth, each counted once.

    The example gives node (i, j) (number ``i * n + j``) a spring to every (i, j) + (a, b) on
    the grid with (a, b) != 0 and |a| + |b| <= 2 (12 offsets; each spring is visited from both
    ends). Returns the (m, 2) node pairs, one per unordered pair, and each spring's length in
    grid spacings, |(a, b)|."""
    offsets = [(a, b) for a in range(-2, 3) for b in range(-2, 3)
               if (a, b) != (0, 0) and abs(a) + abs(b) <= 2 and (a > 0 or (a == 0 and b > 0))]
    i, j = (k.ravel() for k in np.indices((n, n)))
    pairs, lengths = [], []
    for a, b in offsets:
        ok = (i + a >= 0) & (i + a < n) & (j + b >= 0) & (j + b < n)
        pairs.append(np.stack([i[ok] * n + j[ok], (i[ok] + a) * n + j[ok] + b], axis=1))
        lengths.append(np.full(int(ok.sum()), float(np.hypot(a, b))))
    return np.concatenate(pairs), np.concatenate(lengths)


def build_cloth(ps, spec: dict, common: dict, capacity: int):
    """physim's version of ``mass_spring_3d_ggui.py``'s cloth (``spec["cloth"]``).

    Keys of ``spec["cloth"]`` (example units; defaults: the example's constants):
    ``n``, ``spring_Y``, ``dashpot_damping``, ``ball_radius``, ``ball_center``,
    ``first_node`` (position of node (0, 0); the example's is (-0.5, 0.6, -0.5) plus a random
    horizontal offset, which the reference worker reports so both start alike), ``scale`` and
    ``origin`` (physim position = origin + scale * example position: the example's cloth spans
    [-0.55, 0.55] horizontally, physim's domain is the unit cube).

    The mapping, example -> physim (p = origin + s r, s = ``scale``):

    * mass: 1 kg per node (the example adds ``force * dt`` to v: unit masses);
    * stiffness of a spring of rest length L0 = quad_size |(a, b)|: the example's force is
      -spring_Y (L / L0 - 1) d = -(spring_Y / L0) (L - L0) d, so k = spring_Y / L0 N/m with L0
      in example units. In physim units lengths are s times larger, so k (L' - L0') is s times
      the example's force: s times its acceleration, exactly what p = origin + s r needs;
    * damping: the example's dashpot is -(v_ij . d) d dashpot_damping quad_size, so
      c = dashpot_damping * quad_size N s/m on every spring (velocities scale by s like forces);
    * gravity: s times the example's (``spec["gravity"]``, example units);
    * ball: ``SphereTool`` at origin + s ball_center, radius s ball_radius, friction 0 and
      hard contact: the example's velocity projection (remove the approaching normal velocity
      inside or on the ball, no friction);
    * drag: physim has none; the case runs the example with ``drag_damping=0``;
    * floor and walls: physim only; the horizons are short enough that no node reaches them.

    Symplectic Euler's stable dt depends on k / m and c / m only, so the scaling leaves it as is.
    """
    c = spec["cloth"]
    n, s = int(c["n"]), float(c.get("scale", 0.5))
    origin = np.asarray(c.get("origin", [0.5, 0.45, 0.5]), np.float64)
    quad = 1.0 / n  # the example's quad_size
    first = np.asarray(c.get("first_node", [-0.5, 0.6, -0.5]), np.float64)
    i, j = (k.ravel() for k in np.indices((n, n)))
    r = first + np.stack([i * quad, np.zeros(n * n), j * quad], axis=1)  # the example's initialize_mass_points
    pairs, lengths = cloth_springs(n)
    rest = quad * lengths  # example units
    body = ps.MassSpring(origin + s * r, pairs, mass=1.0, stiffness=c.get("spring_Y", 3e4) / rest,
                         damping=c.get("dashpot_damping", 1e4) * quad, rest_length=s * rest, friction=0.0)
    gravity = s * np.asarray(spec.get("gravity", [0.0, -9.8, 0.0]), np.float64)
    scene = ps.Scene(**{**common, "gravity": gravity})
    scene.add_mass_spring(body)
    ball = origin + s * np.asarray(c.get("ball_center", [0.0, 0.0, 0.0]), np.float64)
    scene.add_tool(ps.SphereTool(position=ball, radius=s * c.get("ball_radius", 0.3), friction=0.0))
    scene.build(max_steps=capacity)
    return scene


def to_example_units(spec: dict, p: np.ndarray) -> np.ndarray:
    """Cloth (or FEM box) positions in physim units -> the example's (inverse of
    :func:`build_cloth`'s and :func:`build_fem_box`'s maps)."""
    if "fem" in spec:
        f = spec["fem"]
        return (p - np.asarray(f["origin"])) / float(f["scale"])
    c = spec["cloth"]
    return (p - np.asarray(c.get("origin", [0.5, 0.45, 0.5]))) / float(c.get("scale", 0.5))


def oriented_tets(vertices: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """``tets`` with the last two vertices of every negatively oriented tet swapped (physim's
    TetMesh wants positive volumes; the example's 5-tet split of a cube mixes both)."""
    x = vertices[tets]
    vol = np.einsum("ij,ij->i", np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), x[:, 3] - x[:, 0])
    out = tets.copy()
    neg = vol < 0
    out[neg, 2], out[neg, 3] = tets[neg, 3], tets[neg, 2]
    return out


def build_fem_box(ps, spec: dict, common: dict, capacity: int):
    """physim's version of ``implicit_fem.py``'s explicit mode on the example's own mesh.

    ``spec["fem"]``: ``mesh_file`` (the .npz the reference worker wrote: the example's rest
    vertices ``F_ox``, tets ``F_vertices`` and initial positions ``F_x``), ``E``, ``nu``,
    ``density`` (the example's), ``scale`` and ``origin`` (physim position = origin + scale *
    example position; the example's 1 m cube starts 1 m above its floor y = 0, physim's domain is
    the unit cube with its floor at ``scene.floor``; default origin: the example's x = z = 0.5 at
    the domain's centre and its floor on physim's, written back into the spec).

    The mapping: the example's force is fixed corotated, P = 2 mu (F - R) with lambda = 0
    (nu = 0), exactly physim's ``"corotated"`` at nu = 0; lumped masses density * V / 4 per tet
    corner on both sides. Lengths scale by s = ``scale``: with E' = s^2 E and gravity s g every
    acceleration scales by s too, so the same dt gives the same motion (and the same stability
    limit). The example's floor (position projection after every 10 steps, no friction) is
    physim's floor wall with friction 0 (velocity level, every step); no damping on either side.
    """
    f = spec["fem"]
    data = np.load(f["mesh_file"])
    s = float(f["scale"])
    if "origin" not in f:  # the example's x = z = 0.5 at the domain's centre, its floor on physim's
        f["origin"] = [0.5 - 0.5 * s, ps.scene.floor_height(common["grid_res"]), 0.5 - 0.5 * s]
    origin = np.asarray(f["origin"], np.float64)
    rest = origin + s * data["x"].astype(np.float64)  # the example's initial state: F_ox lifted 1 m
    tets = oriented_tets(rest, data["tets"].astype(np.int64))
    mesh = ps.TetMesh(rest, tets)
    body = ps.FEMBody(mesh, E=s * s * float(f["E"]), nu=float(f["nu"]), density=float(f["density"]),
                      model=f.get("model", "corotated"), fixed=[], friction=0.0)
    scene = ps.Scene(**{**common, "gravity": s * np.asarray(spec.get("gravity", [0.0, -9.8, 0.0]), np.float64)})
    scene.add_fem(body, subcycle=False)  # same dt as the example, or a ValueError
    scene.build(max_steps=capacity)
    return scene


def dome_mesh(ps, d: dict):
    """The DiffTactile-scale dome gel of ``spec["fem"]["dome"]`` (bulging down, -y)."""
    return ps.dome_gel(center=d["center"], inner_radius=d["inner_radius"], outer_radius=d["outer_radius"],
                       layers=d["layers"], angle=d["angle"], rings=d.get("rings"), axis=(0.0, -1.0, 0.0))


def build_fem_dome(ps, spec: dict, common: dict, capacity: int):
    """A DiffTactile-style tactile sensor: a dome gel (``spec["fem"]["dome"]``: centre, inner
    and outer radius, layers, half-angle, rings; bulging down) cast on a rigid spherical core
    (tool 0, ``SphereTool`` of the inner radius; the inner surface's nodes are mounted on it),
    pressed down onto a plate (tool 1, a fixed ``BoxTool`` whose top is ``gap`` below the apex).
    The actions (:func:`fem_actions`) move the core down at ``press_speed``.

    ``spec["fem"]["mpm_object"]`` (``{"center", "size", "E", "nu"}``), when set, adds the object
    the gel will press as MPM particles: the one line ``scene.add_body`` below. It is ``None``
    in the suite until FEM <-> MPM contact exists (without it the gel would pass through the
    particles); the plate stands in for it.
    """
    f = spec["fem"]
    d = f["dome"]
    mesh = dome_mesh(ps, d)
    c = np.asarray(d["center"], np.float64)
    scene = ps.Scene(**common)
    scene.add_tool(ps.SphereTool(position=c, radius=d["inner_radius"]))  # the rigid core, tool 0
    apex = c[1] - d["outer_radius"]
    plate_top = apex - f.get("gap", 1e-4)
    half = np.asarray(f.get("plate_half_extents", [0.03, 0.005, 0.03]), np.float64)
    scene.add_tool(ps.BoxTool(position=(c[0], plate_top - half[1], c[2]), half_extents=half,
                              friction=f.get("plate_friction", 0.3)))  # tool 1
    scene.add_fem(ps.FEMBody(mesh, E=f["E"], nu=f["nu"], density=f["density"], model=f.get("model",
                             "stable_neohookean"), beta=f.get("beta", 0.0), mount=0))
    obj = f.get("mpm_object")
    if obj:  # the ~20k-particle object under the gel (needs FEM <-> MPM coupling to interact)
        scene.add_body(ps.Box(center=obj["center"], size=obj["size"]), ps.Elastic(E=obj["E"], nu=obj["nu"]))
    scene.build(max_steps=capacity)
    return scene


def fem_actions(spec: dict, scene, n_steps: int) -> np.ndarray:
    """Action rows of an FEM case: the dome's core moves down at ``press_speed`` (m/s); the box
    case has no tools."""
    actions = np.zeros((n_steps, scene.action_dim))
    speed = spec["fem"].get("press_speed")
    if speed:
        actions[:, scene.tool_slice(0).start + 1] = -float(speed)
    return actions


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
    if "cloth" in spec:
        return build_cloth(ps, spec, common, capacity), n_steps
    if "fem" in spec:
        build = build_fem_dome if "dome" in spec["fem"] else build_fem_box
        return build(ps, spec, common, capacity), n_steps
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
        tool = spec.get("tool")
        if tool:
            scene.add_tool(ps.SphereTool(position=tool["position"], radius=tool["radius"]))
        scene.build(max_steps=capacity)
    return scene, n_steps


def backward(scene, seeds: dict) -> None:
    """Reverse mode seeded by ``seeds``: named state (current physim) or ``grad_x`` (older physim)."""
    if "grad_x" in seeds:
        scene.backward(grad_x=seeds["grad_x"])
    else:
        scene.backward(seeds)


def measure_compile(scene, ti, actions: np.ndarray, seeds: dict) -> dict:
    """Cold compile time of a differentiable scene (``mode: "compile"``; run.py starts this
    worker with an empty Taichi kernel cache, so every kernel compiles from scratch).

    Runs ``actions`` (several checkpoint chunks) twice each way: the first forward without
    gradients (compiles the forward kernels), the first forward with the tape + backward
    (compiles the scratch replay, the phase kernels' adjoints and the checkpoint copies), then
    both again, warm. Compile time = first call - warm call. With the scene's build time
    (:func:`main`), ``cold_total_seconds`` = build + first forward + first forward/backward:
    what a user waits from ``Scene.build`` to the first gradient of a new scene layout."""
    cpu = {}

    def timed(fn, name: str | None = None) -> float:
        scene.reset()
        ti.sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        ti.sync()
        if name:  # CPU time of every thread of this process: less sensitive to other load than wall time
            cpu[name] = time.process_time() - start_cpu
        return time.perf_counter() - start

    def forward():
        scene.forward(actions, requires_grad=False)

    def forward_backward():
        scene.forward(actions, requires_grad=True)
        backward(scene, seeds)

    load = os.getloadavg()[0]
    first_fwd = timed(forward, "first_forward")
    first_fb = timed(forward_backward, "first_fwd_bwd")
    warm_fwd = min(timed(forward) for _ in range(2))
    warm_fb = min(timed(forward_backward) for _ in range(2))
    return {"first_forward_seconds": first_fwd, "first_fwd_bwd_seconds": first_fb,
            "warm_forward_seconds": warm_fwd, "warm_fwd_bwd_seconds": warm_fb,
            "compile_forward_seconds": first_fwd - warm_fwd, "compile_reverse_seconds": first_fb - warm_fb,
            "first_forward_cpu_seconds": cpu["first_forward"], "first_fwd_bwd_cpu_seconds": cpu["first_fwd_bwd"],
            "load_average_before": load, "load_average_after": os.getloadavg()[0]}


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

    t0 = time.perf_counter()
    ps.init(arch=spec.get("arch", "cpu"), precision=spec.get("precision", "f32"),
            fast_compile=spec.get("fast_compile", False), verbose=False)
    init_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    scene, n_steps = build_scene(ps, spec)
    build_seconds = time.perf_counter() - t0
    ns = spec["substeps_per_step"]
    substeps = n_steps * ns
    fem = "fem" in spec
    actions = fem_actions(spec, scene, n_steps) if fem else np.zeros((n_steps, scene.action_dim))
    repeats = spec.get("repeats", 3)
    grad_mode = spec["mode"] == "gradient"
    cloth = "cloth" in spec
    # d loss / d final positions = 1: MPM particles, the cloth's or the FEM body's nodes
    seed_name = "springs.x" if cloth else "fem.x" if fem else "mpm.x"
    if seed_name not in scene.get_state():  # physim before named state (--physim-rev of an older commit)
        seed_name = "x"
    seeds = {seed_name: np.ones_like(scene.get_state()[seed_name])}
    if seed_name == "x":
        seeds = {"grad_x": seeds["x"]}

    if spec["mode"] == "compile":
        record = {"dim": spec["dim"], "grid": spec["grid"], "dt": scene.dt, "substeps": substeps,
                  "checkpoint_every": scene.checkpoint_every, "arch": ps.backend.config().arch,
                  "precision": ps.backend.config().precision, "fast_compile": bool(spec.get("fast_compile", False)),
                  "physim_file": ps.__file__, "particles": scene.n_particles, "init_seconds": init_seconds,
                  "build_seconds": build_seconds,
                  "kernel_cache": os.environ.get("TI_OFFLINE_CACHE_FILE_PATH"),
                  **measure_compile(scene, ti, actions, seeds)}
        record["cold_total_seconds"] = build_seconds + record["first_forward_seconds"] + record["first_fwd_bwd_seconds"]
        record["cold_total_cpu_seconds"] = (build_seconds + record["first_forward_cpu_seconds"]
                                            + record["first_fwd_bwd_cpu_seconds"])
        record["peak_memory_bytes"] = peak_rss_bytes()
        write_result(args.out, record)
        return

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
        backward(scene, seeds)
    scene.set_checkpoint_every(horizon_k)
    scene.reset()
    ti.sync()
    warmup_seconds = time.perf_counter() - t0

    fwd = time_runs(lambda: scene.forward(actions, requires_grad=False), prepare=scene.reset, sync=ti.sync,
                    repeats=repeats)
    record = {
        "dim": spec["dim"],
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
        "forward_cpu_seconds": fwd["cpu_seconds"],
        "seconds": fwd["seconds"],
        "load_average": os.getloadavg()[0],
    }
    if fem:
        part = scene.partset.fem
        nodes, tets, sub = int(part.rows[None]), int(part.n_tets[None]), int(part.subcycles)
        # rates per FEM step: scene substeps x the part's sub-steps per substep (1 unless it sub-cycles)
        record.update(nodes=nodes, tets=tets, fem_subcycles=sub, fem_dt=scene.dt / sub,
                      fem_steps=substeps * sub, node_steps_per_s=nodes * substeps * sub / fwd["seconds"],
                      tet_steps_per_s=tets * substeps * sub / fwd["seconds"],
                      fem_steps_per_s=substeps * sub / fwd["seconds"])
    elif cloth:
        nodes, springs = scene.get_state()["springs.x"].shape[0], len(cloth_springs(spec["cloth"]["n"])[0])
        record.update(nodes=nodes, springs=springs, node_steps_per_s=nodes * substeps / fwd["seconds"],
                      spring_steps_per_s=springs * substeps / fwd["seconds"])
    else:
        record.update(particles=scene.n_particles,
                      particle_steps_per_s=scene.n_particles * substeps / fwd["seconds"])
    if grad_mode:
        def forward_backward():
            scene.forward(actions, requires_grad=True)
            backward(scene, seeds)

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
                "fwd_bwd_cpu_seconds": fb["cpu_seconds"],
                "fwd_bwd_over_fwd_cpu": fb["cpu_seconds"] / fwd["cpu_seconds"],
            })
    pos = scene.get_state()[seed_name]
    if not np.isfinite(pos).all():
        raise RuntimeError("physim produced non-finite positions")
    if cloth or (fem and "mesh_file" in spec["fem"]):
        # where the last run ended, in the example's units (run.py compares it with the example)
        r = to_example_units(spec, pos)
        record["final_summary"] = {"mean": r.mean(0).tolist(), "min": r.min(0).tolist(), "max": r.max(0).tolist()}
    record["peak_memory_bytes"] = peak_rss_bytes()
    write_result(args.out, record)


if __name__ == "__main__":
    sys.exit(main())

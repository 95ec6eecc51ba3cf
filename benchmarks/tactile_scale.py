"""DiffTactile-scale tactile benchmark: a ~2k-node / ~8k-tet dome gel pressing an MPM object
of ~20k particles through the coupler (physim.parts.coupler).

Reports, in one run on this machine:

* forward substeps/s of the whole scene and forward + backward / forward;
* the MPM <-> gel contact's share of a substep: the pair search (``build_face_pairs``: the
  triangle cell list and each particle's closest triangle) and the pair forces at every FEM
  sub-step (``face_forces``), each timed on its own over repeated launches;
* the pair search's cost against the number of particles (queries) at a fixed gel: a
  least-squares fit of time = a + b N; linear search means the per-query time b N / N stays
  flat (DiffTactile searches every surface triangle per grid node: time ~ N x triangles).

    python benchmarks/tactile_scale.py                    # ~20k particles (minutes on 2 CPU cores)
    python benchmarks/tactile_scale.py --quick            # ~5k particles, short horizons
    python benchmarks/tactile_scale.py --json out.json

There is no reference implementation to run side by side (DiffTactile pins 2023 Taichi and a
CUDA GPU); the FEM forward is compared with Taichi's own FEM example in ``run.py``'s ``fem``
group. The dome is the one of ``run.py``'s ``fem_dome`` case (1,952 nodes / 8,226 tets).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

DOME = {"inner_radius": 0.01, "outer_radius": 0.015, "layers": 3, "angle": 75.0,
        "rings": 13}
GRID = 128
DT = 3e-5
SPACING = 1e-3


def build(ps, slab_cells: int, max_steps: int):
    """The dome (mounted on its core, tool 0) just out of reach above a slab of elastic
    material ``slab_cells`` particles across (x and z) and 8 deep lying on the floor."""
    # particles 1 mm apart, like the gel's surface triangles (a coarser object presses each small
    # triangle with a large particle's force and crushes the surface tets)
    scene = ps.Scene(dim=3, grid_res=GRID, dt=DT, substeps_per_step=10, gravity=(0.0, -9.8, 0.0),
                     checkpoint_every=50, particle_spacing=SPACING)
    spacing = scene.spacing
    size = np.array([slab_cells, 8, slab_cells]) * spacing
    scene.add_body(ps.Box(center=(0.5, scene.floor + size[1] / 2, 0.5), size=tuple(size)),
                   ps.Elastic(E=2e4, nu=0.3, density=1000.0))  # the slab lies on the floor
    top = float(np.concatenate(scene._x)[:, 1].max())  # its top particle layer
    # the dome's apex 0.2 mm beyond the contact's reach (half a spacing) above it
    c = np.array([0.5, top + 0.5 * spacing + 0.2e-3 + DOME["outer_radius"], 0.5])
    mesh = ps.dome_gel(center=tuple(c), inner_radius=DOME["inner_radius"], outer_radius=DOME["outer_radius"],
                       layers=DOME["layers"], angle=DOME["angle"], rings=DOME["rings"], axis=(0.0, -1.0, 0.0))
    scene.add_tool(ps.SphereTool(position=tuple(c), radius=DOME["inner_radius"]))
    scene.add_fem(ps.FEMBody(mesh, E=5e4, nu=0.4, density=1000.0, alpha=50.0, mount=0))
    scene.build(max_steps=max_steps)
    return scene


def _time(fn, repeats: int) -> float:
    import taichi as ti

    fn()
    ti.sync()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    ti.sync()
    return (time.perf_counter() - t) / repeats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    import physim as ps

    ps.init(arch="cpu", precision="f32")
    steps = 10 if args.quick else 20
    cells = 24 if args.quick else 50  # 24^2 x 8 = 4.6k, 50^2 x 8 = 20k particles
    scene = build(ps, cells, steps)
    fem, cp = scene.partset.fem, scene.partset.coupler
    n_sub = steps * scene.substeps_per_step
    a = np.zeros((steps, scene.action_dim))
    a[:, 1] = -2e-3 / (n_sub * scene.dt)  # the core moves 2 mm down: the dome presses ~1.5 mm into reach
    rec = {"particles": scene.n_particles, "nodes": int(fem.rows[None]), "tets": int(fem.n_tets[None]),
           "faces": int(fem.n_faces[None]), "grid": GRID, "dt": scene.dt, "substeps": n_sub,
           "fem_subcycles": fem.subcycles}
    scene.forward(a, requires_grad=False)  # compile
    scene.reset()
    t = time.perf_counter()
    scene.forward(a, requires_grad=False)
    rec["forward_s"] = time.perf_counter() - t
    rec["substeps_per_s"] = n_sub / rec["forward_s"]
    st = scene.get_state()
    rec["gel_normal_force_N"] = float(st["fem.f_contact"][:, 1].sum())  # the slab pushes the gel up
    # contact kernels alone, at the final (pressed) state held in slot 0
    scene.set_state(st)
    l0 = 0
    n = fem.subcycles
    fem.copy_in(l0)
    rec["pairs"] = None
    t_search = _time(lambda: cp.build_face_pairs(l0), 10)
    rec["pairs"] = int(cp.n_fpairs[None])
    t_forces = _time(lambda: cp.face_forces(l0, 0, n), 10) * n
    rec["search_s_per_substep"] = t_search
    rec["pair_forces_s_per_substep"] = t_forces
    per_sub = rec["forward_s"] / n_sub
    rec["contact_share"] = (t_search + t_forces) / per_sub
    # forward + backward
    scene.reset()
    seed = {"fem.x": np.ones_like(st["fem.x"]), "mpm.x": np.ones_like(st["mpm.x"])}
    scene.forward(a)
    scene.backward(seed)  # compile the reverse kernels
    scene.reset()
    t = time.perf_counter()
    scene.forward(a)
    scene.backward(seed)
    rec["forward_backward_s"] = time.perf_counter() - t
    rec["gradient_cost"] = rec["forward_backward_s"] / rec["forward_s"]
    # search cost against the number of queries: the same gel, particles moved into its box
    x = scene.get_state()["mpm.x"]
    c = scene.get_state()["tools.pos"][0]
    lo, hi = c - DOME["outer_radius"], c + DOME["outer_radius"]
    rng = np.random.default_rng(0)
    sizes, times = [], []
    for frac in (0.25, 0.5, 0.75, 1.0):
        m = int(frac * len(x))
        y = x.copy()
        y[:m] = lo + (hi - lo) * rng.random((m, 3))  # m particles near the gel's surface box
        scene.set_state({**scene.get_state(), "mpm.x": y})
        sizes.append(m)
        times.append(_time(lambda: cp.build_face_pairs(0), 5))
    b, c0 = np.polyfit(sizes, times, 1)
    rec["search_scaling"] = {"queries": sizes, "seconds": times, "per_query_s": b, "fixed_s": c0,
                             "max_rel_residual": float(np.max(np.abs(np.polyval([b, c0], sizes) - times))
                                                       / max(times))}
    print(json.dumps(rec, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

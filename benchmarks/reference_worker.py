"""Time one of Taichi's own examples (``mpm88.py``, ``mpm3d.py``, ``mass_spring_3d_ggui.py``) headless.

The examples ship in the taichi wheel under ``taichi/examples/<directory>/`` (see
:data:`EXAMPLES`: directory, init and substep function of each). They are scripts, not
libraries: they call ``ti.init(arch=ti.gpu)`` (or ``ti.vulkan`` / ``ti.cuda``) at import,
size their fields from module-level constants, and open a GUI or a GGUI window
(``mpm88.py`` at module level, the others under ``if __name__ == "__main__"``). This
worker runs the installed file unmodified on disk, but before executing it in a fresh
namespace:

* ``ti.init`` is wrapped so the requested arch is used instead of the example's;
* the source is parsed with :mod:`ast` and every top-level statement that would
  run the demo rather than define it is dropped: ``while``/``for`` loops, ``if``
  blocks (the ``__main__`` guard), statements outside function definitions that
  mention ``GUI`` or ``ti.ui`` (GGUI's Window, Canvas, Scene, Camera), statements
  that use a name bound by a dropped statement (``canvas = window.get_canvas()``),
  and bare calls other than ``ti.init`` and the example's set-up calls listed in
  :data:`EXAMPLES` (``initialize_spring_offsets()``): its init kernel, which we call
  ourselves, and render-only set-up (``initialize_mesh_indices()``);
* constants given with ``--set NAME=VALUE`` replace the value assigned to that
  name at top level (also inside a tuple assignment such as
  ``dim, n_grid, steps, dt = 3, 32, 25, 4e-4``), before any field is allocated,
  so derived values (``n_particles = n_grid**dim // ...``, ``dx``) follow.

The dropped statements and the example's resulting constants are reported in the
output, so a reader can check what ran. Then the example's ``init()`` kernel
seeds particles, ``substep()`` is called for warm-up (compilation), and each
timed repeat re-runs ``init()`` (untimed) and ``substep()`` ``--substeps`` times.

Usage: ``python benchmarks/reference_worker.py mpm3d --arch cpu --substeps 500 --set n_grid=64 --set dt=2e-4``
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
from dataclasses import dataclass

from bench_util import peak_rss_bytes, time_runs, write_result


@dataclass(frozen=True)
class Example:
    """Where an example lives and what the benchmark calls.

    Attributes:
        directory: folder under ``taichi/examples``.
        init, substep: names of its initial-state and one-substep functions.
        keep_calls: top-level bare calls that set the example up and must run (other bare
            calls are dropped).
        reported: top-level constants copied into the record's ``config``.
        positions: candidate names of its position field (the first one defined is read).
        argv: ``sys.argv[1:]`` while the example's module level runs (``implicit_fem.py``
            parses its command line at import: ``--exp explicit``).
        setup: functions called once after loading, before the first ``init`` (what the
            example's ``main()`` calls first: ``get_vertices()`` builds its mesh).
        steps_per_call: simulation steps one ``substep()`` call takes (``implicit_fem.py``'s
            explicit mode: 10); ``--substeps`` counts steps and must be a multiple of it.
    """

    directory: str
    init: str
    substep: str
    keep_calls: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()
    positions: tuple[str, ...] = ("x", "F_x")
    argv: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    steps_per_call: int = 1


MPM_REPORTED = ("dim", "n_particles", "n_grid", "dt", "E", "gravity", "bound", "p_rho")
EXAMPLES = {
    "mpm88": Example("simulation", "init", "substep", reported=MPM_REPORTED),
    "mpm3d": Example("simulation", "init", "substep", reported=MPM_REPORTED),
    # a cloth: n x n unit masses, springs to every offset with |i| + |j| <= 2, a ball
    "mass_spring_3d_ggui": Example(
        "ggui_examples", "initialize_mass_points", "substep", keep_calls=("initialize_spring_offsets",),
        reported=("n", "quad_size", "dt", "spring_Y", "dashpot_damping", "drag_damping", "ball_radius",
                  "bending_springs")),
    # 3D tet FEM, fixed corotated with nu = 0 (lambda = 0), in its explicit mode: substep() is
    # 10 x (get_force(), advect()) then floor_bound(). Its argparse set-up is kept (dotted
    # keep_calls) so ``args.exp`` / ``args.dim`` exist; the mesh comes from get_vertices().
    "implicit_fem": Example(
        "simulation", "init", "substep", keep_calls=("parser.add_argument",),
        reported=("n_verts", "n_cells", "dt", "E", "nu", "density", "dx"), argv=("--exp", "explicit"),
        setup=("get_vertices",), steps_per_call=10),
}
#: the examples whose throughput is counted in particles (the rest: mass-spring nodes and springs)
MPM_EXAMPLES = ("mpm88", "mpm3d")
#: the tetrahedral FEM examples (throughput in nodes and tets; the mesh can be written out)
FEM_EXAMPLES = ("implicit_fem",)


def example_path(name: str) -> str:
    """Path of a Taichi example in the installed taichi package."""
    import taichi

    path = os.path.join(os.path.dirname(taichi.__file__), "examples", EXAMPLES[name].directory, f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: this taichi wheel does not ship the {name} example")
    return path


def _is_ti_init(call: ast.AST) -> bool:
    return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "init"
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "ti")


def _call_name(call: ast.AST) -> str | None:
    """``f`` for a call ``f(...)``, ``a.b`` for ``a.b(...)``; None for any other expression."""
    if not isinstance(call, ast.Call):
        return None
    parts, func = [], call.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    return ".".join([func.id, *reversed(parts)])


def _bound_names(node: ast.stmt) -> set[str]:
    """Names a top-level statement binds (assignment targets)."""
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _runs_demo(node: ast.stmt, keep_calls: tuple[str, ...] = (), dropped_names: frozenset[str] = frozenset()) -> bool:
    """True for a top-level statement that runs the interactive demo instead of defining it.

    ``keep_calls``: bare calls that set the example up (kept); ``dropped_names``: names bound
    by statements dropped before this one (a statement using one of them is dropped too)."""
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return False  # a definition runs nothing (mpm3d's main() opens the GUI only when called)
    if isinstance(node, (ast.While, ast.For, ast.If)):
        return True
    source = ast.unparse(node)
    if "GUI" in source or "ti.ui" in source:
        return True
    if any(isinstance(n, ast.Name) and n.id in dropped_names for n in ast.walk(node)):
        return True
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        return not (_is_ti_init(node.value) or _call_name(node.value) in keep_calls)
    return False


def filter_statements(tree: ast.Module, keep_calls: tuple[str, ...] = ()) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """Split an example's top-level statements into (kept, dropped); see :func:`_runs_demo`."""
    kept, dropped, names = [], [], set()
    for node in tree.body:
        if _runs_demo(node, keep_calls, frozenset(names)):
            dropped.append(node)
            names |= _bound_names(node)
        else:
            kept.append(node)
    return kept, dropped


def _value_node(value) -> ast.expr:
    """A number as a constant; an expression (``--set "n_cube=np.array([9] * 3)"``) as parsed."""
    if isinstance(value, str):
        return ast.parse(value, mode="eval").body
    return ast.Constant(value)


def _override(node: ast.stmt, values: dict[str, float | str], applied: set[str]) -> None:
    """Replace the values assigned to names in ``values`` by a top-level assignment."""
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
        return
    target = node.targets[0]
    if isinstance(target, ast.Name) and target.id in values:
        node.value = _value_node(values[target.id])
        applied.add(target.id)
    elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
        for i, elt in enumerate(target.elts):
            if isinstance(elt, ast.Name) and elt.id in values:
                node.value.elts[i] = _value_node(values[elt.id])
                applied.add(elt.id)


def load_example(name: str, arch: str, values: dict[str, float]) -> tuple[dict, list[str]]:
    """Execute the example's definitions with ``ti.init`` forced to ``arch``.

    Returns the example's namespace and the source of every dropped statement.
    """
    import taichi as ti

    path = example_path(name)
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    example = EXAMPLES[name]
    kept, dropped_nodes = filter_statements(tree, example.keep_calls)
    dropped = [ast.unparse(node).splitlines()[0] for node in dropped_nodes]
    applied = set()
    for node in kept:
        _override(node, values, applied)
    missing = set(values) - applied
    if missing:
        raise ValueError(f"{name}.py has no top-level assignment to {sorted(missing)}")
    module = ast.Module(body=kept, type_ignores=[])
    ast.fix_missing_locations(module)

    original_init = ti.init

    def forced_init(*args, **kwargs):
        kwargs["arch"] = getattr(ti, arch)
        kwargs.setdefault("log_level", ti.ERROR)
        return original_init(*args, **kwargs)

    namespace = {"__name__": f"taichi_example_{name}", "__file__": path}
    argv = sys.argv
    ti.init = forced_init
    sys.argv = [path, *example.argv]
    try:
        # dont_inherit: not this file's ``from __future__ import annotations``, which would turn
        # the example's kernel annotations (``ret: ti.template()``) into strings Taichi refuses
        exec(compile(module, path, "exec", dont_inherit=True), namespace)
    finally:
        ti.init = original_init
        sys.argv = argv
    for fn in (*example.setup, example.init, example.substep):
        if not callable(namespace.get(fn)):
            raise RuntimeError(f"{name}.py no longer defines {fn}(); the benchmark needs it")
    return namespace, dropped


def cloth_spring_count(n: int, offsets) -> int:
    """Springs of an n x n cloth whose nodes each visit every neighbour at ``offsets`` (the
    example's ``spring_offsets``: symmetric, so every spring is visited twice), counted once."""
    pairs = [tuple(int(c) for c in off) for off in offsets]
    if set(pairs) != {(-a, -b) for a, b in pairs}:
        raise ValueError(f"spring offsets {pairs} are not symmetric: springs would not be visited twice")
    visits = sum(max(0, n - abs(a)) * max(0, n - abs(b)) for a, b in pairs)
    return visits // 2


def _summary(x) -> dict[str, list[float]]:
    """Centroid and bounding box of an (..., 3) position array."""
    import numpy as np

    p = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    return {"mean": p.mean(0).tolist(), "min": p.min(0).tolist(), "max": p.max(0).tolist()}


def _parse_set(items: list[str]) -> dict[str, float | str]:
    """``NAME=VALUE`` pairs: an int, a float, or else a Python expression kept as text."""
    values = {}
    for item in items:
        key, _, text = item.partition("=")
        if text.lstrip("-").isdigit():
            values[key] = int(text)
        else:
            try:
                values[key] = float(text)
            except ValueError:
                values[key] = text
    return values


def _scalar(value):
    """A Python number for an int, a float or a numpy scalar; None for anything else."""
    if isinstance(value, (int, float)):
        return value
    if hasattr(value, "item") and getattr(value, "size", 0) == 1 and getattr(value, "ndim", 1) == 0:
        return value.item()
    return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", choices=sorted(EXAMPLES))
    parser.add_argument("--arch", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--substeps", type=int, default=500, help="substeps per timed repeat")
    parser.add_argument("--warmup", type=int, default=20, help="untimed substeps first (compilation)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a top-level constant of the example (e.g. n_grid=64)")
    parser.add_argument("--mesh-out", help="FEM examples: write the rest mesh (vertices, tets) and the initial "
                        "positions to this .npz file")
    parser.add_argument("--out", help="write the JSON record here (default: stdout)")
    args = parser.parse_args(argv)

    import taichi as ti

    example = EXAMPLES[args.example]
    ns, dropped = load_example(args.example, args.arch, _parse_set(args.set))
    init, substep = ns[example.init], ns[example.substep]
    if args.substeps % example.steps_per_call or args.warmup % example.steps_per_call:
        raise SystemExit(f"{args.example}: --substeps and --warmup must be multiples of {example.steps_per_call} "
                         f"(steps per substep() call)")
    calls, warmup_calls = args.substeps // example.steps_per_call, args.warmup // example.steps_per_call
    for fn in example.setup:
        ns[fn]()
    field = next(ns[k] for k in example.positions if k in ns)
    initial = {}

    def prepare():
        init()
        initial["x"] = field.to_numpy()  # the example's init may be random (the cloth's offset)

    def run():
        for _ in range(calls):
            substep()

    init()
    if args.mesh_out and args.example in FEM_EXAMPLES:
        import numpy as np

        np.savez(args.mesh_out, vertices=ns["F_ox"].to_numpy(), tets=ns["F_vertices"].to_numpy(),
                 x=field.to_numpy())
    for _ in range(warmup_calls):
        substep()
    timing = time_runs(run, prepare=prepare, sync=ti.sync, repeats=args.repeats)
    x = field.to_numpy()
    if not (abs(x).max() < 1e30):
        raise RuntimeError(f"{args.example} produced non-finite positions")
    config = {k: _scalar(ns[k]) for k in example.reported if k in ns and _scalar(ns[k]) is not None}
    if args.example in MPM_EXAMPLES:
        config.setdefault("dim", 2)
        rates = {"particle_steps_per_s": config["n_particles"] * args.substeps / timing["seconds"]}
    elif args.example in FEM_EXAMPLES:
        config.update(nodes=int(ns["F_x"].shape[0]), tets=int(ns["F_vertices"].shape[0]),
                      steps_per_call=example.steps_per_call)
        rates = {"node_steps_per_s": config["nodes"] * args.substeps / timing["seconds"],
                 "tet_steps_per_s": config["tets"] * args.substeps / timing["seconds"],
                 "initial_summary": _summary(initial["x"]), "final_summary": _summary(x)}
    else:
        # the last timed repeat's initial and final state, so physim can start where it
        # started and run.py can compare where both end
        nodes = config["n"] ** 2
        springs = cloth_spring_count(config["n"], ns["spring_offsets"])
        config.update(nodes=nodes, springs=springs)
        rates = {"node_steps_per_s": nodes * args.substeps / timing["seconds"],
                 "spring_steps_per_s": springs * args.substeps / timing["seconds"],
                 "first_node": initial["x"].reshape(-1, 3)[0].tolist(),
                 "initial_summary": _summary(initial["x"]), "final_summary": _summary(x)}
    record = {
        "example": args.example,
        "path": example_path(args.example),
        "taichi_version": ".".join(map(str, ti.__version__)),
        "arch": args.arch,
        "config": config,
        "dropped_statements": dropped,
        "substeps": args.substeps,
        "repeats": args.repeats,
        **timing,
        **rates,
        "peak_memory_bytes": peak_rss_bytes(),
    }
    write_result(args.out, record)


if __name__ == "__main__":
    sys.exit(main())

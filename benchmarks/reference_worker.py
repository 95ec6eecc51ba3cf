"""Time one of Taichi's own MPM examples (``mpm88.py`` / ``mpm3d.py``) headless.

The examples ship in the taichi wheel under ``taichi/examples/simulation/``. They
are scripts, not libraries: they call ``ti.init(arch=ti.gpu)`` at import, size
their fields from module-level constants, and open a GUI (``mpm88.py`` at module
level, ``mpm3d.py`` under ``if __name__ == "__main__"``). This worker runs the
installed file unmodified on disk, but before executing it in a fresh namespace:

* ``ti.init`` is wrapped so the requested arch is used instead of ``ti.gpu``;
* the source is parsed with :mod:`ast` and every top-level statement that would
  run the demo rather than define it is dropped: ``while``/``for`` loops, ``if``
  blocks (the ``__main__`` guard), statements outside function definitions that
  mention ``GUI``, and bare calls other than ``ti.init`` (the example's own
  ``init()``, which we call ourselves);
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

from bench_util import peak_rss_bytes, time_runs, write_result

EXAMPLES = ("mpm88", "mpm3d")
REPORTED = ("dim", "n_particles", "n_grid", "dt", "E", "gravity", "bound", "p_rho")


def example_path(name: str) -> str:
    """Path of a Taichi example in the installed taichi package."""
    import taichi

    path = os.path.join(os.path.dirname(taichi.__file__), "examples", "simulation", f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: this taichi wheel does not ship the {name} example")
    return path


def _is_ti_init(call: ast.AST) -> bool:
    return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "init"
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "ti")


def _runs_demo(node: ast.stmt) -> bool:
    """True for a top-level statement that runs the interactive demo instead of defining it."""
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return False  # a definition runs nothing (mpm3d's main() opens the GUI only when called)
    if isinstance(node, (ast.While, ast.For, ast.If)):
        return True
    if "GUI" in ast.unparse(node):
        return True
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and not _is_ti_init(node.value)


def _override(node: ast.stmt, values: dict[str, float], applied: set[str]) -> None:
    """Replace the values assigned to names in ``values`` by a top-level assignment."""
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
        return
    target = node.targets[0]
    if isinstance(target, ast.Name) and target.id in values:
        node.value = ast.Constant(values[target.id])
        applied.add(target.id)
    elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
        for i, elt in enumerate(target.elts):
            if isinstance(elt, ast.Name) and elt.id in values:
                node.value.elts[i] = ast.Constant(values[elt.id])
                applied.add(elt.id)


def load_example(name: str, arch: str, values: dict[str, float]) -> tuple[dict, list[str]]:
    """Execute the example's definitions with ``ti.init`` forced to ``arch``.

    Returns the example's namespace and the source of every dropped statement.
    """
    import taichi as ti

    path = example_path(name)
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    kept, dropped, applied = [], [], set()
    for node in tree.body:
        if _runs_demo(node):
            dropped.append(ast.unparse(node).splitlines()[0])
            continue
        _override(node, values, applied)
        kept.append(node)
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
    ti.init = forced_init
    try:
        exec(compile(module, path, "exec"), namespace)
    finally:
        ti.init = original_init
    for fn in ("init", "substep"):
        if not callable(namespace.get(fn)):
            raise RuntimeError(f"{name}.py no longer defines {fn}(); the benchmark needs it")
    return namespace, dropped


def _parse_set(items: list[str]) -> dict[str, float]:
    values = {}
    for item in items:
        key, _, text = item.partition("=")
        values[key] = int(text) if text.lstrip("-").isdigit() else float(text)
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("example", choices=EXAMPLES)
    parser.add_argument("--arch", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--substeps", type=int, default=500, help="substeps per timed repeat")
    parser.add_argument("--warmup", type=int, default=20, help="untimed substeps first (compilation)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a top-level constant of the example (e.g. n_grid=64)")
    parser.add_argument("--out", help="write the JSON record here (default: stdout)")
    args = parser.parse_args(argv)

    import taichi as ti

    ns, dropped = load_example(args.example, args.arch, _parse_set(args.set))
    init, substep = ns["init"], ns["substep"]

    def run():
        for _ in range(args.substeps):
            substep()

    init()
    for _ in range(args.warmup):
        substep()
    timing = time_runs(run, prepare=init, sync=ti.sync, repeats=args.repeats)
    x = next(ns[k] for k in ("x", "F_x") if k in ns).to_numpy()
    if not (abs(x).max() < 1e30):
        raise RuntimeError(f"{args.example} produced non-finite positions")
    config = {k: ns[k] for k in REPORTED if k in ns and isinstance(ns[k], (int, float))}
    config.setdefault("dim", 2)
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
        "particle_steps_per_s": config["n_particles"] * args.substeps / timing["seconds"],
        "peak_memory_bytes": peak_rss_bytes(),
    }
    write_result(args.out, record)


if __name__ == "__main__":
    sys.exit(main())

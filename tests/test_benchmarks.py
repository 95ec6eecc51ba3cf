"""Pure helpers of the benchmark workers: which top-level statements of Taichi's examples run
headless, and the mass-spring cloth's springs (no Taichi kernels run here)."""

import ast
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import physim_worker  # noqa: E402
import reference_worker  # noqa: E402

#: the shape of mass_spring_3d_ggui.py with its GGUI set-up and loop at top level
GGUI_SCRIPT = '''
import taichi as ti
arch = ti.vulkan if ti._lib.core.with_vulkan() else ti.cuda
ti.init(arch=arch)
n = 128
dt = 4e-2 / n
spring_offsets = []
def initialize_spring_offsets():
    spring_offsets.append(1)
initialize_spring_offsets()
initialize_mesh_indices()
window = ti.ui.Window("Cloth", (768, 768), vsync=True)
canvas = window.get_canvas()
scene = ti.ui.Scene()
camera = ti.ui.Camera()
camera_target = camera
initialize_mass_points()
while window.running:
    substep()
'''


def _split(source, keep_calls=()):
    kept, dropped = reference_worker.filter_statements(ast.parse(source), keep_calls)
    return [ast.unparse(s).splitlines()[0] for s in kept], [ast.unparse(s).splitlines()[0] for s in dropped]


def test_ggui_statements_are_dropped_and_set_up_kept():
    kept, dropped = _split(GGUI_SCRIPT, keep_calls=("initialize_spring_offsets",))
    assert kept == ["import taichi as ti", "arch = ti.vulkan if ti._lib.core.with_vulkan() else ti.cuda",
                    "ti.init(arch=arch)", "n = 128", "dt = 0.04 / n", "spring_offsets = []",
                    "def initialize_spring_offsets():", "initialize_spring_offsets()"]
    # ti.ui objects, what uses them (canvas, camera_target), bare calls, the loop
    assert dropped == ["initialize_mesh_indices()", "window = ti.ui.Window('Cloth', (768, 768), vsync=True)",
                       "canvas = window.get_canvas()", "scene = ti.ui.Scene()", "camera = ti.ui.Camera()",
                       "camera_target = camera", "initialize_mass_points()", "while window.running:"]


def test_mpm88_gui_statements_still_dropped():
    src = ("import taichi as ti\nti.init(arch=ti.gpu)\nn = 8\ninit()\ngui = ti.GUI('MPM88')\n"
           "while gui.running:\n    pass\n")
    kept, dropped = _split(src)
    assert kept == ["import taichi as ti", "ti.init(arch=ti.gpu)", "n = 8"]
    assert dropped == ["init()", "gui = ti.GUI('MPM88')", "while gui.running:"]


def test_installed_examples_filter_as_documented():
    pytest.importorskip("taichi")
    try:
        path = reference_worker.example_path("mass_spring_3d_ggui")
    except FileNotFoundError:
        pytest.skip("this taichi wheel does not ship mass_spring_3d_ggui.py")
    with open(path) as f:
        kept, dropped = _split(f.read(), reference_worker.EXAMPLES["mass_spring_3d_ggui"].keep_calls)
    assert "initialize_spring_offsets()" in kept and "ti.init(arch=arch)" in kept
    assert not any("ti.ui" in s or s.startswith(("while", "if")) for s in kept)
    assert "initialize_mass_points()" not in kept


@pytest.mark.parametrize("n", [3, 4, 32])
def test_cloth_springs_match_the_example_offsets(n):
    offsets = [(i, j) for i in range(-2, 3) for j in range(-2, 3) if (i, j) != (0, 0) and abs(i) + abs(j) <= 2]
    pairs, lengths = physim_worker.cloth_springs(n)
    # every spring once: 2 n (n - 1) axis, 2 (n - 1)^2 diagonal, 2 n (n - 2) two-apart
    assert len(pairs) == 2 * n * (n - 1) + 2 * (n - 1) ** 2 + 2 * n * (n - 2)
    assert len(pairs) == reference_worker.cloth_spring_count(n, offsets)
    unordered = {tuple(sorted(p)) for p in pairs.tolist()}
    assert len(unordered) == len(pairs)
    # the same set as the example's neighbour visits, halved
    visits = {tuple(sorted((i * n + j, (i + a) * n + j + b))) for i in range(n) for j in range(n)
              for a, b in offsets if 0 <= i + a < n and 0 <= j + b < n}
    assert unordered == visits
    (i0, j0), (i1, j1) = np.divmod(pairs[:, 0], n), np.divmod(pairs[:, 1], n)
    assert np.allclose(lengths, np.hypot(i1 - i0, j1 - j0))


def test_cloth_spring_count_refuses_asymmetric_offsets():
    with pytest.raises(ValueError, match="not symmetric"):
        reference_worker.cloth_spring_count(8, [(1, 0)])


# ------------------------------------------------------------------ FEM cases
def test_dotted_keep_calls_and_expression_overrides():
    """implicit_fem.py's shape: argparse set-up kept through a dotted keep_call, ``if`` blocks
    dropped, and ``--set n_cube=np.array([3] * 3)`` replacing an expression."""
    src = ("import argparse\nimport numpy as np\nparser = argparse.ArgumentParser()\n"
           "parser.add_argument('--exp', default='implicit')\nargs = parser.parse_args()\n"
           "dt = 2e-4\nif args.exp == 'implicit':\n    dt = 1e-2\nn_cube = np.array([5] * 3)\nprint(n_cube)\n")
    kept, dropped = _split(src, keep_calls=("parser.add_argument",))
    assert "parser.add_argument('--exp', default='implicit')" in kept and "args = parser.parse_args()" in kept
    assert dropped == ["if args.exp == 'implicit':", "print(n_cube)"]
    values = reference_worker._parse_set(["n_cube=np.array([3] * 3)", "dt=1e-4", "n=7"])
    assert values == {"n_cube": "np.array([3] * 3)", "dt": 1e-4, "n": 7}
    tree = ast.parse(src)
    applied = set()
    for node in tree.body:
        reference_worker._override(node, values, applied)
    assert applied == {"n_cube", "dt"}
    assert "n_cube = np.array([3] * 3)" in ast.unparse(tree) and "dt = 0.0001" in ast.unparse(tree)


def test_oriented_tets_makes_every_volume_positive():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], float)
    tets = np.array([[0, 1, 2, 3], [0, 2, 1, 3], [1, 2, 3, 4]])
    out = physim_worker.oriented_tets(v, tets)
    x = v[out]
    vol = np.einsum("ij,ij->i", np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), x[:, 3] - x[:, 0])
    assert (vol > 0).all() and (np.sort(out, 1) == np.sort(tets, 1)).all()


#: the smallest dome gel: 1 layer, 3 rings
TINY_DOME = {"center": [0.5, 0.3, 0.5], "inner_radius": 0.01, "outer_radius": 0.015, "layers": 1, "angle": 60.0,
             "rings": 3}


def test_fem_cases_run_at_tiny_size():
    """The FEM cases end to end in their worker processes (run.run_case), tiny: implicit_fem.py's
    cube with 3^3 nodes (40 tets) and physim on the same mesh, 20 steps; the dome gel with one
    layer, 20 substeps, forward only (compiling the FEM part's reverse kernels takes over a
    minute on 2 cores with a cold cache; the benchmark's own runs cover forward + backward)."""
    pytest.importorskip("taichi")
    try:
        reference_worker.example_path("implicit_fem")
    except FileNotFoundError:
        pytest.skip("this taichi wheel does not ship implicit_fem.py")
    import run

    box = run.run_case(run._fem_box_case("tiny_box", 3, 20, 1), "cpu", timeout=300)
    assert "error" not in box, box.get("error")
    assert (box["nodes"], box["tets"], box["fem_subcycles"]) == (27, 40, 1)
    assert box["reference_config"]["tets"] == 40 and box["ratio_vs_reference"] > 0
    assert box["final_state_difference"] < 1e-4  # 20 steps of free fall: the same motion
    case = run._fem_dome_case("tiny_dome", TINY_DOME, 20, 1)
    case.physim["mode"] = "forward"
    dome = run.run_case(case, "cpu", timeout=300)
    assert "error" not in dome, dome["error"]
    assert dome["tet_steps_per_s"] > 0 and dome["fem_steps"] == 20 * dome["fem_subcycles"]
    targets = [t["target"] for t in run.evaluate_targets([box, {**dome, "fwd_bwd_over_fwd": 2.0}])]
    assert any(t.startswith("FEM forward throughput") for t in targets)
    assert any(t.startswith("FEM forward + backward") for t in targets)
    assert "tiny_box" in run.format_tables([box, dome])


def test_shell_benchmark_memory_helpers():
    import shells

    # 1 MB over 1k vertices and 4 MB over 4k: linear, ratio 1; 16 MB over 4k would be O(n^2)
    lin = [{"vertices": 1000, "memory_above_import_bytes": 1e6}, {"vertices": 4000, "memory_above_import_bytes": 4e6}]
    quad = [lin[0], {"vertices": 4000, "memory_above_import_bytes": 16e6}]
    assert shells.memory_growth(lin) == pytest.approx(1.0)
    assert shells.memory_growth(quad) == pytest.approx(4.0)
    assert shells.per_vertex(3e6, 1000) == pytest.approx(3000.0)
    with pytest.raises(ValueError, match="vertices must be positive, got 0"):
        shells.per_vertex(1.0, 0)
    with pytest.raises(ValueError, match="need >= 2 records"):
        shells.memory_growth(lin[:1])
    # the cloth's underside (centre minus half the thickness) starts `drop` above the sphere
    assert shells.cloth_start_height(0.4, 0.02, 1e-3) - 0.5e-3 == pytest.approx(0.42)
    with pytest.raises(ValueError, match="drop=-0.1"):
        shells.cloth_start_height(0.4, -0.1, 1e-3)

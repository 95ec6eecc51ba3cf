"""Thin-shell meshes, materials and bodies (physim.shells) and their rendering: topology counts against
closed-form formulas, hinge orientation, areas, file round trips, every validation error, preset
stiffnesses against hand calculations, and sheets drawn where they are in their body's color."""

import colorsys
import math

import numpy as np
import pytest

import physim as ps
from physim import ShellBody, ShellMaterial, ShellMesh

PATTERNS = ("alternating", "right", "left", "cross")


def _cyclic(tri) -> tuple:
    """A triangle's vertex triple rotated so the smallest index leads (same orientation)."""
    k = int(np.argmin(tri))
    return tuple(int(tri[(k + j) % 3]) for j in range(3))


def _triangle_set(mesh: ShellMesh) -> set:
    return {_cyclic(t) for t in mesh.triangles}


# ---------------------------------------------------------------------------------------------- topology
@pytest.mark.parametrize("res", [(2, 2), (4, 5), (7, 3)])
def test_rectangle_counts_match_the_grid_formulas(res):
    """A grid of nx x ny vertices split into 2 triangles per cell has (nx-1)ny + nx(ny-1) + (nx-1)(ny-1) edges
    (horizontal, vertical, one diagonal per cell), 2(nx-1) + 2(ny-1) of them on the boundary; the "cross"
    pattern adds a centre vertex and 4 spokes per cell. Euler: V - E + F = 1 for a disk."""
    nx, ny = res
    cells = (nx - 1) * (ny - 1)
    boundary = 2 * (nx - 1) + 2 * (ny - 1)
    for pattern in PATTERNS:
        m = ShellMesh.rectangle(size=(0.3, 0.2), res=res, pattern=pattern)
        cross = pattern == "cross"
        V = nx * ny + (cells if cross else 0)
        F = (4 if cross else 2) * cells
        E = (nx - 1) * ny + nx * (ny - 1) + (4 if cross else 1) * cells
        assert (m.n_vertices, m.n_triangles, len(m.edges())) == (V, F, E), pattern
        assert len(m.boundary_edges()) == boundary
        assert len(m.hinges()) == E - boundary
        assert V - E + F == 1
    # the alternating pattern's interior edges, counted directly: horizontal + vertical + diagonals
    m = ShellMesh.rectangle(res=res)
    assert len(m.hinges()) == (nx - 1) * (ny - 2) + (nx - 2) * (ny - 1) + cells


def test_edges_are_unique_sorted_rows_and_hinges_follow_them():
    m = ShellMesh.rectangle(res=(5, 4), pattern="cross")
    e = m.edges()
    assert e.dtype == np.int32 and (e[:, 0] < e[:, 1]).all()
    assert (np.lexsort((e[:, 1], e[:, 0])) == np.arange(len(e))).all()
    assert len({tuple(r) for r in e.tolist()}) == len(e)
    h = m.hinges()
    interior = {tuple(sorted(r)) for r in h[:, :2].tolist()}
    boundary = {tuple(sorted(r)) for r in m.boundary_edges().tolist()}
    assert interior | boundary == {tuple(r) for r in e.tolist()} and not interior & boundary
    assert (h[:, 0] < h[:, 1]).all()
    hinge_edges = h[:, :2]
    assert (np.lexsort((hinge_edges[:, 1], hinge_edges[:, 0])) == np.arange(len(h))).all()


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("normal", ["x", "y", "z"])
def test_hinges_are_oriented_with_opposite_vertices_on_the_correct_side(pattern, normal):
    """[e0, e1, a, b]: (e0, e1, a) and (e1, e0, b) are triangles in their stored (counter-clockwise) order, so in
    the flat sheet a lies left of the edge e0 -> e1 seen from the normal side and b right of it."""
    m = ShellMesh.rectangle(center=(0.1, -0.2, 0.3), size=(0.4, 0.3), res=(5, 4), pattern=pattern, normal=normal)
    n = np.zeros(3)
    n["xyz".index(normal)] = 1.0
    assert np.allclose(m.normals(), n)  # every triangle faces +normal
    tris = _triangle_set(m)
    x = m.vertices
    for e0, e1, a, b in m.hinges():
        assert _cyclic((e0, e1, a)) in tris and _cyclic((e1, e0, b)) in tris
        assert np.cross(x[e1] - x[e0], x[a] - x[e0]) @ n > 0
        assert np.cross(x[e1] - x[e0], x[b] - x[e0]) @ n < 0
    # boundary edges run counter-clockwise too: the surface (the remaining vertex) on their left
    for i, j in m.boundary_edges():
        (tri,) = [t for t in tris if {i, j} <= set(t)]
        k = (set(tri) - {i, j}).pop()
        assert _cyclic((i, j, k)) in tris and np.cross(x[j] - x[i], x[k] - x[i]) @ n > 0


def test_hinges_of_a_closed_convex_surface_have_the_other_vertex_behind_each_face():
    """On an outward-oriented convex polyhedron every edge is a hinge, and b (the other triangle's vertex)
    lies behind the plane of (e0, e1, a) while a lies behind the plane of (e1, e0, b)."""
    trimesh = pytest.importorskip("trimesh")
    ico = trimesh.creation.icosphere(subdivisions=1, radius=0.1)
    m = ShellMesh(ico.vertices, ico.faces)
    h = m.hinges()
    assert len(h) == len(m.edges()) == 3 * m.n_triangles // 2 and len(m.boundary_edges()) == 0
    x = m.vertices
    for e0, e1, a, b in h:
        na = np.cross(x[e1] - x[e0], x[a] - x[e0])
        nb = np.cross(x[e0] - x[e1], x[b] - x[e1])
        assert na @ x[e0] > 0 and nb @ x[e0] > 0  # outward (the centre is the origin)
        assert na @ (x[b] - x[e0]) < 0 and nb @ (x[a] - x[e0]) < 0


# ---------------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_areas_sum_to_the_rectangle_and_split_each_cell_equally(pattern):
    Lx, Ly, nx, ny = 0.5, 0.3, 6, 4
    m = ShellMesh.rectangle(center=(1.0, 2.0, 3.0), size=(Lx, Ly), res=(nx, ny), pattern=pattern)
    a = m.areas()
    assert a.sum() == pytest.approx(Lx * Ly, rel=1e-12)
    cell = Lx / (nx - 1) * Ly / (ny - 1)
    assert np.allclose(a, cell / (4 if pattern == "cross" else 2), rtol=1e-12)
    assert np.allclose(m.vertices.min(axis=0), [1.0 - Lx / 2, 2.0 - Ly / 2, 3.0])
    assert np.allclose(m.vertices.max(axis=0), [1.0 + Lx / 2, 2.0 + Ly / 2, 3.0])


def test_patterns_choose_their_diagonals():
    """"right": every cell's diagonal runs low-low to high-high (dx dy > 0), "left" the other way,
    "alternating" both, in a checkerboard (no preferred direction)."""
    def diagonal_signs(pattern):
        m = ShellMesh.rectangle(size=(1.0, 1.0), res=(5, 5), pattern=pattern)
        d = m.vertices[m.edges()[:, 1]] - m.vertices[m.edges()[:, 0]]
        diag = (np.abs(d[:, 0]) > 1e-9) & (np.abs(d[:, 1]) > 1e-9)
        return np.sign(d[diag, 0] * d[diag, 1])
    assert (diagonal_signs("right") > 0).all() and len(diagonal_signs("right")) == 16
    assert (diagonal_signs("left") < 0).all() and len(diagonal_signs("left")) == 16
    alt = diagonal_signs("alternating")
    assert len(alt) == 16 and (alt > 0).sum() == 8
    assert len(diagonal_signs("cross")) == 64  # the spokes: 4 per cell, none along the grid lines


def test_strip_starts_at_start_and_keeps_cells_near_square():
    s = ShellMesh.strip(start=(0.1, 0.5, 0.2), length=0.2, width=0.04, n=21)
    assert np.allclose(s.vertices.min(axis=0), [0.1, 0.48, 0.2]) and np.allclose(s.vertices.max(axis=0),
                                                                                  [0.3, 0.52, 0.2])
    assert s.n_vertices == 21 * 5  # 4 cells of 1 cm across, as along
    assert np.allclose(s.normals(), [0, 0, 1])
    v = ShellMesh.strip(start=(0.0, 0.5, 0.5), length=0.1, width=0.01, n=11, n_width=3, normal="y")
    assert v.n_vertices == 33 and np.allclose(v.normals(), [0, 1, 0])
    assert np.ptp(v.vertices[:, 2]) == pytest.approx(0.01)


def test_vertex_selection():
    m = ShellMesh.rectangle(size=(1.0, 1.0), res=(3, 3))
    assert m.vertices_near((0.5, 0.5, 0.0), 1e-6).tolist() == [8]
    assert sorted(m.vertices_near((0.0, 0.0, 0.0), 0.51).tolist()) == [1, 3, 4, 5, 7]
    left = m.vertices_where(lambda x: x[:, 0] < -0.4)
    assert left.dtype == np.int32 and left.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="radius"):
        m.vertices_near((0, 0, 0), -1.0)
    with pytest.raises(ValueError, match="point"):
        m.vertices_near((0, 0), 1.0)
    with pytest.raises(ValueError, match=r"boolean array of shape \(9,\)"):
        m.vertices_where(lambda x: x[:, 0])
    with pytest.raises(TypeError, match="callable"):
        m.vertices_where([0, 1])


# ---------------------------------------------------------------------------------------------- files
@pytest.mark.parametrize("ext", ["obj", "ply"])
def test_write_and_read_back(tmp_path, ext):
    m = ShellMesh.rectangle(center=(0.1, 0.2, 0.3), size=(0.3, 0.2), res=(5, 4), pattern="cross", normal="x")
    path = tmp_path / f"sheet.{ext}"
    m.write(path)
    r = ShellMesh.from_file(path)
    assert np.allclose(r.vertices, m.vertices, atol=1e-6) and (r.triangles == m.triangles).all()
    assert (r.hinges() == m.hinges()).all()


def test_from_file_keeps_triangles_only_and_drops_their_unused_vertices(tmp_path):
    mixed = tmp_path / "mixed.obj"
    mixed.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 5 5 5\nv 6 5 5\nv 6 6 5\nv 5 6 5\n"
                     "f 5 6 7 8\nf 1 2 3\nf 1 3 4\n")
    m = ShellMesh.from_file(mixed)
    assert m.n_vertices == 4 and m.n_triangles == 2 and m.areas().sum() == pytest.approx(1.0)
    lines = tmp_path / "lines.obj"
    lines.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nl 1 2\nl 2 3\n")
    with pytest.raises(ValueError, match="lines.obj.*no triangles"):
        ShellMesh.from_file(lines)
    with pytest.raises(ValueError, match="no such file"):
        ShellMesh.from_file(tmp_path / "missing.obj")


def test_from_file_reads_trimesh_formats(tmp_path):
    """A .glb (which meshio does not read) comes in through trimesh: a closed icosphere, every edge a hinge."""
    trimesh = pytest.importorskip("trimesh")
    trimesh.creation.icosphere(subdivisions=1).export(tmp_path / "ball.glb")
    m = ShellMesh.from_file(tmp_path / "ball.glb")
    assert (m.n_vertices, m.n_triangles, len(m.hinges())) == (42, 80, 120)


# ---------------------------------------------------------------------------------------------- validation
SQUARE = np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])


@pytest.mark.parametrize("vertices, triangles, match", [
    (np.array([[0.0, 0, 0], [1, 0, 0], [0, np.nan, 0]]), [[0, 1, 2]], r"finite.*vertex 2"),
    (SQUARE[:, :2], [[0, 1, 2]], r"shape \(n, 3\)"),
    (SQUARE, [[0, 1, 2], [0, 2, 4]], r"triangle 1 \[0, 2, 4\] indexes a vertex outside 0\.\.3"),
    (SQUARE, [[0, 1, 2], [0, 2, -1]], r"triangle 1 .*outside"),
    (SQUARE, [[0, 1, 2], [0, 2, 2]], r"triangle 1 \[0, 2, 2\] repeats a vertex"),
    (SQUARE, [[0.0, 1.5, 2.0]], r"integer vertex indices"),
    (SQUARE, [[0, 1]], r"\(m, 3\)"),
    # collinear: vertex 3 on the segment 0-1
    (np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0.5, 0, 0]]), [[0, 1, 2], [0, 3, 1]],
     r"triangle 1 \[0, 3, 1\] has \(near-\)zero area 0 m\^2"),
    # near-zero: a 1e-7 m high sliver on a 1 m edge
    (np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0.5, -1e-7, 0]]), [[0, 1, 2], [0, 3, 1]],
     r"triangle 1 \[0, 3, 1\] has \(near-\)zero area 5e-08 m\^2"),
    # three triangles on edge 0-1
    (np.array([[0.0, 0, 0], [1, 0, 0], [0.5, 1, 0], [0.5, -1, 0], [0.5, 0, 1]]), [[0, 1, 2], [1, 0, 3], [0, 1, 4]],
     r"edge \[0, 1\] is non-manifold: shared by 3 triangles \[0, 1, 2\]"),
    (SQUARE, [[0, 1, 2], [0, 3, 2]],
     r"inconsistent orientation across edge \[2, 0\]: triangles \[0, 1\] both run it as 2->0"),
    (np.vstack([SQUARE, [[2.0, 2, 2]]]), [[0, 1, 2], [0, 2, 3]], r"vertex 4 \[2\.0, 2\.0, 2\.0\] is used by no"),
])
def test_bad_meshes_are_rejected_naming_the_element(vertices, triangles, match):
    with pytest.raises(ValueError, match=match):
        ShellMesh(vertices, triangles)


def test_mesh_arrays_are_read_only_copies():
    v = SQUARE.copy()
    m = ShellMesh(v, [[0, 1, 2], [0, 2, 3]])
    v[0] = 9.0
    assert (m.vertices[0] == 0).all() and m.triangles.dtype == np.int32 and m.vertices.dtype == np.float64
    with pytest.raises(ValueError):
        m.vertices[0, 0] = 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(pattern="diagonal"), "pattern must be one of"),
    (dict(normal="w"), "normal must be one of"),
    (dict(res=(1, 4)), "res must be 2 integers >= 2"),
    (dict(res=(2.5, 4)), "res must be 2 integers >= 2"),
    (dict(size=(0.1, -0.1)), "size must be 2 positive lengths"),
    (dict(center=(0, 0)), "center must be 3 finite numbers"),
])
def test_bad_rectangle_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShellMesh.rectangle(**kwargs)


def test_bad_strip_arguments():
    with pytest.raises(ValueError, match="length must be a positive length"):
        ShellMesh.strip(length=0.0)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        ShellMesh.strip(n=1)
    with pytest.raises(ValueError, match="normal must be 'z' or 'y'"):
        ShellMesh.strip(normal="x")


# ---------------------------------------------------------------------------------------------- materials
def test_presets_derived_stiffnesses_match_hand_calculations():
    # paper, 80 g/m^2: E t = 4e9 * 1e-4; D = E t^3 / (12 (1 - nu^2)) = 4e9 * 1e-12 / (12 * 0.91)
    paper = ShellMaterial.paper()
    assert paper.membrane_stiffness() == pytest.approx(4.0e5, rel=1e-12)
    assert paper.bending_stiffness() == pytest.approx(3.663004e-4, rel=1e-6)
    assert paper.areal_density() == pytest.approx(0.080, rel=1e-12)  # 80 g/m^2
    # card, 300 g/m^2: D = 3.5e9 * (3.5e-4)^3 / 10.92 = 1.374199e-2 N m
    card = ShellMaterial.card()
    assert card.bending_stiffness() == pytest.approx(1.374199e-2, rel=1e-6)
    assert card.areal_density() == pytest.approx(0.300, rel=1e-12)
    # rubber: D = 1.5e6 * 1e-9 / (12 * (1 - 0.49^2)) = 1.644953e-4 N m; E t = 1500 N/m
    rubber = ShellMaterial.rubber_sheet()
    assert rubber.bending_stiffness() == pytest.approx(1.644953e-4, rel=1e-6)
    assert rubber.membrane_stiffness() == pytest.approx(1500.0)
    # cloth: the measured (KES-F order) D, far below the plate value 2e7 * 1.25e-10 / 10.92 = 2.289e-4
    cloth = ShellMaterial.cloth()
    assert cloth.bending_stiffness() == 5e-6 and 1e-6 <= cloth.bending_stiffness() <= 1e-5
    plate = ShellMaterial.cloth(bending=None).bending_stiffness()
    assert plate == pytest.approx(2.289377e-4, rel=1e-6) and plate > 40 * cloth.bending_stiffness()
    assert cloth.membrane_stiffness() == pytest.approx(1e4)
    # bending stiffness spans orders of magnitude across the presets (what the solver must handle)
    assert card.bending_stiffness() / cloth.bending_stiffness() > 1e3
    # creases: paper and card yield, cloth and rubber are elastic
    assert paper.plastic and card.plastic and not cloth.plastic and not rubber.plastic
    assert math.isinf(cloth.yield_angle) and math.isinf(rubber.yield_angle)


def test_preset_overrides_and_plate_scaling():
    thick = ShellMaterial.paper(thickness=2e-4)
    assert thick.bending_stiffness() == pytest.approx(8 * ShellMaterial.paper().bending_stiffness(), rel=1e-12)
    assert thick.membrane_stiffness() == pytest.approx(2 * ShellMaterial.paper().membrane_stiffness(), rel=1e-12)
    stiff = ShellMaterial.cloth(bending=2e-5)
    assert stiff.bending_stiffness() == 2e-5 and stiff.E == ShellMaterial.cloth().E
    assert ShellMaterial.paper().replace(yield_angle=45.0).yield_angle == 45.0
    with pytest.raises(AttributeError):
        ShellMaterial.paper().E = 1.0  # frozen: a material is a value


@pytest.mark.parametrize("field, value", [
    ("E", 0.0), ("E", -1e6), ("E", math.nan), ("E", True), ("nu", 0.5), ("nu", True), ("nu", -1.0),
    ("thickness", 0.0), ("density", -1.0),
    ("bending", 0.0), ("bending", -1e-5), ("yield_angle", 0.0), ("yield_angle", -10.0), ("yield_angle", math.nan),
    ("hardening", -0.1), ("damping", -1.0), ("damping", math.inf),
])
def test_bad_material_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"ShellMaterial\.{field} must .*got {value!r}"):
        ShellMaterial.paper(**{field: value})


# ---------------------------------------------------------------------------------------------- bodies
def test_body_normalizes_and_counts():
    m = ShellMesh.rectangle(size=(0.2, 0.1), res=(5, 3))
    b = ShellBody(m, ShellMaterial.paper(), pinned=m.vertices_where(lambda x: x[:, 0] < -0.09),
                  attach={1: [12, 13, 14]}, velocity=[0, 0, -1])
    assert b.pinned.tolist() == [0, 1, 2] and b.attach[1].dtype == np.int32
    assert (b.n_vertices, b.n_triangles, b.n_hinges) == (15, 16, len(m.hinges()))
    assert b.kinematic().tolist() == [0, 1, 2, 12, 13, 14] and b.velocity == (0.0, 0.0, -1.0)
    assert b.mass() == pytest.approx(0.2 * 0.1 * 0.08)  # area times 80 g/m^2
    free = ShellBody(m, ShellMaterial.cloth())
    assert free.pinned.size == 0 and free.attach == {} and free.kinematic().size == 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(pinned=[0, 99]), ValueError, r"pinned: vertex index 99 is outside 0\.\.14"),
    (dict(pinned=[3, 3]), ValueError, r"pinned lists vertex 3 twice"),
    (dict(pinned=[0.5]), ValueError, r"pinned must be a 1D array of vertex indices"),
    (dict(pinned=[1, 2], attach={0: [2, 5]}), ValueError, r"attach\[0\]: vertex 2 is already pinned"),
    (dict(attach={0: [4], 1: [4]}), ValueError, r"attach\[1\]: vertex 4 is already attached to tool 0"),
    (dict(attach={-1: [4]}), ValueError, r"key -1 must be a tool index"),
    (dict(attach=[4]), TypeError, r"attach must be a dict"),
    (dict(velocity=(0, 1)), ValueError, r"velocity must be 3 finite numbers"),
    (dict(pinned=np.arange(15)), ValueError, r"every vertex is pinned or attached"),
])
def test_bad_bodies_are_rejected(kwargs, error, match):
    m = ShellMesh.rectangle(size=(0.2, 0.1), res=(5, 3))
    with pytest.raises(error, match=match):
        ShellBody(m, ShellMaterial.paper(), **kwargs)


def test_body_needs_a_shell_mesh_and_material():
    m = ShellMesh.rectangle()
    with pytest.raises(TypeError, match="ShellBody.mesh must be a physim.ShellMesh, got TetMesh"):
        ShellBody(ps.flat_pad(), ShellMaterial.paper())
    with pytest.raises(TypeError, match="ShellBody.material must be a physim.ShellMaterial, got NeoHookean"):
        ShellBody(m, ps.NeoHookean())


# ---------------------------------------------------------------------------------------------- rendering
class _ShellScene:
    """The parts of a built scene the renderer reads, with shells only: ``shell_bodies`` and
    ``get_state()["shell.x"]`` (the bodies' vertices, consecutive rows in body order)."""

    dim, spacing, floor = 3, 1.0 / 32, 3.0 / 32
    materials, tools, fem_bodies = [], [], []
    partset = object()

    def __init__(self, bodies, x):
        self.shell_bodies = bodies
        self.x = np.asarray(x, dtype=np.float64)

    def get_state(self):
        return {"shell.x": self.x, "tools.pos": np.zeros((0, 3)), "tools.rot": np.zeros((0, 4))}


def _hue_mask(img, rgb, tol_deg=12.0, min_sat=0.45):
    f = img.astype(np.float64) / 255.0
    mx, mn = f.max(axis=2), f.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in f.reshape(-1, 3)])[:, 0].reshape(f.shape[:2]) * 360.0
    h0 = colorsys.rgb_to_hsv(*rgb)[0] * 360.0
    return (sat > min_sat) & (np.abs((hsv - h0 + 180.0) % 360.0 - 180.0) < tol_deg)


def _pixel(renderer, point):
    ren = renderer.plotter.renderer
    ren.SetWorldPoint(*point, 1.0)
    ren.WorldToDisplay()
    x, y, _ = ren.GetDisplayPoint()
    return int(round(x)), renderer.plotter.window_size[1] - 1 - int(round(y))


def test_shells_are_drawn_two_sided_in_their_colors_where_they_are():
    """Two horizontal sheets (y up) in their body colors at their projected places; moving ``shell.x`` moves
    the drawing; the back face is the darker shade; bending a sheet in place shades it as a fresh renderer
    of the bent state does (normals follow the points)."""
    pv = pytest.importorskip("pyvista")
    pv.OFF_SCREEN = True
    from physim.render import Renderer
    from physim.render.renderer import SHELL_BACK_SHADE, SHELL_COLORS

    a = ShellMesh.rectangle(center=(0.35, 0.4, 0.5), size=(0.2, 0.2), res=(6, 6), normal="y")
    b = ShellMesh.rectangle(center=(0.7, 0.4, 0.5), size=(0.2, 0.2), res=(6, 6), pattern="cross", normal="y")
    bodies = [ShellBody(a, ShellMaterial.cloth()), ShellBody(b, ShellMaterial.paper())]
    x = np.concatenate([a.vertices, b.vertices])
    scene = _ShellScene(bodies, x)
    camera = [(0.5, 1.3, 1.2), (0.5, 0.4, 0.5), (0.0, 1.0, 0.0)]
    with Renderer(scene, window_size=(320, 240), camera=camera, off_screen=True) as r:
        assert [s.n_points for s in r.shells] == [36, 36 + 25] and [s.n_cells for s in r.shells] == [50, 100]
        img = r.frame()
        for center, color in (((0.35, 0.4, 0.5), SHELL_COLORS[0]), ((0.7, 0.4, 0.5), SHELL_COLORS[1])):
            c, row = _pixel(r, center)
            assert _hue_mask(img[row - 2: row + 3, c - 2: c + 3], color).all()
        orange = _hue_mask(img, SHELL_COLORS[0])
        assert 300 < orange.sum() < 0.3 * orange.size
        # move the first sheet 15 cm back (-z): its pixels move up in the image, the other sheet stays
        scene.x = x + np.where(np.arange(len(x))[:, None] < 36, [0.0, 0.0, -0.15], 0.0)
        moved = _hue_mask(r.frame(), SHELL_COLORS[0])
        rows = np.nonzero(orange)[0].mean(), np.nonzero(moved)[0].mean()
        assert rows[1] < rows[0] - 5
        assert np.allclose(r.shells[0].points, scene.x[:36]) and np.allclose(r.shells[1].points, x[36:])
        front = r.frame()[_pixel(r, (0.35, 0.4, 0.35))[::-1]].astype(float)
    # the same sheet with its triangles reversed shows its back to the camera: the darker shade
    flipped = ShellBody(ShellMesh(a.vertices, a.triangles[:, ::-1]), ShellMaterial.cloth())
    scene2 = _ShellScene([flipped, bodies[1]], scene.x)
    with Renderer(scene2, window_size=(320, 240), camera=camera, off_screen=True) as r2:
        back = r2.frame()[_pixel(r2, (0.35, 0.4, 0.35))[::-1]].astype(float)
    assert np.allclose(back, SHELL_BACK_SHADE * front, atol=4.0)
    # bend the second sheet into a roof (+-40 deg about its centre line): in-place update == fresh build
    bent = x.copy()
    d = bent[36:, 0] - 0.7
    bent[36:, 0] = 0.7 + d * math.cos(math.radians(40))
    bent[36:, 1] = 0.4 + np.abs(d) * math.sin(math.radians(40))
    scene.x = x
    with Renderer(scene, window_size=(320, 240), camera=camera, off_screen=True,
                  shell_colors={1: (0.1, 0.7, 0.2)}) as r3:
        flat_img = r3.frame()
        scene.x = bent
        updated = r3.frame()
        with Renderer(scene, window_size=(320, 240), camera=camera, off_screen=True,
                      shell_colors={1: (0.1, 0.7, 0.2)}) as r4:
            fresh = r4.frame()
    assert np.abs(updated.astype(int) - fresh.astype(int)).max() <= 2
    assert np.abs(updated.astype(int) - flat_img.astype(int)).max() > 30
    assert _hue_mask(fresh, (0.1, 0.7, 0.2)).sum() > 300


def test_renderer_rejects_bad_shell_colors():
    pv = pytest.importorskip("pyvista")
    pv.OFF_SCREEN = True
    from physim.render import Renderer

    m = ShellMesh.rectangle(center=(0.5, 0.5, 0.5), size=(0.2, 0.2), res=(2, 2), normal="y")
    scene = _ShellScene([ShellBody(m, ShellMaterial.cloth())], m.vertices)
    with pytest.raises(ValueError, match="shell_colors has shell body index 3, the scene has 1 shell bodies"):
        Renderer(scene, window_size=(64, 48), off_screen=True, shell_colors={3: "red"})
    scene.x = m.vertices[:3]
    with pytest.raises(ValueError, match=r"shell.x must have shape \(n >= 4, 3\)"):
        Renderer(scene, window_size=(64, 48), off_screen=True)

"""Tetrahedral meshes for the FEM part: a checked container, two procedural gels, file input.

- :class:`TetMesh`: vertices (n, 3) in m, tets (m, 4) vertex indices (positively oriented:
  ``det[x1 - x0, x2 - x0, x3 - x0] > 0``), and ``fixed``, the nodes of the rigid back (the
  kinematic nodes a :class:`physim.FEMBody` attaches to its mount). Inverted or degenerate tets,
  wrong shapes, NaN and out-of-range indices are refused with a ``ValueError`` naming the value.
- :func:`flat_pad`: a GelSight-style box of gel on a rigid back, a structured grid of cells
  each split into the 6 Kuhn tets (one main diagonal for every cell, so the split conforms).
- :func:`dome_gel`: a spherical-cap shell (a fingertip gel) between an inner and an outer
  radius: a ring triangulation of the cap extruded radially into ``layers`` prism layers,
  each prism split into 3 tets by the global vertex order (which makes neighbours conform).
- :func:`quality`: minimum / maximum dihedral angle and minimum volume ratio
  ``6 sqrt(2) V / l_rms^3`` (1 for a regular tet, 0 for a flat one).
- :func:`read_tet_mesh` / :meth:`TetMesh.write`: any volume format ``meshio`` knows (.msh,
  .vtu, .vtk, .xdmf, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TetMesh", "flat_pad", "dome_gel", "quality", "read_tet_mesh"]

#: a tet whose volume is at most this fraction of its mean edge length cubed is degenerate
#: (a regular tet has V / l^3 = 0.118; 1e-6 is a sliver a millionth as thick)
DEGENERATE_RATIO = 1e-6


def _signed_volumes(vertices: np.ndarray, tets: np.ndarray) -> np.ndarray:
    x = vertices[tets]
    return np.linalg.det(np.stack([x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]], axis=-1)) / 6.0


def _mean_edge(vertices: np.ndarray, tets: np.ndarray) -> np.ndarray:
    x = vertices[tets]
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    return np.mean([np.linalg.norm(x[:, a] - x[:, b], axis=1) for a, b in pairs], axis=0)


def _orient(vertices: np.ndarray, tets: np.ndarray) -> np.ndarray:
    """``tets`` with the last two vertices of each negatively oriented tet swapped."""
    tets = tets.copy()
    neg = _signed_volumes(vertices, tets) < 0
    tets[neg, 2], tets[neg, 3] = tets[neg, 3].copy(), tets[neg, 2].copy()
    return tets


@dataclass
class TetMesh:
    """A tetrahedral mesh.

    Attributes:
        vertices: (n, 3) rest positions (m).
        tets: (m, 4) vertex indices, each tet positively oriented.
        fixed: indices of the rigid back's nodes (kinematic in a :class:`physim.FEMBody`), or
            an empty array.
    """

    vertices: np.ndarray
    tets: np.ndarray
    fixed: np.ndarray | None = None

    def __post_init__(self):
        v = np.asarray(self.vertices, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 4:
            raise ValueError(f"TetMesh.vertices must have shape (n, 3) with n >= 4, got shape {v.shape}")
        if not np.isfinite(v).all():
            i = int(np.argwhere(~np.isfinite(v))[0, 0])
            raise ValueError(f"TetMesh.vertices must be finite, got {v[i].tolist()} at vertex {i}")
        t = np.asarray(self.tets)
        if t.ndim != 2 or t.shape[1] != 4 or t.shape[0] < 1 or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"TetMesh.tets must be an (m, 4) integer array with m >= 1, got {t.dtype} of shape "
                             f"{t.shape}")
        out = (t < 0) | (t >= len(v))
        if out.any():
            k = int(np.argmax(out.any(axis=1)))
            raise ValueError(f"TetMesh.tets: tet {k} {t[k].tolist()} indexes a vertex outside 0..{len(v) - 1}")
        s = np.sort(t, axis=1)
        rep = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if rep.any():
            k = int(np.argmax(rep))
            raise ValueError(f"TetMesh.tets: tet {k} {t[k].tolist()} repeats a vertex (degenerate)")
        t = t.astype(np.int32)
        vol = _signed_volumes(v, t)
        tiny = DEGENERATE_RATIO * _mean_edge(v, t) ** 3
        flat = np.abs(vol) <= tiny
        if flat.any():
            k = int(np.argmax(flat))
            raise ValueError(f"TetMesh.tets: tet {k} {t[k].tolist()} is degenerate (volume {vol[k]:.3g} m^3, at most "
                             f"{DEGENERATE_RATIO:g} of its mean edge length cubed)")
        inv = vol < 0
        if inv.any():
            k = int(np.argmax(inv))
            raise ValueError(f"TetMesh.tets: tet {k} {t[k].tolist()} is inverted (signed volume {vol[k]:.3g} m^3 < 0; "
                             f"{int(inv.sum())} of {len(t)} tets): swap two of its vertices (TetMesh.oriented() "
                             f"does it for every tet)")
        fixed = np.zeros(0, np.int64) if self.fixed is None else np.asarray(self.fixed)
        if fixed.size == 0:
            fixed = np.zeros(0, np.int64)
        if fixed.ndim != 1 or not np.issubdtype(fixed.dtype, np.integer):
            raise ValueError(f"TetMesh.fixed must be a 1D array of vertex indices, got {fixed.dtype} of shape "
                             f"{fixed.shape}")
        bad = (fixed < 0) | (fixed >= len(v))
        if bad.any():
            raise ValueError(f"TetMesh.fixed: index {int(fixed[bad][0])} is outside 0..{len(v) - 1}")
        if len(np.unique(fixed)) != len(fixed):
            raise ValueError("TetMesh.fixed lists a vertex twice")
        used = np.zeros(len(v), bool)
        used[t.ravel()] = True
        if not used.all():
            raise ValueError(f"TetMesh: vertex {int(np.argmin(used))} belongs to no tet ({int((~used).sum())} such "
                             f"vertices); drop them")
        self.vertices, self.tets, self.fixed = v, t, np.sort(fixed).astype(np.int32)

    @classmethod
    def oriented(cls, vertices, tets, fixed=None) -> TetMesh:
        """A mesh from tets of either orientation (negatively oriented ones get two vertices swapped)."""
        v = np.asarray(vertices, dtype=np.float64)
        t = np.asarray(tets)
        if v.ndim == 2 and v.shape[1] == 3 and t.ndim == 2 and t.shape[1] == 4 and np.issubdtype(t.dtype, np.integer) \
                and ((t >= 0) & (t < len(v))).all():
            t = _orient(v, t)
        return cls(v, t, fixed)

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def n_tets(self) -> int:
        return int(self.tets.shape[0])

    def volumes(self) -> np.ndarray:
        """(m,) tet volumes (m^3)."""
        return _signed_volumes(self.vertices, self.tets)

    def surface_faces(self) -> np.ndarray:
        """(f, 3) boundary triangles, outward oriented (faces that belong to one tet only)."""
        t = self.tets
        faces = np.concatenate([t[:, [1, 2, 3]], t[:, [0, 3, 2]], t[:, [0, 1, 3]], t[:, [0, 2, 1]]])
        key = np.sort(faces, axis=1)
        _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        return faces[counts[inv.ravel()] == 1]

    def write(self, path) -> None:
        """Write with ``meshio`` (format from the file name; ``.msh`` as gmsh 2.2, whose node data
        meshio reads back, unlike its gmsh 4.1 output here); ``fixed`` goes along as point data."""
        import meshio

        flag = np.zeros(self.n_vertices)  # float: gmsh's node data drops integer arrays
        flag[self.fixed] = 1.0
        fmt = "gmsh22" if str(path).endswith(".msh") else None
        meshio.write(path, meshio.Mesh(self.vertices, [("tetra", self.tets)], point_data={"fixed": flag}),
                     file_format=fmt)


def read_tet_mesh(path, fixed=None, orient: bool = False) -> TetMesh:
    """Read a tetrahedral mesh with ``meshio`` (every ``tetra`` cell block; other cells ignored).

    Args:
        fixed: the rigid back's vertex indices; ``None``: the file's ``"fixed"`` point data
            where it has one (as :meth:`TetMesh.write` stores it), else none.
        orient: accept negatively oriented tets (swap two vertices); by default they are an error.
    """
    import meshio

    m = meshio.read(path)
    blocks = [c.data for c in m.cells if c.type == "tetra"]
    if not blocks:
        kinds = sorted({c.type for c in m.cells})
        raise ValueError(f"{path}: no tetrahedra (cell types {kinds}); tetrahedralize the volume first")
    tets = np.concatenate(blocks).astype(np.int64)
    pts = np.asarray(m.points, dtype=np.float64)
    if pts.shape[1] == 2:
        raise ValueError(f"{path}: 2D points; a tet mesh needs 3D vertices")
    used = np.unique(tets)
    if len(used) != len(pts):  # drop points of other cells (gmsh writes its geometry points too)
        remap = -np.ones(len(pts), np.int64)
        remap[used] = np.arange(len(used))
        if fixed is not None:
            fixed = remap[np.asarray(fixed)]
            if (fixed < 0).any():
                raise ValueError(f"{path}: a fixed vertex belongs to no tet")
        elif "fixed" in m.point_data:
            fixed = np.flatnonzero(np.asarray(m.point_data["fixed"])[used] != 0)
        pts, tets = pts[used], remap[tets]
    elif fixed is None and "fixed" in m.point_data:
        fixed = np.flatnonzero(np.asarray(m.point_data["fixed"]) != 0)
    return TetMesh.oriented(pts, tets, fixed) if orient else TetMesh(pts, tets, fixed)


# ------------------------------------------------------------------------- quality
def quality(mesh: TetMesh) -> dict:
    """Element quality: ``min_dihedral_deg``, ``max_dihedral_deg``, ``min_volume_ratio``
    (6 sqrt(2) V / l_rms^3: 1 regular, 0 flat), ``min_volume`` (m^3) and ``n_tets``."""
    v, t = mesh.vertices, mesh.tets
    x = v[t]
    Dm = np.stack([x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]], axis=-1)
    G = np.linalg.inv(Dm)  # rows: gradients of the barycentric coordinates of vertices 1..3
    g = np.concatenate([-G.sum(axis=1, keepdims=True), G], axis=1)  # (m, 4, 3), inward face normals
    g = g / np.linalg.norm(g, axis=2, keepdims=True)
    angles = []
    for a, b in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]:
        # dihedral angle at the edge shared by the faces opposite a and b
        angles.append(np.degrees(np.arccos(np.clip(-(g[:, a] * g[:, b]).sum(axis=1), -1.0, 1.0))))
    angles = np.stack(angles, axis=1)
    vol = np.linalg.det(Dm) / 6.0
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    l2 = np.mean([((x[:, a] - x[:, b]) ** 2).sum(axis=1) for a, b in pairs], axis=0)
    ratio = 6.0 * math.sqrt(2.0) * vol / l2 ** 1.5
    return dict(min_dihedral_deg=float(angles.min()), max_dihedral_deg=float(angles.max()),
                min_volume_ratio=float(ratio.min()), min_volume=float(vol.min()), n_tets=int(len(t)))


# ------------------------------------------------------------------------- generators
def _kuhn_tets(shape: tuple[int, int, int]) -> np.ndarray:
    """The 6 Kuhn tets of every cell of a grid of ``shape`` cells (vertices numbered
    ``np.ravel_multi_index`` on shape + 1)."""
    nodes = tuple(s + 1 for s in shape)
    cells = np.indices(shape).reshape(3, -1).T
    out = []
    for perm in [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]:
        path = [cells.copy()]
        cur = cells.copy()
        for ax in perm:
            cur = cur.copy()
            cur[:, ax] += 1
            path.append(cur)
        out.append(np.stack([np.ravel_multi_index(p.T, nodes) for p in path], axis=1))
    return np.concatenate(out)


def flat_pad(center=(0.5, 0.2, 0.5), size=(0.04, 0.04), thickness: float = 0.01, cell: float | None = None,
             resolution=None, back: str = "bottom") -> TetMesh:
    """A GelSight-style flat pad: a box of gel ``size[0]`` (x) by ``size[1]`` (z) by ``thickness``
    (y) centred at ``center``, on a rigid back on its ``back`` face (``"bottom"``: the -y face,
    gel facing up; ``"top"``: the +y face, gel facing down). The back's nodes are ``mesh.fixed``.

    Cells per axis: ``resolution`` (nx, ny, nz), else about ``cell`` m each (default: the
    thickness over 2), each split into the 6 Kuhn tets: in near-cubic cells their dihedral
    angles are 45, 60 and 90 degrees."""
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    sz = np.asarray(size, dtype=np.float64).reshape(-1)
    if c.shape != (3,) or not np.isfinite(c).all():
        raise ValueError(f"flat_pad: center must be 3 finite values, got {center!r}")
    if sz.shape != (2,) or not (np.isfinite(sz).all() and (sz > 0).all()):
        raise ValueError(f"flat_pad: size must be 2 positive values (x, z), got {size!r}")
    if not (math.isfinite(thickness) and thickness > 0):
        raise ValueError(f"flat_pad: thickness must be positive, got {thickness!r}")
    if back not in ("bottom", "top"):
        raise ValueError(f"flat_pad: back must be 'bottom' or 'top', got {back!r}")
    ext = np.array([sz[0], thickness, sz[1]])
    if resolution is None:
        h = thickness / 2 if cell is None else float(cell)
        if not (math.isfinite(h) and h > 0):
            raise ValueError(f"flat_pad: cell must be positive, got {cell!r}")
        res = np.maximum(1, np.round(ext / h)).astype(int)
    else:
        res = np.asarray(resolution).reshape(-1)
        if res.shape != (3,) or not np.issubdtype(res.dtype, np.integer) or (res < 1).any():
            raise ValueError(f"flat_pad: resolution must be 3 positive integers (x, y, z), got {resolution!r}")
    shape = tuple(int(r) for r in res)
    axes = [np.linspace(c[d] - ext[d] / 2, c[d] + ext[d] / 2, shape[d] + 1) for d in range(3)]
    verts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    tets = _orient(verts, _kuhn_tets(shape))
    j = np.indices(tuple(s + 1 for s in shape)).reshape(3, -1)[1]
    fixed = np.flatnonzero(j == (0 if back == "bottom" else shape[1]))
    return TetMesh(verts, tets, fixed)


def _cap_triangulation(rings: int, angle: float):
    """Unit directions and triangles of a spherical cap of half-angle ``angle`` (rad) around +z:
    the pole and ``rings`` rings at polar angles j * angle / rings, ring j with about
    2 pi sin(theta_j) / dtheta points (near-equilateral triangles), consecutive rings joined
    by advancing along whichever ring's next point comes first in azimuth."""
    dth = angle / rings
    dirs = [np.array([0.0, 0.0, 1.0])]
    ring_idx = [np.array([0])]
    for j in range(1, rings + 1):
        th = j * dth
        n = max(6, int(round(2 * math.pi * math.sin(th) / dth)))
        phi = (np.arange(n) + 0.5 * (j % 2)) * 2 * math.pi / n
        start = len(dirs)
        for p in phi:
            dirs.append(np.array([math.sin(th) * math.cos(p), math.sin(th) * math.sin(p), math.cos(th)]))
        ring_idx.append(np.arange(start, start + n))
    dirs = np.array(dirs)
    tris = []
    for j in range(rings):
        a, b = ring_idx[j], ring_idx[j + 1]
        if len(a) == 1:
            for k in range(len(b)):
                tris.append((a[0], b[k], b[(k + 1) % len(b)]))
            continue
        az = lambda idx: np.mod(np.arctan2(dirs[idx, 1], dirs[idx, 0]), 2 * math.pi)  # noqa: E731
        fa, fb = az(a), az(b)
        # walk both rings once around, starting at their first points in azimuth order
        oa, ob = np.argsort(fa), np.argsort(fb)
        a, b, fa, fb = a[oa], b[ob], fa[oa], fb[ob]
        i = k = 0
        na, nb = len(a), len(b)
        while i < na or k < nb:
            # next azimuth on each ring (wrapping adds 2 pi)
            nxt_a = fa[(i + 1) % na] + (2 * math.pi if i + 1 >= na else 0.0)
            nxt_b = fb[(k + 1) % nb] + (2 * math.pi if k + 1 >= nb else 0.0)
            if k >= nb or (i < na and nxt_a <= nxt_b):
                tris.append((a[i % na], a[(i + 1) % na], b[k % nb]))
                i += 1
            else:
                tris.append((a[i % na], b[(k + 1) % nb], b[k % nb]))
                k += 1
    return dirs, np.array(tris, np.int64)


def dome_gel(center=(0.5, 0.2, 0.5), inner_radius: float = 0.01, outer_radius: float = 0.015, layers: int = 2,
             angle: float = 90.0, rings: int | None = None, axis=(0.0, 1.0, 0.0)) -> TetMesh:
    """A dome gel: the spherical-cap shell between ``inner_radius`` and ``outer_radius`` around
    ``center``, of half-angle ``angle`` degrees about ``axis`` (default +y: the dome bulges up),
    ``layers`` element layers thick. The inner surface's nodes (the rigid core it is cast on)
    are ``mesh.fixed``.

    The cap is triangulated in rings (``rings``: default about the arc length over the layer
    thickness at the mid radius, so elements are near-isotropic), extruded radially, and each
    prism split into 3 tets by the global order of its triangle's vertices (the diagonal of
    every quad face joins the lower-numbered vertex's outer node to the other's inner node,
    so the split is the same from both sides)."""
    c = np.asarray(center, dtype=np.float64).reshape(-1)
    ax = np.asarray(axis, dtype=np.float64).reshape(-1)
    if c.shape != (3,) or not np.isfinite(c).all():
        raise ValueError(f"dome_gel: center must be 3 finite values, got {center!r}")
    if ax.shape != (3,) or not (np.isfinite(ax).all() and np.linalg.norm(ax) > 0):
        raise ValueError(f"dome_gel: axis must be a nonzero 3-vector, got {axis!r}")
    if not (0 < inner_radius < outer_radius and math.isfinite(outer_radius)):
        raise ValueError(f"dome_gel: need 0 < inner_radius < outer_radius, got {inner_radius!r}, {outer_radius!r}")
    if not (isinstance(layers, (int, np.integer)) and layers >= 1):
        raise ValueError(f"dome_gel: layers must be a positive integer, got {layers!r}")
    if not (0 < angle <= 120):
        raise ValueError(f"dome_gel: angle (half-angle of the cap, degrees) must be in (0, 120], got {angle!r}")
    th = math.radians(angle)
    t = (outer_radius - inner_radius) / layers
    if rings is None:
        rings = max(1, int(round(th * 0.5 * (inner_radius + outer_radius) / t)))
    if not (isinstance(rings, (int, np.integer)) and rings >= 1):
        raise ValueError(f"dome_gel: rings must be a positive integer, got {rings!r}")
    dirs, tris = _cap_triangulation(int(rings), th)
    # rotate +z onto axis
    ax = ax / np.linalg.norm(ax)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(z, ax)
    s, cth = np.linalg.norm(v), float(z @ ax)
    if s < 1e-12:
        R = np.eye(3) if cth > 0 else np.diag([1.0, -1.0, -1.0])
    else:
        K = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
        R = np.eye(3) + K + K @ K * ((1 - cth) / s**2)
    dirs = dirs @ R.T
    S = len(dirs)
    radii = np.linspace(inner_radius, outer_radius, layers + 1)
    verts = (c + radii[:, None, None] * dirs[None]).reshape(-1, 3)
    tets = []
    srt = np.sort(tris, axis=1)
    a, b, cc = srt[:, 0], srt[:, 1], srt[:, 2]
    for k in range(layers):
        lo, hi = k * S, (k + 1) * S
        # a < b < c: [a, b, c, a'], [b, c, a', b'], [c, a', b', c']
        tets += [np.stack([a + lo, b + lo, cc + lo, a + hi], 1), np.stack([b + lo, cc + lo, a + hi, b + hi], 1),
                 np.stack([cc + lo, a + hi, b + hi, cc + hi], 1)]
    tets = _orient(verts, np.concatenate(tets))
    return TetMesh(verts, tets, np.arange(S))

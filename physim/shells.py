"""Thin-shell meshes, materials and bodies (cloth, paper, card, rubber sheets).

:class:`ShellMesh` is a validated 3D triangle surface (consistently oriented, manifold), with the
edge and hinge topology the shell solver needs; :class:`ShellMaterial` holds the sheet's physical
parameters in SI units (with presets for cloth, office paper, card and rubber); :class:`ShellBody`
puts a mesh and a material together with its kinematic (pinned or tool-attached) vertices.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np

# A triangle whose height (over its longest edge) is at most this fraction of that edge is degenerate:
# in float32 (relative precision 6e-8) its area, normal and membrane strain would carry errors of several
# %, and its stiffness conditioning (~ aspect ratio squared, 1e12) is past anything a solver can use. Per
# triangle, so graded meshes with small triangles next to large ones pass.
DEGENERATE_RATIO = 1e-6

PATTERNS = ("alternating", "right", "left", "cross")
NORMALS = ("x", "y", "z")


def _triangle_areas(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    return 0.5 * np.linalg.norm(np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]]), axis=1)


class ShellMesh:
    """A 3D triangle surface: the rest shape of a thin shell.

    Validated on construction (``ValueError`` naming the offending element): finite vertices, triangle
    indices in range, no vertex repeated in a triangle, no (near-)zero-area triangle, every edge shared
    by at most two triangles (manifold), consistent orientation across every interior edge (the
    shared edge runs in opposite directions in its two triangles), and no vertex that no triangle uses.

    Attributes:
        vertices: (n, 3) float64 rest positions (m).
        triangles: (m, 3) int32 vertex indices, counter-clockwise seen from the side the normal
            ``(x1 - x0) x (x2 - x0)`` points to.
        n_vertices, n_triangles: counts.
    """

    def __init__(self, vertices, triangles):
        v = np.array(vertices, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 3:
            raise ValueError(f"ShellMesh.vertices must have shape (n, 3) with n >= 3, got shape {v.shape}")
        if not np.isfinite(v).all():
            i = int(np.argwhere(~np.isfinite(v))[0, 0])
            raise ValueError(f"ShellMesh.vertices must be finite, got {v[i].tolist()} at vertex {i}")
        t = np.asarray(triangles)
        if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] < 1:
            raise ValueError(f"ShellMesh.triangles must be an (m, 3) integer array with m >= 1, got shape {t.shape}")
        if not np.issubdtype(t.dtype, np.integer):
            if np.issubdtype(t.dtype, np.floating) and np.isfinite(t).all() and (t == np.round(t)).all():
                t = t.astype(np.int64)
            else:
                raise ValueError(f"ShellMesh.triangles must hold integer vertex indices, got dtype {t.dtype}")
        out = (t < 0) | (t >= len(v))
        if out.any():
            k = int(np.argmax(out.any(axis=1)))
            raise ValueError(f"ShellMesh.triangles: triangle {k} {t[k].tolist()} indexes a vertex outside "
                             f"0..{len(v) - 1}")
        t = t.astype(np.int32)
        s = np.sort(t, axis=1)
        rep = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if rep.any():
            k = int(np.argmax(rep))
            raise ValueError(f"ShellMesh.triangles: triangle {k} {t[k].tolist()} repeats a vertex")
        area = _triangle_areas(v, t)
        m = len(t)
        directed = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])  # row j*m + k: edge j of triangle k
        longest = np.linalg.norm(v[directed[:, 1]] - v[directed[:, 0]], axis=1).reshape(3, m).max(axis=0)
        height = 2.0 * area / longest
        flat = height <= DEGENERATE_RATIO * longest
        if flat.any():
            k = int(np.argmax(flat))
            raise ValueError(f"ShellMesh.triangles: triangle {k} {t[k].tolist()} has (near-)zero area "
                             f"{area[k]:.3g} m^2 (height {height[k]:.3g} m over its longest edge {longest[k]:.3g} m, "
                             f"at most {DEGENERATE_RATIO:g} of it)")
        owner = np.tile(np.arange(m), 3)
        und = np.sort(directed, axis=1)
        uniq, inverse, counts = np.unique(und, axis=0, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        if (counts > 2).any():
            e = int(np.argmax(counts > 2))
            tris = np.sort(owner[inverse == e]).tolist()
            raise ValueError(f"ShellMesh: edge {uniq[e].tolist()} is non-manifold: shared by {int(counts[e])} "
                             f"triangles {tris} (at most 2)")
        # consistent orientation: an interior edge appears once as (i, j) and once as (j, i)
        dir_uniq, dir_counts = np.unique(directed, axis=0, return_counts=True)
        if (dir_counts > 1).any():
            e = dir_uniq[int(np.argmax(dir_counts > 1))]
            tris = np.sort(owner[(directed == e).all(axis=1)]).tolist()
            raise ValueError(f"ShellMesh: inconsistent orientation across edge {e.tolist()}: triangles {tris} both "
                             f"run it as {e[0]}->{e[1]} (flip one of them so neighbours traverse a shared edge in "
                             f"opposite directions)")
        used = np.zeros(len(v), bool)
        used[t.ravel()] = True
        if not used.all():
            i = int(np.argmin(used))
            raise ValueError(f"ShellMesh: vertex {i} {v[i].tolist()} is used by no triangle "
                             f"({int((~used).sum())} unreferenced vertices)")
        self.vertices = v
        self.triangles = t
        self.vertices.setflags(write=False)
        self.triangles.setflags(write=False)
        self._edges = uniq.astype(np.int32)
        self._edge_counts = counts
        self._directed = directed
        self._edge_of = inverse
        self._areas = area

    # ------------------------------------------------------------------ topology
    @property
    def n_vertices(self) -> int:
        """Number of vertices."""
        return len(self.vertices)

    @property
    def n_triangles(self) -> int:
        """Number of triangles."""
        return len(self.triangles)

    def edges(self) -> np.ndarray:
        """(e, 2) int32 unique undirected edges, each row ``i < j``, rows sorted lexicographically."""
        return self._edges.copy()

    def hinges(self) -> np.ndarray:
        """(h, 4) int32 ``[e0, e1, a, b]`` for every interior edge.

        The edge runs ``e0 -> e1`` in triangle ``(e0, e1, a)`` (in that cyclic, counter-clockwise order)
        and ``e1 -> e0`` in the other triangle ``(e1, e0, b)``; ``a`` and ``b`` are the opposite vertices.
        ``e0 < e1`` in every row, and rows follow :meth:`edges` order (interior edges only).
        """
        m = self.n_triangles
        interior = np.flatnonzero(self._edge_counts == 2)
        if len(interior) == 0:
            return np.zeros((0, 4), np.int32)
        t = self.triangles
        # the directed occurrence with e0 < e1 is the "first" triangle of each hinge
        d = self._directed
        forward = d[:, 0] < d[:, 1]
        pick = forward & (self._edge_counts[self._edge_of] == 2)
        rows = np.flatnonzero(pick)
        rows = rows[np.argsort(self._edge_of[rows])]  # edges() order
        back = np.flatnonzero(~forward & (self._edge_counts[self._edge_of] == 2))
        back = back[np.argsort(self._edge_of[back])]
        # directed row r = j*m + k is edge (t[k, j], t[k, j+1]); its opposite vertex is t[k, j+2]
        ja, ka = rows // m, rows % m
        jb, kb = back // m, back % m
        a = t[ka, (ja + 2) % 3]
        b = t[kb, (jb + 2) % 3]
        return np.stack([d[rows, 0], d[rows, 1], a, b], axis=1).astype(np.int32)

    def boundary_edges(self) -> np.ndarray:
        """(k, 2) int32 edges used by one triangle, directed as in that triangle (the surface on the left)."""
        rows = np.flatnonzero(self._edge_counts[self._edge_of] == 1)
        rows = rows[np.argsort(self._edge_of[rows])]
        return self._directed[rows].astype(np.int32)

    def areas(self) -> np.ndarray:
        """(m,) rest triangle areas (m^2)."""
        return self._areas.copy()

    def normals(self) -> np.ndarray:
        """(m, 3) unit rest triangle normals, ``(x1 - x0) x (x2 - x0)`` normalised."""
        v, t = self.vertices, self.triangles
        n = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
        return n / np.linalg.norm(n, axis=1, keepdims=True)

    # ------------------------------------------------------------------ selection
    def vertices_near(self, point, radius: float) -> np.ndarray:
        """Indices (int32) of the vertices within ``radius`` (m) of ``point`` (3 values), e.g. for pinning."""
        p = np.asarray(point, dtype=np.float64)
        if p.shape != (3,) or not np.isfinite(p).all():
            raise ValueError(f"ShellMesh.vertices_near: point must be 3 finite numbers, got {point!r}")
        if not (isinstance(radius, (int, float, np.floating, np.integer)) and radius > 0 and math.isfinite(radius)):
            raise ValueError(f"ShellMesh.vertices_near: radius must be a positive number (m), got {radius!r}")
        return np.flatnonzero(np.linalg.norm(self.vertices - p, axis=1) <= radius).astype(np.int32)

    def vertices_where(self, fn) -> np.ndarray:
        """Indices (int32) ``i`` with ``fn(vertices)[i]`` true; ``fn`` takes the (n, 3) array, e.g.
        ``mesh.vertices_where(lambda x: x[:, 0] < 1e-6)`` (the left edge)."""
        if not callable(fn):
            raise TypeError(f"ShellMesh.vertices_where: fn must be callable, got {type(fn).__name__}")
        mask = np.asarray(fn(self.vertices.copy()))
        if mask.shape != (self.n_vertices,) or mask.dtype != bool:
            raise ValueError(f"ShellMesh.vertices_where: fn must return a boolean array of shape ({self.n_vertices},), "
                             f"got dtype {mask.dtype} shape {mask.shape}")
        return np.flatnonzero(mask).astype(np.int32)

    # ------------------------------------------------------------------ construction
    @classmethod
    def rectangle(cls, center=(0.0, 0.0, 0.0), size=(1.0, 1.0), res=(11, 11), pattern: str = "alternating",
                  normal: str = "z") -> ShellMesh:
        """A flat rectangular sheet.

        Args:
            center: centre of the sheet (m).
            size: ``(L1, L2)`` side lengths (m): along (x, y) for ``normal="z"``, (y, z) for ``"x"``,
                (x, z) for ``"y"``.
            res: ``(n1, n2)`` vertices per side (each >= 2).
            pattern: how each grid cell is split: ``"right"`` (every diagonal from the cell's low
                corner to its high corner), ``"left"`` (the other diagonal), ``"alternating"`` (the two in
                a checkerboard: no preferred direction), ``"cross"`` (a centre vertex per cell, four triangles).
            normal: the axis the sheet faces; triangle normals point along its positive direction.
        """
        c = np.asarray(center, dtype=np.float64)
        if c.shape != (3,) or not np.isfinite(c).all():
            raise ValueError(f"ShellMesh.rectangle: center must be 3 finite numbers, got {center!r}")
        sz = np.asarray(size, dtype=np.float64)
        if sz.shape != (2,) or not np.isfinite(sz).all() or (sz <= 0).any():
            raise ValueError(f"ShellMesh.rectangle: size must be 2 positive lengths (m), got {size!r}")
        r = np.asarray(res)
        if r.shape != (2,) or not np.issubdtype(r.dtype, np.integer) or (r < 2).any():
            raise ValueError(f"ShellMesh.rectangle: res must be 2 integers >= 2 (vertices per side), got {res!r}")
        if pattern not in PATTERNS:
            raise ValueError(f"ShellMesh.rectangle: pattern must be one of {PATTERNS}, got {pattern!r}")
        if normal not in NORMALS:
            raise ValueError(f"ShellMesh.rectangle: normal must be one of {NORMALS}, got {normal!r}")
        n1, n2 = int(r[0]), int(r[1])
        u = np.linspace(-0.5, 0.5, n1) * sz[0]
        w = np.linspace(-0.5, 0.5, n2) * sz[1]
        U, W = np.meshgrid(u, w, indexing="ij")
        uv = [np.stack([U.ravel(), W.ravel()], axis=1)]
        grid = np.arange(n1 * n2).reshape(n1, n2)
        i, j = np.meshgrid(np.arange(n1 - 1), np.arange(n2 - 1), indexing="ij")
        i, j = i.ravel(), j.ravel()
        v00, v10, v11, v01 = grid[i, j], grid[i + 1, j], grid[i + 1, j + 1], grid[i, j + 1]
        if pattern == "cross":
            centre = n1 * n2 + np.arange(len(i))
            uv.append(np.stack([0.5 * (u[i] + u[i + 1]), 0.5 * (w[j] + w[j + 1])], axis=1))
            tris = np.concatenate([np.stack(q, axis=1) for q in
                                   ((v00, v10, centre), (v10, v11, centre), (v11, v01, centre), (v01, v00, centre))])
        else:
            if pattern == "right":
                diag = np.ones(len(i), bool)
            elif pattern == "left":
                diag = np.zeros(len(i), bool)
            else:
                diag = (i + j) % 2 == 0
            first = np.where(diag[:, None], np.stack([v00, v10, v11], 1), np.stack([v00, v10, v01], 1))
            second = np.where(diag[:, None], np.stack([v00, v11, v01], 1), np.stack([v10, v11, v01], 1))
            tris = np.concatenate([first, second])
        uv = np.concatenate(uv)
        # (u, w) -> 3D axes; the triangles above are counter-clockwise in (u, w), i.e. face u x w
        axes = {"z": (0, 1, 2), "x": (1, 2, 0), "y": (0, 2, 1)}[normal]
        verts = np.zeros((len(uv), 3))
        verts[:, axes[0]] = uv[:, 0]
        verts[:, axes[1]] = uv[:, 1]
        if normal == "y":  # x cross z = -y: flip to face +y
            tris = tris[:, [0, 2, 1]]
        return cls(verts + c, tris)

    @classmethod
    def strip(cls, start=(0.0, 0.0, 0.0), length: float = 0.2, width: float = 0.02, n: int = 21,
              n_width: int | None = None, pattern: str = "alternating", normal: str = "z") -> ShellMesh:
        """A rectangle along +x starting at ``start`` (the midpoint of its first short edge), e.g. a cantilever.

        Args:
            length, width: side lengths (m) along x and across (y for ``normal="z"``, z for ``"y"``).
            n: vertices along the length (>= 2).
            n_width: vertices across; ``None``: as many as keep the cells near square (at least 2).
            pattern, normal: as in :meth:`rectangle` (``normal`` in ``"z"``, ``"y"``).
        """
        s = np.asarray(start, dtype=np.float64)
        if s.shape != (3,) or not np.isfinite(s).all():
            raise ValueError(f"ShellMesh.strip: start must be 3 finite numbers, got {start!r}")
        for name, val in (("length", length), ("width", width)):
            if not (isinstance(val, (int, float, np.integer, np.floating)) and math.isfinite(val) and val > 0):
                raise ValueError(f"ShellMesh.strip: {name} must be a positive length (m), got {val!r}")
        if not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"ShellMesh.strip: n must be an integer >= 2, got {n!r}")
        if n_width is None:
            n_width = max(2, int(round(width / length * (n - 1))) + 1)
        if not isinstance(n_width, (int, np.integer)) or n_width < 2:
            raise ValueError(f"ShellMesh.strip: n_width must be an integer >= 2, got {n_width!r}")
        if normal not in ("z", "y"):
            raise ValueError(f"ShellMesh.strip: normal must be 'z' or 'y' (the strip runs along x), got {normal!r}")
        center = s + np.array([0.5 * length, 0.0, 0.0])
        return cls.rectangle(center, (length, width), (int(n), int(n_width)), pattern=pattern, normal=normal)

    # ------------------------------------------------------------------ files
    @classmethod
    def from_file(cls, path) -> ShellMesh:
        """Read a triangle surface (.obj, .ply, .stl, .off, .vtk, .vtu, ... via meshio; other formats such as
        .glb via trimesh). Only triangles are kept (lines, points, quads and volume cells are ignored) and
        vertices that no kept triangle uses are dropped; ``ValueError`` if the file holds no triangle."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(f"ShellMesh.from_file: no such file {path!r}")
        import meshio

        try:
            with np.errstate(over="ignore"):  # meshio's STL reader overflows an int32 while sniffing ASCII vs binary
                m = meshio.read(path)
            pts = np.asarray(m.points, dtype=np.float64)
            blocks = [np.asarray(c.data) for c in m.cells if c.type == "triangle"]
        except (meshio.ReadError, KeyError, ValueError):
            import trimesh

            try:
                tm = trimesh.load(path, force="mesh", process=False)
            except Exception as err:  # trimesh raises many types for unknown/broken files
                raise ValueError(f"ShellMesh.from_file: cannot read {path!r} with meshio or trimesh: {err}") from err
            pts = np.asarray(tm.vertices, dtype=np.float64)
            blocks = [np.asarray(tm.faces)] if len(tm.faces) else []
        if not blocks:
            raise ValueError(f"ShellMesh.from_file: {path!r} contains no triangles")
        tris = np.concatenate(blocks).astype(np.int64)
        if pts.shape[1] == 2:
            pts = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
        used, tris = np.unique(tris, return_inverse=True)
        return cls(pts[used], tris.reshape(-1, 3))

    def write(self, path) -> None:
        """Write the mesh (format from the extension: .obj, .ply, .stl, .vtk, .vtu, ...) via meshio."""
        import meshio

        meshio.write_points_cells(os.fspath(path), self.vertices, [("triangle", self.triangles)])

    def __repr__(self) -> str:
        return f"ShellMesh({self.n_vertices} vertices, {self.n_triangles} triangles)"


def _positive(owner: str, name: str, value, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}.{name} must be a finite number {bound}, got {value!r}")


@dataclass(frozen=True)
class ShellMaterial:
    """Material of a thin sheet (SI units; parameters named as in :class:`physim.NeoHookean` / :class:`physim.FEMBody`).

    Attributes:
        E: Young's modulus of the sheet material (Pa).
        nu: Poisson ratio, in (-1, 0.5).
        thickness: sheet thickness t (m).
        density: volumetric density of the material (kg/m^3); the areal density is ``density * thickness``.
        bending: bending stiffness D (N m); ``None``: the plate value ``E t^3 / (12 (1 - nu^2))``. Woven
            cloth bends far more easily than a solid plate of its E and t (its yarns slide), so give D for it.
        yield_angle: creases become plastic once the hinge angle departs from its rest angle by more than
            this (degrees); ``inf``: purely elastic.
        hardening: >= 0; the yield angle grows by ``hardening`` times the accumulated plastic angle.
        damping: mass-proportional (Rayleigh alpha) damping (1/s).
    """

    E: float
    nu: float
    thickness: float
    density: float
    bending: float | None = None
    yield_angle: float = math.inf
    hardening: float = 0.0
    damping: float = 0.0

    def __post_init__(self):
        _positive("ShellMaterial", "E", self.E)
        if not (isinstance(self.nu, (int, float, np.integer, np.floating)) and not isinstance(self.nu, bool)
                and -1.0 < self.nu < 0.5):
            raise ValueError(f"ShellMaterial.nu must be in (-1, 0.5), got {self.nu!r}")
        _positive("ShellMaterial", "thickness", self.thickness)
        _positive("ShellMaterial", "density", self.density)
        if self.bending is not None:
            _positive("ShellMaterial", "bending", self.bending)
        ya = self.yield_angle
        if not (isinstance(ya, (int, float, np.integer, np.floating)) and not isinstance(ya, bool) and ya > 0
                and not math.isnan(ya)):
            raise ValueError(f"ShellMaterial.yield_angle must be > 0 degrees (inf: elastic), got {ya!r}")
        _positive("ShellMaterial", "hardening", self.hardening, allow_zero=True)
        _positive("ShellMaterial", "damping", self.damping, allow_zero=True)

    def membrane_stiffness(self) -> float:
        """Membrane (stretching) stiffness ``E t`` (N/m)."""
        return float(self.E * self.thickness)

    def bending_stiffness(self) -> float:
        """Bending stiffness D (N m): ``bending`` if given, else the plate value ``E t^3 / (12 (1 - nu^2))``."""
        if self.bending is not None:
            return float(self.bending)
        return float(self.E * self.thickness ** 3 / (12.0 * (1.0 - self.nu ** 2)))

    def areal_density(self) -> float:
        """Mass per unit area ``density * thickness`` (kg/m^2)."""
        return float(self.density * self.thickness)

    @property
    def plastic(self) -> bool:
        """Whether creases can yield (finite ``yield_angle``)."""
        return math.isfinite(self.yield_angle)

    @classmethod
    def cloth(cls, **overrides) -> ShellMaterial:
        """Woven cotton (shirting weight): t = 0.5 mm, 150 g/m^2 (density 300 kg/m^3), E t = 1e4 N/m, D = 5e-6 N m.

        Order of magnitude of Kawabata KES-F data for cotton fabrics (Kawabata, *The Standardization and
        Analysis of Hand Evaluation*, 2nd ed., Textile Machinery Society of Japan, 1980): tensile strain
        of a few % at the 500 gf/cm (490 N/m) test load, i.e. an initial membrane stiffness ~1e4 N/m
        (E = 2e7 Pa at t = 0.5 mm); bending rigidity B ~ 0.02-0.15 gf cm^2/cm = 2e-6-1.5e-5 N m, ~50x
        below the plate value of E and t (yarns slide). nu = 0.3 (the in-plane Poisson ratio of a weave
        is ill-defined; 0.3 is the usual isotropic stand-in). Elastic: cloth keeps no crease.
        """
        base = dict(E=2e7, nu=0.3, thickness=5e-4, density=300.0, bending=5e-6)
        return cls(**{**base, **overrides})

    @classmethod
    def paper(cls, **overrides) -> ShellMaterial:
        """80 g/m^2 office (copy) paper: t = 0.1 mm, density 800 kg/m^3, E = 4 GPa, nu = 0.3, plate bending.

        Mark, Borch, Habeger & Lyne, *Handbook of Physical Testing of Paper* (2nd ed., 2002) and
        Niskanen, *Mechanics of Paper Products* (2012): copy paper caliper ~100 um; tensile modulus
        ~5-7 GPa machine direction and ~2-3 GPa cross direction (4 GPa: an isotropic average);
        in-plane Poisson ratio 0.2-0.4. The plate value D = E t^3 / (12 (1 - nu^2)) = 3.7e-4 N m
        matches measured two-point bending stiffness of 80 g/m^2 sheets (~0.2-0.5 mN m).
        yield_angle 20 deg, hardening 0.1: a model parameter, not a measured constant (a hinge's angle
        depends on the mesh), chosen so gentle bends recover and a sharp fold keeps a crease.
        """
        base = dict(E=4e9, nu=0.3, thickness=1e-4, density=800.0, yield_angle=20.0, hardening=0.1)
        return cls(**{**base, **overrides})

    @classmethod
    def card(cls, **overrides) -> ShellMaterial:
        """300 g/m^2 card stock: t = 0.35 mm, density 857 kg/m^3, E = 3.5 GPa, nu = 0.3, plate bending.

        Same sources as :meth:`paper` (Niskanen 2012 for paperboard): the plate value
        D = 3.5e9 * (3.5e-4)^3 / (12 * 0.91) = 1.37e-2 N m is within the ~10-20 mN m measured for
        300 g/m^2 board. yield_angle 30 deg, hardening 0.2 (model parameters as for paper: board
        creases less readily than paper).
        """
        base = dict(E=3.5e9, nu=0.3, thickness=3.5e-4, density=300.0 / 0.35, yield_angle=30.0, hardening=0.2)
        return cls(**{**base, **overrides})

    @classmethod
    def rubber_sheet(cls, **overrides) -> ShellMaterial:
        """1 mm silicone / natural-rubber sheet: E = 1.5 MPa, nu = 0.49, density 1100 kg/m^3, plate bending.

        Gent, *Engineering with Rubber* (3rd ed., 2012): small-strain Young's modulus of soft rubbers
        ~1-2 MPa, nearly incompressible (nu -> 0.5; 0.49 keeps the membrane well conditioned),
        density 930 (natural rubber) to 1100-1200 kg/m^3 (silicone). D = 1.5e6 * 1e-9 / (12 (1 - 0.49^2))
        = 1.64e-4 N m. Elastic.
        """
        base = dict(E=1.5e6, nu=0.49, thickness=1e-3, density=1100.0)
        return cls(**{**base, **overrides})

    def replace(self, **changes) -> ShellMaterial:
        """A copy with ``changes`` (validated)."""
        return replace(self, **changes)


def _index_array(owner: str, name: str, value, n: int) -> np.ndarray:
    a = np.asarray(value)
    if a.size == 0:
        return np.zeros(0, np.int32)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{owner}.{name} must be a 1D array of vertex indices, got dtype {a.dtype} shape {a.shape}")
    bad = (a < 0) | (a >= n)
    if bad.any():
        raise ValueError(f"{owner}.{name}: vertex index {int(a[bad][0])} is outside 0..{n - 1}")
    u, c = np.unique(a, return_counts=True)
    if (c > 1).any():
        raise ValueError(f"{owner}.{name} lists vertex {int(u[c > 1][0])} twice")
    return a.astype(np.int32)


@dataclass(eq=False)  # identity: comparing index arrays field by field has no single truth value
class ShellBody:
    """One thin-shell body for :meth:`physim.Scene.add_shell`.

    Attributes:
        mesh: the rest shape (:class:`ShellMesh`); the body starts there.
        material: a :class:`ShellMaterial`.
        pinned: vertex indices fixed in space (kinematic).
        attach: ``{tool index: vertex indices}``: those vertices follow the tool rigidly
            (``x = R(tool) X_local + tool position``, ``X_local`` taken at the start), e.g. a gripper's grasp.
        velocity: initial velocity of every free vertex (m/s).
        self_contact: take part in shell <-> shell contact (:mod:`physim.parts.shell_contact`): with
            itself (a fold touching itself) and with every other body that sets it. Off: no pairs
            are searched (and a scene without any such body compiles none of it).
        self_friction: Coulomb coefficient against other sheets (a pair uses the mean of its two
            bodies'); the parameter ``shell.self_friction``.
        self_contact_stiffness: scale of the contact barrier (Pa/m; the parameter
            ``shell.self_contact_stiffness``): the pressure at half the margin is 1.2 times it times
            the margin.
        pad_friction: Coulomb coefficient against FEM pads (soft fingertips, :class:`physim.FEMBody`);
            the parameter ``shell.pad_friction``. Every shell body touches every FEM body's surface (the
            penalty of the tools, ``shell.contact_stiffness``).
        self_contact_margin: the barrier acts while the gap between the sheets' surfaces (mid-surface
            distance less the two half thicknesses) is below this (m).

    After construction ``pinned`` is an int32 array (empty if none) and ``attach`` a dict of int32 arrays.
    """

    mesh: ShellMesh
    material: ShellMaterial
    pinned: np.ndarray | None = None
    attach: dict[int, np.ndarray] | None = None
    velocity: tuple = (0.0, 0.0, 0.0)
    self_contact: bool = False
    self_friction: float = 0.3
    self_contact_stiffness: float = 1e7
    self_contact_margin: float = 5e-4
    pad_friction: float = 0.5
    _hinges: np.ndarray = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.mesh, ShellMesh):
            raise TypeError(f"ShellBody.mesh must be a physim.ShellMesh, got {type(self.mesh).__name__}")
        if not isinstance(self.material, ShellMaterial):
            raise TypeError(f"ShellBody.material must be a physim.ShellMaterial, got {type(self.material).__name__}")
        n = self.mesh.n_vertices
        self.pinned = _index_array("ShellBody", "pinned", [] if self.pinned is None else self.pinned, n)
        attach = {} if self.attach is None else self.attach
        if not isinstance(attach, dict):
            raise TypeError(f"ShellBody.attach must be a dict {{tool index: vertex indices}}, got "
                            f"{type(attach).__name__}")
        clean: dict[int, np.ndarray] = {}
        owner = {int(i): "pinned" for i in self.pinned}
        for tool, idx in attach.items():
            if not isinstance(tool, (int, np.integer)) or isinstance(tool, bool) or tool < 0:
                raise ValueError(f"ShellBody.attach: key {tool!r} must be a tool index (int >= 0)")
            a = _index_array("ShellBody", f"attach[{tool}]", idx, n)
            for i in a.tolist():
                if i in owner:
                    raise ValueError(f"ShellBody.attach[{tool}]: vertex {i} is already {owner[i]}; a vertex "
                                     f"can be pinned or attached to one tool, not both")
                owner[i] = f"attached to tool {tool}"
            if len(a):
                clean[int(tool)] = a
        self.attach = clean
        vel = np.asarray(self.velocity, dtype=np.float64)
        if vel.shape != (3,) or not np.isfinite(vel).all():
            raise ValueError(f"ShellBody.velocity must be 3 finite numbers (m/s), got {self.velocity!r}")
        self.velocity = tuple(float(x) for x in vel)
        if not isinstance(self.self_contact, (bool, np.bool_)):
            raise ValueError(f"ShellBody.self_contact must be True or False, got {self.self_contact!r}")
        self.self_contact = bool(self.self_contact)
        _positive("ShellBody", "self_friction", self.self_friction, allow_zero=True)
        _positive("ShellBody", "self_contact_stiffness", self.self_contact_stiffness)
        _positive("ShellBody", "self_contact_margin", self.self_contact_margin)
        _positive("ShellBody", "pad_friction", self.pad_friction, allow_zero=True)
        if len(owner) == n:
            raise ValueError("ShellBody: every vertex is pinned or attached; nothing is left to simulate")

    @property
    def n_vertices(self) -> int:
        """Number of vertices."""
        return self.mesh.n_vertices

    @property
    def n_triangles(self) -> int:
        """Number of triangles."""
        return self.mesh.n_triangles

    @property
    def n_hinges(self) -> int:
        """Number of hinges (interior edges)."""
        if self._hinges is None:
            self._hinges = self.mesh.hinges()
        return len(self._hinges)

    def kinematic(self) -> np.ndarray:
        """Sorted int32 indices of every pinned or attached vertex."""
        parts = [self.pinned, *self.attach.values()]
        return np.sort(np.concatenate(parts)).astype(np.int32)

    def mass(self) -> float:
        """Total mass (kg): areal density times rest area."""
        return float(self.material.areal_density() * self.mesh.areas().sum())

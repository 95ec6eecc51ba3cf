"""Triangle meshes of physim's tools (in their local frame) and their pose matrices.

3D tools with an axis (capsule, cylinder, cup) and spheres are surfaces of revolution
about the local y axis, built from a 2D profile; boxes are pyvista boxes. In 2D every
tool is its outline polygon, triangulated and extruded a little along z so that it
is a thin slab lying in the plane z = :data:`PLANE_Z` once posed.
"""

from __future__ import annotations

import math

import numpy as np
import pyvista as pv

__all__ = ["PLANE_Z", "SLAB_DEPTH", "tool_mesh", "tool_outline_2d", "tool_profile", "pose_matrix",
           "quaternion_matrix", "embed", "density_surface", "image_patch", "finish_line"]

#: 2D scenes are drawn in this plane of the 3D render world
PLANE_Z = 0.5
#: thickness along z of a 2D tool's slab
SLAB_DEPTH = 0.04


def embed(points: np.ndarray, dim: int) -> np.ndarray:
    """(n, dim) points -> (n, 3) float32 render coordinates (2D points go to z = PLANE_Z)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, dim)
    if dim == 3:
        return pts.astype(np.float32)
    out = np.full((len(pts), 3), PLANE_Z, dtype=np.float32)
    out[:, :2] = pts
    return out


def quaternion_matrix(q) -> np.ndarray:
    """3x3 rotation of a quaternion (w, x, y, z), normalized first (the solver's convention)."""
    q = np.asarray(q, dtype=np.float64).reshape(4)
    n = np.linalg.norm(q)
    w, x, y, z = q / n if n > 0 else (1.0, 0.0, 0.0, 0.0)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def pose_matrix(position, rotation, dim: int) -> np.ndarray:
    """4x4 local-to-world matrix of a tool pose as returned by ``Scene.tool_poses``.

    Args:
        position: dim values.
        rotation: 4 values: the angle (rad, about z) in column 0 in 2D, a unit
            quaternion (w, x, y, z) in 3D.
        dim: 2 or 3; a 2D pose is placed in the plane z = PLANE_Z.
    """
    m = np.eye(4)
    rot = np.asarray(rotation, dtype=np.float64).reshape(-1)
    pos = np.asarray(position, dtype=np.float64).reshape(-1)
    if dim == 2:
        c, s = math.cos(rot[0]), math.sin(rot[0])
        m[:2, :2] = [[c, -s], [s, c]]
        m[:3, 3] = (pos[0], pos[1], PLANE_Z)
    else:
        m[:3, :3] = quaternion_matrix(rot)
        m[:3, 3] = pos[:3]
    return m


def _arc(cx: float, cy: float, r: float, a0: float, a1: float, n: int) -> list[tuple[float, float]]:
    """n + 1 points of a circular arc from angle a0 to a1 (radians)."""
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(a0, a1, n + 1)]


def tool_profile(tool) -> list[tuple[float, float]]:
    """(radius, y) profile of a tool of revolution about its local y axis, from the
    bottom of the axis to its top (the cup's profile runs outside, over the rim, down the
    inside to the inner bottom)."""
    shape = tool.shape
    if shape == "sphere":
        r = float(tool.radius)
        return [(r * math.sin(t), -r * math.cos(t)) for t in np.linspace(0.0, math.pi, 25)]
    if shape == "capsule":
        r, hl = float(tool.radius), float(tool.half_length)
        bottom = [(r * math.sin(t), -hl - r * math.cos(t)) for t in np.linspace(0.0, math.pi / 2, 13)]
        top = [(r * math.cos(t), hl + r * math.sin(t)) for t in np.linspace(0.0, math.pi / 2, 13)]
        return bottom + top
    if shape == "cylinder":
        r, h = float(tool.radius), float(tool.half_height)
        return [(0.0, -h), (r, -h), (r, h), (0.0, h)]
    if shape == "cup":
        r, h, t = float(tool.radius), float(tool.half_height), float(tool.thickness)
        return [(0.0, -h), (r + t, -h), (r + t, h), (r, h), (r, -h + t), (0.0, -h + t)]
    raise ValueError(f"no profile of revolution for a {shape!r} tool")


def _revolve(profile: list[tuple[float, float]], segments: int = 48) -> pv.PolyData:
    """Surface swept by rotating the (radius, y) ``profile`` about the y axis."""
    points: list[tuple[float, float, float]] = []
    rings: list[list[int] | int] = []  # per profile point: ring point ids, or one id on the axis
    theta = np.linspace(0.0, 2 * math.pi, segments, endpoint=False)
    for r, y in profile:
        if r <= 1e-12:
            rings.append(len(points))
            points.append((0.0, y, 0.0))
        else:
            start = len(points)
            points.extend((r * math.cos(a), y, -r * math.sin(a)) for a in theta)
            rings.append(list(range(start, start + segments)))
    faces: list[int] = []
    for a, b in zip(rings[:-1], rings[1:], strict=True):
        for j in range(segments):
            k = (j + 1) % segments
            if isinstance(a, int) and isinstance(b, int):
                continue
            if isinstance(a, int):
                faces += [3, a, b[k], b[j]]
            elif isinstance(b, int):
                faces += [3, a[j], a[k], b]
            else:
                faces += [4, a[j], a[k], b[k], b[j]]  # outward for an upward profile
    mesh = pv.PolyData(np.asarray(points, dtype=np.float64), faces=np.asarray(faces, dtype=np.int64))
    return mesh.triangulate().clean()


def tool_outline_2d(tool) -> np.ndarray:
    """(m, 2) counter-clockwise outline of a 2D tool in its local frame."""
    shape = tool.shape
    if shape == "sphere":
        return np.asarray(_arc(0.0, 0.0, float(tool.radius), 0.0, 2 * math.pi, 64)[:-1])
    if shape == "box":
        hx, hy = (float(v) for v in tool.half_extents[:2])
        return np.array([(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)])
    if shape == "capsule":
        r, hl = float(tool.radius), float(tool.half_length)
        top = _arc(0.0, hl, r, 0.0, math.pi, 24)
        bottom = _arc(0.0, -hl, r, math.pi, 2 * math.pi, 24)
        return np.asarray(top + bottom)
    if shape == "cylinder":
        r, h = float(tool.radius), float(tool.half_height)
        return np.array([(-r, -h), (r, -h), (r, h), (-r, h)])
    if shape == "cup":
        r, h, t = float(tool.radius), float(tool.half_height), float(tool.thickness)
        big = r + t
        return np.array([(-big, -h), (big, -h), (big, h), (r, h), (r, -h + t), (-r, -h + t), (-r, h), (-big, h)])
    raise ValueError(f"unknown tool shape {shape!r}")


def _slab(outline: np.ndarray, depth: float) -> pv.PolyData:
    """The counter-clockwise polygon ``outline`` as a closed slab of thickness ``depth``
    centered on z = 0: a triangulated cap on each face plus one quad per outline edge."""
    m = len(outline)
    flat = np.zeros((m, 3))
    flat[:, :2] = outline
    tris = pv.PolyData(flat, faces=np.concatenate([[m], np.arange(m)])).triangulate()
    cap = tris.faces.reshape(-1, 4)[:, 1:]  # triangulating a polygon keeps its points and their order
    e1, e2 = outline[cap[:, 1]] - outline[cap[:, 0]], outline[cap[:, 2]] - outline[cap[:, 0]]
    area2 = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    cap = np.where((area2 < 0)[:, None], cap[:, ::-1], cap)  # every cap triangle counter-clockwise (+z)
    pts = np.concatenate([flat - (0, 0, depth / 2), flat + (0, 0, depth / 2)])
    faces = [np.column_stack([np.full(len(cap), 3), cap[:, ::-1]]).ravel(),  # bottom faces -z
             np.column_stack([np.full(len(cap), 3), cap + m]).ravel()]  # top faces +z
    i = np.arange(m)
    j = (i + 1) % m
    faces.append(np.column_stack([np.full(m, 4), i, j, j + m, i + m]).ravel())  # sides face outward
    return pv.PolyData(pts, faces=np.concatenate(faces)).triangulate()


def tool_mesh(tool, dim: int | None = None) -> pv.PolyData:
    """Closed triangle mesh of ``tool`` in its local frame (pose it with :func:`pose_matrix`).

    Args:
        tool: a physim tool (SphereTool, BoxTool, CapsuleTool, CylinderTool, CupTool).
        dim: 2 or 3 (default: the tool's own dimension). 2D tools become thin slabs
            of thickness :data:`SLAB_DEPTH` centered on z = 0.
    """
    dim = tool.dim if dim is None else dim
    if dim == 2:
        return _slab(tool_outline_2d(tool), SLAB_DEPTH)
    if tool.shape == "box":
        hx, hy, hz = (float(v) for v in tool.half_extents[:3])
        return pv.Box(bounds=(-hx, hx, -hy, hy, -hz, hz)).triangulate()
    return _revolve(tool_profile(tool))


# ---------------------------------------------------------------------- goal geometry
def density_surface(grid: np.ndarray, level: float) -> pv.PolyData:
    """Surface where a 3D cell-centred density ``grid`` ((R, R, R) over the unit cube, e.g. a
    target shape's grid mass) crosses ``level``: a closed, smoothed triangle mesh in world
    coordinates (empty if no cell reaches ``level``)."""
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 3 or len(set(g.shape)) != 1 or not np.isfinite(g).all():
        raise ValueError(f"density_surface: grid must be a finite (R, R, R) array, got shape {g.shape}")
    if not (math.isfinite(level) and level > 0):
        raise ValueError(f"density_surface: level must be positive, got {level!r}")
    r = g.shape[0]
    padded = np.pad(g, 1)  # zero border: the surface closes at the domain's walls
    image = pv.ImageData(dimensions=padded.shape, spacing=(1.0 / r,) * 3, origin=(-0.5 / r,) * 3)
    image.point_data["density"] = padded.ravel(order="F")
    surface = image.contour([float(level)], scalars="density")
    if surface.n_points == 0:
        return pv.PolyData()
    return surface.smooth(n_iter=30, relaxation_factor=0.1).compute_normals(auto_orient_normals=True)


def image_patch(image: np.ndarray, height: float, threshold: float) -> pv.PolyData:
    """The pixels of a top-down ``image`` ((R, R) over x (rows) and z (columns) of the unit
    square) above ``threshold``, as flat squares at ``y = height`` (e.g. a target pattern drawn
    on a liquid's surface)."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.shape[0] != img.shape[1]:
        raise ValueError(f"image_patch: image must be square (R, R), got shape {img.shape}")
    r = img.shape[0]
    i, k = np.nonzero(img > threshold)
    if len(i) == 0:
        return pv.PolyData()
    x0, z0 = i / r, k / r
    corners = np.stack([np.stack([x0, x0 + 1 / r, x0 + 1 / r, x0], 1), np.full((len(i), 4), height),
                        np.stack([z0, z0, z0 + 1 / r, z0 + 1 / r], 1)], axis=2).reshape(-1, 3)
    faces = np.hstack([np.full((len(i), 1), 4), np.arange(4 * len(i)).reshape(-1, 4)]).ravel()
    return pv.PolyData(corners, faces=faces).clean()


def finish_line(x: float, floor: float, dim: int, height: float = 0.3, lo: float = 0.0, hi: float = 1.0
                ) -> pv.PolyData:
    """A finish line at ``x`` on the floor at height ``floor`` (render coordinates): in 3D a
    stripe on the floor across z in [``lo``, ``hi``] with a post ``height`` tall at each end
    (nothing in between to hide the robot); in 2D a thin upright bar ``height`` tall in front of
    the plane z = :data:`PLANE_Z`."""
    w = 0.008
    if dim == 3:
        stripe = pv.Box(bounds=(x - w, x + w, floor, floor + 0.002, lo, hi))
        posts = [pv.Box(bounds=(x - w / 2, x + w / 2, floor, floor + height, z - w / 2, z + w / 2)) for z in (lo, hi)]
        return stripe.merge(posts)
    return pv.Box(bounds=(x - w * 0.75, x + w * 0.75, floor, floor + height, PLANE_Z + 0.01, PLANE_Z + 0.03))

"""Shapes that particle bodies are sampled from.

Every shape samples points on a regular lattice (spacing ``dx / 2`` by default:
two particles per grid cell per axis, the usual MPM density), optionally jittered.
Works in 2D and 3D: a shape's dimension is the length of its ``center``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Shape", "Box", "Sphere", "Cylinder", "Mesh"]


def _vec(name: str, value, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if dim is not None and arr.shape != (dim,):
        raise ValueError(f"{name} must have {dim} components, got {arr.tolist()}")
    if arr.size not in (2, 3):
        raise ValueError(f"{name} must have 2 or 3 components, got {arr.tolist()}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


class Shape:
    """Base class. Subclasses implement :meth:`contains` and :meth:`bounds`."""

    center: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.center.shape[0])

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def contains(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample(self, spacing: float, jitter: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
        """Lattice points (spacing ``spacing``) inside the shape, shape (n, dim)."""
        lo, hi = self.bounds()
        axes = [np.arange(l + 0.5 * spacing, h, spacing) for l, h in zip(lo, hi, strict=True)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, self.dim)
        if jitter > 0:
            rng = rng or np.random.default_rng(0)
            grid = grid + (rng.random(grid.shape) - 0.5) * jitter * spacing
        pts = grid[self.contains(grid)]
        if len(pts) == 0:
            raise ValueError(f"{self!r} is smaller than the particle spacing {spacing:g}: no particles sampled")
        return pts


@dataclass(init=False)
class Box(Shape):
    """Axis-aligned box with ``center`` and full edge lengths ``size``."""

    center: np.ndarray
    size: np.ndarray

    def __init__(self, center: Sequence[float], size: Sequence[float]):
        self.center = _vec("Box.center", center)
        self.size = _vec("Box.size", size, self.dim)
        if np.any(self.size <= 0):
            raise ValueError(f"Box.size must be positive, got {self.size.tolist()}")

    def bounds(self):
        return self.center - self.size / 2, self.center + self.size / 2

    def contains(self, points):
        return np.all(np.abs(points - self.center) <= self.size / 2 + 1e-12, axis=1)


@dataclass(init=False)
class Sphere(Shape):
    """Ball (disk in 2D)."""

    center: np.ndarray
    radius: float

    def __init__(self, center: Sequence[float], radius: float):
        self.center = _vec("Sphere.center", center)
        if not radius > 0:
            raise ValueError(f"Sphere.radius must be positive, got {radius!r}")
        self.radius = float(radius)

    def bounds(self):
        return self.center - self.radius, self.center + self.radius

    def contains(self, points):
        return np.linalg.norm(points - self.center, axis=1) <= self.radius


@dataclass(init=False)
class Cylinder(Shape):
    """Cylinder with its axis along y (a rectangle in 2D)."""

    center: np.ndarray
    radius: float
    height: float

    def __init__(self, center: Sequence[float], radius: float, height: float):
        self.center = _vec("Cylinder.center", center)
        if not (radius > 0 and height > 0):
            raise ValueError(f"Cylinder radius and height must be positive, got {radius!r}, {height!r}")
        self.radius, self.height = float(radius), float(height)

    def bounds(self):
        half = np.full(self.dim, self.radius)
        half[1] = self.height / 2
        return self.center - half, self.center + half

    def contains(self, points):
        d = points - self.center
        radial = np.delete(d, 1, axis=1)
        return (np.linalg.norm(radial, axis=1) <= self.radius) & (np.abs(d[:, 1]) <= self.height / 2)


class Mesh(Shape):
    """A closed triangle mesh (any file trimesh reads), scaled so its largest
    bounding-box edge is ``size`` and centered at ``center``. 3D only."""

    def __init__(self, path_or_mesh, center: Sequence[float], size: float):
        import trimesh

        mesh = path_or_mesh if isinstance(path_or_mesh, trimesh.Trimesh) else trimesh.load(path_or_mesh, force="mesh")
        if not mesh.is_watertight:
            raise ValueError(f"mesh {path_or_mesh!r} is not watertight: cannot tell inside from outside")
        self.center = _vec("Mesh.center", center, 3)
        if not size > 0:
            raise ValueError(f"Mesh.size must be positive, got {size!r}")
        mesh = mesh.copy()
        lo, hi = mesh.bounds
        mesh.apply_translation(-(lo + hi) / 2)
        mesh.apply_scale(float(size) / float(np.max(hi - lo)))
        mesh.apply_translation(self.center)
        self.mesh = mesh

    def __repr__(self):
        return f"Mesh(center={self.center.tolist()}, faces={len(self.mesh.faces)})"

    def bounds(self):
        lo, hi = self.mesh.bounds
        return np.asarray(lo), np.asarray(hi)

    def contains(self, points):
        return self.mesh.contains(points)

"""Brute-force geometry the shell contact tests check the solver against (numpy only)."""

import numpy as np


def point_triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """(k,) distances of points p (k, 3) to triangles tri (k, 3, 3), by brute force: the least of
    the distance to the plane (when the projection is inside) and to the three edges."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    n = np.cross(b - a, c - a)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    h = ((p - a) * n).sum(1)
    q = p - h[:, None] * n
    inside = np.ones(len(p), bool)
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= (np.cross(v - u, q - u) * n).sum(1) >= 0
    best = np.where(inside, np.abs(h), np.inf)
    for u, v in ((a, b), (b, c), (c, a)):
        e = v - u
        s = np.clip(((p - u) * e).sum(1) / (e * e).sum(1), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(p - (u + s[:, None] * e), axis=1))
    return best

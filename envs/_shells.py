"""Shared pieces of the thin-shell tasks (Folding, Sliding, CardBending).

A camera that looks at a sheet from the front and above, and the goal drawn as a translucent
target sheet (the target's triangles) rather than as points.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sheet_camera", "draw_target_sheet", "GOAL_SHEET_COLOR"]

#: RGB (0-1) of the target sheet
GOAL_SHEET_COLOR = (0.2, 0.7, 0.3)


def sheet_camera(center, distance: float = 0.25, elevation: float = 0.6) -> dict:
    """``Renderer`` keyword arguments for a camera in front of and above ``center`` (m)."""
    c = np.asarray(center, dtype=np.float64)
    eye = c + distance * np.array([0.35, elevation, 1.0])
    return {"camera": [tuple(eye), tuple(c), (0.0, 1.0, 0.0)]}


def draw_target_sheet(renderer, x: np.ndarray, triangles: np.ndarray, name: str = "goal", opacity: float = 0.45):
    """Draw the target sheet (vertices ``x`` (n, 3), ``triangles`` (m, 3)) into a
    :class:`physim.render.Renderer` as a translucent green surface named ``name`` (drawing it
    again replaces it)."""
    import pyvista as pv

    faces = np.hstack([np.full((len(triangles), 1), 3), np.asarray(triangles)]).astype(np.int64).ravel()
    mesh = pv.PolyData(np.asarray(x, dtype=np.float64), faces)
    return renderer.plotter.add_mesh(mesh, color=GOAL_SHEET_COLOR, opacity=opacity, name=name, reset_camera=False,
                                     smooth_shading=True)

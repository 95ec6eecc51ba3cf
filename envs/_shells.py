"""Shared pieces of the thin-shell tasks (Folding, Sliding, CardBending).

:class:`ShellTaskEnv`, their common base: the time step and the rule that fixes an episode's
simulated length whatever the horizon, the observation (the sheet's vertices), the scene's
frame, and the goal drawn as a translucent target sheet (the target's triangles) rather than as
points; a camera that looks at a sheet from the front and above; signed dihedral angles in
torch (differentiable, for losses on a sheet's bends).
"""

from __future__ import annotations

import math

import numpy as np
import torch

import physim as ps

from .base import PhysimEnv

__all__ = ["ShellTaskEnv", "sheet_camera", "draw_target_sheet", "dihedral_angles_torch", "GOAL_SHEET_COLOR"]

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


def dihedral_angles_torch(x: torch.Tensor, hinges: torch.Tensor) -> torch.Tensor:
    """Signed dihedral angles (rad, (h,)) of ``hinges`` ((h, 4) vertex indices ``[e0, e1, a, b]``)
    at positions ``x`` ((n, 3)): ``atan2((n1 x n2) . e / |e|, n1 . n2)`` with ``e = x1 - x0``,
    ``n1 = e x (xa - x0)``, ``n2 = (xb - x0) x e``, the solver's own definition
    (:func:`physim.parts.shell.dihedral_angles`), differentiable by torch."""
    x0, x1, xa, xb = (x[hinges[:, k]] for k in range(4))
    e = x1 - x0
    n1 = torch.cross(e, xa - x0, dim=-1)
    n2 = torch.cross(xb - x0, e, dim=-1)
    return torch.atan2((torch.cross(n1, n2, dim=-1) * e).sum(-1) / e.norm(dim=-1), (n1 * n2).sum(-1))


class ShellTaskEnv(PhysimEnv):
    """Base of the thin-shell tasks: implicit Euler steps of ``dt`` (5 ms), observations of the
    sheet's vertices (``shell.x``, ``shell.v``), a goal drawn as the target sheet.

    Time: an episode lasts at least ``episode_seconds`` whatever the horizon: each env step is
    :meth:`substeps_for` ``(horizon)`` = ``ceil(episode_seconds / (horizon dt))`` substeps (one
    at the default horizon when ``episode_seconds = default_horizon * dt``), so a shorter
    horizon covers the same motion with fewer, longer steps. ``episode_seconds = None``: one
    substep per step (a task whose steps are not time, e.g. CardBending's guesses).

    Subclasses build their scene on :meth:`new_scene` (which sets ``self.substeps``), set
    ``self._target_x`` ((n, 3): the target sheet) in ``_sample_goal`` and draw it with the body's
    triangles (:meth:`_draw_goal`).
    """

    default_horizon = 20
    obs_entries = ("shell.x", "shell.v")
    obs_particles = 128
    #: implicit Euler substep (s)
    dt = 5e-3
    #: simulated seconds per episode (see the class docstring); None: one substep per step
    episode_seconds: float | None = 0.1

    def substeps_for(self, horizon: int) -> int:
        """Substeps per env step at ``horizon`` steps (class docstring)."""
        if self.episode_seconds is None:
            return 1
        return max(1, math.ceil(self.episode_seconds / (int(horizon) * self.dt) - 1e-9))

    def new_scene(self, **kwargs) -> ps.Scene:
        """An empty 3D scene (grid 32: the shells do not use the grid, it places the floor and
        walls) with the task's ``dt`` and ``substeps_for(horizon)`` substeps per step (stored as
        ``self.substeps``); ``kwargs`` go to :class:`physim.Scene`."""
        self.substeps = self.substeps_for(self.horizon)
        return ps.Scene(dim=3, grid_res=32, dt=self.dt, substeps_per_step=self.substeps, **kwargs)

    def _goal_points(self):
        return self._target_x

    def _draw_goal(self) -> None:
        draw_target_sheet(self._renderer, self._goal_points(), self.scene.shell_bodies[0].mesh.triangles)


class SheetPoseGoal:
    """Mixin of the tasks that drag a sheet to a seeded pose with a pad (Sliding, Separating): the
    pad's action map (velocity x, y, z and turn rate), a goal of a translation (dx, dz) and a yaw
    drawn from ``goal_shift`` / ``goal_yaw`` with random signs, the target sheet, and the sheet's
    pose (centre, best-fit yaw) for the metrics. The task says which sheet moves:
    :meth:`_moved_sheet` returns its rest vertices and rest centre."""

    def _moved_sheet(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _action_map(self):
        M = np.zeros((4, self.scene.action_dim))
        M[0, 0] = M[2, 2] = self.speed
        M[1, 1] = self.vertical_speed
        M[3, 4] = self.spin
        return M

    def target_positions(self, dx: float, dz: float, yaw: float) -> np.ndarray:
        """(n, 3) the moved sheet at rest turned by ``yaw`` (rad, about +y) about its centre and moved
        by (dx, 0, dz) (m)."""
        rest, center = self._moved_sheet()
        c, s = math.cos(yaw), math.sin(yaw)
        R = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        return (rest - center) @ R.T + center + np.array([dx, 0.0, dz])

    def _sample_goal(self, rng):
        shift = rng.uniform(*self.goal_shift, size=2) * rng.choice([-1.0, 1.0], size=2)
        yaw = float(rng.uniform(*self.goal_yaw) * rng.choice([-1.0, 1.0]))
        self.goal_params = np.array([shift[0], shift[1], yaw])
        self._target_x = self.target_positions(shift[0], shift[1], yaw)
        self._target_t = torch.as_tensor(self._target_x)

    def _goal_features(self):
        return self.goal_params

    def _pose(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(centre (3,), yaw about +y) of the moved sheet's vertices ``x``: the mean, and the
        best-fit rotation angle of the in-plane offsets (2D Procrustes)."""
        rest, center = self._moved_sheet()
        c = x.mean(axis=0)
        p = rest[:, [0, 2]] - center[[0, 2]]
        q = x[:, [0, 2]] - c[[0, 2]]
        # a rotation by yaw about +y maps (x, z) to (c x + s z, -s x + c z)
        num = (p[:, 1] * q[:, 0] - p[:, 0] * q[:, 1]).sum()
        den = (p * q).sum()
        return c, float(math.atan2(num, den))

    def _pose_metrics(self, x: np.ndarray) -> dict:
        """``offset`` (m: the moved sheet's centre to the target's), ``yaw``, ``target_yaw`` (rad)."""
        c, yaw = self._pose(x)
        target = self._moved_sheet()[1] + np.array([self.goal_params[0], 0.0, self.goal_params[1]])
        return {"offset": float(np.linalg.norm((c - target)[[0, 2]])), "yaw": yaw,
                "target_yaw": float(self.goal_params[2])}

"""Separating (ThinShellLab): slide the top sheet of a two-sheet stack to a seeded target pose
with a pad pressing on it, by friction, while the bottom sheet stays where it lies.

Three frictional contacts in series: the pad grips the top sheet (tool friction), the top sheet
slides on the bottom one (shell <-> shell contact of :mod:`physim.parts.shell_contact`: a
barrier on the sheets' distance and lagged friction, ``shell.self_friction``), the bottom sheet
is held by the table (the floor's ``shell.wall_friction``). The top sheet can only leave the
bottom one behind when the table holds the bottom sheet harder than the top sheet drags it:
the pad's normal force N goes through both sheets, so the top sheet transmits at most
``mu_sheets (N + W_top)`` to the bottom one, which the table resists with up to
``mu_table (N + W_top + W_bottom)``; with ``mu_pad > mu_table > mu_sheets`` (1.0, 0.6, 0.2) the
pad carries the top sheet and the bottom one stays. The optimizer still has to press (no grip
without normal force; the top sheet slides under a pad that only grazes it), move and turn the
pad along the right path, and keep the pad on the top sheet: a pad that slides past the top
sheet's edge onto the bottom one can drag the bottom sheet (pad 1.0 against table 0.6), whose
displacement the loss counts.
"""

from __future__ import annotations

import numpy as np
import torch

import physim as ps
from physim.parts.shell import MARGIN
from physim.shells import ShellBody, ShellMaterial, ShellMesh

from ._shells import SheetPoseGoal, ShellTaskEnv, draw_target_sheet, sheet_camera
from .base import Arg

__all__ = ["SeparatingEnv"]


class SeparatingEnv(SheetPoseGoal, ShellTaskEnv):
    """Slide the top sheet of a stack of two rubber sheets to a seeded target pose with a pad
    pressing on it, leaving the bottom sheet in place.

    Sheets: rubber (:meth:`physim.ShellMaterial.rubber_sheet`: 1 mm, 1100 kg/m^3, E = 1.5 MPa,
    nu = 0.49), damping 2 /s, ``res`` x ``res`` vertices each (7 x 7 = 49 by default; 72
    triangles): the bottom one 12 x 12 cm lying on the floor (friction ``table_friction``), the
    top one 8 x 8 cm lying on it (shell <-> shell contact, friction ``sheet_friction``; its centre
    3 mm / 2 mm off the bottom sheet's so that no vertex of one sheet starts exactly over a
    vertex or edge of the other), inside the barrier's 0.5 mm margin where the pad's weight
    puts it. Pad: a 4 x 2 x 4 cm box (tool 0, friction ``pad_friction``) resting on the top
    sheet's centre, 0.02 mm into its contact band.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (4,))``: the pad's velocity (x, z: x 0.3 m/s; y: x 0.05
                        m/s, down presses) and its turn rate about the vertical (x 5 rad/s)
    Observation space   ``Box(-inf, inf, (599,))`` at ``res = 7``: both sheets' vertices (x, v:
                        588, bottom sheet first), the pad's pose (7), the target pose (dx, dz,
                        yaw: 3), phase t / T
    Reward              decrease of the task loss in the step
    Loss                ``(mean |x_top - x*|^2 + mean |x_bottom - X_bottom|^2) / mean |X_top -
                        x*|^2``: the top sheet's mean squared distance to its target (the
                        rest top sheet moved and turned), plus the bottom sheet's mean squared
                        displacement from where it lay, both over the top sheet's at the start;
                        1 for a stack left alone (1.000002 at zero actions: it settles by
                        microns), 0 at the target with the bottom sheet in place, and ~1 again
                        for dragging both sheets to the target together
    Start state         both sheets flat at rest, pad resting on the top one; target:
                        translation (dx, dz) with |dx|, |dz| ~ U(0.8, 1.6) cm (random signs)
                        and yaw ~ +-U(0.1, 0.2) rad (seeded; the pad's full speed covers 3 cm,
                        0.5 rad; the target overhangs the bottom sheet's edge by 6 mm at
                        most)
    Episode end         truncated after ``horizon`` steps (default 20, 0.1 s); never terminates
    Info                ``loss``, ``offset`` (m: distance of the top sheet's centre to the
                        target's), ``yaw`` and ``target_yaw`` (rad, the top sheet's),
                        ``bottom_shift`` (m: the bottom sheet's largest vertex displacement)
    ==================  =====================================================================

    Time (:class:`ShellTaskEnv`): one substep of dt 5 ms per step (implicit Euler), 0.1 s per
    default episode; a shorter horizon takes ``ceil(0.1 s / (T dt))`` substeps per step (3 at
    T = 8), so an episode always lasts at least 0.1 s (``episode_seconds``). Each substep is a
    Newton solve with shell <-> shell contact: 1.2-2.4 steps/s with random actions on a shared
    2-core CPU (f64; load 9 and 2), 5-15 Newton iterations per step while the pad drags (2-4 at
    rest).
    """

    args = {
        "res": Arg("vertices per side of each sheet", "int", 3, 15),
        "pad_friction": Arg("Coulomb coefficient between the pad and the top sheet (> sheet_friction)", "float",
                            0.0, 5.0),
        "sheet_friction": Arg("Coulomb coefficient between the two sheets", "float", 0.0, 5.0),
        "table_friction": Arg("Coulomb coefficient between the sheets and the table (floor)", "float", 0.0, 5.0),
        "episode_seconds": Arg("simulated seconds per episode: each step takes ceil(episode_seconds / (horizon "
                               "dt)) substeps of dt = 5 ms", "float", 0.005, 10.0),
    }

    res = 7
    pad_friction = 1.0
    sheet_friction = 0.2
    table_friction = 0.6
    episode_seconds = 0.1
    #: sheets' sizes (m) and the top sheet's centre offset from the bottom's (x, z; m)
    bottom_size = 0.12
    top_size = 0.08
    top_offset = (0.003, -0.002)
    #: where the top sheet starts in the barrier's margin (gap over margin: near the pad's weight's equilibrium)
    start_gap = 0.95
    #: pad half extents (m) and how far it starts inside the contact band (m)
    pad_half = (0.02, 0.01, 0.02)
    pad_press = 2e-5
    #: action scales: m/s (x, z), m/s (y), rad/s
    speed = 0.3
    vertical_speed = 0.05
    spin = 5.0
    damping = 2.0
    #: goal ranges: |translation| per axis (m), |yaw| (rad)
    goal_shift = (0.008, 0.016)
    goal_yaw = (0.1, 0.2)

    def _check_args(self) -> None:
        if not self.pad_friction > self.sheet_friction:
            raise ValueError(f"SeparatingEnv: pad_friction ({self.pad_friction!r}) must exceed sheet_friction "
                             f"({self.sheet_friction!r}): otherwise the top sheet slips under the pad however "
                             "hard it presses")

    # ------------------------------------------------------------------ scene
    def _build_scene(self):
        scene = self.new_scene(wall_friction=self.table_friction)
        mat = ShellMaterial.rubber_sheet(damping=self.damping)
        t = mat.thickness
        eps = 0.5 * t + MARGIN
        margin = ShellBody.self_contact_margin
        # the bottom sheet rests on the floor (its weight compresses the penalty by ~1e-9 m); the top
        # one rests on it inside the barrier's margin, its mid-surface t (two half thicknesses) plus a gap above
        y_bottom = scene.floor + eps
        y_top = y_bottom + t + self.start_gap * margin
        self.center = np.array([0.5, y_bottom, 0.5])
        self.top_center = np.array([0.5 + self.top_offset[0], y_top, 0.5 + self.top_offset[1]])
        n = self.res
        bottom = ShellMesh.rectangle(center=tuple(self.center), size=(self.bottom_size,) * 2, res=(n, n), normal="y")
        top = ShellMesh.rectangle(center=tuple(self.top_center), size=(self.top_size,) * 2, res=(n, n), normal="y")
        hy = self.pad_half[1]
        scene.add_tool(ps.BoxTool(position=(self.top_center[0], y_top + eps - self.pad_press + hy, self.top_center[2]),
                                  half_extents=self.pad_half, friction=self.pad_friction))
        scene.add_shell(ShellBody(bottom, mat, self_contact=True, self_friction=self.sheet_friction))
        scene.add_shell(ShellBody(top, mat, self_contact=True, self_friction=self.sheet_friction))
        scene.build(max_steps=self.horizon)
        self.n_bottom = bottom.n_vertices
        self.thickness = t
        self._bottom_rest = bottom.vertices.copy()
        self._top_rest = top.vertices.copy()
        self._bottom_rest_t = torch.as_tensor(self._bottom_rest)
        self._top_triangles = top.triangles
        return scene

    def _moved_sheet(self):
        return self._top_rest, self.top_center

    def _sample_goal(self, rng):
        super()._sample_goal(rng)
        # the loss's scale: the top sheet's mean squared distance to the target at the start
        self._scale = float(((self._top_rest - self._target_x) ** 2).sum(-1).mean())

    def _draw_goal(self) -> None:
        draw_target_sheet(self._renderer, self._target_x, self._top_triangles)

    def camera_kwargs(self):
        return sheet_camera(self.center, distance=0.22, elevation=0.9)

    # ------------------------------------------------------------------ loss
    def split(self, x):
        """(bottom, top) rows of the sheets' vertices ``x`` ((n, 3) array or tensor)."""
        return x[: self.n_bottom], x[self.n_bottom:]

    def _loss(self, state):
        bottom, top = self.split(state["shell.x"])
        top_err = ((top - self._target_t) ** 2).sum(-1).mean()
        bottom_err = ((bottom - self._bottom_rest_t) ** 2).sum(-1).mean()
        return (top_err + bottom_err) / self._scale

    def _metrics(self, state):
        bottom, top = self.split(np.asarray(state["shell.x"]))
        return {**self._pose_metrics(top),
                "bottom_shift": float(np.linalg.norm(bottom - self._bottom_rest, axis=1).max())}

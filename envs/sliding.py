"""Sliding: drag a rubber mat lying on a table to a seeded target pose with a pad pressing on it.

The pad (a kinematic box) moves the mat only by friction: it presses the mat against the floor
(penalty contact with a thickness offset) and drags it through the lagged, smoothed Coulomb
friction of :mod:`physim.parts.shell`, against the floor's own friction. Lifting the pad off
loses the grip (and the gradient: no contact, no force), pressing harder grips better but also
pins the mat to the floor -- the trade-off the optimizer has to find.
"""

from __future__ import annotations

import numpy as np

import physim as ps
from physim.parts.shell import MARGIN
from physim.shells import ShellBody, ShellMaterial, ShellMesh

from ._shells import SheetPoseGoal, ShellTaskEnv, sheet_camera

__all__ = ["SlidingEnv"]


class SlidingEnv(SheetPoseGoal, ShellTaskEnv):
    """Slide a rubber mat across a table to a seeded target pose with a pad that presses on it.

    Mat: 12 x 12 cm rubber sheet (7 x 7 vertices, 49; 72 triangles), 1 mm thick, 1100 kg/m^3,
    E = 1.5 MPa, nu = 0.49 (:meth:`physim.ShellMaterial.rubber_sheet`), damping 2 /s, lying on the
    floor (floor friction ``shell.wall_friction`` 0.3). Pad: a 5 x 2 x 5 cm box (tool 0, friction
    1.0) resting on the mat's centre, 0.02 mm into the contact band (pressing ~0.4 N on the 9
    vertices under it; the mat weighs 0.16 N).

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (4,))``: the pad's velocity (x, z: x 0.3 m/s; y: x 0.05
                        m/s, down presses) and its turn rate about the vertical (x 5 rad/s)
    Observation space   ``Box(-inf, inf, (305,))``: the mat's vertices (x, v: 294), the pad's
                        pose (7), the target pose (dx, dz, yaw: 3), phase t / T
    Reward              decrease of the task loss in the step
    Loss                mean squared distance of the mat's vertices to their target positions
                        (the rest mat moved by the target translation and turned by the target
                        yaw about its centre), over (2 cm)^2; 0.5-2.3 at the start (1.01 for seed 0)
    Start state         mat flat at rest, pad resting on it; target: translation
                        (dx, dz) with |dx|, |dz| ~ U(0.8, 2) cm (random signs) and yaw
                        ~ +-U(0.1, 0.25) rad (seeded; the pad's full speed covers 3 cm, 0.5 rad)
    Episode end         truncated after ``horizon`` steps (default 20, 0.1 s); never terminates
    Info                ``loss``, ``offset`` (m: distance of the mat's centre to the target's),
                        ``yaw`` and ``target_yaw`` (rad)
    ==================  =====================================================================

    Time (:class:`ShellTaskEnv`): one substep of dt 5 ms per step (implicit Euler), 0.1 s per
    default episode; a shorter horizon takes ``ceil(0.1 s / (T dt))`` substeps per step (3 at
    T = 8), so an episode always lasts at least 0.1 s.
    """

    #: mat (m) and vertices per side
    size = 0.12
    res = 7
    #: pad half extents (m), friction, and how far it starts inside the contact band (m)
    pad_half = (0.025, 0.01, 0.025)
    pad_friction = 1.0
    pad_press = 2e-5
    #: action scales: m/s (x, z), m/s (y), rad/s
    speed = 0.3
    vertical_speed = 0.05
    spin = 5.0
    damping = 2.0
    #: goal ranges: |translation| per axis (m), |yaw| (rad)
    goal_shift = (0.008, 0.02)
    goal_yaw = (0.1, 0.25)
    #: loss length scale (m)
    length_scale = 0.02

    # ------------------------------------------------------------------ scene
    def _build_scene(self):
        scene = self.new_scene()
        mat = ShellMaterial.rubber_sheet(damping=self.damping)
        eps = 0.5 * mat.thickness + MARGIN
        # rest on the floor: the weight compresses the penalty by rho t g / kc (~1e-9 m)
        y = scene.floor + eps
        self.center = np.array([0.5, y, 0.5])
        mesh = ShellMesh.rectangle(center=tuple(self.center), size=(self.size, self.size), res=(self.res, self.res),
                                   normal="y")
        hy = self.pad_half[1]
        scene.add_tool(ps.BoxTool(position=(0.5, y + eps - self.pad_press + hy, 0.5), half_extents=self.pad_half,
                                  friction=self.pad_friction))
        scene.add_shell(ShellBody(mesh, mat))
        scene.build(max_steps=self.horizon)
        self._rest_x = mesh.vertices.copy()
        return scene

    def _moved_sheet(self):
        return self._rest_x, self.center

    def camera_kwargs(self):
        return sheet_camera(self.center, distance=0.22, elevation=0.9)

    # ------------------------------------------------------------------ loss
    def _loss(self, state):
        return ((state["shell.x"] - self._target_t) ** 2).sum(-1).mean() / self.length_scale ** 2

    def _metrics(self, state):
        return self._pose_metrics(np.asarray(state["shell.x"]))

"""Pinch (PlasticineLab): press a dent into a plasticine block with a spherical finger."""

from __future__ import annotations

import numpy as np

import physim as ps

from ._shaping import ShapingEnv
from .base import Arg

__all__ = ["PinchEnv"]


class PinchEnv(ShapingEnv):
    """Press a plasticine block with a sphere tool until its shape matches a target dent.

    The target is made procedurally by the simulator itself: a scripted press at a random
    point of the block's top (seeded by ``reset(seed=...)``), so every goal is reachable.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (3,))``: tool linear velocity, x 1 m/s
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v), tool pose,
                        target dent center (x, z), episode phase t / T
    Reward              decrease of the task loss in the step
    Loss                grid-mass L1 to the target density + 5 x target-SDF-weighted mass
                        + 0.5 x tool-to-plasticine distance (PlasticineLab's three terms)
    Start state         block 0.24 x 0.1 x 0.24 on the floor, tool 4 cm above its center
    Episode end         truncated after ``horizon`` steps (default 40); never terminates
    Info                ``loss``, ``iou`` (occupied-cell intersection over union with the target)
    ==================  =====================================================================
    """

    args = {
        "max_offset": Arg("goal: the dent's center is drawn uniformly within +-max_offset (m, x and z) of "
                          "the block's center", "float", 0.0, 0.08),
        "depth_range": Arg("goal: the scripted press's depth (m) is drawn from this range", "range", 0.0, 0.12),
    }
    paper = {"substeps": 20}
    paper_note = ("PlasticineLab's 64^3 grid (~10k particles there): 12,493 particles, 20 substeps of "
                  "1.9e-4 s (3.75 ms per step, as the default's 10 of 3.75e-4 s).")

    default_horizon = 40
    boundary = "friction"
    speed = 1.0
    finger_radius = 0.04
    max_offset = 0.07
    depth_range = (0.07, 0.1)

    def _add_body_and_tool(self, scene):
        scene.add_body(ps.Box(center=(0.5, 0.15, 0.5), size=(0.24, 0.1, 0.24)),
                       ps.Plasticine(E=1e3, nu=0.2, yield_stress=15.0))
        scene.add_tool(ps.SphereTool(position=(0.5, 0.26, 0.5), radius=self.finger_radius, friction=0.3,
                                     softness=100.0))

    def _action_map(self):
        M = np.zeros((3, self.scene.action_dim))
        M[:, :3] = np.eye(3) * self.speed
        return M

    def _script(self, target_xz: np.ndarray, depth: float) -> np.ndarray:
        """Normalized actions of the scripted press that makes the goal."""
        T = self.horizon
        a = np.zeros((T, 3))
        t1, t2 = max(T // 4, 1), max(T // 2, 2)
        start = np.array([0.5, 0.5])
        a[:t1, [0, 2]] = (target_xz - start) / (t1 * self.scene.substeps_per_step * self.scene.dt * self.speed)
        a[t1:t2, 1] = -depth / ((t2 - t1) * self.scene.substeps_per_step * self.scene.dt * self.speed)
        if T > t2:  # lift back (a horizon of 2 only moves and presses)
            a[t2:, 1] = 0.5 * depth / ((T - t2) * self.scene.substeps_per_step * self.scene.dt * self.speed)
        return np.clip(a, -1, 1)

    def _make_goal(self, rng):
        self.target_xz = np.array([0.5, 0.5]) + rng.uniform(-self.max_offset, self.max_offset, size=2)
        self.goal_params = self.target_xz
        depth = rng.uniform(*self.depth_range)
        return self._script(self.target_xz, depth)

    def _contact(self, x, tool_pos):
        return x, tool_pos[0], self.finger_radius

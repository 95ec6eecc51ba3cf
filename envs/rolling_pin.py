"""RollingPin (PlasticineLab): flatten a block of dough into a target sheet with a rolling pin."""

from __future__ import annotations

import numpy as np

import physim as ps

from ._shaping import ShapingEnv
from .base import Arg

__all__ = ["RollingPinEnv"]


class RollingPinEnv(ShapingEnv):
    """Flatten a plasticine dough block with a rolling pin until it matches a target sheet.

    The pin is a capsule lying along z (its local y axis rotated by 90 degrees about x); the
    agent moves it in the x-y plane and spins it about its own axis (rolling). The target is
    made by the simulator itself: a scripted roll (seeded by ``reset(seed=...)``) rolls to a
    random ``x_hi`` while pressing half-way down, back to a random ``x_lo`` while pressing the
    dough down to a random thickness, and lifts, so every goal is reachable.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (3,))``: pin velocity along x and y, x 3 m/s, and its
                        spin about its axis (world z), x 50 rad/s (rolling without slip is
                        ``a[2] = -a[0]``: ``wz = -vx / r``)
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v), pin pose,
                        goal parameters (thickness, x_lo, x_hi), episode phase t / T
    Reward              decrease of the task loss in the step
    Loss                grid-mass L1 to the target density + 5 x target-SDF-weighted mass
                        + 0.5 x pin-axis-to-dough distance (PlasticineLab's three terms)
    Start state         dough 0.2 x 0.12 x 0.2 (1,352 particles, ``ps.Plasticine(E=1e3,
                        nu=0.3, yield_stress=15)``) on a sticky table, sunk 2 cm into the
                        floor band so the table holds it; the pin (radius 0.06, half length
                        0.16, friction 1.5) 1 cm above its center
    Episode end         truncated after ``horizon`` steps (default 50); never terminates
    Info                ``loss``, ``iou`` (occupied-cell intersection over union with the
                        target), ``thickness`` (95th percentile of the dough's height above
                        the table) and ``target_thickness``
    ==================  =====================================================================

    Defaults: 3D grid 32, 1,352 particles, 15 substeps per step, dt 3.4e-4 s (5.1 ms per
    step), horizon 50. Speed (2-core CPU, f64, warm kernels): 28 env steps/s, one
    ``loss_and_grad`` at the default horizon 7.1 s. Gradient check: 15 Adam steps (lr 0.1)
    from zero actions take the loss from 0.76 to 0.34 (the scripted goal roll: 0.02).
    """

    args = {
        "thickness_range": Arg("goal: the sheet's thickness (m above the table) is drawn from this range",
                               "range", 0.02, 0.12),
        "reach_range": Arg("goal: how far (m) the scripted roll reaches from the center, each way, is drawn "
                           "from this range", "range", 0.0, 0.3),
    }
    paper = {"substeps": 30}
    paper_note = ("PlasticineLab's 64^3 grid (~10k particles there): 10,140 particles, 30 substeps of "
                  "1.7e-4 s (5.1 ms per step, as the default's).")

    default_horizon = 50
    substeps = 15
    thickness_range = (0.05, 0.075)
    reach_range = (0.13, 0.18)
    #: the dough is sunk this deep into the floor's wall band, so the table's surface is
    #: ``scene.floor - sink``
    sink = 0.02
    speed = 3.0        # m/s per unit action
    spin_speed = 50.0  # rad/s per unit action
    dough_size = (0.2, 0.12, 0.2)
    pin_radius = 0.06
    pin_half_length = 0.16
    gap = 0.01

    def _add_body_and_tool(self, scene):
        sx, sy, sz = self.dough_size
        self._table = scene.floor - self.sink
        scene.add_body(ps.Box(center=(0.5, scene.floor + 0.001 + sy / 2, 0.5), size=self.dough_size),
                       ps.Plasticine(E=1e3, nu=0.3, yield_stress=15.0))
        self._top = self._table + 0.001 + sy
        # capsule axis: local y -> world z (90 degrees about x)
        q = (np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0)
        scene.add_tool(ps.CapsuleTool(position=(0.5, self._top + self.gap + self.pin_radius, 0.5), rotation=q,
                                          radius=self.pin_radius, half_length=self.pin_half_length, friction=1.5,
                                          softness=100.0))

    def _action_map(self):
        M = np.zeros((3, self.scene.action_dim))
        M[0, 0] = self.speed
        M[1, 1] = self.speed
        M[2, 5] = self.spin_speed  # angular velocity about world z: the pin's axis
        return M

    def _script(self, thickness: float, x_lo: float, x_hi: float) -> np.ndarray:
        """Normalized actions of the scripted roll that makes the goal: roll to ``x_hi``
        while pressing half-way down, back to ``x_lo`` while pressing down to ``thickness``
        above the floor, and lift."""
        T = self.horizon
        step = self.scene.substeps_per_step * self.scene.dt * self.speed
        y0 = self._top + self.gap + self.pin_radius
        y_press = self._table + thickness + self.pin_radius
        y_half = 0.5 * (y_press + self._top + self.pin_radius)
        waypoints = [(x_hi, y_half), (x_lo, y_press), (x_lo, y0)]
        ends = np.round(np.array([0.32, 0.9, 1.0]) * T).astype(int)
        a = np.zeros((T, 3))
        pos, s = np.array([0.5, y0]), 0
        for wp, e in zip(waypoints, ends, strict=True):
            e = min(max(e, s + 1), T)
            if e <= s:
                break
            a[s:e, :2] = (np.array(wp) - pos) / ((e - s) * step)
            pos, s = np.array(wp), e
        a[:, :2] = np.clip(a[:, :2], -1, 1)
        # roll without slipping: surface speed of the pin = its translation speed
        a[:, 2] = -a[:, 0] * self.speed / (self.pin_radius * self.spin_speed)
        return np.clip(a, -1, 1)

    def _make_goal(self, rng):
        thickness = rng.uniform(*self.thickness_range)
        x_lo = 0.5 - rng.uniform(*self.reach_range)
        x_hi = 0.5 + rng.uniform(*self.reach_range)
        self.goal_params = np.array([thickness, x_lo, x_hi])
        return self._script(thickness, x_lo, x_hi)

    def _sample_goal(self, rng):
        super()._sample_goal(rng)
        self._target_thickness = self._thickness(self._target_x)

    def _thickness(self, x: np.ndarray) -> float:
        """95th percentile of the dough's height above the table."""
        return float(np.percentile(x[:, 1], 95) - self._table)

    def _contact(self, x, tool_pos):
        # distance from the pin's axis (a line along z): distance in the x-y plane
        return x[:, :2], tool_pos[0, :2], self.pin_radius

    def _shape_metrics(self, x, grid):
        return {"thickness": self._thickness(x), "target_thickness": self._target_thickness}

"""IceCream (FluidLab): shape a column of viscoplastic soft-serve with a nozzle-like tool."""

from __future__ import annotations

import numpy as np

import physim as ps

from ._shaping import ShapingEnv, capsule_tip
from .base import Arg

__all__ = ["IceCreamEnv"]


class Frustum(ps.Shape):
    """Truncated cone with a vertical axis: radius ``r_bottom`` at the bottom, ``r_top`` at
    the top (a soft-serve mound)."""

    def __init__(self, center, r_bottom: float, r_top: float, height: float):
        self.center = np.asarray(center, dtype=np.float64)
        self.r_bottom, self.r_top, self.height = float(r_bottom), float(r_top), float(height)

    def bounds(self):
        half = np.array([self.r_bottom, self.height / 2, self.r_bottom])
        return self.center - half, self.center + half

    def contains(self, points):
        d = points - self.center
        s = np.clip(d[:, 1] / self.height + 0.5, 0.0, 1.0)
        radius = self.r_bottom + (self.r_top - self.r_bottom) * s
        return (np.hypot(d[:, 0], d[:, 2]) <= radius) & (np.abs(d[:, 1]) <= self.height / 2)


class IceCreamEnv(ShapingEnv):
    """Shape a mound of soft-serve ice cream (Bingham viscoplastic) standing on a plate with
    a spinning nozzle until it matches a target shape.

    The target is made by the simulator itself: a scripted nozzle motion (seeded by
    ``reset(seed=...)``) pushes into the peak of the mound, drags it sideways in a random
    direction while spinning (a leaning, swirled top) and lifts off, so every goal is
    reachable.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (4,))``: nozzle linear velocity (x, y, z), x 2 m/s, and
                        its spin about the vertical axis, x 20 rad/s
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v), nozzle pose,
                        goal parameters (cos, sin of the lean direction, drag distance, press
                        depth, spin), episode phase t / T
    Reward              decrease of the task loss in the step
    Loss                grid-mass L1 to the target density + 5 x target-SDF-weighted mass
                        + 0.5 x nozzle-tip-to-ice-cream distance (PlasticineLab's three terms)
    Start state         a truncated-cone mound (radius 0.12 at the plate, 0.04 at the top,
                        0.22 high; 1,248 particles, ``ps.Viscoplastic(E=1e3, nu=0.3,
                        yield_stress=2.5, viscosity=1)``) on a sticky floor, its base sunk
                        2 cm into the floor band; a capsule nozzle (radius 0.025) 2 cm above it
    Episode end         truncated after ``horizon`` steps (default 40); never terminates
    Info                ``loss``, ``iou`` (occupied-cell intersection over union with the
                        target), ``offset`` (horizontal distance between the centers of the
                        upper half and the target's upper half)
    ==================  =====================================================================

    Defaults: 3D grid 32, 1,248 particles, 10 substeps per step, dt 3.4e-4 s (3.4 ms per
    step), horizon 40. Speed (2-core CPU, f64, warm kernels): 35 env steps/s, one
    ``loss_and_grad`` at the default horizon 3.9 s. Gradient check: 15 Adam steps
    (lr 0.2) from zero actions take the loss from 0.32 to 0.08 (the scripted goal motion: 0.017).

    The mound has no adhesion to the plate (walls only stop motion into them): pushed hard
    sideways, its trailing edge can lift off a little as the mound tips.
    """

    args = {
        "yield_stress": Arg("the soft-serve's yield stress (Pa)", "float", 0.0, 1e4),
        "drag_range": Arg("goal: how far (m) the scripted nozzle drags the top is drawn from this range",
                          "range", 0.0, 0.15),
        "press_range": Arg("goal: how deep (m) the scripted nozzle presses into the top is drawn from this "
                           "range", "range", 0.0, 0.12),
    }
    #: FluidLab's 64^3 grid and particle count (~80k: 4 particles per cell and axis)
    paper = {"substeps": 20, "particle_spacing": 1.0 / 256}
    paper_note = ("FluidLab's 64^3 grid and particle count (60k-200k there): 80,306 particles (4 per cell "
                  "and axis), 20 substeps of 1.7e-4 s (3.4 ms per step, as the default's).")

    default_horizon = 40
    drag_range = (0.06, 0.1)
    press_range = (0.05, 0.08)
    #: the mound is sunk this deep into the floor's wall band (``sink_into_floor``): it sticks
    #: to the plate
    sink = 0.02
    speed = 2.0       # m/s per unit action
    spin_speed = 20.0  # rad/s per unit action
    mound_radius = 0.12   # at the plate
    mound_top_radius = 0.04
    column_height = 0.22
    nozzle_radius = 0.025
    nozzle_half_length = 0.08
    gap = 0.02
    yield_stress = 2.5

    def _add_body_and_tool(self, scene):
        h = self.column_height
        scene.add_body(Frustum((0.5, scene.floor + 0.005 + h / 2, 0.5), self.mound_radius, self.mound_top_radius, h),
                       ps.Viscoplastic(E=1e3, nu=0.3, yield_stress=self.yield_stress, viscosity=1.0))
        self._top = scene.floor + 0.005 + h - self.sink
        y = self._top + self.gap + self.nozzle_radius + self.nozzle_half_length
        scene.add_tool(ps.CapsuleTool(position=(0.5, y, 0.5), radius=self.nozzle_radius,
                                          half_length=self.nozzle_half_length, friction=0.8, softness=100.0))

    def _action_map(self):
        M = np.zeros((4, self.scene.action_dim))
        M[:3, :3] = np.eye(3) * self.speed
        M[3, 4] = self.spin_speed  # angular velocity about world y
        return M

    def _script(self, angle: float, dist: float, depth: float, spin: float) -> np.ndarray:
        """Normalized actions of the scripted nozzle motion that makes the goal: press
        ``depth`` into the top, drag ``dist`` towards ``angle`` while spinning (``spin`` in
        [-1, 1]), lift."""
        T = self.horizon
        step = self.scene.substeps_per_step * self.scene.dt * self.speed
        t1 = max(T // 4, 1)
        t2 = max((3 * T) // 4, t1 + 1)
        a = np.zeros((T, 4))
        a[:t1, 1] = -(self.gap + depth) / (t1 * step)
        direction = np.array([np.cos(angle), np.sin(angle)])
        a[t1:t2, [0, 2]] = direction * dist / ((t2 - t1) * step)
        a[t1:t2, 3] = spin
        if t2 < T:
            a[t2:, 1] = (self.gap + depth) / ((T - t2) * step)
        return np.clip(a, -1, 1)

    def _make_goal(self, rng):
        angle = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(*self.drag_range)
        depth = rng.uniform(*self.press_range)
        spin = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0)
        self.goal_params = np.array([np.cos(angle), np.sin(angle), dist, depth, spin])
        return self._script(angle, dist, depth, spin)

    def _sample_goal(self, rng):
        super()._sample_goal(rng)
        self._target_top = self._top_center(self._target_x)

    def _top_center(self, x: np.ndarray) -> np.ndarray:
        """(x, z) center of the particles above half the column's height."""
        top = x[x[:, 1] > self.scene.floor - self.sink + 0.5 * self.column_height]
        return top[:, [0, 2]].mean(axis=0) if len(top) else x[:, [0, 2]].mean(axis=0)

    def _contact(self, x, tool_pos):
        return x, capsule_tip(tool_pos[0], self.nozzle_half_length), self.nozzle_radius

    def _shape_metrics(self, x, grid):
        return {"offset": float(np.linalg.norm(self._top_center(x) - self._target_top))}

"""Writer (PlasticineLab): carve a target stroke into a plasticine slab with a pen."""

from __future__ import annotations

import numpy as np

import physim as ps
from physim import losses

from ._shaping import ShapingEnv, capsule_tip
from .base import Arg

__all__ = ["WriterEnv"]

STROKES = ("line", "arc", "L")


class WriterEnv(ShapingEnv):
    """Carve a stroke into the top of a plasticine slab with a pen until the slab matches a
    target.

    The pen is a vertical capsule that the agent moves in 3D. The target is made by the
    simulator itself: a scripted pen path (seeded by ``reset(seed=...)``: a straight line, a
    quarter-circle arc or an L of random direction, length (0.14-0.19) and depth, centered
    on the slab) carves a groove into the slab, so every goal is reachable.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (3,))``: pen velocity, x 1.5 m/s
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v), pen pose,
                        goal features (stroke kind one-hot, 5 (x, z) points along the stroke,
                        pen depth), episode phase t / T
    Reward              decrease of the task loss in the step
    Loss                grid-mass L1 to the target density + 5 x target-SDF-weighted mass
                        + 0.5 x pen-tip-to-plasticine distance (PlasticineLab's three terms)
    Start state         slab 0.28 x 0.1 x 0.28 (1,944 particles, ``ps.Plasticine(E=1e3,
                        nu=0.38, yield_stress=8)``) on a sticky table, sunk 2 cm into the floor
                        band so the table holds it; the pen (radius 0.04, frictionless) 1 cm
                        above the center of its top
    Episode end         truncated after ``horizon`` steps (default 50); never terminates
    Info                ``loss``, ``iou`` (occupied-cell intersection over union with the
                        target), ``groove_iou`` (IoU of the carved cells: where at least 30 %
                        of the start slab's peak cell mass is gone, in the state vs the target)
    ==================  =====================================================================

    Defaults: 3D grid 32, 1,944 particles, 20 substeps per step, dt 2.9e-4 s (5.8 ms per
    step), horizon 50. Speed (2-core CPU, f64, warm kernels): 11 env steps/s, one
    ``loss_and_grad`` at the default horizon 14.7 s. Gradient check: 15 Adam steps (lr 0.1)
    from zero actions take the loss from 0.14 to 0.047 (the scripted stroke: 0.004). The pen
    is as thin as the 32-cell grid resolves (a 2.5-cell wide groove); thinner tools let
    material slip through them.
    """

    args = {
        "strokes": Arg("goal: the stroke kinds drawn from (each equally likely)", "choices", options=STROKES),
        "length_range": Arg("goal: the stroke's length (m) is drawn from this range", "range", 0.02, 0.25),
        "depth_range": Arg("goal: the pen's depth (m below the slab's top) is drawn from this range", "range",
                           0.0, 0.09),
    }
    paper = {"substeps": 40}
    paper_note = ("PlasticineLab's 64^3 grid (~10k particles there): 16,848 particles, 40 substeps of "
                  "1.4e-4 s (5.8 ms per step, as the default's).")

    default_horizon = 50
    substeps = 20
    strokes = STROKES
    length_range = (0.14, 0.19)
    depth_range = (0.05, 0.065)
    #: the slab is sunk this deep into the floor's wall band (``sink_into_floor``)
    sink = 0.02
    speed = 1.5  # m/s per unit action
    slab_size = (0.28, 0.1, 0.28)
    pen_radius = 0.04
    pen_half_length = 0.1
    gap = 0.01
    yield_stress = 8.0
    pen_friction = 0.0
    nu = 0.38

    def _add_body_and_tool(self, scene):
        sy = self.slab_size[1]
        scene.add_body(ps.Box(center=(0.5, scene.floor + 0.001 + sy / 2, 0.5), size=self.slab_size),
                       ps.Plasticine(E=1e3, nu=self.nu, yield_stress=self.yield_stress))
        self._top = scene.floor + 0.001 + sy - self.sink
        self._pen_y0 = self._top + self.gap + self.pen_radius + self.pen_half_length
        scene.add_tool(ps.CapsuleTool(position=(0.5, self._pen_y0, 0.5), radius=self.pen_radius,
                                          half_length=self.pen_half_length, friction=self.pen_friction, softness=100.0))

    def _action_map(self):
        M = np.zeros((3, self.scene.action_dim))
        M[:, :3] = np.eye(3) * self.speed
        return M

    @staticmethod
    def stroke_points(kind: str, angle: float, length: float, n: int) -> np.ndarray:
        """(n, 2) (x, z) points along a stroke, centered (bounding box) on the slab's center."""
        s = np.linspace(0.0, 1.0, n)
        d = np.array([np.cos(angle), np.sin(angle)])
        perp = np.array([-d[1], d[0]])
        if kind == "line":
            pts = s[:, None] * length * d
        elif kind == "arc":
            # a quarter circle of arc length ``length``, bending to the left of ``d``
            radius = length / (0.5 * np.pi)
            phi = s * 0.5 * np.pi
            pts = radius * (np.sin(phi)[:, None] * d + (1 - np.cos(phi))[:, None] * perp)
        elif kind == "L":
            first = np.minimum(s, 0.5) * length
            second = np.maximum(s - 0.5, 0.0) * length
            pts = first[:, None] * d + second[:, None] * perp
        else:
            raise ValueError(f"unknown stroke kind {kind!r}, expected one of {STROKES}")
        return np.array([0.5, 0.5]) + pts - 0.5 * (pts.min(axis=0) + pts.max(axis=0))

    def _script(self, kind: str, angle: float, length: float, depth: float) -> np.ndarray:
        """Normalized actions of the scripted pen path that makes the goal: move down to the
        stroke's start point ``depth`` into the slab, trace the stroke, lift."""
        T = self.horizon
        step = self.scene.substeps_per_step * self.scene.dt * self.speed
        t1 = max(int(round(0.24 * T)), 1)
        t2 = min(max(int(round(0.84 * T)), t1 + 1), T)
        a = np.zeros((T, 3))
        down = self.gap + depth
        pts = self.stroke_points(kind, angle, length, t2 - t1 + 1)
        a[:t1, [0, 2]] = (pts[0] - 0.5) / (t1 * step)
        a[:t1, 1] = -down / (t1 * step)
        if t2 > t1:
            a[t1:t2, [0, 2]] = np.diff(pts, axis=0) / step
        if T > t2:
            a[t2:, 1] = down / ((T - t2) * step)
        return np.clip(a, -1, 1)

    def _make_goal(self, rng):
        self.stroke_kind = self.strokes[int(rng.integers(len(self.strokes)))]
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(*self.length_range)
        depth = rng.uniform(*self.depth_range)
        self.stroke_params = (self.stroke_kind, angle, length, depth)
        onehot = np.eye(len(STROKES))[STROKES.index(self.stroke_kind)]
        self.goal_params = np.concatenate([onehot, self.stroke_points(self.stroke_kind, angle, length, 5).reshape(-1),
                                           [depth]])
        return self._script(*self.stroke_params)

    def _sample_goal(self, rng):
        # the start slab's grid mass: the groove metric measures what was carved away from it
        self.scene.reset()
        m = self.scene.particle_mass().astype(np.float64)
        self._start_grid = losses.grid_mass_numpy(self.scene.particle_positions(), m, self.grid_res)
        super()._sample_goal(rng)

    def _contact(self, x, tool_pos):
        return x, capsule_tip(tool_pos[0], self.pen_half_length), self.pen_radius

    def _groove(self, grid: np.ndarray) -> np.ndarray:
        """Cells where at least 30 % of the start slab's mass has been carved away."""
        return (self._start_grid - grid) > 0.3 * self._start_grid.max()

    def _shape_metrics(self, x, grid):
        a, b = self._groove(grid), self._groove(self._target_grid.numpy())
        union = np.logical_or(a, b).sum()
        return {"groove_iou": float(np.logical_and(a, b).sum() / union) if union else 1.0}

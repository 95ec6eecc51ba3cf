"""Gathering (FluidLab): steer floating objects into a target region of a pool with a paddle."""

from __future__ import annotations

import numpy as np
import torch

import physim as ps
from physim import losses

from .base import Arg, PhysimEnv

__all__ = ["GatheringEnv"]


class _Without(ps.Shape):
    """Particles of ``base`` that lie in none of ``holes`` (water around floating bodies)."""

    def __init__(self, base: ps.Shape, holes):
        self.base, self.holes = base, list(holes)
        self.center = base.center

    def bounds(self):
        return self.base.bounds()

    def contains(self, points):
        keep = self.base.contains(points)
        for h in self.holes:
            keep &= ~h.contains(points)
        return keep


class GatheringEnv(PhysimEnv):
    """Push floating blocks into a target region on the surface of a pool with a paddle.

    A round pool (a fixed cup tool standing on the floor) holds a shallow layer of water
    with three light, stiffer elastic blocks floating in it (density 0.5: half submerged).
    The agent moves a vertical paddle (a thin box tool dipping into the water) and turns
    it about the vertical axis; the blocks move with the water the paddle pushes, or with
    the paddle itself. The target region (a square column on the water, 0.2 x 0.2) is at
    a seeded place on the far side of the pool.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (4,))``: paddle linear velocity (x 1.5 m/s) and angular
                        velocity about the vertical axis (x 6 rad/s)
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v), paddle and pool
                        poses, the region's center (x, z), the blocks' centers, episode phase
    Reward              decrease of the task loss in the step
    Loss                mass-weighted mean squared distance of the blocks' particles to the
                        target region (0 inside), plus 0.02 x the paddle-to-blocks distance
                        term (PlasticineLab's contact term, soft minimum)
    Start state         water 0.07 deep in a pool of radius 0.25 centered at (0.5, 0.5); three
                        0.08 blocks (64 particles each) at x ~ 0.44 - 0.5 near z = 0.5; paddle
                        at x = 0.32 across z (0.24 wide), dipping to 1 cm above the floor
    Episode end         truncated after ``horizon`` steps (default 60); never terminates
    Info                ``loss``, ``fraction_in_target`` (mass fraction of the blocks whose
                        particles are inside the region)
    ==================  =====================================================================

    Defaults: grid 32^3, particle spacing 0.02 (0.64 dx), 1,774 particles (1,582 water,
    3 x 64 block), water bulk modulus 300, blocks E = 800 (density 0.5), dt 3e-4 s
    (automatic, set by the blocks), 20 substeps per step (5.9 ms). Speed (2 shared CPU
    cores, f64): ~17 steps/s, one ``loss_and_grad`` at T = 60 ~12 s.
    """

    args = {
        "grid_res": Arg("MPM grid cells per axis", "int", 16, 256),
        "spacing": Arg("particle lattice spacing (m) of the water and the blocks", "float", 1e-3, 0.05),
        "substeps": Arg("MPM substeps per env step (the automatic dt is proportional to dx: doubling the grid "
                        "and the substeps keeps the step's simulated time)", "int", 1, 10_000),
        "region_half": Arg("goal: half the side (m) of the square target region (smaller is harder)", "float",
                           0.03, 0.2),
        "region_x_range": Arg("goal: the region's center x (m) is drawn from this range", "range", 0.5, 0.75),
        "region_z_range": Arg("goal: the region's center z (m) is drawn from this range", "range", 0.3, 0.7),
    }
    #: FluidLab's 64^3 grid and particle count (90.5k: 3 particles per cell and axis)
    paper = {"grid_res": 64, "spacing": 1.0 / 192, "substeps": 40}
    paper_note = ("FluidLab's 64^3 grid and particle count (60k-200k there): 90,513 particles (3 per cell and "
                  "axis), 40 substeps of 1.5e-4 s (5.9 ms per step, as the default's).")

    default_horizon = 60
    grid_res = 32
    substeps = 20
    region_x_range = (0.64, 0.68)
    region_z_range = (0.4, 0.6)
    spacing = 0.02
    speed = 1.5  # m/s per unit action
    spin = 6.0  # rad/s per unit action
    pool_radius, pool_thickness, pool_half_height = 0.25, 0.065, 0.1
    depth = 0.07
    block = 0.08
    region_half = 0.1
    paddle_half = (0.02, 0.05, 0.12)
    paddle_x = 0.32
    contact_weight = 0.02

    def _build_scene(self):
        scene = ps.Scene(dim=3, grid_res=self.grid_res, substeps_per_step=self.substeps, boundary="slip",
                         particle_spacing=self.spacing)
        floor = scene.floor
        self._floor = floor
        self._surface = floor + self.depth
        b = self.block
        # three separate blocks, about one grid cell apart (they used to overlap and fuse into one)
        centers = [(0.42, self._surface, 0.42), (0.42, self._surface, 0.58), (0.53, self._surface, 0.5)]
        blocks = [ps.Box(center=c, size=(b, b, b)) for c in centers]
        paddle_y = floor + 0.01 + self.paddle_half[1]
        paddle_box = ps.Box(center=(self.paddle_x, paddle_y, 0.5), size=2 * np.asarray(self.paddle_half) + 0.01)
        water = _Without(ps.Cylinder(center=(0.5, floor + 0.001 + self.depth / 2, 0.5), radius=self.pool_radius - 0.005,
                                     height=self.depth), blocks + [paddle_box])
        self.water = ps.Fluid(bulk_modulus=300.0, viscosity=0.02, density=1.0)
        self.solid = ps.Elastic(E=800.0, nu=0.2, density=0.5)
        scene.add_body(water, self.water)
        for blk in blocks:
            scene.add_body(blk, self.solid)
        scene.add_tool(ps.BoxTool(position=(self.paddle_x, paddle_y, 0.5), half_extents=self.paddle_half,
                                      friction=0.3, softness=0.0))
        # the pool: a fixed cup whose inner bottom is the domain floor
        pool_y = floor + self.pool_half_height - self.pool_thickness
        scene.add_tool(ps.CupTool(position=(0.5, pool_y, 0.5), radius=self.pool_radius,
                                      half_height=self.pool_half_height, thickness=self.pool_thickness, friction=0.1))
        scene.build(max_steps=self.horizon)
        mats = scene.particle_materials()
        self._is_block = mats == scene.materials.index(self.solid)
        self._block_index = torch.as_tensor(np.nonzero(self._is_block)[0])
        # which block each block particle belongs to (bodies 1..3)
        self._block_slices = [slice(bd.start, bd.start + bd.count) for bd in scene.bodies[1:]]
        return scene

    def _action_map(self):
        M = np.zeros((4, self.scene.action_dim))
        M[:3, :3] = np.eye(3) * self.speed
        M[3, 4] = self.spin  # angular velocity about world y of the paddle; the pool never moves
        return M

    # ------------------------------------------------------------------ goal
    def _sample_goal(self, rng):
        self.region_xz = np.array([rng.uniform(*self.region_x_range), rng.uniform(*self.region_z_range)])
        h = self.region_half
        self._lo = np.array([self.region_xz[0] - h, self._floor - 0.05, self.region_xz[1] - h])
        self._hi = np.array([self.region_xz[0] + h, 1.0, self.region_xz[1] + h])

    def script(self) -> np.ndarray:
        """Hand-designed push: sweep the paddle towards the region, steering its z to the
        region's, and stop behind it. Normalized (horizon, 4) actions."""
        T = self.horizon
        step_t = self.scene.substeps_per_step * self.scene.dt
        a = np.zeros((T, 4))
        t1 = max(int(0.85 * T), 1)
        target = np.array([self.region_xz[0] - self.region_half + 0.01, self.region_xz[1]])
        start = np.array([self.paddle_x, 0.5])
        prof = np.sin(np.pi * (np.arange(t1) + 0.5) / t1)
        d = np.outer(prof / prof.sum(), target - start) / (step_t * self.speed)
        a[:t1, 0], a[:t1, 2] = d[:, 0], d[:, 1]
        return np.clip(a, -1, 1)

    # ------------------------------------------------------------------ loss & metrics
    def _loss(self, state):
        x, tool_pos = state["mpm.x"], state["tools.pos"]
        xb = x[self._block_index]
        m = self.mass[self._block_index]
        d = losses.distance_outside(xb, self._lo, self._hi)
        task = (m * d * d).sum() / m.sum()
        if self.contact_weight == 0:
            return task
        contact = losses.contact_distance(xb, tool_pos[0], radius=self.paddle_half[0])
        return task + self.contact_weight * contact

    def _goal_features(self):
        return self.region_xz

    def _observation(self, state):
        obs = super()._observation(state)
        x = state["mpm.x"]
        centers = np.concatenate([x[s].mean(axis=0) for s in self._block_slices])
        return np.concatenate([obs, centers.astype(np.float32)])

    def _metrics(self, state):
        x = state["mpm.x"][self._is_block]
        inside = np.all((x >= self._lo) & (x <= self._hi), axis=1)
        return {"fraction_in_target": float(inside.mean())}

    def camera_kwargs(self):
        # wooden blocks, so they stand out from the water and the (green) goal region; the pool close up
        c = np.array([0.5, self._floor + 0.04, 0.5])
        return {"colors": {self.scene.materials.index(self.solid): (0.85, 0.55, 0.25)},
                "camera": [tuple(c + np.array([0.3, 0.55, 0.72])), tuple(c), (0.0, 1.0, 0.0)]}

    def _goal_overlay(self, renderer):
        """The target region: a translucent green column from the floor to 3 cm above the water,
        its outline at the surface drawn solid."""
        import pyvista as pv

        h = self.region_half
        (x, z), top = self.region_xz, self._surface + 0.03
        renderer.add_goal(pv.Box(bounds=(x - h, x + h, self._floor, top, z - h, z + h)), name="goal", opacity=0.3,
                          smooth_shading=False)
        y = self._surface + 0.01
        ring = np.array([[x - h, y, z - h], [x + h, y, z - h], [x + h, y, z + h], [x - h, y, z + h]])
        renderer.add_goal(pv.lines_from_points(ring, close=True), name="goal_edges", opacity=1.0, line_width=3,
                          smooth_shading=False)

    def _goal_points(self):
        h = self.region_half
        s = np.linspace(-h, h, 21)
        gx, gz = np.meshgrid(s, s, indexing="ij")
        edge = (np.abs(gx) == h) | (np.abs(gz) == h)
        pts = np.stack([self.region_xz[0] + gx[edge], np.full(edge.sum(), self._surface + 0.01),
                        self.region_xz[1] + gz[edge]], axis=1)
        return pts

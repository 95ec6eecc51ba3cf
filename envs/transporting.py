"""Transporting (FluidLab): push a floating object to a target with a water jet from a moving nozzle."""

from __future__ import annotations

import math

import numpy as np
import torch

import physim as ps

from .base import Arg, PhysimEnv

__all__ = ["TransportingEnv"]


class TransportingEnv(PhysimEnv):
    """Move a floating box to a target place on the water with the jet of a moving nozzle.

    A 2D tank (the whole domain, slip walls) holds water ``depth`` deep with a light rigid box
    (a :class:`physim.Rigid` body, density ``object_density`` x the water's) floating in it,
    started at its Archimedes depth. Above the water on its left, a nozzle (a sphere tool)
    sprays a water jet (a :class:`physim.Emitter`, ``jet_speed`` m/s along the nozzle's axis,
    the jet filling its bore at the water's rest density) down to the right; the
    agent moves the nozzle and turns it, so the jet hits the box (or the water next to it) where
    it pushes the box towards the target. The target is a point on the water's surface at a
    seeded distance to the right of the box (its centre of mass's height at the start).

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (3,))``: the nozzle's velocity (x, y) and angular velocity,
                        scaled so that a whole episode at full speed moves it ``reach`` = 0.1 m
                        and turns it 0.6 rad (the nozzle cannot leave the tank)
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v; the jet's reserve
                        included), the nozzle's pose, the target and the box's centre of mass,
                        episode phase
    Reward              decrease of the task loss in the step
    Loss                squared distance of the box's centre of mass to the target over its
                        value at the start: ``|c - c*|^2 / |c0 - c*|^2`` (1 at the start, 0 on
                        the target); smooth in the actions
    Start state         water at rest 0.16 m deep; the 0.12 x 0.06 box (density 0.5) centred at
                        x = 0.4, half submerged; the nozzle (radius 2 cm) at (0.25, 0.08 m above
                        the water), its jet pointing 31 degrees below +x
    Episode end         truncated after ``horizon`` steps (default 40); never terminates
    Info                ``loss``, ``distance`` (m, the box's centre to the target), ``object_x``,
                        ``object_y`` (m), ``water_added`` (the jet's particles emitted so far)
    ==================  =====================================================================

    Defaults: grid 32^2 (dx = 1/32), particle spacing dx / 2, water bulk modulus 300 (density 1,
    viscosity 0.02), dt 7.2e-4 s (automatic, set by the water's wave speed), 15 substeps per step
    (10.8 ms; 0.43 s per episode), 879 particles (546 water and box at the start, 333 reserved
    for the jet: 770 particles/s, 8 across its 2-cell-radius bore). Over an episode the jet adds
    0.081 m^2 of water to the tank's 0.133 (FluidLab's jet also fills its tank). With the nozzle
    held still the jet alone pushes the box ~0.17 m right (loss 0.23 at seed 0) and presses it
    ~6 cm down; aiming it (Adam) does better. Speed (2 shared CPU cores, f64, busy): one
    ``loss_and_grad`` at T = 40 ~1.4 s after a ~40 s first compile. FluidLab's Transporting is
    3D; this task is its vertical section (``dim`` is not an argument).
    """

    args = {
        "grid_res": Arg("MPM grid cells per axis", "int", 16, 256),
        "substeps": Arg("MPM substeps per env step (dt is automatic: doubling the grid and the substeps keeps "
                        "the step's simulated time)", "int", 1, 10_000),
        "jet_speed": Arg("speed (m/s) of the jet along the nozzle's axis", "float", 0.0, 5.0),
        "jet_time": Arg("the jet runs from t = 0 for this long (s; 0: no jet, the physics check of a box "
                        "floating still)", "float", 0.0, 1e6),
        "object_density": Arg("the box's density over the water's (below 1: it floats)", "float", 0.1, 0.95),
        "target_range": Arg("goal: the target's distance (m) to the right of the box's start is drawn from this "
                            "range (farther is harder)", "range", 0.0, 0.4),
    }
    #: FluidLab's 64-cell grid resolution (its task is 3D: this is the vertical section)
    paper = {"grid_res": 64, "substeps": 30}
    paper_note = ("FluidLab's 64-cell grid resolution in this vertical section (4x the default's particles), "
                  "30 substeps of 3.6e-4 s (10.8 ms per step, as the default's).")

    default_horizon = 40
    grid_res = 32
    substeps = 15
    jet_speed = 1.5
    jet_time = 1e6
    object_density = 0.5
    target_range = (0.2, 0.35)
    depth = 0.16  # m of water
    size = (0.12, 0.06)  # the box (m)
    object_x = 0.4
    nozzle_x, nozzle_height, nozzle_radius = 0.25, 0.08, 0.02
    jet_direction = (1.0, -0.6)
    reach = 0.1  # m the nozzle moves in an episode at full speed
    turn = 0.6  # rad it turns in an episode at full angular speed

    def _check_args(self):
        if self.jet_time > 0 and self.jet_speed == 0:
            raise ValueError(f"TransportingEnv: jet_speed must be > 0 while the jet runs (jet_time={self.jet_time:g}),"
                             f" got {self.jet_speed!r}")

    def _build_scene(self):
        scene = ps.Scene(dim=2, grid_res=self.grid_res, substeps_per_step=self.substeps, boundary="slip")
        lo, dx = scene.floor, scene.dx
        left, right = 3 * dx, 1.0 - 3 * dx  # the inner faces of the side walls' cells
        surface = lo + self.depth
        w, h = self.size
        x0 = self.object_x
        bottom = surface - self.object_density * h  # Archimedes: the submerged fraction is the density ratio
        self.water = ps.Fluid(bulk_modulus=300.0, viscosity=0.02, density=1.0)
        self.body = ps.Rigid(density=self.object_density)
        scene.add_body(ps.Box(center=(x0, bottom + h / 2), size=(w, h)), self.body)
        # water around the box: below it, left and right of it
        scene.add_body(ps.Box(center=(x0, (lo + bottom) / 2), size=(w, bottom - lo)), self.water)
        scene.add_body(ps.Box(center=((left + x0 - w / 2) / 2, surface - self.depth / 2),
                              size=(x0 - w / 2 - left, self.depth)), self.water)
        scene.add_body(ps.Box(center=((right + x0 + w / 2) / 2, surface - self.depth / 2),
                              size=(right - x0 - w / 2, self.depth)), self.water)
        self.nozzle = ps.SphereTool(position=(self.nozzle_x, surface + self.nozzle_height), radius=self.nozzle_radius,
                                    friction=0.0, softness=0.0)
        scene.add_tool(self.nozzle)
        if self.jet_time > 0:
            self.emitter = ps.Emitter(self.water, self.nozzle, speed=self.jet_speed, direction=self.jet_direction,
                                      stop=self.jet_time if self.jet_time < 1e6 else math.inf)
            scene.add_emitter(self.emitter)
        else:
            self.emitter = None
        scene.build(max_steps=self.horizon)
        self._surface = surface
        self._is_body = scene.particle_materials() == scene.materials.index(self.body)
        self._body_index = torch.as_tensor(np.nonzero(self._is_body)[0])
        self._episode_time = self.horizon * scene.substeps_per_step * scene.dt
        return scene

    def _action_map(self):
        M = np.zeros((3, self.scene.action_dim))
        M[0, 0] = M[1, 1] = self.reach / self._episode_time  # m/s
        M[2, 2] = self.turn / self._episode_time  # rad/s
        return M

    # ------------------------------------------------------------------ goal
    def _centre(self, x) -> np.ndarray:
        """The box's centre of mass (its particles have equal masses)."""
        return np.asarray(x)[self._is_body].mean(axis=0)

    def _sample_goal(self, rng):
        self.scene.reset()
        self._n_start = int(self.scene.particle_active().sum())
        self.start_centre = self._centre(self.scene.initial_state()["mpm.x"])
        self.target = self.start_centre + np.array([rng.uniform(*self.target_range), 0.0])
        d2 = float(((self.start_centre - self.target) ** 2).sum())
        # a target on the box's start (target_range = (0, 0)): the loss is the squared distance over 1 cm^2
        self._norm = d2 if d2 > 1e-4 else 1e-4
        self._target_t = torch.as_tensor(self.target)

    # ------------------------------------------------------------------ loss & metrics
    def _loss(self, state):
        c = state["mpm.x"][self._body_index].mean(dim=0)
        return ((c - self._target_t) ** 2).sum() / self._norm

    def _goal_features(self):
        return self.target.copy()

    def _observation(self, state):
        obs = super()._observation(state)
        return np.concatenate([obs, self._centre(state["mpm.x"]).astype(np.float32)])

    def _metrics(self, state):
        c = self._centre(state["mpm.x"])
        active = self.scene.particle_active()
        return {"distance": float(np.linalg.norm(c - self.target)), "object_x": float(c[0]), "object_y": float(c[1]),
                "water_added": int(active.sum()) - self._n_start}

    # ------------------------------------------------------------------ rendering
    def camera_kwargs(self):
        return {"colors": {self.scene.materials.index(self.body): (0.95, 0.8, 0.1)}}

    def _goal_overlay(self, renderer):
        """The target: a green outline of the box centred on it, and a cross at its centre."""
        import pyvista as pv

        w, h = self.size
        from physim.render.meshes import PLANE_Z

        x, y = self.target
        z = PLANE_Z + 0.02  # in front of the particles (2D scenes are drawn in the plane z = PLANE_Z)
        ring = np.array([[x - w / 2, y - h / 2, z], [x + w / 2, y - h / 2, z], [x + w / 2, y + h / 2, z],
                         [x - w / 2, y + h / 2, z]])
        renderer.add_goal(pv.lines_from_points(ring, close=True), name="goal", opacity=1.0, line_width=3,
                          smooth_shading=False)
        s = 0.015
        cross = pv.lines_from_points(np.array([[x - s, y, z], [x + s, y, z]]))
        cross += pv.lines_from_points(np.array([[x, y - s, z], [x, y + s, z]]))
        renderer.add_goal(cross, name="goal_centre", opacity=1.0, line_width=3, smooth_shading=False)

    def _goal_points(self):
        w, h = self.size
        s = np.linspace(-0.5, 0.5, 9)
        edge = np.concatenate([np.stack([s * w, np.full(9, -h / 2)], 1), np.stack([s * w, np.full(9, h / 2)], 1),
                               np.stack([np.full(9, -w / 2), s * h], 1), np.stack([np.full(9, w / 2), s * h], 1)])
        return self.target + edge

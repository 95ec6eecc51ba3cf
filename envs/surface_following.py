"""Surface following (DiffTactile): slide a FEM gel tactile sensor along a curved rigid surface
while it keeps a target contact force.

The sensor is a dome gel (:func:`physim.dome_gel`) cast on a rigid spherical core, the scene's
tool 0, which is its kinematic mount (the core is excluded from contact with its own gel); the
surface is tool 1, a static cylinder lying along z. The force the task tracks is the sensor's own
reading: :meth:`physim.tactile.TactileSensor.total_force` of the gel's contact forces
(``fem.f_contact``) in the sensor frame at the mount's pose, a torch function, so the loss is
differentiable end to end (actions -> tool velocities -> FEM contact -> sensor reading).

Unlike PhysimEnv's default final-state loss, the loss reads the whole trajectory: the problem
observes the time series of ``fem.f_contact`` and the tool poses (``SceneProblem(observe=...)``),
and stepping the env keeps the same series, so ``loss(actions)`` equals the loss after stepping
them (and reward = loss decrease makes each step's reward minus its force-tracking error plus its
progress towards the goal).
"""

from __future__ import annotations

import math

import numpy as np
import torch

import physim as ps
from physim.optim.problem import SceneProblem
from physim.tactile import TactileSensor

from .base import Arg, PhysimEnv

__all__ = ["SurfaceFollowingEnv"]

#: state entries whose time series the loss reads
SERIES = ("fem.f_contact", "tools.pos", "tools.rot")


class SurfaceFollowingEnv(PhysimEnv):
    """Slide a dome-gel tactile sensor over a cylinder to a target arc position at a target
    normal force (DiffTactile's surface following).

    Sensor: a dome gel (inner radius 11 mm, outer 15 mm, half-angle 40 degrees, one layer,
    4 rings: 120 nodes, 285 tets; stable neo-Hookean, E = 10 kPa, nu = 0.4, 1000 kg/m^3,
    stiffness damping beta = 2e-5 s) facing down (-y), cast on a rigid sphere core (tool 0, the
    mount) whose pose the actions drive. Surface: a cylinder (tool 1, radius 6 cm, 10 cm long,
    axis along z, static, friction 0.5); its top is 0.05 mm under the dome's apex at the start.
    The sensor reads (:class:`physim.tactile.TactileSensor`, pinhole, 21 markers) the net contact
    force in its own frame: (shear x, shear y, normal), normal = along the dome's axis, pressing
    in positive (about 0.05 / 0.15 / 0.3 N at 0.5 / 0.9 / 1.3 mm indentation). Arc position
    ``s = R_c * atan2(x - x_c, y - y_c)`` of the mount's centre about the cylinder's axis
    (0 at the start, on top). Gravity off: the mount is kinematic and the gel's own weight
    (~0.02 N) would only offset the reading, as a tared sensor does not show it.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (6,))``: the mount's linear velocity (x, z: x 0.3 m/s;
                        y: x min(0.25, 3.5 mm / (T x 1.6 ms)) m/s, 0.068 at T = 32, so no
                        sequence descends more than 3.5 mm and crushes the 4 mm gel) and
                        angular velocity about its centre (x 3 rad/s, world axes)
    Observation space   ``Box(-inf, inf, (64,))``: both tools' poses (14; tool 1 static), goal
                        (target force N, target arc m), phase t / T, then the sensor's
                        reading (shear x, shear y, normal, N), the 21 marker displacements
                        (42, px), arc position and lateral offset (m); not the gel's nodes
    Reward              decrease of the task loss in the step (minus the step's force error,
                        plus its progress towards the target arc)
    Loss                (1/T) sum over the steps so far of ((F_n - F*) / F*)^2 + 0.1 (|F_shear|
                        / F*)^2, plus ((s - s*)^2 + (z - z_0)^2) / s*^2 at the last state (z:
                        the mount's lateral offset along the cylinder); 1 at the start (the
                        arc term), 2 after T steps of zero actions (never touching)
    Start state         sensor at rest 0.05 mm above the top of the cylinder; target force F*
                        ~ U(0.08, 0.25) N, target arc s* = +-U(0.35, 0.65) x the surface arc
                        under the mount's full-x-speed path over T steps (at most 12 mm;
                        seeded, reachable)
    Episode end         truncated after ``horizon`` steps (default 32); never terminates
    Info                ``loss``, ``normal_force``, ``target_force``, ``shear_force`` (N),
                        ``arc_position``, ``target_arc`` (m)
    ==================  =====================================================================

    Time: 32 substeps of dt 5e-5 s per step (1.6 ms; the gel's explicit limit with its contact
    stiffness is 5.8e-5 s, so no sub-cycling), 51 ms per default episode: a fast slide (full x
    speed is 0.16 of the gel's shear wave speed, 1.9 m/s), the price of explicit FEM on a CPU.
    The y scale shrinks with the horizon so that a whole episode descends at most 3.5 mm (a
    3.5 mm press keeps every tet upright; a press through the 4 mm gel would invert tets, a
    :class:`physim.SimulationError`), and the target arc is capped at 12 mm, whose surface
    drop (1.5 mm under the mount's path) plus a 1.3 mm press stays inside that budget.

    Speed (f64, 2 shared CPU cores at load ~5): ~12 steps/s (``measure_speed``), one
    ``loss_and_grad`` at T = 32 2.5-3.3 s warm. ``physim optimize physim/SurfaceFollowing-v0
    --iters 20`` (Adam, lr 0.05): loss 2 -> 0.393 in 149 s; with ``--lr 0.2``: 2 -> 0.259.
    """

    default_horizon = 32
    obs_entries = ("fem.x",)
    #: the gel's nodes are not observed directly: the sensor's reading stands for them
    obs_particles = 0

    dt = 5e-5
    substeps = 32
    #: action scales: m/s (x, z), rad/s; the y scale is :attr:`vertical_speed`
    speed = 0.3
    spin = 3.0
    #: m: the most the mount may descend in a whole episode (the gel is 4 mm thick; a 3.5 mm
    #: press was checked to keep every tet upright), and the y scale's cap (m/s)
    descent_budget = 3.5e-3
    max_vertical_speed = 0.25
    #: cylinder (the surface): centre (m), radius (m), half length (m), friction
    surface_center = (0.5, 0.22, 0.5)
    surface_radius = 0.06
    surface_half_length = 0.05
    surface_friction = 0.5
    #: dome gel (m) and material
    inner_radius = 0.011
    outer_radius = 0.015
    dome_angle = 40.0
    dome_layers = 1
    dome_rings = 4
    gel_E = 1e4
    gel_nu = 0.4
    gel_density = 1000.0
    gel_beta = 2e-5
    #: the apex's height above the surface at the start (m)
    start_gap = 5e-5
    #: goal ranges: target force (N) and |target arc| as a fraction of the full-speed arc
    force_range = (0.08, 0.25)
    arc_range = (0.35, 0.65)
    #: cap of that arc (m): farther the surface falls away more than the vertical speed can follow
    max_reach = 0.012
    #: loss weight of the shear term
    shear_weight = 0.1

    args = {
        "dome_layers": Arg("element layers through the gel's thickness", "int", 1, 16),
        "dome_rings": Arg("rings of the dome's cap triangulation (nodes ~ (layers + 1)(1 + 3 rings (rings + 1)))",
                          "int", 1, 40),
        "substeps": Arg("substeps of dt = 5e-5 s per env step (the gels sub-cycle when their elements need a "
                        "smaller dt)", "int", 1, 10_000),
        "force_range": Arg("goal: the target normal force (N) is drawn from this range", "range", 0.01, 1.0),
        "arc_range": Arg("goal: |target arc| is drawn from this range, as a fraction of the surface arc under "
                         "the mount's full-x-speed path (capped at max_reach)", "range", 0.0, 1.0),
        "max_reach": Arg("goal: cap (m) of |target arc|", "float", 1e-3, 0.05),
    }
    #: DiffTactile's dome sensor resolution: 4 layers, ~2k nodes, ~8.7k tets
    paper = {"dome_layers": 4, "dome_rings": 11}
    paper_note = ("DiffTactile's dome sensor (~1,900 nodes, ~8,200 tets there): 2,000 nodes, 8,808 tets in 4 "
                  "layers (the default: 120 nodes, 285 tets); the same 32 substeps of 5e-5 s, the gel "
                  "sub-cycling as its elements need.")

    def __init__(self, render_mode: str | None = None, horizon: int | None = None, seed: int | None = None,
                 scale: str = "default", **kwargs):
        self._history: list[dict] = []
        super().__init__(render_mode=render_mode, horizon=horizon, seed=seed, scale=scale, **kwargs)
        # the loss reads time series: the problem observes them (see the module docstring)
        self.problem = SceneProblem(self.scene, self._loss, self.horizon, -1.0, 1.0,
                                    action_map=self.problem.action_map, start_state=self.problem.start_state,
                                    observe=SERIES)

    # ------------------------------------------------------------------ scene
    def _build_scene(self):
        c = np.asarray(self.surface_center, dtype=np.float64)
        core = c + np.array([0.0, self.surface_radius + self.outer_radius + self.start_gap, 0.0])
        self._core0 = core
        mesh = ps.dome_gel(center=tuple(core), inner_radius=self.inner_radius, outer_radius=self.outer_radius,
                           layers=self.dome_layers, angle=self.dome_angle, rings=self.dome_rings, axis=(0.0, -1.0, 0.0))
        scene = ps.Scene(dim=3, grid_res=32, dt=self.dt, substeps_per_step=self.substeps, gravity=(0.0, 0.0, 0.0))
        scene.add_tool(ps.SphereTool(position=tuple(core), radius=self.inner_radius, friction=0.0))
        h = math.sqrt(0.5)  # a quarter turn about x: the cylinder's local y axis along world z
        scene.add_tool(ps.CylinderTool(position=tuple(c), radius=self.surface_radius,
                                       half_height=self.surface_half_length, rotation=(h, h, 0.0, 0.0),
                                       friction=self.surface_friction))
        body = ps.FEMBody(mesh, E=self.gel_E, nu=self.gel_nu, density=self.gel_density, beta=self.gel_beta, mount=0)
        scene.add_fem(body)
        self.sensor = TactileSensor(body, camera="pinhole", image_size=(32, 32), markers=(5, 5),
                                    pose=(core, np.array([1.0, 0.0, 0.0, 0.0])))
        scene.build(max_steps=self.horizon)
        return scene

    def _action_map(self):
        M = np.zeros((6, self.scene.action_dim))
        M[:3, :3] = np.diag([self.speed, self.vertical_speed, self.speed])
        M[3:, 3:6] = np.eye(3) * self.spin
        return M

    @property
    def step_seconds(self) -> float:
        """Simulated seconds per env step."""
        return self.dt * self.substeps

    @property
    def vertical_speed(self) -> float:
        """y velocity (m/s) of action 1 = +-1: ``horizon`` full-speed steps down descend at most
        :attr:`descent_budget`, so no action sequence crushes the gel against the surface (its
        distance from the cylinder's axis cannot shrink by more than its total descent)."""
        return min(self.max_vertical_speed, self.descent_budget / (self.horizon * self.step_seconds))

    # ------------------------------------------------------------------ goal
    def _sample_goal(self, rng):
        self.target_force = float(rng.uniform(*self.force_range))
        reach = min(self.speed * self.horizon * self.step_seconds * self.surface_radius / (
            self.surface_radius + self.outer_radius), self.max_reach)  # surface arc of the full-speed path
        self.target_arc = float(rng.choice([-1.0, 1.0]) * rng.uniform(*self.arc_range) * reach)

    def _goal_features(self):
        return np.array([self.target_force, self.target_arc])

    def _goal_points(self):
        c = np.asarray(self.surface_center)
        th = self.target_arc / self.surface_radius
        return (c + self.surface_radius * np.array([math.sin(th), math.cos(th), 0.0]))[None]

    def _goal_overlay(self, renderer):
        """The target: a green line across the cylinder at the target arc position (a finish
        line the mount's centre must reach), the path to it from the start (top) drawn on the
        surface just in front of the gel, an arrow into the surface at its end as long as the
        target force (5 cm per N) and the target force in text."""
        import pyvista as pv

        c, R = np.asarray(self.surface_center), self.surface_radius
        front = c[2] + self.outer_radius + 0.006  # in front of the gel, seen from the camera

        def on_surface(theta, z):
            return np.array([c[0] + (R + 3e-4) * math.sin(theta), c[1] + (R + 3e-4) * math.cos(theta), z])

        end = self.target_arc / R
        half = self.surface_half_length
        across = np.array([on_surface(end, c[2] - half), on_surface(end, c[2] + half)])
        renderer.add_goal(pv.Line(*across).tube(radius=5e-4), name="goal", opacity=0.95)
        path = np.array([on_surface(t, front) for t in np.linspace(0.0, end, 24)])
        renderer.add_goal(pv.Spline(path, 48).tube(radius=4e-4), name="goal_path", opacity=0.95)
        tip, normal = path[-1], np.array([math.sin(end), math.cos(end), 0.0])
        length = 0.05 * self.target_force
        renderer.add_goal(pv.Arrow(start=tip + normal * length, direction=-normal, scale=length, tip_length=0.3,
                                   tip_radius=0.12, shaft_radius=0.04), name="goal_force", opacity=0.95)
        renderer.plotter.add_text(f"target: {self.target_force:.3f} N normal at arc {1e3 * self.target_arc:+.1f} mm",
                                  position="upper_left", font_size=14, color="#1b5e20", name="goal_text")

    def camera_kwargs(self):
        c = np.asarray(self.surface_center) + np.array([0.0, self.surface_radius, 0.0])
        return {"camera": [tuple(c + np.array([0.03, 0.05, 0.16])), tuple(c), (0.0, 1.0, 0.0)]}

    # ------------------------------------------------------------------ readings and loss
    def _arc(self, pos):
        """(arc position s, lateral offset z - z_0) of mount positions ``pos`` (..., 3), m."""
        c = self.surface_center
        s = self.surface_radius * torch.atan2(pos[..., 0] - c[0], pos[..., 1] - c[1])
        return s, pos[..., 2] - c[2]

    def _forces(self, series):
        """(t + 1, 3) sensor readings (shear x, shear y, normal; N) along a series."""
        f, p, q = series["fem.f_contact"], series["tools.pos"], series["tools.rot"]
        return torch.stack([self.sensor.total_force(f[k], (p[k, 0], q[k, 0])) for k in range(f.shape[0])])

    @staticmethod
    def _as_series(state):
        if state["tools.pos"].ndim == 2:  # one state: a series of length 1 (the start)
            return {k: state[k][None] for k in SERIES}
        return state

    def _loss(self, state):
        s = self._as_series(state)
        F = self._forces(s)[1:]  # the start's reading is not the policy's doing
        Fs = self.target_force
        track = (((F[:, 2] - Fs) / Fs) ** 2 + self.shear_weight * (F[:, :2] ** 2).sum(-1) / Fs**2).sum()
        arc, lat = self._arc(s["tools.pos"][-1, 0])
        goal = ((arc - self.target_arc) ** 2 + lat**2) / self.target_arc**2
        return track / self.horizon + goal

    def _state_loss(self, state):
        # env steps keep the series the differentiable loss observes: the start (reset, rollout)
        # begins it, each step's state extends it
        if state is self._start_state or not self._history:
            self._history = [state]
        else:
            self._history.append(state)
        series = {k: np.stack([np.asarray(h[k]) for h in self._history]) for k in SERIES}
        return super()._state_loss(series)

    def _reading(self, state):
        with torch.no_grad():
            t = {k: torch.as_tensor(np.asarray(state[k], dtype=np.float64)) for k in ("fem.x", "fem.f_contact")}
            pose = (torch.as_tensor(state["tools.pos"][0]), torch.as_tensor(state["tools.rot"][0]))
            force = self.sensor.total_force(t["fem.f_contact"], pose).numpy()
            markers = self.sensor.marker_displacement(t["fem.x"], pose).numpy()
            arc, lat = self._arc(pose[0])
        return force, markers, float(arc), float(lat)

    def _observation(self, state):
        base = super()._observation(state)
        force, markers, arc, lat = self._reading(state)
        extra = np.concatenate([force, markers.reshape(-1), [arc, lat]]).astype(np.float32)
        return np.concatenate([base, extra])

    def _metrics(self, state):
        force, _, arc, _ = self._reading(state)
        return {"normal_force": float(force[2]), "target_force": self.target_force,
                "shear_force": float(np.hypot(force[0], force[1])), "arc_position": arc,
                "target_arc": self.target_arc}

"""Elastic grasp (DiffTactile): squeeze an elastic object between two FEM gel fingertips of a
parallel gripper and lift it off the floor without slip.

The fingertips are flat gel pads (:func:`physim.flat_pad`, turned to face each other along x)
cast on rigid backs, the scene's box tools 0 (left) and 1 (right), their kinematic mounts. The
object is an elastic MPM cube on the floor between them; it touches the gels only through the
coupler (:mod:`physim.parts.coupler`: the gel's contact-pressure law within half a particle
spacing of its surface, regularized Coulomb friction ``coupler.fem_friction``), so only the
friction of the gels can lift it. Each pad is a tactile sensor
(:class:`physim.tactile.TactileSensor`): its net contact force in its own frame, (shear x,
shear y, normal), is what the slip and squeeze terms of the loss read, a torch function of the
state, so the loss is differentiable end to end (actions -> tool velocities -> gel -> coupler ->
MPM object, and back through the sensors' readings).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

import physim as ps
from physim.parts.fem import Subcycling
from physim.scene import floor_height
from physim.tactile import TactileSensor

from .base import Arg, PhysimEnv

__all__ = ["ElasticGraspEnv"]

_IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])


def _turned_pad(size, thickness, cell, face_x: float, center_yz) -> ps.TetMesh:
    """A flat pad whose gel faces +x, its outer (sensing) face at ``x = face_x``, centred at
    ``center_yz`` in (y, z); its back (``fixed``) at ``face_x - thickness``. A quarter turn about
    z of :func:`physim.flat_pad` (+y -> +x), which keeps every tet positively oriented."""
    pad = ps.flat_pad(center=(0.0, 0.0, 0.0), size=size, thickness=thickness, cell=cell)
    turn = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    v = pad.vertices @ turn.T + np.array([face_x - thickness / 2, center_yz[0], center_yz[1]])
    return ps.TetMesh(v, pad.tets, pad.fixed)


def _mirrored(mesh: ps.TetMesh, plane_x: float) -> ps.TetMesh:
    """The mirror image of ``mesh`` in the plane ``x = plane_x`` (same node order; the mirror
    flips every tet, :meth:`physim.TetMesh.oriented` swaps two vertices back). The gripper is
    exactly symmetric: a quarter turn the other way would triangulate the pad differently."""
    v = mesh.vertices.copy()
    v[:, 0] = 2 * plane_x - v[:, 0]
    return ps.TetMesh.oriented(v, mesh.tets, mesh.fixed)


class ElasticGraspEnv(PhysimEnv):
    """Grasp an elastic cube between two gel fingertips and lift it to a target height without
    slip (DiffTactile's elastic-object grasping).

    Gripper: two flat gel pads (3 x 3 cm, 1 cm thick, 5 mm cells: 147 nodes, 432 tets each;
    stable neo-Hookean, E = 50 kPa, nu = 0.4, 1000 kg/m^3, mass damping
    alpha = 5 /s; contact stiffness 5e6 Pa/m, contact damping 5e3 Pa s/m) facing each other
    along x, each cast on a rigid back (box tools 0 and 1, the mounts), 1 mm from the object's
    sides at the start. Friction gel-object ``mu = 1`` (``coupler.fem_friction``). Object: an
    elastic (fixed-corotated) cube, E = 50 kPa, nu = 0.3, 1000 kg/m^3, 4.7 cm (6 x 6 x 6 = 216
    particles, 0.103 kg, weight 1.0 N), resting on the floor (``"friction"`` walls, 0.3). The
    gripper, the cube and the pads' meshes are mirror images in the plane x = 0.5 (the right
    pad is the left one mirrored, not turned), and the actions are symmetric by construction:
    one shared gripper velocity and one closing speed (tool 0 moves by +close along x, tool 1
    by -close).

    Sensor readings: each pad's :meth:`physim.tactile.TactileSensor.total_force` of its rows of
    ``fem.f_contact`` at its mount's pose, ``(s_x, s_y, n)`` in N (normal: pressing into the gel
    positive). Slip ratio of a pad (DiffTactile's, softened)::

        r = |s| / (mu * |n| + F0),   |s| = sqrt(s_x^2 + s_y^2 + (1e-6 N)^2),   F0 = 0.02 N

    Coulomb friction holds while ``|s| < mu n`` (r < 1); F0 (2 % of the object's weight) keeps r
    finite and ~0 where a pad touches nothing (|n| ~ 0: no force, no slip to penalize), and the
    1e-6 N keeps the square root smooth at zero shear.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (4,))``: the gripper's shared linear velocity (x, y, z:
                        x 0.3 m/s) and its closing speed (x 0.1 m/s per finger; positive
                        closes: tool 0 moves +x, tool 1 -x); no rotation
    Observation space   ``Box(-inf, inf, (215,))``: 64 sampled object particles (x), both
                        tools' poses, goal (target lift m, target centre-of-mass height m),
                        phase t / T, then both sensors' readings (s_x, s_y, n; N; left, right)
    Reward              decrease of the task loss in the step
    Loss                ((y_c - y*) / 1 cm)^2 + 0.5 (r_L^2 + r_R^2) + ((n_L - 4 N)_+^2 +
                        (n_R - 4 N)_+^2) / (4 N)^2 at the state: y_c the object's centre of
                        mass height (particle-mass weighted), y* = start + target lift, r the
                        slip ratios, n the normal forces (the squeeze bound 4 N: don't crush)
    Start state         cube at rest on the floor (z jittered +-3 mm, seeded), pads 1 mm off its
                        sides at its centre's height; target lift ~ U(0.5, 1.5) cm (seeded)
    Episode end         truncated after ``horizon`` steps (default 16); never terminates
    Info                ``loss``, ``lift`` (m, centre of mass above its start), ``target_lift``,
                        ``slip_left``, ``slip_right`` (r), ``normal_left``, ``normal_right`` (N)
    ==================  =====================================================================

    Time: 10 substeps of dt 8e-4 s per step (8 ms; the coupler's limit, 8.5e-4 s, is set by the
    gels' contact stiffness and damping against a particle's mass; the gels sub-cycle 6
    explicit steps per substep), 128 ms per default episode. Grid 64^3 (the floor at 3 cells).
    The cube starts with its lowest particle layer 0.2 mm above the floor, where it rests
    (measured: dropped from 4.4 mm it settles there, +-0.3 mm).

    Friction: the coupler's regularized Coulomb law with its stick regime (the stick
    viscosity sized to the particle and the gel behind its footprint, per FEM sub-step): the
    scripted grasp lifts the cube 8.7 of 12 mm with slip ratios 0.14 at 2.2 N squeeze
    (measured, seed 0, horizon 8).

    Gradients: the loss is of the last state, and ``loss_and_grad`` differentiates the whole
    horizon (physim's tape: checkpointed chunks recomputed in reverse, not truncated).
    """

    args = {
        "pad_cell": Arg("edge (m) of the gel pads' cubic cells (6 tets each); a 1 cm thick pad has "
                        "thickness / pad_cell element layers", "float", 1e-3, 0.01),
        "object_cells": Arg("particles per edge of the cube (spacing dx / 2: the cube's edge is "
                            "object_cells / (2 grid_res) m)", "int", 2, 32),
        "grid_res": Arg("MPM grid cells per axis", "int", 32, 256),
        "substeps": Arg("substeps of dt = 8e-4 s per env step", "int", 1, 10_000),
        "friction": Arg("Coulomb coefficient between the gels and the object", "float", 0.0, 5.0),
        "lift_range": Arg("goal: the target lift (m) is drawn from this range", "range", 0.0, 0.03),
        "z_jitter": Arg("goal: the cube's start z is jittered uniformly within +-z_jitter (m)", "float", 0.0, 0.005),
    }
    #: DiffTactile's sensor resolution: ~1.7k gel nodes (2.5 mm cells) in the two pads
    paper = {"pad_cell": 0.0025}
    paper_note = ("DiffTactile's sensor resolution (~1,900 gel nodes there): 1,690 nodes and 6,912 tets in "
                  "the two pads (the default: 294 and 864); the same cube and time step.")

    default_horizon = 16
    obs_entries = ("mpm.x",)
    obs_particles = 64

    grid_res = 64
    dt = 8e-4
    substeps = 10
    #: action scales (m/s): shared gripper velocity, closing speed per finger
    speed = 0.3
    close_speed = 0.1
    #: object: particles per edge (spacing dx / 2), material
    object_cells = 6
    object_E = 5e4
    object_nu = 0.3
    object_density = 1000.0
    #: a rigid object (``ps.Rigid``, shape matched) instead of the elastic cube (a subclass sets it)
    rigid_object = False
    #: lowest particle layer this far above the floor: where the cube rests (measured: settling
    #: from 4.4 mm up, the lowest layer oscillates about 0.2 mm above the floor)
    rest_height = 2e-4
    #: pads: (y, z) size, thickness, cell (m); gel material; start gap to the object's sides (m)
    pad_size = (0.03, 0.03)
    pad_thickness = 0.01
    pad_cell = 0.005
    gel_E = 5e4
    gel_nu = 0.4
    gel_density = 1000.0
    gel_alpha = 5.0
    contact_stiffness = 5e6
    contact_damping = 5e3
    start_gap = 0.001
    friction = 1.0
    #: loss: height scale (m), slip weight, squeeze bound (N) and softening force F0 (N)
    lift_scale = 0.01
    slip_weight = 0.5
    max_force = 4.0
    force_floor = 0.02
    #: goal ranges: target lift (m), object z jitter (m)
    lift_range = (0.005, 0.015)
    z_jitter = 0.003

    # ------------------------------------------------------------------ scene
    def _build_scene(self):
        dx = 1.0 / self.grid_res
        spacing = dx / 2
        size = self.object_cells * spacing  # a whole number of spacings: the lattice is centred
        floor = floor_height(self.grid_res)
        center = np.array([0.5, floor + self.rest_height - spacing / 2 + size / 2, 0.5])
        self.object_size = size
        face = center[0] - size / 2 - self.start_gap
        left = _turned_pad(self.pad_size, self.pad_thickness, self.pad_cell, face, center[1:])
        right = _mirrored(left, 0.5)
        half = np.array([0.005, self.pad_size[0] / 2 + 0.002, self.pad_size[1] / 2 + 0.002])
        back = np.array([face - self.pad_thickness - half[0], center[1], center[2]])
        self._mounts = [back, np.array([1.0 - back[0], back[1], back[2]])]
        scene = ps.Scene(dim=3, grid_res=self.grid_res, dt=self.dt, substeps_per_step=self.substeps,
                         boundary="friction", checkpoint_every=2 * self.substeps)
        self.sensors = []
        offset = 0
        for i, mesh in enumerate((left, right)):
            scene.add_tool(ps.BoxTool(position=tuple(self._mounts[i]), half_extents=tuple(half), friction=0.5))
            body = ps.FEMBody(mesh, E=self.gel_E, nu=self.gel_nu, density=self.gel_density, alpha=self.gel_alpha,
                              mount=i, contact_stiffness=self.contact_stiffness,
                              contact_damping=self.contact_damping)
            scene.add_fem(body)
            self.sensors.append(TactileSensor(body, node_offset=offset, image_size=(16, 16), markers=(4, 4),
                                              pose=(self._mounts[i], _IDENTITY)))
            offset += mesh.n_vertices
        material = (ps.Rigid(density=self.object_density) if self.rigid_object
                    else ps.Elastic(E=self.object_E, nu=self.object_nu, density=self.object_density))
        scene.add_body(ps.Box(center=tuple(center), size=(size, size, size)), material)
        scene.couple(fem_friction=self.friction)
        with warnings.catch_warnings():  # the gels sub-cycle, by design (class docstring)
            warnings.simplefilter("ignore", Subcycling)
            scene.build(max_steps=self.horizon)
        self._x_rest = scene.initial_state()["mpm.x"].copy()
        return scene

    def _action_map(self):
        A = self.scene.action_dim
        M = np.zeros((4, A))
        for i, sign in enumerate((1.0, -1.0)):
            s = self.scene.tool_slice(i)
            M[:3, s.start:s.start + 3] = np.eye(3) * self.speed
            M[3, s.start] = sign * self.close_speed
        return M

    @property
    def step_seconds(self) -> float:
        """Simulated seconds per env step."""
        return self.dt * self.substeps

    # ------------------------------------------------------------------ goal
    def _sample_goal(self, rng):
        self.target_lift = float(rng.uniform(*self.lift_range))
        dz = float(rng.uniform(-self.z_jitter, self.z_jitter))
        x = self._x_rest.copy()
        x[:, 2] += dz
        self.scene.set_initial_state(x=x)
        self.scene.reset()
        m = self.mass.numpy()
        self.start_height = float((m * x[:, 1]).sum() / m.sum())
        self.target_height = self.start_height + self.target_lift

    def _goal_features(self):
        return np.array([self.target_lift, self.target_height])

    def _goal_points(self):
        x = self.scene.initial_state()["mpm.x"]
        return (x.mean(axis=0) + np.array([0.0, self.target_lift, 0.0]))[None]

    #: render color of the target (gold: the elastic cube is green)
    goal_color = (0.98, 0.72, 0.05)

    def _goal_overlay(self, renderer):
        """The target height: the cube's start shape lifted by the target lift (a translucent gold
        box, its edges solid) and a gold line across the gripper at the target centre-of-mass
        height."""
        import pyvista as pv

        x = self.scene.initial_state()["mpm.x"]
        h = self.object_size / 2 + 0.25 * self.object_size / self.object_cells
        c = x.mean(axis=0) + np.array([0.0, self.target_lift, 0.0])
        box = pv.Box(bounds=(c[0] - h, c[0] + h, c[1] - h, c[1] + h, c[2] - h, c[2] + h))
        renderer.add_goal(box, name="goal", color=self.goal_color, opacity=0.3, smooth_shading=False)
        renderer.add_goal(box.extract_feature_edges(), name="goal_edges", color=self.goal_color, opacity=1.0,
                          line_width=2.5, smooth_shading=False)
        y = self.target_height
        z = c[2] + h + 0.004
        line = pv.Line((self._mounts[0][0] - 0.02, y, z), (self._mounts[1][0] + 0.02, y, z))
        renderer.add_goal(line, name="goal_height", color=self.goal_color, opacity=1.0, line_width=3,
                          smooth_shading=False)

    def camera_kwargs(self):
        c = np.array([0.5, self.target_height, 0.5])
        return {"camera": [tuple(c + np.array([0.06, 0.08, 0.2])), tuple(c), (0.0, 1.0, 0.0)]}

    # ------------------------------------------------------------------ readings and loss
    def readings(self, state) -> torch.Tensor:
        """(2, 3) both sensors' net contact forces (s_x, s_y, n; N), left then right, of a state
        (name -> float64 tensor); differentiable."""
        f, p, q = state["fem.f_contact"], state["tools.pos"], state["tools.rot"]
        return torch.stack([s.total_force(f, (p[i], q[i])) for i, s in enumerate(self.sensors)])

    def slip_ratios(self, forces: torch.Tensor) -> torch.Tensor:
        """(2,) softened slip ratios |s| / (mu |n| + F0) of sensor readings (see the class docstring)."""
        shear = torch.sqrt((forces[:, :2] ** 2).sum(-1) + 1e-12)
        return shear / (self.friction * forces[:, 2].abs() + self.force_floor)

    def com_height(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mass.to(x.dtype)
        return (m * x[:, 1]).sum() / m.sum()

    def _loss(self, state):
        F = self.readings(state)
        lift = ((self.com_height(state["mpm.x"]) - self.target_height) / self.lift_scale) ** 2
        slip = (self.slip_ratios(F) ** 2).sum()
        crush = (torch.relu(F[:, 2] - self.max_force) ** 2).sum() / self.max_force**2
        return lift + self.slip_weight * slip + crush

    def _tensors(self, state):
        return {k: torch.as_tensor(np.asarray(state[k], dtype=np.float64))
                for k in ("mpm.x", "fem.f_contact", "tools.pos", "tools.rot")}

    def _observation(self, state):
        with torch.no_grad():
            F = self.readings(self._tensors(state)).numpy()
        return np.concatenate([super()._observation(state), F.reshape(-1).astype(np.float32)])

    def _metrics(self, state):
        with torch.no_grad():
            t = self._tensors(state)
            F = self.readings(t)
            r = self.slip_ratios(F).numpy()
            lift = float(self.com_height(t["mpm.x"])) - self.start_height
        F = F.numpy()
        return {"lift": lift, "target_lift": self.target_lift, "slip_left": float(r[0]), "slip_right": float(r[1]),
                "normal_left": float(F[0, 2]), "normal_right": float(F[1, 2])}


"""Walker (DiffTaichi / ChainQueen): actuated soft robots that must walk forward (+x).

The robots are built of :class:`physim.Muscle` bodies (vertical fibers; body ``actuator=k``
follows action column ``k``, a signal in [-1, 1] times the material's
``actuation_strength``: positive contracts the fiber, negative extends it) on a passive
:class:`physim.Elastic` torso, standing on a frictional floor. Every leg is two muscle halves
(back, front) with their own actuators, so a leg can both shorten and bend (the DiffTaichi
``diffmpm`` walker); driving the two halves a quarter period apart makes each foot trace a
loop and push the body forward.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

import physim as ps

from .base import Arg, PhysimEnv

__all__ = ["Walker2DEnv", "Walker3DEnv"]


class _WalkerEnv(PhysimEnv):
    """Shared walker task: scene from :meth:`_add_robot`, goal, loss, observation, hand gait.

    The goal is a seeded target distance: ``U(0.6, 1.0)`` x the distance the hand gait
    (:meth:`hand_gait`) covers in ``horizon`` steps, so every goal is reachable. The hand-gait
    distance is simulated once per (class, horizon) and cached.

    The body is the rows of state entries ``obs_entries`` (positions, velocities): MPM
    particles here, mass-spring nodes in :class:`physim.envs.mass_spring_walker.MassSpringWalker2DEnv`;
    :meth:`_body_mass` weights them in the centroid.
    """

    args = {
        "grid_res": Arg("MPM grid cells per axis; particles at dx / 2, the robot keeps its size in meters "
                        "(its parts are whole numbers of particles, rounded)", "int", 16, 512),
        "substeps": Arg("MPM substeps per env step (the automatic dt is proportional to dx: doubling the grid "
                        "and the substeps keeps the step's simulated time)", "int", 1, 10_000),
        "target_range": Arg("goal: the target distance is drawn from this range, as a fraction of the hand "
                            "gait's distance over the horizon (> 1: farther than the hand gait walks)",
                            "range", 0.05, 3.0),
        "wall_friction": Arg("Coulomb coefficient of the floor (and side walls)", "float", 0.0, 10.0),
    }

    default_horizon = 50
    dim: ClassVar[int]
    grid_res: ClassVar[int]
    substeps: ClassVar[int]
    #: particle spacing (m) at which the robots' part sizes are given in particles
    lattice_spacing: ClassVar[float]
    #: Coulomb coefficient of the floor (and side walls)
    wall_friction = 1.0
    #: kg/m^3: heavy enough that the weight matters against the muscle stress (lighter
    #: robots hop instead of walking) and it lengthens the automatic dt
    density = 10.0
    youngs_modulus = 1e3
    actuation_strength = 250.0
    #: hand gait: period in env steps and per-actuator phase (radians)
    gait_period: ClassVar[float]
    gait_phases: ClassVar[tuple[float, ...]]
    #: target distance as a fraction of the hand gait's distance
    target_range = (0.6, 1.0)
    _gait_distance_cache: ClassVar[dict] = {}

    # ------------------------------------------------------------------ scene
    def _add_robot(self, scene: ps.Scene, muscle: ps.Muscle, body: ps.Elastic) -> None:
        raise NotImplementedError

    def _build_scene(self):
        scene = ps.Scene(dim=self.dim, grid_res=self.grid_res, substeps_per_step=self.substeps,
                         boundary="friction", wall_friction=self.wall_friction)
        muscle = ps.Muscle(E=self.youngs_modulus, nu=0.2, density=self.density,
                           actuation_strength=self.actuation_strength)
        body = ps.Elastic(E=self.youngs_modulus, nu=0.2, density=self.density)
        self._add_robot(scene, muscle, body)
        return scene.build(max_steps=self.horizon)

    def _action_map(self):
        n = self.scene.n_actuators
        M = np.zeros((n, self.scene.action_dim))
        M[:, self.scene.actuation_slice] = np.eye(n)
        return M

    # ------------------------------------------------------------------ hand gait
    def hand_gait(self, steps: int | None = None, amplitude: float = 1.0) -> np.ndarray:
        """The hand-designed periodic gait: ``amplitude * sin(2 pi (t + 1/2) / period + phase_k)``
        for actuator k at step t; (steps, action_dim) normalized actions (default: horizon)."""
        T = self.horizon if steps is None else int(steps)
        t = np.arange(T)[:, None] + 0.5
        a = amplitude * np.sin(2 * np.pi * t / self.gait_period + np.asarray(self.gait_phases)[None])
        return np.clip(a, -1.0, 1.0)

    def gait_distance(self) -> float:
        """Centroid x displacement (m) of :meth:`hand_gait` over ``horizon`` steps from the
        initial state (simulated once per class and horizon)."""
        key = (type(self).__name__, tuple(sorted(self.settings.items())))
        if key not in self._gait_distance_cache:
            self.scene.reset()
            c0 = self._centroid(self._body_x())[0]
            self.scene.forward(self.hand_gait() @ self._action_map(), requires_grad=False)
            c1 = self._centroid(self._body_x())[0]
            self.scene.reset()
            self._gait_distance_cache[key] = float(c1 - c0)
        return self._gait_distance_cache[key]

    # ------------------------------------------------------------------ task hooks
    def _body_mass(self):
        """(n,) masses (kg, float64 tensor) of the body's rows (default the MPM particles')."""
        return self.mass

    def _body_x(self) -> np.ndarray:
        """(n, dim) current body positions (m)."""
        return self.scene.get_state()[self.obs_entries[0]]

    def _centroid(self, x: np.ndarray) -> np.ndarray:
        m = self._body_mass().numpy()
        return m @ np.asarray(x, dtype=np.float64) / m.sum()

    def _sample_goal(self, rng):
        self.scene.reset()
        self._x_start = self._body_x().astype(np.float64)
        self.start_x = float(self._centroid(self._x_start)[0])
        # (the gait needs ~8 steps to get going: guard against a zero distance for tiny horizons)
        d = max(self.gait_distance(), 1e-3)
        self.target_distance = float(rng.uniform(*self.target_range) * d)
        self.target_x = self.start_x + self.target_distance

    def _loss(self, state):
        x = state[self.obs_entries[0]]
        m = self._body_mass()
        cx = (m * x[:, 0]).sum() / m.sum()
        return ((cx - self.target_x) / self.target_distance) ** 2

    def _goal_features(self):
        return np.array([self.target_x, self.target_distance])

    def _observation(self, state):
        base = super()._observation(state)
        c = self._centroid(state[self.obs_entries[0]])
        vc = self._centroid(state[self.obs_entries[1]])
        extra = np.concatenate([c, vc, [self.target_x - c[0]]]).astype(np.float32)
        return np.concatenate([base, extra])

    def _metrics(self, state):
        cx = float(self._centroid(state[self.obs_entries[0]])[0])
        return {"displacement": cx - self.start_x,
                "progress": (cx - self.start_x) / self.target_distance,
                "target_distance": self.target_distance}

    #: render color of the finish line and the ghost (gold: the torso is green)
    goal_color = (0.98, 0.72, 0.05)

    def _goal_overlay(self, renderer):
        """A finish line where the centroid must arrive (``target_x``) and, as faint dots, the
        start shape moved there (:meth:`_goal_points`)."""
        from physim.render import finish_line

        floor = self.scene.floor
        renderer.add_goal(finish_line(self.target_x, floor, self.dim, height=0.25, lo=floor + 0.1, hi=0.9 - floor),
                          name="goal", color=self.goal_color, opacity=0.85, smooth_shading=False)
        renderer.add_points(self._goal_points(), color=self.goal_color, name="goal_ghost", opacity=0.35)

    def _lattice(self, count: int) -> float:
        """Length (m) of ``count`` particles at :attr:`lattice_spacing`, rounded to whole particles
        at the scene's spacing (the same length at any grid)."""
        sp = self.scene_spacing
        return max(1, round(count * self.lattice_spacing / sp)) * sp

    def _goal_points(self):
        """The start shape moved forward by the target distance (a ghost at the goal)."""
        shift = np.zeros(self.dim)
        shift[0] = self.target_distance
        return self._x_start + shift


class Walker2DEnv(_WalkerEnv):
    """A 2D soft walker (DiffTaichi ``diffmpm``): an elastic torso on two legs of two muscle
    halves each, walking forward on a frictional floor to a seeded target distance.

    Robot: torso 0.31 x 0.09 m (Elastic), back and front leg 0.094 x 0.094 m, each a back
    and a front :class:`physim.Muscle` half with vertical fibers (actuators 0, 1: back leg;
    2, 3: front leg); E 1e3 Pa, nu 0.2, density 10, actuation strength 250 Pa; floor Coulomb
    friction 1.0. Hand gait (:meth:`hand_gait`): sinusoids of period 10 steps, the front half
    of each leg a quarter period behind the back half, the two legs half a period apart;
    it walks ~0.17 m in the default 50 steps (zero actions: ~0 m).

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (4,))``: muscle actuation signals (x 250 Pa active stress,
                        > 0 contracts), held for the step's 16 substeps
    Observation space   ``Box(-inf, inf, (520,))``: 128 sampled particles (x, v), goal
                        (target x, target distance), phase t / T, centroid (x, y), centroid
                        velocity, target x - centroid x
    Reward              decrease of the task loss in the step (forward progress towards the
                        target, weighted by the distance still to go)
    Loss                ((centroid x - target x) / target distance)^2: 1 at the start, 0 at
                        the target (overshooting costs too)
    Start state         robot at rest, feet on the floor, back at x = 0.1; target distance
                        U(0.6, 1.0) x the hand gait's distance over the horizon (seeded)
    Episode end         truncated after ``horizon`` steps (default 50); never terminates
    Info                ``loss``, ``displacement`` (centroid x moved, m), ``progress``
                        (displacement / target distance), ``target_distance``
    ==================  =====================================================================

    Defaults: grid 64, 768 particles, 16 substeps of dt 5.9e-4 s per step (0.47 s per episode).
    Speed (f64, 2 shared CPU cores): 30-70 steps/s, one ``loss_and_grad`` at T = 50 6-10 s.
    Adam on the open-loop actions (lr 0.2, from zero) reaches the seed-0 target (loss < 0.002)
    in 6 iterations; from the hand gait with a 0.3 m target it walks 0.30 m (gait: 0.14 m).
    """

    #: DiffTaichi diffmpm's 128^2 grid (3,072 particles), twice the substeps of the default
    paper = {"grid_res": 128, "substeps": 32}
    paper_note = ("DiffTaichi diffmpm's 128^2 grid: 3,072 particles (the same robot, 4x the particles), 32 "
                  "substeps of 3.0e-4 s (9.5 ms per step, as the default's).")

    dim = 2
    grid_res = 64
    substeps = 16
    lattice_spacing = 0.5 / 64
    gait_period = 10.0
    gait_phases = (0.0, -np.pi / 2, np.pi, np.pi / 2)

    def _add_robot(self, scene, muscle, body):
        self.scene_spacing = scene.spacing  # every part is a whole number of particles
        x0, y0 = 0.1, scene.floor  # back of the robot; the floor wall's top
        n = self._lattice
        leg_w, leg_h, body_w, body_h = n(12), n(12), n(40), n(12)
        scene.add_body(ps.Box(center=(x0 + body_w / 2, y0 + leg_h + body_h / 2), size=(body_w, body_h)), body)
        k = 0
        for lx in (0.0, body_w - leg_w):  # back leg, front leg
            for half in range(2):  # back half, front half
                c = (x0 + lx + (half + 0.5) * leg_w / 2, y0 + leg_h / 2)
                scene.add_body(ps.Box(center=c, size=(leg_w / 2, leg_h)), muscle, actuator=k, fiber=(0.0, 1.0))
                k += 1


class Walker3DEnv(_WalkerEnv):
    """A 3D four-legged soft walker (ChainQueen): an elastic slab torso on four legs of two
    muscle halves each, walking forward on a frictional floor to a seeded target distance.

    Robot: torso 0.31 x 0.08 x 0.23 m (Elastic), four legs 0.094 x 0.094 x 0.0625 m at its
    corners, each a back and a front :class:`physim.Muscle` half with vertical fibers
    (actuators 2 l, 2 l + 1 for leg l = back-left, back-right, front-left, front-right);
    E 1e3 Pa, nu 0.2, density 10, actuation strength 250 Pa; floor Coulomb friction 1.0.
    Hand gait (:meth:`hand_gait`): a bound, sinusoids of period 14 steps, the front half of
    each leg a quarter period behind its back half, left and right legs in step, front legs
    half a period after the back legs; it walks ~0.17 m in the default 50 steps.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (8,))``: muscle actuation signals (x 250 Pa active stress,
                        > 0 contracts), held for the step's 10 substeps
    Observation space   ``Box(-inf, inf, (778,))``: 128 sampled particles (x, v), goal
                        (target x, target distance), phase t / T, centroid (x, y, z), centroid
                        velocity, target x - centroid x
    Reward              decrease of the task loss in the step (forward progress towards the
                        target, weighted by the distance still to go)
    Loss                ((centroid x - target x) / target distance)^2: 1 at the start, 0 at
                        the target (overshooting costs too)
    Start state         robot at rest, feet on the floor, back at x = 0.15, centered in z;
                        target distance U(0.6, 1.0) x the hand gait's distance (seeded)
    Episode end         truncated after ``horizon`` steps (default 50); never terminates
    Info                ``loss``, ``displacement`` (centroid x moved, m), ``progress``
                        (displacement / target distance), ``target_distance``
    ==================  =====================================================================

    Defaults: grid 32, 2,076 particles, 10 substeps of dt 1e-3 s per step (0.5 s per episode;
    the automatic dt is capped at 1e-3). Speed (f64, 2 shared CPU cores): 10-12 steps/s, one
    ``loss_and_grad`` at T = 50 17-24 s. Adam on the open-loop actions (lr 0.2, from zero)
    reaches the seed-0 target (loss < 1e-4) in 4 iterations.
    """

    #: a 64^3 grid (16.6k particles); the default's dt is capped at 1e-3 s, the paper's is 5.9e-4 s,
    #: so 17 substeps keep the step's simulated time (10.1 ms; the default's 10 ms)
    paper = {"grid_res": 64, "substeps": 17}
    paper_note = ("a 64^3 grid (PlasticineLab's and FluidLab's resolution): 16,608 particles (the same "
                  "robot, 8x the particles), 17 substeps of 5.9e-4 s (10.1 ms per step; the default's 10 of "
                  "1e-3 s, the automatic dt's cap).")

    dim = 3
    grid_res = 32
    substeps = 10
    lattice_spacing = 0.5 / 32
    gait_period = 14.0
    gait_phases = tuple(np.pi * p for leg in (0.0, 0.0, 1.0, 1.0) for p in (leg, leg - 0.5))

    def _add_robot(self, scene, muscle, body):
        self.scene_spacing = scene.spacing
        x0, y0 = 0.15, scene.floor
        n = self._lattice
        L, H, W = n(20), n(5), n(15)  # torso length (x), height, width (z)
        leg_l, leg_h, leg_w = n(6), n(6), n(4)
        z0 = 0.5 - W / 2
        scene.add_body(ps.Box(center=(x0 + L / 2, y0 + leg_h + H / 2, 0.5), size=(L, H, W)), body)
        k = 0
        for lx in (0.0, L - leg_l):  # back legs, front legs
            for lz in (0.0, W - leg_w):  # left, right
                for half in range(2):  # back half, front half
                    c = (x0 + lx + (half + 0.5) * leg_l / 2, y0 + leg_h / 2, z0 + lz + leg_w / 2)
                    scene.add_body(ps.Box(center=c, size=(leg_l / 2, leg_h, leg_w)), muscle, actuator=k,
                                   fiber=(0.0, 1.0, 0.0))
                    k += 1

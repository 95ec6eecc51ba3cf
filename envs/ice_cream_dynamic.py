"""IceCreamDynamic (FluidLab's dynamic ice cream): catch soft-serve from a dispenser on a moving
cone so that it piles up into a target shape."""

from __future__ import annotations

import numpy as np
import torch

import physim as ps
from physim import losses

from .base import Arg, PhysimEnv

__all__ = ["IceCreamDynamicEnv"]


class IceCreamDynamicEnv(PhysimEnv):
    """Move a cone under a soft-serve dispenser so the ribbon it catches piles into a target shape.

    A fixed nozzle (a sphere tool) near the top of the 2D domain dispenses soft-serve (a
    :class:`physim.Viscoplastic` Bingham material, yield stress ``yield_stress``) straight down
    at 0.5 m/s (a :class:`physim.Emitter`). Below it, the agent moves the cone's top (a flat box
    tool, 0.16 x 0.03 m; friction 0.8) sideways and up and down; the soft-serve lands on it and
    piles up (a slab, not a FluidLab 3D swirl: this is a vertical section). The target is the
    mass distribution a scripted cone motion seeded by ``reset(seed=...)`` leaves (a sideways
    sweep of seeded amplitude and direction), so every goal is reachable.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (2,))``: the cone's velocity (x, y), scaled so that a whole
                        episode at full speed moves it ``reach`` = 0.15 m
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v; the dispenser's
                        reserve included), the tools' poses, the goal's sweep (amplitude,
                        direction), episode phase
    Reward              decrease of the task loss in the step
    Loss                squared L2 distance of the soft-serve's grid mass (quadratic B-spline,
                        32^2 cells, y < 0.6) to the target's over the target's: ``sum((m - m*)^2) /
                        sum(m*^2)`` (0 on the target); smooth in the actions
    Start state         nothing dispensed yet; the cone's top at (0.5, 0.45), the nozzle
                        (radius 2 cm) at (0.5, 0.75), its jet pointing down
    Episode end         truncated after ``horizon`` steps (default 40); never terminates
    Info                ``loss``, ``iou`` (occupied-cell intersection over union with the
                        target's grid mass), ``dispensed`` (particles emitted so far)
    ==================  =====================================================================

    Defaults: grid 32^2, particle spacing dx / 2, soft-serve ``Viscoplastic(E=1e3, nu=0.3,
    yield_stress, viscosity=1)`` (density 1), dt 3.4e-4 s (automatic), 30 substeps per step
    (10.2 ms; 0.41 s per episode); the dispenser's 210 reserved particles (512 particles/s, 8
    across its bore) are all the MPM material. The reserve not dispensed yet sits at the
    nozzle's exit (y = 0.675), above the loss's window. At seed 0 the cone held still scores
    0.27 and the seeded script 0 (the target is its own rollout).
    """

    args = {
        "grid_res": Arg("MPM grid cells per axis", "int", 16, 256),
        "substeps": Arg("MPM substeps per env step (dt is automatic)", "int", 1, 10_000),
        "yield_stress": Arg("the soft-serve's yield stress (Pa)", "float", 0.0, 1e4),
        "sweep_range": Arg("goal: how far (m) the scripted cone sweeps sideways is drawn from this range "
                           "(farther is harder)", "range", 0.0, 0.15),
    }
    #: FluidLab's 64-cell grid resolution (its task is 3D: this is the vertical section)
    paper = {"grid_res": 64, "substeps": 60}
    paper_note = "FluidLab's 64-cell grid resolution in this vertical section, 20 substeps (the same step time)."

    default_horizon = 40
    grid_res = 32
    substeps = 30
    yield_stress = 2.5
    sweep_range = (0.04, 0.1)
    jet_speed = 1.0
    nozzle_pos = (0.5, 0.75)
    cone_pos = (0.5, 0.55)
    cone_half = (0.08, 0.015)
    reach = 0.15
    loss_res = 32

    @property
    def _rows(self) -> int:
        """Loss-grid rows kept: cell centres below y = 0.6, out of reach of the reserve parked at
        the nozzle's exit (y = 0.675) and of the jet's first 7 cm."""
        return int(0.6 * self.loss_res)

    def _build_scene(self):
        scene = ps.Scene(dim=2, grid_res=self.grid_res, substeps_per_step=self.substeps, boundary="slip")
        self.cream = ps.Viscoplastic(E=1e3, nu=0.3, yield_stress=self.yield_stress, viscosity=1.0)
        self.nozzle = ps.SphereTool(position=self.nozzle_pos, radius=0.02, friction=0.0, softness=0.0)
        self.cone = ps.BoxTool(position=self.cone_pos, half_extents=self.cone_half, friction=0.8, softness=0.0)
        scene.add_tool(self.cone)
        scene.add_tool(self.nozzle)
        self.emitter = ps.Emitter(self.cream, self.nozzle, speed=self.jet_speed, direction=(0.0, -1.0))
        scene.add_emitter(self.emitter)
        scene.build(max_steps=self.horizon)
        self._episode_time = self.horizon * scene.substeps_per_step * scene.dt
        return scene

    def _action_map(self):
        M = np.zeros((2, self.scene.action_dim))
        M[0, 0] = M[1, 1] = self.reach / self._episode_time  # the cone (tool 0) moves; the nozzle stays
        return M

    # ------------------------------------------------------------------ goal
    def script(self, amplitude: float, direction: float) -> np.ndarray:
        """Normalized actions of the scripted sweep: the cone moves ``amplitude`` m towards
        ``direction`` (+1 right, -1 left) over the first half of the episode and comes back a
        third of the way over the second half."""
        T = self.horizon
        step = self.reach / T  # m per step at full speed
        a = np.zeros((T, 2))
        h = max(T // 2, 1)
        a[:h, 0] = direction * amplitude / (h * step)
        if T > h:
            a[h:, 0] = -direction * amplitude / (3 * (T - h) * step)
        return np.clip(a, -1, 1)

    def _sample_goal(self, rng):
        amplitude = rng.uniform(*self.sweep_range)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        self.goal_params = np.array([amplitude, direction])
        self.scene.reset()
        self.scene.forward(self.script(amplitude, direction) @ self._action_map(), requires_grad=False)
        x = self.scene.get_state()["mpm.x"]
        self._target = torch.as_tensor(losses.grid_mass_numpy(x, self._mass.numpy(), self.loss_res)[:, :self._rows])
        self._target_norm = float((self._target**2).sum())
        self.scene.reset()

    # ------------------------------------------------------------------ loss & metrics
    def _loss(self, state):
        g = losses.grid_mass(state["mpm.x"], self.mass, self.loss_res)[:, :self._rows]
        return ((g - self._target) ** 2).sum() / self._target_norm

    def _goal_features(self):
        return self.goal_params.copy()

    def _metrics(self, state):
        g = losses.grid_mass_numpy(state["mpm.x"], self._mass.numpy(), self.loss_res)[:, :self._rows]
        active = self.scene.particle_active()
        return {"iou": losses.iou(g, self._target.numpy()), "dispensed": int(active.sum())}

    def _goal_points(self):
        """Centres of the cells where the target's grid mass exceeds 10 % of its peak."""
        t = self._target.numpy()
        i, j = np.nonzero(t > 0.1 * t.max())
        return (np.stack([i, j], axis=1) + 0.5) / self.loss_res

"""Folding (ThinShellLab): fold a paper strip with a gripper so that the crease it keeps after
release matches a seeded target.

Paper creases plastically (:class:`physim.ShellMaterial` ``yield_angle``): a hinge bent past its
yield angle moves its rest angle by the excess, so after the gripper lets go the strip springs
back to its rest angles, not to flat. The loss therefore reads ``shell.rest_angle`` -- the shape
the strip keeps after release (with every hinge at its rest angle the bending energy is zero) --
rather than the shape while it is held. The gradient of a rest angle is exact on each branch of
the yield test (:mod:`physim.parts.shell`): nonzero only through hinges that yield, which is
what makes this task hard for gradients alone.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import physim as ps
from physim.shells import ShellBody, ShellMaterial, ShellMesh

from ._shells import draw_target_sheet, sheet_camera
from .base import PhysimEnv

__all__ = ["FoldingEnv"]


class FoldingEnv(PhysimEnv):
    """Fold a paper strip, clamped at one end, with a gripper holding the other end, so that the
    crease it keeps matches a seeded target.

    Strip: 12 x 3 cm paper (13 x 3 vertices, 39; 48 triangles), 0.1 mm thick, 800 kg/m^3,
    bending stiffness D = 3.7e-4 N m (80 g/m^2 copy paper), yield angle 20 degrees with hardening
    0.1 (:meth:`physim.ShellMaterial.paper`), damping 5 /s, held 0.3 m above the floor: its
    left two columns of vertices are clamped (pinned; a static box, tool 1, draws the clamp),
    its right column is attached to the gripper (tool 0, a small box) and follows it rigidly.
    The membrane is 100x softer than paper's (E t = 4e3 N/m instead of 4e5 N/m): folding is an
    inextensible motion whose stretch stays below 1e-3 either way, and the softer membrane
    keeps Newton's Hessian well conditioned (with paper's own E, folds at this speed made
    Newton stall; see the task's report in ``benchmarks/results/shell_tasks.json``).

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (3,))``: the gripper's velocity in the strip's plane
                        (x, y; x 1.5 m/s) and its turn rate about z (x 40 rad/s)
    Observation space   ``Box(-inf, inf, (250,))``: the strip's vertices (x, v: 234), both
                        tools' poses (14), the target's largest kept angle (rad), phase t / T
    Reward              decrease of the task loss in the step
    Loss                crease error ``sum_h (r_h - r*_h)^2 / sum_h r*_h^2`` of the rest
                        angles ``r`` (the crease kept after release) against the target's
                        ``r*``, plus ``shape_weight`` (0.2) x the mean squared distance of the
                        vertices to the target's at the end of its fold, over the strip's
                        length squared (a shaping term: it has a gradient before any hinge
                        yields); ~1.02 at the start (no crease yet), 0 at the target
    Start state         flat strip at rest; the target is the crease and end shape of a
                        scripted fold (lift-and-turn, then lower) with seeded speeds, so every
                        target is reachable
    Episode end         truncated after ``horizon`` steps (default 20, 0.1 s); never terminates
    Info                ``loss``, ``crease_error``, ``max_kept_angle`` and
                        ``target_max_kept_angle`` (deg)
    ==================  =====================================================================

    Time: one substep of dt 5 ms per step (implicit Euler), 0.1 s per default episode; a shorter
    horizon takes ``ceil(0.1 s / (T dt))`` substeps per step (3 at T = 8), so an episode always
    lasts at least 0.1 s.
    """

    default_horizon = 20
    obs_entries = ("shell.x", "shell.v")
    obs_particles = 128

    dt = 5e-3
    #: simulated seconds per episode: each step is ceil(episode_seconds / (horizon dt)) substeps
    #: (1 at the default horizon), so shorter horizons cover the same motion
    episode_seconds = 0.1
    #: strip (m), vertices along and across
    length = 0.12
    width = 0.03
    n_along = 13
    n_across = 3
    #: the strip's height (m) and its left end's x
    height = 0.3
    start_x = 0.42
    #: action scales: m/s (x, y), rad/s (turn about z)
    speed = 1.5
    spin = 40.0
    #: paper with a 100x softer membrane (class docstring)
    membrane_E = 4e7
    paper_bending = 3.7e-4
    damping = 5.0
    shape_weight = 0.2
    #: ranges of the scripted target fold (normalized actions): back speed, lift speed, turn rate
    goal_back = (0.3, 0.6)
    goal_lift = (0.2, 0.5)
    goal_turn = (0.4, 0.8)

    # ------------------------------------------------------------------ scene
    def _material(self) -> ShellMaterial:
        return ShellMaterial.paper(E=self.membrane_E, bending=self.paper_bending, damping=self.damping)

    def _build_scene(self):
        L, W, n = self.length, self.width, self.n_along
        s = L / (n - 1)
        mesh = ShellMesh.strip(start=(self.start_x, self.height, 0.5), length=L, width=W, n=n,
                               n_width=self.n_across, normal="y")
        X = mesh.vertices
        clamped = np.flatnonzero(X[:, 0] < self.start_x + 1.5 * s)
        held = np.flatnonzero(X[:, 0] > self.start_x + L - 0.5 * s)
        self.substeps = max(1, math.ceil(self.episode_seconds / (self.horizon * self.dt) - 1e-9))
        scene = ps.Scene(dim=3, grid_res=32, dt=self.dt, substeps_per_step=self.substeps)
        end = self.start_x + L
        scene.add_tool(ps.BoxTool(position=(end + 0.004, self.height, 0.5), half_extents=(0.005, 0.004, 0.6 * W),
                                  friction=0.5))
        scene.add_tool(ps.BoxTool(position=(self.start_x + 0.5 * s - 0.004, self.height, 0.5),
                                  half_extents=(0.5 * s + 0.005, 0.004, 0.6 * W), friction=0.5))
        scene.add_shell(ShellBody(mesh, self._material(), pinned=clamped, attach={0: held}))
        scene.build(max_steps=self.horizon)
        self._goals: dict = {}
        return scene

    def _action_map(self):
        M = np.zeros((3, self.scene.action_dim))
        M[0, 0] = M[1, 1] = self.speed
        M[2, 5] = self.spin
        return M

    # ------------------------------------------------------------------ goal
    def script(self, back: float, lift: float, turn: float, horizon: int | None = None) -> np.ndarray:
        """(T, 3) normalized actions of the scripted fold: the gripper moves back (-x) at ``back``
        and turns at ``turn`` the whole time, rising at ``lift`` for the first half and sinking at
        ``lift`` for the second (all in [0, 1], fractions of the action scales)."""
        T = self.horizon if horizon is None else int(horizon)
        for name, v in (("back", back), ("lift", lift), ("turn", turn)):
            if not (np.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"FoldingEnv.script: {name} must be in [0, 1], got {v!r}")
        a = np.zeros((T, 3))
        a[:, 0] = -back
        a[:, 1] = lift
        a[T // 2:, 1] = -lift
        a[:, 2] = -turn
        return a

    def _sample_goal(self, rng):
        self.goal_params = np.array([rng.uniform(*self.goal_back), rng.uniform(*self.goal_lift),
                                     rng.uniform(*self.goal_turn)])
        self._goal_actions = self.script(*self.goal_params)
        key = tuple(self.goal_params.tolist())
        if key not in self._goals:  # a seed's goal is simulated once per env (Gymnasium resets often)
            self.scene.reset()
            self.scene.forward(self._goal_actions @ self._action_map(), requires_grad=False)
            s = self.scene.get_state()
            self.scene.reset()
            self._goals[key] = (s["shell.rest_angle"], s["shell.x"])
        rest, x = self._goals[key]
        self._target_rest = torch.as_tensor(rest)
        self._target_x = x
        self._target_x_t = torch.as_tensor(self._target_x)
        self._target_norm = float((self._target_rest ** 2).sum())
        if self._target_norm <= 0.0:
            raise RuntimeError(f"the scripted fold {self.goal_params.tolist()} kept no crease; widen the goal ranges")

    def _goal_features(self):
        return np.array([float(self._target_rest.abs().max())])

    def _goal_points(self):
        return self._target_x

    def _draw_goal(self) -> None:
        draw_target_sheet(self._renderer, self._goal_points(), self.scene.shell_bodies[0].mesh.triangles)

    def camera_kwargs(self):
        return sheet_camera((self.start_x + 0.5 * self.length, self.height + 0.03, 0.5), distance=0.22)

    # ------------------------------------------------------------------ loss
    def crease_error(self, rest: torch.Tensor) -> torch.Tensor:
        """Relative squared error of rest angles ``rest`` (h,) against the target's."""
        return ((rest - self._target_rest) ** 2).sum() / self._target_norm

    def _loss(self, state):
        shape = ((state["shell.x"] - self._target_x_t) ** 2).sum(-1).mean() / self.length ** 2
        return self.crease_error(state["shell.rest_angle"]) + self.shape_weight * shape

    def _metrics(self, state):
        rest = torch.as_tensor(np.asarray(state["shell.rest_angle"], dtype=np.float64))
        return {"crease_error": float(self.crease_error(rest)),
                "max_kept_angle": math.degrees(float(rest.abs().max())),
                "target_max_kept_angle": math.degrees(float(self._target_rest.abs().max()))}

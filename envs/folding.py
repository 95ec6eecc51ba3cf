"""Folding (ThinShellLab): fold a paper strip with a gripper so that the crease it keeps after
release matches a seeded target.

Paper creases plastically (:class:`physim.ShellMaterial` ``yield_angle``): a hinge bent past its
yield angle moves its rest angle by the excess, so after the gripper lets go the strip springs
back to its rest angles, not to flat. The task's main term therefore reads ``shell.rest_angle``
-- the shape the strip keeps after release (with every hinge at its rest angle the bending
energy is zero) -- rather than the shape while it is held. The gradient of a rest angle is exact
on each branch of the yield test (:mod:`physim.parts.shell`): nonzero only through hinges that
yield. Alone, that term is flat wherever nothing yields (an unfolded strip: zero gradient, the
plateau that stalled gradient descent in an earlier version of this task), so the loss adds two
shaping terms with a gradient everywhere: the held strip's bends (dihedral angles) and vertex
positions at the end of the fold, against the target fold's. The target is a monotone fold
(the gripper moves back, up and turns at constant speeds), so a strip held bent like the target
has passed through the target's largest bends, and matching the held bends drives the hinges
past their yield angle where the target's did.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import physim as ps
from physim.shells import ShellBody, ShellMaterial, ShellMesh

from ._shells import ShellTaskEnv, dihedral_angles_torch, sheet_camera

__all__ = ["FoldingEnv"]


class FoldingEnv(ShellTaskEnv):
    """Fold a paper strip, clamped at one end, with a gripper holding the other end, so that the
    crease it keeps matches a seeded target.

    Strip: 12 x 3 cm paper (13 x 3 vertices, 39; 48 triangles, 58 hinges), 0.1 mm thick,
    800 kg/m^3, bending stiffness D = 3.7e-4 N m (80 g/m^2 copy paper), yield angle 20 degrees
    with hardening 0.1 (:meth:`physim.ShellMaterial.paper`), damping 5 /s, held 0.3 m above the
    floor: its left two columns of vertices are clamped (pinned; a static box, tool 1, draws the
    clamp), its right column is attached to the gripper (tool 0, a small box) and follows it
    rigidly. The membrane is 100x softer than paper's (E t = 4e3 N/m instead of 4e5 N/m): folding
    is an inextensible motion whose stretch stays below 1e-3 either way, and the softer membrane
    keeps Newton's Hessian well conditioned (with paper's own E, folds at this speed made Newton
    stall).

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (3,))``: the gripper's velocity in the strip's plane
                        (x, y; x 2 m/s) and its turn rate about z (x 50 rad/s)
    Observation space   ``Box(-inf, inf, (250,))``: the strip's vertices (x, v: 234), both
                        tools' poses (14), the target's largest kept angle (rad), phase t / T
    Reward              decrease of the task loss in the step
    Loss                ``0.5 crease + 0.25 bend + 0.25 shape``, each term relative to its
                        value for the unfolded strip (zero actions), so the loss is 1 there
                        and 0 at the target: ``crease`` the squared error of the rest angles
                        (the crease kept after release) against the target's, ``bend`` of the
                        held strip's dihedral angles at the end (as ``2 (1 - cos)`` of the
                        difference: no jump at +-pi), ``shape`` the mean squared
                        distance of its vertices to the target's (the two shaping terms have
                        a gradient before any hinge yields)
    Start state         flat strip at rest; the target is the crease and end shape of a
                        scripted monotone fold (:meth:`script`: back, up and turning over at
                        seeded constant speeds), so every target is reachable; it keeps a
                        crease of 20-40 degrees on one or two columns of hinges near the clamp
    Episode end         truncated after ``horizon`` steps (default 20, 0.2 s); never terminates
    Info                ``loss``, ``crease_error``, ``bend_error``, ``shape_error`` (the three
                        terms, each 1 for the unfolded strip), ``max_kept_angle`` and
                        ``target_max_kept_angle`` (deg)
    ==================  =====================================================================

    Time (:class:`ShellTaskEnv`): two substeps of dt 5 ms per step (implicit Euler), 0.2 s per
    default episode; another horizon takes ``ceil(0.2 s / (T dt))`` substeps per step (5 at
    T = 8), so an episode always lasts at least 0.2 s. The target's speeds are a third of the
    action range or less (the target's normalized actions: back 0.26-0.34, up 0.04-0.09, turn
    0.24-0.40), within reach of a gradient method's first iterations.
    """

    #: simulated seconds per episode (:class:`ShellTaskEnv`): 2 substeps per step at the default horizon
    episode_seconds = 0.2
    #: strip (m), vertices along and across
    length = 0.12
    width = 0.03
    n_along = 13
    n_across = 3
    #: the strip's height (m) and its left end's x
    height = 0.3
    start_x = 0.42
    #: action scales: m/s (x, y), rad/s (turn about z)
    speed = 2.0
    spin = 50.0
    #: paper with a 100x softer membrane (class docstring)
    membrane_E = 4e7
    paper_bending = 3.7e-4
    damping = 5.0
    #: weights of the loss's terms: kept crease, held bends, held shape (each 1 for the unfolded strip)
    crease_weight = 0.5
    bend_weight = 0.25
    shape_weight = 0.25
    #: ranges of the scripted target fold (normalized actions): back speed, lift speed, turn rate
    goal_back = (0.26, 0.34)
    goal_lift = (0.04, 0.09)
    goal_turn = (0.24, 0.40)

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
        scene = self.new_scene()
        end = self.start_x + L
        scene.add_tool(ps.BoxTool(position=(end + 0.004, self.height, 0.5), half_extents=(0.005, 0.004, 0.6 * W),
                                  friction=0.5))
        scene.add_tool(ps.BoxTool(position=(self.start_x + 0.5 * s - 0.004, self.height, 0.5),
                                  half_extents=(0.5 * s + 0.005, 0.004, 0.6 * W), friction=0.5))
        scene.add_shell(ShellBody(mesh, self._material(), pinned=clamped, attach={0: held}))
        scene.build(max_steps=self.horizon)
        self._hinges = torch.as_tensor(mesh.hinges().astype(np.int64))
        self._goals: dict = {}
        self._unfolded = None
        return scene

    def _action_map(self):
        M = np.zeros((3, self.scene.action_dim))
        M[0, 0] = M[1, 1] = self.speed
        M[2, 5] = self.spin
        return M

    # ------------------------------------------------------------------ goal
    def script(self, back: float, lift: float, turn: float, horizon: int | None = None) -> np.ndarray:
        """(T, 3) normalized actions of the scripted monotone fold: the gripper moves back (-x) at
        ``back``, up at ``lift`` and turns over (about -z) at ``turn``, all constant (in [0, 1],
        fractions of the action scales)."""
        T = self.horizon if horizon is None else int(horizon)
        for name, v in (("back", back), ("lift", lift), ("turn", turn)):
            if not (np.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"FoldingEnv.script: {name} must be in [0, 1], got {v!r}")
        a = np.zeros((T, 3))
        a[:, 0] = -back
        a[:, 1] = lift
        a[:, 2] = -turn
        return a

    def _end_state(self, actions: np.ndarray) -> dict:
        """The state after ``actions`` (normalized, (T, 3)) from the start, as float64 tensors
        (forward only; the scene is reset afterwards)."""
        self.scene.reset()
        self.scene.forward(actions @ self._action_map(), requires_grad=False)
        s = self.scene.get_state()
        self.scene.reset()
        return {k: torch.as_tensor(np.asarray(v, dtype=np.float64)) for k, v in s.items()}

    def _sample_goal(self, rng):
        self.goal_params = np.array([rng.uniform(*self.goal_back), rng.uniform(*self.goal_lift),
                                     rng.uniform(*self.goal_turn)])
        self._goal_actions = self.script(*self.goal_params)
        key = tuple(self.goal_params.tolist())
        if self._unfolded is None:  # the zero-action end state: every term's scale (goal independent)
            self._unfolded = self._end_state(np.zeros((self.horizon, 3)))
        if key not in self._goals:  # a seed's goal is simulated once per env (Gymnasium resets often)
            s = self._end_state(self._goal_actions)
            target = {"rest": s["shell.rest_angle"], "x": s["shell.x"],
                      "bend": dihedral_angles_torch(s["shell.x"], self._hinges)}
            if float((target["rest"] ** 2).sum()) <= 0.0:
                raise RuntimeError(f"the scripted fold {self.goal_params.tolist()} kept no crease; "
                                   "widen the goal ranges")
            self._use_target(target, (1.0, 1.0, 1.0))
            target["scales"] = tuple(float(v) for v in self.terms(self._unfolded))
            self._goals[key] = target
        self._use_target(self._goals[key], self._goals[key]["scales"])

    def _use_target(self, target: dict, scales: tuple) -> None:
        self._target, self._scales = target, scales
        self._target_rest = target["rest"]
        self._target_x = target["x"].numpy()

    def _goal_features(self):
        return np.array([float(self._target_rest.abs().max())])

    def camera_kwargs(self):
        return sheet_camera((self.start_x + 0.5 * self.length, self.height + 0.03, 0.5), distance=0.22)

    # ------------------------------------------------------------------ loss
    def crease_error(self, rest: torch.Tensor) -> torch.Tensor:
        """Relative squared error ``sum_h (r_h - r*_h)^2 / sum_h r*_h^2`` of rest angles ``rest``
        (h,) against the target's (1 for an uncreased strip)."""
        return ((rest - self._target_rest) ** 2).sum() / (self._target_rest ** 2).sum()

    def terms(self, state) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(crease, bend, shape) errors of a state (tensors), each relative to the unfolded
        strip's (so each is 1 for zero actions): the kept rest angles' squared error, the held
        dihedral angles' ``sum_h 2 (1 - cos(theta_h - theta*_h))`` (the squared error for small
        differences, without a jump where an angle wraps at +-pi), the vertices' mean squared
        distance, all against the target's."""
        x = state["shell.x"]
        crease = self.crease_error(state["shell.rest_angle"])
        # 2 (1 - cos d) ~ d^2 for small d, and periodic: no jump where a hinge's angle wraps at +-pi
        bend = (2.0 * (1.0 - torch.cos(dihedral_angles_torch(x, self._hinges) - self._target["bend"]))).sum()
        shape = ((x - self._target["x"]) ** 2).sum(-1).mean()
        return crease / self._scales[0], bend / self._scales[1], shape / self._scales[2]

    def _loss(self, state):
        crease, bend, shape = self.terms(state)
        return self.crease_weight * crease + self.bend_weight * bend + self.shape_weight * shape

    def _metrics(self, state):
        s = {k: torch.as_tensor(np.asarray(state[k], dtype=np.float64)) for k in ("shell.x", "shell.rest_angle")}
        crease, bend, shape = (float(v) for v in self.terms(s))
        rest = s["shell.rest_angle"]
        return {"crease_error": crease, "bend_error": bend, "shape_error": shape,
                "max_kept_angle": math.degrees(float(rest.abs().max())),
                "target_max_kept_angle": math.degrees(float(self._target_rest.abs().max()))}

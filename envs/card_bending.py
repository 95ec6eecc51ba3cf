"""CardBending: identify a card's bending stiffness and damping from its observed deflection.

An inverse task: a strip of card, clamped at one end, is released flat and falls under its own
weight; the free end's trajectory is observed (made by the simulator from a seeded hidden truth).
The decision variables are the material parameters, not actions: the env's "action" is a guess
of (bending stiffness D, damping alpha) in normalized log coordinates, one guess per episode
(``horizon`` 1), so ``physim optimize physim/CardBending-v0 --method adam|cma`` identifies them
with the same optimizers that plan trajectories. Gradients come from reverse mode through the
whole implicit rollout (``Gradients.params["shell.bending"]``, ``["shell.damping"]``).

Why these two: with positions only, gravity alone sets the sag through ``rho t g / D`` and the
motion's time scale through ``D / (rho t)``, so density and D cannot be told apart (the areal
density is what one weighs; it is known here). D sets the swing's frequency and sag, the
mass-proportional damping its decay: both show in a trajectory that covers most of a period.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from physim.optim.problem import Evaluation, rollout_loss
from physim.shells import ShellBody, ShellMaterial, ShellMesh

from ._shells import ShellTaskEnv, sheet_camera
from .base import PhysimEnv

__all__ = ["CardBendingEnv"]

PARAMS = ("shell.bending", "shell.damping")


class CardBendingEnv(ShellTaskEnv):
    """Identify a card strip's bending stiffness D and damping alpha from the observed fall of
    its free end (a seeded hidden truth).

    Card: 25 x 4 cm, 300 g/m^2 card stock (:meth:`physim.ShellMaterial.card`: t = 0.35 mm,
    E = 3.5 GPa), 11 x 3 vertices (33), its first two columns clamped 0.4 m above the floor;
    released flat at rest, it swings down under gravity for ``experiment_steps`` (40) implicit
    steps of 5 ms (0.2 s: about half the first mode's period, to the bottom of the first swing;
    with the plate D = 1.37e-2 N m the tip falls ~11 cm, a large deflection).

    Hidden truth (seeded): ``D* = D0 * 2^u``, ``alpha* = alpha0 * 2^w``, u, w ~ U(-1, 1), with the
    plate value D0 = 1.37e-2 N m and alpha0 = 4 /s. A guess ``a`` in [-1, 1]^2 means
    ``D = D0 * 4^a0``, ``alpha = alpha0 * 4^a1`` (the search box spans 16x in each).

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (2,))``: the guess (log4 D / D0, log4 alpha / alpha0)
    Observation space   ``Box(-inf, inf, (83,))``: the observed tip deflection at every step
                        (40, m, downward positive), the same for the last guess (40; zeros
                        before the first), the last guess (2), phase t / T (1)
    Reward              decrease of the loss (the loss of the centre guess a = 0 before the
                        first step)
    Loss                mean over the steps and the tip's 3 vertices of |x - x_obs|^2 over the
                        observed largest tip deflection squared
    Start state         the card flat and clamped; a new hidden truth at every seeded reset
    Episode end         truncated after ``horizon`` guesses (default 1); never terminates
    Info                ``loss``, ``bending`` / ``damping`` (the guess) and ``true_bending`` /
                        ``true_damping``, ``relative_error`` (the larger of the two)
    ==================  =====================================================================

    ``loss``, ``loss_and_grad`` and ``evaluate`` take a (t, 2) array of guesses (t <= horizon; the
    loss is the last guess's, as after stepping them), as the optimizers pass it;
    ``evaluate(...).grad_params`` holds d loss / d D (per N m) and / d alpha
    (per 1/s). :func:`physim.optim.identify` on ``env.unwrapped.scene`` with
    ``env.unwrapped.observed_loss`` does the same identification in the parameters' own units.
    """

    default_horizon = 1
    obs_entries = ("shell.x",)
    obs_particles = 0
    #: one substep per experiment step (the env's steps are guesses, not time)
    episode_seconds = None

    experiment_steps = 40
    length = 0.25
    width = 0.04
    n_along = 11
    n_across = 3
    height = 0.4
    start_x = 0.35
    #: centre of the search box: the card's plate D (N m) and a damping (1/s)
    D0 = ShellMaterial.card().bending_stiffness()
    alpha0 = 4.0
    #: the truth is drawn within 2^(+-truth_spread) of the centre; the box spans 4^(+-1)
    truth_spread = 1.0

    # ------------------------------------------------------------------ scene
    def _build_scene(self):
        L, n = self.length, self.n_along
        s = L / (n - 1)
        mesh = ShellMesh.strip(start=(self.start_x, self.height, 0.5), length=L, width=self.width, n=n,
                               n_width=self.n_across, normal="y")
        X = mesh.vertices
        clamped = np.flatnonzero(X[:, 0] < self.start_x + 1.5 * s)
        self._tip = np.flatnonzero(X[:, 0] > self.start_x + L - 0.5 * s)
        scene = self.new_scene()
        scene.add_shell(ShellBody(mesh, ShellMaterial.card(damping=self.alpha0), pinned=clamped))
        scene.build(max_steps=self.experiment_steps)
        self._X = X
        self._zero = np.zeros((self.experiment_steps, scene.action_dim))
        self._sim_steps = 0
        self._cache: dict = {}
        self._guess = np.zeros(2)
        self._sim_tip = np.zeros(self.experiment_steps)
        return scene

    def _action_map(self):
        return np.zeros((2, self.scene.action_dim))

    def params_of(self, guess) -> tuple[float, float]:
        """(D in N m, alpha in 1/s) of a normalized guess (2 values in [-1, 1])."""
        g = np.asarray(guess, dtype=np.float64).reshape(-1)
        return float(self.D0 * 4.0 ** g[0]), float(self.alpha0 * 4.0 ** g[1])

    def guess_of(self, bending: float, damping: float) -> np.ndarray:
        """The normalized guess (2,) of parameter values (inverse of :meth:`params_of`)."""
        return np.array([math.log(bending / self.D0, 4.0), math.log(damping / self.alpha0, 4.0)])

    # ------------------------------------------------------------------ truth and observation
    def _simulate(self, bending: float, damping: float, grad: bool = False):
        self.scene.set_param("shell.bending", bending)
        self.scene.set_param("shell.damping", damping)
        self.scene.reset()
        return self.scene.forward(self._zero, requires_grad=grad, observe=["shell.x"])

    def _sample_goal(self, rng):
        u, w = rng.uniform(-self.truth_spread, self.truth_spread, size=2)
        self.true_params = (float(self.D0 * 2.0 ** u), float(self.alpha0 * 2.0 ** w))
        key = self.true_params
        if key not in self._cache:  # a truth's observation is simulated once per env
            series = self._simulate(*key)["shell.x"]
            self._cache[key] = {"tip": series[1:, self._tip].copy(), "final": series[-1].copy(), "centre_loss": None}
        self._truth = self._cache[key]
        self._observed, self._observed_final = self._truth["tip"], self._truth["final"]
        self._observed_t = torch.as_tensor(self._observed)
        drop = self.height - self._observed[:, :, 1].mean(axis=1)
        self._observed_tip = drop
        self._deflection = float(np.abs(drop).max())
        self.scene.reset()

    def observed_loss(self, state: dict) -> torch.Tensor:
        """The identification loss of a state time series (``state["shell.x"]``: (steps + 1, n, 3),
        entry 0 the start), as :func:`physim.optim.identify` takes it with ``observe=["shell.x"]``."""
        x = state["shell.x"][1:, self._tip]
        return ((x - self._observed_t) ** 2).sum(-1).mean() / self._deflection ** 2

    def _loss(self, state):
        return self.observed_loss(state)

    # ------------------------------------------------------------------ differentiable API
    @property
    def sim_steps(self) -> int:
        """Simulated steps used by loss / loss_and_grad so far (a gradient counts twice)."""
        return self._sim_steps

    def evaluate(self, actions, grad: bool = True) -> Evaluation:
        """Loss of a sequence of guesses ``actions`` ((t <= horizon, 2) in [-1, 1]): the loss of its
        last guess (each guess is its own experiment, as each env step is); with ``grad``,
        d loss / d guesses (``grad_actions``, nonzero in the last row only) and d loss / d every
        parameter (``grad_params``, per user unit). The running episode's state is left as it was."""
        a = self.problem.check_actions(actions)
        D, alpha = self.params_of(a[-1])
        scene = self.scene
        saved = scene.get_state()
        try:
            scene.set_param("shell.bending", D)
            scene.set_param("shell.damping", alpha)
            scene.reset()
            value, grads, _ = rollout_loss(scene, self._zero, self.observed_loss, ["shell.x"], grad,
                                           f"the identification loss at D = {D:.4g} N m, alpha = {alpha:.4g} /s")
        finally:
            scene.set_state(saved)
        self._sim_steps += self.experiment_steps * (2 if grad else 1)
        out = Evaluation(loss=value)
        if grad:
            ln4 = math.log(4.0)
            dD = float(grads.params["shell.bending"][0])
            da = float(grads.params["shell.damping"][0])
            out.grad_actions = np.zeros_like(a)
            out.grad_actions[-1] = [dD * D * ln4, da * alpha * ln4]
            out.grad_params = grads.params
            out.grad_initial = grads.initial
            out.action_grad_norm = float(np.linalg.norm(out.grad_actions))
        return out

    def loss(self, actions) -> float:
        """The identification loss of the last guess of ``actions`` ((t, 2) in [-1, 1])."""
        return self.evaluate(actions, grad=False).loss

    def loss_and_grad(self, actions) -> tuple[float, np.ndarray]:
        """(loss, d loss / d guesses) of ``actions`` ((t, 2) in [-1, 1]; see :meth:`evaluate`)."""
        e = self.evaluate(actions, grad=True)
        return e.loss, e.grad_actions

    def set_initial_tool_pos(self, pos) -> None:
        """Refused: the card has no tools (its decision variables are material parameters)."""
        raise RuntimeError("CardBendingEnv has no tools: its decision variables are material parameters")

    # ------------------------------------------------------------------ Gymnasium API
    def _tip_drop(self, series_x: np.ndarray) -> np.ndarray:
        return self.height - series_x[1:, self._tip, 1].mean(axis=1)

    def _observation(self, state=None):
        return np.concatenate([self._observed_tip, self._sim_tip, self._guess, [self._t / self.horizon]]
                              ).astype(np.float32)

    def _info(self, loss: float) -> dict:
        D, alpha = self.params_of(self._guess)
        tD, ta = self.true_params
        return {"loss": loss, "bending": D, "damping": alpha, "true_bending": tD, "true_damping": ta,
                "relative_error": max(abs(D - tD) / tD, abs(alpha - ta) / ta)}

    def reset(self, *, seed=None, options=None):
        super(PhysimEnv, self).reset(seed=seed)
        if seed is not None:
            self._sample_goal(self.np_random)
        self._t = 0
        self._guess = np.zeros(2)
        self._sim_tip = np.zeros(self.experiment_steps)
        if self._truth["centre_loss"] is None:  # once per truth
            self._truth["centre_loss"] = self.loss(np.zeros((1, 2)))
            self._sim_steps -= self.experiment_steps  # the reference loss is not the optimizer's cost
        self.scene.reset()
        self._prev_loss = self._truth["centre_loss"]
        if self.render_mode == "human":
            self.render()
        return self._observation(), self._info(self._prev_loss)

    def step(self, action):
        if self._prev_loss is None:
            raise RuntimeError("call reset() before step()")
        if self._t >= self.horizon:
            raise RuntimeError(f"the episode ended after {self.horizon} guesses; call reset()")
        a = self._check_action(action)[None]
        D, alpha = self.params_of(a[0])
        series = self._simulate(D, alpha)
        loss = float(self.observed_loss({"shell.x": torch.as_tensor(series["shell.x"])}))
        self._guess = a[0].copy()
        self._sim_tip = self._tip_drop(series["shell.x"])
        self._t += 1
        reward = self._prev_loss - loss
        self._prev_loss = loss
        if self.render_mode == "human":
            self.render()
        return self._observation(), float(reward), False, self._t >= self.horizon, self._info(loss)

    def rollout(self, actions, render: bool = False, every: int = 4):
        """Step the guesses ``actions`` ((t <= horizon, 2)) from a reset to the current truth;
        returns (losses: before the first guess, then after each; frames of the last guess's
        experiment every ``every`` of its steps when ``render``)."""
        a = self.problem.check_actions(actions)
        self.reset()
        losses = [self._prev_loss]
        for row in a[:-1]:
            losses.append(self.step(row)[4]["loss"])
        if not render:
            losses.append(self.step(a[-1])[4]["loss"])
            return losses, []
        D, alpha = self.params_of(a[-1])
        self.scene.set_param("shell.bending", D)
        self.scene.set_param("shell.damping", alpha)
        self.scene.reset()
        frames = [self._frame()]
        xs = [self.scene.get_state()["shell.x"]]
        for k in range(self.experiment_steps):
            self.scene.step(self._zero[k])
            xs.append(self.scene.get_state()["shell.x"])
            if (k + 1) % every == 0:
                frames.append(self._frame())
        loss = float(self.observed_loss({"shell.x": torch.as_tensor(np.stack(xs))}))
        self._guess, self._sim_tip = a[-1].copy(), self._tip_drop(np.stack(xs))
        self._t, self._prev_loss = self._t + 1, loss
        losses.append(loss)
        return losses, frames

    def _goal_features(self):
        return self._observed_tip

    def _goal_points(self):
        return self._observed_final

    def camera_kwargs(self):
        return sheet_camera((self.start_x + 0.5 * self.length, self.height - 0.02, 0.5), distance=0.35,
                            elevation=0.2)

    def _metrics(self, state):
        return {}

"""The shared base of the shaping tasks: Pinch, RollingPin, Writer (PlasticineLab) and IceCream
(FluidLab).

All four shape one soft body with one tool into a target made by the simulator itself, and
score a state the same way; :class:`ShapingEnv` holds that pattern once, a task writes only
what differs (its body and tool, action map, scripted goal motion and where the tool touches).
"""

from __future__ import annotations

import numpy as np
import torch

import physim as ps
from physim import losses

from .base import PhysimEnv

__all__ = ["ShapingEnv", "sink_into_floor", "capsule_tip"]


def sink_into_floor(scene, depth: float) -> None:
    """Lower every particle of the built ``scene`` by ``depth`` (into the floor's wall band,
    at most 1.5 cells above the domain's bottom) and make that the state ``reset()`` returns to.

    The walls act on grid nodes below ``3 dx`` while bodies must be sampled above it, so the
    bottom layer of a body resting exactly on the floor puts only ~3 % of its weight on wall
    nodes: a "sticky" floor then barely holds it and a sideways push slides the whole body.
    Sunk by ~0.6 cell, the bottom layer is held by the floor like dough pressed onto a table.
    """
    x = scene.particle_positions()
    x[:, 1] -= depth
    if x[:, 1].min() < 1.5 * scene.dx:
        raise ValueError(f"sinking by {depth} puts particles below 1.5 cells (y = {x[:, 1].min():.4f})")
    scene.set_initial_state(x=x)


def capsule_tip(tool_pos: torch.Tensor, half_length: float) -> torch.Tensor:
    """Lower end of the axis of a vertical capsule tool centered at ``tool_pos`` ((3,) tensor)."""
    return tool_pos - torch.tensor([0.0, half_length, 0.0], dtype=tool_pos.dtype)


class ShapingEnv(PhysimEnv):
    """Shape one body with one tool until it matches a target shape (see the module docstring).

    The goal is made by the simulator: :meth:`_make_goal` draws the goal's parameters (from the
    ``reset(seed=...)`` generator) and returns the scripted actions that realize them; the
    state they reach is the target, so every goal is reachable. The loss is PlasticineLab's
    three terms::

        density_l1(grid mass, target grid mass)
        + sdf_weight * sdf_weighted_mass(grid mass, target SDF)
        + contact_weight * contact_distance(tool contact points, tool tip, tool radius)

    Subclasses set ``default_horizon``, the class attributes below as needed, and implement
    ``_add_body_and_tool(scene)``, ``_action_map()``, ``_make_goal(rng)`` and
    ``_contact(x, tool_pos)``; optionally ``_shape_metrics(x, grid)`` (added to ``info`` after
    ``iou``). After a goal is made: ``goal_params`` (the observation's goal features),
    ``_goal_actions``, ``_target_x``, ``_target_grid`` and ``_target_sdf``.
    """

    grid_res = 32
    substeps = 10
    boundary = "sticky"
    gravity = 9.8
    #: the body is sunk this deep into the floor's wall band after building (``sink_into_floor``); 0: not
    sink = 0.0
    sdf_weight = 5.0
    contact_weight = 0.5

    # ------------------------------------------------------------------ task hooks
    def _add_body_and_tool(self, scene: ps.Scene) -> None:
        """Add the task's body and tool to the (unbuilt) ``scene``; ``scene.floor`` is known."""
        raise NotImplementedError

    def _make_goal(self, rng: np.random.Generator) -> np.ndarray:
        """Draw the goal's parameters from ``rng`` (set ``goal_params``) and return the
        (horizon, action_dim) normalized actions of the scripted motion that makes it."""
        raise NotImplementedError

    def _contact(self, x: torch.Tensor, tool_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(points, tip, radius) of the contact term: the body's points (or their projection),
        the tool's point they should reach and the tool's radius."""
        raise NotImplementedError

    def _shape_metrics(self, x: np.ndarray, grid: np.ndarray) -> dict[str, float]:
        """Task metrics of positions ``x`` (grid mass ``grid``) besides ``iou``."""
        return {}

    # ------------------------------------------------------------------ PhysimEnv hooks
    def _build_scene(self):
        scene = ps.Scene(dim=3, grid_res=self.grid_res, substeps_per_step=self.substeps, boundary=self.boundary,
                         gravity=(0.0, -self.gravity, 0.0))
        self._add_body_and_tool(scene)
        scene.build(max_steps=self.horizon)
        if self.sink:
            sink_into_floor(scene, self.sink)
        return scene

    def _sample_goal(self, rng):
        self._goal_actions = self._make_goal(rng)
        self.scene.reset()
        self.scene.forward(self._goal_actions @ self._action_map(), requires_grad=False)
        x = self.scene.particle_positions()
        self.scene.reset()
        self._target_x = x
        tg = losses.grid_mass_numpy(x, self.scene.particle_mass().astype(np.float64), self.grid_res)
        self._target_grid = torch.as_tensor(tg)
        self._target_sdf = torch.as_tensor(losses.target_sdf(tg))

    def _loss(self, state):
        x = state["mpm.x"]
        g = losses.grid_mass(x, self.mass, self.grid_res)
        points, tip, radius = self._contact(x, state["tools.pos"])
        return (losses.density_l1(g, self._target_grid)
                + self.sdf_weight * losses.sdf_weighted_mass(g, self._target_sdf)
                + self.contact_weight * losses.contact_distance(points, tip, radius=radius))

    def _goal_features(self):
        return self.goal_params

    def _metrics(self, state):
        x = state["mpm.x"]
        g = losses.grid_mass_numpy(x, self.mass.numpy(), self.grid_res)
        return {"iou": losses.iou(g, self._target_grid.numpy()), **self._shape_metrics(x, g)}

    def _goal_points(self):
        return self._target_x

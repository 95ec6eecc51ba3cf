"""The shared base of the shaping tasks: Pinch, RollingPin, Writer (PlasticineLab) and IceCream
(FluidLab).

All four shape one soft body with one tool into a target made by the simulator itself, and
score a state the same way; :class:`ShapingEnv` holds that pattern once, a task writes only
what differs (its body and tool, action map, scripted goal motion and where the tool touches).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

import physim as ps
from physim import losses

from .base import Arg, PhysimEnv

__all__ = ["ShapingEnv", "sink_into_floor", "capsule_tip", "EXCESS_COLOR"]

#: render color of particles outside the target shape (material the goal does not have)
EXCESS_COLOR = (0.85, 0.10, 0.45)


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

    args = {
        "grid_res": Arg("MPM grid cells per axis (also the loss's grid)", "int", 16, 256),
        "particle_spacing": Arg("particle lattice spacing (m); dx / 2 is 8 particles per cell", "spacing",
                                1e-3, 0.05),
        "substeps": Arg("MPM substeps per env step (the automatic dt is proportional to dx: doubling the "
                        "grid and the substeps keeps the step's simulated time)", "int", 1, 10_000),
        "sdf_weight": Arg("loss weight of the target-SDF-weighted mass", "float", 0.0, 1e6),
        "contact_weight": Arg("loss weight of the tool-to-body contact distance", "float", 0.0, 1e6),
    }
    #: PlasticineLab's 64^3 grid (~10k particles at dx / 2), twice the substeps of the default
    paper = {"grid_res": 64}

    grid_res = 32
    particle_spacing = None
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
                         gravity=(0.0, -self.gravity, 0.0), particle_spacing=self.particle_spacing)
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
        self._target_tree = cKDTree(x)
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

    def _goal_overlay(self, renderer):
        """The target shape as a translucent green surface (where the target's grid mass crosses
        20 % of its full cells', the 90th percentile of its occupied cells: just outside its
        particles) with its creases drawn solid, and a legend; the particles outside the target
        are colored by ``_excess_colors`` (see ``camera_kwargs``)."""
        from physim.render import density_surface

        g = self._target_grid.numpy()
        level = 0.2 * float(np.percentile(g[g > 0], 90))
        surface = density_surface(g, level)
        renderer.add_goal(surface, name="goal", opacity=0.25)
        renderer.add_goal(surface.extract_feature_edges(feature_angle=35, boundary_edges=False, manifold_edges=False,
                                                        non_manifold_edges=False),
                          name="goal_edges", opacity=1.0, line_width=2.5, smooth_shading=False)
        renderer.plotter.add_text("green: target shape   magenta: material the target does not have",
                                  position="upper_left", font_size=10, color="#333333", name="goal_text")


    #: a particle farther than this many particle spacings from every target particle is drawn in
    #: :data:`EXCESS_COLOR`: material the target does not have (a dent still to press, a groove
    #: still to carve); finer than the grid, so a one-particle-deep dent shows
    excess_distance = 0.75

    def _excess_colors(self, x: np.ndarray) -> np.ndarray:
        """(n, 3) particle colors: the material's, or :data:`EXCESS_COLOR` where the particle lies
        outside the target shape (see :attr:`excess_distance`)."""
        from physim.render import material_color

        d, _ = self._target_tree.query(np.asarray(x, dtype=np.float64))
        rgb = np.tile(np.asarray(material_color(self.scene.materials[0])), (len(d), 1))
        rgb[d > self.excess_distance * self.scene.spacing] = EXCESS_COLOR
        return rgb

    def camera_kwargs(self):
        """Look at the body from the front-upper side, close enough to see the target's detail;
        particles outside the target are colored (``_excess_colors``)."""
        c = np.array([0.5, self.scene.floor + 0.08, 0.5])
        return {"camera": [tuple(c + np.array([0.32, 0.42, 0.62])), tuple(c), (0.0, 1.0, 0.0)],
                "color_fn": self._excess_colors}

"""Latte art (FluidLab): pour milk onto coffee so that it draws a target pattern."""

from __future__ import annotations

import numpy as np
import torch

import physim as ps
from physim import losses

from .base import Arg, PhysimEnv

__all__ = ["LatteArtEnv"]


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (``sigma`` in pixels, zero padding) of a 2D image tensor."""
    if sigma <= 0:
        return img
    r = max(int(np.ceil(3 * sigma)), 1)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=img.dtype) / sigma) ** 2)
    k = k / k.sum()
    out = torch.nn.functional.conv2d(img[None, None], k.reshape(1, 1, -1, 1), padding=(r, 0))
    out = torch.nn.functional.conv2d(out, k.reshape(1, 1, 1, -1), padding=(0, r))
    return out[0, 0]


class LatteArtEnv(PhysimEnv):
    """Pour milk from a held pitcher onto a layer of coffee to draw a target pattern.

    The mug is the simulation domain: a thin coffee layer covers its floor. Milk (lighter
    and more viscous than the coffee) starts at rest in a pitcher (a cup tool) held above
    it; the agent moves the pitcher and tilts it about the world z axis (the rim turns
    towards +x for a negative tilt velocity). The target is the top-down milk density
    left by a scripted pour with seeded parameters (a round blob, or an elongated one drawn
    by moving the pitcher along z while pouring, at a seeded place), so every target is
    reachable.

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (4,))``: pitcher linear velocity (x 1.2 m/s) and angular
                        velocity about the world z axis (x 16 rad/s)
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v), pitcher pose,
                        the target image downsampled to 8 x 8 and its centroid (x, z), episode
                        phase t / T
    Reward              decrease of the task loss in the step
    Loss                L1 distance between the top-down density of the milk on the coffee
                        (32 x 32 over the x-z plane, normalized by the milk's mass, blurred by
                        1 pixel; milk higher than 3 cm above the coffee counts less and less)
                        and the target image
                        (0..2), + 2 x the mass-weighted mean 2D distance of all the milk to the
                        target's support (a gradient far from it)
    Start state         coffee layer 0.8 x 0.05 x 0.8 on the floor (2,048 particles), 222 milk
                        particles in a pitcher (inner radius 0.09) at (0.35, 0.45, 0.5)
    Episode end         truncated after ``horizon`` steps (default 50); never terminates
    Info                ``loss``, ``image_l1`` (the first loss term), ``iou`` (pixels above
                        10 % of the target's peak)
    ==================  =====================================================================

    Defaults: grid 32^3, particle spacing 0.025 (0.8 dx), 2,270 particles, coffee (density 1,
    viscosity 0.02) and milk (density 0.8, viscosity 0.1) with bulk modulus 300, dt 6.5e-4 s
    (automatic), 20 substeps per step (12.9 ms). Explicit viscosity is stable only for
    dt < ~rho dx^2 / (6 mu): a milk viscosity of 0.5 blows up at this dt. Speed (2 shared
    CPU cores, f64): ~20 steps/s, one ``loss_and_grad`` at T = 50 ~12 s.
    """

    args = {
        "grid_res": Arg("MPM grid cells per axis", "int", 16, 256),
        "spacing": Arg("particle lattice spacing (m) of the coffee and the milk", "float", 1e-3, 0.05),
        "substeps": Arg("MPM substeps per env step (the automatic dt is proportional to dx: doubling the grid "
                        "and the substeps keeps the step's simulated time)", "int", 1, 10_000),
        "patterns": Arg("goal: the pattern kinds drawn from (each equally likely)", "choices",
                        options=("stripe", "blob")),
        "stripe_length_range": Arg("goal: a stripe's length (m) is drawn from this range", "range", 0.0, 0.4),
    }
    #: FluidLab's 64^3 grid and particle count (69.5k at spacing dx / 2)
    paper = {"grid_res": 64, "spacing": 1.0 / 128, "substeps": 40}
    paper_note = ("FluidLab's 64^3 grid and particle count (60k-200k there): 69,530 particles (spacing "
                  "dx / 2), 40 substeps of 3.2e-4 s (12.9 ms per step, as the default's).")

    default_horizon = 50
    grid_res = 32
    substeps = 20
    patterns = ("stripe", "blob")
    stripe_length_range = (0.15, 0.25)
    spacing = 0.025
    image_res = 32
    speed = 1.2  # m/s per unit action
    spin = 16.0  # rad/s per unit action
    cup_pos = (0.35, 0.45, 0.5)
    cup_radius, cup_half_height, cup_thickness = 0.09, 0.11, 0.065
    coffee_height = 0.05
    sdf_weight = 2.0
    blur = 1.0  # pixels, on both the milk and the target image

    def _build_scene(self):
        scene = ps.Scene(dim=3, grid_res=self.grid_res, substeps_per_step=self.substeps, boundary="slip",
                         particle_spacing=self.spacing)
        floor = scene.floor
        self.coffee = ps.Fluid(bulk_modulus=300.0, viscosity=0.02, density=1.0)
        self.milk = ps.Fluid(bulk_modulus=300.0, viscosity=0.1, density=0.8)
        h = self.coffee_height
        scene.add_body(ps.Box(center=(0.5, floor + 0.001 + h / 2, 0.5), size=(0.8, h, 0.8)), self.coffee)
        cx, cy, cz = self.cup_pos
        bottom = cy - self.cup_half_height + self.cup_thickness
        height = 0.15
        scene.add_body(ps.Cylinder(center=(cx, bottom + 0.004 + height / 2, cz), radius=self.cup_radius - 0.005,
                                   height=height), self.milk)
        scene.add_tool(ps.CupTool(position=self.cup_pos, radius=self.cup_radius, half_height=self.cup_half_height,
                                      thickness=self.cup_thickness, friction=0.1))
        scene.build(max_steps=self.horizon)
        self._is_milk = scene.particle_materials() == scene.materials.index(self.milk)
        self._milk_index = torch.as_tensor(np.nonzero(self._is_milk)[0])
        self._surface_y = floor + h
        return scene

    def _action_map(self):
        M = np.zeros((4, self.scene.action_dim))
        M[:3, :3] = np.eye(3) * self.speed
        M[3, 5] = self.spin
        return M

    # ------------------------------------------------------------------ goal
    def script(self, point, kind: str = "blob", length: float = 0.0, tilt: float = 2.0, offset: float = 0.06,
               height: float = 0.36) -> np.ndarray:
        """Scripted pour: carry the pitcher so its rim is over ``point`` (x, z), tilt it and,
        for ``kind="stripe"``, move it ``length`` along z while pouring (centered on the
        point). Normalized (horizon, 4) actions."""
        T = self.horizon
        step_t = self.scene.substeps_per_step * self.scene.dt
        a = np.zeros((T, 4))
        t1, t2 = max(int(0.2 * T), 1), max(int(0.42 * T), 2)
        shift = -0.5 * length if kind == "stripe" else 0.0
        goal = np.array([point[0] - offset, height, point[1] + shift])
        prof = np.sin(np.pi * (np.arange(t1) + 0.5) / t1)
        a[:t1, :3] = np.outer(prof / prof.sum(), goal - np.asarray(self.cup_pos)) / (step_t * self.speed)
        a[t1:t2, 3] = -tilt / ((t2 - t1) * step_t * self.spin)
        if kind == "stripe":  # move along z while the milk flows out
            s0, s1 = min(t1 + max(T // 25, 1), T - 1), min(t2 + max(T // 6, 1), T)
            a[s0:s1, 2] = length / ((s1 - s0) * step_t * self.speed)
        return np.clip(a, -1, 1)

    def _milk_image(self, x: torch.Tensor, on_surface: bool = True) -> torch.Tensor:
        """Top-down image of the milk on the coffee, normalized by the total milk mass: a
        particle counts fully up to 3 cm above the coffee's surface and less the higher it
        is (scale 5 cm), so milk still in the pitcher does not draw the pattern."""
        xm = x[self._milk_index]
        m = self.mass[self._milk_index]
        w = m
        if on_surface:
            w = m * torch.exp(-torch.clamp(xm[:, 1] - (self._surface_y + 0.03), min=0.0) / 0.05)
        img = losses.surface_density(xm, w, self.image_res) / m.sum()
        return _blur(img, self.blur)

    def _sample_goal(self, rng):
        u = rng.random()  # drawn whatever the patterns, so a seed's other draws do not depend on them
        self.kind = self.patterns[0] if len(self.patterns) == 1 else ("stripe" if u < 0.5 else "blob")
        self.point = np.array([rng.uniform(0.42, 0.62), rng.uniform(0.38, 0.62)])
        self.length = rng.uniform(*self.stripe_length_range) if self.kind == "stripe" else 0.0
        actions = self.script(self.point, self.kind, self.length)
        self.scene.reset()
        self.scene.forward(actions @ self._action_map(), requires_grad=False)
        x = self.scene.particle_positions()
        self.scene.reset()
        self._target_x = x[self._is_milk]
        with torch.no_grad():
            target = self._milk_image(torch.as_tensor(x)).numpy()
        self._target = torch.as_tensor(target)
        self._target_sdf = torch.as_tensor(losses.target_sdf(target, threshold=0.02 * target.max()))

    # ------------------------------------------------------------------ loss & metrics
    def _image_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        l1 = (self._milk_image(x) - self._target).abs().sum()
        return l1, (self._milk_image(x, on_surface=False) * self._target_sdf).sum()

    def _loss(self, state):
        x = state["mpm.x"]
        l1, sdf = self._image_terms(x)
        return l1 + self.sdf_weight * sdf

    def _goal_features(self):
        t = self._target.numpy()
        small = t.reshape(8, self.image_res // 8, 8, self.image_res // 8).sum(axis=(1, 3))
        centers = (np.arange(self.image_res) + 0.5) / self.image_res
        cx = float((t.sum(axis=1) * centers).sum())
        cz = float((t.sum(axis=0) * centers).sum())
        return np.concatenate([small.reshape(-1), [cx, cz]])

    def _metrics(self, state):
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(state["mpm.x"], dtype=np.float64))
            l1, _ = self._image_terms(x)
            img = self._milk_image(x).numpy()
        return {"image_l1": float(l1), "iou": losses.iou(img, self._target.numpy())}

    def camera_kwargs(self):
        # coffee brown and milk white instead of the renderer's one color per material class
        return {"colors": {self.scene.materials.index(self.coffee): (0.36, 0.22, 0.12),
                           self.scene.materials.index(self.milk): (0.97, 0.95, 0.9)}}

    def _goal_overlay(self, renderer):
        """The target pattern: the target image's pixels above 10 % of its peak as translucent
        green squares just above the coffee, its outline solid."""
        from physim.render import image_patch

        t = self._target.numpy()
        patch = image_patch(t, self._surface_y + 0.012, 0.1 * t.max())
        renderer.add_goal(patch, name="goal", opacity=0.5, smooth_shading=False)
        renderer.add_goal(patch.extract_feature_edges(boundary_edges=True, feature_edges=False, manifold_edges=False,
                                                      non_manifold_edges=False),
                          name="goal_edges", opacity=1.0, line_width=3, smooth_shading=False)

    def _goal_points(self):
        t = self._target.numpy()
        i, k = np.nonzero(t > 0.1 * t.max())
        c = (np.stack([i, k], axis=1) + 0.5) / self.image_res
        return np.stack([c[:, 0], np.full(len(c), self._surface_y + 0.01), c[:, 1]], axis=1)

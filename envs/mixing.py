"""Mixing (FluidLab): stir two liquids with a rod until their concentration fields mix."""

from __future__ import annotations

import numpy as np
import torch

import physim as ps
from physim import losses

from .base import Arg, PhysimEnv

__all__ = ["MixingEnv", "segregation_index"]


def segregation_index(x: torch.Tensor, mass: torch.Tensor, is_a: torch.Tensor, res: int) -> torch.Tensor:
    """Danckwerts' intensity of segregation of liquid A on a ``res``^dim grid (differentiable in ``x``).

    The mass of A and of all the liquid go to the grid with quadratic B-spline weights
    (:func:`physim.losses.grid_mass`, cell centres at (k + 1/2) / res); the concentration of a
    cell is ``c_k = m_A,k / m_k`` and the index is the mass-weighted variance of ``c`` over the
    cells divided by its largest value for the mean concentration ``cbar``:
    ``sum_k m_k (c_k - cbar)^2 / (sum_k m_k cbar (1 - cbar))``. 1: every cell holds one liquid
    only; 0: every cell holds the mean mixture (Danckwerts 1952, "The definition and measurement of
    some characteristics of mixtures", Appl. Sci. Res. A3, 279). ``is_a``: (n,) bool tensor."""
    m_all = losses.grid_mass(x, mass, res).reshape(-1)
    m_a = losses.grid_mass(x[is_a], mass[is_a], res).reshape(-1)
    total = m_all.sum()
    cbar = m_a.sum() / total
    floor = 1e-9 * float(total.detach())
    c = m_a / (m_all + floor)
    return (m_all * (c - cbar) ** 2).sum() / (total * cbar * (1.0 - cbar))


class _Part(ps.Shape):
    """The particles of ``base`` on one side of the plane x = ``split`` (both sides sample one
    lattice: the bounds are ``base``'s) and outside ``hole``."""

    def __init__(self, base: ps.Shape, hole: ps.Shape, split: float, lower: bool):
        self.base, self.hole, self.split, self.lower = base, hole, split, lower
        self.center = base.center

    def bounds(self):
        return self.base.bounds()

    def contains(self, points):
        side = points[:, 0] < self.split if self.lower else points[:, 0] >= self.split
        return self.base.contains(points) & ~self.hole.contains(points) & side


class MixingEnv(PhysimEnv):
    """Stir two liquids with a rod until their concentration fields mix.

    The two liquids (A, dyed dark blue, and B, pale yellow: the same density and viscosity,
    so they stay apart unless stirred) fill the bottom of the domain, split by a vertical
    plane through its centre whose orientation is drawn from the seed (in 2D a line at a
    seeded angle), with a ``fraction_a`` share of A. A vertical rod dips into them from the
    centre; the agent moves it. Mixing is measured on a coarse grid (``mix_res`` cells per
    axis over the domain; finer is harder): Danckwerts' intensity of segregation of A
    (:func:`segregation_index`).

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (dim,))``: the rod's linear velocity (x ``speed`` = 1.5 m/s;
                        a kinematic tool: walls do not stop it, and out of the liquid it stirs
                        nothing)
    Observation space   ``Box(-inf, inf, (N,))``: 128 sampled particles (x, v), the rod's pose,
                        the interface's normal (cos, sin of its angle) and A's share, 128 labels
                        (1 for A) of the sampled particles, episode phase t / T
    Reward              decrease of the task loss in the step
    Loss                the intensity of segregation of A on the ``mix_res`` grid (concentration
                        from the particles with quadratic B-spline weights: smooth in the
                        positions): ~1 for the liquids side by side, 0 perfectly mixed
    Start state         liquids at rest, 0.3 deep (3D: 3,760 particles at spacing dx / 2 on the
                        16^3 grid; 2D: 789 on 32^2), the rod (radius 0.07, 0.4 long) upright at
                        the centre, its end 2 cm above the floor
    Episode end         truncated after ``horizon`` steps (default 40); never terminates
    Info                ``loss``, ``mixed_fraction`` (the mass fraction of the liquid in cells
                        whose concentration of A is within 0.2 of the mean)
    ==================  =====================================================================

    Defaults: 3D, grid 16^3, weakly compressible liquids (bulk modulus 300, viscosity 0.01,
    density 1), dt 1e-3 s (automatic), 20 substeps per step (20 ms; 0.8 s per episode),
    concentration grid 4^dim. Particles do not diffuse: the liquids mix only as far as the
    stirring folds them finer than a mixing cell. A viscosity of 0.05 (Reynolds number ~3 at
    the rod) left Adam at a 2 % decrease; 0.01 lets a stroke fold the liquids. ``dim=2`` is a
    vertical section (grid 32^2, 40 substeps of 7.2e-4 s, the rod a rectangle; the tests'
    gradient checks use it).
    """

    args = {
        "dim": Arg("2 (a vertical section) or 3", "int", 2, 3),
        "grid_res": Arg("MPM grid cells per axis (with dim=2 and no grid_res: 32)", "int", 12, 256),
        "substeps": Arg("MPM substeps per env step (the automatic dt is proportional to dx: doubling the grid "
                        "and the substeps keeps the step's simulated time; with dim=2 and no grid_res: twice "
                        "the default)", "int", 1, 10_000),
        "depth": Arg("depth (m) of the liquids", "float", 0.15, 0.45),
        "fraction_a": Arg("share of liquid A (the rest is B)", "float", 0.2, 0.8),
        "mix_res": Arg("goal: concentration cells per axis over the domain (finer is harder)", "int", 2, 32),
    }
    #: FluidLab's 64^3 grid, 2 particles per cell and axis
    paper = {"grid_res": 64, "substeps": 80}
    paper_note = "FluidLab's 64^3 grid, 2 particles per cell and axis, 80 substeps (the default's step time)."

    default_horizon = 40
    dim = 3
    grid_res = 16
    substeps = 20
    depth = 0.3
    fraction_a = 0.5
    mix_res = 4
    speed = 1.5  # m/s per unit action
    viscosity = 0.01  # m^2/s (Pa s at density 1)
    rod_radius, rod_half_length, rod_gap = 0.07, 0.2, 0.02
    color_a, color_b = (0.12, 0.22, 0.62), (0.98, 0.88, 0.45)

    def _check_args(self):
        if self.dim == 2 and self.grid_res < 24:
            raise ValueError(f"{type(self).__name__}: grid_res must be >= 24 in 2D (the rod needs a few cells), "
                             f"got {self.grid_res!r}")

    @classmethod
    def config(cls, scale: str = "default", **kwargs):
        # a 2D section defaults to a 32^2 grid (16^2 cells are too coarse for the rod)
        if kwargs.get("dim") == 2 and "grid_res" not in kwargs and scale == "default":
            kwargs["grid_res"] = 32
            kwargs.setdefault("substeps", 2 * cls.substeps)
        return super().config(scale, **kwargs)

    def _build_scene(self):
        d = self.dim
        scene = ps.Scene(dim=d, grid_res=self.grid_res, substeps_per_step=self.substeps, boundary="slip")
        floor, dx = scene.floor, scene.dx
        self._floor = floor
        wall = 1.0 - floor  # the walls are as thick as the floor (BOUND cells)
        inner = wall - floor - 0.01
        center = [0.5, floor + 0.001 + self.depth / 2, 0.5][:d]
        size = [inner, self.depth, inner][:d]
        liquid = ps.Box(center=center, size=size)
        rod_y = floor + self.rod_gap + self.rod_half_length
        rod_pos = [0.5, rod_y, 0.5][:d]
        hole = ps.Box(center=rod_pos, size=[2 * self.rod_radius + 0.5 * dx, 2 * self.rod_half_length + 0.02,
                                            2 * self.rod_radius + 0.5 * dx][:d])
        if d == 3:
            hole = ps.Cylinder(center=rod_pos, radius=self.rod_radius + 0.25 * dx,
                               height=2 * self.rod_half_length + 0.02)
        self.liquid_a = ps.Fluid(bulk_modulus=300.0, viscosity=self.viscosity, density=1.0)
        self.liquid_b = ps.Fluid(bulk_modulus=300.0, viscosity=self.viscosity, density=1.0)
        # A takes the lower-x share fraction_a of the liquid's width (reassigned by the seed's plane)
        split = 0.5 - inner / 2 + self.fraction_a * inner
        scene.add_body(_Part(liquid, hole, split, lower=True), self.liquid_a)
        scene.add_body(_Part(liquid, hole, split, lower=False), self.liquid_b)
        scene.add_tool(ps.CylinderTool(position=rod_pos, radius=self.rod_radius, half_height=self.rod_half_length,
                                       friction=0.2))
        scene.build(max_steps=self.horizon)
        self._n_a = scene.bodies[0].count
        n = scene.n_particles
        self._is_a = torch.zeros(n, dtype=torch.bool)
        self._is_a[: self._n_a] = True
        self._lattice = scene.initial_state()["mpm.x"].copy()
        return scene

    def _action_map(self):
        M = np.zeros((self.dim, self.scene.action_dim))
        M[:, : self.dim] = np.eye(self.dim) * self.speed
        return M

    # ------------------------------------------------------------------ goal
    def layout(self, angle: float) -> np.ndarray:
        """Initial particle positions with A on the side of the interface plane (through the
        liquid's centre, normal at ``angle`` rad: about the vertical in 3D, in the x-y plane in
        2D) towards ``-normal``: the lattice points sorted by their distance along the normal,
        the first ``fraction_a`` of them to A's rows."""
        x = self._lattice
        c = x.mean(axis=0)
        if self.dim == 3:
            normal = np.array([np.cos(angle), 0.0, np.sin(angle)])
        else:
            normal = np.array([np.cos(angle), np.sin(angle)])
        order = np.argsort((x - c) @ normal, kind="stable")
        return x[order]

    def _sample_goal(self, rng):
        self.angle = rng.uniform(0.0, 2 * np.pi)
        self.scene.set_initial_state(x=self.layout(self.angle))

    # ------------------------------------------------------------------ loss & metrics
    def _loss(self, state):
        return segregation_index(state["mpm.x"], self.mass, self._is_a, self.mix_res)

    def _goal_features(self):
        return np.array([np.cos(self.angle), np.sin(self.angle), self.fraction_a])

    def _observation(self, state):
        obs = super()._observation(state)
        labels = self._is_a.numpy()[self._obs_index].astype(np.float32)
        return np.concatenate([obs, labels])

    def _concentration(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c, m): the concentration of A and the liquid mass per mixing cell (flat)."""
        m = self.mass.numpy()
        a = self._is_a.numpy()
        m_all = losses.grid_mass_numpy(x, m, self.mix_res).reshape(-1)
        m_a = losses.grid_mass_numpy(x[a], m[a], self.mix_res).reshape(-1)
        return m_a / np.maximum(m_all, 1e-9 * m_all.sum()), m_all

    def _metrics(self, state):
        c, m = self._concentration(np.asarray(state["mpm.x"], dtype=np.float64))
        cbar = float(self._is_a.numpy().mean())
        return {"mixed_fraction": float(m[np.abs(c - cbar) <= 0.2].sum() / m.sum())}

    # ------------------------------------------------------------------ rendering
    def _column_concentration(self, x: np.ndarray) -> np.ndarray:
        """The concentration of A per column of mixing cells (through the depth, mass-weighted):
        (mix_res, mix_res) over x-z in 3D, (mix_res,) along x in 2D; NaN where no liquid."""
        c, m = self._concentration(x)
        n = self.mix_res
        cg, mg = (c * m).reshape((n,) * self.dim), m.reshape((n,) * self.dim)
        num, den = cg.sum(axis=1), mg.sum(axis=1)  # axis 1 is the vertical
        return np.where(den > 1e-6 * den.max(), num / np.maximum(den, 1e-300), np.nan)

    def _column_colors(self, x: np.ndarray) -> np.ndarray:
        cbar = float(self._is_a.numpy().mean())
        col = self._column_concentration(x).reshape(-1, order="F")
        col = np.where(np.isnan(col), cbar, col)
        rgb = col[:, None] * np.asarray(self.color_a) + (1 - col[:, None]) * np.asarray(self.color_b)
        return np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)

    def camera_kwargs(self):
        kw = {"colors": {self.scene.materials.index(self.liquid_a): self.color_a,
                         self.scene.materials.index(self.liquid_b): self.color_b}}
        if self.dim == 3:
            kw["camera"] = [(0.5, 1.25, 2.0), (0.5, self._floor + 0.12, 0.5), (0.0, 1.0, 0.0)]
        return kw

    def _goal_overlay(self, renderer):
        """A concentration map over the liquid (a tile per column of mixing cells, in the colour of
        its mean concentration of A: blue A, yellow B; updated every frame) whose goal is one
        uniform colour, the colour of the mean concentration, drawn as the map's green-edged frame
        and a strip of that colour along its back edge."""
        import pyvista as pv

        n = self.mix_res
        lo, hi = self._lattice.min(axis=0), self._lattice.max(axis=0)
        y = float(hi[1]) + 0.04
        if self.dim == 3:
            tiles = pv.ImageData(dimensions=(n + 1, 1, n + 1), spacing=(1.0 / n, 1.0, 1.0 / n), origin=(0.0, y, 0.0))
        else:
            tiles = pv.ImageData(dimensions=(n + 1, 2, 1), spacing=(1.0 / n, 0.03, 1.0), origin=(0.0, y, 0.5))
        tiles = tiles.clip_box((float(lo[0]), float(hi[0]), -1, 2, *((float(lo[2]), float(hi[2])) if self.dim == 3
                                                                      else (-1, 2))), invert=False)
        self._tiles = tiles
        self._tile_cells = tiles.cell_centers().points
        self._update_tiles(self.scene.get_state()["mpm.x"])
        renderer.add_mesh(tiles, scalars="rgb", rgb=True, name="concentration", opacity=0.6, lighting=False,
                          show_scalar_bar=False)
        cbar = float(self._is_a.numpy().mean())
        color = tuple(cbar * np.asarray(self.color_a) + (1 - cbar) * np.asarray(self.color_b))
        z0 = float(lo[2]) if self.dim == 3 else 0.5
        strip = pv.Box(bounds=(float(lo[0]), float(hi[0]), y + 0.005, y + 0.025, z0 - 0.03, z0))
        renderer.add_goal(strip, name="goal", color=color, opacity=1.0, smooth_shading=False)
        renderer.add_goal(tiles.extract_feature_edges(boundary_edges=True, feature_edges=False, manifold_edges=False,
                                                      non_manifold_edges=False),
                          name="goal_edges", opacity=1.0, line_width=3, smooth_shading=False)

    def _update_tiles(self, x) -> None:
        n = self.mix_res
        rgb = self._column_colors(np.asarray(x, dtype=np.float64))
        idx = np.clip((self._tile_cells[:, 0] * n).astype(int), 0, n - 1)
        if self.dim == 3:
            idx = idx + n * np.clip((self._tile_cells[:, 2] * n).astype(int), 0, n - 1)
        self._tiles.cell_data["rgb"] = rgb[idx]

    def render(self):
        if self._renderer is not None and self.render_mode is not None:
            self._update_tiles(self.scene.get_state()["mpm.x"])
        return super().render()

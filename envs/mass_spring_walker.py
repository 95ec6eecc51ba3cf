"""Mass-spring walker (DiffTaichi ``mass_spring.py``): a 2D robot of point masses and springs
that must walk forward (+x).

The robot is one :class:`physim.MassSpring` body: a square lattice of nodes joined by springs
along the cell edges and both cell diagonals (the shear springs that keep it from collapsing),
shaped as a torso on two legs. Every leg is two cell columns (back, front) with their own
actuator: an actuated spring's rest length is ``rest * (1 + actuation_strength * signal)``, so
a signal in [-1, 1] lengthens (> 0) or shortens (< 0) the column's outer vertical springs and
its diagonals, bending and shortening the leg. As in :mod:`physim.envs.walker`, driving the two
halves of a leg a quarter period apart makes its foot trace a loop and push the body forward.
"""

from __future__ import annotations

import numpy as np
import torch

import physim as ps

from .base import Arg
from .walker import _WalkerEnv

__all__ = ["MassSpringWalker2DEnv", "walker_body"]


def walker_body(x0: float, y0: float, h: float, torso_cells: tuple[int, int] = (8, 2),
                leg_cells: tuple[int, int] = (2, 2), **kw) -> ps.MassSpring:
    """The walker's lattice body.

    Args:
        x0, y0: position (m) of the back foot's lowest node (the body's lower-left corner).
        h: lattice spacing (m).
        torso_cells: (columns, rows) of cells of the torso, which sits on top of the legs.
        leg_cells: (columns, rows) of cells of each leg; the back leg is under the torso's first
            columns, the front leg under its last.
        **kw: the remaining :class:`physim.MassSpring` fields (mass, stiffness, ...).

    Nodes are numbered row by row from the floor up, back to front. Springs join the corners
    of every cell: 4 edges and 2 diagonals (an edge two cells share appears once). Leg ``l``
    (0 back, 1 front) has actuators ``2 l`` (its back cell column: the column's back vertical
    edges and its diagonals) and ``2 l + 1`` (its front cell column: front vertical edges and
    diagonals); all other springs are passive.
    """
    (tw, th), (lw, lh) = torso_cells, leg_cells
    if lw > tw // 2:
        raise ValueError(f"walker_body: legs {lw} cells wide do not fit twice under a torso {tw} cells wide")
    cells = {(i, j) for i in range(tw) for j in range(lh, lh + th)}
    legs = (tuple(range(lw)), tuple(range(tw - lw, tw)))
    cells |= {(i, j) for cols in legs for i in cols for j in range(lh)}
    nodes = sorted({(i + a, j + b) for i, j in cells for a in (0, 1) for b in (0, 1)}, key=lambda p: (p[1], p[0]))
    index = {p: k for k, p in enumerate(nodes)}

    def corners(i, j):
        return index[(i, j)], index[(i + 1, j)], index[(i, j + 1)], index[(i + 1, j + 1)]

    springs: dict[tuple[int, int], int] = {}  # (a, b) with a < b -> actuator (-1 passive)
    for i, j in sorted(cells):
        a, b, c, d = corners(i, j)
        for s in ((a, b), (c, d), (a, c), (b, d), (a, d), (b, c)):
            springs.setdefault((min(s), max(s)), -1)
    for leg, cols in enumerate(legs):
        for half, i in enumerate((cols[0], cols[-1])):  # back column, front column
            for j in range(lh):
                a, b, c, d = corners(i, j)
                for s in ((a, c) if half == 0 else (b, d), (a, d), (b, c)):
                    springs[(min(s), max(s))] = 2 * leg + half
    verts = np.array([(x0 + i * h, y0 + j * h) for i, j in nodes], dtype=np.float64)
    pairs = np.array(list(springs), dtype=np.int64)
    actuator = np.array(list(springs.values()), dtype=np.int64)
    return ps.MassSpring(verts, pairs, actuator=actuator, **kw)


class MassSpringWalker2DEnv(_WalkerEnv):
    """A 2D mass-spring walker (DiffTaichi ``mass_spring.py``): a lattice torso on two legs of
    point masses and damped springs, walking forward on a frictional floor to a seeded target
    distance.

    Robot (:func:`walker_body`): a 0.03 m lattice, torso 8 x 2 cells (0.24 x 0.06 m) on two legs
    of 2 x 2 cells (0.06 x 0.06 m) under its ends; 39 nodes of 1 g, 110 springs of 100 N/m with
    0.05 N s/m dashpots, rest lengths the initial distances. Actuators 0, 1: back leg's back
    and front cell column; 2, 3: front leg's (each column's outer vertical springs and its
    diagonals, rest length x (1 + 0.2 signal)). Gravity 9.8 m/s^2; floor and walls Coulomb
    friction 2.0 (DiffTaichi's ground friction is 2.5). Hand gait (:meth:`hand_gait`):
    sinusoids of period 8 steps, the front column of each leg a quarter period behind the back
    column, the two legs half a period apart; it walks ~0.16 m in the default 50 steps (zero
    actions: ~0 m).

    ==================  =====================================================================
    Action space        ``Box(-1, 1, (4,))``: spring actuation signals (rest length x
                        (1 + 0.2 signal), > 0 lengthens), held for the step's 20 substeps
    Observation space   ``Box(-inf, inf, (164,))``: every node's position (m) and velocity
                        (m/s) (39 x 4), goal (target x, target distance), phase t / T,
                        centroid (x, y), centroid velocity, target x - centroid x
    Reward              decrease of the task loss in the step (forward progress towards the
                        target, weighted by the distance still to go)
    Loss                ((centroid x - target x) / target distance)^2 (node-mass-weighted
                        centroid): 1 at the start, 0 at the target (overshooting costs too)
    Start state         robot at rest, feet on the floor, back at x = 0.1; target distance
                        U(0.6, 1.0) x the hand gait's distance over the horizon (seeded)
    Episode end         truncated after ``horizon`` steps (default 50); never terminates
    Info                ``loss``, ``displacement`` (centroid x moved, m), ``progress``
                        (displacement / target distance), ``target_distance``
    ==================  =====================================================================

    Defaults: grid 64 (floor at 3 / 64 m), 20 substeps of dt 5e-4 s per step (0.01 s per step,
    0.5 s per episode; the springs' stable limit is 5.8e-4 s). Speed (f64, 2 shared CPU cores):
    60-200 steps/s (``measure_speed``), one ``loss_and_grad`` at T = 50 1.4-2.1 s (warm).
    ``physim optimize MassSpringWalker2D --method policy --iters 15`` (closed-loop MLP, lr 1e-2 from
    :attr:`policy_defaults`): loss 1.0 -> 0.009 (best rollout, reached at iteration 8 and kept; the
    loss oscillates after it), 29 s; with train_policy's default lr 3e-3: 1.0 -> 0.92.
    """

    #: a larger policy step than train_policy's default (3e-3 moved the loss 1.0 -> 0.92 in 15
    #: iterations); the best rollout is kept, so an overshooting late iteration costs nothing
    policy_defaults = {"lr": 1e-2}

    args = {
        "grid_res": Arg("grid cells per axis: here only where the walls are (3 cells from the domain's "
                        "edges); no MPM particles", "int", 16, 512),
        "substeps": Arg("spring substeps per env step", "int", 1, 10_000),
        "dt": Arg("s per substep (stable below ~5.8e-4 s for the default springs)", "float", 1e-6, 1e-3),
        "stiffness": Arg("N/m per spring", "float", 1.0, 1e4),
        "actuation_strength": Arg("rest length factor per unit actuation signal", "float", 0.0, 0.5),
    }
    #: DiffTaichi's mass-spring robots are this size (tens of masses): no larger resolution to match
    paper: dict = {}
    paper_note = "the default (DiffTaichi's mass-spring robots have tens of masses, like this one)."

    dim = 2
    grid_res = 64
    substeps = 20
    #: s per substep (below the springs' stable limit, 5.8e-4 s)
    dt = 5e-4
    obs_entries = ("springs.x", "springs.v")
    #: m between neighbouring lattice nodes
    spacing = 0.03
    #: kg per node; N/m and N s/m per spring
    node_mass = 1e-3
    stiffness = 100.0
    damping = 0.05
    #: rest length factor per unit signal of an actuated spring
    actuation_strength = 0.2
    #: Coulomb coefficient of the floor (and side walls)
    wall_friction = 2.0
    gait_period = 8.0
    gait_phases = (0.0, -np.pi / 2, np.pi, np.pi / 2)

    # ------------------------------------------------------------------ scene
    def _build_scene(self):
        scene = ps.Scene(dim=self.dim, grid_res=self.grid_res, dt=self.dt, substeps_per_step=self.substeps)
        body = walker_body(0.1, scene.floor, self.spacing, mass=self.node_mass, stiffness=self.stiffness,
                           damping=self.damping, actuation_strength=self.actuation_strength,
                           friction=self.wall_friction)
        scene.add_mass_spring(body)
        self._node_mass = torch.as_tensor(body.mass, dtype=torch.float64)
        return scene.build(max_steps=self.horizon)

    def _action_map(self):
        n = self.scene.n_spring_actuators
        M = np.zeros((n, self.scene.action_dim))
        M[:, self.scene.spring_actuation_slice] = np.eye(n)
        return M

    def _body_mass(self):
        """(n,) node masses (kg, float64 tensor)."""
        return self._node_mass

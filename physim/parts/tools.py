"""Kinematic rigid tools as a part: their poses are slot state, integrated once per substep.

Every solver reads the same tool pose at the same slot (``pos[l]``, ``rot[l]``) and the
same velocity (action row ``t``) through :meth:`ToolsPart.contact`, so the tools never
desynchronize between solvers. Each tool consumes ``dim + (1 | 3)`` action columns: its
linear velocity, then its angular velocity (rad/s; one value in 2D, a world-frame vector
in 3D).

State: ``tools.pos`` (n, dim) and ``tools.rot`` (n, 4): an angle in column 0 in 2D, a unit
quaternion (w, x, y, z) in 3D. Parameter: ``tools.friction`` (Coulomb coefficient, per tool).
"""

import numpy as np
import taichi as ti

from ..contact.sdf import project_velocity, tool_sdf
from ..solvers._linalg import rotation_matrix
from .base import Part

__all__ = ["ToolsPart", "SHAPE_IDS"]

SHAPE_IDS = {"sphere": 0, "box": 1, "capsule": 2, "cylinder": 3, "cup": 4}


@ti.data_oriented
class ToolsPart(Part):
    """The scene's kinematic tools. ``capacity`` 0 means a scene without tools: the fields
    keep one row and solvers compiled for such a scene leave the contact code out."""

    name = "tools"

    def __init__(self, dim: int, capacity: int, K: int, real, controls, worlds: int = 1):
        super().__init__(K, real)
        self.dim = dim
        self.capacity = capacity  # tools per world (compiled: the contact loops unroll over it)
        self.worlds = worlds
        self.controls = controls
        self.rot_dim = 1 if dim == 2 else 3
        self.columns = dim + self.rot_dim  # action columns per tool
        # batched layouts (Scene(n_worlds=W)): world w's tools are rows w * per_world ...; each
        # tool's action columns follow its row, so they are world-major too
        E = max(capacity, 1) * worlds
        self.per_world = ti.field(ti.i32, shape=())
        self.pos = self.slot_field("pos", (dim,), E)
        self.rot = self.slot_field("rot", (4,), E)
        self.shape = ti.field(ti.i32, shape=E)
        self.size = ti.Vector.field(3, real, shape=E)
        self.friction = ti.field(real, shape=E, needs_grad=True)
        self.softness = ti.field(real, shape=E)
        self.param("friction", "1", self.friction, lower=0.0, doc="Coulomb friction coefficient against materials")

    @property
    def n(self) -> int:
        return int(self.rows[None])

    def load(self, spec, worlds: int = 1) -> None:
        """``spec``: the scene's list of :class:`physim.Tool` (all worlds', world-major: ``worlds``
        copies of one world's list)."""
        tools = spec
        if len(tools) % worlds or (worlds > 1 and worlds != self.worlds):
            raise ValueError(f"{len(tools)} tools do not split into {worlds} worlds of this layout "
                             f"({self.worlds} worlds)")
        self.per_world[None] = len(tools) // worlds
        E = self.shape.shape[0]
        shapes, sizes = np.zeros(E, np.int32), np.zeros((E, 3))
        fric, soft = np.zeros(E), np.zeros(E)
        for i, tool in enumerate(tools):
            shapes[i], sizes[i] = SHAPE_IDS[tool.shape], tool.size_params()
            fric[i], soft[i] = tool.friction, tool.softness
        self.rows[None] = len(tools)
        self.shape.from_numpy(shapes)
        self.size.from_numpy(sizes.astype(self.np_real))
        self.friction.from_numpy(fric.astype(self.np_real))
        self.softness.from_numpy(soft.astype(self.np_real))
        self.action_dim = len(tools) * self.columns

    # ------------------------------------------------------------------ physics
    @ti.func
    def velocity(self, e, t, r):
        """Velocity of tool ``e``'s material point at offset ``r`` from its center (action row ``t``)."""
        k0 = self.act_offset[None] + e * self.columns
        a = ti.static(self.controls.action)
        lin = r * 0.0
        for d in ti.static(range(self.dim)):
            lin[d] = a[t, k0 + d]
        vel = lin
        if ti.static(self.dim == 2):
            vel = lin + a[t, k0 + 2] * ti.Vector([-r[1], r[0]])
        else:
            w = ti.Vector([a[t, k0 + 3], a[t, k0 + 4], a[t, k0 + 5]])
            vel = lin + w.cross(r)
        return vel

    @ti.func
    def contact(self, l, t, x, v):
        """Velocity ``v`` of a point at ``x`` after contact with every tool (poses of slot ``l``)."""
        return self.contact_except(l, t, x, v, -1)

    @ti.func
    def contact_except(self, l, t, x, v, skip):
        """:meth:`contact` with every tool but tool ``skip`` (-1: none; FEM skips a body's mount)."""
        return self._contact(l, t, x, v, skip, 0)

    @ti.func
    def contact_world(self, l, t, x, v, world):
        """:meth:`contact` with the tools of world ``world`` only (batched layouts; 0 otherwise)."""
        return self._contact(l, t, x, v, -1, world)

    @ti.func
    def _world_tool(self, j, world):
        """Row of world ``world``'s ``j``-th tool and whether that tool exists (unbatched: row ``j``)."""
        e = j
        inside = j < self.rows[None]
        if ti.static(self.worlds > 1):
            e = world * self.per_world[None] + j
            inside = j < self.per_world[None]
        return e, inside

    @ti.func
    def _contact(self, l, t, x, v, skip, world):
        out = v
        for j in ti.static(range(self.capacity)):
            e, inside = self._world_tool(j, world)
            if inside and e != skip:
                c = self.pos[l, e]
                R = rotation_matrix(self.rot[l, e], self.dim)
                r = x - c
                phi, n_local = tool_sdf(self.shape[e], self.size[e], R.transpose() @ r, self.dim)
                softness = self.softness[e]
                influence = phi * 0.0
                if softness > 0:
                    influence = ti.min(ti.exp(-phi * softness), 1.0)
                elif phi <= 0:
                    influence = 1.0
                out = project_velocity(out, self.velocity(e, t, r), R @ n_local, self.friction[e], influence)
        return out

    @ti.func
    def signed_distance(self, l, x):
        """Smallest signed distance from ``x`` to any tool (slot ``l``); 1 when there are none."""
        return self.signed_distance_world(l, x, 0)

    @ti.func
    def signed_distance_world(self, l, x, world):
        """:meth:`signed_distance` to the tools of world ``world`` (batched layouts; 0 otherwise)."""
        best = x[0] * 0.0 + 1.0
        for j in ti.static(range(self.capacity)):
            e, inside = self._world_tool(j, world)
            if inside:
                R = rotation_matrix(self.rot[l, e], self.dim)
                phi, _n = tool_sdf(self.shape[e], self.size[e], R.transpose() @ (x - self.pos[l, e]), self.dim)
                best = ti.min(best, phi)
        return best

    @ti.kernel
    def _min_distance(self, pts: ti.types.ndarray(), world: ti.types.ndarray(), out: ti.types.ndarray()):
        for i in range(pts.shape[0]):
            x = ti.Vector.zero(self.real, self.dim)
            for d in ti.static(range(self.dim)):
                x[d] = pts[i, d]
            out[i] = self.signed_distance_world(0, x, world[i])

    def min_distance(self, points: np.ndarray, world: np.ndarray | None = None) -> np.ndarray:
        """Signed distance from each point to the nearest tool at slot 0 (the current poses); in a
        batched layout, to the nearest tool of the point's world (``world``: one per point)."""
        pts = np.ascontiguousarray(points, dtype=self.np_real)
        w = np.zeros(len(pts), np.int32) if world is None else np.ascontiguousarray(world, dtype=np.int32)
        out = np.zeros(len(pts), self.np_real)
        self._min_distance(pts, w, out)
        return out.astype(np.float64)

    @ti.kernel
    def advance(self, l: ti.i32, t: ti.i32):
        """Integrate every pose from slot ``l`` to ``l + 1`` with action row ``t``."""
        for e in range(self.rows[None]):
            self._advance(l, t, e)

    @ti.func
    def _advance(self, l, t, e):
        k0 = self.act_offset[None] + e * self.columns
        a = ti.static(self.controls.action)
        dt = self.dt[None]
        pos = self.pos[l, e]
        for d in ti.static(range(self.dim)):
            pos[d] += dt * a[t, k0 + d]
        self.pos[l + 1, e] = pos
        rot = self.rot[l, e]
        if ti.static(self.dim == 2):
            rot[0] += dt * a[t, k0 + 2]
        else:
            w = ti.Vector([0.0, a[t, k0 + 3], a[t, k0 + 4], a[t, k0 + 5]])
            # dq/dt = 0.5 * (0, w) x q  (world-frame angular velocity), then renormalize
            q = rot
            wq = ti.Vector([
                -w[1] * q[1] - w[2] * q[2] - w[3] * q[3],
                w[1] * q[0] + w[2] * q[3] - w[3] * q[2],
                -w[1] * q[3] + w[2] * q[0] + w[3] * q[1],
                w[1] * q[2] - w[2] * q[1] + w[3] * q[0],
            ])
            rot = q + 0.5 * dt * wq
            rot = rot / ti.sqrt(rot.dot(rot))
        self.rot[l + 1, e] = rot

    def substep(self, tape, l: int, t: int) -> None:
        if self.capacity == 0:
            return
        tape.launch(self.advance, l, t)  # writes slot l + 1 only: no replay needed

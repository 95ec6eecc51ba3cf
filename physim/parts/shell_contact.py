"""Shell <-> shell contact (two sheets, a sheet folded onto itself) inside the shell part's
implicit step: a smooth barrier on the unsigned distance of vertex-triangle and edge-edge pairs,
lagged friction between sheets, a collision-aware step bound, and the exact pair Hessians.

Switched on per body (:attr:`physim.ShellBody.self_contact`); a scene without such a body
compiles none of this (today's speed). Every primitive of the bodies that have it takes part:
a vertex against every triangle, an edge against every edge, of the same body (pairs sharing a
vertex excluded) and of the other such bodies.

Distance and gap
    For a vertex-triangle pair (p; t1, t2, t3) the closest point ``c = b1 t1 + b2 t2 + b3 t3`` on
    the triangle (its face, an edge or a corner: Ericson's region test), for an edge-edge pair
    (p0 p1; q0 q1) the closest points ``(1 - s) p0 + s p1``, ``(1 - t) q0 + t q1`` of the
    segments. In both, the distance vector is ``diff = sum_a w_a x_a`` (``w = (1, -b)`` or
    ``(1 - s, s, t - 1, -t)``) and ``d = |diff|``; by Danskin's theorem ``d d / d x_a =
    w_a diff / d`` (the weights held at the minimiser). The gap is ``z = (d - t_off) / s_hat``:
    ``t_off`` the sum of the two sheets' half thicknesses (the mid-surfaces are ``t_off`` apart
    when the sheets touch), ``s_hat`` the mean of the two bodies' ``self_contact_margin``.

Barrier (IPC's, Li et al. 2020): ``E = k w m B(z)`` for ``0 < z < 1``, ``B(z) = -(z - 1)^2 log z``
    (C2 at ``z = 1``, where it starts like ``(1 - z)^3``; infinite at ``z = 0``: the sheets never
    touch), ``k = kc s_hat^2`` with ``kc`` the mean of the two bodies' ``shell.self_contact_stiffness``
    (Pa/m; the pressure ``kc s_hat (-B'(z))`` is 1.2 kc s_hat at half the margin), ``w`` the pair's
    area (the vertex's lumped area; for an edge pair the mean of the edges' areas, a third of each
    adjacent triangle's). Pairs overlap (a contact patch is seen by vertex-triangle pairs from both
    sheets and by crossing edges), so the effective stiffness is a few times ``kc``. ``m`` is 1 for
    vertex-triangle pairs; for edge pairs it is IPC's mollifier of ``c = |e_a x e_b|^2``,
    ``m = (2 - c / c0) c / c0`` below ``c0 = 1e-3 |e_a|^2 |e_b|^2`` (rest lengths): nearly parallel
    edges, where the closest points jump, fade out smoothly (vertex-triangle pairs hold them).

Friction (lagged, as against the tools): the pairs with ``z < 1`` at the start of the step
    (``x_n``) keep their weights ``w^n``, normal ``n = diff^n / d^n`` and normal force
    ``lam = -dE/dd`` at ``x_n``; the potential ``mu lam (sqrt(|u|^2 + eps_u^2) - eps_u)`` of the
    tangential relative slip ``u = (I - n n^T) sum_a w^n_a (x_a - x^n_a)``, ``mu`` the mean of the
    two bodies' ``shell.self_friction`` (differentiable), ``eps_u = V_SMOOTH dt``.

Pairs (broad phase, numpy + a k-d tree): rebuilt at every Newton iteration with every pair whose
    axis-aligned boxes come within ``t_off + s_hat + 2 delta``, ``delta`` = :data:`CONTACT_STEP`
    times the shortest rest edge, the most any vertex moves in one iteration when contact is on:
    every pair that a trial step of the line search can bring inside ``s_hat`` is a candidate, so
    E is the same function of x over the whole search (a pair further than ``s_hat`` adds 0).
    The friction pairs are found once per step at ``x_n``.

Step bound (collision-aware, no tunnelling): a pair's distance shrinks by at most the sum of
    the largest step of a vertex on each side (``d`` is 1-Lipschitz in each closest point, a convex
    combination of its primitive's vertices), so ``alpha <= (1 - MIN_GAP_KEEP) (d - t_off) /
    (max_side1 |dx| + max_side2 |dx|)`` keeps every gap above ``MIN_GAP_KEEP`` of its value along
    the whole straight path of the step: no pair reaches ``z = 0`` or crosses.

Shell <-> FEM pad contact (every shell body against every FEM body's surface, e.g. a soft fingertip
    mounted on a gripper tool; the FEM part steps first in a substep, so its surface at the end of
    the substep, slot ``l + 1``, is a moving obstacle of the shell's Newton solve): vertex-triangle
    pairs of shell vertices and the gel's outward surface triangles, the tools' penalty
    ``0.5 kc a (eps - phi)^2`` below ``eps`` = :data:`physim.parts.shell.MARGIN` (``kc`` =
    ``shell.contact_stiffness``, ``a`` the vertex's lumped area, ``phi`` the distance to the face
    less half the sheet's thickness, negative only behind a face's interior), and lagged friction
    from the pairs in contact at the start of the step (the gel's nodes at slot ``l``), coefficient
    ``shell.pad_friction``. Gradients: the adjoint's vector-Jacobian product gives the gel nodes'
    gradients at slots ``l + 1`` and ``l``, added to ``fem.x``'s, from where the FEM part's own
    reverse mode carries them to its state, parameters and mount pose (the gripper's actions).
    The gel may advance at most about half the contact zone per substep (a faster pad can start a
    solve past a sheet vertex: Newton then fails and says so).

The sheets' reaction on the pads (two-way coupling). At the converged ``x_{n+1}`` of substep ``l`` the
    pad pairs' forces on the gel's nodes are ``R_l = -sum_p dE_p/dx_a`` over the pairs' face rows ``a``:
    exactly minus the force on the sheet's vertex, spread over the face's three nodes with the closest
    point's barycentric weights (``E_p`` depends on the vertex and the face only through their
    difference, so the four forces of a pair sum to zero; lagged friction likewise). They are written to
    the state ``shell.f_pad`` ((fem nodes, 3), N), relaxed::

        f_pad[l + 1] = (1 - w) f_pad[l] + w R_l,     w = :attr:`ShellContact.relaxation` (default 0.5)

    (``w`` per node with the adaptive relaxation, below), and the FEM part adds ``f_pad[l]`` to its free
    nodes' forces during substep ``l``
    (:meth:`physim.parts.fem.FEMPart.set_external_force`), held over its sub-steps and counted in the
    tactile reading ``fem.f_contact``. Why lagged: the FEM part steps first in a substep (explicitly; the
    shells need its surface at the end of the substep as their obstacle), so the reaction of substep
    ``l`` can only act in substep ``l + 1``; putting the gel's nodes into the shells' Newton solve would
    make it monolithic. Momentum is exchanged exactly, one substep late:
    ``sum_{l < T} f_pad[l] = sum_{l < T} R_l - (f_pad[T] - f_pad[0]) / w`` (the last term is the impulse
    still to be applied; tested). Why relaxed: a lagged penalty is a fixed-point iteration between the
    sheet and the gel whose gain is the contact's stiffness over the gel's local stiffness (``~ kc h / E``
    for normal contact): measured on a 2 x 2 x 2 pad (E = 5e4 Pa, 2 cm, damped by beta = 5e-4 s) pressed
    1.7 mm into a pinned 5e3 N/m sheet at dt = 2e-3 s, ``w = 1`` locks into a period-two cycle (the
    pad's force alternating 0.19 / 0.38 N; at E = 2e5 Pa it grows slowly), ``w = 0.5`` settles to
    0.247 N and the gel to rest (|v| < 1e-3 m/s within 24 ms); an undamped gel (beta = 0) with ``w = 1``
    inverted a tet within 12 substeps, with ``w = 0.5`` it stays bounded, ringing by +-15 %. Known
    limit: stick friction between a sheet much stiffer in-plane than the gel is in shear (gain
    ``~ membrane stiffness / gel shear stiffness``, ~50 in that scene) is not stabilized by ``w``: the
    gel's surface keeps a bounded sideways jitter (|v| ~ 0.07 m/s, of the size ``mu lam`` over the gel's
    shear stiffness; the normal force stays within 2 %); ``w = 0.25`` roughly halves it, ``w = 0.1``
    leaves ~0.01 m/s but the normal force then takes ~60 ms to settle. Use a smaller ``w``
    (:meth:`physim.parts.shell.ShellPart.set_pad_relaxation`) or ``pad_friction = 0`` where the shear
    reading matters. A sheet backed by something stiff (lying on a table) leaves the gel's lightest surface
    nodes as the only compliance: with quasi-static gel nodes the loop's factor per substep is ``1 - w (1 + g)``,
    ``g`` the contact stiffness over the gel's local stiffness at the node, so it converges only for ``w (1 + g)
    < 2``; measured on the 2 x 2 x 2 pad (beta 5e-4 s) pressing a free 5 x 5 sheet 0.6 mm into the contact zone
    on a table, ``pad_friction = 0``: ``w = 0.5`` locks a corner node into a period-two cycle (the press's force
    alternating 0.44 / 0.61 N, |v| 0.12 m/s), ``w = 0.25`` settles (|v| 2e-4 m/s after a 60 ms hold;
    tests/test_shell_pad_twoway.py). The adaptive relaxation (``set_pad_relaxation(w, adaptive=True)``) gives
    each pad node ``j`` its own ``w_j = min(w, 1 / (1 + g_j))``, the factor's zero for a quasi-static node, with
    ``g_j = kc A_j c_j``: ``kc`` the sheets' largest ``shell.contact_stiffness``, ``A_j`` the node's lumped
    surface area, ``c_j`` its largest static compliance at rest (:func:`pad_compliance`: the node's 3 x 3 block
    of the inverse linear-elastic stiffness, kinematic nodes held; from the parameters when set and at load,
    constants of the step, so gradients stay exact). In that scene it gives 0.15 at the face's corners and
    settles (|v| 1.3e-4 m/s); with pad friction 0.5 the sideways jitter is 0.02 m/s. One-way coupling (the
    gel an obstacle that never feels the sheets, ``shell.f_pad`` held at 0; the coupling before the reaction
    existed) is :meth:`physim.parts.shell.ShellPart.set_pad_reaction` (``False``). Reverse mode:
    ``f_pad[l + 1]``'s gradient joins the implicit step's adjoint (the reaction depends on ``x_{n+1}``:
    ``(dR/dx_{n+1})^T (w dL/df_pad)`` is added to the right-hand side
    before ``H lam = g`` is solved; its other inputs -- ``x_n``, the gel at both ends of the substep,
    ``shell.contact_stiffness``, ``shell.pad_friction`` -- get theirs from one more vector-Jacobian
    product of the same pair kernel), ``(1 - w)`` of it is carried to ``f_pad[l]``, and the FEM part's
    adjoint of its external force gives ``f_pad[l]``'s. ``shell.f_pad`` is slot state, so
    checkpoints carry it. It stays in the shell part, not the coupler (ARCHITECTURE's place for
    cross-part contact): the pad contact is a term of the shells' incremental potential (its energy,
    exact pair Hessians and step bound enter every Newton iteration and the adjoint), which a coupler
    that writes forces before the solvers step cannot provide.

Derivatives: the pair kernel writes each pair's forces ``dE/dx_a`` from pair-local copies of its
    vertices; Taichi's reverse mode of it is the exact Hessian-vector product (through the
    closest-point weights: the distance's exact second derivative), used by CG, and seeded one
    local axis at a time (12 launches for all pairs at once) it gives every pair's 12 x 12 block
    for the direct solver (projected to positive semi-definite for the Newton direction, exact for
    the adjoint). The adjoint's vector-Jacobian product runs the same kernel's reverse mode: its
    inputs are the iterate, ``x_n`` (friction's lagged terms), the thicknesses (constant), and the
    parameters ``shell.self_contact_stiffness`` and ``shell.self_friction``.
"""


import math

import numpy as np
import taichi as ti

from .. import backend
from .shell import MARGIN as PAD_MARGIN
from .shell import V_SMOOTH

__all__ = ["ShellContact", "pad_compliance", "rest_stiffness",
           "CONTACT_STEP", "MIN_GAP_KEEP", "PAIRS_PER_VERTEX", "PAD_RELAXATION", "VT", "EE"]

#: the most a vertex moves in one Newton iteration when shell contact is on (fraction of the shortest rest edge)
CONTACT_STEP = 0.25
#: the step bound keeps every pair's gap above this fraction of its value at the start of the step
MIN_GAP_KEEP = 0.1
#: pair capacity compiled per contact vertex (barrier + friction pairs)
PAIRS_PER_VERTEX = 64
#: pair types
VT, EE = 0, 1
#: pair roles: shell <-> shell barrier and lagged friction, shell vertex <-> FEM pad face penalty and friction
BARRIER, FRICTION, PAD, PAD_FRICTION = 0, 1, 2, 3
#: the edge-edge mollifier acts below this fraction of |e_a|^2 |e_b|^2 (rest lengths)
MOLLIFIER = 1e-3
#: relaxation of the sheets' reaction on the FEM pads: the force applied to the gel moves this fraction of the
#: way to the newest reaction per substep (module docstring)
PAD_RELAXATION = 0.5


@ti.func
def point_triangle_weights(p, a, b, c):
    """Barycentric weights (of a, b, c) of the point of triangle abc closest to p (Ericson 2005,
    5.1.5): the face, an edge or a corner."""
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = ab.dot(ap), ac.dot(ap)
    bp = p - b
    d3, d4 = ab.dot(bp), ac.dot(bp)
    cp = p - c
    d5, d6 = ab.dot(cp), ac.dot(cp)
    vc = d1 * d4 - d3 * d2
    vb = d5 * d2 - d1 * d6
    va = d3 * d6 - d5 * d4
    w = ti.Vector([1.0, 0.0, 0.0])
    if d1 <= 0 and d2 <= 0:
        w = ti.Vector([1.0, 0.0, 0.0])
    elif d3 >= 0 and d4 <= d3:
        w = ti.Vector([0.0, 1.0, 0.0])
    elif vc <= 0 and d1 >= 0 and d3 <= 0:
        v = d1 / (d1 - d3)
        w = ti.Vector([1.0 - v, v, 0.0])
    elif d6 >= 0 and d5 <= d6:
        w = ti.Vector([0.0, 0.0, 1.0])
    elif vb <= 0 and d2 >= 0 and d6 <= 0:
        u = d2 / (d2 - d6)
        w = ti.Vector([1.0 - u, 0.0, u])
    elif va <= 0 and d4 - d3 >= 0 and d5 - d6 >= 0:
        u = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        w = ti.Vector([0.0, 1.0 - u, u])
    else:
        den = 1.0 / (va + vb + vc)
        v, u = vb * den, vc * den
        w = ti.Vector([1.0 - v - u, v, u])
    return w


@ti.func
def segment_weights(p0, p1, q0, q1):
    """(s, t): the closest points ``p0 + s (p1 - p0)`` and ``q0 + t (q1 - q0)`` of two segments
    (Ericson 2005, 5.1.9; parallel segments: s = 0)."""
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a, e, f = d1.dot(d1), d2.dot(d2), d2.dot(r)
    c, b = d1.dot(r), d1.dot(d2)
    den = a * e - b * b
    s = 0.0 * a
    if den > 1e-14 * a * e:
        s = ti.min(ti.max((b * f - c * e) / den, 0.0), 1.0)
    t = (b * s + f) / e
    if t < 0:
        t = 0.0 * t
        s = ti.min(ti.max(-c / a, 0.0), 1.0)
    elif t > 1:
        t = 1.0 + 0.0 * t
        s = ti.min(ti.max((b - c) / a, 0.0), 1.0)
    return s, t


def rest_stiffness(body, E: float, nu: float):
    """The (3n, 3n) sparse linear-elastic stiffness matrix (N/m) of FEM body ``body`` at its rest shape with
    Young's modulus ``E`` and Poisson ratio ``nu``: per tet ``K_ab = V (lam g_a g_b^T + mu (g_b g_a^T +
    (g_a . g_b) I))``, ``g_a`` the gradient of node a's shape function (the nodal force is ``-K u``)."""
    import scipy.sparse as sp

    from .fem import lame

    nv = body.n_vertices
    Dminv, vol, _s, _v = body.geometry()
    mu, lam = lame(E, nu)
    G = np.zeros((len(vol), 4, 3))
    G[:, 1:] = Dminv  # grad N_a, a = 1..3: the rows of Dm^-1
    G[:, 0] = -G[:, 1:].sum(1)
    blk = vol[:, None, None, None, None] * (
        lam * np.einsum("eai,ebj->eabij", G, G) + mu * np.einsum("ebi,eaj->eabij", G, G)
        + mu * np.einsum("eak,ebk->eab", G, G)[..., None, None] * np.eye(3))
    t = body.mesh.tets
    rows = np.broadcast_to(3 * t[:, :, None, None, None] + np.arange(3)[:, None], blk.shape)
    cols = np.broadcast_to(3 * t[:, None, :, None, None] + np.arange(3), blk.shape)
    return sp.csc_matrix((blk.ravel(), (rows.ravel(), cols.ravel())), shape=(3 * nv, 3 * nv))


def pad_compliance(fem) -> np.ndarray:
    """(n,) every FEM node's largest static compliance (m/N) in its rest state: the largest eigenvalue of the
    node's 3 x 3 block of K^-1, K = :func:`rest_stiffness` of its body (``fem.E``, ``fem.nu`` now) with the
    kinematic nodes held (0 for those and for interior nodes). Sparse LU, three unit loads per surface node."""
    from scipy.sparse.linalg import splu

    n = int(fem.rows[None])
    out = np.zeros(n)
    E = fem.E.to_numpy().astype(np.float64)
    nu = fem.nu.to_numpy().astype(np.float64)
    anode = fem.anode.to_numpy()[:n]
    v0 = 0
    for b, body in enumerate(fem.bodies):
        nv = body.n_vertices
        K = rest_stiffness(body, E[b], nu[b])
        free = np.setdiff1d(np.arange(nv), body.fixed)
        dofs = (3 * free[:, None] + np.arange(3)).ravel()
        lu = splu(K[dofs][:, dofs].tocsc())
        where = np.full(nv, -1)
        where[free] = np.arange(len(free))
        surf = free[anode[v0 + free] > 0]
        for start in range(0, len(surf), 64):  # 64 nodes' unit loads per solve
            js = surf[start: start + 64]
            rhs = np.zeros((3 * len(free), 3 * len(js)))
            for c, j in enumerate(js):
                rhs[3 * where[j]: 3 * where[j] + 3, 3 * c: 3 * c + 3] = np.eye(3)
            sol = lu.solve(rhs)
            for c, j in enumerate(js):
                C = sol[3 * where[j]: 3 * where[j] + 3, 3 * c: 3 * c + 3]
                out[v0 + j] = np.linalg.eigvalsh(0.5 * (C + C.T)).max()
        v0 += nv
    return out


@ti.data_oriented
class ShellContact:
    """The shell part's shell <-> shell contact (module docstring). Owned by a
    :class:`physim.parts.shell.ShellPart` whose layout has ``contact_pairs > 0``; reads its work
    copies (iterate ``xk``, ``xn``, parameters ``bp``) and adds to its residual ``r``."""

    def __init__(self, part, capacity: int, cols: dict):
        self.part = part
        real = part.real
        self.real = real
        self.capacity = P = capacity
        B = part.layout.bodies
        self.C_T, self.C_SKC, self.C_SMU = cols["thickness"], cols["stiffness"], cols["friction"]
        self.pid = ti.Vector.field(4, ti.i32, shape=P)  # vertex rows of the pair
        self.ptype = ti.field(ti.i32, shape=P)
        self.prole = ti.field(ti.i32, shape=P)
        self.pbody = ti.Vector.field(2, ti.i32, shape=P)  # bodies of the two sides
        self.pw = ti.field(real, shape=P)  # area weight (m^2)
        self.pc0 = ti.field(real, shape=P)  # mollifier threshold (m^4)
        self.n_pairs = ti.field(ti.i32, shape=())
        self.xp = ti.Vector.field(3, real, shape=(P, 4), needs_grad=True)
        self.xnp = ti.Vector.field(3, real, shape=(P, 4), needs_grad=True)
        self.fp = ti.Vector.field(3, real, shape=(P, 4), needs_grad=True)
        self.pz = ti.field(real, shape=P)  # gap z of every pair at the iterate
        self.margin = ti.field(real, shape=B)  # s_hat of each body (m)
        self.C_KC, self.C_PMU = cols["pad_stiffness"], cols["pad_friction"]
        # FEM pad nodes (the obstacle), rows OB + j of the pairs' ids: at the end / start of the substep
        self.OB = part.layout.nodes
        self.has_pad = part.layout.fem_nodes > 0
        self.ob_x = ti.Vector.field(3, real, shape=max(part.layout.fem_nodes, 1), needs_grad=True)
        self.ob_xn = ti.Vector.field(3, real, shape=max(part.layout.fem_nodes, 1), needs_grad=True)
        self.fem = None  # the FEM part (set by the scene: attach_fem)
        #: relaxation of the reaction on the pads (module docstring): the largest, and every node's unless adaptive
        self.relaxation = PAD_RELAXATION
        #: adaptive relaxation: node j's is min(relaxation, 1 / (1 + kc A_j c_j)) (:meth:`set_relaxation`)
        self.adaptive = False
        #: every pad node's relaxation (filled at load and by :meth:`set_relaxation`)
        self.wnode = ti.field(real, shape=max(part.layout.fem_nodes, 1))
        self.red = ti.field(real, shape=4)  # [energy, min z (barrier pairs), step bound]
        self.enabled = np.zeros(0, bool)
        self._fric = None  # friction pairs of the current step (numpy)
        self._pad_fric = None
        self.delta = 0.0
        self.topology = None

    # ------------------------------------------------------------------ loading
    def load(self, bodies, tri, kind, node_area, min_edge: float) -> None:
        """Topology of the contact bodies (from :meth:`ShellPart.load`); checks the rest shapes."""
        self.enabled = np.array([bool(b.self_contact) for b in bodies])
        margins = np.array([b.self_contact_margin for b in bodies], np.float64)
        full = np.zeros(self.margin.shape[0])
        full[: len(bodies)] = margins
        self.margin.from_numpy(full.astype(self.part.np_real))
        nbody = np.concatenate([np.full(b.n_vertices, i) for i, b in enumerate(bodies)])
        tb = nbody[tri[:, 0]]
        tri_c = tri[self.enabled[tb]]
        edges, eareas = [], []
        v0 = 0
        for i, b in enumerate(bodies):
            if self.enabled[i]:
                e = b.mesh.edges()
                ar = b.mesh.areas()
                ea = np.zeros(len(e))
                # a third of each adjacent triangle's area to each of its edges
                und = np.sort(b.mesh._directed, axis=1)
                key_e = e[:, 0].astype(np.int64) * b.n_vertices + e[:, 1]
                key_d = und[:, 0].astype(np.int64) * b.n_vertices + und[:, 1]
                idx = np.searchsorted(key_e, key_d)
                np.add.at(ea, idx, np.tile(ar, 3) / 3.0)
                edges.append(e + v0)
                eareas.append(ea)
            v0 += b.n_vertices
        self.topology = dict(
            tri=tri_c.astype(np.int64), tri_body=nbody[tri_c[:, 0]] if len(tri_c) else np.zeros(0, np.int64),
            edges=np.concatenate(edges).astype(np.int64) if edges else np.zeros((0, 2), np.int64),
            edge_area=np.concatenate(eareas) if eareas else np.zeros(0),
            verts=np.flatnonzero(self.enabled[nbody]), node_body=nbody, kinematic=kind != -2,
            node_area=node_area.astype(np.float64), margin=margins,
            thickness=np.array([b.material.thickness for b in bodies], np.float64))
        T = self.topology
        T["edge_body"] = nbody[T["edges"][:, 0]]
        n = len(nbody)
        T["n"] = n
        T["pad_tri"] = np.zeros((0, 3), np.int64)
        T["kinematic_all"] = T["kinematic"]
        if self.fem is not None:
            nf = int(self.fem.n_faces[None])
            T["pad_tri"] = self.fem.faces.to_numpy()[:nf].astype(np.int64) + self.OB
            kin = np.ones(self.OB + int(self.fem.rows[None]), bool)
            kin[:n] = T["kinematic"]
            T["kinematic_all"] = kin
        X = np.concatenate([b.mesh.vertices for b in bodies])
        T["verts_all"] = np.arange(n)
        T["rest_len2"] = ((X[T["edges"][:, 1]] - X[T["edges"][:, 0]]) ** 2).sum(1)
        self.delta = CONTACT_STEP * min_edge
        # the rest shapes: no pair of one body inside its contact zone (the barrier would act at rest),
        # no two bodies touching or overlapping
        pad = None
        if self.fem is not None:
            pad = np.concatenate([b.mesh.vertices for b in self.fem.bodies])
            full = np.zeros(self.ob_x.shape + (3,), self.part.np_real)
            full[: len(pad)] = pad
            self.ob_x.from_numpy(full)
            self.ob_xn.from_numpy(full)
        self.set_pairs(self._with_pad(X, pad), np.zeros((0, 5), np.int64), extra=0.0)
        self._gaps()
        n = int(self.n_pairs[None])
        if n:
            z = self.pz.to_numpy()[:n]
            ids = self.pid.to_numpy()[:n]
            bod = self.pbody.to_numpy()[:n]
            role = self.prole.to_numpy()[:n]
            bad = (role == PAD) & (z <= 0.0)
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(f"shell vertex {int(ids[j, 0])} (body {int(bod[j, 0])}) starts inside a FEM pad or "
                                 f"within half its thickness of the pad's surface (face of FEM nodes "
                                 f"{(ids[j, 1:] - self.OB).tolist()}, {-z[j] * PAD_MARGIN:.3g} m too deep); move "
                                 f"the pad or the sheet")
            same = (bod[:, 0] == bod[:, 1]) & (role < PAD)
            bad = (z < 1.0) & same
            if bad.any():
                j = int(np.argmax(bad))
                b = int(bod[j, 0])
                raise ValueError(
                    f"shell body {b}: its rest shape has {'vertex-triangle' if self.ptype[j] == VT else 'edge-edge'} "
                    f"pair {ids[j].tolist()} (not sharing a vertex) within its self-contact zone (thickness + "
                    f"self_contact_margin = {T['thickness'][b] + margins[b]:.3g} m; gap {z[j]:.3g} of the margin): "
                    f"the barrier would act at rest; lower self_contact_margin or use a coarser mesh")
            bad = (z <= 0.0) & (role < PAD)
            if bad.any():
                j = int(np.argmax(bad))
                raise ValueError(
                    f"shell bodies {int(bod[j, 0])} and {int(bod[j, 1])} start touching or overlapping: pair "
                    f"{ids[j].tolist()} is {z[j] * 0.5 * (margins[bod[j, 0]] + margins[bod[j, 1]]):.3g} m from "
                    f"contact (their half thicknesses summed); move them apart")

        if self.fem is not None:
            self._fill_relaxation()

    # ------------------------------------------------------------------ broad phase
    def _candidates(self, X: np.ndarray, radius: float) -> np.ndarray:
        """(k, 5) pairs [ids (4), type] whose boxes come within ``radius`` (module docstring)."""
        from scipy.spatial import cKDTree

        T = self.topology
        out = [self._vt(X, T["verts"], T["tri"], T["kinematic"], radius, VT)]
        E = T["edges"]
        kin = T["kinematic"]
        if len(E) > 1:
            A, Bq = X[E[:, 0]], X[E[:, 1]]
            lo, hi = np.minimum(A, Bq), np.maximum(A, Bq)
            mid = 0.5 * (lo + hi)
            half = np.linalg.norm(hi - lo, axis=1) * 0.5
            tree = cKDTree(mid)
            pr = tree.query_pairs(2 * half.max() + radius, output_type="ndarray")
            if len(pr):
                i, j = pr[:, 0], pr[:, 1]
                gap = np.linalg.norm(np.maximum(np.maximum(lo[i] - hi[j], lo[j] - hi[i]), 0.0), axis=1)
                ei, ej = E[i], E[j]
                share = (ei[:, :1] == ej).any(1) | (ei[:, 1:] == ej).any(1)
                keep = (gap <= radius) & ~share & ~(kin[ei].all(1) & kin[ej].all(1))
                out.append(np.column_stack([ei[keep], ej[keep], np.full(int(keep.sum()), EE)]))
        return np.concatenate(out).astype(np.int64)

    @staticmethod
    def _vt(X: np.ndarray, verts: np.ndarray, tri: np.ndarray, kin: np.ndarray, radius: float, typ: int):
        """(k, 5) vertex-triangle pairs [v, t1, t2, t3, typ] whose boxes come within ``radius``
        (no shared vertex, not all kinematic)."""
        from scipy.spatial import cKDTree

        if not (len(tri) and len(verts)):
            return np.zeros((0, 5), np.int64)
        P = X[tri]  # (m, 3, 3)
        lo, hi = P.min(1), P.max(1)
        cen = 0.5 * (lo + hi)
        rad = np.linalg.norm(hi - lo, axis=1) * 0.5 + radius
        tree = cKDTree(X[verts])
        hits = tree.query_ball_point(cen, rad)
        cnt = np.fromiter((len(h) for h in hits), np.int64, len(hits))
        if not cnt.sum():
            return np.zeros((0, 5), np.int64)
        t_idx = np.repeat(np.arange(len(tri)), cnt)
        v_idx = verts[np.concatenate([np.asarray(h, np.int64) for h in hits if len(h)])]
        x = X[v_idx]
        gap = np.linalg.norm(np.maximum(np.maximum(lo[t_idx] - x, x - hi[t_idx]), 0.0), axis=1)
        tt = tri[t_idx]
        keep = (gap <= radius) & (tt != v_idx[:, None]).all(1)
        keep &= ~(kin[v_idx] & kin[tt].all(1))
        return np.column_stack([v_idx[keep], tt[keep], np.full(int(keep.sum()), typ)]).astype(np.int64)

    def _pad_candidates(self, X: np.ndarray, radius: float) -> np.ndarray:
        """(k, 5) shell vertex <-> FEM pad face pairs (``X``: shell rows, then the pad's at OB)."""
        T = self.topology
        return self._vt(X, T["verts_all"], T["pad_tri"], T["kinematic_all"], radius, VT)

    def _with_pad(self, X: np.ndarray, pad: np.ndarray) -> np.ndarray:
        """Shell positions X followed (from row OB) by the pad's ``pad``."""
        if not self.has_pad or self.fem is None:
            return X
        out = np.zeros((self.OB + len(pad), 3))
        out[: len(X)] = X
        out[self.OB:] = pad
        return out

    def _radius(self) -> float:
        T = self.topology
        en = self.enabled[: len(T["margin"])]
        return float(T["thickness"][en].max() + T["margin"][en].max()) if en.any() else 0.0

    def _pad_radius(self) -> float:
        from .shell import MARGIN

        return float(0.5 * self.topology["thickness"].max() + MARGIN)

    def set_pairs(self, X: np.ndarray, fric: np.ndarray, extra: float, pad_fric=None) -> None:
        """Upload the barrier candidates at positions ``X`` (shell rows, then the pad's at OB;
        search radius: the contact zone + ``extra``), the friction pairs ``fric`` ((k, 5)), the pad
        penalty candidates and the pad friction pairs ``pad_fric``."""
        parts = [self._candidates(X, self._radius() + extra) if self.enabled.any() else np.zeros((0, 5), np.int64),
                 fric]
        roles = [BARRIER, FRICTION]
        if self.fem is not None:
            parts += [self._pad_candidates(X, self._pad_radius() + extra),
                      np.zeros((0, 5), np.int64) if pad_fric is None else pad_fric]
            roles += [PAD, PAD_FRICTION]
        T = self.topology
        allp = np.concatenate(parts)
        role = np.concatenate([np.full(len(q), r) for q, r in zip(parts, roles, strict=True)])
        n = len(allp)
        if n > self.capacity:
            raise RuntimeError(f"shell contact: {n} candidate pairs exceed the compiled capacity {self.capacity} "
                               f"({PAIRS_PER_VERTEX} per contact vertex); the sheets are crumpled far more densely "
                               f"than the layout allows, or self_contact_margin is large against the mesh spacing")
        ids, typ = allp[:, :4], allp[:, 4]
        nb = T["node_body"]
        pad = role >= PAD
        other = np.where(typ == VT, ids[:, 1], ids[:, 2])
        body = np.column_stack([nb[ids[:, 0]], np.where(pad, nb[ids[:, 0]], nb[np.where(pad, 0, other)])])
        w = np.where(typ == VT, T["node_area"][ids[:, 0]], 0.0)
        c0 = np.zeros(n)
        ee = (typ == EE) & ~pad
        if ee.any():
            E = T["edges"]
            # edge rows: look the edges up by their (sorted) vertex pairs
            key = E[:, 0] * (len(nb) + 1) + E[:, 1]
            order = np.argsort(key)

            def find(a, b):
                k = np.minimum(a, b) * (len(nb) + 1) + np.maximum(a, b)
                return order[np.searchsorted(key[order], k)]

            ea = find(ids[ee, 0], ids[ee, 1])
            eb = find(ids[ee, 2], ids[ee, 3])
            w[ee] = 0.5 * (T["edge_area"][ea] + T["edge_area"][eb])
            c0[ee] = MOLLIFIER * T["rest_len2"][ea] * T["rest_len2"][eb]
        self._upload(ids, typ, role, body, w, c0)

    def _upload(self, ids, typ, role, body, w, c0) -> None:
        P, n = self.capacity, len(ids)
        r = self.part.np_real

        def pad(a, shape, dtype):
            out = np.zeros((P,) + shape, dtype)
            out[:n] = a
            return out

        self.pid.from_numpy(pad(ids, (4,), np.int32))
        self.ptype.from_numpy(pad(typ, (), np.int32))
        self.prole.from_numpy(pad(role, (), np.int32))
        self.pbody.from_numpy(pad(body, (2,), np.int32))
        self.pw.from_numpy(pad(w, (), r))
        self.pc0.from_numpy(pad(np.maximum(c0, 1e-300) if r == np.float64 else np.maximum(c0, 1e-30), (), r))
        self.n_pairs[None] = n

    def _pad_x(self, field) -> np.ndarray:
        return field.to_numpy()[: int(self.fem.rows[None])].astype(np.float64) if self.fem is not None else None

    def begin_step(self, l_now: int, l_next: int) -> None:
        """The friction pairs of the step: the candidates at ``x_n`` inside the contact zone. The
        pad's nodes: slot ``l_now`` (x_n) and ``l_next`` (the obstacle during the solve)."""
        if self.fem is not None:
            self.load_obstacle(l_now, l_next)
        xn = self.part.xn.to_numpy().astype(np.float64)
        self.set_pairs(self._with_pad(xn, self._pad_x(self.ob_xn)), np.zeros((0, 5), np.int64), extra=0.0)
        self._gaps_at_xn()
        n = int(self.n_pairs[None])
        z = self.pz.to_numpy()[:n]
        pid = self.pid.to_numpy()[:n].astype(np.int64)
        typ = self.ptype.to_numpy()[:n].astype(np.int64)
        role = self.prole.to_numpy()[:n]
        act = z < 1.0
        empty = np.zeros((0, 5), np.int64)
        sel = act & (role == BARRIER)
        self._fric = np.column_stack([pid[sel], typ[sel]]) if sel.any() else empty
        sel = act & (role == PAD)
        self._pad_fric = np.column_stack([pid[sel], typ[sel]]) if sel.any() else empty

    def update(self) -> None:
        """Candidates at the iterate ``xk`` (reachable within one iteration) + the friction pairs."""
        xk = self.part.xk.to_numpy().astype(np.float64)
        self.set_pairs(self._with_pad(xk, self._pad_x(self.ob_x)), self._fric, extra=2.0 * self.delta,
                       pad_fric=self._pad_fric)

    # ------------------------------------------------------------------ kernels
    @ti.kernel
    def gather(self):
        """Pair-local copies of the iterate and of x_n (shell rows; the pad's from row OB)."""
        for p in range(self.n_pairs[None]):
            ids = self.pid[p]
            for a in ti.static(range(4)):
                if ti.static(self.has_pad):
                    if ids[a] >= self.OB:
                        self.xp[p, a] = self.ob_x[ids[a] - self.OB]
                        self.xnp[p, a] = self.ob_xn[ids[a] - self.OB]
                    else:
                        self.xp[p, a] = self.part.xk[ids[a]]
                        self.xnp[p, a] = self.part.xn[ids[a]]
                else:
                    self.xp[p, a] = self.part.xk[ids[a]]
                    self.xnp[p, a] = self.part.xn[ids[a]]

    @ti.kernel
    def scatter(self):
        """r += every pair's forces, on the free vertices."""
        for p in range(self.n_pairs[None]):
            ids = self.pid[p]
            for a in ti.static(range(4)):
                if ids[a] < self.OB:
                    if self.part.kind[ids[a]] == -2:
                        self.part.r[ids[a]] += self.fp[p, a]

    @ti.kernel
    def load_obstacle(self, l_now: ti.i32, l_next: ti.i32):
        """The pad's nodes at slots ``l_next`` (the obstacle) and ``l_now`` (x_n, friction's lag)."""
        for j in range(self.fem.rows[None]):
            self.ob_x[j] = self.fem.x[l_next, j]
            self.ob_xn[j] = self.fem.x[l_now, j]

    @ti.kernel
    def zero_obstacle_grads(self):
        for j in range(self.fem.rows[None]):
            self.ob_x.grad[j] = ti.zero(self.ob_x.grad[j])
            self.ob_xn.grad[j] = ti.zero(self.ob_xn.grad[j])

    @ti.kernel
    def scatter_obstacle_grads(self, l: ti.i32):
        """The pad nodes' gradients to the FEM state: slot l + 1 (obstacle) and l (lag)."""
        for j in range(self.fem.rows[None]):
            self.fem.x.grad[l + 1, j] += self.ob_x.grad[j]
            self.fem.x.grad[l, j] += self.ob_xn.grad[j]

    # ------------------------------------------------------------------ the reaction on the pads
    @ti.kernel
    def reaction_out(self, l: ti.i32):
        """shell.f_pad[l + 1] = (1 - w) f_pad[l] + w R on every pad node (``w`` its relaxation), R the pairs'
        forces on the pad nodes, ``-dE_p/dx_a`` summed over the pairs' pad rows (from ``fp``: :meth:`forces` at
        the converged iterate)."""
        for j in range(self.fem.rows[None]):
            self.part.f_pad[l + 1, j] = (1.0 - self.wnode[j]) * self.part.f_pad[l, j]
        for p in range(self.n_pairs[None]):
            ids = self.pid[p]
            for a in ti.static(range(1, 4)):
                if ids[a] >= self.OB:
                    j = ids[a] - self.OB
                    self.part.f_pad[l + 1, j] -= self.wnode[j] * self.fp[p, a]

    @ti.kernel
    def _seed_reaction(self, l: ti.i32):
        """The seed of the reaction's vector-Jacobian product: fp.grad = -w dL/d f_pad[l + 1] on every pair's
        pad rows, 0 elsewhere (the reverse of :meth:`reaction_out`); the pair-local inputs' gradients zeroed."""
        for p in range(self.n_pairs[None]):
            ids = self.pid[p]
            for a in ti.static(range(4)):
                self.xp.grad[p, a] = ti.zero(self.xp.grad[p, a])
                self.xnp.grad[p, a] = ti.zero(self.xnp.grad[p, a])
                g = ti.Vector.zero(self.real, 3)
                if ids[a] >= self.OB:
                    g = -self.wnode[ids[a] - self.OB] * self.part.f_pad.grad[l + 1, ids[a] - self.OB]
                self.fp.grad[p, a] = g

    @ti.kernel
    def carry_grad(self, l: ti.i32):
        """f_pad.grad[l] += (1 - w) f_pad.grad[l + 1] (the relaxation's carried part)."""
        for j in range(self.fem.rows[None]):
            self.part.f_pad.grad[l, j] += (1.0 - self.wnode[j]) * self.part.f_pad.grad[l + 1, j]

    def set_relaxation(self, relaxation: float, adaptive: bool) -> None:
        """The reaction's relaxation (checked by :meth:`physim.parts.shell.ShellPart.set_pad_relaxation`)."""
        self.relaxation = relaxation
        self.adaptive = adaptive
        if self.fem is not None and self.topology is not None:
            self._fill_relaxation()

    def _fill_relaxation(self) -> None:
        """Every pad node's relaxation: ``relaxation``, or adaptive ``min(relaxation, 1 / (1 + kc A_j c_j))``
        (module docstring), from the parameters now."""
        n = int(self.fem.rows[None])
        w = np.full(self.wnode.shape[0], self.relaxation)
        if self.adaptive:
            nb = int(self.part.n_bodies[None])
            kc = float(self.part.kc.to_numpy()[:nb].max())
            g = kc * self.fem.anode.to_numpy()[:n].astype(np.float64) * pad_compliance(self.fem)
            w[:n] = np.minimum(self.relaxation, 1.0 / (1.0 + g))
        self.wnode.from_numpy(w.astype(self.part.np_real))

    def write_reaction(self, l: int) -> None:
        """shell.f_pad[l + 1] at the converged iterate (after the Newton solve of substep ``l``: the pairs are
        those of that iterate)."""
        self.gather()
        self.forces()
        self.reaction_out(l)

    def reaction_vjp(self, l: int) -> None:
        """The work copies' (iterate, x_n, parameters) and the obstacle's gradients += (d f_pad[l + 1] /
        d input)^T dL/d f_pad[l + 1]: the reverse of :meth:`write_reaction`."""
        if self.n_pairs[None] == 0:
            return
        self.gather()
        self._seed_reaction(l)
        backend.grad(self.forces)
        backend.grad(self.gather)

    @ti.func
    def _pad_phi(self, x0, x1, x2, x3, toff):
        """(w, unit normal out of the pad face at the closest point, phi = signed distance - t/2) of
        shell vertex x0 against pad face (x1, x2, x3) (outward): negative only behind the face's
        interior (a vertex pushed into the gel)."""
        w, diff = self._closest(VT, x0, x1, x2, x3)
        d = ti.max(diff.norm(), 1e-12)
        nt = (x2 - x1).cross(x3 - x1)
        sgn = 1.0
        # inside only where the closest point is on the face itself: near an edge or a corner of the pad
        # the neighbouring faces' closest points are on their rims, and those count as outside
        if diff.dot(nt) < 0 and w[1] < 0 and w[2] < 0 and w[3] < 0:
            sgn = -1.0
        return w, sgn * diff / d, sgn * d - toff

    @ti.func
    def _pad_slip(self, p, x0, x1, x2, x3):
        """(w, u, mu lam) of pad friction pair ``p`` at the iterate's pair-local copies ``x0..x3``: the weights
        ``w`` and normal at the start of the step (``xnp``), the tangential slip ``u`` of the vertex against
        the face's material point over the step, and ``mu lam``, the Coulomb bound of the normal force at
        the start (0 where the pair was not in contact). Friction's potential is ``mu lam (sqrt(|u|^2 +
        eps_u^2) - eps_u)``, its force on vertex a ``mu lam w_a u / sqrt(|u|^2 + eps_u^2)``."""
        y0, y1, y2, y3 = self.xnp[p, 0], self.xnp[p, 1], self.xnp[p, 2], self.xnp[p, 3]
        b = self.pbody[p][0]
        w, nrm, phi = self._pad_phi(y0, y1, y2, y3, 0.5 * self.part.bp[b, self.C_T])
        u = w[0] * (x0 - y0) + w[1] * (x1 - y1) + w[2] * (x2 - y2) + w[3] * (x3 - y3)
        u -= u.dot(nrm) * nrm
        mu_lam = 0.0 * phi
        if phi < PAD_MARGIN:
            mu_lam = self.part.bp[b, self.C_PMU] * self.part.bp[b, self.C_KC] * self.pw[p] * (PAD_MARGIN - phi)
        return w, u, mu_lam

    @ti.func
    def _closest(self, typ, x0, x1, x2, x3):
        """(weights w (4), diff = sum w_a x_a) of a pair."""
        w = ti.Vector.zero(self.real, 4)
        if typ == VT:
            b = point_triangle_weights(x0, x1, x2, x3)
            w = ti.Vector([1.0, -b[0], -b[1], -b[2]])
        else:
            s, t = segment_weights(x0, x1, x2, x3)
            w = ti.Vector([1.0 - s, s, t - 1.0, -t])
        return w, w[0] * x0 + w[1] * x1 + w[2] * x2 + w[3] * x3

    @ti.func
    def _consts(self, p):
        """(t_off, s_hat, k = kc s_hat^2, mu) of pair p."""
        b = self.pbody[p]
        toff = 0.5 * (self.part.bp[b[0], self.C_T] + self.part.bp[b[1], self.C_T])
        sh = 0.5 * (self.margin[b[0]] + self.margin[b[1]])
        k = 0.5 * (self.part.bp[b[0], self.C_SKC] + self.part.bp[b[1], self.C_SKC]) * sh * sh
        mu = 0.5 * (self.part.bp[b[0], self.C_SMU] + self.part.bp[b[1], self.C_SMU])
        return toff, sh, k, mu

    @ti.func
    def _mollifier(self, p, x0, x1, x2, x3):
        """(m, dm/dx0..3) of pair p (1, 0 for vertex-triangle pairs and non-parallel edges)."""
        m = 1.0 + 0.0 * x0[0]
        g0 = ti.Vector.zero(self.real, 3)
        g1 = ti.Vector.zero(self.real, 3)
        g2 = ti.Vector.zero(self.real, 3)
        g3 = ti.Vector.zero(self.real, 3)
        if self.ptype[p] == EE:
            ea, eb = x1 - x0, x3 - x2
            u = ea.cross(eb)
            c = u.dot(u)
            c0 = self.pc0[p]
            if c < c0:
                q = c / c0
                m = (2.0 - q) * q
                dm = (2.0 - 2.0 * q) / c0
                ga = 2.0 * dm * eb.cross(u)
                gb = 2.0 * dm * u.cross(ea)
                g0, g1, g2, g3 = -ga, ga, -gb, gb
        return m, g0, g1, g2, g3

    @ti.func
    def _barrier(self, z):
        """(B(z), B'(z)) for 0 < z < 1."""
        lz = ti.log(z)
        return -(z - 1.0) * (z - 1.0) * lz, -2.0 * (z - 1.0) * lz - (z - 1.0) * (z - 1.0) / z

    @ti.kernel
    def forces(self):
        """fp[p, a] = dE_p / dx_a of every pair at the pair-local copies (module docstring)."""
        for p in range(self.n_pairs[None]):
            eps_u = V_SMOOTH * self.part.dt[None]
            x0, x1, x2, x3 = self.xp[p, 0], self.xp[p, 1], self.xp[p, 2], self.xp[p, 3]
            toff, sh, k, mu = self._consts(p)
            f0 = ti.Vector.zero(self.real, 3)
            f1 = ti.Vector.zero(self.real, 3)
            f2 = ti.Vector.zero(self.real, 3)
            f3 = ti.Vector.zero(self.real, 3)
            role = self.prole[p]
            if role == PAD:
                tv = 0.5 * self.part.bp[self.pbody[p][0], self.C_T]
                w, nrm, phi = self._pad_phi(x0, x1, x2, x3, tv)
                if phi < PAD_MARGIN:
                    c = -self.part.bp[self.pbody[p][0], self.C_KC] * self.pw[p] * (PAD_MARGIN - phi)
                    f0 = c * w[0] * nrm
                    f1 = c * w[1] * nrm
                    f2 = c * w[2] * nrm
                    f3 = c * w[3] * nrm
            elif role == PAD_FRICTION:
                w, u, mu_lam = self._pad_slip(p, x0, x1, x2, x3)
                c = mu_lam / ti.sqrt(u.dot(u) + eps_u * eps_u)
                f0 = c * w[0] * u
                f1 = c * w[1] * u
                f2 = c * w[2] * u
                f3 = c * w[3] * u
            elif role == BARRIER:
                w, diff = self._closest(self.ptype[p], x0, x1, x2, x3)
                d = diff.norm()
                z = (d - toff) / sh
                if z < 1.0:
                    z = ti.max(z, 1e-9)  # the step bound keeps z > 0; guard the log
                    bz, dbz = self._barrier(z)
                    m, g0, g1, g2, g3 = self._mollifier(p, x0, x1, x2, x3)
                    c = self.pw[p] * k * m * dbz / (sh * d)  # dE/dd / d
                    e = self.pw[p] * k * bz
                    f0 = c * w[0] * diff + e * g0
                    f1 = c * w[1] * diff + e * g1
                    f2 = c * w[2] * diff + e * g2
                    f3 = c * w[3] * diff + e * g3
            else:
                y0, y1, y2, y3 = self.xnp[p, 0], self.xnp[p, 1], self.xnp[p, 2], self.xnp[p, 3]
                w, diff = self._closest(self.ptype[p], y0, y1, y2, y3)
                d = diff.norm()
                z = (d - toff) / sh
                if z < 1.0:
                    z = ti.max(z, 1e-9)
                    _bz, dbz = self._barrier(z)
                    m, _g0, _g1, _g2, _g3 = self._mollifier(p, y0, y1, y2, y3)
                    lam = -self.pw[p] * k * m * dbz / sh  # normal force at x_n (N)
                    n = diff / d
                    u = w[0] * (x0 - y0) + w[1] * (x1 - y1) + w[2] * (x2 - y2) + w[3] * (x3 - y3)
                    u -= u.dot(n) * n
                    c = mu * lam / ti.sqrt(u.dot(u) + eps_u * eps_u)
                    f0 = c * w[0] * u
                    f1 = c * w[1] * u
                    f2 = c * w[2] * u
                    f3 = c * w[3] * u
            self.fp[p, 0] = f0
            self.fp[p, 1] = f1
            self.fp[p, 2] = f2
            self.fp[p, 3] = f3

    @ti.kernel
    def energy_kernel(self):
        """red[0] = the pairs' energy at the pair-local copies, red[1] = the least barrier gap z;
        pz[p] = every pair's gap at the iterate."""
        self.red[0] = 0.0
        self.red[1] = 1e30
        eps_u = V_SMOOTH * self.part.dt[None]
        for p in range(self.n_pairs[None]):
            x0, x1, x2, x3 = self.xp[p, 0], self.xp[p, 1], self.xp[p, 2], self.xp[p, 3]
            toff, sh, k, mu = self._consts(p)
            en = 0.0 * k
            role = self.prole[p]
            if role == PAD:
                tv = 0.5 * self.part.bp[self.pbody[p][0], self.C_T]
                _w, _n, phi = self._pad_phi(x0, x1, x2, x3, tv)
                self.pz[p] = phi / PAD_MARGIN
                if phi < PAD_MARGIN:
                    en = 0.5 * self.part.bp[self.pbody[p][0], self.C_KC] * self.pw[p] * (PAD_MARGIN - phi) ** 2
            elif role == PAD_FRICTION:
                _w, u, mu_lam = self._pad_slip(p, x0, x1, x2, x3)
                en = mu_lam * (ti.sqrt(u.dot(u) + eps_u * eps_u) - eps_u)
            elif role == BARRIER:
                _w, diff = self._closest(self.ptype[p], x0, x1, x2, x3)
                z = (diff.norm() - toff) / sh
                self.pz[p] = z
                ti.atomic_min(self.red[1], z)
                if z > 0.0 and z < 1.0:
                    bz, _dbz = self._barrier(z)
                    m, _g0, _g1, _g2, _g3 = self._mollifier(p, x0, x1, x2, x3)
                    en = self.pw[p] * k * m * bz
            else:
                y0, y1, y2, y3 = self.xnp[p, 0], self.xnp[p, 1], self.xnp[p, 2], self.xnp[p, 3]
                w, diff = self._closest(self.ptype[p], y0, y1, y2, y3)
                d = diff.norm()
                z = (d - toff) / sh
                self.pz[p] = z
                if z > 0.0 and z < 1.0:
                    _bz, dbz = self._barrier(z)
                    m, _g0, _g1, _g2, _g3 = self._mollifier(p, y0, y1, y2, y3)
                    lam = -self.pw[p] * k * m * dbz / sh
                    n = diff / d
                    u = w[0] * (x0 - y0) + w[1] * (x1 - y1) + w[2] * (x2 - y2) + w[3] * (x3 - y3)
                    u -= u.dot(n) * n
                    en = mu * lam * (ti.sqrt(u.dot(u) + eps_u * eps_u) - eps_u)
            self.red[0] += en

    @ti.kernel
    def _step_bound(self):
        """red[2] = the largest step fraction that keeps every barrier pair's gap above
        MIN_GAP_KEEP of its value (the Newton direction in the part's ``cx``)."""
        self.red[2] = 1e30
        for p in range(self.n_pairs[None]):
            if self.prole[p] == BARRIER:
                ids = self.pid[p]
                toff, sh, _k, _mu = self._consts(p)
                gap = self.pz[p] * sh
                m0 = ti.max(self.part.cx[ids[0]].norm(), self.part.cx[ids[1]].norm())
                m1 = ti.max(self.part.cx[ids[2]].norm(), self.part.cx[ids[3]].norm())
                if self.ptype[p] == VT:
                    m0 = self.part.cx[ids[0]].norm()
                    m1 = ti.max(m1, self.part.cx[ids[1]].norm())
                if m0 + m1 > 0:
                    ti.atomic_min(self.red[2], (1.0 - MIN_GAP_KEEP) * gap / (m0 + m1))
            elif self.prole[p] == PAD:
                # the pad stands still during the solve: keep the vertex from crossing its face
                gap = self.pz[p] * PAD_MARGIN
                m0 = self.part.cx[self.pid[p][0]].norm()
                if gap > 0 and m0 > 0:
                    ti.atomic_min(self.red[2], (1.0 - MIN_GAP_KEEP) * gap / m0)

    @ti.kernel
    def _gaps_kernel(self, at_xn: ti.i32):
        """pz = every pair's gap at the gathered iterate (or x_n): z for shell pairs, phi / margin for pad pairs."""
        for p in range(self.n_pairs[None]):
            x0, x1, x2, x3 = self.xp[p, 0], self.xp[p, 1], self.xp[p, 2], self.xp[p, 3]
            if at_xn:
                x0, x1, x2, x3 = self.xnp[p, 0], self.xnp[p, 1], self.xnp[p, 2], self.xnp[p, 3]
            toff, sh, _k, _mu = self._consts(p)
            if self.prole[p] >= PAD:
                _w, _n, phi = self._pad_phi(x0, x1, x2, x3, 0.5 * self.part.bp[self.pbody[p][0], self.C_T])
                self.pz[p] = phi / PAD_MARGIN
            else:
                _w, diff = self._closest(self.ptype[p], x0, x1, x2, x3)
                self.pz[p] = (diff.norm() - toff) / sh

    def _gaps(self) -> None:
        """pz = the gaps at the iterate (the part's work copies must hold the thicknesses: at load,
        the pairs are checked from the rest positions written into ``xk``)."""
        self.part._load_rest_for_contact()
        self.gather()
        self._gaps_kernel(0)

    def _gaps_at_xn(self) -> None:
        self.gather()
        self._gaps_kernel(1)

    @ti.kernel
    def zero_grads(self):
        for p in range(self.n_pairs[None]):
            for a in ti.static(range(4)):
                self.xp.grad[p, a] = ti.zero(self.xp.grad[p, a])
                self.xnp.grad[p, a] = ti.zero(self.xnp.grad[p, a])
                self.fp.grad[p, a] = ti.zero(self.fp.grad[p, a])

    @ti.kernel
    def _seed(self, a: ti.i32, d: ti.i32):
        """fp.grad = e_(a, d) for every pair; xp.grad = 0 (one column of every pair's Hessian)."""
        for p in range(self.n_pairs[None]):
            for b in ti.static(range(4)):
                self.xp.grad[p, b] = ti.zero(self.xp.grad[p, b])
                g = ti.Vector.zero(self.real, 3)
                if b == a:
                    g[d] = 1.0
                self.fp.grad[p, b] = g

    # ------------------------------------------------------------------ part-facing API
    def residual(self) -> None:
        """r += the pairs' forces at the iterate (after the part's residual kernels)."""
        if self.n_pairs[None] == 0:
            return
        self.gather()
        self.forces()
        self.scatter()

    def residual_vjp(self) -> None:
        """The reverse of :meth:`residual`: the iterate's, x_n's and the parameters' gradients +=
        (d r_contact / d input)^T r.grad."""
        if self.n_pairs[None] == 0:
            return
        self.gather()  # the reverse of ``forces`` reads the pair-local copies of this iterate
        self.zero_grads()
        backend.grad(self.scatter)
        backend.grad(self.forces)
        backend.grad(self.gather)

    def energy(self) -> float:
        """The pairs' energy at the iterate (J); inf where a barrier pair is at or past contact."""
        if self.n_pairs[None] == 0:
            return 0.0
        self.gather()
        self.energy_kernel()
        e, zmin = float(self.red[0]), float(self.red[1])
        return math.inf if zmin <= 0.0 else e

    def min_gap(self) -> float:
        """The least barrier gap z (in units of the margin) at the iterate (after :meth:`energy`)."""
        return float(self.red[1]) if self.n_pairs[None] else math.inf

    def step_bound(self) -> float:
        """The largest step fraction along ``cx`` the gaps allow (module docstring); needs ``pz``
        at the iterate (:meth:`energy`)."""
        if self.n_pairs[None] == 0:
            return math.inf
        self._step_bound()
        return float(self.red[2])

    def hessian_blocks(self, free_dof: np.ndarray, size: int, project: bool):
        """The pairs' Hessian on the free degrees of freedom (scipy CSR), from their 12 x 12 blocks;
        ``project``: each block clamped to positive semi-definite (projected Newton)."""
        import scipy.sparse as sp

        n = int(self.n_pairs[None])
        if n == 0:
            return None
        self.gather()
        Q = np.empty((4, 3, n, 4, 3))
        for a in range(4):
            for d in range(3):
                self._seed(a, d)
                backend.grad(self.forces)
                Q[a, d] = self.xp.grad.to_numpy()[:n]
        Hb = Q.transpose(2, 3, 4, 0, 1).reshape(n, 12, 12).astype(np.float64)  # [p, (a, i), (b, j)]
        Hb = 0.5 * (Hb + Hb.transpose(0, 2, 1))
        if project:
            lam, V = np.linalg.eigh(Hb)
            Hb = (V * np.maximum(lam, 0.0)[:, None, :]) @ V.transpose(0, 2, 1)
        ids = self.pid.to_numpy()[:n].astype(np.int64)
        nn = len(free_dof)
        dof = np.where(ids < nn, free_dof[np.minimum(ids, nn - 1)], -1)  # (n, 4): -1 where kinematic or pad
        rows = (3 * dof[:, :, None] + np.arange(3)).reshape(n, 12)
        ok = (dof >= 0).repeat(3, axis=1)
        rr = np.broadcast_to(rows[:, :, None], (n, 12, 12))
        cc = np.broadcast_to(rows[:, None, :], (n, 12, 12))
        keep = ok[:, :, None] & ok[:, None, :]
        return sp.csr_matrix((Hb[keep], (rr[keep], cc[keep])), shape=(size, size))

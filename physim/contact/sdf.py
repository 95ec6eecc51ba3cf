"""Signed distance functions of the tool shapes and the contact response every solver uses.

MPM applies :func:`tool_contact` at grid nodes, the mass-spring solver at its nodes (and
FEM and shells at their vertices next): one definition of the shapes and of the
velocity-level Coulomb response, so a tool touches every material the same way.
"""

import taichi as ti

from ..solvers._linalg import safe_norm

__all__ = ["tool_sdf", "project_velocity", "penalty_response", "STICK", "V_FLOOR"]

#: fraction of a sticking contact's tangential slip the stick viscosity may remove per step
STICK = 0.5
#: velocity floor of the friction regularization (m/s): keeps v_s > 0 where f_n = 0
V_FLOOR = 1e-6


@ti.func
def _cylinder_sdf(p, radius, half_height):
    """Signed distance and normal of a flat-ended cylinder with axis y (a rectangle in 2D)."""
    radial = p * 1.0
    radial[1] = 0.0
    rr = safe_norm(radial)
    dr = rr - radius
    dy = ti.abs(p[1]) - half_height
    sy = 1.0 if p[1] >= 0 else -1.0
    radial_dir = radial / rr
    axial_dir = p * 0.0
    axial_dir[1] = sy
    phi = dr
    n = radial_dir
    if dr > 0 and dy > 0:
        length = ti.sqrt(dr * dr + dy * dy + 1e-20)
        phi = length
        n = (dr * radial_dir + dy * axial_dir) / length
    elif dr > dy:
        phi = dr
        n = radial_dir
    else:
        phi = dy
        n = axial_dir
    return phi, n


@ti.func
def tool_sdf(shape: ti.i32, size, p, dim: ti.template()):
    """Signed distance and outward unit normal of a tool shape at local point p.

    shape: 0 sphere(r), 1 box(half extents), 2 capsule(r, half length, axis y),
    3 cylinder(r, half height, axis y), 4 cup (inner r, half height, wall thickness;
    axis y, open at +y).
    """
    phi = p[0] * 0.0
    n = p * 0.0
    if shape == 0:
        r = safe_norm(p)
        phi = r - size[0]
        n = p / r
    elif shape == 1:
        q = ti.abs(p)
        for k in ti.static(range(dim)):
            q[k] -= size[k]
        qmax = q.max()
        if qmax > 0:
            qpos = ti.max(q, 0.0)
            length = safe_norm(qpos)
            phi = length
            for k in ti.static(range(dim)):
                n[k] = qpos[k] / length * (1.0 if p[k] >= 0 else -1.0)
        else:
            phi = qmax
            axis = 0
            for k in ti.static(range(1, dim)):
                if q[k] > q[axis]:
                    axis = k
            for k in ti.static(range(dim)):
                if k == axis:
                    n[k] = 1.0 if p[k] >= 0 else -1.0
    elif shape == 2:
        c = p * 0.0
        c[1] = ti.min(ti.max(p[1], -size[1]), size[1])
        d = p - c
        r = safe_norm(d)
        phi = r - size[0]
        n = d / r
    elif shape == 3:
        phi, n = _cylinder_sdf(p, size[0], size[1])
    else:
        # cup: solid outer cylinder (radius r + t, half height h) minus an open cavity
        # (radius r, from the inner bottom at -h + t up past the rim)
        d_out, n_out = _cylinder_sdf(p, size[0] + size[2], size[1])
        q = p * 1.0
        q[1] -= size[2]
        d_in, n_in = _cylinder_sdf(q, size[0], size[1])
        if d_out > -d_in:
            phi, n = d_out, n_out
        else:
            phi, n = -d_in, -n_in
    return phi, n


@ti.func
def project_velocity(v, v_tool, n, mu, influence):
    """Velocity after contact with a tool surface of outward normal ``n`` moving at ``v_tool``:
    the approaching normal component of the relative velocity is removed and the tangential
    part is reduced by Coulomb friction ``mu`` (sticks when |v_t| <= -mu v_n); ``influence``
    in [0, 1] blends (1: hard contact; < 1: soft contact away from the surface)."""
    out = v
    v_rel = v - v_tool
    vn = v_rel.dot(n)
    if vn < 0 and influence > 0:
        v_t = v_rel - vn * n
        vt_norm = safe_norm(v_t)
        v_rel_new = v_t * 0.0
        if vt_norm > -mu * vn:
            v_rel_new = v_t * (1 + mu * vn / vt_norm)
        out = v + influence * (v_tool + v_rel_new - v)
    return out


@ti.func
def penalty_response(fn, n, v_rel, eta, mu):
    """Force of a penalty contact: the normal force ``fn`` (>= 0) along ``n`` plus Coulomb
    friction ``mu`` regularized smoothly (``x / sqrt(x^2 + 1)``, differentiable at zero slip)
    on the tangential part of ``v_rel``: it slips at ``mu fn`` for slip >> ``v_s`` and sticks
    as a viscosity ``eta`` (N s/m) below, ``v_s = mu fn / eta + V_FLOOR``. The penalty
    contacts of the coupler and of the FEM part against tools share it."""
    vn = v_rel.dot(n)
    v_t = v_rel - vn * n
    v_s = mu * fn / eta + V_FLOOR
    return fn * n - mu * fn / ti.sqrt(v_t.dot(v_t) + v_s * v_s) * v_t

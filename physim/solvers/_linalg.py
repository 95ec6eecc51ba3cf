"""Small Taichi functions shared by the solvers: rotations, SVD adjoint, SDFs."""


import taichi as ti

# Singular values closer than this are treated as this far apart in the SVD adjoint.
SVD_GAP_EPS = 1e-6


@ti.func
def diag_matrix(vec, like):
    """diag(vec) with the shape and type of the square matrix ``like``."""
    out = like * 0.0
    for i in ti.static(range(vec.n)):
        out[i, i] = vec[i]
    return out


@ti.func
def _safe_gap(d):
    out = d
    if ti.abs(d) < SVD_GAP_EPS:
        out = SVD_GAP_EPS if d >= 0 else -SVD_GAP_EPS
    return out


@ti.func
def svd_adjoint(U, sig, V, gU, gsig, gV, dim: ti.template()):
    """Adjoint of F = U diag(sig) V^T: returns dL/dF given dL/dU, dL/dsig, dL/dV.

    Uses the split 1/(s_j - s_i) for the symmetric part and 1/(s_j + s_i) for the
    antisymmetric part of the rotation terms, so rotation-invariant uses (e.g. the
    polar rotation U V^T) stay finite at repeated singular values; the remaining
    1/(s_j - s_i) factor is clamped at SVD_GAP_EPS.
    """
    A = U.transpose() @ gU
    B = V.transpose() @ gV
    X = U * 0.0
    for i, j in ti.static(ti.ndrange(dim, dim)):
        if ti.static(i == j):
            X[i, j] = gsig[i]
        else:
            a = A[i, j] - A[j, i]
            b = B[i, j] - B[j, i]
            X[i, j] = 0.5 * (a + b) / _safe_gap(sig[j] - sig[i]) + 0.5 * (a - b) / _safe_gap(sig[j] + sig[i])
    return U @ X @ V.transpose()


@ti.func
def rotation_matrix(rot, dim: ti.template()):
    """Rotation from the 4-number rotation state: angle in rot[0] (2D) or a quaternion (3D)."""
    if ti.static(dim == 2):
        c, s = ti.cos(rot[0]), ti.sin(rot[0])
        return ti.Matrix([[c, -s], [s, c]])
    else:
        q = rot / ti.sqrt(rot.dot(rot) + 1e-30)
        w, x, y, z = q[0], q[1], q[2], q[3]
        return ti.Matrix(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )


@ti.func
def safe_norm(v):
    return ti.sqrt(v.dot(v) + 1e-20)


@ti.func
def tool_sdf(shape: ti.i32, size, p, dim: ti.template()):
    """Signed distance and outward unit normal of an effector shape at local point p.

    shape: 0 sphere(r), 1 box(half extents), 2 capsule(r, half length, axis y),
    3 cylinder(r, half height, axis y).
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
    else:
        radial = p * 1.0
        radial[1] = 0.0
        rr = safe_norm(radial)
        dr = rr - size[0]
        dy = ti.abs(p[1]) - size[1]
        sy = 1.0 if p[1] >= 0 else -1.0
        radial_dir = radial / rr
        axial_dir = p * 0.0
        axial_dir[1] = sy
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
def prod(vec):
    """Product of a vector's entries."""
    out = vec[0]
    for i in ti.static(range(1, vec.n)):
        out *= vec[i]
    return out

"""Small Taichi functions shared by the solvers: rotations, norms, SVD and its adjoint."""


import taichi as ti

# Singular values closer than this are treated as this far apart in the SVD adjoint
# (per precision: the gap must stay well above round-off of the numerator).
# svd3: early-exit threshold on (off-diagonal / diagonal)^2 of F^T F, about (machine eps)^2
SVD_TOL = {"f64": 1e-32, "f32": 4e-15}
SVD_GAP_EPS = {"f32": 1e-6, "f64": 1e-10}
#: reverse mode differentiates the consumers of an SVD with singular values closer than this
#: moved this far apart about their mean (:func:`split_ties`; per precision: the truncation
#: error is O((this / strain)^2), the cancellation in the adjoint's numerator at most
#: round-off / this; f32: 1e-5, far below sand's settling strains of ~7e-4, where 3e-4 was not)
SVD_TIE_SPLIT = {"f32": 1e-5, "f64": 1e-6}


@ti.func
def diag_matrix(vec, like):
    """diag(vec) with the shape and type of the square matrix ``like``."""
    out = like * 0.0
    for i in ti.static(range(vec.n)):
        out[i, i] = vec[i]
    return out


@ti.func
def _safe_gap(d, eps: ti.template()):
    return ti.select(ti.abs(d) < eps, ti.select(d >= 0, eps, -eps), d)


@ti.func
def split_ties(sig, tau: ti.template()):
    """``sig`` (descending, as :func:`svd2` / :func:`svd3` return it) with neighbours closer
    than ``tau`` moved ``tau`` apart about their mean (the others unchanged).

    At equal singular values the symmetric term of :func:`svd_adjoint` is 0 / 0: its numerator
    (d_j - d_i) times the upstream gradient, for a consumer U diag(d(sig)) V^T, vanishes there,
    and the limit -- the consumer's divided difference, e.g. 2 mu / s for the Hencky stress --
    is lost to the clamped gap. Evaluating the consumers' and the SVD's adjoints at these split
    values recovers it as a divided difference over ``tau``.

    The split keeps the tied values' sum (their mean), so the volumetric strain -- sand's
    pressure, which sizes its Drucker-Prager cone -- moves only O(tau^2): the split is a pure
    shear of the tied pair, along which the divided difference is centred, and its truncation
    error is O((tau / strain)^2) for a consumer whose scale is the strain (the return mapping
    onto a cone of radius ~ the pressure), O(tau) for a smooth one. (Moving one value only, as
    this did before, changed the trace by tau: at sand's settling strains, ~7e-4, a split of 3e-4
    nearly reached the cone's apex, an O(tau / strain) error.) The cancellation in the divided
    difference is of relative size round-off / tau."""
    out = sig
    if ti.static(sig.n == 2):
        if out[0] - out[1] < tau:
            mid = 0.5 * (out[0] + out[1])
            out[0] = mid + 0.5 * tau
            out[1] = mid - 0.5 * tau
    else:
        tie01 = sig[0] - sig[1] < tau
        tie12 = sig[1] - sig[2] < tau
        if tie01 and tie12:  # all three within 2 tau: mean, mean +- tau
            mean = (sig[0] + sig[1] + sig[2]) / 3.0
            out[0] = mean + tau
            out[1] = mean
            out[2] = mean - tau
        elif tie01:  # out[1] stays >= sig[2] + tau / 2
            mid = 0.5 * (sig[0] + sig[1])
            out[0] = mid + 0.5 * tau
            out[1] = mid - 0.5 * tau
        elif tie12:
            mid = 0.5 * (sig[1] + sig[2])
            out[1] = mid + 0.5 * tau
            out[2] = mid - 0.5 * tau
    return out


@ti.func
def svd_adjoint(U, sig, V, gU, gsig, gV, dim: ti.template(), gap_eps: ti.template()):
    """Adjoint of F = U diag(sig) V^T: returns dL/dF given dL/dU, dL/dsig, dL/dV.

    Uses the split 1/(s_j - s_i) for the symmetric part and 1/(s_j + s_i) for the
    antisymmetric part of the rotation terms, so rotation-invariant uses (e.g. the
    polar rotation U V^T) stay finite at repeated singular values; the remaining
    1/(s_j - s_i) factor is clamped at ``gap_eps``.
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
            X[i, j] = 0.5 * (a + b) / _safe_gap(sig[j] - sig[i], gap_eps) + 0.5 * (a - b) / _safe_gap(
                sig[j] + sig[i], gap_eps)
    return U @ X @ V.transpose()


@ti.func
def polar_adjoint(U, sig, V, gR, gap_eps: ti.template()):
    """Adjoint of the polar rotation R = U V^T of A = U diag(sig) V^T: dL/dA given dL/dR.

    dR = U W V^T with W_ij = (X_ij - X_ji) / (sig_i + sig_j), X = U^T dA V, so
    dL/dA = U Z V^T with Z_ij = (Y_ij - Y_ji) / (sig_i + sig_j), Y = U^T gR V (zero diagonal).
    Only the sums sig_i + sig_j appear: exact at repeated singular values (a cube at rest);
    the sum is clamped at ``gap_eps`` (it vanishes only for a degenerate, flat A)."""
    Y = U.transpose() @ gR @ V
    Z = Y * 0.0
    for i, j in ti.static(ti.ndrange(sig.n, sig.n)):
        if ti.static(i != j):
            Z[i, j] = (Y[i, j] - Y[j, i]) / _safe_gap(sig[i] + sig[j], gap_eps)
    return U @ Z @ V.transpose()


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
def prod(vec):
    """Product of a vector's entries."""
    out = vec[0] * vec[1]
    if ti.static(vec.n == 3):
        out = vec[0] * vec[1] * vec[2]
    return out


@ti.func
def _rot2(angle):
    c, s = ti.cos(angle), ti.sin(angle)
    return ti.Matrix([[c, -s], [s, c]])


@ti.func
def svd2(F):
    """Closed-form 2x2 SVD F = U diag(sig) V^T with det U = det V = 1 (sig[1] < 0 when
    det F < 0). Exact to round-off, unlike ti.svd for nearly diagonal matrices."""
    E = 0.5 * (F[0, 0] + F[1, 1])
    Fh = 0.5 * (F[0, 0] - F[1, 1])
    G = 0.5 * (F[1, 0] + F[0, 1])
    H = 0.5 * (F[1, 0] - F[0, 1])
    Q = ti.sqrt(E * E + H * H)
    R = ti.sqrt(Fh * Fh + G * G)
    a1 = ti.atan2(G, Fh)
    a2 = ti.atan2(H, E)
    theta = 0.5 * (a2 - a1)
    phi = 0.5 * (a2 + a1)
    U = _rot2(phi)
    V = _rot2(-theta)
    return U, ti.Vector([Q + R, Q - R]), V


@ti.func
def svd3(F, sweeps: ti.template(), tol: ti.template()):
    """3x3 SVD by cyclic Jacobi on F^T F, then U from F V (Gram-Schmidt, det U = 1;
    sig[2] < 0 when det F < 0). Accurate to round-off in the reconstruction F = U S V^T.

    At most ``sweeps`` sweeps (4 reach round-off on random and nearly degenerate matrices in
    f32 and f64); stops early once the off-diagonal of F^T F is below ``tol`` relative to its
    diagonal (squared norms), which a nearly undeformed or already diagonal F reaches at once."""
    A = F.transpose() @ F
    V = A * 0.0
    for i in ti.static(range(3)):
        V[i, i] = 1.0
    for _ in range(sweeps):
        off = A[0, 1] * A[0, 1] + A[0, 2] * A[0, 2] + A[1, 2] * A[1, 2]
        diag = A[0, 0] * A[0, 0] + A[1, 1] * A[1, 1] + A[2, 2] * A[2, 2]
        if off <= tol * diag:
            break
        for p, q in ti.static([(0, 1), (0, 2), (1, 2)]):
            apq = A[p, q]
            if ti.abs(apq) > 1e-300:
                # Jacobi rotation J (J[p,p] = J[q,q] = c, J[p,q] = s, J[q,p] = -s) that zeroes
                # (J^T A J)[p,q]: t = tan(theta) from the quadratic t^2 + 2 tau t - 1 = 0, the
                # smaller root (no trigonometry; Golub & Van Loan, sec. 8.5)
                tau = (A[q, q] - A[p, p]) / (2 * apq)
                t = 1.0 / (ti.abs(tau) + ti.sqrt(1.0 + tau * tau))
                t = ti.select(tau < 0, -t, t)
                c = 1.0 / ti.sqrt(1.0 + t * t)
                s = t * c
                # A <- J^T (A J) and V <- V J touch only rows / columns p and q
                for i in ti.static(range(3)):
                    aip, aiq = A[i, p], A[i, q]
                    A[i, p] = c * aip - s * aiq
                    A[i, q] = s * aip + c * aiq
                    vip, viq = V[i, p], V[i, q]
                    V[i, p] = c * vip - s * viq
                    V[i, q] = s * vip + c * viq
                for j in ti.static(range(3)):
                    apj, aqj = A[p, j], A[q, j]
                    A[p, j] = c * apj - s * aqj
                    A[q, j] = s * apj + c * aqj
    # sort by eigenvalue, descending (keeps the smallest last for the inversion sign)
    for k in ti.static(range(2)):
        for j in ti.static(range(2 - k)):
            if A[j, j] < A[j + 1, j + 1]:
                tmp = A[j, j]
                A[j, j] = A[j + 1, j + 1]
                A[j + 1, j + 1] = tmp
                for r in ti.static(range(3)):
                    t2 = V[r, j]
                    V[r, j] = V[r, j + 1]
                    V[r, j + 1] = -t2  # swap columns and flip one sign: det V stays +1
    if V.determinant() < 0:
        for r in ti.static(range(3)):
            V[r, 2] = -V[r, 2]
    FV = F @ V
    u0 = ti.Vector([FV[0, 0], FV[1, 0], FV[2, 0]])
    u1 = ti.Vector([FV[0, 1], FV[1, 1], FV[2, 1]])
    u0 = u0 / ti.sqrt(u0.dot(u0) + 1e-300)
    u1 = u1 - u1.dot(u0) * u0
    u1 = u1 / ti.sqrt(u1.dot(u1) + 1e-300)
    u2 = u0.cross(u1)
    U = ti.Matrix.cols([u0, u1, u2])
    sig = ti.Vector([u0.dot(ti.Vector([FV[0, 0], FV[1, 0], FV[2, 0]])),
                     u1.dot(ti.Vector([FV[0, 1], FV[1, 1], FV[2, 1]])),
                     u2.dot(ti.Vector([FV[0, 2], FV[1, 2], FV[2, 2]]))])
    return U, sig, V

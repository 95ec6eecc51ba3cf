"""The shell part's Newton solver where the membrane is compressed (issue 11, "Speed").

A compressed membrane makes the Hessian indefinite (St. Venant-Kirchhoff in compression), the more
so the finer the mesh: its stiffness per vertex is E t at any spacing while the mass term
M / dt^2 falls with the vertex area. The direct solver then factors H + tau M / dt^2, its search
for tau starting near the last one that worked (default), or (``modified_step="project"``) H plus
the negative part of every compressed triangle's membrane Hessian (projected Newton: each
triangle's Hessian projected onto the positive semi-definite cone). Checked here: the membrane
Hessian the projection is built from equals the one Taichi's reverse mode assembles, the
projection is positive semi-definite and makes H positive definite, a buckling sheet converges
with either, and the shift search's cost.
"""

import numpy as np
import pytest

import physim as ps
from physim.shells import ShellBody, ShellMaterial, ShellMesh

#: cloth (E t = 1e4 N/m, 150 g/m^2), as in benchmarks/shells.py
CLOTH = dict(E=2e7, nu=0.3, thickness=5e-4, density=300.0, bending=5e-6)


@pytest.fixture(scope="module")
def sheet():
    """A 0.2 m square of 12 x 12 vertices in free fall, its left column pinned (dt = 2e-3 s):
    M / dt^2 = 0.2 N/m per vertex against a membrane stiffness of 1e4 N/m."""
    mesh = ShellMesh.rectangle(center=(0.5, 0.5, 0.5), size=(0.2, 0.2), res=(12, 12), normal="y")
    X = mesh.vertices
    body = ShellBody(mesh, ShellMaterial(**CLOTH), pinned=np.flatnonzero(X[:, 0] < 0.41))
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3, substeps_per_step=1, checkpoint_every=4)
    scene.add_shell(body)
    scene.build(max_steps=2)
    return scene, X


def _state(scene, x):
    s = scene.get_state()
    s["shell.x"] = x
    s["shell.v"] = np.zeros_like(x)
    scene.set_state(s)
    shell = scene.partset.shell
    shell.load_work(0, 1)  # the iterate x_{n+1} = x
    return shell


def _compressed(X, seed=0, amp=0.1):
    """The rest shape squeezed 5 % along x (the pinned column stays), with a random perturbation of
    ``amp`` of the vertex spacing: compressed, stretched and sheared triangles."""
    rng = np.random.default_rng(seed)
    x = X.copy()
    x[:, 0] = X[:, 0].min() + 0.95 * (X[:, 0] - X[:, 0].min())
    x += amp * (0.2 / 11) * rng.normal(size=X.shape)
    x[X[:, 0] < 0.41] = X[X[:, 0] < 0.41]
    return x


def test_membrane_hessian_equals_the_assembled_one(sheet):
    """Only the membrane depends on E, linearly: H(2 E) - H(E), assembled by Taichi's reverse mode of
    the hand-written residual kernels, is the membrane Hessian at E; the numpy one (from the energy's
    Hessian in F) must equal it. Both are f64 sums of the same terms in another order: round-off,
    stated 1e-9 of the largest entry."""
    scene, X = sheet
    x = _compressed(X)
    E = CLOTH["E"]
    try:
        shell = _state(scene, x)
        H1 = shell.assemble_hessian()
        Hm = shell.membrane_hessian(negative_part=False)
        scene.set_param("shell.E", 2 * E)
        shell = _state(scene, x)
        H2 = shell.assemble_hessian()
    finally:
        scene.set_param("shell.E", E)
    D = (H2 - H1).toarray()
    assert np.abs(D).max() > 1e3  # the membrane is there (~E t = 1e4 N/m)
    np.testing.assert_allclose(Hm.toarray(), D, rtol=0, atol=1e-9 * np.abs(D).max())


def test_projection_is_positive_semidefinite_and_makes_h_positive_definite(sheet):
    """At a compressed state H is indefinite (its smallest eigenvalue well below zero); the
    negative part C is positive semi-definite, nonzero, and H_membrane + C is positive
    semi-definite (every triangle's projected Hessian is); H + C is positive definite (the mass
    term is; bending and gravity are small), and the direct solver factors it."""
    scene, X = sheet
    shell = _state(scene, _compressed(X, seed=1))
    H = shell.assemble_hessian().toarray()
    C = shell.membrane_hessian().toarray()
    Hm = shell.membrane_hessian(negative_part=False).toarray()
    scale = np.abs(H).max()
    assert np.linalg.eigvalsh(H).min() < -1e-3 * scale  # indefinite, not by round-off
    assert np.abs(C).max() > 1e-3 * scale
    assert np.linalg.eigvalsh(C).min() >= -1e-12 * scale
    assert np.linalg.eigvalsh(Hm + C).min() >= -1e-12 * scale
    assert np.linalg.eigvalsh(H + C).min() > 0
    import scipy.sparse as sp

    assert shell._factor_pd(sp.csc_matrix(H)) is None  # what the old solver met: a non-positive pivot
    assert shell._factor_pd(sp.csc_matrix(H + C)) is not None


def _release(scene, X, seed):
    """The squeezed sheet released (zero velocity) for two substeps: its first Newton iterates have an
    indefinite H. Returns the counts of (factorizations, modified steps, projected steps, CG
    fallbacks) and the Newton iterations."""
    shell = scene.partset.shell
    x = _compressed(X, seed=seed, amp=0.02)
    s = scene.get_state()
    s["shell.x"] = x
    s["shell.v"] = np.zeros_like(x)
    scene.reset(s)
    counts = (shell.n_factor, shell.n_shift, shell.n_project, shell.n_fallback)
    scene.forward(np.zeros((2, scene.action_dim)), requires_grad=False)
    out = [b - a for a, b in zip(counts, (shell.n_factor, shell.n_shift, shell.n_project, shell.n_fallback),
                                 strict=True)]
    assert all(st[1] == 0 for st in shell.stats[-2:])  # no CG iteration
    assert all(shell._status[k][0] for k in (0, 1))  # converged: rtol (1e-10 |M g|) or the round-off floor
    return out, sum(st[0] for st in shell.stats[-2:])


def test_buckling_sheet_converges_by_projected_newton(sheet):
    """``modified_step="project"``: every modified step is the projected one (no search for a mass
    multiple: at most two factorizations per Newton iteration), and Newton converges."""
    scene, X = sheet
    shell = scene.partset.shell
    try:
        shell.set_newton(modified_step="project")
        (factors, shifts, projected, fallbacks), its = _release(scene, X, seed=2)
    finally:
        shell.set_newton(modified_step="shift")
    assert projected > 0 and shifts == projected and fallbacks == 0
    assert factors <= 2 * its


def test_shift_search_starts_near_the_last_shift(sheet):
    """The default ``modified_step="shift"``: each search for tau (H + tau M / dt^2 positive definite)
    in the substep starts SHIFT_GROWTH below the last tau that worked, so a run of modified steps
    costs about two factorizations each (one of H, one shifted) plus the climbs of tau, instead of
    1 + log_4(tau / SHIFT_START) each from SHIFT_START: with tau <= SHIFT_START 4^8 (~65),
    factorizations <= iterations + 2 modified steps + 8 per substep (two substeps here)."""
    scene, X = sheet
    shell = scene.partset.shell
    shell.set_newton(modified_step="shift")
    (factors, shifts, projected, fallbacks), its = _release(scene, X, seed=2)
    assert shifts > 0 and projected == 0 and fallbacks == 0
    assert factors <= its + 2 * shifts + 16


def test_bad_modified_step_is_a_clear_error(sheet):
    with pytest.raises(ValueError, match="modified_step must be 'shift' or 'project', got 'cholesky'"):
        sheet[0].partset.shell.set_newton(modified_step="cholesky")

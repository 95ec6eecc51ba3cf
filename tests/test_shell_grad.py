"""Reverse mode of the thin-shell part against central finite differences (f64).

Every scene here has the same layout (a 5 x 3 vertex sheet, a box gripper holding its left edge,
a box table under its right end), so the shell kernels and their adjoints compile once. The
gradient goes through several implicit (Newton) steps: the implicit-function adjoint, the crease
update's adjoint, the kinematic vertices' tool, the lagged friction and the chunk checkpoints.
"""

import gc
import math

import numpy as np
import pytest
from gradcheck import actions_fd, assert_close, central_difference

import physim as ps
from physim.parts.shell import MARGIN, NewtonNotConverged
from physim.shells import ShellBody, ShellMaterial, ShellMesh

STEPS, SUBSTEPS = 3, 2
#: a soft sheet (E t = 5e3 N/m, D = 2e-5 N m): well-conditioned Newton, visible bending
SOFT = dict(E=1e7, nu=0.3, thickness=5e-4, density=500.0, bending=2e-5, damping=0.5)


def _scene(yield_angle=math.inf, hardening=0.0, checkpoint_every=16):
    mesh = ShellMesh.rectangle(center=(0.5, 0.3, 0.5), size=(0.08, 0.04), res=(5, 3), normal="y")
    material = ShellMaterial(**SOFT, yield_angle=yield_angle, hardening=hardening)
    # vertices 3 i + j: i along x (0.46 ... 0.54), j along z; the gripper holds column i = 0
    body = ShellBody(mesh, material, attach={0: np.arange(3)})
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3, substeps_per_step=SUBSTEPS, checkpoint_every=checkpoint_every)
    scene.add_tool(ps.BoxTool(position=(0.455, 0.3, 0.5), half_extents=(0.01, 0.005, 0.03), friction=0.5))
    # the table's top is where the sheet's right two columns rest on it: the contact offset (half the
    # thickness + MARGIN) below, less 1 um of penalty compression (their weight needs ~0.5 um)
    top = 0.3 - (0.5 * SOFT["thickness"] + MARGIN) + 1e-6
    scene.add_tool(ps.BoxTool(position=(0.53, top - 0.01, 0.5), half_extents=(0.02, 0.01, 0.03), friction=0.6))
    scene.add_shell(body)
    scene.build(max_steps=4)
    # converge to round-off: a loss weighting v = dx / dt sees the solve's error times 1 / dt, and the
    # finite differences below divide by steps of 1e-6 .. 1e-3 relative
    scene.partset.shell.set_newton(rtol=1e-13)
    return scene


def _actions(lift=0.1, slide=2e-3, twist=0.0):
    a = np.zeros((STEPS, 12))
    a[:, 0:3] = [0.02, lift, 0.0]  # gripper moves up and right
    a[:, 5] = twist  # and turns about z (bends the sheet)
    # the table slides along x at about the friction's stick speed V_SMOOTH (1e-3 m/s): the sheet is
    # dragged in the smooth stick-slip transition (far above it, it slips and the loss hardly depends
    # on the speed)
    a[:, 6] = slide
    return a


def _weights(scene, seed=0):
    rng = np.random.default_rng(seed)
    s = scene.get_state()
    return {k: rng.normal(size=s[k].shape) for k in ("shell.x", "shell.v", "shell.rest_angle")}


def _loss(scene, actions, w, initial=None):
    scene.reset(initial)
    scene.forward(actions, requires_grad=False)
    s = scene.get_state()
    return float(sum((w[k] * s[k]).sum() for k in w))


def _grad(scene, actions, w):
    scene.reset()
    scene.forward(actions)
    return scene.backward(dict(w))


def test_yield_angle_gradient_on_a_yielding_crease():
    """A 1-degree yield angle: the gripper's turn bends hinges past it, their rest angles move
    (the crease adjoint's yielding branch), and the rest angles feed the later steps' bending.
    (First in the module: its scene has the layout of the module's ``elastic`` scene, whose engine it
    compiles and leaves free for that fixture; after the fixture, while that scene is alive, it
    compiled a second engine: ~24 s of CPU.)"""
    scene = _scene(yield_angle=1.0, hardening=0.5)
    a = _actions(lift=0.05, twist=3.0)
    scene.reset()
    scene.forward(a, requires_grad=False)
    plastic = scene.get_state()["shell.plastic"]
    assert (plastic > 0).sum() >= 2, f"no hinge yielded: {plastic}"
    w = _weights(scene, 3)
    g = _grad(scene, a, w)
    fd = []
    for name, h in (("shell.yield_angle", 1e-4), ("shell.hardening", 1e-4), ("shell.bending", 2e-8)):
        v = scene.get_param(name)

        def f(e, name=name, v=v):
            scene.set_param(name, v + e)
            return _loss(scene, a, w)
        fd.append(central_difference(f, h))
        scene.set_param(name, v)
    assert_close(fd, [g.params[n][0] for n in ("shell.yield_angle", "shell.hardening", "shell.bending")],
                 "d loss / d yield_angle, hardening, bending through yielding creases")


@pytest.fixture(scope="module")
def elastic():
    gc.collect()  # test_yield_angle_gradient_on_a_yielding_crease's scene: its engine is free for reuse
    return _scene()


def test_initial_state_gradient(elastic):
    scene, a = elastic, _actions()
    w = _weights(scene)
    g = _grad(scene, a, w)
    base = scene.initial_state()
    fd, ad = [], []
    for name, rows, h in (("shell.x", (4, 10, 13), 1e-6), ("shell.v", (5, 14), 1e-5)):
        for i in rows:
            for d in (0, 1):
                def f(e, i=i, d=d, name=name):
                    arr = base[name].copy()
                    arr[i, d] += e
                    return _loss(scene, a, w, {name: arr})
                fd.append(central_difference(f, h))
                ad.append(g.initial[name][i, d])
    assert_close(fd, ad, "d loss / d initial shell.x, shell.v")


def test_gripper_action_gradient(elastic):
    """The attached vertices follow the gripper: d loss / d its velocity goes through the tools
    part, the kinematic vertices and the implicit solve."""
    scene, a = elastic, _actions()
    w = _weights(scene, 1)
    g = _grad(scene, a, w)
    entries = [(0, 0), (0, 1), (1, 1), (2, 5), (1, 6)]
    fd = actions_fd(lambda b: _loss(scene, b, w), a, entries, 1e-4)
    assert_close(fd, [g.actions[t, col] for t, col in entries], "d loss / d gripper and table actions")


# relative steps of 1e-3: the loss changes by ~1e-3 of its sensitivity, far above the solve's round-off
# (|r| at its floor moves x by ~1e-13 m, v by ~1e-10 m/s), and O(h^2) truncation is ~1e-7 relative
@pytest.mark.parametrize("name", ["shell.E", "shell.bending", "shell.density", "shell.damping", "shell.nu",
                                  "shell.contact_stiffness", "tools.friction"])
def test_parameter_gradients(elastic, name):
    scene, a = elastic, _actions()
    w = _weights(scene, 2)
    rows = (1,) if name == "tools.friction" else (0,)  # the table's friction drags the sheet
    value = {r: scene.get_param(name, r) for r in rows}
    g = _grad(scene, a, w)
    fd = []
    for r in rows:
        h = (1e-2 if name == "shell.damping" else 1e-3) * abs(value[r])  # damping: a weak dependence

        def f(e, r=r):
            scene.set_param(name, value[r] + e, row=r)
            return _loss(scene, a, w)
        fd.append(central_difference(f, h))
        scene.set_param(name, value[r], row=r)
    assert_close(fd, [g.params[name][r] for r in rows], f"d loss / d {name}")


def test_gradient_through_modified_newton_steps(elastic):
    """The gripper pushes the sheet in its plane (compressing it): H is not positive definite at
    Newton's first iterates, so the direct solver takes modified Newton steps (H + tau M / dt^2;
    issue 12: a switch to truncated CG there made the fold reached depend on round-off). Every step
    converges without a CG fallback, and d loss / d actions matches central differences."""
    scene, a = elastic, _actions()
    a[:, 0] = 2.0
    shell = scene.partset.shell
    w = _weights(scene, 7)
    shifts, fallbacks = shell.n_shift, shell.n_fallback
    g = _grad(scene, a, w)
    assert shell.n_shift > shifts and shell.n_fallback == fallbacks
    assert all(s[1] == 0 for s in shell.stats[-STEPS * SUBSTEPS:])  # no CG iteration in the forward
    entries = [(0, 0), (1, 1), (2, 0), (0, 5)]
    fd = actions_fd(lambda b: _loss(scene, b, w), a, entries, 1e-4)
    assert_close(fd, [g.actions[t, col] for t, col in entries],
                 "d loss / d gripper actions through modified Newton steps")


def test_checkpointed_gradients_equal_one_chunk(elastic):
    """Chunks of 4 substeps (not aligned with the steps' 2) give the one-chunk gradients."""
    scene, a = elastic, _actions()
    w = _weights(scene, 4)
    out = []
    for k in (4, 16):
        scene.set_checkpoint_every(k)
        out.append(_grad(scene, a, w))
    scene.set_checkpoint_every(16)
    np.testing.assert_allclose(out[0].actions, out[1].actions, rtol=1e-7, atol=1e-12)
    for name in ("shell.x", "shell.v", "shell.rest_angle"):
        np.testing.assert_allclose(out[0].initial[name], out[1].initial[name], rtol=1e-7, atol=1e-12)
    for name in ("shell.E", "shell.bending", "tools.friction"):
        np.testing.assert_allclose(out[0].params[name], out[1].params[name], rtol=1e-7, atol=1e-15)


def test_backward_through_unconverged_newton_raises(elastic):
    scene, a = elastic, _actions()
    shell = scene.partset.shell
    try:
        shell.set_newton(max_iter=1)
        scene.reset()
        with pytest.warns(UserWarning, match="did not converge"):
            scene.forward(a)
        with pytest.raises(NewtonNotConverged, match=r"substep \d+ .*\|r\| / \|M g\|"):
            scene.backward({"shell.x": np.ones((15, 3))})
    finally:
        shell.set_newton(max_iter=50)


def test_assembled_hessian_times_a_vector_is_the_hessian_vector_product(elastic):
    """The Hessian assembled by colouring (one product per colour and axis) against the
    Hessian-vector product kernel on random vectors, at a state with the sheet stretched, bent and
    in contact with the table (every term of H). Both are sums of the same per-element products in
    f64, in another order: round-off, a few epsilons of |H| |v| (1e-12 relative is ~5e3 eps)."""
    scene, a = elastic, _actions(twist=3.0)
    shell = scene.partset.shell
    scene.reset()
    scene.forward(a, requires_grad=False)
    shell.load_work(0, 1)
    shell._load_iterate(0)  # x_{n+1} of the first substep: the table touches the right columns
    H = shell.assemble_hessian()
    free = shell._pattern["free"]
    assert H.shape == (3 * len(free),) * 2 and len(free) == 12
    assert H.nnz > 9 * len(free)  # the off-diagonal blocks are there
    rng = np.random.default_rng(5)
    n_slots = shell.cp.shape[0]
    for _ in range(3):
        p = np.zeros((n_slots, 3))
        p[: shell.rows[None]] = rng.normal(size=(int(shell.rows[None]), 3))
        shell.cp.from_numpy(p)
        shell._hvp()
        q = shell.cq.to_numpy()[free].ravel()
        hq = H @ p[free].ravel()
        assert np.abs(hq - q).max() <= 1e-12 * np.abs(H).max() * np.abs(p).max() * 9
        assert np.abs(q).max() > 0
    # H is symmetric (it is the Hessian of the incremental potential)
    assert abs(H - H.T).max() <= 1e-12 * abs(H).max()


def test_direct_and_cg_solvers_agree(elastic):
    """Newton steps and the adjoint solved by the sparse direct factorization and by CG: the same
    final state and gradients. Both converge to |r| <= 1e-13 |M g| (the scene's rtol), so the states
    agree to ~1e-13 of the sheet's motion (stated: 1e-9 relative, 1e-12 m). The gradients are taken
    at these two slightly different converged states, through the table's penalty contact, whose
    stiffness is ~1e5 times the vertices' m / dt^2: measured, they differ by at most 4.7e-7 relative
    (d loss / d x_0 of the resting vertices; the same with CG's adjoint at 1e-13 instead of 1e-10,
    so it is not the adjoint's tolerance), and central differences of the loss scatter by 1e-4
    there. Stated: 2e-6."""
    scene, a = elastic, _actions(twist=3.0)
    shell = scene.partset.shell
    w = _weights(scene, 6)
    out = {}
    try:
        for solver in ("direct", "cg"):
            shell.set_newton(linear_solver=solver)
            n_factor = shell.n_factor
            g = _grad(scene, a, w)
            cgs = sum(s[1] for s in shell.stats)
            if solver == "direct":
                assert cgs == 0 and shell.n_factor > n_factor  # no CG fallback: H is positive definite
            else:
                assert cgs > 0 and shell.n_factor == n_factor
            out[solver] = (scene.get_state(), g)
    finally:
        shell.set_newton(linear_solver="auto")
    (s1, g1), (s2, g2) = out["direct"], out["cg"]
    for k in ("shell.x", "shell.v"):
        np.testing.assert_allclose(s1[k], s2[k], rtol=1e-9, atol=1e-9 if k == "shell.v" else 1e-12)
    np.testing.assert_allclose(g1.actions, g2.actions, rtol=2e-6, atol=1e-9 * np.abs(g2.actions).max())
    for name in ("shell.x", "shell.v", "shell.rest_angle"):
        ref = g2.initial[name]
        np.testing.assert_allclose(g1.initial[name], ref, rtol=2e-6, atol=1e-9 * np.abs(ref).max())
    for name in ("shell.E", "shell.bending", "tools.friction"):
        np.testing.assert_allclose(g1.params[name], g2.params[name], rtol=2e-6)

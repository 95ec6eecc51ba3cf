"""Two-way shell <-> FEM pad coupling (:mod:`physim.parts.shell_contact`): a soft pad pressing a free sheet
onto a rigid table. The gel receives exactly minus the force the sheet receives from it (Newton's
third law, at every substep, the sheet's side measured from its own momentum balance), is indented by it (the
one-way coupling, :meth:`physim.parts.shell.ShellPart.set_pad_reaction` (False), leaves it undented), and a loss
on the gel's nodes has the reverse-mode gradient of central differences (f64) with respect to the gripper's
actions and ``shell.pad_friction``."""

import math

import numpy as np
import pytest
from gradcheck import assert_close, central_difference

import physim as ps
from physim.parts.shell import MARGIN, V_SMOOTH
from physim.parts.shell_contact import rest_stiffness
from physim.shells import ShellBody, ShellMaterial, ShellMesh

# the FEM pad sub-cycles the shells' 2 ms substep (announced by a warning)
pytestmark = pytest.mark.filterwarnings("ignore::physim.parts.fem.Subcycling")

#: a soft sheet (E t = 5e3 N/m, D = 2e-5 N m), as in test_shell_contact
SOFT = dict(E=1e7, nu=0.3, thickness=5e-4, density=500.0, bending=2e-5)
T_HALF = 0.5 * SOFT["thickness"]
#: the table's top face (the sheet at y = 0.3 starts 1 um inside its contact zone) and its half extents
TABLE_TOP = 0.3 - (T_HALF + MARGIN) + 1e-6
TABLE_HALF = (0.035, 0.01, 0.035)
TABLE_MU = 0.5
#: the pad's centre (off the sheet's grid lines: see test_shell_contact's `pair` fixture); its face starts
#: 0.1 mm above the sheet's contact zone
PC = (0.5013, 0.3 + 0.005 + T_HALF + MARGIN + 1e-4, 0.4991)
STEPS = 4  # actions per forward call (one substep each)
DOWN = -0.15  # m/s: 0.3 mm per 2 ms substep, less than half the 0.75 mm contact zone


@pytest.fixture(scope="module")
def table_scene():
    """Tool 0: the box the pad's back is mounted on; tool 1: the table (still); a free 5 x 5
    sheet lying on the table under the pad. One substep per action step, so every slot is observed."""
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3, substeps_per_step=1, checkpoint_every=16)
    scene.add_tool(ps.BoxTool(position=(PC[0], PC[1] + 0.007, PC[2]), half_extents=(0.012, 0.002, 0.012)))
    scene.add_tool(ps.BoxTool(position=(0.5, TABLE_TOP - TABLE_HALF[1], 0.5), half_extents=TABLE_HALF,
                              friction=TABLE_MU))
    gel = ps.flat_pad(center=PC, size=(0.02, 0.02), thickness=0.01, resolution=(2, 2, 2), back="top")
    scene.add_fem(ps.FEMBody(gel, E=5e4, nu=0.3, density=1000.0, beta=5e-4, mount=0))
    sheet = ShellMesh.rectangle(center=(0.5, 0.3, 0.5), size=(0.04, 0.04), res=(5, 5), normal="y")
    scene.add_shell(ShellBody(sheet, ShellMaterial(**SOFT, damping=0.5), pad_friction=0.5))
    scene.build(max_steps=STEPS)
    scene.partset.shell.set_newton(rtol=1e-13)
    return scene


def _actions(scene, n, down=DOWN, side=0.0):
    a = np.zeros((n, scene.action_dim))
    a[:, 1] = down
    a[:, 0] = side
    return a


def _free_gel_nodes(scene):
    fem = scene.partset.fem
    return np.flatnonzero(fem.kind.to_numpy()[: int(fem.rows[None])] == -2)


def _table_force(scene, x, x0):
    """(n, 3) the still table's force on the sheet's vertices at the end of a step from ``x0`` to ``x``, by the
    shells' documented tool contact law: the penalty ``k (eps - phi)`` along the top face's normal (+y) where
    ``phi`` = height above the face < ``eps`` = t/2 + MARGIN, ``k`` = shell.contact_stiffness times the vertex's
    lumped area; lagged friction ``-mu lam u / sqrt(|u|^2 + eps_u^2)`` of the horizontal slip ``u = x - x0``,
    ``lam = k (eps - phi(x0))``, ``eps_u = V_SMOOTH dt``. Every vertex stays over the face's interior (checked)."""
    inside = (np.abs(x[:, 0] - 0.5) < TABLE_HALF[0]) & (np.abs(x[:, 2] - 0.5) < TABLE_HALF[2])
    assert inside.all(), "a sheet vertex left the table's top face"
    shell = scene.partset.shell
    k = scene.get_param("shell.contact_stiffness", 0) * shell.node_area.to_numpy()[: len(x)].astype(np.float64)
    eps = T_HALF + MARGIN
    phi, phi0 = x[:, 1] - TABLE_TOP, x0[:, 1] - TABLE_TOP
    f = np.zeros_like(x)
    f[:, 1] = np.where(phi < eps, k * (eps - phi), 0.0)
    lam = np.where(phi0 < eps, k * (eps - phi0), 0.0)
    u = x - x0
    u[:, 1] = 0.0
    s = np.sqrt((u * u).sum(1) + (V_SMOOTH * scene.dt) ** 2)
    return f - (TABLE_MU * lam / s)[:, None] * u


def _settle_with(scene, reaction, n_hold=18):
    """Press 0.7 mm down (0.6 mm into the contact zone) sliding 0.04 mm per substep sideways, then hold still
    for ``n_hold`` substeps; returns the per-substep records of the press and hold and the final state."""
    scene.partset.shell.set_pad_reaction(reaction)
    scene.reset()
    m = scene.partset.shell.vertex_mass()
    alpha = scene.get_param("shell.damping", 0)
    g = np.asarray(scene.gravity, np.float64)
    h = scene.dt
    free = _free_gel_nodes(scene)
    s0 = scene.get_state()
    w = scene.partset.shell.contact.wnode.to_numpy()[: len(s0["fem.x"])].astype(np.float64)[:, None]
    rows = []
    press = _actions(scene, 1, side=0.02)
    hold = _actions(scene, 1, down=0.0)
    for i in range(2 + n_hold + 1):
        scene.forward(press if i < 2 else hold if i > 2 else _actions(scene, 1, down=-0.05, side=0.02),
                      requires_grad=False)
        s1 = scene.get_state()
        # the sheet's momentum balance of implicit Euler at x_{n+1} (internal forces sum to 0):
        # sum m (v1 - v0) / h = -alpha sum m v1 + M g + F_table + F_gel  ->  the gel's force on the sheet
        dP = (m[:, None] * (s1["shell.v"] - s0["shell.v"])).sum(0) / h
        f_gel_on_sheet = dP + alpha * (m[:, None] * s1["shell.v"]).sum(0) - m.sum() * g \
            - _table_force(scene, s1["shell.x"], s0["shell.x"]).sum(0)
        # the reaction written in this substep (before the relaxation): f_pad[l+1] = (1 - w) f_pad[l] + w R_l,
        # w each node's relaxation
        reaction = (s1["shell.f_pad"] - (1.0 - w) * s0["shell.f_pad"]) / w
        rows.append(dict(on_sheet=f_gel_on_sheet, on_gel=reaction.sum(0), applied=s0["shell.f_pad"].sum(0),
                         felt=s1["fem.f_contact"][free].sum(0)))
        s0 = s1
    assert all(ok for ok, _res, _t in scene.partset.shell._status.values())
    return rows, s0


def _face_rise(scene, s):
    """Mean height of the gel's free bottom-face nodes above where the mount carries them rigidly (m)."""
    x0 = scene.initial_state()["fem.x"]
    rigid = x0 + (s["tools.pos"][0] - scene.initial_state()["tools.pos"][0])
    free = _free_gel_nodes(scene)
    face = free[x0[free, 1] < x0[:, 1].min() + 1e-9]
    assert len(face) == 9
    return float((s["fem.x"][face, 1] - rigid[face, 1]).mean())


def test_reaction_is_minus_the_force_on_the_sheet_and_indents_the_gel(table_scene):
    """Newton's third law, substep by substep through a press that drags the sheet sideways and a hold: the sum
    of the forces written on the gel's nodes (the reaction before relaxation, from two consecutive
    ``shell.f_pad`` slots) equals minus the force the gel exerted on the sheet, the latter measured without the
    pad code: the sheet's momentum change in the implicit step less its damping, its weight and the table's
    force (penalty and lagged friction, evaluated here from the documented tool law). All three components,
    so normal force and friction both. Tolerance 1e-8 of the press force: the Newton residual (rtol 1e-13 of
    the solve's scale) and the round-off of momentum sums over 2 ms (measured: 3e-10 of it). The gel feels
    what was written one substep later (``fem.f_contact`` of its free nodes: every face in contact is free).

    Indentation: at the end of the hold the gel's face has risen against the press (+y) relative to where its
    mount carries it, by more than 0.1 mm (measured ~0.2 mm); the one-way run of the same actions writes no
    reaction, the gel feels nothing, nearly comes to rest (|v| 1.5e-3 m/s after the 36 ms hold) and its face
    stays where the mount and its own weight put it (measured -8e-6 m after a longer hold, the sag under its
    weight; |rise| under a tenth of the two-way dent), while the sheet is pressed (by more: nothing gives way)."""
    scene = table_scene
    rows, s = _settle_with(scene, True)
    on_sheet = np.array([r["on_sheet"] for r in rows])
    on_gel = np.array([r["on_gel"] for r in rows])
    scale = np.abs(on_gel).max()
    assert scale > 0.1, f"the pad pressed the sheet with only {scale:.3g} N"
    assert np.abs(on_gel[:4, 0]).max() > 0.05, "no sideways friction force during the drag"
    err = np.abs(on_gel + on_sheet).max()
    assert err <= 1e-8 * scale, f"reaction on the gel + force on the sheet = {err:.3g} N of {scale:.3g} N"
    felt = np.array([r["felt"] for r in rows])
    applied = np.array([r["applied"] for r in rows])
    assert np.abs(felt - applied).max() <= 1e-12 * scale, "the gel did not feel the reaction written before"
    assert (on_gel[-5:, 1] > 0.1).all(), "the held pad lost contact"
    dent = _face_rise(scene, s)
    assert dent > 1e-4, f"the gel's face rose {dent:.3g} m against the press"
    try:
        rows1, s1 = _settle_with(scene, False)
    finally:
        scene.partset.shell.set_pad_reaction(True)
    assert all(not r["felt"].any() and not r["on_gel"].any() for r in rows1), "one-way: the gel felt the sheet"
    # nearly at rest: 5 mm/s at the gel's ~1400 rad/s rings by ~4 um, under 2 % of the two-way dent
    assert np.abs(s1["fem.v"]).max() < 5e-3, "one-way: the gel is not at rest"
    assert rows1[-1]["on_sheet"][1] < -0.1, "one-way: the sheet was not pressed"
    dent1 = _face_rise(scene, s1)
    assert abs(dent1) < 0.1 * dent, f"one-way: the face moved {dent1:.3g} m (two-way {dent:.3g} m)"


@pytest.mark.parametrize("adaptive", [False, True])
def test_gel_loss_gradient_wrt_gripper_actions_and_pad_friction(table_scene, adaptive):
    """A loss on the gel's nodes (fem.x and fem.v after 4 substeps of pressing and dragging) against central
    differences (f64): d / d the mount's velocity entries and d / d shell.pad_friction. The reaction's share
    matters: the one-way run's gradients (through the mount's kinematics only; 0 for pad_friction) differ from
    the differences by far more than the tolerance. h = 1e-5 m/s moves the pad 2e-8 m per substep, inside
    friction's 2 um stick band; 1e-4 relative on the friction coefficient. Both with one relaxation for every
    node and with the adaptive, per-node one."""
    scene = table_scene
    scene.partset.shell.set_pad_relaxation(0.5, adaptive=adaptive)
    a = _actions(scene, STEPS, side=0.02)
    rng = np.random.default_rng(7)
    st = scene.get_state()
    w = {"fem.x": rng.normal(size=st["fem.x"].shape), "fem.v": 1e-3 * rng.normal(size=st["fem.v"].shape)}
    entries = [(0, 1), (1, 1), (2, 0), (1, 2), (0, 4)]

    def loss(b):
        scene.reset()
        scene.forward(b, requires_grad=False)
        s = scene.get_state()
        return float(sum((w[k] * s[k]).sum() for k in w))

    def grads():
        scene.reset()
        scene.forward(a)
        g = scene.backward(dict(w))
        return [g.actions[t, c] for t, c in entries] + [g.params["shell.pad_friction"][0]]

    ad = grads()
    fd = []
    for t, c in entries:
        def f(e, t=t, c=c):
            b = a.copy()
            b[t, c] += e
            return loss(b)
        fd.append(central_difference(f, 1e-5))
    mu = scene.get_param("shell.pad_friction", 0)

    def fmu(e):
        scene.set_param("shell.pad_friction", mu + e, row=0)
        return loss(a)
    try:
        fd.append(central_difference(fmu, 1e-4 * mu))
    finally:
        scene.set_param("shell.pad_friction", mu, row=0)
    assert_close(fd, ad, "d loss(fem.x, fem.v) / d mount actions and shell.pad_friction, two-way")
    scene.partset.shell.set_pad_reaction(False)
    try:
        one_way = grads()
    finally:
        scene.partset.shell.set_pad_reaction(True)
        scene.partset.shell.set_pad_relaxation(0.5)
    assert one_way[-1] == 0.0
    diff = np.abs(np.array(one_way) - np.array(fd))
    assert diff.max() > 0.1 * np.abs(fd).max(), f"the reaction changes the gradients by only {diff.max():.3g}"


def test_bad_pad_reaction_switch_is_a_clear_error(table_scene):
    shell = table_scene.partset.shell
    for bad in ("no", 1, None, math.nan):
        with pytest.raises(TypeError, match="pad reaction must be True"):
            shell.set_pad_reaction(bad)
    assert shell.pad_reaction is True
    for bad in ("yes", 1, None):
        with pytest.raises(TypeError, match="adaptive must be True or False"):
            shell.set_pad_relaxation(0.5, adaptive=bad)
    assert shell.contact.adaptive is False


def test_rest_stiffness_is_the_gels_linearized_force(table_scene):
    """The adaptive relaxation's stiffness (:func:`physim.parts.shell_contact.rest_stiffness`) against the FEM
    part's own forces (its constitutive model, stable neo-Hookean, whose linearization at rest is linear
    elasticity of E and nu): the gel's nodes moved by a random 1e-7 m from rest feel ``-K u`` to 1e-3 (the
    nonlinear remainder is O(|u| / h) ~ 2e-5 of it)."""
    scene = table_scene
    fem = scene.partset.fem
    body = fem.bodies[0]
    K = rest_stiffness(body, scene.get_param("fem.E", 0), scene.get_param("fem.nu", 0))
    x0 = scene.initial_state()["fem.x"]
    u = 1e-7 * np.random.default_rng(11).normal(size=x0.shape)
    u[body.fixed] = 0.0
    scene.reset({"fem.x": x0 + u})
    f = fem.nodal_forces(scene._slot)
    scene.reset()
    expect = -(K @ u.ravel()).reshape(-1, 3)
    assert np.abs(f - expect).max() <= 1e-3 * np.abs(expect).max(), (
        f"FEM forces differ from -K u by {np.abs(f - expect).max():.3g} N of {np.abs(expect).max():.3g} N")


LIMIT_CYCLE = pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="known limit of the lagged, relaxed reaction at the default relaxation 0.5 (measured 2026-12-03): a light "
           "corner node of the gel, pressed on a sheet lying on a table, locks into a period-two cycle with the sheet "
           "vertex under it (the press's force alternating 0.44 / 0.61 N, gel |v| 0.12 m/s, sheet 0.06 m/s)")


@pytest.mark.parametrize("relaxation, adaptive", [pytest.param(0.5, False, marks=LIMIT_CYCLE), (0.25, False),
                                                  (0.5, True)])
def test_held_pad_on_a_table_comes_to_rest(table_scene, relaxation, adaptive):
    """Held still with pad friction off, the pad and the sheet between it and the table settle within a 60 ms
    hold (|v| < 1e-3 m/s; measured 2e-4 m/s at relaxation 0.25), and at rest the gel feels what the sheet
    receives: the relaxed force applied to it equals the last reaction (1e-3 of it) and the third law holds.
    Relaxation 0.5 (the default) does not settle here: the lagged penalty's loop gain at a corner node (contact
    stiffness over the gel's local stiffness there) needs w (1 + gain) < 2; strict xfail, so a fix shows. The
    adaptive relaxation (0.5 at most, 0.15 at the corners here) settles (measured |v| 1.3e-4 m/s)."""
    scene = table_scene
    shell = scene.partset.shell
    mu = scene.get_param("shell.pad_friction", 0)
    scene.set_param("shell.pad_friction", 0.0, row=0)
    shell.set_pad_relaxation(relaxation, adaptive=adaptive)
    w = shell.contact.wnode.to_numpy()[: int(scene.partset.fem.rows[None])]
    try:
        rows, s = _settle_with(scene, True, n_hold=30)
    finally:
        scene.set_param("shell.pad_friction", mu, row=0)
        shell.set_pad_relaxation(0.5)
    if adaptive:
        assert w.min() < 0.25 and w.max() == 0.5, f"adaptive relaxations {w}"
    assert np.abs(s["fem.v"]).max() < 1e-3 and np.abs(s["shell.v"]).max() < 1e-3, (
        f"not at rest: gel {np.abs(s['fem.v']).max():.3g} m/s, sheet {np.abs(s['shell.v']).max():.3g} m/s")
    last = rows[-1]
    scale = abs(last["on_gel"][1])
    assert scale > 0.1
    assert np.abs(last["felt"] - last["on_gel"]).max() <= 1e-3 * scale
    assert np.abs(last["on_gel"] + last["on_sheet"]).max() <= 1e-8 * scale

"""Shell <-> shell contact (:mod:`physim.parts.shell_contact`): sheets dropped on sheets and a
strip folded onto itself do not pass through each other and gain no energy; reverse mode through
implicit steps with active contact and friction against central finite differences (f64); bad
inputs are clear errors."""

import gc
import math

import numpy as np
import pytest
from gradcheck import assert_close, central_difference
from meshcheck import point_triangle_distance

import physim as ps
from physim.shells import ShellBody, ShellMaterial, ShellMesh

# the FEM pad sub-cycles the shells' 2 ms substep (announced by a warning)
pytestmark = pytest.mark.filterwarnings("ignore::physim.parts.fem.Subcycling")

#: a soft sheet (E t = 5e3 N/m, D = 2e-5 N m), as in test_shell_grad
SOFT = dict(E=1e7, nu=0.3, thickness=5e-4, density=500.0, bending=2e-5)


def min_distance(xa: np.ndarray, xb: np.ndarray, tri_b: np.ndarray) -> float:
    """Least distance of the vertices xa to the triangles tri_b of xb (every pair)."""
    P = np.repeat(xa, len(tri_b), axis=0)
    T = np.tile(xb[tri_b], (len(xa), 1, 1))
    return float(point_triangle_distance(P, T).min())


def total_energy(scene, slot):
    e = scene.partset.shell.energy(slot)
    return sum(e.values())


def _stack_scene(top_y, velocity, steps, mat_top, res_top=(6, 6), friction=0.3, sphere=True, substeps=5):
    """A 7 x 7 sheet draped on a sphere (or pinned at its edge) and a smaller sheet above it."""
    bot = ShellMesh.rectangle(center=(0.5, 0.3, 0.5), size=(0.06, 0.06), res=(7, 7), normal="y")
    top = ShellMesh.rectangle(center=(0.5, top_y, 0.5), size=(0.04, 0.04), res=res_top, normal="y", pattern="right")
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3, substeps_per_step=substeps, checkpoint_every=8)
    mat = ShellMaterial(**SOFT, damping=0.0)
    if sphere:
        # the sphere's top is where the bottom sheet's centre rests (offset t/2 + MARGIN, less 1 um)
        from physim.parts.shell import MARGIN
        r = 0.03
        scene.add_tool(ps.SphereTool(position=(0.5, 0.3 - (0.5 * mat.thickness + MARGIN) + 1e-6 - r, 0.5), radius=r,
                                     friction=0.3))
        bottom = ShellBody(bot, mat, self_contact=True, self_friction=friction)
    else:
        X = bot.vertices
        edge = np.flatnonzero((np.abs(X[:, 0] - 0.5) > 0.029) | (np.abs(X[:, 2] - 0.5) > 0.029))
        bottom = ShellBody(bot, mat, pinned=edge, self_contact=True, self_friction=friction)
    scene.add_shell(bottom)
    scene.add_shell(ShellBody(top, mat_top, self_contact=True, self_friction=friction, velocity=velocity))
    scene.build(max_steps=steps)
    return scene, bot, top


def test_sheet_dropped_on_a_sheet_on_a_sphere_does_not_penetrate_or_gain_energy():
    """An undamped sheet falls at 0.5 m/s onto a sheet lying on a sphere (both held by contact only):
    every vertex of each stays more than the two half thicknesses from every triangle of the other
    (the barrier is infinite there and the step bound keeps every gap above 10 % of its start), the
    top sheet does land (inside the margin), and the total energy (kinetic, gravity, elastic,
    contact) never grows: implicit Euler and friction only dissipate; 1e-9 J allows for the Newton
    residual (|r| <= 1e-10 |M g| moves E by far less)."""
    steps = 10
    scene, bot, top = _stack_scene(0.304, (0.0, -0.5, 0.0), steps, ShellMaterial(**SOFT, damping=0.0))
    scene.reset()
    nb = bot.n_vertices
    t_off = SOFT["thickness"]
    energies = [total_energy(scene, 0)]
    dmin = math.inf
    for _ in range(steps):
        scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)
        x = scene.get_state()["shell.x"]
        xb, xt = x[:nb], x[nb:]
        dmin = min(dmin, min_distance(xt, xb, bot.triangles), min_distance(xb, xt, top.triangles))
        energies.append(total_energy(scene, 0))
    assert dmin > t_off, f"the sheets came {dmin:.3g} m apart (< the two half thicknesses {t_off:g})"
    assert dmin < t_off + 5e-4, "the top sheet never reached the bottom one"
    gain = np.diff(energies)
    assert gain.max() <= 1e-9, f"energy grew by {gain.max():.3g} J in a step (energies {energies})"
    assert all(ok for ok, _res, _t in scene.partset.shell._status.values())


def _fold_mesh(n=25, length=0.1, width=0.012, radius=2e-3, y0=0.3):
    """A strip folded into a U: a flat bottom layer, a half circle of ``radius``, a flat top layer
    2 radius above the bottom; the rest shape (so its hinges want to stay folded)."""
    flat = ShellMesh.strip(start=(0.0, 0.0, 0.0), length=length, width=width, n=n, n_width=3, normal="y")
    u = flat.vertices[:, 0]
    a = 0.5 * (length - math.pi * radius)
    x = np.where(u < a, u, np.where(u > a + math.pi * radius, a - (u - a - math.pi * radius),
                                    a + radius * np.sin((u - a) / radius)))
    y = np.where(u < a, 0.0, np.where(u > a + math.pi * radius, 2 * radius,
                                      radius * (1 - np.cos((u - a) / radius))))
    X = np.column_stack([0.45 + x, y0 + y, 0.5 + flat.vertices[:, 2]])
    return ShellMesh(X, flat.triangles), u, a


def test_folded_strip_pushed_onto_itself_does_not_pass_through():
    """A U-folded strip (layers 4 mm apart) whose free top layer is thrown at 1 m/s onto its pinned
    bottom layer: 2 mm per substep, half the gap, 4 edge lengths of motion in all. The top
    layer's vertices stay above the bottom layer's triangles by more than the thickness (the
    same body: self-contact), and it does reach the bottom layer."""
    mesh, u, a = _fold_mesh()
    mat = ShellMaterial(**SOFT, damping=0.0)
    bottom = np.flatnonzero(u < a - 1e-9)
    body = ShellBody(mesh, mat, pinned=bottom, self_contact=True, velocity=(0.0, -1.0, 0.0))
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3, substeps_per_step=2, checkpoint_every=8, gravity=(0, 0, 0))
    scene.add_shell(body)
    scene.build(max_steps=6)
    scene.reset()
    tri = mesh.triangles
    tri_bottom = tri[np.isin(tri, bottom).all(axis=1)]
    top = np.flatnonzero(u > a + math.pi * 2e-3 + 1e-9)
    dmin = math.inf
    for _ in range(6):
        scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)
        x = scene.get_state()["shell.x"]
        dmin = min(dmin, min_distance(x[top], x, tri_bottom))
        assert (x[top, 1] > 0.3).all(), "a top-layer vertex went below the bottom layer"
    assert SOFT["thickness"] < dmin < SOFT["thickness"] + 5e-4, f"least distance {dmin:.3g} m"


# ---------------------------------------------------------------------------- gradients
GSTEPS, GSUB = 3, 2


@pytest.fixture(scope="module")
def pair():
    """A 3 x 3 sheet already inside the contact margin of a 4 x 4 sheet pinned at its edge, sliding across it:
    barrier and friction are active in every substep."""
    bot = ShellMesh.rectangle(center=(0.5, 0.3, 0.5), size=(0.03, 0.03), res=(4, 4), normal="y")
    # offset off the bottom grid's lines: a vertex projecting exactly onto an edge of the other sheet sits
    # on a boundary of the closest-point regions, where the distance's second derivative jumps
    top = ShellMesh.rectangle(center=(0.5013, 0.3 + 5e-4 + 3e-4, 0.4991), size=(0.016, 0.016), res=(3, 3),
                              normal="y", pattern="right")
    mat = ShellMaterial(**SOFT, damping=0.5)
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3, substeps_per_step=GSUB, checkpoint_every=16)
    X = bot.vertices
    edge = np.flatnonzero((np.abs(X[:, 0] - 0.5) > 0.014) | (np.abs(X[:, 2] - 0.5) > 0.014))
    scene.add_shell(ShellBody(bot, mat, pinned=edge, self_contact=True, self_friction=0.4))
    scene.add_shell(ShellBody(top, mat, self_contact=True, self_friction=0.4, velocity=(2e-3, -0.05, 1e-3)))
    scene.build(max_steps=GSTEPS)
    scene.partset.shell.set_newton(rtol=1e-13)
    return scene


def _weights(scene, seed):
    rng = np.random.default_rng(seed)
    s = scene.get_state()
    return {k: rng.normal(size=s[k].shape) for k in ("shell.x", "shell.v")}


def _loss(scene, w, initial=None):
    scene.reset(initial)
    scene.forward(np.zeros((GSTEPS, scene.action_dim)), requires_grad=False)
    s = scene.get_state()
    return float(sum((w[k] * s[k]).sum() for k in w))


def test_contact_is_active_in_the_gradient_scene(pair):
    """The checks below go through the barrier and friction: the top sheet is inside the margin."""
    scene = pair
    scene.reset()
    scene.forward(np.zeros((GSTEPS, scene.action_dim)), requires_grad=False)
    assert scene.partset.shell.energy(0)["self_contact"] > 0


def test_initial_state_gradient_through_contact(pair):
    scene = pair
    w = _weights(scene, 0)
    scene.reset()
    scene.forward(np.zeros((GSTEPS, scene.action_dim)))
    g = scene.backward(dict(w))
    base = scene.initial_state()
    fd, ad = [], []
    # h = 1e-8 m: the friction's stick regime is eps_u = V_SMOOTH dt = 2 um wide, so the loss bends on that
    # scale (h = 1e-7 m: O((h / eps_u)^2) = 2e-3 truncation); round-off ~1e-16 |L| / h is 1e-5 of the entries
    for name, rows, h in (("shell.x", (16, 20, 24), 1e-8), ("shell.v", (17, 22), 1e-5)):
        for i in rows:
            for d in (0, 1, 2):
                def f(e, i=i, d=d, name=name):
                    arr = base[name].copy()
                    arr[i, d] += e
                    return _loss(scene, w, {name: arr})
                fd.append(central_difference(f, h))
                ad.append(g.initial[name][i, d])
    assert_close(fd, ad, "d loss / d initial shell.x, shell.v through shell contact")


@pytest.mark.parametrize("name", ["shell.self_friction", "shell.self_contact_stiffness"])
def test_contact_parameter_gradients(pair, name):
    scene = pair
    w = _weights(scene, 1)
    scene.reset()
    scene.forward(np.zeros((GSTEPS, scene.action_dim)))
    g = scene.backward(dict(w))
    fd, ad = [], []
    for row in (0, 1):
        value = scene.get_param(name, row)

        def f(e, row=row, value=value):
            scene.set_param(name, value + e, row=row)
            return _loss(scene, w)
        try:
            fd.append(central_difference(f, 1e-4 * value))
        finally:
            scene.set_param(name, value, row=row)
        ad.append(g.params[name][row])
    assert_close(fd, ad, f"d loss / d {name}")


# ---------------------------------------------------------------------------- errors
def test_bad_contact_inputs_are_clear_errors():
    mesh = ShellMesh.rectangle(center=(0.5, 0.3, 0.5), size=(0.04, 0.04), res=(4, 4), normal="y")
    mat = ShellMaterial(**SOFT)
    for kw, word in ((dict(self_contact_margin=-1e-3), "self_contact_margin"),
                     (dict(self_contact_margin=0.0), "self_contact_margin"),
                     (dict(self_contact_stiffness=-1.0), "self_contact_stiffness"),
                     (dict(self_friction=-0.1), "self_friction"),
                     (dict(self_friction=math.nan), "self_friction"),
                     (dict(self_contact="yes"), "self_contact")):
        with pytest.raises(ValueError, match=word):
            ShellBody(mesh, mat, **kw)
    # a margin as large as the mesh spacing: the barrier would act between neighbours at rest
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3)
    scene.add_shell(ShellBody(mesh, mat, self_contact=True, self_contact_margin=0.02))
    with pytest.raises(ValueError, match="rest shape .* self_contact_margin"):
        scene.build(max_steps=2)
    # two sheets starting through each other
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3)
    scene.add_shell(ShellBody(mesh, mat, self_contact=True))
    other = ShellMesh.rectangle(center=(0.5, 0.3 + 1e-4, 0.5), size=(0.02, 0.02), res=(3, 3), normal="y")
    scene.add_shell(ShellBody(other, mat, self_contact=True))
    with pytest.raises(ValueError, match="start touching or overlapping"):
        scene.build(max_steps=2)


# ---------------------------------------------------------------------------- FEM pads
PSTEPS, PSUB = 3, 2


def _free_gel_nodes(scene):
    fem = scene.partset.fem
    n = int(fem.rows[None])
    return np.flatnonzero(fem.kind.to_numpy()[:n] == -2)


def test_sheet_and_pad_exchange_equal_and_opposite_impulses():
    """Newton's third law over a rollout: a free, undamped sheet (no gravity, no pins, nothing else to touch)
    thrown up at 0.1 m/s against the pad bounces off it. Implicit Euler gives the sheet's momentum change
    exactly as dt times the pads' force on it at each converged step (internal forces sum to zero), so
    ``P(T) - P(0)`` is the impulse the sheet received; the gel's free nodes received
    ``dt sum_s fem.f_contact[s]`` (the reaction is their only contact force). The reaction reaches the gel one
    substep later and relaxed (``f_pad[l + 1] = (1 - w) f_pad[l] + w R_l``), so the impulse still to be applied
    at the end, ``dt f_pad[T] / w``, is added: then the two agree to the Newton residual (|r| <= 1e-13 of the
    solve's force scale per substep) -- 1e-9 of the impulse allows for the sum's round-off."""
    from physim.parts.shell import MARGIN

    mat = ShellMaterial(**SOFT, damping=0.0)
    pc = (0.5013, 0.3 + 0.005 + 0.5 * SOFT["thickness"] + MARGIN + 2e-4, 0.4991)
    sheet = ShellMesh.rectangle(center=(0.5, 0.3, 0.5), size=(0.04, 0.04), res=(5, 5), normal="y")
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3, substeps_per_step=1, checkpoint_every=16, gravity=(0, 0, 0))
    scene.add_tool(ps.BoxTool(position=(pc[0], pc[1] + 0.007, pc[2]), half_extents=(0.012, 0.002, 0.012)))
    gel = ps.flat_pad(center=pc, size=(0.02, 0.02), thickness=0.01, resolution=(2, 2, 2), back="top")
    scene.add_fem(ps.FEMBody(gel, E=5e4, nu=0.3, density=1000.0, mount=0))
    scene.add_shell(ShellBody(sheet, mat, velocity=(0.0, 0.1, 0.0), pad_friction=0.5))
    T = 12
    scene.build(max_steps=PSTEPS)  # the pad_scene's layout: its kernels, compiled once for both
    scene.partset.shell.set_newton(rtol=1e-13)
    scene.reset()
    m = scene.partset.shell.vertex_mass()
    p0 = (m[:, None] * scene.get_state()["shell.v"]).sum(0)
    free = _free_gel_nodes(scene)
    gel_impulse = np.zeros(3)
    fmax = 0.0
    for _ in range(T):
        scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)
        s = scene.get_state()
        gel_impulse += scene.dt * s["fem.f_contact"][free].sum(0)
        fmax = max(fmax, np.abs(s["shell.f_pad"].sum(0)).max())
    sheet_impulse = (m[:, None] * s["shell.v"]).sum(0) - p0
    pending = scene.dt * s["shell.f_pad"].sum(0) / scene.partset.shell.contact.relaxation
    assert fmax > 1e-3, "the sheet never pressed the pad"
    assert abs(sheet_impulse[1]) > 0.5 * np.abs(p0).max(), f"the sheet did not bounce: {sheet_impulse}, {p0}"
    assert np.abs(gel_impulse + pending + sheet_impulse).max() <= 1e-9 * np.abs(sheet_impulse).max(), (
        f"pad impulse {gel_impulse} + pending {pending} vs sheet impulse {sheet_impulse}")
    assert all(ok for ok, _res, _t in scene.partset.shell._status.values())
    del scene
    gc.collect()  # hands the compiled parts back to the pool for the pad_scene fixture


@pytest.fixture(scope="module")
def pad_scene():
    """A soft FEM pad (gel facing down, its back mounted on box tool 0) above a 5 x 5 sheet pinned at
    its edge, 0.1 mm from the sheet's contact zone; the action drives the mount down and sideways."""
    mat = ShellMaterial(**SOFT, damping=0.5)
    sheet = ShellMesh.rectangle(center=(0.5, 0.3, 0.5), size=(0.04, 0.04), res=(5, 5), normal="y")
    X = sheet.vertices
    edge = np.flatnonzero((np.abs(X[:, 0] - 0.5) > 0.019) | (np.abs(X[:, 2] - 0.5) > 0.019))
    scene = ps.Scene(dim=3, grid_res=32, dt=2e-3, substeps_per_step=PSUB, checkpoint_every=16)
    from physim.parts.shell import MARGIN
    # pad centre off the sheet's grid lines (closest-point regions; see the `pair` fixture)
    pc = (0.5013, 0.3 + 0.005 + 0.5 * SOFT["thickness"] + MARGIN + 1e-4, 0.4991)
    scene.add_tool(ps.BoxTool(position=(pc[0], pc[1] + 0.007, pc[2]), half_extents=(0.012, 0.002, 0.012)))
    gel = ps.flat_pad(center=pc, size=(0.02, 0.02), thickness=0.01, resolution=(2, 2, 2), back="top")
    scene.add_fem(ps.FEMBody(gel, E=5e4, nu=0.3, density=1000.0, mount=0))
    scene.add_shell(ShellBody(sheet, mat, pinned=edge, pad_friction=0.5))
    scene.build(max_steps=PSTEPS)
    scene.partset.shell.set_newton(rtol=1e-13)
    return scene


def _pad_actions(scene, down=-0.15, side=0.02):
    # 0.3 mm per substep (less than half the 0.75 mm contact zone: the gel is an obstacle that moves
    # between the shell's solves, so a faster pad could start a solve past a sheet vertex); 1.8 mm
    # down over the 3 steps, 1.7 mm into the contact zone
    a = np.zeros((PSTEPS, scene.action_dim))
    a[:, 1] = down
    a[:, 0] = side
    return a


def _pad_loss(scene, a, w):
    scene.reset()
    scene.forward(a, requires_grad=False)
    s = scene.get_state()
    return float(sum((w[k] * s[k]).sum() for k in w))


def test_fem_pad_presses_the_sheet_without_passing_through(pad_scene):
    """The pad's face ends below the sheet's rest plane (on average: the sheet's reaction dents it), the sheet
    under it is pushed down, and no sheet vertex comes nearer to the gel's surface triangles than half the
    thickness less 0.1 mm of penalty compression (contact_stiffness 1e7 Pa/m: the ~1 kPa this press needs
    sinks ~0.1 mm) or gets above its face."""
    scene = pad_scene
    scene.reset()
    scene.forward(_pad_actions(scene), requires_grad=False)
    s = scene.get_state()
    x, xf = s["shell.x"], s["fem.x"]
    faces = scene.partset.fem.faces.to_numpy()[: int(scene.partset.fem.n_faces[None])]
    nrm = np.cross(xf[faces[:, 1]] - xf[faces[:, 0]], xf[faces[:, 2]] - xf[faces[:, 0]])
    bottom = faces[nrm[:, 1] < -0.9 * np.linalg.norm(nrm, axis=1)]  # the gel's face (outward normal down)
    lo, hi = xf[:, [0, 2]].min(0), xf[:, [0, 2]].max(0)
    under = ((x[:, [0, 2]] > lo) & (x[:, [0, 2]] < hi)).all(1)
    assert under.sum() >= 4
    assert xf[bottom, 1].mean() < 0.3 - 5e-4, "the pad did not press the sheet"
    assert x[under, 1].max() < 0.3 - 2e-4, "the sheet under the pad was not pushed down"
    d = min_distance(x, xf, faces)
    assert d > 0.5 * SOFT["thickness"] - 1e-4, f"a sheet vertex is {d:.3g} m from the gel's surface"
    assert (x[under, 1] < xf[bottom, 1].max()).all(), "a sheet vertex is above the pad's face"
    assert all(ok for ok, _res, _t in scene.partset.shell._status.values())


def test_fem_pad_action_and_friction_gradients(pad_scene):
    """Through the pad: d loss / d the mount's velocity (tools -> FEM kinematic nodes -> the gel's
    explicit steps -> its surface as the sheet's obstacle -> the implicit shell steps) and
    d loss / d shell.pad_friction, against central differences."""
    scene = pad_scene
    a = _pad_actions(scene)
    rng = np.random.default_rng(3)
    st = scene.get_state()
    w = {"shell.x": rng.normal(size=st["shell.x"].shape), "shell.v": rng.normal(size=st["shell.v"].shape)}
    scene.reset()
    scene.forward(a)
    g = scene.backward(dict(w))
    fd, ad = [], []
    for t, col in ((0, 1), (2, 1), (1, 0), (2, 2)):
        def f(e, t=t, col=col):
            b = a.copy()
            b[t, col] += e
            return _pad_loss(scene, b, w)
        fd.append(central_difference(f, 1e-5))
        ad.append(g.actions[t, col])
    mu = scene.get_param("shell.pad_friction", 0)

    def fmu(e):
        scene.set_param("shell.pad_friction", mu + e, row=0)
        return _pad_loss(scene, a, w)
    try:
        fd.append(central_difference(fmu, 1e-4 * mu))
    finally:
        scene.set_param("shell.pad_friction", mu, row=0)
    ad.append(g.params["shell.pad_friction"][0])
    assert_close(fd, ad, "d loss / d pad mount actions and shell.pad_friction")


def test_pressed_pad_is_dented_by_the_sheets_reaction(pad_scene):
    """The pad pressed 1.7 mm into the pinned sheet and held there: the sheet's reaction dents the gel (its face
    moves up against the mount), and at rest the dent is the static one of that force: on every free gel node
    the elastic force of the dented gel (``FEMPart.nodal_forces``: the constitutive model's, independent of
    the contact code), the reaction the node receives (``fem.f_contact``) and its weight sum to its mass times
    its acceleration (from the velocity change over one more step). Friction off: with it, the lagged
    coupling keeps the gel's surface jittering sideways (shell_contact's docstring); without it the gel
    settles to |v| < 1e-3 m/s within 12 steps, leaving a residual of ~2e-4 of the total force (measured),
    hence 1e-3. Without the reaction (the one-way coupling) the elastic force at the mount-held shape is 0
    and every check fails."""
    scene = pad_scene
    beta, mu = scene.get_param("fem.beta", 0), scene.get_param("shell.pad_friction", 0)
    scene.set_param("fem.beta", 5e-4, row=0)
    scene.set_param("shell.pad_friction", 0.0, row=0)
    try:
        scene.reset()
        a = _pad_actions(scene)
        scene.forward(a, requires_grad=False)
        hold = np.zeros_like(a)
        for _ in range(4):
            scene.forward(hold, requires_grad=False)
        s = scene.get_state()
        fem = scene.partset.fem
        free = _free_gel_nodes(scene)
        # the face's rise relative to the rest shape carried by the mount (a translation)
        rigid = scene.initial_state()["fem.x"] + (s["tools.pos"][0] - scene.initial_state()["tools.pos"][0])
        dent = float((s["fem.x"][free, 1] - rigid[free, 1]).max())
        f_int = fem.nodal_forces(scene._slot)[free]
        fc = s["fem.f_contact"][free]
        m = fem.node_mass()[free]
        g = np.asarray(scene.gravity, np.float64)
        s1 = s["fem.v"][free]
        scene.forward(hold[:1], requires_grad=False)
        acc = (scene.get_state()["fem.v"][free] - s1) / (PSUB * scene.dt)
    finally:
        scene.set_param("fem.beta", beta, row=0)
        scene.set_param("shell.pad_friction", mu, row=0)
    total = np.abs(fc.sum(0)).max()
    assert total > 0.05, f"the pad feels {total:.3g} N from the sheet"
    resid = f_int + fc + m[:, None] * g - m[:, None] * acc
    assert np.abs(resid).max() <= 1e-3 * total, f"force balance off by {np.abs(resid).max():.3g} N of {total:.3g} N"
    assert np.abs(f_int).sum() > 0.5 * np.abs(fc).sum(), "the gel is not dented"
    assert dent > 1e-5, f"the gel's face moved {dent:.3g} m against its mount"


def test_gel_gradients_through_the_reaction(pad_scene):
    """A loss on the gel's nodes (fem.x, fem.v at the end) reaches the sheet only through the reaction (the
    sheet's contact force on the gel, from the first substep on): d loss / d the sheet's initial positions
    and velocities of vertices under the pad, and d loss / d shell.pad_friction, against central differences
    (f64), with reverse mode checkpointed every step. h = 1e-8 m on positions as in the shell-only check
    (friction's stick band is 2 um wide)."""
    scene = pad_scene
    a = _pad_actions(scene)
    rng = np.random.default_rng(5)
    st = scene.get_state()
    w = {"fem.x": rng.normal(size=st["fem.x"].shape), "fem.v": 1e-3 * rng.normal(size=st["fem.v"].shape)}

    def loss(initial=None):
        scene.reset(initial)
        scene.forward(a, requires_grad=False)
        s = scene.get_state()
        return float(sum((w[k] * s[k]).sum() for k in w))

    # reverse mode in chunks of one step (2 substeps): the reaction of a chunk's last substep acts in the next
    # chunk's first, through the checkpointed slot state shell.f_pad and its gradient
    scene.set_checkpoint_every(PSUB)
    try:
        scene.reset()
        scene.forward(a)
        g = scene.backward(dict(w))
    finally:
        scene.set_checkpoint_every(16)
    base = scene.initial_state()
    x0 = base["shell.x"]
    under = np.flatnonzero((np.abs(x0[:, 0] - 0.5) < 0.011) & (np.abs(x0[:, 2] - 0.5) < 0.011))
    fd, ad = [], []
    for name, h in (("shell.x", 1e-8), ("shell.v", 1e-5)):
        for i in under[:2]:
            for d in (0, 1):
                def f(e, i=i, d=d, name=name):
                    arr = base[name].copy()
                    arr[i, d] += e
                    return loss({name: arr})
                fd.append(central_difference(f, h))
                ad.append(g.initial[name][i, d])
    mu = scene.get_param("shell.pad_friction", 0)

    def fmu(e):
        scene.set_param("shell.pad_friction", mu + e, row=0)
        return loss()
    try:
        fd.append(central_difference(fmu, 1e-4 * mu))
    finally:
        scene.set_param("shell.pad_friction", mu, row=0)
    ad.append(g.params["shell.pad_friction"][0])
    assert np.abs(fd).max() > 0, "the loss on the gel does not depend on the sheet"
    assert_close(fd, ad, "d loss(fem.x, fem.v) / d initial shell.x, shell.v and shell.pad_friction via the reaction")


def test_bad_pad_relaxation_is_a_clear_error(pad_scene):
    shell = pad_scene.partset.shell
    for bad in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="pad relaxation must be in"):
            shell.set_pad_relaxation(bad)
    assert shell.contact.relaxation == 0.5

"""The tetrahedral FEM part: constitutive laws, conservation, gradients, meshes, bad input.

Every dynamic test builds the same layout (so the kernels compile once per session): two
2 x 2 x 1 cm pads of 4 x 2 x 4 cubic cells (75 nodes, 192 Kuhn tets each), body 0 stable
neo-Hookean, body 1 fixed corotated, two tools (tool 0: a box the first pad's back can be
mounted on; tool 1: a sphere indenter), dt = 1e-4 s, which is above the pads' explicit limit
(6.97e-5 s at E = 100 kPa, nu = 0.4, 1000 kg/m^3), so the part sub-cycles 2 steps per
substep in every test (the reverse mode included). Scenes are built after ``gc.collect()``
so the previous one releases its compiled parts.

Gradients are compared with central finite differences in f64 entry by entry where
max(|fd|, |analytic|) exceeds ``FLOOR`` times the largest entry.
"""

import gc
import warnings

import numpy as np
import pytest
import scipy.linalg
from gradcheck import chunked_and_full

import physim as ps
from physim.meshes import quality
from physim.parts.fem import Subcycling, lame

pytestmark = pytest.mark.filterwarnings("ignore::physim.parts.fem.Subcycling")

FLOOR = 1e-4
#: round-off in the FD tests' loss, relative to a unit perturbation: positions near 0.3 m carry
#: ~3e-17 m of round-off each, ~450 of them weighted ~1 and amplified ~10x by 24 stiff sub-steps
#: (measured: central differences of the action gradient drift by 3e-9 at h = 1e-6, 3e-10 at
#: h = 1e-5); a central difference with step h is off by up to LOSS_NOISE / h
LOSS_NOISE = 1e-14
DT = 1e-4
E0, NU0, RHO0 = 1e5, 0.4, 1000.0
CENTERS = [(0.35, 0.3, 0.5), (0.65, 0.3, 0.5)]
MODELS = ["stable_neohookean", "corotated"]
FAR = dict(box=(0.5, 0.8, 0.5), sphere=(0.5, 0.6, 0.5))


def pad(i, centers=CENTERS):
    return ps.flat_pad(center=centers[i], size=(0.02, 0.02), thickness=0.01, resolution=(4, 2, 4))


def fem_scene(*, mount=0, fixed=(None, None), gravity=(0.0, -9.8, 0.0), substeps=4, checkpoint_every=8,
              box=(0.35, 0.29, 0.5), sphere=(0.353, 0.3165, 0.497), softness=0.0, E=(E0, E0), nu=(NU0, NU0),
              alpha=(0.0, 0.0), beta=(0.0, 0.0), subcycle=True, centers=CENTERS):
    """The shared layout (see the module docstring). ``mount``: tool of body 0's back (None:
    pinned); ``fixed[i]``: body i's kinematic nodes (None: its back; [] free); ``box`` and
    ``sphere``: the tools' positions (``FAR`` for tests without contact); ``centers``: the pads'."""
    gc.collect()
    scene = ps.Scene(dim=3, grid_res=32, dt=DT, substeps_per_step=substeps, gravity=gravity,
                     checkpoint_every=checkpoint_every)
    scene.add_tool(ps.BoxTool(position=box, half_extents=(0.015, 0.005, 0.015)))
    scene.add_tool(ps.SphereTool(position=sphere, radius=0.01, softness=softness, friction=0.3))
    for i in range(2):
        scene.add_fem(ps.FEMBody(pad(i, centers), E=E[i], nu=nu[i], density=RHO0, model=MODELS[i], alpha=alpha[i],
                                 beta=beta[i], fixed=fixed[i], mount=mount if i == 0 else None), subcycle=subcycle)
    return scene.build(max_steps=8)


def loss_of(state, weights, ref=None):
    """sum(w * state), less sum(w * ref) (a reference state near the result: central differences
    of a loss near zero lose no digits to the loss's size)."""
    ref = ref or {}
    return sum(float((w * (state[k] - ref.get(k, 0.0))).sum()) for k, w in weights.items())


def final_loss(scene, actions, weights, initial=None, ref=None):
    scene.reset(initial)
    scene.forward(actions, requires_grad=False)
    return loss_of(scene.get_state(), weights, ref)


def fd(f, h):
    return (f(h) - f(-h)) / (2 * h)


def assert_close(fd_vals, ad_vals, what, rtol, atol=0.0):
    """Entries where max(|fd|, |ad|) > FLOOR * max agree to ``rtol`` relative, plus ``atol``
    (the finite differences' round-off: see :data:`LOSS_NOISE`)."""
    f, a = np.ravel(np.asarray(fd_vals, float)), np.ravel(np.asarray(ad_vals, float))
    scale = max(np.abs(f).max(), np.abs(a).max())
    assert scale > 0, f"{what}: gradient identically zero (vacuous check)"
    big = np.maximum(np.abs(f), np.abs(a))
    mask = big > FLOOR * scale
    err = (np.maximum(np.abs(f - a) - atol, 0.0)[mask] / big[mask]).max()
    assert err < rtol, f"{what}: max relative error {err:.2e} (tol {rtol:g}, atol {atol:g})\nfd={f}\nad={a}"


def run(scene, steps, observe, actions=None):
    """``steps`` steps in forwards of at most 8 (one action row repeated); observed series."""
    row = np.zeros((1, scene.action_dim)) if actions is None else np.asarray(actions, float).reshape(1, -1)
    series = {name: [scene.get_state()[name]] for name in observe}
    done = 0
    while done < steps:
        k = min(8, steps - done)
        obs = scene.forward(np.repeat(row, k, axis=0), requires_grad=False, observe=observe)
        for name in observe:
            series[name].extend(obs[name][1:])
        done += k
    return {name: np.stack(v) for name, v in series.items()}


# ------------------------------------------------------------------ numpy reference
def cof(F):
    return np.linalg.det(F) * np.linalg.inv(F).T


def psi_np(model, F, mu, lam):
    J, Ic = np.linalg.det(F), (F * F).sum()
    if model == "stable_neohookean":
        m, la = 4 / 3 * mu, lam + 5 / 6 * mu
        a = 1 + 0.75 * m / la
        return (m / 2 * (Ic - 3) + la / 2 * (J - a) ** 2 - m / 2 * np.log(Ic + 1)
                - (la / 2 * (1 - a) ** 2 - m / 2 * np.log(4)))
    R = scipy.linalg.polar(F)[0]
    return mu * ((F - R) ** 2).sum() + lam / 2 * (J - 1) ** 2


def P_np(model, F, mu, lam):
    J, Ic = np.linalg.det(F), (F * F).sum()
    if model == "stable_neohookean":
        m, la = 4 / 3 * mu, lam + 5 / 6 * mu
        a = 1 + 0.75 * m / la
        return m * (1 - 1 / (Ic + 1)) * F + la * (J - a) * cof(F)
    R = scipy.linalg.polar(F)[0]
    return 2 * mu * (F - R) + lam * (J - 1) * cof(F)


@pytest.mark.parametrize("model", MODELS)
def test_stress_is_the_energy_gradient_and_linearizes_to_hooke(model):
    """P(F) is dPsi/dF (central differences, h = 1e-6: error ~h^2 |Psi'''| ~1e-12 against
    entries ~0.1 E; tol 1e-7); P(I) = 0, Psi(I) = 0; at strain 1e-6 P equals the linear
    stress mu (H + H^T) + lam tr(H) I of (E, nu) to 1e-5 relative (the O(|H|^2) remainder
    is ~1e-6 of it): the stable neo-Hookean reparametrization mu' = 4/3 mu, lam' = lam + 5/6 mu."""
    rng = np.random.default_rng(0)
    mu, lam = lame(E0, NU0)
    F = np.eye(3) + 0.3 * rng.normal(size=(3, 3))
    assert np.linalg.det(F) > 0
    num = np.zeros((3, 3))
    for idx in np.ndindex(3, 3):
        d = np.zeros((3, 3))
        d[idx] = 1e-6
        num[idx] = (psi_np(model, F + d, mu, lam) - psi_np(model, F - d, mu, lam)) / 2e-6
    P = P_np(model, F, mu, lam)
    assert np.abs(num - P).max() < 1e-7 * np.abs(P).max()
    assert np.abs(P_np(model, np.eye(3), mu, lam)).max() < 1e-9 * E0
    assert abs(psi_np(model, np.eye(3), mu, lam)) < 1e-9 * E0
    H = 1e-6 * rng.normal(size=(3, 3))
    hooke = mu * (H + H.T) + lam * np.trace(H) * np.eye(3)
    assert np.abs(P_np(model, np.eye(3) + H, mu, lam) - hooke).max() < 1e-5 * np.abs(hooke).max()


# ------------------------------------------------------------------ patch test
def boundary_force(mesh, P):
    """-sum over the boundary faces at each node of P N A / 3 (reference normals and areas)."""
    out = np.zeros((mesh.n_vertices, 3))
    x = mesh.vertices
    for f in mesh.surface_faces():
        nA = 0.5 * np.cross(x[f[1]] - x[f[0]], x[f[2]] - x[f[0]])  # outward normal times area
        for i in f:
            out[i] -= P @ nA / 3.0
    return out


def test_patch_test_uniform_strain_gives_uniform_stress():
    """Both pads deformed by one affine map x = A X + b (and moving with a uniform velocity
    gradient): every interior node's net force vanishes and every boundary node's equals
    -P N A / 3 summed over its boundary faces, P the analytic first Piola stress (elastic, and
    elastic + the damping stress A beta (2 mu Edot + lam tr Edot I), Edot = sym(A^T Adot)), to
    1e-9 of the largest force (round-off of sums of ~10 tet forces); the kernel's elastic
    energy is V Psi(A) to 1e-10."""
    scene = fem_scene(fixed=([], []), mount=None, **FAR)
    fem = scene.partset.fem
    rng = np.random.default_rng(1)
    A = np.eye(3) + 0.15 * rng.normal(size=(3, 3))
    Adot = 5.0 * rng.normal(size=(3, 3))
    mu, lam = lame(E0, NU0)
    meshes = [pad(0), pad(1)]
    X = np.concatenate([m.vertices for m in meshes])
    x = X @ A.T + 0.01
    for beta in (0.0, 2e-5):
        v = X @ Adot.T if beta else np.zeros_like(X)
        for row in range(2):
            scene.set_param("fem.beta", beta, row=row)
        scene.reset({"fem.x": x, "fem.v": v})
        f = fem.nodal_forces(0)
        start = 0
        for i, mesh in enumerate(meshes):
            P = P_np(MODELS[i], A, mu, lam)
            if beta:
                Edot = 0.5 * (A.T @ Adot + Adot.T @ A)
                P = P + A @ (beta * (2 * mu * Edot + lam * np.trace(Edot) * np.eye(3)))
            want = boundary_force(mesh, P)
            got = f[start: start + mesh.n_vertices]
            interior = np.abs(want).sum(axis=1) == 0
            assert interior.sum() == 9  # the 3 x 1 x 3 interior lattice nodes
            scale = np.abs(want).max()
            assert np.abs(got - want).max() < 1e-9 * scale, (i, beta, np.abs(got - want).max() / scale)
            start += mesh.n_vertices
    energy = fem.energy(0)["elastic"]
    V = sum(m.volumes().sum() for m in meshes)
    want = V / 2 * sum(psi_np(m, A, mu, lam) for m in MODELS)
    assert abs(energy / want - 1) < 1e-10


def test_forces_are_the_negative_energy_gradient():
    """At a random (non-affine) deformation, each node's elastic force is minus the derivative
    of the kernel's total elastic energy (central differences, h = 1e-7 m on 1 cm cells:
    truncation ~1e-9 relative; tol 1e-6 of the largest force)."""
    scene = fem_scene(fixed=([], []), mount=None, **FAR)
    fem = scene.partset.fem
    rng = np.random.default_rng(2)
    x0 = scene.initial_state()["fem.x"]
    x = x0 + 1e-3 * rng.normal(size=x0.shape)
    scene.reset({"fem.x": x})
    f = fem.nodal_forces(0)
    h = 1e-7
    for node in (0, 37, 80, 149):
        for d in range(3):
            e = np.zeros_like(x)
            e[node, d] = h
            scene.reset({"fem.x": x + e})
            up = fem.energy(0)["elastic"]
            scene.reset({"fem.x": x - e})
            down = fem.energy(0)["elastic"]
            assert abs(-(up - down) / (2 * h) - f[node, d]) < 1e-6 * np.abs(f).max(), (node, d)


# ------------------------------------------------------------------ conservation
def _spin(X, rng):
    """A rigid spin about the centroid plus a smooth stretch: low modes only."""
    c = X.mean(axis=0)
    w = rng.normal(size=3) * 2.0
    S = rng.normal(size=(3, 3)) * 2.0
    return np.cross(w, X - c) + (X - c) @ S.T + rng.normal(size=3) * 0.05


def test_free_bodies_conserve_linear_and_angular_momentum():
    """Both pads free, no gravity, spinning and stretching (body 1 with stiffness damping
    beta = 2e-5 s: P_v F^T = F S_v F^T is symmetric, so the damping conserves both):
    linear and angular momentum (about the origin) stay at their initial values to 1e-12
    relative over 32 substeps (64 sub-steps; measured 3e-16) while the pads deform (velocities
    change by 40 % of their largest)."""
    scene = fem_scene(fixed=([], []), mount=None, gravity=(0.0, 0.0, 0.0), **FAR, beta=(0.0, 2e-5))
    fem = scene.partset.fem
    rng = np.random.default_rng(3)
    X = scene.initial_state()["fem.x"]
    v0 = np.concatenate([_spin(X[:75], rng), _spin(X[75:], rng)])
    scene.set_initial_state({"fem.v": v0})
    obs = run(scene, 8, ["fem.x", "fem.v"])
    m = fem.node_mass()[:, None]
    for body in (slice(0, 75), slice(75, 150)):
        x, v = obs["fem.x"][:, body], obs["fem.v"][:, body]
        p = (m[body] * v).sum(axis=1)
        L = (m[body] * np.cross(x, v)).sum(axis=1)
        assert np.abs(p - p[0]).max() < 1e-12 * np.abs(m[body] * v0[body]).sum()
        assert np.abs(L - L[0]).max() < 1e-12 * np.abs(m[body] * np.cross(x[0], v0[body])).sum()
    strain = np.abs(obs["fem.v"][-1] - v0).max() / np.abs(v0).max()
    assert strain > 0.05  # the elastic forces did act


def test_undamped_free_body_conserves_energy():
    """No gravity, no damping, E lowered to 20 kPa (the part drops to 1 sub-step: the limit is
    1.56e-4 s), the pads set spinning and stretching (a smooth velocity field: the low modes,
    w ~ 1e3 rad/s): over 0.02 s (200 substeps, several periods of the lowest modes) the total
    energy stays within 1 % of its initial value and does not drift (the means over the first
    and last fifths agree to 1e-3). Symplectic Euler conserves a modified energy: the true one
    oscillates with relative amplitude ~w dt / 2 per mode (5 % at w = 1e3 rad/s, the stiffest
    excited), far less for the energy summed over the modes; measured 0.14 % peak, 3.5e-5 drift."""
    scene = fem_scene(fixed=([], []), mount=None, gravity=(0.0, 0.0, 0.0), **FAR)
    fem = scene.partset.fem
    for row in range(2):
        scene.set_param("fem.E", 2e4, row=row)
        scene.set_param("fem.contact_stiffness", 1e6, row=row)  # the tools are far: no contact
    assert fem.subcycles == 1
    rng = np.random.default_rng(4)
    X = scene.initial_state()["fem.x"]
    v0 = np.concatenate([_spin(X[:75], rng), _spin(X[75:], rng)]) * 0.5
    scene.set_initial_state({"fem.v": v0})
    total = []
    for _ in range(50):
        scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)
        e = fem.energy(scene._slot)
        total.append(e["elastic"] + e["kinetic"])
    e0 = 0.5 * (fem.node_mass()[:, None] * v0**2).sum()
    total = np.array(total)
    assert np.abs(total / e0 - 1).max() < 0.01, np.abs(total / e0 - 1).max()
    assert abs(total[-10:].mean() / total[:10].mean() - 1) < 1e-3


# ------------------------------------------------------------------ gradients
def _fd_setup():
    """Body 0 mounted on the moving box (tool 0) with a sphere (tool 1, penalty contact) 0.1 mm above
    its centre node moving down into it (contact from the 4th substep on), body 1 pinned at its
    back; damped (alpha, beta > 0), gravity on. (A soft sphere touches every node of the pad a
    little, many of them at the velocity projection's kinks: finite differences then need
    h < 1e-9 m.)"""
    scene = fem_scene(sphere=(0.351, 0.3151, 0.4995), alpha=(3.0, 5.0), beta=(1e-5, 2e-5))
    rng = np.random.default_rng(5)
    n = scene.partset.fem.rows[None]
    actions = np.zeros((3, scene.action_dim))
    actions[:, :6] = rng.normal(scale=0.05, size=(3, 6))  # the mount: translate and rotate
    actions[:, 6:12] = rng.normal(scale=0.05, size=(3, 6))
    actions[:, 7] -= 0.3  # the sphere moves down into the pad
    weights = {"fem.x": rng.normal(size=(n, 3)), "fem.v": 1e-3 * rng.normal(size=(n, 3)),
               "fem.f_contact": 1e-2 * rng.normal(size=(n, 3))}
    for row in range(2):
        scene.set_param("fem.contact_damping", 2e3, row=row)
    v0 = scene.initial_state()["fem.v"]
    v0[: 75] += rng.normal(scale=0.01, size=(75, 3))
    v0[pad(0).fixed] = 0.0
    scene.set_initial_state({"fem.v": v0})
    return scene, actions, weights, rng


def test_fem_gradients_match_finite_differences():
    """d loss / d (actions of the mount and the indenter, initial fem.x and fem.v, E, nu,
    density, alpha, beta, tool-contact stiffness and damping of both bodies, both tools'
    friction), loss linear in the final state (positions, velocities and the contact force
    field fem.f_contact) after 3 steps (12 substeps). f64, h = 1e-6 (actions, m/s), 1e-8 m and
    1e-6 m/s (initial state along random directions) or 1e-5 relative (parameters): small,
    because the penalty's onset (phi = 0) is a kink a node may cross for larger h; plus
    round-off LOSS_NOISE / h absolute (1e-8 for the actions: 2e-6 of the largest entry);
    tol 1e-5 (3e-5 for the parameters: measured 1.3e-5 for beta, whose h = 1e-10 s moves a
    node across the penalty's onset). (tools.friction row 0 is the mount's: the pad does not touch it, gradient 0.)"""
    scene, actions, weights, rng = _fd_setup()
    scene.reset()
    scene.forward(actions)
    ref = scene.get_state()
    g = scene.backward(weights)
    fd_a = np.zeros(actions.shape)
    for idx in np.ndindex(*actions.shape):
        if idx[1] >= 12:
            continue
        e = np.zeros(actions.shape)
        e[idx] = 1.0
        fd_a[idx] = fd(lambda h, e=e: final_loss(scene, actions + h * e, weights, ref=ref), 1e-6)
    assert_close(fd_a, g.actions, "actions", 1e-5, LOSS_NOISE / 1e-6)
    assert np.abs(g.actions[:, :6]).max() > 1e-3 * np.abs(g.actions).max()  # the mount's actions matter
    init = scene.initial_state()
    for name, h in (("fem.x", 1e-8), ("fem.v", 1e-6)):
        for _ in range(2):
            d = rng.normal(size=init[name].shape)
            num = fd(lambda e, d=d, name=name: final_loss(scene, actions, weights, {name: init[name] + e * d}, ref), h)
            assert_close(num, (g.initial[name] * d).sum(), f"initial {name}", 1e-5, LOSS_NOISE / h)
    for name in ("fem.E", "fem.nu", "fem.density", "fem.alpha", "fem.beta", "fem.contact_stiffness",
                 "fem.contact_damping", "tools.friction"):
        num = []
        for row in range(2):
            v = scene.get_param(name, row)
            h = 1e-5 * v

            def f(e, row=row, v=v, name=name):
                scene.set_param(name, v + e, row=row)
                return final_loss(scene, actions, weights, ref=ref)
            num.append(fd(f, h))
            scene.set_param(name, v, row=row)
        assert_close(num, g.params[name], name, 3e-5, LOSS_NOISE / h)


def test_checkpointed_equals_full_tape():
    """substeps_per_step = 3, checkpoint_every = 4: chunk boundaries fall inside steps and seeds
    at every step land in every chunk; the same gradients as one chunk (checkpoint_every 16),
    to 1e-9 relative (only the order of atomic sums may differ)."""
    scene = fem_scene(softness=400.0, substeps=3, alpha=(3.0, 0.0), beta=(1e-5, 0.0))
    rng = np.random.default_rng(6)
    n = scene.partset.fem.rows[None]
    actions = rng.normal(scale=0.05, size=(4, scene.action_dim))
    actions[:, 7] -= 0.3
    seeds = {s: {"fem.x": rng.normal(size=(n, 3)), "fem.v": 1e-3 * rng.normal(size=(n, 3))} for s in (1, 2, 3, 4)}
    chunked, full = chunked_and_full(scene, actions, seeds)
    assert_close(chunked.actions, full.actions, "actions", 1e-9)
    for name in ("fem.x", "fem.v", "tools.pos", "tools.rot"):
        assert_close(chunked.initial[name], full.initial[name], f"initial {name}", 1e-9)
    for name in ("fem.E", "fem.nu", "fem.density", "fem.alpha", "fem.beta"):
        assert_close(chunked.params[name], full.params[name], name, 1e-9)


# ------------------------------------------------------------------ contact, mount, sub-cycling
def test_sphere_indents_the_pad_where_it_presses():
    """A rigid sphere (r = 1 cm, penalty contact) moved 2 mm down into pad 0 (its back mounted on the
    still box), 3 mm off the pad's centre: the deepest top-surface node is the one under the
    sphere (measured: 1.43 mm), nodes over 1 cm away sink less than half as much (0.19 mm), no
    node is inside the sphere by more than 0.15 mm (the penalty's penetration, pressure over the
    default contact stiffness 5 E / h: measured 0.108 mm, 7.5 % of the sink, on this coarse
    5 mm pad where one node carries the sphere's load), and the back does not move."""
    top = 0.305
    c = np.array([0.353, top + 0.01 + 1e-4, 0.497])
    scene = fem_scene(sphere=tuple(c))
    x0 = scene.initial_state()["fem.x"][:75]
    act = np.zeros(scene.action_dim)
    act[7] = -0.1  # sphere down at 0.1 m/s for 50 steps of 0.4 ms: 2 mm
    obs = run(scene, 50, ["fem.x", "tools.pos"], act)
    x, sphere_c = obs["fem.x"][-1, :75], obs["tools.pos"][-1, 1]
    assert sphere_c[1] == pytest.approx(c[1] - 2e-3, abs=1e-12)
    surface = np.flatnonzero(np.isclose(x0[:, 1], top))
    sink = x0[surface, 1] - x[surface, 1]
    deepest = surface[np.argmax(sink)]
    xz = x0[surface][:, [0, 2]]
    nearest = surface[np.argmin(np.linalg.norm(xz - sphere_c[[0, 2]], axis=1))]
    assert deepest == nearest
    assert sink.max() > 1e-3
    far = np.linalg.norm(xz - sphere_c[[0, 2]], axis=1) > 0.01
    assert sink[far].max() < 0.5 * sink.max()
    assert np.linalg.norm(x - sphere_c, axis=1).min() > 0.01 - 1.5e-4
    back = pad(0).fixed
    assert np.abs(x[back] - x0[back]).max() < 1e-12


def test_mount_drives_the_kinematic_nodes():
    """The box (tool 0) translates and turns: pad 0's back nodes are R(q) R(q0)^T (X - p0) + p
    of the tool's pose to round-off at every step, and the pad (its free nodes) follows: their
    mean moved with the tool to 30 % after 3.2 ms (measured 19 %: inertia and the turn)."""
    scene = fem_scene(sphere=(0.5, 0.6, 0.5), gravity=(0.0, 0.0, 0.0))
    act = np.zeros(scene.action_dim)
    act[:3] = [0.2, 0.1, 0.0]
    act[3:6] = [0.0, 3.0, 1.0]  # rad/s
    obs = run(scene, 8, ["fem.x", "tools.pos", "tools.rot"], act)
    X = pad(0).vertices
    back = pad(0).fixed
    p0 = np.array([0.35, 0.29, 0.5])
    for s in range(len(obs["fem.x"])):
        w, qx, qy, qz = obs["tools.rot"][s, 0] / np.linalg.norm(obs["tools.rot"][s, 0])
        R = np.array([[1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - w * qz), 2 * (qx * qz + w * qy)],
                      [2 * (qx * qy + w * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - w * qx)],
                      [2 * (qx * qz - w * qy), 2 * (qy * qz + w * qx), 1 - 2 * (qx * qx + qy * qy)]])
        want = (X[back] - p0) @ R.T + obs["tools.pos"][s, 0]
        assert np.abs(obs["fem.x"][s, back] - want).max() < 1e-12
    free = np.setdiff1d(np.arange(75), back)
    moved = obs["fem.x"][-1, free].mean(axis=0) - X[free].mean(axis=0)
    shift = obs["tools.pos"][-1, 0] - p0
    assert np.linalg.norm(moved - shift) < 0.3 * np.linalg.norm(shift)  # it follows (rotation adds some)


def test_subcycling_is_announced_and_can_be_refused():
    """dt = 1e-4 s is above the pads' limit 4.09e-5 s (elasticity and the default tool contact
    stiffness 5 E / h = 2.45e8 Pa/m on the corner nodes): the part takes 3 sub-steps per substep
    and says so (a Subcycling warning and ``fem.subcycles``); with subcycle=False the same scene
    is refused with the limit and its cause."""
    scene = fem_scene()
    fem = scene.partset.fem
    assert fem.subcycles == 3
    assert fem.limits() == pytest.approx([4.09e-5, 4.09e-5], rel=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.warns(Subcycling, match=r"sub-cycles 3 explicit steps of 3.33e-05 s"):
            scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)
    del scene
    with pytest.raises(ValueError, match=r"dt=0.0001 is unstable: the fem part's stability limit is 4.09e-05 s "
                                         r"\(FEM body 0: P-wave speed 14.6 m/s .*E=1e\+05 Pa.*contact "
                                         r"stiffness 2.45e\+08 Pa/m.*sub-cycle"):
        fem_scene(subcycle=False)


# ------------------------------------------------------------------ meshes
def test_mesh_quality_of_the_procedural_gels():
    """flat_pad in cubic cells: Kuhn tets, dihedral angles exactly 45..90 degrees, volume ratio
    0.657; its volume and surface area are the box's. dome_gel (default: 1 -> 1.5 cm, 2 layers,
    a hemisphere): min dihedral angle 29.3 degrees, max 128.9, volume ratio >= 0.50 (bounds:
    25, 135, 0.4), volume within 2 % of the shell's (polygonal faces), and the split conforms:
    its boundary is the inner and outer caps and the rim, nothing inside."""
    m = ps.flat_pad(size=(0.03, 0.02), thickness=0.01, cell=0.005)
    q = quality(m)
    assert q["min_dihedral_deg"] == pytest.approx(45.0) and q["max_dihedral_deg"] == pytest.approx(90.0)
    assert q["min_volume_ratio"] == pytest.approx(0.6573, abs=1e-4)
    assert m.volumes().sum() == pytest.approx(0.03 * 0.02 * 0.01, rel=1e-12)
    x = m.vertices
    area = sum(0.5 * np.linalg.norm(np.cross(x[f[1]] - x[f[0]], x[f[2]] - x[f[0]])) for f in m.surface_faces())
    assert area == pytest.approx(2 * (0.03 * 0.02 + 0.03 * 0.01 + 0.02 * 0.01), rel=1e-12)
    assert np.allclose(x[m.fixed, 1], x[:, 1].min())
    d = ps.dome_gel(center=(0.5, 0.3, 0.5), inner_radius=0.01, outer_radius=0.015, layers=2)
    q = quality(d)
    assert q["min_dihedral_deg"] > 25 and q["max_dihedral_deg"] < 135 and q["min_volume_ratio"] > 0.4, q
    shell = 2 * np.pi / 3 * (0.015**3 - 0.01**3)
    assert d.volumes().sum() == pytest.approx(shell, rel=0.02)
    r = np.linalg.norm(d.vertices - [0.5, 0.3, 0.5], axis=1)
    assert np.allclose(r[d.fixed], 0.01)
    faces = d.surface_faces()
    fr = r[faces]
    on_caps = np.isclose(fr, 0.01).all(axis=1) | np.isclose(fr, 0.015).all(axis=1)
    on_rim = np.isclose(d.vertices[faces][..., 1], 0.3).all(axis=1)
    assert (on_caps | on_rim).all()
    for angle, layers in ((60.0, 3), (120.0, 1)):
        assert quality(ps.dome_gel(layers=layers, angle=angle))["min_dihedral_deg"] > 25


@pytest.mark.parametrize("ext", ["vtu", "msh"])
def test_meshio_round_trip(tmp_path, ext):
    """A dome written with meshio and read back: same vertices, tets and kinematic nodes."""
    d = ps.dome_gel(layers=1, angle=60.0)
    path = tmp_path / f"dome.{ext}"
    d.write(path)
    back = ps.read_tet_mesh(path)
    assert np.allclose(back.vertices, d.vertices, rtol=0, atol=1e-15)
    assert (back.tets == d.tets).all()
    assert (back.fixed == d.fixed).all()


# ------------------------------------------------------------------ bad input
V4 = np.array([[0.5, 0.3, 0.5], [0.51, 0.3, 0.5], [0.5, 0.31, 0.5], [0.5, 0.3, 0.51]])


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(vertices=np.zeros((4, 2)), tets=[[0, 1, 2, 3]]), r"vertices must have shape \(n, 3\) .*got shape \(4, 2\)"),
    (dict(vertices=np.where(np.arange(12).reshape(4, 3) == 4, np.nan, V4), tets=[[0, 1, 2, 3]]),
     r"vertices must be finite, got \[0.51, nan, 0.5\] at vertex 1"),
    (dict(vertices=V4, tets=[[0, 1, 2]]), r"tets must be an \(m, 4\) integer array"),
    (dict(vertices=V4, tets=[[0, 1, 2, 4]]), r"tet 0 \[0, 1, 2, 4\] indexes a vertex outside 0..3"),
    (dict(vertices=V4, tets=[[0, 1, 2, 2]]), r"tet 0 \[0, 1, 2, 2\] repeats a vertex"),
    (dict(vertices=V4, tets=[[0, 2, 1, 3]]), r"tet 0 \[0, 2, 1, 3\] is inverted \(signed volume -1.67e-07"),
    (dict(vertices=np.array([[0.5, 0.3, 0.5], [0.51, 0.3, 0.5], [0.5, 0.31, 0.5], [0.505, 0.305, 0.5]]),
          tets=[[0, 1, 2, 3]]), r"tet 0 \[0, 1, 2, 3\] is degenerate"),
    (dict(vertices=V4, tets=[[0, 1, 2, 3]], fixed=[7]), r"fixed: index 7 is outside 0..3"),
])
def test_bad_meshes_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ps.TetMesh(**kwargs)


def test_bad_bodies_and_scenes_are_refused(tmp_path):
    m = pad(0)
    with pytest.raises(ValueError, match=r"mount=0 but the body has no kinematic nodes"):
        ps.FEMBody(m, fixed=[], mount=0)
    with pytest.raises(ValueError, match=r"FEMBody.nu must be in \(-1, 0.5\), got 0.5"):
        ps.FEMBody(m, nu=0.5)
    with pytest.raises(ValueError, match=r"FEMBody.E must be in \(0, inf\], got -1.0"):
        ps.FEMBody(m, E=-1.0)
    with pytest.raises(ValueError, match=r"FEMBody.model must be one of .*got 'linear'"):
        ps.FEMBody(m, model="linear")
    with pytest.raises(TypeError, match=r"FEMBody.mesh must be a physim.TetMesh"):
        ps.FEMBody(m.vertices)
    with pytest.raises(ValueError, match=r"FEM bodies are 3D but the scene is 2D"):
        ps.Scene(dim=2).add_fem(ps.FEMBody(m))
    low = ps.flat_pad(center=(0.5, 0.05, 0.5), size=(0.02, 0.02), thickness=0.01)
    with pytest.raises(ValueError, match=r"FEM body 0: node 0 at \[0.49, 0.045, 0.49\] is outside the domain"):
        ps.Scene(dim=3).add_fem(ps.FEMBody(low))
    scene = ps.Scene(dim=3, grid_res=32, dt=DT)
    scene.add_fem(ps.FEMBody(m, mount=2))
    with pytest.raises(ValueError, match=r"FEM body 0: mount=2 but the scene has 0 tool\(s\)"):
        scene.build(max_steps=8)
    del scene
    scene = fem_scene()
    with pytest.raises(ValueError, match=r"fem.nu .* must be in \(-1, 0.5\), got 0.5"):
        scene.set_param("fem.nu", 0.5, row=1)
    with pytest.raises(ValueError, match=r"fem.density .* must be in \(0, inf\], got 0.0"):
        scene.set_param("fem.density", 0.0)
    # a parameter change that needs more sub-steps than the layout holds (8) is refused at forward
    scene.set_param("fem.E", 4e6)
    with pytest.raises(ValueError, match=r"needs 10 sub-steps per substep .* built for at most 8"):
        scene.forward(np.zeros((1, scene.action_dim)))
    path = tmp_path / "tri.vtu"
    import meshio

    meshio.write(path, meshio.Mesh(V4, [("triangle", np.array([[0, 1, 2]]))]))
    with pytest.raises(ValueError, match=r"no tetrahedra \(cell types \['triangle'\]\)"):
        ps.read_tet_mesh(path)


def test_crushed_gel_is_reported():
    """A node thrown into its pad at 100 m/s crosses its neighbours within a substep: the health
    check names the inverted tet as the cause (not a NaN several steps later)."""
    scene = fem_scene(fixed=([], []), mount=None, **FAR)
    v = scene.initial_state()["fem.v"]
    top_centre = int(np.argmin(np.linalg.norm(pad(0).vertices - [0.35, 0.305, 0.5], axis=1)))
    v[top_centre] = [0.0, -100.0, 0.0]
    scene.reset({"fem.v": v})
    with pytest.raises(ps.SimulationError, match=r"substep 1 .*fem part: a FEM tet inverted"):
        scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)


def test_dome_gel_pressed_by_a_plate():
    """A fingertip: a hemispherical dome gel (1 -> 1.5 cm, 1 layer, 60 degrees) cast on a rigid
    core (a sphere tool it is mounted on) pressed 1.5 mm into a flat plate (a box tool). Forward
    only. The apex flattens against the plate: the apex node ends within 0.25 mm of the plate's
    underside and no node is above it by more than that (the penalty's penetration: measured
    0.16 mm at the default contact stiffness), no tet inverts (the health check),
    and the core nodes stay on the core to round-off."""
    gc.collect()
    c = np.array([0.5, 0.3, 0.5])
    mesh = ps.dome_gel(center=c, inner_radius=0.01, outer_radius=0.015, layers=1, angle=60.0)
    scene = ps.Scene(dim=3, grid_res=32, dt=DT, substeps_per_step=4, gravity=(0.0, 0.0, 0.0))
    scene.add_tool(ps.SphereTool(position=c, radius=0.01))
    plate_y = c[1] + 0.015 - 1.5e-3  # the plate's underside at the end: 1.5 mm into the gel
    start = plate_y + 1.6e-3  # 0.1 mm above the apex
    scene.add_tool(ps.BoxTool(position=(0.5, start + 0.005, 0.5), half_extents=(0.02, 0.005, 0.02)))
    scene.add_fem(ps.FEMBody(mesh, E=5e4, nu=0.4, density=1000.0, beta=2e-5, mount=0))
    scene.build(max_steps=8)
    act = np.zeros(scene.action_dim)
    act[7] = -1.6e-3 / (20 * 4 * DT)  # the plate comes down 1.6 mm in 20 steps, then stays
    run(scene, 20, ["fem.x"], act)
    x = run(scene, 40, ["fem.x"])["fem.x"][-1]
    apex = int(np.argmax(mesh.vertices[:, 1]))
    assert x[apex, 1] == pytest.approx(plate_y, abs=2.5e-4)
    assert (x[:, 1] < plate_y + 2.5e-4).all()
    r = np.linalg.norm(x[mesh.fixed] - c, axis=1)
    assert np.allclose(r, 0.01, rtol=0, atol=1e-12)


def test_pads_dropped_on_the_floor_rest_on_it():
    """Both pads free, released 2 mm above the floor (scene.floor, MPM's bottom wall) with
    gravity and mass damping alpha = 60 1/s: no node ever goes below the floor (velocity-level
    contact: 1e-12 m), and after 0.1 s the bottom nodes lie on it within 0.05 mm (measured
    3e-8 m) and every node is slower than 5 mm/s (measured 3.4: the impact at 0.2 m/s rings
    on, decaying as exp(-alpha t / 2))."""
    floor = 3 / 32
    centers = [(0.35, floor + 0.007, 0.5), (0.65, floor + 0.007, 0.5)]
    scene = fem_scene(fixed=([], []), mount=None, centers=centers, alpha=(60.0, 60.0), **FAR)
    assert scene.floor == floor
    obs = run(scene, 250, ["fem.x", "fem.v"])
    y = obs["fem.x"][..., 1]
    assert y.min() >= floor - 1e-12, y.min() - floor
    bottom = np.concatenate([pad(0, centers).fixed, 75 + pad(1, centers).fixed])  # the -y faces
    assert np.abs(y[-1, bottom] - floor).max() < 5e-5
    assert np.abs(obs["fem.v"][-1]).max() < 5e-3

"""Batched worlds of coupled scenes: MPM material + mass-spring bodies through the coupler, and
FEM gels (alone with tools, and pressed into MPM material). Each world of a ``Scene(n_worlds=W)``
must behave exactly as a one-world scene with that world's initial state, actions and
parameters (states to 1e-12 of the unit domain, gradients to 1e-9 of their largest entry: only
the order of threaded sums may differ), and a loss summed over the worlds must have the
finite-difference gradient.

The worlds of a batch lie on top of each other in space (the same coordinates), so a coupler
or a contact that let one world's material see another world's nodes would change the states:
the equality with separate scenes is the test of the separation."""

import gc

import numpy as np
import pytest
from gradcheck import central_difference

import physim as ps
from physim import MassSpring

W = 3
STEPS = 4
DX = 1.0 / 32
#: the coupled scenes' MPM block (2D, ~100 particles) and the cable's height just above it
BLOCK = ps.Box(center=(0.5, 0.14), size=(0.2, 0.08))
TOP = float(BLOCK.sample(DX / 2)[:, 1].max())
#: per world: Young's modulus of the block, stiffness of the cable's first spring
E_WORLD = [1e3, 1.6e3, 0.7e3]
K_WORLD = [50.0, 80.0, 35.0]


def _coupled(n_worlds: int) -> ps.Scene:
    """A 6-node actuated cable falling onto an elastic block, and a sphere tool pressing the
    cable's end; 2D, grid 32, chunks of 8 substeps (two chunks per rollout)."""
    gc.collect()  # let a dropped scene release its compiled parts
    scene = ps.Scene(dim=2, grid_res=32, dt=2e-4, substeps_per_step=4, checkpoint_every=8, n_worlds=n_worlds)
    scene.add_body(BLOCK, ps.Elastic(E=1e3, nu=0.2, density=4.0))
    act = np.full(9, -1)
    act[[1, 6]] = 0
    y = TOP + 1.02 * DX
    scene.add_mass_spring(MassSpring.chain((0.42, y), (0.58, y), 6, mass=2e-3, stiffness=50.0, damping=0.01,
                                           actuator=act, velocity=(0.0, -0.5)))
    scene.add_tool(ps.SphereTool(position=(0.62, 0.3), radius=0.03, softness=50.0, friction=0.3))
    scene.couple(stiffness=1e3, damping=0.2, friction=0.3)
    return scene.build(max_steps=STEPS)


def _coupled_inputs():
    """Per world: actions (tool velocity + the cable's actuator), the cable's initial velocity
    and a shift of the block."""
    rng = np.random.default_rng(11)
    actions = rng.normal(0.0, 0.4, (STEPS, W, 4))
    actions[:, :, 1] -= 0.5  # the tool moves down onto the cable's end
    v_cable = np.array([[0.0, -0.5], [0.1, -0.8], [-0.1, -0.3]])
    shift = np.array([[0.0, 0.0], [0.004, 0.0], [-0.006, -0.002]])
    return actions, v_cable, shift


def _set_world_params(scene, worlds, per_world_materials, per_world_springs):
    for k, w in enumerate(worlds):
        kw = {} if scene.n_worlds == 1 else {"world": w}
        scene.set_material_param(0, "E", E_WORLD[w], **kw)
        scene.set_param("springs.stiffness", K_WORLD[w], row=k * per_world_springs)


@pytest.fixture(scope="module")
def coupled():
    scene = _coupled(W)
    n = scene.particles_per_world
    springs = scene.partset.springs.param_rows("stiffness") // W
    actions, v_cable, shift = _coupled_inputs()
    _set_world_params(scene, range(W), scene.materials_per_world, springs)
    init = scene.initial_state()
    x0 = init["mpm.x"].reshape(W, n, 2) + shift[:, None, :]
    sv = np.repeat(v_cable[:, None, :], 6, axis=1)
    scene.set_initial_state({"mpm.x": x0, "springs.v": sv})
    return scene, actions, x0, sv


def _coupled_weights(n):
    rng = np.random.default_rng(3)
    return {"springs.x": rng.normal(size=(W, 6, 2)), "springs.v": 0.01 * rng.normal(size=(W, 6, 2)),
            "mpm.x": rng.normal(size=(W, n, 2)), "mpm.v": 0.01 * rng.normal(size=(W, n, 2))}


def _flat(weights):
    return {k: v.reshape(-1, v.shape[-1]) for k, v in weights.items()}


def test_batched_coupler_matches_separate_scenes(coupled):
    scene, actions, x0, sv = coupled
    n = scene.particles_per_world
    weights = _coupled_weights(n)
    scene.reset()
    scene.forward(actions)
    assert int(scene.partset.coupler.n_pairs[None]) > 0  # the cables touch their blocks
    final = scene.per_world(scene.get_state())
    g = scene.backward(_flat(weights))
    g0 = scene.per_world(g.initial)
    springs = scene.partset.springs.param_rows("stiffness") // W
    M = scene.materials_per_world
    coupler_grad = 0.0
    one = _coupled(1)
    for w in range(W):
        _set_world_params(one, [w], M, springs)
        one.set_initial_state({"mpm.x": x0[w], "springs.v": sv[w]})
        one.forward(actions[:, w])
        s = one.get_state()
        for name in ("mpm.x", "mpm.v", "springs.x", "springs.v", "tools.pos"):
            np.testing.assert_allclose(final[name][w], s[name], rtol=0, atol=1e-12, err_msg=f"world {w}: {name}")
        gw = one.backward({k: v[w] for k, v in weights.items()})
        scale = np.abs(gw.actions).max()
        assert scale > 0
        np.testing.assert_allclose(g.actions[:, w], gw.actions, rtol=0, atol=1e-9 * scale,
                                   err_msg=f"world {w}: d loss / d actions")
        for name in ("mpm.x", "springs.x", "springs.v"):
            ref = gw.initial[name]
            np.testing.assert_allclose(g0[name][w], ref, rtol=0, atol=1e-9 * np.abs(ref).max(),
                                       err_msg=f"world {w}: d loss / d initial {name}")
        for name, rows in (("mpm.E", slice(w * M, (w + 1) * M)),
                           ("springs.stiffness", slice(w * springs, (w + 1) * springs))):
            ref = gw.params[name][: rows.stop - rows.start]
            np.testing.assert_allclose(g.params[name][rows], ref, rtol=0, atol=1e-9 * np.abs(ref).max(),
                                       err_msg=f"world {w}: d loss / d {name}")
        coupler_grad += gw.params["coupler.stiffness"][0]
    # the coupling law is one row shared by the worlds: its gradient is the worlds' sum
    assert abs(g.params["coupler.stiffness"][0] - coupler_grad) < 1e-9 * abs(coupler_grad)


def test_batched_coupler_loss_matches_finite_differences(coupled):
    """A loss summed over the worlds: d / d (one world's actuator signal, one world's spring
    stiffness), central differences in f64."""
    scene, actions, _x0, _sv = coupled
    weights = _flat(_coupled_weights(scene.particles_per_world))
    springs = scene.partset.springs.param_rows("stiffness") // W

    def loss(a=actions):
        scene.reset()
        scene.forward(a, requires_grad=False)
        s = scene.get_state()
        return sum(float((w * s[k]).sum()) for k, w in weights.items())

    scene.reset()
    scene.forward(actions)
    g = scene.backward(weights)
    for t, w, j in ((1, 1, 3), (2, 2, 0)):
        def shifted(e, t=t, w=w, j=j):
            a = actions.copy()
            a[t, w, j] += e
            return loss(a)
        fd = central_difference(shifted, 1e-5)
        assert abs(fd - g.actions[t, w, j]) < 1e-4 * max(abs(fd), 1e-3 * np.abs(g.actions).max()), \
            f"d loss / d action[{t}, {w}, {j}]: fd {fd} vs {g.actions[t, w, j]}"
    row = 2 * springs  # world 2's first spring
    k = K_WORLD[2]

    def shifted_k(e):
        scene.set_param("springs.stiffness", k * (1 + 1e-4 * e), row=row)
        try:
            return loss()
        finally:
            scene.set_param("springs.stiffness", k, row=row)
    fd = central_difference(shifted_k, 1.0) / (1e-4 * k)
    ad = g.params["springs.stiffness"][row]
    assert abs(ad) > 0
    assert abs(fd - ad) < 1e-4 * abs(fd), f"d loss / d springs.stiffness of world 2: fd {fd} vs {ad}"


# ---------------------------------------------------------------------------- FEM gels
#: per world: Young's modulus of the gel (Pa), friction of the indenter
FEM_E = [1e5, 1.3e5, 0.8e5]
FEM_FRICTION = [0.3, 0.6, 0.1]
PAD_TOP = 0.305


def _fem(n_worlds: int) -> ps.Scene:
    """A 2 x 2 x 1 cm pad (2 x 1 x 2 cells, 18 nodes) with its back mounted on a box tool, and a
    sphere indenter touching its top; dt = 1e-4 s, 2 substeps per step, chunks of 4."""
    gc.collect()
    scene = ps.Scene(dim=3, grid_res=16, dt=1e-4, substeps_per_step=2, checkpoint_every=4, n_worlds=n_worlds)
    scene.add_tool(ps.BoxTool(position=(0.5, 0.29, 0.5), half_extents=(0.015, 0.005, 0.015)))
    scene.add_tool(ps.SphereTool(position=(0.501, PAD_TOP + 0.01, 0.4995), radius=0.01, friction=0.3))
    mesh = ps.flat_pad(center=(0.5, 0.3, 0.5), size=(0.02, 0.02), thickness=0.01, resolution=(2, 1, 2))
    scene.add_fem(ps.FEMBody(mesh, E=1e5, nu=0.4, density=1000.0, alpha=2.0, mount=0))
    return scene.build(max_steps=STEPS)


def _fem_inputs():
    """Per world: the mount's and the indenter's velocities (the indenter pressed in) and the
    indenter's start (a little lower in world 2)."""
    rng = np.random.default_rng(5)
    actions = rng.normal(0.0, 0.05, (STEPS, W, 12))
    actions[:, :, 7] -= 0.8  # the sphere down at ~0.8 m/s
    actions[:, :, 3:6] *= 4.0  # the mount turns a little
    actions[:, :, 1] = 0.0  # and keeps its height
    sphere = np.array([[0.501, PAD_TOP + 0.01, 0.4995], [0.5, PAD_TOP + 0.0099, 0.5015],
                       [0.499, PAD_TOP + 0.01, 0.5]])
    return actions, sphere


def _fem_world(scene, w, k=None):
    row = 0 if k is None else k
    scene.set_param("fem.E", FEM_E[w], row=row)
    scene.set_param("tools.friction", FEM_FRICTION[w], row=2 * row + 1)


@pytest.mark.filterwarnings("ignore::physim.parts.fem.Subcycling")
def test_batched_fem_with_tools_matches_separate_scenes():
    scene = _fem(W)
    actions, sphere = _fem_inputs()
    for w in range(W):
        _fem_world(scene, w, w)
    pos = scene.initial_state()["tools.pos"].reshape(W, 2, 3)
    pos[:, 1] = sphere
    scene.set_initial_state({"tools.pos": pos})
    n = scene.partset.fem.rows[None] // W
    rng = np.random.default_rng(8)
    weights = {"fem.x": rng.normal(size=(W, n, 3)), "fem.v": 1e-3 * rng.normal(size=(W, n, 3)),
               "fem.f_contact": rng.normal(size=(W, n, 3))}
    scene.forward(actions)
    final = scene.per_world(scene.get_state())
    n_sub = scene.partset.fem.subcycles
    g = scene.backward(_flat(weights))
    g0 = scene.per_world(g.initial)
    # the loss summed over the worlds against central differences (f64): world 1's E, world 2's
    # indenter velocity; h small (1e-6 relative, 1e-6 m/s): the penalty's onset is a kink
    flat = _flat(weights)

    def loss(a=actions):
        scene.reset()
        scene.forward(a, requires_grad=False)
        st = scene.get_state()
        return sum(float((v * st[k]).sum()) for k, v in flat.items())

    def shifted_e(e):
        scene.set_param("fem.E", FEM_E[1] * (1 + 1e-6 * e), row=1)
        try:
            return loss()
        finally:
            scene.set_param("fem.E", FEM_E[1], row=1)

    fd = central_difference(shifted_e, 1.0) / (1e-6 * FEM_E[1])
    ad = g.params["fem.E"][1]
    assert abs(fd - ad) < 1e-4 * abs(fd), f"d loss / d fem.E of world 1: fd {fd} vs {ad}"

    def shifted_a(e):
        a = actions.copy()
        a[2, 2, 7] += e
        return loss(a)

    fd = central_difference(shifted_a, 1e-6)
    assert abs(fd - g.actions[2, 2, 7]) < 1e-4 * abs(fd), f"d loss / d action[2, 2, 7]: fd {fd} vs {g.actions[2, 2, 7]}"
    one = _fem(1)
    for w in range(W):
        _fem_world(one, w)
        assert one.partset.fem.subcycles == n_sub  # the batch sub-cycles as the stiffest world needs
        p1 = one.initial_state()["tools.pos"]
        p1[1] = sphere[w]
        one.set_initial_state({"tools.pos": p1})
        one.forward(actions[:, w])
        s = one.get_state()
        assert np.abs(s["fem.f_contact"]).max() > 0  # the indenter presses the gel
        for name in ("fem.x", "fem.v", "fem.f_contact", "tools.pos", "tools.rot"):
            scale = max(np.abs(s[name]).max(), 1.0) if name != "fem.f_contact" else np.abs(s[name]).max()
            np.testing.assert_allclose(final[name][w], s[name], rtol=0, atol=1e-12 * scale,
                                       err_msg=f"world {w}: {name}")
        gw = one.backward({k: v[w] for k, v in weights.items()})
        np.testing.assert_allclose(g.actions[:, w], gw.actions, rtol=0, atol=1e-9 * np.abs(gw.actions).max(),
                                   err_msg=f"world {w}: d loss / d actions")
        for name in ("fem.x", "fem.v", "tools.pos"):
            ref = gw.initial[name]
            np.testing.assert_allclose(g0[name][w], ref, rtol=0, atol=1e-9 * np.abs(ref).max(),
                                       err_msg=f"world {w}: d loss / d initial {name}")
        for name, rows in (("fem.E", slice(w, w + 1)), ("fem.alpha", slice(w, w + 1)),
                           ("tools.friction", slice(2 * w, 2 * w + 2))):
            ref = gw.params[name]
            np.testing.assert_allclose(g.params[name][rows], ref, rtol=0, atol=1e-9 * np.abs(ref).max(),
                                       err_msg=f"world {w}: d loss / d {name}")


#: the gel-on-material scene: a 4 x 3 x 4-particle elastic block on the floor of a 32^3 grid
#: (spacing 1/64 m), and a 4 x 4 x 1 cm pad facing down, its bottom 0.8 of the contact reach (half
#: a spacing) above the block's top particles, its back mounted on a box tool
SP = 1.0 / 64
GEL_BLOCK = ps.Box(center=(0.5, 0.095 + 1.5 * SP, 0.5), size=(4 * SP, 3 * SP, 4 * SP))
GEL_BOTTOM = 0.095 + 2.5 * SP + 0.49 * SP  # within the reach: in contact from the start
MPM_E = [2e4, 3e4, 1.4e4]
#: steps of the gel's rollout: the light surface nodes bounce off the block once, then press it
GEL_STEPS = 6


def _gel_on_material(n_worlds: int) -> ps.Scene:
    gc.collect()
    scene = ps.Scene(dim=3, grid_res=32, dt=1e-4, substeps_per_step=2, checkpoint_every=4, n_worlds=n_worlds)
    scene.add_tool(ps.BoxTool(position=(0.5, GEL_BOTTOM + 0.015, 0.5), half_extents=(0.025, 0.005, 0.025)))
    mesh = ps.flat_pad(center=(0.5, GEL_BOTTOM + 0.005, 0.5), size=(0.04, 0.04), thickness=0.01,
                       resolution=(2, 1, 2), back="top")
    scene.add_fem(ps.FEMBody(mesh, E=5e4, nu=0.4, density=1000.0, alpha=5.0, mount=0))
    scene.add_body(GEL_BLOCK, ps.Elastic(E=2e4, nu=0.3, density=1000.0))
    return scene.build(max_steps=GEL_STEPS)


@pytest.mark.filterwarnings("ignore::physim.parts.fem.Subcycling")
def test_batched_gel_on_mpm_material_matches_separate_scenes():
    """The tactile tasks' layout: a mounted gel pressed onto MPM material through the coupler.
    Per world: the mount's motion, the block's start (shifted sideways) and its E; the gel's
    surface must meet only its own world's particles. States only: what batching changes in
    this coupling is which (particle, triangle) pairs the integer launch ``build_face_pairs``
    lists, and reverse mode replays that same list through the same differentiated launches
    (whose batched reverse the tests above and tests/test_batched_worlds.py check); the
    3D MPM + FEM reverse kernels of two more layouts would add minutes of compilation."""
    scene = _gel_on_material(W)
    n = scene.particles_per_world
    rng = np.random.default_rng(9)
    actions = rng.normal(0.0, 0.05, (GEL_STEPS, W, 6))
    actions[:, :, 1] -= 1.0  # the mount (and the gel) down onto the block
    shift = np.array([[0.0, 0.0, 0.0], [0.004, 0.0, -0.003], [-0.005, 0.0, 0.002]])
    x0 = scene.initial_state()["mpm.x"].reshape(W, n, 3) + shift[:, None, :]
    scene.set_initial_state(x=x0)
    for w in range(W):
        scene.set_material_param(0, "E", MPM_E[w], world=w)
    scene.forward(actions, requires_grad=False)
    assert int(scene.partset.coupler.n_fpairs[None]) > 0  # the gels touch their blocks
    final = scene.per_world(scene.get_state())
    del scene
    one = _gel_on_material(1)
    for w in range(W):
        one.set_material_param(0, "E", MPM_E[w])
        one.set_initial_state(x=x0[w])
        one.forward(actions[:, w], requires_grad=False)
        s = one.get_state()
        assert np.abs(s["fem.f_contact"]).max() > 0
        for name in ("mpm.x", "mpm.v", "fem.x", "fem.v", "fem.f_contact", "tools.pos"):
            scale = max(np.abs(s[name]).max(), 1.0) if name != "fem.f_contact" else np.abs(s[name]).max()
            np.testing.assert_allclose(final[name][w], s[name], rtol=0, atol=1e-12 * scale,
                                       err_msg=f"world {w}: {name}")

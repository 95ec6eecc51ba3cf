"""Batched worlds: ``Scene(n_worlds=W)`` simulates W copies of a scene in the same kernel
launches. Each world must behave exactly as a one-world scene with that world's initial
state, actions, material parameters and tool friction (states and gradients to round-off),
and a loss summed over the worlds must have the finite-difference gradient."""

import numpy as np
import pytest
from gradcheck import assert_close, central_difference

import physim as ps

W = 3
STEPS = 6
#: per world: E of the elastic block, friction of the tool
E_WORLD = [5e3, 8e3, 3.5e3]
FRICTION_WORLD = [0.4, 0.1, 0.9]


def _scene(n_worlds: int, build: bool = True) -> ps.Scene:
    """Two materials (an elastic block, a plasticine block: SVD and return mapping) and a sphere
    tool, in 2D on a 32-cell grid, chunks of 8 substeps (several chunks per rollout)."""
    scene = ps.Scene(dim=2, grid_res=32, dt=2e-4, substeps_per_step=4, checkpoint_every=8, boundary="slip",
                     n_worlds=n_worlds)
    scene.add_body(ps.Box(center=[0.42, 0.3], size=[0.12, 0.12]), ps.Elastic(E=5e3, nu=0.3),
                   velocity=[0.2, 0.0], jitter=0.3, seed=1)
    scene.add_body(ps.Box(center=[0.6, 0.3], size=[0.1, 0.12]), ps.Plasticine(E=6e3, nu=0.3, yield_stress=150.0),
                   velocity=[-0.1, 0.0], jitter=0.3, seed=2)
    scene.add_tool(ps.SphereTool(position=[0.5, 0.45], radius=0.05, softness=50.0, friction=0.4))
    if build:
        scene.build(max_steps=8)
    return scene


def _inputs(n: int):
    """Different initial positions and actions per world (the tool pressed down into both blocks)."""
    rng = np.random.default_rng(7)
    actions = rng.normal(0.0, 0.3, (STEPS, W, 3))
    actions[:, :, 1] -= 0.4
    shift = np.array([[0.0, 0.0], [0.01, 0.004], [-0.008, 0.006]])
    return actions, shift


def _weights(n: int):
    rng = np.random.default_rng(3)
    return rng.normal(size=(W, n, 2)), rng.normal(size=(W, n, 2))


@pytest.fixture(scope="module")
def batched():
    scene = _scene(W)
    n = scene.particles_per_world
    actions, shift = _inputs(n)
    for w in range(W):
        scene.set_material_param(0, "E", E_WORLD[w], world=w)
        scene.set_tool_friction(0, FRICTION_WORLD[w], world=w)
    x0 = scene.initial_state()["mpm.x"].reshape(W, n, 2) + shift[:, None, :]
    scene.set_initial_state(x=x0)
    return scene, actions, x0


def test_batched_worlds_match_separate_scenes(batched):
    scene, actions, x0 = batched
    n = scene.particles_per_world
    wx, wv = _weights(n)
    scene.reset()
    scene.forward(actions)
    final = scene.per_world(scene.get_state())
    g = scene.backward({"mpm.x": wx.reshape(W * n, 2), "mpm.v": wv.reshape(W * n, 2)})
    assert g.actions.shape == (STEPS, W, 3)
    per_x0 = scene.per_world(g.initial)["mpm.x"]
    one = _scene(1)
    M = scene.materials_per_world
    for w in range(W):
        one.set_material_param(0, "E", E_WORLD[w])
        one.set_tool_friction(0, FRICTION_WORLD[w])
        one.set_initial_state(x=x0[w])
        one.forward(actions[:, w])
        s = one.get_state()
        # the same particles in the same order on their own grid tile: the same sums, bit for bit
        # up to the order of threaded sums (1e-12 of a unit domain)
        for name in ("mpm.x", "mpm.v", "mpm.F", "tools.pos"):
            np.testing.assert_allclose(final[name][w], s[name], rtol=0, atol=1e-12, err_msg=f"world {w}: {name}")
        gw = one.backward({"mpm.x": wx[w], "mpm.v": wv[w]})
        scale = np.abs(gw.actions).max()
        assert scale > 0
        np.testing.assert_allclose(g.actions[:, w], gw.actions, rtol=0, atol=1e-9 * scale,
                                   err_msg=f"world {w}: d loss / d actions")
        np.testing.assert_allclose(per_x0[w], gw.initial["mpm.x"], rtol=0,
                                   atol=1e-9 * np.abs(gw.initial["mpm.x"]).max(), err_msg=f"world {w}: d / d x0")
        for name, rows in (("mpm.E", slice(w * M, (w + 1) * M)), ("mpm.yield_stress", slice(w * M, (w + 1) * M)),
                           ("tools.friction", slice(w, w + 1))):
            ref = gw.params[name][: rows.stop - rows.start]
            np.testing.assert_allclose(g.params[name][rows], ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max(),
                                       err_msg=f"world {w}: d loss / d {name}")


def test_batched_loss_matches_finite_differences(batched):
    """A loss summed over the worlds: its gradient by each world's actions, E and friction."""
    scene, actions, _x0 = batched
    n = scene.particles_per_world
    wx, wv = _weights(n)
    wx, wv = wx.reshape(W * n, 2), wv.reshape(W * n, 2)

    def loss(a=actions):
        scene.reset()
        scene.forward(a, requires_grad=False)
        s = scene.get_state()
        return float((wx * s["mpm.x"]).sum() + (wv * s["mpm.v"]).sum())

    scene.reset()
    scene.forward(actions)
    g = scene.backward({"mpm.x": wx, "mpm.v": wv})
    entries = [(1, 0, 1), (3, 1, 0), (4, 2, 1), (2, 2, 2)]  # (step, world, column)
    fd = []
    for t, w, j in entries:
        def shifted(e, t=t, w=w, j=j):
            a = actions.copy()
            a[t, w, j] += e
            return loss(a)
        fd.append(central_difference(shifted, 1e-5))
    assert_close(fd, [g.actions[t, w, j] for t, w, j in entries], "batched d loss / d actions")
    M = scene.materials_per_world
    for name, world, rel in (("E", 2, 1e-4), ("friction", 1, 1e-4)):
        def shifted_param(e, name=name, world=world, rel=rel):
            if name == "E":
                scene.set_material_param(0, "E", E_WORLD[world] * (1 + e * rel), world=world)
            else:
                scene.set_tool_friction(0, FRICTION_WORLD[world] * (1 + e * rel), world=world)
            try:
                return loss()
            finally:
                if name == "E":
                    scene.set_material_param(0, "E", E_WORLD[world], world=world)
                else:
                    scene.set_tool_friction(0, FRICTION_WORLD[world], world=world)
        base = E_WORLD[world] if name == "E" else FRICTION_WORLD[world]
        fd_p = central_difference(shifted_param, 1.0) / (rel * base)
        ad_p = g.params["mpm.E"][world * M] if name == "E" else g.params["tools.friction"][world]
        assert abs(ad_p) > 0
        assert abs(fd_p - ad_p) < 1e-3 * abs(fd_p), f"d loss / d {name} of world {world}: fd {fd_p} vs {ad_p}"


def test_batched_tool_start_is_checked_per_world(batched):
    """A world whose material starts inside its own tool is refused (naming a particle of that
    world), and the scene keeps its previous initial state."""
    scene, _actions, x0 = batched
    n = scene.particles_per_world
    before = scene.initial_state()["tools.pos"].copy()
    pos = before.reshape(W, 1, 2).copy()
    pos[1, 0] = x0[1, : n // 2].mean(axis=0)  # onto world 1's elastic block
    with pytest.raises(ValueError, match="tool starts inside the material: particle (\\d+)") as err:
        scene.set_initial_state({"tools.pos": pos})
    particle = int(err.value.args[0].split("particle ")[1].split()[0])
    assert n <= particle < 2 * n  # one of world 1's particles
    np.testing.assert_array_equal(scene.initial_state()["tools.pos"], before)


def test_batched_bad_input_is_refused(batched):
    scene, actions, _x0 = batched
    for bad in (0, -2, 2.5, True, "3"):
        with pytest.raises(ValueError, match="n_worlds must be a positive integer"):
            ps.Scene(dim=2, grid_res=32, n_worlds=bad)
    with pytest.raises(ValueError, match=r"shape \(steps, 3, 3\)"):
        scene.forward(np.zeros((2, W + 1, 3)))
    with pytest.raises(ValueError, match="NaN or inf .* world 2"):
        a = actions.copy()
        a[0, 2, 0] = np.nan
        scene.forward(a)
    with pytest.raises(IndexError, match="world must be in"):
        scene.set_material_param(0, "E", 1e4, world=W)
    with pytest.raises(IndexError, match="material 2"):
        scene.set_material_param(2, "E", 1e4)
    with pytest.raises(IndexError, match="tool 1"):
        scene.set_tool_friction(1, 0.3)
    with pytest.raises(ValueError, match="not a multiple of the 3 worlds"):
        scene.per_world({"mpm.x": np.zeros((W * scene.particles_per_world + 1, 2))})
    smoke = _scene(2, build=False)
    smoke.add_smoke(ps.SmokeField(res=16))
    with pytest.raises(ps.scene.UnbatchableScene, match="a smoke field"):
        smoke.build(max_steps=4)


def test_batched_worlds_3d_forward_matches_separate_scenes():
    """3D: the tiles along the grid's first axis keep the worlds apart (walls, tools)."""
    def make(n_worlds):
        scene = ps.Scene(dim=3, grid_res=16, dt=4e-4, substeps_per_step=2, n_worlds=n_worlds)
        scene.add_body(ps.Box(center=[0.3, 0.3, 0.5], size=[0.2, 0.2, 0.2]), ps.Elastic(E=3e3, nu=0.3),
                       velocity=[-0.5, 0.0, 0.0], jitter=0.3, seed=1)
        scene.add_tool(ps.SphereTool(position=[0.5, 0.5, 0.5], radius=0.08, softness=50.0))
        return scene.build(max_steps=4)

    batched = make(2)
    n = batched.particles_per_world
    rng = np.random.default_rng(0)
    actions = rng.normal(0.0, 0.5, (4, 2, 6))
    # world 1 pushed to the high-x wall, world 0 into the low-x wall: each meets its own walls
    x0 = batched.initial_state()["mpm.x"].reshape(2, n, 3)
    v0 = np.zeros((2, n, 3))
    v0[0, :, 0], v0[1, :, 0] = -1.0, 1.0
    x0[1, :, 0] += 0.4
    batched.set_initial_state(x=x0, v=v0)
    batched.forward(actions, requires_grad=False)
    xb = batched.per_world(batched.get_state())["mpm.x"]
    one = make(1)
    for w in range(2):
        one.set_initial_state(x=x0[w], v=v0[w])
        one.forward(actions[:, w], requires_grad=False)
        np.testing.assert_allclose(xb[w], one.get_state()["mpm.x"], rtol=0, atol=1e-12)


def test_identify_from_several_trials_in_one_batched_scene():
    """System identification over W recorded trials (different pushes and starts) at once: the
    worlds share E, the loss reads all of them, and E is recovered from a 2x-off guess."""
    import torch

    from physim.optim import identify

    scene = _scene(W)
    n = scene.particles_per_world
    actions, shift = _inputs(n)
    x0 = scene.initial_state()["mpm.x"].reshape(W, n, 2) + shift[:, None, :]
    scene.set_initial_state(x=x0)
    truth = 6e3
    scene.set_material_param(0, "E", truth)  # every world: one physical block, three trials
    scene.forward(actions, requires_grad=False)
    observed = scene.get_state()["mpm.x"]
    scene.set_material_param(0, "E", truth / 2)
    scene.reset()
    obs = torch.as_tensor(observed)

    def loss(state):  # mean squared distance in units of (0.1 mm)^2: O(1) losses for Adam's epsilon
        return ((state["mpm.x"] - obs) ** 2).mean() / 1e-8

    res = identify(scene, actions, {"mpm.E": truth / 2}, loss=loss, iters=30, lr=0.15, progress=False)
    assert res.relative_error(truth) < 0.02, res.params
    # the identified value is set in every world
    assert all(scene.get_material_param(0, "E", world=w) == pytest.approx(res.value) for w in range(W))
    with pytest.raises(ValueError, match="2 rows per world"):
        identify(scene, actions, {"mpm.E[2]": 1e3}, observed=observed, iters=1, progress=False)


def test_batched_rigid_bodies_match_separate_scenes():
    """Rigid bodies (one per material row, coupled on the grid, with their wall contact) in a
    batch: each world's body moves as the same body alone in a one-world scene."""
    def make(n_worlds):
        scene = ps.Scene(dim=2, grid_res=32, dt=2e-4, substeps_per_step=4, n_worlds=n_worlds)
        scene.add_body(ps.Box(center=[0.4, 0.2], size=[0.2, 0.08]), ps.Elastic(E=4e3, nu=0.3), jitter=0.3, seed=1)
        scene.add_body(ps.Box(center=[0.4, 0.32], size=[0.08, 0.08]), ps.Rigid(density=1500.0),
                       velocity=[0.3, -0.2], seed=2)
        scene.add_tool(ps.SphereTool(position=[0.7, 0.3], radius=0.05, softness=50.0))
        return scene.build(max_steps=8)

    batched = make(2)
    n = batched.particles_per_world
    rng = np.random.default_rng(5)
    actions = rng.normal(0.0, 0.5, (8, 2, 3))
    v0 = batched.initial_state()["mpm.v"].reshape(2, n, 2)
    v0[1] *= -1.0  # world 1's bodies thrown the other way
    batched.set_initial_state(v=v0)
    batched.forward(actions, requires_grad=False)
    xb = batched.per_world(batched.get_state())["mpm.x"]
    one = make(1)
    for w in range(2):
        one.set_initial_state(v=v0[w])
        one.forward(actions[:, w], requires_grad=False)
        np.testing.assert_allclose(xb[w], one.get_state()["mpm.x"], rtol=0, atol=1e-12, err_msg=f"world {w}")
    assert np.abs(xb[0] - xb[1]).max() > 1e-3  # the worlds did differ


def test_batched_mass_spring_bodies_match_separate_scenes():
    """Mass-spring bodies with actuated springs and a tool, batched: states and gradients (actions,
    initial nodes, spring stiffness per world) equal one-world scenes'."""
    def make(n_worlds):
        scene = ps.Scene(dim=2, grid_res=32, dt=5e-4, substeps_per_step=4, checkpoint_every=8, n_worlds=n_worlds)
        body = ps.MassSpring.grid((0.3, 0.12), (0.5, 0.2), (3, 2), mass=2e-3, stiffness=80.0, damping=0.05)
        body.actuator[:3] = [0, 1, 0]
        scene.add_mass_spring(body)
        scene.add_tool(ps.SphereTool(position=(0.4, 0.3), radius=0.04, softness=50.0, friction=0.3))
        return scene.build(max_steps=8)

    batched = make(2)
    assert batched.world_action_dim == 3 + 2
    rng = np.random.default_rng(2)
    actions = rng.normal(0.0, 0.5, (6, 2, 5))
    actions[:, :, 1] -= 0.4  # the tool presses the body
    batched.set_param("springs.stiffness", 50.0, row=0)  # world 0's first spring only
    batched.forward(actions)
    xb = batched.per_world(batched.get_state())["springs.x"]
    seed = rng.normal(size=xb.shape)
    g = batched.backward({"springs.x": seed.reshape(-1, 2)})
    n_springs = batched.partset.springs.param_rows("stiffness") // 2
    one = make(1)
    for w in range(2):
        one.set_param("springs.stiffness", 50.0 if w == 0 else 80.0, row=0)
        one.reset()
        one.forward(actions[:, w])
        np.testing.assert_allclose(xb[w], one.get_state()["springs.x"], rtol=0, atol=1e-12)
        gw = one.backward({"springs.x": seed[w]})
        np.testing.assert_allclose(g.actions[:, w], gw.actions, rtol=0, atol=1e-9 * np.abs(gw.actions).max())
        np.testing.assert_allclose(batched.per_world(g.initial)["springs.x"][w], gw.initial["springs.x"], rtol=1e-9,
                                   atol=1e-12)
        ks = g.params["springs.stiffness"][w * n_springs:(w + 1) * n_springs]
        np.testing.assert_allclose(ks, gw.params["springs.stiffness"], rtol=1e-9, atol=1e-15)

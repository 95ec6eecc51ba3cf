"""The silent-wrong paths of issue 12: each used to give a wrong result (or accept a wrong
scene) without a word; each now raises a clear error or behaves as documented.

Every scene here has the layout of ``conftest.small_scene(2, ...)`` (grid 32, generic
kernels, one tool row, at most 256 particles and 4 materials), so the file compiles one 2D
layout (forward kernels, plus one reverse-mode scene for the two backward tests) and shares
it with the other 2D gradient tests.
"""

import numpy as np
import pytest
import torch
from conftest import small_scene

import physim as ps
import physim.torch as pst
from physim.parts.base import Param
from physim.rollout import GradientError, Gradients


def layout_scene(bodies, tool_position=(0.38, 0.7), **kw):
    """A scene with small_scene's layout: ``bodies`` is a list of (shape, material)."""
    scene = ps.Scene(dim=2, grid_res=32, dt=2e-4, substeps_per_step=4, checkpoint_every=8, specialize=False, **kw)
    for shape, material in bodies:
        scene.add_body(shape, material)
    scene.add_tool(ps.SphereTool(position=tool_position, radius=0.05, softness=50.0, friction=0.4))
    return scene.build(max_steps=8)


@pytest.fixture(scope="module")
def scene():
    return small_scene(2, ps.Elastic(E=2e3, nu=0.3))


# ---------------------------------------------------------------- 1. parameters set between forward and backward
@pytest.mark.parametrize("name, setter", [
    ("mpm.E", lambda s: s.set_material_param(0, "E", 2.5e3)),
    ("mpm.nu", lambda s: s.set_param("mpm.nu", 0.25)),
    ("mpm.density", lambda s: s.set_material_param(s.materials[0], "density", 1.5)),
    ("tools.friction", lambda s: s.set_tool_friction(0, 0.1)),
])
def test_a_parameter_set_between_forward_and_backward_is_refused_by_name(scene, name, setter):
    """The recorded rollout is of the old values; backward would replay it with the new ones.
    set_param discards the recording, and backward says which parameter did it."""
    old = scene.get_param(name)
    try:
        scene.reset()
        scene.forward(np.zeros((2, 3)))
        setter(scene)
        with pytest.raises(RuntimeError, match=rf"needs a forward.*set_param\('{name}'.*call forward again"):
            scene.backward(grad_x=np.ones((scene.n_particles, 2)))
    finally:
        scene.set_param(name, old)


# ---------------------------------------------------------------- 2. two torch rollouts before backward
def test_the_backward_of_a_superseded_torch_rollout_is_refused(scene):
    """Two rollouts on one scene: the scene holds only the second recording, so the first
    loss's backward would differentiate the second rollout. It raises instead, as after a
    plain forward or a step() in between; the current rollout's backward still works."""
    a1 = torch.zeros((2, 3), dtype=torch.float64, requires_grad=True)
    x1 = pst.rollout(scene, a1)
    a2 = torch.full((2, 3), 0.5, dtype=torch.float64, requires_grad=True)
    x2 = pst.rollout_state(scene, a2)["mpm.x"]
    with pytest.raises(RuntimeError, match=r"superseded"):
        x1.sum().backward()
    assert a1.grad is None
    x3 = pst.rollout(scene, a1)
    scene.forward(np.zeros((1, 3)))  # a plain forward supersedes it too
    with pytest.raises(RuntimeError, match="superseded"):
        x3.sum().backward()
    x4 = pst.rollout(scene, a1)
    scene.step(np.zeros(3))  # no recording left at all
    with pytest.raises(RuntimeError, match=r"no longer holds its recording \(dropped by step\(\)\)"):
        x4.sum().backward()
    x5 = pst.rollout(scene, a1)
    scene.forward(np.zeros((1, 3)), requires_grad=False)  # records nothing, keeps nothing
    with pytest.raises(RuntimeError, match=r"no longer holds .*requires_grad=False"):
        x5.sum().backward()
    x2 = pst.rollout_state(scene, a2)["mpm.x"]  # re-run: the current rollout differentiates
    x2[:, 0].sum().backward()
    assert a2.grad is not None and torch.isfinite(a2.grad).all()
    # the tool moves right under the first column (vx): pushing the block right moves x right
    assert float(a2.grad[:, 0].sum()) > 0


# ---------------------------------------------------------------- 3. equal-valued materials
def test_equal_valued_materials_stay_distinct_rows():
    """Two distinct but equal Elastic objects are two material rows (identity, not equality):
    setting the second's E must not change the first body's material."""
    a, b = ps.Elastic(E=2e3, nu=0.3), ps.Elastic(E=2e3, nu=0.3)
    assert a == b  # value equality of the dataclasses is kept
    s = layout_scene([(ps.Box(center=(0.35, 0.3), size=(0.08, 0.08)), a),
                      (ps.Box(center=(0.65, 0.3), size=(0.08, 0.08)), b),
                      (ps.Box(center=(0.5, 0.3), size=(0.08, 0.08)), a)])  # a again: its row
    assert len(s.materials) == 2 and s.materials[0] is a and s.materials[1] is b
    mats = s.particle_materials()
    n = s.bodies[1].count
    assert (mats[s.bodies[1].start: s.bodies[1].start + n] == 1).all()
    assert (np.delete(mats, np.arange(s.bodies[1].start, s.bodies[1].start + n)) == 0).all()
    s.set_material_param(b, "E", 3e3)
    assert s.get_material_param(a, "E") == 2e3 and s.get_material_param(b, "E") == 3e3
    assert s.get_param("mpm.E", row=0) == 2e3
    with pytest.raises(ValueError, match="not a material of this scene"):
        s.set_material_param(ps.Elastic(E=2e3, nu=0.3), "E", 1e3)


# ---------------------------------------------------------------- 4. density is a real parameter
def released_block(scene, F):
    """Mean |v| of the particles after one step (4 substeps, 0.8 ms) from rest, no gravity,
    with the initial deformation gradient ``F`` (the stress it holds drives the motion)."""
    n = scene.n_particles
    scene.set_initial_state({"mpm.F": np.broadcast_to(F, (n, 2, 2)), "mpm.v": np.zeros((n, 2))})
    scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)
    return scene.get_state()


def test_density_changes_the_simulation():
    """mpm.density is a real parameter. Dimensional similarity, exact for the discrete
    update (no gravity, no tool): four times the density with twice the substep gives each
    substep half the velocity change (dt f / m), the same displacement (dt v) and the same
    deformation update (dt C), so after one step the positions are those of density 1 at dt
    and the velocities are halved. Tolerance: round-off only. A density that were ignored
    would double the displacement instead."""
    import gc

    F = np.diag([0.95, 1.0])
    s = small_scene(2, ps.Elastic(E=2e3, nu=0.3), tool=False, gravity=[0.0, 0.0], velocity=[0.0, 0.0], dt=1e-4)
    ref = released_block(s, F)
    m1 = s.total_mass()
    del s
    gc.collect()  # the next scene reuses its compiled parts
    s = small_scene(2, ps.Elastic(E=2e3, nu=0.3), tool=False, gravity=[0.0, 0.0], velocity=[0.0, 0.0], dt=2e-4)
    s.set_material_param(0, "density", 4.0)
    assert s.total_mass() == pytest.approx(4 * m1, rel=1e-12)
    out = released_block(s, F)
    x0 = s.initial_state()["mpm.x"]
    moved = np.abs(ref["mpm.x"] - x0).max()
    assert moved > 1e-5  # the block does move (the compressed side springs back)
    np.testing.assert_allclose(out["mpm.x"] - x0, ref["mpm.x"] - x0, rtol=0, atol=1e-9 * moved)
    np.testing.assert_allclose(out["mpm.v"], 0.5 * ref["mpm.v"], rtol=0, atol=1e-9 * np.abs(ref["mpm.v"]).max())
    np.testing.assert_allclose(out["mpm.F"], ref["mpm.F"], rtol=0, atol=1e-12)


# ---------------------------------------------------------------- 5. overlapping bodies
def test_overlapping_bodies_with_offset_lattices_are_refused():
    """Each shape samples its own lattice: a body shifted by half a spacing in x and y has
    no particle within half a spacing of the other's (0.71 spacing away) but doubles the
    density where they overlap. Refused, in either order of adding; touching is fine."""
    s = ps.Scene(dim=2, grid_res=32)
    h = 0.5 * s.spacing
    s.add_body(ps.Box(center=(0.5, 0.3), size=(0.2, 0.2)), ps.Elastic())
    with pytest.raises(ValueError, match=r"body 1 .*overlaps body 0: \d+ of its particles lie inside"):
        # lower corner (0.4, 0.2) + 3.5 spacings: its lattice is body 0's shifted by (h, h)
        s.add_body(ps.Box(center=(0.45 + 7 * h, 0.25 + 7 * h), size=(0.1, 0.1)), ps.Elastic())
    s.add_body(ps.Box(center=(0.7 + h, 0.3 + h), size=(0.2 + 2 * h, 0.1)), ps.Elastic())  # touches body 0
    # a disk whose lattice is offset by half a spacing from the box's, then the box around it
    s2 = ps.Scene(dim=2, grid_res=32)
    r = 0.04
    s2.add_body(ps.Sphere(center=(0.4 + r + 9 * h, 0.2 + r + 9 * h), radius=r), ps.Fluid())
    with pytest.raises(ValueError, match=r"body 1 .*overlaps body 0: \d+ of (its|body 0.s) particles lie inside"):
        s2.add_body(ps.Box(center=(0.5, 0.3), size=(0.2, 0.2)), ps.Elastic())


# ---------------------------------------------------------------- 6. a tool inside material / outside the domain
def test_a_tool_outside_the_domain_or_inside_material_is_refused():
    s = ps.Scene(dim=2, grid_res=32, dt=2e-4, substeps_per_step=4, checkpoint_every=8, specialize=False)
    with pytest.raises(ValueError, match=r"tool 0 at \[1\.2, 0\.5\] is outside the simulation domain"):
        s.add_tool(ps.SphereTool(position=(1.2, 0.5), radius=0.05))
    with pytest.raises(ValueError, match=r"tool 0 at \[0\.5, -0\.1\] is outside"):
        s.add_tool(ps.BoxTool(position=(0.5, -0.1), half_extents=(0.1, 0.05)))
    s.add_body(ps.Box(center=(0.5, 0.3), size=(0.16, 0.12)), ps.Elastic())
    s.add_tool(ps.BoxTool(position=(0.5, 0.3), half_extents=(0.05, 0.04)))  # 0.04 deep in the block
    with pytest.raises(ValueError, match="a tool starts inside the material"):
        s.build(max_steps=8)


def test_set_initial_state_refuses_a_tool_start_inside_material_or_outside(scene):
    """The build's checks hold for a start pose set later; a refused one leaves the old."""
    start = scene.initial_state()["tools.pos"]
    for pos, match in (([[0.5, 0.3]], "a tool starts inside the material"),
                       ([[0.5, 1.3]], r"tool 0 at \[0\.5, 1\.3\] is outside the simulation domain")):
        with pytest.raises(ValueError, match=match):
            scene.set_initial_state({"tools.pos": np.array(pos)})
        np.testing.assert_array_equal(scene.initial_state()["tools.pos"], start)
        np.testing.assert_array_equal(scene.get_state()["tools.pos"], start)
    scene.set_initial_state({"tools.pos": start + [[0.0, 0.2]]})  # clear of the block: fine
    scene.set_initial_state({"tools.pos": start})


# ---------------------------------------------------------------- 7. nu and friction-angle ranges
def lateral_push(scene):
    """Mean y velocity of the upper half of the block minus the lower half's after it is
    released from F = diag(0.95, 1) (compressed in x only)."""
    s = released_block(scene, np.diag([0.95, 1.0]))
    x, v = s["mpm.x"], s["mpm.v"]
    up = x[:, 1] > np.median(x[:, 1])
    return v[up, 1].mean() - v[~up, 1].mean()


def test_an_auxetic_nu_is_accepted_and_behaves_auxetic():
    """nu in (-1, 0) is valid (auxetic). The Poisson effect: compressed in x with y free, a
    block with nu > 0 (lambda > 0) pushes outward in y, one with nu < 0 (lambda < 0) pulls
    inward, so the sign of the lateral response flips (a sign law: no tolerance needed)."""
    ps.Elastic(nu=-0.3)
    ps.Plasticine(nu=-0.99)
    s = small_scene(2, ps.Elastic(E=2e3, nu=0.3), tool=False, gravity=[0.0, 0.0], velocity=[0.0, 0.0])
    assert lateral_push(s) > 0
    s.set_material_param(0, "nu", -0.3)
    assert s.get_material_param(0, "nu") == -0.3
    assert lateral_push(s) < 0
    with pytest.raises(ValueError, match=r"nu.*\(-1, 0\.5\).*-1\.0"):
        s.set_material_param(0, "nu", -1.0)
    with pytest.raises(ValueError, match=r"nu.*\(-1, 0\.5\), got -1\.0"):
        ps.Elastic(nu=-1.0)


def test_a_friction_angle_outside_0_90_degrees_is_refused():
    ps.Sand(friction_angle=89.0)
    for bad in (90.0, 120.0, 0.0, -5.0):
        with pytest.raises(ValueError, match=rf"friction_angle must be in \(0, 90\) degrees, got {bad}"):
            ps.Sand(friction_angle=bad)
    s = small_scene(2, ps.Sand())
    for bad in (90.0, 0.0):
        with pytest.raises(ValueError, match=rf"friction_angle .*\(0, 90\), got {bad}"):
            s.set_material_param(0, "friction_angle", bad)
    s.set_material_param(0, "friction_angle", 45.0)
    assert s.get_material_param(0, "friction_angle") == pytest.approx(45.0, rel=1e-12)


# ---------------------------------------------------------------- 8. the time-step limit after build
def test_a_parameter_that_makes_dt_unstable_is_refused(scene):
    """dt = 2e-4 s on a 32-cell grid allows P-wave speeds up to 0.9 dx / dt = 140.6 m/s; with
    nu = 0.3 and density 1 that is E <= 140.6^2 (1 + nu)(1 - 2 nu) / (1 - nu) = 1.469e4 Pa
    (c^2 = E (1 - nu) / ((1 + nu)(1 - 2 nu) rho)). Above it, or a density that makes c too
    fast, is refused and leaves the parameter unchanged."""
    e_max = (0.9 / 32 / 2e-4) ** 2 * 1.3 * 0.4 / 0.7
    with pytest.raises(ValueError, match=r"mpm\.E=20000 .*dt=0\.0002 .*unstable.*<= 0\.9 \* dx / c"):
        scene.set_material_param(0, "E", 2e4)
    assert scene.get_material_param(0, "E") == 2e3
    with pytest.raises(ValueError, match=r"mpm\.density=0\.1 .*unstable"):
        scene.set_param("mpm.density", 0.1)
    assert scene.get_param("mpm.density") == 1.0
    with pytest.raises(ValueError, match=r"mpm\.nu=0\.49 .*unstable"):
        scene.set_param("mpm.nu", 0.49)  # c grows without bound as nu -> 0.5
    scene.set_material_param(0, "E", 0.99 * e_max)  # just below the limit: accepted
    scene.set_material_param(0, "E", 2e3)
    with pytest.raises(ValueError, match="unstable"):
        scene.set_material_param(0, "E", 1.01 * e_max)


# ---------------------------------------------------------------- 9. GradientError on parameter gradients
def test_a_non_finite_parameter_gradient_raises_naming_it():
    ok = {"mpm.E": np.array([1.0, 2.0]), "tools.friction": np.array([0.5])}
    g = Gradients(actions=np.zeros((2, 3)), initial={"mpm.x": np.zeros((4, 2))}, params=ok)
    g.check()
    for name, row in (("mpm.E", 1), ("tools.friction", 0)):
        bad = {k: v.copy() for k, v in ok.items()}
        bad[name][row] = np.nan if name == "mpm.E" else np.inf
        with pytest.raises(GradientError, match=rf"gradient of {name}\[{row}\] is (nan|inf)"):
            Gradients(actions=np.zeros((2, 3)), initial={}, params=bad).check()
    with pytest.raises(GradientError, match=r"initial state mpm\.x"):
        Gradients(actions=np.zeros((2, 3)), initial={"mpm.x": np.full((4, 2), np.nan)}).check()


def test_backward_checks_the_parameter_gradients(scene, monkeypatch):
    """A NaN in the friction gradient (injected where the gradients are read) raises."""
    real = Param.grad

    def poisoned(self):
        g = real(self)
        return np.full_like(g, np.nan) if self.name == "friction" else g

    monkeypatch.setattr(Param, "grad", poisoned)
    scene.reset()
    scene.forward(np.zeros((2, 3)))
    with pytest.raises(GradientError, match=r"tools\.friction\[0\]"):
        scene.backward(grad_x=np.ones((scene.n_particles, 2)))

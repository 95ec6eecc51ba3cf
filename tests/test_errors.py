"""Bad input gets a clear error naming the bad value; blow-ups say so."""

import numpy as np
import pytest
from conftest import small_scene

import physim as ps


@pytest.fixture(scope="module")
def scene():
    return small_scene(2, ps.Elastic(E=2e3, nu=0.3))


def test_wrong_action_shape(scene):
    with pytest.raises(ValueError, match=r"shape \(steps, 3\).*got \(4, 5\)"):
        scene.forward(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="exceed max_steps"):
        scene.forward(np.zeros((100, 3)))
    with pytest.raises(ValueError, match="one action row"):
        scene.step(np.zeros((2, 3)))


def test_nan_action_names_step_and_column(scene):
    a = np.zeros((4, 3))
    a[2, 1] = np.nan
    with pytest.raises(ValueError, match="step 2, column 1"):
        scene.forward(a)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ps.Elastic(E=-1.0), r"Elastic\.E must be > 0.*-1\.0"),
        (lambda: ps.Elastic(nu=0.5), r"nu .*\(-1, 0\.5\), got 0\.5"),
        (lambda: ps.Plasticine(nu=0.7), r"got 0\.7"),
        (lambda: ps.Plasticine(yield_stress=-3.0), r"yield_stress must be >= 0.*-3\.0"),
        (lambda: ps.Sand(friction_angle=95.0), r"friction_angle.*95"),
        (lambda: ps.Fluid(bulk_modulus=float("nan")), r"bulk_modulus"),
        (lambda: ps.Elastic(density=0.0), r"density"),
        (lambda: ps.SphereTool(radius=-0.1), r"radius must be positive"),
        (lambda: ps.SphereTool(friction=-1.0), r"friction must be >= 0"),
        (lambda: ps.Box(center=(0.5, 0.5), size=(0.1, -0.1)), r"size must be positive"),
    ],
)
def test_bad_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_set_material_param_validates(scene):
    with pytest.raises(ValueError, match="must be < 0.5"):
        scene.set_material_param(0, "nu", 0.5)
    with pytest.raises(ValueError, match="positive"):
        scene.set_material_param(0, "E", -5.0)
    with pytest.raises(KeyError, match="unknown material parameter"):
        scene.set_material_param(0, "stiffness", 1.0)


def test_particles_outside_domain():
    s = ps.Scene(dim=2, grid_res=32)
    with pytest.raises(ValueError, match="outside the simulation domain"):
        s.add_body(ps.Box(center=(0.05, 0.5), size=(0.1, 0.1)), ps.Elastic())
    scene = small_scene(2, ps.Elastic())
    state = scene.get_state()
    state["mpm.x"][3] = [1.5, 0.5]
    with pytest.raises(ValueError, match=r"particle 3 at \[1\.5, 0\.5\] is outside"):
        scene.set_state(state)


def test_unstable_dt_is_refused():
    s = ps.Scene(dim=2, grid_res=64, dt=1e-2)
    s.add_body(ps.Box(center=(0.5, 0.5), size=(0.1, 0.1)), ps.Elastic(E=1e4))
    with pytest.raises(ValueError, match=r"dt=0\.01 is unstable.*wave speed"):
        s.build()


def test_blow_up_is_reported_with_its_substep():
    scene = small_scene(2, ps.Elastic(E=2e3, nu=0.3), tool=False)
    scene.set_initial_state(v=np.full((scene.n_particles, 2), 400.0))  # 2.5 cells per substep
    with pytest.raises(ps.SimulationError, match=r"blew up at substep 1 .*CFL"):
        scene.forward(np.zeros((2, 0)))


def test_wrong_dimension_and_types():
    s = ps.Scene(dim=3, grid_res=16)
    with pytest.raises(ValueError, match="2D but the scene is 3D"):
        s.add_body(ps.Box(center=(0.5, 0.5), size=(0.1, 0.1)), ps.Elastic())
    with pytest.raises(TypeError, match="physim material"):
        s.add_body(ps.Box(center=(0.5, 0.5, 0.5), size=(0.1, 0.1, 0.1)), "rubber")
    with pytest.raises(ValueError, match="dim must be 2 or 3"):
        ps.Scene(dim=4)
    with pytest.raises(ValueError, match="boundary must be one of"):
        ps.Scene(dim=2, boundary="bouncy")
    with pytest.raises(RuntimeError, match="build"):
        ps.Scene(dim=2).forward(np.zeros((1, 0)))
    with pytest.raises(ValueError, match="no particle bodies"):
        ps.Scene(dim=2).build()


def test_backward_without_forward(scene):
    scene.reset()
    with pytest.raises(RuntimeError, match="needs a forward"):
        scene.backward(grad_x=np.zeros((scene.n_particles, 2)))
    scene.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"state\['mpm.x'\] must have shape"):
        scene.backward(grad_x=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        scene.backward(grad_x=np.full((scene.n_particles, 2), np.nan))


def test_overlapping_bodies_and_a_tool_inside_material_are_refused():
    s = ps.Scene(dim=2, grid_res=32)
    s.add_body(ps.Box(center=(0.5, 0.3), size=(0.2, 0.2)), ps.Elastic())
    s.add_body(ps.Box(center=(0.5, 0.45), size=(0.2, 0.1)), ps.Elastic())  # touches the first: fine
    with pytest.raises(ValueError, match=r"body 2 .*overlaps body 0"):
        s.add_body(ps.Sphere(center=(0.5, 0.3), radius=0.05), ps.Fluid())
    s.add_tool(ps.SphereTool(position=(0.5, 0.3), radius=0.06))  # deep inside body 0
    with pytest.raises(ValueError, match="a tool starts inside the material"):
        s.build(max_steps=2)
    with pytest.raises(TypeError, match="physim tool"):
        ps.Scene(dim=2).add_tool("spoon")

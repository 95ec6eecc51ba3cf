"""Shapes, mesh sampling, tool SDFs, soft contact, actuation."""

import gc

import numpy as np
import pytest
import taichi as ti
from conftest import small_scene

import physim as ps
from physim.contact.sdf import tool_sdf
from physim.parts.tools import SHAPE_IDS


def test_lattice_sampling_volume():
    s = ps.Sphere(center=(0.5, 0.5, 0.5), radius=0.2)
    spacing = 1 / 128
    pts = s.sample(spacing)
    assert len(pts) * spacing**3 == pytest.approx(4 / 3 * np.pi * 0.2**3, rel=0.02)
    c = ps.Cylinder(center=(0.5, 0.5, 0.5), radius=0.1, height=0.3)
    assert len(c.sample(spacing)) * spacing**3 == pytest.approx(np.pi * 0.01 * 0.3, rel=0.03)
    b = ps.Box(center=(0.5, 0.5), size=(0.2, 0.1))
    assert len(b.sample(0.01)) == 20 * 10


def test_mesh_body_from_file(tmp_path):
    import trimesh

    path = tmp_path / "ball.stl"
    trimesh.creation.icosphere(subdivisions=3, radius=1.0).export(path)
    shape = ps.Mesh(path, center=(0.5, 0.5, 0.5), size=0.3)
    pts = shape.sample(1 / 64)
    assert np.allclose(pts.mean(axis=0), 0.5, atol=0.01)
    vol = len(pts) / 64**3
    assert vol == pytest.approx(4 / 3 * np.pi * 0.15**3, rel=0.08)
    scene = ps.Scene(dim=3, grid_res=32)
    scene.add_body(shape, ps.Elastic())
    assert scene.n_particles == len(ps.Mesh(path, (0.5, 0.5, 0.5), 0.3).sample(1 / 64))
    open_mesh = trimesh.Trimesh(vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0]], faces=[[0, 1, 2]])
    with pytest.raises(ValueError, match="not watertight"):
        ps.Mesh(open_mesh, center=(0.5, 0.5, 0.5), size=0.2)


def _numpy_sdf(shape, size, p):
    if shape == "sphere":
        return np.linalg.norm(p) - size[0]
    if shape == "box":
        q = np.abs(p) - size[: len(p)]
        return np.linalg.norm(np.maximum(q, 0)) + min(q.max(), 0)
    if shape == "capsule":
        c = np.zeros_like(p)
        c[1] = np.clip(p[1], -size[1], size[1])
        return np.linalg.norm(p - c) - size[0]
    if shape == "cup":  # outer cylinder minus the cavity shifted up by the wall thickness
        outer = _numpy_sdf("cylinder", [size[0] + size[2], size[1]], p)
        q = p.copy()
        q[1] -= size[2]
        return max(outer, -_numpy_sdf("cylinder", size, q))
    radial = np.delete(p, 1)
    d = np.array([np.linalg.norm(radial) - size[0], abs(p[1]) - size[1]])
    return min(d.max(), 0) + np.linalg.norm(np.maximum(d, 0))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("shape", list(SHAPE_IDS))
def test_tool_sdf_and_normal(dim, shape):
    n = 400
    pts = ti.Vector.field(dim, ti.f64, shape=n)
    phi = ti.field(ti.f64, shape=n)
    nrm = ti.Vector.field(dim, ti.f64, shape=n)
    size = np.array([0.1, 0.15, 0.05])

    @ti.kernel
    def run(shape_id: ti.i32):
        for i in range(n):
            d, g = tool_sdf(shape_id, ti.Vector([0.1, 0.15, 0.05], ti.f64), pts[i], dim)
            phi[i] = d
            nrm[i] = g

    rng = np.random.default_rng(1)
    p = rng.uniform(-0.3, 0.3, size=(n, dim))
    pts.from_numpy(p)
    run(SHAPE_IDS[shape])
    ref = np.array([_numpy_sdf(shape, size, q) for q in p])
    assert np.allclose(phi.to_numpy(), ref, atol=1e-9)
    # the normal is the SDF gradient (checked by finite differences away from kinks)
    h = 1e-6
    for i in range(0, n, 20):
        fd = np.array([(_numpy_sdf(shape, size, p[i] + h * e) - _numpy_sdf(shape, size, p[i] - h * e)) / (2 * h)
                       for e in np.eye(dim)])
        if np.linalg.norm(fd) > 0.999:  # skip medial-axis points where the gradient jumps
            assert np.allclose(nrm.to_numpy()[i], fd, atol=1e-4)


@pytest.mark.parametrize("tool", [
    ps.BoxTool(position=(0.5, 0.42), half_extents=(0.05, 0.03)),
    ps.CapsuleTool(position=(0.5, 0.42), radius=0.03, half_length=0.03, rotation=np.pi / 2),
    ps.CylinderTool(position=(0.5, 0.42), radius=0.05, half_height=0.03),
])
def test_every_tool_pushes_material(tool):
    scene = ps.Scene(dim=2, grid_res=32, substeps_per_step=10, gravity=(0, 0))
    scene.add_body(ps.Box(center=(0.5, 0.3), size=(0.2, 0.16)), ps.Plasticine(yield_stress=20))
    scene.add_tool(tool)
    scene.build(max_steps=16)
    y0 = scene.particle_positions()[:, 1].mean()
    scene.forward(np.tile([0.0, -1.0, 0.0], (16, 1)), requires_grad=False)
    assert scene.particle_positions()[:, 1].mean() < y0 - 0.003


def test_soft_contact_gives_gradient_before_touching():
    grads = {}
    for softness in (0.0, 60.0):
        # the body drifts towards the tool but stays more than a grid cell away from it
        scene = small_scene(2, ps.Elastic(E=2e3, nu=0.3), softness=softness, velocity=[-0.3, 0.0],
                            gravity=[0, 0], tool_x=0.30)
        scene.forward(np.zeros((2, 3)))
        x = scene.particle_positions()
        grads[softness] = scene.backward(grad_x=np.ones_like(x)).actions
        del scene
        gc.collect()  # the next scene of this layout reuses this one's engine (not a second compile)
    assert np.abs(grads[0.0]).max() == 0.0
    assert np.abs(grads[60.0][:, 0]).max() > 0.0


def test_muscle_actuation_deforms_the_body():
    heights = []
    for signal in (-1.0, 1.0):
        scene = small_scene(2, ps.Muscle(E=2e3, nu=0.2, actuation_strength=200.0), tool=False,
                            actuator=0, gravity=[0, 0], velocity=[0, 0])
        scene.forward(np.full((8, 1), signal), requires_grad=False)
        heights.append(np.ptp(scene.particle_positions()[:, 1]))
        del scene
        gc.collect()  # as above
    assert heights[0] != pytest.approx(heights[1], rel=1e-3)


def test_gradient_clipping():
    scene = small_scene(2, ps.Elastic(E=2e3, nu=0.3))
    scene.forward(np.tile([1.5, 0.0, 0.0], (4, 1)))
    g = scene.backward(grad_x=np.ones((scene.n_particles, 2)), clip_norm=1e-6)
    assert g.action_norm > 1e-6
    assert np.linalg.norm(g.actions) == pytest.approx(1e-6, rel=1e-9)

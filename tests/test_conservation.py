"""Conservation laws: mass (P2G partition of unity), linear and angular momentum."""

import numpy as np
import pytest

import physim as ps


def _free_scene(dim, velocity_field, material=None):
    res = 32 if dim == 2 else 16
    scene = ps.Scene(dim=dim, grid_res=res, gravity=[0.0] * dim, substeps_per_step=5)
    scene.add_body(ps.Sphere(center=[0.5] * dim, radius=0.15 if dim == 2 else 0.2),
                   material or ps.Elastic(E=1e3, nu=0.3), jitter=0.4, seed=2)
    scene.build(max_steps=8)
    x = scene.initial_state()["mpm.x"]
    scene.set_initial_state(v=velocity_field(x))
    return scene


@pytest.mark.parametrize("dim", [2, 3])
def test_grid_mass_equals_particle_mass(dim):
    scene = _free_scene(dim, lambda x: np.zeros_like(x))
    scene.forward(np.zeros((2, 0)), requires_grad=False)
    grid_mass = scene.engine.grid_m.to_numpy().sum()
    assert grid_mass == pytest.approx(scene.total_mass(), rel=1e-12)
    assert scene.total_mass() == pytest.approx(scene.particle_mass().sum(), rel=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_linear_momentum_conserved_in_free_flight(dim):
    rng = np.random.default_rng(0)
    scene = _free_scene(dim, lambda x: 0.3 * rng.normal(size=x.shape))
    p0 = scene.momentum()
    scene.forward(np.zeros((8, 0)), requires_grad=False)
    p1 = scene.momentum()
    scale = scene.total_mass() * 0.3
    assert np.abs(p1 - p0).max() < 1e-10 * scale


@pytest.mark.parametrize("dim", [2, 3])
def test_angular_momentum_of_spinning_body(dim):
    omega = np.array([0.0, 0.0, 2.0])[-1:] if dim == 2 else np.array([0.0, 2.0, 1.0])

    def spin(x):
        r = x - 0.5
        if dim == 2:
            return omega[0] * np.stack([-r[:, 1], r[:, 0]], axis=1)
        return np.cross(omega, r)

    scene = _free_scene(dim, spin)
    L0 = scene.angular_momentum()
    scene.forward(np.zeros((8, 0)), requires_grad=False)
    L1 = scene.angular_momentum()
    # APIC/MLS-MPM conserves angular momentum up to the transfer; elastic forces are
    # rotation-invariant, so the drift is small
    assert np.linalg.norm(L1 - L0) < 0.01 * np.linalg.norm(L0)

"""Reverse-mode gradients against central finite differences (f64), every material, 2D and 3D.

Differentiable inputs checked: tool linear and angular velocities, actuation
signals, initial particle positions and velocities, material parameters (E, nu,
yield stress, friction angle, viscosity) and the tool friction coefficient.
"""

import zlib

import numpy as np
import pytest
from conftest import small_scene
from gradcheck import action_entries_fd, assert_close, central_difference, initial_entries_fd, loss_and_grad, loss_only

import physim as ps

MATERIALS = {
    "elastic": (lambda: ps.Elastic(E=2e3, nu=0.3), ["E", "nu"]),
    "neohookean": (lambda: ps.NeoHookean(E=2e3, nu=0.3), ["E", "nu"]),
    "plasticine": (lambda: ps.Plasticine(E=3e3, nu=0.2, yield_stress=30.0), ["E", "yield_stress"]),
    "sand": (lambda: ps.Sand(E=3e3, nu=0.3, friction_angle=30.0), ["E", "friction_angle"]),
    "snow": (lambda: ps.Snow(E=2e3, nu=0.2), ["E", "nu"]),
    "fluid": (lambda: ps.Fluid(bulk_modulus=1e3, viscosity=2.0), ["E", "viscosity"]),
    "viscoplastic": (lambda: ps.Viscoplastic(E=2e3, nu=0.3, yield_stress=2.0, viscosity=1.0),
                     ["yield_stress", "viscosity"]),
    "muscle": (lambda: ps.Muscle(E=2e3, nu=0.2, actuation_strength=300.0), ["E", "nu"]),
}

H = 1e-6


def _setup(dim, name, specialize=False):
    make, params = MATERIALS[name]
    scene = small_scene(dim, make(), actuator=0 if name == "muscle" else None, specialize=specialize)
    rng = np.random.default_rng(zlib.crc32(f"{dim}{name}".encode()))
    steps = 4
    actions = rng.normal(scale=0.3, size=(steps, scene.action_dim))
    actions[:, 0] += 1.5  # push the tool into the body
    # a converging initial flow keeps every particle's strain away from zero, where the
    # plastic models have kinks (cone apex, yield surface) that finite differences straddle
    x0 = scene.initial_state()["mpm.x"]
    scene.set_initial_state(v=scene.initial_state()["mpm.v"] - 2.0 * (x0 - x0.mean(axis=0)))
    n = scene.n_particles
    weights = (rng.normal(size=(n, dim)), 0.01 * rng.normal(size=(n, dim)))
    return scene, params, actions, weights


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", list(MATERIALS))
def test_gradients_match_finite_differences(dim, name):
    """Generic kernels (every constitutive model compiled in, shared by all materials)."""
    _check_gradients(dim, name, specialize=False)


@pytest.mark.parametrize(("dim", "name"), [(2, name) for name in MATERIALS] + [(3, "elastic")])
def test_specialized_kernels_gradients_match_finite_differences(dim, name):
    """Kernels compiled for the scene's one model (Scene's default), same checks; and their
    forward pass agrees with the generic kernels'."""
    _check_gradients(dim, name, specialize=True)
    scene_s, _, actions, _ = _setup(dim, name, specialize=True)
    scene_g, _, _, _ = _setup(dim, name, specialize=False)
    assert scene_s.engine is not scene_g.engine and scene_s.engine.models == (MATERIALS[name][0]().model,)
    for scene in (scene_s, scene_g):
        scene.forward(actions, requires_grad=False)
    xs, xg = scene_s.particle_positions(), scene_g.particle_positions()
    assert np.abs(xs - xg).max() < 1e-9, f"{name}: specialized and generic kernels disagree"


def test_specialized_scene_without_tools_gradients_match_finite_differences():
    """A specialized scene with no tools compiles its kernels without tool contact
    (eff_capacity 0): same motion as the generic kernels, and gradients w.r.t. the initial
    state and a material parameter still match finite differences."""
    def make(specialize):
        scene = small_scene(2, ps.Elastic(E=2e3, nu=0.3), tool=False, specialize=specialize)
        x0 = scene.initial_state()["mpm.x"]
        scene.set_initial_state(v=scene.initial_state()["mpm.v"] - 2.0 * (x0 - x0.mean(axis=0)))
        return scene
    scene, generic = make(True), make(False)
    assert not scene.engine.layout.tool_contact and generic.engine.layout.tool_contact
    actions = np.zeros((4, scene.action_dim))
    for s in (scene, generic):
        s.forward(actions, requires_grad=False)
    assert np.abs(scene.particle_positions() - generic.particle_positions()).max() < 1e-9
    rng = np.random.default_rng(7)
    n = scene.n_particles
    weights = (rng.normal(size=(n, 2)), 0.01 * rng.normal(size=(n, 2)))
    _, g = loss_and_grad(scene, actions, weights)
    x0 = scene.initial_state()["mpm.x"]
    rows = (0, n // 2, n - 1)
    fd = initial_entries_fd(scene, actions, weights, "x0", x0, rows, H)
    assert_close(fd, [g.x0[i, d] for i in rows for d in range(2)], "no tools, d/d x0")

    def young(dh):
        scene.set_material_param(0, "E", 2e3 + dh)
        out = loss_only(scene, actions, weights)
        scene.set_material_param(0, "E", 2e3)
        return out
    assert_close([central_difference(young, H * 2e3)], [g.materials[0]["E"]], "no tools, d/d E")


def _check_gradients(dim, name, specialize):
    scene, params, actions, weights = _setup(dim, name, specialize)
    _, g = loss_and_grad(scene, actions, weights)
    f = lambda a: loss_only(scene, a, weights)  # noqa: E731

    # actions: every column of two steps (linear, angular velocity, actuation)
    entries = [(t, j) for t in (0, actions.shape[0] - 1) for j in range(scene.action_dim)]
    fd = action_entries_fd(scene, actions, weights, entries, H)
    assert_close(fd, [g.actions[t, j] for t, j in entries], f"{name} {dim}D d/d actions")

    # initial positions and velocities of a few particles
    x0, v0 = scene.initial_state()["mpm.x"], scene.initial_state()["mpm.v"]
    idx = [0, scene.n_particles // 2, scene.n_particles - 1]
    for label, base, ad in (("x0", x0, g.x0), ("v0", v0, g.v0)):
        fd = initial_entries_fd(scene, actions, weights, label, base, idx, H)
        assert_close(fd, [ad[i, d] for i in idx for d in range(dim)], f"{name} {dim}D d/d {label}")

    # material parameters and tool friction
    for p in params:
        value = scene.get_material_param(0, p)
        h = H * value
        def shifted(dh, p=p, value=value):
            scene.set_material_param(0, p, value + dh)
            out = f(actions)
            scene.set_material_param(0, p, value)
            return out
        fd = central_difference(shifted, h)
        ad = g.params["mpm." + p][0]  # per user unit: per degree for friction_angle
        assert abs(fd) > 0, f"{name} {dim}D: loss does not depend on {p}; scene too gentle"
        assert_close([fd], [ad], f"{name} {dim}D d/d {p}")

    def fric(dh):
        scene.set_tool_friction(0, 0.4 + dh)
        out = f(actions)
        scene.set_tool_friction(0, 0.4)
        return out
    assert_close([central_difference(fric, H)], [g.tool_friction[0]], f"{name} {dim}D d/d friction")


def test_gradients_finite_for_block_at_rest():
    """Repeated singular values (F = I): the SVD adjoint must stay finite and exact."""
    scene = small_scene(3, ps.Elastic(E=2e3, nu=0.3), tool=False, gravity=[0, 0, 0], velocity=[0, 0, 0])
    n = scene.n_particles
    rng = np.random.default_rng(3)
    weights = (rng.normal(size=(n, 3)), np.zeros((n, 3)))
    actions = np.zeros((3, scene.action_dim))
    _, g = loss_and_grad(scene, actions, weights)
    assert np.isfinite(g.x0).all() and np.isfinite(g.materials[0]["E"])
    # at rest nothing moves: d x_T / d x_0 is the identity to first order
    assert np.abs(g.x0 - weights[0]).max() < 0.05 * np.abs(weights[0]).max()
    x0 = scene.initial_state()["mpm.x"]
    fd = central_difference(lambda h: loss_only(scene, actions, weights, x0=x0 + h * (np.arange(n) == 7)[:, None]), H)
    assert abs(fd - g.x0[7].sum()) < 1e-6 * max(1.0, abs(fd)) * 1e3

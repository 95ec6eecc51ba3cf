"""Reverse mode with kept scratch: a chunk's recompute keeps each substep's particle scratch
(SVD factors, stress, ...) and the replay restores it instead of recomputing it; when the
layout's kept scratch would not fit (``KEEP_SCRATCH_MAX_BYTES``) the replay recomputes it.
Both must give the finite-difference gradient (f64, central differences)."""

import numpy as np
from conftest import small_scene
from gradcheck import action_entries_fd, assert_close, central_difference, loss_and_grad, loss_only

import physim as ps
from physim.solvers import mpm

H = 1e-6


def _scene():
    # plastic flow (return mapping through the SVD) under a tool, 16 substeps in chunks of 3:
    # every chunk but the last is recomputed, the last one is kept by the forward pass
    scene = small_scene(2, ps.Plasticine(E=3e3, nu=0.2, yield_stress=30.0), checkpoint_every=3)
    x0 = scene.initial_state()["mpm.x"]
    scene.set_initial_state(v=scene.initial_state()["mpm.v"] - 2.0 * (x0 - x0.mean(axis=0)))
    rng = np.random.default_rng(5)
    actions = rng.normal(scale=0.3, size=(4, scene.action_dim))
    actions[:, 0] += 1.5
    n = scene.n_particles
    weights = (rng.normal(size=(n, 2)), 0.01 * rng.normal(size=(n, 2)))
    return scene, actions, weights


def test_kept_and_replayed_scratch_match_finite_differences(monkeypatch):
    scene, actions, weights = _scene()
    _, kept = loss_and_grad(scene, actions, weights)
    assert scene.engine.kept is not None, "the small layout should keep its scratch"
    monkeypatch.setattr(mpm, "KEEP_SCRATCH_MAX_BYTES", 0)
    calls = []
    restore = scene.engine.substep_restore
    monkeypatch.setattr(scene.engine, "substep_restore", lambda *a: calls.append(a) or restore(*a))
    _, replayed = loss_and_grad(scene, actions, weights)
    assert not calls, "KEEP_SCRATCH_MAX_BYTES = 0 must replay by recomputing"
    entries = [(t, j) for t in (0, 2, 3) for j in range(scene.action_dim)]
    fd = action_entries_fd(scene, actions, weights, entries, H)
    for g, how in ((kept, "kept"), (replayed, "replayed")):
        assert_close(fd, [g.actions[t, j] for t, j in entries], f"{how} scratch d/d actions")
    value = scene.get_material_param(0, "yield_stress")

    def shifted(dh):
        scene.set_material_param(0, "yield_stress", value + dh)
        out = loss_only(scene, actions, weights)
        scene.set_material_param(0, "yield_stress", value)
        return out
    fd = central_difference(shifted, H * value)
    for g, how in ((kept, "kept"), (replayed, "replayed")):
        assert_close([fd], [g.params["mpm.yield_stress"][0]], f"{how} scratch d/d yield_stress")

"""Checkpointed reverse mode equals the full tape, and memory per chunk is bounded."""

import os

import numpy as np
import pytest
from conftest import small_scene

import physim as ps


@pytest.mark.parametrize("dim", [2, 3])
def test_checkpointed_gradient_equals_full_tape(dim):
    scene = small_scene(dim, ps.Plasticine(E=3e3, nu=0.2, yield_stress=5.0))
    rng = np.random.default_rng(7)
    actions = rng.normal(scale=0.5, size=(4, scene.action_dim))
    actions[:, 0] += 1.0
    wx = rng.normal(size=(scene.n_particles, dim))

    def grads(k):
        scene.set_checkpoint_every(k)
        scene.reset()
        scene.forward(actions)
        return scene.backward(grad_x=wx)

    full = grads(16)  # 4 steps x 4 substeps: one chunk, nothing recomputed
    for k in (3, 5, 8):  # chunks that do and do not align with action steps
        ck = grads(k)
        for name in ("actions", "x0", "v0", "tool_pos0"):
            a, b = getattr(full, name), getattr(ck, name)
            assert np.allclose(a, b, rtol=1e-10, atol=1e-13 * np.abs(a).max()), (k, name)
        assert np.isclose(full.materials[0]["E"], ck.materials[0]["E"], rtol=1e-10)
        assert np.isclose(full.tool_friction[0], ck.tool_friction[0], rtol=1e-10)


def test_final_state_restored_after_checkpointed_backward():
    scene = small_scene(2, ps.Elastic(E=2e3, nu=0.3))
    scene.set_checkpoint_every(3)
    actions = np.tile([1.0, 0.0, 0.0], (4, 1))
    scene.forward(actions)
    before = scene.get_state()
    scene.backward(grad_x=np.ones((scene.n_particles, 2)))
    after = scene.get_state()
    for k in before:
        assert np.array_equal(before[k], after[k]), k


def test_checkpoints_are_one_per_chunk():
    scene = small_scene(2, ps.Elastic(E=2e3, nu=0.3))
    scene.set_checkpoint_every(4)
    scene.forward(np.zeros((8, scene.action_dim)))
    assert len(scene._rollout["checkpoints"]) == 8 * 4 // 4
    with pytest.raises(ValueError, match="checkpoint_every"):
        scene.set_checkpoint_every(10_000)


def test_checkpoints_spilled_to_disk_give_the_same_gradients(tmp_path):
    """Beyond checkpoint_ram_mb, chunk checkpoints go to a temporary directory; the
    gradients are the same as with every checkpoint in RAM, and the directory is removed."""
    scene = small_scene(2, ps.Plasticine(E=3e3, nu=0.2, yield_stress=5.0))
    rng = np.random.default_rng(11)
    actions = rng.normal(scale=0.5, size=(6, scene.action_dim))
    actions[:, 0] += 1.0
    wx = rng.normal(size=(scene.n_particles, 2))
    scene.set_checkpoint_every(3)

    def grads(ram_mb):
        scene.checkpoint_ram_mb = ram_mb
        scene.reset()
        scene.forward(actions)
        store = scene._rollout["checkpoints"]
        spilled = store.spilled
        directory = store._tmp.name if store._tmp is not None else None
        assert directory is None or len(os.listdir(directory)) == spilled
        g = scene.backward(grad_x=wx)
        return g, spilled, directory

    in_ram, spilled_ram, _ = grads(None)
    on_disk, spilled_disk, directory = grads(0)
    assert spilled_ram == 0 and spilled_disk == 6 * 4 // 3
    for name in ("actions", "x0", "v0", "tool_pos0"):
        a, b = getattr(in_ram, name), getattr(on_disk, name)
        assert np.allclose(a, b, rtol=1e-10, atol=1e-13 * np.abs(a).max()), name
    assert not os.path.exists(directory)  # backward is done with the rollout: files deleted
    with pytest.raises(ValueError, match="checkpoint_ram_mb"):
        ps.Scene(dim=2, checkpoint_ram_mb=-1)


def test_checkpoint_store_keeps_ram_under_its_budget():
    from physim.checkpoints import CheckpointStore

    state = {"x": np.arange(1000.0), "F": np.ones((100, 3, 3))}  # 15,200 bytes
    store = CheckpointStore(ram_bytes=40_000)
    for i in range(5):
        store.append({k: v + i for k, v in state.items()})
    assert store.bytes_in_ram <= 40_000 and store.spilled == 3 and len(store) == 5
    for i in range(5):
        assert np.array_equal(store[i]["x"], state["x"] + i) and np.array_equal(store[i]["F"], state["F"] + i)
    store.close()
    assert len(store) == 0

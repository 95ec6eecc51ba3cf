"""The torch bridge: gradients equal the scene's, and Adam lowers a real loss."""

import numpy as np
import torch
from conftest import small_scene

import physim as ps
import physim.torch as pst


def test_torch_gradient_matches_scene_backward():
    scene = small_scene(2, ps.Plasticine(E=3e3, nu=0.2, yield_stress=5.0))
    actions = torch.zeros(4, scene.action_dim, dtype=torch.float64)
    actions[:, 0] = 1.0
    actions.requires_grad_(True)
    x = pst.rollout(scene, actions)
    target = torch.tensor([0.6, 0.3], dtype=torch.float64)
    loss = ((x.mean(0) - target) ** 2).sum()
    loss.backward()
    scene.reset()
    scene.forward(actions.detach().numpy())
    xs = scene.particle_positions()
    g = scene.backward(grad_x=2 * (xs.mean(0) - target.numpy()) / len(xs) * np.ones_like(xs))
    assert np.allclose(actions.grad.numpy(), g.actions, rtol=1e-12, atol=0)
    assert np.abs(g.actions).max() > 0


def test_readme_push_example_lowers_the_loss(tmp_path):
    """The README's optimization (demos/push_plasticine.py), shortened: Adam through
    the simulator must bring the block's center of mass closer to the target."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "demos" / "push_plasticine.py"
    spec = importlib.util.spec_from_file_location("push_plasticine", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    losses = demo.run(["--iters", "6", "--steps", "12", "--out", str(tmp_path)])
    assert losses[-1] < 0.5 * losses[0], losses
    assert (tmp_path / "push_plasticine.png").stat().st_size > 10_000


def test_rollout_rejects_numpy_actions():
    scene = small_scene(2, ps.Elastic())
    try:
        pst.rollout(scene, np.zeros((2, 3)))
    except TypeError as e:
        assert "torch.Tensor" in str(e)
    else:
        raise AssertionError("expected TypeError")

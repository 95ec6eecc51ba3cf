"""Torch bridge: a whole rollout as a differentiable torch function.

    x_final = physim.torch.rollout(scene, actions)   # actions: (steps, action_dim) tensor
    loss = ((x_final.mean(0) - target) ** 2).sum()
    loss.backward()                                   # actions.grad filled by physim's tape

The scene is reset to its initial state before every rollout (``reset=False`` to
start from the current state instead).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rollout", "rollout_state"]


class _Rollout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, actions: torch.Tensor, scene, reset: bool):
        if reset:
            scene.reset()
        scene.forward(actions.detach().cpu().double().numpy(), requires_grad=True)
        s = scene.get_state()
        ctx.scene = scene
        ctx.dtype, ctx.device = actions.dtype, actions.device
        out = [torch.as_tensor(np.asarray(s[k], dtype=np.float64), dtype=actions.dtype, device=actions.device)
               for k in ("x", "v", "effector_pos")]
        return tuple(out)

    @staticmethod
    def backward(ctx, grad_x, grad_v, grad_pos):
        def arr(g):
            return None if g is None else g.detach().cpu().double().numpy()

        grads = ctx.scene.backward(grad_x=arr(grad_x), grad_v=arr(grad_v), grad_effector_pos=arr(grad_pos))
        return torch.as_tensor(grads.actions, dtype=ctx.dtype, device=ctx.device), None, None


def rollout_state(scene, actions: torch.Tensor, reset: bool = True):
    """Run ``actions`` through ``scene``; returns (x, v, effector_pos) at the end, differentiable
    with respect to ``actions``."""
    if not isinstance(actions, torch.Tensor):
        raise TypeError(f"actions must be a torch.Tensor, got {type(actions).__name__}")
    return _Rollout.apply(actions, scene, reset)


def rollout(scene, actions: torch.Tensor, reset: bool = True) -> torch.Tensor:
    """Final particle positions (n, dim) after running ``actions``; differentiable w.r.t. ``actions``."""
    return rollout_state(scene, actions, reset)[0]

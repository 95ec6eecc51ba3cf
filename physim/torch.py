"""Torch bridge: a whole rollout as a differentiable torch function of the actions.

    x_final = physim.torch.rollout(scene, actions)          # actions: (steps, action_dim) tensor
    loss = ((x_final.mean(0) - target) ** 2).sum()
    loss.backward()                                          # actions.grad filled by physim's tape

Any state entry by name, final or at every step::

    s = physim.torch.rollout_state(scene, actions)           # {"mpm.x": (n, dim), "tools.pos": ...}
    traj = physim.torch.rollout_state(scene, actions, observe=["springs.x"])   # (steps + 1, n, dim)
    loss = (traj["springs.x"][:, 0, 1] - target_heights).pow(2).sum()          # a loss at every step

The scene is reset to its initial state before every rollout (``reset=False`` to
start from the current state instead).

A scene keeps only its latest recording: run ``backward`` on each rollout's loss before the
next rollout (or ``scene.forward``, ``scene.step``, ``scene.set_param``) on the same scene.
The backward of a superseded rollout raises ``RuntimeError`` (it would otherwise
differentiate the newer rollout); use one scene per rollout to keep several graphs alive.
"""

from __future__ import annotations

import numpy as np
import torch

from .rollout import series_seeds

__all__ = ["rollout", "rollout_state"]


class _Rollout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, actions: torch.Tensor, scene, reset: bool, names: tuple, per_step: bool):
        if reset:
            scene.reset()
        series = scene.forward(actions.detach().cpu().double().numpy(), requires_grad=True,
                               observe=list(names) if per_step else None)
        s = series if per_step else scene.get_state()
        ctx.scene, ctx.names, ctx.per_step = scene, names, per_step
        ctx.rollout = scene.rollout_id  # backward refuses if another forward ran on the scene since
        ctx.dtype, ctx.device = actions.dtype, actions.device
        return tuple(torch.as_tensor(np.asarray(s[k], dtype=np.float64), dtype=actions.dtype, device=actions.device)
                     for k in names)

    @staticmethod
    def backward(ctx, *grads):
        used = {k: g.detach().cpu().double().numpy() for k, g in zip(ctx.names, grads, strict=True) if g is not None}
        g = ctx.scene.backward(series_seeds(used) if ctx.per_step else used, rollout=ctx.rollout)
        return torch.as_tensor(g.actions, dtype=ctx.dtype, device=ctx.device), None, None, None, None


def rollout_state(scene, actions: torch.Tensor, reset: bool = True, observe=None) -> dict[str, torch.Tensor]:
    """Run ``actions`` through ``scene``; returns the state by name, differentiable with
    respect to ``actions``: the final state (every entry of ``scene.state_names``), or with
    ``observe`` (a list of names) those entries at every step, shape (steps + 1, ...)."""
    if not isinstance(actions, torch.Tensor):
        raise TypeError(f"actions must be a torch.Tensor, got {type(actions).__name__}")
    names = tuple(scene.state_names if observe is None else observe)
    unknown = [n for n in names if n not in scene.state_names]
    if unknown:
        raise KeyError(f"unknown state entries {unknown}; this scene has {scene.state_names}")
    out = _Rollout.apply(actions, scene, reset, names, observe is not None)
    return dict(zip(names, out, strict=True))


def rollout(scene, actions: torch.Tensor, reset: bool = True) -> torch.Tensor:
    """Final MPM particle positions (n, dim) after running ``actions``; differentiable w.r.t. ``actions``."""
    return rollout_state(scene, actions, reset)["mpm.x"]

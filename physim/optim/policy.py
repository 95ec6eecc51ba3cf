"""Closed-loop neural policies trained through the differentiable simulator.

As in DiffTaichi's walker controllers: the policy sees the observation and periodic time
features, acts at every step, and the task loss of the whole closed-loop rollout is
differentiated with respect to the actions it produced; those gradients are backpropagated
into the policy's weights.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from .checks import check_callback, check_positive_float, check_positive_int, check_problem
from .result import OptimResult

__all__ = ["MLPPolicy", "train_policy"]


class _Sine(torch.nn.Module):
    def __init__(self, omega0: float):
        super().__init__()
        self.omega0 = omega0

    def forward(self, x):
        return torch.sin(self.omega0 * x)


class MLPPolicy(torch.nn.Module):
    """An MLP mapping (observation features, time features) to an action inside the bounds.

    Inputs: ``obs_fn(obs)`` (default: the flat observation) minus ``obs_offset``, times
    ``obs_scale``, followed by ``t / horizon`` and ``sin, cos(2 pi j t / period)`` for
    ``j = 1..n_harmonics`` (t the step index). Output: ``low + (tanh(y) + 1) (high - low) / 2``,
    so every action is inside ``[low, high]`` (which must be finite).

    Args:
        obs_dim: length of ``obs_fn(obs)``.
        action_low, action_high: (A,) bounds, in the env's action units.
        horizon: T, steps of an episode (scales the ``t / T`` feature).
        hidden: width of the hidden layers; ``layers``: their number.
        sine: sin activations with SIREN initialization (frequency ``omega0``) instead of tanh.
        period: period of the time features, in steps (default ``horizon``).
        obs_fn: callable ``obs -> 1-D array``, e.g. to pick a few entries of a big observation.
        obs_offset, obs_scale: input normalization of the observation features.
        generator: torch generator for the initial weights.
    """

    def __init__(self, obs_dim: int, action_low, action_high, horizon: int, hidden: int = 64, layers: int = 2,
                 sine: bool = False, omega0: float = 30.0, n_harmonics: int = 2, period: float | None = None,
                 obs_fn=None, obs_offset=None, obs_scale: float = 1.0, generator: torch.Generator | None = None):
        super().__init__()
        self.obs_dim = check_positive_int("obs_dim", obs_dim, minimum=0)
        self.horizon = check_positive_int("horizon", horizon)
        hidden = check_positive_int("hidden", hidden)
        layers = check_positive_int("layers", layers)
        self.n_harmonics = check_positive_int("n_harmonics", n_harmonics, minimum=0)
        self.period = check_positive_float("period", period if period is not None else horizon)
        self.omega0 = check_positive_float("omega0", omega0)
        self.obs_scale = check_positive_float("obs_scale", obs_scale)
        if obs_fn is not None and not callable(obs_fn):
            raise ValueError(f"obs_fn must be callable(obs) -> 1-D array or None, got {obs_fn!r}")
        self.obs_fn = obs_fn
        low = np.asarray(action_low, dtype=np.float64).reshape(-1)
        high = np.asarray(action_high, dtype=np.float64).reshape(-1)
        if low.shape != high.shape or not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
            raise ValueError(f"policy action bounds must be finite with low <= high, got {low} and {high}")
        self.register_buffer("low", torch.as_tensor(low))
        self.register_buffer("high", torch.as_tensor(high))
        off = np.zeros(self.obs_dim) if obs_offset is None else np.asarray(obs_offset, dtype=np.float64).reshape(-1)
        if off.shape != (self.obs_dim,):
            raise ValueError(f"obs_offset must have {self.obs_dim} entries, got shape {off.shape}")
        self.register_buffer("obs_offset", torch.as_tensor(off))
        self.sine = bool(sine)
        n_in = self.obs_dim + 1 + 2 * self.n_harmonics
        mods: list[torch.nn.Module] = []
        width = n_in
        for i in range(layers):
            lin = torch.nn.Linear(width, hidden).double()
            with torch.no_grad():
                if self.sine:  # SIREN: U(-1/n, 1/n) first, U(-sqrt(6/n)/omega0, .) after
                    bound = 1.0 / width if i == 0 else math.sqrt(6.0 / width) / self.omega0
                else:
                    bound = math.sqrt(6.0 / (width + hidden))  # Glorot for tanh
                lin.weight.uniform_(-bound, bound, generator=generator)
                lin.bias.uniform_(-bound, bound, generator=generator)
            mods += [lin, _Sine(self.omega0) if self.sine else torch.nn.Tanh()]
            width = hidden
        out = torch.nn.Linear(width, len(low)).double()
        with torch.no_grad():  # small outputs: the first actions are near the middle of the bounds
            out.weight.uniform_(-1e-2, 1e-2, generator=generator)
            out.bias.zero_()
        mods.append(out)
        self.net = torch.nn.Sequential(*mods)

    @property
    def action_dim(self) -> int:
        return int(self.low.shape[0])

    def features(self, obs, t: int) -> torch.Tensor:
        """The input vector (float64 tensor) for observation ``obs`` at step ``t``."""
        f = np.asarray(self.obs_fn(obs) if self.obs_fn is not None else obs, dtype=np.float64).reshape(-1)
        if f.shape != (self.obs_dim,):
            raise ValueError(f"observation features must have {self.obs_dim} entries, got shape {f.shape}")
        x = (torch.as_tensor(f) - self.obs_offset) * self.obs_scale
        phase = 2 * math.pi * float(t) / self.period
        tf = [float(t) / self.horizon]
        for j in range(1, self.n_harmonics + 1):
            tf += [math.sin(j * phase), math.cos(j * phase)]
        return torch.cat([x, torch.tensor(tf, dtype=torch.float64)])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Action(s) in the bounds from feature vector(s) (last axis the features)."""
        y = torch.tanh(self.net(features))
        return self.low + (y + 1.0) * 0.5 * (self.high - self.low)

    def act(self, obs, t: int) -> np.ndarray:
        """The (A,) numpy action for observation ``obs`` at step ``t`` (no gradient)."""
        with torch.no_grad():
            return self(self.features(obs, t)).numpy()


def train_policy(
    env,
    iters: int = 30,
    hidden: int = 64,
    sine: bool = False,
    lr: float = 3e-3,
    obs_fn=None,
    layers: int = 2,
    omega0: float = 30.0,
    n_harmonics: int = 2,
    period: float | None = None,
    obs_scale: float = 1.0,
    clip_norm: float | None = 1.0,
    restore_best: bool = True,
    policy: MLPPolicy | None = None,
    seed: int | None = 0,
    progress: bool = True,
    callback=None,
) -> OptimResult:
    """Train an :class:`MLPPolicy` on a Gymnasium env by backpropagating through the simulator.

    Every iteration: ``env.reset(seed=seed)``; a closed-loop rollout of up to ``horizon`` steps
    with ``env.step(policy(features(obs, t)))`` (stopping early on termination/truncation),
    keeping the actions as torch tensors; ``loss, g = env.unwrapped.loss_and_grad(actions)``
    (the task loss of the episode's final state and its gradient w.r.t. the actions, replayed from
    the reset state); then ``torch.autograd.backward(actions, g)`` and an Adam step on the weights.

    Observations are treated as constants: the gradient flows into the weights through each
    action's direct dependence on them, not through the effect of earlier actions on later
    observations (the simulator gives d loss / d actions, not d observation / d actions). This is
    the usual simplification of differentiable-physics controller training (DiffTaichi).

    Over a batch of seeded goals: pass a batched vector env (``gym.make_vec(id, num_envs=B)`` of
    a task whose scene batches, :class:`physim.envs.vector.PhysimVectorEnv`): every iteration
    resets world i with goal ``seed + i``, runs the one policy in all B worlds at once (each
    world's action from its own observation), and minimizes the mean task loss over the worlds
    with one batched forward and reverse pass (the Complex Locomotion paper's batching). The
    result's ``actions`` are then (B, T, A) and its losses the means.

    Args:
        env: a Gymnasium env (``reset``, ``step``) whose ``unwrapped`` has the problem protocol
            (``horizon``, ``action_dim``, finite ``action_low``/``action_high``, ``loss_and_grad``),
            or a batched physim vector env (above).
        iters: training iterations (one rollout + one gradient evaluation each).
        hidden, layers: MLP width and depth. sine, omega0: SIREN-like sin activations.
        lr: Adam learning rate of the weights.
        obs_fn: ``obs -> 1-D array`` feature extractor (default: the whole flat observation). The
            observation features of the first reset are subtracted (inputs are changes from the
            start), then multiplied by ``obs_scale``.
        n_harmonics, period: time features ``sin, cos(2 pi j t / period)``, ``period`` in steps
            (default the horizon).
        clip_norm: clip the weight-gradient norm (None: no clipping).
        restore_best: return the policy with the weights of its best rollout (else the last weights).
        policy: continue training this policy instead of creating one.
        seed: seeds the initial weights and every ``env.reset(seed=seed)`` (None: random resets).
        progress: show a tqdm progress bar.
        callback: ``callback(iteration, loss, actions)`` after every rollout; returning True stops.

    Returns:
        :class:`OptimResult` (method "policy") with ``policy`` (the :class:`MLPPolicy`; use
        ``policy.act(obs, t)``), ``actions``/``loss`` of its best rollout, ``losses`` per iteration;
        ``extras["episode_lengths"]``.
    """
    if not (hasattr(env, "reset") and hasattr(env, "step")):
        raise ValueError(f"env must be a Gymnasium env with reset() and step(), got {type(env).__name__}")
    batched = hasattr(env, "num_envs") and hasattr(env, "task") and hasattr(env, "loss_and_grad")
    prob, T, A, low, high = check_problem(env.task if batched else env)
    iters = check_positive_int("iters", iters)
    lr = check_positive_float("lr", lr)
    if clip_norm is not None:
        clip_norm = check_positive_float("clip_norm", clip_norm)
    if seed is not None:
        seed = check_positive_int("seed", seed, minimum=0)
    check_callback(callback)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(f"train_policy needs finite action bounds, got action_low={low}, action_high={high}")
    space = getattr(env, "action_space", None)
    act_dtype = getattr(space, "dtype", None)
    if act_dtype is None:
        act_dtype = np.float32

    t0 = time.perf_counter()
    steps0 = prob.sim_steps
    obs, _ = env.reset(seed=seed)
    B = int(env.num_envs) if batched else 1
    if policy is None:
        first = obs[0] if batched else obs
        f0 = np.asarray(obs_fn(first) if obs_fn is not None else first, dtype=np.float64).reshape(-1)
        gen = torch.Generator().manual_seed(seed if seed is not None else int(np.random.SeedSequence().entropy % 2**31))
        policy = MLPPolicy(f0.size, low, high, T, hidden=hidden, layers=layers, sine=sine, omega0=omega0,
                           n_harmonics=n_harmonics, period=period, obs_fn=obs_fn, obs_offset=f0,
                           obs_scale=obs_scale, generator=gen)
    elif not isinstance(policy, MLPPolicy) or policy.action_dim != A:
        raise ValueError(f"policy must be an MLPPolicy with action_dim {A}, got {policy!r}")
    opt = torch.optim.Adam(policy.parameters(), lr=lr)

    losses: list[float] = []
    lengths: list[int] = []
    best = {"loss": math.inf, "actions": None, "state": None}
    bar = tqdm(range(iters), desc="policy", disable=not progress, leave=False)
    try:
        for it in bar:
            if it > 0:
                obs, _ = env.reset(seed=seed)
            acts = []
            for t in range(T):
                if batched:  # one action per world, from that world's observation (its own goal)
                    a = torch.stack([policy(policy.features(obs[w], t)) for w in range(B)])
                else:
                    a = policy(policy.features(obs, t))
                acts.append(a)
                obs, _, terminated, truncated, _ = env.step(a.detach().numpy().astype(act_dtype))
                if np.any(terminated) or np.any(truncated):
                    break
            actions = torch.stack(acts, dim=1 if batched else 0)
            a_np = np.clip(actions.detach().numpy(), low, high)
            if batched:  # the mean task loss over the worlds' goals, in one batched rollout
                world_losses, g = env.loss_and_grad(a_np)
                loss, g = float(world_losses.mean()), g / B
                prob.problem.sim_steps += 2 * B * a_np.shape[1]  # the task's counter (its sim_steps)
            else:
                loss, g = prob.loss_and_grad(a_np)
                loss = float(loss)
            losses.append(loss)
            lengths.append(len(acts))
            if loss < best["loss"]:  # (batched: a_np holds every world's actions, (B, t, A))
                best.update(loss=loss, actions=a_np.copy(), state=copy.deepcopy(policy.state_dict()))
            opt.zero_grad()
            torch.autograd.backward(actions, torch.as_tensor(np.asarray(g, dtype=np.float64).reshape(a_np.shape)))
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(policy.parameters(), clip_norm)
            opt.step()
            bar.set_postfix(loss=f"{loss:.4e}", best=f"{best['loss']:.4e}")
            if callback is not None and callback(it, loss, a_np):
                break
    finally:
        bar.close()
    if restore_best and best["state"] is not None:
        policy.load_state_dict(best["state"])
    policy.eval()
    return OptimResult(
        actions=best["actions"],
        loss=best["loss"],
        losses=losses,
        initial_loss=losses[0],
        sim_steps=int(prob.sim_steps - steps0),
        wall_seconds=time.perf_counter() - t0,
        method="policy",
        policy=policy,
        extras={"episode_lengths": lengths},
    )

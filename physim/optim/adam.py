"""Adam over a whole action sequence, with projection onto the bounds and temporal expansion."""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from .checks import check_callback, check_positive_float, check_positive_int, check_problem, initial_actions
from .result import OptimResult
from .schedules import check_schedule, learning_rate

__all__ = ["adam"]


def _stage_horizons(T: int, expand) -> list[int]:
    if expand is None:
        return [T]
    k = check_positive_int("expand", expand)
    hs = sorted({max(1, math.ceil(s * T / k)) for s in range(1, k + 1)})
    return hs


def adam(
    problem,
    iters: int = 50,
    lr=0.05,
    init=None,
    lr_schedule: str = "cosine",
    clip_norm: float | None = None,
    expand: int | None = None,
    expand_on_plateau: bool = False,
    patience: int = 3,
    plateau_tol: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    lr_min_frac: float = 0.1,
    step_every: int | None = None,
    step_gamma: float = 0.5,
    backtrack: bool = False,
    seed: int | None = None,
    progress: bool = True,
    callback=None,
) -> OptimResult:
    """Adam on the (T, A) action sequence of ``problem``, projected onto the action bounds.

    Each iteration evaluates ``problem.loss_and_grad`` once (one forward + one reverse rollout),
    optionally scales the gradient to norm ``clip_norm``, takes an Adam step of size ``lr``
    (times the schedule factor) and clips the actions into ``[action_low, action_high]``
    (projected gradient descent).

    Temporal expansion (``expand=k``, for long horizons, as in FluidLab): stage ``s`` (1..k)
    optimizes the loss of the state after the first ``ceil(s T / k)`` steps only, starting from
    the actions optimized so far (the steps beyond the window keep their ``init`` values until
    the window reaches them); the last stage is the full horizon. ``iters`` is split evenly over
    the stages; with ``expand_on_plateau=True`` a stage also ends early once its loss improved by
    less than ``plateau_tol`` (relative) over the last ``patience`` iterations, and the unused
    iterations go to the later stages. The learning-rate schedule restarts at every stage. The
    full-horizon loss of the actions at the end of each stage is recorded in ``stages``.

    Args:
        problem: anything with the problem protocol (:class:`~physim.optim.SceneProblem`, or a
            physim Gymnasium env: its ``unwrapped`` is used).
        iters: Adam iterations in all (gradient evaluations), >= the number of stages.
        lr: step size in action units (an Adam step moves each action by about ``lr``); a scalar
            or an (A,) array, one per action column.
        init: starting actions, (T, A) or one (A,) row for every step (clipped into the bounds);
            default the point of the bounds closest to zero.
        lr_schedule: "cosine" (decays to ``lr_min_frac * lr``), "constant" or "step" (times
            ``step_gamma`` every ``step_every`` iterations, default a third of the stage).
        clip_norm: if set, the action gradient is scaled to at most this norm (loss units per
            action unit) before the Adam update.
        expand: number of temporal-expansion stages (None or 1: optimize the full horizon).
        expand_on_plateau, patience, plateau_tol: end an expansion stage early on a plateau.
        betas, eps: Adam's moment decay rates and denominator floor.
        backtrack: when a full-horizon evaluation is worse than the best so far, return to the
            best iterate, restart Adam's moments there and halve the step size (a robust line
            search for few-parameter problems such as :func:`~physim.optim.identify`, where
            Adam's momentum alone overshoots and oscillates around the minimum).
        seed: accepted for a uniform signature; this method is deterministic.
        progress: show a tqdm progress bar.
        callback: ``callback(iteration, loss, actions)`` after every iteration (``loss`` is the
            loss of the evaluated window, ``actions`` the full (T, A) iterate that was evaluated);
            returning True stops the run.

    Returns:
        :class:`OptimResult` (method "adam"). ``actions``/``loss`` are the best *full-horizon*
        evaluation; ``extras["horizons"]`` is the window length of every iteration,
        ``extras["grad_norms"]`` the gradient norm before clipping, ``extras["final_loss"]`` the
        full-horizon loss of the last iterate.
    """
    prob, T, A, low, high = check_problem(problem)
    iters = check_positive_int("iters", iters)
    lr_arr = np.broadcast_to(np.asarray(lr, dtype=np.float64), (A,)).copy() if np.ndim(lr) else None
    if lr_arr is None:
        lr_arr = np.full(A, check_positive_float("lr", lr))
    elif not (np.isfinite(lr_arr).all() and (lr_arr > 0).all()):
        raise ValueError(f"lr must be positive and finite, got {lr!r}")
    check_schedule(lr_schedule, lr_min_frac, step_every, step_gamma)
    if clip_norm is not None:
        clip_norm = check_positive_float("clip_norm", clip_norm)
    patience = check_positive_int("patience", patience)
    plateau_tol = check_positive_float("plateau_tol", plateau_tol, allow_zero=True)
    b1, b2 = (float(b) for b in betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    eps = check_positive_float("eps", eps)
    check_callback(callback)
    horizons = _stage_horizons(T, expand)
    S = len(horizons)
    if iters < S:
        raise ValueError(f"iters={iters} is fewer than the {S} temporal-expansion stages (expand={expand!r})")

    t0 = time.perf_counter()
    steps0 = prob.sim_steps
    a = initial_actions(init, T, A, low, high)
    m = np.zeros((T, A))
    v = np.zeros((T, A))
    count = np.zeros(T)  # Adam steps taken by each row (bias correction per row: rows join late)

    best = {"loss": math.inf, "actions": a.copy(), "grad": None}
    factor = 1.0  # step-size factor, halved by each backtrack

    def consider(loss: float, actions: np.ndarray, grad: np.ndarray | None = None) -> bool:
        if loss < best["loss"]:
            best["loss"], best["actions"], best["grad"] = float(loss), actions.copy(), grad
            return True
        return False

    initial_loss = None
    if horizons[0] != T:
        initial_loss = float(prob.loss(a))
        consider(initial_loss, a)

    losses: list[float] = []
    window_of: list[int] = []
    grad_norms: list[float] = []
    stages: list[dict] = []
    bar = tqdm(total=iters, desc="Adam", disable=not progress, leave=False)
    it = 0
    stop = False
    try:
        for s, w in enumerate(horizons):
            remaining_stages = S - s
            if expand_on_plateau:  # an even share of what is left; the last stage takes the rest
                budget = (iters - it) // remaining_stages
            else:  # fixed even split, the remainder to the last stages
                budget = iters // S + (1 if s >= S - iters % S else 0)
            start = it
            stage_losses: list[float] = []
            for i in range(budget):
                snapshot = a.copy()
                loss, g = prob.loss_and_grad(a[:w])
                loss = float(loss)
                g = np.asarray(g, dtype=np.float64).reshape(w, A)
                if initial_loss is None:
                    initial_loss = loss
                if w == T and not consider(loss, snapshot, g) and backtrack and best["grad"] is not None:
                    # overshot: continue from the best iterate with a fresh Adam and half the step
                    factor *= 0.5
                    a, g = best["actions"].copy(), best["grad"]
                    m[:] = v[:] = count[:] = 0
                losses.append(loss)
                stage_losses.append(loss)
                window_of.append(w)
                norm = float(np.linalg.norm(g))
                grad_norms.append(norm)
                if clip_norm is not None and norm > clip_norm:
                    g = g * (clip_norm / norm)
                rate = factor * learning_rate(lr_arr, lr_schedule, i, budget, lr_min_frac, step_every, step_gamma)
                count[:w] += 1
                m[:w] = b1 * m[:w] + (1 - b1) * g
                v[:w] = b2 * v[:w] + (1 - b2) * g * g
                mhat = m[:w] / (1 - b1 ** count[:w])[:, None]
                vhat = v[:w] / (1 - b2 ** count[:w])[:, None]
                a[:w] = np.clip(a[:w] - rate * mhat / (np.sqrt(vhat) + eps), low, high)
                it += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4e}", window=f"{w}/{T}")
                if callback is not None and callback(it - 1, loss, snapshot):
                    stop = True
                    break
                if (expand_on_plateau and remaining_stages > 1 and len(stage_losses) > patience
                        and _plateaued(stage_losses, patience, plateau_tol)):
                    break
            full = float(prob.loss(a))
            consider(full, a)
            stages.append({"horizon": w, "start_iter": start, "iters": it - start, "full_loss": full})
            if stop:
                break
    finally:
        bar.close()
    return OptimResult(
        actions=best["actions"],
        loss=best["loss"],
        losses=losses,
        initial_loss=float(initial_loss),
        sim_steps=int(prob.sim_steps - steps0),
        wall_seconds=time.perf_counter() - t0,
        method="adam",
        stages=stages,
        extras={"horizons": window_of, "grad_norms": grad_norms, "final_loss": stages[-1]["full_loss"],
                "final_actions": a.copy()},
    )


def _plateaued(losses: list[float], patience: int, tol: float) -> bool:
    """True when the best of the last ``patience`` losses improved on the best before them by
    less than ``tol`` relative (to the magnitude of that best)."""
    before = min(losses[:-patience])
    recent = min(losses[-patience:])
    return before - recent <= tol * max(abs(before), 1e-30)

"""Random search over action sequences: the baseline every optimizer should beat.

Each iteration draws ``popsize`` action sequences uniformly inside the action bounds (every
step free, or ``keyframes`` control points per action column linearly interpolated over the
horizon, as :func:`physim.optim.cmaes` uses them), evaluates them (one forward rollout each;
on a :class:`physim.optim.parallel.Pool`'s workers when one is given) and keeps the best.
"""

from __future__ import annotations

import time

import numpy as np
from tqdm.auto import tqdm

from ..scene import SimulationError
from .checks import check_callback, check_positive_int, check_problem
from .cmaes import _check_pool, _Population, keyframe_matrix
from .result import OptimResult

__all__ = ["random_search"]


def random_search(
    problem,
    iters: int = 8,
    popsize: int = 16,
    keyframes: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    callback=None,
    pool=None,
) -> OptimResult:
    """Uniform random search inside the action bounds (which must be finite); gradient free.

    Args:
        problem: anything with the problem protocol (a Gymnasium env: its ``unwrapped``).
        iters: iterations; each draws and evaluates ``popsize`` candidates.
        popsize: candidates per iteration.
        keyframes: draw ``k`` control points per action column, uniformly in the bounds, and
            interpolate them linearly over the horizon (smooth sequences); None: every step's
            action drawn independently.
        seed: seeds the draws (``numpy.random.default_rng(seed)``); the same seed draws the same
            candidates with or without a pool.
        progress: a tqdm progress bar over the iterations.
        callback: ``callback(iteration, best_loss_of_iteration, its_actions)``; True stops.
        pool: a :class:`physim.optim.parallel.Pool` evaluating each iteration's candidates on its
            workers; None: one after another here.

    Returns:
        :class:`OptimResult` (method "random"): ``losses`` holds each iteration's best loss,
        ``initial_loss`` the loss of the action closest to zero (the other optimizers' start),
        which also counts as a candidate; ``extras``: ``evaluations``, ``popsize``,
        ``keyframes``, ``failed`` (candidates whose simulation failed: never the best; an
        iteration where every candidate fails raises ``SimulationError``).
    """
    prob, T, A, low, high = check_problem(problem)
    iters = check_positive_int("iters", iters)
    popsize = check_positive_int("popsize", popsize)
    if seed is not None:
        seed = check_positive_int("seed", seed, minimum=0)
    check_callback(callback)
    _check_pool(pool)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(f"random_search needs finite action bounds, got action_low={low}, action_high={high}")
    k = T if keyframes is None else check_positive_int("keyframes", keyframes)
    W = np.eye(T) if keyframes is None else keyframe_matrix(T, k)
    rng = np.random.default_rng(seed)

    def draw() -> np.ndarray:
        return np.clip(W @ rng.uniform(low, high, (k, A)), low, high)

    t0 = time.perf_counter()
    steps0 = prob.sim_steps
    start = np.tile(np.clip(0.0, low, high), (T, 1))
    initial_loss = float(prob.loss(start))
    best_loss, best_actions = initial_loss, start
    population = _Population(prob, pool, (start, initial_loss))
    losses: list[float] = []
    bar = tqdm(range(iters), desc=population.label("random search"), disable=not progress, leave=False)
    try:
        for it in bar:
            candidates = [draw() for _ in range(popsize)]
            f = population.losses(candidates)
            if np.isnan(f).all():
                raise SimulationError(f"every candidate of random-search iteration {it} failed to simulate")
            i = int(np.nanargmin(f))
            losses.append(float(f[i]))
            if f[i] < best_loss:
                best_loss, best_actions = float(f[i]), candidates[i]
            bar.set_postfix(loss=f"{f[i]:.4e}", best=f"{best_loss:.4e}")
            if callback is not None and callback(it, float(f[i]), candidates[i]):
                break
    finally:
        bar.close()
    return OptimResult(
        actions=best_actions,
        loss=best_loss,
        losses=losses,
        initial_loss=initial_loss,
        sim_steps=int(prob.sim_steps - steps0) + population.pool_sim_steps(),
        wall_seconds=time.perf_counter() - t0,
        method="random",
        extras={"popsize": popsize, "keyframes": keyframes, **population.extras()},
    )


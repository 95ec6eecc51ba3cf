"""CMA-ES over action sequences (optionally through keyframes), and CMA-ES followed by Adam."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
from tqdm.auto import tqdm

from ..scene import GradientError, SimulationError
from .adam import adam
from .checks import check_callback, check_positive_float, check_positive_int, check_problem, initial_actions
from .result import OptimResult

__all__ = ["cmaes", "hybrid", "keyframe_matrix"]


def keyframe_matrix(T: int, k: int) -> np.ndarray:
    """(T, k) linear-interpolation weights: ``actions = W @ keyframes`` puts keyframe ``j`` at step
    ``round(j (T - 1) / (k - 1))`` and interpolates linearly in between (k = 1: a constant).
    Rows are convex combinations, so keyframes inside the bounds give actions inside them."""
    T = check_positive_int("horizon", T)
    k = check_positive_int("keyframes", k)
    if k > T:
        raise ValueError(f"keyframes={k} exceeds the horizon T={T}")
    if k == 1:
        return np.ones((T, 1))
    pos = np.arange(T) * (k - 1) / max(T - 1, 1)  # each step's position in keyframe units
    W = np.zeros((T, k))
    j = np.minimum(np.floor(pos).astype(int), k - 2)
    frac = pos - j
    W[np.arange(T), j] = 1.0 - frac
    W[np.arange(T), j + 1] = frac
    return W


def cmaes(
    problem,
    iters: int = 20,
    popsize: int | None = None,
    sigma0: float = 0.3,
    keyframes: int | None = None,
    init=None,
    seed: int | None = None,
    progress: bool = True,
    callback=None,
    pool=None,
) -> OptimResult:
    """CMA-ES (the ``cma`` package) on the action sequence of ``problem``; gradient free.

    The search runs in normalized coordinates ``z in [-1, 1]`` per action value, mapped to
    ``low + (z + 1) (high - low) / 2``, with cma's bound handling on [-1, 1], so every candidate
    respects the action bounds (which must be finite). With ``keyframes=k`` the search space is
    ``k`` control points per action column, linearly interpolated to the T steps
    (:func:`keyframe_matrix`): k A instead of T A dimensions. Each candidate costs one forward
    rollout (``problem.loss``); a candidate whose simulation blows up (``SimulationError``, NaN
    loss) gets a loss worse than every finite one of its generation.

    Args:
        problem: anything with the problem protocol (a Gymnasium env: its ``unwrapped``).
        iters: generations.
        popsize: candidates per generation (default cma's ``4 + 3 ln(dimension)``).
        sigma0: initial step size in normalized units (a fraction of the half-range of the bounds).
        keyframes: number of control points per action column (None: every step is free).
        init: starting mean, (T, A) or an (A,) row (fitted to the keyframes by least squares);
            default the point of the bounds closest to zero.
        seed: random seed (None: time-based). cma seeds numpy's global generator with it.
        progress: show a tqdm progress bar.
        callback: ``callback(generation, best_loss_of_generation, its_actions)``; returning True stops.
        pool: a :class:`physim.optim.parallel.Pool` whose workers evaluate each generation's
            candidates in parallel (each holding a copy of ``problem``); None: one after another
            here. The initial loss is computed here and every worker checks it gets the same on
            start. The same seed gives the same result either way (to round-off).

    Returns:
        :class:`OptimResult` (method "cmaes"); ``extras``: ``evaluations`` (rollouts),
        ``popsize``, ``dimension``, ``keyframes``, ``failed`` (candidates whose simulation failed),
        ``sigma``, and with a pool ``workers``, ``backend`` and ``pool_start_seconds``.
        ``sim_steps`` includes the workers' rollouts.
    """
    import cma

    prob, T, A, low, high = check_problem(problem)
    iters = check_positive_int("iters", iters)
    sigma0 = check_positive_float("sigma0", sigma0)
    if popsize is not None:
        popsize = check_positive_int("popsize", popsize, minimum=2)
    if seed is not None:
        seed = check_positive_int("seed", seed, minimum=0)
    check_callback(callback)
    _check_pool(pool)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise ValueError(f"cmaes needs finite action bounds, got action_low={low}, action_high={high}")
    k = T if keyframes is None else check_positive_int("keyframes", keyframes)
    W = np.eye(T) if keyframes is None else keyframe_matrix(T, k)
    mid, half = (low + high) / 2, (high - low) / 2
    safe_half = np.where(half > 0, half, 1.0)
    a0 = initial_actions(init, T, A, low, high)
    P0 = a0 if keyframes is None else np.linalg.lstsq(W, a0, rcond=None)[0]
    z0 = np.clip((P0 - mid) / safe_half, -1.0, 1.0).ravel()
    dim = z0.size

    def decode(z) -> np.ndarray:
        P = mid + half * np.clip(np.asarray(z, dtype=np.float64).reshape(k, A), -1.0, 1.0)
        return np.clip(W @ P, low, high)

    opts = {"bounds": [-1.0, 1.0], "verbose": -9, "verb_disp": 0, "verb_log": 0,
            "seed": (seed + 1) if seed is not None else None}  # cma treats seed 0 as "time"
    if popsize is not None:
        opts["popsize"] = popsize
    t0 = time.perf_counter()
    steps0 = prob.sim_steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cma warns about 1-D problems and bound-adjacent starts
        es = cma.CMAEvolutionStrategy(z0, sigma0, opts)
    initial_loss = float(prob.loss(decode(z0)))
    best_loss, best_actions = initial_loss, decode(z0)
    losses: list[float] = []
    population = _Population(prob, pool, (decode(z0), initial_loss))
    bar = tqdm(range(iters), desc=population.label("CMA-ES"), disable=not progress, leave=False)
    try:
        for gen in bar:
            Z = es.ask()
            f = population.losses([decode(z) for z in Z])
            finite = np.isfinite(f)
            if not finite.any():
                raise SimulationError(f"every candidate of CMA-ES generation {gen} failed to simulate")
            worst = f[finite].max()
            f[~finite] = worst + abs(worst) + 1.0
            es.tell(Z, f.tolist())
            i = int(np.argmin(f))
            losses.append(float(f[i]))
            if f[i] < best_loss:
                best_loss, best_actions = float(f[i]), decode(Z[i])
            bar.set_postfix(loss=f"{f[i]:.4e}", best=f"{best_loss:.4e}")
            if callback is not None and callback(gen, float(f[i]), decode(Z[i])):
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
        method="cmaes",
        extras={"popsize": int(es.popsize), "dimension": dim, "keyframes": keyframes, "sigma": float(es.sigma),
                **population.extras()},
    )


def _candidate_loss(prob, actions) -> float:
    """One candidate's loss; NaN when its simulation fails (as a pool's worker reports it)."""
    try:
        return float(prob.loss(actions))
    except (SimulationError, GradientError, FloatingPointError):
        return math.nan


def _check_pool(pool) -> None:
    if pool is not None and not callable(getattr(pool, "losses", None)):
        raise ValueError(f"pool must be a physim.optim.parallel.Pool (or have losses(candidates)), got {pool!r}")


class _Population:
    """Evaluates a population's candidates here or on a pool's workers (started against the
    caller's ``reference = (actions, loss)``), counting evaluations (the reference is one) and
    failed candidates (NaN losses), for :func:`cmaes` and :func:`~physim.optim.random_search`."""

    def __init__(self, prob, pool, reference):
        self.prob, self.pool = prob, pool
        self.evaluations, self.failed = 1, 0
        self._pool_steps0 = 0
        if pool is not None:
            pool.start(reference=reference)
            self._pool_steps0 = pool.sim_steps

    def label(self, name: str) -> str:
        return name if self.pool is None else f"{name} ({self.pool.workers} workers)"

    def losses(self, candidates) -> np.ndarray:
        if self.pool is None:
            f = np.array([_candidate_loss(self.prob, a) for a in candidates])
        else:
            f = np.asarray(self.pool.losses(candidates), dtype=np.float64)
        self.evaluations += len(candidates)
        self.failed += int(np.isnan(f).sum())
        return f

    def pool_sim_steps(self) -> int:
        """Simulated steps the workers ran since the start (0 without a pool)."""
        return 0 if self.pool is None else int(self.pool.sim_steps - self._pool_steps0)

    def extras(self) -> dict:
        out = {"evaluations": self.evaluations, "failed": self.failed}
        if self.pool is not None:
            out.update(workers=self.pool.workers, backend=self.pool.backend,
                       pool_start_seconds=self.pool.start_seconds)
        return out


def hybrid(
    problem,
    cma_iters: int | None = None,
    adam_iters: int | None = None,
    keyframes: int | None | str = "auto",
    popsize: int | None = None,
    sigma0: float = 0.3,
    lr: float = 0.05,
    lr_schedule: str = "cosine",
    clip_norm: float | None = None,
    expand: int | None = None,
    init=None,
    seed: int | None = None,
    progress: bool = True,
    callback=None,
    pool=None,
    budget: int | None = None,
    cma_share: float = 0.5,
) -> OptimResult:
    """CMA-ES (global, gradient free, through ``keyframes``) then Adam (local, gradients) from
    CMA-ES's best sequence, in one call.

    The two stages' iterations are either given (``cma_iters`` generations, default 10;
    ``adam_iters`` iterations, default 30) or derived from a ``budget`` of simulated steps (the
    unit of ``sim_steps``: a rollout of the horizon T costs T, a gradient 2T): CMA-ES gets
    ``cma_share`` of it, ``g = floor((cma_share budget / T - 1) / popsize)`` generations (its
    first rollout is the starting mean), at least 1, and Adam what is left,
    ``n = floor((budget / T - (1 + g popsize) - 1) / 2)`` iterations (its last rollout evaluates
    the final iterate), at least 1. The run then spends at most ``budget`` steps (less with
    ``expand``, whose early windows are shorter than T). Why a split in steps rather than in
    iterations: a generation costs ``popsize`` rollouts and an Adam iteration two, so a split
    of iterations (``physim optimize --method hybrid`` gives CMA-ES a third of ``--iters``)
    hands most of the steps to CMA-ES (e.g. 73 of 98 T at ``--iters 18`` with popsize 12).

    Args:
        cma_iters, popsize, sigma0, keyframes, seed: passed to :func:`cmaes`; ``keyframes="auto"``
            (the default) is 4 keyframes, or one per step when the horizon is shorter than 4 (an
            inverse task whose one action is a parameter guess has T = 1). ``popsize`` None is
            cma's default ``4 + floor(3 ln(keyframes A))``.
        adam_iters, lr, lr_schedule, clip_norm, expand: passed to :func:`adam` (``lr`` in action units).
        init: CMA-ES's starting mean ((T, A) or (A,)).
        pool: a :class:`physim.optim.parallel.Pool` for CMA-ES's candidates (Adam runs here).
        callback: ``callback(iteration, loss, actions)`` with the iteration counted over both
            stages (CMA-ES generations first); returning True stops the current stage.
        budget: simulated steps for both stages (replaces ``cma_iters`` and ``adam_iters``,
            which must then be left out); at least ``T (popsize + 4)``.
        cma_share: the fraction of ``budget`` for CMA-ES, in (0, 1).

    Returns:
        :class:`OptimResult` (method "hybrid"): ``losses`` is CMA-ES's per-generation best losses
        followed by Adam's per-iteration losses; ``stage_boundary`` the index of Adam's first entry;
        ``stages`` one record per stage; ``extras["cma"]`` and ``extras["adam"]`` the two results;
        with a budget ``extras["budget"]`` (the budget, the share, the iterations it gave).
    """
    _, T, A, _, _ = check_problem(problem)
    check_callback(callback)
    if isinstance(keyframes, str):
        if keyframes != "auto":
            raise ValueError(f"keyframes must be an int, None or 'auto', got {keyframes!r}")
        keyframes = min(4, T)
    split = None
    if budget is not None:
        if cma_iters is not None or adam_iters is not None:
            raise ValueError(f"pass either budget ({budget!r}) or cma_iters/adam_iters ({cma_iters!r}/{adam_iters!r}), "
                             "not both")
        budget = check_positive_int("budget", budget)
        cma_share = check_positive_float("cma_share", cma_share)
        if not cma_share < 1:
            raise ValueError(f"cma_share must be in (0, 1), got {cma_share!r}")
        dim = (T if keyframes is None else check_positive_int("keyframes", keyframes)) * A
        pop = 4 + int(3 * math.log(dim)) if popsize is None else check_positive_int("popsize", popsize, minimum=2)
        if budget < T * (pop + 4):
            raise ValueError(f"budget={budget} simulated steps is below one CMA-ES generation and one Adam iteration: "
                             f"T (popsize + 4) = {T} x ({pop} + 4) = {T * (pop + 4)}")
        cma_iters = max(1, math.floor((cma_share * budget / T - 1) / pop))
        adam_iters = max(1, math.floor((budget / T - (1 + cma_iters * pop) - 1) / 2))
        split = {"budget": budget, "cma_share": cma_share, "popsize": pop, "cma_iters": cma_iters,
                 "adam_iters": adam_iters}
    cma_iters = check_positive_int("cma_iters", 10 if cma_iters is None else cma_iters)
    adam_iters = check_positive_int("adam_iters", 30 if adam_iters is None else adam_iters)
    t0 = time.perf_counter()
    # with a budget, CMA-ES runs the population the split was computed for (the same value as cma's
    # default), so the steps it spends are the ones the split counted
    pop = popsize if split is None else split["popsize"]
    r1 = cmaes(problem, iters=cma_iters, popsize=pop, sigma0=sigma0, keyframes=keyframes, init=init, seed=seed,
               progress=progress, callback=callback, pool=pool)
    offset = len(r1.losses)
    cb2 = None if callback is None else (lambda i, loss, a: callback(offset + i, loss, a))
    r2 = adam(problem, iters=adam_iters, lr=lr, init=r1.actions, lr_schedule=lr_schedule, clip_norm=clip_norm,
              expand=expand, seed=seed, progress=progress, callback=cb2)
    best = r2 if r2.loss <= r1.loss else r1
    extras = {"cma": r1, "adam": r2}
    if split is not None:
        extras["budget"] = split
    return OptimResult(
        actions=best.actions,
        loss=best.loss,
        losses=r1.losses + r2.losses,
        initial_loss=r1.initial_loss,
        sim_steps=r1.sim_steps + r2.sim_steps,
        wall_seconds=time.perf_counter() - t0,
        method="hybrid",
        stages=[{"method": "cmaes", "start_iter": 0, "iters": offset, "loss": r1.loss},
                {"method": "adam", "start_iter": offset, "iters": len(r2.losses), "loss": r2.loss}],
        stage_boundary=offset,
        extras=extras,
    )

"""Evaluate a population of action sequences in parallel: Ray actors or worker processes.

    from physim.optim import cmaes, parallel
    factory = parallel.EnvFactory("physim/MassSpringWalker2D-v0", {"horizon": 20}, seed=0)
    with parallel.Pool(factory, workers=2) as pool:     # Ray when installed, else processes
        result = cmaes(env.unwrapped, iters=8, pool=pool)

A :class:`Pool` starts ``workers`` workers, each of which builds its own copy of the problem
once (``factory()``: an env made and reset there, so its Taichi kernels compile, or load from
Taichi's offline cache, once per worker and stay warm) and then evaluates candidates sent to
it: ``pool.losses(list_of_action_arrays)`` returns their losses in order, each a forward
rollout from the problem's start state, exactly what ``problem.loss`` returns in this process
(to round-off: threaded atomic adds sum in a thread-dependent order). A candidate whose
simulation fails (``SimulationError``, ``GradientError``, a NaN loss) gets NaN, as
:func:`physim.optim.cmaes` treats it in-process; any other error in a worker is raised here.

Workers are Ray actors when Ray is installed (``pip install "physim[ray]"``), joining the
cluster at ``ray_address`` or a new local Ray on this machine when none is given, and
otherwise processes of this machine (``concurrent.futures`` with the ``spawn`` start method,
so each has its own Taichi runtime). Every worker starts Taichi with this process's backend
settings (arch, precision, seed, fast_compile, deterministic). On a cluster, every node needs
physim installed in the same Python environment. Worker processes are spawned, so they import
the calling script again: a script that uses the processes backend must make its pool under
``if __name__ == "__main__":``.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BACKENDS", "EnvFactory", "Pool", "init_ray", "ray_available"]

#: the values ``Pool(backend=...)`` accepts
BACKENDS = ("auto", "ray", "processes")


def ray_available() -> bool:
    """Whether Ray is importable (the ``physim[ray]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def init_ray(address: str | None = None, init_kwargs: dict | None = None) -> bool:
    """Connect this process to Ray unless it already is: join the cluster at ``address``
    (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``) or, with ``address=None``, start a new
    local Ray on this machine (never a cluster that ``ray start`` left running here: pass
    ``"auto"`` for that one). ``init_kwargs`` go to ``ray.init`` (the dashboard is off and
    Ray logs warnings only, unless they say otherwise). Returns whether this call started the
    connection (so the caller shuts it down when done)."""
    import ray

    if ray.is_initialized():
        return False
    kw = dict(init_kwargs or {})
    kw.setdefault("include_dashboard", False)
    kw.setdefault("logging_level", "WARNING")
    kw["address"] = "local" if address is None else address
    ray.init(**kw)
    return True


@dataclass(frozen=True, eq=False)
class EnvFactory:
    """Builds a registered env's problem in a worker: ``gym.make(env_id, **kwargs)``, then
    ``reset(seed=seed)`` (which draws the goal), and returns its ``unwrapped`` env, which
    implements the problem protocol (:mod:`physim.optim.problem`). Picklable, so it can be
    sent to worker processes and Ray actors.

    Attributes:
        env_id: a registered id, e.g. ``"physim/Walker2D-v0"``.
        kwargs: ``gym.make`` keyword arguments (``horizon``, ``scale``, the task's arguments).
        seed: the ``reset`` seed (the goal); None: no seeded reset.
    """

    env_id: str
    kwargs: dict = field(default_factory=dict)
    seed: int | None = None

    @classmethod
    def from_env(cls, env, seed: int | None) -> EnvFactory:
        """The factory of an env made with ``gym.make`` and reset with ``seed``: its id and its
        full argument values (``env.unwrapped.settings``: horizon, scale and every task
        argument), so a worker's copy has the same size, settings and goal."""
        spec = getattr(env, "spec", None)
        if spec is None:
            raise ValueError(f"{env!r} was not made with gym.make (it has no spec); build an EnvFactory by hand")
        settings = getattr(env.unwrapped, "settings", None)
        if settings is None:
            raise ValueError(f"{spec.id} has no `settings` (not a physim task); build an EnvFactory by hand")
        return cls(spec.id, dict(settings), seed)

    def __call__(self):
        import gymnasium as gym

        import physim.envs  # noqa: F401  (registers the tasks)

        env = gym.make(self.env_id, **self.kwargs)
        env.reset(seed=self.seed)
        return env.unwrapped


class _Evaluator:
    """A worker's problem: built once, then evaluates one candidate per call."""

    def __init__(self, name: str, backend_config, factory, reference=None):
        import physim

        from .checks import check_problem

        if backend_config is not None:
            c = backend_config
            physim.init(arch=c.arch, precision=c.precision, seed=c.seed, debug=c.debug, fast_compile=c.fast_compile,
                        deterministic=c.deterministic, verbose=False)
        else:
            physim.backend.ensure_init()
        self.name = name
        self.problem, *_ = check_problem(factory())
        self.pid = os.getpid()
        if reference is not None:
            actions, expected, rtol = reference
            got = float(self.problem.loss(actions))
            if not math.isclose(got, expected, rel_tol=rtol, abs_tol=1e-12):
                raise ValueError(f"worker {name}: the reference actions give loss {got!r} here but {expected!r} in the "
                                 f"main process: the worker's problem differs (env arguments, goal seed, start state)")

    def ready(self) -> str:
        return self.name

    def evaluate(self, index: int, actions) -> tuple[int, float, int, float]:
        """(index, loss or NaN where the simulation failed, simulated steps used, CPU seconds of
        this worker's threads)."""
        from ..scene import GradientError, SimulationError

        before, cpu = self.problem.sim_steps, time.process_time()
        try:
            loss = float(self.problem.loss(actions))
        except (SimulationError, GradientError, FloatingPointError):
            loss = math.nan
        return index, loss, int(self.problem.sim_steps - before), time.process_time() - cpu


# ---------------------------------------------------------------- worker processes
_WORKER: _Evaluator | None = None
_WORKER_ERROR: str | None = None


def _process_init(backend_config, factory, reference) -> None:
    global _WORKER, _WORKER_ERROR
    try:
        _WORKER = _Evaluator(f"process-{os.getpid()}", backend_config, factory, reference)
    except BaseException:  # kept and raised by the first call, with the worker's traceback
        _WORKER_ERROR = traceback.format_exc()


def _process_worker() -> _Evaluator:
    if _WORKER is None:
        raise RuntimeError(f"a physim worker process failed to start:\n{_WORKER_ERROR}")
    return _WORKER


def _process_ready() -> str:
    return _process_worker().ready()


def _process_evaluate(index: int, actions) -> tuple[int, float, int, float]:
    return _process_worker().evaluate(index, actions)


class Pool:
    """``workers`` workers, each holding a warm copy of one problem, evaluating candidates in parallel.

    Args:
        factory: a picklable zero-argument callable that returns the problem (an object with
            the problem protocol) in a worker, e.g. :class:`EnvFactory`. It must build the same
            problem the caller optimizes (same start state, goal and loss).
        workers: number of workers (>= 1).
        backend: ``"auto"`` (Ray when installed, else processes), ``"ray"`` or ``"processes"``.
        ray_address: the Ray cluster to join (``"auto"``: the one ``ray start`` runs on this
            machine; ``"ray://host:10001"``, ``"host:6379"``); default a new local Ray on this
            machine, shut down by :meth:`close`. A Ray already initialized in this process is
            used as it is. Only with the Ray backend.
        ray_init_kwargs: extra ``ray.init`` keyword arguments (e.g. ``num_cpus=2``).

    The workers start on :meth:`start` (or the first :meth:`losses`); use the pool as a context
    manager, or call :meth:`close`, to stop them. ``sim_steps`` and ``evaluations`` count the
    workers' rollouts (the start check's excluded), ``cpu_seconds`` their CPU time (every thread
    of a worker counts). A started pool can serve several optimizer runs on the same problem.
    """

    def __init__(self, factory, workers: int = 2, backend: str = "auto", ray_address: str | None = None,
                 ray_init_kwargs: dict | None = None):
        from .checks import check_positive_int

        if not callable(factory):
            raise TypeError(f"factory must be a callable returning the problem, got {type(factory).__name__}")
        self.workers = check_positive_int("workers", workers)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = "ray" if ray_available() else "processes"
        if backend == "ray" and not ray_available():
            raise ImportError('the Ray backend needs Ray, which is not installed: pip install "physim[ray]"')
        if ray_address is not None and backend != "ray":
            raise ValueError(f"ray_address={ray_address!r} needs the Ray backend, not {backend!r}")
        self.factory = factory
        self.backend = backend
        self.ray_address = ray_address
        self.ray_init_kwargs = dict(ray_init_kwargs or {})
        self.sim_steps = 0
        self.evaluations = 0
        self.cpu_seconds = 0.0  #: CPU time of the workers' threads in their evaluations
        self.start_seconds: float | None = None  #: wall time of :meth:`start` (worker startup)
        self._executor = None
        self._actors: list = []
        self._ray_started = False
        self._started = False

    # ---------------------------------------------------------------- lifecycle
    @property
    def started(self) -> bool:
        return self._started

    def start(self, reference=None) -> Pool:
        """Start the workers (a no-op when they run) and wait until each has built its problem.

        ``reference``: ``(actions, loss)`` as computed in this process; every worker checks that
        its problem gives the same loss for ``actions`` (relative tolerance 1e-6 in f64, 1e-3 in
        f32) and the start fails with a ``ValueError`` naming both losses when it does not.
        """
        if self._started:
            return self
        from physim import backend

        cfg = backend.config()
        if reference is not None:
            actions, loss = reference
            rtol = 1e-3 if cfg is not None and cfg.precision == "f32" else 1e-6
            reference = (np.asarray(actions, dtype=np.float64), float(loss), rtol)
        t0 = time.perf_counter()
        try:
            if self.backend == "ray":
                self._start_ray(cfg, reference)
            else:
                self._start_processes(cfg, reference)
        except BaseException:
            self.close()
            raise
        self._started = True
        self.start_seconds = time.perf_counter() - t0
        return self

    def _start_processes(self, cfg, reference) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_process_init, initargs=(cfg, self.factory, reference))
        # one call per worker makes the executor spawn them all now; a failed start raises here
        futures = [self._executor.submit(_process_ready) for _ in range(self.workers)]
        try:
            names = [f.result() for f in futures]
        except BrokenProcessPool as e:
            raise RuntimeError(
                "a physim worker process died while starting. The processes backend spawns fresh Python "
                "processes, which import the calling script again: a script that makes a Pool (or calls "
                "cmaes with one, or `physim.cli.optimize(workers=...)`) must do it under "
                "`if __name__ == \"__main__\":`") from e
        self.worker_names = sorted(set(names))

    def _start_ray(self, cfg, reference) -> None:
        import ray

        self._ray_started = init_ray(self.ray_address, self.ray_init_kwargs)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        # an actor asks for at most its share of the CPUs, so more workers than CPUs still start
        Actor = ray.remote(num_cpus=min(1.0, cpus / self.workers))(_Evaluator)
        self._actors = [Actor.remote(f"ray-{k}", cfg, self.factory, reference) for k in range(self.workers)]
        self.worker_names = ray.get([a.ready.remote() for a in self._actors])

    def close(self) -> None:
        """Stop the workers (and a local Ray this pool started)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._actors or self._ray_started:
            import ray

            for a in self._actors:
                ray.kill(a)
            self._actors = []
            if self._ray_started:
                ray.shutdown()
                self._ray_started = False
        self._started = False

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- evaluation
    def losses(self, candidates) -> np.ndarray:
        """The loss of every action array of ``candidates`` (a list of (t, A) arrays), in order;
        NaN where the candidate's simulation failed."""
        candidates = [np.asarray(a, dtype=np.float64) for a in candidates]
        if not candidates:
            return np.zeros(0)
        self.start()
        results = self._map_ray(candidates) if self.backend == "ray" else self._map_processes(candidates)
        out = np.full(len(candidates), math.nan)
        for index, loss, steps, cpu in results:
            out[index] = loss
            self.sim_steps += steps
            self.cpu_seconds += cpu
        self.evaluations += len(candidates)
        return out

    def _map_processes(self, candidates) -> list:
        futures = [self._executor.submit(_process_evaluate, i, a) for i, a in enumerate(candidates)]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def _map_ray(self, candidates) -> list:
        import ray

        queue = list(enumerate(candidates))
        running = {}
        for actor in self._actors:  # one candidate per actor at a time: a free actor takes the next
            if queue:
                running[actor.evaluate.remote(*queue.pop(0))] = actor
        results = []
        try:
            while running:
                [done], _ = ray.wait(list(running), num_returns=1)
                actor = running.pop(done)
                results.append(ray.get(done))
                if queue:
                    running[actor.evaluate.remote(*queue.pop(0))] = actor
        except BaseException:
            for ref in running:
                ray.cancel(ref)
            raise
        return results

    def __repr__(self) -> str:
        where = f", ray_address={self.ray_address!r}" if self.ray_address else ""
        return f"Pool({self.backend}, workers={self.workers}{where}, started={self._started})"

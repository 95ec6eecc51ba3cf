"""Sweeps of ``physim optimize`` runs (tasks x methods x seeds), in one process or over Ray.

    physim sweep --envs Walker2D,MassSpringWalker2D --methods adam,cma --seeds 0,1 --iters 8
    physim sweep ... --ray-address ray://head:10001      # join a running Ray cluster

Every job is one :func:`physim.cli.optimize` call (no video) writing its usual results to
``<out>/<Task>-v0/<method>-s<seed>/``. With Ray installed (``pip install "physim[ray]"``) the
jobs run on ``workers`` Ray actors, one process each, that take jobs from a shared queue: a
worker starts its Taichi runtime once and keeps every env it has made (by task and arguments),
so its compiled kernels stay warm across the jobs it runs. Without an address Ray starts a
local cluster on this machine; with one it joins that cluster (``ray.init(address=...)``).
Without Ray, or with ``use_ray=False``, the jobs run one after another in this process (the
same env cache). Either way the results table is gathered in job order and written as
``results.csv`` and ``results.json``; :func:`markdown_table` prints it.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Job", "make_jobs", "run_job", "sweep", "markdown_table", "ray_available", "COLUMNS"]

#: the results table's columns
COLUMNS = ("env", "method", "seed", "iters", "horizon", "initial_loss", "best_loss", "sim_steps", "wall_seconds",
           "worker")


@dataclass(frozen=True)
class Job:
    """One ``optimize`` run of a sweep."""

    index: int
    env: str
    method: str
    seed: int
    iters: int
    horizon: int | None
    out: str
    #: ``gym.make`` scale (None: the task's default) and task arguments, as (name, value) pairs
    scale: str | None = None
    env_kwargs: tuple = ()


def ray_available() -> bool:
    """Whether Ray is importable (the ``physim[ray]`` extra)."""
    return importlib.util.find_spec("ray") is not None


def _split(what: str, value, convert=str) -> list:
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [i.strip() if isinstance(i, str) else i for i in items]
    if not items or any(i == "" for i in items):
        raise ValueError(f"{what} must be a non-empty comma-separated list, got {value!r}")
    try:
        out = [convert(i) for i in items]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a comma-separated list of {convert.__name__}s, got {value!r}") from None
    if len(set(out)) != len(out):
        raise ValueError(f"{what} lists an entry twice: {value!r}")
    return out


def make_jobs(envs, methods, seeds, iters: int, horizon: int | None = None, out: str = "out/sweep",
              scale: str | None = None, env_kwargs: dict | None = None) -> list[Job]:
    """The jobs of a sweep: every (env, method, seed), in that nesting order. ``envs``,
    ``methods`` and ``seeds`` are lists or comma-separated strings; env names are resolved
    (``"Walker2D"`` -> ``"physim/Walker2D-v0"``) and checked, as are the methods. ``scale`` and
    ``env_kwargs`` (``gym.make`` arguments, the same for every env) are checked against each
    env's Arguments table (:func:`physim.cli.check_env_kwargs`)."""
    from physim.cli import METHODS, _env_id, check_env_kwargs

    try:
        envs = [_env_id(e) for e in _split("envs", envs)]
    except SystemExit as e:  # the command's message for an unknown env, as a library error
        raise ValueError(str(e).removeprefix("physim: ")) from None
    methods = _split("methods", methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    seeds = _split("seeds", seeds, int)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    if horizon is not None and (isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1):
        raise ValueError(f"horizon must be an integer >= 1, got {horizon!r}")
    env_kwargs = dict(env_kwargs or {})
    for env in envs:
        check_env_kwargs(env, scale, env_kwargs, horizon)  # ValueError / TypeError naming the argument
    pairs = tuple(sorted(env_kwargs.items()))
    jobs = []
    for env in envs:
        for method in methods:
            for seed in seeds:
                path = Path(out) / env.split("/")[-1] / f"{method}-s{seed}"
                jobs.append(Job(len(jobs), env, method, seed, iters, horizon, str(path), scale, pairs))
    return jobs


class _Runner:
    """Runs jobs in one process, keeping the envs it made (so their compiled kernels stay warm)."""

    def __init__(self, name: str = "local", arch: str | None = None, full_compile: bool = False):
        import physim

        if physim.backend.config() is None:  # as `physim optimize` starts it
            physim.init(arch=arch, fast_compile=not full_compile, verbose=False)
        self.name = name
        self.envs: dict = {}

    def run(self, job: Job) -> dict:
        import gymnasium as gym

        import physim.envs  # noqa: F401  (registers the tasks)
        from physim.cli import optimize

        key = (job.env, job.horizon, job.scale, repr(job.env_kwargs))
        if key not in self.envs:
            kwargs = dict(job.env_kwargs)
            if job.horizon is not None:
                kwargs["horizon"] = job.horizon
            if job.scale is not None:
                kwargs["scale"] = job.scale
            self.envs[key] = gym.make(job.env, render_mode="rgb_array", **kwargs)
        rec = optimize(job.env, method=job.method, iters=job.iters, seed=job.seed, out=job.out, horizon=job.horizon,
                       video=False, progress=False, env=self.envs[key], scale=job.scale,
                       env_kwargs=dict(job.env_kwargs))
        return {"index": job.index, "env": job.env, "method": job.method, "seed": job.seed, "iters": job.iters,
                "horizon": rec["horizon"], "initial_loss": rec["initial_loss"],
                "best_loss": rec["final_loss"], "sim_steps": rec["sim_steps"],
                "wall_seconds": rec["wall_seconds"], "worker": self.name, "out": job.out,
                "settings": rec["settings"]}


def run_job(job: Job) -> dict:
    """Run one job in this process (a fresh env; see :func:`sweep` for the cached path)."""
    return _Runner().run(job)


def _run_ray(jobs: list[Job], workers: int | None, address: str | None, arch: str | None, full_compile: bool,
             init_kwargs: dict, progress: bool) -> list[dict]:
    import ray

    from physim.optim.parallel import init_ray

    # no address: always a fresh local Ray, never a cluster that ``ray start`` left registered on
    # this machine (pass --ray-address auto to join that one)
    started = init_ray(address, init_kwargs)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = min(len(jobs), workers or max(cpus, 1))
        Worker = ray.remote(num_cpus=min(1, cpus / n))(_Runner)
        actors = [Worker.remote(f"ray-{k}", arch, full_compile) for k in range(n)]
        queue = list(jobs)
        running = {}
        for actor in actors:  # one job per actor at a time; a free actor takes the next job
            if queue:
                running[actor.run.remote(queue.pop(0))] = actor
        rows = []
        bar = _bar(len(jobs), progress)
        while running:
            [done], _ = ray.wait(list(running), num_returns=1)
            actor = running.pop(done)
            rows.append(ray.get(done))
            bar.update(1)
            if queue:
                running[actor.run.remote(queue.pop(0))] = actor
        bar.close()
        for actor in actors:
            ray.kill(actor)
        return rows
    finally:
        if started:
            ray.shutdown()


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="sweep jobs", disable=not progress)


def sweep(envs, methods, seeds, iters: int, horizon: int | None = None, workers: int | None = None,
          ray_address: str | None = None, out: str = "out/sweep", use_ray: bool | None = None,
          arch: str | None = None, full_compile: bool = False, ray_init_kwargs: dict | None = None,
          progress: bool = True, scale: str | None = None, env_kwargs: dict | None = None) -> list[dict]:
    """Run ``optimize`` for every (env, method, seed) and gather the results table.

    Args:
        envs, methods, seeds: lists or comma-separated strings (see :func:`make_jobs`).
        iters: iterations of every run; horizon: episode length (default each task's).
        workers: Ray actors (default: the cluster's CPUs, at most one per job). Ignored in-process.
        ray_address: a Ray cluster to join (``"auto"``: the one ``ray start`` runs on this machine;
            ``"ray://host:10001"``, ``"host:6379"``); default: start a new local Ray on this machine.
            A Ray already initialized in this process is used as it is.
        out: output directory: ``results.csv``, ``results.json`` and one folder per job.
        use_ray: ``None``: Ray when installed; ``True``: require it; ``False``: in this process.
        arch: the Taichi arch of every worker (default auto); full_compile: Taichi's full kernel
            optimization in every worker (default off, as ``physim optimize``). A runtime already
            started in this process is used as it is for the in-process path.
        ray_init_kwargs: extra ``ray.init`` keyword arguments (e.g. ``num_cpus=2``).
        progress: a progress bar over the jobs.
        scale, env_kwargs: ``gym.make``'s ``scale`` and task arguments for every env (checked
            against each env first; see :func:`make_jobs`).

    Returns the rows (dicts with :data:`COLUMNS`, ``out`` and ``settings``: the env's argument
    values), in job order.
    """
    jobs = make_jobs(envs, methods, seeds, iters, horizon, out, scale, env_kwargs)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if use_ray is None:
        use_ray = ray_available()
    if (use_ray or ray_address is not None) and not ray_available():
        why = f"--ray-address {ray_address}" if ray_address is not None else "use_ray=True"
        raise ImportError(f'{why} needs Ray, which is not installed: pip install "physim[ray]"')
    if ray_address is not None and not use_ray:
        raise ValueError(f"ray_address={ray_address!r} given with use_ray=False")
    Path(out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if use_ray:
        rows = _run_ray(jobs, workers, ray_address, arch, full_compile, ray_init_kwargs or {}, progress)
    else:
        runner = _Runner("local", arch, full_compile)
        rows = []
        bar = _bar(len(jobs), progress)
        for job in jobs:
            rows.append(runner.run(job))
            bar.update(1)
        bar.close()
    rows.sort(key=lambda r: r["index"])
    for r in rows:
        del r["index"]
    total = time.perf_counter() - t0
    write_table(rows, out, meta={"mode": "ray" if use_ray else "in-process", "ray_address": ray_address,
                                 "workers": workers, "wall_seconds_total": round(total, 2)})
    return rows


def write_table(rows: list[dict], out: str, meta: dict | None = None) -> None:
    """Write ``results.csv`` (the :data:`COLUMNS`) and ``results.json`` (rows and ``meta``) to ``out``."""
    out = Path(out)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps({"meta": meta or {}, "rows": rows}, indent=2))


def markdown_table(rows: list[dict]) -> str:
    """The results as a Markdown table: env, method, seed, initial and best loss, sim steps, wall s."""
    lines = ["| env | method | seed | initial loss | best loss | sim steps | wall s | worker |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['env']} | {r['method']} | {r['seed']} | {r['initial_loss']:.5g} | {r['best_loss']:.5g} | "
                     f"{r['sim_steps']} | {r['wall_seconds']:.1f} | {r['worker']} |")
    return "\n".join(lines)

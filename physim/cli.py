"""The ``physim`` command.

    physim list                                   # registered environments
    physim optimize physim/Pinch-v0               # Adam through the simulator; writes out/Pinch-v0/
    physim optimize physim/Walker2D-v0 --method policy --iters 20
    physim optimize Pinch --method cma --workers 2  # each generation's rollouts on 2 workers (Ray or processes)
    physim optimize Pinch --env-arg grid_res=48 --env-arg "depth_range=(0.02, 0.05)"  # gym.make arguments
    physim train physim/Walker2D-v0 --algo ppo --steps 20000   # SB3 baseline (pip install "physim[rl]")
    physim sweep --envs Walker2D,Pinch --methods adam,cma --seeds 0,1 --iters 8   # Ray when installed
    physim demo sculpt_plasticine                 # interactive PyVista window (--offscreen --out f.mp4)

Every subcommand returns the process exit status (0 on success; errors raise). With
``PHYSIM_SMOKE=1`` in the environment each runs at its smallest size, as the README's
command test does (``tests/test_readme_commands.py``): ``optimize`` one iteration over a
horizon of 4 steps, a headless demo 2 frames, an interactive demo window a few frames, a
key press and Escape (see :mod:`physim.smoke`), ``train`` 8 env steps over a horizon of 4,
``sweep`` one iteration per job over a horizon of 4. Outputs and exit statuses stay the same.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "optimize", "parse_env_args", "check_env_kwargs", "check_workers"]

METHODS = ("adam", "cma", "hybrid", "policy", "random")
#: the methods that evaluate populations of candidates (what ``--workers`` parallelizes)
POPULATION_METHODS = ("cma", "hybrid", "random")
DEMOS = ("sculpt_plasticine", "pour_water", "soft_walker", "tactile_probe", "fold_paper", "push_duck")

#: iterations per method when --iters is not given: a few minutes on 2 CPU cores
DEFAULT_ITERS = {"adam": 20, "cma": 8, "hybrid": 16, "policy": 15, "random": 8}
#: ``physim train``'s env steps with ``PHYSIM_SMOKE=1`` (two episodes of the smoke horizon)
SMOKE_TRAIN_STEPS = 8


def _env_id(name: str) -> str:
    from physim.envs import ENVS

    if name in ENVS:
        return name
    full = name if name.startswith("physim/") else f"physim/{name}"
    if not full.endswith("-v0"):
        full += "-v0"
    if full not in ENVS:
        raise SystemExit(f"physim: unknown environment {name!r}; `physim list` shows the registered ones")
    return full


def _env_class(env_id: str):
    import gymnasium as gym

    import physim.envs  # noqa: F401  (registers the environments)

    entry = gym.spec(env_id).entry_point
    if not isinstance(entry, str):
        return entry
    module, name = entry.split(":")
    return getattr(importlib.import_module(module), name)


#: ``gym.make`` keywords that have their own option (or none) instead of ``--env-arg``
_RESERVED = {"horizon": "--horizon", "scale": "--scale", "render_mode": None, "seed": "--seed"}


def parse_env_args(pairs) -> dict:
    """``--env-arg KEY=VALUE`` strings as a dict: each value parsed as a Python literal
    (``48``, ``0.5``, ``True``, ``"(0.3, 0.2)"``, ``None``), a bare word kept as a string.
    Raises ``ValueError`` naming a malformed pair, a repeated key or a reserved one (horizon,
    scale, seed and render_mode have their own options)."""
    out: dict = {}
    for pair in pairs or ():
        key, sep, text = str(pair).partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--env-arg expects KEY=VALUE with KEY a Python name, got {pair!r}")
        if key in _RESERVED:
            option = _RESERVED[key]
            raise ValueError(f"--env-arg {key}=...: {key} is set by {option}" if option
                             else f"--env-arg {key}=...: {key} cannot be set on the command line")
        if key in out:
            raise ValueError(f"--env-arg {key} given twice ({out[key]!r} and {text!r})")
        try:
            out[key] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            out[key] = text.strip()  # a bare word: a string value (e.g. a choice)
    return out


def check_env_kwargs(env_id: str, scale: str | None = None, env_kwargs: dict | None = None,
                     horizon: int | None = None) -> dict:
    """The ``gym.make`` keyword arguments for ``env_id`` (``horizon``, ``scale`` and the task's
    arguments), validated by the task's own ``config`` before anything is built. A bad value
    raises ``ValueError``, an unknown name ``TypeError``; both messages name the argument and
    end with the task's Arguments table."""
    cls = _env_class(env_id)
    kwargs = dict(env_kwargs or {})
    if horizon is not None:
        kwargs["horizon"] = int(horizon)
    if scale is not None:
        kwargs["scale"] = scale
    config = getattr(cls, "config", None)
    if config is not None:
        try:
            config(**kwargs)
        except (ValueError, TypeError) as e:
            from physim.envs._args import arguments_table

            raise type(e)(f"{env_id}: {e}\n\n{cls.__name__} arguments:\n{arguments_table(cls)}") from None
    return kwargs


def _cmd_list(args) -> int:
    from physim.envs import describe

    rows = describe()
    width = max(len(k) for k, _ in rows)
    for env_id, doc in rows:
        print(f"{env_id:<{width}}  {doc}")
    return 0


def optimize(env_id: str, method: str = "adam", iters: int | None = None, seed: int = 0, out: str | None = None,
             horizon: int | None = None, lr: float | None = None, video: bool = True, progress: bool = True,
             env=None, scale: str | None = None, env_kwargs: dict | None = None, workers: int | None = None,
             ray_address: str | None = None, backend: str = "auto", ray_init_kwargs: dict | None = None,
             worlds: int | None = None, budget: int | None = None) -> dict:
    """Optimize an environment's action sequence (or a policy) and write the results.

    Writes to ``out`` (default ``out/<Task>-v0``): ``result.json`` (env, method, iters, losses,
    initial_loss, final_loss, wall_seconds, sim_steps, settings (the env's arguments), ...),
    ``actions.npy``, ``loss.png`` and ``rollout.mp4`` (the optimized rollout, unless
    ``video=False``). Returns the result dict.

    ``scale`` (``"default"`` or ``"paper"``) and ``env_kwargs`` (the task's arguments, its
    docstring's Arguments table) go to ``gym.make``, checked first (:func:`check_env_kwargs`).

    ``method="random"`` is uniform random search (:func:`physim.optim.random_search.random_search`,
    16 candidates per iteration), the baseline.

    ``workers`` (>= 2; ``cma``, ``hybrid`` and ``random`` only): evaluate each generation's
    candidates on that many workers holding warm copies of the env (:class:`physim.optim.parallel.Pool`):
    Ray actors when Ray is installed (``backend="auto"``; joining ``ray_address``, or a new local
    Ray on this machine), else worker processes (``backend="processes"`` forces them). The same
    seed gives the same result as ``workers=None`` (one process), to round-off.

    ``worlds`` (>= 2; population methods, not with ``workers``): evaluate up to that many
    candidates at once in the worlds of one batched scene (:class:`physim.optim.batched.BatchedPool`;
    tasks whose scenes batch: MPM bodies and tools). Same result as one process, to round-off.

    ``budget`` (``hybrid`` only, instead of ``iters``): simulated env steps (a rollout costs the
    horizon T, a gradient 2 T), split half and half between CMA-ES and Adam by
    :func:`physim.optim.hybrid` (``budget=``); on Sliding at ~100 T this split beat both Adam and
    CMA-ES alone on three seeds, where ``iters`` (a third of them CMA-ES generations) leaves Adam
    too few iterations (``benchmarks/README.md``, "Thin shells").

    ``env``: an env already made for ``env_id`` (``gym.make(env_id, render_mode="rgb_array",
    horizon=horizon)``) to reuse instead of making one; it is reset with ``seed`` and left open
    (:mod:`physim.sweep` keeps one per task in every worker so compiled kernels stay warm).
    """
    import gymnasium as gym

    import physim.envs  # noqa: F401  (registers the environments)
    from physim import optim

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    env_id = _env_id(env_id)
    iters = DEFAULT_ITERS[method] if iters is None else int(iters)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    check_workers(method, workers, ray_address)
    if budget is not None:
        if method != "hybrid":
            raise ValueError(f"budget={budget!r} applies to method 'hybrid' (a budget of simulated steps split "
                             f"between CMA-ES and Adam), not {method!r}: pass iters")
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
            raise ValueError(f"budget must be an integer >= 1 (simulated env steps), got {budget!r}")
    if worlds is not None:
        if isinstance(worlds, bool) or not isinstance(worlds, (int, np.integer)) or worlds < 1:
            raise ValueError(f"worlds must be an integer >= 1, got {worlds!r}")
        if method not in POPULATION_METHODS and worlds > 1:
            raise ValueError(f"worlds={worlds} applies to the population methods {', '.join(POPULATION_METHODS)}, "
                             f"not {method!r}")
        if workers is not None and workers > 1:
            raise ValueError("worlds and workers are two ways to evaluate a generation; pass one of them")
    kwargs = check_env_kwargs(env_id, scale, env_kwargs, horizon)
    out_dir = Path(out or Path("out") / env_id.split("/")[-1])
    out_dir.mkdir(parents=True, exist_ok=True)
    own_env = env is None
    if own_env:
        env = gym.make(env_id, render_mode="rgb_array", **kwargs)
    elif env.spec is None or env.spec.id != env_id:
        raise ValueError(f"env was made for {env.spec.id if env.spec else env!r}, not {env_id!r}")
    else:
        _check_settings(env.unwrapped, kwargs)
    task = env.unwrapped
    env.reset(seed=seed)
    pool = None
    if workers is not None and workers > 1:
        from physim.optim.parallel import EnvFactory, Pool

        pool = Pool(EnvFactory.from_env(env, seed), workers=int(workers), backend=backend, ray_address=ray_address,
                    ray_init_kwargs=ray_init_kwargs)
    elif worlds is not None and worlds > 1:
        from physim.optim.batched import BatchedPool

        pool = BatchedPool(task, worlds=int(worlds))
    t0 = time.perf_counter()
    opts = {"seed": seed, "progress": progress}
    if lr is not None and method in ("adam", "policy"):
        opts["lr"] = lr
    # a task's own optimizer settings (adam_defaults / policy_defaults), the command line's winning
    defaults = {"adam": "adam_defaults", "policy": "policy_defaults"}.get(method)
    method_opts = {**getattr(task, defaults, {}), **opts} if defaults else opts
    try:
        if method == "adam":
            res = optim.adam(task, iters=iters, **method_opts)
        elif method == "cma":
            res = optim.cmaes(task, iters=iters, pool=pool, **opts)
        elif method == "hybrid" and budget is not None:
            res = optim.hybrid(task, budget=int(budget), pool=pool, **opts)
        elif method == "hybrid":
            cma_iters = max(1, iters // 3)
            res = optim.hybrid(task, cma_iters=cma_iters, adam_iters=max(1, iters - cma_iters), pool=pool, **opts)
        elif method == "random":
            from physim.optim.random_search import random_search

            res = random_search(task, iters=iters, pool=pool, **opts)
        else:
            res = optim.train_policy(env, iters=iters, **method_opts)
    finally:
        if pool is not None:
            pool.close()
    wall = time.perf_counter() - t0
    env.reset(seed=seed)
    actions = np.asarray(res.actions, dtype=np.float64)
    record = {
        "env": env_id,
        "method": method,
        "iters": iters if budget is None else len(res.losses),
        "budget": budget,
        "seed": seed,
        "horizon": task.horizon,
        "losses": [float(v) for v in res.losses],
        "initial_loss": float(res.initial_loss),
        "final_loss": float(res.loss),
        "wall_seconds": round(wall, 2),
        "sim_steps": int(res.sim_steps),
        "backend": _backend_name(),
        "settings": _jsonable(getattr(task, "settings", {})),
        "lr": _jsonable(method_opts.get("lr", "default")) if defaults else None,  # the step Adam took
        "workers": 1 if pool is None else pool.workers,
        "pool": None if pool is None else {"backend": pool.backend, "ray_address": ray_address, "worlds": worlds,
                                           "start_seconds": round(pool.start_seconds or 0.0, 2)},
    }
    np.save(out_dir / "actions.npy", actions)
    optim.plot_losses({f"{env_id} ({method})": res}, out_dir / "loss.png")
    if video:
        from physim.render import record_video

        losses, frames = task.rollout(actions, render=True)
        record["replayed_final_loss"] = float(losses[-1])
        record_video(frames, out_dir / "rollout.mp4", fps=env.metadata.get("render_fps", 15))
    if own_env:
        env.close()
    (out_dir / "result.json").write_text(json.dumps(record, indent=2))
    return record


def check_workers(method: str, workers: int | None, ray_address: str | None = None) -> None:
    """``ValueError`` unless ``workers`` is None or an integer >= 1, more than one only for a
    population method (:data:`POPULATION_METHODS`), and ``ray_address`` comes with >= 2 workers."""
    if workers is not None:
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if method not in POPULATION_METHODS and workers > 1:
            raise ValueError(f"workers={workers} applies to the population methods {', '.join(POPULATION_METHODS)}, "
                             f"not {method!r}")
    if ray_address is not None and (workers is None or workers < 2):
        raise ValueError(f"ray_address={ray_address!r} needs workers >= 2 (the Ray actors to start)")


def _check_settings(task, kwargs: dict) -> None:
    """A reused env must have been made with the requested arguments."""
    settings = getattr(task, "settings", None)
    if settings is None or not kwargs:
        return
    expected = type(task).config(**kwargs) if hasattr(type(task), "config") else kwargs
    if "scale" in kwargs:
        expected["scale"] = kwargs["scale"]
    wrong = {k: (settings.get(k), v) for k, v in expected.items() if settings.get(k) != v}
    if wrong:
        have = ", ".join(f"{k}={a!r} (requested {b!r})" for k, (a, b) in wrong.items())
        raise ValueError(f"env was made with other arguments: {have}")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _backend_name() -> str:
    from physim import backend

    c = backend.config()
    return f"{c.arch}/{c.precision}" if c else "none"


def _cmd_optimize(args) -> int:
    import physim
    from physim import smoke

    env_id = _env_id(args.env)
    horizon = smoke.shrink(args.horizon, smoke.HORIZON)
    env_kwargs = _env_kwargs_or_exit(env_id, args, horizon)
    backend = _pool_backend_or_exit(args)
    if physim.backend.config() is None:
        physim.init(arch=args.arch, fast_compile=not args.full_compile)
    rec = optimize(env_id, method=args.method, iters=smoke.shrink(args.iters, smoke.ITERS), seed=args.seed,
                   out=args.out, horizon=horizon, lr=args.lr, video=not args.no_video, scale=args.scale,
                   env_kwargs=env_kwargs, workers=args.workers, ray_address=args.ray_address, backend=backend,
                   worlds=args.worlds, budget=args.budget)
    out = args.out or str(Path("out") / rec["env"].split("/")[-1])
    kind = {"ray": "Ray actors", "processes": "worker processes", "batched": "worlds of one batched scene"}
    where = "" if rec["pool"] is None else f" on {rec['workers']} {kind[rec['pool']['backend']]}"
    print(f"{rec['env']} [{rec['method']}]: loss {rec['initial_loss']:.5g} -> {rec['final_loss']:.5g} "
          f"in {rec['iters']} iterations, {rec['wall_seconds']:.1f} s{where}; results in {out}/")
    return 0


def _env_kwargs_or_exit(env_id: str, args, horizon: int | None) -> dict:
    """``--env-arg`` and ``--scale`` parsed and checked against the task (exit with the reason)."""
    try:
        env_kwargs = parse_env_args(args.env_arg)
        check_env_kwargs(env_id, args.scale, env_kwargs, horizon)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"physim: {e}") from None
    return env_kwargs


def _pool_backend_or_exit(args) -> str:
    """``--workers`` / ``--no-ray`` / ``--ray-address`` checked against the method, each other and
    Ray being installed; the pool backend to use."""
    from physim.optim.parallel import ray_available

    try:
        check_workers(args.method, args.workers, args.ray_address)
    except ValueError as e:
        raise SystemExit(f"physim: {e}") from None
    if args.ray_address is not None and args.no_ray:
        raise SystemExit("physim: --ray-address and --no-ray contradict each other")
    if args.ray_address is not None and not ray_available():
        raise SystemExit(f'physim: --ray-address {args.ray_address} needs Ray: pip install "physim[ray]"')
    if args.no_ray:
        return "processes"
    if args.workers is not None and args.workers > 1 and not ray_available():
        print('physim: Ray is not installed (pip install "physim[ray]"); the workers are processes of this machine',
              file=sys.stderr)
    return "auto"


def _cmd_train(args) -> int:
    import physim
    from physim import rl

    if args.algo not in rl.ALGOS:  # argparse's choices already say so; kept for programmatic callers
        raise SystemExit(f"physim: unknown algorithm {args.algo!r}; choose from {', '.join(rl.ALGOS)}")
    try:
        rl.require("stable_baselines3", "physim train")
    except ImportError as e:
        raise SystemExit(f"physim: {e}") from None
    env_id = _env_id(args.env)
    from physim import smoke

    horizon = smoke.shrink(args.horizon, smoke.HORIZON)
    env_kwargs = _env_kwargs_or_exit(env_id, args, horizon)
    if args.scale is not None:
        env_kwargs["scale"] = args.scale
    if physim.backend.config() is None:
        physim.init(arch=args.arch, fast_compile=not args.full_compile)
    rec = rl.train(env_id, algo=args.algo, steps=smoke.shrink(args.steps, SMOKE_TRAIN_STEPS), seed=args.seed,
                   out=args.out, horizon=horizon, normalize=not args.no_normalize,
                   eval_episodes=args.eval_episodes, progress=not args.no_progress, env_kwargs=env_kwargs,
                   torch_threads=args.torch_threads or None)
    out = args.out or str(Path("out") / "train" / f"{env_id.split('/')[-1]}-{args.algo}")
    print(f"{rec['env']} [{rec['algo']}]: {rec['env_steps']} env steps ({rec['episodes']} episodes) in "
          f"{rec['wall_seconds']:.1f} s; trained policy: return {rec['final_mean_return']:.5g}, "
          f"loss {rec['initial_loss']:.5g} -> {rec['final_loss']:.5g}; results in {out}/")
    return 0


def _cmd_sweep(args) -> int:
    from physim import sweep

    use_ray = False if args.no_ray else None
    if args.ray_address is not None and args.no_ray:
        raise SystemExit("physim: --ray-address and --no-ray contradict each other")
    if not args.no_ray and not sweep.ray_available():
        if args.ray_address is not None:
            raise SystemExit(f'physim: --ray-address {args.ray_address} needs Ray: pip install "physim[ray]"')
        print('physim: Ray is not installed (pip install "physim[ray]"); running the jobs one after another '
              "in this process", file=sys.stderr)
        use_ray = False
    try:
        env_kwargs = parse_env_args(args.env_arg)
        jobs = sweep.make_jobs(args.envs, args.methods, args.seeds, args.iters, args.horizon, args.out, args.scale,
                               env_kwargs)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"physim: {e}") from None
    from physim import smoke

    rows = sweep.sweep(args.envs, args.methods, args.seeds, smoke.shrink(args.iters, smoke.ITERS),
                       horizon=smoke.shrink(args.horizon, smoke.HORIZON), workers=args.workers,
                       ray_address=args.ray_address, out=args.out, use_ray=use_ray, arch=args.arch,
                       full_compile=args.full_compile, progress=not args.no_progress, scale=args.scale,
                       env_kwargs=env_kwargs)
    print(sweep.markdown_table(rows))
    print(f"{len(jobs)} jobs; results in {args.out}/results.csv and results.json")
    return 0


def _cmd_demo(args, rest) -> int:
    if args.name not in DEMOS:
        raise SystemExit(f"physim: unknown demo {args.name!r}; choose from {', '.join(DEMOS)}")
    module = importlib.import_module(f"physim.demos.{args.name}")
    status = module.main(rest)  # a demo's main returns its exit status, like this one
    if not isinstance(status, int):
        raise TypeError(f"physim.demos.{args.name}.main returned {type(status).__name__}, not an exit status (int)")
    return status


def _int_at_least(low: int):
    """An argparse ``type``: an integer >= ``low``, else an error naming the value."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse


_nonnegative_int, _positive_int = _int_at_least(0), _int_at_least(1)


#: the env scales ``--scale`` takes (``physim.envs._args.SCALES``, spelled out so that building
#: the parser imports no env or Taichi)
SCALES = ("default", "paper")


def _add_env_options(parser) -> None:
    parser.add_argument("--env-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a gym.make argument of the task (repeatable; the value is a Python literal, e.g. "
                             "grid_res=48, 'size=(0.3, 0.2)'); the task's docstring lists them (Arguments table)")
    parser.add_argument("--scale", choices=SCALES, default=None,
                        help="'default' (CPU-sized) or 'paper' (the reference task's resolution); "
                             "--env-arg and --horizon override it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="physim", description="physim: differentiable physics for robot learning")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered environments")
    p = sub.add_parser("optimize", help="optimize an environment's actions through the simulator")
    p.add_argument("env", help="environment id, e.g. physim/Pinch-v0 (or just Pinch)")
    p.add_argument("--method", choices=METHODS, default="adam")
    p.add_argument("--iters", type=int, default=None, help=f"iterations (default per method: {DEFAULT_ITERS})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output directory (default out/<Task>-v0)")
    p.add_argument("--horizon", type=int, default=None, help="episode length in steps (default: the env's)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (adam, policy)")
    p.add_argument("--budget", type=_positive_int, default=None,
                   help="hybrid, instead of --iters: simulated env steps (a rollout costs T, a gradient 2T), "
                        "split half/half between CMA-ES and Adam")
    p.add_argument("--arch", default=None, help="auto (default), cpu or cuda")
    p.add_argument("--no-video", action="store_true", help="skip the rollout video")
    p.add_argument("--full-compile", action="store_true",
                   help="Taichi's full kernel optimization: faster kernels, much slower first compile")
    _add_env_options(p)
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="cma, hybrid, random: evaluate each generation's candidates on N workers, each with a warm env "
                        "(Ray actors when Ray is installed, else processes; default: one process)")
    p.add_argument("--ray-address", default=None,
                   help="with --workers: join this Ray cluster (e.g. auto, ray://head:10001); default a local Ray")
    p.add_argument("--no-ray", action="store_true", help="with --workers: processes even when Ray is installed")
    p.add_argument("--worlds", type=_positive_int, default=None,
                   help="cma, hybrid, random: evaluate up to N candidates at once in the worlds of one batched scene "
                        "(tasks of MPM bodies and tools)")
    t = sub.add_parser("train", help='RL baseline: Stable-Baselines3 PPO or SAC (pip install "physim[rl]")')
    t.add_argument("env", help="environment id, e.g. physim/Walker2D-v0 (or just Walker2D)")
    t.add_argument("--algo", choices=("ppo", "sac"), default="ppo")
    t.add_argument("--steps", type=_positive_int, default=10_000, help="training budget in env steps")
    t.add_argument("--seed", type=int, default=0, help="goal seed (as optimize --seed) and the RL seed")
    t.add_argument("--out", default=None, help="output directory (default out/train/<Task>-v0-<algo>)")
    t.add_argument("--horizon", type=_positive_int, default=None, help="episode length in steps")
    t.add_argument("--eval-episodes", type=_positive_int, default=1, help="episodes of the trained policy")
    t.add_argument("--no-normalize", action="store_true", help="no running observation normalization")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--torch-threads", type=_nonnegative_int, default=1,
                   help="torch threads while training (default 1: leaves the cores to the simulation; 0: torch's own)")
    t.add_argument("--arch", default=None, help="auto (default), cpu or cuda")
    t.add_argument("--full-compile", action="store_true", help="Taichi's full kernel optimization")
    _add_env_options(t)
    w = sub.add_parser("sweep", help='optimize runs for tasks x methods x seeds, over Ray when installed '
                                     '(pip install "physim[ray]")')
    w.add_argument("--envs", required=True, help="comma-separated environments, e.g. Walker2D,Pinch")
    w.add_argument("--methods", default="adam,cma", help=f"comma-separated, from {','.join(METHODS)}")
    w.add_argument("--seeds", default="0", help="comma-separated integer seeds, e.g. 0,1,2")
    w.add_argument("--iters", type=_positive_int, required=True, help="iterations of every run")
    w.add_argument("--horizon", type=_positive_int, default=None, help="episode length (default: each env's)")
    w.add_argument("--workers", type=_positive_int, default=None,
                   help="Ray worker processes (default: the cluster's CPUs)")
    w.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. auto, ray://head:10001); default: start a local Ray")
    w.add_argument("--no-ray", action="store_true", help="run the jobs in this process even when Ray is installed")
    w.add_argument("--out", default="out/sweep", help="output directory (default out/sweep)")
    w.add_argument("--arch", default=None, help="auto (default), cpu or cuda, in every worker")
    w.add_argument("--full-compile", action="store_true", help="Taichi's full kernel optimization in every worker")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_env_options(w)
    d = sub.add_parser("demo", help=f"interactive demo: {', '.join(DEMOS)} (extra options go to the demo)")
    d.add_argument("name")
    args, rest = parser.parse_known_args(argv)
    if args.command != "demo" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    os.environ.setdefault("PYVISTA_OFF_SCREEN", "false")
    if args.command == "list":
        return _cmd_list(args)
    if args.command == "optimize":
        return _cmd_optimize(args)
    if args.command == "train":
        return _cmd_train(args)
    if args.command == "sweep":
        return _cmd_sweep(args)
    return _cmd_demo(args, rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

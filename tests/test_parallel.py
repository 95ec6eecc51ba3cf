"""CMA-ES generations evaluated on workers (processes, or Ray actors when Ray is installed),
and the env arguments of the `physim optimize` / `physim train` command line.

The mass-spring walker at a horizon of 4 steps (the smoke horizon), the cheapest task: two
CMA-ES generations of 12 candidates on 2 worker processes must give the in-process run's
numbers (losses per generation, best actions, simulated steps), and so must 2 Ray actors on a
Ray cluster the pool joins (skipped without Ray: CI does not install it). A worker whose env differs from the
caller's (another goal seed) refuses to start, naming both losses. Random search, the other
population method, is checked the same way on 2 processes.
"""

import importlib.util
import json

import gymnasium as gym
import numpy as np
import pytest

import physim.envs  # noqa: F401  (registers the tasks)
from physim import cli, sweep
from physim.optim import parallel

ENV = "physim/MassSpringWalker2D-v0"
H = 4
HAVE_RAY = importlib.util.find_spec("ray") is not None


def _optimize(out, **kw):
    rec = cli.optimize(ENV, method="cma", iters=2, seed=0, horizon=H, out=str(out), video=False, progress=False, **kw)
    return rec, np.load(out / "actions.npy")


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return _optimize(tmp_path_factory.mktemp("cma") / "seq")


def _same_run(run, ref):
    (rec, actions), (ref_rec, ref_actions) = run, ref
    assert rec["sim_steps"] == ref_rec["sim_steps"] == H * (1 + 2 * 12)  # start + 2 generations of 12
    assert rec["initial_loss"] == ref_rec["initial_loss"]  # computed in the calling process both times
    # threaded atomic adds sum in a thread-dependent order: equal to round-off, not bit for bit
    np.testing.assert_allclose(rec["losses"], ref_rec["losses"], rtol=1e-9)
    assert rec["final_loss"] == pytest.approx(ref_rec["final_loss"], rel=1e-9)
    np.testing.assert_allclose(actions, ref_actions, rtol=0, atol=1e-12)  # the same best candidate


def test_worker_processes_give_the_in_process_numbers(sequential, tmp_path):
    run = _optimize(tmp_path, workers=2, backend="processes")
    _same_run(run, sequential)
    rec = run[0]
    assert rec["workers"] == 2 and rec["pool"]["backend"] == "processes" and sequential[0]["pool"] is None
    assert json.loads((tmp_path / "result.json").read_text())["workers"] == 2


@pytest.mark.skipif(not HAVE_RAY, reason='Ray not installed (pip install "physim[ray]")')
def test_ray_actors_on_a_cluster_give_the_in_process_numbers(sequential, tmp_path):
    """`--ray-address`: the pool joins a running Ray cluster (a 2-CPU head node this test starts
    and stops) instead of starting its own; a local Ray without an address is tests/test_sweep.py's
    (the same parallel.init_ray)."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    address = cluster.address
    try:
        run = _optimize(tmp_path, workers=2, ray_address=address, ray_init_kwargs={"log_to_driver": False})
        assert not ray.is_initialized()  # the pool disconnected from the cluster it joined
    finally:
        cluster.shutdown()
    _same_run(run, sequential)
    assert run[0]["pool"]["backend"] == "ray" and run[0]["pool"]["ray_address"] == address


def test_random_search_keeps_its_best_candidate_and_gives_the_same_numbers_on_workers():
    """Random search (here through 2 keyframes: straight-line sequences) returns the best loss it
    evaluated, which its actions reproduce, inside the bounds; 2 worker processes evaluate the
    same seeded draws to the same losses."""
    from physim.optim.random_search import random_search

    env = gym.make(ENV, horizon=H)
    env.reset(seed=0)
    task = env.unwrapped
    kw = {"iters": 2, "popsize": 6, "keyframes": 2, "seed": 3, "progress": False}
    res = random_search(task, **kw)
    assert res.method == "random" and len(res.losses) == 2 and res.sim_steps == H * (1 + 2 * 6)
    assert res.loss == min([res.initial_loss, *res.losses]) < res.initial_loss
    assert task.loss(res.actions) == pytest.approx(res.loss, rel=1e-9)
    assert np.all(np.abs(res.actions) <= 1.0)
    np.testing.assert_allclose(np.diff(res.actions, 2, axis=0), 0.0, atol=1e-12)  # linear between 2 keyframes
    with parallel.Pool(parallel.EnvFactory.from_env(env, seed=0), workers=2, backend="processes") as pool:
        par = random_search(task, pool=pool, **kw)
        assert pool.evaluations == 12 and pool.sim_steps == 12 * H and pool.cpu_seconds > 0
    np.testing.assert_allclose(par.losses, res.losses, rtol=1e-9)
    np.testing.assert_allclose(par.actions, res.actions, rtol=0, atol=1e-12)
    assert par.sim_steps == res.sim_steps and par.extras["workers"] == 2


def test_a_worker_with_another_problem_refuses_to_start():
    """What every worker runs on start (here in this process): its env drawn with goal seed 1
    does not give the caller's loss of seed 0's env for the same actions."""
    env = gym.make(ENV, horizon=H)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (H, env.unwrapped.action_dim))  # moves the walker
    loss = env.unwrapped.loss(actions)
    factory = parallel.EnvFactory.from_env(env, seed=0)
    assert factory.kwargs["horizon"] == H and factory.env_id == ENV
    ok = parallel._Evaluator("w0", None, factory, reference=(actions, loss, 1e-6))
    index, got, steps, cpu = ok.evaluate(3, actions)
    assert (index, steps) == (3, H) and got == pytest.approx(loss, rel=1e-9) and cpu > 0
    other = parallel.EnvFactory(ENV, factory.kwargs, seed=1)
    with pytest.raises(ValueError, match=r"worker w1: the reference actions give loss .* here but .* in the main "
                                         r"process: the worker's problem differs"):
        parallel._Evaluator("w1", None, other, reference=(actions, loss, 1e-6))


def test_a_failed_worker_start_is_reported_with_its_cause():
    pool = parallel.Pool(parallel.EnvFactory("physim/NoSuchTask-v0"), workers=1, backend="processes")
    with pytest.raises(RuntimeError, match=r"(?s)worker process failed to start.*NoSuchTask"):
        pool.start()
    assert not pool.started


def test_bad_pool_arguments_are_named(tmp_path):
    factory = parallel.EnvFactory(ENV, {"horizon": H}, seed=0)
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        parallel.Pool(factory, workers=0)
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'ray', 'processes'\), got 'mpi'"):
        parallel.Pool(factory, backend="mpi")
    with pytest.raises(ValueError, match="ray_address='auto' needs the Ray backend, not 'processes'"):
        parallel.Pool(factory, backend="processes", ray_address="auto")
    with pytest.raises(ValueError, match="workers=2 applies to the population methods cma, hybrid, random, not 'ad"):
        cli.optimize(ENV, method="adam", workers=2, out=str(tmp_path))
    with pytest.raises(SystemExit, match="physim: workers=3 applies to the population methods .*, not 'policy'"):
        cli.main(["optimize", ENV, "--method", "policy", "--workers", "3"])
    with pytest.raises(SystemExit, match="physim: ray_address='auto' needs workers >= 2"):
        cli.main(["optimize", ENV, "--method", "cma", "--ray-address", "auto"])
    with pytest.raises(SystemExit, match="contradict"):
        cli.main(["optimize", ENV, "--method", "cma", "--workers", "2", "--no-ray", "--ray-address", "auto"])


# ---------------------------------------------------------------- --env-arg, --scale
def test_env_args_are_parsed_as_python_literals():
    got = cli.parse_env_args(["grid_res=48", "dt=5e-4", "flag=True", "target_range=(0.6, 0.9)", "mode=water",
                              "spacing=None", "name='a=b'"])
    assert got == {"grid_res": 48, "dt": 5e-4, "flag": True, "target_range": (0.6, 0.9), "mode": "water",
                   "spacing": None, "name": "a=b"}
    for bad, message in [("grid_res", "expects KEY=VALUE"), ("=3", "expects KEY=VALUE"),
                         ("horizon=8", "horizon is set by --horizon"), ("scale=paper", "scale is set by --scale"),
                         ("render_mode=human", "render_mode cannot be set")]:
        with pytest.raises(ValueError, match=message):
            cli.parse_env_args([bad])
    with pytest.raises(ValueError, match=r"--env-arg dt given twice \(0.001 and '2e-3'\)"):
        cli.parse_env_args(["dt=1e-3", "dt=2e-3"])


def test_bad_env_args_name_the_argument_and_show_the_table(capsys):
    for argv, message in [(["--env-arg", "stiffness=-5"], r"stiffness must be a finite number in \[1, 10000\], got -5"),
                          (["--env-arg", "stifness=50"], r"unknown argument\(s\) \['stifness'\]"),
                          (["--env-arg", "target_range=(0.9,0.6)"], r"target_range must be a pair \(lo, hi\)"),
                          (["--scale", "paper", "--env-arg", "dt=1"], r"dt must be a finite number in")]:
        with pytest.raises(SystemExit, match=message) as e:
            cli.main(["optimize", "MassSpringWalker2D", "--method", "cma", *argv])
        assert "MassSpringWalker2DEnv arguments:" in str(e.value) and "actuation_strength" in str(e.value)
        with pytest.raises(SystemExit, match=message):
            cli.main(["train", "MassSpringWalker2D", *argv])
    with pytest.raises(SystemExit):
        cli.main(["optimize", "MassSpringWalker2D", "--scale", "cpu"])
    assert "invalid choice: 'cpu'" in capsys.readouterr().err
    assert cli.SCALES == __import__("physim.envs._args", fromlist=["SCALES"]).SCALES


def test_env_args_reach_gym_make(tmp_path, monkeypatch):
    """`--env-arg` and `--scale` make the env: its settings (in result.json) hold them, and the
    same actions give another loss than at the default stiffness."""
    out = tmp_path / "custom"
    assert cli.main(["optimize", "MassSpringWalker2D", "--method", "cma", "--iters", "1", "--horizon", str(H),
                     "--env-arg", "stiffness=60", "--env-arg", "target_range=(0.7, 0.8)", "--scale", "paper",
                     "--no-video", "--out", str(out)]) == 0
    rec = json.loads((out / "result.json").read_text())
    assert rec["settings"]["stiffness"] == 60.0 and rec["settings"]["target_range"] == [0.7, 0.8]
    assert rec["settings"]["scale"] == "paper" and rec["settings"]["horizon"] == H
    actions = np.load(out / "actions.npy")
    custom = gym.make(ENV, horizon=H, stiffness=60.0, target_range=(0.7, 0.8))
    custom.reset(seed=0)
    default = gym.make(ENV, horizon=H, target_range=(0.7, 0.8))
    default.reset(seed=0)
    assert custom.unwrapped.loss(actions) == pytest.approx(rec["final_loss"], rel=1e-9)
    assert abs(default.unwrapped.loss(actions) - rec["final_loss"]) > 1e-6 * abs(rec["final_loss"])
    # a reused env made with other arguments is refused
    with pytest.raises(ValueError, match=r"env was made with other arguments: stiffness=100.0 \(requested 60.0\)"):
        cli.optimize(ENV, method="cma", iters=1, horizon=H, env=default, env_kwargs={"stiffness": 60.0,
                     "target_range": (0.7, 0.8)}, out=str(tmp_path / "x"), video=False, progress=False)
    # `physim train` hands them to rl.train as gym.make arguments
    from physim import rl

    seen = {}
    monkeypatch.setattr(rl, "train", lambda env_id, **kw: seen.update(kw) or {
        "env": env_id, "algo": "ppo", "env_steps": 0, "episodes": 0, "wall_seconds": 0.0, "final_mean_return": 0.0,
        "initial_loss": 1.0, "final_loss": 1.0})
    assert cli.main(["train", "MassSpringWalker2D", "--env-arg", "stiffness=60", "--scale", "paper",
                     "--horizon", str(H), "--out", str(tmp_path / "t")]) == 0
    assert seen["env_kwargs"] == {"stiffness": 60, "scale": "paper"} and seen["horizon"] == H


def test_sweep_passes_scale_and_env_args_to_every_job(tmp_path):
    rows = sweep.sweep("MassSpringWalker2D", "random", "0", 1, horizon=H, out=str(tmp_path), use_ray=False,
                       progress=False, scale="paper", env_kwargs={"stiffness": 60.0})
    assert rows[0]["settings"]["stiffness"] == 60.0 and rows[0]["settings"]["scale"] == "paper"
    rec = json.loads((tmp_path / "MassSpringWalker2D-v0" / "random-s0" / "result.json").read_text())
    assert rec["settings"] == rows[0]["settings"] and rec["final_loss"] == rows[0]["best_loss"]
    # checked against every env's Arguments table before any job runs
    with pytest.raises(TypeError, match=r"Walker2DEnv got unknown argument\(s\) \['stiffness'\]"):
        sweep.make_jobs("MassSpringWalker2D,Walker2D", "cma", "0", 1, env_kwargs={"stiffness": 60.0})
    with pytest.raises(SystemExit, match=r"stiffness must be a finite number in \[1, 10000\], got -1"):
        cli.main(["sweep", "--envs", "MassSpringWalker2D", "--iters", "1", "--env-arg", "stiffness=-1",
                  "--out", str(tmp_path)])

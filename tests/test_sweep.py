"""`physim sweep`: optimize jobs (tasks x methods x seeds) in one process and over Ray.

Two jobs (Adam and CMA-ES, 2 iterations, horizon 8) on the mass-spring walker, the cheapest
task: the in-process sweep must give the numbers a standalone ``optimize`` gives (the env a
worker keeps between jobs leaks nothing into the next one), and a local Ray cluster of 2 CPUs
(two actor processes, one job each) the same rows as the in-process sweep.
"""

import csv
import importlib.util
import json

import pytest

from physim import cli, sweep

ENV = "physim/MassSpringWalker2D-v0"
ARGS = {"envs": "MassSpringWalker2D", "methods": "adam,cma", "seeds": "0", "iters": 2, "horizon": 8}
HAVE_RAY = importlib.util.find_spec("ray") is not None


def _key(row):
    return row["env"], row["method"], row["seed"], row["iters"], row["horizon"], row["sim_steps"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep-local")
    return out, sweep.sweep(**ARGS, out=str(out), use_ray=False, progress=False)


def test_in_process_sweep_writes_the_table(local):
    out, rows = local
    assert [(r["env"], r["method"], r["seed"]) for r in rows] == [(ENV, "adam", 0), (ENV, "cma", 0)]
    assert all(r["worker"] == "local" and r["horizon"] == 8 and r["iters"] == 2 for r in rows)
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(t["best_loss"]) for t in table] == [r["best_loss"] for r in rows]
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["mode"] == "in-process" and data["rows"] == rows
    for r in rows:  # every job's own optimize record, and a best loss below the start
        rec = json.loads((out / "MassSpringWalker2D-v0" / f"{r['method']}-s0" / "result.json").read_text())
        assert rec["final_loss"] == r["best_loss"] < r["initial_loss"]
    md = sweep.markdown_table(rows).splitlines()
    assert md[0].startswith("| env | method | seed |") and len(md) == 4 and "| cma | 0 |" in md[3]


def test_cached_env_gives_the_standalone_result(local, tmp_path):
    """The CMA-ES job ran on the env the Adam job had used; a fresh env gives the same result."""
    _, rows = local
    rec = cli.optimize(ENV, method="cma", iters=2, seed=0, horizon=8, out=str(tmp_path), video=False, progress=False)
    assert rec["final_loss"] == pytest.approx(rows[1]["best_loss"], rel=1e-9)
    assert rec["sim_steps"] == rows[1]["sim_steps"]


@pytest.mark.skipif(not HAVE_RAY, reason='Ray not installed (pip install "physim[ray]")')
def test_local_ray_sweep_gives_the_same_rows(local, tmp_path):
    _, rows = local
    ray_rows = sweep.sweep(**ARGS, out=str(tmp_path), use_ray=True, workers=2, arch="cpu", progress=False,
                           ray_init_kwargs={"num_cpus": 2, "log_to_driver": False})
    assert [_key(r) for r in ray_rows] == [_key(r) for r in rows]
    # threaded atomic adds sum in a thread-dependent order: equal to round-off, not bit for bit
    for a, b in zip(ray_rows, rows, strict=True):
        assert a["best_loss"] == pytest.approx(b["best_loss"], rel=1e-9)
        assert a["initial_loss"] == pytest.approx(b["initial_loss"], rel=1e-12)
    assert {r["worker"] for r in ray_rows} == {"ray-0", "ray-1"}  # each actor took one job
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["mode"] == "ray"


def test_bad_arguments_are_named(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['sgd'\]"):
        sweep.make_jobs("Walker2D", "adam,sgd", "0", 2)
    with pytest.raises(ValueError, match="unknown environment 'Nope'"):
        sweep.make_jobs("Walker2D,Nope", "adam", "0", 2)
    with pytest.raises(ValueError, match="seeds must be a comma-separated list of ints, got '0,x'"):
        sweep.make_jobs("Walker2D", "adam", "0,x", 2)
    with pytest.raises(ValueError, match="seeds lists an entry twice: '1,1'"):
        sweep.make_jobs("Walker2D", "adam", "1,1", 2)
    with pytest.raises(ValueError, match="envs must be a non-empty comma-separated list, got 'Walker2D,'"):
        sweep.make_jobs("Walker2D,", "adam", "0", 2)
    with pytest.raises(ValueError, match="iters must be an integer >= 1, got 0"):
        sweep.make_jobs("Walker2D", "adam", "0", 0)
    with pytest.raises(ValueError, match="workers must be an integer >= 1, got 0"):
        sweep.sweep("Walker2D", "adam", "0", 1, workers=0, out=str(tmp_path))
    with pytest.raises(SystemExit, match=r"unknown method\(s\) \['sgd'\]"):
        cli.main(["sweep", "--envs", "Walker2D", "--methods", "sgd", "--iters", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="contradict"):
        cli.main(["sweep", "--envs", "Walker2D", "--iters", "1", "--no-ray", "--ray-address", "auto"])
    with pytest.raises(SystemExit):
        cli.main(["sweep", "--envs", "Walker2D", "--iters", "0"])
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
    # without Ray: a clear error where Ray is required, naming the extra
    monkeypatch.setattr(sweep, "ray_available", lambda: False)
    with pytest.raises(ImportError, match=r'needs Ray, which is not installed: pip install "physim\[ray\]"'):
        sweep.sweep("Walker2D", "adam", "0", 1, use_ray=True, out=str(tmp_path))
    with pytest.raises(SystemExit, match=r'--ray-address auto needs Ray: pip install "physim\[ray\]"'):
        cli.main(["sweep", "--envs", "Walker2D", "--iters", "1", "--ray-address", "auto", "--out", str(tmp_path)])

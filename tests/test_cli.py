"""The `physim` command: list, optimize (the README's main job), demo dispatch."""

import json

import imageio.v3 as iio
import pytest
from subproc import run_python

from physim import cli
from physim.envs import ENVS


def test_list_prints_every_env():
    r = run_python(["-m", "physim.cli", "list"], timeout=300)
    assert r.returncode == 0, r.stderr
    for env_id in ENVS:
        assert env_id in r.stdout
    assert "[Taichi] Starting" not in r.stdout  # listing starts no runtime


def test_optimize_writes_results(tmp_path):
    out = tmp_path / "pinch"
    rc = cli.main(["optimize", "Pinch", "--iters", "3", "--horizon", "8", "--lr", "0.3", "--out", str(out)])
    assert rc == 0
    rec = json.loads((out / "result.json").read_text())
    for key in ("env", "method", "iters", "losses", "initial_loss", "final_loss", "wall_seconds"):
        assert key in rec
    assert rec["env"] == "physim/Pinch-v0" and rec["method"] == "adam" and len(rec["losses"]) == 3
    assert rec["final_loss"] < rec["initial_loss"]
    # the video replays the optimized actions: same loss as the optimizer's
    assert rec["replayed_final_loss"] == pytest.approx(rec["final_loss"], rel=1e-6)
    assert (out / "loss.png").stat().st_size > 1000 and (out / "rollout.mp4").stat().st_size > 1000
    assert (out / "actions.npy").exists()


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SystemExit, match="unknown environment 'Nope'"):
        cli.main(["optimize", "Nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli.main(["optimize", "Pinch", "--method", "sgd"])
    with pytest.raises(ValueError, match="iters must be >= 1, got 0"):
        cli.optimize("Pinch", iters=0, out=str(tmp_path))
    with pytest.raises(SystemExit, match="unknown demo 'nope'"):
        cli.main(["demo", "nope"])


# fold_paper compiles the shell solver with its contact for a layout of its own (~2 min of CPU):
# tests/test_demos.py runs it through the same `cli.main(["demo", ...])` call and checks its video
@pytest.mark.parametrize("name", [d for d in cli.DEMOS if d != "fold_paper"])
def test_demo_command_exits_zero_and_writes_the_video(name, tmp_path):
    """`physim demo NAME --offscreen` returns exit status 0 (it used to return the demo's
    frames, and the console script failed with a TypeError after writing the video)."""
    out = tmp_path / f"{name}.mp4"
    assert cli.main(["demo", name, "--offscreen", "--frames", "1", "--out", str(out)]) == 0
    assert iio.imread(out).shape[0] == 2  # the initial frame and one step


def test_demo_main_must_return_an_exit_status(monkeypatch):
    import physim.demos.pour_water as demo

    monkeypatch.setattr(demo, "main", lambda argv: [])
    with pytest.raises(TypeError, match=r"pour_water.main returned list, not an exit status"):
        cli.main(["demo", "pour_water", "--offscreen"])


def test_optimize_adam_takes_the_tasks_step_unless_told(monkeypatch, tmp_path):
    """A task's ``adam_defaults`` (Circulation: lr 0.3, where the generic 0.05 stalls) reach
    ``physim.optim.adam``; ``--lr`` on the command line wins; a task without them passes no lr."""
    from physim import optim

    seen = []

    class Stop(Exception):
        pass

    def fake_adam(task, **kw):
        seen.append(kw.get("lr"))
        raise Stop

    monkeypatch.setattr(optim, "adam", fake_adam)
    common = ["--iters", "1", "--horizon", "2", "--no-video", "--out", str(tmp_path)]
    for argv in (["optimize", "Circulation", "--env-arg", "dim=2", *common],
                 ["optimize", "Circulation", "--env-arg", "dim=2", "--lr", "0.1", *common],
                 ["optimize", "Pinch", *common, "--horizon", "4"]):
        with pytest.raises(Stop):
            cli.main(argv)
    assert seen == [0.3, 0.1, None]


def test_optimize_hybrid_budget_reaches_the_split(monkeypatch, tmp_path):
    """``--budget`` (hybrid only) goes to ``physim.optim.hybrid(budget=...)`` instead of the
    iteration split; with another method, or not a positive integer, it is refused by name."""
    from physim import optim

    seen = []

    class Stop(Exception):
        pass

    def fake_hybrid(task, **kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(optim, "hybrid", fake_hybrid)
    common = ["--horizon", "4", "--no-video", "--out", str(tmp_path)]
    for argv in (["optimize", "Pinch", "--method", "hybrid", "--budget", "400", *common],
                 ["optimize", "Pinch", "--method", "hybrid", "--iters", "6", *common]):
        with pytest.raises(Stop):
            cli.main(argv)
    assert seen[0]["budget"] == 400 and "cma_iters" not in seen[0]
    assert seen[1]["cma_iters"] == 2 and seen[1]["adam_iters"] == 4 and "budget" not in seen[1]
    with pytest.raises(ValueError, match="budget=400 applies to method 'hybrid'.*not 'adam'"):
        cli.optimize("Pinch", method="adam", budget=400, out=str(tmp_path))
    with pytest.raises(ValueError, match="budget must be an integer >= 1 .*got 0"):
        cli.optimize("Pinch", method="hybrid", budget=0, out=str(tmp_path))
    with pytest.raises(SystemExit):
        cli.main(["optimize", "Pinch", "--method", "hybrid", "--budget", "-3"])

"""The README's ten-line scene runs as written (in a fresh process: it calls physim.init)."""

import re
from pathlib import Path

import numpy as np
import pytest
from subproc import run_python

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_ten_line_scene_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    scene_block = next(b for b in blocks if "ps.Scene(" in b and "scene.forward(" in b)
    assert len(scene_block.strip().splitlines()) <= 12
    r = run_python(["-c", scene_block], timeout=600, env={"PHYSIM_FAST_COMPILE": "1", **__import__("os").environ})
    assert r.returncode == 0, r.stderr[-2000:]
    mean = [float(v) for v in re.findall(r"[-\d.]+", r.stdout.strip().splitlines()[-1])]
    assert len(mean) == 2 and all(0.0 < m < 1.0 for m in mean)


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = re.search(r"Run the tests.*?```bash\n(.*?)\n```", text, flags=re.S).group(1).strip()
    assert test_cmd in ci


def test_readme_tactile_scene_runs(tmp_path):
    """The README's tactile scene runs as written: it writes tactile.png and prints a total
    force whose normal component is positive (the sphere presses the gel) and larger than the
    shear components (a centred press of a frictional sphere)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "TactileSensor" in b and "scene.forward(" in b)
    assert len(block.strip().splitlines()) <= 14
    r = run_python(["-c", block], timeout=600, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "tactile.png").stat().st_size > 0
    f = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", r.stdout.strip().splitlines()[-1])]
    assert len(f) == 3 and f[2] > 0 and f[2] > 5 * max(abs(f[0]), abs(f[1])), f


def test_readme_shell_scene_runs():
    """The README's thin-shell scene runs as written: a cloth dropped on a sphere drapes without
    any vertex inside the sphere (closest vertex at least the 6 cm radius: the contact offset is
    half the 0.5 mm thickness + 0.5 mm, so it rests ~0.75 mm out), and a stiffer cloth holds its
    mean height up (d mean height / d bending > 0: bending resists the sag over the sphere)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "ShellBody" in b and "scene.forward(" in b)
    assert len(block.strip().splitlines()) <= 14
    r = run_python(["-c", block], timeout=600, env={"PHYSIM_FAST_COMPILE": "1", **__import__("os").environ})
    assert r.returncode == 0, r.stderr[-2000:]
    vals = [float(v) for v in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", r.stdout.strip().splitlines()[-1])]
    assert len(vals) == 3, r.stdout
    closest, d_bending, d_friction = vals
    assert 0.06 <= closest < 0.0625, closest
    assert d_bending > 0 and np.isfinite(d_friction), vals


def test_readme_emitter_scene_runs():
    """The README's emitter example runs; the water it emits moves with the nozzle, so d(mean
    height)/d(nozzle start y) is 1 (gravity and the jet do not depend on where the nozzle starts;
    nothing is hit) to round-off of the f64 adjoint."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next((b for b in blocks if "ps.Emitter(" in b), None)
    assert block is not None, "the README lost its emitter example"
    r = run_python(["-c", block], timeout=600, env={"PHYSIM_FAST_COMPILE": "1", **__import__("os").environ})
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"emitted (\d+); d/d speed (\S+); d/d nozzle start y (\S+)", r.stdout)
    assert m, r.stdout[-2000:]
    assert int(m.group(1)) > 100
    assert float(m.group(3)) == pytest.approx(1.0, abs=1e-6)


def test_readme_batched_worlds_block_runs(capsys):
    """The README's batched-worlds block runs as written (after the ten-line scene's imports), in
    this process: 8 worlds of different stiffness end in different places, and the action
    gradient comes back per world."""
    import physim as ps

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "n_worlds=" in b)
    assert len(block.strip().splitlines()) <= 12
    ns = {"np": np, "ps": ps}
    exec(compile(block, "README batched block", "exec"), ns)
    x, g = ns["x"], ns["g"]
    assert x.shape[0] == 8 and g.actions.shape == (20, 8, 3)
    means = x.mean(axis=1)
    assert np.isfinite(means).all() and len({tuple(np.round(m, 9)) for m in means}) == 8
    assert "(20, 8, 3)" in capsys.readouterr().out

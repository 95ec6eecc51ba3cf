"""Every shell command in the README's code blocks runs as written, exits 0 and writes
what it promises.

The commands are collected from the README itself (fenced ``bash``/``sh``/``shell``/``console``
blocks), so a command added to the README later is tested without anyone remembering to.
Each one runs as a subprocess in a temporary folder at its smallest size
(``PHYSIM_SMOKE=1``, see :mod:`physim.smoke`), with its arguments exactly as written;
``physim`` is the installed console script, ``python`` this interpreter, and script paths
(``demos/...``, ``benchmarks/...``) are resolved against the repository root.

What is collected and what is not:

* A line is split at ``&&`` and its ``# comment`` dropped. Of the README's install-and-run
  lines (``python -m venv .venv && . .venv/bin/activate && pip install ... && physim ...``)
  only the part after the set-up runs: creating a virtualenv and installing torch and physim
  would take minutes and the network, and the suite already runs inside such an install.
* ``pytest`` (the README's test command) is not run from inside the tests;
  ``tests/test_readme.py`` checks that CI runs exactly that command.
* Any other command must be ``physim ...`` or ``python demos/...`` / ``python benchmarks/...``;
  anything else fails :func:`test_readme_commands_are_all_understood`, so it cannot be skipped
  silently.

Off-screen commands run with ``DISPLAY`` unset, like a headless user, and must not print
VTK's X server warning. A demo without ``--offscreen`` opens its window: it runs on one
virtual X display (``Xvfb``, started once per test process) and the smoke mode makes the
window render frames, press a key through the interactor and close itself with Escape;
without ``Xvfb`` it is skipped, saying so. The interactive demos also run that way through ``python demos/NAME.py``
(:func:`test_interactive_demo_window_starts_renders_and_quits`; fold_paper's in
``tests/test_demos.py``).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

from physim import cli, smoke
from physim.envs import ENVS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELL_BLOCK = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
#: leading set-up steps of install-and-run lines (see the module docstring)
SETUP = (("python", "-m", "venv"), (".",), ("source",), ("pip", "install"))
#: the README's test command, checked by tests/test_readme.py instead of run here
TEST_COMMAND = ("pytest",)
#: seconds per command: a fresh machine compiles the kernels first (about a minute each)
TIMEOUT = 900


def shell_commands(text: str) -> list[list[str]]:
    """The commands of the shell code blocks in ``text``, each as its argv, in order,
    without duplicates and without the set-up / test steps (see the module docstring)."""
    commands: list[list[str]] = []
    for block in SHELL_BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)  # drops "# comment" and handles quotes
            part: list[str] = []
            for word in [*words, "&&"]:
                if word != "&&":
                    part.append(word)
                    continue
                if part and not any(tuple(part[: len(s)]) == s for s in (*SETUP, TEST_COMMAND)):
                    if part not in commands:
                        commands.append(part)
                part = []
    return commands


def is_understood(argv: list[str]) -> bool:
    """A command this test knows how to run: ``physim ...`` or ``python demos|benchmarks/x.py ...``."""
    if argv[0] == "physim":
        return True
    return (argv[0] == "python" and len(argv) > 1 and argv[1].endswith(".py")
            and argv[1].split("/")[0] in ("demos", "benchmarks"))


README_COMMANDS = shell_commands(README.read_text())
RUNNABLE = [c for c in README_COMMANDS if is_understood(c)]


def _demo_name(argv: list[str]) -> str | None:
    """The demo a command runs (``physim demo NAME`` or ``python demos/NAME.py``), else None."""
    if argv[:2] == ["physim", "demo"] and len(argv) > 2:
        return argv[2]
    if argv[0] == "python" and argv[1].startswith("demos/"):
        return Path(argv[1]).stem
    return None


def opens_window(argv: list[str]) -> bool:
    """An interactive demo run without ``--offscreen``: it needs a display."""
    return _demo_name(argv) in cli.DEMOS and "--offscreen" not in argv


def _option(argv: list[str], name: str, default=None):
    """The value of ``--name VALUE`` / ``--name=VALUE`` in ``argv`` (the last one wins)."""
    value = default
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif word.startswith(name + "="):
            value = word.split("=", 1)[1]
    return value


def _executable(argv: list[str]) -> list[str]:
    """``argv`` with ``physim`` / ``python`` / repository scripts made runnable from any folder."""
    if argv[0] == "physim":
        script = Path(sys.executable).with_name("physim")  # the console script of this install
        head = [str(script)] if script.exists() else [sys.executable, "-m", "physim.cli"]
        return head + argv[1:]
    return [sys.executable, str(ROOT / argv[1]), *argv[2:]]


def check_promises(argv: list[str], cwd: Path, stdout: str) -> None:
    """Assert the files and output the command promises (README and its own docs)."""
    out = _option(argv, "--out")
    if argv[:2] == ["physim", "list"]:
        missing = [e for e in ENVS if e not in stdout]
        assert not missing, f"`physim list` does not list {missing}"
    elif argv[:2] == ["physim", "optimize"]:
        env_id = cli._env_id(argv[2])
        folder = cwd / (out or Path("out") / env_id.split("/")[-1])
        names = ["result.json", "actions.npy", "loss.png"] + ([] if "--no-video" in argv else ["rollout.mp4"])
        missing = [n for n in names if not (folder / n).is_file() or (folder / n).stat().st_size == 0]
        assert not missing, f"{shlex.join(argv)} did not write {missing} in {folder}"
        rec = json.loads((folder / "result.json").read_text())
        assert rec["env"] == env_id and rec["method"] == _option(argv, "--method", "adam")
        assert rec["iters"] == smoke.ITERS and rec["horizon"] <= smoke.HORIZON  # it ran at smoke size
        assert len(rec["losses"]) >= 1
    elif opens_window(argv):
        assert "[physim] smoke: window rendered" in stdout, stdout[-2000:]
    elif _demo_name(argv) in cli.DEMOS:
        video = cwd / (out or f"out/{_demo_name(argv)}.mp4")
        assert video.is_file(), f"{shlex.join(argv)} did not write {video}"
        assert iio.imread(video).shape[0] == smoke.FRAMES + 1  # the first frame plus one per step
    elif out is not None:  # any other command: what --out names must exist
        assert (cwd / out).exists(), f"{shlex.join(argv)} did not write {out}"


_XVFB: subprocess.Popen | None = None
_XVFB_DISPLAY: str | None = None


def _stop(proc: subprocess.Popen) -> None:
    """Stop the virtual X server and reap it (no "still running" warning at exit)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def virtual_display(argv: list[str]) -> str:
    """The ``DISPLAY`` of one virtual X server (``Xvfb``) shared by this test process.

    Started on first use and stopped at exit. ``Xvfb -displayfd`` picks a free display
    number itself and reports it when it accepts connections, so there is no race between
    servers: one ``xvfb-run -a`` per command could hand a demo a display whose previous
    server was still shutting down ("bad X server connection", seen once in CI).
    Skips, saying so, when ``Xvfb`` is not installed."""
    global _XVFB, _XVFB_DISPLAY
    if _XVFB is not None and _XVFB.poll() is None:
        return _XVFB_DISPLAY
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip(f"`{shlex.join(argv)}` opens a window: needs Xvfb (apt-get install xvfb), not found")
    r, w = os.pipe()
    try:
        proc = subprocess.Popen([xvfb, "-displayfd", str(w), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.close(w)
    number = b""
    with os.fdopen(r, "rb") as pipe:
        ready, _, _ = select.select([pipe], [], [], 60)
        if ready:
            number = pipe.readline().strip()
    if not number.isdigit():
        proc.kill()
        raise RuntimeError(f"Xvfb did not report a display within 60 s (exit status {proc.poll()})")
    atexit.register(_stop, proc)
    _XVFB, _XVFB_DISPLAY = proc, f":{number.decode()}"
    return _XVFB_DISPLAY


def run_command(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a README command at smoke size in ``cwd``; a window gets a virtual X display."""
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}  # a headless user's shell
    env.update({smoke.ENV: "1", "PHYSIM_FAST_COMPILE": "1", "PYTHONUNBUFFERED": "1"})
    cmd = _executable(argv)
    if not opens_window(argv):
        env["PYVISTA_OFF_SCREEN"] = "true"
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    env.pop("PYVISTA_OFF_SCREEN", None)
    env["DISPLAY"] = virtual_display(argv)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if r.returncode != 0 and "bad X server connection" in r.stderr:
        # the virtual X server stopped answering (seen under heavy load in CI: VTK's "bad X server
        # connection", then the window closes before its first tick), a failure of the test's X
        # server, not of the demo: start a fresh server and run the command once more; a demo
        # that fails again fails the test
        global _XVFB
        if _XVFB is not None:
            _stop(_XVFB)
            _XVFB = None
        env["DISPLAY"] = virtual_display(argv)
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    return r


def test_readme_commands_are_all_understood():
    """The collector finds the README's commands, and every one is of a kind this test runs."""
    unknown = [shlex.join(c) for c in README_COMMANDS if not is_understood(c)]
    assert not unknown, f"README commands this test cannot run (teach tests/test_readme_commands.py): {unknown}"
    found = {shlex.join(c) for c in RUNNABLE}
    for expected in ("physim list", "physim optimize physim/Pinch-v0", "physim demo sculpt_plasticine",
                     "physim demo pour_water --offscreen --frames 120 --out pour.mp4"):
        assert expected in found, f"{expected!r} not collected from the README: {sorted(found)}"


def test_shell_commands_parser():
    text = ("```bash\npython -m venv .venv && . .venv/bin/activate && pip install . && physim list  # note\n"
            "physim demo x --out 'a b.mp4'\npytest\nphysim list\n```\n```python\nphysim = 1\n```\n")
    assert shell_commands(text) == [["physim", "list"], ["physim", "demo", "x", "--out", "a b.mp4"]]


@pytest.mark.parametrize("argv", RUNNABLE, ids=[shlex.join(c) for c in RUNNABLE])
def test_readme_command_runs_as_written(argv, tmp_path):
    r = run_command(argv, tmp_path)
    assert r.returncode == 0, f"`{shlex.join(argv)}` exited {r.returncode}:\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "bad X server connection" not in r.stderr, r.stderr[-3000:]
    check_promises(argv, tmp_path, r.stdout)


# fold_paper's window runs in tests/test_demos.py, before that file's headless fold check, which
# then loads the demo's compiled kernels from Taichi's offline cache (one cold compile, not two)
@pytest.mark.parametrize("name", [d for d in cli.DEMOS if d != "fold_paper"])
def test_interactive_demo_window_starts_renders_and_quits(name, tmp_path):
    """``python demos/NAME.py`` opens its window (under a virtual display), renders frames,
    takes a key press through the window and quits on Escape, with exit status 0."""
    argv = ["python", f"demos/{name}.py"]
    r = run_command(argv, tmp_path)
    assert r.returncode == 0, f"`{shlex.join(argv)}` exited {r.returncode}:\n{r.stderr[-3000:]}"
    check_promises(argv, tmp_path, r.stdout)

"""Every task's size and settings as ``gym.make`` keyword arguments, ``scale="paper"``, the
"Arguments" table of its docstring, the goal drawn by ``render()``, and no VTK X-server warning
when rendering off screen.

Validation and configuration tests build nothing (arguments are checked before the scene).
Renders use ``horizon=8`` like tests/test_envs.py, so their engines are compiled once."""

import importlib
import os

import gymnasium as gym
import numpy as np
import pytest
from subproc import run_python

import physim.envs  # noqa: F401  (registers the tasks)
from physim.envs import ENVS
from physim.envs._args import collect

#: the tasks of this suite (tasks added later declare their own arguments)
TASKS = ["Pouring", "LatteArt", "IceCream", "Gathering", "Pinch", "RollingPin", "Writer", "Walker2D", "Walker3D",
         "MassSpringWalker2D", "SurfaceFollowing", "ElasticGrasp"]
H = 8


def env_class(task):
    module, name = ENVS[f"physim/{task}-v0"][0].split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("task", TASKS)
def test_arguments_are_declared_documented_and_paper_scale_resolves(task):
    cls = env_class(task)
    args, paper = collect(cls, "args"), collect(cls, "paper")
    assert args, f"{task} declares no arguments"
    assert set(paper) <= set(args) | {"horizon"}, f"{task}: paper sets undeclared {set(paper) - set(args)}"
    doc = cls.__doc__
    assert "Arguments" in doc
    table = doc[doc.index("Arguments"):]
    for name in ("horizon", "scale", *args):
        assert f"\n    {name} " in table, f"{task}: {name} missing from the Arguments table"
    default, big = cls.config(), cls.config(scale="paper")
    assert default == {k: getattr(cls, k) for k in args}  # the default scale is the class's defaults
    for name, value in paper.items():
        assert big[name] == args[name].check(task, name, value)
    # explicit arguments override the scale
    name = next(iter(args))
    value = default[name]
    assert cls.config(scale="paper", **{name: value})[name] == value


def test_paper_scale_refines_the_resolution():
    """The paper presets are the reference tasks' resolutions (physim/references: PlasticineLab
    64^3, FluidLab 64^3 with 60k-200k particles, DiffTaichi's 128^2 walker), with the substeps
    scaled with the grid so an env step simulates the same time."""
    for task in ("Pinch", "RollingPin", "Writer", "IceCream", "Pouring", "LatteArt", "Gathering"):
        cls = env_class(task)
        d, p = cls.config(), cls.config(scale="paper")
        assert (d["grid_res"], p["grid_res"]) == (32, 64), task
        assert p["substeps"] == 2 * d["substeps"], task
    assert env_class("Walker2D").config(scale="paper")["grid_res"] == 128
    assert env_class("Walker3D").config(scale="paper")["grid_res"] == 64
    assert env_class("SurfaceFollowing").config(scale="paper")["dome_layers"] == 4
    assert env_class("ElasticGrasp").config(scale="paper")["pad_cell"] == 0.0025


@pytest.mark.parametrize("task", TASKS)
def test_bad_arguments_are_named(task):
    env_id = f"physim/{task}-v0"
    cls = env_class(task)
    args = collect(cls, "args")
    with pytest.raises(ValueError, match="scale must be one of"):
        gym.make(env_id, scale="huge")
    with pytest.raises(TypeError, match="unknown argument.*'no_such_arg'"):
        gym.make(env_id, no_such_arg=1)
    with pytest.raises(ValueError, match="horizon must be an integer >= 1, got 0"):
        gym.make(env_id, horizon=0)
    for name, arg in args.items():
        bad = {"int": 10**9, "float": float("nan"), "spacing": -1.0, "range": (0.3, 0.1), "bool": "yes",
               "choices": ("no-such-kind",)}[arg.kind]
        with pytest.raises(ValueError, match=rf"{cls.__name__}: {name} must be .*got"):
            gym.make(env_id, **{name: bad})


def test_goal_difficulty_arguments_change_the_goal():
    """A narrower goal range is honoured: Pinch's dent center within +-max_offset, Pouring's
    container within its x range, the walker's target distance within its fraction."""
    from physim.envs.pinch import PinchEnv

    assert PinchEnv.config(max_offset=0.0)["max_offset"] == 0.0
    pour = gym.make("physim/Pouring-v0", horizon=H, target_x_range=(0.7, 0.7), target_z_range=(0.5, 0.5))
    pour.reset(seed=3)
    np.testing.assert_allclose(pour.unwrapped.target_xz, [0.7, 0.5])
    pour.close()


def _goal_pixels(img, kind):
    r, g, b = (img[..., i].astype(int) for i in range(3))
    if kind == "green":  # GOAL_COLOR, possibly blended
        return int(((g > 1.3 * r) & (g > 1.2 * b) & (g > 90)).sum())
    return int(((r > 200) & (g > 120) & (g < 215) & (b < 90)).sum())  # gold


@pytest.mark.parametrize("task, kinds", [("Pouring", ("green",)), ("Walker2D", ("gold",)), ("Writer", ("green",))])
def test_render_shows_the_goal(task, kinds):
    """render() draws the goal: goal-colored pixels that a render of the same state without it
    lacks (Pouring: the container's cavity; Walker2D: the finish line; Writer: the target shape's
    translucent surface and its edges), and the two frames differ."""
    from physim.render import Renderer

    env = gym.make(f"physim/{task}-v0", horizon=H, render_mode="rgb_array")
    env.reset(seed=0)
    with_goal = env.render()
    u = env.unwrapped
    plain_kw = {k: v for k, v in u.camera_kwargs().items() if k in ("camera", "colors")}
    with Renderer(u.scene, off_screen=True, **plain_kw) as r:
        without = r.frame()
    env.close()
    assert with_goal.shape == without.shape
    for kind in kinds:
        n_with, n_without = _goal_pixels(with_goal, kind), _goal_pixels(without, kind)
        assert n_with > 50 and n_with > 10 * max(n_without, 1), (task, kind, n_with, n_without)
    changed = np.abs(with_goal.astype(int) - without.astype(int)).max(axis=-1) > 30
    assert changed.sum() > 300, changed.sum()


def test_no_vtk_x_server_warning_off_screen():
    """Off-screen renders with DISPLAY unset or naming a display no X server answers print no
    VTK 'bad X server connection' warning (the render window is made with EGL directly)."""
    code = ("import numpy as np, physim as ps\n"
            "from physim.render import Renderer\n"
            "s = ps.Scene(dim=2, grid_res=16)\n"
            "s.add_body(ps.Box(center=(0.5, 0.3), size=(0.2, 0.2)), ps.Elastic())\n"
            "s.build(max_steps=1)\n"
            "with Renderer(s, window_size=(64, 48), off_screen=True) as r:\n"
            "    img = r.frame()\n"
            "print('shape', img.shape, int(img.std() > 0))\n")
    for display in (None, ":99"):
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "VTK_DEFAULT_OPENGL_WINDOW")}
        if display is not None:
            env["DISPLAY"] = display
        out = run_python(["-c", code], env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "shape (48, 64, 3) 1" in out.stdout
        assert "X server" not in out.stderr and "DISPLAY" not in out.stderr, out.stderr[-2000:]

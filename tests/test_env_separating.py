"""Separating (two stacked rubber sheets, a pad drags the top one by friction): Gymnasium's
checker, seeded goals and the rendered goal; the physics (a stack left alone stays at rest
without energy gain or penetration, the pad's drag moves the top sheet and leaves the bottom one,
as the friction ordering pad > table > sheets demands); the loss's gradient through the
pad's and the sheets' friction against central finite differences (f64); bad arguments.

One env for the module, with a short episode to keep the CPU time small: horizon 10 steps of one
5 ms substep each (``episode_seconds=0.05``; the task's default is 20 steps, 0.1 s), in which
the pad's full speed covers 1.5 cm.
"""

import gc
import math

import gymnasium as gym
import numpy as np
import pytest
from gradcheck import REL_TOL
from gymnasium.utils.env_checker import check_env
from meshcheck import point_triangle_distance

import physim.envs  # noqa: F401  (registers the tasks)

H = 10
SECONDS = 0.05


@pytest.fixture(scope="module")
def sep():
    env = gym.make("physim/Separating-v0", horizon=H, episode_seconds=SECONDS, render_mode="rgb_array")
    yield env
    env.close()
    del env
    gc.collect()


def sheet_distance(task, x: np.ndarray) -> float:
    """The least distance between the two sheets' mid-surfaces at vertex positions ``x``: every
    vertex of each sheet against every triangle of the other."""
    bottom, top = task.split(x)
    tb, tt = (b.mesh.triangles for b in task.scene.shell_bodies)
    d1 = point_triangle_distance(np.repeat(top, len(tb), 0), np.tile(bottom[tb], (len(top), 1, 1)))
    d2 = point_triangle_distance(np.repeat(bottom, len(tt), 0), np.tile(top[tt], (len(bottom), 1, 1)))
    return float(min(d1.min(), d2.min()))


def push_actions(task, fraction: float = 1.0) -> np.ndarray:
    """(H, 4) normalized actions that carry the pad by ``fraction`` of the target's translation
    and yaw at constant speed over the episode, pressing down a little (-0.4: 2 cm/s)."""
    gx, gz, yaw = task.goal_params
    seconds = H * task.scene.substeps_per_step * task.scene.dt
    a = np.zeros((H, 4))
    a[:, 0], a[:, 2] = fraction * gx / (seconds * task.speed), fraction * gz / (seconds * task.speed)
    a[:, 1], a[:, 3] = -0.4, fraction * yaw / (seconds * task.spin)
    assert np.abs(a).max() < 1.0
    return a


def test_check_env_seeded_goals_and_render(sep):
    """Gymnasium's checker passes; a seed fixes the goal (the same seed twice gives the same
    observation and loss, another seed another goal); the rgb_array frame draws the goal (the
    target top sheet)."""
    task = sep.unwrapped
    check_env(task, skip_render_check=True)
    assert task.substeps == 1 and task.observation_space.shape == (599,)
    o1, i1 = sep.reset(seed=1)
    g1 = task._goal_features().copy()
    o2, _ = sep.reset(seed=2)
    g2 = task._goal_features().copy()
    o3, i3 = sep.reset(seed=1)
    np.testing.assert_array_equal(o1, o3)
    assert i1["loss"] == i3["loss"] == pytest.approx(1.0, abs=1e-12)
    assert not np.allclose(g1, g2) and not np.allclose(o1, o2)
    frame = sep.render()
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8 and frame.std() > 5
    assert "goal" in task._renderer.plotter.actors


def test_stack_left_alone_stays_at_rest(sep):
    """With the pad held still, the stack (the top sheet started inside the barrier's margin,
    near where the pad's weight puts it) only settles: the total energy (kinetic, gravity,
    elastic, the pad's and the table's penalty, the sheets' barrier) never grows from one
    substep to the next (implicit Euler, damping and friction only dissipate; 1e-9 J allows for
    the Newton residual, as in tests/test_shell_contact.py), the sheets' mid-surfaces stay more
    than the two half thicknesses apart (the barrier is infinite there) and within the margin
    (the top sheet does lie on the bottom one), no vertex moves by more than 0.05 mm, and the loss
    stays at 1 (measured: 1.0000004 after 10 substeps)."""
    task = sep.unwrapped
    sep.reset(seed=0)
    scene, shell = task.scene, task.scene.partset.shell
    t_off = task.thickness  # two half thicknesses
    margin = task.scene.shell_bodies[0].self_contact_margin
    scene.reset()
    x0 = scene.get_state()["shell.x"]
    energies = [sum(shell.energy(0).values())]
    dmin = sheet_distance(task, x0)
    for _ in range(H):
        scene.forward(np.zeros((1, scene.action_dim)), requires_grad=False)
        x = scene.get_state()["shell.x"]
        dmin = min(dmin, sheet_distance(task, x))
        energies.append(sum(shell.energy(0).values()))
    gain = np.diff(energies)
    assert gain.max() <= 1e-9, f"energy grew by {gain.max():.3g} J in a substep (energies {energies})"
    assert t_off < dmin < t_off + margin, f"the sheets' mid-surfaces came {dmin:.4g} m apart"
    assert np.abs(x - x0).max() < 5e-5
    assert task.loss(np.zeros((H, 4))) == pytest.approx(1.0, abs=1e-5)
    assert all(ok for ok, _res, _t in shell._status.values())
    sep.reset(seed=0)


def _drag(task, a):
    """(top sheet's centre displacement, bottom sheet's mean vertex displacement, both horizontal
    (m); the loss; the end positions) after the actions ``a`` from the start."""
    ev = task.problem.evaluate(a, grad=False, keep_state=True)
    x = np.asarray(ev.state["shell.x"])
    b0, t0 = task.split(task._start_state["shell.x"])
    b1, t1 = task.split(x)
    top = float(np.linalg.norm((t1.mean(0) - t0.mean(0))[[0, 2]]))
    bottom = float(np.linalg.norm((b1 - b0)[:, [0, 2]], axis=1).mean())
    return top, bottom, ev.loss, x


def test_pad_drags_the_top_sheet_and_leaves_the_bottom_one(sep):
    """The pad pressing and moving along the target's translation and yaw carries the top sheet
    (the pad grips it harder than the bottom sheet holds it back: 1.0 against 0.2) while the
    table holds the bottom sheet (0.6 against the sheets' 0.2): the top sheet's centre moves more
    than 80 % of the pad's path, the bottom sheet's vertices move (horizontally) less than 5 % of
    that on average, the sheets never touch, and the loss falls from 1 to under 0.1. The ordering
    is what keeps the bottom sheet in place: with the sheets' friction above the table's (0.8
    against 0.1; parameters set on the same scene) the same motion drags the bottom sheet along,
    by more than half the top sheet's displacement. Measured at seed 0 (pad path 16.6 mm): the
    top sheet 15.3 mm, the bottom one 0.37 mm, loss 0.0066; reversed: 14.8 and 15.4 mm (loss 0.86)."""
    task = sep.unwrapped
    sep.reset(seed=0)
    a = push_actions(task)
    path = math.hypot(*task.goal_params[:2])
    top, bottom, loss, x = _drag(task, a)
    scene = task.scene
    try:
        for row in range(2):
            scene.set_param("shell.self_friction", 0.8, row)
            scene.set_param("shell.wall_friction", 0.1, row)
        rtop, rbottom, rloss, _ = _drag(task, a)
    finally:
        for row in range(2):
            scene.set_param("shell.self_friction", task.sheet_friction, row)
            scene.set_param("shell.wall_friction", task.table_friction, row)
    print(f"\nSeparating: pad path {path * 1e3:.2f} mm; top sheet {top * 1e3:.2f} mm, bottom sheet "
          f"{bottom * 1e3:.3f} mm (mean horizontal), loss {loss:.4f}; frictions reversed: top {rtop * 1e3:.2f} mm, "
          f"bottom {rbottom * 1e3:.3f} mm, loss {rloss:.4f}")
    assert top > 0.8 * path
    assert bottom < 0.05 * top
    assert sheet_distance(task, x) > task.thickness
    assert loss < 0.1
    assert rbottom > 0.5 * rtop


def test_gradient_matches_finite_differences_through_sheet_friction(sep):
    """d loss / d actions over 5 substeps while the pad drags the top sheet across the bottom
    one (the sheets' barrier and lagged friction active), against central differences: entry by
    entry for three actions and along a random direction (f64). The loss depends on the sheets'
    friction coefficient here (its parameter gradient is nonzero)."""
    task = sep.unwrapped
    sep.reset(seed=0)
    rng = np.random.default_rng(5)
    a = np.clip(push_actions(task)[:5] * 0.8 + rng.normal(0.0, 0.05, (5, 4)), -1, 1)
    ev = task.evaluate(a)
    g = ev.grad_actions
    assert abs(ev.grad_params["shell.self_friction"]).max() > 0
    eps = 1e-5
    for t, j in ((0, 0), (2, 1), (4, 3)):
        e = np.zeros_like(a)
        e[t, j] = eps
        fd = (task.loss(a + e) - task.loss(a - e)) / (2 * eps)
        assert g[t, j] == pytest.approx(fd, rel=REL_TOL, abs=1e-8 * np.abs(g).max()), ((t, j), g[t, j], fd)
    d = np.random.default_rng(6).normal(size=a.shape)
    d /= np.linalg.norm(d)
    fd = (task.loss(a + eps * d) - task.loss(a - eps * d)) / (2 * eps)
    assert float((g * d).sum()) == pytest.approx(fd, rel=REL_TOL), (float((g * d).sum()), fd)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"res must be an integer in \[3, 15\], got 2"):
        gym.make("physim/Separating-v0", res=2)
    with pytest.raises(ValueError, match=r"pad_friction \(0.1\) must exceed sheet_friction \(0.2\)"):
        gym.make("physim/Separating-v0", pad_friction=0.1)
    with pytest.raises(ValueError, match=r"table_friction must be a finite number"):
        gym.make("physim/Separating-v0", table_friction=-0.5)
    with pytest.raises(ValueError, match=r"episode_seconds must be a finite number"):
        gym.make("physim/Separating-v0", episode_seconds=0.0)
    with pytest.raises(TypeError, match="wind"):
        gym.make("physim/Separating-v0", wind=3.0)

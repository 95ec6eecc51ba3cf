"""The tape's debug mode checks its contract: replayed launches change no slot state, and every
adjoint leaves finite gradients; a real scene passes it with the same gradients (to round-off)."""

import numpy as np
import pytest
import taichi as ti
from conftest import small_scene

import physim as ps
from physim.tape import Tape, TapeContractError


@ti.data_oriented
class _Toy:
    """A one-substep 'solver': state[1] = 2 * state[0] (slot field), scratch = state[0] ** 2."""

    def __init__(self):
        self.state = ti.field(ti.f64, shape=(2, 4), needs_grad=True)
        self.scratch = ti.field(ti.f64, shape=4, needs_grad=True)

    @ti.kernel
    def good_replay(self):
        for i in range(4):
            self.scratch[i] = self.state[0, i] ** 2

    @ti.kernel
    def bad_replay(self):  # writes slot state: breaks the contract
        for i in range(4):
            self.state[1, i] = self.state[1, i] + 1.0

    @ti.kernel
    def step(self):
        for i in range(4):
            self.state[1, i] = 2.0 * self.state[0, i] + self.scratch[i]

    @ti.kernel
    def nan_adjoint(self):
        for i in range(4):
            self.state[1, i] = ti.sqrt(self.state[0, i])  # d/dx sqrt(0) = inf


def _tape(toy, replay):
    tape = Tape(debug=True)
    tape.snapshot = lambda: toy.state.to_numpy()
    tape.nonfinite = lambda: None if np.isfinite(toy.state.grad.to_numpy()).all() else "the gradient of toy.state"
    tape.begin_substep()
    tape.launch(replay, replay=True, grad=None)
    tape.launch(toy.step)
    tape.end_substep()
    return tape


def test_debug_mode_refuses_a_replay_that_writes_state():
    toy = _Toy()
    toy.state.from_numpy(np.ones((2, 4)))
    toy.state.grad.fill(0.0)
    toy.state.grad[1, 0] = 1.0
    _tape(toy, toy.good_replay).backward_substep(0, lambda: toy.scratch.grad.fill(0))
    assert toy.state.grad[0, 0] == pytest.approx(2.0)  # d state1 / d state0 through step (scratch is constant)
    with pytest.raises(TapeContractError, match="bad_replay.*changed slot state"):
        _tape(toy, toy.bad_replay).backward_substep(0, lambda: toy.scratch.grad.fill(0))


def test_debug_mode_names_the_adjoint_that_made_a_nan():
    toy = _Toy()
    toy.state.from_numpy(np.zeros((2, 4)))
    tape = Tape(debug=True)
    tape.snapshot = lambda: toy.state.to_numpy()
    tape.nonfinite = lambda: None if np.isfinite(toy.state.grad.to_numpy()).all() else "the gradient of toy.state"
    tape.begin_substep()
    tape.launch(toy.nan_adjoint)
    tape.end_substep()
    toy.state.grad.fill(0.0)
    toy.state.grad[1, 2] = 1.0
    with pytest.raises(TapeContractError, match="adjoint of nan_adjoint.*toy.state non-finite"):
        tape.backward_substep(0, lambda: None)


def test_a_scene_passes_the_debug_checks_with_the_same_gradients():
    scene = small_scene(2, ps.Plasticine(E=2e3, nu=0.3, yield_stress=30.0))
    actions = np.random.default_rng(0).uniform(-0.5, 0.5, (5, scene.action_dim))
    seed = {"mpm.x": np.ones((scene.n_particles, 2)), "tools.pos": np.ones((1, 2))}

    def grads(debug):
        scene.tape.debug = debug
        scene.reset()
        scene.forward(actions)
        return scene.backward(seed)

    try:
        plain, checked = grads(False), grads(True)
    finally:
        scene.tape.debug = False
    # the same computation; multi-threaded atomic adds sum in a different order run to run, so
    # equal to round-off (CI saw 3e-16 relative), not bit for bit
    for a, b in ((plain.actions, checked.actions), (plain.initial["mpm.x"], checked.initial["mpm.x"])):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * np.abs(a).max())


def test_a_rollout_of_zero_steps_differentiates_to_the_identity():
    """forward() of no action rows then backward(): the final state is the initial one, so the
    seeds come back as the initial state's gradient, unchanged, and the action gradient is
    (0, A) (it raised UnboundLocalError)."""
    scene = small_scene(2, ps.Elastic())
    scene.reset()
    scene.forward(np.zeros((0, scene.action_dim)))
    rng = np.random.default_rng(0)
    x0 = scene.initial_state()["mpm.x"]
    seed = rng.normal(size=x0.shape)
    g = scene.backward({"mpm.x": seed})
    assert g.actions.shape == (0, scene.action_dim)
    assert np.array_equal(g.initial["mpm.x"], seed)
    assert np.abs(g.initial["mpm.v"]).max() == 0.0


def test_a_scene_dropped_in_a_reference_cycle_hands_over_its_compiled_parts():
    """get_partset collects garbage once before compiling a layout anew: a dropped scene that only a
    reference cycle keeps alive (a demo's, an env's) gives its compiled parts to the next scene of
    its layout instead of a second compile (automatic collection is off here, so only that can)."""
    import gc
    import weakref

    from conftest import small_scene

    from physim import parts as pooled

    class _Owner:
        pass

    gc.disable()
    try:
        first = small_scene(2, ps.Elastic(E=3e3))
        parts = first.partset
        # earlier tests of this process may have left free sets of this layout in the pool: hold
        # them, so only the one the cycle keeps can be handed over (and only by collecting it)
        holders = []
        for entry in next(p for p in pooled._POOL.values() if any(e[0] is parts for e in p)):
            if entry[0] is not parts and (entry[1] is None or entry[1]() is None):
                holders.append(_Owner())
                entry[1] = weakref.ref(holders[-1])
        cycle = {"scene": first}
        cycle["self"] = cycle
        del first, cycle
        second = small_scene(2, ps.Elastic(E=3e3))
        assert second.partset is parts
    finally:
        gc.enable()

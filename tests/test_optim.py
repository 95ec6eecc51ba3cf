"""physim.optim: Adam, CMA-ES, hybrid, policy training and system identification on small 2D
scenes. Every scene here has the layout of conftest.small_scene (2D, grid 32, < 256 particles,
max_steps 8), and fixtures drop their scene after each test, so the whole file shares one
compiled engine with the rest of the suite."""

import gc

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import small_scene
from gymnasium import spaces

import physim as ps
from physim.optim import (
    MLPPolicy,
    OptimResult,
    SceneProblem,
    adam,
    cmaes,
    hybrid,
    identify,
    keyframe_matrix,
    plot_losses,
    train_policy,
)

T = 8  # horizon: the max_steps of the shared layout


# ---------------------------------------------------------------------------- problems
class Quadratic:
    """The problem protocol without a simulator: loss = sum over the first t rows of
    (a - target)^2, with a target partly outside the bounds (so the projection matters)."""

    def __init__(self, T=6, A=2):
        self.horizon, self.action_dim = T, A
        self.action_low, self.action_high = -np.ones(A), np.ones(A)
        self.target = np.linspace(-1.5, 1.5, T * A).reshape(T, A)
        self.sim_steps = 0

    def loss(self, actions):
        a = np.asarray(actions)
        assert a.ndim == 2 and 1 <= len(a) <= self.horizon
        assert np.all(a >= self.action_low - 1e-12) and np.all(a <= self.action_high + 1e-12), "out of bounds"
        self.sim_steps += len(a)
        return float(((a - self.target[: len(a)]) ** 2).sum())

    def loss_and_grad(self, actions):
        a = np.asarray(actions)
        value = self.loss(a)
        self.sim_steps += len(a)
        return value, 2 * (a - self.target[: len(a)])


@pytest.fixture(autouse=True)
def _collect():
    """Free the previous test's scene (scenes hold reference cycles) before this test builds one,
    so it reuses that scene's compiled engine instead of compiling a second one."""
    gc.collect()


@pytest.fixture
def push():
    """A plasticine block pushed by a sphere tool; loss: squared distance (cm^2) of its centroid to
    where a reference push (tool velocity (1.5, 0.3) m/s) takes it. Actions: tool (vx, vy) in
    [-2, 2] m/s (the angular velocity is hidden by the action map)."""
    scene = small_scene(2, ps.Plasticine(E=2e3, nu=0.2, yield_stress=20.0), substeps=10, velocity=[0.0, 0.0])
    M = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    scene.forward(np.tile([1.5, 0.3], (T, 1)) @ M, requires_grad=False)
    target = torch.as_tensor(scene.particle_positions().mean(0))
    scene.reset()

    def loss_fn(state):
        return ((state["mpm.x"].mean(0) - target) ** 2).sum() * 1e4

    problem = SceneProblem(scene, loss_fn, T, -2.0, 2.0, action_map=M)
    return problem


def _in_bounds(problem, actions):
    return np.all(actions >= problem.action_low - 1e-12) and np.all(actions <= problem.action_high + 1e-12)


# ---------------------------------------------------------------------------- Adam
def test_adam_lowers_loss_on_push(push):
    seen = []
    steps0 = push.sim_steps
    r = adam(push, iters=12, lr=0.3, progress=False, callback=lambda i, loss, a: seen.append((i, loss, a.shape)))
    assert isinstance(r, OptimResult) and r.method == "adam"
    assert r.actions.shape == (T, 2) and _in_bounds(push, r.actions)
    assert len(r.losses) == 12 and r.initial_loss == r.losses[0]
    assert r.loss < 0.3 * r.initial_loss, (r.initial_loss, r.losses)
    assert r.loss == min(r.losses + [r.extras["final_loss"]])
    assert [s[0] for s in seen] == list(range(12)) and seen[0][2] == (T, 2)
    assert r.sim_steps == push.sim_steps - steps0 == 12 * 2 * T + T  # 12 gradients + the final forward
    assert abs(push.loss(r.actions) - r.loss) < 1e-9 * max(1.0, r.loss)  # the reported best is reproducible


def test_adam_temporal_expansion_on_push(push):
    r = adam(push, iters=9, lr=0.3, expand=3, progress=False)
    assert [s["horizon"] for s in r.stages] == [3, 6, 8]
    assert [s["iters"] for s in r.stages] == [3, 3, 3]
    assert r.extras["horizons"] == [3] * 3 + [6] * 3 + [8] * 3
    assert all(np.isfinite(s["full_loss"]) for s in r.stages)
    assert r.stages[-1]["full_loss"] == r.extras["final_loss"]  # the last stage ends on the full horizon
    assert r.loss < 0.5 * r.initial_loss, (r.initial_loss, r.stages)
    assert _in_bounds(push, r.actions)


def test_adam_projects_onto_bounds_and_schedules():
    q = Quadratic()
    opt = np.clip(q.target, -1, 1)
    for schedule in ("cosine", "constant", "step"):
        r = adam(q, iters=150, lr=0.1, lr_schedule=schedule, progress=False)
        assert np.abs(r.actions - opt).max() < 0.05, schedule  # the projected optimum
        assert r.loss == pytest.approx(((opt - q.target) ** 2).sum(), abs=1e-2)
    # gradient clipping: the recorded norms are before clipping; the run still converges
    r = adam(q, iters=150, lr=0.1, clip_norm=1e-3, progress=False)
    assert max(r.extras["grad_norms"]) > 1.0 and np.abs(r.actions - opt).max() < 0.05


def test_adam_expansion_on_plateau_moves_on_early():
    q = Quadratic(T=6)
    r = adam(q, iters=60, lr=0.2, expand=3, expand_on_plateau=True, patience=2, plateau_tol=1e-3,
             lr_schedule="constant", progress=False)
    hs = [s["horizon"] for s in r.stages]
    assert hs == [2, 4, 6]
    assert r.stages[0]["iters"] < 20  # plateaued before its even share
    assert sum(s["iters"] for s in r.stages) == 60 and r.stages[-1]["iters"] > 20  # leftovers go to the end
    assert np.abs(r.actions - np.clip(q.target, -1, 1)).max() < 0.05


# ---------------------------------------------------------------------------- CMA-ES
def test_keyframe_matrix():
    W = keyframe_matrix(8, 3)
    assert W.shape == (8, 3) and np.allclose(W.sum(1), 1) and (W >= 0).all()
    assert np.allclose(W[0], [1, 0, 0]) and np.allclose(W[-1], [0, 0, 1])
    assert np.allclose(W @ np.array([0.0, 1.0, 2.0]), np.linspace(0, 2, 8))  # linear in between
    assert np.allclose(keyframe_matrix(5, 1), 1)
    with pytest.raises(ValueError, match="keyframes"):
        keyframe_matrix(4, 5)


def test_cmaes_lowers_loss_on_push(push):
    r = cmaes(push, iters=8, keyframes=3, seed=0, progress=False)
    assert r.method == "cmaes" and r.extras["dimension"] == 6
    assert len(r.losses) == 8 and r.loss <= min(r.losses)
    assert r.loss < 0.5 * r.initial_loss, (r.initial_loss, r.losses)
    assert _in_bounds(push, r.actions)
    assert r.sim_steps == T * r.extras["evaluations"]


def test_cmaes_respects_bounds_and_seed():
    q = Quadratic()
    r1 = cmaes(q, iters=30, sigma0=0.5, seed=3, progress=False)  # Quadratic.loss asserts the bounds
    r2 = cmaes(q, iters=30, sigma0=0.5, seed=3, progress=False)
    assert r1.loss == r2.loss and np.array_equal(r1.actions, r2.actions)
    assert r1.loss < 0.5 * r1.initial_loss


def test_hybrid_on_push(push):
    r = hybrid(push, cma_iters=3, adam_iters=5, keyframes=2, lr=0.3, seed=0, progress=False)
    assert r.method == "hybrid" and r.stage_boundary == 3 and len(r.losses) == 8
    assert r.losses[:3] == r.extras["cma"].losses and r.losses[3:] == r.extras["adam"].losses
    assert r.extras["adam"].initial_loss == pytest.approx(r.extras["cma"].loss, rel=1e-9)  # Adam starts at CMA's best
    assert r.loss <= r.extras["cma"].loss
    assert r.loss < 0.5 * r.initial_loss, r.losses
    assert _in_bounds(push, r.actions)


# ---------------------------------------------------------------------------- policy
class MuscleWalker(gym.Env):
    """A tiny env with the problem protocol (the DiffTaichi walker idea): an elastic torso on two
    muscle legs on a frictional floor; loss = -(x displacement of the centroid) in m.
    Observation: centroid and mean velocity of each body (float32)."""

    def __init__(self):
        scene = ps.Scene(dim=2, grid_res=32, dt=5e-4, substeps_per_step=10, checkpoint_every=8, specialize=False,
                         boundary="friction", wall_friction=0.8)
        muscle = ps.Muscle(E=1e3, nu=0.2, actuation_strength=400.0)
        scene.add_body(ps.Box(center=(0.3, 0.2), size=(0.2, 0.05)), ps.Elastic(E=1e3, nu=0.2))
        scene.add_body(ps.Box(center=(0.225, 0.135), size=(0.05, 0.07)), muscle, actuator=0)
        scene.add_body(ps.Box(center=(0.375, 0.135), size=(0.05, 0.07)), muscle, actuator=1)
        scene.build(max_steps=T)
        self.scene = scene
        self._x0 = float(scene.particle_positions()[:, 0].mean())
        self.problem = SceneProblem(scene, lambda s: -(s["mpm.x"][:, 0].mean() - self._x0), T, -1.0, 1.0)
        self.action_space = spaces.Box(-1.0, 1.0, (scene.action_dim,), np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, (4 * len(scene.bodies),), np.float32)
        self._t = 0

    horizon = property(lambda self: self.problem.horizon)
    action_dim = property(lambda self: self.problem.action_dim)
    action_low = property(lambda self: self.problem.action_low)
    action_high = property(lambda self: self.problem.action_high)
    sim_steps = property(lambda self: self.problem.sim_steps)

    def loss(self, actions):
        return self.problem.loss(actions)

    def loss_and_grad(self, actions):
        return self.problem.loss_and_grad(actions)

    def _obs(self):
        s = self.scene.get_state()
        f = [np.r_[s["mpm.x"][b.start:b.start + b.count].mean(0), s["mpm.v"][b.start:b.start + b.count].mean(0)]
             for b in self.scene.bodies]
        return np.concatenate(f).astype(np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.scene.reset()
        self.problem.start_state = self.scene.get_state()
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self.scene.step(np.asarray(action, dtype=np.float64))
        self._t += 1
        reward = float(self.scene.particle_positions()[:, 0].mean() - self._x0)
        return self._obs(), reward, False, self._t >= self.horizon, {}


def test_train_policy_walks_forward():
    env = MuscleWalker()
    r = train_policy(env, iters=10, hidden=64, lr=5e-3, seed=0, progress=False)
    assert r.method == "policy" and isinstance(r.policy, MLPPolicy) and len(r.losses) == 10
    assert abs(r.initial_loss) < 1e-4  # near-zero actions: the walker stands
    assert r.loss < r.initial_loss - 3e-4, r.losses  # best rollout: >= 0.3 mm further forward
    assert _in_bounds(env, r.actions) and r.actions.shape == (T, 2)
    # the returned (best) policy replays its rollout closed loop
    obs, _ = env.reset(seed=0)
    acts = []
    for t in range(T):
        acts.append(r.policy.act(obs, t))
        obs, *_ = env.step(acts[-1].astype(np.float32))
    assert np.allclose(np.array(acts), r.actions, atol=1e-9)
    assert env.loss(np.array(acts)) == pytest.approx(r.loss, abs=2e-5)


def test_mlp_policy_bounds_and_gradients():
    for sine in (False, True):
        pol = MLPPolicy(3, [-1.0, 0.0], [1.0, 2.0], horizon=10, hidden=16, sine=sine,
                        generator=torch.Generator().manual_seed(0))
        with torch.no_grad():  # push the outputs towards saturation: they must stay inside the bounds
            pol.net[-1].weight.mul_(1e3)
        for t in range(10):
            a = pol.act(np.random.default_rng(t).normal(size=3) * 10, t)
            assert a.shape == (2,) and -1 <= a[0] <= 1 and 0 <= a[1] <= 2
        out = pol(pol.features(np.ones(3), 4)).sum()
        out.backward()
        assert all(p.grad is not None for p in pol.parameters())
    with pytest.raises(ValueError, match="observation features"):
        pol.act(np.ones(4), 0)


# ---------------------------------------------------------------------------- sysid
@pytest.fixture
def elastic():
    scene = small_scene(2, ps.Elastic(E=2e3, nu=0.3), substeps=10, velocity=[0.0, 0.0])
    actions = np.tile([1.5, 0.0, 0.0], (T, 1))
    scene.forward(actions, requires_grad=False)
    observed = scene.particle_positions()
    scene.reset()
    return scene, actions, observed


def test_identify_recovers_youngs_modulus(elastic):
    scene, actions, observed = elastic
    r = identify(scene, actions, {"mpm.E": 4e3}, observed=observed, iters=14, lr=0.1, progress=False)
    assert r.relative_error(2e3) < 0.1, (r.value, r.history)
    assert r.losses[0] > 100 * r.loss and r.history[0] == {"mpm.E": 4e3} and len(r.history) == len(r.losses)
    assert scene.get_material_param(0, "E") == pytest.approx(r.value)  # the scene keeps the identified value


def test_hybrid_default_keyframes_fit_a_one_step_horizon():
    """An inverse task's horizon is one action (a parameter guess): hybrid's default keyframes must
    not exceed it (they used to be a fixed 4, so `physim optimize physim/CardBending-v0 --method
    hybrid` raised), and the optimum inside the bounds is found."""
    q = Quadratic(T=1, A=2)  # target row (-1.5, 1.5): optimum at the bounds (-1, 1)
    r = hybrid(q, cma_iters=4, adam_iters=20, lr=0.2, seed=0, progress=False)
    assert r.extras["cma"].extras["keyframes"] == 1
    np.testing.assert_allclose(r.actions, [[-1.0, 1.0]], atol=1e-3)
    with pytest.raises(ValueError, match="keyframes"):
        hybrid(q, keyframes="many", progress=False)
    with pytest.raises(ValueError, match="keyframes=4 exceeds the horizon T=1"):
        hybrid(q, keyframes=4, progress=False)  # an explicit count is still checked


def test_hybrid_budget_splits_simulated_steps():
    """``hybrid(budget=B)``: CMA-ES gets half of B in simulated steps and Adam the rest, and the
    run spends at most B. Quadratic, T = 6, 4 keyframes x A = 2 (popsize 4 + floor(3 ln 8) = 10),
    B = 360 = 60 T: CMA-ES floor((30 - 1) / 10) = 2 generations (21 T with the starting mean), Adam
    floor((60 - 21 - 1) / 2) = 19 iterations (2 T each, T for the last iterate): 21 T + 39 T = B."""
    q = Quadratic()
    r = hybrid(q, budget=360, lr=0.2, seed=0, progress=False)
    assert r.extras["budget"] == {"budget": 360, "cma_share": 0.5, "popsize": 10, "cma_iters": 2, "adam_iters": 19}
    assert r.stage_boundary == 2 and len(r.losses) == 2 + 19
    assert r.extras["cma"].sim_steps == 6 * 21 and r.sim_steps == 360
    same = hybrid(Quadratic(), cma_iters=2, adam_iters=19, lr=0.2, seed=0, progress=False)
    assert r.loss == same.loss and r.losses == same.losses
    assert hybrid(Quadratic(), budget=360, cma_share=0.75, seed=0, progress=False).extras["budget"]["cma_iters"] == 4
    with pytest.raises(ValueError, match="not both"):
        hybrid(q, budget=360, cma_iters=2, progress=False)
    with pytest.raises(ValueError, match="budget=60 .* 84"):
        hybrid(q, budget=60, progress=False)  # below T (popsize + 4) = 6 x 14
    with pytest.raises(ValueError, match="cma_share"):
        hybrid(q, budget=360, cma_share=1.0, progress=False)


# ---------------------------------------------------------------------------- bad inputs, plots
def test_bad_inputs_name_the_value(elastic):
    q = Quadratic()
    with pytest.raises(ValueError, match="init"):
        adam(q, init=np.zeros((3, 2)), progress=False)
    with pytest.raises(ValueError, match="iters"):
        adam(q, iters=0, progress=False)
    with pytest.raises(ValueError, match="iters"):
        cmaes(q, iters=0, progress=False)
    with pytest.raises(ValueError, match="cma_iters"):
        hybrid(q, cma_iters=0, progress=False)
    with pytest.raises(ValueError, match="lr_schedule"):
        adam(q, lr_schedule="linear", progress=False)
    with pytest.raises(ValueError, match="expand"):
        adam(q, iters=2, expand=3, progress=False)
    with pytest.raises(ValueError, match="init"):
        cmaes(q, init=np.zeros((6, 3)), progress=False)
    with pytest.raises(ValueError, match="lacks"):
        adam(object(), progress=False)
    with pytest.raises(ValueError, match="reset"):
        train_policy(q, progress=False)
    scene, actions, observed = elastic
    with pytest.raises(ValueError, match="youngs"):
        identify(scene, actions, {"mpm.youngs": 1e3}, observed=observed, progress=False)
    with pytest.raises(ValueError, match="yield_stress"):  # Elastic has no yield stress
        identify(scene, actions, {"mpm.yield_stress": 10.0}, observed=observed, progress=False)
    with pytest.raises(ValueError, match="iters"):
        identify(scene, actions, {"mpm.E": 1e3}, observed=observed, iters=0, progress=False)
    with pytest.raises(ValueError, match="observed"):
        identify(scene, actions, {"mpm.E": 1e3}, observed=observed[:5], progress=False)
    with pytest.raises(ValueError, match="rows"):
        identify(scene, actions, {"mpm.E[3]": 1e3}, observed=observed, progress=False)
    with pytest.raises(ValueError, match="outside its search interval"):
        identify(scene, actions, {"mpm.nu": 0.7}, observed=observed, progress=False)


def test_plot_losses(tmp_path):
    q = Quadratic()
    runs = {"adam": adam(q, iters=10, lr=0.1, expand=2, progress=False),
            "cmaes": cmaes(q, iters=5, seed=0, progress=False)}
    for target, name in ((runs, "both.png"), (runs["adam"], "sub/adam.png"), ({"raw": [1.0, -2.0]}, "neg.png")):
        path = plot_losses(target, str(tmp_path / name))
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="results"):
        plot_losses({}, str(tmp_path / "x.png"))

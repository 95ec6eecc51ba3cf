"""Loss against budget: random search, CMA-ES, Adam, the hybrid and PPO on the same tasks and
goals, as curves against simulated steps *and* wall-clock seconds, over several seeds (issue 13,
"a fair results table").

    python benchmarks/budget_curves.py                                  # the default study (hours)
    python benchmarks/budget_curves.py --envs Walker2D --seeds 0 --adam-iters 4   # a quick look
    python benchmarks/budget_curves.py --plot-only                     # redraw from the records

Why this and not the README's one-budget table: that table gives every method 16 T simulated
steps and counts a gradient evaluation as 2 T although it costs 3-5 forward passes of wall time,
so CMA-ES gets one generation and Adam 2-6x the others' wall time. Here

* every loss evaluation an optimizer makes is logged as it happens (simulated steps so far,
  wall seconds so far, its loss), so each run is a best-so-far curve, not one number;
* Adam and the hybrid get ``--adam-iters`` gradient iterations (``sim_steps`` counts a gradient
  as 2 T, physim's convention), random search, CMA-ES and PPO ``--gradient-free-factor`` (10)
  times Adam's simulated steps;
* the curves are drawn against both axes, so a method that wins per simulated step and loses
  per second (or the reverse) shows it;
* PPO (Stable-Baselines3, ``physim.rl.train``) is logged by its training episodes (the final
  loss of each, exploration noise included: comparable with the best candidate a CMA-ES run
  evaluated) and its trained deterministic policy at the end;
* where gradients do not win, ``gradient_noise`` measures why: the cosine between the gradient
  at the start and the gradients at 4 points 1e-2 away (in action units); a smooth loss gives
  cosines near 1, contact switches and chaos give scattered gradients.

Every run is appended as one JSON line to ``--out`` (default
``benchmarks/results/budget_curves.jsonl``), so a long study can stop and resume (runs already
in the file are skipped). ``--plot`` (default ``benchmarks/budget_curves.png``) draws one row
per env: best loss so far against simulated steps and against seconds, one line per seed. The
summary table (median final loss per method, and the loss each method had reached at Adam's
budget) is printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("random", "cma", "adam", "hybrid", "ppo")
LABELS = {"random": "random", "cma": "CMA-ES", "adam": "Adam", "hybrid": "hybrid", "ppo": "PPO"}
COLORS = {"random": "tab:gray", "cma": "tab:orange", "adam": "tab:blue", "hybrid": "tab:green", "ppo": "tab:red"}


class EvalLog:
    """Log every full-horizon loss evaluation of a task (``env.unwrapped``) while installed:
    ``(sim_steps, seconds, loss)`` with both counters from :meth:`start`. Shortened-horizon
    evaluations (Adam's temporal expansion) count in the budget but are not points of the curve
    (their loss is of another problem)."""

    def __init__(self, task):
        self.task = task
        self.points: list[tuple[int, float, float]] = []
        self._orig = {}

    def start(self):
        self.points.clear()
        self.s0 = self.task.sim_steps
        self.t0 = time.perf_counter()
        T = self.task.horizon
        for name in ("loss", "loss_and_grad"):
            orig = getattr(self.task, name)
            self._orig[name] = orig

            def wrapped(actions, *a, _orig=orig, _grad=(name == "loss_and_grad"), **kw):
                out = _orig(actions, *a, **kw)
                loss = out[0] if _grad else out
                if np.shape(actions)[0] == T:
                    self.points.append((int(self.task.sim_steps - self.s0), time.perf_counter() - self.t0,
                                        float(loss)))
                return out

            setattr(self.task, name, wrapped)
        return self

    def stop(self) -> dict:
        for name in self._orig:
            delattr(self.task, name)  # the instance attribute goes; the class's method is back
        self._orig.clear()
        s, t, loss = (list(c) for c in zip(*self.points, strict=True)) if self.points else ([], [], [])
        return {"sim_steps": s, "seconds": t, "losses": loss,
                "total_sim_steps": int(self.task.sim_steps - self.s0), "total_seconds": time.perf_counter() - self.t0}


def gradient_noise(task, seed: int, radius: float = 1e-2, samples: int = 4) -> dict:
    """Cosines between the gradient at zero actions and at ``samples`` points ``radius`` away
    (uniform directions, action units), and the relative spread of their norms."""
    rng = np.random.default_rng(1000 + seed)
    a0 = task.problem.zero_actions()
    _, g0 = task.loss_and_grad(a0)
    g0 = np.asarray(g0, dtype=np.float64).ravel()
    cos, norms = [], [float(np.linalg.norm(g0))]
    for _ in range(samples):
        d = rng.normal(size=a0.shape)
        a = np.clip(a0 + radius * d / np.linalg.norm(d), task.action_low, task.action_high)
        _, g = task.loss_and_grad(a)
        g = np.asarray(g, dtype=np.float64).ravel()
        norms.append(float(np.linalg.norm(g)))
        cos.append(float(g @ g0 / max(np.linalg.norm(g) * np.linalg.norm(g0), 1e-300)))
    return {"radius": radius, "cosines": cos, "norms": norms,
            "norm_spread": float(np.std(norms) / max(np.mean(norms), 1e-300))}


def run_one(env_id: str, method: str, seed: int, args) -> dict:
    import gymnasium as gym

    import physim.envs  # noqa: F401
    from physim import optim

    rec = {"env": env_id, "method": method, "seed": seed, "adam_iters": args.adam_iters,
           "factor": args.gradient_free_factor}
    if method == "ppo":
        from physim import rl

        T = args.horizon
        steps = args.gradient_free_factor * 2 * T * args.adam_iters
        r = rl.train(env_id, algo="ppo", steps=steps, seed=seed, horizon=T, progress=False,
                     out=f"{args.work}/{env_id.split('/')[-1]}-ppo-s{seed}")
        c = r["curve"]
        rec.update(horizon=r["horizon"], initial_loss=r["initial_loss"], final_loss=r["final_loss"],
                   curve={"sim_steps": c["steps"], "seconds": c["seconds"], "losses": c["losses"],
                          "total_sim_steps": r["env_steps"], "total_seconds": r["train_seconds"]},
                   note="curve: final loss of each training episode (exploration included); "
                        "final_loss: the trained deterministic policy")
        return rec

    env = gym.make(env_id, horizon=args.horizon)
    task = env.unwrapped
    env.reset(seed=seed)
    T, A = task.horizon, task.action_dim
    zero = task.problem.zero_actions()
    task.loss_and_grad(zero)  # compile forward and reverse kernels outside the timed run
    adam_budget = 2 * T * args.adam_iters
    free_budget = args.gradient_free_factor * adam_budget
    k = 4
    popsize = 4 + int(3 * math.log(k * A))
    log = EvalLog(task).start()
    if method == "random":
        res = optim.random_search(task, iters=max(1, free_budget // (popsize * T)), popsize=popsize, keyframes=k,
                                  seed=seed, progress=False)
    elif method == "cma":
        res = optim.cmaes(task, iters=max(1, free_budget // (popsize * T)), keyframes=k, popsize=popsize, seed=seed,
                          progress=False)
    elif method == "adam":
        res = optim.adam(task, iters=args.adam_iters, lr=args.lr, seed=seed, progress=False)
    elif method == "hybrid":
        h_cma = max(1, (adam_budget // 3) // (popsize * T))
        h_adam = max(1, (adam_budget - h_cma * popsize * T) // (2 * T))
        res = optim.hybrid(task, cma_iters=h_cma, adam_iters=h_adam, keyframes=k, popsize=popsize, lr=args.lr,
                           seed=seed, progress=False)
    else:
        raise ValueError(f"unknown method {method!r}")
    curve = log.stop()
    rec.update(horizon=T, initial_loss=float(res.initial_loss), final_loss=float(res.loss), curve=curve)
    if method == "adam":
        rec["gradient_noise"] = gradient_noise(task, seed)
    env.close()
    return rec


def _best_so_far(curve: dict, axis: str):
    x = np.asarray(curve[axis], dtype=float)
    y = np.minimum.accumulate(np.asarray(curve["losses"], dtype=float)) if len(curve["losses"]) else np.zeros(0)
    return x, y


def _at(curve: dict, axis: str, budget: float) -> float:
    """Best loss reached within ``budget`` on ``axis`` (nan when nothing was evaluated by then)."""
    x, y = _best_so_far(curve, axis)
    ok = x <= budget
    return float(y[ok][-1]) if ok.any() else math.nan


def load(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(records: list[dict]) -> str:
    envs = list(dict.fromkeys(r["env"] for r in records))
    lines = ["| env | seeds | zero actions | " + " | ".join(
        f"{LABELS[m]} (at Adam's budget / final)" for m in METHODS) + " | Adam gradient cosine at 1e-2 |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in METHODS) + " | ---: |"]
    for env in envs:
        rs = [r for r in records if r["env"] == env]
        seeds = sorted({r["seed"] for r in rs})
        zero = np.median([r["initial_loss"] for r in rs if r["method"] in ("adam", "cma", "random")] or [math.nan])
        cells = []
        for m in METHODS:
            ms = [r for r in rs if r["method"] == m]
            if not ms:
                cells.append("-")
                continue
            adam_budget = 2 * ms[0]["horizon"] * ms[0]["adam_iters"]
            at = np.median([_at(r["curve"], "sim_steps", adam_budget) for r in ms])
            fin = np.median([r["final_loss"] if m != "ppo" else min(r["final_loss"], np.min(r["curve"]["losses"]))
                             for r in ms])
            cells.append(f"{at:.4g} / {fin:.4g} (n={len(ms)})")
        cos = [c for r in rs if "gradient_noise" in r for c in r["gradient_noise"]["cosines"]]
        cos_s = f"{np.median(cos):.3f} (min {np.min(cos):.3f})" if cos else "-"
        lines.append(f"| {env.split('/')[-1]} | {','.join(map(str, seeds))} | {zero:.4g} | " + " | ".join(cells)
                     + f" | {cos_s} |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(dict.fromkeys(r["env"] for r in records))
    fig, axes = plt.subplots(len(envs), 2, figsize=(11, 3.4 * len(envs)), dpi=90, squeeze=False)
    for row, env in zip(axes, envs, strict=True):
        rs = [r for r in records if r["env"] == env]
        for ax, axis, xlabel in ((row[0], "sim_steps", "simulated steps (a gradient counts 2T)"),
                                 (row[1], "seconds", "wall-clock seconds (2-core CPU)")):
            for m in METHODS:
                ms = [r for r in rs if r["method"] == m and len(r["curve"]["losses"])]
                if not ms:
                    continue
                # one line per seed (with 2-3 seeds run at different machine loads a median would
                # jump wherever one seed's curve starts)
                for i, r in enumerate(ms):
                    x, y = _best_so_far(r["curve"], axis)
                    ax.step(x, y, where="post", color=COLORS[m], alpha=0.85, lw=1.2,
                            label=f"{LABELS[m]} ({len(ms)} seeds)" if i == 0 else None)
                if m == "ppo":  # the trained deterministic policies
                    ax.plot([r["curve"]["total_" + axis] for r in ms], [r["final_loss"] for r in ms], "x",
                            color=COLORS[m], label="PPO trained policy")
            adam = [r for r in rs if r["method"] == "adam"]
            if adam and axis == "sim_steps":
                ax.axvline(2 * adam[0]["horizon"] * adam[0]["adam_iters"], color="k", ls=":", lw=1,
                           label="Adam's budget")
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("best loss so far")
            ax.set_title(env.split("/")[-1])
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["Walker2D", "Gathering", "RollingPin"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--horizon", type=int, default=20, help="episode length T (default 20, the README table's)")
    parser.add_argument("--adam-iters", type=int, default=16)
    parser.add_argument("--gradient-free-factor", type=int, default=10,
                        help="random, CMA-ES and PPO get this many times Adam's simulated steps (default 10)")
    parser.add_argument("--lr", type=float, default=0.1, help="Adam's (and the hybrid's) learning rate")
    parser.add_argument("--out", default=str(HERE / "results" / "budget_curves.jsonl"))
    parser.add_argument("--plot", default=str(HERE / "budget_curves.png"))
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--work", default="/tmp/budget_curves")
    args = parser.parse_args(argv)
    for name in ("horizon", "adam_iters", "gradient_free_factor"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        import physim

        physim.init(arch="cpu", fast_compile=True, verbose=False)
        done = {(r["env"], r["method"], r["seed"], r["horizon"], r["adam_iters"], r["factor"]) for r in load(out)}
        for seed in args.seeds:
            for env in args.envs:
                env_id = env if "/" in env else f"physim/{env}-v0"
                for m in args.methods:
                    key = (env_id, m, seed, args.horizon, args.adam_iters, args.gradient_free_factor)
                    if key in done:
                        continue
                    t0 = time.time()
                    rec = run_one(env_id, m, seed, args)
                    rec["wall_of_job"] = round(time.time() - t0, 1)
                    with out.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(f"{env_id} {m} seed {seed}: {rec['initial_loss']:.4g} -> {rec['final_loss']:.4g} "
                          f"({rec['curve']['total_sim_steps']} sim steps, {rec['curve']['total_seconds']:.0f} s)",
                          flush=True)
    records = load(out)
    if records:
        plot(records, Path(args.plot))
        print(summary(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Random search, CMA-ES, Adam and the hybrid on the thin-shell tasks, at one budget of simulated steps.

    python benchmarks/shell_tasks.py                       # all four tasks, seed 0
    python benchmarks/shell_tasks.py --tasks Folding --out benchmarks/results/shell_tasks.json
    python benchmarks/shell_tasks.py --plan long --tasks Sliding --seed 1   # about 3x the budget (LONG_PLANS)

Every optimizer run is :func:`physim.cli.optimize`, the function behind ``physim optimize
physim/<Task>-v0 --method X --iters N`` (without the video), so the numbers are the command's.
The iterations per method are chosen so that each spends about the same number of simulated
steps (``sim_steps`` in the record: a gradient evaluation counts its steps twice); random search
is the best of as many uniform random action sequences as that budget pays for forward passes.
CardBending has horizon 1, which the command's hybrid cannot keyframe (``--method hybrid``
uses 4 keyframes); its hybrid row calls :func:`physim.optim.hybrid` with ``keyframes=None``.
Writes one JSON record per task and seed (losses, wall seconds, sim steps, the commands, the
commit and the load average), merged into ``--out`` after every method (runs of other tasks,
seeds or methods are kept; a long plan's records go under the task "<Task> (long)").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
import traceback
from pathlib import Path

import numpy as np

#: per task: iterations per method (about the same simulated-step budget; see the module docstring)
PLANS = {
    # T = 20 steps of 2 substeps, A = 3: Adam 16 x 2T + T; CMA-ES popsize 16 (60 dims) x 2 + 1; hybrid 2 x 11
    # (12 dims) + 1, then 4 x 2T + T
    "Folding": {"adam": 16, "cma": 2, "hybrid": 6, "random": 33},
    # T = 20, A = 4: CMA-ES popsize 17 (80 dims); hybrid popsize 11 (16 dims)
    "Sliding": {"adam": 16, "cma": 2, "hybrid": 6, "random": 33},
    # T = 20, A = 4: as Sliding (two sheets with shell <-> shell contact)
    "Separating": {"adam": 16, "cma": 2, "hybrid": 6, "random": 33},
    # T = 1, A = 2: Adam 10 x 2 + 1 evaluations; CMA-ES popsize 6 x 3 + 1; hybrid 2 x 6 + 1 then 3 x 2 + 1
    # L-BFGS-B (not a physim optimize method): 10 gradient evaluations
    "CardBending": {"adam": 10, "cma": 3, "hybrid": (2, 3), "random": 21, "lbfgs": 10},
}
#: about three times the budget (``--plan long``): Adam 48 x 2T + T = 97T; CMA-ES 6 x 16T + T; hybrid 6 x 11T + T,
#: then 12 x 2T + T
#: Sliding, Separating (T = 20, A = 4): Adam 48 x 2T + T = 97T; CMA-ES 6 x 17T + T = 103T (80 dims); hybrid (the
#: command's split: iters // 3 generations) 6 x 12T + T (16 dims), then 12 x 2T + T: 98T; random 97T
#: "hybrid-budget": physim.optim.hybrid(budget=1960 steps = 98T), which splits the steps in half: 4 x 12T + T, then
#: 24 x 2T + T
LONG_PLANS = {"Folding": {"adam": 48, "cma": 6, "hybrid": 18, "random": 97},
              "Sliding": {"adam": 48, "cma": 6, "hybrid": 18, "random": 97, "hybrid-budget": 1960},
              "Separating": {"adam": 48, "cma": 6, "hybrid": 18, "random": 97, "hybrid-budget": 1960}}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def random_search(env_id: str, n: int, seed: int) -> dict:
    """Best loss of ``n`` uniform random action sequences (or guesses) in [-1, 1]."""
    import gymnasium as gym

    import physim.envs  # noqa: F401  (registers the tasks)

    env = gym.make(env_id)
    task = env.unwrapped
    env.reset(seed=seed)
    rng = np.random.default_rng(1000 + seed)
    t0 = time.perf_counter()
    steps0 = task.sim_steps
    losses, samples = [], []
    for _ in range(n):
        a = rng.uniform(-1.0, 1.0, size=(task.horizon, task.action_dim))
        samples.append(a)
        try:
            losses.append(float(task.loss(a)))
        except Exception as err:  # a failed simulation counts as a failed sample, as in CMA-ES
            losses.append(float("inf"))
            print(f"  random sample failed: {type(err).__name__}: {err}")
    steps = task.sim_steps - steps0
    zero = float(task.loss(np.zeros((task.horizon, task.action_dim))))
    finite = [v for v in losses if np.isfinite(v)]
    rec = {"method": "random", "samples": n, "final_loss": float(min(losses)), "mean_loss": float(np.mean(finite)),
           "zero_action_loss": zero, "wall_seconds": round(time.perf_counter() - t0, 1), "sim_steps": int(steps),
           "actions": samples[int(np.argmin(losses))].tolist()}
    env.close()
    return rec


def card_errors(guess, seed: int) -> dict:
    """CardBending: the parameters of a guess ((1, 2) normalized) and their relative errors
    against the seed's hidden truth (drawn as ``CardBendingEnv._sample_goal`` draws it)."""
    from physim.envs.card_bending import CardBendingEnv as C

    g = np.asarray(guess, dtype=np.float64).reshape(-1)
    D, alpha = C.D0 * 4.0 ** g[0], C.alpha0 * 4.0 ** g[1]
    u, w = np.random.default_rng(seed).uniform(-C.truth_spread, C.truth_spread, size=2)
    tD, ta = C.D0 * 2.0 ** u, C.alpha0 * 2.0 ** w
    return {"bending": D, "damping": alpha, "true_bending": tD, "true_damping": ta,
            "bending_error": abs(D - tD) / tD, "damping_error": abs(alpha - ta) / ta}


def card_hybrid(seed: int, cma_iters: int, adam_iters: int) -> dict:
    """The hybrid on CardBending (horizon 1): CMA-ES over the whole guess, then Adam."""
    import gymnasium as gym

    import physim.envs  # noqa: F401  (registers the tasks)
    from physim import optim

    env = gym.make("physim/CardBending-v0")
    task = env.unwrapped
    env.reset(seed=seed)
    t0 = time.perf_counter()
    res = optim.hybrid(task, cma_iters=cma_iters, adam_iters=adam_iters, keyframes=None, seed=seed, progress=False)
    env.close()
    return {"method": "hybrid", "iters": [cma_iters, adam_iters], "actions": np.asarray(res.actions).tolist(),
            "initial_loss": float(res.initial_loss),
            "final_loss": float(res.loss), "losses": [float(v) for v in res.losses],
            "wall_seconds": round(time.perf_counter() - t0, 1), "sim_steps": int(res.sim_steps),
            "command": f"physim.optim.hybrid(env.unwrapped, cma_iters={cma_iters}, adam_iters={adam_iters}, "
                       f"keyframes=None, seed={seed})"}


def budget_hybrid(env_id: str, seed: int, budget: int) -> dict:
    """:func:`physim.optim.hybrid` with ``budget`` simulated steps, split in half between CMA-ES and
    Adam (``physim optimize --method hybrid`` splits iterations instead; see the hybrid's docstring),
    with the task's ``adam_defaults`` for Adam's step as ``--method adam`` uses them."""
    import gymnasium as gym

    import physim.envs  # noqa: F401  (registers the tasks)
    from physim import optim

    env = gym.make(env_id)
    task = env.unwrapped
    env.reset(seed=seed)
    lr = getattr(task, "adam_defaults", {}).get("lr", 0.05)
    t0 = time.perf_counter()
    res = optim.hybrid(task, budget=budget, lr=lr, seed=seed, progress=False)
    env.close()
    split = res.extras["budget"]
    return {"method": "hybrid-budget", "budget": split, "stage_boundary": res.stage_boundary,
            "stages": res.stages, "sigma": res.extras["cma"].extras["sigma"], "lr": lr,
            "actions": np.asarray(res.actions).tolist(), "initial_loss": float(res.initial_loss),
            "final_loss": float(res.loss), "losses": [float(v) for v in res.losses],
            "wall_seconds": round(time.perf_counter() - t0, 1), "sim_steps": int(res.sim_steps),
            "command": f"physim.optim.hybrid(env.unwrapped, budget={budget}, lr={lr}, seed={seed})"}


def lbfgs(env_id: str, evaluations: int, seed: int) -> dict:
    """scipy's L-BFGS-B on the env's ``loss_and_grad`` (the whole action sequence, in its box) from
    zero actions, at most ``evaluations`` gradient evaluations: a quasi-Newton method on the same
    gradients Adam uses (not a ``physim optimize`` method)."""
    import gymnasium as gym
    from scipy.optimize import minimize

    import physim.envs  # noqa: F401  (registers the tasks)

    env = gym.make(env_id)
    task = env.unwrapped
    env.reset(seed=seed)
    shape = (task.horizon, task.action_dim)
    losses = []

    def f(u):
        loss, g = task.loss_and_grad(u.reshape(shape))
        losses.append(float(loss))
        return loss, np.asarray(g, dtype=np.float64).ravel()

    t0 = time.perf_counter()
    steps0 = task.sim_steps
    res = minimize(f, np.zeros(np.prod(shape)), jac=True, method="L-BFGS-B", bounds=[(-1.0, 1.0)] * int(np.prod(shape)),
                   options=dict(maxfun=evaluations, ftol=1e-15, gtol=1e-12))
    rec = {"method": "lbfgs", "evaluations": len(losses), "initial_loss": losses[0], "final_loss": float(res.fun),
           "losses": losses, "actions": res.x.reshape(shape).tolist(),
           "wall_seconds": round(time.perf_counter() - t0, 1),
           "sim_steps": int(task.sim_steps - steps0),
           "command": f"scipy.optimize.minimize(loss_and_grad, zeros, jac=True, method='L-BFGS-B', "
                      f"options=dict(maxfun={evaluations}))"}
    env.close()
    return rec


def run_task(task: str, seed: int, out_dir: Path, methods, plan: dict) -> dict:
    from physim.cli import optimize

    env_id = f"physim/{task}-v0"
    rows = {}
    for method in methods:
        print(f"{task}: {method} ...", flush=True)
        t0 = time.perf_counter()
        try:
            if method == "random":
                rows[method] = random_search(env_id, plan["random"], seed)
            elif method == "lbfgs":
                rows[method] = lbfgs(env_id, plan["lbfgs"], seed)
            elif method == "hybrid-budget":
                rows[method] = budget_hybrid(env_id, seed, plan[method])
            elif method == "hybrid" and task == "CardBending":
                rows[method] = card_hybrid(seed, *plan["hybrid"])
            else:
                rec = optimize(env_id, method=method, iters=plan[method], seed=seed, out=str(out_dir / task / method),
                               video=False, progress=False)
                rec["command"] = f"physim optimize {env_id} --method {method} --iters {plan[method]} --seed {seed}"
                rec["actions"] = np.load(out_dir / task / method / "actions.npy").tolist()
                rows[method] = rec
            if task == "CardBending" and "actions" in rows[method]:
                rows[method].update(card_errors(rows[method]["actions"], seed))
        except Exception as err:
            rows[method] = {"method": method, "error": f"{type(err).__name__}: {err}",
                            "traceback": traceback.format_exc(limit=4),
                            "wall_seconds": round(time.perf_counter() - t0, 1)}
        r = rows[method]
        print(f"  {method}: loss {r.get('final_loss')} in {r.get('wall_seconds')} s, {r.get('sim_steps')} sim steps"
              + (f"  ERROR {r['error']}" if "error" in r else ""), flush=True)
    return rows


def _curve(row: dict, horizon: int):
    """(simulated steps, best loss so far) after each iteration of a record (None for random search):
    a CMA-ES generation costs popsize rollouts (from the record's steps), an Adam iteration 2T."""
    losses, iters, steps = row.get("losses"), row.get("iters"), row.get("sim_steps")
    if not losses or steps is None:
        return None
    T = horizon
    if row["method"] == "adam":
        cost = [2 * T] * len(losses)
    elif row["method"] == "cma":
        cost = [(steps - T) // len(losses)] * len(losses)
    elif row["method"] == "hybrid-budget":
        g, b = row["stage_boundary"], row["budget"]
        cost = [b["popsize"] * T] * g + [2 * T] * (len(losses) - g)
    elif row["method"] == "hybrid":
        g = iters // 3
        pop = (steps // T - 1 - (2 * (len(losses) - g) + 1)) * T // g
        cost = [pop] * g + [2 * T] * (len(losses) - g)
    else:
        return None
    return T + np.cumsum(cost), np.minimum.accumulate(losses)


def summarize(out: Path, key: str, plot: Path | None = None) -> str:
    """A markdown table of ``key``'s records in ``out``: final loss per method and seed, mean and
    spread (standard deviation over seeds), wall seconds and simulated steps (mean over seeds);
    with ``plot``, the best-loss-so-far curves against simulated steps, one panel per seed."""
    entry = json.loads(out.read_text())["tasks"][key]
    seeds = sorted(entry["seeds"], key=int)
    methods = [m for m in ("random", "cma", "adam", "hybrid", "hybrid-budget")
               if any(m in entry["seeds"][s] and "final_loss" in entry["seeds"][s][m] for s in seeds)]
    lines = [f"| method ({key}) | " + " | ".join(f"seed {s}" for s in seeds) + " | mean +- sd | wall s | sim steps |",
             "|---" * (len(seeds) + 4) + "|"]
    for m in methods:
        rows = [entry["seeds"][s].get(m, {}) for s in seeds]
        f = [r["final_loss"] for r in rows if "final_loss" in r]
        cells = [f"{r['final_loss']:.3g}" if "final_loss" in r else "-" for r in rows]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(f):.3g} +- {np.std(f):.2g} | "
                     f"{np.mean([r['wall_seconds'] for r in rows if 'final_loss' in r]):.0f} | "
                     f"{np.mean([r['sim_steps'] for r in rows if 'final_loss' in r]):.0f} |")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        horizon = next(r["horizon"] for s in seeds for r in entry["seeds"][s].values() if "horizon" in r)
        fig, axes = plt.subplots(1, len(seeds), figsize=(4.2 * len(seeds), 3.4), sharey=True, squeeze=False)
        for ax, s in zip(axes[0], seeds, strict=True):
            for m in methods:
                r = entry["seeds"][s].get(m, {})
                if "final_loss" not in r:
                    continue
                c = _curve(r, horizon)
                color = {"cma": "C0", "adam": "C1", "hybrid": "C2", "hybrid-budget": "C3"}.get(m, "k")
                if c is None:
                    ax.plot([r["sim_steps"]], [r["final_loss"]], "*", color=color, label=m)
                else:
                    ax.plot(*c, color=color, label=m)
                    if m.startswith("hybrid"):
                        g = r.get("stage_boundary", (r.get("iters") or 0) // 3)
                        ax.axvline(c[0][g - 1], color=color, lw=0.6, ls=":")
            ax.set_title(f"{key}, seed {s}")
            ax.set_xlabel("simulated steps")
        axes[0][0].set_ylabel("best loss so far")
        axes[0][0].set_yscale("log")
        for ax in axes[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(PLANS), choices=list(PLANS))
    p.add_argument("--methods", nargs="+", default=["random", "cma", "adam", "hybrid"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plan", choices=["default", "long"], default="default",
                   help="iterations per method: PLANS, or LONG_PLANS (about 3x the budget)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "shell_tasks.json"))
    p.add_argument("--work", default="out/shell_tasks", help="folder for the optimize outputs")
    p.add_argument("--summary", metavar="KEY", help="print the table of a task key in --out (e.g. 'Sliding (long)') "
                   "and exit; --plot PNG also draws the loss curves")
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    if args.summary:
        print(summarize(Path(args.out), args.summary, Path(args.plot) if args.plot else None))
        return 0
    import physim

    # not fast_compile: without Taichi's advanced optimizations the shells' reverse mode is wrong in
    # f64 too (measured on Folding, H = 8: d loss / d actions along a direction -1.30 against the
    # central difference 0.308; 0.308 with them), so the gradient methods would get wrong gradients
    physim.init(arch="cpu", precision="f64", fast_compile=False, verbose=False)
    out = Path(args.out)
    for task in args.tasks:
        plans = PLANS if args.plan == "default" else LONG_PLANS
        if task not in plans:
            raise SystemExit(f"no {args.plan} plan for {task}")
        key = task if args.plan == "default" else f"{task} (long)"
        for method in args.methods:  # saved after every method, so a long run keeps what it finished
            load0 = os.getloadavg()[0]
            rows = run_task(task, args.seed, Path(args.work) / args.plan / f"seed{args.seed}", [method], plans[task])
            rows[method].update(commit=_git_commit(), load_average=[round(load0, 2), round(os.getloadavg()[0], 2)])
            # read again: another run (another seed) may have written its records meanwhile
            record = json.loads(out.read_text()) if out.exists() else {}
            record.setdefault("tasks", {})
            entry = record["tasks"].setdefault(key, {"plan": plans[task], "seeds": {}})
            entry["plan"] = plans[task]
            entry["seeds"].setdefault(str(args.seed), {}).update(rows)
            if args.plan == "default":
                record.update({"commit": _git_commit(), "machine": f"{platform.processor() or platform.machine()}, "
                               "2 CPU cores shared with other jobs (load 9-14: wall times are pessimistic)",
                               "backend": "cpu/f64",
                               "command": "python benchmarks/shell_tasks.py --tasks T --seed S [--methods M ...]"})
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Optimize a sphere tool's velocities with Adam so it pushes a plasticine block to a target.

    python demos/push_plasticine.py            # 2D, ~1 minute on 2 CPU cores
    python demos/push_plasticine.py --dim 3    # 3D (first run compiles for a few minutes)

Gradients come from physim's checkpointed tape through the whole rollout; the loss is
the squared distance of the block's center of mass to the target. Writes a loss curve
and a before/after picture to ``--out``.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import physim as ps
import physim.torch as pst
from physim import smoke


def build_scene(dim: int, steps: int) -> tuple[ps.Scene, np.ndarray]:
    res = 48 if dim == 2 else 32
    scene = ps.Scene(dim=dim, grid_res=res, substeps_per_step=20, boundary="friction", wall_friction=0.5)
    center = [0.45, 0.11, 0.5][:dim]
    size = [0.12, 0.08, 0.12][:dim]
    scene.add_body(ps.Box(center=center, size=size), ps.Plasticine(E=1e3, nu=0.2, yield_stress=20.0))
    tool = [0.33, 0.11, 0.5][:dim]
    scene.add_tool(ps.SphereTool(position=tool, radius=0.04, friction=0.3, softness=60.0))
    scene.build(max_steps=steps)
    target = np.array(center)
    target[0] += 0.1
    return scene, target


def run(argv=None) -> list[float]:
    """Run the optimization; returns the loss of every Adam iteration."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2, choices=(2, 3))
    parser.add_argument("--iters", type=int, default=25)
    parser.add_argument("--steps", type=int, default=30, help="action steps (20 substeps each)")
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--out", default="out/push_plasticine")
    parser.add_argument("--arch", default=None, help="cpu, cuda or auto (default: $PHYSIM_ARCH or auto)")
    args = parser.parse_args(argv)
    args.iters, args.steps = smoke.shrink(args.iters, smoke.ITERS), smoke.shrink(args.steps, smoke.HORIZON)

    if ps.backend.config() is None:  # keep a runtime the caller already started
        ps.init(arch=args.arch, precision="f32")
    scene, target = build_scene(args.dim, args.steps)
    print(f"[physim] {scene.n_particles} particles, {args.steps} steps x {scene.substeps_per_step} substeps, "
          f"dt={scene.dt:.2e}s, action_dim={scene.action_dim}")
    actions = torch.zeros(args.steps, scene.action_dim, dtype=torch.float64)
    actions[:, 0] = 0.5  # start by moving towards the block
    actions.requires_grad_(True)
    opt = torch.optim.Adam([actions], lr=args.lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.92)  # calmer steps near the optimum
    target_t = torch.as_tensor(target)
    x_start = scene.particle_positions()
    losses = []
    t0 = time.time()
    bar = tqdm(range(args.iters), desc="Adam")
    for it in bar:
        opt.zero_grad()
        x = pst.rollout(scene, actions)
        loss = ((x.mean(0) - target_t) ** 2).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([actions], 10.0)
        opt.step()
        schedule.step()
        with torch.no_grad():
            actions.clamp_(-2.0, 2.0)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3e}")
        tqdm.write(f"iter {it:3d}  loss {losses[-1]:.6e}  distance {np.sqrt(losses[-1]):.4f} m")
    x_end = x.detach().numpy()
    print(f"[physim] loss {losses[0]:.3e} -> {losses[-1]:.3e} in {time.time() - t0:.1f}s "
          f"(center of mass {x_start.mean(0).round(3).tolist()} -> {x_end.mean(0).round(3).tolist()}, "
          f"target {target.round(3).tolist()})")
    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4))
    a0.semilogy(losses, "o-")
    a0.set_xlabel("Adam iteration")
    a0.set_ylabel("loss (m$^2$)")
    a0.set_title("center-of-mass distance$^2$ to target")
    a1.scatter(x_start[:, 0], x_start[:, 1], s=2, c="tab:gray", label="start")
    a1.scatter(x_end[:, 0], x_end[:, 1], s=2, c="tab:orange", label="optimized")
    a1.plot(*target[:2], "r*", ms=14, label="target center")
    a1.set_xlim(0.2, 0.8)
    a1.set_ylim(0.0, 0.4)
    a1.set_aspect("equal")
    a1.legend(loc="upper right")
    a1.set_title("plasticine block (x-y)")
    fig.tight_layout()
    path = os.path.join(args.out, "push_plasticine.png")
    fig.savefig(path, dpi=100)
    print(f"[physim] wrote {path}")
    return losses


def main(argv=None) -> int:
    """Command-line entry (``python demos/push_plasticine.py``): runs :func:`run`, returns the exit status 0."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

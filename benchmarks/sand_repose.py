"""Angle of repose of 2D Drucker-Prager sand (``ps.Sand``): the settled slope of a heap's flank.

Three ways to make a heap, on a rough floor (``boundary="rough"``, Coulomb 0.7: a bed of glued
grains) unless ``--boundary`` says otherwise:

* ``pour``: sand poured from a nozzle (6 cm wide, 0.5 m/s, 1.9 cm2/s) 37 cm above the floor
  for ``--pour`` seconds, then left to settle: the heap grows by small avalanches down its
  flanks (the way a repose angle is measured: a heap poured from a funnel).
* ``wedge``: a right-angled wedge against the left wall, its flank ``--wedge-angle`` degrees
  steep (a slope above the repose angle must fail by a shallow avalanche).
* ``heap``: a symmetric triangular heap away from the walls, its flanks ``--wedge-angle``
  degrees steep (default max(phi + 18, asin(tan phi) + 8): steeper than a static flank of
  this cone can stand): its flanks fail and avalanche down.
* ``column``: a column (half-width 5 cm, height 2 x that) released against the left wall
  (a violent collapse: it overshoots below the repose angle).

The angle: the free surface h(x) (the highest particle of each one-cell column, plus half a
spacing), a least-squares line through the points of each flank between 25 % and 75 % of the
heap's height (the toe's rounded foot and the crest's rounded top excluded). Prints one line per
case: grid, friction angle, formation, measured angle(s), mean speed at the end.

    python benchmarks/sand_repose.py --grids 64 --phis 20 32 40 --kinds pour

Measured (2D cone |s| / sqrt(2) <= p tan(phi); flanks left / right, degrees; 1.5 s after a
release, 1 s after a 2 s pour; CPU, f64):

    phi   heap from      grid 64        grid 128       pour: grid 64   grid 128
    20    30             20.2 / 20.2    15.5 / 15.2          11.5 / 15.0   15.1 / 14.5
    20    38             18.1 / 17.7    13.2 / 13.2
    32    42             43.1 / 43.0 (stands)
    32    44             36.9 / 46.4    30.1 / 30.1          37.2 / 39.3   32.1 / 32.2
    32    50             33.5 / 32.7    27.2 / 26.5
    40    65             38.3 / 38.7 (3 s)  34.9 / 33.6      35.0 / -      40.7 / 47.6 (moving)

With the earlier 2D cone (plane Mohr-Coulomb, max shear <= p sin(phi)) phi = 32 from 42 settled
at 28.8 / 27.3 on grid 64 (atan(sin 32) = 27.9: a flowing layer's stress is coaxial with its
shear, so it stops where tan(slope) = sin(phi)); a 36 degree wedge against the (rough) left wall
stayed at 34.9 on grid 64 (a slope a few degrees past the static limit fails in a surface layer
thinner than grid 64 resolves; the wall holds the wedge's top). A release is a collapse: finer
grids (less numerical dissipation) overshoot below phi, as collapsing columns do. Poured heaps:
on grid 64 the thin jet (4 particles across) deposits as clumped filaments with voids between
them (the particles' rest area 1.27 x the area under the heap's surface): not a measurement; on
grid 128 the heap is at its rest density (0.97 x) and the phi = 32 flanks are straight at 32.1 /
32.2; at phi = 20 the jet's impact (2 m/s) spreads the low heap below phi; at phi = 40 it was
still moving (2 cm/s) at the end.
"""

import argparse
import time

import numpy as np

import physim as ps
from physim.geometry import Shape


class Triangle(Shape):
    """Isosceles 2D heap: base on ``y0`` centred at ``xc``, flanks ``angle`` degrees steep."""

    def __init__(self, xc: float, y0: float, height: float, angle: float):
        self.xc, self.y0, self.height = xc, y0, height
        self.half = height / np.tan(np.radians(angle))
        self.center = np.array([xc, y0 + height / 3])

    def bounds(self):
        return np.array([self.xc - self.half, self.y0]), np.array([self.xc + self.half, self.y0 + self.height])

    def contains(self, points):
        x, y = np.abs(points[:, 0] - self.xc), points[:, 1] - self.y0
        return (y >= 0) & (y <= self.height * (1 - x / self.half))


class Wedge(Shape):
    """Right-angled 2D wedge: vertical face at ``x0``, base on ``y0``, its hypotenuse descending
    from height ``height`` at x0 at ``angle`` degrees."""

    def __init__(self, x0: float, y0: float, height: float, angle: float):
        self.x0, self.y0, self.height = x0, y0, height
        self.length = height / np.tan(np.radians(angle))
        self.center = np.array([x0 + self.length / 3, y0 + height / 3])

    def bounds(self):
        return np.array([self.x0, self.y0]), np.array([self.x0 + self.length, self.y0 + self.height])

    def contains(self, points):
        x, y = points[:, 0] - self.x0, points[:, 1] - self.y0
        return (x >= 0) & (y >= 0) & (y <= self.height * (1 - x / self.length))


def start_angle(phi: float) -> float:
    """The steepest slope (degrees) a static 2D heap of ``ps.Sand(friction_angle=phi)`` can hold:
    a flank fails only beyond asin(tan phi) (the cone's plane Mohr-Coulomb angle), while a flowing
    layer stops at phi (see physim.materials.Sand)."""
    return float(np.degrees(np.arcsin(min(np.tan(np.radians(phi)), 1.0))))


def surface(x: np.ndarray, floor: float, dx: float, spacing: float):
    """Free-surface profile: centres of the one-cell columns holding particles and the height
    above the floor of the highest particle in each (plus half a spacing)."""
    cols = np.floor(x[:, 0] / dx).astype(int)
    xs, hs = [], []
    for c in np.unique(cols):
        sel = cols == c
        xs.append((c + 0.5) * dx)
        hs.append(x[sel, 1].max() + spacing / 2 - floor)
    return np.array(xs), np.array(hs)


def flank_angles(x: np.ndarray, floor: float, dx: float, spacing: float, lo=0.25, hi=0.75):
    """Slope angles (degrees) of the heap's left and right flanks (None where a flank has
    fewer than four surface points between ``lo`` and ``hi`` of the heap's height)."""
    xs, hs = surface(x, floor, dx, spacing)
    top = hs.max()
    crest = xs[np.argmax(hs)]
    out = []
    for side in (xs < crest, xs > crest):
        sel = side & (hs > lo * top) & (hs < hi * top)
        if sel.sum() < 4:
            out.append(None)
            continue
        slope = np.polyfit(xs[sel], hs[sel], 1)[0]
        out.append(float(np.degrees(np.arctan(abs(slope)))))
    return out, float(top)


def heap(kind: str, grid: int, phi: float, boundary: str = "rough", pour: float = 2.0, settle: float = 1.0,
         nozzle_y: float = 0.3,
         wedge_angle: float | None = None, E: float = 3.5e3):
    """Build and run one heap; returns (angles, height, mean speed, seconds of wall time)."""
    scene = ps.Scene(dim=2, grid_res=grid, substeps_per_step=10, boundary=boundary, wall_friction=0.7)
    lo = scene.floor
    sand = ps.Sand(E=E, nu=0.3, friction_angle=phi, density=1.5)
    if kind == "pour":
        noz = ps.SphereTool(position=(0.5, nozzle_y), radius=0.02)
        scene.add_tool(noz)
        radius, speed = 0.03, 0.5
        rate = 2 * radius * speed / scene.spacing**2  # the jet at the rest density
        scene.add_emitter(ps.Emitter(sand, noz, speed=speed, radius=radius, rate=rate, stop=pour,
                                     capacity=int(rate * pour) + 8))
        total = pour + settle
    elif kind == "wedge":
        angle = wedge_angle if wedge_angle is not None else phi + 6.0
        scene.add_body(Wedge(lo, lo, 0.25, angle), sand)
        total = settle
    elif kind == "heap":
        angle = wedge_angle if wedge_angle is not None else max(phi + 18.0, start_angle(phi) + 8.0)
        scene.add_body(Triangle(0.5, lo, 0.25, angle), sand)
        total = settle
    elif kind == "column":
        scene.add_body(ps.Box(center=(lo + 0.05, lo + 0.1), size=(0.1, 0.2)), sand)
        total = settle
    else:
        raise ValueError(f"kind must be pour, heap, wedge or column, got {kind!r}")
    chunk = 500
    scene.build(max_steps=chunk)
    steps = int(round(total / (scene.dt * scene.substeps_per_step)))
    t0 = time.time()
    while steps > 0:
        scene.forward(np.zeros((min(steps, chunk), scene.action_dim)), requires_grad=False)
        steps -= chunk
    wall = time.time() - t0
    active = scene.particle_active()
    x = scene.particle_positions()[active]
    v = scene.particle_velocities()[active]
    angles, top = flank_angles(x, lo, scene.dx, scene.spacing)
    if kind in ("wedge", "column"):
        angles = angles[1:]  # the half heap's one flank (its left side is the wall)
    return angles, top, float(np.linalg.norm(v, axis=1).mean()), wall, x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", type=int, nargs="+", default=[64])
    ap.add_argument("--phis", type=float, nargs="+", default=[20.0, 32.0, 40.0])
    ap.add_argument("--kinds", nargs="+", default=["pour"])
    ap.add_argument("--boundary", default="rough")
    ap.add_argument("--pour", type=float, default=2.0, help="pouring time (s)")
    ap.add_argument("--settle", type=float, default=1.0, help="time after pouring / release (s)")
    ap.add_argument("--wedge-angle", type=float, default=None)
    ap.add_argument("--E", type=float, default=3.5e3)
    ap.add_argument("--save", default=None, help="save the last case's particles to this .npy")
    ap.add_argument("--arch", default="cpu")
    args = ap.parse_args()
    ps.init(arch=args.arch)
    for grid in args.grids:
        for phi in args.phis:
            for kind in args.kinds:
                angles, top, speed, wall, x = heap(kind, grid, phi, args.boundary, pour=args.pour, settle=args.settle,
                                                   wedge_angle=args.wedge_angle, E=args.E)
                txt = " ".join("-" if a is None else f"{a:5.1f}" for a in angles)
                print(f"grid {grid:4d} phi {phi:4.1f} {kind:6s} {args.boundary}: angle {txt} deg, "
                      f"height {top:.3f} m, mean speed {speed:.2e} m/s ({wall:.0f} s)", flush=True)
                if args.save:
                    np.save(args.save, x)


if __name__ == "__main__":
    main()

"""Pour water from a cup in 3D: move and tilt the cup with the keyboard.

    python demos/pour_water.py                      # interactive window
    python demos/pour_water.py --offscreen --frames 90 --out out/pour_water.mp4

Keys: A/D or Left/Right move the cup along x, W/S or Up/Down move it up/down, Q/E tilt it
(rotation about z: E pours to the right); R resets, Escape quits. Headless (``--offscreen``)
a scripted sequence lifts the cup, carries it right, tilts it until the water pours out
onto the floor and sets it upright again.

The cup is a ``ps.CupTool`` (a kinematic container) holding ``ps.Fluid`` water. Its walls
are more than two grid cells thick: the grid-based contact needs a grid node in the near
half of a wall to stop the water, and thinner walls let it seep through.
"""

from __future__ import annotations

import math
import sys

import numpy as np

import physim as ps
from physim.render import Renderer
from physim.render.interactive import DemoLoop, KeyControl, demo_parser, ensure_runtime

HELP = ("Pour water\n"
        "A/D or Left/Right: move along x    W/S or Up/Down: up/down\n"
        "Q/E: tilt    R: reset    Esc: quit")
GRID = 32
CUP = dict(radius=0.08, half_height=0.09, thickness=0.065)
CUP_START = np.array([0.32, 0.33, 0.5])
MOVE_SPEED = 0.8  # m/s while a key is held
TILT_SPEED = 3.0  # rad/s while a key is held
#: the cup's center stays in this box and its tilt within +-MAX_TILT
CUP_LO, CUP_HI = np.array([0.27, 0.3]), np.array([0.73, 0.7])
MAX_TILT = math.radians(150)
#: headless control: (start frame, keys held from then on)
SCRIPT = [
    (0, set()),        # let the water settle
    (6, {"w"}),        # lift
    (12, {"d"}),       # carry it to the right
    (22, {"e"}),       # tilt clockwise: pour to the right
    (60, set()),       # hold while it empties
    (75, {"q"}),       # back upright
    (115, set()),
]


def build_scene() -> ps.Scene:
    """A cup (CupTool) holding about 760 water particles."""
    scene = ps.Scene(dim=3, grid_res=GRID, substeps_per_step=20, particle_spacing=1.0 / (2.5 * GRID))
    inner_bottom = CUP_START[1] - CUP["half_height"] + CUP["thickness"]
    water_h = 0.1
    scene.add_body(ps.Cylinder(center=(CUP_START[0], inner_bottom + water_h / 2 + 0.006, CUP_START[2]),
                               radius=CUP["radius"] - 0.012, height=water_h),
                   ps.Fluid(bulk_modulus=400.0, viscosity=0.02))
    scene.add_tool(ps.CupTool(position=CUP_START, friction=0.0, **CUP))
    scene.build(max_steps=1)
    return scene


class Cup:
    """Keyboard-driven cup. Its position and tilt are integrated here as the solver moves
    the tool (constant velocity over a step), so no state is read back to clamp them."""

    def __init__(self, scene: ps.Scene, keys: KeyControl):
        self.scene, self.keys = scene, keys
        self.reset()

    def reset(self) -> None:
        """Back to the initial pose (after ``scene.reset()``)."""
        self.position = CUP_START[:2].copy()
        self.tilt = 0.0

    def action(self) -> np.ndarray:
        """(vx, vy, 0, 0, 0, omega_z) from the held keys, clamped to the allowed box and tilt."""
        keys = self.keys
        v = MOVE_SPEED * np.array([keys.axis(("Left", "a"), ("Right", "d")), keys.axis(("Down", "s"), ("Up", "w"))])
        v[(self.position <= CUP_LO) & (v < 0)] = 0.0
        v[(self.position >= CUP_HI) & (v > 0)] = 0.0
        w = TILT_SPEED * keys.axis("e", "q")
        if (self.tilt >= MAX_TILT and w > 0) or (self.tilt <= -MAX_TILT and w < 0):
            w = 0.0
        step_time = self.scene.dt * self.scene.substeps_per_step
        self.position = self.position + v * step_time
        self.tilt += w * step_time
        a = np.zeros(self.scene.action_dim)
        a[:2] = v
        a[5] = w
        return a

    def outside_fraction(self, x: np.ndarray) -> float:
        """Fraction of the particles ``x`` (n, 3) that are no longer inside the cup's cavity."""
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        d = x - np.array([self.position[0], self.position[1], CUP_START[2]])
        lx, ly = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]  # rotate into the cup's frame
        radial = np.hypot(lx, d[:, 2])
        bottom = -CUP["half_height"] + CUP["thickness"]
        inside = (radial < CUP["radius"] + 0.01) & (ly > bottom - 0.01) & (ly < CUP["half_height"] + 0.01)
        return float(1.0 - inside.mean())


def run(argv=None) -> list[np.ndarray] | None:
    """Run the demo; headless it returns the frames it wrote to ``--out`` (interactive: ``None``)."""
    parser = demo_parser(__doc__, "pour_water", frames=60, fps=20)
    args = parser.parse_args(argv)
    ensure_runtime(args.arch)
    scene = build_scene()
    camera = [(0.8, 0.9, 1.9), (0.5, 0.28, 0.5), (0.0, 1.0, 0.0)]
    renderer = Renderer(scene, off_screen=args.offscreen, camera=camera,
                        window_size=(640, 480) if args.offscreen else (960, 720))
    keys = KeyControl(renderer)
    cup = Cup(scene, keys)
    def status() -> str:
        spilled = cup.outside_fraction(scene.particle_positions())
        return (f"t = {scene.time:5.2f} s   cup at ({cup.position[0]:.2f}, {cup.position[1]:.2f})   "
                f"tilt {math.degrees(cup.tilt):4.0f} deg   poured {100 * spilled:3.0f}%")

    loop = DemoLoop(scene, renderer, keys, cup.action, help_text=HELP, status=status, on_reset=cup.reset)
    return loop.run_demo(args, SCRIPT, title="physim: pour water", keys_help="A/D, W/S, Q/E, R, Esc")



def main(argv=None) -> int:
    """Command-line entry (``physim demo pour_water``, ``python demos/pour_water.py``): runs the demo
    and returns the process exit status, 0 (failures raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sculpt a block of plasticine in 3D with a spherical tool you move with the keyboard.

    python demos/sculpt_plasticine.py                      # interactive window
    python demos/sculpt_plasticine.py --offscreen --frames 80 --out out/sculpt_plasticine.mp4

Keys: A/D or Left/Right move the tool along x, W/S or Up/Down along z (away from /
towards you), E/Q up/down; R resets, Escape quits. Headless (``--offscreen``) a scripted
sequence of held keys carves two grooves into the top of the block. Particles are shaded
by height so the grooves show.
"""

from __future__ import annotations

import sys

import numpy as np

import physim as ps
from physim.render import Renderer, material_color
from physim.render.interactive import DemoLoop, KeyControl, demo_parser, ensure_runtime
from physim.scene import floor_height

HELP = ("Sculpt plasticine\n"
        "A/D or Left/Right: x    W/S or Up/Down: z    E/Q: up/down\n"
        "R: reset    Esc: quit")
GRID = 32
FLOOR = floor_height(GRID)  # top of the grid's bottom wall: module constants below need it
TOOL_SPEED = 1.5  # m/s while a key is held
TOOL_RADIUS = 0.055
#: the tool's center stays in this box (at least 5 cm above the floor)
TOOL_LO = np.array([0.16, FLOOR + TOOL_RADIUS + 0.05, 0.16])
TOOL_HI = np.array([0.84, 0.8, 0.84])
BLOCK = np.array([0.3, 0.13, 0.3])
#: headless control: (start frame, keys held from then on)
SCRIPT = [
    (0, {"q"}),     # press into the top of the block
    (8, {"d"}),     # drag along +x: a groove
    (26, {"e"}),    # lift
    (32, {"s"}),    # towards the camera
    (40, {"q"}),    # press again
    (48, {"a"}),    # a second groove along -x
    (66, {"e"}),    # lift off
    (74, set()),
]


def build_scene() -> ps.Scene:
    """A plasticine block (about 2,700 particles) on a sticky floor and a frictionless sphere tool above it."""
    scene = ps.Scene(dim=3, grid_res=GRID, substeps_per_step=20, boundary="sticky")
    scene.add_body(ps.Box(center=(0.5, FLOOR + BLOCK[1] / 2 + 0.002, 0.5), size=BLOCK),
                   ps.Plasticine(E=2e3, nu=0.25, yield_stress=20.0))
    scene.add_tool(ps.SphereTool(position=(0.38, FLOOR + BLOCK[1] + TOOL_RADIUS + 0.03, 0.45),
                                     radius=TOOL_RADIUS, friction=0.0))
    scene.build(max_steps=1)
    return scene


class Tool:
    """Keyboard-driven sphere tool. Its position is integrated here exactly as the solver
    moves it (constant velocity over a step), so no state is read back to clamp it."""

    def __init__(self, scene: ps.Scene, keys: KeyControl):
        self.scene, self.keys = scene, keys
        self.reset()

    def reset(self) -> None:
        """Back to the initial pose (after ``scene.reset()``)."""
        self.position = self.scene.tools[0].position.copy()

    def action(self) -> np.ndarray:
        """Tool velocity from the held keys, zeroed along axes where the tool would leave its box."""
        keys = self.keys
        v = TOOL_SPEED * np.array([
            keys.axis(("Left", "a"), ("Right", "d")),
            keys.axis("q", "e"),
            keys.axis(("Up", "w"), ("Down", "s")),
        ])
        v[(self.position <= TOOL_LO) & (v < 0)] = 0.0
        v[(self.position >= TOOL_HI) & (v > 0)] = 0.0
        self.position = self.position + v * self.scene.dt * self.scene.substeps_per_step
        a = np.zeros(self.scene.action_dim)
        a[:3] = v
        return a


def height_colors(x: np.ndarray) -> np.ndarray:
    """Clay color, darker below the block's initial top: grooves in the top surface show."""
    top = FLOOR + BLOCK[1]
    t = np.clip((x[:, 1] - (top - 0.07)) / 0.07, 0.0, 1.0)
    return np.asarray(material_color(ps.Plasticine()))[None, :] * (0.5 + 0.5 * t)[:, None]


def run(argv=None) -> list[np.ndarray] | None:
    """Run the demo; headless it returns the frames it wrote to ``--out`` (interactive: ``None``)."""
    parser = demo_parser(__doc__, "sculpt_plasticine", frames=60, fps=20)
    args = parser.parse_args(argv)
    ensure_runtime(args.arch)
    scene = build_scene()
    camera = [(0.98, 0.95, 1.38), (0.5, 0.18, 0.5), (0.0, 1.0, 0.0)]
    renderer = Renderer(scene, off_screen=args.offscreen, camera=camera, color_fn=height_colors,
                        window_size=(640, 480) if args.offscreen else (960, 720))
    keys = KeyControl(renderer)
    tool = Tool(scene, keys)

    def status() -> str:
        p = tool.position
        return f"t = {scene.time:5.2f} s   tool at ({p[0]:.2f}, {p[1]:.2f}, {p[2]:.2f})"

    loop = DemoLoop(scene, renderer, keys, tool.action, help_text=HELP, status=status, on_reset=tool.reset)
    return loop.run_demo(args, SCRIPT, title="physim: sculpt plasticine", keys_help="WASD/arrows, E/Q, R, Esc")



def main(argv=None) -> int:
    """Command-line entry (``physim demo sculpt_plasticine``, ``python demos/sculpt_plasticine.py``): runs the demo
    and returns the process exit status, 0 (failures raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

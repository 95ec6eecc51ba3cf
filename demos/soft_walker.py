"""A 2D soft robot that walks: four muscle legs driven by a gait you steer with the keys.

    python demos/soft_walker.py                      # interactive window
    python demos/soft_walker.py --offscreen --frames 300 --out out/soft_walker.mp4

The robot is an elastic body on four legs; each leg is two ``ps.Muscle`` halves (back and
front, fibers vertical) with their own actuator, so a leg can shorten (both halves
contract) and bend (one half contracts, the other extends). The legs work in two
alternating pairs, each pair straddling the body's center: while one pair stands long and
pushes its feet backwards, the other pair is short, its feet off the ground, and swings
them forwards. Mirroring the swing walks the other way. Keys: Right/D walk right, Left/A
walk left (release: stand), Up/Down change the gait frequency, W/S its amplitude; R
resets, Escape quits. Headless (``--offscreen``) a script walks right, pauses, then walks
back left. Muscles are drawn darker while they contract and paler while they extend.
"""

from __future__ import annotations

import math
import sys

import numpy as np

import physim as ps
from physim.render import Renderer, material_color
from physim.render.interactive import DemoLoop, KeyControl, demo_parser, ensure_runtime

HELP = ("Soft walker\n"
        "Right/D, Left/A: walk (release: stand)\n"
        "Up/Down: gait frequency    W/S: amplitude    R: reset    Esc: quit")
GRID = 96
N_LEGS = 4
#: sizes in particle spacings (so the particle lattice is mirror-symmetric about the center)
LEG_HALF_WIDTH, LEG_HEIGHT, BODY_WIDTH, BODY_HEIGHT = 4, 12, 60, 10
START_X = 0.5
#: headless control: (start frame, keys held from then on)
SCRIPT = [
    (0, {"Right"}),
    (130, set()),
    (145, {"Left"}),
    (275, set()),
]


def build_scene() -> ps.Scene:
    """Body (Elastic) on four legs of two Muscle halves each (actuators 2i: back/left half
    of leg i, 2i + 1: front/right half, legs numbered left to right); frictional floor.
    About 1,000 particles; a step is 40 substeps (8 ms)."""
    scene = ps.Scene(dim=2, grid_res=GRID, substeps_per_step=40, boundary="friction", wall_friction=1.0)
    s = scene.spacing
    muscle = ps.Muscle(E=400.0, nu=0.2, actuation_strength=100.0)
    body = ps.Elastic(E=400.0, nu=0.2, density=2.0)
    y0 = scene.floor + 0.25 * s  # just above the bottom wall
    hw, lh, bw, bh = LEG_HALF_WIDTH * s, LEG_HEIGHT * s, BODY_WIDTH * s, BODY_HEIGHT * s
    scene.add_body(ps.Box(center=(START_X, y0 + lh + bh / 2), size=(bw, bh)), body)
    pitch = (bw - 2 * hw) / (N_LEGS - 1)
    for i in range(N_LEGS):
        cx = START_X + (i - (N_LEGS - 1) / 2) * pitch
        for k, off in enumerate((-hw / 2, hw / 2)):
            scene.add_body(ps.Box(center=(cx + off, y0 + lh / 2), size=(hw, lh)), muscle, actuator=2 * i + k)
    scene.build(max_steps=1)
    return scene


def gait(phase: float, direction: float, amplitude: float = 1.0) -> np.ndarray:
    """Actuation of the eight muscle halves at gait ``phase`` (rad).

    Walking right, legs 0 and 2 run at ``phase`` and legs 1 and 3 half a cycle later (walking
    left the pairs swap, so the left gait is the exact mirror image of the right one). A leg
    is short (lifted) while sin > 0 and swings its foot forwards then, backwards while it
    stands; ``direction`` +1 walks right, -1 left, 0 stands (no actuation).
    """
    if direction == 0:
        return np.zeros(2 * N_LEGS)
    a = []
    for i in range(N_LEGS):
        q = phase + math.pi * ((i + (direction < 0)) % 2)
        lift, swing = math.sin(q), -math.cos(q) * direction
        a += [lift - swing, lift + swing]  # (left half, right half)
    return amplitude * np.clip(np.array(a), -1.0, 1.0)


class Gait:
    """Keyboard-steered gait generator: the phase advances with the simulated time and
    restarts (ramping up over half a cycle) when the direction changes."""

    def __init__(self, scene: ps.Scene, keys: KeyControl, frequency: float = 1.5, amplitude: float = 1.0):
        self.scene, self.keys = scene, keys
        self.frequency, self.amplitude = frequency, amplitude
        self.reset()
        keys.on_key("Up", lambda: self._set(frequency=min(self.frequency + 0.25, 3.0)))
        keys.on_key("Down", lambda: self._set(frequency=max(self.frequency - 0.25, 0.5)))
        keys.on_key("w", lambda: self._set(amplitude=min(self.amplitude + 0.1, 1.0)))
        keys.on_key("s", lambda: self._set(amplitude=max(self.amplitude - 0.1, 0.2)))

    def _set(self, frequency=None, amplitude=None) -> None:
        self.frequency = self.frequency if frequency is None else frequency
        self.amplitude = self.amplitude if amplitude is None else amplitude

    def reset(self) -> None:
        """Standing, phase 0 (after ``scene.reset()``)."""
        self.phase = 0.0
        self._last = 0.0
        self.signal = np.zeros(2 * N_LEGS)

    @property
    def direction(self) -> float:
        return self.keys.axis(("Left", "a"), ("Right", "d"))

    def action(self) -> np.ndarray:
        """The next action row: the eight actuation signals."""
        d = self.direction
        if d != self._last:
            self.phase, self._last = 0.0, d
        ramp = min(1.0, self.phase / math.pi)
        self.signal = gait(self.phase, d, self.amplitude * ramp)
        if d != 0:
            self.phase += 2 * math.pi * self.frequency * self.scene.dt * self.scene.substeps_per_step
        a = np.zeros(self.scene.action_dim)
        a[self.scene.actuation_slice] = self.signal
        return a


def muscle_colors(scene: ps.Scene, signal: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """Per-particle colors: ``base`` (default: the material colors), with each muscle darker
    while it contracts (signal > 0) and paler while it extends."""
    if base is None:
        base = np.array([material_color(m) for m in scene.materials])[scene.particle_materials()]
    colors = base.copy()
    for body in scene.bodies:
        if body.actuator is None:
            continue
        s = float(signal[body.actuator])
        c = base[body.start]
        colors[body.start:body.start + body.count] = c * (1 - 0.35 * s) if s > 0 else c + (1 - c) * (-0.55 * s)
    return colors


def run(argv=None) -> list[np.ndarray] | None:
    """Run the demo; headless it returns the frames it wrote to ``--out`` (interactive: ``None``)."""
    parser = demo_parser(__doc__, "soft_walker", frames=60, fps=20, scripted="the scripted gait")
    args = parser.parse_args(argv)
    ensure_runtime(args.arch)
    scene = build_scene()
    renderer = Renderer(scene, off_screen=args.offscreen, window_size=(640, 480) if args.offscreen else (960, 720))
    renderer.view_2d((0.5, 0.2), 0.24)
    keys = KeyControl(renderer)
    gait_ctl = Gait(scene, keys)
    x_start = scene.particle_positions()[:, 0].mean()
    center = {"x": x_start, "view": 0.5}
    base_colors = renderer.palette[scene.particle_materials()] / 255.0

    def after_step() -> None:
        """Color the muscles by their signal; pan the camera when the robot nears the view's edge."""
        center["x"] = scene.particle_positions()[:, 0].mean()
        renderer.set_particle_colors(muscle_colors(scene, gait_ctl.signal, base_colors))
        view = float(np.clip(center["view"], center["x"] - 0.1, center["x"] + 0.1).clip(0.32, 0.68))
        if view != center["view"]:
            cam = renderer.plotter.camera
            shift = view - center["view"]
            cam.position = np.add(cam.position, (shift, 0.0, 0.0))
            cam.focal_point = np.add(cam.focal_point, (shift, 0.0, 0.0))
            center["view"] = view

    def status() -> str:
        mode = {1.0: "walking right", -1.0: "walking left"}.get(gait_ctl.direction, "standing")
        return (f"t = {scene.time:5.2f} s   {mode}   gait {gait_ctl.frequency:.2f} Hz, amplitude "
                f"{gait_ctl.amplitude:.1f}   travelled {center['x'] - x_start:+.3f} m")

    loop = DemoLoop(scene, renderer, keys, gait_ctl.action, help_text=HELP, status=status, on_reset=gait_ctl.reset,
                    on_step=after_step)
    return loop.run_demo(args, SCRIPT, title="physim: soft walker", keys_help="Left/Right (A/D), Up/Down, W/S, R, Esc")



def main(argv=None) -> int:
    """Command-line entry (``physim demo soft_walker``, ``python demos/soft_walker.py``): runs the demo
    and returns the process exit status, 0 (failures raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

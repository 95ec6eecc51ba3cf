"""Fold a sheet of paper in half with a keyboard-driven two-jaw gripper; the crease stays.

    python demos/fold_paper.py                         # interactive window
    python demos/fold_paper.py --offscreen --frames 595 --out out/fold_paper.mp4

A sheet of 80 g/m^2 office paper (16 x 10 cm, :meth:`physim.ShellMaterial.paper`: E = 4 GPa,
t = 0.1 mm, plastic creases past a 20-degree yield angle; 17 x 11 = 187 vertices) lies on a table
with its far (left) edge taped down (pinned vertices) and its near edge 2 cm over the table's
edge, so a gripper can reach under it. The gripper is two flat jaws (two box tools) that move,
turn about the sheet's edge direction (the wrist) and close on the paper: the sheet is held by
friction between the jaws (contact penalty and lagged Coulomb friction, coefficient 0.8), not
glued to them. Lift the edge, turn the wrist over and lay the flap onto the taped half, let go,
then press the fold flat with the jaws: the paper keeps a crease where it was bent past its
yield angle (the hinge's rest angle follows the bend), and a light blue line marks the hinges
that yielded.

Keys: A/D or Left/Right move along x, W/S or Up/Down along z, Q/E lift / lower, Z/X turn the
wrist, C close the jaws, V open them; R resets, Escape quits. Over the table the jaws stop
:data:`PRESS_CLEARANCE` above it (room for a pressed two-layer fold). Headless (``--offscreen``)
a scripted sequence grips the edge, turns the wrist over and lays the flap down, lets go (a fold
left as a loop keeps only ~90 degrees: the flap springs up to about upright), passes over the
flap, comes down beyond the fold and sweeps back low -- the way a finger or a bone folder runs
over a fold: it pushes the flap over and presses the fold line flat -- then lifts away. The
pressed hinge keeps ``(theta - yield_angle) / (1 + hardening)`` (the plastic law with the
preset's hardening; ~139 degrees from the ~173 the press reached) and its neighbours ~30 each,
so the flap stays down on the sheet. The sheet has no self-contact (the flap is held above the
lower half only by the jaws' clearance while pressed; resting, it lies in the lower half's plane).

The sheet is stepped by implicit Euler (Newton on the incremental potential, 5 ms substeps,
two per frame); the demo starts physim in f64 unless a runtime is already running (paper's
bending stiffness next to its membrane stiffness is past f32's round-off floor for Newton's
residual test).
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np

import physim as ps
from physim.parts.shell import MARGIN, dihedral_angles
from physim.render import Renderer
from physim.render.interactive import DemoLoop, KeyControl, demo_parser
from physim.scene import floor_height

HELP = ("Fold paper\n"
        "A/D or Left/Right: x    W/S or Up/Down: z\n"
        "Q/E: lift / lower    Z/X: turn the wrist\n"
        "C/V: close / open the jaws\n"
        "R: reset    Esc: quit")
GRID = 32
FLOOR = floor_height(GRID)
DT = 5e-3  # shell substep (s): implicit Euler is stable here for paper and cloth alike
SUBSTEPS = 2
FRAME_DT = DT * SUBSTEPS  # simulated seconds per frame
#: the table: a box whose top is TABLE_TOP, its right edge at TABLE_EDGE
TABLE_TOP = FLOOR + 0.10
TABLE_EDGE = 0.54
PAPER = ps.ShellMaterial.paper(damping=4.0)
SHEET_SIZE = (0.16, 0.10)  # along x (fold direction) and z (m)
SHEET_RES = (17, 11)  # 1 cm spacing
EPS = 0.5 * PAPER.thickness + MARGIN  # contact offset: the sheet rests this far above a surface
SHEET_Y = TABLE_TOP + EPS
SHEET_X = (TABLE_EDGE + 0.02 - SHEET_SIZE[0], TABLE_EDGE + 0.02)  # 2 cm over the table's edge
JAW_HALF = np.array([0.012, 0.003, 0.065])  # each jaw: 2.4 cm deep, 6 mm thick, 13 cm wide (all of the edge)
GRIP_X = TABLE_EDGE + 0.004 + JAW_HALF[0]  # jaw centre: the lower jaw clears the table by 4 mm
OPEN_GAP = 0.012  # distance between the jaws' inner faces when open (m)
MIN_GAP = 0.6e-3  # closed on the paper: each face 0.25 mm into the sheet's 0.55 mm contact layer
#: gripper speeds: translation (m/s), wrist (rad/s), jaw closing (m/s)
SPEED, TURN, CLOSE = 0.12, 2.5, 0.06
SMOOTH = 0.35  # per-frame blend of the velocity towards the keys' command
LO = np.array([0.2, TABLE_TOP + EPS, 0.35])  # the gripper centre stays in this box
#: over the table the jaws stop this far above its top (m): room for the two layers of a pressed
#: fold (each rests EPS off what is under it) with ~1 mm between them, so the sheet is never
#: squeezed between a jaw and the table and a fold pressed flat does not pass through itself
PRESS_CLEARANCE = 4 * EPS
HI = np.array([0.8, 0.6, 0.65])
START = np.array([GRIP_X, SHEET_Y, 0.5])
#: headless control: (start frame, keys held from then on)
SCRIPT = [
    (0, {"c"}),           # close the jaws on the paper's edge
    (22, {"q"}),          # lift the edge
    (52, {"q", "a", "z"}),  # carry it over the sheet, turning the wrist over
    (100, {"a", "z"}),
    (150, {"a", "e", "z"}),  # lay the flap down on the taped half, the wrist all the way over
    (172, {"e", "z"}),
    (185, {"e"}),         # down until the jaws stop above the table (PRESS_CLEARANCE)
    (226, {"v"}),         # let go: the flap springs up to about upright (a loose fold keeps ~90 deg)
    (246, {"q"}),         # back off upwards
    (280, {"q", "d", "c"}),  # over the flap, closing the jaws
    (315, {"d"}),
    (375, {"d", "e"}),    # down beyond the fold
    (385, {"e"}),
    (420, {"a"}),         # sweep back low: push the flap over and
    (445, {"a", "e"}),    # run the jaws over the fold line, pressing it flat
    (470, {"e"}),
    (485, set()),         # hold
    (495, {"q"}),         # lift away: the crease stays
    (515, {"q", "d"}),    # and out of the camera's way
    (560, {"d"}),
    (580, set()),
]
FRAMES = 595  # the headless run's default length: the script, then 15 frames of the kept fold


def build_scene() -> tuple[ps.Scene, ps.ShellBody]:
    """The table (tool 0), the gripper's lower and upper jaw (tools 1 and 2) and the paper."""
    scene = ps.Scene(dim=3, grid_res=GRID, dt=DT, substeps_per_step=SUBSTEPS, gravity=(0.0, -9.8, 0.0))
    half_table = np.array([0.12, (TABLE_TOP - FLOOR) / 2, 0.12])
    scene.add_tool(ps.BoxTool(position=(TABLE_EDGE - half_table[0], FLOOR + half_table[1], 0.5),
                              half_extents=half_table, friction=0.5))
    for side in (-1, 1):
        scene.add_tool(ps.BoxTool(position=_jaw_center(START, 0.0, OPEN_GAP, side), half_extents=JAW_HALF,
                                  friction=0.8))
    mesh = ps.ShellMesh.rectangle(center=(0.5 * (SHEET_X[0] + SHEET_X[1]), SHEET_Y, 0.5), size=SHEET_SIZE,
                                  res=SHEET_RES, normal="y")
    taped = mesh.vertices_where(lambda v: v[:, 0] < SHEET_X[0] + 1e-6)
    body = ps.ShellBody(mesh, PAPER, pinned=taped)
    scene.add_shell(body)
    scene.build(max_steps=1)
    return scene, body


def _jaw_center(center: np.ndarray, angle: float, gap: float, side: int) -> np.ndarray:
    """Centre of the lower (side -1) or upper (+1) jaw of a gripper at ``center`` turned by ``angle``
    about z with ``gap`` between the jaws' inner faces."""
    off = side * (0.5 * gap + JAW_HALF[1])
    return np.asarray(center, dtype=np.float64) + off * np.array([-math.sin(angle), math.cos(angle), 0.0])


def _lowest_center(x: float, angle: float, gap: float) -> float:
    """The lowest gripper centre height (m) at ``x``, wrist ``angle`` and jaw ``gap`` that keeps both
    jaws :data:`PRESS_CLEARANCE` above the table top where a jaw is over the table (elsewhere: no
    limit, -inf). A jaw turned by ``angle`` about z reaches ``hx |sin| + hy |cos|`` below its centre
    and ``hx |cos| + hy |sin|`` to either side of it."""
    s, c = abs(math.sin(angle)), abs(math.cos(angle))
    half_x = JAW_HALF[0] * c + JAW_HALF[1] * s
    below = JAW_HALF[0] * s + JAW_HALF[1] * c
    lowest = -math.inf
    for side in (-1, 1):
        jaw = _jaw_center(np.array([x, 0.0, 0.0]), angle, gap, side)
        if jaw[0] - half_x < TABLE_EDGE:  # over the table (it reaches far to the left)
            lowest = max(lowest, TABLE_TOP + PRESS_CLEARANCE + below - jaw[1])
    return lowest


class Gripper:
    """Keyboard-driven two-jaw gripper.

    Its pose (centre, wrist angle about z, jaw gap) is integrated here; every frame the two jaw
    tools get the velocities that bring them exactly to that pose at the end of the frame, from
    where the solver has them now (so nothing drifts)."""

    def __init__(self, scene: ps.Scene, keys: KeyControl):
        self.scene, self.keys = scene, keys
        self.reset()

    def reset(self) -> None:
        self.center = START.copy()
        self.angle = 0.0
        self.gap = OPEN_GAP
        self.velocity = np.zeros(5)  # x, y, z, wrist, gap

    def action(self) -> np.ndarray:
        k = self.keys
        cmd = np.array([k.axis(("Left", "a"), ("Right", "d")), k.axis("e", "q"), k.axis(("Up", "w"), ("Down", "s")),
                        k.axis("x", "z"), k.axis("c", "v")]) * np.array([SPEED, SPEED, SPEED, TURN, CLOSE])
        v = self.velocity + SMOOTH * (cmd - self.velocity)
        v[np.abs(v) < 1e-6] = 0.0
        v[4] = cmd[4]  # the jaws start and stop at once
        self.angle = float(np.clip(self.angle + v[3] * FRAME_DT, 0.0, math.pi))
        self.gap = float(np.clip(self.gap + v[4] * FRAME_DT, MIN_GAP, OPEN_GAP))
        center = np.clip(self.center + v[:3] * FRAME_DT, LO, HI)
        center[1] = max(center[1], _lowest_center(center[0], self.angle, self.gap))
        v[:3] = (center - self.center) / FRAME_DT
        self.center = center
        self.velocity = v
        pos, rot = self.scene.tool_poses()
        a = np.zeros(self.scene.action_dim)
        for tool, side in ((1, -1), (2, 1)):
            target = _jaw_center(self.center, self.angle, self.gap, side)
            now = 2.0 * math.atan2(rot[tool, 3], rot[tool, 0])  # the jaw's turn about z
            a[6 * tool: 6 * tool + 3] = (target - pos[tool]) / FRAME_DT
            a[6 * tool + 5] = (self.angle - now) / FRAME_DT
        return a

    @property
    def closed(self) -> bool:
        """Whether the jaws are at their closed gap."""
        return self.gap <= MIN_GAP + 1e-9


class CreaseView:
    """The hinges that yielded (rest angle moved by more than :data:`SHOWN` deg) as a blue polyline."""

    SHOWN = 5.0

    def __init__(self, scene: ps.Scene, body: ps.ShellBody, renderer: Renderer | None):
        import pyvista as pv

        self.scene = scene
        self.hinges = body.mesh.hinges()
        self.rest0 = dihedral_angles(body.mesh.vertices, self.hinges)
        self.renderer = renderer
        self.lines = None
        if renderer is not None:
            self.lines = pv.PolyData(np.zeros((2, 3)), lines=np.array([2, 0, 1]))
            self.actor = renderer.plotter.add_mesh(self.lines, color="#2f7fd8", line_width=4, name="crease",
                                                   reset_camera=False)

    def crease(self) -> tuple[np.ndarray, float]:
        """(indices of the yielded hinges, largest rest angle now in degrees)."""
        moved = np.degrees(np.abs(self.scene.get_state()["shell.rest_angle"] - self.rest0))
        return np.flatnonzero(moved > self.SHOWN), float(moved.max())

    def update(self) -> None:
        if self.lines is None:
            return
        idx, _ = self.crease()
        x = self.scene.get_state()["shell.x"]
        if len(idx) == 0:
            self.actor.SetVisibility(False)
            return
        e = self.hinges[idx, :2]
        pts = x[e.ravel()]
        n = len(e)
        self.lines.points = pts
        self.lines.lines = np.column_stack([np.full(n, 2), 2 * np.arange(n), 2 * np.arange(n) + 1]).ravel()
        self.actor.SetVisibility(True)


def start_runtime(arch: str | None):
    """Start physim in f64 with fast compilation (as :func:`physim.render.interactive.ensure_runtime`
    does for the other demos) unless a runtime is already running (then keep it)."""
    cfg = ps.backend.config()
    if cfg is None:
        return ps.init(arch=arch, precision="f64", fast_compile=True)
    if arch is not None and arch != "auto" and arch != cfg.arch:
        warnings.warn(f"physim is already running on {cfg.arch!r}; ignoring arch={arch!r}", stacklevel=2)
    return cfg


def run(argv=None) -> list[np.ndarray] | None:
    """Run the demo; headless it returns the frames it wrote to ``--out`` (interactive: ``None``)."""
    parser = demo_parser(__doc__, "fold_paper", frames=FRAMES, fps=30)
    args = parser.parse_args(argv)
    start_runtime(args.arch)
    scene, body = build_scene()
    camera = [(0.62, 0.42, 0.86), (0.47, 0.2, 0.5), (0.0, 1.0, 0.0)]
    renderer = Renderer(scene, off_screen=args.offscreen, camera=camera,
                        window_size=(800, 600) if args.offscreen else (1024, 768), shell_colors={0: "#f4f1e8"})
    renderer.plotter.camera.view_angle = 30.0
    keys = KeyControl(renderer)
    gripper = Gripper(scene, keys)
    view = CreaseView(scene, body, renderer)

    def status() -> str:
        c = gripper.center
        idx, rest = view.crease()
        return (f"t = {scene.time:5.2f} s   gripper at x {c[0]:.3f}, y {c[1]:.3f} m, wrist "
                f"{math.degrees(gripper.angle):3.0f} deg, jaws {'closed' if gripper.closed else 'open  '} "
                f"({gripper.gap * 1e3:4.1f} mm)\ncrease: {len(idx)} hinges yielded, largest rest angle {rest:4.0f} deg")

    loop = DemoLoop(scene, renderer, keys, gripper.action, help_text=HELP, status=status, on_reset=gripper.reset,
                    on_step=view.update)
    return loop.run_demo(args, SCRIPT, title="physim: fold paper", keys_help="WASD/arrows, Q/E, Z/X, C/V, R, Esc")


def main(argv=None) -> int:
    """Command-line entry (``physim demo fold_paper``, ``python demos/fold_paper.py``): runs the demo and
    returns the process exit status, 0 (failures raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

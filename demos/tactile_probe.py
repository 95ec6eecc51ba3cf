"""Press and slide a GelSight-style tactile sensor over rigid objects with the keyboard.

    python demos/tactile_probe.py                      # interactive window
    python demos/tactile_probe.py --offscreen --frames 260 --out out/tactile_probe.mp4
    python demos/tactile_probe.py --picture docs/tactile.png   # a still of a sphere pressed in

A flat gel pad (28 x 28 x 6 mm, 3,528 FEM tets, its back glued to a rigid mount) hangs
face down over three fixed objects on the floor: a sphere, the edge of a box and a flat
cylinder. The left of the window is the 3D scene; the right is what the sensor sees, live:
its RGB image (:class:`physim.tactile.TactileSensor`, three colored lights behind the gel),
the printed markers (black dots) with their displacements (yellow arrows, x4), the net
shear force as a red arrow from the image centre, and the normal and shear force in N.

Keys: A/D or Left/Right move the sensor along x, W/S or Up/Down along z, Q/E press down /
lift, Z/X turn it about the vertical axis; R resets, Escape quits. While the gel touches
something it moves slower (so the contact stays quasi-static). Headless (``--offscreen``) a
scripted sequence presses into the sphere, slides across it, twists, lifts, moves over the
box and presses its edge.

The gel's density is scaled up (3e4 kg/m^3, about 30x a real gel's) so the explicit FEM
takes ~17 sub-steps per frame instead of ~90: the motions here are slow next to the gel's
lowest mode (~26 Hz), so the pictures are those of the quasi-static contact.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import torch

import physim as ps
from physim import smoke
from physim.parts.fem import Subcycling
from physim.render import Renderer
from physim.render.interactive import DemoLoop, KeyControl, demo_parser, ensure_runtime
from physim.scene import floor_height
from physim.tactile import TactileSensor

HELP = ("Tactile probe\n"
        "A/D or Left/Right: x    W/S or Up/Down: z\n"
        "Q/E: press / lift    Z/X: turn\n"
        "R: reset    Esc: quit")
GRID = 32
FLOOR = floor_height(GRID)
FRAME_DT = 3e-3  # simulated seconds per frame (the FEM sub-cycles it, ~17 sub-steps)
TOP = FLOOR + 0.025  # top of every object (m)
GEL = dict(size=0.028, thickness=0.006, resolution=(14, 3, 14))
GEL_MATERIAL = dict(E=3e4, nu=0.3, density=3e4, alpha=10.0, contact_damping=20.0)
MOUNT_HALF = np.array([0.016, 0.003, 0.016])
GAP = 0.002  # the gel's face starts this far above the objects
MAX_DEPTH = 0.002  # deepest press of the gel's face below the objects' top (the gel is 6 mm thick)
#: sensor speeds along x, y, z (m/s) and about y (rad/s): free, and while touching
SPEED_FREE = np.array([0.15, 0.08, 0.15, 8.0])
SPEED_TOUCH = np.array([0.05, 0.03, 0.05, 2.0])
TOUCH_FORCE = 0.01  # N of normal force that counts as touching
SMOOTH = 0.2  # per-frame blend of the velocity towards the keys' command (no jerks into the gel)
OBJECT_X = (0.46, 0.50, 0.54)  # sphere, box edge, cylinder
START = np.array([OBJECT_X[0], TOP + GAP + GEL["thickness"] + MOUNT_HALF[1], 0.5])  # mount centre
LO = np.array([0.42, TOP - MAX_DEPTH + GEL["thickness"] + MOUNT_HALF[1], 0.47])
HI = np.array([0.58, TOP + 0.015 + GEL["thickness"] + MOUNT_HALF[1], 0.53])
IMAGE = (64, 64)
UPSCALE = 5  # tactile panel pixels per sensor pixel
ARROW_GAIN = 4.0  # marker arrows are this many times the displacement
SHEAR_GAIN = 0.1  # sensor px of the net shear arrow per mN
#: headless control: (start frame, keys held from then on)
SCRIPT = [
    (0, {"q"}),     # press into the sphere
    (34, set()),    # hold
    (40, {"d"}),    # slide along +x across it: friction shears the gel, the arrows turn
    (70, set()),
    (74, {"z"}),    # twist: the arrows curl around the contact
    (92, set()),
    (96, {"e"}),    # lift
    (114, {"d"}),   # over to the box
    (193, {"q"}),   # press its edge: a line
    (230, set()),
]


def build_scene() -> tuple[ps.Scene, ps.FEMBody]:
    """The mount (tool 0) with the gel pad under it, and the sphere, box and cylinder (tools 1-3) below."""
    scene = ps.Scene(dim=3, grid_res=GRID, dt=FRAME_DT, substeps_per_step=1, gravity=(0.0, 0.0, 0.0))
    scene.add_tool(ps.BoxTool(position=START, half_extents=MOUNT_HALF, friction=0.0))
    r = 0.0125
    scene.add_tool(ps.SphereTool(position=(OBJECT_X[0], TOP - r, 0.5), radius=r, friction=0.6))
    a = (TOP - FLOOR) / (2 * math.sqrt(2))  # a box on one edge, turned 45 degrees about z: its top edge along z
    scene.add_tool(ps.BoxTool(position=(OBJECT_X[1], FLOOR + a * math.sqrt(2), 0.5), half_extents=(a, a, 0.012),
                              rotation=(math.cos(math.pi / 8), 0.0, 0.0, math.sin(math.pi / 8)), friction=0.6))
    h = (TOP - FLOOR) / 2
    scene.add_tool(ps.CylinderTool(position=(OBJECT_X[2], FLOOR + h, 0.5), radius=0.006, half_height=h, friction=0.6))
    face = START[1] - MOUNT_HALF[1] - GEL["thickness"] / 2
    pad = ps.flat_pad(center=(START[0], face, START[2]), size=(GEL["size"],) * 2, thickness=GEL["thickness"],
                      resolution=GEL["resolution"], back="top")
    body = ps.FEMBody(pad, mount=0, **GEL_MATERIAL)
    scene.add_fem(body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Subcycling)  # expected: the FEM sub-steps each frame
        scene.build(max_steps=1)
    return scene, body


class Probe:
    """Keyboard-driven sensor mount. Its pose is integrated here exactly as the solver moves
    it (constant velocity over a frame), so no state is read back to clamp it."""

    def __init__(self, scene: ps.Scene, keys: KeyControl):
        self.scene, self.keys = scene, keys
        self.touching = False
        self.reset()

    def reset(self) -> None:
        self.position = START.copy()
        self.yaw = 0.0
        self.velocity = np.zeros(4)

    def action(self) -> np.ndarray:
        k = self.keys
        cmd = np.array([k.axis(("Left", "a"), ("Right", "d")), k.axis("q", "e"), k.axis(("Up", "w"), ("Down", "s")),
                        k.axis("x", "z")])
        speed = (SPEED_TOUCH if self.touching else SPEED_FREE).copy()
        speed[1] = SPEED_FREE[1] if cmd[1] > 0 else speed[1]  # lifting off is never a problem
        cmd = cmd * speed
        v = self.velocity + SMOOTH * (cmd - self.velocity)
        v[np.abs(v) < 1e-5] = 0.0
        step = v[:3] * FRAME_DT
        nxt = np.clip(self.position + step, LO, HI)
        v[:3] = (nxt - self.position) / FRAME_DT  # stop at the box's faces
        self.velocity = v
        self.position = nxt
        self.yaw += v[3] * FRAME_DT
        a = np.zeros(self.scene.action_dim)
        a[:3] = v[:3]
        a[4] = v[3]  # angular velocity about y
        return a

    @property
    def depth(self) -> float:
        """How far the gel's face is below the objects' top (m; negative: above)."""
        return TOP - (self.position[1] - MOUNT_HALF[1] - GEL["thickness"])


# ------------------------------------------------------------------ the tactile panel
def _disk(img: np.ndarray, pts: np.ndarray, r: int, color) -> None:
    H, W = img.shape[:2]
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy <= r * r:
                x = np.round(pts[:, 0]).astype(int) + dx
                y = np.round(pts[:, 1]).astype(int) + dy
                ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
                img[y[ok], x[ok]] = color


def _segments(img: np.ndarray, a: np.ndarray, b: np.ndarray, color, width: int = 1) -> None:
    """Draw segments a -> b ((k, 2) pixel coordinates) with a small arrow head at b."""
    if len(a) == 0:
        return
    d = b - a
    n = np.linalg.norm(d, axis=1, keepdims=True)
    unit = np.where(n > 1e-9, d / np.maximum(n, 1e-9), 0.0)
    side = np.stack([-unit[:, 1], unit[:, 0]], axis=1)
    head = np.minimum(0.4 * n, 5.0)
    lines = [(a, b), (b, b - unit * head + side * head * 0.5), (b, b - unit * head - side * head * 0.5)]
    t = np.linspace(0.0, 1.0, int(np.ceil(n.max())) + 2)[None, :, None]  # a point per pixel
    for p, q in lines:
        pts = (p[:, None] + t * (q - p)[:, None]).reshape(-1, 2)
        _disk(img, pts, width, color)


def tactile_panel(rgb: np.ndarray, markers: np.ndarray, rest: np.ndarray, shear: np.ndarray) -> np.ndarray:
    """The sensor's RGB image upscaled with markers (dots), their displacements (yellow arrows,
    x ARROW_GAIN) and the net shear (red, from the centre): (H, W, 3) uint8."""
    t = torch.as_tensor(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
    up = torch.nn.functional.interpolate(t, scale_factor=UPSCALE, mode="bilinear", align_corners=False)[0]
    img = np.clip(up.numpy().transpose(1, 2, 0) * 255.0, 0, 255).astype(np.uint8)
    px = lambda uv: (np.asarray(uv) + 0.5) * UPSCALE - 0.5  # noqa: E731  sensor px -> panel px
    moved = np.linalg.norm(markers - rest, axis=1) * UPSCALE * ARROW_GAIN > 1.0
    _segments(img, px(rest[moved]), px(rest[moved] + (markers - rest)[moved] * ARROW_GAIN), (255, 225, 40))
    _disk(img, px(markers), 2, (15, 15, 15))
    c = np.array([[img.shape[1] / 2, img.shape[0] / 2]])
    s = np.asarray(shear, dtype=np.float64)[:2] * 1e3 * SHEAR_GAIN * UPSCALE
    if np.linalg.norm(s) > 3.0:
        _segments(img, c, c + s[None], (230, 30, 30), width=2)
    return img


class TactileView:
    """Reads the sensor every frame and shows it in a second viewport of the renderer's window."""

    def __init__(self, scene: ps.Scene, body: ps.FEMBody, renderer: Renderer | None):
        st = scene.get_state()
        self.scene = scene
        self.sensor = TactileSensor(body, camera="pinhole", image_size=IMAGE, markers=(10, 10),
                                    pose=(st["tools.pos"][0], st["tools.rot"][0]))
        self.force = np.zeros(3)
        self.renderer = renderer
        if renderer is not None:
            self._add_viewport(renderer)
        self.update()

    def _add_viewport(self, renderer: Renderer) -> None:
        import pyvista as pv
        from vtkmodules.vtkRenderingCore import vtkImageActor, vtkRenderer, vtkTextActor

        split = 0.56
        renderer.plotter.renderer.SetViewport(0.0, 0.0, split, 1.0)
        ren = vtkRenderer()
        ren.SetViewport(split, 0.0, 1.0, 1.0)
        ren.SetBackground(0.13, 0.14, 0.16)
        ren.InteractiveOff()  # the mouse keeps turning the 3D view
        H, W = IMAGE
        self.image = pv.ImageData(dimensions=(W * UPSCALE, H * UPSCALE, 1))
        self.image.point_data["rgb"] = np.zeros((H * W * UPSCALE**2, 3), np.uint8)
        actor = vtkImageActor()
        actor.GetMapper().SetInputData(self.image)
        actor.InterpolateOff()
        ren.AddActor(actor)
        self.label = vtkTextActor()
        self.label.GetTextProperty().SetFontSize(15)
        self.label.GetTextProperty().SetColor(0.92, 0.92, 0.92)
        self.label.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
        self.label.SetPosition(0.04, 0.025)
        ren.AddViewProp(self.label)
        title = vtkTextActor()
        title.SetInput("what the sensor sees (markers: arrows x4; shear: red)")
        title.GetTextProperty().SetFontSize(13)
        title.GetTextProperty().SetColor(0.75, 0.77, 0.8)
        title.GetPositionCoordinate().SetCoordinateSystemToNormalizedViewport()
        title.SetPosition(0.04, 0.94)
        ren.AddViewProp(title)
        cam = ren.GetActiveCamera()
        cam.ParallelProjectionOn()
        w, h = W * UPSCALE, H * UPSCALE
        cam.SetFocalPoint(w / 2, h / 2 - 0.07 * h, 0.0)
        cam.SetPosition(w / 2, h / 2 - 0.07 * h, 1000.0)
        cam.SetViewUp(0.0, 1.0, 0.0)
        cam.SetParallelScale(0.62 * h)
        renderer.plotter.ren_win.AddRenderer(ren)
        self.panel_renderer = ren

    def reading(self):
        """(RGB image (H, W, 3), marker pixels (m, 2), net force (shear x, shear y, normal) N) now."""
        st = self.scene.get_state()
        pose = (torch.as_tensor(st["tools.pos"][0]), torch.as_tensor(st["tools.rot"][0]))
        x = torch.as_tensor(st["fem.x"])
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small tensors: one thread is 3 ms an image, more fight Taichi's (~50 ms)
        try:
            with torch.no_grad():
                rgb = self.sensor.image(x, pose).numpy()
                uv = self.sensor.markers(x, pose).numpy()
                force = self.sensor.total_force(torch.as_tensor(st["fem.f_contact"]), pose).numpy()
        finally:
            torch.set_num_threads(threads)
        return rgb, uv, force

    def update(self) -> None:
        rgb, uv, self.force = self.reading()
        if self.renderer is None:
            return
        panel = tactile_panel(rgb, uv, self.sensor.rest_markers, self.force)
        self.image.point_data["rgb"] = panel[::-1].reshape(-1, 3)  # VTK rows run bottom to top
        self.image.Modified()
        fn, shear = self.force[2], float(np.hypot(self.force[0], self.force[1]))
        self.label.SetInput(f"normal {fn:6.3f} N    shear {shear:6.3f} N")


def run(argv=None) -> list[np.ndarray] | None:
    """Run the demo; headless it returns the frames it wrote to ``--out`` (interactive and
    ``--picture``: ``None``)."""
    parser = demo_parser(__doc__, "tactile_probe", frames=260, fps=25)
    parser.add_argument("--picture", default=None, metavar="PATH",
                        help="no window: press the sphere 1.5 mm in, write its tactile reading to PATH (PNG)")
    args = parser.parse_args(argv)
    ensure_runtime(args.arch)
    warnings.filterwarnings("ignore", category=Subcycling)
    scene, body = build_scene()
    if args.picture:
        picture(scene, body, args.picture, settle=smoke.shrink(100, smoke.FRAMES))
        return None
    camera = [(0.5, 0.165, 0.68), (0.5, 0.115, 0.5), (0.0, 1.0, 0.0)]
    renderer = Renderer(scene, off_screen=args.offscreen, camera=camera,
                        window_size=(960, 480) if args.offscreen else (1280, 640))
    renderer.plotter.camera.view_angle = 30.0
    keys = KeyControl(renderer)
    probe = Probe(scene, keys)
    view = TactileView(scene, body, renderer)

    def on_step() -> None:
        view.update()
        probe.touching = view.force[2] > TOUCH_FORCE

    def status() -> str:
        p = probe.position
        return (f"t = {scene.time:5.3f} s   sensor at x {p[0]:.3f}, z {p[2]:.3f} m, "
                f"turned {math.degrees(probe.yaw):4.0f} deg\n"
                f"gel face {probe.depth * 1e3:+5.2f} mm below the objects' top   "
                f"normal force {view.force[2]:.3f} N")

    loop = DemoLoop(scene, renderer, keys, probe.action, help_text=HELP, status=status, on_reset=probe.reset,
                    on_step=on_step)
    return loop.run_demo(args, SCRIPT, title="physim: tactile probe", keys_help="WASD/arrows, Q/E, Z/X, R, Esc")


def picture(scene: ps.Scene, body: ps.FEMBody, path: str, depth: float = 0.0015, settle: int = 100) -> str:
    """Press the gel ``depth`` m into the sphere (slowly, then ``settle`` frames still) and write the
    reading (:func:`physim.tactile.render_reading`) to ``path``."""
    from physim.tactile import render_reading

    view = TactileView(scene, body, None)
    a = np.zeros(scene.action_dim)
    travel = GAP + depth
    n = int(math.ceil(2.0 * travel / (SPEED_TOUCH[1] * FRAME_DT)))
    y = travel * (1.0 - np.cos(np.pi * np.arange(n + 1) / n)) / 2.0  # a smooth start and stop: no ringing
    for k in range(n):
        a[1] = -(y[k + 1] - y[k]) / FRAME_DT
        scene.step(a)
    a[1] = 0.0
    for _ in range(settle):
        scene.step(a)
    st = scene.get_state()
    pose = (st["tools.pos"][0], st["tools.rot"][0])
    render_reading(path, view.sensor, st["fem.x"], pose, st["fem.f_contact"],
                   title=f"12.5 mm sphere pressed {depth * 1e3:.1f} mm into the gel")
    print(f"[physim] wrote {path}")
    return path


def main(argv=None) -> int:
    """Command-line entry (``physim demo tactile_probe``, ``python demos/tactile_probe.py``): runs the
    demo and returns the process exit status, 0 (failures raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

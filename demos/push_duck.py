"""Push a floating duck across a pond with a water jet: steer the nozzle with the keyboard.

    python demos/push_duck.py                       # interactive window
    python demos/push_duck.py --offscreen --frames 150 --out out/push_duck.mp4

Keys: A/D or Left/Right move the nozzle along x, W/S or Up/Down move it away from / towards
the camera (z), Q/E turn it about the vertical (Q: the jet turns left, towards -z); R resets,
Escape quits. Headless (``--offscreen``) a scripted sequence moves the nozzle behind the
duck, backs off a little and follows the duck as the jet pushes it to the green target.

The pond is a glass ``ps.CupTool`` (a kinematic container standing on the floor) of
``ps.Fluid`` water. The duck is one ``ps.Rigid`` body of half the water's density (a body
and a head: :class:`DuckShape`), started at its Archimedes waterline. The nozzle is a
``ps.CylinderTool`` with a ``ps.Emitter`` at its lower end: the jet leaves along the
cylinder's axis, pitched :data:`JET_PITCH` below the horizontal, and is always on (an
emitter's schedule is fixed when the scene is built). Its water comes from a supply of
:data:`JET_SUPPLY` particles (:data:`JET_SUPPLY` / :data:`JET_RATE` seconds of jet, the
emitter's ``stop``); when it is used up the status line says "jet empty" and the pond
simply goes on (R refills it). The scripted run uses less than that.
"""

from __future__ import annotations

import math
import sys

import numpy as np

import physim as ps
from physim.render import Renderer
from physim.render.interactive import DemoLoop, KeyControl, demo_parser, ensure_runtime

HELP = ("Push the duck to the green marker\n"
        "A/D or Left/Right: move along x    W/S or Up/Down: move along z\n"
        "Q/E: turn the nozzle    R: reset    Esc: quit")
GRID = 32
SUBSTEPS = 30  # per frame: 30 x 0.72 ms (the water's automatic dt) = 21.7 ms of simulated time
POND_CENTER = np.array([0.5, 0.5])  # (x, z) of the pond's axis
POND = dict(radius=0.29, thickness=0.08, height=0.2)  # inner radius, wall / bottom thickness, inner height (m)
WATER_LAYERS = 6  # water depth at the start, in particle layers (6 x 1/64 m = 9.4 cm)
WATER = dict(bulk_modulus=300.0, viscosity=0.02, density=1.0)
DUCK_DENSITY = 0.5  # x the water's: floats half submerged
DUCK_START = np.array([0.44, 0.5])  # (x, z) of the duck's body centre
TARGET = np.array([0.60, 0.455])  # (x, z) of the target marker
NOZZLE_START = np.array([0.30, 0.68])  # (x, z); the jet starts off to the duck's side
NOZZLE_HEIGHT = 0.09  # nozzle centre above the still water (m)
NOZZLE = dict(radius=0.018, half_height=0.025)
JET_PITCH = math.radians(20.0)  # the jet's angle below the horizontal
JET_SPEED = 2.5  # m/s along the nozzle's axis
JET_RADIUS = 0.6 / GRID  # m: a bore of 2 x 2 particles
JET_RATE = 600.0  # particles/s (the bore full at rest density would be 2*2*JET_SPEED/spacing = 640)
JET_SUPPLY = 2400  # particles: 4 s of jet (the 150 scripted frames, 3.25 s, use 1950)
MOVE_SPEED = 0.25  # m/s while a key is held
TURN_SPEED = 1.5  # rad/s while a key is held
#: the nozzle's centre stays within this distance of the pond's axis (the jet keeps to the water)
NOZZLE_REACH = 0.27
REACHED = 0.03  # m: the duck is "at the target" closer than this
#: headless control: (start frame, keys held from then on)
SCRIPT = [
    (0, set()),          # the jet sprays into the pond beside the duck
    (4, {"w"}),          # move behind the duck: the jet sweeps onto its tail
    (37, {"a"}),         # back off a little
    (47, set()),         # the jet pushes the duck along +x
    (66, {"d"}),         # follow the duck
    (82, set()),
    (95, {"d"}),
    (108, set()),        # and let it glide
]


class DuckShape(ps.Shape):
    """A duck: an ellipsoid body and a spherical head in front of and above it, with a flat
    beak; ``center`` is the body's centre, the head points along +x. ``pad`` grows every
    part by that much (the water around the duck is sampled outside a padded duck)."""

    BODY = np.array([0.075, 0.042, 0.052])  # semi-axes
    HEAD = (np.array([0.055, 0.05, 0.0]), 0.033)  # centre (relative), radius
    BEAK = (np.array([0.094, 0.045, 0.0]), np.array([0.02, 0.008, 0.016]))  # centre, semi-axes

    def __init__(self, center, pad: float = 0.0):
        self.center = np.asarray(center, dtype=np.float64).reshape(3)
        self.pad = float(pad)

    def __repr__(self):
        return f"DuckShape(center={self.center.round(4).tolist()}, pad={self.pad:g})"

    def bounds(self):
        (hc, hr), (bc, br) = self.HEAD, self.BEAK
        lo = np.minimum(-self.BODY, np.minimum(hc - hr, bc - br)) - self.pad
        hi = np.maximum(self.BODY, np.maximum(hc + hr, bc + br)) + self.pad
        return self.center + lo, self.center + hi

    def contains(self, points):
        d = np.asarray(points, dtype=np.float64) - self.center
        (hc, hr), (bc, br) = self.HEAD, self.BEAK
        body = ((d / (self.BODY + self.pad)) ** 2).sum(axis=1) <= 1.0
        head = np.linalg.norm(d - hc, axis=1) <= hr + self.pad
        beak = (((d - bc) / (br + self.pad)) ** 2).sum(axis=1) <= 1.0
        return body | head | beak


class PondWater(ps.Shape):
    """The pond's water: a vertical cylinder of radius ``radius`` from ``bottom`` to ``surface``
    around (x, z) = ``axis``, less the space ``exclude`` (a shape) takes."""

    def __init__(self, axis, radius: float, bottom: float, surface: float, exclude: ps.Shape):
        self.axis, self.radius = np.asarray(axis, dtype=np.float64), float(radius)
        self.bottom, self.surface, self.exclude = float(bottom), float(surface), exclude
        self.center = np.array([self.axis[0], (bottom + surface) / 2, self.axis[1]])

    def __repr__(self):
        return f"PondWater(radius={self.radius:g}, {self.bottom:.3f} < y < {self.surface:.3f})"

    def bounds(self):
        r = self.radius
        return (np.array([self.axis[0] - r, self.bottom, self.axis[1] - r]),
                np.array([self.axis[0] + r, self.surface, self.axis[1] + r]))

    def contains(self, points):
        p = np.asarray(points, dtype=np.float64)
        radial = np.hypot(p[:, 0] - self.axis[0], p[:, 2] - self.axis[1])
        inside = (radial <= self.radius) & (p[:, 1] >= self.bottom) & (p[:, 1] <= self.surface)
        return inside & ~self.exclude.contains(p)


def _quat(axis, angle: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation by ``angle`` about ``axis``."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return np.concatenate([[math.cos(angle / 2)], math.sin(angle / 2) * a])


def _qmul(p, q) -> np.ndarray:
    w1, x1, y1, z1 = p
    w2, x2, y2, z2 = q
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def nozzle_rotation(yaw: float) -> np.ndarray:
    """The nozzle's quaternion: its axis (the jet, local -y) pitched :data:`JET_PITCH` below +x,
    then turned by ``yaw`` about the vertical (positive: towards -z)."""
    pitch = _quat((0, 0, 1), math.pi / 2 - JET_PITCH)  # local -y -> (cos pitch, -sin pitch, 0)
    return _qmul(_quat((0, 1, 0), yaw), pitch)


class Pond:
    """The scene and its named pieces: ``scene``, ``water``, ``duck`` (materials), ``emitter``,
    ``bottom`` and ``surface`` (the pond's inner bottom, the still water's height), ``duck_rows``
    and ``water_rows`` (the duck's and the water's particle rows, the jet's included) and
    ``duck_rest`` (the duck's start positions), ``jet_rows`` (the jet's reserved rows)."""

    def __init__(self, grid: int = GRID):
        scene = ps.Scene(dim=3, grid_res=grid, substeps_per_step=SUBSTEPS, boundary="slip")
        th, h = POND["thickness"], POND["height"]
        lo = scene.floor + th  # the pond's inner bottom: the cup stands on the floor
        # a whole number of lattice layers: the water's particles fill it to the brim (each stands
        # for a spacing-sized cube about it)
        self.bottom = lo
        self.surface = surface = lo + WATER_LAYERS * scene.spacing
        self.water = ps.Fluid(**WATER)
        self.duck = ps.Rigid(density=DUCK_DENSITY * WATER["density"])
        # the duck at its Archimedes waterline: its particles have equal volumes, so half the
        # duck's volume is below the median height of its lattice points (density ratio 0.5)
        probe = DuckShape((0.0, 0.0, 0.0)).sample(scene.spacing)
        waterline = float(np.quantile(probe[:, 1], DUCK_DENSITY))
        duck_center = np.array([DUCK_START[0], surface - waterline, DUCK_START[1]])
        self.duck_shape = DuckShape(duck_center)
        scene.add_body(self.duck_shape, self.duck)
        scene.add_body(PondWater(POND_CENTER, POND["radius"] - 0.004, lo, surface,
                                 DuckShape(duck_center, pad=0.75 * scene.spacing)), self.water)
        half = (h + th) / 2  # the cup's outer half height
        scene.add_tool(ps.CupTool(position=(POND_CENTER[0], lo + h - half, POND_CENTER[1]), radius=POND["radius"],
                                  half_height=half, thickness=th, friction=0.0))
        self.nozzle = ps.CylinderTool(position=(NOZZLE_START[0], surface + NOZZLE_HEIGHT, NOZZLE_START[1]),
                                      rotation=nozzle_rotation(0.0), friction=0.0, **NOZZLE)
        scene.add_tool(self.nozzle)
        self.emitter = ps.Emitter(self.water, self.nozzle, speed=JET_SPEED, rate=JET_RATE, radius=JET_RADIUS,
                                  capacity=JET_SUPPLY, stop=JET_SUPPLY / JET_RATE)
        scene.add_emitter(self.emitter)
        scene.build(max_steps=1)
        self.scene = scene
        mats = scene.particle_materials()
        self.duck_rows = np.flatnonzero(mats == scene.materials.index(self.duck))
        self.water_rows = np.flatnonzero(mats == scene.materials.index(self.water))
        self.duck_rest = scene.initial_state()["mpm.x"][self.duck_rows]
        self.jet_rows = np.flatnonzero(~scene.particle_active())  # the jet's supply, not emitted yet

    def duck_pose(self, x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The duck's rotation R (3, 3) and centre of mass c (3,) now: its particles are at
        ``R (rest - rest_centre) + c`` (a rigid body moves its particles rigidly; Kabsch fit)."""
        x = self.scene.particle_positions() if x is None else x
        p = np.asarray(x)[self.duck_rows]
        c, c0 = p.mean(axis=0), self.duck_rest.mean(axis=0)
        u, _, vt = np.linalg.svd((p - c).T @ (self.duck_rest - c0))
        d = np.sign(np.linalg.det(u @ vt))
        return u @ np.diag([1.0, 1.0, d]) @ vt, c

    def target_distance(self, x: np.ndarray | None = None) -> float:
        """Horizontal distance (m) from the duck's centre of mass to the target."""
        _, c = self.duck_pose(x)
        return float(np.hypot(c[0] - TARGET[0], c[2] - TARGET[1]))

    def jet_left(self) -> int:
        """Particles of the jet's supply not emitted yet."""
        return int(np.count_nonzero(~self.scene.particle_active()))


class Nozzle:
    """Keyboard-driven nozzle. Its position and yaw are integrated here as the solver moves the
    tool (constant velocity over a step), so no state is read back to clamp them."""

    def __init__(self, scene: ps.Scene, keys: KeyControl):
        self.scene, self.keys = scene, keys
        self.reset()

    def reset(self) -> None:
        """Back to the initial pose (after ``scene.reset()``)."""
        self.position = NOZZLE_START.copy()  # (x, z)
        self.yaw = 0.0

    def action(self) -> np.ndarray:
        """The nozzle's (vx, 0, vz, 0, omega_y, 0) from the held keys; it stays within
        :data:`NOZZLE_REACH` of the pond's axis."""
        keys = self.keys
        v = MOVE_SPEED * np.array([keys.axis(("Left", "a"), ("Right", "d")), keys.axis(("Up", "w"), ("Down", "s"))])
        step_time = self.scene.dt * self.scene.substeps_per_step
        new = self.position + v * step_time
        r = new - POND_CENTER
        if np.linalg.norm(r) > NOZZLE_REACH:  # slide along the limit circle, never beyond it
            new = POND_CENTER + r * (NOZZLE_REACH / np.linalg.norm(r))
            v = (new - self.position) / step_time
        w = TURN_SPEED * self.keys.axis("e", "q")
        self.position = new
        self.yaw += w * step_time
        a = np.zeros(self.scene.action_dim)
        sl = self.scene.tool_slice(1)
        a[sl.start + 0], a[sl.start + 2] = v
        a[sl.start + 4] = w
        return a


DUCK_YELLOW = (0.99, 0.82, 0.12)
JET_BLUE = (0.62, 0.84, 1.0)  # the jet's water, lighter than the pond's so the jet shows
BEAK_ORANGE = (0.98, 0.45, 0.08)


def duck_meshes(shape: DuckShape, grow: float) -> dict:
    """PyVista meshes of the duck at its start pose (body + head, beak, eyes), each part grown
    by ``grow`` so the surface covers the duck's particles (drawn as spheres about them)."""
    import pyvista as pv

    c = shape.center
    b = shape.BODY + grow
    body = pv.ParametricEllipsoid(*b, u_res=40, v_res=24).translate(c, inplace=False)
    (hc, hr), (bc, br) = shape.HEAD, shape.BEAK
    head = pv.Sphere(radius=hr + grow, center=c + hc, theta_resolution=32, phi_resolution=20)
    beak = pv.ParametricEllipsoid(*(br + grow), u_res=24, v_res=12).translate(c + bc + [grow, 0, 0], inplace=False)
    eyes = pv.Sphere(radius=0.0065, center=c + hc + np.array([0.021, 0.016, 0.019]) + grow * 0.7)
    eyes += pv.Sphere(radius=0.0065, center=c + hc + np.array([0.021, 0.016, -0.019]) + grow * np.array([.7, .7, -.7]))
    return {"duck": (body + head, DUCK_YELLOW), "beak": (beak, BEAK_ORANGE), "eyes": (eyes, (0.05, 0.05, 0.05))}


class DuckView:
    """The duck drawn as a mesh posed by its rigid motion, the jet's water in a lighter blue
    and the target marker."""

    def __init__(self, pond: Pond, renderer: Renderer):
        import pyvista as pv

        self.pond = pond
        self.c0 = pond.duck_rest.mean(axis=0)
        self.actors = []
        colors = renderer.palette[pond.scene.particle_materials()].astype(np.float64) / 255.0
        colors[pond.jet_rows] = JET_BLUE
        renderer.set_particle_colors(colors)
        grow = 0.6 * pond.scene.spacing  # the particles' sphere radius (Renderer default)
        for name, (mesh, color) in duck_meshes(pond.duck_shape, grow).items():
            self.actors.append(renderer.add_mesh(mesh, color=color, smooth_shading=True, specular=0.4,
                                                 specular_power=25, ambient=0.25, name=name))
        lo = pond.bottom
        top = pond.surface + 0.12
        pole = pv.Cylinder(center=(TARGET[0], (lo + top) / 2, TARGET[1]), direction=(0, 1, 0), radius=0.012,
                           height=top - lo)
        ring = pv.Disc(center=(TARGET[0], pond.surface + 0.005, TARGET[1]), inner=0.03, outer=0.045, normal=(0, 1, 0),
                       c_res=40)
        renderer.add_goal(pole + ring.triangulate(), name="target", opacity=0.85)
        self.update()

    def update(self) -> None:
        """Pose the duck's meshes from its particles."""
        R, c = self.pond.duck_pose()
        M = np.eye(4)
        M[:3, :3] = R
        M[:3, 3] = c - R @ self.c0
        for actor in self.actors:
            actor.user_matrix = M


def run(argv=None) -> list[np.ndarray] | None:
    """Run the demo; headless it returns the frames it wrote to ``--out`` (interactive: ``None``)."""
    parser = demo_parser(__doc__, "push_duck", frames=150, fps=20)
    args = parser.parse_args(argv)
    ensure_runtime(args.arch)
    pond = Pond()
    scene = pond.scene
    camera = [(0.5, 0.95, 1.45), (0.5, 0.2, 0.5), (0.0, 1.0, 0.0)]
    renderer = Renderer(scene, off_screen=args.offscreen, camera=camera,
                        colors={scene.materials.index(pond.duck): DUCK_YELLOW},
                        window_size=(640, 480) if args.offscreen else (960, 720))
    keys = KeyControl(renderer)
    nozzle = Nozzle(scene, keys)
    view = DuckView(pond, renderer)

    def status() -> str:
        R, c = pond.duck_pose()
        d = pond.target_distance()
        left = pond.jet_left()
        jet = f"jet: {left} particles left" if left else "jet empty"
        goal = "   TARGET REACHED" if d < REACHED else ""
        return (f"t = {scene.time:5.2f} s   duck at (x {c[0]:.2f}, z {c[2]:.2f})   target {100 * d:4.1f} cm away   "
                f"{jet}{goal}")

    loop = DemoLoop(scene, renderer, keys, nozzle.action, help_text=HELP, status=status, on_reset=nozzle.reset,
                    on_step=view.update)
    return loop.run_demo(args, SCRIPT, title="physim: push the duck", keys_help="A/D, W/S, Q/E, R, Esc")


def main(argv=None) -> int:
    """Command-line entry (``physim demo push_duck``, ``python demos/push_duck.py``): runs the demo
    and returns the process exit status, 0 (failures raise)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""PyVista view of a built :class:`physim.Scene`: particles as spheres colored by material,
mass-spring bodies as node spheres joined by lines (actuated springs in the muscle color),
FEM bodies (3D) as their smooth-shaded boundary surface in a gel color (the faces on the
mount in gray), thin shells (3D) as two-sided smooth-shaded triangle sheets in a color per body
(the back a darker shade), tools as posed meshes, a floor and the domain outline.

The renderer only reads the scene (its state: ``mpm.x``, ``springs.x``, ``fem.x``, ``shell.x``, ``tools.pos``,
``tools.rot``); it never steps or resets it. Actors are created once and updated in place on
every frame.
"""

from __future__ import annotations

import ctypes.util
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import pyvista as pv

from .meshes import PLANE_Z, SLAB_DEPTH, embed, pose_matrix, tool_mesh

__all__ = ["Renderer", "MATERIAL_COLORS", "material_color", "TOOL_COLOR", "SPRING_COLORS", "FEM_COLORS",
           "SHELL_COLORS", "GOAL_COLOR", "GOAL_OPACITY"]

#: RGB (0-1) per material class name
MATERIAL_COLORS: dict[str, tuple[float, float, float]] = {
    "Fluid": (0.16, 0.47, 0.88),
    "Plasticine": (0.86, 0.52, 0.30),
    "Elastic": (0.33, 0.72, 0.38),
    "NeoHookean": (0.24, 0.64, 0.56),
    "Muscle": (0.84, 0.22, 0.22),
    "Viscoplastic": (0.96, 0.89, 0.72),
    "Sand": (0.80, 0.67, 0.44),
    "Snow": (0.95, 0.97, 1.00),
}
#: color of particles whose material class (and bases) has no entry above
DEFAULT_COLOR = (0.6, 0.6, 0.6)
#: color and opacity of a task's goal (target shape, region, pattern): a saturated green (a task
#: whose bodies are green draws its goal in another color)
GOAL_COLOR = (0.05, 0.80, 0.35)
GOAL_OPACITY = 0.4
#: color of tool meshes
TOOL_COLOR = (0.55, 0.60, 0.68)
#: the cup is drawn as translucent glass in 3D, so what it holds stays visible
GLASS_COLOR = (0.70, 0.82, 0.90)
#: RGB (0-1) of mass-spring nodes, passive springs and actuated springs
SPRING_COLORS = {"node": (0.20, 0.24, 0.32), "passive": (0.45, 0.50, 0.58), "actuated": MATERIAL_COLORS["Muscle"]}
#: RGB (0-1) of FEM gel surfaces and of their faces on the mount (all three nodes kinematic)
FEM_COLORS = {"gel": (0.66, 0.50, 0.86), "mount": (0.42, 0.43, 0.46)}
#: RGB (0-1) of thin-shell bodies, by body index (cycled); saturated, so a sheet stands out from the
#: light background and the gray tools and floor
SHELL_COLORS = ((0.93, 0.60, 0.16), (0.20, 0.52, 0.84), (0.86, 0.30, 0.46), (0.32, 0.64, 0.30))
#: a shell's back face is drawn in its color times this, so a fold shows which side is up
SHELL_BACK_SHADE = 0.7
#: shell edges bent sharper than this (deg) are drawn as creases (split normals); gentler bends are
#: smoothed: a paper crease stays crisp while a draped cloth (dihedral angles of tens of degrees
#: between neighbouring triangles of a coarse mesh) looks smooth
SHELL_CREASE_ANGLE = 60.0


def material_color(material) -> tuple[float, float, float]:
    """Default RGB (0-1) of a physim material, chosen by its class (or a base class) name."""
    for cls in type(material).__mro__:
        if cls.__name__ in MATERIAL_COLORS:
            return MATERIAL_COLORS[cls.__name__]
    return DEFAULT_COLOR


#: VTK's documented run-time choice of OpenGL window class (VTK >= 9.4)
_VTK_WINDOW_ENV = "VTK_DEFAULT_OPENGL_WINDOW"


_X_REACHABLE: dict[str, bool] = {}


def _x_display_reachable() -> bool:
    """Whether ``$DISPLAY`` names an X server that accepts a connection (cached per value).

    Asked the way VTK asks (``XOpenDisplay``), which fails silently; ``DISPLAY`` unset, or no
    libX11 to ask with: not reachable."""
    display = os.environ.get("DISPLAY", "")
    if not display:
        return False
    if display not in _X_REACHABLE:
        ok = False
        name = ctypes.util.find_library("X11")
        if name is not None:
            try:
                xlib = ctypes.CDLL(name)
                xlib.XOpenDisplay.restype = ctypes.c_void_p
                xlib.XOpenDisplay.argtypes = [ctypes.c_char_p]
                handle = xlib.XOpenDisplay(display.encode())
                if handle:
                    xlib.XCloseDisplay.argtypes = [ctypes.c_void_p]
                    xlib.XCloseDisplay(handle)
                    ok = True
            except OSError:
                ok = False
        _X_REACHABLE[display] = ok
    return _X_REACHABLE[display]


@contextmanager
def _headless_window_class(off_screen: bool):
    """Create VTK's render window as an EGL window when rendering off screen without a reachable X
    display.

    VTK on Linux first tries an X window; with ``DISPLAY`` unset, or set to a display no X server
    answers (``DISPLAY=:99`` on a machine without X), that fails with the warning ``bad X server
    connection. DISPLAY=...`` and VTK falls back to EGL. Asking for EGL directly
    (through ``$VTK_DEFAULT_OPENGL_WINDOW``, only while the plotter is created) skips the
    doomed attempt, so nothing is hidden: a failing EGL window still reports its errors.
    Left alone: windows on screen, a reachable X display, a choice the user made in the environment,
    and machines without libEGL (VTK's own fallback to OSMesa then applies, with its warning).
    """
    choose = (off_screen and sys.platform.startswith("linux") and not _x_display_reachable()
              and _VTK_WINDOW_ENV not in os.environ and ctypes.util.find_library("EGL") is not None)
    if not choose:
        yield
        return
    os.environ[_VTK_WINDOW_ENV] = "vtkEGLRenderWindow"
    try:
        yield
    finally:
        os.environ.pop(_VTK_WINDOW_ENV, None)


def _rgb255(color) -> np.ndarray:
    """Any color PyVista understands, or an RGB triple in 0-1 or 0-255, as 3 uint8."""
    if isinstance(color, (tuple, list, np.ndarray)) and len(color) == 3 and not isinstance(color[0], str):
        c = np.asarray(color, dtype=np.float64)
        if c.max() <= 1.0:
            c = c * 255.0
        return np.clip(np.round(c), 0, 255).astype(np.uint8)
    return np.asarray(pv.Color(color).int_rgb, dtype=np.uint8)


class Renderer:
    """Draws the current state of a built scene with PyVista.

    Args:
        scene: a built :class:`physim.Scene` (2D or 3D).
        window_size: (width, height) in pixels.
        camera: anything ``pyvista.Plotter.camera_position`` accepts, e.g.
            ``[(position), (focal point), (view up)]``; ``None``: a default per dimension
            (3D: from the front-upper side towards (0.5, 0.3, 0.5); 2D: straight along -z
            at the x-y plane with a parallel projection).
        colors: {material index: color} overriding the per-class defaults; a color is an
            RGB triple in 0-1 or 0-255 or a name PyVista knows.
        shell_colors: {shell body index: color} overriding :data:`SHELL_COLORS` (front side; the
            back is drawn :data:`SHELL_BACK_SHADE` times darker).
        off_screen: render without a window (``None``: ``pyvista.OFF_SCREEN`` or
            ``$PYVISTA_OFF_SCREEN``).
        particle_radius: sphere radius of a particle in world units (default
            0.6 * ``scene.spacing`` in 3D, 0.7 in 2D, so neighbouring spheres touch); drawn with
            ``render_points_as_spheres`` at the matching size in pixels.
        node_radius: sphere radius (world units) of a mass-spring node (default a quarter of
            the shortest spring rest length).
        floor: draw the floor at the bottom wall and the outline of the domain.
        background: (bottom, top) colors of the background gradient.
        color_fn: optional ``color_fn(positions) -> (n, 3)`` RGB (0-1) called on every frame
            with the (n, dim) particle positions, e.g. to shade by height or speed; it
            replaces the material colors.

    Attributes:
        plotter: the ``pyvista.Plotter`` (add key events, text, ... to it).
        particles: the ``pyvista.PolyData`` of the particles (points updated in place), ``None``
            in a scene without MPM particles (``particle_actor`` too).
        nodes, springs: ``pyvista.PolyData`` of the mass-spring nodes (points) and springs
            (lines between them), ``None`` in a scene without mass-spring bodies.
        fem: ``pyvista.PolyData`` of the FEM bodies' boundary triangles (faces of one tet
            only, outward; points are ``fem.x``, updated every frame), ``None`` in a scene
            without FEM bodies (``fem_actor`` too).
        shells: one ``pyvista.PolyData`` per thin-shell body (its triangles; points are that body's
            rows of ``shell.x``, updated every frame), empty in a scene without shells.
        shell_actors: their actors (``actor.backface_prop`` holds the back color).
        tool_actors: one actor per tool.
    """

    def __init__(
        self,
        scene,
        window_size: Sequence[int] = (640, 480),
        camera=None,
        colors: Mapping[int, object] | None = None,
        off_screen: bool | None = None,
        particle_radius: float | None = None,
        node_radius: float | None = None,
        floor: bool = True,
        background: Sequence[object] = ("#fbfbfc", "#cfd9e4"),
        color_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        shell_colors: Mapping[int, object] | None = None,
    ):
        if getattr(scene, "engine", None) is None and getattr(scene, "partset", None) is None:
            raise RuntimeError("the scene is not built; call scene.build() before creating a Renderer")
        self.scene = scene
        self.dim = int(scene.dim)
        self.color_fn = color_fn
        if off_screen is None:
            off_screen = bool(pv.OFF_SCREEN) or os.environ.get("PYVISTA_OFF_SCREEN", "").lower() in ("1", "true")
        self.off_screen = bool(off_screen)
        self.particle_radius = float(particle_radius) if particle_radius is not None else (
            (0.6 if self.dim == 3 else 0.7) * float(scene.spacing))
        if not (math.isfinite(self.particle_radius) and self.particle_radius > 0):
            raise ValueError(f"particle_radius must be positive, got {particle_radius!r}")
        self.window_size = (int(window_size[0]), int(window_size[1]))
        with _headless_window_class(self.off_screen):  # VTK creates its render window here
            self.plotter = pv.Plotter(off_screen=self.off_screen, window_size=list(self.window_size))
        self.plotter.set_background(background[0], top=background[1])
        self._shown = False
        self._closed = False
        self._extra: dict[str, object] = {}

        state = scene.get_state()
        # particles: one PolyData whose points are replaced every frame
        mats = np.asarray(scene.particle_materials() if "mpm.x" in state else [], dtype=np.int64)
        palette = np.array([material_color(m) for m in scene.materials], dtype=np.float64) * 255.0
        palette = np.clip(np.round(palette), 0, 255).astype(np.uint8).reshape(-1, 3)
        for index, color in (colors or {}).items():
            if not 0 <= int(index) < len(palette):
                raise ValueError(f"colors has material index {index}, the scene has {len(palette)} materials")
            palette[int(index)] = _rgb255(color)
        self.palette = palette
        self.particles = self.particle_actor = None
        if "mpm.x" in state:
            self.particles = pv.PolyData(embed(state["mpm.x"], self.dim))
            self.particles.point_data["rgb"] = palette[mats]
            self._hide_inactive()
            self.particle_actor = self.plotter.add_mesh(
                self.particles, scalars="rgb", rgb=True, style="points", render_points_as_spheres=True,
                point_size=4, ambient=0.25, diffuse=0.8, specular=0.25, specular_power=20,
                show_scalar_bar=False, name="particles", reset_camera=False,
            )
        self.nodes = self.springs = self.node_actor = self.spring_actor = None
        if "springs.x" in state:
            self._add_springs(state["springs.x"], node_radius)
        self.fem = self.fem_actor = None
        if "fem.x" in state:
            self._add_fem(state["fem.x"])
        self.shells, self.shell_actors = [], []
        if "shell.x" in state:
            self._add_shells(state["shell.x"], shell_colors)
        elif shell_colors:
            raise ValueError("shell_colors given, but the scene has no shell bodies")

        # tools: meshes built once, posed through the actor's user matrix
        self.tool_actors = []
        for i, eff in enumerate(scene.tools):
            mesh = tool_mesh(eff, self.dim)
            kw = dict(color=TOOL_COLOR, smooth_shading=True, split_sharp_edges=True, specular=0.5,
                      specular_power=30, ambient=0.15)
            if eff.shape == "cup" and self.dim == 3:
                kw.update(color=GLASS_COLOR, opacity=0.35, specular=0.8)
            actor = self.plotter.add_mesh(mesh, name=f"tool{i}", reset_camera=False, **kw)
            self.tool_actors.append(actor)

        if floor:
            self._add_floor()
        self._set_camera(camera)
        self.sync()

    # ------------------------------------------------------------------ set-up
    def _add_springs(self, x: np.ndarray, node_radius: float | None) -> None:
        """Node spheres and spring lines of the scene's mass-spring bodies (one actor each)."""
        bodies = self.scene.spring_bodies
        offsets = np.cumsum([0] + [b.n_vertices for b in bodies])
        ends = np.concatenate([b.springs + o for b, o in zip(bodies, offsets, strict=False)]).astype(np.int64)
        actuated = np.concatenate([b.actuator >= 0 for b in bodies])
        rest = np.concatenate([b.rest_length for b in bodies])
        self.node_radius = float(node_radius) if node_radius is not None else (
            0.25 * float(rest.min()) if len(rest) else self.particle_radius)
        if not (math.isfinite(self.node_radius) and self.node_radius > 0):
            raise ValueError(f"node_radius must be positive, got {node_radius!r}")
        pts = embed(x, self.dim)
        self.springs = pv.PolyData(pts, lines=np.hstack([np.full((len(ends), 1), 2), ends]).ravel()
                                   if len(ends) else None)
        rgb = np.where(actuated[:, None], SPRING_COLORS["actuated"], SPRING_COLORS["passive"]) * 255.0
        self.springs.cell_data["rgb"] = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
        self.spring_actor = self.plotter.add_mesh(self.springs, scalars="rgb", rgb=True, line_width=2.5,
                                                  show_scalar_bar=False, name="springs", reset_camera=False)
        self.nodes = pv.PolyData(pts.copy())
        self.node_actor = self.plotter.add_mesh(
            self.nodes, color=SPRING_COLORS["node"], style="points", render_points_as_spheres=True, point_size=4,
            ambient=0.25, diffuse=0.8, specular=0.25, name="nodes", reset_camera=False)

    def _add_fem(self, x: np.ndarray) -> None:
        """Boundary surface of the scene's FEM bodies (one actor): outward triangles computed once
        from the meshes, the gel color, mount faces (all three nodes kinematic) in gray."""
        bodies = self.scene.fem_bodies
        offsets = np.cumsum([0] + [b.mesh.n_vertices for b in bodies])
        self._fem_n = int(offsets[-1])
        faces = np.concatenate([b.mesh.surface_faces() + o for b, o in zip(bodies, offsets, strict=False)])
        kinematic = np.zeros(self._fem_n, dtype=bool)
        for b, o in zip(bodies, offsets, strict=False):
            kinematic[b.fixed + o] = True
        self.fem = pv.PolyData(embed(np.asarray(x)[: self._fem_n], self.dim),
                               faces=np.hstack([np.full((len(faces), 1), 3), faces]).ravel())
        rgb = np.where(kinematic[faces].all(axis=1)[:, None], FEM_COLORS["mount"], FEM_COLORS["gel"]) * 255.0
        self.fem.cell_data["rgb"] = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
        # smooth shading runs as a filter in the pipeline: normals follow the points on every frame
        self.fem_actor = self.plotter.add_mesh(
            self.fem, scalars="rgb", rgb=True, smooth_shading=True, split_sharp_edges=True, ambient=0.2,
            diffuse=0.8, specular=0.35, specular_power=25, show_scalar_bar=False, name="fem", reset_camera=False)

    def _add_shells(self, x: np.ndarray, shell_colors: Mapping[int, object] | None) -> None:
        """One two-sided, smooth-shaded triangle sheet per shell body (``scene.shell_bodies``, whose
        vertices are consecutive rows of ``shell.x`` in that order)."""
        bodies = list(self.scene.shell_bodies)
        offsets = np.cumsum([0] + [b.mesh.n_vertices for b in bodies])
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != 3 or len(x) < offsets[-1]:
            raise ValueError(f"shell.x must have shape (n >= {int(offsets[-1])}, 3) for the scene's shell bodies, "
                             f"got {x.shape}")
        colors = [SHELL_COLORS[i % len(SHELL_COLORS)] for i in range(len(bodies))]
        for index, color in (shell_colors or {}).items():
            if not 0 <= int(index) < len(bodies):
                raise ValueError(f"shell_colors has shell body index {index}, the scene has {len(bodies)} shell bodies")
            colors[int(index)] = tuple(_rgb255(color) / 255.0)
        self._shell_slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        for i, (body, sl) in enumerate(zip(bodies, self._shell_slices, strict=True)):
            tris = np.asarray(body.mesh.triangles, dtype=np.int64)
            sheet = pv.PolyData(x[sl].astype(np.float64), faces=np.hstack([np.full((len(tris), 1), 3), tris]).ravel())
            # smooth shading runs as a normals filter in the pipeline (recomputed when the points move);
            # VTK's two-sided lighting lights the back with the flipped normal
            actor = self.plotter.add_mesh(
                sheet, color=colors[i], smooth_shading=True, split_sharp_edges=True,
                feature_angle=SHELL_CREASE_ANGLE, ambient=0.22, diffuse=0.8, specular=0.25, specular_power=20,
                culling=False, name=f"shell{i}", reset_camera=False)
            back = actor.prop.copy()
            back.color = tuple(SHELL_BACK_SHADE * c for c in colors[i])
            actor.backface_prop = back
            self.shells.append(sheet)
            self.shell_actors.append(actor)

    def _add_floor(self) -> None:
        """Floor at ``scene.floor`` (the top of the bottom wall; the walls on every side are as thick) and the
        outline of the region particles can occupy."""
        lo = self.scene.floor
        hi = 1.0 - lo
        if self.dim == 3:
            floor = pv.Plane(center=(0.5, lo, 0.5), direction=(0, 1, 0), i_size=hi - lo, j_size=hi - lo,
                             i_resolution=10, j_resolution=10)
            self.plotter.add_mesh(floor, color="#e4e1db", show_edges=True, edge_color="#c4bdb1", ambient=0.35,
                                  diffuse=0.6, name="floor", reset_camera=False)
            box = pv.Box(bounds=(lo, hi, lo, hi, lo, hi)).outline()
        else:
            band = pv.Box(bounds=(-0.02, 1.02, -0.02, lo, PLANE_Z - SLAB_DEPTH, PLANE_Z - SLAB_DEPTH / 2))
            self.plotter.add_mesh(band, color="#cbc3b4", lighting=False, name="floor", reset_camera=False)
            z = PLANE_Z - SLAB_DEPTH / 2
            ticks = np.array([[(x, lo, z), (x, lo - 0.015, z)] for x in np.arange(0.1, 0.95, 0.1)]).reshape(-1, 3)
            self.plotter.add_mesh(pv.line_segments_from_points(ticks), color="#8f877a", line_width=2, name="ticks",
                                  reset_camera=False)  # every 10 cm, so motion along the floor shows
            box = pv.lines_from_points(np.array([(lo, lo, z), (hi, lo, z), (hi, hi, z), (lo, hi, z), (lo, lo, z)]))
        self.plotter.add_mesh(box, color="#7d8794", line_width=1.5, name="domain", reset_camera=False)

    def _set_camera(self, camera) -> None:
        if camera is not None:
            self.plotter.camera_position = camera
            return
        if self.dim == 3:
            self.plotter.camera_position = [(1.3, 1.15, 2.35), (0.5, 0.35, 0.5), (0.0, 1.0, 0.0)]
            self.plotter.camera.view_angle = 30.0
        else:
            aspect = self.window_size[0] / self.window_size[1]
            self.view_2d((0.5, 0.5), 0.53 * max(1.0, 1.0 / aspect))

    def view_2d(self, center: Sequence[float], half_height: float) -> None:
        """Look straight along -z at the x-y plane with a parallel projection, centered on
        ``center`` (x, y) and showing ``half_height`` world units above and below it."""
        cx, cy = float(center[0]), float(center[1])
        self.plotter.camera_position = [(cx, cy, PLANE_Z + 3.0), (cx, cy, PLANE_Z), (0.0, 1.0, 0.0)]
        self.plotter.enable_parallel_projection()
        self.plotter.camera.parallel_scale = float(half_height)
        self._resize_points()

    # ------------------------------------------------------------------ extra geometry
    def add_points(self, points, color=(0.2, 0.2, 0.2), name: str = "points", opacity: float = 0.3,
                   radius: float | None = None):
        """Draw fixed points (e.g. a target shape) as small translucent spheres.

        Args:
            points: (m, dim) positions in the scene's coordinates.
            color: any color (see ``colors``).
            name: actor name; adding again with the same name replaces the points.
            opacity: 0-1.
            radius: sphere radius in world units (default half a particle's).
        """
        cloud = pv.PolyData(embed(points, self.dim))
        rgb = _rgb255(color) / 255.0
        actor = self.plotter.add_mesh(cloud, color=rgb, style="points", render_points_as_spheres=True,
                                      opacity=float(opacity), point_size=3, name=name, reset_camera=False)
        self._extra[name] = (actor, 0.5 * self.particle_radius if radius is None else float(radius))
        self._resize_points()
        return actor

    def add_goal(self, mesh, name: str = "goal", color=GOAL_COLOR, opacity: float = GOAL_OPACITY, **kwargs):
        """Draw a task's goal (a target shape, region, pattern or line): ``mesh`` (render
        coordinates) in a translucent goal color, with extra ambient light so it reads from every
        side. Adding again with the same ``name`` replaces it; an empty mesh removes it.
        Returns the actor (``None`` for an empty mesh)."""
        if not 0.0 < float(opacity) <= 1.0:
            raise ValueError(f"opacity must be in (0, 1], got {opacity!r}")
        if mesh.n_points == 0:
            self.plotter.remove_actor(name, render=False)
            return None
        kwargs.setdefault("smooth_shading", True)
        kwargs.setdefault("ambient", 0.45)
        kwargs.setdefault("diffuse", 0.6)
        kwargs.setdefault("specular", 0.2)
        return self.plotter.add_mesh(mesh, color=tuple(_rgb255(color) / 255.0), opacity=float(opacity), name=name,
                                     reset_camera=False, **kwargs)

    def add_mesh(self, mesh, **kwargs):
        """Add any PyVista mesh in render coordinates (2D scenes live in the plane z = 0.5);
        keyword arguments go to ``pyvista.Plotter.add_mesh``. Returns the actor."""
        kwargs.setdefault("reset_camera", False)
        return self.plotter.add_mesh(mesh, **kwargs)

    def _hide_inactive(self) -> None:
        """Hide the particles an emitter has not emitted yet (:meth:`physim.Scene.particle_active`):
        their colors get alpha 0 (the colors become RGBA while any particle is inactive)."""
        active = np.asarray(self.scene.particle_active())
        rgb = np.asarray(self.particles.point_data["rgb"])
        if active.all() and rgb.shape[1] == 3:
            return
        alpha = np.where(active, 255, 0).astype(np.uint8)
        self.particles.point_data["rgb"] = np.concatenate([rgb[:, :3], alpha[:, None]], axis=1)

    def set_particle_colors(self, rgb) -> None:
        """Per-particle colors for the next frames: (n, 3), floats in 0-1 or integers in
        0-255; ``None`` goes back to the material colors."""
        if self.particles is None:
            raise ValueError("the scene has no MPM particles to color")
        if rgb is None:
            self.particles.point_data["rgb"] = self.palette[np.asarray(self.scene.particle_materials())]
            self._hide_inactive()
            return
        c = np.asarray(rgb)
        if c.shape != (self.particles.n_points, 3):
            raise ValueError(f"particle colors must have shape ({self.particles.n_points}, 3), got {c.shape}")
        if np.issubdtype(c.dtype, np.floating):
            c = c * 255.0
        self.particles.point_data["rgb"] = np.clip(np.round(c), 0, 255).astype(np.uint8)
        self._hide_inactive()

    # ------------------------------------------------------------------ per frame
    def pixels_per_unit(self) -> float:
        """Screen pixels per world unit at the camera's focal point."""
        cam = self.plotter.camera
        height = self.plotter.window_size[1]
        if cam.parallel_projection:
            return height / (2.0 * cam.parallel_scale)
        dist = float(np.linalg.norm(np.subtract(cam.position, cam.focal_point)))
        return height / (2.0 * dist * math.tan(math.radians(cam.view_angle) / 2.0))

    def _resize_points(self) -> None:
        ppu = self.pixels_per_unit()
        if self.particle_actor is not None:
            self.particle_actor.prop.point_size = max(1.0, 2.0 * self.particle_radius * ppu)
        if self.node_actor is not None:
            self.node_actor.prop.point_size = max(1.0, 2.0 * self.node_radius * ppu)
        for actor, radius in self._extra.values():
            actor.prop.point_size = max(1.0, 2.0 * radius * ppu)

    def sync(self) -> None:
        """Copy the scene's particle, node, FEM node and shell vertex positions and tool poses into the actors
        (no render)."""
        state = self.scene.get_state()  # one read of the device state (particles, nodes, tool poses)
        if self.particles is not None:
            x = state["mpm.x"]
            self.particles.points = embed(x, self.dim)
            if self.color_fn is not None:
                self.set_particle_colors(self.color_fn(x))
            self._hide_inactive()
        if self.nodes is not None:
            pts = embed(state["springs.x"], self.dim)
            self.nodes.points = pts
            self.springs.points = pts.copy()
        if self.fem is not None:
            self.fem.points = embed(np.asarray(state["fem.x"])[: self._fem_n], self.dim)
        if self.shells:
            x = np.asarray(state["shell.x"], dtype=np.float64)
            for sheet, sl in zip(self.shells, self._shell_slices, strict=True):
                sheet.points = x[sl]
        for i, actor in enumerate(self.tool_actors):
            actor.user_matrix = pose_matrix(state["tools.pos"][i], state["tools.rot"][i], self.dim)
        self._resize_points()
        self.plotter.renderer.ResetCameraClippingRange()  # nothing that moved gets clipped

    def frame(self) -> np.ndarray:
        """Render the current state; returns an (H, W, 3) uint8 image."""
        self.sync()
        self.plotter.render()
        img = self.plotter.screenshot(return_img=True)
        return np.ascontiguousarray(np.asarray(img)[..., :3], dtype=np.uint8)

    # ------------------------------------------------------------------ interactive
    @property
    def is_open(self) -> bool:
        """Whether an interactive window is showing (False off screen, before show, after close)."""
        return (self._shown and not self._closed and self.plotter is not None
                and getattr(self.plotter, "render_window", None) is not None)

    def show(self, on_tick: Callable[[], object] | None = None, interval_ms: int = 30, block: bool = True,
             title: str = "physim") -> None:
        """Open an interactive window.

        Args:
            on_tick: called every ``interval_ms`` milliseconds while the window is open
                (typically ``scene.step(action)``); the view is synced and redrawn after it.
                Only with ``block=True``.
            interval_ms: timer period.
            block: ``True``: run the window's event loop until it is closed. ``False``:
                open the window and return; call :meth:`update` in your own loop while
                :attr:`is_open`.
            title: window title.
        """
        if self.off_screen:
            raise RuntimeError("this Renderer renders off screen; create it with off_screen=False to show a window")
        if on_tick is not None and not block:
            raise ValueError("on_tick needs block=True; with block=False call update() in your own loop")
        self.sync()
        self._shown = True
        if not block:
            self.plotter.show(title=title, interactive_update=True, auto_close=False)
            self.plotter.iren.add_observer("ExitEvent", lambda *_: self._mark_closed())
            return
        if on_tick is not None:
            def tick(_step):
                if self._closed:
                    return
                on_tick()
                self.sync()
                self.plotter.render()

            self.plotter.add_timer_event(max_steps=2**31 - 1, duration=int(interval_ms), callback=tick)
        self.plotter.show(title=title, auto_close=False)
        self._closed = True

    def _mark_closed(self) -> None:
        self._closed = True

    def update(self) -> None:
        """Sync the actors with the scene and redraw; in a non-blocking window also
        process pending window events (keys, mouse)."""
        self.sync()
        if self.is_open:
            self.plotter.update(force_redraw=True)
        else:
            self.plotter.render()

    def close(self) -> None:
        """Close the window and free the render context (the renderer is unusable afterwards)."""
        self._closed = True
        if self.plotter is None:
            return
        self.plotter.close()
        self.plotter.deep_clean()
        # drop the VTK objects now: left to the interpreter's exit, PyVista's finalizers fail noisily
        self.particle_actor = self.node_actor = self.spring_actor = self.fem_actor = None
        self.shell_actors = []
        self.tool_actors = []
        self._extra.clear()
        self.plotter = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

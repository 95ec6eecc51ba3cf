"""physim.render: frames show the particles (in their material color, where they are),
tool meshes appear, move and turn with the tool, videos read back, rollouts,
tool meshes, and the keyboard state the demos use."""

import colorsys
import math

import imageio.v3 as iio
import numpy as np
import pytest

pv = pytest.importorskip("pyvista")

import physim as ps  # noqa: E402
from physim.render import MATERIAL_COLORS, Renderer, material_color, record_video, render_rollout  # noqa: E402
from physim.render.interactive import KeyControl, scripted_keys  # noqa: E402
from physim.render.meshes import pose_matrix, quaternion_matrix, tool_mesh  # noqa: E402
from physim.render.renderer import FEM_COLORS, SPRING_COLORS  # noqa: E402

pv.OFF_SCREEN = True
SIZE = (320, 240)


def _hue_mask(img: np.ndarray, rgb, tol_deg: float = 14.0, min_sat: float = 0.35) -> np.ndarray:
    """Pixels whose hue is within tol of the color's hue and that are clearly saturated
    (the light gray-blue background and gray tools are not)."""
    f = img.astype(np.float64) / 255.0
    mx, mn = f.max(axis=2), f.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    d = np.maximum(mx - mn, 1e-9)
    hue = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4)) * 60.0
    h0 = colorsys.rgb_to_hsv(*rgb)[0] * 360.0
    dh = np.abs((hue - h0 + 180.0) % 360.0 - 180.0)
    return (sat > min_sat) & (dh < tol_deg)


def _to_pixel(renderer: Renderer, point) -> np.ndarray:
    """(column, row) of a scene point in the renderer's image."""
    p = np.zeros(3)
    p[: renderer.dim] = point
    if renderer.dim == 2:
        p[2] = 0.5
    ren = renderer.plotter.renderer
    ren.SetWorldPoint(*p, 1.0)
    ren.WorldToDisplay()
    x, y, _ = ren.GetDisplayPoint()
    return np.array([x, renderer.plotter.window_size[1] - 1 - y])


def _scene(dim, material, tool=None, center=None, size=0.16):
    """A small scene with the engine layout of conftest.small_scene (grid 32 / 16, at most
    256 particles, K = 8, 8 steps), so it reuses the kernels the other tests compiled."""
    res = 32 if dim == 2 else 16
    scene = ps.Scene(dim=dim, grid_res=res, substeps_per_step=4, dt=2e-4, checkpoint_every=8, specialize=False)
    center = center or [0.35, 0.3, 0.5][:dim]
    scene.add_body(ps.Box(center=center, size=[size] * dim), material)
    if tool is not None:
        scene.add_tool(tool)
    scene.build(max_steps=8)
    assert scene.n_particles <= 256
    return scene


@pytest.mark.parametrize("dim", [2, 3])
def test_frame_shows_particles_in_material_color_where_they_are(dim):
    scene = _scene(dim, ps.Plasticine())
    with Renderer(scene, window_size=SIZE, off_screen=True) as r:
        img = r.frame()
        assert img.shape == (SIZE[1], SIZE[0], 3) and img.dtype == np.uint8
        clay = _hue_mask(img, MATERIAL_COLORS["Plasticine"])
        r.particle_actor.visibility = False
        empty = r.frame()
        r.particle_actor.visibility = True
        center_px = _to_pixel(r, scene.particle_positions().mean(axis=0))
    assert clay.sum() > 600  # a visible blob of clay-colored pixels (the box is about 36 px wide) ...
    assert _hue_mask(empty, MATERIAL_COLORS["Plasticine"]).sum() < 0.001 * clay.size  # ... that are the particles
    rows, cols = np.nonzero(clay)
    assert np.hypot(cols.mean() - center_px[0], rows.mean() - center_px[1]) < 0.05 * SIZE[0]
    assert img.std() > 5  # not a blank image


def test_colors_per_material_and_override():
    scene = ps.Scene(dim=2, grid_res=32, substeps_per_step=4, dt=2e-4, checkpoint_every=8, specialize=False)
    scene.add_body(ps.Box(center=(0.3, 0.3), size=(0.12, 0.12)), ps.Fluid())
    scene.add_body(ps.Box(center=(0.7, 0.3), size=(0.12, 0.12)), ps.Elastic())
    scene.build(max_steps=8)
    with Renderer(scene, window_size=SIZE, off_screen=True) as r:
        img = r.frame()
        left, right = _to_pixel(r, (0.3, 0.3))[0], _to_pixel(r, (0.7, 0.3))[0]
    with Renderer(scene, window_size=SIZE, off_screen=True, colors={1: (255, 0, 255)}) as r:
        recolored = r.frame()
    for name, x in (("Fluid", left), ("Elastic", right)):
        mask = _hue_mask(img, MATERIAL_COLORS[name])
        assert mask.sum() > 200
        assert abs(np.nonzero(mask)[1].mean() - x) < 0.05 * SIZE[0]
    assert _hue_mask(recolored, (1.0, 0.0, 1.0)).sum() > 200  # the override paints material 1 magenta
    assert _hue_mask(recolored, MATERIAL_COLORS["Elastic"]).sum() < 20
    assert material_color(ps.Snow()) == MATERIAL_COLORS["Snow"]


@pytest.mark.parametrize("dim", [2, 3])
def test_tool_mesh_appears_moves_and_turns(dim):
    pos = np.array([0.65, 0.5, 0.5][:dim])
    tool = ps.CapsuleTool(position=pos, radius=0.03, half_length=0.08)  # axis along y: tall
    scene = _scene(dim, ps.Elastic(), tool=tool, center=[0.25, 0.25, 0.5][:dim], size=0.1)
    quarter_turn = np.array([[math.pi / 2, 0, 0, 0]]) if dim == 2 else np.array(
        [[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]])
    with Renderer(scene, window_size=SIZE, off_screen=True) as r:
        r.tool_actors[0].prop.color = (0.0, 0.8, 0.9)  # a hue nothing else in the picture has
        masks, expected = [], []
        for p, rot in ((pos, None), (pos + np.array([0.15, 0.1, 0.0][:dim]), None), (pos, quarter_turn)):
            scene.reset({"tools.pos": p[None], "tools.rot": rot})
            masks.append(_hue_mask(r.frame(), (0.0, 0.8, 0.9)))
            expected.append(_to_pixel(r, p))
        r.tool_actors[0].visibility = False
        hidden = _hue_mask(r.frame(), (0.0, 0.8, 0.9))
    assert hidden.sum() == 0
    boxes = []
    for mask, px in zip(masks, expected, strict=True):
        rows, cols = np.nonzero(mask)
        assert len(rows) > 100
        assert np.hypot(cols.mean() - px[0], rows.mean() - px[1]) < 0.04 * SIZE[0]  # drawn where it is
        boxes.append((np.ptp(cols), np.ptp(rows)))
    assert expected[1][0] - expected[0][0] > 20 and expected[1][1] < expected[0][1] - 10  # moved right and up
    (w0, h0), (w2, h2) = boxes[0], boxes[2]
    assert h0 > 1.8 * w0 and w2 > 1.8 * h2  # the upright capsule lies down after a quarter turn about z


def test_pose_matrix_follows_the_solver_convention():
    q = np.array([0.9, 0.1, -0.3, 0.2])
    q /= np.linalg.norm(q)
    R = quaternion_matrix(q)
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
    # rotating (1, 0, 0) by a quarter turn about z gives (0, 1, 0)
    qz = [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]
    assert np.allclose(quaternion_matrix(qz) @ [1, 0, 0], [0, 1, 0])
    m2 = pose_matrix([0.2, 0.3], [math.pi / 2, 0, 0, 0], 2)
    assert np.allclose(m2 @ [1, 0, 0, 1], [0.2, 1.3, 0.5, 1])


@pytest.mark.parametrize("dim", [2, 3])
def test_tool_meshes_are_closed_with_the_right_size(dim):
    depth = 0.04  # 2D tools are slabs this thick
    tools = [
        (ps.SphereTool(position=[0.5] * dim, radius=0.05), (4 / 3 * math.pi * 0.05**3, math.pi * 0.05**2 * depth)),
        (ps.BoxTool(position=[0.5] * dim, half_extents=[0.05, 0.03, 0.04][:dim]), (8 * 0.05 * 0.03 * 0.04,
                                                                                    4 * 0.05 * 0.03 * depth)),
        (ps.CapsuleTool(position=[0.5] * dim, radius=0.03, half_length=0.06),
         (math.pi * 0.03**2 * 0.12 + 4 / 3 * math.pi * 0.03**3, (0.06 * 0.12 + math.pi * 0.03**2) * depth)),
        (ps.CylinderTool(position=[0.5] * dim, radius=0.04, half_height=0.07),
         (math.pi * 0.04**2 * 0.14, 0.08 * 0.14 * depth)),
        (ps.CupTool(position=[0.5] * dim, radius=0.06, half_height=0.08, thickness=0.02),
         (math.pi * (0.08**2 * 0.16 - 0.06**2 * 0.14), (0.16 * 0.16 - 0.12 * 0.14) * depth)),
    ]
    for tool, volumes in tools:
        mesh = tool_mesh(tool)
        assert mesh.is_manifold, tool.shape
        assert mesh.volume == pytest.approx(volumes[0 if dim == 3 else 1], rel=0.03), tool.shape
        outward = mesh.compute_normals(cell_normals=True, point_normals=False, auto_orient_normals=False)
        centers = outward.cell_centers().points
        # normals point away from the axis / center on the outside of every tool but the cup's cavity
        if tool.shape != "cup":
            assert ((outward["Normals"] * centers).sum(axis=1) > 0).mean() > 0.95, tool.shape


def test_record_video_mp4_and_gif(tmp_path):
    frames = []
    for k in range(12):
        f = np.full((49, 65, 3), 230, np.uint8)  # odd size: the MP4 writer pads to even
        f[10:30, 3 + 4 * k: 13 + 4 * k] = (200, 40, 40)
        frames.append(f)
    mp4 = record_video(frames, tmp_path / "sub" / "clip.mp4", fps=10)
    back = iio.imread(mp4)
    assert back.shape[0] == 12 and back.shape[1:3] == (50, 66)
    assert np.abs(back[5, :49, :65].astype(int) - frames[5]).mean() < 12  # lossy, but the same picture
    gif = record_video((f for f in frames), tmp_path / "clip.gif", fps=10)  # a generator streams
    back = iio.imread(gif)
    assert back.shape[0] == 12 and back.shape[1:3] == (49, 65)
    assert np.abs(back[7][..., :3].astype(int) - frames[7]).mean() < 12
    with pytest.raises(ValueError):
        record_video([], tmp_path / "empty.mp4")


def test_render_rollout_steps_the_scene_and_films_it(tmp_path):
    tool = ps.SphereTool(position=(0.6, 0.3), radius=0.05)
    scene = _scene(2, ps.Elastic(), tool=tool)
    actions = np.tile([1.0, 0.0, 0.0], (6, 1))
    frames = render_rollout(scene, actions, tmp_path / "roll.mp4", every=2, window_size=SIZE)
    assert len(frames) == 4 and frames[0].shape == (SIZE[1], SIZE[0], 3)
    assert iio.imread(tmp_path / "roll.mp4").shape[0] == 4
    # it really stepped: the tool moved 6 steps at 1 m/s, and the frames differ
    moved = scene.tool_poses()[0][0, 0] - 0.6
    assert moved == pytest.approx(6 * scene.substeps_per_step * scene.dt, rel=1e-6)
    assert np.abs(frames[-1].astype(int) - frames[0]).sum() > 0


def test_add_points_draws_a_translucent_target():
    scene = _scene(2, ps.Elastic())
    with Renderer(scene, window_size=SIZE, off_screen=True) as r:
        before = r.frame()
        target = np.stack(np.meshgrid(np.linspace(0.6, 0.8, 12), np.linspace(0.6, 0.8, 12)), -1).reshape(-1, 2)
        r.add_points(target, color=(1.0, 0.0, 1.0), name="target", opacity=0.5)
        after = r.frame()
        px = _to_pixel(r, (0.7, 0.7))
    mask = _hue_mask(after, (1.0, 0.0, 1.0), min_sat=0.15)
    assert _hue_mask(before, (1.0, 0.0, 1.0), min_sat=0.15).sum() == 0 and mask.sum() > 100
    rows, cols = np.nonzero(mask)
    assert np.hypot(cols.mean() - px[0], rows.mean() - px[1]) < 0.04 * SIZE[0]
    assert after[mask].max(axis=1).mean() < 250  # translucent: blended with the background, not pure magenta


def test_mass_spring_scene_draws_nodes_and_springs_where_they_are():
    """A scene with only a mass-spring body (no particles): its nodes are dark spheres and its
    actuated springs muscle-red lines, both drawn where the state says, and moving the body
    moves them. Layout as tests/test_springs.py's springs-only scenes (shared kernels)."""
    body = ps.MassSpring.grid((0.3, 0.2), (0.5, 0.3), (2, 1), mass=2e-3, stiffness=50.0)
    body.actuator[:4] = 0  # the four lattice edges along x: actuated
    scene = ps.Scene(dim=2, grid_res=32, dt=2e-4, substeps_per_step=4, gravity=(0.0, 0.0), checkpoint_every=8)
    scene.add_mass_spring(body)
    scene.build(max_steps=8)
    assert scene.n_particles == 0 and "mpm.x" not in scene.get_state()
    red = SPRING_COLORS["actuated"]
    with Renderer(scene, window_size=SIZE, off_screen=True) as r:
        assert r.particles is None and r.nodes.n_points == 6 and r.springs.n_cells == body.n_springs
        frames, centers = [], []
        for shift in (0.0, 0.3):
            scene.reset({"springs.x": body.vertices + [shift, 0.2]})
            frames.append(r.frame())
            centers.append(_to_pixel(r, body.vertices.mean(axis=0) + [shift, 0.2]))
        r.node_actor.visibility = r.spring_actor.visibility = False
        hidden = r.frame()
    for img, px in zip(frames, centers, strict=True):
        dark = img.max(axis=2) < 100  # the nodes (background, floor and outline are light)
        lines = _hue_mask(img, red)
        assert dark.sum() > 100 and lines.sum() > 60
        for mask in (dark, lines):
            rows, cols = np.nonzero(mask)
            assert np.hypot(cols.mean() - px[0], rows.mean() - px[1]) < 0.04 * SIZE[0]
    assert (hidden.max(axis=2) < 100).sum() == 0 and _hue_mask(hidden, red).sum() == 0
    assert centers[1][0] - centers[0][0] > 50  # moved right: the frames followed the state


@pytest.mark.filterwarnings("ignore::physim.parts.fem.Subcycling")
def test_fem_pad_pressed_by_a_sphere_is_drawn_where_it_is():
    """A 2 x 2 x 1 cm flat pad (FEM only, no particles) pressed 1 mm by a sphere for 8 steps: its
    boundary surface is drawn in the gel color around the pad's projected centre, the faces
    on its rigid back are the mount color, and moving ``fem.x`` 2 cm along x moves the drawing."""
    c = np.array([0.5, 0.3, 0.5])
    mesh = ps.flat_pad(center=c, size=(0.02, 0.02), thickness=0.01, resolution=(4, 2, 4))
    scene = ps.Scene(dim=3, grid_res=32, dt=1e-4, substeps_per_step=4, gravity=(0.0, 0.0, 0.0), checkpoint_every=8)
    scene.add_tool(ps.SphereTool(position=c + [0.002, 0.005 + 0.008 + 1e-4, 0.0], radius=0.008))
    scene.add_fem(ps.FEMBody(mesh, E=5e4, nu=0.4, density=1000.0, beta=2e-5))
    scene.build(max_steps=8)
    act = np.zeros(scene.action_dim)
    act[1] = -1e-3 / (8 * 4 * 1e-4)  # 1 mm down in 8 steps
    scene.forward(np.repeat(act[None], 8, axis=0), requires_grad=False)
    x = scene.get_state()["fem.x"][: mesh.n_vertices]
    top = np.isclose(mesh.vertices[:, 1], c[1] + 0.005)
    assert (mesh.vertices[top, 1] - x[top, 1]).max() > 3e-4 and np.isfinite(x).all()  # dented
    cam = [(0.5, 0.36, 0.56), (0.5, 0.3, 0.5), (0.0, 1.0, 0.0)]
    gel = FEM_COLORS["gel"]
    with Renderer(scene, window_size=SIZE, off_screen=True, camera=cam) as r:
        assert r.particles is None and r.fem.n_points == mesh.n_vertices
        assert r.fem.n_cells == len(mesh.surface_faces()) == 2 * 2 * (4 * 2 + 4 * 2 + 4 * 4)
        mount = (r.fem.cell_data["rgb"] != np.round(np.array(gel) * 255)).any(axis=1)
        assert mount.sum() == 2 * 4 * 4  # the back's triangles
        r.tool_actors[0].visibility = False
        frames, centers = [], []
        for shift in (0.0, 0.02):
            scene.reset({"fem.x": x + [shift, 0.0, 0.0]})
            frames.append(r.frame())
            centers.append(_to_pixel(r, x.mean(axis=0) + [shift, 0.0, 0.0]))
            assert np.allclose(r.fem.points, x + [shift, 0.0, 0.0], atol=1e-6)
        r.fem_actor.visibility = False
        hidden = r.frame()
    assert _hue_mask(hidden, gel).sum() == 0
    for img, px in zip(frames, centers, strict=True):
        mask = _hue_mask(img, gel, min_sat=0.2)
        assert mask.sum() > 2000  # the pad fills a good part of the 320 x 240 frame
        rows, cols = np.nonzero(mask)
        assert np.hypot(cols.mean() - px[0], rows.mean() - px[1]) < 0.06 * SIZE[0]
    assert centers[1][0] - centers[0][0] > 40  # moved right: the drawing followed the state


def test_renderer_needs_a_built_scene_and_rejects_bad_colors():
    scene = ps.Scene(dim=2, grid_res=32, substeps_per_step=4, dt=2e-4, checkpoint_every=8, specialize=False)
    scene.add_body(ps.Box(center=(0.5, 0.3), size=(0.1, 0.1)), ps.Elastic())
    with pytest.raises(RuntimeError, match="build"):
        Renderer(scene, off_screen=True)
    scene.build(max_steps=8)
    with pytest.raises(ValueError, match="material index"):
        Renderer(scene, off_screen=True, colors={3: "red"})


def test_key_control_held_keys_axes_and_window_events():
    keys = KeyControl(grace_s=0.05)
    presses = []
    keys.on_key("Up", lambda: presses.append("Up"))
    keys.press("D")
    assert keys.held("d") and keys.axis(("Left", "a"), ("Right", "d")) == 1.0
    keys.release("d")  # auto-repeat grace: still held right after the release
    assert keys.held("d")
    import time

    time.sleep(0.08)
    assert not keys.held("d") and keys.axis("a", "d") == 0.0
    keys.hold_only({"a", "Up"})
    assert keys.down == {"a", "Up"} and keys.axis("a", "d") == -1.0 and presses == ["Up"]
    keys.hold_only(set())
    assert keys.down == set()
    script = [(0, {"q"}), (5, {"d"}), (9, set())]
    assert [scripted_keys(script, f) for f in (0, 4, 5, 9, 30)] == [{"q"}, {"q"}, {"d"}, set(), set()]
    assert scripted_keys(script, 12, period=10) == {"q"}
    # events of the (off-screen) window reach the control; VTK's 'w' wireframe shortcut is off
    scene = _scene(2, ps.Elastic())
    with Renderer(scene, window_size=SIZE, off_screen=True) as r:
        ctl = KeyControl(r)
        iren = r.plotter.iren.interactor
        for kind, key in (("KeyPressEvent", "Right"), ("KeyPressEvent", "w"), ("CharEvent", "w")):
            iren.SetKeySym(key)
            iren.SetKeyCode(key[0] if len(key) == 1 else "\0")
            iren.InvokeEvent(kind)
        assert ctl.held("Right") and ctl.held("w")
        assert r.particle_actor.prop.style.lower() == "points"
        assert set(ctl._callbacks) == {"Escape"}  # only Escape quits: q and e are free for the demos
        assert not r.plotter.iren._key_press_event_callbacks.get("q")  # PyVista's own 'q' (close) is gone

        iren.SetKeySym("Right")
        iren.InvokeEvent("KeyReleaseEvent")
        time.sleep(0.1)
        assert not ctl.held("Right")


_HEADLESS_RENDER = """
import physim as ps
from physim.render import Renderer
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

ps.init(arch="cpu", precision="f32", fast_compile=True, verbose=False)
scene = ps.Scene(dim=2, grid_res=32, substeps_per_step=4)
scene.add_body(ps.Box(center=(0.5, 0.3), size=(0.1, 0.1)), ps.Elastic())
scene.build(max_steps=1)
with Renderer(scene, window_size=(160, 120), off_screen=True) as r:
    print("frame std", float(r.frame().std()))
reader = vtkXMLPolyDataReader()  # a real VTK error after the renderer: it must still be printed
reader.SetFileName("/nonexistent/physim-headless-check.vtp")
reader.Update()
"""


def test_offscreen_rendering_without_display_prints_no_x_server_warning():
    """Off screen with no X display VTK used to try an X window first and print
    ``bad X server connection. DISPLAY=`` on every run; the Renderer now asks for an EGL
    window directly. VTK's real errors still reach stderr (the unreadable file below)."""
    import ctypes.util
    import os
    import sys

    from subproc import run_python

    if not sys.platform.startswith("linux") or ctypes.util.find_library("EGL") is None:
        pytest.skip("needs Linux with libEGL (elsewhere VTK does not try an X window first)")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "VTK_DEFAULT_OPENGL_WINDOW")}
    r = run_python(["-c", _HEADLESS_RENDER], timeout=300, env={**env, "PYVISTA_OFF_SCREEN": "true"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.split("frame std")[-1]) > 5.0  # it rendered a picture
    assert "bad X server connection" not in r.stderr, r.stderr[-3000:]
    assert "Error opening file /nonexistent/physim-headless-check.vtp" in r.stderr  # errors are not hidden

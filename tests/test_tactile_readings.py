"""physim.tactile: the readings of a vision-based tactile sensor as torch functions.

No simulation: the rest mesh is deformed analytically (a spherical imprint, rigid motions).
"""

import math

import numpy as np
import pytest
import torch

from physim.meshes import TetMesh, dome_gel, flat_pad
from physim.tactile import TactileSensor, quat_to_matrix, render_reading, save_png, write_video

F64 = torch.float64


def small_pad(**kw):
    """A coarse pad (5 x 2 x 5 nodes) centred at the origin, gel facing +y."""
    return flat_pad(center=(0.0, 0.0, 0.0), size=(0.02, 0.02), thickness=0.004, resolution=(4, 1, 4), **kw)


def quat_mul(a, b):
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def random_quat(rng):
    q = rng.normal(size=4)
    return q / np.linalg.norm(q)


def wobble(mesh, sensor, rng, amp=3e-4):
    """The rest mesh with every free node moved by up to ``amp`` m (a generic deformed state)."""
    X = mesh.vertices.copy()
    free = np.setdiff1d(np.arange(len(X)), mesh.fixed)
    X[free] += amp * rng.uniform(-1, 1, size=(len(free), 3))
    return X


# ------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("camera", ["pinhole", "fisheye"])
def test_gradcheck_markers_depth_image(camera):
    rng = np.random.default_rng(0)
    mesh = small_pad()
    s = TactileSensor(mesh, camera=camera, image_size=(10, 10), markers=(3, 3))
    # the centre marker of a 3 x 3 grid on a centred pad sits on the optical axis (to round-off)
    Y = s.to_camera(torch.tensor(mesh.vertices))
    centre = (Y[torch.tensor(np.array(s.marker_nodes))] * torch.tensor(np.array(s.marker_weights))[..., None]).sum(1)[4]
    assert abs(float(centre[0])) < 1e-15 and abs(float(centre[1])) < 1e-15
    X = wobble(mesh, s, rng)
    X[s.marker_nodes[4], 0::2] = mesh.vertices[s.marker_nodes[4], 0::2]  # keep that marker on the axis
    x = torch.tensor(X, requires_grad=True)
    pos = torch.tensor([0.001, -0.002, 0.0005], dtype=F64, requires_grad=True)
    quat = torch.tensor(quat_mul([math.cos(0.05), 0, math.sin(0.05), 0], [1.0, 0, 0, 0]), requires_grad=True)
    # the mount moved with the gel: apply the same small motion to x
    with torch.no_grad():
        x.copy_(x @ quat_to_matrix(quat).T + pos)
    Y = s.to_camera(x, (pos, quat)).detach()
    centre = (Y[torch.tensor(np.array(s.marker_nodes))] * torch.tensor(np.array(s.marker_weights))[..., None]).sum(1)[4]
    assert abs(float(centre[0])) < 1e-15 and abs(float(centre[1])) < 1e-15 and float(centre[2]) > 0
    for fn in (s.markers, s.marker_displacement, s.depth, s.image):
        assert torch.autograd.gradcheck(lambda x, p, q, fn=fn: fn(x, (p, q)), (x, pos, quat), eps=1e-7, atol=1e-6,
                                        rtol=1e-5), fn.__name__


def test_gradcheck_total_force():
    rng = np.random.default_rng(1)
    s = TactileSensor(small_pad(), image_size=(8, 8), markers=(2, 2))
    f = torch.tensor(rng.normal(size=(s.n_nodes + 3, 3)), requires_grad=True)  # a second body follows
    quat = torch.tensor(random_quat(rng), requires_grad=True)
    pos = torch.zeros(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, p, q: s.total_force(f, (p, q)), (f, pos, quat))
    assert torch.autograd.gradcheck(lambda f, p, q: s.force_field(f, (p, q)), (f, pos, quat), fast_mode=True)


def test_fisheye_gradient_exactly_on_axis():
    s = TactileSensor(small_pad(), camera="fisheye", image_size=(16, 16), markers=(3, 3))
    for z in (0.01, 0.03):
        Y = torch.tensor([0.0, 0.0, z], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(s.project, (Y,), eps=1e-8)
        uv = s.project(Y)
        J = torch.stack([torch.autograd.grad(uv[k], Y, retain_graph=True)[0] for k in range(2)])
        # on the axis theta / rho -> 1 / z: du/dx = dv/dy = f / z, nothing else
        expect = torch.tensor([[s.focal / z, 0, 0], [0, s.focal / z, 0]], dtype=F64)
        assert torch.allclose(J, expect, rtol=1e-14, atol=1e-10), J
        assert torch.isfinite(J).all()
    # series branch meets atan2 branch continuously (value and gradient) at t = rho / z = 0.01
    z = 0.02
    for t in (0.01 * (1 - 1e-9), 0.01 * (1 + 1e-9)):
        Y = torch.tensor([t * z, 0.0, z], dtype=F64, requires_grad=True)
        u = s.project(Y)[0]
        (g,) = torch.autograd.grad(u, Y)
        assert abs(float(u.detach()) - (s.principal_point[0] + s.focal * math.atan2(t * z, z))) < 1e-12
        assert abs(float(g[0]) - s.focal * z / (z * z + (t * z) ** 2)) < 1e-9 * s.focal / z


def test_float32_keeps_autograd():
    mesh = small_pad()
    s = TactileSensor(mesh, image_size=(8, 8), markers=(2, 2))
    x = torch.tensor(mesh.vertices, dtype=torch.float32, requires_grad=True)
    out = s.image(x).sum() + s.depth(x).sum() + s.markers(x).sum()
    assert out.dtype == torch.float32
    out.backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert s.marker_displacement(x).abs().max() < 1e-4  # f32 round-off of pixels ~30


# ------------------------------------------------------------------------- rest state
@pytest.mark.parametrize("camera", ["pinhole", "fisheye"])
@pytest.mark.parametrize("which", ["pad", "dome"])
def test_rest_mesh_reads_nothing(camera, which):
    rng = np.random.default_rng(2)
    pos0, q0 = rng.normal(size=3) * 0.1, random_quat(rng)
    base = flat_pad(cell=0.005) if which == "pad" else dome_gel()
    # the same gel given at a non-identity mount pose
    R0 = quat_to_matrix(torch.tensor(q0)).numpy()
    mesh = TetMesh(base.vertices @ R0.T + pos0, base.tets, base.fixed)
    s = TactileSensor(mesh, camera=camera, pose=(pos0, q0), image_size=(24, 24))
    x = torch.tensor(mesh.vertices)
    assert s.n_markers > 0 and len(s.pixel_index) > 0
    assert torch.equal(s.marker_displacement(x), torch.zeros(s.n_markers, 2, dtype=F64))
    assert s.depth(x).abs().max() <= 1e-15
    assert (s.image(x) - torch.tensor(s.background)).abs().max() <= 1e-12
    assert torch.equal(s.total_force(torch.zeros(s.n_nodes, 3, dtype=F64)), torch.zeros(3, dtype=F64))
    # the background is the flat face's shading: uniform grey on the pad
    if which == "pad":
        covered = s.background.reshape(-1, 3)[s.pixel_index]
        assert np.ptp(covered) < 1e-12
        # dome seen from inside: normals tilt away from the axis, so the background is not uniform
    else:
        assert np.ptp(s.background.reshape(-1, 3)[s.pixel_index]) > 0.05


def test_total_force_signs():
    mesh = flat_pad()  # gel faces +y
    s = TactileSensor(mesh)
    f = torch.zeros(s.n_nodes, 3, dtype=F64)
    top = s.sensing_nodes
    f[top, 1] = -2.0 / len(top)  # 2 N pressing down into the gel
    f[top, 0] = 0.5 / len(top)   # 0.5 N along world +x = camera x
    f[top, 2] = 0.25 / len(top)  # world +z = camera -y
    F = s.total_force(f)
    assert torch.allclose(F, torch.tensor([0.5, -0.25, 2.0], dtype=F64), atol=1e-14)


# ------------------------------------------------------------------------- spherical imprint
R_SPHERE, DELTA = 0.02, 0.001  # sphere radius and depth (m): contact radius sqrt(2 R d - d^2) = 6.2 mm


def imprint_pad():
    # 20 x 20 mm pad, 1 mm cells: a node at the centre of the face, nodes symmetric under 90 degree turns
    return flat_pad(center=(0.5, 0.2, 0.5), size=(0.02, 0.02), thickness=0.004, cell=0.001)


def cap(r):
    """g(r) = delta - (R - sqrt(R^2 - r^2)): the sphere's surface below the undeformed face (the
    indentation is max(0, g)); defined on the whole pad (r <= 14.2 mm < R)."""
    return DELTA - (R_SPHERE - np.sqrt(R_SPHERE ** 2 - r ** 2))


def pressed(mesh, s):
    X = mesh.vertices.copy()
    c = X[s.sensing_nodes].mean(axis=0)
    r = np.hypot(X[:, 0] - c[0], X[:, 2] - c[2])
    on = np.zeros(len(X), bool)
    on[s.sensing_nodes] = True
    X[:, 1] -= np.where(on, np.maximum(0.0, cap(r)), 0.0)
    return X, c


def interpolation_bound(s, nodes, weights, c):
    """Bound on |f(q) - sum_k w_k f(v_k)| for f = max(0, g) at q = sum_k w_k v_k (rest face points).

    f = g + psi with g concave and psi = max(0, -g) convex, so the error of g is in
    [0, M/2 sum w_k |v_k - q|^2] (Taylor; M = max |g''| = R^2 / (R^2 - r^2)^(3/2) at the
    triangle's largest radius) and that of psi in [-sum w_k psi(v_k), 0] (Jensen; psi >= 0)."""
    V = s.rest_vertices[nodes]  # (P, 3, 3)
    q = (V * weights[..., None]).sum(axis=1)
    rv = np.hypot(V[..., 0] - c[0], V[..., 2] - c[2])
    M = R_SPHERE ** 2 / (R_SPHERE ** 2 - rv.max(axis=1) ** 2) ** 1.5
    smooth = 0.5 * M * (weights * ((V - q[:, None]) ** 2).sum(axis=2)).sum(axis=1)
    kink = (weights * np.maximum(0.0, -cap(rv))).sum(axis=1)
    return np.maximum(smooth, kink), q


def test_spherical_imprint_depth_is_radially_symmetric():
    mesh = imprint_pad()
    s = TactileSensor(mesh, image_size=(65, 65), markers=(9, 9))
    X, c = pressed(mesh, s)
    D = s.depth(torch.tensor(X)).numpy()
    H, W = D.shape
    # peak: the centre pixel looks exactly at the centre node (odd image, even pad resolution)
    assert np.unravel_index(np.argmax(D), D.shape) == (32, 32)
    assert abs(D.max() - DELTA) <= 1e-15
    # depth at each covered pixel is within the stated interpolation bound of the true profile
    bound, q = interpolation_bound(s, s.pixel_nodes, s.pixel_weights, c)
    exact = np.maximum(0.0, cap(np.hypot(q[:, 0] - c[0], q[:, 2] - c[2])))
    err = np.abs(D.reshape(-1)[s.pixel_index] - exact)
    assert (err <= bound + 1e-15).all(), float((err - bound).max())
    # worst at the contact edge (slope jump 0.31 across 1 mm triangles): 0.10 delta measured
    assert err.max() < 0.15 * DELTA
    # exact symmetries of the Kuhn triangulation (all its diagonals are parallel: the half turn
    # and the mirrors along the two diagonals of the square): round-off only (node coordinates
    # are symmetric to 1 ulp; 1e-14 m is 1e-11 of delta). The 90-degree turn maps pixels onto
    # pixels and the node set onto itself, but not the triangle diagonals: the two pixels differ
    # by at most the sum of their interpolation bounds.
    for sym in (np.rot90(D, 2), D.T, D[::-1, ::-1].T):
        assert np.abs(D - sym).max() <= 1e-14
    Bimg = np.zeros(H * W)
    Bimg[s.pixel_index] = bound
    Bimg = Bimg.reshape(H, W)
    for k in (1, 3):
        diff = np.abs(D - np.rot90(D, k))
        assert (diff <= Bimg + np.rot90(Bimg, k) + 1e-15).all()
    assert np.abs(D - np.rot90(D, 1)).max() > 0  # (the bound is not vacuous: the diagonals do show)
    # even image: no pixel on the axis; the peak is within the bound at the pixel nearest the centre
    s2 = TactileSensor(mesh, image_size=(64, 64), markers=(9, 9))
    D2 = s2.depth(torch.tensor(X)).numpy().reshape(-1)
    b2, q2 = interpolation_bound(s2, s2.pixel_nodes, s2.pixel_weights, c)
    k = int(np.argmin(np.hypot(q2[:, 0] - c[0], q2[:, 2] - c[2])))
    peak_exact = cap(np.hypot(q2[k, 0] - c[0], q2[k, 2] - c[2]))
    assert DELTA - D2.max() <= (DELTA - peak_exact) + b2[k] and D2.max() <= DELTA


def test_spherical_imprint_markers_move_radially():
    mesh = imprint_pad()
    s = TactileSensor(mesh, image_size=(65, 65), markers=(9, 9))
    X, c = pressed(mesh, s)
    du = s.marker_displacement(torch.tensor(X)).numpy()
    rel = s.rest_markers - np.array(s.principal_point)
    rad = np.linalg.norm(rel, axis=1)
    moved = np.linalg.norm(du, axis=1) > 1e-12
    assert 8 <= moved.sum() < s.n_markers  # markers inside the contact move, far ones do not
    # pure inward displacement moves a marker along the optical axis, towards the camera: its
    # image moves straight outward (perspective), the tangential component is round-off
    radial = (du * rel).sum(axis=1) / np.maximum(rad, 1e-300)
    tangential = (du[:, 0] * rel[:, 1] - du[:, 1] * rel[:, 0]) / np.maximum(rad, 1e-300)
    off_axis = moved & (rad > 1e-9)
    assert (radial[off_axis] > 0).all()
    assert np.abs(tangential).max() <= 1e-12
    # 90-degree symmetry: the marker grid maps onto itself; per marker the 3D interpolation error
    # (along the axis) is within the stated bound e, which moves its pixel by at most
    # f rho / z^2 * e (pinhole, z >= camera distance - delta)
    e, q = interpolation_bound(s, s.marker_nodes, s.marker_weights, c)
    rho = np.hypot(q[:, 0] - c[0], q[:, 2] - c[2])
    tol = s.focal * rho / (s.camera_distance - DELTA) ** 2 * e + 1e-12
    for i in range(s.n_markers):
        turned = np.array([-rel[i, 1], rel[i, 0]])
        j = int(np.argmin(np.linalg.norm(rel - turned, axis=1)))
        assert np.linalg.norm(rel[j] - turned) < 1e-9
        assert np.linalg.norm(du[j] - np.array([-du[i, 1], du[i, 0]])) <= tol[i] + tol[j]


def test_spherical_imprint_image_and_demo_png(tmp_path):
    mesh = imprint_pad()
    s = TactileSensor(mesh, image_size=(65, 65), markers=(9, 9))
    X, _ = pressed(mesh, s)
    img = s.image(torch.tensor(X)).numpy()
    assert img.min() >= s.ambient - 1e-12 and img.max() <= s.ambient + s.diffuse + 1e-10
    change = np.abs(img - s.background).max(axis=2)
    assert change[32, 32] < 1e-12  # flat bottom of the dent: the background colour
    assert change.max() > 0.1  # a coloured ring on the slopes
    assert change[2, 2] == 0 and change[32, 2] == 0  # far from the dent: exactly the background
    # each colour is brightest on the slope facing its light (azimuths 90, 210, 330 degrees)
    for ch, az in enumerate((90.0, 210.0, 330.0)):
        d = np.array([math.cos(math.radians(az)), math.sin(math.radians(az))])
        u, v = np.meshgrid(np.arange(65) - 32.0, np.arange(65) - 32.0)
        side = (u * d[0] + v * d[1]) > 0
        gain = img[..., ch] - s.background[..., ch]
        assert gain[side].max() > 0.05 and gain[~side].max() < gain[side].max()
    png = render_reading(tmp_path / "demo.png", s, torch.tensor(X), f_contact=torch.zeros(s.n_nodes, 3))
    assert (tmp_path / "demo.png").stat().st_size > 1000 and png.endswith("demo.png")


# ------------------------------------------------------------------------- frames and camera
@pytest.mark.parametrize("camera", ["pinhole", "fisheye"])
def test_rigid_motion_of_gel_and_mount_changes_nothing(camera):
    rng = np.random.default_rng(3)
    mesh = small_pad()
    s = TactileSensor(mesh, camera=camera, image_size=(16, 16), markers=(3, 3))
    X = wobble(mesh, s, rng)
    f = rng.normal(size=(s.n_nodes, 3))
    pos, quat = rng.normal(size=3) * 0.01, random_quat(rng)  # some mount pose; x, f follow it
    R = quat_to_matrix(torch.tensor(quat)).numpy()
    x1, f1, pose1 = X @ R.T + pos, f @ R.T, (torch.tensor(pos), torch.tensor(quat))
    Qq, t = random_quat(rng), rng.normal(size=3)
    Q = quat_to_matrix(torch.tensor(Qq)).numpy()
    x2, f2, pose2 = x1 @ Q.T + t, f1 @ Q.T, (torch.tensor(Q @ pos + t), torch.tensor(quat_mul(Qq, quat)))
    r1 = s.reading(torch.tensor(x1), pose1, torch.tensor(f1))
    r2 = s.reading(torch.tensor(x2), pose2, torch.tensor(f2))
    r0 = s.reading(torch.tensor(X), None, torch.tensor(f))
    tol = dict(markers=1e-9, marker_displacement=1e-9, depth=1e-15, image=1e-10, total_force=1e-12)
    for k, v in r1.items():
        assert (v - r2[k]).abs().max() <= tol[k], k
        assert (v - r0[k]).abs().max() <= tol[k], k
    assert r1["depth"].abs().max() > 1e-5  # the wobble is seen


def test_pinhole_projects_a_known_point():
    mesh = flat_pad()  # top face at y = 0.205, centred at x = z = 0.5; back at the bottom
    s = TactileSensor(mesh, image_size=(48, 64))
    assert np.allclose(s.axis, [0, 1, 0]) and np.allclose(s.camera_rotation, [[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    D = s.camera_distance
    assert np.allclose(s.camera_position, [0.5, 0.205 - D, 0.5], atol=1e-15)
    i = int(np.argmin(np.linalg.norm(mesh.vertices - [0.51, 0.205, 0.495], axis=1)))
    assert np.allclose(mesh.vertices[i], [0.51, 0.205, 0.495])
    Y = s.to_camera(torch.tensor(mesh.vertices))[i].numpy()
    assert np.allclose(Y, [0.01, 0.005, D], atol=1e-15)
    uv = s.project(torch.tensor(Y)).numpy()
    assert np.allclose(uv, [31.5 + s.focal * 0.01 / D, 23.5 + s.focal * 0.005 / D], atol=1e-12)
    # the face fills the wider-constrained image axis but for the margin
    corners = s.project(s.to_camera(torch.tensor(mesh.vertices))[s.sensing_nodes]).numpy()
    assert corners[:, 1].min() == pytest.approx(23.5 - 24 / 1.1, abs=1e-9)


def test_fisheye_theta_is_atan2():
    s = TactileSensor(small_pad(), camera="fisheye", image_size=(32, 32))
    rng = np.random.default_rng(4)
    P = rng.normal(size=(200, 3))
    P[:50, 2] = -np.abs(P[:50, 2])  # behind the image plane: theta > 90 degrees
    P[50:60, :2] *= 1e-3 / np.linalg.norm(P[50:60, :2], axis=1, keepdims=True) / np.abs(P[50:60, 2:])  # series
    P[60:70, :2] = 0.0
    P[60:70, 2] = np.abs(P[60:70, 2])
    uv = s.project(torch.tensor(P)).numpy() - np.array(s.principal_point)
    rho = np.hypot(P[:, 0], P[:, 1])
    theta = np.arctan2(rho, P[:, 2])
    assert np.allclose(np.linalg.norm(uv, axis=1), s.focal * theta, rtol=1e-14, atol=1e-12)
    off = rho > 0
    assert np.allclose(uv[off] / np.linalg.norm(uv[off], axis=1, keepdims=True), P[off, :2] / rho[off, None],
                       atol=1e-12)
    assert (theta[:50] > math.pi / 2).all()


# ------------------------------------------------------------------------- errors and output
def test_bad_inputs_raise_value_errors():
    mesh = small_pad()
    s = TactileSensor(mesh, image_size=(8, 8), markers=(2, 2))
    x = torch.tensor(mesh.vertices)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\) with n >= node_offset \+ nodes = 50"):
        s.depth(x[:, :2])
    with pytest.raises(ValueError, match=r"x must have shape"):
        s.markers(x[:10])
    bad = x.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x must be finite: row 7 \(node 7 of the body\) is \[.*nan"):
        s.image(bad)
    with pytest.raises(ValueError, match=r"f_contact must be finite: row 3"):
        f = torch.zeros(50, 3, dtype=F64)
        f[3, 0] = float("inf")
        s.total_force(f)
    with pytest.raises(ValueError, match=r"pose quat must have shape \(4,\)"):
        s.markers(x, (torch.zeros(3), torch.ones(3)))
    with pytest.raises(ValueError, match=r"pose pos must be finite"):
        s.markers(x, (torch.tensor([0.0, float("nan"), 0.0]), torch.tensor([1.0, 0, 0, 0])))
    with pytest.raises(ValueError, match=r"pose quat must be a nonzero"):
        s.markers(x, (torch.zeros(3), torch.zeros(4)))
    with pytest.raises(ValueError, match=r"camera must be one of \('pinhole', 'fisheye'\), got 'orthographic'"):
        TactileSensor(mesh, camera="orthographic")
    for size in [(0, 64), (64, -1), (64,)]:
        with pytest.raises(ValueError, match=r"image_size must be two positive integers"):
            TactileSensor(mesh, image_size=size)
    with pytest.raises(ValueError, match=r"no sensing face"):
        TactileSensor(TetMesh(mesh.vertices, mesh.tets, np.arange(mesh.n_vertices)), axis=(0, 1, 0))
    with pytest.raises(ValueError, match=r"no fixed \(back\) nodes.*axis="):
        TactileSensor(TetMesh(mesh.vertices, mesh.tets))
    with pytest.raises(ValueError, match=r"not in front of the pinhole camera"):
        TactileSensor(dome_gel(), camera_distance=0.001)
    # a body further down "fem.x": rows node_offset.. are read; the message names them
    s2 = TactileSensor(mesh, node_offset=50, image_size=(8, 8), markers=(2, 2))
    both = torch.cat([x + 1.0, x])
    assert torch.equal(s2.depth(both), s.depth(x))
    with pytest.raises(ValueError, match=r"n >= node_offset \+ nodes = 100 \(this body's nodes are rows 50..99\)"):
        s2.depth(x)
    with pytest.raises(AttributeError, match="immutable"):
        s.focal = 1.0


def test_png_and_video_output(tmp_path):
    import imageio.v2 as imageio

    mesh = small_pad()
    s = TactileSensor(mesh, image_size=(16, 16), markers=(3, 3))
    x = torch.tensor(mesh.vertices)
    p = save_png(tmp_path / "rgb.png", s.image(x))
    back = imageio.imread(p)
    assert back.shape == (16, 16, 3) and np.abs(back / 255.0 - s.background).max() <= 0.5 / 255 + 1e-12
    frames = [s.image(x + 1e-4 * k * torch.tensor([0.0, -1.0, 0.0])) for k in range(3)]
    assert write_video(tmp_path / "v.gif", frames, fps=5).endswith("v.gif")
    assert (tmp_path / "v.gif").stat().st_size > 0
    with pytest.raises(ValueError, match="save_png: img must have shape"):
        save_png(tmp_path / "bad.png", np.zeros((4, 4, 5)))

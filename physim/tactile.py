"""Differentiable readings of a vision-based tactile sensor (GelSight / DiffTactile-like).

A :class:`TactileSensor` looks at the outer (contact) face of a FEM gel, a :class:`physim.TetMesh`
simulated as a :class:`physim.FEMBody`, from a camera behind the gel, and turns the gel's node
positions (state ``"fem.x"``, m) and contact forces (``"fem.f_contact"``, N) into the readings
of such a sensor, all torch functions (float32 or float64, autograd kept), so a loss of them is
differentiable end to end through a simulation (:func:`physim.torch.rollout_state`,
:func:`physim.optim.rollout_loss`)::

    from physim.tactile import TactileSensor

    sensor = TactileSensor(physim.flat_pad(), camera="pinhole", image_size=(64, 64))
    s = physim.torch.rollout_state(scene, actions)
    pose = (s["tools.pos"][0], s["tools.rot"][0])       # the sensor's mount
    uv = sensor.markers(s["fem.x"], pose)               # (m, 2) marker pixels
    rgb = sensor.image(s["fem.x"], pose)                # (H, W, 3) in [0, 1]
    f = sensor.total_force(s["fem.f_contact"], pose)    # (shear x, shear y, normal) in N

Frames. The *mount frame* is the frame of the tool the gel is attached to: a world point ``x``
is ``R^T (x - pos)`` in it, ``R`` the rotation of the unit quaternion ``quat`` (w, x, y, z), as
the FEM part moves the kinematic back (``x = R X_local + pos``). The sensor is built from the
rest mesh in world coordinates at a mount pose (``pose``, default the identity: mount frame =
world frame); every reading takes the current mount pose (default: that one), so the camera
moves with the sensor and readings are invariant under a rigid motion of gel and mount together.

The *camera frame* (x right, y down in the image, z the optical axis) is fixed in the mount
frame: its z axis is the sensing direction ``a`` (from the centroid of the fixed back nodes to
the centroid of the mesh, or ``axis``), the camera sits on the line through the sensing face's
area centroid along ``a``, behind every node of the gel, far enough back that the face spans
about 40 degrees either side (``camera_distance`` to choose). Pixels: ``(u, v)`` = (column,
row), pixel centres at integers, principal point ``((W - 1) / 2, (H - 1) / 2)``; the focal
length (px) makes the sensing face fill the image but for ``fov_margin``.

- ``"pinhole"``: ``(u, v) = c + f (x / z, y / z)``.
- ``"fisheye"`` (equidistant): ``(u, v) = c + f theta (x, y) / rho``, ``rho = |(x, y)|``,
  ``theta = atan2(rho, z)`` (accurate at every angle, also past 90 degrees; no ``acos``). The
  ratio ``theta / rho`` is evaluated by its Taylor series ``(1 - t^2/3 + t^4/5 - t^6/7) / z``,
  ``t = rho / z``, within t < 0.01 of the axis (truncation below 1e-17 relative), so the map and
  its gradient are smooth and exact on the optical axis itself.

Sensing face: the surface triangles none of whose nodes is fixed (the back), whose outward
normal is within ``max_normal_angle`` of ``a`` and faces away from the camera (or ``surface``).

Readings (all smooth in the inputs):

- :meth:`TactileSensor.markers`: markers printed on the face on a regular grid (in the face's
  lateral coordinates), each fixed to a surface triangle by barycentric coordinates on the
  rest mesh: marker = the camera projection of ``sum_k w_k x_k`` (linear in x, then the camera).
- :meth:`TactileSensor.depth`: indentation ``d_i = (X_i^rest - X_i) . n_i`` of every sensing
  node along its rest outward normal (mount frame; pressing in is positive), rasterized by
  barycentric interpolation over the rest image of the face: each covered pixel is bound on the
  rest mesh to the triangle it sees and its (pixel-space) barycentric weights, so the depth map
  is a fixed *linear* map of the node positions (Lagrangian: a pixel follows its material point
  of the face; exact at the nodes, piecewise linear between; uncovered pixels are 0).
- :meth:`TactileSensor.image`: per-vertex normals of the deformed face (area-weighted sums of
  its triangles' normals, normalized), interpolated to the pixels with the same weights and
  normalized (Phong normal interpolation: smooth shading, no facets), then lit by three
  directional lights (red, green, blue at azimuths 90, 210, 330 degrees in the image, elevation
  ``light_elevation``, on the camera's side of the gel): channel ``k`` is
  ``ambient + diffuse * softplus_50(n . l_k)`` (a smooth clamp of Lambert's cosine; values in
  [ambient, ambient + diffuse]). The background (:attr:`TactileSensor.background`) is that image
  of the undeformed gel, so no contact gives exactly the background; uncovered pixels are
  ``ambient``.
- :meth:`TactileSensor.force_field` / :meth:`TactileSensor.total_force`: contact forces in the
  sensor frame as (shear x, shear y, normal): camera x, camera y, and the component along the
  face's *inward* normal ``-a`` (pressing on the gel gives a positive normal force).

Helpers: :func:`save_png`, :func:`write_video`, :func:`render_reading` (the RGB image with
marker arrows beside the depth map, to PNG).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .meshes import TetMesh

__all__ = ["TactileSensor", "CAMERAS", "quat_to_matrix", "save_png", "write_video", "render_reading"]

CAMERAS = ("pinhole", "fisheye")
#: fisheye: theta / rho by its Taylor series where (rho / z)^2 is below this
_SERIES_T2 = 1e-4
#: sharpness of the smooth clamp of Lambert's cosine (softplus(k t) / k: k = 50 adds < 1e-11 at t >= 0.5)
_CLAMP_SHARPNESS = 50.0
#: barycentric tolerance when locating points in triangles (points on an edge belong to either)
_INSIDE_TOL = 1e-9


# ------------------------------------------------------------------------- small torch helpers
def quat_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """(3, 3) rotation of a quaternion (w, x, y, z) (normalized first, as physim's tools are)."""
    q = q / torch.sqrt((q * q).sum())
    w, x, y, z = q.unbind()
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]).reshape(3, 3)


def _smooth_clamp(t: torch.Tensor, k: float = _CLAMP_SHARPNESS) -> torch.Tensor:
    """softplus(k t) / k, written without a threshold switch (smooth everywhere)."""
    y = k * t
    return (torch.clamp(y, min=0) + torch.log1p(torch.exp(-torch.abs(y)))) / k


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum(-1, keepdim=True))


def _fisheye_ratio(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """theta / rho with theta = atan2(rho, z), rho = sqrt(x^2 + y^2); smooth on the axis."""
    rho2 = x * x + y * y
    small = (z > 0) & (rho2 < _SERIES_T2 * z * z)
    one = torch.ones_like(z)
    zs = torch.where(small, z, one)
    t2 = torch.where(small, rho2 / (zs * zs), torch.zeros_like(z))
    series = (1 - t2 / 3 + t2 * t2 / 5 - t2 * t2 * t2 / 7) / zs
    rho = torch.sqrt(torch.where(small, one, rho2))
    return torch.where(small, series, torch.atan2(rho, z) / rho)


def _bary2d(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Barycentric coordinates (..., 3) of 2D points p in triangles (a, b, c) (broadcasting)."""
    v0, v1, v2 = b - a, c - a, p - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    l1 = (v2[..., 0] * v1[..., 1] - v1[..., 0] * v2[..., 1]) / den
    l2 = (v0[..., 0] * v2[..., 1] - v2[..., 0] * v0[..., 1]) / den
    return np.stack([1 - l1 - l2, l1, l2], axis=-1)


# ------------------------------------------------------------------------- the sensor
class TactileSensor:
    """A camera behind a FEM gel and the readings it makes (torch; see the module docstring).

    Args:
        mesh: the gel's :class:`physim.TetMesh` (rest shape, world coordinates at ``pose``), or
            a :class:`physim.FEMBody` (its ``mesh``, and its ``fixed`` nodes where set).
        node_offset: row of this body's first node in ``"fem.x"`` / ``"fem.f_contact"`` (the
            scene concatenates its FEM bodies in order); readings use rows
            ``node_offset .. node_offset + n - 1``.
        surface: the sensing triangles as an (f, 3) array of the body's node indices, outward
            oriented; ``None``: the rule of the module docstring.
        camera: ``"pinhole"`` or ``"fisheye"``.
        image_size: (H, W) pixels.
        markers: marker grid (rows, cols), or an int n for a square grid of about n markers;
            grid points the face does not cover are dropped (:attr:`n_markers` is the count).
        pose: (pos (3,), quat (4,)) mount pose at which ``mesh`` is given (m; w, x, y, z);
            ``None``: the identity.
        axis: sensing direction (outward, mount frame); ``None``: from the centroid of the fixed
            nodes to the centroid of the mesh (a mesh without fixed nodes needs it).
        camera_distance: from the sensing face's centroid back to the camera (m); ``None``:
            behind every node and at least (face half-width) / tan 40 degrees.
        max_normal_angle: degrees; the automatic sensing face keeps triangles whose outward
            normal is within it of ``axis``.
        fov_margin: the face's extent in the image is 1 / fov_margin of the image's.
        ambient, diffuse, light_elevation: shading of :meth:`image` (light_elevation in degrees
            above the face plane).

    Attributes (numpy, fixed at construction; the object refuses new attribute values):
        axis: (3,) outward sensing direction, mount frame. camera_position: (3,) m, mount frame.
        camera_rotation: (3, 3) columns = camera x, y, z axes in the mount frame.
        camera_distance: m. focal: px. principal_point: (u, v) px. image_size: (H, W).
        faces: (f, 3) sensing triangles (body node indices). sensing_nodes: their nodes.
        pixel_index: (P,) flat indices (row * W + column) of the pixels the face covers;
        pixel_nodes, pixel_weights: (P, 3) the rest triangle each of them sees and its weights.
        marker_nodes, marker_weights: (m, 3) each marker's triangle and barycentric weights.
        rest_markers: (m, 2) marker pixels of the undeformed gel. background: (H, W, 3) image of
        the undeformed gel. rest_vertices: (n, 3) the mesh at construction (m, world).
    """

    def __init__(self, mesh, node_offset: int = 0, surface=None, camera: str = "pinhole", image_size=(64, 64),
                 markers=(8, 8), pose=None, axis=None, camera_distance: float | None = None,
                 max_normal_angle: float = 75.0, fov_margin: float = 1.1, ambient: float = 0.1,
                 diffuse: float = 0.8, light_elevation: float = 30.0):
        fixed = None
        if not isinstance(mesh, TetMesh) and isinstance(getattr(mesh, "mesh", None), TetMesh):
            fixed = getattr(mesh, "fixed", None)
            mesh = mesh.mesh
        if not isinstance(mesh, TetMesh):
            raise TypeError(f"TactileSensor: mesh must be a physim.TetMesh or FEMBody, got {type(mesh).__name__}")
        fixed = mesh.fixed if fixed is None else np.asarray(fixed, dtype=np.int64).reshape(-1)
        if camera not in CAMERAS:
            raise ValueError(f"TactileSensor: camera must be one of {CAMERAS}, got {camera!r}")
        size = tuple(np.asarray(image_size).reshape(-1).tolist())
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"TactileSensor: image_size must be two positive integers (H, W), got {image_size!r}")
        if not (isinstance(node_offset, (int, np.integer)) and node_offset >= 0):
            raise ValueError(f"TactileSensor: node_offset must be a non-negative integer, got {node_offset!r}")
        for name, val, lo, hi in [("max_normal_angle", max_normal_angle, 0.0, 90.0), ("fov_margin", fov_margin, 1.0,
                                  math.inf), ("ambient", ambient, 0.0, 1.0), ("diffuse", diffuse, 0.0, 1.0),
                                  ("light_elevation", light_elevation, 0.0, 90.0)]:
            if not (isinstance(val, (int, float)) and math.isfinite(val) and lo <= val <= hi):
                raise ValueError(f"TactileSensor: {name} must be in [{lo}, {hi}], got {val!r}")
        if ambient + diffuse > 1.0:
            raise ValueError(f"TactileSensor: ambient + diffuse must be at most 1 (image in [0, 1]), got "
                             f"{ambient} + {diffuse}")
        H, W = size
        n = mesh.n_vertices
        f64 = torch.float64

        # rest nodes in the mount frame, by the same torch code the readings use (exact zero at rest)
        p0, q0 = self._check_pose(pose, f64, torch.device("cpu"))
        R0 = quat_to_matrix(q0)
        Xl_t = (torch.as_tensor(mesh.vertices, dtype=f64) - p0) @ R0
        Xl = Xl_t.numpy()
        extent = float(np.ptp(Xl, axis=0).max())

        # sensing direction a
        if axis is not None:
            a = np.asarray(axis, dtype=np.float64).reshape(-1)
            if a.shape != (3,) or not np.isfinite(a).all() or np.linalg.norm(a) == 0:
                raise ValueError(f"TactileSensor: axis must be a nonzero finite 3-vector, got {axis!r}")
        else:
            if len(fixed) == 0:
                raise ValueError("TactileSensor: the mesh has no fixed (back) nodes, so the sensing side is "
                                 "unknown: pass axis= (outward sensing direction in the mount frame)")
            a = Xl.mean(axis=0) - Xl[fixed].mean(axis=0)
            if np.linalg.norm(a) <= 1e-9 * extent:
                raise ValueError("TactileSensor: the fixed nodes' centroid is the mesh's centroid; pass axis=")
        a = a / np.linalg.norm(a)

        # sensing faces
        def face_geometry(faces):
            x = Xl[faces]
            cr = np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0])
            area2 = np.linalg.norm(cr, axis=1)
            return x.mean(axis=1), cr, area2

        if surface is None:
            faces = mesh.surface_faces().astype(np.int64)
            is_fixed = np.zeros(n, bool)
            is_fixed[fixed] = True
            faces = faces[~is_fixed[faces].any(axis=1)]
            if len(faces):
                _, cr, area2 = face_geometry(faces)
                faces = faces[(cr @ a) >= math.cos(math.radians(max_normal_angle)) * area2]
            what = (f"no surface triangle of the mesh is free of fixed nodes with its outward normal within "
                    f"{max_normal_angle} degrees of the sensing axis {np.round(a, 6).tolist()}")
        else:
            faces = np.asarray(surface)
            if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
                raise ValueError(f"TactileSensor: surface must be an (f, 3) integer array of node indices, got "
                                 f"{faces.dtype} of shape {faces.shape}")
            if ((faces < 0) | (faces >= n)).any():
                raise ValueError(f"TactileSensor: surface indexes a node outside 0..{n - 1}")
            faces = faces.astype(np.int64)
            what = "surface is empty"
        if len(faces) == 0:
            raise ValueError(f"TactileSensor: no sensing face: {what}")
        cen, cr, area2 = face_geometry(faces)
        if (area2 <= 0).any():
            raise ValueError("TactileSensor: a sensing triangle is degenerate (zero area)")
        centroid = (cen * area2[:, None]).sum(axis=0) / area2.sum()

        # camera frame: z = a; x = the mount axis least aligned with a, made orthogonal; y = z cross x
        # (ties within 1e-6 go to the first axis, so round-off in a does not flip the image)
        helper = np.eye(3)[int(np.flatnonzero(np.abs(a) <= np.abs(a).min() + 1e-6)[0])]
        e1 = helper - (helper @ a) * a
        e1 /= np.linalg.norm(e1)
        C = np.stack([e1, np.cross(a, e1), a], axis=1)  # columns: camera axes in the mount frame
        lat = (Xl[np.unique(faces)] - centroid) @ C[:, :2]
        half = float(np.abs(lat).max())
        behind = float(((centroid - Xl) @ a).max())
        if camera_distance is None:
            D = max(behind + 0.05 * max(behind, half), half / math.tan(math.radians(40.0)))
        else:
            D = float(camera_distance)
            if not (math.isfinite(D) and D > 0):
                raise ValueError(f"TactileSensor: camera_distance must be positive, got {camera_distance!r}")
        cam = centroid - D * a
        if surface is None:  # keep the faces that face away from the camera (seen from behind)
            keep = ((cen - cam) * cr).sum(axis=1) > 0
            faces, cen, cr, area2 = faces[keep], cen[keep], cr[keep], area2[keep]
            if len(faces) == 0:
                raise ValueError("TactileSensor: no sensing face: none faces away from the camera")

        self._frozen = False
        self.camera = camera
        self.image_size = (H, W)
        self.node_offset = int(node_offset)
        self.n_nodes = n
        self.axis = a
        self.camera_position = cam
        self.camera_rotation = C
        self.camera_distance = D
        self.faces = faces
        self.ambient, self.diffuse = float(ambient), float(diffuse)
        el = math.radians(light_elevation)
        az = np.radians([90.0, 210.0, 330.0])
        self.lights = np.stack([math.cos(el) * np.cos(az), math.cos(el) * np.sin(az), -math.sin(el) * np.ones(3)], 1)
        self._t = {"lights": torch.as_tensor(self.lights).clone(), "X0": Xl_t, "C": torch.as_tensor(C),
                   "cam": torch.as_tensor(cam), "p0": p0, "q0": q0}

        # sensing nodes, rest outward vertex normals (mount frame)
        sens = np.unique(faces)
        local = -np.ones(n, np.int64)
        local[sens] = np.arange(len(sens))
        normal0 = np.zeros((n, 3))
        for k in range(3):
            np.add.at(normal0, faces[:, k], cr)
        normal0[sens] /= np.linalg.norm(normal0[sens], axis=1, keepdims=True)
        self.sensing_nodes = sens
        self._t.update(normal0=torch.as_tensor(normal0), sens=torch.as_tensor(sens),
                       faces_local=torch.as_tensor(local[faces]))

        # focal length: the rest sensing nodes fill the image but for fov_margin
        Y0 = (Xl_t[torch.as_tensor(sens)] - self._t["cam"]) @ self._t["C"]
        if camera == "pinhole" and not (Y0[:, 2] > 1e-9 * extent).all():
            raise ValueError(f"TactileSensor: a sensing node is not in front of the pinhole camera (camera_distance "
                             f"{D:.4g} m too small); use a larger one or camera='fisheye'")
        g = self._normalized(Y0).numpy()
        gmax = np.abs(g).max(axis=0)
        gmax[gmax == 0] = 1.0
        self.focal = float(min(W / 2 / gmax[0], H / 2 / gmax[1]) / fov_margin)
        self.principal_point = ((W - 1) / 2.0, (H - 1) / 2.0)

        # rasterize the rest face: each pixel centre -> (triangle, barycentric weights in pixel space)
        uv0 = self._to_pixel(self._normalized(((Xl_t - self._t["cam"]) @ self._t["C"])[torch.as_tensor(sens)]))
        uv0 = uv0.numpy()
        tri_uv = uv0[local[faces]]  # (F, 3, 2)
        owner = -np.ones(H * W, np.int64)
        weights = np.zeros((H * W, 3))
        for fi in range(len(faces)):
            t = tri_uv[fi]
            lo, hi = np.floor(t.min(axis=0)), np.ceil(t.max(axis=0))
            u = np.arange(max(lo[0], 0), min(hi[0], W - 1) + 1)
            v = np.arange(max(lo[1], 0), min(hi[1], H - 1) + 1)
            if len(u) == 0 or len(v) == 0:
                continue
            uu, vv = np.meshgrid(u, v)
            p = np.stack([uu.ravel(), vv.ravel()], axis=1)
            lam = _bary2d(p, t[0], t[1], t[2])
            pix = (p[:, 1] * W + p[:, 0]).astype(np.int64)
            ok = (lam >= -_INSIDE_TOL).all(axis=1) & (owner[pix] < 0)
            owner[pix[ok]] = fi
            weights[pix[ok]] = lam[ok]
        covered = np.flatnonzero(owner >= 0)
        self.pixel_index = covered
        self.pixel_nodes = faces[owner[covered]]
        self.pixel_weights = weights[covered]
        self._t.update(pix=torch.as_tensor(covered), pix_local=torch.as_tensor(local[self.pixel_nodes]),
                       pix_w=torch.as_tensor(self.pixel_weights))

        # markers: a regular grid in the face's lateral coordinates, bound to triangles
        if isinstance(markers, (int, np.integer)):
            if markers < 0:
                raise ValueError(f"TactileSensor: markers must be non-negative, got {markers!r}")
            side = int(round(math.sqrt(markers)))
            grid = (side, side)
        else:
            grid = tuple(np.asarray(markers).reshape(-1).tolist())
            if len(grid) != 2 or not all(isinstance(s, int) and s >= 0 for s in grid):
                raise ValueError(f"TactileSensor: markers must be (rows, cols) or a count, got {markers!r}")
        lat_f = (Xl[faces] - centroid) @ C[:, :2]  # (F, 3, 2)
        lmin, lmax = lat.min(axis=0), lat.max(axis=0)
        rows, cols = grid
        gx = lmin[0] + (np.arange(cols) + 0.5) * (lmax[0] - lmin[0]) / max(cols, 1)
        gy = lmin[1] + (np.arange(rows) + 0.5) * (lmax[1] - lmin[1]) / max(rows, 1)
        mn, mw = [], []
        for yv in gy:
            for xv in gx:
                lam = _bary2d(np.array([xv, yv]), lat_f[:, 0], lat_f[:, 1], lat_f[:, 2])
                inside = np.flatnonzero((lam >= -_INSIDE_TOL).all(axis=1))
                if len(inside):
                    mn.append(faces[inside[0]])
                    mw.append(np.clip(lam[inside[0]], 0.0, None) / np.clip(lam[inside[0]], 0.0, None).sum())
        self.marker_nodes = np.array(mn, np.int64).reshape(-1, 3)
        self.marker_weights = np.array(mw, np.float64).reshape(-1, 3)
        self._t.update(mk_nodes=torch.as_tensor(self.marker_nodes), mk_w=torch.as_tensor(self.marker_weights))

        # readings of the rest mesh
        x_rest = torch.zeros(self.node_offset + n, 3, dtype=f64)  # as "fem.x" would hold it
        x_rest[self.node_offset:] = torch.as_tensor(mesh.vertices, dtype=f64)
        with torch.no_grad():
            self.rest_markers = self.markers(x_rest).numpy()
            self.background = self.image(x_rest).numpy()
        self._t.update(rest_markers=torch.as_tensor(self.rest_markers).clone())
        self.rest_vertices = np.array(mesh.vertices)
        self._frozen = True

    def __setattr__(self, name, value):
        if getattr(self, "_frozen", False):
            raise AttributeError(f"TactileSensor is immutable (tried to set {name!r}); build a new one")
        object.__setattr__(self, name, value)

    def __repr__(self):
        H, W = self.image_size
        last = self.node_offset + self.n_nodes - 1
        return (f"TactileSensor({self.camera}, {H}x{W} px, f={self.focal:.4g} px, {len(self.faces)} sensing "
                f"triangles, {self.n_markers} markers, nodes {self.node_offset}..{last})")

    @property
    def n_markers(self) -> int:
        """Number of markers."""
        return int(self.marker_nodes.shape[0])

    # --------------------------------------------------------------------- input checks
    @staticmethod
    def _check_pose(pose, dtype, device):
        if pose is None:
            return (torch.zeros(3, dtype=dtype, device=device),
                    torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype, device=device))
        if not (isinstance(pose, (tuple, list)) and len(pose) == 2):
            raise ValueError(f"pose must be a pair (pos (3,), quat (4,)), got {type(pose).__name__}")
        out = []
        for name, val, k in (("pose pos", pose[0], 3), ("pose quat", pose[1], 4)):
            t = torch.as_tensor(val, device=device)
            t = t.to(dtype) if t.dtype != dtype else t
            if t.shape != (k,):
                raise ValueError(f"{name} must have shape ({k},), got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite, got {t.detach().cpu().tolist()}")
            out.append(t)
        if not float((out[1] * out[1]).sum().detach()) > 0:
            raise ValueError(f"pose quat must be a nonzero quaternion (w, x, y, z), got {out[1].tolist()}")
        return out[0], out[1]

    def _rows(self, x, name: str) -> torch.Tensor:
        """This body's rows of an (N, 3) state entry, checked."""
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        if not x.is_floating_point():
            x = x.to(torch.float64)
        need = self.node_offset + self.n_nodes
        if x.ndim != 2 or x.shape[1] != 3 or x.shape[0] < need:
            raise ValueError(f"{name} must have shape (n, 3) with n >= node_offset + nodes = {need} (this body's nodes "
                             f"are rows {self.node_offset}..{need - 1}), got shape {tuple(x.shape)}")
        rows = x[self.node_offset:need]
        bad = ~torch.isfinite(rows)
        if bad.any():
            i = int(torch.nonzero(bad.any(dim=1))[0, 0])
            raise ValueError(f"{name} must be finite: row {self.node_offset + i} (node {i} of the body) is "
                             f"{rows[i].detach().cpu().tolist()}")
        return rows

    def _c(self, key: str, like: torch.Tensor) -> torch.Tensor:
        t = self._t[key]
        return t.to(device=like.device, dtype=like.dtype) if t.is_floating_point() else t.to(like.device)

    def _pose(self, pose, like: torch.Tensor):
        if pose is None:
            return quat_to_matrix(self._c("q0", like)), self._c("p0", like)
        p, q = self._check_pose(pose, like.dtype, like.device)
        return quat_to_matrix(q), p

    # --------------------------------------------------------------------- frames and camera
    def to_mount(self, x, pose=None) -> torch.Tensor:
        """This body's nodes (n, 3) in the mount frame (m): ``R^T (x - pos)``; ``x`` is the (N, 3)
        state entry ``"fem.x"`` (m, world), ``pose`` the mount's (pos (3,) m, quat (4,) w, x, y, z)."""
        x = self._rows(x, "x")
        R, p = self._pose(pose, x)
        return (x - p) @ R

    def to_camera(self, x, pose=None) -> torch.Tensor:
        """This body's nodes (n, 3) in the camera frame (m; z along the optical axis)."""
        Xm = self.to_mount(x, pose)
        return (Xm - self._c("cam", Xm)) @ self._c("C", Xm)

    def _normalized(self, Y: torch.Tensor) -> torch.Tensor:
        x, y, z = Y[..., 0], Y[..., 1], Y[..., 2]
        s = 1.0 / z if self.camera == "pinhole" else _fisheye_ratio(x, y, z)
        return torch.stack([x * s, y * s], dim=-1)

    def _to_pixel(self, g: torch.Tensor) -> torch.Tensor:
        c = torch.tensor(self.principal_point, dtype=g.dtype, device=g.device)
        return c + self.focal * g

    def project(self, points) -> torch.Tensor:
        """Pixel coordinates (..., 2) = (u column, v row) of camera-frame points (..., 3) in m."""
        Y = torch.as_tensor(points)
        if Y.shape[-1:] != (3,):
            raise ValueError(f"points must have shape (..., 3), got {tuple(Y.shape)}")
        if not torch.isfinite(Y).all():
            raise ValueError("points must be finite")
        return self._to_pixel(self._normalized(Y))

    # --------------------------------------------------------------------- readings
    def markers(self, x, pose=None) -> torch.Tensor:
        """Marker positions (m, 2) in pixels (u column, v row) of the nodes ``x`` ((N, 3) m, world;
        this body's rows from ``node_offset``) seen from the sensor at mount ``pose``."""
        Y = self.to_camera(x, pose)
        P = (Y[self._t["mk_nodes"].to(Y.device)] * self._c("mk_w", Y)[..., None]).sum(dim=1)
        return self._to_pixel(self._normalized(P))

    def marker_displacement(self, x, pose=None) -> torch.Tensor:
        """Marker displacements (m, 2) in pixels against the undeformed gel (:attr:`rest_markers`):
        zero for the rest mesh at any mount pose (to round-off of the input's dtype)."""
        uv = self.markers(x, pose)
        return uv - self._c("rest_markers", uv)

    def node_depth(self, x, pose=None) -> torch.Tensor:
        """Indentation (n,) of every node along its rest outward normal, m (0 off the sensing face)."""
        Xm = self.to_mount(x, pose)
        return ((self._c("X0", Xm) - Xm) * self._c("normal0", Xm)).sum(dim=1)

    def depth(self, x, pose=None) -> torch.Tensor:
        """Depth map (H, W) in m: the indentation of the sensing surface seen at each pixel (0 where
        undeformed or not covered, positive where pressed in); a fixed linear map of the nodes'
        mount-frame positions (barycentric interpolation over the rest image of the face)."""
        d = self.node_depth(x, pose)
        nodes = self._t["pix_local"].to(d.device)
        vals = (d[self._t["sens"].to(d.device)][nodes] * self._c("pix_w", d)).sum(dim=1)
        H, W = self.image_size
        out = torch.zeros(H * W, dtype=d.dtype, device=d.device)
        return out.index_copy(0, self._t["pix"].to(d.device), vals).reshape(H, W)

    def pixel_normals(self, x, pose=None) -> torch.Tensor:
        """Unit normals (P, 3) of the deformed sensing face at the covered pixels
        (:attr:`pixel_index`), camera frame, outward (away from the camera)."""
        Y = self.to_camera(x, pose)
        Y = Y[self._t["sens"].to(Y.device)]
        fl = self._t["faces_local"].to(Y.device)
        tri = Y[fl]
        cr = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
        vn = torch.zeros_like(Y)
        for k in range(3):
            vn = vn.index_add(0, fl[:, k], cr)
        vn = _normalize(vn)
        pn = (vn[self._t["pix_local"].to(Y.device)] * self._c("pix_w", Y)[..., None]).sum(dim=1)
        return _normalize(pn)

    def shade(self, normals: torch.Tensor) -> torch.Tensor:
        """RGB (..., 3) of outward unit normals (..., 3) in the camera frame under the three lights."""
        L = self._c("lights", normals)
        return self.ambient + self.diffuse * _smooth_clamp(-normals @ L.T)

    def image(self, x, pose=None) -> torch.Tensor:
        """Optical image (H, W, 3) in [0, 1] of the sensing face (the nodes ``x``, (N, 3) m, world):
        Phong-interpolated normals shaded by a red, a green and a blue light; equal to
        :attr:`background` without contact; ``ambient`` where the face does not cover a pixel."""
        rgb = self.shade(self.pixel_normals(x, pose))
        H, W = self.image_size
        out = torch.full((H * W, 3), self.ambient, dtype=rgb.dtype, device=rgb.device)
        return out.index_copy(0, self._t["pix"].to(rgb.device), rgb).reshape(H, W, 3)

    def force_field(self, f_contact, pose=None) -> torch.Tensor:
        """This body's contact forces (n, 3) in N in the sensor frame: (shear x, shear y, normal),
        camera x and y and the component along the sensing face's inward normal ``-axis``
        (pressing into the gel is positive). ``f_contact``: the (N, 3) state entry
        ``"fem.f_contact"`` (N, world frame)."""
        f = self._rows(f_contact, "f_contact")
        R, _ = self._pose(pose, f)
        fc = (f @ R) @ self._c("C", f)
        return fc * torch.tensor([1.0, 1.0, -1.0], dtype=f.dtype, device=f.device)

    def total_force(self, f_contact, pose=None) -> torch.Tensor:
        """Net contact force (3,) on the gel in N, sensor frame: (shear x, shear y, normal), see
        :meth:`force_field`."""
        return self.force_field(f_contact, pose).sum(dim=0)

    def reading(self, x, pose=None, f_contact=None) -> dict:
        """All readings as a dict: ``markers``, ``marker_displacement`` (px), ``depth`` (m),
        ``image``, and with ``f_contact`` ``total_force`` (N)."""
        out = dict(markers=self.markers(x, pose), marker_displacement=self.marker_displacement(x, pose),
                   depth=self.depth(x, pose), image=self.image(x, pose))
        if f_contact is not None:
            out["total_force"] = self.total_force(f_contact, pose)
        return out


# ------------------------------------------------------------------------- output helpers
def _as_array(img) -> np.ndarray:
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    return np.asarray(img)


def save_png(path, img) -> str:
    """Write an image (H, W, 3) or (H, W) of floats in [0, 1] (or uint8) to a PNG; returns the path."""
    import imageio.v2 as imageio

    a = _as_array(img)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"save_png: img must have shape (H, W, 3) or (H, W), got {a.shape}")
    if a.dtype != np.uint8:
        if not np.isfinite(a).all():
            raise ValueError("save_png: img has non-finite values")
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    imageio.imwrite(path, a)
    return path


def write_video(path, frames, fps: float = 20) -> str:
    """Write frames ((H, W, 3) floats in [0, 1] or uint8; tensors or arrays) to MP4 (H.264) or GIF
    (``.gif``) at ``fps`` frames per second; returns the path."""
    from .render.video import record_video

    return record_video((_as_array(f) for f in frames), path, fps=fps)


def render_reading(path, sensor: TactileSensor, x, pose=None, f_contact=None, arrow_scale: float | None = None,
                   title: str | None = None) -> str:
    """A PNG of one reading: the RGB image with the markers (dots) and their displacements
    (arrows, scaled ``arrow_scale``; default: the longest is 1.5 grid spacings) beside the depth
    map (mm); the total force in the title when ``f_contact`` is given. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with torch.no_grad():
        img = _as_array(sensor.image(x, pose))
        dep = _as_array(sensor.depth(x, pose)) * 1e3
        uv = _as_array(sensor.markers(x, pose))
        du = _as_array(sensor.marker_displacement(x, pose))
        force = None if f_contact is None else _as_array(sensor.total_force(f_contact, pose))
    uv0 = sensor.rest_markers
    if arrow_scale is None:
        longest = float(np.linalg.norm(du, axis=1).max(initial=0.0))
        H, W = sensor.image_size
        spacing = max(H, W) / max(1.0, math.sqrt(max(sensor.n_markers, 1)))
        arrow_scale = 1.0 if longest < 1e-9 else 1.5 * spacing / longest
    fig = Figure(figsize=(9, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax0, ax1 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax0.imshow(np.clip(img, 0, 1), interpolation="nearest")
    ax0.scatter(uv[:, 0], uv[:, 1], s=6, c="k")
    moved = np.linalg.norm(du, axis=1) > 1e-3 * float(np.linalg.norm(du, axis=1).max(initial=0.0))
    ax0.quiver(uv0[moved, 0], uv0[moved, 1], du[moved, 0] * arrow_scale, du[moved, 1] * arrow_scale, angles="xy",
               scale_units="xy", scale=1.0, color="yellow", width=0.006)
    ax0.set_title(f"RGB + markers (arrows x{arrow_scale:.3g})", fontsize=9)
    im = ax1.imshow(dep, cmap="viridis")
    fig.colorbar(im, ax=ax1, label="depth (mm)")
    ax1.set_title("depth", fontsize=9)
    for ax in (ax0, ax1):
        ax.set_xlabel("u (px)")
        ax.set_ylabel("v (px)")
    head = title or f"{sensor.camera} tactile reading"
    if force is not None:
        head += f"   F = (shear {force[0]:.3g}, {force[1]:.3g}; normal {force[2]:.3g}) N"
    fig.suptitle(head, fontsize=10)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path

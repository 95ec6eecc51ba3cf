"""Shared set-up: one f64 Taichi runtime for the whole session (gradient checks need
f64), fast compilation, and scene builders whose layouts coincide so compiled
engines are shared across tests (see physim.solvers.get_engine)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The suite tests the installed physim (see tests/subproc.py and the README's "Layout"):
# `python -m pytest` puts the working directory first on sys.path, and in the repository root
# that is the checkout's physim/, which would shadow a regular install. Drop it before the first
# `import physim`. (An editable install still maps physim to the checkout, through its finder.)
_ROOT = Path(__file__).resolve().parents[1]
assert "physim" not in sys.modules, "physim was imported before tests/conftest.py could drop the checkout from sys.path"
sys.path[:] = [p for p in sys.path if Path(p or os.curdir).resolve() != _ROOT]

os.environ.setdefault("PYVISTA_OFF_SCREEN", "true")
# in-process tests check real sizes (frames, iterations); the README command tests set
# PHYSIM_SMOKE for their subprocesses themselves
os.environ.pop("PHYSIM_SMOKE", None)

import physim as ps  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _runtime():
    # PHYSIM_TEST_ARCH=cuda runs the suite on a GPU (CI has none: cpu)
    ps.init(arch=os.environ.get("PHYSIM_TEST_ARCH", "cpu"), precision="f64", fast_compile=True, verbose=False)
    yield


#: the steps small_scene() builds for
SMALL_STEPS = 8


def small_scene(dim, material, *, tool=True, softness=50.0, friction=0.4, actuator=None,
                gravity=None, checkpoint_every=8, substeps=4, velocity=None, boundary="slip", dt=2e-4,
                tool_x=0.38, specialize=False, build=True):
    """A small scene (grid 32 in 2D / 16 in 3D, a few hundred particles) whose layout is the
    same for every material, so all gradient tests of one dimension share compiled kernels
    (generic kernels: ``specialize=False``; tests of the specialized kernels pass True).
    Built for 8 steps unless ``build=False``."""
    res = 32 if dim == 2 else 16
    scene = ps.Scene(dim=dim, grid_res=res, dt=dt, substeps_per_step=substeps, gravity=gravity,
                     checkpoint_every=checkpoint_every, boundary=boundary, specialize=specialize)
    center = [0.5, 0.3, 0.5][:dim]
    size = [0.16, 0.12, 0.16][:dim] if dim == 2 else [0.2, 0.2, 0.2]
    scene.add_body(ps.Box(center=center, size=size), material,
                   velocity=velocity if velocity is not None else [0.2] + [0.0] * (dim - 1),
                   actuator=actuator, jitter=0.3, seed=1)
    if tool:
        pos = [tool_x, 0.34, 0.5][:dim]
        scene.add_tool(ps.SphereTool(position=pos, radius=0.05, softness=softness, friction=friction))
    if build:
        scene.build(max_steps=SMALL_STEPS)
    return scene


#: the tactile rig's layout (tests/test_calibration.py, tests/test_tactile_physics.py): a 20 x 20 x 10 mm
#: pad of 4 x 2 x 4 cells (192 tets, 75 nodes) on a box mount (tool 0) and a sphere (tool 1), grid 32,
#: dt 5e-5 s, built for 32 steps; E <= 8e4 Pa and nu <= 0.45 keep it at one FEM sub-step per substep
#: (contact stiffness 5e7 Pa/m), so every such scene has one layout and the rig's forward and reverse
#: kernels compile once for the whole session
RIG_MOUNT = (0.5, 0.29, 0.5)
RIG_TOP = 0.305  # the pad's top surface (y)
RIG_STEPS = 32


def tactile_rig(sphere_y=RIG_TOP + 0.01 + 1e-5, *, sphere_x=0.5, tool=None, friction=0.5, E=3e4, nu=0.3,
                alpha=1000.0, gravity=(0.0, 0.0, 0.0), substeps=8, build=True):
    """A tactile scene of the shared rig layout (see ``RIG_MOUNT``): the pad mounted on tool 0,
    tool 1 a sphere (R = 10 mm, its lowest point ``sphere_y - 0.01``) or ``tool``. Built for
    ``RIG_STEPS`` steps unless ``build=False``. Returns (scene, pad mesh, FEM body)."""
    import gc

    gc.collect()  # the previous rig scene's engine is free for reuse once it is collected
    scene = ps.Scene(dim=3, grid_res=32, dt=5e-5, substeps_per_step=substeps, gravity=gravity)
    scene.add_tool(ps.BoxTool(position=RIG_MOUNT, half_extents=(0.012, 0.005, 0.012)))
    scene.add_tool(tool or ps.SphereTool(position=(sphere_x, sphere_y, 0.5), radius=0.01, friction=friction))
    pad = ps.flat_pad(center=(0.5, 0.3, 0.5), size=(0.02, 0.02), thickness=0.01, resolution=(4, 2, 4))
    body = ps.FEMBody(pad, E=E, nu=nu, density=1000.0, alpha=alpha, mount=0, contact_stiffness=5e7)
    scene.add_fem(body)
    if build:
        scene.build(max_steps=RIG_STEPS)
    return scene, pad, body


@pytest.fixture
def rng():
    return np.random.default_rng(0)

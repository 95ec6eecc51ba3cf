"""Real-to-sim calibration of a tactile gel (physim.optim.calibration): recover E and the contact
friction from marker and force readings, and the marker readings' gradients.

Scene: a 20 x 20 x 10 mm pad (flat_pad, 4 x 2 x 4 cells: 192 tets, 75 nodes; E = 30 kPa, nu =
0.3, 1000 kg/m^3, mass damping alpha = 1000/s ~ 2 x its lowest shear mode) mounted on a still box
tool, a TactileSensor (pinhole, 5 x 5 markers) behind it, and a rigid sphere (R = 10 mm,
friction 0.5 against the gel) that

1. presses 1.5 mm into the gel in 12 steps (4.8 ms; normal loading: the normal force and the
   markers' radial spread scale with E, not with the friction), then
2. slides 4 mm along x in 20 steps (8 ms; tangential loading: the contact sticks first, the gel
   shears -- the shear force rises with E -- then slips: the shear force saturates at about
   mu F_n, measured 0.52 F_n; the ratio reads the friction coefficient).

dt = 5e-5 s x 8 substeps per step (0.4 ms): one FEM sub-step per substep everywhere in the search
interval E in (1e4, 8e4) Pa, nu in (0.1, 0.45) (the stable limit is 5.2e-5 s at its stiffest
corner, with the explicit contact stiffness 5e7 Pa/m), so the time discretization does not change
with the parameters during the fit (calibrate warns otherwise).
"""

import math
import time
import warnings

import numpy as np
import pytest
from conftest import RIG_MOUNT, tactile_rig

from physim.optim import calibrate
from physim.optim.calibration import READINGS_OBSERVE, readings_loss, sensor_readings
from physim.optim.problem import rollout_loss
from physim.tactile import TactileSensor

pytestmark = pytest.mark.filterwarnings("ignore::physim.parts.fem.Subcycling")

E_TRUE, NU_TRUE, MU_TRUE = 3e4, 0.3, 0.5
PRESS, SLIDE = 12, 20
STEP = 5e-5 * 8  # s per action step
DEPTH, TRAVEL, GAP = 1.5e-3, 4e-3, 1e-5
MOUNT_POS = RIG_MOUNT
E_BOUNDS, NU_BOUNDS = (1e4, 8e4), (0.1, 0.45)


@pytest.fixture(scope="module")
def rig():
    t0 = time.perf_counter()
    # the shared rig layout of tests/conftest.py (tests/test_tactile_physics.py builds it too)
    scene, pad, body = tactile_rig(0.305 + 0.01 + GAP, friction=MU_TRUE, E=E_TRUE, nu=NU_TRUE, alpha=1000.0)
    assert scene.max_steps == PRESS + SLIDE and scene.dt == 5e-5 and scene.substeps_per_step == 8
    sensor = TactileSensor(body, pose=(np.array(MOUNT_POS), np.array([1.0, 0.0, 0.0, 0.0])), markers=(5, 5))
    a = np.zeros((PRESS + SLIDE, scene.action_dim))
    a[:PRESS, 7] = -(DEPTH + GAP) / (PRESS * STEP)  # tool 1 (columns 6..11): down
    a[PRESS:, 6] = TRAVEL / (SLIDE * STEP)  # then along x
    truth = sensor_readings(scene, sensor, a)
    print(f"\nrig: built and recorded in {time.perf_counter() - t0:.1f} s")
    return scene, sensor, a, truth


def set_params(scene, E=E_TRUE, nu=NU_TRUE, mu=MU_TRUE):
    scene.set_param("fem.E", E)
    scene.set_param("fem.nu", nu)
    scene.set_param("tools.friction", mu, row=1)
    scene.reset()


def test_readings_show_pressing_and_stick_slip(rig):
    """The recorded motion is informative: the normal force builds up while pressing, the shear
    force stays small until the slide and then saturates near mu F_n (stick-slip)."""
    scene, sensor, a, truth = rig
    f, uv = truth["force"], truth["markers"]
    assert f.shape == (PRESS + SLIDE + 1, 3) and uv.shape == (PRESS + SLIDE + 1, sensor.n_markers, 2)
    assert np.all(f[0] == 0.0) and f[PRESS, 2] > 0.1, f[:, 2]
    assert abs(f[PRESS, 0]) < 0.1 * f[PRESS, 2]
    ratio = f[-8:, 0] / f[-8:, 2]  # the last 8 steps of the slide: sliding
    assert np.all(np.abs(ratio - MU_TRUE) < 0.1 * MU_TRUE), ratio
    assert np.sqrt(((uv - uv[0]) ** 2).sum(-1).mean()) > 0.3  # px


@pytest.mark.parametrize("free_nu", [False, True], ids=["nu_known", "nu_free"])
def test_calibration_recovers_E_and_friction(rig, free_nu):
    """From E + 40 % and friction - 40 %, 12 iterations of calibrate recover E within 5 % and the
    friction within 10 % (the issue's numbers; measured -1.9 % and +2.7 % with nu known).

    nu free (guess 0.4 for 0.3): recovered too, to 0.03 (measured 0.3016, with E -0.3 % and
    friction -0.1 %). It is the least determined of the three: a 5 % change of nu raises the loss
    4e-4, of the friction 1.1e-3, of E 1.7e-3 (the force term: displacement-controlled markers
    barely see E); with 0.05 px marker and 1 % force noise a 20-iteration fit found nu 0.288
    (-3.9 %) against E +0.4 % and friction +1.3 %. Fix nu where it is known."""
    scene, sensor, a, truth = rig
    guess = {"fem.E": 1.4 * E_TRUE, "tools.friction[1]": 0.6 * MU_TRUE}
    if free_nu:
        guess["fem.nu"] = 0.4
    set_params(scene)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = calibrate(scene, sensor, a, markers=truth["markers"], force=truth["force"], params=guess,
                      bounds={"fem.E": E_BOUNDS, "fem.nu": NU_BOUNDS}, iters=12, lr=0.1)
    # one sub-step count inside the bounds: no warning of calibrate's
    assert not [w for w in caught if "calibrate:" in str(w.message)], [str(w.message) for w in caught]
    E, mu, nu = r.params["fem.E"], r.params["tools.friction[1]"], r.params.get("fem.nu", NU_TRUE)
    print(f"\ncalibration: E {E:.1f} Pa ({E / E_TRUE - 1:+.2%}), friction {mu:.4f} ({mu / MU_TRUE - 1:+.2%}), "
          f"nu {nu:.4f}{'' if free_nu else ' (known)'}, loss {r.losses[0]:.3g} -> {r.loss:.3g} in {len(r.losses)} "
          f"iterations, {r.wall_seconds:.1f} s")
    assert abs(E / E_TRUE - 1) < 0.05, r.history
    assert abs(mu / MU_TRUE - 1) < 0.10, r.history
    assert abs(nu - NU_TRUE) < 0.03, r.history
    assert r.loss < 1e-2 * r.losses[0]
    assert scene.get_param("fem.E") == E  # left with the identified values
    set_params(scene)


def test_marker_gradient_matches_finite_differences(rig):
    """The DiffTactile users' complaint: the gradient reaches the markers. d loss / d log p of
    the marker term alone (readings recorded at the truth, evaluated at E = 36 kPa, nu = 0.35,
    friction 0.4) for p = E, nu, friction, against central differences in f64 (h = 1e-5
    relative): 1e-3 relative where max(|fd|, |ad|) exceeds 1e-3 of the largest."""
    scene, sensor, a, truth = rig
    loss = readings_loss(sensor, markers=truth["markers"], mount=0)
    assert loss.terms == ["markers"]
    at = {"fem.E": (0, 3.6e4), "fem.nu": (0, 0.35), "tools.friction": (1, 0.4)}

    def value(shift=None):
        for name, (row, v) in at.items():
            scene.set_param(name, v * (1 + (shift[1] if shift and shift[0] == name else 0.0)), row=row)
        scene.reset()
        return rollout_loss(scene, a, loss, READINGS_OBSERVE, grad=False)[0]

    value()
    scene.reset()  # rollout_loss runs from the current state
    L, g, _ = rollout_loss(scene, a, loss, READINGS_OBSERVE, grad=True)
    ad = np.array([g.params[name][row] * v for name, (row, v) in at.items()])
    h = 1e-5
    fd = np.array([(value((name, h)) - value((name, -h))) / (2 * h) for name in at])
    set_params(scene)
    print(f"\nmarker term {L:.4g}: d/dlog(E, nu, friction) ad {ad} fd {fd}")
    assert L > 0 and np.all(np.isfinite(ad))
    # E, nu and friction all reach the markers. E only weakly: under a displacement-controlled
    # indenter a linear gel's quasi-static displacements do not depend on E; the markers see it
    # through inertia, damping and the penalty's give (measured: d/dlog E 0.0013 against 0.011
    # for nu and -0.089 for the friction, loss 0.011)
    assert np.all(np.abs(ad) > 1e-2 * L), ad
    big = np.maximum(np.abs(fd), np.abs(ad))
    mask = big > 1e-3 * big.max()
    err = (np.abs(fd - ad)[mask] / big[mask]).max()
    print(f"max relative error {err:.1e}")
    assert err < 1e-3, f"relative error {err:.2e}: ad {ad}, fd {fd}"


def test_bad_recordings_are_refused(rig):
    scene, sensor, a, truth = rig
    n, m = PRESS + SLIDE + 1, sensor.n_markers
    p = {"fem.E": 4e4}
    with pytest.raises(ValueError, match=rf"markers must have shape \({n}, {m}, 2\)"):
        calibrate(scene, sensor, a, markers=truth["markers"][:, :, :1], params=p)
    with pytest.raises(ValueError, match=rf"force must have shape \({n}, 3\)"):
        calibrate(scene, sensor, a, force=truth["force"][1:], params=p)
    bad = truth["force"].copy()
    bad[5, 2] = math.nan
    with pytest.raises(ValueError, match=r"force contains NaN or inf .*index \(5, 2\)"):
        calibrate(scene, sensor, a, force=bad, params=p)
    with pytest.raises(ValueError, match="markers .* and/or force"):
        calibrate(scene, sensor, a, params=p)
    with pytest.raises(ValueError, match="unknown parameter"):
        calibrate(scene, sensor, a, force=truth["force"], params={"fem.young": 4e4})
    with pytest.raises(ValueError, match="do not move"):
        calibrate(scene, sensor, a, markers=np.repeat(truth["markers"][:1], n, axis=0), params=p)
    off = TactileSensor(scene.fem_bodies[0], markers=(5, 5))  # built at the identity, not at the mount
    with pytest.raises(ValueError, match="built at mount pose"):
        calibrate(scene, off, a, force=truth["force"], params=p)

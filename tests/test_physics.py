"""Physics sanity against laws and measured behaviour."""

import numpy as np

import physim as ps


def test_free_fall_follows_half_g_t_squared_until_the_floor():
    scene = ps.Scene(dim=2, grid_res=32, substeps_per_step=10, boundary="slip")
    scene.add_body(ps.Box(center=(0.5, 0.6), size=(0.12, 0.12)), ps.Elastic(E=2e3, nu=0.3))
    scene.build(max_steps=200)
    y0 = scene.particle_positions()[:, 1].mean()
    t, ys, ts = 0.0, [], []
    for _ in range(30):
        scene.forward(np.zeros((1, 0)), requires_grad=False)
        t += scene.dt * scene.substeps_per_step
        ys.append(scene.particle_positions()[:, 1].mean())
        ts.append(t)
    ys, ts = np.array(ys), np.array(ts)
    expected = y0 - 0.5 * 9.8 * ts**2
    assert np.abs(ys - expected).max() < 0.01 * (y0 - expected[-1])
    # keep falling: the floor (3 wall cells, slip) stops it without letting particles through;
    # an elastic block then bounces, so only the lowest point over time is checked
    lowest = []
    for _ in range(40):
        scene.forward(np.zeros((5, 0)), requires_grad=False)
        lowest.append(scene.particle_positions()[:, 1].min())
    assert 2 * scene.dx < min(lowest) < 5 * scene.dx
    assert lowest[-1] < 0.5  # it does not fly back up to where it started


def _volume(scene):
    F = scene.get_state()["mpm.F"]
    return (np.linalg.det(F) * scene.spacing**scene.dim).sum()


def test_water_column_spreads_and_keeps_volume():
    scene = ps.Scene(dim=2, grid_res=48, substeps_per_step=20, boundary="slip")
    water = ps.Fluid(bulk_modulus=2e3, viscosity=0.0)
    scene.add_body(ps.Box(center=(0.2, 0.3), size=(0.2, 0.4)), water)
    scene.build(max_steps=100)
    v0 = _volume(scene)
    width0 = np.ptp(scene.particle_positions()[:, 0])
    scene.forward(np.zeros((60, 0)), requires_grad=False)
    x = scene.particle_positions()
    assert np.ptp(x[:, 0]) > 2.5 * width0  # the column collapsed and spread along the floor
    assert x[:, 1].max() < 0.35  # and is no longer 0.5 tall
    assert abs(_volume(scene) / v0 - 1) < 0.03


def test_sand_pile_comes_to_rest_with_plausible_slope():
    scene = ps.Scene(dim=2, grid_res=48, substeps_per_step=20, boundary="friction", wall_friction=0.5)
    scene.add_body(ps.Box(center=(0.5, 0.22), size=(0.12, 0.3)), ps.Sand(E=3e3, nu=0.3, friction_angle=35.0))
    scene.build(max_steps=400)
    scene.forward(np.zeros((400, 0)), requires_grad=False)  # 1.3 s
    x, v = scene.particle_positions(), scene.particle_velocities()
    assert np.linalg.norm(v, axis=1).mean() < 0.02  # at rest
    height = x[:, 1].max() - x[:, 1].min()
    half_width = 0.5 * np.ptp(x[:, 0])
    slope = np.degrees(np.arctan2(height, half_width))
    assert 8.0 < slope < 50.0, slope  # spread out, but not flat like a liquid
    assert np.ptp(x[:, 0]) > 0.12 * 1.2  # it did collapse


def _top(x, at):
    return x[np.abs(x[:, 0] - at) < 0.02, 1].max()


def _press(material):
    """Press a sphere 3.5 cm into the top of a block, lift it away, let the block relax;
    returns the dent: the top surface under the tool relative to the top near the sides."""
    scene = ps.Scene(dim=2, grid_res=48, substeps_per_step=10, boundary="sticky")
    scene.add_body(ps.Box(center=(0.5, 0.17), size=(0.3, 0.2)), material)  # top at y = 0.27
    scene.add_tool(ps.SphereTool(position=(0.5, 0.33), radius=0.05, friction=0.0))
    scene.build(max_steps=256)
    scene.forward(np.zeros((20, 3)), requires_grad=False)  # settle under gravity
    travel = 0.045  # the tool's lowest point ends 3.5 cm below the top
    n_press = int(round(travel / (1.0 * scene.dt * scene.substeps_per_step)))
    press = np.tile([0.0, -1.0, 0.0], (n_press, 1))
    lift = np.tile([0.0, 1.0, 0.0], (n_press + 10, 1))
    scene.forward(np.concatenate([press, lift, np.zeros((60, 3))]), requires_grad=False)
    x = scene.particle_positions()
    return 0.5 * (_top(x, 0.38) + _top(x, 0.62)) - _top(x, 0.5)


def test_plasticine_keeps_a_dent_and_elastic_springs_back():
    dent_clay = _press(ps.Plasticine(E=5e3, nu=0.2, yield_stress=30.0))
    dent_jelly = _press(ps.Elastic(E=5e3, nu=0.2))
    print(f"dent: plasticine {dent_clay:.4f} m, elastic {dent_jelly:.4f} m")
    assert dent_clay > 0.005  # a lasting dent of more than 5 mm (the tool went 3.5 cm deep)
    assert dent_jelly < 0.3 * dent_clay  # the elastic block came back

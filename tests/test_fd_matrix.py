"""The finite-difference matrix: every differentiable input of an MPM scene against central
differences (f64), generated from the declarations so that a new parameter, state entry or
action column cannot escape it.

Scenes: three 2D scenes that together hold every MPM material, every tool shape and every wall
mode, each with several bodies and two tools (hard contact except one soft sphere; the box,
capsule, cylinder and cup rotated); they share one compiled layout (grid 16, at most 4
materials, 2 tools, generic kernels, K = 16, 8 steps), so the 2D kernels compile once. Two 3D
scenes (grid 16) hold every material but the rigid body (see :data:`ELSEWHERE_3D`), four bodies
each, two of them pressed by a rotated capsule; they have the layout of the small 3D scene of
tests/conftest.py, so they compile no 3D kernels of their own. Every scene runs 8 steps of 3 substeps = 24 substeps
(beyond 16) with ``checkpoint_every=5``, so checkpoint chunk boundaries fall inside env steps
(substeps 5, 10, 20).

What is checked, per scene, all read from the built scene at run time:

- every differentiable parameter (``scene.describe_params()``), every row (material or tool):
  a central difference of the loss against the analytic entry; cells in :data:`NOT_READ` (a
  material whose model never reads the parameter) must have an analytic gradient of exactly 0
  and a loss that does not move when the parameter does;
- every state entry (``scene.state_names``: ``mpm.x``, ``mpm.v``, ``mpm.C``, ``mpm.F``,
  ``mpm.Jp``, ``tools.pos``, ``tools.rot``): a directional derivative along a random direction;
  the initial rotation of each tool on its own;
- every action column (each tool's linear and angular velocity, the muscle actuation): a
  directional derivative along a random direction over the steps.

The plastic 3D scene also starts its plastic particles at a deformation gradient with two equal singular
values beyond the yield surface (and the sand at an isotropic one), and checks the derivative
along the shear of the tied pair, the term the SVD adjoint's clamped gap would drop.
"""

import gc
from dataclasses import dataclass, field

import numpy as np
import pytest
from gradcheck import assert_close, central_difference, loss_and_grad, loss_with_state

import physim as ps
from physim import materials as mat_module
from physim.parts.tools import SHAPE_IDS
from physim.solvers.mpm import BOUND, BOUNDARY_IDS

STEPS, SUBSTEPS, CHECKPOINT = 8, 3, 5
#: central-difference steps. Parameters: relative to the value; particle state: absolute (the
#: loss carries ~1e-16 relative round-off, so h = 1e-6 leaves ~1e-10 |L| / h of noise in a
#: difference; truncation O(h^2) is far below). Tool poses decide which grid nodes are inside a
#: hard-contact tool (a jump in their velocity), so they move by only 1e-7 to make straddling
#: such a switch unlikely. Actions move the tools by h dt per substep, far less, and some of
#: their derivatives are small (2e-5 against a loss of 10 for a 3D box tool's spin): h = 1e-5
#: (measured there: h = 1e-5 agreed with reverse mode to 1e-6, h = 1e-7 only to 2e-3, round-off).
H_PARAM, H_STATE, H_TOOL, H_ACTION = 1e-6, 1e-6, 1e-7, 1e-5

#: Cells of the matrix that are not compared against a finite difference, and why: the
#: material's model never reads the parameter. For these the analytic gradient must be exactly
#: zero and the loss must not move when the parameter is changed (so a model that starts reading
#: one fails here until it is taken off this list and checked).
NOT_READ = {
    # Rigid bodies have no constitutive law: F stays I, the stress 0; only the density enters
    **{(p, "Rigid"): "rigid: no constitutive law" for p in ("E", "nu", "yield_stress", "friction_angle",
                                                             "viscosity")},
    # only the von Mises (Plasticine) and Bingham (Viscoplastic) return mappings read a yield stress
    **{("yield_stress", m): "no yield stress in this model"
       for m in ("Elastic", "NeoHookean", "Sand", "Snow", "Fluid", "Muscle")},
    # only Drucker-Prager (Sand) reads a friction angle
    **{("friction_angle", m): "not a Drucker-Prager material"
       for m in ("Elastic", "NeoHookean", "Plasticine", "Snow", "Fluid", "Viscoplastic", "Muscle")},
    # only the Newtonian fluid and the Bingham relaxation read a viscosity
    **{("viscosity", m): "not viscous in this model" for m in ("Elastic", "NeoHookean", "Plasticine", "Sand",
                                                               "Snow", "Muscle")},
    # only the Herschel-Bulkley flow rule (Viscoplastic) reads a flow index
    **{("flow_index", m): "not a Herschel-Bulkley material"
       for m in ("Elastic", "NeoHookean", "Plasticine", "Sand", "Snow", "Fluid", "Muscle", "Rigid")},
    # the fluid's E column is its bulk modulus (checked); it has no shear modulus, so nu is unused
    ("nu", "Fluid"): "fluid: pressure from the bulk modulus only",
}


#: state entries that only some materials read: in a scene without them the entry's gradient
#: must be exactly zero and the loss must not move with it (the plastic J of snow's hardening)
STATE_READ_BY = {"mpm.Jp": "Snow"}


def _material_classes():
    """Every concrete MPM material physim exports (a new one must join a scene below)."""
    return {name for name in mat_module.__all__
            if isinstance(getattr(mat_module, name), type)
            and issubclass(getattr(mat_module, name), mat_module.Material)
            and getattr(mat_module, name) is not mat_module.Material}


@dataclass
class Body:
    shape: object
    material: object
    velocity: tuple
    converge: float = 2.0  # an initial converging flow -converge (x - centre): strain away from 0
    actuator: int | None = None


@dataclass
class Spec:
    """A scene of the matrix: its bodies, tools and walls."""

    dim: int
    bodies: list
    tools: list
    boundary: str
    dt: float
    wall_friction: float = 0.3
    spacing: float | None = None
    grid_res: int = 16
    tied_F: dict = field(default_factory=dict)  # material class -> initial F of its particles
    push: list | None = None  # mean linear velocity of each tool (default: down at 1.5 m/s)


def _box2(c, s):
    return ps.Box(center=c, size=s)


SPECS = {
    # solids on sticky walls: a rotated box presses the elastic block, a rotated capsule the
    # muscle (actuated); a rigid block falls between them onto the neo-Hookean one
    "2d-solids-sticky": Spec(2, [
        Body(_box2((0.30, 0.255), (0.1875, 0.125)), ps.Elastic(E=800.0, nu=0.3), (0.4, -0.2)),
        Body(_box2((0.52, 0.255), (0.1875, 0.125)), ps.NeoHookean(E=800.0, nu=0.3), (-0.3, 0.0)),
        Body(_box2((0.72, 0.255), (0.125, 0.125)), ps.Muscle(E=800.0, nu=0.25, actuation_strength=200.0),
             (0.0, 0.0), actuator=0),
        Body(_box2((0.43, 0.39), (0.104, 0.104)), ps.Rigid(density=1.5), (0.3, -1.0), converge=0.0),
    ], [
        ps.BoxTool(position=(0.30, 0.35), rotation=0.3, half_extents=(0.06, 0.025), friction=0.5),
        ps.CapsuleTool(position=(0.72, 0.35), rotation=1.2, radius=0.03, half_length=0.05, friction=0.3),
    ], "sticky", dt=1e-3, spacing=1 / 48),
    # plastic materials on frictional walls: the sand slides along the floor into the
    # plasticine, a rotated cylinder presses it, a soft sphere the viscoplastic block; a rigid
    # block falls onto the plasticine
    "2d-plastic-friction": Spec(2, [
        Body(_box2((0.30, 0.255), (0.1875, 0.125)), ps.Plasticine(E=800.0, nu=0.25, yield_stress=6.0), (0.3, 0.0)),
        Body(_box2((0.52, 0.255), (0.1875, 0.125)), ps.Sand(E=800.0, nu=0.3, friction_angle=35.0), (-0.6, -0.3)),
        Body(_box2((0.72, 0.255), (0.125, 0.125)), ps.Viscoplastic(E=800.0, nu=0.3, yield_stress=5.0,
                                                                    viscosity=0.5), (0.2, 0.0)),
        Body(_box2((0.30, 0.39), (0.104, 0.104)), ps.Rigid(density=2.0), (-0.2, -1.0), converge=0.0),
    ], [
        ps.CylinderTool(position=(0.52, 0.35), rotation=0.4, radius=0.05, half_height=0.03, friction=0.4),
        ps.SphereTool(position=(0.72, 0.35), radius=0.04, friction=0.6, softness=60.0),
    ], "friction", dt=1e-3, wall_friction=0.4, spacing=1 / 48),
    # a fluid pushed sideways by a rotated cup and pressed by a hard sphere, a rigid block
    # floating on it, a snow block falling beside it; slip walls
    "2d-fluid-slip": Spec(2, [
        Body(_box2((0.42, 0.26), (0.3, 0.135)), ps.Fluid(bulk_modulus=500.0, viscosity=0.5), (0.2, 0.0)),
        Body(_box2((0.44, 0.385), (0.0833, 0.0833)), ps.Rigid(density=0.6), (0.0, -0.5), converge=0.0),
        Body(_box2((0.70, 0.40), (0.104, 0.104)), ps.Snow(E=800.0, nu=0.2), (-0.5, -1.0)),
    ], [
        ps.CupTool(position=(0.63, 0.27), rotation=0.2, radius=0.05, half_height=0.05, thickness=0.02,
                   friction=0.4),
        ps.SphereTool(position=(0.33, 0.395), radius=0.07, friction=0.5),
    ], "slip", dt=1e-3, spacing=1 / 48, push=[(-2.0, 0.5), (0.5, -1.5)]),
}

# the 3D scenes: every material but the rigid body, split over two scenes of four materials each, one
# body each on the floor of a 16^3 grid, a rotated capsule pressing two of them (hard contact),
# frictional walls. Four materials, one tool, grid 16, K = 16, 8 steps and 108 particles are the
# layout of conftest.small_scene(3, ...) (see test_layout_is_the_small_3d_scenes), so both scenes
# reuse the 3D generic kernels (forward and reverse) that tests/test_checkpoint.py and
# tests/test_gradients.py compile; one scene of all eight materials (n_mat 8) compiled a 3D layout
# of its own, forward and reverse. Rigid bodies in 3D are FD-checked in tests/test_rigid.py
# (test_gradients_match_finite_differences[3]: tool velocity, initial velocities, density):
# compiling the rigid variants of the 3D kernels here as well would cost ~35 s of CPU (measured
# in that test, cold: the rigid fused forward 9 s, its replay 10 s, the wall contact's per-wall
# adjoint 6 s, rigid_grid_reduce's 6 s, rigid_project's 3 s).
ELSEWHERE_3D = {"Rigid": "tests/test_rigid.py::test_gradients_match_finite_differences[3]"}


def _spec_3d(materials, tied_F=None, boundary="friction"):
    """A 3D scene of ``materials`` (four: the small 3D layout's material rows), on a 2 x 2 patch
    of the floor; the capsule lies across the first two blocks, its axis tilted off z."""
    return Spec(3, [
        Body(ps.Box(center=(0.3 + 0.2 * (k // 2), 0.24, 0.3 + 0.2 * (k % 2)), size=(0.1, 0.1, 0.1)), m,
             (0.3, -0.2, 0.1), converge=1.0, actuator=0 if isinstance(m, ps.Muscle) else None)
        for k, m in enumerate(materials)
    ], [
        ps.CapsuleTool(position=(0.3, 0.33, 0.4), rotation=(0.68, 0.68, 0.2, 0.15), radius=0.035, half_length=0.1,
                       friction=0.4),
    ], boundary, dt=5e-4, wall_friction=0.3, tied_F=tied_F or {})


# elastic solids: the capsule presses the elastic and the neo-Hookean block
SPECS["3d-solids-friction"] = _spec_3d([
    ps.Elastic(E=600.0, nu=0.3), ps.NeoHookean(E=600.0, nu=0.3), ps.Snow(E=600.0, nu=0.2),
    ps.Muscle(E=600.0, nu=0.2, actuation_strength=100.0)])
# plastic flow with tied singular values: two equal stretches, deviatoric log strain 0.049 >
# yield / 2 mu (0.0125 plasticine, 0.0098 viscoplastic); sand isotropically compressed. The
# capsule presses the plasticine and the sand. Rough walls (friction walls whose surface nodes
# also hold: the granular validations' floor); the wall kind is a runtime value, so this costs
# no layout of its own.
SPECS["3d-plastic-rough"] = _spec_3d([
    ps.Plasticine(E=800.0, nu=0.25, yield_stress=8.0), ps.Sand(E=800.0, nu=0.3, friction_angle=30.0),
    ps.Fluid(bulk_modulus=300.0, viscosity=1.0), ps.Viscoplastic(E=800.0, nu=0.3, yield_stress=6.0, viscosity=1.0)],
    tied_F={"Plasticine": np.diag([1.04, 0.98, 0.98]), "Viscoplastic": np.diag([1.04, 0.98, 0.98]),
            "Sand": np.diag([0.98, 0.98, 0.98])}, boundary="rough")


def unbuilt(spec: Spec) -> ps.Scene:
    """The scene of ``spec``, its bodies and tools added, not built yet."""
    scene = ps.Scene(dim=spec.dim, grid_res=spec.grid_res, dt=spec.dt, substeps_per_step=SUBSTEPS,
                     checkpoint_every=CHECKPOINT, boundary=spec.boundary, wall_friction=spec.wall_friction,
                     particle_spacing=spec.spacing, specialize=False)
    for k, b in enumerate(spec.bodies):
        scene.add_body(b.shape, b.material, velocity=b.velocity, actuator=b.actuator, jitter=0.3, seed=k)
    for tool in spec.tools:
        scene.add_tool(tool)
    return scene


def build(spec: Spec) -> ps.Scene:
    gc.collect()  # the previous scene of this layout is collected: its compiled engine is reused
    scene = unbuilt(spec)
    scene.build(max_steps=STEPS)
    init = scene.initial_state()
    x, v, mat = init["mpm.x"], init["mpm.v"], scene.particle_materials()
    C = init["mpm.C"]
    for b in spec.bodies:
        sel = mat == scene.materials.index(b.material)
        v[sel] -= b.converge * (x[sel] - x[sel].mean(axis=0))
        # APIC's C is the velocity gradient: without it the first substep's F is exactly I, on the
        # kinks of the plastic models (sand's cone apex at tr log F = 0)
        C[sel] = -b.converge * np.eye(spec.dim)
    over = {"mpm.v": v, "mpm.C": C}
    if spec.tied_F:
        F = init["mpm.F"]
        for name, F0 in spec.tied_F.items():
            F[mat == next(i for i, m in enumerate(scene.materials) if type(m).__name__ == name)] = F0
        over["mpm.F"] = F
    scene.set_initial_state(over)
    return scene


def _row_owner(scene, part, row):
    return type(scene.materials[row]).__name__ if part == "mpm" else f"tool {row} ({scene.tools[row].shape})"


def _set_raw(scene, name, row, value):
    """Set a parameter without the bounds check (restoring an unread column at 0, e.g. the
    friction angle of a non-sand material); every loss evaluation runs forward afresh."""
    part, _, short = name.partition(".")
    scene.partset.by_name()[part].params[short].set(row, value)


def _actions(scene, spec, rng):
    a = rng.normal(scale=0.3, size=(STEPS, scene.action_dim))
    for e in range(len(scene.tools)):
        push = np.zeros(scene.dim)
        push[1] = -1.5  # press the tools into the bodies
        if spec.push is not None:
            push[:] = spec.push[e]
        a[:, scene.tool_slice(e).start: scene.tool_slice(e).start + scene.dim] += push
    if scene.n_actuators:
        a[:, scene.actuation_slice] = np.clip(a[:, scene.actuation_slice] * 3, -1, 1)
    return a


def check_scene(key):
    """Every cell of the matrix for the scene ``key``; returns the cells checked (for the report)."""
    spec = SPECS[key]
    scene = build(spec)
    rng = np.random.default_rng(sum(map(ord, key)))
    actions = _actions(scene, spec, rng)
    n, dim = scene.n_particles, scene.dim
    weights = (rng.normal(size=(n, dim)), 0.05 * rng.normal(size=(n, dim)))
    loss, g = loss_and_grad(scene, actions, weights)
    f = lambda over=None, a=actions: loss_with_state(scene, a, weights, over)  # noqa: E731
    assert abs(f() - loss) <= 1e-12 * abs(loss), "forward passes with and without the tape disagree"
    checked = []

    # --- every differentiable parameter, every row
    for d in scene.describe_params():
        if not d["differentiable"]:
            continue
        name = d["name"]
        part, _, short = name.partition(".")
        assert name in g.params, f"{name} is declared differentiable but backward() returns no gradient"
        for row in range(d["rows"]):
            owner = _row_owner(scene, part, row)
            ad = g.params[name][row]
            value = scene.get_param(name, row)
            if (short, owner) in NOT_READ:
                assert ad == 0.0, f"{name} of {owner} is listed as unread ({NOT_READ[short, owner]}) but has " \
                                  f"gradient {ad}: check it instead"
                bump = 1.0 if value == 0 else 0.1 * abs(value)
                _set_raw(scene, name, row, value + bump)
                moved = f() - loss
                _set_raw(scene, name, row, value)
                assert abs(moved) <= 1e-11 * abs(loss), f"{name} of {owner} is listed as unread but the loss moved " \
                                                         f"by {moved:.3g} when it changed by {bump}"
                continue
            assert value != 0, (f"{key}: {name} of {owner} is declared differentiable but is 0 here: give the "
                                f"material a value, or list it in NOT_READ with the reason its model ignores it")
            h = H_PARAM * abs(value)
            def shifted(e, name=name, row=row, value=value):
                scene.set_param(name, value + e, row)
                out = f()
                scene.set_param(name, value, row)
                return out
            fd = central_difference(shifted, h)
            # the loss must really depend on it (else the comparison is of two round-off values)
            assert abs(fd) * abs(value) > 1e-7 * abs(loss), f"{key}: the loss barely depends on {name} of {owner}"
            assert_close([fd], [ad], f"{key}: d/d {name} of {owner}")
            checked.append(f"{name}[{owner}]")

    # --- every state entry: one random direction each; each tool's initial rotation on its own
    init = scene.initial_state()
    for name in scene.state_names:
        u = rng.normal(size=init[name].shape)
        h = H_TOOL if name.startswith("tools.") else H_STATE
        fd = central_difference(lambda e, name=name, u=u: f({name: init[name] + e * u}), h)
        ad = float((g.initial[name] * u).sum())
        reader = STATE_READ_BY.get(name)
        if reader is not None and reader not in {type(m).__name__ for m in scene.materials}:
            assert np.all(g.initial[name] == 0) and abs(fd) * h <= 1e-12 * abs(loss), \
                f"{key}: initial {name} is read only by {reader}, yet ad={ad:.3g}, fd={fd:.3g}"
            continue
        assert_close([fd], [ad], f"{key}: d/d initial {name} (random direction)")
        checked.append(f"initial {name}")
    rot = init["tools.rot"]
    for e in range(len(scene.tools)):
        u = np.zeros_like(rot)
        u[e] = [1.0, 0.0, 0.0, 0.0] if dim == 2 else rng.normal(size=4)
        fd = central_difference(lambda s, u=u: f({"tools.rot": rot + s * u}), H_TOOL)
        if scene.tools[e].shape == "sphere":  # turning a sphere about its centre changes nothing
            ad = float((g.initial["tools.rot"] * u).sum())
            assert max(abs(ad), abs(fd)) * H_TOOL <= 1e-12 * abs(loss), f"{key}: sphere rotation: {ad=:.3g}, {fd=:.3g}"
            continue
        assert_close([fd], [float((g.initial["tools.rot"] * u).sum())], f"{key}: d/d initial rotation of tool {e}")
        checked.append(f"initial rotation of tool {e}")

    # --- every action column along a random direction over the steps
    for j in range(scene.action_dim):
        u = np.zeros_like(actions)
        u[:, j] = rng.normal(size=STEPS)
        fd = central_difference(lambda s, u=u: f(a=actions + s * u), H_ACTION)
        assert_close([fd], [float((g.actions * u).sum())], f"{key}: d/d action column {j} (random direction)")
        checked.append(f"action column {j}")

    # --- tied singular values under plastic flow: the shear of the tied pair (axes 1, 2)
    if spec.tied_F:
        mat = scene.particle_materials()
        for mname in spec.tied_F:
            u = np.zeros_like(init["mpm.F"])
            sel = mat == next(i for i, m in enumerate(scene.materials) if type(m).__name__ == mname)
            u[sel, 1, 2] = u[sel, 2, 1] = rng.normal(size=int(sel.sum()))
            fd = central_difference(lambda s, u=u: f({"mpm.F": init["mpm.F"] + s * u}), H_STATE)
            assert_close([fd], [float((g.initial["mpm.F"] * u).sum())],
                         f"{key}: d/d initial F of the {mname} particles along the shear of their tied singular values")
            checked.append(f"tied-singular-value shear of {mname}")
    return checked


def test_layout_is_the_small_3d_scenes():
    """Both 3D scenes have the layout of ``small_scene(3, ...)`` (the 3D generic kernels the
    checkpoint and gradient tests compile), so the matrix compiles no 3D layout of its own: a
    scene that outgrows it (a fifth material, more particles, a second tool) fails here."""
    from conftest import SMALL_STEPS, small_scene

    small = small_scene(3, ps.Elastic(E=600.0, nu=0.3), build=False)._layout(SMALL_STEPS)
    for key, spec in SPECS.items():
        if spec.dim == 3:
            layout = unbuilt(spec)._layout(STEPS)
            assert layout == small, f"{key}: {layout} is not the small 3D layout {small}"


@pytest.mark.parametrize("key", list(SPECS))
def test_fd_matrix(key):
    checked = check_scene(key)
    assert checked


def test_matrix_covers_every_material_tool_shape_and_wall_mode():
    """The scenes above hold every material class physim exports (in 2D and in 3D), every tool
    shape, every wall mode, several bodies and tools each, and a horizon longer than 16 substeps
    whose checkpoint chunks end inside env steps. Reads the declarations, so a new material,
    shape or wall mode fails here until a scene holds it."""
    for dim, elsewhere in ((2, {}), (3, ELSEWHERE_3D)):
        held = {type(b.material).__name__ for s in SPECS.values() if s.dim == dim for b in s.bodies}
        assert held | set(elsewhere) == _material_classes(), f"{dim}D scenes miss {_material_classes() - held}"
    assert {t.shape for s in SPECS.values() for t in s.tools} == set(SHAPE_IDS)
    assert {s.boundary for s in SPECS.values()} == set(BOUNDARY_IDS)
    # in 2D every wall mode but "rough" (its code is the friction walls' plus one more row of
    # nodes; checked in 3D above, to add no 2D scene)
    assert {s.boundary for s in SPECS.values() if s.dim == 2} == set(BOUNDARY_IDS) - {"rough"}
    hard = {t.shape for s in SPECS.values() for t in s.tools if t.softness == 0 and t.rotation is not None}
    assert hard >= set(SHAPE_IDS) - {"sphere"}, "every non-spherical tool shape rotated, with hard contact"
    for s in SPECS.values():
        assert len(s.bodies) >= 2 and len(s.tools) >= (2 if s.dim == 2 else 1)
        # the walls act: a body starts on the floor, within half a cell of the wall nodes' band
        # (BOUND cells), so its particles' stencils reach wall nodes from the first substep
        dx = 1.0 / s.grid_res
        assert min(b.shape.bounds()[0][1] for b in s.bodies) < (BOUND + 0.5) * dx
    total = STEPS * SUBSTEPS
    assert total > 16 and any(k % SUBSTEPS for k in range(CHECKPOINT, total, CHECKPOINT))
    # every NOT_READ entry names a real parameter and material
    declared = set(mat_module.DIFF_PARAMS) | {"density"}
    assert {p for p, _ in NOT_READ} <= declared and {m for _, m in NOT_READ} <= _material_classes()


def test_assert_close_compares_where_only_the_analytic_gradient_is_large():
    """The FD helper's floor: an entry is skipped only when both |fd| and |analytic| are below
    it, so a large wrong analytic entry where the true gradient is 0 fails (a floor on |fd|
    alone skipped it), and so does a missing analytic entry; round-off-sized entries in both
    are not compared."""
    fd, ad = np.array([1.0, 0.0, -0.5]), np.array([1.0, 0.3, -0.5])
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(fd, ad, "a wrong analytic entry where fd == 0")
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(ad, fd, "an analytic entry missing where fd != 0")
    assert_close([1.0, 1e-9, -0.5], [1.0, -2e-9, -0.5], "round-off entries below the floor")
    with pytest.raises(AssertionError, match="vacuous"):
        assert_close([0.0], [0.0], "nothing to compare")

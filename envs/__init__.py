"""physim's Gymnasium environments, registered as ``physim/<Task>-v0``.

    import gymnasium as gym
    import physim.envs  # registers the tasks
    env = gym.make("physim/Pinch-v0", render_mode="rgb_array")

Every env's ``unwrapped`` also offers the differentiable rollout API of
:class:`physim.envs.base.PhysimEnv` (``loss``, ``loss_and_grad``, ``evaluate``).
"""

from __future__ import annotations

import gymnasium as gym

from .base import PhysimEnv
from .vector import vector_entry_point

__all__ = ["PhysimEnv", "ENVS", "describe"]

#: id -> (entry point, one-line description)
ENVS: dict[str, tuple[str, str]] = {
    "physim/Pouring-v0": ("physim.envs.pouring:PouringEnv",
                          "3D water: tilt and move a held cup to pour its water into a target container (FluidLab)"),
    "physim/LatteArt-v0": ("physim.envs.latte_art:LatteArtEnv",
                           "3D two fluids: pour milk onto coffee to draw a target pattern on the surface (FluidLab)"),
    "physim/IceCream-v0": ("physim.envs.ice_cream:IceCreamEnv",
                           "3D viscoplastic: shape soft-serve ice cream into a target shape with a tool (FluidLab)"),
    "physim/Gathering-v0": ("physim.envs.gathering:GatheringEnv",
                            "3D water + floating stiff bodies: gather them in a target region with a paddle"),
    "physim/Pinch-v0": ("physim.envs.pinch:PinchEnv",
                        "3D plasticine: press a dent matching a target with a sphere finger (PlasticineLab)"),
    "physim/RollingPin-v0": ("physim.envs.rolling_pin:RollingPinEnv",
                             "3D plasticine: flatten dough to a target sheet with a rolling pin (PlasticineLab)"),
    "physim/Writer-v0": ("physim.envs.writer:WriterEnv",
                         "3D plasticine: carve a target stroke into a plasticine slab with a pen tool (PlasticineLab)"),
    "physim/Walker2D-v0": ("physim.envs.walker:Walker2DEnv",
                           "2D actuated soft robot that must walk forward (DiffTaichi / ChainQueen walker)"),
    "physim/Walker3D-v0": ("physim.envs.walker:Walker3DEnv",
                           "3D four-legged actuated soft robot that must walk forward (ChainQueen)"),
    "physim/MassSpringWalker2D-v0": ("physim.envs.mass_spring_walker:MassSpringWalker2DEnv",
                                     "2D mass-spring robot (point masses, actuated springs) that must walk "
                                     "forward (DiffTaichi mass_spring)"),
    "physim/SurfaceFollowing-v0": ("physim.envs.surface_following:SurfaceFollowingEnv",
                                   "3D tactile: slide a FEM gel sensor along a curved rigid surface at a target "
                                   "contact force (DiffTactile)"),
    "physim/ElasticGrasp-v0": ("physim.envs.elastic_grasp:ElasticGraspEnv",
                               "3D tactile: lift an elastic MPM object between two FEM gel fingertips without "
                               "slip (DiffTactile)"),
    "physim/Folding-v0": ("physim.envs.folding:FoldingEnv",
                          "3D thin shell: fold a paper strip with a gripper so the crease it keeps matches a target "
                          "(ThinShellLab)"),
    "physim/Sliding-v0": ("physim.envs.sliding:SlidingEnv",
                          "3D thin shell: drag a rubber mat across a table to a target pose with a pad, by friction"),
    "physim/Separating-v0": ("physim.envs.separating:SeparatingEnv",
                             "3D thin shells: slide the top sheet of a two-sheet stack to a target pose with a pad, "
                             "by friction, leaving the bottom sheet in place (ThinShellLab)"),
    "physim/CardBending-v0": ("physim.envs.card_bending:CardBendingEnv",
                              "3D thin shell, inverse: identify a card's bending stiffness and damping from its "
                              "observed fall"),
    "physim/Circulation-v0": ("physim.envs.circulation:CirculationEnv",
                              "3D air: steer a wall vent's jet (direction, speed, temperature) so the room's "
                              "temperature field matches a target (FluidLab)"),
    "physim/Mixing-v0": ("physim.envs.mixing:MixingEnv",
                         "3D two liquids: stir them with a moving rod until their concentration fields mix "
                         "(FluidLab)"),
    "physim/Transporting-v0": ("physim.envs.transporting:TransportingEnv",
                               "2D water + floating rigid box: push it to a target with the water jet of a moving "
                               "nozzle (FluidLab)"),
    "physim/IceCreamDynamic-v0": ("physim.envs.ice_cream_dynamic:IceCreamDynamicEnv",
                                  "2D soft-serve from a dispenser: move the cone under it so the cream piles into "
                                  "a target shape (FluidLab)"),
}


def describe() -> list[tuple[str, str]]:
    """(id, one-line description) of every registered environment."""
    return [(k, v[1]) for k, v in ENVS.items()]


# nondeterministic=True: parallel atomic adds (particle-to-grid) sum in a thread-dependent order,
# so replays agree to round-off (~1e-15 relative in f64), not bit for bit
for _id, (_entry, _doc) in ENVS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_entry, vector_entry_point=vector_entry_point(_entry), nondeterministic=True)

"""Floor helper shared by the plasticine / ice-cream tasks (IceCream, RollingPin, Writer).

The floor's height itself is the scene's: ``scene.floor``."""

from __future__ import annotations

__all__ = ["sink_into_floor"]


def sink_into_floor(scene, depth: float) -> None:
    """Lower every particle of the built ``scene`` by ``depth`` (into the floor's wall band,
    at most 1.5 cells above the domain's bottom) and make that the state ``reset()`` returns to.

    The walls act on grid nodes below ``3 dx`` while bodies must be sampled above it, so the
    bottom layer of a body resting exactly on the floor puts only ~3 % of its weight on wall
    nodes: a "sticky" floor then barely holds it and a sideways push slides the whole body.
    Sunk by ~0.6 cell, the bottom layer is held by the floor like dough pressed onto a table.
    """
    x = scene.particle_positions()
    x[:, 1] -= depth
    if x[:, 1].min() < 1.5 * scene.dx:
        raise ValueError(f"sinking by {depth} puts particles below 1.5 cells (y = {x[:, 1].min():.4f})")
    scene.set_initial_state(x=x)

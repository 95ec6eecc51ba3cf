"""Floor helpers shared by the plasticine / ice-cream tasks (IceCream, RollingPin, Writer)."""

from __future__ import annotations

__all__ = ["FLOOR", "floor_height", "sink_into_floor"]

#: the grid's bottom wall on a 32-cell grid (3 cells); bodies are sampled above it
FLOOR = 3.0 / 32


def floor_height(grid_res: int) -> float:
    """Height of the grid's bottom wall (3 cells) on a ``grid_res`` grid."""
    return 3.0 / grid_res


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

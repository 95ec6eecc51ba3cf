"""Parts: the solvers, the tools and the coupler, each through one protocol
(:mod:`physim.parts.base`). A scene's parts are compiled together as a :class:`PartSet`,
pooled by layout so scenes of the same shape share compiled kernels.

Step order every substep: tools (kinematic poses) -> coupler (forces between solvers) ->
the solvers (FEM, MPM, mass-spring, thin shells; the FEM part evaluates the MPM <-> gel forces at its own
sub-steps and the MPM part reads their mean). Each reads slot ``l`` and writes slot ``l + 1``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from .base import Controls, Param, Part

__all__ = ["Part", "Param", "Controls", "SceneLayout", "PartSet", "get_partset", "release_partset"]


@dataclass(frozen=True)
class SceneLayout:
    """Everything a scene's kernels are compiled for (capacities and compile-time choices).

    Attributes:
        dim: 2 or 3.
        K: substeps per checkpoint chunk the slot fields hold (slot axis K + 1).
        max_steps, action_capacity: shape of the action field.
        tools: tool rows (0: a scene without tools, compiled without contact).
        mpm: the MPM part's layout, or None.
        springs: the mass-spring part's layout, or None.
        coupler: the coupler's layout, or None.
        fem: the FEM part's layout, or None.
        shell: the thin-shell part's layout, or None.
        worlds: copies of the scene the parts simulate together (``Scene(n_worlds=...)``).
    """

    dim: int
    K: int
    max_steps: int
    action_capacity: int
    tools: int
    mpm: object = None
    springs: object = None
    coupler: object = None
    fem: object = None
    shell: object = None
    worlds: int = 1


class PartSet:
    """The compiled parts of one layout, in step order (:attr:`parts`)."""

    def __init__(self, layout: SceneLayout, real):
        from .tools import ToolsPart

        self.layout = layout
        self.controls = Controls(layout.max_steps, layout.action_capacity, real)
        self.tools = ToolsPart(layout.dim, layout.tools, layout.K, real, self.controls, layout.worlds)
        self.mpm = self.springs = self.coupler = self.fem = self.shell = None
        if layout.mpm is not None:
            from ..solvers.mpm import MPMEngine

            self.mpm = MPMEngine(layout.mpm, layout.K, real, self.tools, self.controls)
        if layout.springs is not None:
            from .springs import SpringsPart

            self.springs = SpringsPart(layout.springs, layout.K, real, self.tools, self.controls)
        if layout.fem is not None:
            from .fem import FEMPart

            self.fem = FEMPart(layout.fem, layout.K, real, self.tools, self.controls)
        if layout.shell is not None:
            from .shell import ShellPart

            self.shell = ShellPart(layout.shell, layout.K, real, self.tools, self.controls)
        if layout.coupler is not None:
            from .coupler import Coupler

            self.coupler = Coupler(layout.coupler, layout.K, real, self.mpm, self.springs, self.fem)
        if self.fem is not None:
            self.fem.coupler = self.coupler if self.coupler is not None and self.coupler.fem is not None else None
        # the FEM part before the MPM part: it evaluates the MPM <-> gel forces at its sub-steps
        # and the MPM part reads their mean (physim.parts.coupler)
        self.parts: list[Part] = [p for p in (self.tools, self.coupler, self.fem, self.mpm, self.springs,
                                              self.shell) if p is not None]

    def by_name(self) -> dict[str, Part]:
        return {p.name: p for p in self.parts}


_POOL: dict[SceneLayout, list] = {}


def get_partset(layout: SceneLayout, owner, real) -> PartSet:
    """A :class:`PartSet` for ``layout`` not used by another live owner (compiles only when new)."""
    pool = _POOL.setdefault((layout, str(real)), [])
    for attempt in range(2):
        for entry in pool:
            ps, ref = entry
            if ref is None or ref() is None:
                entry[1] = weakref.ref(owner)
                return ps
        if attempt == 0 and pool:
            # every compiled set of this layout is held: a dropped scene in a reference cycle (a
            # demo's, an env's) may only await the cycle collector; collecting costs ~0.1 s, a
            # compile of the layout tens of seconds
            import gc

            gc.collect()
    ps = PartSet(layout, real)
    pool.append([ps, weakref.ref(owner)])
    return ps


def release_partset(partset: PartSet) -> None:
    for pool in _POOL.values():
        for entry in pool:
            if entry[0] is partset:
                entry[1] = None


def _forget() -> None:
    """Called when Taichi restarts: every field is gone."""
    _POOL.clear()

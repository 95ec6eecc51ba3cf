"""Solvers. Compiled engines are pooled by layout so scenes of the same shape share kernels."""

from __future__ import annotations

import weakref

_ENGINES: dict[tuple, list] = {}


def get_engine(cls, layout: tuple, owner, real):
    """An engine of ``cls`` for ``layout`` not used by another live owner (compiles only when new)."""
    pool = _ENGINES.setdefault((cls.__name__, layout), [])
    for entry in pool:
        engine, ref = entry
        if ref is None or ref() is None:
            entry[1] = weakref.ref(owner)
            return engine
    engine = cls(layout, real)
    pool.append([engine, weakref.ref(owner)])
    return engine


def release_engine(engine) -> None:
    for pool in _ENGINES.values():
        for entry in pool:
            if entry[0] is engine:
                entry[1] = None


def _forget_engines() -> None:
    """Called when Taichi restarts: every field is gone."""
    _ENGINES.clear()

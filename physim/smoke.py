"""``PHYSIM_SMOKE=1``: run every command at its smallest size.

The README's commands are tested as written (``tests/test_readme_commands.py``), and at
their real sizes they take minutes each. With ``PHYSIM_SMOKE=1`` in the environment the
``physim`` command and the demos keep every code path but shrink the work: ``optimize``
runs :data:`ITERS` iteration(s) over a horizon of :data:`HORIZON` steps, a headless demo
films :data:`FRAMES` frames, and an interactive demo window renders :data:`FRAMES` frames,
presses and releases a key through the window's interactor and closes itself with Escape.
Without the variable (or with ``PHYSIM_SMOKE=0``) nothing changes.
"""

from __future__ import annotations

import os

__all__ = ["ENV", "ITERS", "HORIZON", "FRAMES", "enabled", "shrink"]

ENV = "PHYSIM_SMOKE"
#: optimizer iterations, episode horizon and demo frames in smoke mode
ITERS, HORIZON, FRAMES = 1, 4, 2  # a horizon of 4 fits CMA-ES's default 4 keyframes


def enabled() -> bool:
    """Whether ``$PHYSIM_SMOKE`` asks for the smallest run (set, and not ``0``/``false``/``no``)."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def shrink(value: int | None, smallest: int) -> int | None:
    """``value`` capped at ``smallest`` in smoke mode (``None``, i.e. a default, becomes ``smallest``);
    ``value`` unchanged otherwise."""
    if not enabled():
        return value
    return smallest if value is None else min(int(value), smallest)

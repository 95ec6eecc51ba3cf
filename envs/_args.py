"""Keyword arguments of physim's tasks: declared once per task, validated, documented.

A task declares its size and settings as :class:`Arg` entries of its ``args`` dict (merged
along the class hierarchy); the value of each is the class attribute of the same name, which an
instance overrides when ``gym.make("physim/<Task>-v0", name=value)`` passes it. ``paper`` (a
dict, also merged) holds the values ``scale="paper"`` sets: the reference task's resolution.
:func:`arguments_table` writes the docstring's "Arguments" table from the same declarations,
so the documentation cannot drift from the code.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Arg", "SCALES", "arguments_table", "collect"]

#: the values ``scale`` accepts
SCALES = ("default", "paper")


@dataclass(frozen=True)
class Arg:
    """One keyword argument of a task.

    Attributes:
        doc: what it sets, with its unit.
        kind: ``"int"``, ``"float"``, ``"range"`` (an ordered pair of floats ``(lo, hi)``),
            ``"bool"``, ``"choices"`` (a non-empty tuple of distinct items of ``options``) or
            ``"spacing"`` (a float, or ``None``: ``dx / 2``).
        lo, hi: inclusive bounds of a number (of both ends of a range).
        options: the items a ``"choices"`` argument may hold.
    """

    doc: str
    kind: str = "float"
    lo: float = -math.inf
    hi: float = math.inf
    options: tuple = ()

    def check(self, owner: str, name: str, value: Any) -> Any:
        """``value`` normalized (int, float, tuple), or a ``ValueError`` naming ``name`` and the value."""

        def fail(what: str):
            raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")

        def number(v, integer: bool):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                return None
            if integer and not (isinstance(v, (int, np.integer)) or float(v).is_integer()):
                return None
            v = int(v) if integer else float(v)
            return v if math.isfinite(v) and self.lo <= v <= self.hi else None

        bounds = f"in [{self.lo:g}, {self.hi:g}]"
        if self.kind == "int":
            v = number(value, True)
            return v if v is not None else fail(f"an integer {bounds}")
        if self.kind == "float":
            v = number(value, False)
            return v if v is not None else fail(f"a finite number {bounds}")
        if self.kind == "spacing":
            if value is None:
                return None
            v = number(value, False)
            return v if v is not None and v > 0 else fail(f"None (dx / 2) or a positive number {bounds}")
        if self.kind == "bool":
            return bool(value) if isinstance(value, (bool, np.bool_)) else fail("True or False")
        if self.kind == "range":
            if not (isinstance(value, (tuple, list, np.ndarray)) and len(value) == 2):
                fail(f"a pair (lo, hi) with lo <= hi, both {bounds}")
            pair = (number(value[0], False), number(value[1], False))
            if None in pair or pair[0] > pair[1]:
                fail(f"a pair (lo, hi) with lo <= hi, both {bounds}")
            return pair
        if self.kind == "choices":
            items = (value,) if isinstance(value, str) else value
            if not (isinstance(items, (tuple, list)) and items and all(i in self.options for i in items)
                    and len(set(items)) == len(items)):
                fail(f"a non-empty tuple of distinct items of {self.options}")
            return tuple(items)
        raise TypeError(f"unknown Arg kind {self.kind!r}")


def collect(cls, attribute: str) -> dict:
    """The dicts ``attribute`` of ``cls`` and its bases merged, the most derived winning."""
    merged: dict = {}
    for klass in reversed(cls.__mro__):
        merged.update(klass.__dict__.get(attribute, {}))
    return merged


def _show(value) -> str:
    if value is None:
        return "dx / 2"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) if not isinstance(v, str) else repr(v) for v in value) + ")"
    return repr(value) if isinstance(value, str) else str(value)


def arguments_table(cls) -> str:
    """The "Arguments" table of ``cls``'s docstring (reStructuredText simple table): every
    ``gym.make`` keyword argument, its default, its value at ``scale="paper"`` and what it sets."""
    args = collect(cls, "args")
    paper = collect(cls, "paper")
    rows = [("render_mode", "None", "", "None, 'rgb_array' or 'human'"),
            ("horizon", str(cls.default_horizon), _show(paper["horizon"]) if "horizon" in paper else "",
             "episode length in env steps"),
            ("scale", "'default'", "", "'default' (small, CPU-sized) or 'paper' (the reference task's "
             "resolution: the paper column); explicit arguments override it")]
    for name, arg in args.items():
        rows.append((name, _show(getattr(cls, name)), _show(paper[name]) if name in paper else "", arg.doc))
    widths = [max(len(r[i]) for r in rows + [("Argument", "Default", "paper", "")]) for i in range(3)]
    rule = "  ".join("=" * w for w in widths) + "  " + "=" * 60
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(("Argument", "Default", "paper"), widths, strict=True))
             + "  Meaning", rule]
    indent = " " * (sum(widths) + 6)
    for r in rows:
        words, text, out = r[3].split(), "", []
        for w in words:  # wrap the meaning at ~60 characters under its column
            if text and len(text) + 1 + len(w) > 60:
                out.append(text)
                text = w
            else:
                text = f"{text} {w}".strip()
        out.append(text)
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + out[0])
        lines.extend(indent + t for t in out[1:])
    lines.append(rule)
    note = getattr(cls, "paper_note", "")
    if note:
        lines += ["", *textwrap.wrap(f'``scale="paper"``: {note}', width=92)]
    return "\n".join(lines)

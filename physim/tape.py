"""physim's tape: records kernel launches and replays their gradients in reverse.

What it records
    For every substep a solver records, with :meth:`Tape.record`, the phase kernels that
    make it up as :class:`Launch` entries (kernel, arguments, how to differentiate it). The
    tape does not run them: the solver's forward pass computes the same outputs (MPM runs
    one fused kernel per substep). MPM also records one forward-only launch that restores
    the substep's scratch values in a single fused kernel (``replay=True``, ``grad=None``);
    the phase kernels are recorded with ``replay=False``, for their adjoints.

How reverse mode works
    Solvers keep per-particle state in fields with a leading *slot* axis of length
    K+1 (K substeps per checkpoint chunk): substep ``l`` reads slot ``l`` and writes
    slot ``l+1``. Scratch fields (the grid, SVD factors) are overwritten every
    substep. To differentiate substep ``l`` the tape first re-runs the launches
    marked ``replay=True`` (restoring that substep's scratch values; they only
    write scratch or slot ``l+1``, so this is idempotent), zeroes scratch gradients
    (the solver's ``zero_scratch_grads``), then runs each launch's gradient in reverse
    order. A launch's gradient is the kernel's Taichi-generated adjoint (``kernel.grad``)
    unless a hand-written ``grad`` callable was given (MPM: the SVD and G2P). Launches with
    ``grad=None`` (restoring scratch) are forward-only.

Overwrites
    Slot fields are written once per forward pass of a chunk, so nothing the
    backward pass needs is overwritten; scratch fields are recomputed as above.
    Gradients accumulate (``+=``) into input fields, as Taichi adjoints do; the
    scene zeroes them before each backward pass.

Debugging
    ``PHYSIM_TRACE_TAPE=1`` prints every adjoint launch as it runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Launch", "Tape"]

AUTO = "auto"
_TRACE = os.environ.get("PHYSIM_TRACE_TAPE") == "1"


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch."""

    kernel: Callable
    args: tuple
    grad: Any = AUTO  # "auto" -> kernel.grad, callable -> custom adjoint, None -> no adjoint
    replay: bool = False  # re-run before differentiating its substep

    def run_forward(self) -> None:
        self.kernel(*self.args)

    def run_backward(self) -> None:
        if self.grad is None:
            return
        if _TRACE:
            print("[tape] grad of", getattr(self.kernel, "__name__", self.kernel), self.args, flush=True)
        if self.grad == AUTO:
            self.kernel.grad(*self.args)
        else:
            self.grad(*self.args)


@dataclass
class Tape:
    """Per-substep lists of launches for the chunk being simulated."""

    recording: bool = True
    substeps: list[list[Launch]] = field(default_factory=list)
    _current: list[Launch] | None = None

    def clear(self) -> None:
        self.substeps.clear()
        self._current = None

    def begin_substep(self) -> None:
        self._current = []

    def end_substep(self) -> None:
        if self.recording and self._current is not None:
            self.substeps.append(self._current)
        self._current = None

    def record(self, kernel: Callable, *args, grad: Any = AUTO, replay: bool = False) -> None:
        """Record ``kernel(*args)`` for reverse mode, without running it.

        The solver's forward pass computes the outputs itself (MPM: one fused kernel per
        substep). ``replay=True`` marks a launch the tape re-runs before differentiating the
        substep (it must write only scratch or slot ``l + 1``: MPM's scratch restore); the
        others are recorded for their adjoints only."""
        if self.recording and self._current is not None:
            self._current.append(Launch(kernel, tuple(args), grad, replay))

    def backward_substep(self, index: int, zero_scratch_grads: Callable[[], None]) -> None:
        """Differentiate recorded substep ``index`` (gradients of its outputs must be set)."""
        launches = self.substeps[index]
        for launch in launches:
            if launch.replay:
                launch.run_forward()
        zero_scratch_grads()
        for launch in reversed(launches):
            launch.run_backward()

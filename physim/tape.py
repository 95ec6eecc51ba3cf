"""physim's tape: records kernel launches and replays their gradients in reverse.

What it records
    The scene brackets every substep (:meth:`Tape.begin_substep` / :meth:`Tape.end_substep`)
    once, and every part adds its launches in between, in the scene's part order. A part
    either runs and records a launch in one call (:meth:`Tape.launch`: record-and-run, the
    default for a new solver), or computes a substep its own faster way and records the
    phase kernels without running them (:meth:`Tape.record`: MPM runs one fused kernel per
    substep and records its phases, plus one forward-only launch that restores the
    substep's scratch values, ``replay=True, grad=None``).

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
    ``grad=None`` (restoring scratch) are forward-only. While :attr:`Tape.keep_scratch` is set
    (reverse mode's recompute of a chunk, and the last chunk of a recorded forward pass: the
    substeps are differentiated before anything else runs) a part may store each substep's
    scratch in memory of its own and record a cheaper replay that restores it (MPM does,
    within ``KEEP_SCRATCH_MAX_BYTES``).

Overwrites
    Slot fields are written once per forward pass of a chunk, so nothing the
    backward pass needs is overwritten; scratch fields are recomputed as above.
    Gradients accumulate (``+=``) into input fields, as Taichi adjoints do; the
    scene zeroes them before each backward pass.

Debugging
    ``PHYSIM_TRACE_TAPE=1`` prints every adjoint launch as it runs. ``Tape(debug=True)`` (or
    ``PHYSIM_TAPE_DEBUG=1``) checks the contract after every step of reverse mode: the
    replayed launches of a substep changed no slot state (only scratch; a replayed launch
    that writes state would silently corrupt every gradient), and every adjoint left finite
    gradients (it names the launch that produced the first NaN/inf). The scene supplies the
    two probes (:attr:`Tape.snapshot`, :attr:`Tape.nonfinite`). Slow: for tests and bug hunts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import backend

__all__ = ["Launch", "Tape", "TapeContractError"]

AUTO = "auto"
_TRACE = os.environ.get("PHYSIM_TRACE_TAPE") == "1"
_DEBUG = os.environ.get("PHYSIM_TAPE_DEBUG") == "1"


class TapeContractError(RuntimeError):
    """A recorded launch broke the tape's contract (debug mode)."""


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
            backend.grad(self.kernel, *self.args)
        else:
            self.grad(*self.args)


@dataclass
class Tape:
    """Per-substep lists of launches for the chunk being simulated."""

    recording: bool = True
    #: the substeps being recorded are differentiated before the next chunk runs (reverse
    #: mode's recompute of a chunk, and the last chunk of a forward pass): a part may keep
    #: each substep's scratch in memory of its own instead of recomputing it in the replay
    keep_scratch: bool = False
    substeps: list[list[Launch]] = field(default_factory=list)
    _current: list[Launch] | None = None
    debug: bool = _DEBUG
    #: debug probes set by the scene: the slot state as one array, and the name of the
    #: first non-finite gradient (None when all are finite)
    snapshot: Callable[[], Any] | None = None
    nonfinite: Callable[[], str | None] | None = None

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

    def launch(self, kernel: Callable, *args, grad: Any = AUTO, replay: bool = False) -> None:
        """Run ``kernel(*args)`` now and record it (record-and-run). ``replay=True`` for a
        launch whose outputs include scratch that a later adjoint reads (forces, contact
        lists); a launch that writes only slot ``l + 1`` needs no replay."""
        kernel(*args)
        self.record(kernel, *args, grad=grad, replay=replay)

    def backward_substep(self, index: int, zero_scratch_grads: Callable[[], None]) -> None:
        """Differentiate recorded substep ``index`` (gradients of its outputs must be set).

        ``zero_scratch_grads`` zeroes every part's scratch gradients (the scene passes one
        callable that calls each part's)."""
        launches = self.substeps[index]
        before = self.snapshot() if self.debug and self.snapshot is not None else None
        for launch in launches:
            if launch.replay:
                launch.run_forward()
        if before is not None:
            import numpy as np

            after = self.snapshot()
            if not np.array_equal(before, after, equal_nan=True):
                names = [getattr(la.kernel, "__name__", str(la.kernel)) for la in launches if la.replay]
                raise TapeContractError(
                    f"replaying substep {index}'s launches {names} changed slot state: a replayed launch may "
                    f"write only scratch (and the values it wrote in the forward pass)")
        zero_scratch_grads()
        for launch in reversed(launches):
            launch.run_backward()
            if self.debug and self.nonfinite is not None and launch.grad is not None:
                bad = self.nonfinite()
                if bad is not None:
                    raise TapeContractError(
                        f"the adjoint of {getattr(launch.kernel, '__name__', launch.kernel)} (substep {index}) "
                        f"made {bad} non-finite")

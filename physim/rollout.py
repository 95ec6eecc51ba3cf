"""Stepping and reverse mode of a :class:`physim.Scene`: chunks, checkpoints, seeds.

Every substep the scene brackets one tape entry and steps its parts in order (tools ->
coupler -> solvers); each part reads slot ``l`` and writes slot ``l + 1``. A rollout of
T steps is ``T * substeps_per_step`` substeps in chunks of K; at each chunk boundary the
state is copied to the host (:class:`physim.checkpoints.CheckpointStore`). Reverse mode
restores each chunk's first state, recomputes the chunk (recording it), and runs the tape
backwards; gradients of slot 0 move to slot K for the previous chunk.

Seeds at any step: ``backward(seeds)`` takes ``{name: d loss / d state}`` for the final
state, or ``{step: {name: ...}}`` for the states after any steps (step 0 is the initial
state, ``T`` the final one): a loss summed over a time series. Each seed is added to the
gradient of the slot that holds that step's state just before the chunk containing it is
differentiated.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .checkpoints import CheckpointStore
from .materials import DIFF_PARAMS

__all__ = ["Rollout", "Gradients", "SimulationError", "GradientError", "series_seeds"]


class SimulationError(RuntimeError):
    """The simulation blew up (non-finite state, particles left the domain, CFL violated)."""


class GradientError(RuntimeError):
    """A gradient became NaN or infinite."""


@dataclass
class Gradients:
    """Gradients of the loss returned by :meth:`Scene.backward` (numpy, float64).

    Attributes:
        actions: (steps, action_dim) d loss / d actions (a batched scene's forward given
            (steps, W, world_action_dim): that shape).
        initial: d loss / d initial state, by name (``"mpm.x"``, ``"tools.pos"``, ...).
        params: d loss / d every differentiable parameter, by name (``"mpm.E"`` with one
            entry per material, ``"tools.friction"`` per tool, ``"springs.stiffness"`` per
            spring, ...), per user unit (a friction angle per degree).
        action_norm: norm of the action gradient before clipping.
    """

    actions: np.ndarray
    initial: dict[str, np.ndarray] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    action_norm: float = 0.0

    def check(self) -> None:
        """Raise :class:`GradientError` naming the first NaN/inf entry: of the actions, of an
        initial-state gradient, or of a parameter gradient (``"mpm.E[1]"``: material 1's E,
        ``"tools.friction[0]"``). :meth:`Rollout.backward` calls it before returning."""
        def first_bad(a):
            a = np.asarray(a, dtype=np.float64)
            bad = np.argwhere(~np.isfinite(a))
            return None if len(bad) == 0 else (bad[0].tolist(), a[tuple(bad[0])])

        hit = first_bad(self.actions)
        if hit is not None:
            idx, v = hit  # [step, column] (or [step, world, column])
            raise GradientError(f"action gradient is NaN/inf: d loss / d action[{', '.join(map(str, idx))}] is {v}")
        for name, g in self.initial.items():
            hit = first_bad(g)
            if hit is not None:
                raise GradientError(f"gradient of the initial state {name} is {hit[1]} at {hit[0]}")
        for name, g in self.params.items():
            hit = first_bad(np.reshape(g, -1))
            if hit is not None:
                raise GradientError(f"gradient of {name}[{hit[0][0]}] is {hit[1]} (the parameter of row "
                                    f"{hit[0][0]}: a material, tool or spring)")

    # shorthands for the common entries
    @property
    def x0(self) -> np.ndarray:
        """d loss / d initial MPM particle positions."""
        return self.initial["mpm.x"]

    @property
    def v0(self) -> np.ndarray:
        return self.initial["mpm.v"]

    @property
    def tool_pos0(self) -> np.ndarray:
        return self.initial["tools.pos"]

    @property
    def tool_rot0(self) -> np.ndarray:
        return self.initial["tools.rot"]

    @property
    def tool_friction(self) -> np.ndarray:
        return self.params["tools.friction"]

    @property
    def materials(self) -> list[dict[str, float]]:
        """One dict per material: {E, nu, yield_stress, friction_angle, viscosity} -> gradient
        (from :attr:`params`)."""
        n = len(self.params.get("mpm.E", ()))
        return [{p: float(self.params[f"mpm.{p}"][i]) for p in DIFF_PARAMS} for i in range(n)]


def series_seeds(grads: Mapping[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """Seeds for :meth:`Rollout.backward` from gradients of time series (name -> array with a
    leading axis of steps + 1, as :meth:`Rollout.forward` returns with ``observe``)."""
    steps = {len(g) for g in grads.values()}
    if len(steps) > 1:
        raise ValueError(f"time series of different lengths: {sorted(steps)}")
    n = steps.pop() if steps else 0
    return {s: {k: g[s] for k, g in grads.items()} for s in range(n)}


class Rollout:
    """Forward and reverse mode of a scene (mixed into :class:`physim.Scene`)."""

    _warned_gpu_grad = False

    # ------------------------------------------------------------------ actions
    def _check_actions(self, actions) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        W = getattr(self, "n_worlds", 1)
        if W == 1 and a.ndim == 3 and a.shape[1] == 1:
            a = a[:, 0]  # (steps, 1 world, action_dim), as a batched scene of one world takes them
        elif W > 1 and a.ndim in (2, 3) and a.shape[-2:] == (W, self.world_action_dim):
            # a row per world (steps, W, world_action_dim) -> the scene's columns (steps, action_dim)
            a = a[None] if a.ndim == 2 else a
            if not np.isfinite(a).all():
                bad = np.argwhere(~np.isfinite(a))[0]
                raise ValueError(f"actions contain NaN or inf (first at step {bad[0]}, world {bad[1]}, "
                                 f"column {bad[2]})")
            flat = np.zeros((a.shape[0], self.action_dim))
            flat[:, self._world_columns.ravel()] = a.reshape(a.shape[0], -1)
            a = flat
        elif W > 1 and a.ndim == 3:
            raise ValueError(f"actions of a scene of {W} worlds must have shape (steps, {W}, "
                             f"{self.world_action_dim}), got {a.shape}")
        if a.ndim == 1 and a.shape[0] == self.action_dim:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != self.action_dim:
            raise ValueError(
                f"actions must have shape (steps, {self.action_dim}) "
                f"[{len(self.tools)} tool(s) x {self.tool_action_dim} + {self.n_actuators} actuator(s)"
                f" + {self.n_spring_actuators} spring actuator(s)], got {a.shape}"
            )
        if a.shape[0] > self.max_steps:
            raise ValueError(f"{a.shape[0]} steps exceed max_steps={self.max_steps} given to build()")
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise ValueError(f"actions contain NaN or inf (first at step {bad[0]}, column {bad[1]})")
        return a

    def _load_actions(self, a: np.ndarray) -> None:
        action = self.partset.controls.action
        full = np.zeros(action.shape, self._np_real)
        full[: a.shape[0], : self.action_dim] = a
        action.from_numpy(full)

    # ------------------------------------------------------------------ stepping
    def _substep(self, l: int, t: int) -> None:
        """One substep of every part, bracketed once on the tape (reads slot l, writes l + 1)."""
        tape = self.tape
        if tape.recording:
            tape.begin_substep()
        for part in self.parts:
            part.substep(tape, l, t)
        if tape.recording:
            tape.end_substep()

    def _check_health(self, first_slot: int, last_slot: int, first_substep: int) -> None:
        for part in self.parts:
            bad = part.health(first_slot, last_slot)
            if bad is None:
                continue
            slot, why = bad
            step = first_substep + slot - first_slot  # slot s holds the state after this many substeps
            raise SimulationError(
                f"simulation blew up at substep {step} (t={step * self.dt:.4g}s, dt={self.dt:g}) in the "
                f"{part.name} part: {why}; lower dt, slow the tools, or soften the materials"
            )

    def _run(self, actions: np.ndarray, record: bool, checkpoints: CheckpointStore | None,
             observe: dict[str, list] | None = None) -> None:
        """Run len(actions) steps from slot 0, in chunks of K substeps."""
        K, ns = self.checkpoint_every, self.substeps_per_step
        total = actions.shape[0] * ns
        self.tape.recording = record
        self.tape.clear()
        self._load_actions(actions)
        g = 0
        while g < total:
            length = min(K, total - g)
            if g > 0:
                for part in self.parts:
                    part.copy_slot(K, 0)
            if checkpoints is not None:
                checkpoints.append(self._export(0))
            self.tape.clear()
            # the last chunk's tape is the one backward() differentiates first, right away
            self.tape.keep_scratch = record and g + length == total
            for l in range(length):
                self._substep(l, (g + l) // ns)
                if observe is not None and (g + l + 1) % ns == 0:
                    self._observe(l + 1, observe)
            self._check_health(1, length, self._substeps_done + g + 1)
            g += length
            self._slot = length
        self.tape.keep_scratch = False
        self.time += total * self.dt
        self._substeps_done += total

    def _observe(self, slot: int, observe: dict[str, list]) -> None:
        state = self._export(slot)
        for name, series in observe.items():
            series.append(state[name])

    def _drop_rollout(self, why: str | None = None) -> None:
        """Forget the recorded rollout and delete its checkpoints (incl. spilled files).

        ``why`` (``"set_param('mpm.E', row=0)"``, ``"step()"``, ...) is kept for the error of a
        later :meth:`backward`: a recording is dropped whenever its replay would no longer be
        the forward pass that was run (a parameter, the state or K changed since), so reverse
        mode can never differentiate a mixture of old and new values."""
        r = self._rollout
        if r is not None and r["checkpoints"] is not None:
            r["checkpoints"].close()
        if r is not None:
            self._dropped_by = why
        self._rollout = None

    @property
    def rollout_id(self) -> int:
        """How many recorded :meth:`forward` passes this scene has run: the id of the latest,
        which :meth:`backward` differentiates (``backward(rollout=...)`` checks it; the torch
        bridge uses it to refuse the backward of a superseded rollout)."""
        return getattr(self, "_generation", 0)

    def _to_slot0(self) -> None:
        if self._slot != 0:
            for part in self.parts:
                part.copy_slot(self._slot, 0)
            self._slot = 0

    def step(self, action) -> None:
        """Advance one step (``substeps_per_step`` substeps) with one action row; no gradients."""
        self._check_built()
        a = self._check_actions(action)
        if a.shape[0] != 1:
            raise ValueError(f"step() takes one action row of {self.action_dim} values, got shape {np.shape(action)}")
        self._to_slot0()
        self._substeps_done = 0
        self._run(a, record=False, checkpoints=None)
        self._drop_rollout("step()")

    def forward(self, actions, requires_grad: bool = True, observe: Iterable[str] | None = None):
        """Simulate ``len(actions)`` steps from the current state.

        Args:
            actions: (steps, action_dim) array; row t drives every substep of step t. A scene
                of W worlds (``n_worlds``) also takes (steps, W, world_action_dim): world w's
                row as a one-world scene's.
            requires_grad: keep what :meth:`backward` needs (checkpoints every K substeps).
            observe: state names (``"mpm.x"``, ...) to return at every step.

        Returns:
            ``None``, or with ``observe`` a dict name -> array of shape (steps + 1, ...):
            entry ``s`` is the state after ``s`` steps (entry 0 the state before the first).
        """
        self._check_built()
        a = self._check_actions(actions)
        per_world = np.ndim(actions) == 3
        series = None
        if observe is not None:
            names = list(observe)
            unknown = [n for n in names if n not in self._initial]
            if unknown:
                raise KeyError(f"cannot observe {unknown}; this scene has {sorted(self._initial)}")
            series = {n: [] for n in names}
        self._to_slot0()
        if series is not None:
            self._observe(0, series)
        self._substeps_done = 0
        total = a.shape[0] * self.substeps_per_step
        had = self._rollout is not None
        self._drop_rollout()
        self._dropped_by = "forward(..., requires_grad=False)" if had and not requires_grad else None
        checkpoints = None
        if requires_grad and total > self.checkpoint_every:
            ram = None if self.checkpoint_ram_mb is None else int(self.checkpoint_ram_mb * 2**20)
            checkpoints = CheckpointStore(ram)
        self._run(a, record=requires_grad, checkpoints=checkpoints, observe=series)
        if requires_grad:
            final = self._export(self._slot) if checkpoints is not None else None
            self._generation = self.rollout_id + 1
            self._rollout = {"actions": a, "checkpoints": checkpoints, "final": final, "total": total,
                             "id": self._generation, "per_world": per_world}
        if series is not None:
            return {n: np.stack(v) for n, v in series.items()}
        return None

    # ------------------------------------------------------------------ reverse
    def _normalize_seeds(self, seeds, steps: int, shorthand: dict) -> dict[int, dict[str, np.ndarray]]:
        out: dict[int, dict[str, np.ndarray]] = {}
        if seeds is not None:
            if not isinstance(seeds, Mapping):
                raise TypeError(f"seeds must be a dict, got {type(seeds).__name__}")
            if all(isinstance(k, str) for k in seeds):
                seeds = {steps: seeds}
            for step, values in seeds.items():
                if not (isinstance(step, (int, np.integer)) and 0 <= step <= steps):
                    raise ValueError(f"seed step {step!r} is outside the rollout's steps 0..{steps}")
                out.setdefault(int(step), {}).update(values)
        for name, value in shorthand.items():
            if value is not None:
                out.setdefault(steps, {})[name] = value
        for step, values in out.items():
            for name, value in values.items():
                if name not in self._initial:
                    raise KeyError(f"unknown state entry {name!r} in the seeds; this scene has "
                                   f"{sorted(self._initial)}")
                arr = np.asarray(value, dtype=np.float64)
                want = self._initial[name].shape
                if arr.shape != want:
                    raise ValueError(f"state[{name!r}] must have shape {want}, got {arr.shape} (seed at step {step})")
                if not np.isfinite(arr).all():
                    raise ValueError(f"the seed for state[{name!r}] at step {step} contains NaN or inf")
                values[name] = arr
        return out

    def _add_seed(self, slot: int, values: dict[str, np.ndarray]) -> None:
        by_name = self._parts_by_name()
        for part_name, vals in self._split(values).items():
            if not vals:
                continue
            part = by_name[part_name]
            current = part.export(slot, grad=True)
            for k, v in vals.items():
                current[k] = current[k] + v
            part.import_(slot, current, grad=True)

    def _zero_scratch_grads(self) -> None:
        for part in self.parts:
            part.zero_scratch_grads()

    def backward(self, seeds=None, *, grad_x=None, grad_v=None, clip_norm: float | None = None,
                 rollout: int | None = None) -> Gradients:
        """Reverse mode over the last :meth:`forward`.

        Args:
            seeds: d loss / d state: ``{name: array}`` for the final state, or
                ``{step: {name: array}}`` for the states after any of the rollout's steps
                (0 = the initial state). Names as in :attr:`state_names`.
            grad_x, grad_v: short for the final state's ``"mpm.x"`` / ``"mpm.v"`` seeds.
            clip_norm: if set, scale the action gradient to at most this norm.
            rollout: the :attr:`rollout_id` of the forward pass the caller means (read right
                after it); a later forward on this scene, or a dropped recording, raises
                instead of silently differentiating another rollout.

        Raises:
            RuntimeError: no recording to differentiate: no forward yet, or it was dropped by
                step(), reset()/set_state(), set_param() (names the parameter: its new value
                would be replayed) or a backward over several checkpoint chunks; or ``rollout``
                is not the latest forward. Call forward again.
            GradientError: a gradient became NaN/inf (names the substep range, or the state
                entry or parameter row).
        """
        self._check_built()
        r = self._rollout
        if rollout is not None and self.rollout_id != rollout:
            raise RuntimeError(
                f"backward of forward #{rollout} refused: forward #{self.rollout_id} has run on the same scene since "
                f"and superseded it (a scene keeps only its latest recording); differentiate each rollout before "
                f"running the next, or run it again")
        if rollout is not None and r is None:
            raise RuntimeError(
                f"backward of forward #{rollout} refused: the scene no longer holds its recording (dropped by "
                f"{getattr(self, '_dropped_by', None) or 'a later call'}); run it again")
        if r is None:
            why = getattr(self, "_dropped_by", None)
            if why is not None:
                raise RuntimeError(
                    f"backward() needs a forward(..., requires_grad=True) first: the recorded rollout was dropped "
                    f"by {why} after it (differentiating it now would replay other values than the forward "
                    f"ran with); call forward again")
            raise RuntimeError("backward() needs a forward(..., requires_grad=True) first (and no step/reset/"
                               "set_param since); call forward again")
        if backend.config().arch != "cpu" and not Rollout._warned_gpu_grad:
            Rollout._warned_gpu_grad = True
            warnings.warn(
                "physim: reverse mode on GPU backends does not yet pass the finite-difference gradient checks "
                "that pass on CPU (errors of several percent, NaN without fast-math); use arch='cpu' for "
                "gradients you rely on. Forward simulation on GPU is fine.",
                RuntimeWarning,
                stacklevel=2,
            )
        K, ns = self.checkpoint_every, self.substeps_per_step
        total = r["total"]
        steps = r["actions"].shape[0]
        by_step = self._normalize_seeds(seeds, steps, {"mpm.x": grad_x, "mpm.v": grad_v})
        n_chunks = -(-total // K)
        last_len = total - (n_chunks - 1) * K
        for part in self.parts:
            part.zero_grads()
        self.partset.controls.action.grad.fill(0)
        g0 = self._export(0, grad=True)  # a rollout of zero steps: no chunk, the seeds pass through
        for c in reversed(range(n_chunks)):
            length = K if c < n_chunks - 1 else last_len
            if c != n_chunks - 1:
                self._import(0, r["checkpoints"][c])
                self.tape.recording = True
                self.tape.clear()
                self.tape.keep_scratch = True  # differentiated right after: parts may keep scratch
                try:
                    for l in range(length):
                        self._substep(l, (c * K + l) // ns)
                finally:
                    self.tape.keep_scratch = False
            for step, values in by_step.items():
                j = step * ns - c * K  # slot of this step's state in chunk c
                if 0 < j <= length:
                    self._add_seed(j, values)
            for l in reversed(range(length)):
                self.tape.backward_substep(l, self._zero_scratch_grads)
            g0 = self._export(0, grad=True)
            if not all(np.isfinite(v).all() for v in g0.values()):
                raise GradientError(
                    f"gradient became NaN/inf while differentiating substeps {c * K}..{c * K + length - 1}"
                )
            if c > 0:
                for part in self.parts:
                    part.move_grad_slot(0, K)
        initial = {k: v.astype(np.float64) for k, v in g0.items()}
        for name, value in by_step.get(0, {}).items():
            initial[name] = initial[name] + value
        action_grad = self.partset.controls.action.grad.to_numpy()[:steps, : self.action_dim].astype(np.float64)
        if r.get("per_world"):  # in the shape forward was given: (steps, W, world_action_dim)
            action_grad = action_grad[:, self._world_columns] if self.n_worlds > 1 else action_grad[:, None]
        params = {f"{part.name}.{k}": p.grad() for part in self.parts for k, p in part.params.items()
                  if p.differentiable}
        grads = Gradients(actions=action_grad, initial=initial, params=params)
        if r["final"] is not None:  # slots now hold chunk 0: put the final state back
            self._import(0, r["final"])
            self._slot = 0
            self.tape.clear()
            # the last chunk's tape is gone; run forward again to differentiate again
            self._drop_rollout("the backward() over it (a rollout of several checkpoint chunks is differentiated once)")
        grads.check()  # before clipping: a NaN would spread over every action entry
        norm = float(np.linalg.norm(action_grad))
        grads.action_norm = norm
        if clip_norm is not None and norm > clip_norm > 0:
            action_grad *= clip_norm / norm
        return grads

    # ------------------------------------------------------------ tape debug probes
    def _snapshot(self) -> np.ndarray:
        """Every part's slot state (all slots), flattened: the tape's debug check."""
        return np.concatenate([f.to_numpy().ravel() for part in self.parts for f in part.slots.values()])

    def _nonfinite(self) -> str | None:
        for part in self.parts:
            for name, f in part.slots.items():
                if not np.isfinite(f.grad.to_numpy()).all():
                    return f"the gradient of {part.name}.{name}"
            for f in part.scratch:
                if not np.isfinite(f.grad.to_numpy()).all():
                    return f"a scratch gradient of the {part.name} part"
        return None

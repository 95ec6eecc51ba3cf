"""The part protocol: what every solver, the tools and the coupler implement.

A *part* owns Taichi fields and declares them once; everything the scene and the tape do
with a part's state (copy a slot, export and import it by name, checkpoint it, seed and
move its gradients, zero them) is written here, generically, from those declarations.
A new solver is one file: a subclass of :class:`Part` that

- declares its **slot fields** with :meth:`Part.slot_field` -- state with a leading slot
  axis of K+1 (substep ``l`` of a checkpoint chunk reads slot ``l`` and writes slot
  ``l + 1``); exported by name as ``"<part>.<field>"``, checkpointed, seeded in reverse;
- declares its **scratch fields** with :meth:`Part.scratch_field` -- values recomputed
  every substep (grids, forces, SVD factors) that the tape restores by replay before it
  differentiates the substep;
- declares its **parameters** with :meth:`Part.param` -- name, units, conversion, bounds,
  differentiable or not: the one registry that ``Scene.set_param``, the gradients,
  ``identify`` and the finite-difference tests read;
- says how many **action columns** it reads (:attr:`Part.action_dim`; the scene gives it
  an offset into the shared action field);
- implements :meth:`load` (write the scene's description into its fields),
  :meth:`stable_dt`, :meth:`substep` (record or run its launches on the tape; the scene,
  not the part, brackets the substep), :meth:`health` and, optionally, a faster
  :meth:`zero_scratch_grads`.

Slot storage: a slot field of a part with ``capacity`` rows has shape ``(K + 1, capacity)``
plus the element shape; ``rows[None]`` rows are in use (fields of another *row group*, e.g. a
shell's hinges next to its vertices, have their own capacity and counter: ``slot_field(...,
group=name)``, :meth:`Part.group_rows`). All indexing of the slot axis in
this module goes through :meth:`Part.slot_field`'s shape.

Batched worlds (``Scene(n_worlds=W)``) need nothing from this module: the scene repeats one
world's bodies, materials and tools world-major, so world ``w``'s rows of every field follow
world ``w - 1``'s, and a part that supports batching only knows each row's world (the MPM
part's ``p_world`` and its grid of one tile per world along axis 0, the mass-spring part's
``node_world``, the FEM part's ``body_world`` / ``node_world``) and asks the tools part for
that world's tools (:meth:`physim.parts.tools.ToolsPart.contact_world`,
``ToolsPart._world_tool``; a FEM body's mount is its own world's copy of the tool). The
coupler keeps one cell list per world for the mass-spring nodes (a particle visits only its
world's cells) and skips the FEM triangles of other worlds in the shared triangle cell list.
Shared by the worlds: the coupling law (``coupler.*``: one row, its gradient the worlds' sum)
and the FEM part's sub-step count (the largest any world's gels need). Unbatched layouts
compile none of it. Not batched yet (:class:`physim.scene.UnbatchableScene`): thin shells,
emitters, the smoke field.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import taichi as ti

__all__ = ["Part", "Param", "Controls", "BAD_NONFINITE", "BAD_OUTSIDE", "BAD_FAST", "BAD_PART"]

#: health flags of a slot (bits): a point's state is NaN/inf, it left the domain, it moved too far
#: in one substep; a part's own reasons use BAD_PART and up
BAD_NONFINITE, BAD_OUTSIDE, BAD_FAST, BAD_PART = 1, 2, 4, 8


@dataclass(frozen=True)
class Param:
    """A declared parameter of a part.

    Attributes:
        name: short name, unique in the part (exported as ``"<part>.<name>"``).
        units: SI units of the user-facing value (``"Pa"``, ``"deg"``, ``"1"``).
        field: the Taichi field holding it, one entry per row (material, tool, spring, ...).
        column: column of a 2D ``field`` (``None``: the field is 1D).
        rows: number of rows in use (a callable: the scene's count).
        lower, upper: admissible range of the user-facing value (open at a bound given as
            ``math.inf`` / ``-math.inf``); ``lower_open`` excludes ``lower`` itself.
        differentiable: whether reverse mode returns its gradient.
        scale: internal value = user value * scale (degrees -> radians: pi / 180).
        doc: one line for tables and error messages.
    """

    name: str
    units: str
    field: object
    column: int | None
    rows: Callable[[], int]
    lower: float = -math.inf
    upper: float = math.inf
    lower_open: bool = False
    upper_open: bool = False
    differentiable: bool = True
    scale: float = 1.0
    doc: str = ""

    def check(self, value: float, owner: str) -> float:
        v = float(value)
        lo_ok = v > self.lower if self.lower_open else v >= self.lower
        hi_ok = v < self.upper if self.upper_open else v <= self.upper
        if not (math.isfinite(v) and lo_ok and hi_ok):
            lo = f"({self.lower:g}" if self.lower_open else f"[{self.lower:g}"
            hi = f"{self.upper:g})" if self.upper_open else f"{self.upper:g}]"
            raise ValueError(f"{owner}.{self.name} ({self.doc or self.units}) must be in {lo}, {hi}, got {value!r}")
        return v

    def _key(self, row: int):
        return (row,) if self.column is None else (row, self.column)

    def get(self, row: int) -> float:
        return float(self.field[self._key(row)]) / self.scale

    def set(self, row: int, value: float) -> None:
        self.field[self._key(row)] = value * self.scale

    def grad(self) -> np.ndarray:
        """d loss / d user-facing value, one entry per row in use."""
        g = self.field.grad.to_numpy()
        g = g if self.column is None else g[:, self.column]
        return g[: self.rows()].astype(np.float64) * self.scale


def _element(shape: tuple):
    """(kind, n, m): 0 scalar, 1 vector of n, 2 n x m matrix."""
    if shape == ():
        return 0, 1, 1
    if len(shape) == 1:
        return 1, shape[0], 1
    return 2, shape[0], shape[1]


def _values_or_grads(f, grad: bool):
    return f.grad if grad else f


@ti.data_oriented
class Part:
    """Base class of every part. See the module docstring for the protocol.

    Subclasses set :attr:`name` (the state namespace) and call ``super().__init__(K, real)``
    before declaring fields.
    """

    name = "part"
    #: action columns this part reads (set by the subclass before the scene builds)
    action_dim = 0

    def __init__(self, K: int, real):
        self.K = K
        self.S = K + 1
        self.real = real
        self.np_real = np.float64 if real == ti.f64 else np.float32
        self.rows = ti.field(ti.i32, shape=())  # rows of the slot fields in use (the default row group)
        self.act_offset = ti.field(ti.i32, shape=())  # first action column of this part
        self.dt = ti.field(real, shape=())  # the scene's substep (s)
        self.slots: dict[str, object] = {}
        self._slot_meta: list[tuple] = []  # (field, kind, n, m, offset within its group, group index)
        # row groups: slot fields of one group share a rows counter and a capacity; group 0 is
        # the default (``self.rows``), a part with state of other sizes (a shell's hinges next to
        # its vertices) declares more with ``slot_field(..., group=name)``
        self._groups: list[dict] = [dict(name="rows", rows=self.rows, capacity=None, width=0)]
        self.scratch: list[object] = []
        self.params: dict[str, Param] = {}
        self._param_fields: list[object] = []

    # ------------------------------------------------------------- declarations
    def slot_field(self, name: str, elem: tuple, capacity: int, group: str | None = None):
        """Declare slot state ``name`` with element shape ``elem`` (``()``, ``(n,)`` or
        ``(n, m)``) and ``capacity`` rows; returns the field of shape (K + 1, capacity).

        Slot fields of one *row group* share a capacity and a rows-in-use counter: the default
        group's is :attr:`rows`; ``group="hinges"`` (any name) puts the field in another group,
        whose counter :meth:`group_rows` returns (created on first use). Export, import,
        checkpoints and gradient moves handle every group."""
        if name in self.slots:
            raise ValueError(f"{self.name}: slot field {name!r} declared twice")
        gi = self._group_index(group or "rows", create=True)
        g = self._groups[gi]
        if g["capacity"] is not None and capacity != g["capacity"]:
            raise ValueError(f"{self.name}: every slot field of row group {g['name']!r} has the same rows "
                             f"({g['capacity']})")
        g["capacity"] = capacity
        shape = (self.S, capacity)
        f = self._new_field(elem, shape, grad=True)
        kind, n, m = _element(elem)
        self._slot_meta.append((f, kind, n, m, g["width"], gi))
        g["width"] += n * m
        self.slots[name] = f
        return f

    def _group_index(self, name: str, create: bool = False) -> int:
        for i, g in enumerate(self._groups):
            if g["name"] == name:
                return i
        if not create:
            raise KeyError(f"{self.name}: no row group {name!r}")
        self._groups.append(dict(name=name, rows=ti.field(ti.i32, shape=()), capacity=None, width=0))
        return len(self._groups) - 1

    def group_rows(self, group: str):
        """The rows-in-use counter (a 0-d Taichi field) of row group ``group``."""
        return self._groups[self._group_index(group)]["rows"]

    @property
    def _capacity(self):
        return self._groups[0]["capacity"]

    def scratch_field(self, elem: tuple, shape, grad: bool = True):
        """Declare a scratch field (recomputed every substep, restored by replay)."""
        f = self._new_field(elem, shape, grad=grad)
        if grad:
            self.scratch.append(f)
        return f

    def param(self, name: str, units: str, field, column: int | None = None, **kw) -> Param:
        """Declare a parameter stored in ``field`` (column ``column``); see :class:`Param`."""
        p = Param(name, units, field, column, lambda: self.param_rows(name), **kw)
        self.params[name] = p
        if p.differentiable and field not in self._param_fields:
            self._param_fields.append(field)
        return p

    def param_rows(self, name: str) -> int:
        """Rows of parameter ``name`` in use (default: the slot rows)."""
        return int(self.rows[None])

    def _new_field(self, elem: tuple, shape, grad: bool):
        kind, n, m = _element(elem)
        if kind == 0:
            return ti.field(self.real, shape=shape, needs_grad=grad)
        if kind == 1:
            return ti.Vector.field(n, self.real, shape=shape, needs_grad=grad)
        return ti.Matrix.field(n, m, self.real, shape=shape, needs_grad=grad)

    # ---------------------------------------------------------------- protocol
    def load(self, spec) -> None:
        """Write the scene's description of this part into its fields."""
        raise NotImplementedError

    def stable_dt(self) -> float:
        """Largest stable substep for this part's current parameters (``inf``: no limit)."""
        return math.inf

    def dt_reason(self) -> str:
        """Why :meth:`stable_dt` is what it is (for the scene's error message)."""
        return ""

    def substep(self, tape, l: int, t: int) -> None:
        """Run substep ``l`` (reads slot ``l``, writes slot ``l + 1``, action row ``t``)
        and, when ``tape.recording``, record how to differentiate it."""
        raise NotImplementedError

    def health(self, first: int, last: int) -> tuple[int, str] | None:
        """The first slot in ``first..last`` whose state is bad, and why (``None``: all fine)."""
        return None

    @ti.func
    def point_health(self, x, v, lo, hi, max_step):
        """For a part's health kernel: the flag of one point at ``x`` moving at ``v``: BAD_NONFINITE,
        BAD_OUTSIDE (a coordinate outside [lo, hi]), BAD_FAST (moves more than ``max_step`` in one
        substep of ``dt``), or 0."""
        finite = 1
        for d in ti.static(range(x.n)):
            if not (ti.abs(x[d]) < 1e30 and ti.abs(v[d]) < 1e30):  # false for NaN and inf
                finite = 0
        flag = 0
        if finite == 0:
            flag = BAD_NONFINITE
        elif x.min() < lo or x.max() > hi:
            flag = BAD_OUTSIDE
        elif v.norm() * self.dt[None] > max_step:
            flag = BAD_FAST
        return flag

    @staticmethod
    def first_flagged(flags: np.ndarray, first: int, last: int, reasons: dict[int, str]) -> tuple[int, str] | None:
        """For :meth:`health`: the first slot in ``first..last`` whose ``flags`` entry is
        nonzero, and the reason of its lowest set bit (``reasons``: bit -> text, in priority order)."""
        hits = np.nonzero(flags[first: last + 1])[0]
        if len(hits) == 0:
            return None
        slot = first + int(hits[0])
        flag = int(flags[slot])
        return slot, next(why for bit, why in reasons.items() if flag & bit)

    # ------------------------------------------------- generic slot bookkeeping
    @property
    def width(self) -> int:
        """Values per row of the default row group's slot state."""
        return self._groups[0]["width"]

    @ti.kernel
    def copy_slot(self, src: ti.i32, dst: ti.i32):
        for k in ti.static(range(len(self._slot_meta))):
            f = ti.static(self._slot_meta[k][0])
            rows = ti.static(self._groups[self._slot_meta[k][5]]["rows"])
            for p in range(rows[None]):
                f[dst, p] = f[src, p]

    @ti.kernel
    def move_grad_slot(self, src: ti.i32, dst: ti.i32):
        """Move slot ``src``'s gradients to slot ``dst``; zero every other slot's."""
        for k in ti.static(range(len(self._slot_meta))):
            g = ti.static(self._slot_meta[k][0].grad)
            for s, p in g:
                if s != dst:
                    val = g[s, p]
                    if s == src:
                        g[dst, p] = val
                    g[s, p] = ti.zero(val)

    @ti.kernel
    def _pack(self, l: ti.i32, out: ti.types.ndarray(), grad: ti.template(), gi: ti.template()):
        for k in ti.static(range(len(self._slot_meta))):
            meta = ti.static(self._slot_meta[k])
            if ti.static(meta[5] == gi):
                f = ti.static(_values_or_grads(meta[0], grad))
                rows = ti.static(self._groups[gi]["rows"])
                kind, n, m, off = ti.static(meta[1], meta[2], meta[3], meta[4])
                for p in range(rows[None]):
                    if ti.static(kind == 0):
                        out[p, off] = f[l, p]
                    elif ti.static(kind == 1):
                        for i in ti.static(range(n)):
                            out[p, off + i] = f[l, p][i]
                    else:
                        for i, j in ti.static(ti.ndrange(n, m)):
                            out[p, off + i * m + j] = f[l, p][i, j]

    @ti.kernel
    def _unpack(self, l: ti.i32, src: ti.types.ndarray(), grad: ti.template(), gi: ti.template()):
        for k in ti.static(range(len(self._slot_meta))):
            meta = ti.static(self._slot_meta[k])
            if ti.static(meta[5] == gi):
                f = ti.static(_values_or_grads(meta[0], grad))
                rows = ti.static(self._groups[gi]["rows"])
                kind, n, m, off = ti.static(meta[1], meta[2], meta[3], meta[4])
                for p in range(rows[None]):
                    if ti.static(kind == 0):
                        f[l, p] = src[p, off]
                    elif ti.static(kind == 1):
                        for i in ti.static(range(n)):
                            f[l, p][i] = src[p, off + i]
                    else:
                        for i, j in ti.static(ti.ndrange(n, m)):
                            f[l, p][i, j] = src[p, off + i * m + j]

    def _shapes(self) -> dict[str, tuple]:
        out = {}
        for name, (_f, kind, a, b, _off, gi) in zip(self.slots, self._slot_meta, strict=True):
            n = int(self._groups[gi]["rows"][None])
            out[name] = (n,) if kind == 0 else (n, a) if kind == 1 else (n, a, b)
        return out

    def export(self, slot: int, grad: bool = False) -> dict[str, np.ndarray]:
        """Slot ``slot`` (or its gradients) as ``{name: array}`` without the part prefix."""
        shapes = self._shapes()
        flats = {}
        out = {}
        for (name, shape), (_f, _k, a, b, off, gi) in zip(shapes.items(), self._slot_meta, strict=True):
            n = shape[0]
            if n == 0:
                out[name] = np.zeros(shape, self.np_real)
                continue
            if gi not in flats:
                flats[gi] = np.zeros((n, self._groups[gi]["width"]), self.np_real)
                self._pack(slot, flats[gi], grad, gi)
            out[name] = flats[gi][:, off: off + a * b].reshape(shape).copy()
        return out

    def import_(self, slot: int, state: dict[str, np.ndarray], grad: bool = False) -> None:
        """Write ``{name: array}`` (every slot field of this part) into slot ``slot``."""
        shapes = self._shapes()
        unknown = set(state) - set(shapes)
        if unknown:
            raise KeyError(f"unknown state entries {sorted(self.name + '.' + k for k in unknown)}; "
                           f"{self.name} has {sorted(self.name + '.' + k for k in shapes)}")
        missing = set(shapes) - set(state)
        if missing:
            raise KeyError(f"state is missing {sorted(self.name + '.' + k for k in missing)}")
        flats = {}
        for (name, shape), (_f, _k, a, b, off, gi) in zip(shapes.items(), self._slot_meta, strict=True):
            arr = np.asarray(state[name], dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"state[{self.name + '.' + name!r}] must have shape {shape}, got {arr.shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"state[{self.name + '.' + name!r}] contains NaN or inf")
            n = shape[0]
            if n == 0:
                continue
            if gi not in flats:
                flats[gi] = np.zeros((n, self._groups[gi]["width"]), self.np_real)
            flats[gi][:, off: off + a * b] = arr.reshape(n, a * b)
        for gi, flat in flats.items():
            self._unpack(slot, flat, grad, gi)

    def zero_grads(self) -> None:
        """Zero every gradient this part owns (slots, scratch, parameters)."""
        for f in [m[0] for m in self._slot_meta] + self.scratch + self._param_fields:
            f.grad.fill(0)

    def zero_scratch_grads(self) -> None:
        """Zero the scratch gradients (the tape calls it before each substep's adjoints)."""
        for f in self.scratch:
            f.grad.fill(0)


@ti.data_oriented
class Controls:
    """The action field every part reads: one row per step, parts' columns side by side."""

    def __init__(self, max_steps: int, capacity: int, real):
        self.max_steps, self.capacity = max_steps, capacity
        self.action = ti.field(real, shape=(max_steps, capacity), needs_grad=True)

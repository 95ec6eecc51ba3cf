"""Kinematic rigid tools described by analytic signed distance functions.

A tool is driven each step by an action: its linear velocity (dim values) and angular
velocity (1 value in 2D, 3 in 3D, rad/s, world frame). Shapes are given in the tool's
local frame; capsules and cylinders have their axis along local y. The tools of a scene
are one part (:mod:`physim.parts.tools`); their SDFs are in :mod:`physim.contact.sdf`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Tool", "SphereTool", "BoxTool", "CapsuleTool", "CylinderTool", "CupTool"]


@dataclass
class Tool:
    """Common fields of every tool.

    Args:
        position: initial center (2 or 3 values, in the unit domain).
        rotation: initial orientation: an angle (rad) in 2D, a quaternion (w, x, y, z) in 3D.
        friction: Coulomb friction coefficient against the material (>= 0).
        softness: 0 for hard contact; > 0 enables soft contact, influence
            min(exp(-sdf * softness), 1), which keeps gradients informative before contact.
    """

    position: Sequence[float] = (0.5, 0.5, 0.5)
    rotation: Sequence[float] | float | None = None
    friction: float = 0.5
    softness: float = 0.0
    shape: str = field(default="sphere", init=False)

    def __post_init__(self):
        self.position = np.asarray(self.position, dtype=np.float64).reshape(-1)
        if self.position.size not in (2, 3) or not np.all(np.isfinite(self.position)):
            raise ValueError(f"tool position must be 2 or 3 finite values, got {self.position.tolist()}")
        if not (np.isfinite(self.friction) and self.friction >= 0):
            raise ValueError(f"tool friction must be >= 0, got {self.friction!r}")
        if not (np.isfinite(self.softness) and self.softness >= 0):
            raise ValueError(f"tool softness must be >= 0, got {self.softness!r}")
        for name in ("radius", "half_length", "half_height", "thickness"):
            if hasattr(self, name) and not getattr(self, name) > 0:
                raise ValueError(f"{type(self).__name__}.{name} must be positive, got {getattr(self, name)!r}")
        if hasattr(self, "half_extents"):
            self.half_extents = np.asarray(self.half_extents, dtype=np.float64).reshape(-1)
            if self.half_extents.size != self.dim or np.any(self.half_extents <= 0):
                raise ValueError(
                    f"BoxTool.half_extents must be {self.dim} positive values, got {self.half_extents.tolist()}")

    @property
    def dim(self) -> int:
        return int(self.position.size)

    def initial_rotation(self) -> np.ndarray:
        """Rotation state as 4 numbers: (angle, 0, 0, 0) in 2D, a unit quaternion in 3D."""
        if self.dim == 2:
            angle = 0.0 if self.rotation is None else float(np.asarray(self.rotation).reshape(-1)[0])
            return np.array([angle, 0.0, 0.0, 0.0])
        q = np.array([1.0, 0.0, 0.0, 0.0]) if self.rotation is None else np.asarray(self.rotation, dtype=np.float64)
        if q.shape != (4,) or not np.isfinite(q).all() or np.linalg.norm(q) == 0:
            raise ValueError(f"3D tool rotation must be a quaternion (w, x, y, z), got {self.rotation!r}")
        return q / np.linalg.norm(q)

    def size_params(self) -> np.ndarray:
        """Three numbers describing the shape, read by the SDF kernel."""
        raise NotImplementedError


@dataclass
class SphereTool(Tool):
    radius: float = 0.05

    def __post_init__(self):
        self.shape = "sphere"
        super().__post_init__()

    def size_params(self):
        return np.array([self.radius, 0.0, 0.0])


@dataclass
class BoxTool(Tool):
    half_extents: Sequence[float] = (0.05, 0.05, 0.05)

    def __post_init__(self):
        self.shape = "box"
        super().__post_init__()

    def size_params(self):
        out = np.zeros(3)
        out[: self.dim] = self.half_extents
        return out


@dataclass
class CapsuleTool(Tool):
    """Capsule: a segment of half length ``half_length`` along local y, inflated by ``radius``."""

    radius: float = 0.03
    half_length: float = 0.1

    def __post_init__(self):
        self.shape = "capsule"
        super().__post_init__()

    def size_params(self):
        return np.array([self.radius, self.half_length, 0.0])


@dataclass
class CylinderTool(Tool):
    """Flat-ended cylinder with axis along local y (a rectangle in 2D)."""

    radius: float = 0.05
    half_height: float = 0.1

    def __post_init__(self):
        self.shape = "cylinder"
        super().__post_init__()

    def size_params(self):
        return np.array([self.radius, self.half_height, 0.0])


@dataclass
class CupTool(Tool):
    """Open-top container (a glass, a cup; a U-shaped vessel in 2D): a hollow cylinder with
    axis along local y, inner radius ``radius``, outer half height ``half_height`` and walls
    and bottom ``thickness`` thick. Fluid inside it is carried and poured by rotating it."""

    radius: float = 0.08
    half_height: float = 0.08
    thickness: float = 0.02

    def __post_init__(self):
        self.shape = "cup"
        super().__post_init__()
        if not self.thickness < 2 * self.half_height:
            raise ValueError(
                f"CupTool.thickness ({self.thickness}) must be less than its height ({2 * self.half_height})")

    def size_params(self):
        return np.array([self.radius, self.half_height, self.thickness])

    def inner_bounds(self) -> tuple[float, float]:
        """(bottom, top) of the cavity along the local y axis."""
        return -self.half_height + self.thickness, self.half_height

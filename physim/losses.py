"""Differentiable task terms in torch, shared by the environments.

All functions take particle positions ``x`` as an (n, dim) float64 tensor in the unit
domain and are differentiable with respect to it (and to masses where they appear).
Grids use the MPM quadratic B-spline, so a particle's mass moves smoothly between cells
and the gradient is informative everywhere (PlasticineLab's grid-mass loss).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

__all__ = [
    "grid_mass",
    "grid_mass_numpy",
    "density_l1",
    "sdf_weighted_mass",
    "distance_outside",
    "contact_distance",
    "target_sdf",
    "iou",
    "surface_density",
]


def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] not in (2, 3):
        raise ValueError(f"x must be an (n, 2|3) torch tensor, got {getattr(x, 'shape', type(x))}")


def grid_mass(x: torch.Tensor, mass: torch.Tensor | float, res: int) -> torch.Tensor:
    """Mass on a ``res``^dim grid over the unit domain (quadratic B-spline transfer, node
    k at (k + 0.5) / res, i.e. cell centers). Returns a (res,)*dim tensor."""
    _check_x(x)
    dim = x.shape[1]
    n = x.shape[0]
    m = torch.as_tensor(mass, dtype=x.dtype).expand(n)
    xi = x * res - 0.5  # cell-centered coordinates
    base = torch.floor(xi - 0.5).detach()
    fx = xi - base  # in [0.5, 1.5)
    w = [0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2]
    base = base.long()
    out = torch.zeros(res**dim, dtype=x.dtype)
    for offs in itertools.product(range(3), repeat=dim):
        weight = m.clone()
        flat = torch.zeros(n, dtype=torch.long)
        valid = torch.ones(n, dtype=torch.bool)
        for d, o in enumerate(offs):
            idx = base[:, d] + o
            valid &= (idx >= 0) & (idx < res)
            flat = flat * res + idx.clamp(0, res - 1)
            weight = weight * w[o][:, d]
        out = out.index_add(0, flat, torch.where(valid, weight, torch.zeros_like(weight)))
    return out.reshape((res,) * dim)


def grid_mass_numpy(x: np.ndarray, mass, res: int) -> np.ndarray:
    """:func:`grid_mass` for numpy input (no gradient): targets and metrics."""
    with torch.no_grad():
        return grid_mass(torch.as_tensor(np.asarray(x, dtype=np.float64)), mass, res).numpy()


def density_l1(grid: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum |m - m_target| over the grid, divided by the target's total mass (0 = perfect)."""
    return (grid - target).abs().sum() / target.sum().clamp_min(1e-12)


def sdf_weighted_mass(grid: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
    """Mass-weighted distance to the target shape (sdf >= 0 outside, 0 inside), per unit mass."""
    return (grid * sdf).sum() / grid.sum().clamp_min(1e-12)


def target_sdf(target_grid: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Distance (in domain units) from each grid node to the nearest node of the target
    shape (nodes with mass above ``threshold``, default 10 % of the max); 0 inside."""
    from scipy.ndimage import distance_transform_edt

    g = np.asarray(target_grid, dtype=np.float64)
    thr = 0.1 * g.max() if threshold is None else threshold
    outside = g <= thr
    if outside.all():
        raise ValueError("the target grid is empty: nothing above the threshold")
    return distance_transform_edt(outside) / g.shape[0]


def distance_outside(x: torch.Tensor, lo, hi) -> torch.Tensor:
    """Per-particle Euclidean distance to the axis-aligned box [lo, hi] (0 inside)."""
    _check_x(x)
    lo_t = torch.as_tensor(np.asarray(lo, dtype=np.float64), dtype=x.dtype)
    hi_t = torch.as_tensor(np.asarray(hi, dtype=np.float64), dtype=x.dtype)
    d = torch.clamp(lo_t - x, min=0.0) + torch.clamp(x - hi_t, min=0.0)
    return torch.sqrt((d * d).sum(dim=1) + 1e-12) - 1e-6


def contact_distance(x: torch.Tensor, point: torch.Tensor, radius: float = 0.0, temperature: float = 0.01
                     ) -> torch.Tensor:
    """Soft minimum over particles of the distance from ``point`` minus ``radius``, clamped at
    0: small when a tool touches the material (PlasticineLab's contact term)."""
    _check_x(x)
    d = torch.sqrt(((x - point.reshape(1, -1)) ** 2).sum(dim=1) + 1e-12) - radius
    soft_min = -temperature * torch.logsumexp(-d / temperature, dim=0)
    return torch.clamp(soft_min, min=0.0)


def iou(grid: np.ndarray, target: np.ndarray, threshold: float | None = None) -> float:
    """Intersection over union of occupied cells (mass above ``threshold``, default 10 %
    of the target's max)."""
    thr = 0.1 * float(np.max(target)) if threshold is None else threshold
    a, b = np.asarray(grid) > thr, np.asarray(target) > thr
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def surface_density(x: torch.Tensor, weight: torch.Tensor, res: int, axes=(0, 2)) -> torch.Tensor:
    """Top-down 2D image of ``weight`` (per particle) projected on the plane of ``axes``
    (x-z by default), quadratic B-spline splatting; a (res, res) tensor."""
    _check_x(x)
    return grid_mass(x[:, list(axes)], weight, res)

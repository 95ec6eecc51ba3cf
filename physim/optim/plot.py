"""Loss-curve plots of optimizer results (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["plot_losses"]


def _curve(item) -> tuple[list[float], list[int]]:
    """(losses, stage boundaries) of a result, a SysIdResult or a plain sequence of losses."""
    if hasattr(item, "losses"):
        bounds = []
        if getattr(item, "stage_boundary", None) is not None:
            bounds.append(int(item.stage_boundary))
        for st in getattr(item, "stages", None) or []:
            s = int(st.get("start_iter", 0))
            if s > 0 and s not in bounds:
                bounds.append(s)
        return [float(v) for v in item.losses], sorted(bounds)
    if isinstance(item, Sequence | np.ndarray):
        return [float(v) for v in item], []
    raise ValueError(f"cannot plot {type(item).__name__}: expected an OptimResult, a SysIdResult or a list of losses")


def plot_losses(results, path: str, title: str | None = None, xlabel: str = "iteration",
                ylabel: str = "loss") -> str:
    """Write a PNG of the loss curve(s) to ``path``; returns ``path``.

    Args:
        results: an :class:`~physim.optim.OptimResult` (or :class:`~physim.optim.SysIdResult`, or a
            list of losses), or a dict ``label -> result`` to compare several runs on one plot.
            Stage boundaries (temporal expansion, hybrid CMA-ES -> Adam) are drawn as dotted lines.
        path: output file (``.png``); its folder is created if missing.
        title, xlabel, ylabel: labels. The y axis is logarithmic when every loss is positive.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ValueError(f"path must be a file path, got {path!r}")
    items = dict(results) if isinstance(results, Mapping) else {getattr(results, "method", "loss"): results}
    if not items:
        raise ValueError("results is empty: nothing to plot")
    curves = {str(k): _curve(v) for k, v in items.items()}
    for k, (ls, _) in curves.items():
        if not ls:
            raise ValueError(f"result {k!r} has no losses to plot")
    fig = Figure(figsize=(6.4, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    all_losses = np.concatenate([np.asarray(ls) for ls, _ in curves.values()])
    finite = all_losses[np.isfinite(all_losses)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    for k, (ls, bounds) in curves.items():
        (line,) = ax.plot(np.arange(len(ls)), ls, "o-", ms=3, label=k)
        for b in bounds:
            ax.axvline(b - 0.5, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path

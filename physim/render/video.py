"""Writing frames to MP4 / GIF and rendering a rollout of a scene to a video."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np

__all__ = ["record_video", "render_rollout"]


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even width and height: pad with the edge pixels."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _as_rgb8(frame) -> np.ndarray:
    f = np.asarray(frame)
    if f.ndim == 2:
        f = np.repeat(f[..., None], 3, axis=2)
    if f.ndim != 3 or f.shape[2] not in (3, 4):
        raise ValueError(f"a frame must be an (H, W, 3) image, got shape {f.shape}")
    f = f[..., :3]
    if f.dtype != np.uint8:
        if np.issubdtype(f.dtype, np.floating) and f.max(initial=0.0) <= 1.0:
            f = f * 255.0
        f = np.clip(np.round(f), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(f)


def record_video(frames: Iterable[np.ndarray], path: str | os.PathLike, fps: float = 20) -> str:
    """Write frames to a video: MP4 (H.264 through imageio-ffmpeg), or an animated GIF
    when ``path`` ends with ``.gif``.

    Args:
        frames: (H, W, 3) images (uint8, or floats in 0-1), all of one size; any iterable,
            so a generator streams frames to the file.
        path: output file; its folder is created.
        fps: frames per second.

    Returns:
        the path written.
    """
    import imageio.v2 as imageio

    path = os.fspath(path)
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    gif = path.lower().endswith(".gif")
    it = iter(frames)
    try:
        first = _as_rgb8(next(it))
    except StopIteration:
        raise ValueError("record_video got no frames") from None
    shape = first.shape
    if gif:
        writer = imageio.get_writer(path, mode="I", duration=1000.0 / fps, loop=0)
    else:
        writer = imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p", quality=8,
                                    macro_block_size=1, ffmpeg_log_level="error")
    try:
        writer.append_data(first if gif else _even(first))
        for count, frame in enumerate(it, start=1):
            f = _as_rgb8(frame)
            if f.shape != shape:
                raise ValueError(f"frame {count} has shape {f.shape}, the first had {shape}")
            writer.append_data(f if gif else _even(f))
    finally:
        writer.close()
    return path


def render_rollout(scene, actions, path: str | os.PathLike | None, every: int = 1, fps: float = 20,
                   renderer=None, **renderer_kwargs) -> list[np.ndarray]:
    """Step ``scene`` through ``actions`` and film it.

    The scene is not reset: the rollout starts from its current state. The first frame
    shows that state, then one frame is grabbed after every ``every`` steps
    (``1 + len(actions) // every`` frames).

    Args:
        scene: a built scene.
        actions: (steps, action_dim) array; ``scene.step(row)`` is called for each row.
        path: video file (``.mp4`` or ``.gif``); ``None`` only returns the frames.
        every: steps between frames.
        fps: frames per second of the video.
        renderer: a :class:`physim.render.Renderer` of this scene to draw with (left open);
            otherwise one is created from ``renderer_kwargs`` (off screen unless
            ``off_screen=False`` is given) and closed at the end.

    Returns:
        the frames, (H, W, 3) uint8 arrays.
    """
    from .renderer import Renderer

    a = np.asarray(actions, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != scene.action_dim:
        raise ValueError(f"actions must have shape (steps, {scene.action_dim}), got {np.shape(actions)}")
    if not (isinstance(every, int) and every >= 1):
        raise ValueError(f"every must be a positive integer, got {every!r}")
    own = renderer is None
    if own:
        renderer_kwargs.setdefault("off_screen", True)
        renderer = Renderer(scene, **renderer_kwargs)
    elif renderer_kwargs:
        raise ValueError("pass either renderer or renderer keyword arguments, not both")
    try:
        frames = [renderer.frame()]
        for t, row in enumerate(a):
            scene.step(row)
            if (t + 1) % every == 0:
                frames.append(renderer.frame())
    finally:
        if own:
            renderer.close()
    if path is not None:
        record_video(frames, path, fps=fps)
    return frames

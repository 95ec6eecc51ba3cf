"""Real-time control of a scene from the keyboard, and the loop shared by the demos.

:class:`KeyControl` keeps the set of keys held down in a :class:`~physim.render.Renderer`'s
window (press/release events, robust to key auto-repeat); the demo maps held keys to an
action row. :class:`DemoLoop` steps the scene with that action once per frame, either
in an interactive window or headless, where a scripted timeline of held keys replaces
the keyboard and the frames go to a video. With ``PHYSIM_SMOKE=1`` (:mod:`physim.smoke`)
a headless demo films a couple of frames and a window checks itself and closes: it renders
a few frames, presses a key through the window's interactor and quits with Escape.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .. import smoke

__all__ = ["KeyControl", "DemoLoop", "normalize_key", "scripted_keys", "ensure_runtime", "demo_parser"]

#: keys VTK / PyVista bind by default that the demos use (or that would exit or zoom)
_DEFAULT_BINDINGS = ("Up", "Down", "q", "v", "b", "plus", "minus", "C")


def normalize_key(key: str) -> str:
    """Key names as VTK's key symbols, letters lower case ('A' and 'a' are one key)."""
    return key.lower() if len(key) == 1 else key


class KeyControl:
    """Which keys are held down.

    Args:
        renderer: a :class:`~physim.render.Renderer` (or ``None`` to drive the keys only
            from code with :meth:`press` / :meth:`release` / :meth:`hold_only`).
        grace_s: a release followed by a press within this many seconds (key auto-repeat)
            does not count as letting go.

    Attaching frees the keys VTK and PyVista bind by default (``w`` wireframe, ``s`` surface,
    ``e`` / ``q`` exit, arrow-key zoom, ...) for the demo's own use; ``Escape`` closes the window.
    """

    def __init__(self, renderer=None, grace_s: float = 0.08):
        self.grace_s = float(grace_s)
        self._down: dict[str, float] = {}
        self._released: dict[str, float] = {}
        self._callbacks: dict[str, list[Callable[[], object]]] = {}
        self.plotter = None
        if renderer is not None:
            self.attach(renderer.plotter)

    def attach(self, plotter) -> None:
        """Listen to key events of a ``pyvista.Plotter``."""
        iren = plotter.iren
        if iren is None:
            return
        self.plotter = plotter
        iren.interactor.RemoveObservers("CharEvent")  # VTK's single-letter shortcuts
        for key in _DEFAULT_BINDINGS:
            iren.clear_events_for_key(key)
        iren.add_observer("KeyPressEvent", lambda *_: self.press(iren.interactor.GetKeySym() or ""))
        iren.add_observer("KeyReleaseEvent", lambda *_: self.release(iren.interactor.GetKeySym() or ""))
        self.on_key("Escape", self._quit)

    def _quit(self) -> None:
        if self.plotter is not None and self.plotter.iren is not None:
            self.plotter.iren.terminate_app()

    def on_key(self, key: str, callback: Callable[[], object]) -> None:
        """Call ``callback()`` whenever ``key`` is pressed (auto-repeat calls it again)."""
        self._callbacks.setdefault(normalize_key(key), []).append(callback)

    def press(self, key: str) -> None:
        """Register a key press (what the window's event does)."""
        key = normalize_key(key)
        if not key:
            return
        self._down[key] = time.monotonic()
        self._released.pop(key, None)
        for cb in self._callbacks.get(key, ()):
            cb()

    def release(self, key: str, immediate: bool = False) -> None:
        """Register a key release; ``immediate`` skips the auto-repeat grace period."""
        key = normalize_key(key)
        if immediate:
            self._down.pop(key, None)
            self._released.pop(key, None)
        elif key in self._down:
            self._released[key] = time.monotonic()

    def hold_only(self, keys: Iterable[str]) -> None:
        """Hold exactly ``keys`` (scripted control): release the others at once, press new ones."""
        keys = {normalize_key(k) for k in keys}
        for k in list(self._down):
            if k not in keys:
                self.release(k, immediate=True)
        for k in keys:
            if k not in self._down:
                self.press(k)

    def held(self, *keys: str) -> bool:
        """Whether any of ``keys`` is down."""
        now = time.monotonic()
        for key in keys:
            key = normalize_key(key)
            if key not in self._down:
                continue
            t = self._released.get(key)
            if t is None or now - t < self.grace_s:
                return True
            self._down.pop(key, None)  # released for longer than the grace period
            self._released.pop(key, None)
        return False

    def axis(self, negative: str | Sequence[str], positive: str | Sequence[str]) -> float:
        """-1, 0 or +1 from two groups of keys (e.g. ``axis(("Left", "a"), ("Right", "d"))``)."""
        neg = (negative,) if isinstance(negative, str) else tuple(negative)
        pos = (positive,) if isinstance(positive, str) else tuple(positive)
        return float(self.held(*pos)) - float(self.held(*neg))

    @property
    def down(self) -> set[str]:
        """The keys held now."""
        return {k for k in list(self._down) if self.held(k)}


class DemoLoop:
    """Step a scene once per frame with an action computed from the held keys.

    Args:
        scene: a built scene.
        renderer: its :class:`~physim.render.Renderer`.
        keys: the :class:`KeyControl` the action reads.
        action: ``action() -> (action_dim,)`` array, called once per frame.
        help_text: shown in the upper left corner.
        status: ``status() -> str`` shown in the lower left corner, refreshed every frame.
        on_reset: called after the scene is reset (``r`` key, or after a blow-up).
        on_step: called after every step, before the frame is drawn (e.g. to recolor particles).
    """

    def __init__(self, scene, renderer, keys: KeyControl, action: Callable[[], np.ndarray], help_text: str = "",
                 status: Callable[[], str] | None = None, on_reset: Callable[[], object] | None = None,
                 on_step: Callable[[], object] | None = None):
        self.scene = scene
        self.renderer = renderer
        self.keys = keys
        self.action = action
        self.status = status
        self.on_reset = on_reset
        self.on_step = on_step
        self.frame_index = 0
        self.message = ""
        self._message_until = 0
        if on_step is not None:
            on_step()
        renderer.plotter.add_text(help_text, position="upper_left", font_size=9, color="#27303a", name="help")
        self._status_actor = renderer.plotter.add_text(status() if status is not None else "", position="lower_left",
                                                       font_size=9, color="#27303a", name="status")
        keys.on_key("r", self.reset)

    def reset(self, message: str = "reset") -> None:
        """Back to the scene's initial state."""
        self.scene.reset()
        if self.on_reset is not None:
            self.on_reset()
        self.message = message
        self._message_until = self.frame_index + 40

    def tick(self) -> None:
        """One frame: compute the action, step the scene (reset it if it blows up), refresh the status."""
        from ..scene import SimulationError

        a = np.asarray(self.action(), dtype=np.float64)
        try:
            self.scene.step(a)
        except SimulationError:
            self.reset("the simulation blew up (too fast?) -- reset")
        if self.on_step is not None:
            self.on_step()
        self.frame_index += 1
        text = self.status() if self.status is not None else ""
        if self.message and self.frame_index < self._message_until:
            text = f"{text}\n{self.message}" if text else self.message
        self._status_actor.set_text("lower_left", text)

    def run_interactive(self, interval_ms: int = 10, title: str = "physim", smoke_key: str | None = None) -> None:
        """Open the window and run until it is closed (Escape or the window button).

        In smoke mode (``$PHYSIM_SMOKE``) the window drives itself through
        :class:`_WindowSmokeCheck` with ``smoke_key`` (a key the demo reacts to) and closes;
        a step of that check that fails raises ``RuntimeError`` after the window is closed.
        """
        if not smoke.enabled():
            self.renderer.show(on_tick=self.tick, interval_ms=interval_ms, title=title)
            return
        check = _WindowSmokeCheck(self, smoke_key or "r")
        self.renderer.show(on_tick=check.tick, interval_ms=interval_ms, title=title)
        check.verify()

    def run_scripted(self, frames: int, script: Sequence[tuple[int, Iterable[str]]],
                     period: int | None = None) -> list[np.ndarray]:
        """Play ``frames`` frames headless; returns the images (the first shows the initial state).

        Args:
            frames: number of simulated frames.
            script: (start frame, keys) pairs sorted by start: from that frame on exactly
                ``keys`` are held (until the next entry).
            period: repeat the script every ``period`` frames (``None``: play it once; after
                its last entry those keys stay held).
        """
        images = [self.renderer.frame()]
        for f in range(frames):
            self.keys.hold_only(scripted_keys(script, f, period))
            self.tick()
            images.append(self.renderer.frame())
        return images

    def run_demo(self, args, script: Sequence[tuple[int, Iterable[str]]], title: str, keys_help: str
                 ) -> list[np.ndarray] | None:
        """A demo's main loop: the interactive window, or (``args.offscreen``) ``args.frames``
        scripted frames written to ``args.out`` at ``args.fps``; closes the renderer either way.
        Returns the frames when headless."""
        from .video import record_video

        try:
            if not args.offscreen:
                print(f"[physim] {self.scene.n_particles} particles; keys: {keys_help}")
                held = [k for _, keys in script for k in sorted(keys)]
                self.run_interactive(title=title, smoke_key=held[0] if held else None)
                return None
            frames = self.run_scripted(smoke.shrink(args.frames, smoke.FRAMES), script)
            record_video(frames, args.out, fps=args.fps)
            print(f"[physim] wrote {len(frames)} frames to {args.out}")
            return frames
        finally:
            self.renderer.close()


class _WindowSmokeCheck:
    """The interactive window's smoke test, one step per timer tick of the open window.

    Ticks 1..FRAMES step and draw the scene as usual; the first frame must not be blank.
    Then ``key`` is pressed and released through the VTK interactor (the path real key
    events take) and must show up as held in the :class:`KeyControl`; one more tick steps
    with it held; then Escape must close the window. A window still open
    :data:`GRACE_TICKS` ticks after Escape is closed here and counted as a failure.
    """

    GRACE_TICKS = 20

    def __init__(self, loop: DemoLoop, key: str):
        self.loop, self.key = loop, normalize_key(key)
        self.count = 0
        self.problems: list[str] = []
        self.escaped_at: int | None = None

    def _send(self, event: str, key: str) -> None:
        iren = self.loop.renderer.plotter.iren.interactor
        iren.SetKeySym(key)
        iren.SetKeyCode(key if len(key) == 1 else "\0")
        iren.InvokeEvent(event)

    def tick(self) -> None:
        self.count += 1
        n = smoke.FRAMES
        if self.escaped_at is not None:  # Escape did not close the window
            if self.count - self.escaped_at >= self.GRACE_TICKS:
                self.problems.append("Escape did not close the window")
                self.loop.keys._quit()
            return
        self.loop.tick()
        if self.count == 1:
            image = self.loop.renderer.plotter.screenshot(return_img=True)
            if image is None or np.asarray(image).std() < 1.0:
                self.problems.append("the window's first frame is blank")
        elif self.count == n:
            self._send("KeyPressEvent", self.key)
            if self.key not in self.loop.keys.down:
                self.problems.append(f"key {self.key!r} pressed in the window is not held by KeyControl")
        elif self.count == n + 1:
            self._send("KeyReleaseEvent", self.key)
            self.escaped_at = self.count
            self._send("KeyPressEvent", "Escape")

    def verify(self) -> None:
        """Raise ``RuntimeError`` naming what failed; print a summary line otherwise."""
        if self.escaped_at is None:
            self.problems.append(f"the window closed after {self.count} ticks, before the check ran")
        if self.problems:
            raise RuntimeError("interactive smoke check failed: " + "; ".join(self.problems))
        print(f"[physim] smoke: window rendered {self.loop.frame_index} frames, key {self.key!r} held, "
              "Escape closed it")


def scripted_keys(script: Sequence[tuple[int, Iterable[str]]], frame: int, period: int | None = None) -> set[str]:
    """The keys a (start frame, keys) timeline holds at ``frame``."""
    f = frame % period if period else frame
    held: Iterable[str] = ()
    for start, keys in script:
        if f >= start:
            held = keys
    return set(held)


def ensure_runtime(arch: str | None = None):
    """Start physim's runtime for a demo unless one is already running.

    A new runtime uses ``arch`` (``None``: ``$PHYSIM_ARCH`` or auto), f32 (enough for forward
    simulation) and ``fast_compile`` (:func:`physim.backend.init`: a demo's first start compiles
    its kernels in seconds, not minutes -- push_duck's substep 17 s instead of 279 s on a 2-core
    CPU -- and its frames ran no slower). A running one (a test session, a notebook) is kept as it is; an
    ``arch`` that differs from it only gives a warning.
    """
    from .. import backend

    cfg = backend.config()
    if cfg is None:
        return backend.init(arch=arch, precision="f32", fast_compile=True)
    if arch is not None and arch != "auto" and arch != cfg.arch:
        warnings.warn(f"physim is already running on {cfg.arch!r}; ignoring arch={arch!r}", stacklevel=2)
    return cfg


def _frames(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return n


def _fps(text: str) -> float:
    try:
        fps = float(text)
    except ValueError:
        fps = 0.0
    if not (fps > 0 and np.isfinite(fps)):
        raise argparse.ArgumentTypeError(f"must be a positive number of frames per second, got {text!r}")
    return fps


def demo_parser(doc: str, name: str, frames: int, fps: float, scripted: str = "the scripted sequence"
                ) -> argparse.ArgumentParser:
    """The command line every window demo shares: ``--offscreen``, ``--frames``, ``--out``,
    ``--fps`` and ``--arch`` (a demo adds its own options to the parser it gets).

    Args:
        doc: the demo module's docstring (its first line describes the command).
        name: the demo's name; the default video is ``out/<name>.mp4``.
        frames: default number of headless frames.
        fps: default frame rate of the video.
        scripted: what ``--offscreen`` plays, for the help text.

    A negative ``--frames`` or a non-positive ``--fps`` is refused by the parser, naming the value.
    """
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--offscreen", action="store_true", help=f"no window: play {scripted}, write a video")
    parser.add_argument("--frames", type=_frames, default=frames, help="frames to simulate with --offscreen")
    parser.add_argument("--out", default=f"out/{name}.mp4", help="video written with --offscreen")
    parser.add_argument("--fps", type=_fps, default=fps, help="frame rate of the video")
    parser.add_argument("--arch", default=None, help="cpu, cuda or auto, when this starts physim's runtime "
                                                     "(default: $PHYSIM_ARCH or auto)")
    return parser

"""Python subprocesses of the test suite, started so that they import the installed physim.

``python -c CODE`` and ``python -m MODULE`` put their working directory first on ``sys.path``.
Started from the repository root (pytest's working directory), that is the checkout's
``physim/``: with a regular (non-editable) install it would shadow the installed package, so a
subprocess would test other code than the suite in-process, and the checkout has no
``physim.envs`` / ``physim.demos`` (``pip install`` maps the top-level ``envs/`` and ``demos/``
there). :func:`run_python` therefore starts them in an empty folder. See the README's "Layout".
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["ROOT", "NEUTRAL_CWD", "run_python"]

#: the repository root (the checkout)
ROOT = Path(__file__).resolve().parents[1]

#: an empty folder: a subprocess started here sees no ``physim/`` but the installed one
NEUTRAL_CWD = Path(tempfile.mkdtemp(prefix="physim-tests-cwd-"))
atexit.register(shutil.rmtree, NEUTRAL_CWD, ignore_errors=True)


def run_python(args: list[str], *, env: dict[str, str] | None = None, timeout: float = 600,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python *args`` with this interpreter (captured text output) in :data:`NEUTRAL_CWD`
    (or ``cwd``, which must not be the repository root)."""
    cwd = Path(cwd) if cwd is not None else NEUTRAL_CWD
    if cwd.resolve() == ROOT:
        raise ValueError("a Python subprocess started in the repository root imports the checkout's physim")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)

"""The suite tests one physim, the installed one, and the install maps the checkout completely.

The checkout keeps the tasks and demos at the top level (``envs/``, ``demos/``); ``pip install``
maps them to ``physim.envs`` / ``physim.demos`` (``[tool.setuptools.package-dir]``). No import
hook fakes that mapping for the checkout, so the checkout's own ``physim/`` must never be
imported by accident: in-process (``tests/conftest.py``) and in subprocesses
(``tests/subproc.py``) the suite imports what a clean interpreter outside the checkout imports.
With an editable install that is the checkout itself; with a regular install, site-packages.
"""

from __future__ import annotations

import hashlib
import json
import sys
from importlib import metadata
from pathlib import Path

from subproc import NEUTRAL_CWD, ROOT, run_python

import physim
import physim.demos
import physim.envs

_WHERE = ("import json, physim, physim.envs, physim.demos; "
          "print(json.dumps([physim.__file__, physim.envs.__file__, physim.demos.__file__]))")


def _installed_files() -> list[str]:
    """(physim, physim.envs, physim.demos) ``__init__.py`` of a clean interpreter: isolated mode
    (``-I``: no working directory or PYTHONPATH on sys.path) in an empty folder."""
    r = run_python(["-I", "-c", _WHERE], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _editable() -> bool:
    direct = metadata.distribution("physim").read_text("direct_url.json")
    return bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))


def test_in_process_physim_is_the_installed_one():
    here = [physim.__file__, physim.envs.__file__, physim.demos.__file__]
    assert here == _installed_files(), f"the suite imported {here[0]}, not the installed physim"
    if not _editable():
        # (CI's venv lives inside the checkout, so compare with the checkout's package folder)
        assert Path(physim.__file__).resolve().parent != ROOT / "physim", "a regular install, but the checkout's physim"
    assert not any(Path(p or ".").resolve() == ROOT for p in sys.path)


def test_subprocesses_import_the_installed_physim():
    r = run_python(["-c", _WHERE], timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == _installed_files()
    assert NEUTRAL_CWD.is_dir() and not (NEUTRAL_CWD / "physim").exists()


def test_no_import_hook_in_physim():
    assert not (ROOT / "physim" / "_source_tree.py").exists()
    hooks = [f for f in sys.meta_path if getattr(type(f), "__module__", "").startswith("physim")]
    assert not hooks, f"physim installs import hooks: {hooks}"


def _source_of(installed: str) -> Path | None:
    """The checkout file an installed ``physim/...`` file comes from (``physim/envs/X`` <- ``envs/X``)."""
    parts = Path(installed).parts
    if parts[0] != "physim" or not installed.endswith(".py"):
        return None
    if len(parts) > 2 and parts[1] in ("envs", "demos"):
        return ROOT.joinpath(*parts[1:])
    return ROOT.joinpath(*parts)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_install_maps_every_source_file_of_the_checkout():
    """Every module of ``physim/``, ``envs/`` and ``demos/`` is installed under ``physim``
    (a subpackage missing from ``[tool.setuptools] packages`` fails here), and a regular install
    is this checkout's code: a stale install after an edit fails here too (reinstall)."""
    sources = sorted(p for d in ("physim", "envs", "demos") for p in (ROOT / d).rglob("*.py")
                     if "__pycache__" not in p.parts)
    if _editable():
        # the editable finder maps physim, physim.envs and physim.demos to the checkout's folders
        assert Path(physim.envs.__file__).resolve() == ROOT / "envs" / "__init__.py"
        assert Path(physim.demos.__file__).resolve() == ROOT / "demos" / "__init__.py"
        return
    dist = metadata.distribution("physim")
    installed = {}
    for f in dist.files or []:
        src = _source_of(f.as_posix())
        if src is not None:
            installed[src] = Path(dist.locate_file(f))
    missing = [str(p.relative_to(ROOT)) for p in sources if p not in installed]
    assert not missing, f"checkout modules not in the installed physim (add their package to pyproject.toml): {missing}"
    stale = [str(p.relative_to(ROOT)) for p in sources if _digest(p) != _digest(installed[p])]
    assert not stale, f"the installed physim differs from the checkout in {stale}: reinstall (pip install '.[test]')"

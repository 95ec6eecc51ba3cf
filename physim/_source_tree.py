"""Make ``physim.envs`` and ``physim.demos`` importable from a source checkout.

In the repository, the environments and demos live in the top-level folders ``envs/``
and ``demos/``; ``pip install`` maps them to ``physim.envs`` / ``physim.demos``
(``[tool.setuptools.package-dir]``). When Python imports ``physim`` from the checkout
itself instead (``python -c ...`` or ``python -m physim.cli`` run in the repository
root puts the checkout first on ``sys.path``), that mapping does not exist, so this
module installs a small finder that gives the same mapping. It does nothing for an
installed package (there ``physim/envs`` exists).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_MAPPED = ("envs", "demos")


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    def __init__(self, roots: dict[str, Path]):
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        root = self.roots.get(fullname)
        if root is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, root / "__init__.py", submodule_search_locations=[str(root)])


def install(package_dir: Path) -> None:
    roots = {}
    for name in _MAPPED:
        if (package_dir / name).is_dir():
            continue  # installed layout: the subpackage is really there
        src = package_dir.parent / name
        if (src / "__init__.py").is_file():
            roots[f"physim.{name}"] = src
    if roots and not any(isinstance(f, _SourceTreeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceTreeFinder(roots))

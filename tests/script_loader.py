"""Load a script of ``benchmarks/`` as a module, so tests can call its functions.

The benchmark scripts are files, not a package (``benchmarks/`` has no ``__init__.py`` and is not
installed), so tests import them by path. ``tests/`` is on ``sys.path`` because its ``conftest.py``
lives there (pytest's default ``prepend`` import mode), hence ``from script_loader import
load_script`` works from every test folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str | None = None) -> ModuleType:
    """Execute ``ROOT / relpath`` as a fresh module named ``name`` (default: the file's stem).

    The module is registered in ``sys.modules`` while it executes (dataclasses and pickling look
    their module up there) and stays registered, so repeated loads give fresh module objects under
    the same name, as each test file did before.
    """
    path = ROOT / relpath
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

"""Loading a user's app: the :class:`~streammon.Monitor` named by ``"path/app.py:attr"`` or ``"pkg.module:attr"``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from .errors import AppLoadError
from .monitor import Monitor

__all__ = ["load_app", "AppLoadError"]


def load_app(spec: str) -> Monitor:
    """The Monitor named by ``spec``: ``"pkg.module:attr"`` or ``"path/to/app.py:attr"``.

    ``attr`` defaults to ``monitor``. A file is imported as a script is run: its directory goes on
    ``sys.path`` so it can import its neighbours; a module name is looked up from the current directory too.
    Anything else raises :class:`AppLoadError` saying what to fix:

    >>> try:
    ...     load_app("streammon.demo:build_monitor")
    ... except AppLoadError as exc:
    ...     print(str(exc).split(";")[0])
    streammon.demo:build_monitor is a function, not a streammon.Monitor
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not attr or any(c in attr for c in "/\\") or attr.endswith(".py"):
        target, attr = spec, "monitor"
    if not target:
        raise AppLoadError(f"--app {spec!r} names no module; write it as app.py:monitor or package.module:monitor")
    is_path = target.endswith(".py") or os.sep in target or "/" in target
    module = _import_file(target) if is_path else _import_module(target)
    if not hasattr(module, attr):
        found = [name for name, value in vars(module).items() if isinstance(value, Monitor)]
        hint = (f"Monitor objects in it: {', '.join(found)}; write --app {target}:{found[0]}" if found
                else "it defines no Monitor; create one at module level, e.g. monitor = sm.Monitor('taxi')")
        raise AppLoadError(f"{target!r} has no attribute {attr!r}; {hint}")
    monitor = getattr(module, attr)
    if not isinstance(monitor, Monitor):
        raise AppLoadError(
            f"{target}:{attr} is a {type(monitor).__name__}, not a streammon.Monitor; point --app at the object "
            f"created with sm.Monitor(...), e.g. {target}:monitor"
        )
    return monitor


def _import_file(target: str) -> ModuleType:
    path = Path(target)
    if not path.is_file():
        raise AppLoadError(f"app file {target!r} does not exist (looked in {Path.cwd()})")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"streammon_app_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"cannot import {target!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so dataclasses and pickling inside the app find their module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(spec.name, None)
        raise AppLoadError(_import_failure(target, exc)) from exc
    return module


def _import_module(target: str) -> ModuleType:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise AppLoadError(f"no module named {target!r}; run from the directory that contains it, "
                               f"or give a file path such as path/to/app.py:monitor") from exc
        raise AppLoadError(_import_failure(target, exc)) from exc
    except Exception as exc:
        raise AppLoadError(_import_failure(target, exc)) from exc


def _import_failure(target: str, exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = next((f"{f.filename}:{f.lineno}" for f in reversed(frames) if "importlib" not in f.filename), "")
    return f"importing {target!r} raised {type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")

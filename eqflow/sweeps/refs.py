"""Objects sent to pool workers as pickles: functions and classes travel by reference, so a
worker imports them. A driver script's own classes and functions live in ``__main__``; the
worker then loads that script as a module (``__mp_main__``, as multiprocessing's spawn does, so
its ``if __name__ == "__main__":`` block does not run) and resolves the names there. As with
spawn, the driver's ``sys.path`` travels along, so what the driver imports a worker on the same
file system imports too."""

from __future__ import annotations

import base64
import importlib.util
import io
import os
import pickle
import sys
from typing import Any


def main_path() -> str | None:
    """The driver script's file, if the driver runs one (not an interactive session)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if path else None


def driver_path() -> list[str]:
    """The driver's import path (folders only), for :func:`extend_path` in a worker."""
    return [os.path.abspath(p or os.getcwd()) for p in sys.path if os.path.isdir(p or os.getcwd())]


def extend_path(paths: list[str] | None) -> None:
    """Append the driver's import folders this process lacks (its own come first)."""
    for path in paths or []:
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)


def dumps(obj: Any) -> str:
    """A text (base64) pickle of ``obj`` that a worker can load with :func:`loads`."""
    return base64.b64encode(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, script: str | None) -> None:
        super().__init__(io.BytesIO(data))
        self.script = script

    def find_class(self, module: str, name: str) -> Any:
        if module == "__main__" and self.script:
            return getattr(_load_script(self.script), name)
        return super().find_class(module, name)


_scripts: dict[str, Any] = {}


def _load_script(path: str) -> Any:
    """The driver script as a module (loaded once per worker process)."""
    module = _scripts.get(path)
    if module is None:
        if main_path() == path:
            module = sys.modules["__main__"]  # the driver itself
        else:
            spec = importlib.util.spec_from_file_location("__mp_main__", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load the driver script {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules["__mp_main__"] = module
            script_dir = os.path.dirname(path)
            if script_dir not in sys.path:
                sys.path.insert(0, script_dir)
            spec.loader.exec_module(module)
        _scripts[path] = module
    return module


def loads(text: str, script: str | None = None) -> Any:
    """Load a :func:`dumps` pickle; ``script``: the driver script, for names in ``__main__``."""
    return _Unpickler(base64.b64decode(text), script).load()

"""Load a script (scripts/*.py, the front ends) as a module, to test it in-process."""

import importlib.util
import sys
from pathlib import Path


def load_script(path, name: str | None = None):
    """Execute the file at `path` as module `name` (default: its file name) and return the module."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses defined in the script look their module up there
    spec.loader.exec_module(module)
    return module

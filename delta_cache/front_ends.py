"""The repository's front ends (`Wan2.1/generate.py`, `HunyuanVideo/sample_video.py`) loaded as modules, for
the scripts that run them in-process: the same `main(argv)` as the command line, without a new interpreter
and its seconds of imports per run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

_REPO = Path(__file__).resolve().parent.parent
FRONT_ENDS = {"wan": _REPO / "Wan2.1" / "generate.py", "hunyuan_video": _REPO / "HunyuanVideo" / "sample_video.py"}


def load_front_end(family: str) -> ModuleType:
    """The family's front end as a module (its `main(argv)` is the command line)."""
    spec = importlib.util.spec_from_file_location(f"front_end_{family}", FRONT_ENDS[family])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

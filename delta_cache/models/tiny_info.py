"""`tiny_model.json`: what a checkpoint trained by `scripts/train_tiny.py` records about itself.

The front ends read it for one thing: the tiny model's native size, which is not one of upstream's sizes
(a 128x128 model would be wasted, and slow on a CPU, at 1280x720). Real checkpoints have no such file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from delta_cache.errors import CheckpointError

TINY_MODEL_FILE = "tiny_model.json"


@dataclass(frozen=True)
class NativeSize:
    width: int
    height: int
    num_frames: int

    @property
    def size(self) -> str:
        """Upstream's WIDTH*HEIGHT spelling."""
        return f"{self.width}*{self.height}"


def native_size(ckpt_dir) -> NativeSize | None:
    """The native size from `<ckpt_dir>/tiny_model.json`, or None when the folder has no such file."""
    path = Path(ckpt_dir) / TINY_MODEL_FILE
    if not path.is_file():
        return None
    try:
        entry = json.loads(path.read_text())["native_size"]
        size = NativeSize(int(entry["width"]), int(entry["height"]), int(entry["num_frames"]))
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: malformed ({type(err).__name__}: {err}); expected "
                              '{"native_size": {"width": W, "height": H, "num_frames": F}, ...}') from None
    if min(size.width, size.height, size.num_frames) < 1:
        raise CheckpointError(f"{path}: native_size must be positive, got {entry}")
    return size

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
# The committed tiny trained checkpoints, relative to the repository root: the scripts' default per family.
COMMITTED_CHECKPOINTS = {"wan": "checkpoints/tiny-wan2.1-t2v", "hunyuan_video": "checkpoints/tiny-hunyuanvideo-t2v"}
_REPO = Path(__file__).resolve().parents[2]


def committed_checkpoint(family: str) -> Path:
    """The committed tiny checkpoint of `family` ("wan" or "hunyuan_video"), as an absolute path."""
    return _REPO / COMMITTED_CHECKPOINTS[family]


def add_tiny_checkpoint_flags(parser) -> None:
    """--family and --ckpt_dir of the diagnostics that run a tiny trained checkpoint (`tiny_checkpoint_dir`)."""
    parser.add_argument("--family", choices=sorted(COMMITTED_CHECKPOINTS), default="wan")
    parser.add_argument("--ckpt_dir", type=Path, help="tiny trained checkpoint (default: the committed one)")


def tiny_checkpoint_dir(args) -> Path:
    """`args.ckpt_dir`, else the committed checkpoint of `args.family`; a missing folder is a UserInputError."""
    from delta_cache.cli import check_input_folder

    ckpt = args.ckpt_dir or committed_checkpoint(args.family)
    check_input_folder("--ckpt_dir", ckpt)
    return ckpt


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
    try:
        if not path.is_file():
            return None
        entry = json.loads(path.read_text())["native_size"]
        size = NativeSize(int(entry["width"]), int(entry["height"]), int(entry["num_frames"]))
    except (OSError, ValueError, KeyError, TypeError) as err:  # (unreadable, not JSON, wrong entries)
        raise CheckpointError(f"{path}: malformed ({type(err).__name__}: {err}); expected "
                              '{"native_size": {"width": W, "height": H, "num_frames": F}, ...}') from None
    if min(size.width, size.height, size.num_frames) < 1:
        raise CheckpointError(f"{path}: native_size must be positive, got {entry}")
    return size


def resolve_video_size(ckpt_dir, size: str | None, frame_num: int | None, *,
                       default: NativeSize | None = None) -> NativeSize:
    """A tool's --size / --frame_num: the flags, else the checkpoint's native size (tiny_model.json), else
    `default` (for real checkpoints; without one the flags are required).

    The native frame count fills in --frame_num only at the native size (a tiny model's 17 frames mean
    nothing at another size); elsewhere the default's count does, if there is a default. Width and height
    must be positive multiples of 16 and frame_num 4n+1; callers add their own bounds. Bad flags raise
    UserInputError (one line).
    """
    from delta_cache.errors import UserInputError

    native = native_size(ckpt_dir)
    fallback = native or default
    if size is None and fallback is None:
        raise UserInputError(f"{ckpt_dir} has no {TINY_MODEL_FILE} (native size): give --size WIDTH*HEIGHT and "
                             "--frame_num")
    size = size or fallback.size
    try:
        width, height = (int(v) for v in size.split("*"))
    except ValueError:
        raise UserInputError(f"--size must be WIDTH*HEIGHT (e.g. 128*128), got {size!r}") from None
    if frame_num is None:
        if native is not None and (width, height) == (native.width, native.height):
            frame_num = native.num_frames
        elif default is not None:
            frame_num = default.num_frames
        elif native is None:
            raise UserInputError(f"{ckpt_dir} has no {TINY_MODEL_FILE} (native size): give --frame_num with --size")
        else:
            raise UserInputError(f"--size {size} is not the checkpoint's native size: give --frame_num too")
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise UserInputError(f"--size {size}: width and height must be positive multiples of 16")
    if frame_num < 1 or (frame_num - 1) % 4:
        raise UserInputError(f"--frame_num must be 4n+1, got {frame_num}")
    return NativeSize(width, height, frame_num)

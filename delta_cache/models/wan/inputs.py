"""The images that condition Wan2.1's image tasks: i2v's --image, flf2v's --first_frame and --last_frame.

Shared by `Wan2.1/generate.py` and `scripts/profile_model.py`, so that a profile sees the inputs a
generation will. Flags are checked before anything loads (`check_image_flags`, no imports beyond the
standard library); the images are read after (`read_input_frames`, PIL).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import UserInputError
from .tasks import is_image_to_video

IMAGE_FLAGS = ("image", "first_frame", "last_frame")


def check_image_flags(task: str, args) -> None:
    """The image flags `task` needs are given and name files; one-line UserInputError otherwise."""
    if task.startswith("i2v") and args.image is None:
        raise UserInputError(f"--image is required for task {task}")
    if task.startswith("flf2v") and (args.first_frame is None or args.last_frame is None):
        raise UserInputError(f"--first_frame and --last_frame are both required for task {task}")
    for flag in IMAGE_FLAGS:
        path = getattr(args, flag)
        if path is not None and not Path(path).is_file():
            raise UserInputError(f"--{flag} {path}: no such file")


def read_input_frames(task: str, args):
    """(image, last image) as RGB PIL images for `task` (None, None for text tasks).

    flf2v: a last frame of another size is scaled to cover the first frame's size and centre-cropped to it,
    as upstream documents it."""
    if not is_image_to_video(task):
        return None, None
    from PIL import Image, ImageOps, UnidentifiedImageError

    def read(flag):
        path = getattr(args, flag)
        try:
            return Image.open(path).convert("RGB")
        except (OSError, UnidentifiedImageError) as err:
            raise UserInputError(f"--{flag} {path}: not a readable image ({err})") from None

    if task.startswith("i2v"):
        return read("image"), None
    first, last = read("first_frame"), read("last_frame")
    if last.size != first.size:
        last = ImageOps.fit(last, first.size, method=Image.BICUBIC)
    return first, last

"""The inputs that condition Wan2.1's tasks beyond the prompt: i2v's --image, flf2v's --first_frame and
--last_frame, VACE's --src_video, --src_mask and --src_ref_images.

Shared by `Wan2.1/generate.py` and `scripts/profile_model.py`, so that a profile sees the inputs a
generation will. Flags are checked before anything loads (`check_image_flags`, `check_vace_flags`: no
imports beyond the standard library); the files are read after (`read_input_frames`, `read_vace_inputs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UserInputError
from .tasks import is_image_to_video, is_vace, parse_size, vace_source_shape

IMAGE_FLAGS = ("image", "first_frame", "last_frame")
VACE_FLAGS = ("src_video", "src_mask", "src_ref_images")


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


def unused_image_flags(task: str, args) -> list[str]:
    """Image flags given for a task that takes no image (upstream's generate.py ignores them)."""
    if is_image_to_video(task):
        return []
    return [f"--{flag}" for flag in IMAGE_FLAGS if getattr(args, flag) is not None]


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


# --- VACE -------------------------------------------------------------------------------------------

@dataclass
class VaceInputs:
    """What WanVACEPipeline is conditioned on, and the size of the video it makes."""
    width: int
    height: int
    num_frames: int
    video: list | None = None  # RGB PIL frames at (width, height); None: the whole video is generated
    mask: list | None = None  # RGB PIL frames, white = generate, black = keep the source; None: all white
    reference_images: list = field(default_factory=list)  # RGB PIL images; the pipeline fits each on a white canvas


def add_vace_flags(parser) -> None:
    """--src_video, --src_mask, --src_ref_images, as upstream's generate.py names them."""
    parser.add_argument("--src_video", type=str, default=None,
                        help="VACE source video; it sets the output's length and size within a budget of --frame_num "
                             "frames at the area of --size (a smaller source gets more frames, as upstream).")
    parser.add_argument("--src_mask", type=str, default=None,
                        help="VACE mask video for --src_video: white = generate, black = keep the source.")
    parser.add_argument("--src_ref_images", type=str, default=None,
                        help="VACE reference images, comma-separated (subjects or scenes to put in the video).")


def reference_image_paths(value: str | None) -> list[str]:
    """--src_ref_images: comma-separated paths, as upstream."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def check_vace_flags(task: str, args) -> None:
    """VACE flags only with a vace task, a mask only with a source video, every named file present."""
    given = [flag for flag in VACE_FLAGS if getattr(args, flag) is not None]
    if not is_vace(task):
        if given:
            raise UserInputError(f"--{given[0]} is for the vace tasks (vace-1.3B, vace-14B), not --task {task}")
        return
    if args.src_mask is not None and args.src_video is None:
        raise UserInputError("--src_mask needs --src_video: the mask marks which parts of the source video to generate")
    if args.src_ref_images is not None and not reference_image_paths(args.src_ref_images):
        raise UserInputError("--src_ref_images names no file (expected comma-separated image paths)")
    for flag, path in [("src_video", args.src_video), ("src_mask", args.src_mask)] + [
            ("src_ref_images", path) for path in reference_image_paths(args.src_ref_images)]:
        if path is not None and not Path(path).is_file():
            raise UserInputError(f"--{flag} {path}: no such file")


def read_vace_inputs(args, size: str, frame_num: int) -> VaceInputs:
    """The VACE conditions the flags name. Without --src_video the video is generated at `size` with
    `frame_num` frames; with it, the source decides both (`tasks.vace_source_shape`), each picked frame scaled
    to cover that size and centre-cropped (bicubic), the mask's frames alike."""
    from PIL import Image, UnidentifiedImageError

    references = []
    for path in reference_image_paths(args.src_ref_images):
        try:
            references.append(Image.open(path).convert("RGB"))
        except (OSError, UnidentifiedImageError) as err:
            raise UserInputError(f"--src_ref_images {path}: not a readable image ({err})") from None
    if args.src_video is None:
        width, height = parse_size(size)
        return VaceInputs(width=width, height=height, num_frames=frame_num, reference_images=references)

    lengths = [_count_frames("src_video", args.src_video)]
    if args.src_mask is not None:
        lengths.append(_count_frames("src_mask", args.src_mask))
        if lengths[1] != lengths[0]:
            from loguru import logger

            logger.warning(f"--src_mask has {lengths[1]} frames, --src_video {lengths[0]}: the shorter sets the "
                           "length (as upstream)")
    first = _read_frames("src_video", args.src_video, {0})[0]
    try:
        num_frames, width, height = vace_source_shape(min(lengths), first.width, first.height, size, frame_num)
    except ValueError as err:
        raise UserInputError(f"--src_video {args.src_video}: {err}") from None
    picked = _evenly_spaced(min(lengths), num_frames)
    video = [_cover(frame, width, height) for frame in _read_frames("src_video", args.src_video, set(picked), picked)]
    mask = None
    if args.src_mask is not None:
        frames = _read_frames("src_mask", args.src_mask, set(picked), picked)
        if frames[0].size != first.size:
            raise UserInputError(f"--src_mask {args.src_mask}: its frames are {frames[0].width}x{frames[0].height}, "
                                 f"the source video's {first.width}x{first.height}")
        mask = [_cover(frame, width, height) for frame in frames]
    return VaceInputs(width=width, height=height, num_frames=num_frames, video=video, mask=mask,
                      reference_images=references)


def _evenly_spaced(available: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `available` frames, first and last included (upstream spreads
    its timestamps over the whole clip)."""
    if count == 1:
        return [0]
    return [min(available - 1, math.floor(i * (available - 1) / (count - 1) + 0.5)) for i in range(count)]


def _count_frames(flag: str, path: str) -> int:
    count = sum(1 for _ in _iter_frames(flag, path))
    if count == 0:
        raise UserInputError(f"--{flag} {path}: the video has no frames")
    return count


def _read_frames(flag: str, path: str, wanted: set[int], order: list[int] | None = None) -> list:
    """The frames at indices `wanted` as RGB PIL images, in `order` (repeats allowed) or ascending; one pass,
    keeping only what is wanted (a long source video never sits in memory whole)."""
    from PIL import Image

    kept = {}
    for index, frame in enumerate(_iter_frames(flag, path)):
        if index in wanted:
            kept[index] = Image.fromarray(frame).convert("RGB")
        if len(kept) == len(wanted):
            break
    return [kept[i] for i in (order if order is not None else sorted(kept))]


def _iter_frames(flag: str, path: str):
    """uint8 (H, W, C) frames of a video file (imageio: mp4 through ffmpeg, gif, ...)."""
    import imageio.v3 as iio

    try:
        yield from iio.imiter(path)
    except (OSError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"--{flag} {path}: not a readable video ({reason})") from None


def _cover(image, width: int, height: int):
    """Scaled (bicubic) to cover width x height, then centre-cropped to it."""
    from PIL import Image, ImageOps

    return image if image.size == (width, height) else ImageOps.fit(image, (width, height), method=Image.BICUBIC)

"""Writing videos and images exactly once, atomically (no half-written files on failure), reading them back,
and the two pixel conversions around a model: float frames to uint8 and uint8 frames to VAE input."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the front ends' flag checks read the suffixes below without them
    import numpy as np
    import torch


def to_uint8_frames(frames) -> np.ndarray:
    """(F, H, W, C) float in [0, 1] (diffusers' `output_type="np"`) -> uint8 (F, H, W, C)."""
    import numpy as np

    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return frames


def to_uint8_as_upstream(frames) -> np.ndarray:
    """(F, H, W, C) float in [0, 1] -> uint8 as both upstream scripts write their videos: scaled by 255 and
    truncated (torch's and numpy's float-to-uint8 conversion), not rounded. (Wan's t2i images round, as
    torchvision's save_image: `to_uint8_frames`.)"""
    import numpy as np

    frames = np.asarray(frames)
    return frames if frames.dtype == np.uint8 else (np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_vae_input(videos) -> torch.Tensor:
    """uint8 videos, each (F, H, W, 3) -> (B, 3, F, H, W) float32 in [-1, 1], as the VAEs take them."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")  # containers that hold H.264 (webm and gif do not)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tiff", ".gif", ".webp")  # upstream t2i's (cache_image)


@contextmanager
def _atomic_output(path: Path, suffix: str):
    """Yield a temp file beside `path`; on success it becomes `path` (ordinary permissions), else it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=path.parent, prefix=".tmp_")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_video(frames, path: str | os.PathLike, fps: int, quality: int = 8) -> Path:
    """Encode frames to an H.264 mp4 (yuv420p, as the upstream scripts do) via imageio-ffmpeg, at imageio's
    `quality` (0-10: Wan2.1's cache_video gives 8; HunyuanVideo's imageio.mimsave leaves imageio's 5)."""
    import imageio.v2 as imageio

    path = Path(path)
    frames = to_uint8_frames(frames)
    with _atomic_output(path, path.suffix or ".mp4") as tmp:
        writer = imageio.get_writer(
            tmp, fps=fps, codec="libx264", quality=quality, pixelformat="yuv420p", macro_block_size=1,
            ffmpeg_log_level="error",
        )
        try:
            for frame in frames:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def save_image(frame, path: str | os.PathLike) -> Path:
    """Save one frame (Wan's t2i task) in the format its suffix names (PNG without one)."""
    import imageio.v2 as imageio

    path = Path(path)
    with _atomic_output(path, path.suffix or ".png") as tmp:
        imageio.imwrite(tmp, to_uint8_frames(frame[None])[0])
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Decode an mp4 into uint8 (F, H, W, C) frames."""
    import imageio.v2 as imageio
    import numpy as np

    reader = imageio.get_reader(str(path), format="ffmpeg")
    try:  # iterate: the ffmpeg reader reports an unknown (infinite) length, so list() would fail
        return np.stack([frame for frame in reader])
    finally:
        reader.close()

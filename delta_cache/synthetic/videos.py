"""Deterministic synthetic videos of moving shapes, with their prompt and exact foreground masks.

`make_video(index, split)` is a pure function of (split, index): the same call gives the same frames on
any machine. Objects are flat-coloured, hard-edged shapes moving in a straight line at constant speed,
always fully inside the frame, and (with two objects) never touching each other, so every per-object mask
is exactly the set of pixels showing that object.

Default size: 17 frames of 128x128, i.e. 5 x 16 x 16 Wan latents and 5 x 8 x 8 = 320 transformer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prompts import BACKGROUND_COLOURS, OBJECT_COLOURS, SceneSpec, sample_scene_in_split

DEFAULT_NUM_FRAMES = 17
DEFAULT_HEIGHT = 128
DEFAULT_WIDTH = 128

# Speed in pixels per frame, as a fraction of the frame extent along the motion (size-independent).
SPEED_FRACTION_PER_FRAME = {"slow": 0.010, "fast": 0.025}
# Object size (side of its bounding square) as a fraction of the shorter frame side.
SIZE_FRACTION_RANGE = (0.19, 0.28)
MARGIN_FRACTION = 0.03  # objects keep this far from the frame border (the analyser reads the border)
GAP_PIXELS = 3  # minimum gap between two objects' bounding boxes in every frame
_MAX_PLACEMENT_TRIES = 500
_SPLIT_STREAMS = {"train": 0, "eval": 1}
_VELOCITY = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}  # (dx, dy), y grows downwards


@dataclass
class SyntheticVideo:
    frames: np.ndarray  # (F, H, W, 3) uint8
    object_masks: np.ndarray  # (N, F, H, W) bool, one per object in prompt order
    scene: SceneSpec
    index: int | None = None
    split: str | None = None

    @property
    def prompt(self) -> str:
        return self.scene.prompt

    @property
    def mask(self) -> np.ndarray:
        """(F, H, W) bool foreground: the union of the object masks."""
        return self.object_masks.any(axis=0)


def make_video(index: int, split: str = "train", *, num_frames: int = DEFAULT_NUM_FRAMES,
               height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH,
               num_objects: int | None = None) -> SyntheticVideo:
    """Video number `index` of `split` (see prompts.py for the held-out rule); deterministic."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"split must be one of {tuple(_SPLIT_STREAMS)}, got {split!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([_SPLIT_STREAMS[split], index])
    scene = sample_scene_in_split(rng, split, num_objects)
    video = render_scene(scene, rng, num_frames=num_frames, height=height, width=width)
    video.index, video.split = index, split
    return video


def render_scene(scene: SceneSpec, rng: np.random.Generator, *, num_frames: int = DEFAULT_NUM_FRAMES,
                 height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH) -> SyntheticVideo:
    """Draw `scene` with object sizes and start positions from `rng`."""
    if num_frames < 1 or min(height, width) < 32:
        raise ValueError(f"need num_frames >= 1 and a frame of at least 32x32, got {num_frames}x{height}x{width}")
    boxes = _place_objects(scene, rng, num_frames, height, width)  # (N, F, 3): x0, y0, side
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    frames[:] = BACKGROUND_COLOURS[scene.background]
    masks = np.zeros((len(scene.objects), num_frames, height, width), dtype=bool)
    for i, obj in enumerate(scene.objects):
        for f in range(num_frames):
            x0, y0, side = boxes[i, f]
            masks[i, f] = _shape_mask(obj.shape, xs - x0, ys - y0, side)
            frames[f][masks[i, f]] = OBJECT_COLOURS[obj.colour]
    return SyntheticVideo(frames=frames, object_masks=masks, scene=scene)


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, side: float) -> np.ndarray:
    """Pixels whose centre lies in `shape` drawn in the square [0, side]^2 (x, y relative to its corner)."""
    inside = (x >= 0) & (x <= side) & (y >= 0) & (y <= side)
    if shape == "square":
        return inside
    if shape == "circle":
        r = side / 2
        return (x - r) ** 2 + (y - r) ** 2 <= r * r
    if shape == "triangle":  # apex up, base along the bottom edge
        return inside & (np.abs(x - side / 2) <= y / 2)
    raise ValueError(f"unknown shape {shape!r}")


def _place_objects(scene: SceneSpec, rng: np.random.Generator, num_frames: int, height: int,
                   width: int) -> np.ndarray:
    """(N, F, 3) per-frame (x0, y0, side) of each object; paths stay inside and apart (by rejection)."""
    margin = MARGIN_FRACTION * min(height, width)
    steps = np.arange(num_frames)
    for _ in range(_MAX_PLACEMENT_TRIES):
        boxes = []
        for obj in scene.objects:
            side = rng.uniform(*SIZE_FRACTION_RANGE) * min(height, width)
            dx, dy = _VELOCITY[obj.direction]
            speed = SPEED_FRACTION_PER_FRAME[obj.speed] * (width if dx else height)
            travel = speed * (num_frames - 1)
            x0 = _start(rng, width, side, margin, travel * dx)
            y0 = _start(rng, height, side, margin, travel * dy)
            xs, ys = x0 + dx * speed * steps, y0 + dy * speed * steps
            boxes.append(np.stack([xs, ys, np.full(num_frames, side)], axis=1))
        boxes = np.stack(boxes)
        if len(boxes) == 1 or not _boxes_meet(boxes[0], boxes[1]):
            return boxes
    raise RuntimeError(f"could not place {scene.prompt!r} in {width}x{height} within {_MAX_PLACEMENT_TRIES} tries")


def _start(rng: np.random.Generator, extent: int, side: float, margin: float, travel: float) -> float:
    """A start coordinate such that the whole path [start, start + travel] keeps the object inside."""
    low = margin - min(travel, 0.0)
    high = extent - margin - side - max(travel, 0.0)
    if high < low:
        raise ValueError(f"frame extent {extent} too small for an object of {side:.0f} px travelling {travel:.0f} px")
    return float(rng.uniform(low, high))


def _boxes_meet(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two (F, 3) box tracks come within GAP_PIXELS of each other in any frame."""
    apart_x = (a[:, 0] + a[:, 2] + GAP_PIXELS <= b[:, 0]) | (b[:, 0] + b[:, 2] + GAP_PIXELS <= a[:, 0])
    apart_y = (a[:, 1] + a[:, 2] + GAP_PIXELS <= b[:, 1]) | (b[:, 1] + b[:, 2] + GAP_PIXELS <= a[:, 1])
    return bool(np.any(~(apart_x | apart_y)))

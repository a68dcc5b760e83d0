"""Does a video show what its prompt says? A simple analyser for the synthetic moving-shapes grammar.

Steps (frames are uint8 (F, H, W, 3); nothing is learned):
1. background: the per-channel median of the frame border (objects never touch it), named by the
   nearest background palette colour;
2. foreground: pixels closer to an object palette colour than to the measured background colour (and at
   least MIN_FOREGROUND_DISTANCE from it);
3. objects: per frame, every 4-connected foreground region of at least MIN_FRAME_AREA_FRACTION of the frame
   is named by the majority of its pixels' nearest object palette colours (edge pixels blended with the
   background can look like another colour; they stay part of their region); per frame and colour the
   largest such region is that object, and a colour present in at least MIN_FRAMES_SHARE of the frames
   is an object of the video;
4. shape: median over frames of the fill ratio area / bounding-box area (square ~1, circle ~0.785,
   triangle ~0.5);
5. motion: a least-squares line through the centroid track gives the velocity; its dominant axis and sign
   give the direction and its size (relative to the frame) the speed class; too little motion is "static".

Two-object rule: objects are told apart by colour (a scene never has two objects of the same colour). A
video agrees with its prompt when the background matches, exactly the prompted number of objects is found,
and every prompted object is found in its colour with its shape, direction and speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .prompts import BACKGROUND_COLOURS, OBJECT_COLOURS, SceneSpec
from .videos import SPEED_FRACTION_PER_FRAME

MIN_FOREGROUND_DISTANCE = 30.0  # RGB distance from the background below which a pixel is background
MIN_FRAME_AREA_FRACTION = 0.004  # of the frame: smaller regions are noise (the smallest object has ~0.018)
MIN_FRAMES_SHARE = 0.5  # a colour is an object when it has a region in at least this share of the frames
SQUARE_MIN_FILL, CIRCLE_MIN_FILL = 0.86, 0.66  # between triangle (~0.5), circle (~0.785), square (1)
# Speed threshold between slow and fast (geometric mean) and below which an object counts as static.
FAST_MIN_FRACTION = float(np.sqrt(SPEED_FRACTION_PER_FRAME["slow"] * SPEED_FRACTION_PER_FRAME["fast"]))
STATIC_MAX_FRACTION = 0.4 * SPEED_FRACTION_PER_FRAME["slow"]
ATTRIBUTES = ("background", "count", "colour", "shape", "direction", "speed")


@dataclass
class ObjectEstimate:
    colour: str
    shape: str
    direction: str  # "left", "right", "up", "down", or "static" (also with a single frame)
    speed: str  # "slow", "fast", or "static"
    fill_ratio: float
    velocity: tuple[float, float]  # (dx, dy) pixels per frame, y downwards
    pixels: int  # pixels of its regions over all frames


@dataclass
class VideoAnalysis:
    background: str
    background_rgb: np.ndarray  # (3,) measured
    foreground: np.ndarray  # (F, H, W) bool
    objects: list[ObjectEstimate]  # largest first


@dataclass
class PromptCheck:
    analysis: VideoAnalysis
    matches: dict[str, bool]  # ATTRIBUTES -> whether the video shows what the prompt says
    object_matches: list[dict[str, bool]] = field(default_factory=list)  # per prompted object

    @property
    def agrees(self) -> bool:
        return all(self.matches.values())


def check_video(frames: np.ndarray, scene: SceneSpec) -> PromptCheck:
    """Compare `frames` with the prompted `scene` attribute by attribute."""
    analysis = analyse_video(frames)
    found = {o.colour: o for o in analysis.objects}
    object_matches = []
    for wanted in scene.objects:
        got = found.get(wanted.colour)
        object_matches.append({
            "colour": got is not None,
            "shape": got is not None and got.shape == wanted.shape,
            "direction": got is not None and got.direction == wanted.direction,
            "speed": got is not None and got.speed == wanted.speed,
        })
    matches = {
        "background": analysis.background == scene.background,
        "count": len(analysis.objects) == len(scene.objects),
        **{a: all(m[a] for m in object_matches) for a in ("colour", "shape", "direction", "speed")},
    }
    return PromptCheck(analysis=analysis, matches=matches, object_matches=object_matches)


def analyse_video(frames: np.ndarray) -> VideoAnalysis:
    """Estimate background, objects and their shape and motion from uint8 frames (F, H, W, 3)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (F, H, W, 3), got {frames.dtype} {frames.shape}")
    num_frames, height, width = frames.shape[:3]
    pixels = frames.astype(np.float32)
    background_rgb = _border_colour(pixels)
    background = _nearest(background_rgb, BACKGROUND_COLOURS)
    names = [name for name in OBJECT_COLOURS if name != background]
    palette = np.array([OBJECT_COLOURS[n] for n in names], np.float32)
    to_palette = np.linalg.norm(pixels[..., None, :] - palette, axis=-1)
    nearest = to_palette.argmin(axis=-1)
    to_background = np.linalg.norm(pixels - background_rgb, axis=-1)
    # Closer to an object colour than to the background: the mid-contrast threshold keeps a blurred shape's
    # area (so its fill ratio), whatever the contrast of the pair.
    foreground = (to_palette.min(axis=-1) < to_background) & (to_background > MIN_FOREGROUND_DISTANCE)

    # Per frame, each large enough foreground region is one object, named by its majority colour (edge
    # pixels blended with the background may look like another colour: they stay part of the region).
    min_area = MIN_FRAME_AREA_FRACTION * height * width
    regions: dict[str, list[np.ndarray | None]] = {n: [None] * num_frames for n in names}
    for f in range(num_frames):
        labels = _components(foreground[f])
        ids, areas = np.unique(labels[labels > 0], return_counts=True)
        for region_id in ids[np.argsort(-areas)]:  # largest first: it wins its colour in this frame
            region = labels == region_id
            if region.sum() < min_area:
                break
            colour = names[np.bincount(nearest[f][region], minlength=len(names)).argmax()]
            if regions[colour][f] is None:
                regions[colour][f] = region
    objects = []
    for colour, per_frame in regions.items():
        if sum(r is not None for r in per_frame) >= MIN_FRAMES_SHARE * num_frames:
            objects.append(_estimate_object(colour, per_frame, height, width))
    objects.sort(key=lambda o: -o.pixels)
    return VideoAnalysis(background=background, background_rgb=background_rgb, foreground=foreground, objects=objects)


def _estimate_object(colour: str, regions: list[np.ndarray | None], height: int, width: int) -> ObjectEstimate:
    centroids, times, fills = [], [], []
    for f, region in enumerate(regions):
        if region is None:
            continue
        ys, xs = np.nonzero(region)
        box_area = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fills.append(len(xs) / box_area)
        centroids.append((xs.mean(), ys.mean()))
        times.append(f)
    fill = float(np.median(fills))
    shape = "square" if fill >= SQUARE_MIN_FILL else "circle" if fill >= CIRCLE_MIN_FILL else "triangle"
    velocity = (0.0, 0.0)
    if len(times) >= 2:
        slope = np.polyfit(np.asarray(times, np.float64), np.asarray(centroids, np.float64), 1)[0]
        velocity = (float(slope[0]), float(slope[1]))
    direction, speed = _motion_class(velocity, height, width)
    pixels = int(sum(r.sum() for r in regions if r is not None))
    return ObjectEstimate(colour=colour, shape=shape, direction=direction, speed=speed, fill_ratio=fill,
                          velocity=velocity, pixels=pixels)


def _motion_class(velocity: tuple[float, float], height: int, width: int) -> tuple[str, str]:
    dx, dy = velocity
    horizontal = abs(dx) / width >= abs(dy) / height
    fraction = abs(dx) / width if horizontal else abs(dy) / height
    if fraction < STATIC_MAX_FRACTION:
        return "static", "static"
    direction = ("right" if dx > 0 else "left") if horizontal else ("down" if dy > 0 else "up")
    return direction, "fast" if fraction >= FAST_MIN_FRACTION else "slow"


def _border_colour(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[1:3]
    b = max(1, round(0.02 * min(height, width)))
    border = np.concatenate([
        pixels[:, :b].reshape(-1, 3), pixels[:, -b:].reshape(-1, 3),
        pixels[:, :, :b].reshape(-1, 3), pixels[:, :, -b:].reshape(-1, 3),
    ])
    return np.median(border, axis=0)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.linalg.norm(rgb - np.array(palette[name], np.float32))))


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected regions of a 2-D bool mask: int labels, 0 outside (label propagation; regions are small)."""
    labels = np.zeros(mask.shape, dtype=np.int64)
    if not mask.any():
        return labels
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    inside = mask[window]
    current = np.where(inside, np.arange(inside.size).reshape(inside.shape) + 1, 0)
    while True:  # every region converges to its largest pixel index
        grown = current.copy()
        grown[1:] = np.maximum(grown[1:], current[:-1])
        grown[:-1] = np.maximum(grown[:-1], current[1:])
        grown[:, 1:] = np.maximum(grown[:, 1:], current[:, :-1])
        grown[:, :-1] = np.maximum(grown[:, :-1], current[:, 1:])
        grown = np.where(inside, grown, 0)
        if np.array_equal(grown, current):
            break
        current = grown
    labels[window] = current
    return labels

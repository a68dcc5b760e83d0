"""The prompt grammar of the synthetic videos: scenes of one or two moving shapes, and their text.

A scene is one or two objects (colour, shape, direction, speed) on a background colour. Its prompt reads

    "a red circle moves left slowly and a blue square moves up quickly on a black background"

Two objects in one scene always have different colours (so a prompt never names the same-looking thing
twice and the analyser can tell them apart by colour), and no object has the background's colour.

Held-out rule: a scene is *held out* when a stable hash of its attribute combination (objects in any
order) falls in bucket 0 of `HELD_OUT_BUCKETS`. Training draws only scenes that are not held out and
evaluation only held-out ones, so an evaluation prompt has never been seen in training, while every single
attribute value has (about 10% of combinations are reserved).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

# Palettes are chosen far apart in RGB (see tests) so nearest-colour classification is unambiguous.
OBJECT_COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 50),
    "blue": (40, 80, 245),
    "yellow": (245, 225, 30),
    "white": (245, 245, 245),
    "purple": (160, 40, 210),
}
BACKGROUND_COLOURS = {
    "black": (10, 10, 10),
    "gray": (120, 120, 120),
    "white": (245, 245, 245),
    "brown": (110, 65, 20),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
SPEEDS = ("slow", "fast")
SPEED_WORDS = {"slow": "slowly", "fast": "quickly"}

HELD_OUT_BUCKETS = 10
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    direction: str
    speed: str

    def describe(self) -> str:
        return f"a {self.colour} {self.shape} moves {self.direction} {SPEED_WORDS[self.speed]}"


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    background: str

    @property
    def prompt(self) -> str:
        return " and ".join(o.describe() for o in self.objects) + f" on a {self.background} background"

    def combination_key(self) -> str:
        """The attribute combination, independent of the order in which the objects are named."""
        objects = sorted(f"{o.colour} {o.shape} {o.direction} {o.speed}" for o in self.objects)
        return " | ".join(objects) + f" / {self.background}"

    @property
    def held_out(self) -> bool:
        digest = hashlib.sha256(self.combination_key().encode()).digest()
        return int.from_bytes(digest[:8], "little") % HELD_OUT_BUCKETS == 0

    @property
    def split(self) -> str:
        return "eval" if self.held_out else "train"


def vocabulary() -> list[str]:
    """Every word a prompt can contain (the tiny tokenizer gives each its own token)."""
    words = {"a", "moves", "and", "on", "background"}
    words |= set(OBJECT_COLOURS) | set(BACKGROUND_COLOURS) | set(SHAPES) | set(DIRECTIONS)
    words |= set(SPEED_WORDS.values())
    return sorted(words)


def sample_scene(rng: np.random.Generator, num_objects: int | None = None) -> SceneSpec:
    """A random scene: 1 or 2 objects (equally likely unless `num_objects` is given)."""
    num_objects = int(rng.integers(1, 3)) if num_objects is None else num_objects
    if num_objects not in (1, 2):
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects}")
    background = str(rng.choice(list(BACKGROUND_COLOURS)))
    colours = [c for c in OBJECT_COLOURS if c != background]
    chosen = rng.choice(colours, size=num_objects, replace=False)
    objects = tuple(
        ObjectSpec(colour=str(c), shape=str(rng.choice(SHAPES)), direction=str(rng.choice(DIRECTIONS)),
                   speed=str(rng.choice(SPEEDS)))
        for c in chosen
    )
    return SceneSpec(objects=objects, background=background)


def sample_scene_in_split(rng: np.random.Generator, split: str, num_objects: int | None = None) -> SceneSpec:
    """A random scene of `split` ("train": not held out, "eval": held out), by rejection."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    while True:
        scene = sample_scene(rng, num_objects)
        if scene.split == split:
            return scene

"""The training batches of `scripts/train_tiny.py`, each a pure function of (seed, stage, step).

A resumed run therefore sees exactly the batches and noise that an uninterrupted one would. `args` is the
script's flags (the sizes, --seed, batch sizes, --vae_crop, --vae_frames, --vae_object_crops, --cfg_dropout).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ..synthetic.videos import make_video
from ..video import to_vae_input
from .flow_matching import object_weights

# Each stage draws from its own stream; "init" seeds the fresh modules.
STAGE_SEEDS = {"vae": 1, "dit": 2, "init": 3, "decoder": 4}
# The unconditional prompt of CFG dropout besides the sampler's negative prompt.
EMPTY_PROMPT = ""


def step_rng(args, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([args.seed, STAGE_SEEDS[stage], step])


def init_seed(args) -> int:
    """The torch seed of the fresh modules of `args.seed`."""
    return args.seed * 1000 + STAGE_SEEDS["init"]


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


class VaeBatch(NamedTuple):
    videos: torch.Tensor  # (B, 3, F, H, W) in [-1, 1]
    masks: torch.Tensor  # (B, F, H, W) bool: the objects' pixels in the same crops
    generator: torch.Generator  # the posterior samples' noise

    def pixel_weights(self, args, device: torch.device | None = None) -> torch.Tensor | None:
        """The reconstruction loss's weights for --vae_object_weight (None: a plain mean)."""
        if args.vae_object_weight == 0:
            return None
        return object_weights(self.masks, args.vae_object_weight).to(device)


def vae_batch(args, step: int, stage: str = "vae") -> VaeBatch:
    """Random crops of random training videos (any index: the VAE never sees the transformer's split)."""
    rng = step_rng(args, stage, step)
    crop = args.vae_crop or min(args.height, args.width)
    clips, masks = [], []
    for index in rng.integers(0, 10**9, size=args.vae_batch_size):
        video = make_video(int(index), "train", num_frames=args.num_frames, height=args.height, width=args.width)
        t0 = int(rng.integers(0, args.num_frames - args.vae_frames + 1))
        y0 = int(rng.integers(0, args.height - crop + 1))
        x0 = int(rng.integers(0, args.width - crop + 1))
        if args.vae_object_crops > 0 and rng.random() < args.vae_object_crops:
            # Centred on the object in a random frame of the clip: objects move out of a small crop, and a
            # crop centred in the first frame would teach the later frames (and latent frames) background.
            y0, x0 = object_crop(video.mask[t0 + int(rng.integers(0, args.vae_frames))], crop, rng)
        clips.append(video.frames[t0:t0 + args.vae_frames, y0:y0 + crop, x0:x0 + crop])
        masks.append(video.mask[t0:t0 + args.vae_frames, y0:y0 + crop, x0:x0 + crop])
    return VaeBatch(to_vae_input(clips), torch.from_numpy(np.stack(masks)), torch_generator(rng))


def object_crop(mask: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of a crop centred on a random foreground pixel of `mask` (H, W)."""
    ys, xs = np.nonzero(mask)
    pick = int(rng.integers(0, len(ys)))
    height, width = mask.shape
    return (int(np.clip(ys[pick] - crop // 2, 0, height - crop)), int(np.clip(xs[pick] - crop // 2, 0, width - crop)))


def vae_probe_batch(args) -> torch.Tensor:
    """A fixed batch for the VAE's progress: centre crops of the first evaluation videos."""
    crop = args.vae_crop or min(args.height, args.width)
    y0, x0 = (args.height - crop) // 2, (args.width - crop) // 2
    return to_vae_input([
        make_video(i, "eval", num_frames=args.num_frames, height=args.height, width=args.width)
        .frames[:args.vae_frames, y0:y0 + crop, x0:x0 + crop]
        for i in range(4)
    ])


def dit_batch(args, step: int, prompts: list[str],
              negative_prompt: str) -> tuple[np.ndarray, list[str], torch.Generator]:
    """Dataset indices, prompts after CFG dropout (half empty, half the sampler's negative prompt), noise rng."""
    rng = step_rng(args, "dit", step)
    indices = rng.integers(0, len(prompts), size=args.batch_size)
    dropped = rng.random(args.batch_size) < args.cfg_dropout
    use_negative = rng.random(args.batch_size) < 0.5
    batch_prompts = [
        (negative_prompt if neg else EMPTY_PROMPT) if drop else prompts[i]
        for i, drop, neg in zip(indices, dropped, use_negative)
    ]
    return indices, batch_prompts, torch_generator(rng)

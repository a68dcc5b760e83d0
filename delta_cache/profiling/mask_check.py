"""How good is a weight-free mask source where the answer is known (`scripts/check_masks.py`): rendered
synthetic videos, encoded by a checkpoint's own VAE, against their rendered masks on the token grid; or
the model's own uncached generations against what they show (the synthetic-data analyser's foreground).

The rendered videos test the mask method apart from the transformer: a model that does not draw its
prompts gives low IoUs on its generations whatever the method. `MOTION_CLUSTERS` was chosen with them on
the training split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..errors import UserInputError
from . import masks
from .evidence_results import mask_iou


@dataclass
class EncodedVideo:
    prompt: str
    latents: np.ndarray  # (C, F, H, W): the VAE's code of the rendered frames, or a generation's final latents
    truth: np.ndarray  # (frames, h, w) bool: the rendered (or generated) foreground on the token grid


def encode_rendered(model, split: str, count: int) -> list[EncodedVideo]:
    """`make_video(i, split)` for i < count at the model's size, encoded by its VAE (`ModelRunner.encode`)."""
    from ..synthetic import make_video

    if count < 1:
        raise UserInputError("--num_videos must be >= 1")
    videos = []
    for index in tqdm(range(count), desc=f"encoding rendered {split} videos", dynamic_ncols=True):
        video = make_video(index, split, num_frames=model.num_frames, height=model.height, width=model.width)
        latents = model.encode(video.frames)[0].float().cpu().numpy()
        videos.append(EncodedVideo(prompt=video.prompt, latents=latents,
                                   truth=masks.pixel_mask_to_tokens(video.mask, model.token_grid)))
    return videos


def generate_videos(model, split: str, count: int) -> list[EncodedVideo]:
    """The model's uncached generation of `make_video(i, split).prompt` with seed i, for i < count: its final
    latents, and as truth the foreground of its decoded frames (`evidence.generated_foreground`, as the
    evidence table's true masks)."""
    from ..synthetic import make_video
    from .evidence import generated_foreground

    if count < 1:
        raise UserInputError("--num_videos must be >= 1")
    videos = []
    for index in tqdm(range(count), desc=f"generating {split} prompts", dynamic_ncols=True):
        video = make_video(index, split, num_frames=model.num_frames, height=model.height, width=model.width)
        latents, _ = model.generate(video.prompt, index)
        truth = masks.pixel_mask_to_tokens(generated_foreground(model.decode(latents)), model.token_grid)
        videos.append(EncodedVideo(prompt=video.prompt, latents=latents[0].float().cpu().numpy(), truth=truth))
    return videos


def mask_sources(clusters: Sequence[int]) -> dict:
    """label -> function(latents, patch) -> token mask: the default motion mask, the motion mask with k fixed
    for each k in `clusters` (no growing k), and PCA."""
    if not clusters or min(clusters) < 2:  # one cluster has no other to tell motion from
        raise UserInputError("--clusters: give one or more cluster counts >= 2")
    sources = {"motion (default)": masks.motion_mask}  # k = MOTION_CLUSTERS, growing while the moving side is a majority
    for k in clusters:
        sources[f"motion, k = {k}"] = (
            lambda latents, patch, k=k: masks.motion_mask(latents, patch, clusters=k, max_clusters=k))
    sources["pca"] = masks.pca_mask
    return sources


def score_sources(videos: Sequence[EncodedVideo], sources: dict, patch: tuple[int, int]) -> dict[str, list[float]]:
    """label -> IoU per video; videos whose rendered mask covers no token are left out (nothing to find)."""
    scored = [v for v in videos if v.truth.any()]
    return {label: [mask_iou(find(v.latents, patch), v.truth) for v in scored] for label, find in sources.items()}


def markdown_table(scores: dict[str, list[float]]) -> str:
    rows = ["| mask source | mean IoU ± std | min | videos |", "|---|---:|---:|---:|"]
    for label, values in scores.items():
        if values:
            rows.append(f"| {label} | {np.mean(values):.3f} ± {np.std(values):.3f} | {np.min(values):.3f} | "
                        f"{len(values)} |")
        else:
            rows.append(f"| {label} | n/a | n/a | 0 |")
    return "\n".join(rows)

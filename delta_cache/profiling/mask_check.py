"""How good is a weight-free mask source where the answer is known (`scripts/check_masks.py`): rendered
synthetic videos, encoded by a checkpoint's own VAE, against their rendered masks on the token grid; or
the model's own uncached generations against what they show (the synthetic-data analyser's foreground).

The rendered videos test the mask method apart from the transformer: a model that does not draw its
prompts gives low IoUs on its generations whatever the method. `MOTION_CLUSTERS` and
`VIDEO_CELLS_PER_TOKEN` were chosen with them on the training split.
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
    frames: np.ndarray  # (F, H, W, 3) floats in [0, 1]: those latents decoded
    truth: np.ndarray  # (frames, h, w) bool: the rendered (or generated) foreground on the token grid


def encode_rendered(model, split: str, count: int) -> list[EncodedVideo]:
    """`make_video(i, split)` for i < count at the model's size, encoded by its VAE (`ModelRunner.encode`)."""
    from ..synthetic import make_video

    if count < 1:
        raise UserInputError("--num_videos must be >= 1")
    videos = []
    for index in tqdm(range(count), desc=f"encoding rendered {split} videos", dynamic_ncols=True):
        video = make_video(index, split, num_frames=model.num_frames, height=model.height, width=model.width)
        latents = model.encode(video.frames)
        videos.append(EncodedVideo(prompt=video.prompt, latents=latents[0].float().cpu().numpy(),
                                   frames=model.decode(latents),
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
        frames = model.decode(latents)
        truth = masks.pixel_mask_to_tokens(generated_foreground(frames), model.token_grid)
        videos.append(EncodedVideo(prompt=video.prompt, latents=latents[0].float().cpu().numpy(), frames=frames,
                                   truth=truth))
    return videos


def mask_sources(clusters: Sequence[int], cells: Sequence[int] = ()) -> dict:
    """label -> function(video: EncodedVideo, patch) -> token mask: the profiler's default (the video motion
    mask), the video motion mask with each of `cells` cells per token side, the latent motion mask (the
    "motion" source) and with k fixed for each k in `clusters` (no growing k), and PCA."""
    if not clusters or min(clusters) < 2:  # one cluster has no other to tell motion from
        raise UserInputError("--clusters: give one or more cluster counts >= 2")
    if any(c < 1 for c in cells):
        raise UserInputError("--cells: give cell counts >= 1")
    sources = {"video motion (default)": lambda v, patch: masks.video_motion_mask(v.frames, v.truth.shape)}
    for c in cells:
        sources[f"video motion, {c} cells per token side"] = (
            lambda v, patch, c=c: masks.video_motion_mask(v.frames, v.truth.shape, cells_per_token=c))
    # the latent motion mask: k = MOTION_CLUSTERS, growing while the moving side is a majority
    sources["latent motion"] = lambda v, patch: masks.motion_mask(v.latents, patch)
    for k in clusters:
        sources[f"latent motion, k = {k}"] = (
            lambda v, patch, k=k: masks.motion_mask(v.latents, patch, clusters=k, max_clusters=k))
    sources["pca"] = lambda v, patch: masks.pca_mask(v.latents, patch)
    return sources


def score_sources(videos: Sequence[EncodedVideo], sources: dict, patch: tuple[int, int]) -> dict[str, list[float]]:
    """label -> IoU per video; videos whose rendered mask covers no token are left out (nothing to find)."""
    scored = [v for v in videos if v.truth.any()]
    return {label: [mask_iou(find(v, patch), v.truth) for v in scored] for label, find in sources.items()}


def markdown_table(scores: dict[str, list[float]]) -> str:
    rows = ["| mask source | mean IoU ± std | min | videos |", "|---|---:|---:|---:|"]
    for label, values in scores.items():
        if values:
            rows.append(f"| {label} | {np.mean(values):.3f} ± {np.std(values):.3f} | {np.min(values):.3f} | "
                        f"{len(values)} |")
        else:
            rows.append(f"| {label} | n/a | n/a | 0 |")
    return "\n".join(rows)

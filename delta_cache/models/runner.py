"""A checkpoint sampled the way its front end samples it, for the scripts that run a model many times.

`scripts/profile_model.py`, `scripts/profile_evidence.py` and `scripts/bench_fidelity.py` all need the same
thing: load a checkpoint with the family's loader, then call the denoising loop (timed) and the VAE decode
separately, with the front end's defaults (`Wan2.1/generate.py`, `HunyuanVideo/sample_video.py`).
`load_runner(family, ckpt_dir, ...)` returns that as one `ModelRunner`; what is family-specific lives in
`delta_cache/models/<family>/runner.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import UserInputError

FAMILIES = ("wan", "hunyuan_video")


@dataclass
class ModelRunner:
    """One model family behind four calls: `generate(prompt, seed, start=None) -> (latents, denoise seconds)`,
    `decode(latents) -> float frames (F, H, W, C) in [0, 1]`, `to_uint8(frames)` as the front end writes them,
    and `encode(uint8 frames) -> latents`, e.g. for `generate`'s `start=(latents, sigma)` (partial_denoising.py)."""

    pipe: object
    transformer: torch.nn.Module
    block_lists: list[str]  # attribute names of the transformer's block lists, in forward order
    token_grid: tuple[int, int, int]  # (frames, height, width) of video tokens
    patch: tuple[int, int]  # spatial patch size of the tokens
    width: int
    height: int
    num_frames: int
    num_steps: int
    fps: int
    generate: Callable[..., tuple[torch.Tensor, float]]
    decode: Callable[[torch.Tensor], np.ndarray]
    to_uint8: Callable[[np.ndarray], np.ndarray]
    encode: Callable[[np.ndarray], torch.Tensor]
    model_name: str
    settings: dict = field(default_factory=dict)  # sampler settings, for reports and provenance
    cache_num_steps: int | None = None  # for pipelines that do not pass the step count to the cache
    video_quality: int = 8  # imageio's mp4 quality the front end writes (Wan2.1 8, HunyuanVideo 5)
    leading_tokens: int = 0  # tokens before the video's in the blocks' sequence (VACE: reference images)

    @property
    def description(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.settings.items())

    def sample(self, prompt: str, seed: int, decode_frames: bool = True) -> tuple[np.ndarray | None, float]:
        """(float frames or None, denoising seconds)."""
        latents, seconds = self.generate(prompt, seed)
        return (self.decode(latents) if decode_frames else None), seconds


def pick_device(name: str = "auto") -> torch.device:
    """"auto": cuda when there is a GPU, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserInputError("--device cuda: this machine has no GPU")
    return torch.device(name)


def load_runner(family: str, ckpt_dir, *, width: int, height: int, num_frames: int, num_steps: int = 50,
                device: torch.device | None = None, offload: bool = False, progress: bool = False,
                **options) -> ModelRunner:
    """Load `ckpt_dir` for `family` ("wan" or "hunyuan_video"); `options` are the family's sampler flags
    (see `load_wan_runner` / `load_hunyuan_video_runner`). `offload`: diffusers' model CPU offload on a GPU
    (real-size models), else everything moves to the device. `progress`: the pipeline's per-step bar."""
    if family == "wan":
        from .wan.runner import load_wan_runner as load
    elif family == "hunyuan_video":
        from .hunyuan_video.runner import load_hunyuan_video_runner as load
    else:
        raise UserInputError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return load(ckpt_dir, width=width, height=height, num_frames=num_frames, num_steps=num_steps,
                device=device or pick_device(), offload=offload, progress=progress, **options)


def declared_depths(family: str, ckpt_dir, *, task: str | None = None, dit_weight=None) -> dict[str, int] | None:
    """Block list -> depth of `load_runner`'s checkpoint, from its config before anything loads (None where it does
    not say; the loader then reports why)."""
    if family == "wan":
        from .wan.checkpoint import declared_block_depths, declared_transformer_config

        return declared_block_depths(declared_transformer_config(ckpt_dir), task)
    from .hunyuan_video.checkpoint import declared_block_depths, declared_transformer_config
    from .hunyuan_video.runner import transformer_paths

    weights, _, diffusers_folder = transformer_paths(ckpt_dir, dit_weight)
    return declared_block_depths(declared_transformer_config(weights, diffusers_folder))


def place(pipe, device: torch.device, offload: bool, progress: bool) -> None:
    """Move the pipeline's models to the device, or let diffusers offload them there one at a time."""
    if device.type == "cuda" and offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress, leave=False)

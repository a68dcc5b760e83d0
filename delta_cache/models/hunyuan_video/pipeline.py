"""Sampling HunyuanVideo with diffusers' HunyuanVideoPipeline, reproducing upstream's sampler grid.

Upstream's flow-matching Euler sampler uses sigmas `torch.linspace(1, 0, N+1)` (float32) shifted by
shift*s / (1 + (shift-1)*s), timesteps sigma*1000. diffusers' FlowMatchEulerDiscreteScheduler applies the
same shift to the sigmas it is given, but the pipeline's default grid is numpy's float64 linspace, which
differs from upstream's float32 one in the last bit at a few steps; passing upstream's grid as `sigmas`
reproduces upstream's exactly. The solver itself is diffusers'.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

from ...video import to_vae_input
from ..common import Generation, synchronize
from ..partial_denoising import initial_latents


def flow_sigmas(num_steps: int) -> list[float]:
    """Upstream's unshifted sigma grid (the scheduler shifts it and appends the final 0)."""
    return torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)[:-1].tolist()


def make_scheduler(shift: float) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=shift)


def build_pipeline(components, *, shift: float) -> HunyuanVideoPipeline:
    """A HunyuanVideoPipeline over already loaded components (`HunyuanVideoComponents`), VAE tiling on."""
    pipe = HunyuanVideoPipeline(
        transformer=components.transformer, vae=components.vae, scheduler=make_scheduler(shift),
        text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        text_encoder_2=components.text_encoder_2, tokenizer_2=components.tokenizer_2,
    )
    pipe.vae.enable_tiling()  # upstream always decodes tiled (--vae-tiling is on by default)
    return pipe


# --- text ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextEncoding:
    """How upstream's text flags shape the prompt embeddings (defaults = upstream's defaults)."""

    template: dict = field(default_factory=lambda: DEFAULT_PROMPT_TEMPLATE)  # --prompt-template(-video)
    text_len: int = 256  # --text-len: Llama tokens after the template
    text_len_2: int = 77  # --text-len-2: CLIP tokens
    hidden_state_skip_layer: int = 2  # --hidden-state-skip-layer: 2 -> hidden_states[-3]
    apply_final_norm: bool = False  # --apply-final-norm: Llama's final RMSNorm on that hidden state
    # Context parallelism splits the text tokens over the processes: their count is padded (masked, so the
    # attention is unchanged) to a multiple of this, e.g. upstream's --text-len 256 over 3 or 6 GPUs.
    pad_to_multiple: int = 1


def default_text_encoding(num_frames: int) -> TextEncoding:
    """sample_video.py's default text flags for a video of `num_frames` frames (its prompt template included)."""
    from . import config

    return TextEncoding(template=config.prompt_template(num_frames, config.IMAGE_TEMPLATE, config.VIDEO_TEMPLATE))


@dataclass
class PromptEmbeds:
    embeds: torch.Tensor  # (1, text_len, llama hidden)
    attention_mask: torch.Tensor  # (1, text_len)
    pooled: torch.Tensor  # (1, clip hidden)


def encode_prompt(pipe: HunyuanVideoPipeline, prompt: str, text: TextEncoding, device) -> PromptEmbeds:
    """The same encoding as `pipe.encode_prompt`, with upstream's text flags honoured."""
    embeds, mask = pipe._get_llama_prompt_embeds(
        prompt, text.template, device=device, max_sequence_length=text.text_len,
        num_hidden_layers_to_skip=text.hidden_state_skip_layer,
    )
    if text.apply_final_norm and text.hidden_state_skip_layer > 0:  # the last hidden state is already normed
        embeds = pipe.text_encoder.norm(embeds)
    pooled = pipe._get_clip_prompt_embeds(prompt, device=device, max_sequence_length=text.text_len_2)
    padding = -embeds.shape[1] % text.pad_to_multiple
    if padding:  # after truncation to --text-len, so that the same tokens reach the model
        embeds = torch.nn.functional.pad(embeds, (0, 0, 0, padding))
        mask = torch.nn.functional.pad(mask, (0, padding))
    return PromptEmbeds(embeds=embeds, attention_mask=mask, pooled=pooled)


# --- sampling ------------------------------------------------------------------------------------------

def _autocast(device: torch.device, dtype: torch.dtype | None):
    """Upstream runs the transformer (and a non-fp32 VAE) under autocast unless --disable-autocast."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def denoise(pipe: HunyuanVideoPipeline, *, prompt: str, negative_prompt: str | None, height: int, width: int,
            num_frames: int, num_inference_steps: int, embedded_guidance_scale: float, cfg_scale: float, seed: int,
            text: TextEncoding = TextEncoding(), autocast_dtype: torch.dtype | None = None,
            start: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, float]:
    """Encode the prompts, then run the denoising loop alone (timed). Returns (latents, seconds).

    `embedded_guidance_scale` goes to the guidance embedder (the pipeline multiplies it by 1000); true CFG
    (a second, "uncond" transformer call per step) runs when `cfg_scale` > 1 and `negative_prompt` is given.
    The initial noise comes from a CPU generator (float32), so a seed gives the same video on any device.
    `start` = (clean latents as `encode` gives them, sigma): begin from those latents noised to the grid's
    first level <= sigma instead of pure noise (see partial_denoising.py).
    """
    device = pipe._execution_device
    positive = encode_prompt(pipe, prompt, text, device)
    negative = {}
    if negative_prompt is not None and cfg_scale > 1.0:
        embeds = encode_prompt(pipe, negative_prompt, text, device)
        negative = dict(negative_prompt_embeds=embeds.embeds, negative_pooled_prompt_embeds=embeds.pooled,
                        negative_prompt_attention_mask=embeds.attention_mask)
    sigmas = flow_sigmas(num_inference_steps)
    with initial_latents(pipe.scheduler, start, seed, sigmas=sigmas, device=device) as initial:
        synchronize(device)
        began = time.perf_counter()
        with _autocast(device, autocast_dtype):
            latents = pipe(
                prompt_embeds=positive.embeds, pooled_prompt_embeds=positive.pooled,
                prompt_attention_mask=positive.attention_mask, **negative, **initial,
                height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
                sigmas=sigmas, true_cfg_scale=cfg_scale, guidance_scale=embedded_guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
            ).frames
        synchronize(device)
    return latents, time.perf_counter() - began


def generate(pipe: HunyuanVideoPipeline, *, vae_autocast_dtype: torch.dtype | None = None, **kwargs) -> Generation:
    """`denoise` then `decode`: the same frames as `pipe(...)` would give, plus the denoising time."""
    latents, seconds = denoise(pipe, **kwargs)
    return Generation(frames=decode(pipe, latents, autocast_dtype=vae_autocast_dtype)[0], denoise_seconds=seconds)


@torch.no_grad()
def encode(pipe: HunyuanVideoPipeline, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> (1, C, F', H', W') latents as the transformer sees them (the posterior
    mean times the VAE's scaling_factor): the inverse of `decode` up to the VAE's error."""
    vae = pipe.vae
    video = to_vae_input([frames]).to(pipe._execution_device, vae.dtype)
    latents = vae.encode(video).latent_dist.mean.float()
    return latents * vae.config.scaling_factor


def token_grid(pipe: HunyuanVideoPipeline, *, width: int, height: int, num_frames: int) -> tuple[int, int, int]:
    """(frames, height, width) of the transformer's video tokens for a run of this size."""
    config = pipe.transformer.config
    frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    spatial = pipe.vae_scale_factor_spatial * config.patch_size
    return frames // config.patch_size_t, height // spatial, width // spatial


@torch.no_grad()
def decode(pipe: HunyuanVideoPipeline, latents: torch.Tensor, *,
           autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Latents -> (B, F, H, W, C) frames in [0, 1], the same operations as HunyuanVideoPipeline's own decode.

    The latents stay on the execution device: under model CPU offload the VAE moves there when called.
    """
    vae = pipe.vae
    latents = latents.to(pipe._execution_device, dtype=vae.dtype) / vae.config.scaling_factor
    with _autocast(latents.device, autocast_dtype):
        video = vae.decode(latents, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="np")

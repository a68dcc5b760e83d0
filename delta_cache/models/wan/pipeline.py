"""Sampling Wan2.1 with diffusers' pipelines, reproducing upstream's sampler grids.

Upstream's UniPC sampler uses sigmas linspace(0.999, 0, N+1)[:-1] (diffusers' default grid starts at 1.0)
and its dpm++ sampler linspace(1, 0, N+1)[:N], both shifted by shift*s / (1 + (shift-1)*s). The two small
scheduler subclasses below only replace the grid; the solvers themselves are diffusers'.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from diffusers import (DPMSolverMultistepScheduler, UniPCMultistepScheduler, WanPipeline, WanVACEPipeline,
                       WanVACETransformer3DModel)
from diffusers.utils.torch_utils import get_module_execution_device

from ...video import to_vae_input
from ..common import Generation, synchronize
from ..partial_denoising import initial_latents


def _shifted(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class UpstreamUniPCScheduler(UniPCMultistepScheduler):
    """UniPC (order 2, bh2, x0-prediction) on upstream Wan's sigma grid, which starts at 0.999."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        if sigmas is None:  # diffusers applies flow_shift to the sigmas it is given
            sigmas = np.linspace(0.999, 0.0, num_inference_steps + 1)[:-1]
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu)


class UpstreamDPMSolverScheduler(DPMSolverMultistepScheduler):
    """DPM-Solver++ (order 2) on upstream Wan's dpm++ grid, which starts at 1.0."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        sigmas = _shifted(np.linspace(1.0, 0.0, num_inference_steps + 1)[:num_inference_steps], self.config.flow_shift)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(sigmas * self.config.num_train_timesteps).to(device=device, dtype=torch.int64)


def make_scheduler(solver: str, shift: float):
    common = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                  flow_shift=shift, solver_order=2, lower_order_final=True, final_sigmas_type="zero")
    if solver == "unipc":
        return UpstreamUniPCScheduler(solver_type="bh2", predict_x0=True, **common)
    if solver == "dpm++":
        return UpstreamDPMSolverScheduler(algorithm_type="dpmsolver++", **common)
    raise ValueError(f"unknown sample solver {solver!r}")


def build_pipeline(components, *, image_to_video: bool, solver: str, shift: float):
    """A diffusers Wan pipeline over already loaded components (`WanComponents`): WanVACEPipeline for a VACE
    transformer, WanImageToVideoPipeline when `image_to_video`, else WanPipeline."""
    scheduler = make_scheduler(solver, shift)
    if isinstance(components.transformer, WanVACETransformer3DModel):
        return WanVACEPipeline(tokenizer=components.tokenizer, text_encoder=components.text_encoder,
                               vae=components.vae, transformer=components.transformer, scheduler=scheduler)
    if image_to_video:
        from diffusers import WanImageToVideoPipeline  # lazy: importing it warns about torchvision on CPU installs

        return WanImageToVideoPipeline(
            tokenizer=components.tokenizer, text_encoder=components.text_encoder, vae=components.vae,
            transformer=components.transformer, scheduler=scheduler, image_encoder=components.image_encoder,
            image_processor=components.image_processor,
        )
    return WanPipeline(tokenizer=components.tokenizer, text_encoder=components.text_encoder, vae=components.vae,
                       transformer=components.transformer, scheduler=scheduler)


def place_pipeline(pipe, device: torch.device, *, offload: bool, text_encoder_on_cpu: bool) -> None:
    """Put the pipeline's models on `device`, or let diffusers' model CPU offload bring each there when it runs;
    with `text_encoder_on_cpu` (upstream's --t5_cpu) T5 stays on the CPU either way.

    Model offload hooks every model of the pipeline's offload sequence, T5 included (its exclusion list only
    spares models outside the sequence, and moves those to the GPU), so T5's hook comes off afterwards, and again
    after every generation (the pipeline's end-of-call `maybe_free_model_hooks` offloads anew); the exclusion is
    still set, on this pipeline alone, so that `_execution_device` does not read the CPU from it.
    """
    if device.type != "cuda":
        pipe.to(device)
        return
    if offload:
        if text_encoder_on_cpu:
            from accelerate.hooks import remove_hook_from_module

            def keep_text_encoder_on_cpu():
                remove_hook_from_module(pipe.text_encoder, recurse=True)
                pipe.text_encoder.to("cpu")

            def free_model_hooks(free=pipe.maybe_free_model_hooks):
                free()
                keep_text_encoder_on_cpu()

            pipe._exclude_from_cpu_offload = [*pipe._exclude_from_cpu_offload, "text_encoder"]
            pipe.enable_model_cpu_offload(device=device)
            keep_text_encoder_on_cpu()
            pipe.maybe_free_model_hooks = free_model_hooks  # (this pipeline's own, called at the end of each run)
        else:
            pipe.enable_model_cpu_offload(device=device)
        return
    for name in ("transformer", "vae", "image_encoder") + (() if text_encoder_on_cpu else ("text_encoder",)):
        module = getattr(pipe, name, None)
        if module is not None:
            module.to(device)


@torch.no_grad()
def denoise(pipe, *, prompt: str, negative_prompt: str, width: int, height: int, num_frames: int,
            num_inference_steps: int, guidance_scale: float, seed: int, image=None, last_image=None,
            vace=None, text_encoder_device: torch.device | None = None, max_sequence_length: int = 512,
            start: tuple[torch.Tensor, float] | None = None) -> tuple[torch.Tensor, float]:
    """Encode the prompts, then run the denoising loop alone (timed). Returns (latents, seconds).

    Prompts are encoded first, on `text_encoder_device` (upstream's --t5_cpu keeps T5 on the CPU), and handed
    to the pipeline as embeddings; the initial noise comes from a CPU generator so a seed gives the same
    video on any device. `start` = (clean latents as `encode` gives them, sigma): begin from those latents
    noised to the grid's first level <= sigma instead of pure noise (see partial_denoising.py).
    `vace`: the VACE conditions (`inputs.VaceInputs`); the latents returned are the video's alone (the
    reference images' leading latent frames, which the pipeline denoises with it, are dropped).
    """
    device = pipe._execution_device
    prompt_embeds, negative_embeds = pipe.encode_prompt(
        prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=guidance_scale > 1.0,
        num_videos_per_prompt=1, max_sequence_length=max_sequence_length, device=text_encoder_device or device,
    )
    extra = {} if image is None else {"image": image}
    if last_image is not None:  # flf2v: the pipeline conditions on both frames and both frames' CLIP tokens
        extra["last_image"] = last_image
    if vace is not None:
        extra.update(video=vace.video, mask=vace.mask, reference_images=vace.reference_images or None)
    with initial_latents(pipe.scheduler, start, seed, num_inference_steps=num_inference_steps, device=device) as initial:
        synchronize(device)
        began = time.perf_counter()
        latents = pipe(
            prompt_embeds=prompt_embeds.to(device),
            negative_prompt_embeds=None if negative_embeds is None else negative_embeds.to(device),
            height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="latent", max_sequence_length=max_sequence_length, **extra, **initial,
        ).frames
        synchronize(device)
    seconds = time.perf_counter() - began
    if vace is not None and vace.reference_images:
        latents = latents[:, :, len(vace.reference_images):]
    return latents, seconds


def generate(pipe, **kwargs) -> Generation:
    """`denoise` then `decode`: the same frames as `pipe(..., output_type="np")`, plus the denoising time."""
    latents, seconds = denoise(pipe, **kwargs)
    return Generation(frames=decode(pipe, latents)[0], denoise_seconds=seconds)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Latents -> (B, F, H, W, C) frames in [0, 1], the same operations as WanPipeline's own decode."""
    vae = pipe.vae
    latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)  # the GPU under model offload
    latents_mean, latents_std = latent_statistics(vae, latents)
    latents = latents / (1.0 / latents_std) + latents_mean  # WanPipeline's exact operations
    video = vae.decode(latents, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="np")


@torch.no_grad()
def encode(pipe, frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (F, H, W, 3) -> (1, C, F', H', W') latents as the transformer sees them (the posterior
    mean, normalised with the VAE config's statistics): the inverse of `decode` up to the VAE's error."""
    vae = pipe.vae
    video = to_vae_input([frames]).to(get_module_execution_device(vae), vae.dtype)
    latents = vae.encode(video).latent_dist.mean.float()
    latents_mean, latents_std = latent_statistics(vae, latents)
    return (latents - latents_mean) / latents_std


def latent_statistics(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE config's per-channel latents_mean and latents_std as (1, C, 1, 1, 1) tensors on `like`'s device
    and dtype (made in float32 first, as WanPipeline makes them)."""
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
    std = torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, std


def token_grid(pipe, *, width: int, height: int, num_frames: int) -> tuple[int, int, int]:
    """(frames, height, width) of the transformer's video tokens for a run of this size."""
    _, patch_h, patch_w = pipe.transformer.config.patch_size
    frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    return (frames, height // pipe.vae_scale_factor_spatial // patch_h, width // pipe.vae_scale_factor_spatial // patch_w)

"""The training objectives of the tiny HunyuanVideo models, written to match what the HunyuanVideo sampler
(`delta_cache.models.hunyuan_video.pipeline`, diffusers' HunyuanVideoPipeline) assumes.

Flow matching: the same convention as the Wan family (flow_matching.py): x_t = (1 - sigma) * x0 +
sigma * noise, the model predicts v = noise - x0 (the pipeline's Euler step is x += v * (sigma_next - sigma)),
timestep = sigma * 1000. Training sigmas are shifted with the front end's default --flow-shift 7.0.
Guidance: the released model embeds the guidance scale (the pipeline passes `guidance_scale * 1000` to the
guidance embedder on every call); we always train with the front end's default --embedded-cfg-scale 6.0.
Text: `pipeline.encode_prompt` itself (Llama hidden_states[-3] under the video prompt template, CLIP pooled
output), then the text padding is trimmed to the batch's longest prompt: the transformer masks padded text
tokens out of every attention and of the refiner's pooled mean, so the video tokens' output is the same
with 256 padded text tokens (as sampled) or with the trimmed ones (tested), only cheaper.

Latent normalisation: the pipeline feeds the transformer `z * scaling_factor` and decodes
`latents / scaling_factor`, with one scalar from the VAE config (0.476986 in the released VAE); there are
no per-channel statistics. A single scalar cannot centre or balance channels, and upstream's config is
read by other loaders too, so the scalar stays the released value and, as for Wan, the per-channel
statistics of our VAE are folded into its 1x1x1 quant / post-quant convolutions (`fold_scaling_factor`):
afterwards z * 0.476986 has zero mean and unit variance per channel, and decode(encode(x)) is unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

# Training uses HunyuanVideo/sample_video.py's defaults: flow shift, embedded guidance, text flags (tests check).
from ..models.hunyuan_video.config import EMBEDDED_GUIDANCE_SCALE, FLOW_SHIFT  # noqa: F401 (FLOW_SHIFT: train_tiny)
from ..models.hunyuan_video.pipeline import default_text_encoding as text_encoding  # noqa: F401 (train_tiny)
from .flow_matching import NUM_TRAIN_TIMESTEPS, fold_latent_statistics, posterior_loss


def trim_text_padding(text):
    """`PromptEmbeds` cut after the batch's longest prompt (right padding: the rest is masked padding)."""
    length = max(1, int(text.attention_mask.sum(dim=1).max()))
    return replace(text, embeds=text.embeds[:, :length], attention_mask=text.attention_mask[:, :length])


def flow_matching_loss(transformer, latents: torch.Tensor, text, sigmas: torch.Tensor, noise: torch.Tensor,
                       guidance_scale: float = EMBEDDED_GUIDANCE_SCALE) -> torch.Tensor:
    """MSE between the transformer's velocity and noise - latents at the given noise levels.

    latents, noise: (B, 16, F, H, W) scaled latents and standard normal noise; sigmas: (B,) in [0, 1];
    text: `PromptEmbeds` of the B prompts (embeds, attention_mask, pooled).
    """
    s = sigmas.to(latents.device, latents.dtype).view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    timestep = sigmas.to(latents.device, torch.float32) * NUM_TRAIN_TIMESTEPS
    guidance = torch.full((len(latents),), guidance_scale * 1000.0, device=latents.device)
    prediction = transformer(hidden_states=noisy, timestep=timestep, encoder_hidden_states=text.embeds,
                             encoder_attention_mask=text.attention_mask, pooled_projections=text.pooled,
                             guidance=guidance, return_dict=False)[0]
    return F.mse_loss(prediction.float(), (noise - latents).float())


# --- VAE -----------------------------------------------------------------------------------------------

def encode_clip(vae, videos: torch.Tensor) -> DiagonalGaussianDistribution:
    """The posterior of whole clips, without diffusers' temporal tiling (which AutoencoderKLHunyuanVideo uses
    above 16 frames; at 17 frames its result equals this one, computed once)."""
    return DiagonalGaussianDistribution(vae.quant_conv(vae.encoder(videos)))


def decode_clip(vae, latents: torch.Tensor) -> torch.Tensor:
    """Whole-clip decoding, unclamped (the decoder's raw output), without tiling."""
    return vae.decoder(vae.post_quant_conv(latents))


def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """What the pipeline feeds the transformer: VAE latents times the config's scaling_factor."""
    return latents * vae.config.scaling_factor


def vae_loss(vae, videos: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None,
             pixel_weights: torch.Tensor | None = None) -> dict:
    """The Wan family's VAE objective (flow_matching.vae_loss) for AutoencoderKLHunyuanVideo: L1 + MSE of the
    reconstruction of a posterior sample (pixels in [-1, 1]) plus kl_weight * KL (mean per element)."""
    return posterior_loss(encode_clip(vae, videos), lambda z: decode_clip(vae, z), videos, kl_weight, generator,
                          pixel_weights)


@torch.no_grad()
def fold_scaling_factor(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rescale the VAE so that latents with raw per-channel statistics (mean, std) become zero-mean, unit-
    variance after the pipeline's `* scaling_factor`, without changing decode(encode(x)).

    The same affine fold as the Wan family's `fold_latent_statistics` (same quant / post-quant convolution
    layout), with per-channel targets mean 0 and std 1 / scaling_factor.
    """
    channels = vae.config.latent_channels
    target = SimpleNamespace(z_dim=channels, latents_mean=[0.0] * channels,
                             latents_std=[1.0 / vae.config.scaling_factor] * channels)
    fold_latent_statistics(SimpleNamespace(config=target, quant_conv=vae.quant_conv,
                                           post_quant_conv=vae.post_quant_conv), mean, std)

"""The HunyuanVideo family for training (`FAMILY`): the tiny models' objectives, written to match what the
HunyuanVideo sampler (`delta_cache.models.hunyuan_video.pipeline`, diffusers' HunyuanVideoPipeline) assumes,
their modules, prompt encoding as at sampling, and the upstream writer.

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

import contextlib
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

# Training uses HunyuanVideo/sample_video.py's defaults: flow shift, embedded guidance, text flags (tests check).
from ..models.hunyuan_video.config import EMBEDDED_GUIDANCE_SCALE, FLOW_SHIFT, NEGATIVE_PROMPT
from ..synthetic.prompts import vocabulary
from .family import TrainingFamily
from .flow_matching import NUM_TRAIN_TIMESTEPS, fold_latent_statistics, posterior_loss

if TYPE_CHECKING:  # diffusers is imported on use: --pack_state and flag errors stay quick
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution


def text_encoding(num_frames: int):
    """sample_video.py's default prompt encoding (template, text lengths) for `num_frames` frames."""
    from ..models.hunyuan_video.pipeline import default_text_encoding

    return default_text_encoding(num_frames)


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
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution(vae.quant_conv(vae.encoder(videos)))


def decode_clip(vae, latents: torch.Tensor) -> torch.Tensor:
    """Whole-clip decoding, unclamped (the decoder's raw output), without tiling."""
    return vae.decoder(vae.post_quant_conv(latents))


def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """What the pipeline feeds the transformer: VAE latents times the config's scaling_factor."""
    return latents * vae.config.scaling_factor


def vae_loss(vae, videos: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None,
             pixel_weights: torch.Tensor | None = None, edge_weight: float = 0.0) -> dict:
    """The Wan family's VAE objective (flow_matching.vae_loss) for AutoencoderKLHunyuanVideo: L1 + MSE (+ the
    edge term) of the reconstruction of a posterior sample (pixels in [-1, 1]) plus kl_weight * KL (mean per
    element)."""
    return posterior_loss(encode_clip(vae, videos), lambda z: decode_clip(vae, z), videos, kl_weight, generator,
                          pixel_weights, edge_weight)


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


# --- modules, prompts, writer ----------------------------------------------------------------------------

def build_modules(args, init_seed: int) -> dict:
    """Fresh modules from `init_seed`, shaped by the flags in `args` (num_layers, num_single_layers, num_heads,
    head_dim, ffn_dim, text_dim, vae_base_dim): the shapes that the upstream layout and our loader expect (as
    in delta_cache/models/hunyuan_video/tiny.py), with tokenizers that know every grammar word."""
    from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

    from ..models.hunyuan_video import tiny
    from ..models.hunyuan_video.keys import rope_axes_dim

    # The words of upstream's default negative prompt (CFG dropout trains on it) are one token each too, as
    # the template's are: otherwise it spells out as 136 byte pieces and lengthens every batch holding it.
    words = vocabulary() + sorted({w for w in re.findall(r"[A-Za-z]+", NEGATIVE_PROMPT)})
    tokenizer = tiny.llama_style_tokenizer(words)
    tokenizer_2 = tiny.clip_tokenizer(dict.fromkeys(w.lower() for w in words))
    width = args.num_heads * args.head_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        text_encoder = tiny.tiny_llama(tokenizer, args.text_dim).eval().requires_grad_(False)
        text_encoder_2 = tiny.tiny_clip(tokenizer_2, args.text_dim).eval().requires_grad_(False)
        # The released VAE's structure (4 levels, 2 residual blocks, mid-block attention, 8x spatial / 4x
        # temporal, 16 channels) at a small width, by default with its ratio of channels to norm groups.
        b = args.vae_base_dim
        groups = args.vae_norm_groups or b // 4
        vae = AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=(b, 2 * b, 4 * b, 4 * b),
                                        layers_per_block=2, norm_num_groups=groups)
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=16, out_channels=16, num_attention_heads=args.num_heads, attention_head_dim=args.head_dim,
            num_layers=args.num_layers, num_single_layers=args.num_single_layers, num_refiner_layers=2,
            mlp_ratio=args.ffn_dim / width, patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
            text_embed_dim=args.text_dim, pooled_projection_dim=args.text_dim, rope_theta=256.0,
            rope_axes_dim=rope_axes_dim(args.head_dim))
        # Every block starts as the identity and the output as zero (as for Wan).
        for block in transformer.transformer_blocks:
            for layer in (block.attn.to_out[0], block.attn.to_add_out, block.ff.net[2], block.ff_context.net[2]):
                torch.nn.init.zeros_(layer.weight)
                torch.nn.init.zeros_(layer.bias)
        for layer in [block.proj_out for block in transformer.single_transformer_blocks] + [transformer.proj_out]:
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, tokenizer_2=tokenizer_2,
                text_encoder_2=text_encoder_2, vae=vae, transformer=transformer)


def text_pipeline(modules: dict, device: torch.device, args):
    """(pipeline, text flags): what sample_video.py encodes prompts with, at its default text flags, for
    `args.num_frames` frames and flow shift `args.shift`."""
    from diffusers import HunyuanVideoPipeline

    from ..models.hunyuan_video.pipeline import make_scheduler

    modules["text_encoder"].to(device)
    modules["text_encoder_2"].to(device)
    pipe = HunyuanVideoPipeline(
        transformer=modules["transformer"], vae=modules["vae"], scheduler=make_scheduler(args.shift),
        text_encoder=modules["text_encoder"], tokenizer=modules["tokenizer"],
        text_encoder_2=modules["text_encoder_2"], tokenizer_2=modules["tokenizer_2"])
    return pipe, text_encoding(args.num_frames)


def encode_prompts(text_pipe, prompts: list[str], device: torch.device, grad: bool = False):
    """`pipeline.encode_prompt` on the batch, text padding trimmed (exact; see the module docstring)."""
    from ..models.hunyuan_video.pipeline import encode_prompt

    pipe, encoding = text_pipe
    with torch.set_grad_enabled(grad):
        return trim_text_padding(encode_prompt(pipe, prompts, encoding, device))


@contextlib.contextmanager
def text_attention(transformer):
    """The prompt encoding already trims the (masked) padding: nothing to arm."""
    yield lambda text: text


def encode_posterior_means(vae, videos: torch.Tensor) -> torch.Tensor:
    return encode_clip(vae, videos).mean


def save(modules: dict, out: Path) -> None:
    """EMA transformer in bf16 (as the released file), the VAE in fp16 (half the bytes; the loaders cast to the
    run dtype), the small text encoders in fp32; upstream ckpts/ layout (`out` is the model base)."""
    from ..models.hunyuan_video import tiny

    parts = {name: modules[name].to("cpu") for name in ("text_encoder", "text_encoder_2")}
    parts["vae"] = torch.nn.Module.to(modules["vae"].to("cpu"), torch.float16)
    parts["transformer"] = torch.nn.Module.to(modules["transformer"].to("cpu"), torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    tiny.write_upstream(out, {**parts, "tokenizer": modules["tokenizer"], "tokenizer_2": modules["tokenizer_2"]})


def load(folder: Path):
    from ..models.hunyuan_video.checkpoint import DIT_WEIGHT, load_hunyuan_video_components

    return load_hunyuan_video_components(folder / DIT_WEIGHT, folder, dtype=torch.float32, vae_dtype=torch.float32,
                                         text_encoder_dtype=torch.float32, text_encoder_2_dtype=torch.float32)


def sampling_info(modules: dict) -> dict:
    """The embedded guidance scale trained with and the VAE's scaling factor (which the fold assumes)."""
    return {"embedded_guidance_scale": EMBEDDED_GUIDANCE_SCALE,
            "vae_scaling_factor": modules["vae"].config.scaling_factor}


FAMILY = TrainingFamily(
    name="hunyuan_video",
    components=("transformer", "vae", "text_encoder", "text_encoder_2"),
    defaults=dict(num_layers=20, num_single_layers=40, num_heads=3, head_dim=24, ffn_dim=288, text_dim=32,
                  vae_base_dim=12, shift=FLOW_SHIFT),
    build=build_modules, save=save, load=load, sampling_info=sampling_info, vae_loss=vae_loss, encode=encode_posterior_means, decode=decode_clip,
    normalise=normalise_latents, fold=fold_scaling_factor, text_pipeline=text_pipeline,
    encode_prompts=encode_prompts, text_attention=text_attention, loss=flow_matching_loss,
    negative_prompt=NEGATIVE_PROMPT,
)

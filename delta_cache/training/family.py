"""What `scripts/train_tiny.py` needs to know about a model family, in one object per family.

Each family's adapter module builds a `TrainingFamily` (`wan.FAMILY`, `hunyuan_video.FAMILY`); the training
loop only calls through it, so a new family is a new adapter, not new branches in the script.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingFamily:
    name: str
    # The trained components of a checkpoint (what --init_components chooses from).
    components: tuple[str, ...]
    # Defaults of the model-shape flags left as None on the command line, and of --shift.
    defaults: dict
    # (flags, init seed) -> fresh modules {"transformer", "vae", "text_encoder", tokenizers, ...}.
    build: Callable
    # (modules, folder): the upstream checkpoint layout.
    save: Callable
    # (folder) -> the components of a checkpoint `save` wrote, read by the front ends' loader in fp32.
    load: Callable
    # (modules) -> what tiny_model.json records for the family's front end besides the common entries.
    sampling_info: Callable
    # (vae, videos, kl_weight, generator, pixel_weights) -> {"loss", ...}: the VAE objective.
    vae_loss: Callable
    # (vae, videos) -> posterior means of whole clips, as the transformer's latents.
    encode: Callable
    # (vae, latents) -> unclamped pixels in about [-1, 1].
    decode: Callable
    # (vae, raw latents) -> the pipeline's normalisation of them (for a folded VAE: zero mean, unit variance).
    normalise: Callable
    # (vae, mean, std): fold per-channel latent statistics into the VAE (see the adapter modules).
    fold: Callable
    # (modules, device, flags) -> what `encode_prompts` encodes with (the sampler's own prompt encoding).
    text_pipeline: Callable
    # (text pipeline, prompts, device, grad=False) -> the transformer's text input, padding trimmed (exact).
    encode_prompts: Callable
    # (transformer) -> context manager yielding a `prepare(text)` function: training's cheaper text attention.
    text_attention: Callable
    # (transformer, latents, text, sigmas, noise) -> the flow-matching loss.
    loss: Callable
    # The sampler's default negative prompt (CFG dropout trains on it and on "").
    negative_prompt: str

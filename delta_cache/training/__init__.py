"""Training the tiny models: flow-matching objective, VAE loss, latent normalisation (see flow_matching.py)."""

from .flow_matching import (
    channel_statistics,
    decode_unclamped,
    encode_latents,
    flow_matching_loss,
    fold_latent_statistics,
    normalise_latents,
    object_weights,
    reconstruction_loss,
    sample_sigmas,
    shift_sigmas,
    vae_loss,
)

__all__ = [
    "channel_statistics", "decode_unclamped", "encode_latents", "flow_matching_loss", "fold_latent_statistics",
    "normalise_latents", "object_weights", "reconstruction_loss", "sample_sigmas", "shift_sigmas", "vae_loss",
]

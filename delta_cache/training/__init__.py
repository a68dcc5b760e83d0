"""Training the tiny models (scripts/train_tiny.py).

flow_matching.py: the flow-matching objective, VAE loss and latent normalisation (Wan's, shared); family.py:
what the script needs per model family, with one adapter each (wan.py, hunyuan_video.py); data.py: the
batches; loop.py: the step loop, EMA, learning-rate schedule, state and log files; text_padding.py: Wan's
exact, cheaper cross-attention over padded text.
"""

from .flow_matching import (
    channel_statistics,
    decode_unclamped,
    edge_error,
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
    "channel_statistics", "decode_unclamped", "edge_error", "encode_latents", "flow_matching_loss",
    "fold_latent_statistics", "normalise_latents", "object_weights", "reconstruction_loss", "sample_sigmas",
    "shift_sigmas", "vae_loss",
]

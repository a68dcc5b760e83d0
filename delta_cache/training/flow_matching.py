"""The training objectives of the tiny models, written to match what diffusers' Wan sampling assumes.

Flow matching (rectified flow), as in diffusers' flow schedulers (UniPC / DPM++ with use_flow_sigmas,
FlowMatchEuler): x_t = (1 - sigma) * x0 + sigma * noise, the model predicts v = noise - x0 at
timestep = sigma * 1000. Training sigmas: u ~ Uniform(0, 1) mapped through the same shift the sampler
applies to its grid, sigma = shift * u / (1 + (shift - 1) * u), so the training noise levels are spread
like the sampler's steps (shift 5 is Wan2.1 T2V's default).

VAE: L1 + MSE reconstruction of a posterior sample plus a small KL term (a mean over latent elements).
Latent normalisation: WanPipeline maps VAE latents z to (z - latents_mean) / latents_std before the
transformer. The upstream checkpoint layout has nowhere to store those statistics (upstream's code hard-
codes Wan2.1's 16 values, and so does our loader), so `fold_latent_statistics` folds our own statistics
into the VAE's 1x1x1 quant / post-quant convolutions: afterwards the *default* constants normalise the
latents to zero mean and unit variance per channel, and decode(encode(x)) is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-shift map that diffusers' Wan schedulers apply to their sigma grid."""
    return shift * u / (1 + (shift - 1) * u)


def sample_sigmas(batch_size: int, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Training noise levels: uniform, then shifted like the sampler's grid (CPU tensor)."""
    return shift_sigmas(torch.rand(batch_size, generator=generator), shift)


def flow_matching_loss(transformer, latents: torch.Tensor, prompt_embeds: torch.Tensor, sigmas: torch.Tensor,
                       noise: torch.Tensor) -> torch.Tensor:
    """MSE between the transformer's velocity and noise - latents at the given noise levels.

    latents, noise: (B, C, F, H, W) normalised latents and standard normal noise; sigmas: (B,) in [0, 1].
    """
    s = sigmas.to(latents.device, latents.dtype).view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    timestep = sigmas.to(latents.device, torch.float32) * NUM_TRAIN_TIMESTEPS
    prediction = transformer(hidden_states=noisy, timestep=timestep, encoder_hidden_states=prompt_embeds,
                             return_dict=False)[0]
    return F.mse_loss(prediction.float(), (noise - latents).float())


def vae_loss(vae, videos: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None,
             pixel_weights: torch.Tensor | None = None, edge_weight: float = 0.0) -> dict:
    """Reconstruction (L1 + MSE, pixels in [-1, 1]) of a posterior sample plus kl_weight * KL.

    videos: (B, 3, F, H, W) in [-1, 1]; pixel_weights, edge_weight: see `reconstruction_loss`. Returns the
    total ("loss") and its parts (detached floats).
    """
    # decode() clamps to [-1, 1], which stops gradients at saturated pixels: the loss uses the raw output.
    return posterior_loss(vae.encode(videos).latent_dist, lambda z: decode_unclamped(vae, z), videos, kl_weight,
                          generator, pixel_weights, edge_weight)


def posterior_loss(posterior, decode: Callable[[torch.Tensor], torch.Tensor], videos: torch.Tensor,
                   kl_weight: float, generator: torch.Generator | None = None,
                   pixel_weights: torch.Tensor | None = None, edge_weight: float = 0.0) -> dict:
    """The VAE objective of both families, whatever their encode/decode calls: L1 + MSE (+ the edge term) of
    `decode` (raw, unclamped) of one posterior sample, plus kl_weight * KL to N(0, 1) as a mean over latent
    elements."""
    noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean)
    parts = reconstruction_loss(decode(posterior.mean + posterior.std * noise), videos, pixel_weights, edge_weight)
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    return {**parts, "loss": parts["loss"] + kl_weight * kl, "kl": kl.item()}


def reconstruction_loss(reconstruction: torch.Tensor, videos: torch.Tensor,
                        pixel_weights: torch.Tensor | None = None, edge_weight: float = 0.0) -> dict:
    """L1 + MSE between a raw (unclamped) reconstruction and the videos (pixels in [-1, 1]), plus
    edge_weight x the edge term.

    pixel_weights: optional (B, 1, F, H, W) weights; the means become weighted means (see `object_weights`).
    The edge term is the (weighted) mean absolute difference between the reconstruction's and the videos'
    differences of horizontally and of vertically neighbouring pixels, summed over the two: it ignores an
    error that is the same on both sides of an edge and counts one that blurs or shifts it, which per-pixel
    means weigh little because edges are few pixels."""
    error = reconstruction - videos
    pixel_weights = None if pixel_weights is None else pixel_weights.to(error)
    if pixel_weights is None:
        l1, mse = error.abs().mean(), error.pow(2).mean()
    else:
        weights = pixel_weights / pixel_weights.mean()
        l1, mse = (weights * error.abs()).mean(), (weights * error.pow(2)).mean()
    parts = {"loss": l1 + mse, "l1": l1.item(), "mse": mse.item()}
    if edge_weight:
        edge = edge_error(error, pixel_weights)
        parts.update(loss=parts["loss"] + edge_weight * edge, edge=edge.item())
    return parts


def edge_error(error: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |difference of `error` between horizontal neighbours| + the same between vertical neighbours;
    with pixel_weights (B, 1, F, H, W), weighted means with the weight of each pair's right / lower pixel."""
    across = (error[..., 1:] - error[..., :-1]).abs()
    down = (error[..., 1:, :] - error[..., :-1, :]).abs()
    if pixel_weights is None:
        return across.mean() + down.mean()

    def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return (weights * values).mean() / weights.mean()

    return weighted_mean(across, pixel_weights[..., 1:]) + weighted_mean(down, pixel_weights[..., 1:, :])


def object_weights(masks: torch.Tensor, weight: float, band: int = 2) -> torch.Tensor:
    """Pixel weights 1 + `weight` on the objects and a `band`-pixel border around them, for the VAE's loss.

    masks: (B, F, H, W) foreground masks (bool or 0/1). Objects are a few percent of a frame, and their
    colours, corners and edges are what a viewer (and the quality analyser) reads; a plain mean spends the
    loss on background. Returns (B, 1, F, H, W) float32."""
    batch, frames, height, width = masks.shape
    flat = masks.reshape(batch * frames, 1, height, width).float()
    near = F.max_pool2d(flat, kernel_size=2 * band + 1, stride=1, padding=band) if band > 0 else flat
    return (1.0 + weight * near).reshape(batch, 1, frames, height, width)


def decode_unclamped(vae, latents: torch.Tensor) -> torch.Tensor:
    """AutoencoderKLWan decoding without the final clamp (the same frame-by-frame causal pass)."""
    if vae.config.patch_size is not None:
        raise ValueError("patchified (Wan2.2) VAEs are not supported")
    vae.clear_cache()
    x = vae.post_quant_conv(latents)
    frames = []
    for i in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=i == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


@torch.no_grad()
def encode_latents(vae, videos: torch.Tensor) -> torch.Tensor:
    """Posterior means, normalised with the VAE config's latents_mean / latents_std (as WanPipeline does)."""
    latents = vae.encode(videos.to(vae.device, vae.dtype)).latent_dist.mean
    return normalise_latents(vae, latents)


def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    from ..models.wan.pipeline import latent_statistics  # (diffusers: imported on use, so --pack_state stays quick)

    mean, std = latent_statistics(vae, latents)  # exactly as sampling makes them
    return (latents - mean) / std


def channel_statistics(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (B, C, F, H, W) latents."""
    flat = latents.transpose(0, 1).reshape(latents.shape[1], -1).double()
    return flat.mean(dim=1).float(), flat.std(dim=1).clamp_min(1e-6).float()


@torch.no_grad()
def fold_latent_statistics(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Rescale the VAE so that its config's latents_mean / latents_std normalise latents whose raw per-
    channel statistics are (mean, std) to zero mean and unit variance, without changing decode(encode(x)).

    New latents z' = (z - mean) * (s / std) + m, with (m, s) the config's constants: the quant conv's mean
    rows get that affine map and its log-variance rows the matching shift; the post-quant conv gets the
    inverse on its input.
    """
    z_dim = vae.config.z_dim
    m = torch.tensor(vae.config.latents_mean, dtype=torch.float64)
    s = torch.tensor(vae.config.latents_std, dtype=torch.float64)
    mean, std = mean.double(), std.double()
    scale = s / std  # z' = scale * z + offset
    offset = m - scale * mean

    quant = vae.quant_conv  # 1x1x1 conv, out channels [mu (z_dim), logvar (z_dim)]
    weight, bias = quant.weight.double(), quant.bias.double()
    weight[:z_dim] *= scale.view(-1, 1, 1, 1, 1)
    bias[:z_dim] = scale * bias[:z_dim] + offset
    bias[z_dim:] += 2 * torch.log(scale)  # var' = scale^2 var
    quant.weight.copy_(weight)
    quant.bias.copy_(bias)

    post = vae.post_quant_conv  # W z + b = W (z' - offset) / scale + b
    weight, bias = post.weight.double(), post.bias.double()
    inverse = 1.0 / scale
    bias = bias - (weight[:, :, 0, 0, 0] * (offset * inverse).view(1, -1)).sum(dim=1)
    weight = weight * inverse.view(1, -1, 1, 1, 1)
    post.weight.copy_(weight)
    post.bias.copy_(bias)

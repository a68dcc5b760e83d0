"""Where a diffusers video transformer's video tokens are, per transformer class (`FAMILIES`).

The families differ only in where the video tokens are in a block's self-attention (alone, before or after the
text), how the pipeline batches classifier-free guidance (which sample or call is the prompt's), and how its
latents are laid out; everything that profiles or caches them is shared. Used by `profiling.pipelines`
(`profile_pipeline`) and the pipeline-folder scripts (`models.pipeline_folder`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UserInputError


def _call_arguments(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """The transformer call's arguments by name (the pipelines pass some by position)."""
    return inspect.signature(type(transformer).forward).bind_partial(transformer, *args, **kwargs).arguments


def _patches(config) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes from a transformer config (an int or a (t, h, w) triple)."""
    patch = config.patch_size
    if isinstance(patch, (tuple, list)):
        return int(patch[0]), int(patch[1]), int(patch[2])
    return int(getattr(config, "patch_size_t", None) or 1), int(patch), int(patch)


def _grid(frames: int, height: int, width: int, config) -> tuple[int, int, int]:
    """The token grid of a latent of `frames` x `height` x `width`, which the patches must divide."""
    pt, ph, pw = _patches(config)
    for what, size, patch in (("frames", frames, pt), ("height", height, ph), ("width", width, pw)):
        if size % patch:
            raise UserInputError(f"the latent's {what} ({size}) is not a multiple of the transformer's patch "
                                 f"({patch}): choose a video size whose latent it divides")
    return frames // pt, height // ph, width // pw


def _fold_time(latents: torch.Tensor, temporal_patch: int) -> torch.Tensor:
    """(C, F, H, W) -> (C * pt, F / pt, H, W): the frames one token spans become channels."""
    c, f, h, w = latents.shape
    f -= f % temporal_patch
    return latents[:, :f].reshape(c, f // temporal_patch, temporal_patch, h, w).transpose(1, 2).reshape(
        c * temporal_patch, f // temporal_patch, h, w)


# ---- per family: the video's token layout at a transformer call, and its final latents per token grid -------
def _channels_first_layout(transformer, args, kwargs) -> dict:  # Wan, HunyuanVideo, Mochi: (B, C, F, H, W)
    _, _, frames, height, width = _call_arguments(transformer, args, kwargs)["hidden_states"].shape
    return {"token_grid": _grid(frames, height, width, transformer.config)}


def _channels_first_latents(latents, transformer, token_grid):
    return _fold_time(latents[0], _patches(transformer.config)[0])


def _mochi_layout(transformer, args, kwargs) -> dict:
    # Mochi's attention runs once per sample of the batch; the prompt's sample is the last
    hidden = _call_arguments(transformer, args, kwargs)["hidden_states"]
    return {**_channels_first_layout(transformer, args, kwargs), "attention_call": hidden.shape[0] - 1}


def _cogvideox_layout(transformer, args, kwargs) -> dict:
    # (B, F, C, H, W); the attention puts the text tokens in front of the video's
    arguments = _call_arguments(transformer, args, kwargs)
    _, frames, _, height, width = arguments["hidden_states"].shape
    return {"token_grid": _grid(frames, height, width, transformer.config),
            "attention_prefix_tokens": int(arguments["encoder_hidden_states"].shape[1])}


def _cogvideox_latents(latents, transformer, token_grid):
    return _fold_time(latents[0].transpose(0, 1), _patches(transformer.config)[0])


def _ltx_layout(transformer, args, kwargs) -> dict:
    # tokens arrive packed (B, tokens, C * patch volume), with the latent's frames, height and width
    arguments = _call_arguments(transformer, args, kwargs)
    return {"token_grid": _grid(int(arguments["num_frames"]), int(arguments["height"]), int(arguments["width"]),
                                transformer.config)}


def _ltx_latents(latents, transformer, token_grid):
    packed = latents[0]  # (tokens, channels): a token's latent values are one "pixel" of the token grid
    return packed.reshape(*token_grid, packed.shape[-1]).permute(3, 0, 1, 2)


def _spatial_patch(transformer) -> tuple[int, int]:
    return _patches(transformer.config)[1:]


@dataclass(frozen=True)
class VideoFamily:
    block_lists: tuple[str, ...]
    depth_keys: tuple[str, ...]  # the transformer config's key for each block list's depth (before loading)
    branch: str  # the cache_context of the transformer calls that carry the prompt
    sample: int | None  # the prompt's sample in the batch (None: a batch of the prompt alone)
    layout: Callable  # (transformer, args, kwargs) -> ProbeSettings fields for the video's tokens
    latents: Callable  # (pipeline's final latents, transformer, token grid) -> (C, F, H, W) on the token frames
    mask_patch: Callable = _spatial_patch  # (transformer) -> latent pixels per token (height, width) in `latents`


FAMILIES = {
    "WanTransformer3DModel": VideoFamily(("blocks",), ("num_layers",), "cond", None, _channels_first_layout,
                                         _channels_first_latents),
    "HunyuanVideoTransformer3DModel": VideoFamily(("transformer_blocks", "single_transformer_blocks"),
                                                  ("num_layers", "num_single_layers"), "cond", None,
                                                  _channels_first_layout, _channels_first_latents),
    # a Wan-architecture model (SkyReels-V2's text- and image-to-video pipelines; not its diffusion forcing ones,
    # whose frames run at different timesteps) and HunyuanVideo 1.5 (its guider names the prompt's calls)
    "SkyReelsV2Transformer3DModel": VideoFamily(("blocks",), ("num_layers",), "cond", None, _channels_first_layout,
                                                _channels_first_latents),
    "HunyuanVideo15Transformer3DModel": VideoFamily(("transformer_blocks",), ("num_layers",), "pred_cond", None,
                                                    _channels_first_layout, _channels_first_latents),
    # these three batch [negative prompt, prompt] in one call
    "CogVideoXTransformer3DModel": VideoFamily(("transformer_blocks",), ("num_layers",), "cond_uncond", -1,
                                               _cogvideox_layout, _cogvideox_latents),
    "LTXVideoTransformer3DModel": VideoFamily(("transformer_blocks",), ("num_layers",), "cond_uncond", -1, _ltx_layout,
                                              _ltx_latents, mask_patch=lambda transformer: (1, 1)),
    "MochiTransformer3DModel": VideoFamily(("transformer_blocks",), ("num_layers",), "cond_uncond", -1, _mochi_layout,
                                           _channels_first_latents),
}


def video_family(transformer: torch.nn.Module) -> VideoFamily:
    name = type(transformer).__name__
    if name not in FAMILIES:
        raise UserInputError(f"profile_pipeline does not know where {name}'s video tokens are; it profiles "
                             f"{', '.join(FAMILIES)}")
    return FAMILIES[name]

"""A transformer block's streams, read and written the way diffusers' `TransformerBlockRegistry` describes
the block: (hidden_states, encoder_hidden_states or None). Shared by the caches that skip blocks."""

from __future__ import annotations

import functools

import torch
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

from .errors import UserInputError


# Video transformer blocks diffusers' registry does not describe (0.42): (module, class, index of the hidden
# states in the return value, index of the text's or None). Read off their forward: SkyReels-V2's block returns
# the hidden states alone (as Wan's), HunyuanVideo 1.5's returns (hidden_states, encoder_hidden_states).
_UNREGISTERED_VIDEO_BLOCKS = (
    ("diffusers.models.transformers.transformer_skyreels_v2", "SkyReelsV2TransformerBlock", 0, None),
    ("diffusers.models.transformers.transformer_hunyuan_video15", "HunyuanVideo15TransformerBlock", 0, 1),
)


@functools.cache  # (once a process: the caches call it for every block they attach to)
def register_video_blocks() -> None:
    """Describe those blocks in diffusers' registry, where diffusers has them and does not yet describe them
    itself, so that the caches and the profiler find and read them as they do the registered ones."""
    import importlib

    TransformerBlockRegistry._register()
    for module_name, class_name, hidden_index, text_index in _UNREGISTERED_VIDEO_BLOCKS:
        try:
            block_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):  # (a diffusers without this model)
            continue
        if block_class not in TransformerBlockRegistry._registry:
            TransformerBlockRegistry.register(block_class, TransformerBlockMetadata(
                return_hidden_states_index=hidden_index, return_encoder_hidden_states_index=text_index))


def block_metadata(block: torch.nn.Module) -> TransformerBlockMetadata:
    register_video_blocks()
    try:
        return TransformerBlockRegistry.get(type(block))
    except ValueError:
        raise UserInputError(
            f"block class {type(block).__name__} is not registered in diffusers' TransformerBlockRegistry; "
            "register it (which outputs are hidden/encoder hidden states) before applying a cache"
        ) from None


def input_streams(md: TransformerBlockMetadata, args, kwargs) -> tuple:
    """The block call's (hidden_states, encoder_hidden_states or None)."""
    hidden = md._get_parameter_from_args_kwargs(md.hidden_states_argument_name, args, kwargs)
    encoder = None
    if md.return_encoder_hidden_states_index is not None:
        encoder = md._get_parameter_from_args_kwargs(md.encoder_hidden_states_argument_name, args, kwargs)
    return hidden, encoder


def output_streams(md: TransformerBlockMetadata, output) -> tuple:
    """The block output's (hidden_states, encoder_hidden_states or None)."""
    if not isinstance(output, (tuple, list)):
        return output, None
    encoder = None if md.return_encoder_hidden_states_index is None else output[md.return_encoder_hidden_states_index]
    return output[md.return_hidden_states_index], encoder


def pack_output(md: TransformerBlockMetadata, streams: tuple):
    """Streams -> what the block itself would return."""
    if md.return_encoder_hidden_states_index is None:
        return streams[0]
    packed = [None] * (max(md.return_hidden_states_index, md.return_encoder_hidden_states_index) + 1)
    packed[md.return_hidden_states_index] = streams[0]
    packed[md.return_encoder_hidden_states_index] = streams[1]
    return tuple(packed)

"""A transformer block's streams, read and written the way diffusers' `TransformerBlockRegistry` describes
the block: (hidden_states, encoder_hidden_states or None). Shared by the caches that skip blocks."""

from __future__ import annotations

import torch
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

from .errors import UserInputError


def block_metadata(block: torch.nn.Module) -> TransformerBlockMetadata:
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

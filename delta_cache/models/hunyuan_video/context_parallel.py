"""Multi-GPU (Ulysses) sampling for diffusers' HunyuanVideoTransformer3DModel, which ships no `_cp_plan`.

What differs from Wan2.1 (whose plan diffusers ships) is HunyuanVideo's joint attention: every block attends
over [video tokens; text tokens] with a key mask that hides the text padding. Both streams are split over the
ranks, so rank r holds [video_r; text_r], and Ulysses' all-to-all lays the keys out as
[video_0; text_0; video_1; text_1; ...]. diffusers' Ulysses attention all-gathers a mask whose length is the
local sequence into that same layout, but the transformer builds one mask over the whole [video; text]
sequence. `LocalKeyMaskHook` cuts each rank's part out of it ([video_r; text_r]) before every block, so the
gathered mask lines up with the gathered keys. The order of keys does not change attention (up to float
rounding in the softmax sums), and each query keeps its own place.

Ring attention is refused (config.RING_UNSUPPORTED says why). With Ulysses alone, the rank in diffusers'
flattened mesh is the process's rank.
"""

from __future__ import annotations

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

from ... import parallel
from ...errors import UserInputError
from ...parallel import ProcessGroup
from .config import RING_UNSUPPORTED

_MASK_HOOK = "hunyuan_video_local_key_mask"
_MASK_ARG = 3  # the blocks' forward(hidden_states, encoder_hidden_states, temb, attention_mask, ...)

# Split the video tokens, the text tokens and the video RoPE tables over the ranks on the way into the first
# double block; gather the video tokens after the output projection. The text refiner and the timestep and
# guidance embeddings run whole on every rank (they are small).
CP_PLAN = {
    "rope": {
        0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
        1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
    },
    "transformer_blocks.0": {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    },
    "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
}


def local_key_mask(mask: torch.Tensor, video_len: int, text_len: int, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s [video; text] part of a key mask over the whole [video; text] sequence (last dimension).

    `video_len` and `text_len` are the local lengths. A mask that already has the local length is returned
    as it is."""
    if mask.shape[-1] == video_len + text_len:
        return mask
    full_video = video_len * world_size
    if mask.shape[-1] != full_video + text_len * world_size:
        raise ValueError(f"attention mask of length {mask.shape[-1]} does not fit {world_size} ranks of "
                         f"{video_len} video and {text_len} text tokens")
    video, text = mask[..., :full_video], mask[..., full_video:]
    return torch.cat([video[..., rank * video_len:(rank + 1) * video_len],
                      text[..., rank * text_len:(rank + 1) * text_len]], dim=-1)


class LocalKeyMaskHook(ModelHook):
    """Before a block runs, replaces its whole-sequence key mask by this rank's part (module docstring)."""

    def __init__(self, rank: int, world_size: int) -> None:
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def pre_forward(self, module, *args, **kwargs):
        args = list(args)

        def argument(name: str, index: int):
            return kwargs[name] if name in kwargs else (args[index] if len(args) > index else None)

        mask = argument("attention_mask", _MASK_ARG)
        if mask is not None:
            local = local_key_mask(mask, argument("hidden_states", 0).shape[1],
                                   argument("encoder_hidden_states", 1).shape[1], self.rank, self.world_size)
            if "attention_mask" in kwargs:
                kwargs["attention_mask"] = local
            else:
                args[_MASK_ARG] = local
        return tuple(args), kwargs


def enable_context_parallel(transformer: torch.nn.Module, group: ProcessGroup) -> None:
    """Ulysses context parallelism on a HunyuanVideo transformer (after the cache hooks are attached)."""
    if group.ring_degree != 1:
        raise UserInputError(RING_UNSUPPORTED)
    for block in (*transformer.transformer_blocks, *transformer.single_transformer_blocks):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            LocalKeyMaskHook(group.rank, group.world_size), _MASK_HOOK)
    # The split hooks are registered last, so they run first: the first block's mask hook sees split streams.
    parallel.enable_context_parallel(transformer, group, cp_plan=CP_PLAN)

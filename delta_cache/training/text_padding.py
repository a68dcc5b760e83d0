"""Exact and cheaper cross-attention over Wan's zero-padded text, for training.

WanPipeline pads every prompt's T5 output with zero rows to 512 tokens, and Wan's cross-attention attends
to all of them (no mask). The transformer's text embedder maps every zero row to one and the same vector,
so the padding adds 512 - L identical keys and values. A softmax over n identical keys equals one such key
whose logit is raised by log n. Training therefore keeps the batch's longest prompt plus one padding
column and adds log(padding rows / padding columns kept) to the kept padding columns' logits: the video
tokens' output is the 512-token one (tested), while a 20-token prompt costs 21 keys instead of 512. The
text encoder need not run on the padding either: T5 masks it, so its output rows for the prompt are the
same at any padded length (train_tiny encodes up to the batch's longest prompt).

Exact in fp32; under bf16 autocast the bias is rounded to bf16 like every other logit (SDPA wants the
mask in the query's dtype). Sampling is untouched: the front ends still feed 512 padded tokens to the stock
processors.
"""

from __future__ import annotations

import contextlib

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor


class CompactTextAttnProcessor(WanAttnProcessor):
    """WanAttnProcessor with an additive key bias (B, 1, 1, keys) for the compacted padding columns."""

    def __init__(self):
        super().__init__()
        self.bias: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if attention_mask is None and self.bias is not None:
            # SDPA wants a float mask in the query's dtype (bf16 under autocast).
            dtype = torch.get_autocast_dtype(hidden_states.device.type) \
                if torch.is_autocast_enabled(hidden_states.device.type) else hidden_states.dtype
            attention_mask = self.bias.to(hidden_states.device, dtype)
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


def text_lengths(embeds: torch.Tensor) -> torch.Tensor:
    """(B,) real tokens per prompt: everything after the last non-zero row is the pipeline's zero padding."""
    nonzero = embeds.detach().ne(0).any(dim=-1)  # (B, S)
    positions = torch.arange(1, embeds.shape[1] + 1, device=embeds.device)
    return (nonzero * positions).amax(dim=1)


def compact_text(embeds: torch.Tensor, min_columns: int = 1,
                 full_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds cut after the longest prompt plus one padding column, the matching (B, 1, 1, keys) key bias).

    `min_columns` keeps at least that many columns, so that most batches have one shape (torch.compile).
    `full_length` is the padded length sampling uses (default: embeds' own); embeds may come shorter, cut
    after the longest prompt, and are then zero-padded to the kept width.
    """
    full = full_length or embeds.shape[1]
    lengths = text_lengths(embeds)
    keep = min(full, max(min_columns, int(lengths.max()) + 1))
    if embeds.shape[1] < keep:
        embeds = torch.nn.functional.pad(embeds, (0, 0, 0, keep - embeds.shape[1]))
    columns = torch.arange(keep, device=embeds.device).view(1, -1)
    kept_padding = (keep - lengths).clamp_min(1).view(-1, 1)
    all_padding = (full - lengths).clamp_min(1).view(-1, 1)
    bias = torch.where(columns >= lengths.view(-1, 1), torch.log(all_padding / kept_padding), 0.0)
    return embeds[:, :keep], bias.float().view(len(embeds), 1, 1, keep)


@contextlib.contextmanager
def compact_text_attention(transformer, min_columns: int = 1, full_length: int | None = None):
    """Within the block, `prepare(embeds)` returns compacted text embeddings and arms every block's
    cross-attention with the matching bias; the stock processors are restored afterwards."""
    originals = [block.attn2.processor for block in transformer.blocks]
    processors = [CompactTextAttnProcessor() for _ in originals]
    for block, processor in zip(transformer.blocks, processors):
        block.attn2.set_processor(processor)

    def prepare(embeds: torch.Tensor) -> torch.Tensor:
        compact, bias = compact_text(embeds, min_columns, full_length)
        for processor in processors:
            processor.bias = bias
        return compact

    try:
        yield prepare
    finally:
        for block, processor in zip(transformer.blocks, originals):
            block.attn2.set_processor(processor)


"""Random-weight tiny HunyuanVideo checkpoints, written in the upstream `ckpts/` layout or the diffusers
layout, for offline tests and demos. Same seed -> identical weights in both layouts.

The shapes follow the real design (16 latent channels, patch (1, 2, 2), 8x spatial / 4x temporal VAE,
two refiner blocks, guidance embedding, Llama + CLIP text encoders) at tiny widths.

The Llama tokenizer splits text like Llama-3 (same pre-tokenizer pattern) and knows every word of
HunyuanVideo's prompt template, so the template prefix is exactly 95 tokens (with BOS), as with the real
tokenizer: the pipeline's `crop_start` 95 then cuts exactly at the user prompt. Other words fall back to
byte pieces (WordPiece over byte-level characters), so every prompt still gets distinct tokens.
`extra_words` (the trained tiny models pass their prompt grammar) become one token each, in both
tokenizers; without them the tokenizers are exactly those of the random checkpoints.

`write_upstream` saves already built components (random or trained) in the upstream `ckpts/` layout.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLHunyuanVideo,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

from ...errors import UserInputError
from .checkpoint import (
    DIT_WEIGHT,
    TEXT_ENCODER_2_DIR,
    TEXT_ENCODER_DIR,
    UPSTREAM_VAE_BLOCKS,
    VAE_CONFIG,
    VAE_DIRS,
    VAE_WEIGHTS,
    fp8_map_path,
)
from .keys import convert_to_upstream, quantize_fp8, rope_axes_dim

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>",
]
CLIP_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def llama_style_tokenizer(extra_words: Iterable[str] = ()) -> PreTrainedTokenizerFast:
    """A tiny Llama-3-like tokenizer (see the module docstring), right padding. Each of `extra_words` is one
    token, alone or after a space (Llama-3 pieces carry the space)."""
    split = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    template_text = re.split("|".join(map(re.escape, LLAMA_SPECIAL)), DEFAULT_PROMPT_TEMPLATE["template"])
    template_text += [text for word in extra_words for text in (word, " " + word)]
    words = sorted({word for text in template_text for word, _ in split.pre_tokenize_str(text)})
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = LLAMA_SPECIAL + alphabet + ["##" + c for c in alphabet] + words
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}

    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="<pad>", max_input_chars_per_word=1000))
    tokenizer.pre_tokenizer = split
    tokenizer.decoder = decoders.Sequence([decoders.Replace("##", ""), decoders.ByteLevel()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", 0)]
    )
    tokenizer.add_special_tokens(LLAMA_SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
        pad_token="<pad>", padding_side="right",
    )


def clip_tokenizer(extra_words: Iterable[str] = ()) -> CLIPTokenizer:
    """CLIP's own tokenizer class with a byte-level vocabulary: one token per character, except that each of
    `extra_words` (lowercase letters) is one token, through BPE merges learned on those words."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = _learn_merges(extra_words)
    tokens = CLIP_SPECIAL + alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(dict.fromkeys(tokens))}, merges=merges)


def _learn_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE training on `words` (CLIP's end-of-word suffix) until each word is a single symbol.

    Applying learned merges in their order reproduces the learned segmentation, so every word encodes as
    one token; the most frequent pair goes first (ties: the smallest pair), which keeps it deterministic.
    """
    pieces = {word: [*word[:-1], word[-1] + "</w>"] for word in dict.fromkeys(words) if word}
    merges = []
    while True:
        counts = Counter(pair for symbols in pieces.values() for pair in zip(symbols, symbols[1:]))
        if not counts:
            return merges
        best = max(sorted(counts), key=counts.__getitem__)
        merges.append(best)
        for word, symbols in pieces.items():
            merged, i = [], 0
            while i < len(symbols):
                if tuple(symbols[i:i + 2]) == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            pieces[word] = merged


def tiny_llama(tokenizer, hidden_size: int) -> LlamaModel:
    """A random 3-layer Llama text encoder (the pipeline reads hidden_states[-3])."""
    return LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=3,  # the pipeline reads hidden_states[-3]
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))


def tiny_clip(tokenizer_2, hidden_size: int) -> CLIPTextModel:
    """A random 2-layer CLIP text model (its pooled output feeds the transformer's pooled projection)."""
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
        bos_token_id=tokenizer_2.bos_token_id, eos_token_id=tokenizer_2.eos_token_id,  # CLIP pools at the eos
        pad_token_id=tokenizer_2.pad_token_id,
    ))


def build_tiny_components(
    *,
    num_layers: int = 20,
    num_single_layers: int = 40,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    text_embed_dim: int = 48,
    pooled_projection_dim: int = 24,
    seed: int = 0,
) -> dict:
    """In-memory tiny models, keyed like HunyuanVideoPipeline's components (no scheduler)."""
    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16,
        num_attention_heads=num_attention_heads, attention_head_dim=attention_head_dim,
        num_layers=num_layers, num_single_layers=num_single_layers, num_refiner_layers=2,
        patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=text_embed_dim, pooled_projection_dim=pooled_projection_dim,
        rope_axes_dim=rope_axes_dim(attention_head_dim),
    )
    # The released transformer is bf16. nn.Module.to: ModelMixin.to warns on every dtype cast.
    torch.nn.Module.to(transformer, torch.bfloat16)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=16, block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
    )
    tokenizer, tokenizer_2 = llama_style_tokenizer(), clip_tokenizer()
    text_encoder = tiny_llama(tokenizer, text_embed_dim)
    text_encoder_2 = tiny_clip(tokenizer_2, pooled_projection_dim)
    return dict(transformer=transformer.eval(), vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                text_encoder_2=text_encoder_2.eval(), tokenizer_2=tokenizer_2)


def upstream_vae_config(vae: AutoencoderKLHunyuanVideo) -> dict:
    """AutoencoderKLHunyuanVideo config -> the upstream AutoencoderKLCausal3D config.json format."""
    to_upstream = {diffusers: upstream for upstream, diffusers in UPSTREAM_VAE_BLOCKS.items()}
    c = vae.config
    return {
        "_class_name": "AutoencoderKLCausal3D",
        "act_fn": c.act_fn,
        "block_out_channels": list(c.block_out_channels),
        "down_block_types": [to_upstream[b] for b in c.down_block_types],
        "in_channels": c.in_channels,
        "latent_channels": c.latent_channels,
        "layers_per_block": c.layers_per_block,
        "norm_num_groups": c.norm_num_groups,
        "out_channels": c.out_channels,
        "sample_size": 64,  # tiling hints of the upstream class; unused by diffusers
        "sample_tsize": 16,
        "up_block_types": [to_upstream[b] for b in c.up_block_types],
        "scaling_factor": c.scaling_factor,
        "time_compression_ratio": c.temporal_compression_ratio,
        "mid_block_add_attention": c.mid_block_add_attention,
    }


def write_tiny_checkpoint(
    out_dir,
    *,
    layout: str = "upstream",
    num_layers: int = 20,
    num_single_layers: int = 40,
    seed: int = 0,
    fp8: bool = False,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    text_embed_dim: int = 48,
    pooled_projection_dim: int = 24,
) -> Path:
    """Write a random tiny checkpoint into `out_dir` (created; must be empty) and return it.

    upstream: `out_dir` is the model base (MODEL_BASE); the transformer is at `out_dir/DIT_WEIGHT`, and
    with `fp8=True` also `..._fp8.pt` + `..._fp8_map.pt`. diffusers: `out_dir` is a
    HunyuanVideoPipeline.save_pretrained folder.
    """
    if layout not in ("upstream", "diffusers"):
        raise UserInputError(f"tiny HunyuanVideo checkpoint: layout must be 'upstream' or 'diffusers', not {layout!r}")
    if fp8 and layout != "upstream":
        raise UserInputError("tiny HunyuanVideo checkpoint: fp8 weights exist only in the upstream layout")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserInputError(f"tiny HunyuanVideo checkpoint: output folder {out_dir} exists and is not empty")
    parts = build_tiny_components(
        num_layers=num_layers, num_single_layers=num_single_layers, num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim, text_embed_dim=text_embed_dim,
        pooled_projection_dim=pooled_projection_dim, seed=seed,
    )
    if layout == "diffusers":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
        HunyuanVideoPipeline(scheduler=scheduler, **parts).save_pretrained(out_dir)
        return out_dir

    write_upstream(out_dir, parts, fp8=fp8)
    return out_dir


def write_upstream(out_dir, parts: dict, *, fp8: bool = False) -> None:
    """Save components (keyed like HunyuanVideoPipeline's) in the upstream layout, `out_dir` being the model
    base; every tensor keeps its dtype (the released transformer is bf16)."""
    out_dir = Path(out_dir)
    dit_weight = out_dir / DIT_WEIGHT
    dit_weight.parent.mkdir(parents=True, exist_ok=True)
    state = convert_to_upstream(parts["transformer"].state_dict())
    torch.save({"module": state}, dit_weight)
    if fp8:
        fp8_weight = dit_weight.with_name(dit_weight.stem + "_fp8.pt")
        quantized, scales = quantize_fp8(state)
        torch.save({"module": quantized}, fp8_weight)
        torch.save(scales, fp8_map_path(fp8_weight))

    vae_dir = out_dir / VAE_DIRS["884-16c-hy"]
    vae_dir.mkdir(parents=True, exist_ok=True)
    (vae_dir / VAE_CONFIG).write_text(json.dumps(upstream_vae_config(parts["vae"]), indent=2))
    torch.save(parts["vae"].state_dict(), vae_dir / VAE_WEIGHTS)

    for folder, model, tokenizer in ((TEXT_ENCODER_DIR, parts["text_encoder"], parts["tokenizer"]),
                                     (TEXT_ENCODER_2_DIR, parts["text_encoder_2"], parts["tokenizer_2"])):
        model.save_pretrained(out_dir / folder)
        tokenizer.save_pretrained(out_dir / folder)

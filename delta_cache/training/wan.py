"""The Wan2.1 family for training: tiny modules in the upstream-compatible shapes, prompt encoding as at
sampling, and the upstream writer (`FAMILY`; the objectives are in flow_matching.py)."""

from __future__ import annotations

import string
from pathlib import Path

import torch

from ..models.wan.tasks import NEGATIVE_PROMPT
from ..synthetic.prompts import vocabulary
from .family import TrainingFamily
from .flow_matching import (
    decode_unclamped,
    flow_matching_loss,
    fold_latent_statistics,
    normalise_latents,
    vae_loss,
)

TEXT_LENGTH = 512  # WanPipeline pads every prompt's T5 output with zero rows to this length
# Compacted text keeps this many columns at least: every grammar prompt and the negative prompt fit, so the
# batches share one shape (torch.compile compiles once).
TEXT_COLUMNS = 64


def build_tokenizer():
    """T5-style unigram tokenizer: each grammar word is one piece; other text falls back to characters."""
    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [("▁" + w, -2.0) for w in vocabulary()] + [("▁", -3.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=specials + pieces, extra_ids=0)


def build_modules(args, init_seed: int) -> dict:
    """Fresh modules from `init_seed`, shaped by the flags in `args` (num_layers, num_heads, head_dim, ffn_dim,
    text_dim, vae_base_dim): the upstream-compatible shapes of delta_cache/models/wan/tiny.py."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=args.text_dim, d_kv=8, d_ff=2 * args.text_dim, num_layers=2,
            num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu", dropout_rate=0.0)).eval().requires_grad_(False)
        # The diffusers VAE converter hard-codes 4 levels with 2 residual blocks: only the width shrinks.
        vae = AutoencoderKLWan(base_dim=args.vae_base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                               temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=args.num_heads, attention_head_dim=args.head_dim,
            in_channels=16, out_channels=16, text_dim=args.text_dim, freq_dim=256, ffn_dim=args.ffn_dim,
            num_layers=args.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            rope_max_seq_len=1024)
        # Every block starts as the identity and the output as zero (as in DiT's adaLN-Zero): a deep, narrow
        # stack then trains stably from the first step.
        for block in transformer.blocks:
            for layer in (block.attn1.to_out[0], block.attn2.to_out[0], block.ffn.net[2]):
                torch.nn.init.zeros_(layer.weight)
                torch.nn.init.zeros_(layer.bias)
        torch.nn.init.zeros_(transformer.proj_out.weight)
        torch.nn.init.zeros_(transformer.proj_out.bias)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer)


def text_pipeline(modules: dict, device: torch.device, args=None):
    """A WanPipeline without transformer, for prompt encoding exactly as sampling does it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    modules["text_encoder"].to(device)
    return WanPipeline(tokenizer=modules["tokenizer"], text_encoder=modules["text_encoder"], vae=modules["vae"],
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0))


def encode_prompts(pipe, prompts: list[str], device: torch.device, grad: bool = False,
                   trim: bool = False) -> torch.Tensor:
    """`WanPipeline.encode_prompt` as at sampling: (B, 512, D), zero rows after each prompt. With `trim`
    only up to the batch's longest prompt: T5 masks the padding, so the prompt rows are the same, and a
    trained encoder's forward and backward cost 20 rows instead of 512."""
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    length = TEXT_LENGTH
    if trim:  # tokenised exactly as encode_prompt tokenises (after its own clean-up)
        length = max(len(ids) for ids in pipe.tokenizer([prompt_clean(p) for p in prompts]).input_ids)
    with torch.set_grad_enabled(grad):
        embeds, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=length,
                                       device=device, dtype=torch.float32)
    return embeds


def encode_training_prompts(pipe, prompts: list[str], device: torch.device, grad: bool = False) -> torch.Tensor:
    """`encode_prompts` up to the batch's longest prompt (`text_attention` accounts for the rest)."""
    return encode_prompts(pipe, prompts, device, grad=grad, trim=True)


def text_attention(transformer):
    """Cross-attention over the batch's text without most of the 512 zero-padding rows (exact)."""
    from .text_padding import compact_text_attention

    return compact_text_attention(transformer, TEXT_COLUMNS, full_length=TEXT_LENGTH)


def encode_posterior_means(vae, videos: torch.Tensor) -> torch.Tensor:
    return vae.encode(videos).latent_dist.mean


def to_half(module: torch.nn.Module) -> torch.nn.Module:
    """fp16 in place, except the modules the model class keeps in fp32 (norms, modulation, time embedding)."""
    keep = set(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, param in module.named_parameters():
        if param.is_floating_point() and not keep & set(name.split(".")):
            param.data = param.data.to(torch.float16)
    return module


def save(modules: dict, out: Path) -> None:
    """EMA weights in fp16 (the loaders cast to the run dtype), upstream Wan2.1 layout."""
    from ..models.wan import tiny

    half = {name: to_half(modules[name].to("cpu")) for name in ("transformer", "vae", "text_encoder")}
    out.mkdir(parents=True, exist_ok=True)
    tiny.write_upstream(out, {**half, "tokenizer": modules["tokenizer"]}, shards=1)


def load(folder: Path):
    from ..models.wan.checkpoint import load_wan_components

    return load_wan_components(folder, task="t2v-1.3B", dtype=torch.float32)


def sampling_info(modules: dict) -> dict:
    return {}


FAMILY = TrainingFamily(
    name="wan",
    components=("transformer", "vae", "text_encoder"),
    defaults=dict(num_layers=40, num_single_layers=None, num_heads=4, head_dim=24, ffn_dim=384, text_dim=32,
                  vae_base_dim=12, shift=5.0),
    build=build_modules, save=save, load=load, sampling_info=sampling_info, vae_loss=vae_loss, encode=encode_posterior_means, decode=decode_unclamped,
    normalise=normalise_latents, fold=fold_latent_statistics, text_pipeline=text_pipeline,
    encode_prompts=encode_training_prompts, text_attention=text_attention, loss=flow_matching_loss,
    negative_prompt=NEGATIVE_PROMPT,
)

"""Tiny diffusers video pipelines of the families the front ends do not build (random weights, in memory):
CogVideoX (text- and image-to-video), LTX-Video, Mochi, Wan 2.2's two experts and its TI2V-5B's per-token
timesteps, SkyReels-V2, HunyuanVideo 1.5. Each builder returns (pipe, block list name, depth, the
pipeline's keyword arguments for a short run with classifier-free guidance)."""

from __future__ import annotations

import copy

import torch
from transformers import T5Config, T5EncoderModel

from tiny_wan import tiny_tokenizer, tiny_wan_pipeline

DEPTH = 6
PROMPT = "a red square moves left"


def _text_encoder(tokenizer, width: int = 32) -> T5EncoderModel:
    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()


def cogvideox(seed: int = 0, version: str = "1.0"):
    """CogVideoX 1.0, or 1.5 (two latent frames per token, rotary position embeddings)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    version_options = (dict(attention_head_dim=8) if version == "1.0" else
                       dict(attention_head_dim=16, patch_size_t=2, use_rotary_positional_embeddings=True,
                            use_learned_positional_embeddings=False))
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, in_channels=4, out_channels=4, time_embed_dim=2, text_embed_dim=32,
        num_layers=DEPTH, sample_width=8, sample_height=8, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=226, **version_options).eval()  # (the pipeline's default text length, as released)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4).eval()
    tokenizer = tiny_tokenizer()
    pipe = CogVideoXPipeline(tokenizer=tokenizer, text_encoder=_text_encoder(tokenizer), vae=vae,
                             transformer=transformer, scheduler=CogVideoXDDIMScheduler())
    kwargs = dict(negative_prompt="blurry", height=64, width=64, num_frames=9, guidance_scale=6.0)
    return pipe, "transformer_blocks", DEPTH, kwargs


def cogvideox15(seed: int = 0):
    return cogvideox(seed, version="1.5")


def cogvideox_i2v(seed: int = 0):
    """CogVideoXImageToVideoPipeline: the image's latents concatenated to the video's on the channels (twice the
    transformer's input channels), rotary position embeddings, [negative prompt, prompt] in one call."""
    import numpy as np
    from diffusers import CogVideoXImageToVideoPipeline, CogVideoXTransformer3DModel
    from PIL import Image

    base, list_name, depth, kwargs = cogvideox(seed)
    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=DEPTH, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=226, use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=False).eval()
    pipe = CogVideoXImageToVideoPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                                         transformer=transformer, scheduler=base.scheduler)
    image = Image.fromarray((np.random.RandomState(seed).rand(64, 64, 3) * 255).astype(np.uint8))
    return pipe, list_name, depth, {**kwargs, "image": image}


def ltx_video(seed: int = 0):
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=DEPTH, caption_channels=32).eval()
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False).eval()
    vae.use_framewise_encoding = vae.use_framewise_decoding = False
    tokenizer = tiny_tokenizer()
    pipe = LTXPipeline(tokenizer=tokenizer, text_encoder=_text_encoder(tokenizer), vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler())
    kwargs = dict(negative_prompt="blurry", height=32, width=32, num_frames=9, guidance_scale=3.0,
                  max_sequence_length=16)
    return pipe, "transformer_blocks", DEPTH, kwargs


def mochi(seed: int = 0):
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiPipeline, MochiTransformer3DModel

    torch.manual_seed(seed)
    transformer = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=DEPTH, pooled_projection_dim=16,
        in_channels=12, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=4,
        activation_fn="swiglu", max_sequence_length=16).eval()
    vae = AutoencoderKLMochi(latent_channels=12, out_channels=3, encoder_block_out_channels=(32, 32, 32, 32),
                             decoder_block_out_channels=(32, 32, 32, 32), layers_per_block=(1, 1, 1, 1, 1)).eval()
    tokenizer = tiny_tokenizer()
    pipe = MochiPipeline(tokenizer=tokenizer, text_encoder=_text_encoder(tokenizer), vae=vae, transformer=transformer,
                         scheduler=FlowMatchEulerDiscreteScheduler())
    kwargs = dict(negative_prompt="blurry", height=64, width=64, num_frames=13, guidance_scale=4.5,
                  max_sequence_length=16)
    return pipe, "transformer_blocks", DEPTH, kwargs


def wan(seed: int = 0):
    pipe = tiny_wan_pipeline(num_layers=DEPTH, seed=seed)
    kwargs = dict(negative_prompt="blurry", height=64, width=64, num_frames=9, guidance_scale=5.0,
                  max_sequence_length=16)
    return pipe, "blocks", DEPTH, kwargs


def wan22(seed: int = 0):
    """WanPipeline with a second expert (`transformer_2`) for the low-noise steps, as Wan 2.2 A14B."""
    from diffusers import WanPipeline

    base = tiny_wan_pipeline(num_layers=DEPTH, seed=seed)
    low_noise = copy.deepcopy(base.transformer)
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in low_noise.parameters():
            parameter += 0.05 * torch.randn_like(parameter)
    pipe = WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                       transformer=base.transformer, transformer_2=low_noise, scheduler=base.scheduler,
                       boundary_ratio=0.875)
    kwargs = dict(negative_prompt="blurry", height=32, width=32, num_frames=5, guidance_scale=5.0,
                  guidance_scale_2=3.0, max_sequence_length=16)
    return pipe, "blocks", DEPTH, kwargs


def wan22_ti2v(seed: int = 0):
    """WanPipeline with `expand_timesteps`, as Wan 2.2 TI2V-5B: one transformer, a timestep per video token."""
    from diffusers import WanPipeline

    base = tiny_wan_pipeline(num_layers=DEPTH, seed=seed)
    pipe = WanPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                       transformer=base.transformer, scheduler=base.scheduler, expand_timesteps=True)
    kwargs = dict(negative_prompt="blurry", height=64, width=64, num_frames=9, guidance_scale=5.0,
                  max_sequence_length=16)
    return pipe, "blocks", DEPTH, kwargs


def skyreels_v2(seed: int = 0):
    """SkyReelsV2Pipeline: a Wan-architecture transformer whose blocks diffusers' registry does not describe
    (the cache registers them), prompt and negative prompt in named branches without a step index."""
    from diffusers import SkyReelsV2Pipeline, SkyReelsV2Transformer3DModel

    base = tiny_wan_pipeline(num_layers=DEPTH, seed=seed)
    torch.manual_seed(seed)
    transformer = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=DEPTH, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    pipe = SkyReelsV2Pipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                              transformer=transformer, scheduler=base.scheduler)
    kwargs = dict(negative_prompt="blurry", height=64, width=64, num_frames=9, guidance_scale=5.0,
                  max_sequence_length=16)
    return pipe, "blocks", DEPTH, kwargs


def hunyuan_video15(seed: int = 0):
    """HunyuanVideo15Pipeline: its blocks are not in diffusers' registry (the cache registers them), its guider
    names the calls pred_cond / pred_uncond, it takes no step callbacks. The Qwen2.5-VL text model reads the
    chat-formatted prompt (padded to its fixed 1108 tokens) through the tiny word tokenizer."""
    from diffusers import (AutoencoderKLHunyuanVideo15, ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler,
                           HunyuanVideo15Pipeline, HunyuanVideo15Transformer3DModel)
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }} {% endfor %}"
    text_encoder = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=None, eos_token_id=None,
        rope_scaling={"type": "default", "mrope_section": [1, 1, 2]})).eval()
    glyph_encoder = T5EncoderModel(T5Config(vocab_size=384, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                                            relative_attention_num_buckets=8)).eval()
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=DEPTH,
        num_refiner_layers=1, text_embed_dim=32, text_embed_2_dim=16, image_embed_dim=24, rope_axes_dim=(4, 6, 6),
        target_size=64, task_type="t2v").eval()
    vae = AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8,) * 5, layers_per_block=1,
                                      spatial_compression_ratio=16, temporal_compression_ratio=4).eval()
    pipe = HunyuanVideo15Pipeline(text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
                                  scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=glyph_encoder,
                                  tokenizer_2=ByT5Tokenizer(), guider=ClassifierFreeGuidance(guidance_scale=6.0))
    kwargs = dict(negative_prompt="blurry", height=64, width=64, num_frames=9)
    return pipe, "transformer_blocks", DEPTH, kwargs


def hunyuan_video(seed: int = 0):
    """HunyuanVideoPipeline with the tiny components of the front end's tests (guidance is embedded: one call
    a step, the prompt's)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    from delta_cache.models.hunyuan_video.tiny import build_tiny_components

    parts = build_tiny_components(num_layers=3, num_single_layers=3, seed=seed)
    parts["transformer"] = parts["transformer"].float()
    pipe = HunyuanVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), **parts)
    kwargs = dict(height=64, width=64, num_frames=9, guidance_scale=6.0)
    return pipe, "transformer_blocks", 3, kwargs


def wan_video_to_video(seed: int = 0):
    """WanVideoToVideoPipeline: calls the transformer for the prompt and then the negative prompt without a
    cache_context (as HunyuanVideo image-to-video does)."""
    import numpy as np
    from diffusers import WanVideoToVideoPipeline
    from PIL import Image

    base = tiny_wan_pipeline(num_layers=DEPTH, seed=seed)
    pipe = WanVideoToVideoPipeline(**{name: getattr(base, name) for name in
                                      ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")})
    frames = [Image.fromarray(np.full((64, 64, 3), 25 * i, dtype=np.uint8)) for i in range(9)]
    kwargs = dict(video=frames, strength=1.0, negative_prompt="blurry", height=64, width=64, guidance_scale=5.0,
                  max_sequence_length=16)
    return pipe, "blocks", DEPTH, kwargs

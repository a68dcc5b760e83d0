"""A tiny Wan2.1 pipeline built in memory (random weights), for tests of the cache core."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel


def tiny_tokenizer() -> T5TokenizerFast:
    words = "a cat dog red blue green square circle moves left right up down on the grass fast slow".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"▁{w}", -1.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5TokenizerFast(vocab=vocab, unk_id=2, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0)


def tiny_wan_pipeline(num_layers: int = 4, seed: int = 0) -> WanPipeline:
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=num_layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    tokenizer = tiny_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )).eval()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=scheduler)


def run(pipe: WanPipeline, steps: int = 6, seed: int = 0, **kwargs):
    return pipe(prompt="a red square moves left", negative_prompt="blurry", height=32, width=32, num_frames=5,
                num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator().manual_seed(seed),
                output_type="np", max_sequence_length=16, **kwargs).frames[0]

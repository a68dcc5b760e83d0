"""Write random-weight tiny Wan2.1 checkpoints (upstream or diffusers layout) for offline tests and demos.

The modules are built once from the seed and then saved in the requested layout, so the same seed
gives the same weights in every layout. The whole pipeline runs on CPU in seconds.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel,
                       WanVACETransformer3DModel)
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModel, T5Tokenizer, UMT5Config, UMT5EncoderModel

from ...errors import UserInputError
from . import keys

LAYOUTS = ("upstream", "diffusers")

# Common English words as whole pieces, so that prompts give short, word-like token sequences.
_WORDS = ("a the of and in on at with to is are video photo cat dog man woman walking running street city "
          "night day light sky water sea beach forest tree flower car red blue green white black small big "
          "style background camera slow motion close up scene high quality detailed").split()


def build_tiny_tokenizer() -> T5Tokenizer:
    """A T5-style unigram tokenizer (pad 0, eos 1, unk 2) that tokenizes any text without errors."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces = [("▁" + w, -2.0) for w in _WORDS] + [("▁", -3.0)]
    pieces += [(c, -5.0) for c in string.ascii_letters + string.digits + string.punctuation]
    return T5Tokenizer(vocab=specials + pieces, extra_ids=0)


def build_tiny_modules(
    *,
    num_layers: int = 40,
    seed: int = 0,
    num_heads: int = 2,
    head_dim: int = 12,
    ffn_dim: int = 32,
    text_dim: int = 32,
    vae_base_dim: int = 2,
    i2v: bool = False,
    flf2v: bool = False,
    vace: bool = False,
) -> dict:
    """The tiny pipeline components (diffusers/transformers modules) for `seed`.

    i2v: the image-to-video variant (36 input channels, CLIP image encoder); flf2v: the first-last-frame one
    (the same, plus the position embedding over both frames' CLIP tokens); vace: WanVACETransformer3DModel,
    a control block for every fifth main block (as the 14B model; upstream's default is every second)."""
    if num_layers < 1 or num_heads < 1 or ffn_dim < 1 or text_dim < 1 or vae_base_dim < 1:
        raise UserInputError("tiny Wan checkpoint: num_layers, num_heads, ffn_dim, text_dim, vae_base_dim must be >= 1")
    if head_dim % 2 or head_dim < 6:  # rope splits head_dim into non-empty t/h/w parts of even sizes
        raise UserInputError(f"tiny Wan checkpoint: head_dim must be even and >= 6, got {head_dim}")
    if i2v + flf2v + vace > 1:
        raise UserInputError("tiny Wan checkpoint: i2v, flf2v and vace are three variants; choose one")
    i2v = i2v or flf2v  # from here on: "image-conditioned"
    clip_size, clip_patch = 32, 8
    tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # The image encoder's width is a multiple of 80: the upstream layout implies ViT-H/14's 80-wide heads.
        image_dim = 2 * keys.CLIP_HEAD_DIM if i2v else None
        transformer_config = dict(
            patch_size=(1, 2, 2), num_attention_heads=num_heads, attention_head_dim=head_dim,
            in_channels=36 if i2v else 16, out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=ffn_dim,
            num_layers=num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
            image_dim=image_dim, added_kv_proj_dim=num_heads * head_dim if i2v else None, rope_max_seq_len=1024,
            # flf2v: one position per CLIP token (class token + patches) of the first and the last frame
            pos_embed_seq_len=2 * ((clip_size // clip_patch) ** 2 + 1) if flf2v else None)
        if vace:  # control input: inactive + reactive latents (2 x 16) and the 8 x 8 mask pixels of a latent pixel
            transformer_config.update(vace_layers=list(range(0, num_layers, 5)), vace_in_channels=96)
        modules = dict(
            tokenizer=tokenizer,
            transformer=(WanVACETransformer3DModel if vace else WanTransformer3DModel)(**transformer_config),
            # The diffusers VAE converter hard-codes 4 levels with 2 residual blocks: only the width shrinks.
            vae=AutoencoderKLWan(base_dim=vae_base_dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                 temperal_downsample=[False, True, True]),
            text_encoder=UMT5EncoderModel(UMT5Config(
                vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=2 * text_dim, num_layers=2, num_heads=4,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", dropout_rate=0.0)),
        )
        if i2v:
            modules["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
                hidden_size=image_dim, intermediate_size=2 * image_dim, num_hidden_layers=2,
                num_attention_heads=image_dim // keys.CLIP_HEAD_DIM, image_size=clip_size, patch_size=clip_patch, hidden_act="gelu"))
        # Default inits leave many parameters at exactly 0 or 1; perturb all of them so that a
        # misplaced tensor (e.g. two swapped norms) changes the outputs.
        for name in ("transformer", "vae", "text_encoder", "image_encoder"):
            if name in modules:
                for param in modules[name].parameters():
                    param.data.add_(0.05 * torch.randn_like(param))
                modules[name].eval()
    if i2v:
        from transformers import CLIPImageProcessor  # warns without torchvision: import only when needed

        # Upstream's preprocessing (squash to the encoder's size, no crop), so both layouts see the same pixels.
        modules["image_processor"] = CLIPImageProcessor(size={"height": clip_size, "width": clip_size},
                                                        do_center_crop=False)
    return modules


def write_tiny_checkpoint(
    out_dir,
    *,
    layout: str = "upstream",
    num_layers: int = 40,
    seed: int = 0,
    shards: int = 1,
    num_heads: int = 2,
    head_dim: int = 12,
    ffn_dim: int = 32,
    text_dim: int = 32,
    vae_base_dim: int = 2,  # the random VAE's decoding dominates CPU runs at the upstream sizes (832x480)
    i2v: bool = False,
    flf2v: bool = False,
    vace: bool = False,
) -> Path:
    """Write a random-weight tiny Wan2.1 checkpoint into `out_dir` (created; must be empty) and return it.

    layout="upstream": the Wan-AI folder (config.json, transformer safetensors in upstream key names,
    sharded with an index when shards > 1, Wan2.1_VAE.pth, the T5 .pth, google/umt5-xxl/; i2v adds the
    open-clip .pth, whose text tower is a stand-in: Wan never reads it; flf2v too).
    layout="diffusers": a WanPipeline.save_pretrained folder (WanImageToVideoPipeline when i2v or flf2v,
    WanVACEPipeline when vace).
    """
    if layout not in LAYOUTS:
        raise UserInputError(f"tiny Wan checkpoint: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if shards < 1 or (shards > 1 and layout != "upstream"):
        raise UserInputError(f"tiny Wan checkpoint: shards must be >= 1 (and > 1 only for the upstream layout), got {shards}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserInputError(f"tiny Wan checkpoint: output folder {out} exists and is not empty")
    if shards > num_layers:
        raise UserInputError(f"tiny Wan checkpoint: shards ({shards}) must not exceed num_layers ({num_layers})")
    modules = build_tiny_modules(num_layers=num_layers, seed=seed, num_heads=num_heads, head_dim=head_dim,
                                 ffn_dim=ffn_dim, text_dim=text_dim, vae_base_dim=vae_base_dim, i2v=i2v,
                                 flf2v=flf2v, vace=vace)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "upstream":
        write_upstream(out, modules, shards)
    else:
        _write_diffusers(out, modules)
    return out


def _contiguous_copies(state_dict: dict) -> dict:
    # safetensors refuses shared or non-contiguous storage
    return {k: v.detach().contiguous().clone() for k, v in state_dict.items()}


def _upstream_config(transformer: WanTransformer3DModel) -> dict:
    """The upstream WanModel config.json (text_dim and patch_size are not in it upstream either)."""
    c = transformer.config
    vace = isinstance(transformer, WanVACETransformer3DModel)
    config = {
        "_class_name": "VaceWanModel" if vace else "WanModel",
        # (the released VACE configs say t2v: VACE is a t2v model with control blocks)
        "model_type": "flf2v" if c.pos_embed_seq_len else "i2v" if c.image_dim is not None else "t2v",
        "dim": c.num_attention_heads * c.attention_head_dim,
        "ffn_dim": c.ffn_dim,
        "freq_dim": c.freq_dim,
        "in_dim": c.in_channels,
        "num_heads": c.num_attention_heads,
        "num_layers": c.num_layers,
        "out_dim": c.out_channels,
        "text_len": 512,
        "eps": c.eps,
    }
    if vace:
        config.update(vace_layers=list(c.vace_layers), vace_in_dim=c.vace_in_channels)
    return config


def write_upstream(out: Path, modules: dict, shards: int) -> None:
    """Save modules (transformer, vae, text_encoder, tokenizer) in the upstream Wan2.1 layout."""
    transformer = modules["transformer"]
    (out / keys.CONFIG_FILE).write_text(json.dumps(_upstream_config(transformer), indent=2) + "\n")
    state_dict = _contiguous_copies(keys.transformer_to_upstream(transformer.state_dict()))
    if shards == 1:
        save_file(state_dict, out / keys.TRANSFORMER_FILE)
    else:
        _write_shards(out, state_dict, shards)
    torch.save(keys.vae_to_upstream(_contiguous_copies(modules["vae"].state_dict())), out / keys.VAE_FILE)
    torch.save(keys.t5_to_upstream(_contiguous_copies(modules["text_encoder"].state_dict())), out / keys.T5_FILE)
    modules["tokenizer"].save_pretrained(out / keys.TOKENIZER_DIR)
    if "image_encoder" in modules:
        torch.save(_upstream_clip_state_dict(modules["image_encoder"]), out / keys.CLIP_FILE)


def _upstream_clip_state_dict(image_encoder) -> dict:
    """The visual tower in upstream names, plus the parts of the open-clip file that Wan never reads."""
    state_dict = keys.clip_visual_to_upstream(image_encoder.state_dict())
    width = image_encoder.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    state_dict.update({  # the projection, the logit scale and a token of the text tower
        "visual.head": torch.randn(width, 16, generator=generator),
        "log_scale": torch.tensor(4.6052),
        "textual.token_embedding.weight": torch.randn(8, 16, generator=generator),
    })
    return _contiguous_copies(state_dict)


def _write_shards(out: Path, state_dict: dict, shards: int) -> None:
    """Split by block (a block never spans two shards, as in the upstream 14B files) and write the index."""
    names = list(state_dict)
    num_blocks = len({k.split(".")[1] for k in names if k.startswith("blocks.")})

    def shard_of(key: str) -> int:
        if key.startswith("blocks."):  # floor(i * shards / n) uses every shard when shards <= n
            return int(key.split(".")[1]) * shards // num_blocks
        return shards - 1 if key.startswith("head.") else 0

    weight_map = {}
    for shard in range(shards):
        file_name = keys.shard_file_name(shard + 1, shards)
        part = {k: state_dict[k] for k in names if shard_of(k) == shard}
        save_file(part, out / file_name)
        weight_map.update({k: file_name for k in part})
    total_size = sum(t.numel() * t.element_size() for t in state_dict.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out / keys.TRANSFORMER_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _write_diffusers(out: Path, modules: dict) -> None:
    # Real Wan2.1 diffusers repos ship this scheduler (generate.py rebuilds it from --sample_shift anyway).
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    if "image_encoder" in modules:
        from diffusers import WanImageToVideoPipeline  # imports CLIPImageProcessor, which warns without torchvision

        pipeline_cls = WanImageToVideoPipeline
    elif isinstance(modules["transformer"], WanVACETransformer3DModel):
        from diffusers import WanVACEPipeline

        pipeline_cls = WanVACEPipeline
    else:
        pipeline_cls = WanPipeline
    pipeline_cls(scheduler=scheduler, **modules).save_pretrained(out)

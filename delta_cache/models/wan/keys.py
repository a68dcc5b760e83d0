"""Names inside Wan2.1 checkpoints: upstream file names and upstream <-> diffusers/transformers key renames.

Loading uses diffusers' own converters (upstream -> diffusers) for the transformer and the VAE; the
inverse functions here exist so that tiny test checkpoints can be written in the upstream layout.
The T5 encoder and the CLIP image encoder have no diffusers converter, so both directions live here.
"""

from __future__ import annotations

import re

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

# Files of the upstream (Wan-AI) checkpoint folder.
CONFIG_FILE = "config.json"
TRANSFORMER_FILE = "diffusion_pytorch_model.safetensors"
TRANSFORMER_INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
TRANSFORMER_SHARD_GLOB = "diffusion_pytorch_model-*-of-*.safetensors"
VAE_FILE = "Wan2.1_VAE.pth"
T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
TOKENIZER_DIR = "google/umt5-xxl"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"


def shard_file_name(index: int, count: int) -> str:
    """Name of shard `index` (1-based) of `count`, as the upstream 14B checkpoints spell it."""
    return f"diffusion_pytorch_model-{index:05d}-of-{count:05d}.safetensors"


# --- transformer -----------------------------------------------------------------------------------

# VACE: the control branch's patch embedding (same name in both layouts) marks a VACE transformer.
VACE_PATCH_EMBEDDING = "vace_patch_embedding.weight"

# flf2v's image position embedding; diffusers' converter leaves this key unrenamed, so it is renamed here.
FLF2V_IMAGE_POSITIONS = "img_emb.emb_pos"
_FLF2V_IMAGE_POSITIONS_DIFFUSERS = "condition_embedder.image_embedder.pos_embed"


def transformer_from_upstream(state_dict: dict) -> dict:
    """Upstream WanModel keys -> WanTransformer3DModel keys (diffusers' converter; it empties its input)."""
    converted = convert_wan_transformer_to_diffusers(dict(state_dict))
    if FLF2V_IMAGE_POSITIONS in converted:
        converted[_FLF2V_IMAGE_POSITIONS_DIFFUSERS] = converted.pop(FLF2V_IMAGE_POSITIONS)
    return converted


# Applied in order to every diffusers key; earlier entries must not create text that later ones match.
_TRANSFORMER_TO_UPSTREAM = [
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    (_FLF2V_IMAGE_POSITIONS_DIFFUSERS, FLF2V_IMAGE_POSITIONS),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    # diffusers' affine cross-attention pre-norm is norm2; upstream calls it norm3.
    (".norm2.", ".norm3."),
    (".scale_shift_table", ".modulation"),
    # VACE control blocks: their input and output projections (the model's own proj_out is head.head).
    (".proj_in.", ".before_proj."),
    (".proj_out.", ".after_proj."),
]


def transformer_key_to_upstream(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    if key.startswith("proj_out."):
        return "head.head." + key[len("proj_out."):]
    for diffusers_part, upstream_part in _TRANSFORMER_TO_UPSTREAM:
        key = key.replace(diffusers_part, upstream_part)
    return key


def transformer_to_upstream(state_dict: dict) -> dict:
    """WanTransformer3DModel keys -> upstream WanModel keys (inverse of `transformer_from_upstream`)."""
    return {transformer_key_to_upstream(k): v for k, v in state_dict.items()}


# --- VAE -------------------------------------------------------------------------------------------

def vae_from_upstream(state_dict: dict) -> dict:
    """Upstream Wan VAE keys -> AutoencoderKLWan keys (diffusers' converter)."""
    return convert_wan_vae_to_diffusers(dict(state_dict))


_RESNET_TO_UPSTREAM = {
    "norm1.gamma": "residual.0.gamma",
    "conv1": "residual.2",
    "norm2.gamma": "residual.3.gamma",
    "conv2": "residual.6",
    "conv_shortcut": "shortcut",
}
_RESNET_PART = re.compile(r"(norm1\.gamma|conv1|norm2\.gamma|conv2|conv_shortcut)(\.|$)")
_TOP_LEVEL_VAE = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
_CODER_PARTS = {"conv_in.": "conv1.", "norm_out.": "head.0.", "conv_out.": "head.2."}


def _resnet_to_upstream(rest: str) -> str:
    return _RESNET_PART.sub(lambda m: _RESNET_TO_UPSTREAM[m.group(1)] + m.group(2), rest, count=1)


def vae_key_to_upstream(key: str, num_res_blocks: int = 2) -> str:
    top, _, rest = key.partition(".")
    if top in _TOP_LEVEL_VAE:
        return f"{_TOP_LEVEL_VAE[top]}.{rest}"
    for part, upstream in _CODER_PARTS.items():
        if rest.startswith(part):
            return f"{top}.{upstream}{rest[len(part):]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest):
        # upstream middle = [resblock, attention, resblock]
        return f"{top}.middle.{2 * int(m.group(1))}.{_resnet_to_upstream(m.group(2))}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", rest):
        return f"{top}.middle.1.{m.group(1)}"
    if m := re.match(r"down_blocks\.(\d+)\.(.*)", rest):
        # the Wan2.1 encoder is a flat list in both layouts: same index, resblock parts renamed
        return f"{top}.downsamples.{m.group(1)}.{_resnet_to_upstream(m.group(2))}"
    # The upstream decoder is flat: per level num_res_blocks + 1 resblocks, then an upsampler.
    stride = num_res_blocks + 2
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest):
        index = int(m.group(1)) * stride + int(m.group(2))
        return f"{top}.upsamples.{index}.{_resnet_to_upstream(m.group(3))}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest):
        return f"{top}.upsamples.{int(m.group(1)) * stride + stride - 1}.{m.group(2)}"
    raise KeyError(f"no upstream name known for Wan VAE key {key!r}")


def vae_to_upstream(state_dict: dict, num_res_blocks: int = 2) -> dict:
    """AutoencoderKLWan keys -> upstream Wan VAE keys (inverse of `vae_from_upstream`)."""
    return {vae_key_to_upstream(k, num_res_blocks): v for k, v in state_dict.items()}


# --- T5 (UMT5 encoder) -----------------------------------------------------------------------------

_T5_BLOCK_PARTS = [  # (upstream, transformers) inside blocks.N / encoder.block.N
    ("norm1.", "layer.0.layer_norm."),
    ("attn.q.", "layer.0.SelfAttention.q."),
    ("attn.k.", "layer.0.SelfAttention.k."),
    ("attn.v.", "layer.0.SelfAttention.v."),
    ("attn.o.", "layer.0.SelfAttention.o."),
    ("pos_embedding.embedding.", "layer.0.SelfAttention.relative_attention_bias."),
    ("norm2.", "layer.1.layer_norm."),
    ("ffn.gate.0.", "layer.1.DenseReluDense.wi_0."),
    ("ffn.fc1.", "layer.1.DenseReluDense.wi_1."),
    ("ffn.fc2.", "layer.1.DenseReluDense.wo."),
]


def _rename_t5(key: str, to_upstream: bool) -> str:
    src_prefix, dst_prefix = ("encoder.block.", "blocks.") if to_upstream else ("blocks.", "encoder.block.")
    if key.startswith(src_prefix):
        number, _, rest = key[len(src_prefix):].partition(".")
        for upstream, hf in _T5_BLOCK_PARTS:
            src, dst = (hf, upstream) if to_upstream else (upstream, hf)
            if rest.startswith(src):
                return f"{dst_prefix}{number}.{dst}{rest[len(src):]}"
    simple = {"token_embedding.weight": "shared.weight", "norm.weight": "encoder.final_layer_norm.weight"}
    if to_upstream:
        simple = {hf: upstream for upstream, hf in simple.items()}
    if key in simple:
        return simple[key]
    raise KeyError(f"no {'upstream' if to_upstream else 'transformers'} name known for T5 key {key!r}")


def t5_from_upstream(state_dict: dict) -> dict:
    """Upstream Wan T5 encoder keys -> UMT5EncoderModel keys (the token embedding is tied, so it appears twice)."""
    converted = {_rename_t5(k, to_upstream=False): v for k, v in state_dict.items()}
    if "shared.weight" in converted:
        converted["encoder.embed_tokens.weight"] = converted["shared.weight"]
    return converted


def t5_to_upstream(state_dict: dict) -> dict:
    """UMT5EncoderModel keys -> upstream Wan T5 encoder keys (the tied copy is dropped)."""
    return {_rename_t5(k, to_upstream=True): v for k, v in state_dict.items() if k != "encoder.embed_tokens.weight"}


# --- CLIP image encoder (i2v) ----------------------------------------------------------------------
# The upstream file holds the whole open-clip XLM-RoBERTa ViT-H/14 model. Wan reads only the visual tower's
# hidden states after its penultimate block, i.e. transformers CLIPVisionModel's hidden_states[-2]. The text
# tower (textual.*), the logit scale and the visual projection (visual.head) are not needed and are ignored.
CLIP_VISUAL_PREFIX = "visual."
CLIP_UNUSED_KEYS = ("textual.", "log_scale", "visual.head")
# ViT-H/14, the architecture the file name names, has 80-wide attention heads: the head count is the one
# dimension that tensor shapes do not show.
CLIP_HEAD_DIM = 80

_CLIP_TOP_LEVEL = {  # upstream (inside visual.) -> transformers CLIPVisionModel
    "patch_embedding.weight": "embeddings.patch_embedding.weight",
    "pre_norm.weight": "pre_layrnorm.weight",
    "pre_norm.bias": "pre_layrnorm.bias",
    "post_norm.weight": "post_layernorm.weight",
    "post_norm.bias": "post_layernorm.bias",
}
_CLIP_BLOCK_PARTS = [  # (upstream, transformers) inside visual.transformer.N / encoder.layers.N
    ("norm1.", "layer_norm1."),
    ("attn.proj.", "self_attn.out_proj."),
    ("norm2.", "layer_norm2."),
    ("mlp.0.", "mlp.fc1."),
    ("mlp.2.", "mlp.fc2."),
]
_QKV = ("q_proj", "k_proj", "v_proj")


def is_unused_clip_key(key: str) -> bool:
    return key.startswith(CLIP_UNUSED_KEYS)


def clip_visual_from_upstream(state_dict: dict) -> dict:
    """Upstream Wan CLIP keys -> CLIPVisionModel keys (unused keys dropped; fused q/k/v split)."""
    converted = {}
    for key, value in state_dict.items():
        if is_unused_clip_key(key):
            continue
        if not key.startswith(CLIP_VISUAL_PREFIX):
            raise KeyError(f"no transformers name known for CLIP key {key!r}")
        name = key[len(CLIP_VISUAL_PREFIX):]
        if name == "cls_embedding":  # (1, 1, dim) -> (dim,)
            converted["embeddings.class_embedding"] = value.reshape(-1)
        elif name == "pos_embedding":  # (1, positions, dim) -> (positions, dim)
            converted["embeddings.position_embedding.weight"] = value.reshape(value.shape[-2:])
        elif name in _CLIP_TOP_LEVEL:
            converted[_CLIP_TOP_LEVEL[name]] = value
        elif name.startswith("transformer."):
            number, _, rest = name[len("transformer."):].partition(".")
            prefix = f"encoder.layers.{number}."
            if rest.startswith("attn.to_qkv."):  # rows are [q | k | v], each with the heads in order
                kind = rest[len("attn.to_qkv."):]
                for proj, part in zip(_QKV, value.chunk(3, dim=0)):
                    converted[f"{prefix}self_attn.{proj}.{kind}"] = part
                continue
            for upstream, hf in _CLIP_BLOCK_PARTS:
                if rest.startswith(upstream):
                    converted[prefix + hf + rest[len(upstream):]] = value
                    break
            else:
                raise KeyError(f"no transformers name known for CLIP key {key!r}")
        else:
            raise KeyError(f"no transformers name known for CLIP key {key!r}")
    return converted


def clip_visual_to_upstream(state_dict: dict) -> dict:
    """CLIPVisionModel keys -> upstream Wan CLIP keys (inverse of `clip_visual_from_upstream`)."""
    top_level = {hf: upstream for upstream, hf in _CLIP_TOP_LEVEL.items()}
    converted, fused = {}, {}
    for key, value in state_dict.items():
        key = key.removeprefix("vision_model.")  # the tower's prefix in some transformers versions
        if key == "embeddings.class_embedding":
            converted["visual.cls_embedding"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            converted["visual.pos_embedding"] = value.unsqueeze(0)
        elif key in top_level:
            converted[CLIP_VISUAL_PREFIX + top_level[key]] = value
        elif key.startswith("encoder.layers."):
            number, _, rest = key[len("encoder.layers."):].partition(".")
            prefix = f"visual.transformer.{number}."
            proj, _, kind = rest.removeprefix("self_attn.").partition(".")
            if rest.startswith("self_attn.") and proj in _QKV:
                fused.setdefault(f"{prefix}attn.to_qkv.{kind}", {})[proj] = value
                continue
            for upstream, hf in _CLIP_BLOCK_PARTS:
                if rest.startswith(hf):
                    converted[prefix + upstream + rest[len(hf):]] = value
                    break
            else:
                raise KeyError(f"no upstream name known for CLIP key {key!r}")
        else:
            raise KeyError(f"no upstream name known for CLIP key {key!r}")
    for name, parts in fused.items():
        converted[name] = torch.cat([parts[proj] for proj in _QKV])
    return converted

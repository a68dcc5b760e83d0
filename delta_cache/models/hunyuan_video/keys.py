"""The upstream HunyuanVideo transformer state dict: key conversion to/from diffusers, model config from
tensor shapes, and fp8 (de)quantisation.

diffusers' `convert_hunyuan_video_transformer_to_diffusers` hard-codes hidden size 3072 when it splits
the fused projections; everything here reads sizes from the tensors, so reduced-width test models and
any depth convert the same way as the released 13B model.

Rope axes: the released model (head_dim 128) uses (16, 56, 56). A checkpoint does not store them, so for
other head dims we use this rule, which gives (16, 56, 56) at 128 and keeps every axis even:
    t = head_dim / 8 rounded down to a multiple of 4 (at least 4);  h = w = (head_dim - t) / 2.
Tiny checkpoints are written with the same rule (`rope_axes_dim`).
"""

from __future__ import annotations

import re

import torch

from ...errors import CheckpointError

# Upstream module -> diffusers module. A tuple means a fused upstream Linear split along its rows:
# the first three parts are `hidden` rows each (q, k, v), a fourth part takes the remaining rows.
_TOP_LEVEL = {
    "img_in.proj": "x_embedder.proj",
    "time_in.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "time_in.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.mlp.0": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.mlp.2": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "txt_in.input_embedder": "context_embedder.proj_in",
    "txt_in.t_embedder.mlp.0": "context_embedder.time_text_embed.timestep_embedder.linear_1",
    "txt_in.t_embedder.mlp.2": "context_embedder.time_text_embed.timestep_embedder.linear_2",
    "txt_in.c_embedder.linear_1": "context_embedder.time_text_embed.text_embedder.linear_1",
    "txt_in.c_embedder.linear_2": "context_embedder.time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
# Upstream emits (shift, scale) here, diffusers' AdaLayerNormContinuous expects (scale, shift).
_SWAPPED_HALVES = "final_layer.adaLN_modulation.1"

_DOUBLE_BLOCK = {
    "img_mod.linear": "norm1.linear",
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_q_norm": "attn.norm_q",
    "img_attn_k_norm": "attn.norm_k",
    "img_attn_proj": "attn.to_out.0",
    "img_mlp.fc1": "ff.net.0.proj",
    "img_mlp.fc2": "ff.net.2",
    "txt_mod.linear": "norm1_context.linear",
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_q_norm": "attn.norm_added_q",
    "txt_attn_k_norm": "attn.norm_added_k",
    "txt_attn_proj": "attn.to_add_out",
    "txt_mlp.fc1": "ff_context.net.0.proj",
    "txt_mlp.fc2": "ff_context.net.2",
}
_SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": "proj_out",
    "q_norm": "attn.norm_q",
    "k_norm": "attn.norm_k",
    "modulation.linear": "norm.linear",
}
_REFINER_BLOCK = {
    "norm1": "norm1",
    "self_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "self_attn_proj": "attn.to_out.0",
    "norm2": "norm2",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
    "adaLN_modulation.1": "norm_out.linear",
}
# (upstream block list, diffusers block list, per-block table)
_BLOCK_LISTS = (
    ("double_blocks", "transformer_blocks", _DOUBLE_BLOCK),
    ("single_blocks", "single_transformer_blocks", _SINGLE_BLOCK),
    ("txt_in.individual_token_refiner.blocks", "context_embedder.token_refiner.refiner_blocks", _REFINER_BLOCK),
)


def _reversed(table: dict) -> dict:
    """diffusers module -> (upstream module, index of the part in the fused tensor or None)."""
    out = {}
    for upstream, diffusers in table.items():
        if isinstance(diffusers, str):
            out[diffusers] = (upstream, None)
        else:
            out.update({part: (upstream, i) for i, part in enumerate(diffusers)})
    return out


_TOP_LEVEL_REVERSED = _reversed(_TOP_LEVEL)
_BLOCK_LISTS_REVERSED = tuple((down, up, _reversed(table)) for up, down, table in _BLOCK_LISTS)


def _lookup(module: str, top_level: dict, block_lists) -> tuple[str, object]:
    """Translate one module name through a top-level table and the per-block tables."""
    if module in top_level:
        return "", top_level[module]
    for source_list, target_list, table in block_lists:
        match = re.fullmatch(re.escape(source_list) + r"\.(\d+)\.(.+)", module)
        if match and match.group(2) in table:
            return f"{target_list}.{match.group(1)}.", table[match.group(2)]
    raise CheckpointError(f"unexpected HunyuanVideo transformer weight '{module}'")


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def hidden_size(state_dict: dict) -> int:
    """Transformer width: the patch embedding's output channels."""
    return state_dict["img_in.proj.weight"].shape[0]


def convert_hunyuan_video_transformer(state_dict: dict) -> dict:
    """Upstream HunyuanVideo transformer keys -> diffusers HunyuanVideoTransformer3DModel keys.

    Works for any width and depth. Splits are views of the input tensors (no copies), so a 25 GB
    checkpoint is not duplicated. The input dict is left unchanged.
    """
    if "img_in.proj.weight" not in state_dict:
        raise CheckpointError("not a HunyuanVideo transformer state dict: no 'img_in.proj.weight'")
    hidden = hidden_size(state_dict)
    converted = {}
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        prefix, target = _lookup(module, _TOP_LEVEL, _BLOCK_LISTS)
        if module == _SWAPPED_HALVES:
            tensor = _swap_halves(tensor)
        if isinstance(target, str):
            converted[f"{prefix}{target}.{param}"] = tensor
            continue
        sizes = [hidden] * 3 + [tensor.shape[0] - 3 * hidden] * (len(target) - 3)
        if sum(sizes) != tensor.shape[0] or min(sizes) <= 0:
            raise CheckpointError(f"'{key}' has {tensor.shape[0]} rows, expected {len(target)} parts at width {hidden}")
        for part_name, part in zip(target, torch.split(tensor, sizes, dim=0)):
            converted[f"{prefix}{part_name}.{param}"] = part
    return converted


def convert_to_upstream(state_dict: dict) -> dict:
    """diffusers HunyuanVideoTransformer3DModel keys -> upstream keys (the inverse of the above)."""
    upstream, fused_parts = {}, {}
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        prefix, (target, index) = _lookup(module, _TOP_LEVEL_REVERSED, _BLOCK_LISTS_REVERSED)
        upstream_key = f"{prefix}{target}.{param}"
        if index is None:
            upstream[upstream_key] = _swap_halves(tensor) if target == _SWAPPED_HALVES else tensor
        else:
            fused_parts.setdefault(upstream_key, {})[index] = tensor
    for key, parts in fused_parts.items():
        upstream[key] = torch.cat([parts[i] for i in range(len(parts))], dim=0)
    return upstream


# --- model config from tensor shapes ---------------------------------------------------------------

def rope_axes_dim(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) rope dims for a head dim; see the module docstring for the rule."""
    if head_dim % 4 or head_dim < 8:
        raise CheckpointError(f"HunyuanVideo attention head dim {head_dim} is not a multiple of 4 (>= 8)")
    t = max(4, 4 * (head_dim // 32))
    return (t, (head_dim - t) // 2, (head_dim - t) // 2)


def _count_blocks(state_dict: dict, block_list: str) -> int:
    pattern = re.compile(re.escape(block_list) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for m in map(pattern.match, state_dict) if m}
    return max(indices) + 1 if indices else 0


def transformer_config_from_state_dict(state_dict: dict) -> dict:
    """diffusers HunyuanVideoTransformer3DModel kwargs read from an UPSTREAM state dict's tensor shapes."""
    try:
        patch = state_dict["img_in.proj.weight"]  # (hidden, in_channels, pt, p, p)
        hidden, in_channels, patch_t, patch_s = patch.shape[0], patch.shape[1], patch.shape[2], patch.shape[3]
        norm_key = "double_blocks.0.img_attn_q_norm.weight"
        if norm_key not in state_dict:
            norm_key = "single_blocks.0.q_norm.weight"
        head_dim = state_dict[norm_key].shape[0]
        if "double_blocks.0.img_mlp.fc1.weight" in state_dict:
            mlp_hidden = state_dict["double_blocks.0.img_mlp.fc1.weight"].shape[0]
        else:
            mlp_hidden = state_dict["single_blocks.0.linear2.weight"].shape[1] - hidden
        out_rows = state_dict["final_layer.linear.weight"].shape[0]
        text_embed_dim = state_dict["txt_in.input_embedder.weight"].shape[1]
        pooled_projection_dim = state_dict["vector_in.in_layer.weight"].shape[1]
    except KeyError as missing:
        raise CheckpointError(f"HunyuanVideo transformer state dict has no {missing} weight") from None
    return {
        "in_channels": in_channels,
        "out_channels": out_rows // (patch_t * patch_s * patch_s),
        "num_attention_heads": hidden // head_dim,
        "attention_head_dim": head_dim,
        "num_layers": _count_blocks(state_dict, "double_blocks"),
        "num_single_layers": _count_blocks(state_dict, "single_blocks"),
        "num_refiner_layers": _count_blocks(state_dict, "txt_in.individual_token_refiner.blocks"),
        "mlp_ratio": mlp_hidden / hidden,
        "patch_size": patch_s,
        "patch_size_t": patch_t,
        "qk_norm": "rms_norm",
        "guidance_embeds": "guidance_in.mlp.0.weight" in state_dict,
        "text_embed_dim": text_embed_dim,
        "pooled_projection_dim": pooled_projection_dim,
        "rope_theta": 256.0,
        "rope_axes_dim": (16, 56, 56) if head_dim == 128 else rope_axes_dim(head_dim),
    }


# --- fp8 -------------------------------------------------------------------------------------------

_FP8_MODULE = re.compile(r"(double_blocks|single_blocks)\.\d+\..+")
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _fp8_modules(state_dict: dict):
    """Names of the Linear layers upstream stores in fp8: every 2-D weight inside a double/single block."""
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        if param == "weight" and tensor.ndim == 2 and _FP8_MODULE.fullmatch(module):
            yield module


def dequantize_fp8(state_dict: dict, scales: dict, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Upstream `--use-fp8` weights: each double/single-block Linear weight becomes `w.to(dtype) * scale`.

    `scales` is the `*_fp8_map.pt` dict (module name -> scale). Returns a new dict; raises
    CheckpointError (without a file name: the caller adds it) when a scale is missing or a weight that
    should be fp8 is not.
    """
    out = dict(state_dict)
    for module in _fp8_modules(state_dict):
        weight = state_dict[f"{module}.weight"]
        if weight.dtype != torch.float8_e4m3fn:
            raise CheckpointError(f"'{module}.weight' is {weight.dtype}, not fp8: --use-fp8 needs the *_fp8.pt file")
        if module not in scales:
            raise CheckpointError(f"no fp8 scale for '{module}'")
        out[f"{module}.weight"] = weight.to(dtype) * scales[module].to(dtype)
    return out


def quantize_fp8(state_dict: dict) -> tuple[dict, dict]:
    """Inverse of `dequantize_fp8` (for tiny test checkpoints): per-tensor scale amax / 448."""
    out, scales = dict(state_dict), {}
    for module in _fp8_modules(state_dict):
        weight = state_dict[f"{module}.weight"].float()
        scale = weight.abs().max().clamp(min=1e-12) / FP8_MAX
        out[f"{module}.weight"] = (weight / scale).to(torch.float8_e4m3fn)
        scales[module] = scale
    return out, scales

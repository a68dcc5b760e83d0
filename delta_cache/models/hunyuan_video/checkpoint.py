"""Load HunyuanVideo's transformer, VAE and both text encoders (on CPU) from a checkpoint folder.

Two layouts are accepted:

* upstream (Tencent's `ckpts/`): `dit_weight` is the transformer file
  (`.../hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt`, a dict whose `module` or `ema`
  entry holds the state dict; a bare state dict is accepted too), and `model_base` holds
  `hunyuan-video-t2v-720p/vae/`, `text_encoder/` and `text_encoder_2/`.
* diffusers (a `HunyuanVideoPipeline.save_pretrained` folder).

Detection rule: a folder containing `model_index.json` is a diffusers folder. `dit_weight` is checked
first, then `model_base`; the first that is such a folder is loaded and the other argument is ignored
(so the upstream default `--dit-weight` path need not exist). Otherwise the upstream layout is used.

Every required file is checked before anything is loaded, so a wrong path fails in a second with a
`CheckpointError` naming that path, not after reading 25 GB.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel
from transformers import AutoTokenizer, CLIPTextModel, LlamaModel, PreTrainedTokenizerBase

from ...cli import set_offline
from ...errors import CheckpointError, UserInputError
from ..common import FILE_ERRORS, check_tokenizer_vocabulary, declared_count, first_line, from_pretrained_checked
from .keys import convert_hunyuan_video_transformer, dequantize_fp8, transformer_config_from_state_dict

# Upstream layout, relative to the model base (MODEL_BASE, default ./ckpts).
DIT_WEIGHT = "hunyuan-video-t2v-720p/transformers/mp_rank_00_model_states.pt"
VAE_DIRS = {"884-16c-hy": "hunyuan-video-t2v-720p/vae"}  # upstream --vae name -> folder
VAE_CONFIG, VAE_WEIGHTS = "config.json", "pytorch_model.pt"
TEXT_ENCODER_DIR, TEXT_ENCODER_2_DIR = "text_encoder", "text_encoder_2"
DIFFUSERS_INDEX = "model_index.json"

# The upstream VAE class (AutoencoderKLCausal3D) names its blocks differently; the weights are the same.
UPSTREAM_VAE_BLOCKS = {
    "DownEncoderBlockCausal3D": "HunyuanVideoDownBlock3D",
    "UpDecoderBlockCausal3D": "HunyuanVideoUpBlock3D",
}
HUNYUAN_VAE_SCALING_FACTOR = 0.476986


@dataclass
class HunyuanVideoComponents:
    transformer: HunyuanVideoTransformer3DModel
    vae: AutoencoderKLHunyuanVideo
    text_encoder: LlamaModel
    tokenizer: PreTrainedTokenizerBase
    text_encoder_2: CLIPTextModel
    tokenizer_2: PreTrainedTokenizerBase
    layout: str = "upstream"  # or "diffusers"


def fp8_map_path(dit_weight: Path) -> Path:
    """Upstream's scale file for `--use-fp8`: `x_fp8.pt` -> `x_fp8_map.pt`."""
    return dit_weight.with_name(dit_weight.stem + "_map.pt")


def find_diffusers_folder(dit_weight, model_base) -> Path | None:
    """The diffusers-format folder to load, if any (see the module docstring for the rule)."""
    for candidate in (dit_weight, model_base):
        if candidate is not None and (Path(candidate) / DIFFUSERS_INDEX).is_file():
            return Path(candidate)
    return None


def declared_transformer_config(dit_weight, diffusers_folder: Path | None, load_key: str = "module") -> dict:
    """The transformer's config (diffusers' keys: num_layers, num_single_layers, num_attention_heads, ...), read
    before anything loads: the diffusers folder's `transformer/config.json`, or the upstream weights file's key
    names and shapes (memory-mapped: no tensor is read). {} where neither says (the loader then reports why)."""
    if diffusers_folder is not None:
        try:
            config = json.loads((diffusers_folder / "transformer" / "config.json").read_text())
        except (OSError, ValueError):
            return {}
        return config if isinstance(config, dict) else {}
    path = Path(dit_weight)
    if not path.is_file() or not zipfile.is_zipfile(path):  # (an older pickle would be read whole: leave it)
        return {}
    try:
        return transformer_config_from_state_dict(_unwrap_transformer_state(_torch_load(path), path, load_key))
    except (CheckpointError, *FILE_ERRORS):
        return {}


def declared_text_encoder_layers(model_base: Path) -> int | None:
    """The text encoder's `num_hidden_layers` from its config.json, read before anything loads (None where it
    does not say; the loader then reports a missing or broken file)."""
    try:
        layers = json.loads((Path(model_base) / TEXT_ENCODER_DIR / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError, AttributeError):
        return None
    return layers if isinstance(layers, int) and not isinstance(layers, bool) else None


def declared_block_depths(config: dict) -> dict[str, int] | None:
    """Block list -> depth from a `declared_transformer_config`; None where it does not say."""
    depths = {"transformer_blocks": declared_count(config.get("num_layers")),
              "single_transformer_blocks": declared_count(config.get("num_single_layers"))}
    return depths if all(depths.values()) else None


def load_hunyuan_video_components(
    dit_weight,
    model_base,
    *,
    load_key: str = "module",
    use_fp8: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    vae_dtype: torch.dtype = torch.float16,
    text_encoder_dtype: torch.dtype = torch.float16,
    text_encoder_2_dtype: torch.dtype = torch.float16,
    vae_name: str = "884-16c-hy",
) -> HunyuanVideoComponents:
    """Load every model HunyuanVideo sampling needs, on CPU, from either layout."""
    set_offline()
    dtypes = dict(dtype=dtype, vae_dtype=vae_dtype, text_encoder_dtype=text_encoder_dtype,
                  text_encoder_2_dtype=text_encoder_2_dtype)
    folder = find_diffusers_folder(dit_weight, model_base)
    if folder is not None:
        if use_fp8:
            raise CheckpointError(f"--use-fp8 needs an upstream *_fp8.pt file; {folder} is a diffusers folder")
        return _load_diffusers(folder, **dtypes)
    if vae_name not in VAE_DIRS:
        raise UserInputError(f"unknown VAE '{vae_name}' (expected one of: {', '.join(VAE_DIRS)})")
    return _load_upstream(Path(dit_weight), Path(model_base), load_key=load_key, use_fp8=use_fp8,
                          vae_dir=Path(model_base) / VAE_DIRS[vae_name], **dtypes)


def _require(path: Path, what: str, *, folder: bool = False) -> Path:
    if not (path.is_dir() if folder else path.is_file()):
        raise CheckpointError(f"{what} not found: {path}")
    return path


# --- upstream layout -------------------------------------------------------------------------------

def _load_upstream(dit_weight, model_base, *, load_key, use_fp8, vae_dir, dtype, vae_dtype,
                   text_encoder_dtype, text_encoder_2_dtype) -> HunyuanVideoComponents:
    _require(dit_weight, "HunyuanVideo transformer weights")
    if use_fp8:
        _require(fp8_map_path(dit_weight), "fp8 scale map for --use-fp8")
    _require(vae_dir / VAE_CONFIG, "HunyuanVideo VAE config")
    _require(vae_dir / VAE_WEIGHTS, "HunyuanVideo VAE weights")
    _require(model_base / TEXT_ENCODER_DIR / "config.json", "text encoder (llava-llama-3 language model) config")
    _require(model_base / TEXT_ENCODER_2_DIR / "config.json", "text encoder 2 (CLIP-L) config")

    return HunyuanVideoComponents(
        transformer=load_upstream_transformer(dit_weight, load_key=load_key, use_fp8=use_fp8, dtype=dtype),
        vae=load_upstream_vae(vae_dir, dtype=vae_dtype),
        text_encoder=_load_hf(LlamaModel, model_base / TEXT_ENCODER_DIR, text_encoder_dtype),
        tokenizer=_load_tokenizer(model_base / TEXT_ENCODER_DIR),
        text_encoder_2=_load_hf(CLIPTextModel, model_base / TEXT_ENCODER_2_DIR, text_encoder_2_dtype),
        tokenizer_2=_load_tokenizer(model_base / TEXT_ENCODER_2_DIR),
        layout="upstream",
    )


def _torch_load(path: Path):
    # mmap keeps a 25 GB checkpoint out of RAM until the weights are used (zip format only).
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except FILE_ERRORS as err:  # what an unreadable or non-weights file raises
        raise CheckpointError(f"cannot read {path} as a PyTorch weights file ({type(err).__name__}: "
                              f"{first_line(err)})") from None


def _unwrap_transformer_state(checkpoint, path: Path, load_key: str) -> dict:
    """Upstream files hold {"module": sd} (or "ema"); a bare state dict is accepted like upstream does."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a dict of weights")
    if "module" in checkpoint or "ema" in checkpoint:
        if load_key not in checkpoint:
            entries = ", ".join(map(str, checkpoint))
            raise CheckpointError(f"{path} has no '{load_key}' entry (--load-key); it has: {entries}")
        checkpoint = checkpoint[load_key]
    if not isinstance(checkpoint, dict) or not all(isinstance(t, torch.Tensor) for t in checkpoint.values()):
        raise CheckpointError(f"{path} does not hold a transformer state dict (a dict of tensors)")
    return checkpoint


def load_upstream_transformer(path: Path, *, load_key: str = "module", use_fp8: bool = False,
                              dtype: torch.dtype = torch.bfloat16) -> HunyuanVideoTransformer3DModel:
    """An upstream transformer file -> HunyuanVideoTransformer3DModel, config read from tensor shapes."""
    state = _unwrap_transformer_state(_torch_load(path), path, load_key)
    if use_fp8:
        map_path = fp8_map_path(path)
        try:
            state = dequantize_fp8(state, _torch_load(map_path), dtype=dtype)
        except CheckpointError as err:
            raise CheckpointError(f"{map_path}: {err}") from None
        except FILE_ERRORS as err:  # (a map that is not a dict of per-tensor scales)
            raise CheckpointError(f"{map_path}: not an fp8 scale map ({first_line(err)})") from None
    elif any(t.dtype == torch.float8_e4m3fn for t in state.values()):
        raise CheckpointError(f"{path} holds fp8 weights: pass --use-fp8 (with its *_fp8_map.pt beside it)")
    try:
        config = transformer_config_from_state_dict(state)
        state = convert_hunyuan_video_transformer(state)
        with init_empty_weights(include_buffers=False):
            model = HunyuanVideoTransformer3DModel(**config)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except FILE_ERRORS as err:  # tensors of shapes no HunyuanVideo transformer has
        raise CheckpointError(f"{path}: not a HunyuanVideo transformer ({type(err).__name__}: "
                              f"{first_line(err)})") from None
    _assign(model, {k: v.to(dtype) for k, v in state.items()}, path)
    return model.eval()


def vae_kwargs_from_upstream_config(config: dict, path="vae config") -> dict:
    """Upstream AutoencoderKLCausal3D config.json -> AutoencoderKLHunyuanVideo kwargs."""
    if config.get("_class_name") != "AutoencoderKLCausal3D":
        raise CheckpointError(f"{path}: expected _class_name AutoencoderKLCausal3D, got {config.get('_class_name')!r}")
    try:
        down = tuple(UPSTREAM_VAE_BLOCKS[b] for b in config["down_block_types"])
        up = tuple(UPSTREAM_VAE_BLOCKS[b] for b in config["up_block_types"])
        return {
            "in_channels": config.get("in_channels", 3),
            "out_channels": config.get("out_channels", 3),
            "latent_channels": config["latent_channels"],
            "down_block_types": down,
            "up_block_types": up,
            "block_out_channels": tuple(config["block_out_channels"]),
            "layers_per_block": config["layers_per_block"],
            "act_fn": config.get("act_fn", "silu"),
            "norm_num_groups": config["norm_num_groups"],
            "scaling_factor": config.get("scaling_factor", HUNYUAN_VAE_SCALING_FACTOR),
            "spatial_compression_ratio": config.get("spatial_compression_ratio", 8),
            "temporal_compression_ratio": config.get("time_compression_ratio", 4),
            "mid_block_add_attention": config.get("mid_block_add_attention", True),
        }
    except KeyError as missing:
        raise CheckpointError(f"{path}: missing or unknown entry {missing}") from None


def load_upstream_vae(vae_dir: Path, *, dtype: torch.dtype = torch.float16) -> AutoencoderKLHunyuanVideo:
    """Upstream vae/ folder (config.json + pytorch_model.pt) -> AutoencoderKLHunyuanVideo."""
    config_path, weights_path = vae_dir / VAE_CONFIG, vae_dir / VAE_WEIGHTS
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:  # (unreadable, not UTF-8, not JSON)
        raise CheckpointError(f"{config_path} is not a readable JSON file ({first_line(err)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    kwargs = vae_kwargs_from_upstream_config(config, config_path)
    try:
        with init_empty_weights(include_buffers=False):
            vae = AutoencoderKLHunyuanVideo(**kwargs)
    except FILE_ERRORS as err:  # values of the wrong type or that do not fit together
        raise CheckpointError(f"{config_path} does not describe a valid VAE: {first_line(err)}") from None
    state = _torch_load(weights_path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{weights_path}: expected a state dict of tensors")
    state = {str(k).removeprefix("vae."): v for k, v in state.items()}
    _assign(vae, {k: v.to(dtype) for k, v in state.items()}, weights_path)
    return vae.eval()


def _assign(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Strict load that adopts the given tensors (no second copy of the weights)."""
    expected, given = set(model.state_dict()), set(state)
    if expected != given:
        missing, unexpected = sorted(expected - given), sorted(given - expected)
        raise CheckpointError(
            f"{path} does not match {type(model).__name__}: {len(missing)} missing weights {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:  # shape mismatches
        first_line = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(f"{path} does not match {type(model).__name__}: {first_line}") from None


def _load_hf(model_class, folder: Path, dtype: torch.dtype):
    return from_pretrained_checked(model_class, folder, model_class.__name__, dtype=dtype).eval()


def _load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    # Upstream pads on the right; the text-encoder outputs are then cropped and masked accordingly.
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="right")
    except FILE_ERRORS as err:
        raise CheckpointError(f"cannot load a tokenizer from {folder}: {first_line(err)}") from None
    return check_tokenizer_vocabulary(tokenizer, folder)


# --- diffusers layout ------------------------------------------------------------------------------

def _load_diffusers(folder: Path, *, dtype, vae_dtype, text_encoder_dtype,
                    text_encoder_2_dtype) -> HunyuanVideoComponents:
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        _require(folder / sub / "config.json", f"diffusers '{sub}' config")
    for sub in ("tokenizer", "tokenizer_2"):
        _require(folder / sub, f"diffusers '{sub}' folder", folder=True)
    transformer = from_pretrained_checked(HunyuanVideoTransformer3DModel, folder, "the transformer",
                                          subfolder="transformer", torch_dtype=dtype)
    vae = from_pretrained_checked(AutoencoderKLHunyuanVideo, folder, "the VAE", subfolder="vae", torch_dtype=vae_dtype)
    return HunyuanVideoComponents(
        transformer=transformer.eval(),
        vae=vae.eval(),
        text_encoder=_load_hf(LlamaModel, folder / "text_encoder", text_encoder_dtype),
        tokenizer=_load_tokenizer(folder / "tokenizer"),
        text_encoder_2=_load_hf(CLIPTextModel, folder / "text_encoder_2", text_encoder_2_dtype),
        tokenizer_2=_load_tokenizer(folder / "tokenizer_2"),
        layout="diffusers",
    )

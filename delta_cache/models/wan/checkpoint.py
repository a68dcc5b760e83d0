"""Load a Wan2.1 checkpoint folder (upstream Wan-AI layout or diffusers layout) into diffusers/transformers modules.

Model dimensions always come from the files (config.json and tensor shapes), never from the task
name, so reduced-size checkpoints load under any task. Everything is loaded on CPU, offline.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, UMT5Config,
                          UMT5EncoderModel)

from ...cli import set_offline
from ...errors import CheckpointError, UserInputError
from ..common import (FILE_ERRORS, check_tokenizer_vocabulary, declared_count, first_line, from_pretrained_checked,
                      read_model_index)
from . import keys
from .tasks import TASKS, is_image_to_video, is_vace

if TYPE_CHECKING:  # importing CLIPImageProcessor warns when torchvision is missing: only i2v/flf2v need it
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

DIFFUSERS_INDEX_FILE = "model_index.json"



@dataclass
class WanComponents:
    transformer: WanTransformer3DModel | WanVACETransformer3DModel  # the VACE one for vace tasks
    vae: AutoencoderKLWan
    text_encoder: UMT5EncoderModel
    tokenizer: PreTrainedTokenizerBase
    image_encoder: CLIPVisionModel | None = None  # i2v and flf2v only
    image_processor: CLIPImageProcessor | None = None  # i2v and flf2v only
    layout: str = "upstream"  # or "diffusers"


def load_wan_components(
    ckpt_dir,
    *,
    task: str,
    dtype: torch.dtype = torch.float32,
    text_encoder_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype = torch.float32,
) -> WanComponents:
    """Load every Wan2.1 component from `ckpt_dir` on CPU.

    A folder with `model_index.json` is read as a diffusers pipeline folder, anything else as the
    upstream layout. `text_encoder_dtype=None` means `dtype`. Raises `CheckpointError` (one line,
    naming the file) for missing or malformed files.
    """
    if task not in TASKS:
        raise UserInputError(f"unknown Wan task {task!r}; expected one of {', '.join(TASKS)}")
    set_offline()
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {root} (--ckpt_dir)")
    text_encoder_dtype = text_encoder_dtype or dtype
    if (root / DIFFUSERS_INDEX_FILE).is_file():
        read_model_index(root / DIFFUSERS_INDEX_FILE)  # (only the layout's mark here, but a broken one is refused)
        components = _load_diffusers_layout(root, task, dtype, text_encoder_dtype, vae_dtype)
    else:
        components = _load_upstream_layout(root, task, dtype, text_encoder_dtype, vae_dtype)
    _check_task_matches_model(components.transformer, task, root)
    return components


def declared_transformer_config(ckpt_dir) -> dict:
    """The transformer's config in diffusers' keys (num_layers, num_attention_heads, vace_layers), read from the
    diffusers folder's `transformer/config.json` or upstream's `config.json` without loading any weights, so that
    what does not fit is refused before minutes of loading; {} where the file is missing or unreadable (the
    loader then reports it)."""
    root = Path(ckpt_dir)
    diffusers_layout = (root / DIFFUSERS_INDEX_FILE).is_file()
    try:
        config = json.loads((root / "transformer" / keys.CONFIG_FILE if diffusers_layout
                             else root / keys.CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or diffusers_layout:
        return config if isinstance(config, dict) else {}
    declared = {"num_layers": config.get("num_layers"), "num_attention_heads": config.get("num_heads")}
    num_layers = declared_count(config.get("num_layers"))
    # (upstream's VACE config may leave vace_layers out: a control block for every second main block)
    declared["vace_layers"] = config.get("vace_layers", list(range(0, num_layers, 2)) if num_layers else None)
    return declared


def declared_block_depths(config: dict, task: str) -> dict[str, int] | None:
    """Block list -> depth from a `declared_transformer_config`; None where it does not say."""
    num_layers = declared_count(config.get("num_layers"))
    if num_layers is None:
        return None
    depths = {"blocks": num_layers}
    if is_vace(task):
        vace_layers = config.get("vace_layers")  # (a diffusers config without it: diffusers' default, left alone)
        if not isinstance(vace_layers, list) or not vace_layers:
            return None
        depths["vace_blocks"] = len(vace_layers)
    return depths


def _check_task_matches_model(transformer, task: str, root: Path) -> None:
    # An image-conditioned transformer takes 16 extra condition channels (mask + image latents) on top of
    # the noise; the flf2v one also has a position embedding telling the first frame's CLIP tokens from the
    # last frame's (upstream img_emb.emb_pos, diffusers pos_embed_seq_len); a VACE one has control blocks.
    config = transformer.config
    is_vace_model = isinstance(transformer, WanVACETransformer3DModel)
    if is_vace_model != is_vace(task):
        kind = ("a VACE model (it has control blocks)" if is_vace_model
                else "a model without VACE control blocks")
        raise CheckpointError(f"{root} holds {kind}, which does not fit --task {task}")
    is_image_model = config.in_channels != config.out_channels
    if is_image_model != is_image_to_video(task):
        kind = "an image-to-video" if is_image_model else "a text-to-video"
        raise CheckpointError(f"{root} holds {kind} model (in_channels {config.in_channels}), "
                              f"which does not fit --task {task}")
    is_flf2v_model = config.pos_embed_seq_len is not None
    if is_image_model and is_flf2v_model != task.startswith("flf2v"):
        kind = ("a first-last-frame-to-video model (it has an image position embedding)" if is_flf2v_model
                else "a one-image image-to-video model (no first/last-frame image position embedding)")
        raise CheckpointError(f"{root} holds {kind}, which does not fit --task {task}")


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path} ({what}, expected in --ckpt_dir)")
    return path


# --- upstream layout -------------------------------------------------------------------------------

def _load_upstream_layout(root, task, dtype, text_encoder_dtype, vae_dtype) -> WanComponents:
    # Check every file before the slow loads so a missing one fails fast.
    clip_path = (_require_file(root / keys.CLIP_FILE, f"the CLIP image encoder weights, needed for {task}")
                 if is_image_to_video(task) else None)
    config_path = _require_file(root / keys.CONFIG_FILE, "the transformer config")
    transformer_files = _transformer_files(root)
    vae_path = _require_file(root / keys.VAE_FILE, "the Wan VAE weights")
    t5_path = _require_file(root / keys.T5_FILE, "the UMT5 text encoder weights")
    tokenizer_dir = root / keys.TOKENIZER_DIR
    if not tokenizer_dir.is_dir():
        raise CheckpointError(f"checkpoint folder missing: {tokenizer_dir} (the UMT5 tokenizer files, expected in --ckpt_dir)")

    components = WanComponents(
        transformer=_load_upstream_transformer(config_path, transformer_files, dtype),
        vae=_load_upstream_vae(vae_path, vae_dtype),
        text_encoder=_load_upstream_t5(t5_path, text_encoder_dtype),
        tokenizer=_load_tokenizer(tokenizer_dir),
        layout="upstream",
    )
    image_dim = components.transformer.config.image_dim
    if clip_path is not None and image_dim is not None:  # a t2v transformer fails the task check instead
        components.image_encoder = _load_upstream_clip(clip_path, dtype)
        clip = components.image_encoder.config
        _expect(clip.hidden_size == image_dim, f"{clip_path.name} disagrees with the transformer: its image "
                                               f"features are {clip.hidden_size} wide, the transformer's img_emb "
                                               f"expects {image_dim}")
        clip_tokens = (clip.image_size // clip.patch_size) ** 2 + 1  # the class token and the patches
        image_positions = components.transformer.config.pos_embed_seq_len
        _expect(image_positions in (None, 2 * clip_tokens),
                f"{clip_path.name} disagrees with the transformer: two frames give {2 * clip_tokens} image tokens, "
                f"the transformer's img_emb.emb_pos has {image_positions} positions")
        from transformers import CLIPImageProcessor

        components.image_processor = _upstream_preprocessing(CLIPImageProcessor(), clip.image_size)
    return components


def _transformer_files(root: Path) -> list[Path]:
    """The transformer safetensors: one file, or the shards listed by the index (which must all exist)."""
    single = root / keys.TRANSFORMER_FILE
    index_path = root / keys.TRANSFORMER_INDEX_FILE
    if single.is_file():
        return [single]
    if not index_path.is_file():
        if any(root.glob(keys.TRANSFORMER_SHARD_GLOB)):
            raise CheckpointError(f"checkpoint file missing: {index_path} (the index of the sharded transformer weights)")
        raise CheckpointError(f"checkpoint file missing: {single} (the transformer weights; or shards "
                              f"{keys.shard_file_name(1, 6)}, ... with {keys.TRANSFORMER_INDEX_FILE})")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        shard_names = sorted(set(weight_map.values()))
        if not all(isinstance(name, str) for name in shard_names):
            raise TypeError("its shard file names are not strings")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"malformed {index_path}: expected JSON with a 'weight_map' of tensor -> shard file "
                              f"({first_line(err)})") from None
    if not shard_names:
        raise CheckpointError(f"malformed {index_path}: its weight_map lists no shard files")
    shards = [root / name for name in shard_names]
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"checkpoint file missing: {shard} (a transformer shard listed in {index_path.name})")
    return shards


def _read_upstream_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"malformed {path}: not valid JSON ({first_line(err)})") from None
    required = ("dim", "ffn_dim", "freq_dim", "in_dim", "num_heads", "num_layers", "out_dim")
    if not isinstance(config, dict):
        raise CheckpointError(f"malformed {path}: expected a JSON object with keys {', '.join(required)}")
    missing = [k for k in required if declared_count(config.get(k)) is None]
    if missing:
        raise CheckpointError(f"malformed {path}: missing or not a positive integer: {', '.join(missing)} "
                              f"(an upstream WanModel config needs {', '.join(required)})")
    if "eps" in config and (not isinstance(config["eps"], (int, float)) or isinstance(config["eps"], bool)
                            or not config["eps"] > 0):
        raise CheckpointError(f"malformed {path}: eps must be a positive number, got {config['eps']!r}")
    return config


def _safetensors_shapes(path: Path) -> dict[str, tuple]:
    """Tensor name -> shape from the file header, without reading the weights."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except FILE_ERRORS as err:
        raise CheckpointError(f"unreadable {path}: not a safetensors file ({first_line(err)})") from None


def _load_safetensors(path: Path) -> dict:
    try:
        return load_file(path, device="cpu")
    except FILE_ERRORS as err:
        raise CheckpointError(f"unreadable {path}: not a safetensors file ({first_line(err)})") from None


def _load_pth(path: Path) -> dict:
    try:
        # mmap (zip-format files only): the 11 GB T5 file is not read into memory before being cast
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except FILE_ERRORS as err:
        raise CheckpointError(f"unreadable {path}: expected a torch state dict ({first_line(err)})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"unreadable {path}: expected a flat dict of tensors (a state dict)")
    return state_dict


def _shape(shapes: dict, key: str, source: Path) -> tuple:
    if key not in shapes:
        raise CheckpointError(f"{source} has no tensor {key!r}; is it the right file?")
    return tuple(shapes[key])


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckpointError(message)


def _count_blocks(shapes: dict) -> int:
    return len({k.split(".")[1] for k in shapes if k.startswith("blocks.")})


def _upstream_transformer_config(config: dict, shapes: dict, config_path: Path, source: Path) -> dict:
    """diffusers WanTransformer3DModel config from the upstream config.json plus tensor shapes."""
    dim, heads = config["dim"], config["num_heads"]
    patch = _shape(shapes, "patch_embedding.weight", source)  # (dim, in_dim, pt, ph, pw)
    patch_size = patch[2:]
    disagree = f"{config_path.name} disagrees with {source}"
    _expect(dim % heads == 0, f"malformed {config_path}: dim {dim} is not divisible by num_heads {heads}")
    _expect(patch[:2] == (dim, config["in_dim"]),
            f"{disagree}: dim={dim}, in_dim={config['in_dim']} but patch_embedding.weight is {patch}")
    ffn = _shape(shapes, "blocks.0.ffn.0.weight", source)
    _expect(ffn == (config["ffn_dim"], dim), f"{disagree}: ffn_dim={config['ffn_dim']} but blocks.0.ffn.0.weight is {ffn}")
    time_in = _shape(shapes, "time_embedding.0.weight", source)
    _expect(time_in[1] == config["freq_dim"],
            f"{disagree}: freq_dim={config['freq_dim']} but time_embedding.0.weight is {time_in}")
    head = _shape(shapes, "head.head.weight", source)
    _expect(head[0] == config["out_dim"] * patch_size[0] * patch_size[1] * patch_size[2],
            f"{disagree}: out_dim={config['out_dim']} with patch {patch_size} but head.head.weight is {head}")
    num_blocks = _count_blocks(shapes)
    _expect(num_blocks == config["num_layers"], f"{disagree}: num_layers={config['num_layers']} but it has {num_blocks} blocks")

    image_dim = shapes["img_emb.proj.0.weight"][0] if "img_emb.proj.0.weight" in shapes else None
    # flf2v: a learned position per CLIP token of the first and the last frame, (1, 2 * tokens, image_dim)
    image_positions = shapes[keys.FLF2V_IMAGE_POSITIONS][1] if keys.FLF2V_IMAGE_POSITIONS in shapes else None
    vace = _upstream_vace_config(config, shapes, config_path, source) if keys.VACE_PATCH_EMBEDDING in shapes else {}
    return dict(
        patch_size=patch_size,
        num_attention_heads=heads,
        attention_head_dim=dim // heads,
        in_channels=config["in_dim"],
        out_channels=config["out_dim"],
        text_dim=_shape(shapes, "text_embedding.0.weight", source)[1],
        freq_dim=config["freq_dim"],
        ffn_dim=config["ffn_dim"],
        num_layers=config["num_layers"],
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=config.get("eps", 1e-6),
        image_dim=image_dim,
        added_kv_proj_dim=dim if image_dim is not None else None,
        pos_embed_seq_len=image_positions,
        rope_max_seq_len=1024,
        **vace,
    )


def _upstream_vace_config(config: dict, shapes: dict, config_path: Path, source: Path) -> dict:
    """WanVACETransformer3DModel's extra config: which main blocks receive a control hint (`vace_layers`, one
    control block each) and the control input's channels. The shapes cannot tell which blocks get the hints:
    config.json says (upstream's default when it does not: every second block from 0)."""
    num_layers = config["num_layers"]
    num_control = len({k.split(".")[1] for k in shapes if k.startswith("vace_blocks.")})
    layers = config.get("vace_layers", list(range(0, num_layers, 2)))
    _expect(isinstance(layers, list) and all(isinstance(i, int) for i in layers)
            and layers == sorted(set(layers)) and layers[:1] == [0] and layers[-1] < num_layers,
            f"malformed {config_path}: vace_layers must be increasing block indices from 0 below num_layers "
            f"({num_layers}), got {layers}")
    _expect(len(layers) == num_control, f"{config_path.name} disagrees with {source}: vace_layers names "
                                        f"{len(layers)} blocks but it has {num_control} VACE blocks")
    in_channels = _shape(shapes, keys.VACE_PATCH_EMBEDDING, source)[1]
    _expect(config.get("vace_in_dim", in_channels) == in_channels,
            f"{config_path.name} disagrees with {source}: vace_in_dim={config.get('vace_in_dim')} but "
            f"{keys.VACE_PATCH_EMBEDDING} takes {in_channels} channels")
    return dict(vace_layers=layers, vace_in_channels=in_channels)


def _load_upstream_transformer(config_path: Path, files: list[Path], dtype):
    config = _read_upstream_config(config_path)
    shapes = {}
    for path in files:
        shapes.update(_safetensors_shapes(path))
    source = files[0] if len(files) == 1 else config_path.parent / keys.TRANSFORMER_INDEX_FILE
    model_cls = WanVACETransformer3DModel if keys.VACE_PATCH_EMBEDDING in shapes else WanTransformer3DModel
    model = _empty_model(model_cls, _upstream_transformer_config(config, shapes, config_path, source))
    _check_keys(model, keys.transformer_from_upstream(shapes), source)  # the converter only renames keys
    for path in files:  # one shard in memory at a time, cast before the next is read
        _assign(model, keys.transformer_from_upstream(_load_safetensors(path)), path, dtype)
    return model.eval()


def _upstream_vae_config(shapes: dict, source: Path) -> dict:
    """AutoencoderKLWan config from the upstream VAE tensor shapes."""
    base_dim = _shape(shapes, "encoder.conv1.weight", source)[0]
    z_dim = _shape(shapes, "conv2.weight", source)[0]
    # encoder.downsamples is flat: each level's residual blocks, then a resample (except after the last level)
    indices = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.downsamples.")})
    level_channels: list[list[int]] = [[]]
    temporal_downsample = []
    for i in indices:
        prefix = f"encoder.downsamples.{i}."
        if prefix + "resample.1.weight" in shapes:
            temporal_downsample.append(prefix + "time_conv.weight" in shapes)
            level_channels.append([])
        else:
            level_channels[-1].append(_shape(shapes, prefix + "residual.2.weight", source)[0])
    num_res_blocks = len(level_channels[0])
    _expect(num_res_blocks > 0 and all(len(level) == num_res_blocks for level in level_channels),
            f"{source}: unexpected encoder structure (residual blocks per level: {[len(l) for l in level_channels]})")
    config = dict(
        base_dim=base_dim,
        z_dim=z_dim,
        dim_mult=[level[-1] // base_dim for level in level_channels],
        num_res_blocks=num_res_blocks,
        temperal_downsample=temporal_downsample,
    )
    if z_dim != 16:  # the default latents_mean/std are Wan2.1's 16 channels
        config.update(latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    return config


def _load_upstream_vae(path: Path, dtype) -> AutoencoderKLWan:
    state_dict = _load_pth(path)
    model = _empty_model(AutoencoderKLWan, _upstream_vae_config(_shapes_of(state_dict), path))
    converted = keys.vae_from_upstream(state_dict)
    _check_keys(model, converted, path)
    _assign(model, converted, path, dtype)
    return model.eval()


def _upstream_t5_config(shapes: dict, source: Path) -> UMT5Config:
    vocab_size, d_model = _shape(shapes, "token_embedding.weight", source)
    num_buckets, num_heads = _shape(shapes, "blocks.0.pos_embedding.embedding.weight", source)
    inner_dim = _shape(shapes, "blocks.0.attn.q.weight", source)[0]
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        num_heads=num_heads,
        d_kv=inner_dim // num_heads,
        d_ff=_shape(shapes, "blocks.0.ffn.fc1.weight", source)[0],
        num_layers=_count_blocks(shapes),
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
    )


def _load_upstream_t5(path: Path, dtype) -> UMT5EncoderModel:
    state_dict = _load_pth(path)
    model = _empty_model(UMT5EncoderModel, _upstream_t5_config(_shapes_of(state_dict), path))
    converted = _convert_keys(keys.t5_from_upstream, state_dict, path, "upstream Wan T5 encoder keys")
    _check_keys(model, converted, path)
    _assign(model, converted, path, dtype)
    model.tie_weights()  # assign=True left shared and encoder.embed_tokens as two parameters
    return model.eval()


def _upstream_clip_config(shapes: dict, source: Path) -> CLIPVisionConfig:
    """CLIPVisionConfig of the visual tower from the upstream CLIP tensor shapes."""
    from transformers import CLIPVisionConfig

    dim = _shape(shapes, "visual.cls_embedding", source)[-1]
    patch = _shape(shapes, "visual.patch_embedding.weight", source)  # (dim, 3, p, p)
    positions = _shape(shapes, "visual.pos_embedding", source)[-2]  # class token + grid * grid patches
    grid = math.isqrt(positions - 1)
    _expect(grid * grid == positions - 1, f"{source}: visual.pos_embedding has {positions} positions, "
                                          f"not a class token plus a square grid of patches")
    _expect(dim % keys.CLIP_HEAD_DIM == 0, f"{source}: the visual tower is {dim} wide, not a multiple of the "
                                           f"{keys.CLIP_HEAD_DIM}-wide heads of ViT-H/14")
    _expect("visual.pre_norm.weight" in shapes and "visual.patch_embedding.bias" not in shapes,
            f"{source}: the visual tower is not the pre-norm ViT of open-clip ViT-H/14 (Wan's image encoder)")
    num_layers = len({k.split(".")[2] for k in shapes if k.startswith("visual.transformer.")})
    _expect(num_layers >= 2, f"{source}: the visual tower has {num_layers} blocks; Wan reads the penultimate one")
    return CLIPVisionConfig(
        hidden_size=dim,
        intermediate_size=_shape(shapes, "visual.transformer.0.mlp.0.weight", source)[0],
        num_hidden_layers=num_layers,
        num_attention_heads=dim // keys.CLIP_HEAD_DIM,
        num_channels=patch[1],
        image_size=grid * patch[-1],
        patch_size=patch[-1],
        hidden_act="gelu",  # open-clip ViT-H uses exact GELU (transformers' default is quick_gelu)
        layer_norm_eps=1e-5,
    )


def _load_upstream_clip(path: Path, dtype) -> CLIPVisionModel:
    from transformers import CLIPVisionModel

    state_dict = _load_pth(path)
    model = _empty_model(CLIPVisionModel, _upstream_clip_config(_shapes_of(state_dict), path))
    converted = _convert_keys(keys.clip_visual_from_upstream, state_dict, path, "upstream Wan CLIP keys")
    del state_dict  # the text tower (about half of the real file) is dropped here
    # Some transformers versions nest the tower under a prefix (vision_model.): follow the model's own names.
    prefix = next(k for k in model.state_dict() if k.endswith("embeddings.class_embedding"))
    prefix = prefix[:-len("embeddings.class_embedding")]
    converted = {prefix + k: v for k, v in converted.items()}
    _check_keys(model, converted, path)
    _assign(model, converted, path, dtype)
    return model.eval()


def _upstream_preprocessing(processor: CLIPImageProcessor, image_size: int) -> CLIPImageProcessor:
    """`processor` set to upstream's preprocessing, which both layouts use (the front end is upstream's): the
    whole image squashed (bicubic) to the encoder's square size, no crop, then the processor's mean/std
    normalisation. A diffusers folder's processor may say resize-the-short-side-and-crop, CLIP's usual way.

    Upstream resizes a float tensor with torch's bicubic; transformers resizes with PIL's, so the image
    features agree closely, not bit for bit.
    """
    square = {"height": image_size, "width": image_size}
    processor.size, processor.crop_size, processor.do_center_crop = square, dict(square), False
    return processor


def _convert_keys(converter, state_dict: dict, path: Path, expected: str) -> dict:
    """`converter(state_dict)`, its KeyError on an unknown key turned into a one-line CheckpointError."""
    try:
        return converter(state_dict)
    except KeyError as err:
        raise CheckpointError(f"{path}: {err.args[0]} (expected {expected})") from None


def _shapes_of(state_dict: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


# --- building models from converted state dicts ----------------------------------------------------

def _empty_model(model_cls, config):
    """`model_cls` with parameters on the meta device, so checkpoint tensors are adopted, never copied."""
    # include_buffers=False: non-persistent buffers (rope tables) are computed, not loaded.
    with init_empty_weights(include_buffers=False):
        return model_cls(config) if isinstance(config, PretrainedConfig) else model_cls(**config)


def _summarise_keys(names: set[str]) -> str:
    shown = sorted(names)[:3]
    more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
    return ", ".join(shown) + more


def _check_keys(model, names, source: Path) -> None:
    """Strict key check up front (before loading any shard), summarised on one line."""
    expected = set(model.state_dict())
    missing, unexpected = expected - set(names), set(names) - expected
    if missing or unexpected:
        parts = ([f"missing {_summarise_keys(missing)}"] if missing else []) + \
                ([f"unexpected {_summarise_keys(unexpected)}"] if unexpected else [])
        raise CheckpointError(f"{source}: weights do not match the {type(model).__name__} derived from the files: {'; '.join(parts)}")


def _fp32_module_names(model, dtype) -> set[str]:
    """Module names whose parameters from_pretrained would keep in fp32 at `dtype` (so both layouts agree)."""
    if isinstance(model, PreTrainedModel):  # transformers: the plain list guards fp16 only, the strict one bf16 too
        names = set(model._keep_in_fp32_modules_strict or ()) if dtype in (torch.float16, torch.bfloat16) else set()
        return names | (set(model._keep_in_fp32_modules or ()) if dtype == torch.float16 else set())
    return set(getattr(model, "_keep_in_fp32_modules", None) or ())  # diffusers: at any dtype


def _assign(model, state_dict: dict, source: Path, dtype) -> None:
    """Cast (in place, one tensor at a time, to bound memory) and adopt `state_dict`'s tensors into `model`."""
    fp32_modules = _fp32_module_names(model, dtype)
    for key, value in state_dict.items():
        if value.is_floating_point():
            state_dict[key] = value.to(torch.float32 if fp32_modules & set(key.split(".")) else dtype)
    try:
        # strict=False: a shard holds part of the keys; _check_keys already checked the whole set
        model.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), first_line(err))
        raise CheckpointError(f"{source}: weights do not match the {type(model).__name__} derived from the files: {detail}") from None


TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # either serves (google/umt5-xxl ships both)


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    if path.is_dir() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"cannot load the tokenizer from {path}: it has no {' or '.join(TOKENIZER_FILES)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except FILE_ERRORS as err:
        raise CheckpointError(f"cannot load the tokenizer from {path}: {first_line(err)}") from None
    return check_tokenizer_vocabulary(tokenizer, path)


# --- diffusers layout ------------------------------------------------------------------------------

_DIFFUSERS_PARTS = {
    "transformer": "the Wan transformer",
    "vae": "the AutoencoderKLWan",
    "text_encoder": "the UMT5 text encoder",
    "tokenizer": "the UMT5 tokenizer",
    "image_encoder": "the CLIP image encoder (i2v, flf2v)",
    "image_processor": "the CLIP image processor (i2v, flf2v)",
}


def _load_diffusers_layout(root, task, dtype, text_encoder_dtype, vae_dtype) -> WanComponents:
    is_i2v = is_image_to_video(task)
    parts = [p for p in _DIFFUSERS_PARTS if is_i2v or not p.startswith("image_")]
    for part in parts:
        if not (root / part).is_dir():
            raise CheckpointError(f"checkpoint folder missing: {root / part} ({_DIFFUSERS_PARTS[part]}, "
                                  f"expected next to {DIFFUSERS_INDEX_FILE})")

    if is_i2v:
        from transformers import CLIPImageProcessor, CLIPVisionModel

    def load(cls, part, weights=True, **kwargs):
        return from_pretrained_checked(cls, str(root), _DIFFUSERS_PARTS[part], weights=weights, subfolder=part,
                                       local_files_only=True, **kwargs)

    components = WanComponents(
        transformer=load(_diffusers_transformer_class(root), "transformer", torch_dtype=dtype),
        vae=load(AutoencoderKLWan, "vae", torch_dtype=vae_dtype),
        text_encoder=load(UMT5EncoderModel, "text_encoder", dtype=text_encoder_dtype),
        tokenizer=check_tokenizer_vocabulary(load(AutoTokenizer, "tokenizer", weights=False), root / "tokenizer"),
        layout="diffusers",
    )
    if is_i2v:
        components.image_encoder = load(CLIPVisionModel, "image_encoder", dtype=dtype)
        processor = load(CLIPImageProcessor, "image_processor", weights=False)
        components.image_processor = _upstream_preprocessing(processor, components.image_encoder.config.image_size)
    return components


def _diffusers_transformer_class(root: Path):
    """The transformer class its config names: loading a VACE folder as WanTransformer3DModel would drop the
    control blocks with only a warning."""
    path = root / "transformer" / "config.json"
    try:
        name = json.loads(path.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return WanTransformer3DModel  # from_pretrained reports the unreadable config in its own words
    return WanVACETransformer3DModel if name == WanVACETransformer3DModel.__name__ else WanTransformer3DModel


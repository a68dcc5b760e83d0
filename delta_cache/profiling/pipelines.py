"""Profiling a diffusers video pipeline built in Python: `profile_pipeline(pipe, prompts, ...)`.

`scripts/profile_model.py` profiles what the front ends load (upstream Wan2.1 and HunyuanVideo checkpoints);
this is the same profiler for a pipeline a user already has: a fine-tune or a LoRA, a hub checkpoint in
diffusers' layout, or another family (CogVideoX, LTX-Video, Mochi). The families differ only in where the
video tokens are and how the pipeline batches classifier-free guidance; `FAMILIES` holds that, one entry per
transformer class, and everything else (probe, masks, profile, derivation, report) is shared.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, UserInputError
from ..models.common import first_line
from .masks import load_mask_file
from .profile import Profile
from .runner import ProfileRequest, run_profile


def _call_arguments(transformer: torch.nn.Module, args: tuple, kwargs: dict) -> dict:
    """The transformer call's arguments by name (the pipelines pass some by position)."""
    return inspect.signature(type(transformer).forward).bind_partial(transformer, *args, **kwargs).arguments


def _patches(config) -> tuple[int, int, int]:
    """(temporal, height, width) patch sizes from a transformer config (an int or a (t, h, w) triple)."""
    patch = config.patch_size
    if isinstance(patch, (tuple, list)):
        return int(patch[0]), int(patch[1]), int(patch[2])
    return int(getattr(config, "patch_size_t", None) or 1), int(patch), int(patch)


def _grid(frames: int, height: int, width: int, config) -> tuple[int, int, int]:
    """The token grid of a latent of `frames` x `height` x `width`, which the patches must divide."""
    pt, ph, pw = _patches(config)
    for what, size, patch in (("frames", frames, pt), ("height", height, ph), ("width", width, pw)):
        if size % patch:
            raise UserInputError(f"the latent's {what} ({size}) is not a multiple of the transformer's patch "
                                 f"({patch}): choose a video size whose latent it divides")
    return frames // pt, height // ph, width // pw


def _fold_time(latents: torch.Tensor, temporal_patch: int) -> torch.Tensor:
    """(C, F, H, W) -> (C * pt, F / pt, H, W): the frames one token spans become channels."""
    c, f, h, w = latents.shape
    f -= f % temporal_patch
    return latents[:, :f].reshape(c, f // temporal_patch, temporal_patch, h, w).transpose(1, 2).reshape(
        c * temporal_patch, f // temporal_patch, h, w)


# ---- per family: the video's token layout at a transformer call, and its final latents per token grid -------
def _channels_first_layout(transformer, args, kwargs) -> dict:  # Wan, HunyuanVideo, Mochi: (B, C, F, H, W)
    _, _, frames, height, width = _call_arguments(transformer, args, kwargs)["hidden_states"].shape
    return {"token_grid": _grid(frames, height, width, transformer.config)}


def _channels_first_latents(latents, transformer, token_grid):
    return _fold_time(latents[0], _patches(transformer.config)[0])


def _mochi_layout(transformer, args, kwargs) -> dict:
    # Mochi's attention runs once per sample of the batch; the prompt's sample is the last
    hidden = _call_arguments(transformer, args, kwargs)["hidden_states"]
    return {**_channels_first_layout(transformer, args, kwargs), "attention_call": hidden.shape[0] - 1}


def _cogvideox_layout(transformer, args, kwargs) -> dict:
    # (B, F, C, H, W); the attention puts the text tokens in front of the video's
    arguments = _call_arguments(transformer, args, kwargs)
    _, frames, _, height, width = arguments["hidden_states"].shape
    return {"token_grid": _grid(frames, height, width, transformer.config),
            "attention_prefix_tokens": int(arguments["encoder_hidden_states"].shape[1])}


def _cogvideox_latents(latents, transformer, token_grid):
    return _fold_time(latents[0].transpose(0, 1), _patches(transformer.config)[0])


def _ltx_layout(transformer, args, kwargs) -> dict:
    # tokens arrive packed (B, tokens, C * patch volume), with the latent's frames, height and width
    arguments = _call_arguments(transformer, args, kwargs)
    return {"token_grid": _grid(int(arguments["num_frames"]), int(arguments["height"]), int(arguments["width"]),
                                transformer.config)}


def _ltx_latents(latents, transformer, token_grid):
    packed = latents[0]  # (tokens, channels): a token's latent values are one "pixel" of the token grid
    return packed.reshape(*token_grid, packed.shape[-1]).permute(3, 0, 1, 2)


def _spatial_patch(transformer) -> tuple[int, int]:
    return _patches(transformer.config)[1:]


@dataclass(frozen=True)
class VideoFamily:
    block_lists: tuple[str, ...]
    branch: str  # the cache_context of the transformer calls that carry the prompt
    sample: int | None  # the prompt's sample in the batch (None: a batch of the prompt alone)
    layout: Callable  # (transformer, args, kwargs) -> ProbeSettings fields for the video's tokens
    latents: Callable  # (pipeline's final latents, transformer, token grid) -> (C, F, H, W) on the token frames
    mask_patch: Callable = _spatial_patch  # (transformer) -> latent pixels per token (height, width) in `latents`


FAMILIES = {
    "WanTransformer3DModel": VideoFamily(("blocks",), "cond", None, _channels_first_layout, _channels_first_latents),
    "HunyuanVideoTransformer3DModel": VideoFamily(("transformer_blocks", "single_transformer_blocks"), "cond", None,
                                                  _channels_first_layout, _channels_first_latents),
    # these three batch [negative prompt, prompt] in one call
    "CogVideoXTransformer3DModel": VideoFamily(("transformer_blocks",), "cond_uncond", -1, _cogvideox_layout,
                                               _cogvideox_latents),
    "LTXVideoTransformer3DModel": VideoFamily(("transformer_blocks",), "cond_uncond", -1, _ltx_layout, _ltx_latents,
                                              mask_patch=lambda transformer: (1, 1)),
    "MochiTransformer3DModel": VideoFamily(("transformer_blocks",), "cond_uncond", -1, _mochi_layout,
                                           _channels_first_latents),
}


def video_family(transformer: torch.nn.Module) -> VideoFamily:
    name = type(transformer).__name__
    if name not in FAMILIES:
        raise UserInputError(f"profile_pipeline does not know where {name}'s video tokens are; it profiles "
                             f"{', '.join(FAMILIES)}")
    return FAMILIES[name]


def _plain(value):
    """`value` in a form a schedule's JSON provenance can hold, and that tells runs apart on resume: numbers,
    strings and lists or dicts of them as they are; images and arrays by their size and a digest of their data;
    anything else by its type's name."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (np.integer, np.floating)):
        return _plain(value.item())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    if hasattr(value, "size") and hasattr(value, "tobytes") and not isinstance(value, np.ndarray):  # a PIL image
        return f"{type(value).__name__} {value.size[0]}x{value.size[1]} sha1 {_digest(value.tobytes())}"
    if isinstance(value, np.ndarray):
        return f"array {'x'.join(map(str, value.shape))} sha1 {_digest(np.ascontiguousarray(value).tobytes())}"
    return type(value).__name__


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:12]


def check_uncached(transformer: torch.nn.Module) -> None:
    """A profile describes the uncached model: a cache on the transformer (ours, TeaCache or diffusers') would
    make it describe the cached run."""
    from ..hooks import _HANDLE_ATTR as DELTA_CACHE, check_transformer
    from ..teacache import _HANDLE_ATTR as TEACACHE

    for attribute, name in ((DELTA_CACHE, "the delta cache"), (TEACACHE, "TeaCache")):
        if getattr(transformer, attribute, None) is not None:
            raise UserInputError(f"the transformer has {name} on: a profile must see the uncached model; remove it "
                                 f"first (delta_cache.remove_delta_cache, or the handle's remove())")
    check_transformer(transformer, "profile_pipeline")


def _temporal_stride(pipe, transformer) -> int:
    """Video frames per token frame (after the first): the VAE's temporal ratio times the temporal patch."""
    for name in ("vae_scale_factor_temporal", "vae_temporal_compression_ratio", "vae_temporal_scale_factor"):
        ratio = getattr(pipe, name, None)
        if isinstance(ratio, int) and ratio > 0:
            return ratio * _patches(transformer.config)[0]
    return 4 * _patches(transformer.config)[0]


def profile_pipeline(pipe, prompts: Sequence[str], *, seeds: Sequence[int] = (0,), out_dir: str | Path | None = None,
                     resume: bool = False, mask_source: str = "motion", mask_files: Sequence[str | Path] | None = None,
                     max_queries: int = 256, high_fraction: float = 0.25, provenance: dict | None = None,
                     **pipe_kwargs) -> Profile:
    """Profile `pipe` (a diffusers video pipeline) on every prompt and seed: one uncached generation each.

    `pipe_kwargs` go to every `pipe(...)` call (num_inference_steps, height, width, num_frames, guidance_scale,
    negative_prompt, ...): profile with the settings the schedule is for. The result is what
    `derive_for_target(profile, 2.0)` or `derive_schedule(profile, params)` turn into a schedule, and
    `write_report(profile, schedule, folder)` draws. With `out_dir`, each prompt's profile is saved as it is
    done and `resume=True` skips those already there. `mask_source`: "motion" or "pca" (from the final latents),
    or "files" with one .npy mask per prompt and seed in `mask_files` (token grid or pixels, see
    docs/profiling.md). `provenance`: entries to add to the profile's (and so the schedule's) provenance.
    """
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise UserInputError(f"{type(pipe).__name__} has no transformer to profile")
    if hasattr(transformer, "_orig_mod"):
        raise UserInputError("the transformer is compiled (torch.compile): profile it before compiling")
    if getattr(pipe, "transformer_2", None) is not None:
        raise UserInputError("this pipeline has a second transformer (Wan 2.2's low-noise expert): "
                             "profile_pipeline profiles one transformer over all steps; not supported yet")
    family = video_family(transformer)
    check_uncached(transformer)
    seeds, max_queries = _checked_arguments(prompts, seeds, max_queries, high_fraction, mask_source, mask_files,
                                            pipe_kwargs)
    pairs = [(prompt, seed) for prompt in prompts for seed in seeds]
    if mask_files is not None:
        mask_files = [Path(f) for f in mask_files]
        _check_mask_files(mask_files, len(pairs))

    device = getattr(pipe, "_execution_device", None) or transformer.device
    their_callback = pipe_kwargs.pop("callback_on_step_end", None)
    # (a diffusers PipelineCallback names the tensors it reads; a function's are in the call's arguments)
    their_inputs = list(pipe_kwargs.pop("callback_on_step_end_tensor_inputs", None)
                        or getattr(their_callback, "tensor_inputs", None) or [])
    seen = {}  # the run's token grid (from the transformer's first call), its steps and latents after the last

    def layout(module, args, kwargs) -> dict:
        try:
            fields = family.layout(module, args, kwargs)
        except UserInputError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as err:  # (e.g. LTXConditionPipeline's video_coords)
            detail = f"no argument {err}" if isinstance(err, KeyError) else first_line(err)
            raise UserInputError(f"cannot read where the video tokens are in {type(pipe).__name__}'s calls of "
                                 f"{type(module).__name__} ({detail}); not supported") from None
        seen["grid"] = fields["token_grid"]
        for path in mask_files or ():  # (before the generation goes on: a mask that does not fit fails here)
            load_mask_file(path, seen["grid"], request.mask_temporal_stride)
        return fields

    def keep_latents(pipeline, step, timestep, callback_kwargs):
        changed = their_callback(pipeline, step, timestep, callback_kwargs) if their_callback else {}
        seen["latents"] = (changed or {}).get("latents", callback_kwargs["latents"])
        seen["steps"] = seen.get("steps", 0) + 1
        return changed

    def one_call_per_step(record) -> None:
        recorded = len(next(iter(record.high_attention.values())))
        if recorded != seen.get("steps"):  # (a pipeline whose prompt's calls cannot be told from its other ones)
            raise UserInputError(f"{type(pipe).__name__} made {recorded} transformer calls for the prompt in "
                                 f"{seen.get('steps')} steps: its prompt's calls cannot be told from its other "
                                 f"ones; not supported")

    def denoise(prompt: str, seed: int) -> torch.Tensor:
        seen.clear()
        try:
            pipe(prompt=prompt, generator=torch.Generator(device).manual_seed(seed), output_type="latent",
                 callback_on_step_end=keep_latents,
                 callback_on_step_end_tensor_inputs=["latents", *(x for x in their_inputs if x != "latents")],
                 **pipe_kwargs)
        except UserInputError:
            raise
        except (ValueError, TypeError) as err:  # (a pipeline's checks of its inputs, an unknown keyword: one line)
            if isinstance(err, TypeError) and "argument" not in str(err):
                raise
            raise UserInputError(f"{type(pipe).__name__}: {first_line(err)}") from None
        if "latents" not in seen or "grid" not in seen:
            raise UserInputError(f"{type(pipe).__name__} ran no denoising step for {prompt!r}")
        return family.latents(seen["latents"].detach().float().cpu(), transformer, seen["grid"]).unsqueeze(0)

    request = ProfileRequest(prompts=pairs, block_lists=list(family.block_lists), token_grid=None, layout=layout,
                             branch=family.branch, sample=family.sample, patch=family.mask_patch(transformer),
                             check_record=one_call_per_step, mask_source=mask_source, mask_files=mask_files,
                             mask_temporal_stride=_temporal_stride(pipe, transformer), max_queries=max_queries,
                             high_fraction=high_fraction)
    provenance = {**(provenance or {}), "model": type(transformer).__name__,
                  "checkpoint": _plain(getattr(transformer.config, "_name_or_path", None)),
                  "pipeline": type(pipe).__name__, "prompts": [p for p, _ in pairs], "seeds": seeds,
                  "mask_source": mask_source, "max_queries": max_queries, "high_fraction": high_fraction,
                  **{name: _plain(value) for name, value in sorted(pipe_kwargs.items())}}
    if mask_files is not None:  # (the masks' contents: a resume with other masks must not reuse the profiles)
        provenance["mask_files"] = [_plain(np.load(f)) for f in mask_files]
    return run_profile(transformer, denoise, request, out_dir=out_dir, resume=resume, provenance=provenance)


def _checked_arguments(prompts, seeds, max_queries, high_fraction, mask_source, mask_files, pipe_kwargs
                       ) -> tuple[list, int]:
    """profile_pipeline's arguments checked, each a one-line UserInputError; (seeds as ints, max_queries)."""
    if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise UserInputError("prompts must be a non-empty list of strings")
    if getattr(seeds, "ndim", None) == 0:  # (a 0-d numpy array or tensor: one seed)
        seeds = seeds.item()
    seeds = list(seeds) if isinstance(seeds, Iterable) and not isinstance(seeds, (str, bytes)) else [seeds]
    if not seeds or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise UserInputError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if not 0 < high_fraction < 1:
        raise UserInputError(f"high_fraction must be between 0 and 1, got {high_fraction}")
    if not isinstance(max_queries, numbers.Integral) or max_queries < 1:
        raise UserInputError(f"max_queries must be a positive integer, got {max_queries!r}")
    for name in ("prompt", "generator", "output_type"):
        if name in pipe_kwargs:
            raise UserInputError(f"profile_pipeline sets {name} itself; leave it out of the pipeline arguments")
    if pipe_kwargs.get("num_videos_per_prompt", 1) != 1:
        raise UserInputError("profile_pipeline profiles one video per prompt and seed: leave num_videos_per_prompt at 1 "
                             "(give more seeds instead)")
    if mask_source not in ("motion", "pca", "files"):
        raise UserInputError(f"mask_source must be motion, pca or files, got {mask_source!r}")
    if (mask_files is not None) != (mask_source == "files"):
        raise UserInputError("mask_files go with mask_source='files' (one per prompt and seed), and only with it")
    return [int(s) for s in seeds], int(max_queries)


def _check_mask_files(paths: list[Path], runs: int) -> None:
    """Before any generation: one readable 3-D .npy array per run (fitted to the token grid at the first call)."""
    if len(paths) != runs:
        raise UserInputError(f"mask_files: {len(paths)} files for {runs} runs (one per prompt and seed, prompts first)")
    for path in paths:
        try:
            mask = np.load(path)
        except (OSError, ValueError) as err:
            raise UserInputError(f"mask file {path}: cannot read it as a .npy array ({first_line(err)})") from None
        if mask.ndim != 3:
            raise UserInputError(f"mask file {path}: expected a 3-D array (frames, height, width), got shape "
                                 f"{mask.shape}")


# ---- a diffusers pipeline folder (scripts/profile_model.py --family diffusers) ------------------------------
def check_pipeline_folder(folder: str | Path) -> str:
    """The pipeline class a diffusers pipeline folder declares, after checking (from model_index.json, before any
    weights load) that its transformer is one `profile_pipeline` knows."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    if not index.is_file():
        raise CheckpointError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    try:
        declared = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{index}: cannot read it as JSON ({err})") from None
    if not isinstance(declared, dict):
        raise CheckpointError(f"{index}: expected a JSON object")

    def component_class(name):
        entry = declared.get(name)
        return entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None

    transformer = component_class("transformer")
    if transformer is None:
        raise CheckpointError(f"{index}: the pipeline has no transformer component")
    if transformer not in FAMILIES:
        raise UserInputError(f"{folder}: profile_pipeline does not know where {transformer}'s video tokens are; it "
                             f"profiles {', '.join(FAMILIES)}")
    if component_class("transformer_2") is not None:
        raise UserInputError(f"{folder}: the pipeline has a second transformer (Wan 2.2's low-noise expert), which "
                             f"the scripts for pipeline folders do not handle yet (the cache does, from Python)")
    pipeline = str(declared.get("_class_name") or "pipeline")
    needs = _input_media(pipeline)
    if needs:
        raise UserInputError(f"{folder}: {pipeline} takes {needs} as input, which the scripts for pipeline folders do "
                             f"not give; use delta_cache.profile_pipeline / apply_delta_cache from Python")
    return pipeline


def _input_media(pipeline: str) -> str | None:
    """'an image' / 'a video' when the diffusers pipeline class `pipeline` takes one (image- or video-to-video)."""
    import diffusers

    cls = getattr(diffusers, pipeline, None)
    parameters = inspect.signature(cls.__call__).parameters if cls is not None else {}
    return "an image" if "image" in parameters else "a video" if "video" in parameters else None


def declared_depths(folder: str | Path) -> dict[str, int]:
    """Block list -> depth, from the folder's transformer/config.json (before loading; empty where unreadable)."""
    from ..models.common import declared_count

    folder = Path(folder)
    try:
        transformer = json.loads((folder / "model_index.json").read_text())["transformer"][1]
        config = json.loads((folder / "transformer" / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}
    counts = {"transformer_blocks": config.get("num_layers"), "blocks": config.get("num_layers"),
              "single_transformer_blocks": config.get("num_single_layers")}
    depths = {name: declared_count(counts.get(name)) for name in FAMILIES[transformer].block_lists}
    return {} if None in depths.values() else depths


def load_pipeline(folder: str | Path, device: torch.device, dtype: torch.dtype, progress: bool = True):
    """The diffusers pipeline in `folder`, in `dtype`, on `device` (model CPU offload on a GPU, one model at a time,
    as the front ends at real size); every failure one CheckpointError. Its models are loaded one by one first,
    so that weights the folder lacks are refused (a library would leave them at random values)."""
    from diffusers import DiffusionPipeline

    from ..models.common import FILE_ERRORS, check_tokenizer_vocabulary, from_pretrained_checked, library_warnings_off
    from ..models.runner import place

    folder = Path(folder)
    check_pipeline_folder(folder)
    models = {}
    for name, entry in json.loads((folder / "model_index.json").read_text()).items():
        component = _component_class(entry)
        if isinstance(component, type) and issubclass(component, torch.nn.Module):
            models[name] = from_pretrained_checked(component, folder, f"the {name}", subfolder=name, dtype=dtype)
    try:
        with library_warnings_off():
            pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=dtype, **models)
    except (*FILE_ERRORS, ImportError) as err:
        raise CheckpointError(f"cannot load the pipeline in {folder}: {first_line(err)}") from None
    for name, component in pipe.components.items():
        if name.startswith("tokenizer") and component is not None:
            check_tokenizer_vocabulary(component, folder / name)
    place(pipe, device, offload=True, progress=progress)
    return pipe


def _component_class(entry):
    """The diffusers or transformers class a model_index.json entry ["library", "ClassName"] names, or None (other
    libraries are left to diffusers, which does not import them either)."""
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        return None
    if entry[0] == "diffusers":
        import diffusers as library
    elif entry[0] == "transformers":
        import transformers as library
    else:
        return None
    return getattr(library, entry[1], None)


def check_size_flag(size: str | None) -> None:
    """--size for a diffusers pipeline folder: None (the pipeline's default) or WIDTH*HEIGHT of positive integers
    (the multiples a model needs are checked at its first call)."""
    if size is not None:
        parts = size.split("*")
        if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
            raise UserInputError(f"--size must be WIDTH*HEIGHT (e.g. 720*480), got {size!r}")


def load_folder_pipeline(args):
    """(pipeline, its keyword arguments) from the scripts' flags for a diffusers pipeline folder: --ckpt_dir, --dtype
    ("auto": bfloat16 on a GPU, float32 on the CPU), --sample_steps, and where given --size, --frame_num,
    --sample_guide_scale and --negative_prompt (else the pipeline's defaults)."""
    from ..models.runner import pick_device

    device = pick_device()
    dtype = (torch.bfloat16 if device.type == "cuda" else torch.float32) if args.dtype == "auto" else \
        getattr(torch, args.dtype)
    pipe = load_pipeline(args.ckpt_dir, device, dtype)
    call = {"num_inference_steps": args.sample_steps}
    if args.size is not None:
        call["width"], call["height"] = (int(v) for v in args.size.split("*"))
    for name, value in (("num_frames", args.frame_num), ("guidance_scale", args.sample_guide_scale),
                        ("negative_prompt", args.negative_prompt)):
        if value is not None:
            call[name] = value
    return pipe, call

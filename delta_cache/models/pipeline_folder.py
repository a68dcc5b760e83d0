"""A diffusers pipeline folder (model_index.json) for the scripts that take one: checked before any weights load
(`check_pipeline_folder`, which returns what the folder declares: `DeclaredPipeline`), loaded with every model's
weights checked (`load_pipeline`), and the scripts' flags turned into the pipeline's arguments
(`load_folder_pipeline`)."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..cli import check_input_folder
from ..errors import CheckpointError, UserInputError
from .common import (FILE_ERRORS, check_tokenizer_vocabulary, declared_count, first_line, from_pretrained_checked,
                     library_warnings_off, read_model_index)
from .video_families import FAMILIES


@dataclass(frozen=True)
class DeclaredPipeline:
    """What a pipeline folder's model_index.json declares, read before any weights load."""

    folder: Path
    pipeline: str  # the diffusers pipeline class
    transformers: dict[str, str]  # component -> transformer class: "transformer" (and "transformer_2": Wan 2.2)

    def depths(self, component: str = "transformer") -> dict[str, int]:
        """Block list -> depth, from `component`/config.json (empty where it does not say)."""
        try:
            config = json.loads((self.folder / component / "config.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return {}
        family = FAMILIES[self.transformers[component]]
        depths = {name: declared_count(config.get(key)) if isinstance(config, dict) else None
                  for name, key in zip(family.block_lists, family.depth_keys)}
        return {} if None in depths.values() else depths


def check_pipeline_folder(folder: str | Path) -> DeclaredPipeline:
    """What a diffusers pipeline folder declares, after checking (from model_index.json, before any weights load)
    that its transformers are of one of `video_families.FAMILIES` and its inputs are text."""
    folder = Path(folder)
    index = folder / "model_index.json"
    check_input_folder("--ckpt_dir", folder)
    if not index.is_file():
        raise CheckpointError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
    declared = read_model_index(index)

    def component_class(name):
        entry = declared.get(name)
        return entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else None

    transformer = component_class("transformer")
    if transformer is None:
        raise CheckpointError(f"{index}: the pipeline has no transformer component")
    if transformer not in FAMILIES:
        raise UserInputError(f"{folder}: delta_cache does not know where {transformer}'s video tokens are; it "
                             f"profiles {', '.join(FAMILIES)}")
    second = component_class("transformer_2")  # (Wan 2.2's low-noise expert: profiled and cached as the first)
    if second is not None and second != transformer:
        raise UserInputError(f"{folder}: the pipeline's second transformer is a {second}, its first a {transformer}; "
                             f"the scripts for pipeline folders take two transformers of one class (Wan 2.2's experts)")
    pipeline = str(declared.get("_class_name") or "pipeline")
    if "DiffusionForcing" in pipeline:
        raise UserInputError(f"{folder}: {pipeline} runs frames at different noise levels in one call (diffusion "
                             f"forcing), which the delta cache does not run; use SkyReels-V2's text-to-video pipeline")
    boundary = declared.get("boundary_ratio")
    if second is not None and not isinstance(boundary, (int, float)):
        raise UserInputError(f"{folder}: the pipeline has a transformer_2 but no boundary_ratio in model_index.json, "
                             f"so it runs transformer on every step: nothing for transformer_2 to profile or cache")
    needs = _input_media(pipeline)
    if needs:
        raise UserInputError(f"{folder}: {pipeline} takes {needs} as input, which the scripts for pipeline folders do "
                             f"not give; use delta_cache.profile_pipeline / apply_delta_cache from Python")
    transformers = {"transformer": transformer, **({"transformer_2": second} if second is not None else {})}
    return DeclaredPipeline(folder, pipeline, transformers)


def _input_media(pipeline: str) -> str | None:
    """'an image' / 'a video' when the diffusers pipeline class `pipeline` takes one (image- or video-to-video)."""
    import diffusers

    cls = getattr(diffusers, pipeline, None)
    parameters = inspect.signature(cls.__call__).parameters if cls is not None else {}
    return "an image" if "image" in parameters else "a video" if "video" in parameters else None


def load_pipeline(folder: str | Path, device: torch.device, dtype: torch.dtype, progress: bool = True):
    """The diffusers pipeline in `folder`, in `dtype`, on `device` (model CPU offload on a GPU, one model at a time,
    as the front ends at real size); every failure one CheckpointError. Its models are loaded one by one first,
    so that weights the folder lacks are refused (a library would leave them at random values)."""
    from diffusers import DiffusionPipeline

    from .runner import place

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
    from .runner import pick_device

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
    guider = getattr(pipe, "guider", None)
    if "guidance_scale" in call and "guidance_scale" not in inspect.signature(type(pipe).__call__).parameters:
        if guider is None or not hasattr(guider, "new"):
            raise UserInputError(f"--sample_guide_scale: {type(pipe).__name__} takes no guidance scale")
        pipe.guider = guider.new(guidance_scale=call.pop("guidance_scale"))  # (HunyuanVideo 1.5: its guider's)
    return pipe, call

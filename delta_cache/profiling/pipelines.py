"""Profiling a diffusers video pipeline built in Python: `profile_pipeline(pipe, prompts, ...)`.

`scripts/profile_model.py` profiles what the front ends load (upstream Wan2.1 and HunyuanVideo checkpoints);
this is the same profiler for a pipeline a user already has: a fine-tune or a LoRA, a hub checkpoint in
diffusers' layout, or another family (CogVideoX, LTX-Video, Mochi, SkyReels-V2, HunyuanVideo 1.5). Where each
family's video tokens are is in `models.video_families`; everything else (probe, masks, profile, derivation,
report) is shared.

`profile_experts(pipe, prompts, ...)` is the same for a pipeline with two transformers (Wan 2.2's high- and
low-noise experts, `transformer` and `transformer_2`): both are profiled in the same generations, each on the
steps it runs, and each gets its own profile, from which its own schedule is derived.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import numbers
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..errors import UserInputError
from ..models.common import first_line, pipeline_input_error
from ..models.experts import EXPERTS
from ..models.video_families import _patches, video_family
from .masks import load_mask_file
from .profile import Profile
from .runner import ProfileRequest, run_profiles


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
                     resume: bool = False, mask_source: str = "video_motion",
                     mask_files: Sequence[str | Path] | None = None,
                     max_queries: int = 256, high_fraction: float = 0.25, provenance: dict | None = None,
                     **pipe_kwargs) -> Profile:
    """Profile `pipe` (a diffusers video pipeline) on every prompt and seed: one uncached generation each.

    `pipe_kwargs` go to every `pipe(...)` call (num_inference_steps, height, width, num_frames, guidance_scale,
    negative_prompt, ...): profile with the settings the schedule is for. The result is what
    `derive_for_target(profile, 2.0)` or `derive_schedule(profile, params)` turn into a schedule, and
    `write_report(profile, schedule, folder)` draws. With `out_dir`, each prompt's profile is saved as it is
    done and `resume=True` skips those already there. `mask_source`: "video_motion" (the moving subjects of the
    video the pipeline decodes), "motion" or "pca" (from the final latents; the pipeline then skips its VAE
    decode), or "files" with one .npy mask per prompt and seed in `mask_files` (token grid or pixels, see
    docs/profiling.md). `provenance`: entries to add to the profile's (and so the schedule's) provenance.
    A pipeline with two transformers (Wan 2.2) is profiled by `profile_experts`.
    """
    if getattr(pipe, "transformer_2", None) is not None:
        raise UserInputError("this pipeline has two transformers (Wan 2.2's high- and low-noise experts): profile "
                             "them with delta_cache.profile_experts(pipe, ...), which gives one profile each")
    return profile_experts(pipe, prompts, seeds=seeds, out_dir=out_dir, resume=resume, mask_source=mask_source,
                           mask_files=mask_files, max_queries=max_queries, high_fraction=high_fraction,
                           provenance=provenance, **pipe_kwargs)["transformer"]


def profile_experts(pipe, prompts: Sequence[str], *, seeds: Sequence[int] = (0,), out_dir: str | Path | None = None,
                    resume: bool = False, mask_source: str = "video_motion",
                    mask_files: Sequence[str | Path] | None = None,
                    max_queries: int = 256, high_fraction: float = 0.25, provenance: dict | None = None,
                    **pipe_kwargs) -> dict[str, Profile]:
    """`profile_pipeline` for a pipeline with one or two transformers: {"transformer": Profile} or, for Wan 2.2's
    experts, {"transformer": Profile, "transformer_2": Profile}, both from the same generations. Each profile
    covers the steps its transformer runs (`Profile.step_window`), and a schedule derived from it is placed into
    the run's steps, for that transformer:

        profiles = delta_cache.profile_experts(pipe, prompts, num_inference_steps=40)
        for name, profile in profiles.items():
            delta_cache.apply_delta_cache(getattr(pipe, name), derive_for_target(profile, 2.0))
    """
    names = [name for name in EXPERTS if getattr(pipe, name, None) is not None]
    if "transformer" not in names:
        raise UserInputError(f"{type(pipe).__name__} has no transformer to profile")
    transformers = {name: getattr(pipe, name) for name in names}
    for name, module in transformers.items():
        if hasattr(module, "_orig_mod"):
            raise UserInputError(f"the {name} is compiled (torch.compile): profile it before compiling")
    transformer = transformers["transformer"]
    family = video_family(transformer)
    if transformers.get("transformer_2") is transformer:
        raise UserInputError("the pipeline's transformer and transformer_2 are the same module: profile it with "
                             "profile_pipeline after setting pipe.transformer_2 = None")
    _check_expert_steps(pipe, pipe_kwargs)
    for name, module in transformers.items():
        if type(module) is not type(transformer):
            raise UserInputError(f"the pipeline's transformers are of different classes ({type(transformer).__name__}"
                                 f", {type(module).__name__}); not supported")
        check_uncached(module)
    seeds, max_queries = _checked_arguments(prompts, seeds, max_queries, high_fraction, mask_source, mask_files,
                                            pipe_kwargs)
    pairs = [(prompt, seed) for prompt in prompts for seed in seeds]
    mask_digests = None
    if mask_files is not None:
        mask_files = [Path(f) for f in mask_files]
        mask_digests = _check_mask_files(mask_files, len(pairs))

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

    def one_call_per_step(records) -> None:
        steps = seen.get("steps")
        recorded = {name: len(record.step_indices) for name, record in records.items()}
        if sum(recorded.values()) != steps:  # (a pipeline whose prompt's calls cannot be told from its other ones)
            raise UserInputError(f"{type(pipe).__name__} made {sum(recorded.values())} transformer calls for the "
                                 f"prompt in {steps} steps: its prompt's calls cannot be told from its other ones; "
                                 f"not supported")
        if len(records) > 1:  # each expert's steps must be where the pipeline says they are, together all steps
            runs = sorted((record.step_indices, record.num_inference_steps) for record in records.values())
            covered = [index for indices, _ in runs for index in indices]
            if covered != list(range(steps)) or any(total != steps for _, total in runs):
                raise UserInputError(f"{type(pipe).__name__} does not say which of its {steps} steps each transformer "
                                     f"runs (step_index and num_inference_steps in its cache_context); not supported")

    # A pipeline without step callbacks (HunyuanVideo 1.5's) gives its final latents as its output instead; its
    # steps are its scheduler's.
    parameters = inspect.signature(type(pipe).__call__).parameters
    takes_callbacks = "callback_on_step_end" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())  # (a wrapper passes them on)
    if not takes_callbacks and their_callback is not None:
        raise UserInputError(f"{type(pipe).__name__} takes no callback_on_step_end")

    # The video motion mask reads the video the pipeline decodes; the other sources skip the decode.
    output_type = "np" if mask_source == "video_motion" else "latent"

    def denoise(prompt: str, seed: int) -> torch.Tensor | None:
        seen.clear()
        generator = torch.Generator(device).manual_seed(seed)
        try:
            if takes_callbacks:
                inputs = ["latents", *(x for x in their_inputs if x != "latents")]
                output = pipe(prompt=prompt, generator=generator, output_type=output_type, return_dict=False,
                              callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=inputs,
                              **pipe_kwargs)
            else:
                output = pipe(prompt=prompt, generator=generator, output_type=output_type, return_dict=False,
                              **pipe_kwargs)
                # (the steps it ran: fewer than the scheduler's where an input video's strength trims them)
                seen["steps"] = getattr(pipe, "_num_timesteps", None) or len(pipe.scheduler.timesteps)
                if output_type == "latent":
                    seen["latents"] = output[0]
            if output_type == "np":
                seen["frames"] = np.asarray(output[0][0])
        except UserInputError:
            raise
        except (ValueError, TypeError) as err:  # (a pipeline's checks of its inputs, an unknown keyword: one line)
            refusal = pipeline_input_error(pipe, err)
            if refusal is None:
                raise
            raise refusal from None
        if "grid" not in seen or not ("latents" in seen or "frames" in seen):
            raise UserInputError(f"{type(pipe).__name__} ran no denoising step for {prompt!r}")
        if "latents" not in seen:  # (a pipeline without step callbacks that decoded its video: the mask reads that)
            return None
        return family.latents(seen["latents"].detach().float().cpu(), transformer, seen["grid"]).unsqueeze(0)

    request = ProfileRequest(prompts=pairs, block_lists=list(family.block_lists), token_grid=None, layout=layout,
                             branch=family.branch, sample=family.sample, patch=family.mask_patch(transformer),
                             check_record=one_call_per_step, mask_source=mask_source, mask_files=mask_files,
                             decode=lambda latents: seen["frames"],
                             mask_temporal_stride=_temporal_stride(pipe, transformer), max_queries=max_queries,
                             high_fraction=high_fraction)
    provenance = {**(provenance or {}), "model": type(transformer).__name__,
                  "checkpoint": _plain(getattr(transformer.config, "_name_or_path", None)),
                  "pipeline": type(pipe).__name__, "prompts": [p for p, _ in pairs], "seeds": seeds,
                  "mask_source": mask_source, "max_queries": max_queries, "high_fraction": high_fraction,
                  **{name: _plain(value) for name, value in sorted(pipe_kwargs.items())}}
    if mask_digests is not None:  # (the masks' contents: a resume with other masks must not reuse the profiles)
        provenance["mask_files"] = mask_digests
    return run_profiles(transformers, denoise, request, out_dir=out_dir, resume=resume, provenance=provenance)


def _check_expert_steps(pipe, pipe_kwargs) -> None:
    """Before any generation: each of Wan 2.2's experts runs some step (else the profile of one would be empty)."""
    from ..models.experts import default_steps, expert_steps

    if getattr(pipe, "transformer_2", None) is None:
        return
    if getattr(getattr(pipe, "config", None), "boundary_ratio", 0) is None:
        raise UserInputError(f"{type(pipe).__name__} has a transformer_2 but no boundary_ratio, so it runs transformer "
                             f"on every step: nothing to profile for transformer_2")
    num_steps = pipe_kwargs.get("num_inference_steps", default_steps(pipe))
    steps = expert_steps(pipe, num_steps) if isinstance(num_steps, int) and num_steps > 0 else None
    for name, own in (steps or {}).items():
        if not len(own):
            raise UserInputError(f"with num_inference_steps={num_steps} and boundary_ratio "
                                 f"{pipe.config.boundary_ratio}, {name} runs no step: nothing to profile for it (give "
                                 f"more steps)")


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
    for name in ("prompt", "generator", "output_type", "return_dict"):
        if name in pipe_kwargs:
            raise UserInputError(f"profile_pipeline sets {name} itself; leave it out of the pipeline arguments")
    if pipe_kwargs.get("num_videos_per_prompt", 1) != 1:
        raise UserInputError("profile_pipeline profiles one video per prompt and seed: leave num_videos_per_prompt at 1 "
                             "(give more seeds instead)")
    if mask_source not in ("video_motion", "motion", "pca", "files"):
        raise UserInputError(f"mask_source must be video_motion, motion, pca or files, got {mask_source!r}")
    if (mask_files is not None) != (mask_source == "files"):
        raise UserInputError("mask_files go with mask_source='files' (one per prompt and seed), and only with it")
    return [int(s) for s in seeds], int(max_queries)


def _check_mask_files(paths: list[Path], runs: int) -> list[str]:
    """Before any generation: one readable 3-D .npy array per run (fitted to the token grid at the first call);
    their provenance entries (shape and digest)."""
    if len(paths) != runs:
        raise UserInputError(f"mask_files: {len(paths)} files for {runs} runs (one per prompt and seed, prompts first)")
    digests = []
    for path in paths:
        try:
            mask = np.load(path)
        except (OSError, ValueError) as err:
            raise UserInputError(f"mask file {path}: cannot read it as a .npy array ({first_line(err)})") from None
        if mask.ndim != 3:
            raise UserInputError(f"mask file {path}: expected a 3-D array (frames, height, width), got shape "
                                 f"{mask.shape}")
        digests.append(_plain(mask))
    return digests

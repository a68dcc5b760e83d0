"""Profile a model over prompts: one uncached generation per prompt with a `ProfileProbe` attached.

Model families plug in through two callables: `denoise(prompt, seed) -> latents (B, C, F, H, W)` (a real
generation, the transformer called inside its pipeline) and the token grid of the run. Each prompt's
profile is written as soon as it is done, so a long real-size run can be resumed. A pipeline with two
transformers (Wan 2.2's experts) is profiled in the same generations, one probe and one profile per transformer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserInputError
from . import masks
from .probe import ProbeRecord, ProbeSettings, ProfileProbe
from .profile import Profile, PromptProfile

MASK_SOURCES = ("video_motion", "motion", "pca", "files", "ground_truth")


@dataclass
class ProfileRequest:
    prompts: list[tuple[str, int]]  # (prompt, seed)
    block_lists: list[str]
    token_grid: tuple[int, int, int] | None  # None: read from the transformer's first call by `layout`
    leading_tokens: int = 0  # tokens before the video's in the blocks' sequence (VACE reference images)
    layout: Callable[[torch.nn.Module, tuple, dict], dict] | None = None  # see ProfileProbe
    branch: str = "cond"  # the cache_context of the calls with the prompt
    sample: int | None = None  # see ProbeSettings
    # called on each generation's records (transformer name -> its record)
    check_record: Callable[[dict[str, ProbeRecord]], None] | None = None
    mask_temporal_stride: int = 4  # video frames per token frame, for pixel mask files
    patch: tuple[int, int] = (2, 2)
    mask_source: str = "motion"
    # the decoded video (F, H, W, 3) of a generation's final latents (1, C, F, H, W), for mask_source "video_motion"
    decode: Callable[[torch.Tensor], np.ndarray] | None = None
    mask_files: list[Path] | None = None  # one per prompt, for mask_source "files"
    ground_truth_masks: list[np.ndarray] | None = None  # pixel masks (F, H, W), for "ground_truth"
    max_queries: int = 256
    high_fraction: float = 0.25
    sketch_tokens: int = 128
    sketch_dim: int = 32


def foreground_mask(request: ProfileRequest, index: int, latents: torch.Tensor,
                    token_grid: tuple[int, int, int] | None = None) -> np.ndarray:
    """The token mask (frames, h, w) of prompt `index`'s foreground; `latents` (1, C, F, H, W) are its final latents,
    `token_grid` the run's (default: the request's)."""
    token_grid = token_grid or request.token_grid
    if request.mask_source == "video_motion":
        if request.decode is None:
            raise UserInputError("mask source video_motion needs the decoded video of each generation; use motion")
        return masks.video_motion_mask(request.decode(latents), token_grid, request.mask_temporal_stride)
    if request.mask_source == "motion":
        return masks.motion_mask(latents[0].float().cpu().numpy(), request.patch)
    if request.mask_source == "pca":
        return masks.pca_mask(latents[0].float().cpu().numpy(), request.patch)
    if request.mask_source == "files":
        return masks.load_mask_file(request.mask_files[index], token_grid, request.mask_temporal_stride)
    if request.mask_source == "ground_truth":
        return masks.pixel_mask_to_tokens(request.ground_truth_masks[index], token_grid)
    raise UserInputError(f"unknown mask source {request.mask_source!r}; choose from {', '.join(MASK_SOURCES)}")


RUN_FILE = "run.json"  # the settings the saved prompt profiles were made with
# Not compared on --resume: prompts and seeds (a resume may add some; each saved profile names its own) and
# the checkpoint's path (a run carried to another machine finds it elsewhere; profile_pipeline's `checkpoint`).
_NOT_COMPARED = ("prompts", "seeds", "ckpt_dir", "checkpoint")


def _run_settings(provenance: dict) -> dict:
    return {k: v for k, v in provenance.items() if k not in _NOT_COMPARED}


def _check_resumable(folder: Path, provenance: dict) -> None:
    """--resume reuses saved prompt profiles only when they were made with the same model and settings."""
    path = folder / RUN_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        raise UserInputError(f"--resume: {path} is not valid JSON; use another --out or drop --resume") from None
    current = json.loads(json.dumps(_run_settings(provenance)))  # as saved: tuples become lists
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed:
        details = ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:3])
        # (the default mask source changed from motion to video_motion on 2026-12-08)
        hint = (f"give --mask_source {saved['mask_source']} (mask_source={saved['mask_source']!r}) to reuse them, "
                if changed == ["mask_source"] else "")
        raise UserInputError(f"--resume: the profiles in {folder} were made with other settings ({details}); "
                             f"{hint}use another --out, or drop --resume to profile again")


def run_profile(transformer: torch.nn.Module, denoise: Callable[[str, int], torch.Tensor], request: ProfileRequest,
                out_dir: Path | None = None, resume: bool = False, provenance: dict | None = None) -> Profile:
    """Profile every prompt (skipping those already saved in `out_dir` when `resume`)."""
    return run_profiles({"transformer": transformer}, denoise, request, out_dir, resume, provenance)["transformer"]


def run_profiles(transformers: dict[str, torch.nn.Module], denoise: Callable[[str, int], torch.Tensor],
                 request: ProfileRequest, out_dir: Path | None = None, resume: bool = False,
                 provenance: dict | None = None) -> dict[str, Profile]:
    """Profile every transformer of a pipeline (name -> module: "transformer", "transformer_2") in the same
    generations, one prompt at a time; one `Profile` each. Saved as `profiles/NNN.npz` for one transformer, as
    `profiles/<name>/NNN.npz` for several."""
    if request.mask_source == "files" and len(request.mask_files or []) != len(request.prompts):
        raise UserInputError("--mask_source files needs one mask file per prompt (--mask_dir with 000.npy, 001.npy, ...)")
    names = list(transformers)
    profiles: dict[str, list[PromptProfile]] = {name: [] for name in names}
    folder = None if out_dir is None else Path(out_dir) / "profiles"
    subfolders = {name: folder if folder is None or len(names) == 1 else folder / name for name in names}
    if folder is not None:
        if resume:
            _check_resumable(folder, provenance or {})
        for name in names:
            if not resume and subfolders[name].is_dir():  # a fresh run: an earlier run's profiles must not be mixed
                for stale in subfolders[name].glob("[0-9][0-9][0-9].npz"):  # in by a later --resume
                    stale.unlink()
            subfolders[name].mkdir(parents=True, exist_ok=True)
        (folder / RUN_FILE).write_text(json.dumps(_run_settings(provenance or {}), indent=2) + "\n")
    for index, (prompt, seed) in enumerate(tqdm(request.prompts, desc="profiling prompts")):
        paths = {name: None if folder is None else subfolders[name] / f"{index:03d}.npz" for name in names}
        if resume and folder is not None and all(path.exists() for path in paths.values()):
            saved = {name: PromptProfile.load(path) for name, path in paths.items()}
            if all(p.prompt == prompt and p.seed == seed for p in saved.values()):
                for name in names:
                    profiles[name].append(saved[name])
                continue
        settings = ProbeSettings(token_grid=request.token_grid, leading_tokens=request.leading_tokens,
                                 max_queries=request.max_queries, high_fraction=request.high_fraction,
                                 sketch_tokens=request.sketch_tokens, sketch_dim=request.sketch_dim, seed=index,
                                 branch=request.branch, sample=request.sample)
        probes = {}
        try:
            for name in names:
                probes[name] = ProfileProbe(transformers[name], request.block_lists, settings, layout=request.layout)
            latents = denoise(prompt, seed)
        finally:
            for probe in probes.values():
                probe.detach()
        for name, probe in probes.items():
            if probe.token_grid is None:
                which = "the transformer" if len(names) == 1 else name
                raise UserInputError(f"{which} was never called in the '{request.branch}' context while "
                                     f"generating {prompt!r}: nothing was profiled")
        if request.check_record is not None:
            request.check_record({name: probe.record for name, probe in probes.items()})
        grid = probes[names[0]].token_grid
        mask = foreground_mask(request, index, latents, grid)
        for name, probe in probes.items():
            profile = PromptProfile.from_record(probe.record, mask, prompt, seed, probe.token_grid)
            if paths[name] is not None:
                profile.save(paths[name])
            profiles[name].append(profile)
    return {name: Profile(prompts=profiles[name],
                          provenance={**(provenance or {}), **({"transformer": name} if len(names) > 1 else {})})
            for name in names}

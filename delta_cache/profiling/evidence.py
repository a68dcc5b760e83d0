"""Evidence that profiling picks the right blocks, on models whose foreground is known.

A tiny model trained on our synthetic moving-shape videos (docs/tiny-models.md) draws flat-coloured shapes
on a flat background, so the foreground of every video it generates can be read off its pixels (the
analyser's palette segmentation, `synthetic.analyse_video(...).foreground`). That is the true mask of a
*generation*. (The rendered video `make_video(i)` with the same prompt is not: object sizes and start
positions are not in the prompt, so a generation puts its objects elsewhere; `truth="rendered"` uses those
masks anyway, and the report always shows how far apart the two are.) With it, the profiling method
(method.md section 4) can be checked directly:

1. **Motion masks**: the mask the profiler builds by default from the decoded video (`runner.foreground_mask`,
   source "video_motion") against the true mask on the token grid (`masks.pixel_mask_to_tokens`): IoU; the
   latent motion mask (source "motion") as a diagnostic.
2. **Equal compute**: the model is profiled on training-split prompts (true masks; motion masks from the
   same runs), then several background-block sets are run at the block-evaluation count of a paper preset
   (the same number of background blocks per block list and the preset's own refresh steps, so only *which*
   blocks are reused differs): the profiled set (lowest foreground ratio R), the reversed set (highest R),
   random sets and the preset itself. Each is scored by PSNR against the uncached video on held-out pairs
   (`make_video(i, "eval")`'s prompt, seed i); block evaluations are counted by the cache (real skips).
3. **Target speedup**: `derive_for_target` schedules, run for real: counted against targeted compute,
   measured wall time, PSNR.

The command line is `scripts/profile_evidence.py`; `run_evidence` does the work and `EvidenceResult`
(evidence_results.py) holds every number and writes the report (`verdicts`, `markdown`, `to_json`).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserInputError
from ..models.runner import ModelRunner
from ..schedule import BlockListSchedule, Schedule, load_schedule
from . import masks
from . import runner as profile_runner
from .derive import derive_for_target, refresh_steps_eq15
from .evidence_results import (
    MASK_KINDS,
    TARGET_TOLERANCE,
    TRUTH_SOURCES,
    EvidenceResult,
    Reference,
    TrainingProfiles,
    VariantResult,
    pair_iou,
    psnr_summary,
)
from .probe import ProbeSettings, ProfileProbe
from .profile import Profile, PromptProfile

DEFAULT_PRESETS = {"wan": "wan2.1-t2v-14b", "hunyuan_video": "hunyuanvideo-720p"}  # compute to match


# ---- the model's size ------------------------------------------------------------------------------------------

def resolve_size(ckpt_dir, size: str | None, frame_num: int | None) -> tuple[int, int, int]:
    """(width, height, frames): the flags, else the native size of a tiny trained checkpoint."""
    from ..models.tiny_info import resolve_video_size

    video = resolve_video_size(ckpt_dir, size, frame_num)
    if min(video.width, video.height) < 32:
        raise UserInputError(f"--size {video.size}: width and height must be at least 32")
    if video.num_frames < 5:
        raise UserInputError(f"--frame_num must be at least 5 (motion masks need 2 latent frames), got "
                             f"{video.num_frames}")
    return video.width, video.height, video.num_frames


# ---- small pure helpers (unit-tested) ----------------------------------------------------------------------


def lowest_ratio_blocks(ratio: np.ndarray, count: int) -> tuple[int, ...]:
    """The `count` blocks with the lowest foreground ratio (ties: lower index first), sorted."""
    order = np.argsort(np.asarray(ratio, dtype=np.float64), kind="stable")
    return tuple(sorted(int(b) for b in order[:count]))


def highest_ratio_blocks(ratio: np.ndarray, count: int) -> tuple[int, ...]:
    """The `count` blocks with the highest foreground ratio (the reversed choice), sorted."""
    order = np.argsort(-np.asarray(ratio, dtype=np.float64), kind="stable")
    return tuple(sorted(int(b) for b in order[:count]))


def random_blocks(depths: dict[str, int], counts: dict[str, int], seed: int) -> dict[str, tuple[int, ...]]:
    """`counts[list]` distinct random blocks per block list, from one generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return {name: tuple(sorted(int(b) for b in rng.choice(depths[name], size=counts[name], replace=False)))
            for name in counts}


def equal_compute_schedule(preset: Schedule, background: dict[str, Sequence[int]], name: str,
                           description: str = "", provenance: dict | None = None) -> Schedule:
    """`preset` with other background blocks (the same number per list) and its own refresh steps.

    The result goes through `Schedule.from_dict`, i.e. it is checked exactly like a schedule file.
    """
    block_lists = {}
    for list_name, block_list in preset.block_lists.items():
        blocks = tuple(sorted(int(b) for b in background[list_name]))
        if len(blocks) != len(block_list.background_blocks):
            raise ValueError(f"{name}: {len(blocks)} background blocks in {list_name}, the preset "
                             f"{preset.name} has {len(block_list.background_blocks)}")
        block_lists[list_name] = BlockListSchedule(blocks, block_list.refresh_steps, block_list.num_blocks)
    schedule = Schedule(name=name, num_steps=preset.num_steps, block_lists=block_lists, description=description,
                        provenance=dict(provenance or {}))
    return Schedule.from_dict(schedule.to_dict(), source=name)


def separating_tau(ratios: dict[str, np.ndarray], background: dict[str, Sequence[int]]) -> float | None:
    """A threshold tau with {blocks: R < tau} == `background` in every list, or None when none exists."""
    inside = [float(ratios[n][b]) for n in background for b in background[n]]
    outside = [float(ratios[n][b]) for n in background for b in range(len(ratios[n])) if b not in background[n]]
    low = max(inside, default=-1.0)
    high = min(outside, default=max(inside, default=0.0) + 2.0)
    if not low < high:
        return None
    tau = (low + high) / 2 if inside else 0.0
    for digits in range(4, 18):  # the shortest spelling that still separates (it goes on a command line)
        if low < float(f"{tau:.{digits}g}") <= high:
            return float(f"{tau:.{digits}g}")
    return tau


def eq15_parameters(block_list: BlockListSchedule, num_steps: int) -> tuple[int, int, int] | None:
    """(warmup, t_max, t_min) with which `refresh_steps_eq15` gives these refresh steps, or None."""
    warmup = block_list.warmup_steps()
    for t_max in range(1, 17):
        for t_min in range(1, t_max + 1):
            if tuple(refresh_steps_eq15(num_steps, warmup, t_max, t_min)) == tuple(block_list.refresh_steps):
                return warmup, t_max, t_min
    return None


# ---- masks of one generation -----------------------------------------------------------------------------------

def generated_foreground(frames: np.ndarray) -> np.ndarray:
    """(F, H, W) bool: the pixels of a decoded video that show an object colour (the synthetic-data analyser)."""
    from ..synthetic import analyse_video
    from ..video import to_uint8_frames

    return analyse_video(to_uint8_frames(frames)).foreground


def token_masks(model: ModelRunner, latents: torch.Tensor, frames: np.ndarray, generated: np.ndarray,
                rendered: np.ndarray) -> dict:
    """The token masks of one generation: motion (as the profiler builds it by default, from the decoded
    `frames`), latent_motion (the profiler's "motion" source, from the final latents), generated, rendered.

    `generated` and `rendered` are pixel masks (F, H, W): `generated_foreground` of the decoded video and the
    rendered synthetic video's mask.
    """
    found = {}
    for kind, source in (("motion", "video_motion"), ("latent_motion", "motion")):
        request = profile_runner.ProfileRequest(prompts=[], block_lists=model.block_lists, token_grid=model.token_grid,
                                                patch=model.patch, mask_source=source, decode=lambda _: frames)
        found[kind] = profile_runner.foreground_mask(request, 0, latents)  # exactly what the profiler would use
    return {**found, "generated": masks.pixel_mask_to_tokens(generated, model.token_grid),
            "rendered": masks.pixel_mask_to_tokens(rendered, model.token_grid)}


# ---- the run -----------------------------------------------------------------------------------------------

@dataclass
class EvidenceSettings:
    num_pairs: int = 16
    profile_prompts: int = 8
    profile_seed: int = 42
    preset: str | None = None  # default: the family's paper preset
    targets: tuple[float, ...] = (1.5, 2.0)
    random_seeds: tuple[int, ...] = (0, 1, 2)
    max_queries: int = 256
    high_fraction: float = 0.25
    motion_variant: bool = True  # also evaluate the set profiled with motion masks
    truth: str = "generated"  # TRUTH_SOURCES


def make_references(model: ModelRunner, num_pairs: int) -> list[Reference]:
    """Uncached generation of every eval pair (once, reused by every comparison), with its masks."""
    from ..synthetic import check_video, make_video
    from ..video import to_uint8_frames

    references = []
    first = make_video(0, "eval", num_frames=model.num_frames, height=model.height, width=model.width)
    model.generate(first.prompt, 0)  # untimed warm-up: first calls are slower, and every variant runs after it
    for index in tqdm(range(num_pairs), desc="uncached eval pairs"):
        video = make_video(index, "eval", num_frames=model.num_frames, height=model.height, width=model.width)
        latents, seconds = model.generate(video.prompt, index)
        frames = model.decode(latents)
        found = token_masks(model, latents, frames, generated_foreground(frames), video.mask)
        # The mask method on a video that shows its prompt: the rendered video through the model's own VAE.
        found["rendered_motion"] = masks.video_motion_mask(model.decode(model.encode(video.frames)), model.token_grid)
        references.append(Reference(
            index=index, prompt=video.prompt, seed=index, frames=frames, seconds=seconds,
            agrees=check_video(to_uint8_frames(frames), video.scene).agrees, token_masks=found))
    return references


def profile_training_prompts(model: ModelRunner, settings: EvidenceSettings, out: Path | None = None) -> TrainingProfiles:
    """Profile training prompts; R against every mask kind from the same runs.

    The loop is `runner.run_profile`'s (the same probe settings per prompt position), but it keeps the probe's
    record to measure R against each mask. Training videos whose true mask is empty on the token grid are
    skipped (nothing drawn, or objects smaller than half a token). With `out`, the chosen prompts and their
    true pixel masks are written as `profile_prompts.txt` and `profile_masks/NNN.npy` for
    `scripts/profile_model.py --mask_source files`.
    """
    from ..synthetic import check_video, make_video
    from ..video import to_uint8_frames

    if settings.truth not in TRUTH_SOURCES:
        raise UserInputError(f"unknown truth {settings.truth!r}; choose from {', '.join(TRUTH_SOURCES)}")
    defaults = profile_runner.ProfileRequest(prompts=[], block_lists=model.block_lists, token_grid=model.token_grid)
    result = TrainingProfiles(truth=settings.truth, profiles={}, chosen=[], skipped=[], truth_pixels=[],
                              ious={"motion/generated": [], "motion/rendered": [], "generated/rendered": []},
                              agrees=[], empty={k: [] for k in MASK_KINDS})
    per_kind: dict[str, list[PromptProfile]] = {k: [] for k in MASK_KINDS}
    limit = 3 * settings.profile_prompts + 20
    index = 0
    with tqdm(total=settings.profile_prompts, desc="profiling training prompts") as bar:
        def skip() -> None:
            # Shown on the bar: a skipped prompt may have cost a full profiled generation without advancing it,
            # and a model that draws little would otherwise look stalled.
            result.skipped.append(index - 1)
            bar.set_postfix(skipped=len(result.skipped))

        while len(result.chosen) < settings.profile_prompts:
            if index >= limit:
                raise UserInputError(f"{len(result.skipped)} of {index} training prompts gave an empty true "
                                     f"({settings.truth}) mask on the {model.token_grid} token grid; nothing to profile "
                                     "against (an untrained model, or a --size too small for the objects)")
            video = make_video(index, "train", num_frames=model.num_frames, height=model.height, width=model.width)
            index += 1
            if settings.truth == "rendered" and not masks.pixel_mask_to_tokens(video.mask, model.token_grid).any():
                skip()
                continue
            position = len(result.chosen)  # the prompt's index in a profile_model.py run of the chosen prompts
            probe = ProfileProbe(model.transformer, model.block_lists, ProbeSettings(
                token_grid=model.token_grid, max_queries=settings.max_queries, high_fraction=settings.high_fraction,
                sketch_tokens=defaults.sketch_tokens, sketch_dim=defaults.sketch_dim, seed=position))
            try:
                latents, _ = model.generate(video.prompt, settings.profile_seed)
            finally:
                probe.detach()
            frames = model.decode(latents)
            generated = generated_foreground(frames)
            found = token_masks(model, latents, frames, generated, video.mask)
            if not found[settings.truth].any():
                skip()
                continue
            result.chosen.append((index - 1, video.prompt, settings.profile_seed))
            result.truth_pixels.append(video.mask if settings.truth == "rendered" else generated)
            result.agrees.append(check_video(to_uint8_frames(frames), video.scene).agrees)
            for name in result.ious:
                result.ious[name].append(pair_iou(found, *name.split("/")))
            sketches = None
            for kind in MASK_KINDS:
                if not found[kind].any():
                    result.empty[kind].append(position)
                    continue
                profile = PromptProfile.from_record(probe.record, found[kind], video.prompt, settings.profile_seed,
                                                    model.token_grid)
                if sketches is not None:
                    profile.sketches = sketches  # the same record: share the memory
                sketches = profile.sketches
                per_kind[kind].append(profile)
            bar.update()
    provenance = {"mask_source": "files", "masks": TRUTH_SOURCES[settings.truth],
                  "prompts": [p for _, p, _ in result.chosen], "seeds": [settings.profile_seed],
                  "max_queries": settings.max_queries, "high_fraction": settings.high_fraction}
    for kind, profiles in per_kind.items():
        source = ({**provenance, "mask_source": "video_motion", "masks": "the profiler's default: the moving subjects "
                   "of the decoded video"} if kind == "motion" else dict(provenance))
        result.profiles[kind] = Profile(profiles, provenance=source) if profiles else None
    if out is not None:
        (out / "profile_masks").mkdir(parents=True, exist_ok=True)
        (out / "profile_prompts.txt").write_text("".join(f"{p}\n" for _, p, _ in result.chosen))
        for i, pixels in enumerate(result.truth_pixels):
            np.save(out / "profile_masks" / f"{i:03d}.npy", pixels)
    return result


def run_schedule(model: ModelRunner, schedule: Schedule, references: list[Reference], variant: VariantResult,
                 progress: str, time_uncached: bool = False) -> VariantResult:
    """Generate every eval pair with `schedule`; PSNR/SSIM vs the uncached frames; the cache's own counts.

    `time_uncached`: before each cached generation, time an uncached one of the same pair (alternating, so
    both see the same machine load) for the wall-time speedup.
    """
    from ..hooks import apply_delta_cache, remove_delta_cache
    from ..metrics import fidelity

    variant.schedule = schedule
    for ref in tqdm(references, desc=progress):
        if time_uncached:
            variant.uncached_seconds.append(model.generate(ref.prompt, ref.seed)[1])
        handle = apply_delta_cache(model.transformer, schedule, num_inference_steps=model.cache_num_steps)
        try:
            latents, seconds = model.generate(ref.prompt, ref.seed)
            stats = handle.stats()
        finally:
            remove_delta_cache(model.transformer)
        variant.computed += stats["computed_block_evals"]
        variant.total += stats["total_block_evals"]
        variant.branch_calls += sum(b["calls"] for b in stats["branches"].values())
        score = fidelity(model.decode(latents), ref.frames)
        variant.psnr.append(score.psnr)
        variant.ssim.append(score.ssim)
        variant.seconds.append(seconds)
    return variant


def equal_compute_variants(preset: Schedule, truth: Profile, motion: Profile | None, settings: EvidenceSettings,
                           provenance: dict) -> list[VariantResult]:
    """The schedules compared at the preset's compute (only which blocks are reused differs)."""
    counts = {name: len(bl.background_blocks) for name, bl in preset.block_lists.items()}
    depths = truth.depths
    missing = [name for name in counts if name not in depths]
    if missing:
        raise UserInputError(f"preset {preset.name} names block list(s) {missing} that the model does not have")
    preset.check_fits(depths)
    common = {**provenance, "compute_matched_to": preset.name, "refresh_steps_from": preset.name}

    def build(key, label, background, how, masks_from: Profile | None = None):
        description = (f"{label}: {how}; the same number of background blocks and the same refresh steps as the "
                       f"preset {preset.name}, so the same block evaluations.")
        mask_provenance = {} if masks_from is None else {
            k: v for k, v in masks_from.provenance.items() if k.startswith("mask")}
        schedule = equal_compute_schedule(preset, background, name=key, description=description,
                                          provenance={**common, **mask_provenance, "selection": how})
        return VariantResult(key=key, section="equal compute", label=label, schedule=schedule)

    ratio = {name: truth.block_foreground_ratio(name) for name in counts}
    variants = [build("profiled-true-masks", "profiled, true masks (lowest R)",
                      {n: lowest_ratio_blocks(ratio[n], counts[n]) for n in counts},
                      "the blocks with the lowest foreground ratio R (true masks) per block list")]
    if settings.motion_variant and motion is not None:
        motion_ratio = {name: motion.block_foreground_ratio(name) for name in counts}
        variants.append(build("profiled-motion-masks", "profiled, motion masks (lowest R)",
                              {n: lowest_ratio_blocks(motion_ratio[n], counts[n]) for n in counts},
                              "the blocks with the lowest foreground ratio R (motion masks) per block list",
                              masks_from=motion))
    variants.append(build("reversed", "reversed (highest R)",
                          {n: highest_ratio_blocks(ratio[n], counts[n]) for n in counts},
                          "the blocks with the HIGHEST foreground ratio R (true masks): the reversed choice"))
    for seed in settings.random_seeds:
        variants.append(build(f"random-{seed}", f"random (seed {seed})", random_blocks(depths, counts, seed),
                              f"random blocks, numpy default_rng({seed})"))
    variants.append(VariantResult(key="preset", section="equal compute", label=f"paper preset {preset.name}",
                                  schedule=Schedule.from_dict(preset.to_dict(), source=preset.name)))
    return variants


def reproduce_command(schedule: Schedule, truth: Profile, *, family: str, ckpt_dir, model: ModelRunner,
                      size_flags: list[str], settings: EvidenceSettings, out: Path, name: str) -> tuple[str | None, str]:
    """The `scripts/profile_model.py` command that derives `schedule` again from scratch, or None and why."""
    refresh = {bl.refresh_steps for bl in schedule.block_lists.values()}
    if len(refresh) != 1:
        return None, "the block lists have different refresh steps; profile_model.py uses one set for all."
    params = eq15_parameters(next(iter(schedule.block_lists.values())), schedule.num_steps)
    if params is None:
        return None, "the refresh steps are not an Eq. 15 sequence (--warmup/--t_max/--t_min)."
    ratios = {n: truth.block_foreground_ratio(n) for n in truth.block_lists}
    background = {n: set(schedule.block_lists[n].background_blocks) if n in schedule.block_lists else set()
                  for n in ratios}
    tau = separating_tau(ratios, background)
    if tau is None:
        return None, ("no single --tau separates the chosen blocks (foreground ratios tie at the cut or the lists "
                      "interleave); more --profile_prompts make ties unlikely.")
    warmup, t_max, t_min = params
    argv = ["python", "scripts/profile_model.py", "--family", family, "--ckpt_dir", str(ckpt_dir)]
    if family == "wan":
        argv += ["--task", model.settings["task"], "--sample_solver", model.settings["sample_solver"]]
    argv += list(size_flags) + [
        "--sample_steps", str(model.num_steps), "--sample_shift", f"{model.settings['sample_shift']:g}",
        "--sample_guide_scale", f"{model.settings['sample_guide_scale']:g}",
        "--prompts", str(out / "profile_prompts.txt"), "--seeds", str(settings.profile_seed),
        "--mask_source", "files", "--mask_dir", str(out / "profile_masks"),
        "--max_queries", str(settings.max_queries), "--high_fraction", f"{settings.high_fraction:g}",
        "--tau", repr(tau), "--warmup", str(warmup), "--t_max", str(t_max), "--t_min", str(t_min),
        "--name", name, "--out", str(out / "reproduce")]
    note = "run from the repository root, it gives the same background blocks"
    if model.num_steps == schedule.num_steps:
        note += " and refresh steps (the same R needs the same device and dtype)."
    else:
        note += (f"; its refresh steps are on the {model.num_steps}-step grid of the profile, the schedule's on the "
                 f"preset's {schedule.num_steps}-step grid.")
    return shlex.join(argv), note


def run_evidence(model: ModelRunner, *, family: str, ckpt_dir, settings: EvidenceSettings, out: Path,
                 size_flags: Sequence[str] = (), write_preset: Path | None = None) -> EvidenceResult:
    """The whole evidence run; writes schedules/, evidence.md, evidence.json (and `write_preset`) to `out`."""
    if settings.num_pairs < 1 or settings.profile_prompts < 1:
        raise UserInputError("--num_pairs and --profile_prompts must be >= 1")
    if settings.truth not in TRUTH_SOURCES:
        raise UserInputError(f"unknown truth {settings.truth!r}; choose from {', '.join(TRUTH_SOURCES)}")
    preset = load_schedule(settings.preset or DEFAULT_PRESETS[family])
    preset.check_fits({n: len(getattr(model.transformer, n)) for n in model.block_lists})  # before any generation
    out = Path(out)
    (out / "schedules").mkdir(parents=True, exist_ok=True)
    info = {"model": model.model_name, "width": model.width, "height": model.height,
            "num_frames": model.num_frames, "num_steps": model.num_steps, "token_grid": list(model.token_grid),
            "settings": model.settings}

    references = make_references(model, settings.num_pairs)
    training = profile_training_prompts(model, settings, out)
    truth = training.profiles[settings.truth]
    provenance = {"source": "profiled", "model": model.model_name, "ckpt_dir": str(ckpt_dir),
                  "size": f"{model.width}*{model.height}", "frame_num": model.num_frames,
                  "sample_steps": model.num_steps, **{k: v for k, v in model.settings.items() if k.startswith("sample")},
                  **truth.provenance}
    truth.provenance = dict(provenance)

    variants = equal_compute_variants(preset, truth, training.profiles["motion"], settings, provenance)
    for target in settings.targets:
        key, label = f"target-{target:g}x", f"profiled for {target:g}x"
        try:
            schedule = derive_for_target(truth, target, tolerance=TARGET_TOLERANCE, name=key)
        except UserInputError as err:
            variants.append(VariantResult(key=key, section="target", label=label, schedule=None, target=target,
                                          error=str(err)))
            continue
        variants.append(VariantResult(key=key, section="target", label=label, schedule=schedule, target=target))
    for variant in variants:
        if not variant.error:
            variant.schedule.save(out / "schedules" / f"{variant.key}.json")
            # Every row times its own uncached runs, alternating with the cached ones: references made at the
            # start of a long run see another machine load than rows made an hour later.
            run_schedule(model, variant.schedule, references, variant, progress=variant.label, time_uncached=True)

    name = write_preset.stem if write_preset is not None else "profiled-true-masks"
    command, note = reproduce_command(variants[0].schedule, truth, family=family, ckpt_dir=ckpt_dir, model=model,
                                      size_flags=list(size_flags), settings=settings, out=out, name=name)
    result = EvidenceResult(family=family, ckpt_dir=str(ckpt_dir), runner_info=info, truth=settings.truth,
                            preset=preset, references=references, training=training, variants=variants,
                            reproduce=command, reproduce_note=note)
    if write_preset is not None:
        write_profiled_preset(result, Path(write_preset))
    (out / "evidence.md").write_text(result.markdown())
    (out / "evidence.json").write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    return result


def write_profiled_preset(result: EvidenceResult, path: Path) -> Schedule:
    """The profiled (true-mask) schedule at the paper preset's compute, as a preset file with its evidence."""
    profiled = result.variant("profiled-true-masks")
    schedule = profiled.schedule
    computed, total = schedule.predicted_block_evals({n: len(r) for n, r in result.ratios_truth.items()},
                                                     schedule.num_steps)
    provenance = dict(schedule.provenance)
    provenance.update({
        "foreground_ratio": {n: [round(float(r), 5) for r in v] for n, v in result.ratios_truth.items()},
        "predicted_block_evals": [computed, total], "predicted_speedup": round(total / computed, 4),
        "evidence": {
            "eval_pairs": len(result.references),
            "psnr_db": psnr_summary(profiled.psnr),
            "psnr_db_paper_preset": psnr_summary(result.variant("preset").psnr),
            "psnr_db_reversed": psnr_summary(result.variant("reversed").psnr),
            "counted_block_evals": [profiled.computed, profiled.total],
            "verdicts": result.verdicts(),
        },
        "reproduce": result.reproduce or result.reproduce_note,
    })
    info = result.runner_info
    description = (f"Profiled on {len(result.profile_prompts)} training prompts of the synthetic data against "
                   f"true foreground masks ({info['model']}, {info['width']}x{info['height']}x{info['num_frames']}): "
                   f"the lowest-R blocks, as many as the paper preset {result.preset.name} caches, with its refresh "
                   f"steps ({computed} of {total} block evaluations per branch, ideal {total / computed:.2f}x).")
    preset = Schedule(name=path.stem, num_steps=schedule.num_steps, block_lists=schedule.block_lists,
                      description=description, provenance=provenance)
    preset = Schedule.from_dict(preset.to_dict(), source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    preset.save(path)
    return preset

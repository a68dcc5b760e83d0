"""Evidence that profiling picks the right blocks, on models whose foreground is known.

A tiny model trained on our synthetic moving-shape videos (docs/tiny-models.md) draws flat-coloured shapes
on a flat background, so the foreground of every video it generates can be read off its pixels (the
analyser's palette segmentation, `synthetic.analyse_video(...).foreground`). That is the true mask of a
*generation*. (The rendered video `make_video(i)` with the same prompt is not: object sizes and start
positions are not in the prompt, so a generation puts its objects elsewhere; `truth="rendered"` uses those
masks anyway, and the report always shows how far apart the two are.) With it, the profiling method
(method.md section 4) can be checked directly:

1. **Motion masks**: the mask the profiler builds from the predicted clean latent (`runner.foreground_mask`,
   source "motion") against the true mask on the token grid (`masks.pixel_mask_to_tokens`): IoU.
2. **Equal compute**: the model is profiled on training-split prompts (true masks; motion masks from the
   same runs), then several background-block sets are run at the block-evaluation count of a paper preset
   (the same number of background blocks per block list and the preset's own refresh steps, so only *which*
   blocks are reused differs): the profiled set (lowest foreground ratio R), the reversed set (highest R),
   random sets and the preset itself. Each is scored by PSNR against the uncached video on held-out pairs
   (`make_video(i, "eval")`'s prompt, seed i); block evaluations are counted by the cache (real skips).
3. **Target speedup**: `derive_for_target` schedules, run for real: counted against targeted compute,
   measured wall time, PSNR.

The command line is `scripts/profile_evidence.py`; `run_evidence` does the work and `EvidenceResult`
holds every number (`to_json`, `markdown`).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserInputError
from ..models.runner import ModelRunner
from ..schedule import BlockListSchedule, Schedule, compress_ranges, load_schedule
from . import masks
from . import runner as profile_runner
from .derive import derive_for_target, refresh_steps_eq15
from .probe import ProbeSettings, ProfileProbe
from .profile import Profile, PromptProfile

PSNR_CAP = 100.0  # dB; identical videos (PSNR = inf) count as this in means and differences
IOU_TARGET = 0.5
TARGET_TOLERANCE = 0.05  # derive_for_target's contract: computed block evaluations within 5% of total / target
TRUTH_SOURCES = {
    "generated": "the foreground of the model's own uncached video (analyser: pixels of an object palette colour)",
    "rendered": "the rendered synthetic video's mask (make_video(i).mask; its layout is not in the prompt)",
}
MASK_KINDS = ("motion", "generated", "rendered")
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

def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (two empty masks: 1)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {predicted.shape} vs {truth.shape}")
    union = int(np.count_nonzero(predicted | truth))
    return 1.0 if union == 0 else int(np.count_nonzero(predicted & truth)) / union


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


def budget_offset(computed: int, total: int, target: float) -> tuple[float, bool]:
    """(computed / budget - 1, within TARGET_TOLERANCE) for the budget total / target (derive_for_target's test)."""
    budget = total / target
    return computed / budget - 1, abs(computed - budget) <= TARGET_TOLERANCE * budget * (1 + 1e-9)


def psnr_summary(values: Sequence[float]) -> dict:
    values = np.minimum(np.asarray(values, dtype=np.float64), PSNR_CAP)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()), "n": int(len(values))}


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict:
    """How `a` compares to `b` pair by pair (PSNR in dB, capped): mean difference, its s.e., wins, verdict.

    verdict: "better" / "worse" when the mean difference exceeds twice its standard error, else
    "not clearly different"; with a single pair only the sign is known ("higher"/"lower"/"equal").
    """
    diff = np.minimum(np.asarray(a, np.float64), PSNR_CAP) - np.minimum(np.asarray(b, np.float64), PSNR_CAP)
    n, mean = len(diff), float(diff.mean())
    se = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    if n < 2:
        verdict = "higher" if mean > 0 else "lower" if mean < 0 else "equal"
    elif mean > 2 * se:
        verdict = "better"
    elif mean < -2 * se:
        verdict = "worse"
    else:
        verdict = "not clearly different"
    return {"mean_diff": mean, "se": se, "wins": int(np.count_nonzero(diff > 0)), "n": n, "verdict": verdict}


# ---- masks of one generation -----------------------------------------------------------------------------------

def generated_foreground(frames: np.ndarray) -> np.ndarray:
    """(F, H, W) bool: the pixels of a decoded video that show an object colour (the synthetic-data analyser)."""
    from ..synthetic import analyse_video
    from ..video import to_uint8_frames

    return analyse_video(to_uint8_frames(frames)).foreground


def token_masks(model: ModelRunner, latents: torch.Tensor, generated: np.ndarray, rendered: np.ndarray) -> dict:
    """The three token masks of one generation: motion (as the profiler builds it), generated, rendered.

    `generated` and `rendered` are pixel masks (F, H, W): `generated_foreground` of the decoded video and the
    rendered synthetic video's mask.
    """
    request = profile_runner.ProfileRequest(prompts=[], block_lists=model.block_lists, token_grid=model.token_grid,
                                            patch=model.patch, mask_source="motion")
    return {"motion": profile_runner.foreground_mask(request, 0, latents),  # exactly what the profiler would use
            "generated": masks.pixel_mask_to_tokens(generated, model.token_grid),
            "rendered": masks.pixel_mask_to_tokens(rendered, model.token_grid)}


def pair_iou(token_masks_: dict, predicted: str, truth: str) -> float | None:
    """IoU of two of a generation's token masks; None when the `truth` mask is empty."""
    return mask_iou(token_masks_[predicted], token_masks_[truth]) if token_masks_[truth].any() else None


# ---- results ---------------------------------------------------------------------------------------------------

@dataclass
class Reference:
    """An eval pair's uncached generation and its masks."""

    index: int
    prompt: str
    seed: int
    frames: np.ndarray
    seconds: float
    agrees: bool  # the analyser finds what the prompt says in the video
    token_masks: dict  # MASK_KINDS -> bool (frames, h, w)


@dataclass
class VariantResult:
    key: str  # file-name slug
    section: str  # "equal compute" or "target"
    label: str
    schedule: Schedule | None
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    computed: int = 0  # block evaluations over all pairs and branches, counted by the cache
    total: int = 0
    branch_calls: int = 0  # transformer calls over all pairs and branches (for per-video numbers)
    target: float | None = None
    error: str | None = None  # why the variant could not run (e.g. no schedule reaches the target)
    uncached_seconds: list[float] = field(default_factory=list)  # alternating uncached timings (target rows)

    @property
    def ideal_speedup(self) -> float:
        return self.total / self.computed if self.computed else float("nan")


@dataclass
class TrainingProfiles:
    """What profiling the training prompts gave: one Profile per mask kind (None when every mask was empty)."""

    truth: str
    profiles: dict  # MASK_KINDS -> Profile | None
    chosen: list  # (training index, prompt, seed)
    skipped: list  # training indices whose true token mask was empty
    truth_pixels: list  # pixel masks (F, H, W) of the chosen prompts' true masks
    ious: dict  # "motion/generated", ... -> list of IoUs
    agrees: list  # per chosen prompt: the video agrees with its prompt
    empty: dict  # MASK_KINDS -> positions (in `chosen`) whose mask of that kind was empty


@dataclass
class EvidenceResult:
    family: str
    ckpt_dir: str
    runner_info: dict
    truth: str
    preset: Schedule
    references: list[Reference]
    training: TrainingProfiles
    variants: list[VariantResult]
    reproduce: str | None
    reproduce_note: str

    # ---- derived numbers ---------------------------------------------------------------------------
    def variant(self, key: str) -> VariantResult | None:
        return next((v for v in self.variants if v.key == key), None)

    def ratios(self, kind: str) -> dict[str, np.ndarray] | None:
        profile = self.training.profiles.get(kind)
        return None if profile is None else {n: profile.block_foreground_ratio(n) for n in profile.block_lists}

    @property
    def ratios_truth(self) -> dict[str, np.ndarray]:
        return self.ratios(self.truth)

    @property
    def profile_prompts(self) -> list[tuple[int, str, int]]:
        return self.training.chosen

    def ious(self, predicted: str, truth: str) -> list[float]:
        values = [pair_iou(r.token_masks, predicted, truth) for r in self.references]
        return [v for v in values if v is not None]

    @property
    def eval_ious(self) -> list[float]:
        return self.ious("motion", self.truth)

    def uncached_seconds(self) -> float:
        return float(sum(r.seconds for r in self.references))

    def wall_speedup(self, v: VariantResult) -> float:
        """Uncached / cached denoising time: against the alternating uncached runs when there are any."""
        baseline = sum(v.uncached_seconds) if v.uncached_seconds else self.uncached_seconds()
        return baseline / sum(v.seconds)

    def _iou_text(self, predicted: str, truth: str) -> str:
        values = self.ious(predicted, truth)
        if not values:
            return f"{predicted} vs {truth}: no pair with a non-empty {truth} mask"
        text = f"{predicted} vs {truth}: {np.mean(values):.3f} ± {np.std(values):.3f} (min {np.min(values):.3f})"
        missing = len(self.references) - len(values)
        return text + (f", {missing} pairs with an empty {truth} token mask left out" if missing else "")

    def verdicts(self) -> list[str]:
        pairs = len(self.references)
        agree = sum(r.agrees for r in self.references)
        lines = [f"Model quality: {agree}/{pairs} uncached eval videos and {sum(self.training.agrees)}/"
                 f"{len(self.training.agrees)} profiled training videos agree with their prompt (analyser); "
                 "everything below is measured on what the model actually draws."]
        ious = self.eval_ious
        if ious:
            mean = float(np.mean(ious))
            lines.append(f"Motion masks vs true ({self.truth}) masks: mean IoU {mean:.3f} over {len(ious)} eval pairs "
                         f"(target >= {IOU_TARGET}: {'met' if mean >= IOU_TARGET else 'NOT met'}).")
        else:
            lines.append(f"Motion masks vs true ({self.truth}) masks: no eval pair has a non-empty true token mask.")
        profiled = self.variant("profiled-true-masks")
        if profiled is None or profiled.error:
            return lines
        others = [("reversed", "the reversed choice (highest R)"), ("preset", f"the paper preset {self.preset.name}"),
                  ("profiled-motion-masks", "the set profiled with motion masks")]
        for key, name in others:
            other = self.variant(key)
            if other is not None and not other.error:
                lines.append(_verdict_line("profiled (true masks)", name, profiled.psnr, other.psnr))
        randoms = [v for v in self.variants if v.key.startswith("random") and not v.error]
        if randoms:
            mean_random = np.mean([np.minimum(v.psnr, PSNR_CAP) for v in randoms], axis=0)
            line = _verdict_line("profiled (true masks)", f"random sets (mean of {len(randoms)} per pair)",
                                 profiled.psnr, mean_random)
            best = max(randoms, key=lambda v: psnr_summary(v.psnr)["mean"])
            margin = psnr_summary(profiled.psnr)["mean"] - psnr_summary(best.psnr)["mean"]
            above = sum(psnr_summary(profiled.psnr)["mean"] > psnr_summary(v.psnr)["mean"] for v in randoms)
            line += (f" Its mean is above {above} of {len(randoms)} random sets' means "
                     f"({margin:+.2f} dB vs the best, {best.label}).")
            lines.append(line)
        motion = self.variant("profiled-motion-masks")
        reversed_ = self.variant("reversed")
        if motion is not None and not motion.error and reversed_ is not None:
            lines.append(_verdict_line("profiled (motion masks)", "the reversed choice", motion.psnr, reversed_.psnr))
        for v in self.variants:
            if v.section != "target":
                continue
            if v.error:
                lines.append(f"Target {v.target:g}x: not feasible ({v.error}).")
                continue
            off, within = budget_offset(v.computed, v.total, v.target)
            wall = self.wall_speedup(v)
            lines.append(f"Target {v.target:g}x: counted compute {off:+.1%} from the budget (within "
                         f"{TARGET_TOLERANCE:.0%}: {'yes' if within else 'NO'}), ideal "
                         f"{v.ideal_speedup:.2f}x, measured wall time {wall:.2f}x, PSNR "
                         f"{psnr_summary(v.psnr)['mean']:.2f} dB.")
        return lines

    # ---- output ------------------------------------------------------------------------------------
    def markdown(self) -> str:
        info = self.runner_info
        pairs = len(self.references)
        skipped = self.training.skipped
        header = [
            f"# Profiling evidence: {info['model']} ({self.ckpt_dir})",
            "",
            f"{info['width']}x{info['height']}, {info['num_frames']} frames, {info['num_steps']} steps, "
            + ", ".join(f"{k} {v}" for k, v in info["settings"].items())
            + f". Eval pairs: the prompt of make_video(i, \"eval\"), seed i, i < {pairs}. True masks: "
            f"{TRUTH_SOURCES[self.truth]}. Profile: {len(self.training.chosen)} training prompts (make_video(i, "
            f"\"train\")), seed {self.training.chosen[0][2]}, true masks"
            + (f" (skipped, empty true token mask: training videos {skipped})" if skipped else "") + ". "
            f"Equal compute = the paper preset {self.preset.name}'s background-block counts and refresh steps. "
            f"PSNR/SSIM vs the uncached video (PSNR capped at {PSNR_CAP:g} dB); block evaluations per video and "
            "branch, counted by the cache; wall speedup = uncached / cached denoising time summed over pairs (target "
            "rows: against an uncached run of each pair right before the cached one; other rows: against the "
            "reference runs, timed at the start).",
            "",
        ]
        rows = ["| section | schedule | reused blocks | block evals (computed/total) | ideal speedup | "
                "PSNR dB: mean ± std (min) | SSIM | wall speedup | check |",
                "|---|---|---|---|---:|---|---:|---:|---|"]
        ious = self.eval_ious
        check = (f"IoU {self._iou_text('motion', self.truth)}; target >= {IOU_TARGET}: "
                 f"{'met' if ious and np.mean(ious) >= IOU_TARGET else 'NOT met'}")
        rows.append(f"| masks | motion mask vs true mask ({len(ious)} eval pairs) | | | | | | | {check} |")
        other = "rendered" if self.truth == "generated" else "generated"
        diagnostic = (f"IoU {self._iou_text('motion', other)}; IoU {self._iou_text('generated', 'rendered')}; "
                      f"prompt agreement {sum(r.agrees for r in self.references)}/{pairs}")
        rows.append(f"| masks (diagnostic) | other mask pairs | | | | | | | {diagnostic} |")
        first = next((v for v in self.variants if not v.error), None)
        if first is not None:
            per = first.total // max(first.branch_calls // self.runner_info["num_steps"], 1)
            rows.append(f"| reference | uncached | 0 | {per}/{per} | 1.00x | reference | 1 | 1.00x | |")
        for v in self.variants:
            section = "equal compute" if v.section == "equal compute" else f"target {v.target:g}x"
            if v.error:
                rows.append(f"| {section} | {v.label} | | | | | | | not run: {v.error} |")
                continue
            runs = max(v.branch_calls // self.runner_info["num_steps"], 1)  # generations x CFG branches
            p = psnr_summary(v.psnr)
            check = ""
            if v.section == "target":
                off, within = budget_offset(v.computed, v.total, v.target)
                check = f"compute {off:+.1%} vs budget (within {TARGET_TOLERANCE:.0%}: {'yes' if within else 'NO'})"
            rows.append(
                f"| {section} | {v.label} | {_blocks_text(v.schedule)} | {_per_video(v.computed, runs)}/"
                f"{_per_video(v.total, runs)} | {v.ideal_speedup:.2f}x | {p['mean']:.2f} ± {p['std']:.2f} "
                f"({p['min']:.2f}) | {np.mean(v.ssim):.4f} | {self.wall_speedup(v):.2f}x | "
                f"{check} |")
        verdicts = ["", "Verdicts (computed from the numbers above):", ""] + [f"- {line}" for line in self.verdicts()]
        notes = ["", f"Profiled training prompts: {self._training_note()}",
                 f"Reproduce the profiled schedule with scripts/profile_model.py: {self.reproduce_note}"]
        if self.reproduce:
            notes += ["", "```bash", self.reproduce, "```"]
        return "\n".join(header + rows + verdicts + notes) + "\n"

    def _training_note(self) -> str:
        t = self.training
        parts = [f"{len(t.chosen)} profiled"]
        for kind in MASK_KINDS:
            if t.empty[kind]:
                parts.append(f"{kind} mask empty for {len(t.empty[kind])} (left out of the {kind} profile)")
        for name, values in t.ious.items():
            values = [v for v in values if v is not None]
            if values:
                parts.append(f"IoU {name} {np.mean(values):.3f}")
        return "; ".join(parts) + "."

    def to_json(self) -> dict:
        def variant_json(v: VariantResult) -> dict:
            out = {"key": v.key, "section": v.section, "label": v.label, "target": v.target, "error": v.error}
            if not v.error:
                out.update({
                    "schedule": v.schedule.to_dict(), "psnr": [_finite(x) for x in v.psnr],
                    "psnr_summary": psnr_summary(v.psnr), "ssim": v.ssim, "denoise_seconds": v.seconds,
                    "counted_block_evals": {"computed": v.computed, "total": v.total,
                                            "transformer_calls": v.branch_calls},
                    "ideal_speedup": v.ideal_speedup,
                    "uncached_denoise_seconds": v.uncached_seconds or None,
                    "wall_speedup": self.wall_speedup(v)})
            return out

        ious = self.eval_ious
        pairs = [("motion", "generated"), ("motion", "rendered"), ("generated", "rendered")]
        return {
            "family": self.family, "ckpt_dir": self.ckpt_dir, "run": self.runner_info, "truth": self.truth,
            "truth_means": TRUTH_SOURCES[self.truth], "preset": self.preset.name, "psnr_cap_db": PSNR_CAP,
            "eval_pairs": [{"index": r.index, "prompt": r.prompt, "seed": r.seed, "agrees_with_prompt": r.agrees,
                            "uncached_denoise_seconds": r.seconds,
                            "mask_tokens": {k: int(m.sum()) for k, m in r.token_masks.items()},
                            "iou": {f"{a}/{b}": pair_iou(r.token_masks, a, b) for a, b in pairs}}
                           for r in self.references],
            "motion_mask_iou": {"mean": float(np.mean(ious)) if ious else None, "target": IOU_TARGET,
                                "n": len(ious), "vs": self.truth},
            "profile_prompts": [{"train_index": i, "prompt": p, "seed": s, "agrees_with_prompt": a}
                                for (i, p, s), a in zip(self.training.chosen, self.training.agrees)],
            "skipped_training_videos": self.training.skipped,
            "training_iou": self.training.ious,
            "foreground_ratio": {kind: None if self.ratios(kind) is None
                                 else {k: v.tolist() for k, v in self.ratios(kind).items()} for kind in MASK_KINDS},
            "variants": [variant_json(v) for v in self.variants],
            "verdicts": self.verdicts(),
            "reproduce_command": self.reproduce, "reproduce_note": self.reproduce_note,
        }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _per_video(count: int, videos: int) -> str:
    value = count / videos
    return str(int(value)) if value == int(value) else f"{value:.1f}"


def _blocks_text(schedule: Schedule) -> str:
    parts = []
    for name, block_list in schedule.block_lists.items():
        ranges = ", ".join(str(r) for r in compress_ranges(block_list.background_blocks))
        prefix = f"{name}: " if len(schedule.block_lists) > 1 else ""
        parts.append(f"{prefix}{len(block_list.background_blocks)} ({ranges})")
    return "; ".join(parts)


def _verdict_line(a_name: str, b_name: str, a: Sequence[float], b: Sequence[float]) -> str:
    c = paired_comparison(a, b)
    mean_a, mean_b = psnr_summary(a)["mean"], psnr_summary(b)["mean"]
    spread = f" ± {c['se']:.2f} s.e." if c["n"] > 1 else ""
    if c["verdict"] in ("better", "worse"):
        conclusion = f"{a_name} is {c['verdict']}"
    elif c["n"] < 2:
        conclusion = f"{a_name} is {c['verdict']} on the single pair (not conclusive)"
    else:
        conclusion = f"{a_name} and {b_name} are not clearly different (|difference| < 2 s.e.)"
    return (f"{a_name} vs {b_name}: {mean_a:.2f} vs {mean_b:.2f} dB mean PSNR, paired difference "
            f"{c['mean_diff']:+.2f} dB{spread}, higher on {c['wins']}/{c['n']} pairs: {conclusion}.")


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
        references.append(Reference(
            index=index, prompt=video.prompt, seed=index, frames=frames, seconds=seconds,
            agrees=check_video(to_uint8_frames(frames), video.scene).agrees,
            token_masks=token_masks(model, latents, generated_foreground(frames), video.mask)))
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
            found = token_masks(model, latents, generated, video.mask)
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
        source = {**provenance, "mask_source": "motion"} if kind == "motion" else dict(provenance)
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

    def build(key, label, background, how):
        description = (f"{label}: {how}; the same number of background blocks and the same refresh steps as the "
                       f"preset {preset.name}, so the same block evaluations.")
        schedule = equal_compute_schedule(preset, background, name=key, description=description,
                                          provenance={**common, "selection": how})
        return VariantResult(key=key, section="equal compute", label=label, schedule=schedule)

    ratio = {name: truth.block_foreground_ratio(name) for name in counts}
    variants = [build("profiled-true-masks", "profiled, true masks (lowest R)",
                      {n: lowest_ratio_blocks(ratio[n], counts[n]) for n in counts},
                      "the blocks with the lowest foreground ratio R (true masks) per block list")]
    if settings.motion_variant and motion is not None:
        motion_ratio = {name: motion.block_foreground_ratio(name) for name in counts}
        variants.append(build("profiled-motion-masks", "profiled, motion masks (lowest R)",
                              {n: lowest_ratio_blocks(motion_ratio[n], counts[n]) for n in counts},
                              "the blocks with the lowest foreground ratio R (motion masks) per block list"))
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

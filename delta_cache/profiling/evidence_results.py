"""What a profiling-evidence run measured (`EvidenceResult`), and its report: verdicts, markdown, JSON.

`evidence.run_evidence` fills these records; the statistics helpers (capped PSNR summaries, paired
comparisons, the target budget check) are here because the report computes its verdicts with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..schedule import Schedule, compress_ranges

PSNR_CAP = 100.0  # dB; identical videos (PSNR = inf) count as this in means and differences
IOU_TARGET = 0.5
TARGET_TOLERANCE = 0.05  # derive_for_target's contract: computed block evaluations within 5% of total / target
TRUTH_SOURCES = {
    "generated": "the foreground of the model's own uncached video (analyser: pixels of an object palette colour)",
    "rendered": "the rendered synthetic video's mask (make_video(i).mask; its layout is not in the prompt)",
}
MASK_KINDS = ("motion", "generated", "rendered")


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (two empty masks: 1)."""
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {predicted.shape} vs {truth.shape}")
    union = int(np.count_nonzero(predicted | truth))
    return 1.0 if union == 0 else int(np.count_nonzero(predicted & truth)) / union


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


def pair_iou(token_masks_: dict, predicted: str, truth: str) -> float | None:
    """IoU of two of a generation's token masks; None when the `truth` mask is empty."""
    return mask_iou(token_masks_[predicted], token_masks_[truth]) if token_masks_[truth].any() else None


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
        rendered = self.ious("rendered_motion", "rendered")
        if rendered:
            mean = float(np.mean(rendered))
            lines.append(f"The same motion masks on the rendered eval videos (encoded by the model's VAE), vs their "
                         f"rendered masks: mean IoU {mean:.3f} over {len(rendered)} videos (target >= {IOU_TARGET}: "
                         f"{'met' if mean >= IOU_TARGET else 'NOT met'}): the mask method where the video shows "
                         "its prompt.")
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
                      f"IoU {self._iou_text('rendered_motion', 'rendered')} (rendered_motion: the motion mask of the "
                      "rendered video through the model's VAE); "
                      f"IoU {self._iou_text('latent_motion', self.truth)} (latent_motion: the mask from the final "
                      "latents, --mask_source motion); "
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
        pairs = [("motion", "generated"), ("motion", "rendered"), ("generated", "rendered"),
                 ("rendered_motion", "rendered"), ("latent_motion", "generated"), ("latent_motion", "rendered")]
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

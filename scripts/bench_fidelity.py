#!/usr/bin/env python
"""Fidelity benchmark: the delta cache vs other caches at the same compute, on tiny trained models.

    python scripts/bench_fidelity.py --family wan                    # checkpoints/tiny-wan2.1-t2v, 16 pairs
    python scripts/bench_fidelity.py --family wan hunyuan_video --num_pairs 32 --out outputs/bench_fidelity
    python scripts/bench_fidelity.py --family wan --wan_ckpt /work/train/tiny-wan2.1-t2v --sample_steps 50
    python scripts/bench_fidelity.py --family wan --methods cache_dit   # the reference, ours and one peer

For each family the checkpoint is loaded with the family's loader and sampled as its front end does
(Wan2.1/generate.py t2v: UniPC, shift 5, guide scale 5 with upstream's negative prompt;
HunyuanVideo/sample_video.py: Euler, flow shift 7, embedded guidance 6, no true CFG), at the checkpoint's
native size (`tiny_model.json`; --size and --frame_num for a checkpoint without one). Prompt/seed pairs are `make_video(i, "eval")` (held-out prompts, never
seen in training) with seed i. Every method runs on a pair before the next pair starts:

  uncached          the reference video;
  delta_cache       ProfilingDiT with the family's paper preset (--wan_schedule / --hunyuan_schedule);
  step_skipping     naive: only evenly spread steps (first and last included) run the transformer, the others
                    reuse the branch's last output; as many steps as give the delta cache's block evaluations;
  teacache          TeaCache (delta_cache.teacache, from its description): coefficients fitted on this model
                    by its own recipe over the calibration pairs (--teacache_coefficients published: the
                    family's published ones), threshold tuned to the delta cache's block evaluations;
  first_block_cache diffusers' FirstBlockCache, threshold tuned the same way;
  mag_cache         diffusers' MagCache, ratios from its calibrate=True mode, threshold tuned the same way;
  cache_dit         cache-dit's DBCache (its defaults: F8B0, 8 warm-up steps), threshold tuned the same way
                    (a row saying so when cache-dit is not installed: pip install cache-dit).

The block budget (the delta cache's block evaluations) and the thresholds come from --calib_pairs (2)
calibration pairs `make_video(1000 + k, "eval")`, seed 1000 + k, which are not evaluation pairs. Thresholds
are tuned by delta_cache.baselines.tune_threshold (expand by 4x until the target is bracketed, then bisect
geometrically) until within --tune_tolerance (5%) of the budget or after --tune_runs (8) runs; the table's
configuration column says what the calibration reached, its block-evals column what the evaluation pairs
used (FirstBlockCache decides from the data, so the two differ). A method that cannot run on a family gets
a row saying why.

Columns (means over the evaluation pairs):
  block evals    block forwards that really ran / block forwards of the uncached run (blocks x steps x CFG
                 branches), counted by a hook on every block of every block list (delta_cache.baselines.BlockCounter)
  compute        the same as a percentage
  speedup        mean uncached denoising-loop seconds / mean method seconds (measured; text encoding and
                 VAE decoding excluded)
  PSNR, SSIM     per frame vs the uncached video, on the decoded float frames (before mp4 encoding); the PSNR
                 mean leaves out pairs identical to the reference (inf) and says how many there were
  PSNR/SSIM mp4  the same after writing both videos as mp4 and reading them back
  LPIPS          per frame, float frames; "n/a" unless torchmetrics' LPIPS backbone weights are already on disk
  prompt acc.    share of pairs whose video agrees with its prompt (delta_cache.synthetic.analyse.check_video,
                 on the decoded frames as uint8)

Output in --out: bench_fidelity.md (the tables), bench_fidelity.json (settings, tuning and per-pair numbers),
bench_fidelity.png (PSNR vs measured speedup), videos/<family>/pairNNN_<method>.mp4. The three result files
are rewritten atomically after each family.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # works without `pip install -e .` too

from delta_cache.cli import OneLineArgumentParser, check_output_path, positive_int, run_cli, set_offline  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.metrics import format_metric, make_lpips, mean_of_present  # noqa: E402
from delta_cache.models.tiny_info import COMMITTED_CHECKPOINTS, committed_checkpoint  # noqa: E402

FAMILIES = ("wan", "hunyuan_video")
CKPT_FLAGS = {"wan": "wan_ckpt", "hunyuan_video": "hunyuan_ckpt"}
SCHEDULE_FLAGS = {"wan": "wan_schedule", "hunyuan_video": "hunyuan_schedule"}
CALIBRATION_OFFSET = 1000  # calibration pairs: make_video(1000 + k, "eval"), far from the evaluation pairs
METHOD_ORDER = ("uncached", "delta_cache", "step_skipping", "teacache", "first_block_cache", "mag_cache", "cache_dit")
BASELINES = METHOD_ORDER[2:]  # --methods picks among these; the reference and the delta cache always run


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES), help="model families (default: both)")
    p.add_argument("--wan_ckpt", default=None,
                   help=f"tiny Wan2.1 checkpoint folder (default: the committed {COMMITTED_CHECKPOINTS['wan']})")
    p.add_argument("--hunyuan_ckpt", default=None,
                   help="tiny HunyuanVideo checkpoint folder: upstream ckpts/ layout (the model base) or diffusers "
                        f"(default: the committed {COMMITTED_CHECKPOINTS['hunyuan_video']})")
    p.add_argument("--wan_schedule", default="wan2.1-t2v-14b", help="delta-cache preset or schedule JSON for Wan (default: %(default)s)")
    p.add_argument("--hunyuan_schedule", default="hunyuanvideo-720p",
                   help="delta-cache preset or schedule JSON for HunyuanVideo (default: %(default)s)")
    p.add_argument("--sample_steps", type=int, default=50, help="denoising steps (default 50, as the front ends)")
    p.add_argument("--num_pairs", type=int, default=16, help="evaluation prompt/seed pairs (default 16)")
    p.add_argument("--calib_pairs", type=int, default=2, help="calibration pairs for threshold tuning (default 2)")
    p.add_argument("--tune_runs", type=int, default=8, help="most calibration runs per threshold search (default 8)")
    p.add_argument("--tune_tolerance", type=float, default=0.05,
                   help="stop tuning when block evaluations are within this relative distance of the target "
                        "(default 0.05)")
    p.add_argument("--teacache_coefficients", choices=["fitted", "published"], default="fitted",
                   help="TeaCache's rescaling polynomial: fitted on the model over the calibration pairs (default; "
                        "published coefficients belong to the real checkpoints) or the family's published ones")
    p.add_argument("--methods", nargs="+", choices=BASELINES, default=list(BASELINES),
                   help="the methods compared with the uncached reference and the delta cache (default: all)")
    p.add_argument("--size", default=None,
                   help="WIDTH*HEIGHT instead of the checkpoint's native size (another size needs --frame_num too)")
    p.add_argument("--frame_num", type=int, default=None, help="frames (4n+1) instead of the native count")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", default="outputs/bench_fidelity", help="output folder (default: %(default)s)")
    return p


@dataclass(frozen=True)
class VideoSize:
    width: int
    height: int
    num_frames: int


def validate(args) -> dict[str, VideoSize]:
    """Flag checks before anything heavy is imported; returns each family's video size."""
    from delta_cache.models.tiny_info import resolve_video_size

    for flag, value, least in (("--num_pairs", args.num_pairs, 1), ("--calib_pairs", args.calib_pairs, 1),
                               ("--sample_steps", args.sample_steps, 1), ("--tune_runs", args.tune_runs, 1),
                               ("--threads", args.threads, 1)):
        if value < least:
            raise UserInputError(f"{flag} must be >= {least}, got {value}")
    if not 0 < args.tune_tolerance < 1:
        raise UserInputError(f"--tune_tolerance must be between 0 and 1, got {args.tune_tolerance}")
    check_output_path("--out", args.out, folder=True)
    sizes = {}
    args.family = list(dict.fromkeys(args.family))
    for family in args.family:
        flag = CKPT_FLAGS[family]
        if getattr(args, flag) is None:
            setattr(args, flag, str(committed_checkpoint(family)))
        ckpt = Path(getattr(args, flag))
        if not ckpt.is_dir():
            raise UserInputError(f"--{flag} {ckpt}: no such checkpoint folder (train one with scripts/train_tiny.py, "
                                 "or pass --family for the families you have)")
        video = resolve_video_size(ckpt, args.size, args.frame_num)
        sizes[family] = VideoSize(video.width, video.height, video.num_frames)
    return sizes


# --- metrics -------------------------------------------------------------------------------------------

# --- one family ----------------------------------------------------------------------------------------

@dataclass
class FamilyBench:
    """Everything measured for one family (what goes into the json)."""

    family: str
    settings: dict
    methods: dict = field(default_factory=dict)  # name -> {label, description, available, reason, tuning}
    pairs: list = field(default_factory=list)  # per pair: prompt, seed, runs {method: numbers}
    summary: dict = field(default_factory=dict)  # name -> means over pairs


def bench_family(family: str, args, size: VideoSize, schedule, device, out: Path, lpips) -> FamilyBench:
    """Load the family's checkpoint, calibrate the methods, then run every method on every pair."""
    import diffusers
    import torch
    from tqdm import tqdm

    from delta_cache.baselines import BlockCounter
    from delta_cache.models.runner import load_runner

    ckpt = Path(getattr(args, CKPT_FLAGS[family]))
    tqdm.write(f"[{family}] loading {ckpt}")
    # Sampled as the front end samples it (loader, sampler defaults, precision), on `device`.
    model = load_runner(family, ckpt, width=size.width, height=size.height, num_frames=size.num_frames,
                        num_steps=args.sample_steps, device=device)
    counter = BlockCounter(model.transformer)  # before any cache, so that it sees only real forwards
    bench = FamilyBench(family, {
        "checkpoint": str(ckpt), "width": size.width, "height": size.height, "num_frames": size.num_frames,
        "steps": args.sample_steps, "num_pairs": args.num_pairs, "calib_pairs": args.calib_pairs,
        "threads": args.threads, "device": str(device), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "sampling": model.description, "schedule": schedule.name,
        "block_lists": dict(counter.depths), "lpips": "yes" if lpips[0] else f"n/a: {lpips[1]}",
    })
    runner = Runner(family, model, counter)
    methods = prepare_methods(runner, bench, args, schedule)
    evaluate(runner, bench, methods, args.num_pairs, out / "videos" / family, lpips[0])
    bench.summary = summarise(bench, [m.name for m in methods])
    return bench


@dataclass
class Runner:
    """Runs one generation with a method attached and counts the block forwards that really ran."""

    family: str
    model: object  # delta_cache.models.runner.ModelRunner
    counter: object  # delta_cache.baselines.BlockCounter

    def run(self, method, prompt: str, seed: int, decode_frames: bool):
        """-> (float frames or None, denoise seconds, block evaluations, the method's own statistics)."""
        transformer = self.model.transformer
        before = self.counter.count
        method.attach(transformer)
        try:
            frames, seconds = self.model.sample(prompt, seed, decode_frames)
        finally:
            own_stats = method.detach(transformer)
        return frames, seconds, self.counter.count - before, own_stats

    def mean_block_evals(self, method, videos) -> float:
        """Mean block evaluations over `videos` (denoising only, no decoding), seed = video index."""
        return mean_of_present([self.run(method, video.prompt, video.index, False)[2] for video in videos])


def prepare_methods(runner: Runner, bench: FamilyBench, args, schedule) -> list:
    """On the calibration pairs: the block budget (the delta cache's), the naive steps, tuned thresholds.

    Records each method's configuration (or why it is unavailable) in `bench.methods`."""
    from tqdm import tqdm

    from delta_cache import baselines
    from delta_cache.synthetic.videos import make_video

    family, steps, transformer = runner.family, args.sample_steps, runner.model.transformer
    calibration = [make_video(CALIBRATION_OFFSET + k, "eval") for k in range(args.calib_pairs)]
    total = runner.mean_block_evals(baselines.NoCache(), calibration)  # also warms up allocator and kernels
    calls_per_step = max(1, round(total / (runner.counter.blocks_per_call * steps)))
    target = runner.mean_block_evals(baselines.DeltaCache(schedule, steps), calibration)
    bench.settings.update(total_block_evals=total, calls_per_step=calls_per_step, target_block_evals=target)
    tqdm.write(f"[{family}] uncached {total:.0f} block evaluations per video, delta cache {target:.0f} "
               f"({target / total:.1%})")

    num_computed = baselines.steps_for_block_budget(target, runner.counter.blocks_per_call, calls_per_step, steps)
    methods = [baselines.NoCache(), baselines.DeltaCache(schedule, steps)]
    if "step_skipping" in args.methods:
        methods.append(baselines.StepSkipping(baselines.evenly_spread_steps(steps, num_computed), steps))

    def tuned(name: str, make: Callable[[float], object], initial: float):
        def share(threshold: float) -> float:
            computed = runner.mean_block_evals(make(threshold), calibration)
            tqdm.write(f"[{family}] {name} threshold {threshold:.4g}: {computed / total:.1%} compute")
            return computed / total

        result = baselines.tune_threshold(share, target / total, initial=initial, tolerance=args.tune_tolerance,
                                          max_runs=args.tune_runs)
        method = make(result.threshold)
        method.tuning = result
        return method

    def mag_cache():
        first = calibration[0]
        ratios = baselines.calibrate_mag_ratios(transformer, steps,
                                                lambda: runner.model.sample(first.prompt, first.index, False))
        return tuned("mag_cache", lambda threshold: baselines.MagCache(threshold, ratios, steps), initial=0.06)

    def teacache():
        settings = published_teacache_settings(family, runner.model)
        if args.teacache_coefficients == "fitted":
            runs = [lambda video=video: runner.model.sample(video.prompt, video.index, False) for video in calibration]
            settings = baselines.calibrate_teacache(transformer, settings, steps, runs)
        return tuned("teacache", lambda threshold: baselines.TeaCache(threshold, settings, steps,
                                                                      args.teacache_coefficients), initial=0.05)

    unavailable = {}
    for cls, build in ((baselines.TeaCache, teacache),
                       (baselines.FirstBlockCache, lambda: tuned("first_block_cache", baselines.FirstBlockCache, 0.05)),
                       (baselines.MagCache, mag_cache),
                       (baselines.CacheDiT, lambda: tuned("cache_dit", lambda threshold: baselines.CacheDiT(
                           runner.model.pipe, threshold, steps), initial=0.08))):
        if cls.name not in args.methods:
            continue
        try:
            methods.append(build())
        except Exception as err:  # a baseline that cannot run on this family gets a row saying why
            unavailable[cls.name] = {"label": cls.label, "available": False, "reason": _reason(err)}
            tqdm.write(f"[{family}] {cls.name} unavailable: {unavailable[cls.name]['reason']}")
        if getattr(transformer, "_cache_config", None) is not None:  # a failed attach left a diffusers cache on
            transformer.disable_cache()

    for method in methods:
        info = bench.methods[method.name] = {"label": method.label, "description": method.describe(),
                                             "available": True}
        tuning = getattr(method, "tuning", None)
        if tuning is not None:
            info["tuning"] = {"threshold": tuning.threshold, "reached": tuning.reached, "target": tuning.target,
                              "within_tolerance": tuning.within_tolerance, "trials": tuning.trials}
        if isinstance(method, baselines.StepSkipping):
            info["computed_steps"] = method.computed_steps
        if isinstance(method, baselines.MagCache):
            info["mag_ratios"] = method.mag_ratios
        if isinstance(method, baselines.TeaCache):
            info["teacache_coefficients"] = list(method.config.coefficients)
    bench.methods.update(unavailable)
    return methods


def published_teacache_settings(family: str, model):
    """The family's published TeaCache settings (Wan2.1 by the checkpoint's task and size)."""
    if family == "wan":
        from delta_cache.models.wan.teacache import teacache_settings

        return teacache_settings(model.settings["task"], model.width, model.height)
    from delta_cache.models.hunyuan_video.teacache import teacache_settings

    return teacache_settings()


def evaluate(runner: Runner, bench: FamilyBench, methods: list, num_pairs: int, video_dir: Path, lpips_fn) -> None:
    """Every method on pair 0, then on pair 1, ...; per-run numbers go to `bench.pairs`."""
    from tqdm import tqdm

    from delta_cache.synthetic.videos import make_video

    bar = tqdm(total=num_pairs * len(methods), desc=runner.family, unit="video")
    for index in range(num_pairs):
        video = make_video(index, "eval")
        pair = {"index": index, "prompt": video.prompt, "seed": index, "runs": {}}
        reference = None  # (float frames, mp4 frames, block evaluations) of the uncached run, which comes first
        for method in methods:
            bar.set_postfix_str(f"pair {index} {method.name}")
            info = bench.methods[method.name]
            if info["available"]:
                try:
                    frames, seconds, computed, own_stats = runner.run(method, video.prompt, index, True)
                except Exception as err:
                    if reference is None:  # the uncached run itself failed: nothing to compare with
                        raise
                    info["available"], info["reason"] = False, _reason(err)
                else:
                    path = video_dir / f"pair{index:03d}_{method.name}.mp4"
                    record, encoded = measure_video(runner.model, frames, path, video.scene, reference)
                    reference = reference or (frames, encoded, computed)
                    if lpips_fn is not None:
                        try:
                            record["lpips"] = lpips_fn(frames, reference[0])
                        except Exception as err:  # an optional metric must never stop the benchmark
                            lpips_fn, bench.settings["lpips"] = None, f"n/a: {_reason(err)}"
                    pair["runs"][method.name] = {"denoise_s": seconds, "computed_block_evals": computed,
                                                 "total_block_evals": reference[2], **record, **own_stats}
            bar.update()
        bench.pairs.append(pair)
    bar.close()


def measure_video(model, frames, path: Path, scene, reference) -> tuple[dict, object]:
    """Write the mp4, read it back, compare both with the reference (itself when None), check the prompt."""
    from delta_cache.metrics import fidelity
    from delta_cache.synthetic.analyse import check_video
    from delta_cache.video import read_video, save_video

    uint8 = model.to_uint8(frames)
    encoded = read_video(save_video(uint8, path, fps=model.fps, quality=model.video_quality))  # (as its front end)
    ref_frames, ref_encoded = (frames, encoded) if reference is None else reference[:2]
    before_mp4, after_mp4 = fidelity(frames, ref_frames), fidelity(encoded, ref_encoded)
    check = check_video(uint8, scene)
    return {"psnr": before_mp4.psnr, "ssim": before_mp4.ssim, "psnr_mp4": after_mp4.psnr, "ssim_mp4": after_mp4.ssim,
            "lpips": None, "agrees": check.agrees, "matches": check.matches, "video": str(path)}, encoded


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def summarise(bench: FamilyBench, names: list[str]) -> dict:
    summary = {}
    reference_seconds = mean_of_present([p["runs"]["uncached"]["denoise_s"] for p in bench.pairs])
    for name in names:
        runs = [p["runs"][name] for p in bench.pairs if name in p["runs"]]
        if not runs or not bench.methods[name]["available"]:
            continue
        computed = mean_of_present([r["computed_block_evals"] for r in runs])
        total = mean_of_present([r["total_block_evals"] for r in runs])
        seconds = mean_of_present([r["denoise_s"] for r in runs])
        summary[name] = {
            "pairs": len(runs), "computed_block_evals": computed, "total_block_evals": total,
            "compute_share": computed / total, "denoise_s": seconds, "speedup": reference_seconds / seconds,
            **{key: mean_of_present([r[key] for r in runs]) for key in ("ssim", "ssim_mp4", "lpips")},
            "prompt_accuracy": sum(r["agrees"] for r in runs) / len(runs),
        }
        for key in ("psnr", "psnr_mp4"):  # identical videos give inf, which would swallow the mean
            finite = [r[key] for r in runs if math.isfinite(r[key])]
            summary[name][key] = mean_of_present(finite) if finite else math.inf
            summary[name][f"{key}_identical_pairs"] = len(runs) - len(finite)
    return summary


def _psnr_cell(row: dict, key: str) -> str:
    """Mean PSNR over the pairs that differ from the reference, and how many did not (their PSNR is inf)."""
    identical = row[f"{key}_identical_pairs"]
    text = format_metric(row[key], ".2f")
    return text if identical in (0, row["pairs"]) else f"{text} ({identical} identical)"


# --- output --------------------------------------------------------------------------------------------

def markdown(benches: list[FamilyBench]) -> str:
    lines = ["# Fidelity benchmark: the delta cache vs other caches at the same compute", "",
             "Means over evaluation pairs; fidelity is measured against the uncached video of the same pair "
             "(see scripts/bench_fidelity.py for the columns).", ""]
    for bench in benches:
        s = bench.settings
        lines += [
            f"## {bench.family}", "",
            f"Settings: checkpoint `{s['checkpoint']}`, {s['width']}x{s['height']}, {s['num_frames']} frames, "
            f"{s['steps']} steps, N = {s['num_pairs']} pairs (+{s['calib_pairs']} calibration), threads "
            f"{s['threads']}, {s['device']}, torch {s['torch']}, diffusers {s['diffusers']}; {s['sampling']}; "
            f"LPIPS {s['lpips']}.", "",
            "| method | configuration | block evals | compute | speedup | PSNR dB | SSIM | PSNR dB (mp4) | SSIM (mp4) "
            "| LPIPS | prompt acc. |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in METHOD_ORDER:
            if name not in bench.methods:
                continue
            info, row = bench.methods[name], bench.summary.get(name)
            if not info["available"] or row is None:
                reason = info.get("reason", "no runs")
                lines.append(f"| {info['label']} | n/a: {reason} |" + " – |" * 9)
                continue
            lines.append(
                f"| {info['label']} | {info['description']} | {row['computed_block_evals']:.0f}/"
                f"{row['total_block_evals']:.0f} | {row['compute_share']:.1%} | {row['speedup']:.2f}x | "
                f"{_psnr_cell(row, 'psnr')} | {format_metric(row['ssim'], '.4f')} | {_psnr_cell(row, 'psnr_mp4')} | "
                f"{format_metric(row['ssim_mp4'], '.4f')} | {format_metric(row['lpips'], '.4f')} | {row['prompt_accuracy']:.0%} |")
        lines.append("")
    return "\n".join(lines)


def _jsonable(value):
    """Strict JSON: non-finite floats become strings ("inf"), tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)` then rename over `path`: a crash leaves the old file or none, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plot(benches: list[FamilyBench], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"wan": ("o", "tab:blue"), "hunyuan_video": ("s", "tab:orange")}
    fig, ax = plt.subplots(figsize=(7, 5))
    for bench in benches:
        marker, colour = styles.get(bench.family, ("^", "tab:green"))
        shown = False
        for name, row in bench.summary.items():
            if row["psnr"] is None or not math.isfinite(row["psnr"]):
                continue  # the reference (PSNR inf) cannot be drawn
            ax.scatter(row["speedup"], row["psnr"], marker=marker, color=colour,
                       label=None if shown else bench.family)
            shown = True
            ax.annotate(bench.methods[name]["label"], (row["speedup"], row["psnr"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
    ax.axvline(1.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set(xlabel="measured speedup of the denoising loop (x)", ylabel="PSNR vs uncached (dB, float frames)",
           title="Fidelity vs speedup at the delta cache's compute")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="family")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_outputs(out: Path, benches: list[FamilyBench], command: list[str]) -> str:
    text = markdown(benches)
    data = {"command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "families": {b.family: {"settings": b.settings, "methods": b.methods, "summary": b.summary,
                                    "pairs": b.pairs} for b in benches}}
    _atomic_write(out / "bench_fidelity.md", lambda tmp: Path(tmp).write_text(text))
    _atomic_write(out / "bench_fidelity.json",
                  lambda tmp: Path(tmp).write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False)))
    _atomic_write(out / "bench_fidelity.png", lambda tmp: plot(benches, tmp))
    return text


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sizes = validate(args)
    set_offline()

    import logging

    import torch

    import delta_cache
    from delta_cache.models.runner import pick_device

    torch.set_num_threads(args.threads)
    # HunyuanVideoPipeline warns on every CLIP prompt over 77 tokens (as upstream truncates): hundreds of lines.
    logging.getLogger("diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video").setLevel(logging.ERROR)
    # A bad schedule should fail before minutes of loading.
    schedules = {family: delta_cache.load_schedule(getattr(args, SCHEDULE_FLAGS[family])) for family in args.family}
    device = pick_device(args.device)
    out = Path(args.out)
    lpips = make_lpips(device)
    benches: list[FamilyBench] = []
    command = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    text = ""
    for family in args.family:
        benches.append(bench_family(family, args, sizes[family], schedules[family], device, out, lpips))
        text = write_outputs(out, benches, command)
    print(text)
    print(f"wrote {out / 'bench_fidelity.md'}, {out / 'bench_fidelity.json'}, {out / 'bench_fidelity.png'}")


if __name__ == "__main__":
    run_cli(main)

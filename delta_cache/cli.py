"""Helpers shared by the front ends (`Wan2.1/generate.py`, `HunyuanVideo/sample_video.py`).

The contract with users: bad input -> one line on stderr naming the problem, exit code 2,
no traceback, no output file. Bugs still raise normally.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, NoReturn

from .errors import UserInputError


def set_offline() -> None:
    """Never contact a model hub: every file comes from the user's checkpoint folders."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def str2bool(value: str) -> bool:
    """Upstream's boolean flag values (e.g. --offload_model False)."""
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def positive_int(value: str) -> int:
    """argparse type for counts that must be >= 1 (threads, pairs, steps): a bad value is one clear line."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {number}")
    return number


def nonempty_str(value: str) -> str:
    """argparse type for names and paths: an empty value (e.g. an unset shell variable) is an error, not a
    silent "not given"."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a name or a path, got an empty value")
    return value


def add_cache_flags(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """The delta-cache flags, identical in every front end; any of them turns the cache on."""
    cache = parser.add_argument_group("delta cache (ProfilingDiT); any of these turns the cache on")
    cache.add_argument("--delta_cache", action="store_true", default=False,
                       help=f"Reuse background blocks' residuals with the preset schedule ({default_preset}).")
    cache.add_argument("--cache_schedule", type=nonempty_str, default=None, metavar="PRESET|PATH",
                       help=f"Schedule preset name or JSON file (default: {default_preset}).")
    cache.add_argument("--cache_forecast", default=None, choices=["hold", "linear"],
                       help="What a reuse step adds: the last refresh's delta (hold, the paper's reuse) or the delta "
                            "extrapolated through the last two refreshes (linear; twice the delta memory). "
                            "Default: the schedule's own (hold unless the file says otherwise).")
    cache.add_argument("--cache_fp32", action="store_true", default=False, help="Keep delta buffers in fp32.")
    cache.add_argument("--cache_cpu", action="store_true", default=False, help="Keep delta buffers in CPU memory.")


def cache_requested(args) -> bool:
    return bool(args.delta_cache or args.cache_schedule or args.cache_forecast or args.cache_fp32 or args.cache_cpu)


def add_teacache_flags(parser: argparse.ArgumentParser):
    """TeaCache in the front ends, to compare with on the same command line (TeaCache's own flag name)."""
    group = parser.add_argument_group("TeaCache, for comparison (delta_cache.teacache, written from its description, "
                                      "with its published coefficients)")
    group.add_argument("--teacache_thresh", type=float, default=None, metavar="T",
                       help="Run TeaCache instead of the delta cache with this threshold (the paper's table: "
                            "Wan2.1-14B 0.2; HunyuanVideo 0.1 slow, 0.15 fast; TeaCache's own for t2v-1.3B: 0.05, "
                            "0.08).")
    return group


def check_teacache_flags(args, processes: int) -> None:
    """--teacache_thresh: positive, alone (not with the delta cache), on one process."""
    if args.teacache_thresh is None:
        return
    if not args.teacache_thresh > 0:
        raise UserInputError(f"--teacache_thresh must be > 0, got {args.teacache_thresh}")
    if cache_requested(args):
        raise UserInputError("--teacache_thresh runs TeaCache instead of the delta cache; leave out the delta-cache flags")
    if processes > 1:
        raise UserInputError("TeaCache runs on one GPU here (its skip decisions come from data: HunyuanVideo's from "
                             "each rank's own tokens, so ranks could decide differently); run one process or use "
                             "the delta cache")


def apply_teacache_from_flags(transformer, settings, threshold: float, num_inference_steps: int):
    """`apply_teacache` with a family's published `settings` (`TeaCacheSettings`) and the flag's threshold."""
    from .teacache import TeaCacheConfig, apply_teacache

    return apply_teacache(transformer, TeaCacheConfig(
        threshold=threshold, coefficients=settings.coefficients, indicator=settings.indicator,
        num_inference_steps=num_inference_steps, first_computed_steps=settings.first_computed_steps,
        last_step_computed=settings.last_step_computed))


def add_compile_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compile", action="store_true", default=False,
                        help="torch.compile the transformer's blocks (diffusers' regional compilation) after the cache "
                             "is attached; the first steps then include the compilation (not an upstream flag).")


def compile_transformer(transformer) -> None:
    """diffusers' regional compilation, after every hook is attached (cache, context parallelism): the caches'
    bookkeeping runs outside the compiled code, so a block compiles once for refresh steps and once for reuse
    steps, not once per block and step (tests/test_delta_cache.py)."""
    transformer.compile_repeated_blocks(fullgraph=False)


def apply_cache_from_flags(transformer, schedule, args, num_inference_steps: int | None = None):
    """`apply_delta_cache` with the buffer options the flags ask for; returns the handle."""
    import torch

    from .hooks import apply_delta_cache

    if args.cache_forecast is not None:
        schedule = dataclasses.replace(schedule, forecast=args.cache_forecast)
    return apply_delta_cache(transformer, schedule, delta_dtype=torch.float32 if args.cache_fp32 else None,
                             delta_device="cpu" if args.cache_cpu else None,
                             num_inference_steps=num_inference_steps)


def log_cache_plan(handle, num_steps: int) -> None:
    """What the schedule will skip in this run, logged before sampling starts; a warning when it skips nothing
    (few steps: every step of the run falls on a refresh), rather than a silent 1.00x."""
    from loguru import logger

    from .plan import no_reuse_advice

    schedule = handle.schedule
    computed, total = handle.predicted_block_evals(num_steps)
    logger.info(f"delta cache: schedule '{schedule.name}' (made for {schedule.num_steps} steps), forecast "
                f"{schedule.forecast}: plans {computed}/{total} block evaluations per branch at {num_steps} steps, "
                f"ideal speedup {total / computed:.2f}x")
    if computed == total:
        logger.warning(f"delta cache: schedule '{schedule.name}' reuses no block at {num_steps} steps, so it will not "
                       f"speed this run up; {no_reuse_advice(schedule, num_steps)}")


def run_cli(main: Callable[[], None]) -> None:
    """Run a front end's `main`, turning `UserInputError` into one clear line and exit code 2."""
    try:
        main()
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


def bounded_float(low: float | None = None, high: float | None = None, *, above: bool = False):
    """argparse type for a finite number in [low, high] (with `above`, strictly above `low`): NaN, inf and
    out-of-range values are one clear line instead of a run that fails late or means nothing."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        too_low = low is not None and (number <= low if above else number < low)
        if not math.isfinite(number) or too_low or (high is not None and number > high):
            bounds = (f"{'above' if above else 'at least'} {low:g}" if high is None else
                      f"between {low:g} and {high:g}" if low is not None else f"at most {high:g}")
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {value}")
        return number
    return parse


def check_input_folder(flag: str, path, value: str | None = None) -> None:
    """`path` is a folder to read from; one line saying what it is otherwise (naming `flag` and its `value`, by
    default the path)."""
    path = Path(path)
    if not path.is_dir():
        raise UserInputError(f"{flag} {value or path}: "
                             + ("a file, not a folder" if path.exists() else "no such folder"))


SEED_RANGE = (-2**63, 2**64 - 1)  # what torch.Generator.manual_seed takes


def check_seed(flag: str, seed: int | None, count: int = 1) -> None:
    """`seed` .. `seed + count - 1` are seeds torch takes (None: random); one line otherwise."""
    low, high = SEED_RANGE
    if seed is not None and not low <= seed <= high - (count - 1):
        raise UserInputError(f"{flag} {seed} is out of range: seeds run from {low} to {high}"
                             + (f" (and {count} videos use {count} consecutive seeds)" if count > 1 else ""))


def check_output_path(flag: str, path, folder: bool = False, suffixes: tuple[str, ...] = ()) -> None:
    """Before a long run: `path` (a file, or with `folder` a folder) can be written: it is not a folder (a
    file), its suffix is one of `suffixes` (when given), and the nearest of its parents that exists (the folder
    itself where it exists) is a folder in which a file can be made (tried with a temporary file, removed at
    once: permission bits say nothing for root, read-only mounts or /proc). UserInputError (one line)
    otherwise."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise UserInputError(f"{flag} {path} is {'a file' if folder else 'a folder'}; give a "
                             f"{'folder' if folder else 'file name'}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserInputError(f"{flag} {path}: the file name must end in {', '.join(suffixes)}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserInputError(f"{flag} {path}: {parent} is a file, so nothing can be written under it")
    where = path if folder and path.is_dir() else parent
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as err:
        raise UserInputError(f"{flag} {path}: cannot create files in {where} ({err.strerror or err})") from None


def summary_line(denoise_seconds: float, cache_stats: dict | None, processes: int = 1,
                 teacache_stats=None, always_computed: tuple[str, int] | None = None) -> str:
    """The one line printed at the end of a generation (by rank 0 of `processes`, each holding its own tokens'
    deltas); `teacache_stats`: a TeaCache run's `TeaCacheStats`; `always_computed`: (what, count) block
    evaluations of blocks outside the cache's lists (VACE's control blocks), for the speedup they leave."""
    line = f"denoising time: {denoise_seconds:.2f} s"
    if teacache_stats is not None:
        computed = teacache_stats.computed_calls
        total = computed + teacache_stats.skipped_calls
        line += (f" | teacache: computed {computed}/{total} transformer calls"
                 f" | ideal speedup {total / max(computed, 1):.2f}x")
    if cache_stats is not None:
        line += (
            f" | delta_cache: computed {cache_stats['computed_block_evals']}/{cache_stats['total_block_evals']}"
            f" block evaluations"
        )
        per_branch = cache_stats.get("branches", {})
        if len(per_branch) > 1:
            parts = [f"{name} {b['computed_block_evals']}/{b['total_block_evals']}" for name, b in per_branch.items()]
            line += " (" + ", ".join(parts) + ")"
        line += f" | ideal speedup {cache_stats['ideal_speedup']:.2f}x"
        if always_computed is not None:
            what, count = always_computed
            total, computed = cache_stats["total_block_evals"] + count, cache_stats["computed_block_evals"] + count
            line += f" ({total / max(computed, 1):.2f}x with the {count} {what} block evaluations)"
        line += f" | delta buffers {cache_stats['delta_memory_bytes'] / 2**20:.1f} MiB"
        line += " per process" if processes > 1 else ""
    return line


def check_declared_model(declared: dict, depths: dict[str, int] | None, schedule, ulysses_degree: int,
                         heads_flag: str, ring_supported: bool = True) -> None:
    """Before minutes of loading, what a checkpoint's config already tells (`declared`, in diffusers' keys, and
    its block lists' `depths`, None where it does not say): the heads Ulysses splits, and whether `schedule`
    (None: no cache) fits the model."""
    from . import parallel
    from .models.common import declared_count

    num_heads = declared_count(declared.get("num_attention_heads"))
    if num_heads is not None:
        parallel.check_heads(num_heads, ulysses_degree, heads_flag, ring_supported)
    if schedule is not None and depths is not None:
        schedule.check_fits(depths)


def add_sampler_flags(group) -> None:
    """The sampler flags of the scripts that run a model through `delta_cache.models.runner` (profile_model.py,
    profile_evidence.py); None means the front end's default, which the runner fills in."""
    group.add_argument("--sample_steps", type=positive_int, default=50, help="denoising steps (default 50)")
    group.add_argument("--sample_shift", type=bounded_float(0, above=True), default=None,
                       help="default: wan 5.0, hunyuan_video 7.0")
    group.add_argument("--sample_guide_scale", type=bounded_float(0), default=None,
                       help="wan: CFG scale (default 5.0); hunyuan_video: embedded guidance (default 6.0); "
                            "diffusers: the pipeline's guidance_scale (default: the pipeline's)")
    group.add_argument("--sample_solver", default="unipc", choices=["unipc", "dpm++"], help="wan only")


def sampler_options(args) -> dict:
    """`load_runner`'s family options from those flags plus --family, --task (wan), --dit_weight (hunyuan_video)."""
    family = (dict(task=args.task, solver=args.sample_solver) if args.family == "wan"
              else dict(dit_weight=args.dit_weight))
    return dict(shift=args.sample_shift, guide_scale=args.sample_guide_scale, **family)

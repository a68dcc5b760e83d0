"""Evidence for the profiling tool on a tiny trained model: masks, equal-compute block sets, target speedups.

    python scripts/profile_evidence.py --family wan --ckpt_dir ckpts/tiny-wan-t2v [--num_pairs 16] \
        [--profile_prompts 8] [--targets 1.5 2.0] [--out outputs/profile_evidence] [--write_preset PATH]

Prints one markdown table (and writes it, a JSON with every number and each compared schedule to --out):
motion masks vs true masks (IoU; true = the object pixels of the model's own video, `--truth`); at the paper
preset's block evaluations the profiled background set vs the reversed one, random ones and the preset (PSNR
vs the uncached video on held-out prompt/seed pairs); and `derive_for_target` schedules run for real. The
logic is `delta_cache.profiling.evidence`; see docs/profiling.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delta_cache.cli import (  # noqa: E402
    OneLineArgumentParser, add_sampler_flags, bounded_float, check_input_folder, check_output_path, positive_int, run_cli,
    sampler_options, set_offline)
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.models.wan.tasks import DEFAULT_TASK  # noqa: E402


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=["wan", "hunyuan_video"], default="wan", help="model family")
    model = p.add_argument_group("model and run (defaults: the front end's)")
    model.add_argument("--ckpt_dir", required=True, type=Path,
                       help="wan: the checkpoint folder; hunyuan_video: the model base")
    model.add_argument("--task", default=DEFAULT_TASK, choices=["t2v-14B", "t2v-1.3B"], help="wan only")
    model.add_argument("--dit_weight", default=None, help="hunyuan_video: the transformer file")
    model.add_argument("--size", default=None,
                       help="WIDTH*HEIGHT (default: the native size in the checkpoint's tiny_model.json)")
    model.add_argument("--frame_num", type=int, default=None, help="frames, 4n+1 (default: the native count)")
    add_sampler_flags(model)
    ev = p.add_argument_group("evidence")
    ev.add_argument("--num_pairs", type=int, default=16, help="held-out eval pairs make_video(i, 'eval'), seed i")
    ev.add_argument("--profile_prompts", type=int, default=8, help="training prompts make_video(i, 'train') profiled")
    ev.add_argument("--profile_seed", type=int, default=42, help="seed of every profiling run")
    ev.add_argument("--truth", choices=["generated", "rendered"], default="generated",
                    help="true foreground masks: 'generated' = the object pixels of the model's own video (analyser), "
                         "'rendered' = make_video(i).mask (its object layout is not in the prompt, so a generation "
                         "differs from it)")
    ev.add_argument("--preset", default=None,
                    help="the schedule whose compute is matched (default: wan2.1-t2v-14b / hunyuanvideo-720p)")
    ev.add_argument("--targets", type=bounded_float(1), nargs="*", default=[1.5, 2.0],
                    help="target speedups for derive_for_target")
    ev.add_argument("--random_seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the random block sets")
    ev.add_argument("--no_motion_variant", action="store_true",
                    help="do not evaluate the block set profiled with motion masks")
    ev.add_argument("--max_queries", type=positive_int, default=256, help="sampled queries per attention map")
    ev.add_argument("--high_fraction", type=float, default=0.25, help="top fraction of tokens that is high-attention")
    model.add_argument("--threads", type=positive_int, default=1,
                       help="CPU threads (torch.set_num_threads; 1 keeps CPU timings stable)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("outputs/profile_evidence"),
                     help="folder for evidence.md, evidence.json, schedules/, profile_prompts.txt, profile_masks/")
    out.add_argument("--write_preset", type=Path, default=None, metavar="PATH",
                     help="also write the profiled schedule at the preset's compute as a preset file (name: its stem)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not 0 < args.high_fraction < 1:
        raise UserInputError(f"--high_fraction must be between 0 and 1, got {args.high_fraction}")
    check_output_path("--out", args.out, folder=True)
    if args.write_preset is not None:
        check_output_path("--write_preset", args.write_preset)
    check_input_folder("--ckpt_dir", args.ckpt_dir)
    set_offline()

    import torch

    from delta_cache.models.runner import load_runner
    from delta_cache.profiling import evidence

    torch.set_num_threads(args.threads)

    width, height, frames = evidence.resolve_size(args.ckpt_dir, args.size, args.frame_num)
    size_flags = [] if args.size is None and args.frame_num is None else [
        "--size", f"{width}*{height}", "--frame_num", str(frames)]
    settings = evidence.EvidenceSettings(
        num_pairs=args.num_pairs, profile_prompts=args.profile_prompts, profile_seed=args.profile_seed,
        preset=args.preset, targets=tuple(args.targets), random_seeds=tuple(args.random_seeds),
        max_queries=args.max_queries, high_fraction=args.high_fraction, motion_variant=not args.no_motion_variant,
        truth=args.truth)
    evidence.load_schedule(settings.preset or evidence.DEFAULT_PRESETS[args.family])  # fail fast on a bad name
    model = load_runner(args.family, args.ckpt_dir, width=width, height=height, num_frames=frames,
                        num_steps=args.sample_steps, **sampler_options(args))
    result = evidence.run_evidence(model, family=args.family, ckpt_dir=args.ckpt_dir, settings=settings,
                                   out=args.out, size_flags=size_flags, write_preset=args.write_preset)
    print(result.markdown())
    print(f"wrote {args.out / 'evidence.md'}, {args.out / 'evidence.json'} and {args.out / 'schedules'}/"
          + (f"; preset {args.write_preset}" if args.write_preset else ""))
    return result


if __name__ == "__main__":
    run_cli(main)

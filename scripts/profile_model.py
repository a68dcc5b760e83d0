"""Profile a model and derive a delta-cache schedule from what it reveals.

Runs one uncached generation per prompt through the same loader and pipeline as the front end, records
per step and block which video tokens receive the most self-attention (sampled queries, bounded memory)
and how each block's residual changes between steps, measures the foreground ratio R of every block
against a foreground mask, and writes a schedule JSON plus figures and a summary:

    python scripts/profile_model.py --family wan --task t2v-14B --ckpt_dir ./Wan2.1-T2V-14B --size 832*480 \
        --frame_num 81 --prompts prompts.txt --target_speedup 2.0 --out profiles/wan14b
    python Wan2.1/generate.py ... --cache_schedule profiles/wan14b/schedule.json

`--family diffusers` profiles a diffusers pipeline folder instead (CogVideoX, LTX-Video, Mochi, Wan, Wan 2.2,
HunyuanVideo, HunyuanVideo 1.5, SkyReels-V2 in diffusers' layout, e.g. a fine-tune saved with save_pretrained)
through `delta_cache.profile_experts`; its schedule is for `delta_cache.apply_delta_cache` from Python. A Wan 2.2 folder
(two experts, `transformer` and `transformer_2`) gets one schedule each, in --out/transformer and
--out/transformer_2.

See docs/profiling.md for the method, the options and what to expect at real size.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delta_cache.cli import (  # noqa: E402
    OneLineArgumentParser, add_sampler_flags, bounded_float, check_output_path, positive_int, run_cli,
    sampler_options, set_offline)
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.models.wan.inputs import (  # noqa: E402
    IMAGE_FLAGS, VACE_FLAGS, add_vace_flags, check_image_flags, check_vace_flags, read_input_frames, read_vace_inputs,
    unused_image_flags)
from delta_cache.models.wan.tasks import DEFAULT_TASK, TASKS, i2v_output_size, is_vace  # noqa: E402

DEFAULT_SIZE = "832*480"
DEFAULT_FRAME_NUM = 81
T_MAX, T_MIN = 6, 2  # Eq. 15's refresh intervals, DerivationParams' defaults (importing it loads torch)


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=["wan", "hunyuan_video", "diffusers"], default="wan",
                   help="model family of the front ends' checkpoints, or diffusers: a diffusers pipeline folder of "
                        "any family delta_cache.profile_pipeline knows")
    model = p.add_argument_group("model and run")
    model.add_argument("--task", default=DEFAULT_TASK, choices=TASKS,
                       help="wan only; i2v-14B and flf2v-14B condition every prompt on the images below, vace-* on "
                            "the --src_* inputs")
    model.add_argument("--image", default=None, help="wan i2v-14B: the input image (as generate.py's --image)")
    model.add_argument("--first_frame", default=None, help="wan flf2v-14B: the first frame")
    model.add_argument("--last_frame", default=None, help="wan flf2v-14B: the last frame")
    add_vace_flags(model)
    model.add_argument("--ckpt_dir", required=True,
                       help="wan: the checkpoint folder; hunyuan_video: the model base (upstream ckpts/ or a "
                            "diffusers folder); diffusers: the pipeline folder (model_index.json)")
    model.add_argument("--negative_prompt", default=None,
                       help="diffusers: the negative prompt of every run (default: the pipeline's)")
    model.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                       help="diffusers: the pipeline's dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    model.add_argument("--dit_weight", default=None,
                       help="hunyuan_video: the transformer file (default: the upstream path under --ckpt_dir)")
    model.add_argument("--size", default=None,
                       help="WIDTH*HEIGHT, multiples of 16 (any size may be profiled; default 832*480, or a tiny "
                            "trained checkpoint's native size from its tiny_model.json; diffusers: the pipeline's "
                            "default); for i2v and flf2v the area, the aspect ratio following the (first) image, as "
                            "in generate.py")
    model.add_argument("--frame_num", type=int, default=None,
                       help="frames, 4n+1 (default 81, or a tiny trained checkpoint's native count at its native "
                            "size; diffusers: the pipeline's default)")
    add_sampler_flags(model)
    model.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads (torch.set_num_threads; default: torch's, all cores; give 1 next to "
                            "other CPU work, where oversubscribed threads slow both down)")
    prompts = p.add_argument_group("prompts")
    prompts.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    prompts.add_argument("--prompts", type=Path, help="a text file with one prompt per line")
    prompts.add_argument("--seeds", type=int, nargs="+", default=[42], help="seeds; every prompt runs with each")
    probe = p.add_argument_group("probe")
    probe.add_argument("--mask_source", default="video_motion", choices=["video_motion", "motion", "pca", "files"],
                       help="foreground masks: the moving subjects of the decoded video (default), of the final "
                            "latents (no VAE decode), PCA clustering of the latents, or .npy files")
    probe.add_argument("--mask_dir", type=Path, help="for --mask_source files: 000.npy, 001.npy, ... per prompt run")
    probe.add_argument("--max_queries", type=positive_int, default=256, help="sampled queries per attention map")
    probe.add_argument("--high_fraction", type=float, default=0.25,
                       help="per frame, this top fraction of tokens by received attention is high-attention")
    derive = p.add_argument_group("schedule derivation")
    derive.add_argument("--tau", type=bounded_float(0), default=None, help="cache blocks with R < tau (default: --target_speedup)")
    derive.add_argument("--target_speedup", type=bounded_float(1), default=None,
                        help="pick tau and refresh intervals for this block-evaluation speedup (default 2.0)")
    derive.add_argument("--target_speedup_2", type=bounded_float(1), default=None,
                        help="Wan 2.2 folders: the target of transformer_2, the low-noise expert (default: "
                             "--target_speedup); the experts may tolerate reuse differently")
    derive.add_argument("--t_max", type=positive_int, default=None,
                        help=f"first refresh interval after the warm-up (with --tau; default {T_MAX})")
    derive.add_argument("--t_min", type=positive_int, default=None,
                        help=f"last refresh interval (with --tau; default {T_MIN})")
    derive.add_argument("--refresh_threshold", type=bounded_float(0, above=True), default=None,
                        help="with --tau: refresh where the step-change curve accumulates to this value since the "
                             "last refresh (TeaCache's rule, decided once from the profile) instead of --t_max/--t_min")
    derive.add_argument("--refresh_rule", default="any", choices=["any", "eq15", "curve"],
                        help="with --target_speedup: refresh rules searched: Eq. 15 intervals, the curve rule, or "
                             "both (default)")
    derive.add_argument("--forecast", default="hold", choices=["hold", "linear", "any"],
                        help="what reuse steps add: the last refresh's deltas (hold, the paper's reuse), the deltas "
                             "extrapolated through the last two refreshes (linear), or (with --target_speedup) "
                             "whichever the search predicts better (any); default hold")
    derive.add_argument("--warmup", type=positive_int, default=None,
                        help="warm-up steps (default: from the step-change curve)")
    derive.add_argument("--compare_with", action="append", default=[], metavar="SCHEDULE",
                        help="a preset or schedule file (repeatable) to judge on this profile: its compute and "
                             "predicted error next to the profiled schedule's at the same compute (does a preset or "
                             "the base model's schedule transfer to this model?)")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, required=True, help="folder for schedule.json, figures, summary, profiles/")
    out.add_argument("--name", default=None, help="schedule name (default: profiled-<task>)")
    out.add_argument("--resume", action="store_true", help="reuse prompt profiles already in --out/profiles")
    return p


def read_prompts(args) -> list[tuple[str, int]]:
    """(prompt, seed) of every run: each prompt with each seed."""
    return [(text, seed) for text in read_prompt_texts(args) for seed in args.seeds]


def read_prompt_texts(args) -> list[str]:
    texts = list(args.prompt)
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise UserInputError(f"--prompts {args.prompts}: no such file")
        from_file = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
        if not from_file:
            raise UserInputError(f"--prompts {args.prompts}: the file has no prompt (one per line)")
        texts += from_file
    if not texts:
        raise UserInputError("give at least one --prompt or a --prompts file")
    return texts


def resolve_size(args) -> tuple[int, int]:
    """(width, height); fills in --size and --frame_num defaults (a tiny trained checkpoint's native size)."""
    from delta_cache.models.tiny_info import NativeSize, resolve_video_size

    width, height = (int(v) for v in DEFAULT_SIZE.split("*"))
    video = resolve_video_size(args.ckpt_dir, args.size, args.frame_num,
                               default=NativeSize(width, height, DEFAULT_FRAME_NUM))
    args.size, args.frame_num = video.size, video.num_frames
    return video.width, video.height


def check_diffusers_flags(args) -> "DeclaredPipeline":  # noqa: F821 (imported when called: it loads torch)
    """--family diffusers: refuse the front ends' own flags (the pipeline has its own scheduler and inputs) and a
    folder profile_pipeline cannot profile, before anything loads; what the folder declares."""
    given = [flag for flag in ("sample_shift", "dit_weight", *IMAGE_FLAGS, *VACE_FLAGS)
             if getattr(args, flag, None) is not None]
    if args.task != DEFAULT_TASK:
        given.append("task")
    if args.sample_solver != "unipc":
        given.append("sample_solver")
    if given:
        raise UserInputError(f"--{given[0]} is for --family wan or hunyuan_video; a diffusers pipeline samples with "
                             f"its own scheduler and inputs")
    if args.frame_num is not None and args.frame_num < 1:
        raise UserInputError(f"--frame_num must be >= 1, got {args.frame_num}")
    from delta_cache.models.pipeline_folder import check_pipeline_folder, check_size_flag

    check_size_flag(args.size)
    return check_pipeline_folder(args.ckpt_dir)


def load_compared(args) -> list:
    """--compare_with's schedules, read before anything loads (a bad file is one line, not after the profiling)."""
    from delta_cache.schedule import load_schedule

    return [load_schedule(name) for name in args.compare_with]


def check_compared_fit(compared: list, depths: dict[str, int]) -> None:
    """The compared schedules fit the model's block lists (checked as soon as the depths are known)."""
    for schedule in compared:
        schedule.check_fits(depths)


def profile_front_end(args, width: int, height: int, prompts, mask_files, compared=()):
    """Profile a wan or hunyuan_video checkpoint through the front end's loader and sampler."""
    from delta_cache.models.runner import load_runner
    from delta_cache.profiling.runner import ProfileRequest, run_profile

    conditions = {}  # what the front end conditions every prompt on besides the text
    num_frames = args.frame_num
    if args.family == "wan":
        image, last_image = read_input_frames(args.task, args)
        if image is not None:  # the front end's output size for this image
            width, height = i2v_output_size(args.size, image.width, image.height)
            conditions = dict(image=image, last_image=last_image)
        if is_vace(args.task):  # a source video sets the size and length, as in generate.py
            vace = read_vace_inputs(args, args.size, args.frame_num)
            width, height, num_frames = vace.width, vace.height, vace.num_frames
            conditions = dict(vace=vace)
    # The front end's loader and sampler; at real size diffusers' model CPU offload keeps one model on the GPU.
    model = load_runner(args.family, args.ckpt_dir, width=width, height=height, num_frames=num_frames,
                        num_steps=args.sample_steps, offload=True, progress=True, **sampler_options(args),
                        **conditions)
    check_compared_fit(compared, {name: len(getattr(model.transformer, name)) for name in model.block_lists})
    request = ProfileRequest(prompts=prompts, block_lists=model.block_lists, mask_source=args.mask_source,
                             decode=model.decode,
                             mask_files=mask_files, token_grid=model.token_grid, leading_tokens=model.leading_tokens,
                             patch=model.patch, max_queries=args.max_queries, high_fraction=args.high_fraction)
    provenance = {"model": model.model_name, "ckpt_dir": str(args.ckpt_dir), "size": args.size,
                  "frame_num": args.frame_num, "sample_steps": args.sample_steps,
                  "sample_shift": model.settings["sample_shift"], "sample_solver": model.settings["sample_solver"],
                  "sample_guide_scale": model.settings["sample_guide_scale"],
                  "prompts": [p for p, _ in prompts], "seeds": args.seeds, "mask_source": args.mask_source,
                  "max_queries": args.max_queries, "high_fraction": args.high_fraction}
    provenance.update({flag: str(getattr(args, flag)) for flag in IMAGE_FLAGS + VACE_FLAGS
                       if getattr(args, flag, None) is not None})
    if conditions:
        provenance["output_size"] = f"{width}*{height}"
    if num_frames != args.frame_num:
        provenance["output_frames"] = num_frames
    control_blocks = len(getattr(model.transformer, "vace_blocks", None) or ())
    if control_blocks:  # VACE's control blocks run on every step: the ideal speedup counts them in
        provenance["always_computed_block_evals"] = {"vace_blocks": control_blocks * args.sample_steps}
    return run_profile(model.transformer, lambda prompt, seed: model.generate(prompt, seed)[0], request,
                       out_dir=args.out, resume=args.resume, provenance=provenance)


def profile_diffusers_folder(args, mask_files) -> dict:
    """Profile a diffusers pipeline folder through `delta_cache.profile_experts`: {"transformer": Profile} or, with
    Wan 2.2's two experts, one profile each."""
    from delta_cache.models.pipeline_folder import load_folder_pipeline
    from delta_cache.profiling.pipelines import profile_experts

    pipe, call = load_folder_pipeline(args)
    return profile_experts(pipe, read_prompt_texts(args), seeds=args.seeds, out_dir=args.out, resume=args.resume,
                           mask_source=args.mask_source, mask_files=mask_files, max_queries=args.max_queries,
                           high_fraction=args.high_fraction,
                           provenance={"ckpt_dir": str(args.ckpt_dir),
                                       "dtype": str(pipe.transformer.dtype).removeprefix("torch.")},
                           **call)


def schedule_from_profile(args, profile, name: str, expert: str = "transformer"):
    """The schedule from `profile`, by --tau or --target_speedup (default 2x; --target_speedup_2 for Wan 2.2's
    second expert)."""
    from delta_cache.profiling.derive import REFRESH_RULES, DerivationParams, derive_for_target, derive_schedule
    from delta_cache.schedule import FORECASTS

    if args.tau is not None:
        return derive_schedule(profile, DerivationParams(tau=args.tau, t_max=args.t_max, t_min=args.t_min,
                                                         warmup=args.warmup, refresh_threshold=args.refresh_threshold,
                                                         forecast=args.forecast), name=name)
    rules = REFRESH_RULES if args.refresh_rule == "any" else (args.refresh_rule,)
    forecasts = FORECASTS if args.forecast == "any" else (args.forecast,)
    target = 2.0 if args.target_speedup is None else args.target_speedup
    if expert == "transformer_2" and args.target_speedup_2 is not None:
        target = args.target_speedup_2
    return derive_for_target(profile, target, warmup=args.warmup, name=name, refresh_rules=rules,
                             forecasts=forecasts)


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.tau is not None and args.target_speedup is not None:
        raise UserInputError("give --tau or --target_speedup, not both")
    if args.tau is not None and args.target_speedup_2 is not None:
        raise UserInputError("--target_speedup_2 is for --target_speedup (with --tau, both experts take that tau)")
    compared = load_compared(args)
    if args.family == "diffusers":
        declared = check_diffusers_flags(args)
        if args.target_speedup_2 is not None and "transformer_2" not in declared.transformers:
            raise UserInputError("--target_speedup_2 is for a pipeline with two transformers (Wan 2.2); this one has "
                                 "one")
        for component in declared.transformers:
            depths = declared.depths(component)
            if depths:  # (where the folder's config says its depths; else after profiling)
                check_compared_fit(compared, depths)
        width = height = None
    else:
        for flag in ("negative_prompt",) if args.negative_prompt is not None else ():
            raise UserInputError(f"--{flag} is for --family diffusers (the front ends use upstream's)")
        if args.dtype != "auto":
            raise UserInputError("--dtype is for --family diffusers (the front ends load upstream's dtypes)")
        width, height = resolve_size(args)
    # (the frame count is known here for the front ends and where given for a folder; VACE's source video may
    # change it, so a short one is still refused after its first generation)
    needed = {"video_motion": 2, "motion": 5}.get(args.mask_source)
    if needed and args.frame_num is not None and args.frame_num < needed:
        raise UserInputError(f"--mask_source {args.mask_source} needs at least {needed} frames (--frame_num "
                             f"{args.frame_num}); use --mask_source pca or files")
    prompts = read_prompts(args)
    if args.family == "wan":
        check_image_flags(args.task, args)
        check_vace_flags(args.task, args)
        if unused := unused_image_flags(args.task, args):  # a profile without the image the user meant
            raise UserInputError(f"{unused[0]} is for the wan image tasks (i2v-14B, flf2v-14B), not --task {args.task}")
    elif args.family == "diffusers":
        pass  # (checked above)
    elif any(getattr(args, flag) is not None for flag in IMAGE_FLAGS):
        raise UserInputError("--image, --first_frame and --last_frame are for the wan image tasks")
    elif any(getattr(args, flag) is not None for flag in VACE_FLAGS):
        raise UserInputError("--src_video, --src_mask and --src_ref_images are for the wan vace tasks")
    if args.target_speedup_2 is not None and args.family != "diffusers":
        raise UserInputError("--target_speedup_2 is for --family diffusers on a Wan 2.2 folder (two experts)")
    if args.refresh_threshold is not None and (args.tau is None or args.refresh_threshold <= 0):
        raise UserInputError("--refresh_threshold needs --tau and a value > 0 (--target_speedup searches it)")
    if args.forecast == "any" and args.tau is not None:
        raise UserInputError("--forecast any is for --target_speedup; with --tau give hold or linear")
    if args.refresh_rule != "any" and args.tau is not None:
        raise UserInputError("--refresh_rule is for --target_speedup; with --tau give --refresh_threshold or "
                             "--t_max/--t_min")
    intervals_given = [flag for flag in ("t_max", "t_min") if getattr(args, flag) is not None]
    if intervals_given and (args.tau is None or args.refresh_threshold is not None):
        raise UserInputError(f"--{intervals_given[0]} is for --tau with the paper's refresh intervals (--target_speedup "
                             "searches them; --refresh_threshold replaces them)")
    args.t_max = T_MAX if args.t_max is None else args.t_max
    args.t_min = T_MIN if args.t_min is None else args.t_min
    if args.t_min > args.t_max:
        raise UserInputError(f"refresh intervals need --t_min <= --t_max, got {args.t_min} and {args.t_max} "
                             f"(defaults {T_MIN} and {T_MAX})")
    if args.warmup is not None and args.warmup >= args.sample_steps:
        raise UserInputError(f"--warmup {args.warmup} leaves no step to reuse of --sample_steps {args.sample_steps}")
    if not 0 < args.high_fraction < 1:
        raise UserInputError(f"--high_fraction must be between 0 and 1, got {args.high_fraction}")
    check_output_path("--out", args.out, folder=True)
    mask_files = None
    if args.mask_source == "files":
        if args.mask_dir is None:
            raise UserInputError("--mask_source files needs --mask_dir")
        mask_files = [args.mask_dir / f"{i:03d}.npy" for i in range(len(prompts))]
        missing = [str(f) for f in mask_files if not f.is_file()]
        if missing:
            raise UserInputError(f"mask file missing: {missing[0]}")
    set_offline()

    import torch

    from delta_cache.profiling.derive import compare_on_profile
    from delta_cache.profiling.report import always_computed_note, write_report

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if compared and args.family != "diffusers":  # (from the checkpoint's config, before minutes of loading)
        from delta_cache.models.runner import declared_depths

        depths = declared_depths(args.family, args.ckpt_dir, task=args.task, dit_weight=args.dit_weight)
        if depths:
            check_compared_fit(compared, depths)
    if args.family == "diffusers":
        profiles = profile_diffusers_folder(args, mask_files)
        pipeline = profiles["transformer"].provenance["pipeline"].removesuffix("Pipeline").lower()
        default_name = f"profiled-{pipeline or 'pipeline'}"
    else:
        profiles = {"transformer": profile_front_end(args, width, height, prompts, mask_files, compared)}
        default_name = f"profiled-{args.task.lower()}" if args.family == "wan" else "profiled-hunyuanvideo"
    experts = len(profiles) > 1  # (Wan 2.2: a schedule per expert, each in a folder of its own)
    # every schedule derived before any is written: one that cannot be made leaves no other beside old files
    names = {expert: (args.name or default_name) + (f"-{expert}" if experts else "") for expert in profiles}
    schedules = {expert: schedule_from_profile(args, profile, names[expert], expert)
                 for expert, profile in profiles.items()}
    comparisons = {expert: [compare_on_profile(profile, other) for other in compared]
                   for expert, profile in profiles.items()}
    written = {}
    for expert, profile in profiles.items():
        folder = args.out / expert if experts else args.out
        schedule = schedules[expert]
        folder.mkdir(parents=True, exist_ok=True)
        written[expert] = folder / "schedule.json"
        schedule.save(written[expert])
        write_report(profile, schedule, folder, comparisons[expert])
        computed, total = schedule.provenance["predicted_block_evals"]
        ideal = f"ideal {total / computed:.2f}x{always_computed_note(schedule.provenance, computed, total)}"
        steps = schedule.provenance.get("profiled_steps")
        where = f" on its steps {steps[0]}-{steps[1]} of {schedule.num_steps}" if steps else ""
        print(f"wrote {written[expert]}: {computed}/{total} block evaluations per branch{where} ({ideal}), predicted "
              f"residual error {schedule.provenance['predicted_error']:.4f}; figures and summary.md in {folder}")
        for comparison in comparisons[expert]:
            print(f"  compared with {comparison.line}")
    if args.family == "diffusers":
        uses = "; ".join(f"delta_cache.apply_delta_cache(pipe.{expert}, \"{path}\")"
                         for expert, path in written.items())
        flags = " ".join(f"--cache_schedule{'_2' if expert == 'transformer_2' else ''} {path}"
                         for expert, path in written.items())
        print(f"use it from Python: {uses}; try it on a prompt first: scripts/compare_cached.py --ckpt_dir "
              f"{args.ckpt_dir} {flags} ...")


if __name__ == "__main__":
    run_cli(main)

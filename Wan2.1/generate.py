"""Drop-in replacement for Wan2.1's `generate.py`, plus `--delta_cache`.

Same flags, defaults, checkpoint folders and output files as upstream; the models are diffusers'
WanTransformer3DModel (WanVACETransformer3DModel for VACE) / AutoencoderKLWan and transformers'
UMT5EncoderModel (and CLIPVisionModel for i2v/flf2v), sampled by diffusers' Wan pipelines. Example
(upstream's README command plus one flag):

    python generate.py --task t2v-14B --size 832*480 --ckpt_dir ./Wan2.1-T2V-14B \
        --prompt "Two anthropomorphic cats ..." --delta_cache
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # works without `pip install -e .` too

from delta_cache.cli import (  # noqa: E402
    OneLineArgumentParser,
    add_cache_flags,
    add_compile_flag,
    add_teacache_flags,
    apply_cache_from_flags,
    bounded_float,
    cache_requested,
    check_declared_model,
    check_input_folder,
    check_output_path,
    check_seed,
    check_teacache_flags,
    run_cli,
    set_offline,
    str2bool,
)
from delta_cache import parallel  # noqa: E402
from delta_cache.errors import UserInputError  # noqa: E402
from delta_cache.models.tiny_info import native_size  # noqa: E402
from delta_cache.models.wan import tasks  # noqa: E402
from delta_cache.models.wan.inputs import (add_vace_flags, check_image_flags, check_vace_flags,  # noqa: E402
                                           read_input_frames, read_vace_inputs, unused_image_flags)
from delta_cache.models.wan.prompt_extend import check_prompt_extend_flags  # noqa: E402
from delta_cache.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES  # noqa: E402


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description="Generate a video or image with Wan2.1 (drop-in for upstream generate.py).")
    p.add_argument("--task", type=str, default=tasks.DEFAULT_TASK, choices=tasks.TASKS, help="The task to run.")
    p.add_argument("--size", type=str, default=None,
                   help=f"The area (WIDTH*HEIGHT) of the generated video, one of {', '.join(tasks.SIZES)} (default "
                        f"{tasks.DEFAULT_SIZE}; a tiny trained checkpoint's native size); for i2v and flf2v the "
                        "aspect ratio follows the (first) image.")
    p.add_argument("--frame_num", type=int, default=None,
                   help="Frames to sample, 4n+1 (others round down, as upstream; default 81; 1 for t2i; a tiny trained "
                        "checkpoint's native count).")
    p.add_argument("--ckpt_dir", type=str, default=None, help="The checkpoint folder (upstream or diffusers layout).")
    p.add_argument("--offload_model", type=str2bool, default=None,
                   help="Offload models to the CPU between uses (default True on one GPU, False on several).")
    p.add_argument("--ulysses_size", type=int, default=1,
                   help="Ulysses sequence-parallel degree (under torchrun; ulysses_size x ring_size = processes).")
    p.add_argument("--ring_size", type=int, default=1, help="Ring attention degree (under torchrun, GPUs only).")
    p.add_argument("--t5_fsdp", action="store_true", default=False,
                   help="Accepted for upstream command lines; T5 is replicated on every GPU (no FSDP).")
    p.add_argument("--t5_cpu", action="store_true", default=False, help="Keep the T5 text encoder on the CPU.")
    p.add_argument("--dit_fsdp", action="store_true", default=False,
                   help="Accepted for upstream command lines; the DiT is replicated on every GPU (no FSDP).")
    p.add_argument("--save_file", type=str, default=None, help="Output file (default: upstream's generated name).")
    add_vace_flags(p)
    p.add_argument("--prompt", type=str, default=None, help="The prompt (default: the task's example prompt).")
    p.add_argument("--use_prompt_extend", action="store_true", default=False,
                   help="Rewrite the prompt with a local instruction-tuned LLM first (text tasks).")
    p.add_argument("--prompt_extend_method", type=str, default="local_qwen", choices=["dashscope", "local_qwen"],
                   help="local_qwen only (dashscope is an online API, never contacted).")
    p.add_argument("--prompt_extend_model", type=str, default=None,
                   help="Local folder of the LLM (e.g. Qwen2.5-7B-Instruct); required with --use_prompt_extend.")
    p.add_argument("--prompt_extend_target_lang", type=str, default="zh", choices=["zh", "en"],
                   help="Language of the rewritten prompt.")
    p.add_argument("--base_seed", type=int, default=-1, help="Seed; negative means random.")
    p.add_argument("--image", type=str, default=None, help="Input image for i2v.")
    p.add_argument("--first_frame", type=str, default=None, help="First frame for flf2v.")
    p.add_argument("--last_frame", type=str, default=None, help="Last frame for flf2v.")
    p.add_argument("--sample_solver", type=str, default="unipc", choices=["unipc", "dpm++"])
    p.add_argument("--sample_steps", type=int, default=None, help="Sampling steps (default 50; 40 for i2v).")
    p.add_argument("--sample_shift", type=bounded_float(0, above=True), default=None,
                   help="Flow-matching shift (default per task).")
    p.add_argument("--sample_guide_scale", type=bounded_float(0), default=5.0, help="Classifier-free guidance scale.")
    add_cache_flags(p, "the task's preset")
    add_compile_flag(p)
    teacache = add_teacache_flags(p)
    teacache.add_argument("--use_ret_steps", action="store_true", default=False,
                          help="TeaCache's ret_steps mode: the timestep projection as indicator, the first 5 steps "
                               "computed (its published coefficients for that mode).")
    return p


def teacache_indicator(args) -> str:
    return "timestep_projection" if args.use_ret_steps else "timestep_embedding"


def validate(args) -> None:
    """Upstream's checks plus ours; fills upstream defaults. Raises UserInputError with one line."""
    if args.ckpt_dir is None:
        raise UserInputError("--ckpt_dir is required (the folder holding the Wan2.1 checkpoint)")
    check_input_folder("--ckpt_dir", args.ckpt_dir)
    # A tiny trained checkpoint (scripts/train_tiny.py) also runs at its native size, which is its default.
    native = native_size(args.ckpt_dir)
    supported = tasks.SUPPORTED_SIZES[args.task] + ((native.size,) if native else ())
    args.size = args.size or (native.size if native else tasks.DEFAULT_SIZE)
    if args.size not in supported:
        raise UserInputError(f"size {args.size} is not supported for task {args.task}; supported sizes: "
                             f"{', '.join(supported)}")
    args.prompt_extension = check_prompt_extend_flags(args.task, args)
    parallel.check_degrees(args.ulysses_size, args.ring_size, ("--ulysses_size", "--ring_size"))
    if args.ulysses_size * args.ring_size > 1 and args.offload_model:
        raise UserInputError("--offload_model True does not work with multi-GPU sampling; leave it out (False)")
    check_image_flags(args.task, args)
    check_vace_flags(args.task, args)
    if args.save_file is not None:
        check_output_path("--save_file", args.save_file,
                          suffixes=IMAGE_SUFFIXES if args.task.startswith("t2i") else VIDEO_SUFFIXES)
    check_seed("--base_seed", args.base_seed)

    defaults = tasks.task_defaults(args.task, args.size)
    if args.frame_num is None:  # (t2i: one frame, also on a tiny checkpoint with a native video length)
        native_frames = native and args.size == native.size and not args.task.startswith("t2i")
        args.frame_num = native.num_frames if native_frames else defaults.frame_num
    args.sample_steps = defaults.sample_steps if args.sample_steps is None else args.sample_steps
    args.sample_shift = defaults.sample_shift if args.sample_shift is None else args.sample_shift
    if args.task.startswith("t2i") and args.frame_num != 1:
        raise UserInputError(f"--frame_num must be 1 for task {args.task}, got {args.frame_num}")
    if args.frame_num < 1:
        raise UserInputError(f"--frame_num must be at least 1 (4n+1: 1, 5, 9, ..., 81), got {args.frame_num}")
    args.requested_frame_num = args.frame_num
    # Upstream accepts any count and makes (frame_num - 1) // 4 + 1 latent frames, i.e. the 4n+1 frames at or below
    # it; diffusers' pipelines would round up instead, so the count is rounded down here.
    args.frame_num = (args.frame_num - 1) // 4 * 4 + 1
    if args.sample_steps < 1:
        raise UserInputError(f"--sample_steps must be positive, got {args.sample_steps}")
    args.delta_cache = cache_requested(args)
    check_teacache_flags(args, args.ulysses_size * args.ring_size)
    if args.use_ret_steps and args.teacache_thresh is None:
        raise UserInputError("--use_ret_steps is a TeaCache mode; give --teacache_thresh too")
    if args.teacache_thresh is not None:  # a task without published coefficients fails here, before loading
        from delta_cache.models.wan.teacache import teacache_settings

        teacache_settings(args.task, *tasks.parse_size(args.size), teacache_indicator(args))
    if args.prompt is None:
        args.prompt = tasks.EXAMPLE_PROMPTS[args.task.split("-")[0]]
    if args.base_seed < 0:
        args.base_seed = random.randint(0, sys.maxsize)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    validate(args)
    set_offline()

    from delta_cache.schedule import load_schedule

    from delta_cache.models.wan.checkpoint import declared_block_depths, declared_transformer_config

    schedule = None  # a bad schedule file fails here, before the seconds of imports and minutes of loading
    if args.delta_cache:
        schedule = load_schedule(args.cache_schedule or tasks.DEFAULT_PRESETS[args.task])
    declared = declared_transformer_config(args.ckpt_dir)
    check_declared_model(declared, declared_block_depths(declared, args.task), schedule, args.ulysses_size,
                         "--ulysses_size")

    with parallel.process_group(args.ulysses_size, args.ring_size) as group:  # rank 0 of 1 for a plain run
        _generate(args, schedule, group)


def _generate(args, schedule, group: parallel.ProcessGroup) -> None:
    import torch
    from loguru import logger

    from delta_cache.cli import log_cache_plan, summary_line
    from delta_cache.models.wan import context_parallel
    from delta_cache.models.wan.checkpoint import load_wan_components
    from delta_cache.models.wan.pipeline import build_pipeline, generate, place_pipeline, token_grid
    from delta_cache.video import save_image, save_video, to_uint8_as_upstream

    parallel.log_from_main_only(group)
    if args.sample_guide_scale < 1:  # (at 1 both give the conditional prediction)
        logger.warning(f"--sample_guide_scale {args.sample_guide_scale} < 1: diffusers' Wan pipelines then run the "
                       "conditional branch alone, where upstream mixes in the unconditional one")
    if unused := unused_image_flags(args.task, args):
        logger.warning(f"{', '.join(unused)} ignored: task {args.task} takes no image (as upstream; i2v-14B and "
                       "flf2v-14B do)")
    if args.frame_num != args.requested_frame_num:
        logger.warning(f"--frame_num {args.requested_frame_num} is not 4n+1: generating {args.frame_num} frames, "
                       "as upstream does")
    if group.is_parallel:
        args.base_seed = parallel.from_rank0(args.base_seed)  # a random seed is drawn per process
        if args.t5_fsdp or args.dit_fsdp:
            logger.info("--t5_fsdp / --dit_fsdp: the models are replicated on every GPU (FSDP is not used)")
    device = group.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    offload = (args.offload_model if args.offload_model is not None
               else device.type == "cuda" and not group.is_parallel)
    text_device = torch.device("cpu") if args.t5_cpu else device
    image, last_image = read_input_frames(args.task, args)  # unreadable inputs fail before loading
    vace = read_vace_inputs(args, args.size, args.frame_num) if tasks.is_vace(args.task) else None
    prompt = args.prompt  # upstream names the file after the prompt it generated from: the extended one
    if args.prompt_extension is not None:
        from delta_cache.models.wan.prompt_extend import extend_prompt

        logger.info(f"extending the prompt with {args.prompt_extension.model_dir}")
        # one LLM run; every rank generates from rank 0's text
        prompt = parallel.on_rank0(group, lambda: extend_prompt(args.prompt, args.prompt_extension,
                                                                seed=args.base_seed, device=device))
        logger.info(f"extended prompt: {prompt!r}")
    logger.info(f"loading {args.task} from {args.ckpt_dir} ({device}, {dtype})")
    components = load_wan_components(
        args.ckpt_dir, task=args.task, dtype=dtype,
        text_encoder_dtype=dtype,  # (upstream keeps T5 in bf16 on the CPU too with --t5_cpu)
    )

    handle = None
    if schedule is not None:
        # The step count is passed: WanVACEPipeline's cache contexts carry only the branch name, not the step.
        handle = apply_cache_from_flags(components.transformer, schedule, args, num_inference_steps=args.sample_steps)

    width, height, num_frames = *tasks.parse_size(args.size), args.frame_num
    if image is not None:
        width, height = tasks.i2v_output_size(args.size, image.width, image.height)
    if vace is not None:  # a source video sets the size and length
        width, height, num_frames = vace.width, vace.height, vace.num_frames
    teacache = None
    if args.teacache_thresh is not None:
        from delta_cache.cli import apply_teacache_from_flags
        from delta_cache.models.wan.teacache import teacache_settings

        # i2v's 480P or 720P set by the requested --size (the output keeps the image's aspect ratio, so a wide
        # image at 1280*720 gives a side below 720 without making it a 480P run)
        settings = teacache_settings(args.task, *tasks.parse_size(args.size), teacache_indicator(args))
        teacache = apply_teacache_from_flags(components.transformer, settings, args.teacache_thresh,
                                             args.sample_steps)
        logger.info(f"TeaCache: threshold {args.teacache_thresh} (published for this set: {settings.thresholds}), "
                    f"{settings.indicator} indicator, published coefficients {settings.coefficients}")

    pipe = build_pipeline(components, image_to_video=image is not None, solver=args.sample_solver,
                          shift=args.sample_shift)
    if not group.is_main:
        pipe.set_progress_bar_config(disable=True)  # one progress bar, rank 0's
    if device.type == "cuda":
        place_pipeline(pipe, device, offload=offload, text_encoder_on_cpu=args.t5_cpu)
    if group.is_parallel:  # after the cache hooks, which must come first
        # VACE denoises one more latent frame per reference image, in front of the video's
        reference_frames = len(vace.reference_images) * pipe.vae_scale_factor_temporal if vace is not None else 0
        grid = token_grid(pipe, width=width, height=height, num_frames=num_frames + reference_frames)
        parallel.check_model_fits(group, num_heads=pipe.transformer.config.num_attention_heads,
                                  num_tokens=grid[0] * grid[1] * grid[2], heads_flag="--ulysses_size")
        parallel.enable_context_parallel(pipe.transformer, group, cp_plan=context_parallel.cp_plan(pipe.transformer))
        logger.info(f"context parallel over {group.world_size} processes: Ulysses {group.ulysses_degree}, "
                    f"ring {group.ring_degree}")

    if args.compile:  # last: after the cache's and the context parallelism's hooks
        from delta_cache.cli import compile_transformer

        compile_transformer(pipe.transformer)
        logger.info("compiling the transformer's blocks (torch.compile): the first steps include the compilation")
    if handle is not None:  # (logged here, after the last input check: an input error stays one line)
        log_cache_plan(handle, args.sample_steps)
        if vace is not None:
            logger.info(f"delta cache: the {len(pipe.transformer.vace_blocks)} VACE control blocks run every step "
                        "(the plan counts the main blocks; the summary adds them)")
    if vace is not None:
        logger.info(f"VACE conditions: {'source video' if vace.video else 'no source video'}"
                    f"{' with mask' if vace.mask else ''}, {len(vace.reference_images)} reference image(s)")
    logger.info(f"generating {width}x{height}, {num_frames} frames, {args.sample_steps} steps, "
                f"seed {args.base_seed}: {prompt!r}")
    result = generate(
        pipe, prompt=prompt, negative_prompt=tasks.negative_prompt(args.task), width=width, height=height,
        num_frames=num_frames, num_inference_steps=args.sample_steps, guidance_scale=args.sample_guide_scale,
        seed=args.base_seed, image=image, last_image=last_image, vace=vace, text_encoder_device=text_device,
    )
    if not group.is_main:  # every rank holds the same video; rank 0 writes it
        return

    save_path = args.save_file or tasks.output_file_name(args.task, args.size, args.ulysses_size, args.ring_size,
                                                         prompt)
    if args.task.startswith("t2i"):
        save_image(result.frames[0], save_path)
    else:
        save_video(to_uint8_as_upstream(result.frames), save_path, fps=tasks.SAMPLE_FPS)
    print(f"Saving generated {'image' if args.task.startswith('t2i') else 'video'} to {save_path}")  # as upstream
    always_computed = None
    if handle is not None and vace is not None:  # the control blocks are not cached: count them in
        calls = sum(b["total_block_evals"] for b in handle.stats()["branches"].values()) // len(pipe.transformer.blocks)
        always_computed = ("VACE control", calls * len(pipe.transformer.vace_blocks))
    print(summary_line(result.denoise_seconds, handle.stats() if handle is not None else None,
                       processes=group.world_size, teacache_stats=teacache.stats if teacache is not None else None,
                       always_computed=always_computed))


if __name__ == "__main__":
    run_cli(main)
